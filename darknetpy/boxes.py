"""Darknet's boxes: from the detection heads to the lines ``detector test`` prints (``../shared/specs/detection.md``).

What darknet does after the network ran, step by step, each with darknet's float32/double arithmetic:

* the heads' forward pass ([region], [yolo], [detection]), by the same kernels the runtime uses
  (``kernels/detection.py``): ``decode`` is given the tensors *entering* the heads (raw conv/connected outputs);
* ``get_network_boxes`` (§5-6): the boxes of every head in layer order, objectness, per-class probabilities
  gated by ``thresh``; [region] keeps every slot (anchor-major), [yolo] only objectness > thresh (cell-major),
  [detection] every slot (cell-major, raw confidence as objectness);
* the letterbox correction (§7, ``correct_region_boxes`` = ``correct_yolo_boxes``) for any image and any
  network aspect, with darknet's half-pixel offset when the padding is odd;
* ``do_nms_sort`` (§8): compaction of zero-objectness boxes by swapping from the end, then per class a
  *stable* sort by probability (glibc's qsort is a merge sort) and greedy suppression with float32 IoU;
* the printed lines (§9.2) ``name: NN%`` and the pixel edges ``draw_detections`` computes and clamps (§9.3).

Decisions where darknet has none to offer:

* ``hier_thresh`` is accepted and, as in darknet, has no effect (it only reaches yolo9000's softmax tree,
  which darknetpy refuses when it reads the cfg);
* [detection] (YOLOv1) boxes are computed as ``darknet yolo test`` does (``get_network_boxes(net, 1, 1, ...)``):
  relative to the image, like every other head. ``detector test`` would give them in pixels of the image
  without any letterbox correction while it letterboxed the input (detection.md §13.9), which is never what
  a user wants; the probabilities and printed lines do not depend on that choice;
* darknet divides ``new_w/netw`` and ``netw/new_w`` with ``RCPPS`` and one Newton step (``-Ofast``), whose last
  bit depends on the CPU (§7); this module divides exactly, so coordinates may differ from a given darknet
  binary by 1-2 ulp (1.2e-7 relative at most on the cases); everything else is bit-identical.

Heads are described by a plain JSON-serialisable dict (``headspec.heads_from_graph``), the form an exported model
carries, so that ``decode`` works from a ``Network``, a ``Graph``, that dict, or an exported model alike
(``headspec.describe``; the description's functions are re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import DarknetpyError
from .headspec import (HEAD_CLASSES, HEAD_KINDS, HEADS_FORMAT, HEADS_VERSION, METADATA_KEY,  # noqa: F401
                       _is_int, arrange, check_heads, describe, heads_from_graph, heads_of, output_name,
                       unsupported_if_no_heads)
from .image import letterbox_size
from .kernels import detection as K

F32 = np.float32


@dataclass(frozen=True)
class Detection:
    """One line that darknet's ``detector test`` prints: a box and one class above the threshold.

    ``x, y, w, h``: the box centre and size relative to the image (as darknet holds it, letterbox-corrected;
    may lie outside [0, 1]). ``left, top, right, bottom``: its pixel edges as ``draw_detections`` computes and
    clamps them (left/top only from below, right/bottom only from above, so ``bottom < top`` can happen for a
    box above the image). ``det_index``: the box's position in darknet's array after NMS; consecutive
    Detections with the same ``det_index`` are one drawn box with several labels.

    >>> d = Detection(cls=16, name="dog", prob=0.92, x=.3, y=.6, w=.2, h=.4, left=153, top=230, right=307,
    ...               bottom=460)
    >>> d.line
    'dog: 92%'
    """

    cls: int
    name: str
    prob: float
    x: float
    y: float
    w: float
    h: float
    left: int
    top: int
    right: int
    bottom: int
    det_index: int = -1

    @property
    def line(self) -> str:
        """darknet's ``printf("%s: %.0f%%\\n", names[j], prob*100)`` (float product, round half to even)."""
        return f"{self.name}: {float(F32(self.prob) * F32(100)):.0f}%"

    def as_json(self) -> dict:
        """The record ``darknetpy detect --json`` prints for this line."""
        return {"class": self.cls, "name": self.name, "prob": self.prob,
                "box": {"x": self.x, "y": self.y, "w": self.w, "h": self.h},
                "left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom}


# -- the heads' forward pass (darknet reads each head's OUTPUT) ----------------------------------------------

def head_output(head: dict, x) -> np.ndarray:
    """The output of one head given the tensor entering it, by the runtime's kernels: flat float32."""
    x = np.asarray(x)
    n = int(np.prod(head["shape"]))
    if x.dtype != np.float32:
        raise DarknetpyError(f"layer {head['layer']} [{head['kind']}]: its input must be float32, got {x.dtype}")
    if x.size != n or (x.ndim > 1 and tuple(s for s in x.shape if s != 1) != tuple(s for s in head["shape"]
                                                                                    if s != 1)):
        raise DarknetpyError(f"layer {head['layer']} [{head['kind']}]: its input has shape {x.shape}, expected "
                             f"{tuple(head['shape'])}")
    x = np.ascontiguousarray(x.reshape(-1))
    out = np.empty_like(x)
    if head["kind"] == "region":
        _, h, w = head["shape"]
        K.region(x, head["num"], head["coords"], head["classes"], head["softmax"], head["background"], h * w, out)
    elif head["kind"] == "yolo":
        _, h, w = head["shape"]
        K.yolo(x, len(head["mask"]), head["classes"], h * w, out)
    else:
        K.detection(x, head["side"] * head["side"], head["classes"], head["softmax"], out)
    return out


# -- get_network_boxes ---------------------------------------------------------------------------------------

@dataclass
class Boxes:
    """darknet's ``detection`` array, as columns. ``x y w h objectness``: float32 (N,); ``prob``: float32
    (N, classes); ``total``: how many of the N boxes NMS kept in front (N before NMS)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    objectness: np.ndarray
    prob: np.ndarray
    total: int

    def __len__(self) -> int:
        return len(self.x)

    def take(self, order) -> "Boxes":
        return Boxes(self.x[order], self.y[order], self.w[order], self.h[order], self.objectness[order],
                     self.prob[order], self.total)


def _exp(values: np.ndarray) -> np.ndarray:
    """C's ``exp`` (double) of each float32 value, by the C library like darknet (inf on overflow)."""
    out = np.empty(values.size, np.float64)
    for i, v in enumerate(values.reshape(-1).tolist()):
        try:
            out[i] = math.exp(v)
        except OverflowError:
            out[i] = math.inf
    return out.reshape(values.shape)


def letterbox_correct(x, y, w, h, image_size: tuple[int, int], net_size: tuple[int, int]):
    """darknet's ``correct_region_boxes`` / ``correct_yolo_boxes`` with ``relative=1`` (detection.md §7).

    Boxes relative to the letterboxed network input -> relative to the original image. ``x y w h`` float32
    arrays; returns four new float32 arrays. The offset is ``(netw-new_w)/2./netw`` in double although the
    image was pasted at the integer ``(netw-new_w)/2``: darknet's half-pixel shift when the padding is odd,
    reproduced. As compiled: the x/y division is a multiply by the double reciprocal of the float ratio.
    """
    im_w, im_h = image_size
    net_w, net_h = net_size
    new_w, new_h = letterbox_size(im_w, im_h, net_w, net_h)
    with np.errstate(all="ignore"):
        rx, ry = F32(new_w) / F32(net_w), F32(new_h) / F32(net_h)          # float ratios (RCPPS in darknet)
        sw, sh = F32(net_w) / F32(new_w), F32(net_h) / F32(new_h)
        ox, oy = (net_w - new_w) / 2.0 / net_w, (net_h - new_h) / 2.0 / net_h
        ix = 1.0 / float(rx) if rx else math.inf
        iy = 1.0 / float(ry) if ry else math.inf
        cx = ((np.asarray(x, np.float64) - ox) * ix).astype(F32)
        cy = ((np.asarray(y, np.float64) - oy) * iy).astype(F32)
        cw = (np.asarray(w, F32) * sw).astype(F32)
        ch = (np.asarray(h, F32) * sh).astype(F32)
    return cx, cy, cw, ch


def _region_boxes(head, out, image_size, net_size, thresh, classes) -> Boxes:
    _, lh, lw = head["shape"]
    num, coords, ncls = head["num"], head["coords"], head["classes"]
    o = out.reshape(num, ncls + coords + 1, lh * lw)
    cell = np.arange(lh * lw)
    col, row = (cell % lw).astype(F32), (cell // lw).astype(F32)
    anchors = np.asarray(head["anchors"], F32).astype(np.float64).reshape(num, 2)
    with np.errstate(all="ignore"):
        x = (col + o[:, 0]) / F32(lw)                                       # float add, float division
        y = (row + o[:, 1]) / F32(lh)
        w = (_exp(o[:, 2]) * anchors[:, :1] / lw).astype(F32)               # double, then float
        h = (_exp(o[:, 3]) * anchors[:, 1:] / lh).astype(F32)
        scale = np.ones((num, lh * lw), F32) if head["background"] else o[:, coords]
        obj = np.where(scale > thresh, scale, F32(0)).astype(F32)
        p = scale[:, None, :] * o[:, coords + 1:coords + 1 + ncls]          # (num, classes, cells) float32
        p = np.where(p > thresh, p, F32(0))
        p = np.where((obj != 0)[:, None, :], p, F32(0))                     # classes only if objectness survived
    prob = np.zeros((num * lh * lw, classes), F32)
    prob[:, :ncls] = p.transpose(0, 2, 1).reshape(-1, ncls)                  # slot a*cells + cell
    x, y, w, h = letterbox_correct(x.reshape(-1), y.reshape(-1), w.reshape(-1), h.reshape(-1), image_size,
                                   net_size)
    return Boxes(x, y, w, h, obj.reshape(-1), prob, num * lh * lw)


def _yolo_boxes(head, out, image_size, net_size, thresh, classes) -> Boxes:
    _, lh, lw = head["shape"]
    mask, ncls = head["mask"], head["classes"]
    n = len(mask)
    o = out.reshape(n, ncls + 5, lh * lw)
    keep = ~(o[:, 4] <= thresh)                                             # NaN objectness is kept, as in C
    cell, a = np.nonzero(keep.T)                                            # cells in raster order, anchors inside
    t = o[a, :, cell]                                                       # (kept, classes+5)
    col, row = (cell % lw).astype(F32), (cell // lw).astype(F32)
    anchors = np.asarray(head["anchors"], F32).astype(np.float64).reshape(-1, 2)[np.asarray(mask, int)[a]]
    net_w, net_h = net_size
    with np.errstate(all="ignore"):
        x = (col + t[:, 0]) / F32(lw)
        y = (row + t[:, 1]) / F32(lh)
        w = (_exp(t[:, 2]) * anchors[:, 0] / net_w).astype(F32)
        h = (_exp(t[:, 3]) * anchors[:, 1] / net_h).astype(F32)
        obj = t[:, 4].astype(F32)
        p = obj[:, None] * t[:, 5:5 + ncls]
        p = np.where(p > thresh, p, F32(0))
    prob = np.zeros((len(cell), classes), F32)
    prob[:, :ncls] = p
    x, y, w, h = letterbox_correct(x, y, w, h, image_size, net_size)
    return Boxes(x, y, w, h, obj, prob, len(cell))


def _detection_boxes(head, out, thresh, classes) -> Boxes:
    # detection_layer.c get_detection_detections with get_network_boxes(net, 1, 1, ...) as `yolo test` calls it
    s, num, ncls = head["side"], head["num"], head["classes"]
    cells = s * s
    cls = out[:cells * ncls].reshape(cells, ncls)
    conf = out[cells * ncls:cells * (ncls + num)].reshape(cells, num)
    xywh = out[cells * (ncls + num):].reshape(cells, num, 4)
    cell = np.arange(cells)
    col, row = (cell % s).astype(F32)[:, None], (cell // s).astype(F32)[:, None]
    factor = (F32(1) / F32(s)) * F32(1)                                     # (1/side) * W, W = 1
    power = 2 if head["sqrt"] else 1
    with np.errstate(all="ignore"):
        x = ((xywh[:, :, 0] + col) * factor).astype(F32)
        y = ((xywh[:, :, 1] + row) * factor).astype(F32)
        w = (xywh[:, :, 2].astype(np.float64) ** power * 1.0).astype(F32)   # pow() in double, then * W
        h = (xywh[:, :, 3].astype(np.float64) ** power * 1.0).astype(F32)
        p = conf[:, :, None] * cls[:, None, :]                              # (cells, num, classes) float32
        p = np.where(p > thresh, p, F32(0))
    prob = np.zeros((cells * num, classes), F32)
    prob[:, :ncls] = p.reshape(-1, ncls)
    return Boxes(x.reshape(-1), y.reshape(-1), w.reshape(-1), h.reshape(-1), conf.reshape(-1).astype(F32), prob,
                 cells * num)


def network_boxes(desc: dict, outputs: list[np.ndarray], image_size: tuple[int, int], thresh: float) -> Boxes:
    """darknet's ``get_network_boxes`` (``fill_network_boxes``) on the heads' OUTPUTS, in layer order.

    ``image_size`` is the original image's (width, height): the letterbox correction maps the boxes back
    onto it. Returns every box darknet allocates (region and detection: all slots; yolo: objectness > thresh).
    """
    thresh = F32(thresh)
    net_size = (desc["net_w"], desc["net_h"])
    parts = []
    for head, out in zip(desc["heads"], outputs):
        if head["kind"] == "region":
            parts.append(_region_boxes(head, out, image_size, net_size, thresh, desc["classes"]))
        elif head["kind"] == "yolo":
            parts.append(_yolo_boxes(head, out, image_size, net_size, thresh, desc["classes"]))
        else:
            parts.append(_detection_boxes(head, out, thresh, desc["classes"]))
    cat = [np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "y", "w", "h", "objectness", "prob")]
    return Boxes(*cat, total=len(cat[0]))


# -- do_nms_sort -----------------------------------------------------------------------------------------------

def box_iou(ax, ay, aw, ah, bx, by, bw, bh) -> np.ndarray:
    """darknet's ``box_iou`` of box a with each box b, in float32 (box.c: overlap, intersection, union)."""
    two = F32(2)

    def overlap(x1, w1, x2, w2):
        l1, l2 = x1 - w1 / two, x2 - w2 / two
        left = np.where(l1 > l2, l1, l2)
        r1, r2 = x1 + w1 / two, x2 + w2 / two
        right = np.where(r1 < r2, r1, r2)
        return right - left

    with np.errstate(all="ignore"):
        ow, oh = overlap(ax, aw, bx, bw), overlap(ay, ah, by, bh)
        inter = np.where((ow < 0) | (oh < 0), F32(0), ow * oh).astype(F32)
        union = (aw * ah + bw * bh) - inter
        return (inter / union).astype(F32)


def do_nms_sort(boxes: Boxes, nms: float) -> Boxes:
    """darknet's ``do_nms_sort(dets, total, classes, nms)`` (box.c:58-89) on a copy; returns the new array.

    1. Boxes with objectness exactly 0 are swapped with the last candidate (not order-preserving); ``total``
       becomes the count of the others.
    2. For each class: a stable sort of the first ``total`` boxes by that class's probability, descending
       (glibc's qsort is a merge sort: ties keep the order the previous class left), then for each box with a
       non-zero probability, zero that class on every later box whose IoU with it exceeds ``nms``.
    """
    nms = F32(nms)
    obj = boxes.objectness
    order = list(range(len(boxes)))
    k = len(order) - 1
    i = 0
    while i <= k:
        if obj[order[i]] == 0:
            order[i], order[k] = order[k], order[i]
            k -= 1
        else:
            i += 1
    total = k + 1
    b = boxes.take(np.asarray(order, dtype=np.intp))              # fancy indexing: copies
    b.total = total
    for c in range(b.prob.shape[1]):
        perm = np.argsort(-b.prob[:total, c], kind="stable")
        if (perm != np.arange(total)).any():
            head = b.take(perm)
            for name in ("x", "y", "w", "h", "objectness", "prob"):
                getattr(b, name)[:total] = getattr(head, name)
        col = b.prob[:total, c]
        for i in np.flatnonzero(col):
            if col[i] == 0:                                                 # suppressed by an earlier box
                continue
            iou = box_iou(b.x[i], b.y[i], b.w[i], b.h[i], b.x[i + 1:total], b.y[i + 1:total], b.w[i + 1:total],
                          b.h[i + 1:total])
            col[i + 1:total][iou > nms] = 0
    return b


# -- what is printed and drawn -----------------------------------------------------------------------------------

def _c_int(v: float) -> int:
    """C's (int) of a double: truncation; NaN and out-of-range give INT_MIN (x86 cvttsd2si)."""
    if not math.isfinite(v) or not -2147483649.0 < v < 2147483648.0:
        return -2147483648
    return int(v)


def pixel_box(x, y, w, h, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``draw_detections``' pixel edges (left, top, right, bottom) of a relative box: double arithmetic,
    truncation toward zero, then left/top clamped from below to 0 and right/bottom from above to size-1."""
    im_w, im_h = image_size
    x, y, w, h = float(x), float(y), float(w), float(h)
    left = _c_int((x - w / 2.) * im_w)
    right = _c_int((x + w / 2.) * im_w)
    top = _c_int((y - h / 2.) * im_h)
    bot = _c_int((y + h / 2.) * im_h)
    return max(left, 0), max(top, 0), min(right, im_w - 1), min(bot, im_h - 1)


def detections(boxes: Boxes, thresh: float, image_size: tuple[int, int], names: list[str] | None = None
               ) -> list[Detection]:
    """One Detection per line darknet prints: every box in array order, its classes with prob > thresh in
    increasing class order (``draw_detections``)."""
    thresh = F32(thresh)
    rows, cls = np.nonzero(boxes.prob > thresh)
    out = []
    edges: dict[int, tuple[int, int, int, int]] = {}
    for i, j in zip(rows.tolist(), cls.tolist()):
        if i not in edges:
            edges[i] = pixel_box(boxes.x[i], boxes.y[i], boxes.w[i], boxes.h[i], image_size)
        left, top, right, bottom = edges[i]
        out.append(Detection(cls=j, name=names[j] if names is not None else str(j), prob=float(boxes.prob[i, j]),
                             x=float(boxes.x[i]), y=float(boxes.y[i]), w=float(boxes.w[i]), h=float(boxes.h[i]),
                             left=left, top=top, right=right, bottom=bottom, det_index=i))
    return out


def _check_image_size(image_size) -> tuple[int, int]:
    try:
        w, h = image_size
    except (TypeError, ValueError):
        raise DarknetpyError(f"image_size must be (width, height), got {image_size!r}") from None
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        raise DarknetpyError(f"image_size must be two positive integers (width, height), got {image_size!r}")
    return int(w), int(h)


def _check_number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        raise DarknetpyError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def decode(net, head_inputs, image_size, thresh: float = 0.5, hier_thresh: float = 0.5, nms: float = 0.45, *,
           names: list[str] | None = None) -> list[Detection]:
    """Boxes exactly as darknet's ``detector test`` prints them, from the tensors entering the heads.

    ``net``: a ``Network``, a ``Graph``, a heads description (``heads_from_graph``, or its JSON text), or an
    exported detector: its ONNX ``ModelProto``, the ``.onnx`` path, or its metadata dict (``headspec.describe``).
    ``head_inputs``: one float32 array per [region]/[yolo]/[detection] layer, in layer order, as it enters that
    layer (the raw conv/connected output, which is what the exported model outputs; shape (C, H, W),
    (1, C, H, W) or flat); or a dict {output name: array} (``l16_yolo``...); or (name, array) pairs matched by
    name, else by size (``headspec.arrange``). ``image_size``: (width, height) of the original image.
    ``nms=0`` skips NMS like darknet. ``names``: class names (default: the description's ``names``, else the
    class index as a string).

    >>> net = darknetpy.load("yolov3-tiny.cfg", "yolov3-tiny.weights")                   # doctest: +SKIP
    >>> outs = net.predict(darknetpy.letterbox(img, 416, 416), all_layers=True)        # doctest: +SKIP
    >>> dets = darknetpy.decode(net, [outs[15], outs[22]], (768, 576))                 # doctest: +SKIP
    >>> print("\\n".join(d.line for d in dets))                                         # doctest: +SKIP
    dog: 81%
    >>> raw = onnxruntime.InferenceSession("yolov3-tiny.onnx").run(None, {"input": x[None]})  # doctest: +SKIP
    >>> dets = darknetpy.decode("yolov3-tiny.onnx", raw, (768, 576))                   # doctest: +SKIP
    """
    desc = describe(net)
    image_size = _check_image_size(image_size)
    thresh = _check_number(thresh, "thresh")
    _check_number(hier_thresh, "hier_thresh")          # no effect outside yolo9000's tree, as in darknet
    nms = _check_number(nms, "nms")
    inputs = arrange(desc, head_inputs)
    heads = desc["heads"]
    if len(inputs) != len(heads):
        kinds = ", ".join(f"layer {h['layer']} [{h['kind']}]" for h in heads)
        raise DarknetpyError(f"decode() got {len(inputs)} head input(s) for {len(heads)} head(s): {kinds}")
    if names is None:
        names = desc.get("names")
    if names is not None and len(names) < desc["classes"]:
        raise DarknetpyError(f"{len(names)} names for {desc['classes']} classes")
    outputs = [head_output(h, x) for h, x in zip(heads, inputs)]
    boxes = network_boxes(desc, outputs, image_size, thresh)
    if nms:
        boxes = do_nms_sort(boxes, nms)
    return detections(boxes, thresh, image_size, names)
