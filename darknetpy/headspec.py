"""The detection heads as a plain description: everything ``boxes.decode`` needs to turn the tensors entering
the heads into darknet's boxes, without the cfg (``../shared/specs/detection.md``).

* ``heads_from_graph(graph)``: the description, a JSON-serialisable dict (``{"format": "darknetpy-heads", ...}``);
  ``check_heads`` checks one read from elsewhere;
* ``describe(source)``: the description of a ``Network``/``Graph``, of the dict or its JSON text, or of an exported
  ONNX model: its ``ModelProto``, a path to the ``.onnx`` file, or its metadata as a dict (``metadata_props``, or
  onnxruntime's ``custom_metadata_map``), which carries the description as JSON under ``METADATA_KEY``;
* ``output_name(head)``: the name of the exported model's graph output for a head, ``l<index>_<kind>`` (e.g.
  ``l16_yolo``): the tensor *entering* that layer (the raw conv/connected output), since decoding applies the
  head's own forward pass;
* ``arrange(desc, tensors)``: raw tensors from anywhere (a list in head order, a dict by output name, or a board's
  (name, array) pairs matched by name, else by size in order; NHWC accepted) -> one float32 array per head.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import layers as L
from .errors import DarknetpyError, ExportError, UnsupportedError

HEADS_FORMAT = "darknetpy-heads"
HEADS_VERSION = 1
HEAD_KINDS = ("region", "yolo", "detection")
HEAD_CLASSES = (L.Region, L.Yolo, L.DetectionLayer)
METADATA_KEY = "darknetpy_heads"                 # the exported model's metadata_props key holding the JSON


def heads_from_graph(graph: L.Graph, names: list[str] | None = None) -> dict:
    """The detection heads of ``graph`` as a plain, JSON-serialisable dict (what ``decode`` needs).

    ``{"format": "darknetpy-heads", "version": 1, "net_w", "net_h", "classes", "names", "heads": [...]}`` with
    one entry per [region]/[yolo]/[detection] layer in layer order: ``kind``, ``layer`` (darknet's index),
    ``shape`` (the tensor entering it: ``[c, h, w]``, or ``[n]`` for [detection]), ``classes`` and the kind's
    keys (region: ``coords num anchors softmax background``; yolo: ``num mask anchors``; detection:
    ``coords side num sqrt softmax``). ``classes`` at the top is the size of darknet's probability arrays
    (the last layer's ``classes``).

    >>> heads_from_graph(darknetpy.load_graph("yolov3-tiny.cfg"))["heads"][0]["mask"]    # doctest: +SKIP
    [3, 4, 5]
    """
    unsupported_if_no_heads(graph)
    heads = []
    for layer in graph.layers:
        if isinstance(layer, L.Region):
            heads.append({"kind": "region", "layer": layer.index, "shape": [layer.c, layer.h, layer.w],
                          "classes": layer.classes, "coords": layer.coords, "num": layer.num,
                          "anchors": [float(a) for a in layer.anchors], "softmax": bool(layer.softmax),
                          "background": bool(layer.background)})
        elif isinstance(layer, L.Yolo):
            heads.append({"kind": "yolo", "layer": layer.index, "shape": [layer.c, layer.h, layer.w],
                          "classes": layer.classes, "num": layer.num, "mask": [int(m) for m in layer.mask],
                          "anchors": [float(a) for a in layer.anchors]})
        elif isinstance(layer, L.DetectionLayer):
            heads.append({"kind": "detection", "layer": layer.index, "shape": [layer.inputs],
                          "classes": layer.classes, "coords": layer.coords, "side": layer.side, "num": layer.num,
                          "sqrt": bool(layer.sqrt), "softmax": bool(layer.softmax)})
    last = graph.layers[-1] if graph.layers else None
    classes = getattr(last, "classes", None) if last is not None and type(last) in HEAD_CLASSES else None
    desc = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "net_w": graph.net.w, "net_h": graph.net.h,
            "classes": classes if classes is not None else (heads[-1]["classes"] if heads else 0),
            "names": list(names) if names is not None else None, "heads": heads}
    return check_heads(desc, where=graph.path)


def describe(net) -> dict:
    """The heads description of ``net``, checked: a ``Network`` (anything with ``.graph``, a QuantizedNetwork
    too), a ``Graph``, the dict itself or its JSON text, or an exported ONNX model -- an ``onnx.ModelProto``, the
    path of the ``.onnx`` file, or its metadata as a dict {key: value} holding ``METADATA_KEY``."""
    if isinstance(net, str) and net.lstrip().startswith("{"):
        return _from_json(net, "heads description")
    if isinstance(net, (str, os.PathLike)) and (str(net).endswith(".onnx") or os.path.isfile(net)):
        return describe_model(_load_model(os.fspath(net)), where=os.fspath(net))
    if hasattr(net, "metadata_props") and hasattr(net, "graph"):        # an onnx.ModelProto (no onnx import)
        return describe_model(net)
    if isinstance(net, dict):
        if "format" not in net and METADATA_KEY in net:                   # a model's metadata
            return describe_model(net)
        return check_heads(net)
    graph = getattr(net, "graph", net)
    if isinstance(graph, L.Graph):
        return heads_from_graph(graph)
    raise DarknetpyError(f"decode() needs a Network, a Graph or a heads description (a dict or its JSON text), or an "
                         f"exported detector (its ONNX ModelProto, the .onnx path, or its metadata dict), got "
                         f"{type(net).__name__}")


def describe_model(model, where: str = "") -> dict:
    """The heads description an exported model carries: ``model`` is an ``onnx.ModelProto`` or its metadata
    as a dict; the JSON under ``METADATA_KEY`` is checked (``check_heads``)."""
    props = model if isinstance(model, dict) else {p.key: p.value for p in model.metadata_props}
    where = where or (f"model {model.graph.name!r}" if not isinstance(model, dict) else "model metadata")
    if METADATA_KEY not in props:
        raise UnsupportedError(f"{where}: no {METADATA_KEY!r} metadata: not a detector exported by darknetpy (a "
                               "classifier, or another exporter); give the cfg instead")
    value = props[METADATA_KEY]
    return _from_json(value, f"{where}: {METADATA_KEY}") if isinstance(value, str) else check_heads(
        value, f"{where}: {METADATA_KEY}")


def _from_json(text: str, where: str) -> dict:
    try:
        desc = json.loads(text)
    except ValueError as e:
        raise DarknetpyError(f"{where}: not valid JSON: {e}") from None
    return check_heads(desc, where)


def _load_model(path: str):
    """The ModelProto at ``path`` without its external data (only the metadata is read)."""
    import onnx

    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such ONNX file")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX model ({e})") from None


def output_name(head: dict) -> str:
    """The exported model's graph output for ``head``: ``l<layer>_<kind>`` (``"l16_yolo"``), or the
    description's own ``output`` key when it has one."""
    return str(head.get("output") or f"l{head['layer']}_{head['kind']}")


def with_outputs(desc: dict) -> dict:
    """``desc`` with every head's ``output`` name set (``output_name``): what an exported model's metadata holds."""
    d = dict(desc)
    d["heads"] = [dict(h, output=output_name(h)) for h in desc["heads"]]
    return d


def arrange(desc: dict, tensors) -> list:
    """One array per head, in head order, from ``tensors``: a list in head order (returned as it is: ``decode``
    checks the shapes), a dict {output name: array} (``output_name``; onnxruntime's outputs zipped with their
    names), or a list of (name, array) pairs from anywhere (a board's outputs), matched by ``arrange_named``."""
    if isinstance(tensors, dict):
        missing = [output_name(h) for h in desc["heads"] if output_name(h) not in tensors]
        if missing:
            raise DarknetpyError(f"no tensor named {', '.join(missing)} among {', '.join(map(str, tensors)) or 'none'} "
                                 "(the heads' output names)")
        return [tensors[output_name(h)] for h in desc["heads"]]
    items = list(tensors) if not isinstance(tensors, np.ndarray) else [tensors]
    if items and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) for t in items):
        return arrange_named(desc, items)
    return items


def match_named(desc: dict, named: list) -> list[int]:
    """For each head, the index in ``named`` ((name, array) pairs) of its tensor: by name (``output_name``) when
    every head's name is present; otherwise (a board that renamed its outputs) the heads take, in order, the first
    unused tensor with their number of values."""
    names = [n for n, _ in named]
    heads = desc["heads"]
    if all(output_name(h) in names for h in heads):
        return [names.index(output_name(h)) for h in heads]
    chosen: list[int] = []
    for h in heads:
        size = int(np.prod(h["shape"]))
        k = next((k for k, (_, a) in enumerate(named) if k not in chosen and np.asarray(a).size == size), None)
        if k is None:
            have = ", ".join(f"{n} {tuple(np.shape(a))}" for n, a in named) or "none"
            raise DarknetpyError(f"no output of {size} values for layer {h['layer']} [{h['kind']}] (shape "
                                 f"{tuple(h['shape'])}, output {output_name(h)!r}); the outputs are: {have}")
        chosen.append(k)
    return chosen


def arrange_named(desc: dict, named: list) -> list[np.ndarray]:
    """Raw tensors (name, array) -> one float32 array per head, shaped as the head's ``shape``: matched by
    ``match_named``. A ``[c, h, w]`` head accepts (c, h, w) and channel-last (h, w, c) tensors, with or without
    leading 1s, or flat ones."""
    return [_as_head_shape(h, *named[k]) for h, k in zip(desc["heads"], match_named(desc, named))]


def _as_head_shape(head: dict, name: str, a) -> np.ndarray:
    a = np.asarray(a)
    shape = tuple(head["shape"])
    dims = tuple(a.shape)
    while len(dims) > len(shape) and dims[0] == 1:
        dims = dims[1:]
    if a.size != int(np.prod(shape)):
        raise DarknetpyError(f"output {name!r} has shape {a.shape}, layer {head['layer']} [{head['kind']}] takes "
                             f"{shape}")
    if len(shape) == 3 and dims == (shape[1], shape[2], shape[0]) and dims != shape:
        a = a.reshape(dims).transpose(2, 0, 1)                            # channel-last (h, w, c)
    elif len(dims) > 1 and dims != shape:
        raise DarknetpyError(f"output {name!r} has shape {a.shape}: neither {shape} nor channel-last "
                             f"{(shape[1:] + shape[:1]) if len(shape) == 3 else shape} for layer {head['layer']} "
                             f"[{head['kind']}]")
    return np.ascontiguousarray(a.reshape(shape), np.float32)


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise DarknetpyError(f"{where}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_heads(desc: dict, where: str = "heads description") -> dict:
    """Check a heads description (from ``heads_from_graph`` or from an exported model's metadata) and return
    it. Raises DarknetpyError naming the first problem: a wrong format, a missing key, anchors that do not
    hold ``2*num`` numbers, a mask index out of range, a shape that does not fit the head's keys."""
    _need(isinstance(desc, dict), where, "not a dict")
    _need(desc.get("format") == HEADS_FORMAT, where, f"format is {desc.get('format')!r}, expected {HEADS_FORMAT!r}")
    _need(desc.get("version") == HEADS_VERSION, where, f"version {desc.get('version')!r} is not supported "
          f"(this darknetpy reads version {HEADS_VERSION})")
    for k in ("net_w", "net_h", "classes"):
        _need(_is_int(desc.get(k)) and desc[k] > 0, where, f"{k!r} must be a positive integer, got {desc.get(k)!r}")
    heads = desc.get("heads")
    _need(isinstance(heads, list) and len(heads) > 0, where, "'heads' must be a non-empty list (a network "
          "without [region], [yolo] or [detection] layers detects nothing)")
    names = desc.get("names")
    _need(names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)), where,
          "'names' must be null or a list of strings")
    _need(names is None or len(names) >= desc["classes"], where,
          f"{len(names or [])} names for {desc['classes']} classes")
    for i, h in enumerate(heads):
        hw = f"{where}: head {i}"
        _need(isinstance(h, dict) and h.get("kind") in HEAD_KINDS, hw, f"kind must be one of {HEAD_KINDS}")
        kind = h["kind"]
        hw = f"{hw} [{kind}]"
        need = {"region": ("classes", "coords", "num", "anchors", "softmax", "background"),
                "yolo": ("classes", "num", "mask", "anchors"),
                "detection": ("classes", "coords", "side", "num", "sqrt", "softmax")}[kind]
        missing = [k for k in ("shape",) + need if k not in h]
        _need(not missing, hw, f"missing {', '.join(missing)}")
        for k in ("classes", "num") + (("coords",) if kind != "yolo" else ()) + (("side",) if kind == "detection"
                                                                                 else ()):
            _need(_is_int(h[k]) and h[k] > 0, hw, f"{k!r} must be a positive integer, got {h[k]!r}")
        _need(h["classes"] == desc["classes"], hw, f"has {h['classes']} classes but the probability arrays have "
              f"{desc['classes']} (darknet sizes them by the last layer and reads out of bounds otherwise)")
        shape = h["shape"]
        _need(isinstance(shape, list) and all(_is_int(s) and s > 0 for s in shape), hw, "'shape' must be a list "
              "of positive integers")
        if kind == "detection":
            _need(h["coords"] == 4, hw, "coords must be 4 (darknet decodes x, y, w, h)")
            n = h["side"] * h["side"] * ((1 + h["coords"]) * h["num"] + h["classes"])
            _need(len(shape) == 1 and shape[0] == n, hw, f"shape {shape} is not [{n}] (side*side*((1+coords)*num "
                  "+ classes))")
            continue
        _need(len(shape) == 3, hw, f"shape {shape} is not [c, h, w]")
        anchors = h["anchors"]
        _need(isinstance(anchors, list) and len(anchors) == 2 * h["num"]
              and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in anchors), hw,
              f"'anchors' must hold 2*num = {2 * h['num']} numbers")
        if kind == "region":
            _need(h["coords"] >= 4, hw, "coords must be at least 4")
            c = h["num"] * (h["classes"] + h["coords"] + 1)
        else:
            mask = h["mask"]
            _need(isinstance(mask, list) and len(mask) > 0 and all(_is_int(m) and 0 <= m < h["num"] for m in mask),
                  hw, f"'mask' must be a non-empty list of anchor indices 0..{h['num'] - 1}")
            c = len(mask) * (h["classes"] + 5)
        _need(shape[0] == c, hw, f"shape {shape} has {shape[0]} channels, the keys make {c}")
    return desc



def heads_of(graph: L.Graph) -> list[L.Layer]:
    """The [region]/[yolo]/[detection] layers of ``graph`` in layer order (what ``decode`` wants inputs for)."""
    return [layer for layer in graph.layers if isinstance(layer, HEAD_CLASSES)]


def unsupported_if_no_heads(graph: L.Graph) -> None:
    """Raise UnsupportedError when ``graph`` has no detection head."""
    if not heads_of(graph):
        raise UnsupportedError(f"{graph.path}: no [region], [yolo] or [detection] layer: this network does not "
                               "detect objects (use classify)")
