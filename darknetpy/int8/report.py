"""What int8 costs: per-layer SQNR / cosine / max error of the int8 activations against the float ones, and
for the output the top-1 agreement and KL divergence (``compare``, ``QuantReport``); per layer and for the
output also ST Edge AI Core's validation metrics (``darknetpy.metrics``: int8 predicted, float reference)."""

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


@dataclass
class QuantReport:
    """What int8 costs: per-layer errors, and for the output top-1 agreement and KL divergence."""

    layers: list[LayerError]
    images: int
    top1_agree: int
    kl: list[float]
    info: dict = field(default_factory=dict)
    output: Metrics = field(default_factory=lambda: Metrics(classifier=True))   # ST's metrics of the output

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.images if self.images else float("nan")

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else float("nan")

    def to_dict(self) -> dict:
        return {"images": self.images, "top1_agreement": self.top1_agreement, "top1_agree": self.top1_agree,
                "mean_kl": self.mean_kl, "kl": self.kl, "layers": [e.to_dict() for e in self.layers],
                "metrics": self.output.result(), "info": self.info}

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


def compare(net, qnet, images, *, progress=None) -> QuantReport:
    """Run the float ``net`` and the int8 ``qnet`` on ``images`` and measure, per layer (darknet index), the
    SQNR, cosine similarity and max |error| of the int8 activations (dequantised) against the float ones, and
    for the output the top-1 agreement and mean KL(float || int8) of the class probabilities.

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
    for x in inputs:
        fplan.run(x)
        qplan.run(x)
        for e in errs:
            f = fplan.outputs[e.index]
            ql = qg[e.index]
            q = qplan.outputs[e.index]
            e.add(f, q if ql.out is None else ql.out.dequantize(q))
        pf = output_probabilities(fplan.outputs[last], graph)
        pq = int8_probabilities(qg, qplan.outputs)
        qo = qplan.outputs[last]
        report_out.add(qo if qg[last].out is None else qg[last].out.dequantize(qo), fplan.outputs[last])
        agree += int(np.argmax(pf) == np.argmax(qplan.outputs[last].reshape(-1)))
        kls.append(kl_divergence(pf, pq))
        done += 1
        if progress:
            progress(done, n)
    return QuantReport(errs, done, agree, kls, info=dict(qg.info), output=report_out)


