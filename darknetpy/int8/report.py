"""What int8 costs: per-layer SQNR / cosine / max error of the int8 activations against the float ones, and
for the output the top-1 agreement and KL divergence (``compare``, ``QuantReport``); per layer and for the
output also ST Edge AI Core's validation metrics (``darknetpy.metrics``: int8 predicted, float reference); for a
detector, instead of top-1/KL, the agreement of its boxes with the float network's (``BoxAgreement``,
``match_boxes``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import layers as L
from ..metrics import Metrics, format_metrics
from .calibrate import iter_images
from .qgraph import QGraph

# -- the error report --------------------------------------------------------------------------------------

@dataclass
class LayerError:
    """Float vs int8 (dequantised) activations of one layer, accumulated over images."""

    index: int
    name: str
    shape: tuple[int, ...]
    signal: float = 0.0          # sum of x^2
    noise: float = 0.0           # sum of (x - x^)^2
    dot: float = 0.0             # sum of x * x^
    norm_q: float = 0.0          # sum of x^^2
    max_error: float = 0.0
    st: Metrics = field(default_factory=Metrics, repr=False)    # ST's metrics, int8 against float

    def add(self, x: np.ndarray, xq: np.ndarray) -> None:
        x = x.astype(np.float64).reshape(-1)
        xq = xq.astype(np.float64).reshape(-1)
        d = x - xq
        self.signal += float(x @ x)
        self.noise += float(d @ d)
        self.dot += float(x @ xq)
        self.norm_q += float(xq @ xq)
        if d.size:
            self.max_error = max(self.max_error, float(np.abs(d).max()))
        self.st.add(xq, x)

    @property
    def sqnr_db(self) -> float:
        """10 log10(sum x^2 / sum (x - x^)^2); inf when the int8 values are exact."""
        if self.noise == 0:
            return float("inf")
        if self.signal == 0:
            return float("-inf")
        return 10.0 * float(np.log10(self.signal / self.noise))

    @property
    def cosine(self) -> float:
        den = np.sqrt(self.signal * self.norm_q)
        return float(self.dot / den) if den > 0 else (1.0 if self.noise == 0 else 0.0)

    def to_dict(self) -> dict:
        return {"index": self.index, "layer": self.name, "shape": list(self.shape), "sqnr_db": self.sqnr_db,
                "cosine": self.cosine, "max_error": self.max_error, "metrics": self.st.result()}


IOU_MATCH = 0.5          # a float box and an int8 box of the same class are the same detection from this IoU on


@dataclass
class BoxAgreement:
    """A detector's int8 boxes against the float network's, accumulated over images.

    The rule (``match_boxes``): each printed line of the float network (a box and one class above the
    threshold), in decreasing probability, takes the still unmatched int8 line *of the same class* whose box
    overlaps it most (darknet's ``box_iou``), if that IoU is at least ``iou`` (0.5). ``found``: matched float
    boxes; ``missed``: float boxes without a match; ``extra``: int8 boxes left over. Both networks decode with
    darknet's rules at ``thresh``/``nms`` (``detector test``'s .5/.45; ``yolo test``'s .2/.4 for a YOLOv1
    [detection] head), in network-input coordinates.
    """

    thresh: float
    nms: float
    iou: float = IOU_MATCH
    float_boxes: int = 0
    int8_boxes: int = 0
    found: int = 0
    iou_sum: float = 0.0

    @property
    def missed(self) -> int:
        return self.float_boxes - self.found

    @property
    def extra(self) -> int:
        return self.int8_boxes - self.found

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.found if self.found else float("nan")

    def add(self, ref: list, got: list) -> None:
        ious = match_boxes(ref, got, self.iou)
        self.float_boxes += len(ref)
        self.int8_boxes += len(got)
        self.found += len(ious)
        self.iou_sum += float(sum(ious))

    def to_dict(self) -> dict:
        return {"rule": f"same class and IoU >= {self.iou:g}", "thresh": self.thresh, "nms": self.nms,
                "float_boxes": self.float_boxes, "int8_boxes": self.int8_boxes, "found": self.found,
                "missed": self.missed, "extra": self.extra, "mean_iou": self.mean_iou}

    def summary(self) -> str:
        return (f"boxes (same class, IoU >= {self.iou:g}; thresh {self.thresh:g}, nms {self.nms:g}): "
                f"{self.found}/{self.float_boxes} float boxes found by int8, {self.missed} missed, {self.extra} "
                f"extra of {self.int8_boxes}; mean IoU of the matched {self.mean_iou:.4f}")


def match_boxes(ref: list, got: list, iou: float = IOU_MATCH) -> list[float]:
    """The IoUs of the matched pairs between two lists of ``boxes.Detection`` (see ``BoxAgreement``)."""
    from ..boxes import box_iou

    f32 = np.float32
    free = list(range(len(got)))
    out = []
    for r in sorted(ref, key=lambda d: -d.prob):                 # stable: ties keep darknet's print order
        cands = [k for k in free if got[k].cls == r.cls]
        if not cands:
            continue
        g = [got[k] for k in cands]
        v = box_iou(f32(r.x), f32(r.y), f32(r.w), f32(r.h), *(np.array([getattr(d, a) for d in g], f32)
                                                               for a in ("x", "y", "w", "h")))
        best = int(np.argmax(v))
        if v[best] >= iou:
            out.append(float(v[best]))
            free.remove(cands[best])
    return out


@dataclass
class QuantReport:
    """What int8 costs: per-layer errors, and for the output top-1 agreement and KL divergence (classifiers) or
    the box agreement (detectors: ``boxes``; top-1 and KL do not apply and stay empty)."""

    layers: list[LayerError]
    images: int
    top1_agree: int
    kl: list[float]
    info: dict = field(default_factory=dict)
    output: Metrics = field(default_factory=lambda: Metrics(classifier=True))   # ST's metrics of the output
    boxes: BoxAgreement | None = None

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.images if self.images else float("nan")

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else float("nan")

    def to_dict(self) -> dict:
        d = {"images": self.images, "top1_agreement": self.top1_agreement, "top1_agree": self.top1_agree,
             "mean_kl": self.mean_kl, "kl": self.kl, "layers": [e.to_dict() for e in self.layers],
             "metrics": self.output.result(), "info": self.info}
        if self.boxes is not None:
            d.update(top1_agreement=None, top1_agree=None, mean_kl=None, boxes=self.boxes.to_dict())
        return d

    def table(self) -> str:
        rows = [f"{'layer':32s} {'shape':>16s} {'SQNR dB':>8s} {'cosine':>9s} {'max err':>10s} {'rmse':>10s} "
                f"{'l2r':>10s} {'nse':>9s}"]
        for e in self.layers:
            shape = "x".join(str(s) for s in e.shape)
            m = e.st.result()
            l2r, nse = ("n/a" if m[k] is None else format(m[k], f) for k, f in (("l2r", ".4g"), ("nse", ".6f")))
            rows.append(f"{e.name:32s} {shape:>16s} {e.sqnr_db:8.2f} {e.cosine:9.6f} {e.max_error:10.4g} "
                        f"{m['rmse'] or 0.0:10.4g} {l2r:>10s} {nse:>9s}")
        return "\n".join(rows)

    def summary(self) -> str:
        if self.boxes is not None:
            return f"over {self.images} image(s): {self.boxes.summary()}"
        return (f"output over {self.images} image(s): top-1 agreement {self.top1_agree}/{self.images} "
                f"({100 * self.top1_agreement:.1f} %), mean KL(float || int8) {self.mean_kl:.5f} nats")

    def metrics_summary(self) -> str:
        """The output's ST metrics (darknetpy.metrics), int8 against float, over every image."""
        return f"output, ST's metrics (int8 against float): {format_metrics(self.output.result())}"


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-10) -> float:
    """KL(p || q) in nats for two probability vectors (q floored at ``eps`` so that it stays finite)."""
    p = np.asarray(p, np.float64).reshape(-1)
    q = np.maximum(np.asarray(q, np.float64).reshape(-1), eps)
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def output_probabilities(values: np.ndarray, graph: L.Graph) -> np.ndarray:
    """The output as a probability vector: as it is after a [softmax], else softmax of it."""
    v = np.asarray(values, np.float64).reshape(-1)
    if isinstance(graph.output_layer, L.Softmax):
        return v
    e = np.exp(v - v.max())
    return e / e.sum()


def int8_probabilities(qg: QGraph, outputs: list[np.ndarray]) -> np.ndarray:
    """The int8 network's class probabilities for KL: the float softmax of its dequantised int8 logits when the
    output is a [softmax] (the int8 softmax output itself moves in steps of 1/255, a rounding that would
    dominate the measure and is the same for every quantizer), else the softmax of the dequantised output."""
    last = qg.output_index
    j = qg[last].src[0] if isinstance(qg.graph.output_layer, L.Softmax) else last
    v = outputs[j]
    qp = qg.tensor_qparams(j)
    v = qp.dequantize(v) if (qp is not None and v.dtype == np.int8) else v
    v = np.asarray(v, np.float64).reshape(-1)
    e = np.exp(v - v.max())
    return e / e.sum()


def compare(net, qnet, images, *, progress=None, thresh: float | None = None, nms: float | None = None
            ) -> QuantReport:
    """Run the float ``net`` and the int8 ``qnet`` on ``images`` and measure, per layer (darknet index), the
    SQNR, cosine similarity and max |error| of the int8 activations (dequantised) against the float ones, and
    for the output the top-1 agreement and mean KL(float || int8) of the class probabilities -- or, for a
    detector, the agreement of the boxes (``BoxAgreement``; ``thresh``/``nms`` default to darknet's for the
    head kind).

    Layers are compared end to end (each int8 layer reads int8 inputs), so errors accumulate as on the board.
    int8 top-1 is the argmax of the int8 network's output as the board returns it (ties: lowest index); the
    KL uses ``int8_probabilities`` (the softmax of the int8 logits).
    """
    qg = qnet.qgraph
    graph = qg.graph
    n, inputs = iter_images(images, graph.net, what="evaluation")
    try:
        fplan = net.plan(False, keep_all=True)           # every layer's own output (no conv + shortcut fusion)
    except TypeError:  # pragma: no cover - a runtime without output fusion
        fplan = net.plan(False)
    qplan = qnet.plan()
    errs = []
    for ql in qg:
        if ql.index > qg.output_index or ql.alias:
            continue
        errs.append(LayerError(ql.index, ql.layer.describe(), ql.layer.out_shape))
    agree = 0
    report_out = Metrics(classifier=True)
    kls: list[float] = []
    done = 0
    last = qg.output_index
    boxes = _box_agreement(graph, thresh, nms)
    for x in inputs:
        fplan.run(x)
        qplan.run(x)
        for e in errs:
            f = fplan.outputs[e.index]
            ql = qg[e.index]
            q = qplan.outputs[e.index]
            e.add(f, q if ql.out is None else ql.out.dequantize(q))
        done += 1
        if boxes is not None:
            boxes.add(*_detections(graph, qg, fplan, qplan, boxes))
            if progress:
                progress(done, n)
            continue
        pf = output_probabilities(fplan.outputs[last], graph)
        pq = int8_probabilities(qg, qplan.outputs)
        qo = qplan.outputs[last]
        report_out.add(qo if qg[last].out is None else qg[last].out.dequantize(qo), fplan.outputs[last])
        agree += int(np.argmax(pf) == np.argmax(qplan.outputs[last].reshape(-1)))
        kls.append(kl_divergence(pf, pq))
        if progress:
            progress(done, n)
    return QuantReport(errs, done, agree, kls, info=dict(qg.info), output=report_out, boxes=boxes)


def _box_agreement(graph: L.Graph, thresh, nms) -> BoxAgreement | None:
    """An empty ``BoxAgreement`` for a detector (darknet's thresholds for its head kind), None otherwise."""
    from ..boxes import heads_of

    heads = heads_of(graph)
    if not heads:
        return None
    yolov1 = any(isinstance(h, L.DetectionLayer) for h in heads)
    return BoxAgreement(thresh if thresh is not None else (0.2 if yolov1 else 0.5),
                        nms if nms is not None else (0.4 if yolov1 else 0.45))


def _detections(graph: L.Graph, qg: QGraph, fplan, qplan, agreement: BoxAgreement) -> tuple[list, list]:
    """The float and the int8 network's boxes on the input both plans just ran (network-input coordinates)."""
    from ..boxes import decode, heads_of

    f, q = [], []
    for head in heads_of(graph):
        j = qg[head.index].src[0]
        shape = (head.inputs,) if isinstance(head, L.DetectionLayer) else head.in_shape
        f.append(np.asarray(fplan.input if j < 0 else fplan.outputs[j], np.float32).reshape(shape))
        q.append(qg.tensor_qparams(j).dequantize(qplan.input if j < 0 else qplan.outputs[j]).reshape(shape))
    size = (graph.net.w, graph.net.h)
    return (decode(graph, f, size, agreement.thresh, 0.5, agreement.nms),
            decode(graph, q, size, agreement.thresh, 0.5, agreement.nms))


