"""``darknetpy board-run --mode io`` on a detector: the board's raw outputs (one per [region]/[yolo]/[detection]
layer: the tensors entering the heads, as ``darknetpy export`` writes the model) decoded with darknet's rules and
printed as ``darknet detector test`` prints them; with an int8 reference (``--int8-graph``, or ``--cfg/--weights``),
compared with darknetpy's int8 engine on the same input, where both the head tensors and the boxes should be
identical.

Where the heads description comes from (the first given): ``--onnx MODEL.onnx`` (the exported model's
``darknetpy_heads`` metadata: the file that went through stedgeai), the ``--int8-graph`` (its graph), or ``--cfg``.
The board's outputs are matched to the heads by name (``l16_yolo``...), else by size in order (ST Edge AI Core
may rename them ``output_1``...); channel-last outputs are accepted (``headspec.arrange_named``).

Called from ``board_run`` (``add_arguments``, ``heads_for``, ``decode_board``, ``format_detections``).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import DarknetpyError, UnsupportedError
from .args import positive_float

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The detector options of ``board-run``."""
    parser.add_argument("--onnx", metavar="MODEL.onnx",
                        help="a detector: the exported model on the board (its darknetpy_heads metadata says how to "
                             "decode the board's outputs; --int8-graph or --cfg say it too)")
    parser.add_argument("--thresh", type=positive_float, default=None,
                        help="a detector: darknet's threshold (default .5; .2 for a YOLOv1 [detection] head)")
    parser.add_argument("--nms", type=float, default=None,
                        help="a detector: darknet's NMS IoU (default .45; .4 for YOLOv1; 0 skips NMS)")


def heads_for(args: argparse.Namespace, qnet=None) -> dict | None:
    """The heads description for the board's model (``--onnx``, else the int8 reference's graph, else ``--cfg``),
    or None for a classifier. Read before touching the board: a bad file fails fast."""
    from ..headspec import describe, heads_from_graph, heads_of

    if args.onnx:
        return describe(args.onnx)
    graph = qnet.graph if qnet is not None else None
    if graph is None and args.cfg:
        from ..graph import load_graph
        graph = load_graph(args.cfg)
    if graph is None or not heads_of(graph):
        if args.thresh is not None or args.nms is not None:
            raise UnsupportedError("--thresh/--nms are for detectors: give the model's --onnx, --int8-graph or --cfg")
        return None
    return heads_from_graph(graph)


def preprocessing(desc: dict | None) -> str:
    """How the image becomes the board's input: letterbox, or resize for a YOLOv1 [detection] head (``darknet yolo
    test``)."""
    return "resize" if desc and any(h["kind"] == "detection" for h in desc["heads"]) else "letterbox"


def thresholds(desc: dict, args: argparse.Namespace) -> tuple[float, float]:
    yolov1 = preprocessing(desc) == "resize"
    return (args.thresh if args.thresh is not None else (0.2 if yolov1 else 0.5),
            args.nms if args.nms is not None else (0.4 if yolov1 else 0.45))


def _names(desc: dict) -> list[str] | None:
    """The description's names, else darknet's coco.names/voc.names for 80/20 classes when fetched."""
    if desc.get("names"):
        return desc["names"]
    from ..fetch import find_data, read_names

    name = {80: "coco.names", 20: "voc.names"}.get(desc["classes"])
    path = find_data(name) if name else None
    try:
        names = read_names(path) if path else None
    except Exception:              # an unreadable names file: class indices instead
        return None
    return names[:desc["classes"]] if names and len(names) >= desc["classes"] else None


def decode_board(desc: dict, outputs, image_size: tuple[int, int], args: argparse.Namespace, qnet=None,
                 image: "np.ndarray | None" = None) -> dict:
    """Decode the board's outputs (``OutputTensor``s) with darknet's rules on an image of ``image_size``; with
    ``qnet`` (the int8 reference) and the (3, H, W) ``image`` the board received (``board_io.received_image``), compare
    with the engine.

    Returns {"thresh", "nms", "image_size", "heads": [{"output", "board_output", "shape"}], "detections": [...],
    "lines": [...]} plus "int8_comparison" with the reference.
    """
    from ..boxes import decode
    from ..headspec import arrange_named, match_named, output_name

    missing = [o.info.name for o in outputs if o.data is None]
    if missing or not outputs:
        raise UnsupportedError(f"the board returned no data for output(s) {', '.join(missing) or 'all'}: decoding "
                               "needs --mode io")
    named = [(o.info.name, o.values()) for o in outputs]
    try:
        tensors = arrange_named(desc, named)
        matched = match_named(desc, named)
    except DarknetpyError as e:            # as compare_with_int8_engine says of a size mismatch
        raise UnsupportedError(f"the board's outputs do not fit the detector's heads: {e} (is it the model on the "
                               "board?)") from None
    thresh, nms = thresholds(desc, args)
    names = _names(desc)
    dets = decode(desc, tensors, image_size, thresh, 0.5, nms, names=names)
    result = {"thresh": thresh, "nms": nms, "image_size": list(image_size),
              "heads": [{"output": output_name(h), "board_output": named[k][0], "shape": list(h["shape"])}
                        for h, k in zip(desc["heads"], matched)],
              "detections": [d.as_json() for d in dets], "lines": [d.line for d in dets]}
    if qnet is not None and image is not None:
        result["int8_comparison"] = _compare(desc, tensors, dets, qnet, image, image_size, thresh, nms, names)
    return result


def _compare(desc, tensors, dets, qnet, image, image_size, thresh, nms, names) -> dict:
    """The board's head tensors and boxes against darknetpy's int8 engine on the same (3, H, W) image."""
    import numpy as np

    from ..boxes import decode
    from ..headspec import output_name
    from ..image import normalize
    from ..int8.report import match_boxes

    net = qnet.graph.net
    if tuple(image.shape) != tuple(qnet.input_shape):
        raise UnsupportedError(f"cannot compare: the board's input is {tuple(image.shape)} (C, H, W), darknetpy's "
                               f"network takes {tuple(qnet.input_shape)}")
    ref = qnet.head_inputs(normalize(np.ascontiguousarray(image, np.float32), net.mean, net.std))
    if [r.size for r in ref] != [t.size for t in tensors]:
        raise UnsupportedError("cannot compare: the board's outputs do not have the sizes of the int8 graph's heads "
                               "(is it the model on the board?)")
    heads = []
    for head, r, t in zip(desc["heads"], ref, tensors):
        diff = np.abs(r.reshape(-1).astype(np.float64) - t.reshape(-1))
        heads.append({"output": output_name(head), "identical": float(np.mean(diff == 0)),
                      "max_abs_diff": float(diff.max())})
    mine = decode(qnet.graph, ref, image_size, thresh, 0.5, nms, names=names)
    ious = match_boxes(mine, dets)
    return {"heads": heads, "boxes_identical": mine == dets, "board_lines": len(dets), "int8_lines": len(mine),
            "found": len(ious), "missed": len(mine) - len(ious), "extra": len(dets) - len(ious)}


def format_detections(result: dict, source: str) -> str:
    """darknet's lines for the board's outputs, with a header and (with a reference) the comparison."""
    w, h = result["image_size"]
    heads = ", ".join(f"{x['output']} <- {x['board_output']}" for x in result["heads"])
    lines = [f"boxes    {source} ({w}x{h}), thresh {result['thresh']:g}, nms {result['nms']:g}; heads {heads}"]
    lines += result["lines"]
    c = result.get("int8_comparison")
    if c is not None:
        same = "  ".join(f"{x['output']} identical {100 * x['identical']:.2f} %" for x in c["heads"])
        verdict = ("boxes identical" if c["boxes_identical"] else
                   f"boxes differ: {c['found']} of darknetpy's {c['int8_lines']} found (same class, IoU >= 0.5), "
                   f"{c['missed']} missed, {c['extra']} extra")
        lines.append(f"int8     {verdict} ({c['board_lines']} lines board, {c['int8_lines']} darknetpy's int8 "
                     f"engine)  {same}")
    return "\n".join(lines)


def source_name(path: str | None) -> str:
    return f"image {os.path.basename(path)}" if path else "const input"
