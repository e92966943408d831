"""``darknetpy detect CFG WEIGHTS IMAGE...``: darknet's ``detector test``, with darknet's printed lines and picture.

    darknetpy detect CFG WEIGHTS IMAGE [IMAGE ...] [--thresh 0.5] [--hier-thresh 0.5] [--nms 0.45]
                     [--names FILE] [--json] [--out FILE | --out-dir DIR] [--threads N] [--exact]

stdout: per image, darknet's lines ``name: NN%`` in darknet's order (``--json``: one object per image instead);
stderr: ``IMAGE: Predicted in S seconds.``. The picture with boxes and labels is written to ``predictions.png``
(one image), ``--out FILE``, or one file per image: ``--out-dir DIR`` gets ``DIR/<name>.png``; without it,
several images give ``predictions_<name>.png`` in the current directory. A YOLOv1 network ([detection]) runs
as ``darknet yolo test`` does (resize instead of letterbox; that command's thresholds are 0.2 and nms 0.4).

Labels: ``--names``, else darknet's coco.names (80 classes) or voc.names (20) when fetched
(``darknetpy fetch coco.names voc.names``), else class indices.

An image that cannot be processed (missing, corrupt, too thin to letterbox, picture not writable) is one
``darknetpy: error: IMAGE: ...`` line (with --json also ``{"image": ..., "error": ..., "exit_code": ...}`` on
stdout) and the batch goes on; the exit code is then the first such error's. A problem with the cfg, the
weights or the labels stops the command before any image.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

from . import batch, jsonout
from ..errors import DarknetpyError, UnsupportedError
from .args import positive_int


def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def add_arguments(c) -> None:
    c.add_argument("cfg", help="network .cfg (with [region], [yolo] or [detection] layers)")
    c.add_argument("weights", help="network .weights")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--thresh", type=_number, default=0.5, help="objectness and class threshold (default 0.5)")
    c.add_argument("--hier-thresh", type=_number, default=0.5,
                   help="accepted for darknet's sake; like in darknet it only matters for yolo9000 (default 0.5)")
    c.add_argument("--nms", type=_number, default=0.45, help="IoU above which a box loses its class to a better "
                                                             "one (default 0.45; 0: no NMS)")
    c.add_argument("--names", help="label file, one name per line (default: coco.names for 80 classes, voc.names "
                                   "for 20, when fetched)")
    c.add_argument("--json", action="store_true", help="one JSON object per image")
    out = c.add_mutually_exclusive_group()
    out.add_argument("--out", metavar="FILE", help="the picture for a single image (default predictions.png)")
    out.add_argument("--out-dir", metavar="DIR", help="one picture per image, DIR/<image name>.png")
    c.add_argument("--threads", type=positive_int, default=None, help="threads for the kernels (default: all cores)")
    c.add_argument("--exact", action="store_true", help="darknet's exact arithmetic (slower; also DARKNETPY_EXACT=1)")


def _labels(path: str | None, classes: int) -> list[str] | None:
    from ..fetch import find_data, read_names

    if path is None:
        default = {80: "coco.names", 20: "voc.names"}.get(classes)
        if default is None:
            return None
        found = find_data(default)
        if found is None:
            warnings.warn(f"{default} not found (run `darknetpy fetch {default}`, or pass --names); "
                          "printing class indices")
            return None
        path = str(found)
    names = read_names(path)
    if len(names) < classes:
        raise DarknetpyError(f"{path}: has {len(names)} names but the network has {classes} classes")
    return names[:classes]


def _pictures(args) -> list[str]:
    """The picture file of each image, in order (distinct even when two images share a name)."""
    if args.out:
        if len(args.images) > 1:
            raise DarknetpyError(f"--out names one picture but there are {len(args.images)} images: use --out-dir")
        return [args.out]
    if args.out_dir is None and len(args.images) == 1:
        return ["predictions.png"]
    out, seen = [], set()
    for image in args.images:
        stem = os.path.splitext(os.path.basename(image))[0] or "image"
        base = os.path.join(args.out_dir, stem) if args.out_dir else f"predictions_{stem}"
        name, k = base + ".png", 2
        while name in seen or os.path.abspath(name) == os.path.abspath(image):
            name, k = f"{base}_{k}.png", k + 1
        seen.add(name)
        out.append(name)
    return out


def run(args) -> int:
    from .. import boxes, draw, warmup
    from ..image import load_image
    from ..network import load, set_threads

    set_threads(args.threads)
    net = load(args.cfg, args.weights, exact=args.exact or None)
    heads = boxes.heads_of(net.graph)
    if not heads:
        boxes.unsupported_if_no_heads(net.graph)
    if len(net.input_shape) != 3 or net.input_shape[0] != 3:
        raise UnsupportedError(f"{args.cfg}: detect feeds RGB images, but the network input is {net.input_shape}")
    classes = heads[-1].classes
    labels = _labels(args.names, classes)
    pictures = _pictures(args)
    if args.out_dir:
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as e:
            raise DarknetpyError(f"--out-dir {args.out_dir}: cannot create it: {e.strerror or e}") from None
    # Build the plan detect() runs (Network.detect_plan: the heads' inputs kept) and compile or load its
    # kernels before timing, with the helper process on a cold kernel cache (warmup.py; the helper builds
    # the keep_all plan: the same kernels, bar fusions).
    helper = warmup.start(net.graph, exact=net.exact, keep_all=True)
    ok = False
    try:
        warmup.cooperate(helper, net.detect_plan())
        ok = True
    finally:
        if helper is not None:
            warmup.finish(helper, net.graph, exact=net.exact, keep_all=True, mark=ok)
    first_error = 0
    marked = False
    for path, picture in zip(args.images, pictures):
        try:
            img = load_image(path)
            t = time.perf_counter()
            dets = net.detect(img, args.thresh, args.hier_thresh, args.nms, names=labels)
            dt = time.perf_counter() - t
            if not marked:
                warmup.finish(None, net.graph, exact=net.exact, keep_all=True)
                marked = True
            draw.save_image(draw.draw_detections(img, dets, classes), picture)
        except DarknetpyError as e:
            code = batch.report_image_error(path, e, args.json)     # this image only; the others go on
            first_error = first_error or code
            continue
        if args.json:
            print(jsonout.dumps({"image": path, "seconds": round(dt, 6), "width": int(img.shape[2]),
                              "height": int(img.shape[1]), "picture": picture,
                              "detections": [d.as_json() for d in dets]}))
        else:
            for d in dets:
                print(d.line)
            print(f"{path}: Predicted in {dt:f} seconds.", file=sys.stderr)
        sys.stdout.flush()
    return first_error
