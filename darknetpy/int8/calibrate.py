"""Calibration: run the float network on representative inputs, record every tensor the int8 graph quantises,
choose each tensor's range (``CALIB_METHODS``), and build the ``QGraph``; optional bias correction.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import __version__
from .. import layers as L
from ..errors import ImageError, QuantizeError, UnsupportedError, about
from ..image import find_images, letterbox, load_image, normalize
from ..passes import fold_batchnorm, numpy_warnings
from ..weights import Weights
from .qgraph import (SOFTMAX_MODES, SOFTMAX_SCALE, SOFTMAX_ZERO_POINT, QGraph, QLayer, QParams, check_int8,
                     input_qparams, input_range, qlayer_role, qparams_from_range)
from .weights import quantize_bias, quantize_weights

CALIB_METHODS = ("minmax", "percentile", "mse", "auto")
_SAMPLES_PER_IMAGE = 8192                        # values kept per tensor and image for percentile/mse
_MAX_SAMPLES = 1 << 20


# -- calibration -------------------------------------------------------------------------------------------

class TensorStats:
    """Running min/max and a bounded random sample of one tensor's values over the calibration set."""

    def __init__(self, rng: np.random.Generator):
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self._rng = rng
        self._chunks: list[np.ndarray] = []
        self._n = 0

    def add(self, x: np.ndarray) -> None:
        v = x.reshape(-1)
        if v.size == 0:
            return
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        self.count += v.size
        take = v if v.size <= _SAMPLES_PER_IMAGE else v[self._rng.integers(0, v.size, _SAMPLES_PER_IMAGE)]
        self._chunks.append(np.array(take, np.float32))
        self._n += take.size
        if self._n > 2 * _MAX_SAMPLES:                     # thin out, keeping a uniform sample
            s = self.samples
            self._chunks = [s[self._rng.permutation(s.size)[:_MAX_SAMPLES]]]
            self._n = _MAX_SAMPLES

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)


def _quant_mse(v: np.ndarray, lo: float, hi: float) -> float:
    qp = qparams_from_range(lo, hi)
    return float(np.mean((qp.dequantize(qp.quantize(v)) - v) ** 2)) if v.size else 0.0


def check_percentile(p) -> float:
    """The percentile method's upper percentile ``p`` as a float, if 50 < p <= 100; else a QuantizeError.

    choose_range clips each tensor to [percentile(100 - p), percentile(p)]: numpy accepts only 0..100 (150 or
    nan raised ValueError), and p <= 50 puts the lower bound at or above the upper one. The one definition of
    the rule: ``darknetpy quantize --percentile`` (cli/args.py) checks its argument with it too.
    """
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise QuantizeError(f"the percentile must be a number, got {p!r}") from None
    if not (math.isfinite(v) and 50 < v <= 100):
        raise QuantizeError(f"the percentile must be above 50 and at most 100, got {p}")
    return v


def choose_range(stats: TensorStats, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The real range [lo, hi] to quantise a tensor to, by ``method`` (see the module docstring)."""
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "minmax" or stats.count == 0:
        return lo, hi
    v = stats.samples.astype(np.float64)
    if method in ("percentile", "auto"):
        percentile = check_percentile(percentile)
    if method == "percentile":
        plo = float(np.percentile(v, 100.0 - percentile)) if lo < 0 else 0.0
        phi = float(np.percentile(v, percentile)) if hi > 0 else 0.0
        return min(plo, 0.0), max(phi, 0.0)
    if method == "mse":
        return _mse_range(v, lo, hi)
    if method == "auto":
        cands = [(lo, hi), choose_range(stats, "percentile", percentile), _mse_range(v, lo, hi)]
        return min(cands, key=lambda r: _quant_mse(v, *r))
    raise QuantizeError(f"unknown calibration method {method!r}; choose from {', '.join(CALIB_METHODS)}")


def _mse_range(v: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Shrink [lo, hi] by a common factor (then each end alone) to the minimum quantisation MSE."""
    best = (_quant_mse(v, lo, hi), lo, hi)
    for a in np.linspace(0.2, 1.0, 41):
        e = _quant_mse(v, lo * a, hi * a)
        if e < best[0]:
            best = (e, lo * a, hi * a)
    _, blo, bhi = best
    for a in np.linspace(0.5, 1.5, 21):           # refine each end with the other fixed
        for cand in ((blo, min(bhi * a, hi)), (max(blo * a, lo), bhi)):
            e = _quant_mse(v, *cand)
            if e < best[0]:
                best = (e, *cand)
        _, blo, bhi = best
    return blo, bhi


def iter_images(source, net: L.NetInfo, *, what: str = "calibration") -> tuple[int, Iterator[np.ndarray]]:
    """(count, iterator of float32 (C, H, W) network inputs) from a directory, a list of paths/arrays, an
    array (N, C, H, W) or an int N (N seeded uniform-random [0, 1) images: smoke tests only).

    Images (files and random ones) are prepared like darknet's classify, ``load_image`` then ``letterbox``
    to the network size, then normalised with the cfg's [net] mean/std when it has them. Arrays are taken
    as network inputs, already normalised (what ``predict`` takes).
    """
    shape = net.in_shape
    c, h, w = shape
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        n = int(source)
        if n < 1:
            raise QuantizeError(f"need at least one {what} input, got {n}")
        rng = np.random.default_rng(0)
        return n, (normalize(rng.random(shape, dtype=np.float32), net.mean, net.std) for _ in range(n))
    if isinstance(source, np.ndarray):
        arr = source.reshape((-1,) + tuple(shape)) if source.ndim == 4 or source.shape != shape else source[None]
        return len(arr), (np.ascontiguousarray(a, np.float32) for a in arr)
    if isinstance(source, (str, os.PathLike)):
        paths = image_folder(source, what=what)
        return len(paths), _load_many(paths, net, what=what, folder=source)
    items = list(source)
    if not items:
        raise QuantizeError(f"no {what} images given")
    if all(isinstance(p, (str, os.PathLike)) for p in items):
        return len(items), _load_many([os.fspath(p) for p in items], net, what=what)
    return len(items), (np.ascontiguousarray(np.asarray(a, np.float32).reshape(shape)) for a in items)


def image_folder(directory: str | os.PathLike, *, what: str = "calibration") -> list[str]:
    """``image.find_images`` for calibration and evaluation folders: a problem with the folder is a
    QuantizeError (exit code 9), as every other failure of ``quantize``."""
    try:
        return find_images(directory, what=what)
    except ImageError as e:
        raise QuantizeError(str(e)) from None


def _load_many(paths: list[str], net: L.NetInfo, *, what: str = "calibration",
               folder: str | os.PathLike | None = None) -> Iterator[np.ndarray]:
    """The images letterboxed to the network size and normalised with its [net] mean/std (if any). One that
    cannot be used (corrupt, too thin to letterbox, ...) is a warning naming it, and the others go on; a
    QuantizeError (naming ``folder``) if none can be used."""
    used = 0
    for p in paths:
        try:
            img = load_image(p)
            if img.shape[0] != net.c:
                raise UnsupportedError(f"{p}: the network takes {net.c} channels, images are RGB")
            x = normalize(letterbox(img, net.w, net.h), net.mean, net.std)
        except ImageError as e:
            msg = about(p, e)
            warnings.warn(f"{msg} (skipped: {what} goes on with the other images)")
            continue
        used += 1
        yield x
    if not used:
        where = f"{what} directory {os.fspath(folder)}" if folder is not None else f"{what} images"
        raise QuantizeError(f"{where}: none of the {len(paths)} images can be used (each is named in a warning)")


class _FloatRecorder:
    """Runs the float network (darknetpy's fast plan) and exposes every tensor the int8 graph quantises:
    each layer's output and, for leaky layers, the output before the activation (``pre``)."""

    def __init__(self, graph: L.Graph, weights: Weights):
        from ..runtime import Plan

        self.leaky = [i for i, lay in enumerate(graph) if getattr(lay, "activation", "") == "leaky"
                      and isinstance(lay, (L.Convolutional, L.Connected, L.Shortcut))]
        # keep_all: every layer's own output is materialised (no conv + shortcut fusion)
        self.plan = Plan(graph, weights, keep_all=True, pre_activation=self.leaky)
        self.pre: dict[int, np.ndarray] = self.plan.pre_activation

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.plan.run(x)
        return self.plan.outputs


# -- building the int8 graph -----------------------------------------------------------------------------

def build_qgraph(graph: L.Graph, weights: Weights, calibration, *, method: str | dict = "minmax",
                 softmax: str = "int8", pair_safe: bool = True, bias_correction: bool | str = False,
                 percentile: float = 99.99, progress: Callable[[int, int], None] | None = None) -> QGraph:
    """Calibrate ``graph`` (float, may have batch norm) on ``calibration`` and return its int8 graph.

    ``method`` is one of ``CALIB_METHODS`` or a dict {layer index: method, "default": method}.
    ``bias_correction`` adds to each conv/connected bias the mean output error that weight and input
    quantisation cause on the calibration set (measured; off by default, see the README).
    """
    if bias_correction not in BIAS_CORRECTION and bias_correction is not True:
        raise QuantizeError(f"unknown bias correction {bias_correction!r}; choose from False, 'weight', 'sequential'")
    if softmax not in SOFTMAX_MODES:
        raise QuantizeError(f"unknown softmax mode {softmax!r}; choose from {', '.join(SOFTMAX_MODES)}")
    percentile = check_percentile(percentile)
    methods = _method_table(method, graph)
    check_int8(graph)
    fgraph, fweights = fold_batchnorm(graph, weights)
    n, inputs = iter_images(calibration, fgraph.net)
    rec = _FloatRecorder(fgraph, fweights)
    rng = np.random.default_rng(1234)
    out_stats = [TensorStats(rng) for _ in fgraph]
    pre_stats = {i: TensorStats(rng) for i in rec.leaky}
    qin = input_qparams(fgraph.net)
    lo, hi = input_range(fgraph.net)
    what_in = "normalised [0, 1] images" if fgraph.net.normalizes else "images in [0, 1]"
    first = True
    done = 0
    for x in inputs:
        if x.shape != fgraph.net.in_shape:
            raise QuantizeError(f"calibration input of shape {x.shape} does not match the network input "
                                f"{fgraph.net.in_shape}")
        if first and (float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6):
            raise QuantizeError(f"calibration inputs must be network inputs in [{lo:.4g}, {hi:.4g}] ({what_in}: "
                                f"the int8 input is quantised with scale {qin.scale:.6g}, zero point "
                                f"{qin.zero_point}); got values in [{x.min():.3g}, {x.max():.3g}]")
        first = False
        outs = rec.run(x)
        for i, o in enumerate(outs):
            out_stats[i].add(o)
        for i, p in rec.pre.items():
            pre_stats[i].add(p)
        done += 1
        if progress:
            progress(done, n)
    if done == 0:
        raise QuantizeError("no calibration inputs")

    last = fgraph.output_index
    qlayers: list[QLayer] = []

    def qp_of(j: int) -> QParams:
        return qin if j < 0 else qlayers[j].out

    for layer, p in zip(fgraph.layers, fweights.params):
        i = layer.index
        src = L.inputs_of(layer)
        if i > last:                            # after the output ([cost]): computes nothing
            qlayers.append(QLayer(i, layer, src, qp_of(src[0])))
            continue
        with numpy_warnings(fgraph, layer, "quantizing it"):
            role = qlayer_role(layer)
            m = methods[i]
            act = getattr(layer, "activation", "linear")
            own = qparams_from_range(*choose_range(out_stats[i], m, percentile))
            pre = qparams_from_range(*choose_range(pre_stats[i], m, percentile)) if i in pre_stats else None
            if role == "weighted":
                paired = not (isinstance(layer, L.Convolutional) and layer.groups > 1 and layer.c == layer.groups
                              == layer.filters)
                wq, ws = quantize_weights(p["weights"], pair_safe=pair_safe, paired=paired)
                bq, _ = quantize_bias(p["biases"], qp_of(src[0]).scale, ws)
                ql = QLayer(i, layer, src, own, pre, act, wq, ws, bq)
            elif role == "sum":
                ql = QLayer(i, layer, src, own, pre, act)
            elif role in ("shares", "host"):       # host: a detection head, decoded from its int8 input
                ql = QLayer(i, layer, src, qp_of(src[0]))
            elif role == "softmax":
                ql = QLayer(i, layer, src, QParams(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT) if softmax == "int8" else None)
            else:                                   # "own": avgpool, concat
                ql = QLayer(i, layer, src, own)
            qlayers.append(ql)

    qg = QGraph(fgraph, qlayers, qin, softmax, info={
        "method": method if isinstance(method, str) else {str(k): v for k, v in method.items()},
        "calibration_images": done, "pair_safe": pair_safe, "bias_correction": bias_correction,
        "percentile": percentile, "darknetpy": __version__})
    if bias_correction:
        _correct_biases(qg, fweights, rec, calibration, "weight" if bias_correction is True else bias_correction)
    return qg


def _method_table(method, graph: L.Graph) -> list[str]:
    """Each layer's calibration method. The logits (the tensor a [softmax] output reads) stay ``minmax``
    unless named explicitly: clipping them saturates the largest class scores, which then tie at the top
    (measured on Tiny Darknet: percentile and mse clipping of the logits changed the top-1 of near-tie images)."""
    n = len(graph)
    logits = graph.output_layer.index - 1 if isinstance(graph.output_layer, L.Softmax) else None
    if isinstance(method, str):
        table = [method] * n
        explicit: set = set()
    else:
        default = method.get("default", "minmax")
        table = [method.get(i, default) for i in range(n)]
        explicit = {k for k in method if k != "default"}
    if logits is not None and logits not in explicit:
        table[logits] = "minmax"
    for m in set(table):
        if m not in CALIB_METHODS:
            raise QuantizeError(f"unknown calibration method {m!r}; choose from {', '.join(CALIB_METHODS)}")
    return table


def _tap_means(x: np.ndarray, layer: L.Convolutional) -> np.ndarray:
    """Mean over output positions of each (c, ky, kx) input the convolution reads (zeros in the padding)."""
    c, h, w = x.shape
    p, k, s = layer.padding, layer.size, layer.stride
    xp = np.zeros((c, h + 2 * p, w + 2 * p), np.float64)
    xp[:, p:p + h, p:p + w] = x
    oh, ow = layer.out_h, layer.out_w
    out = np.empty((c, k, k))
    for ky in range(k):
        for kx in range(k):
            out[:, ky, kx] = xp[:, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s].mean(axis=(1, 2))
    return out


BIAS_CORRECTION = (False, "weight", "sequential")


def _input_means(qg: QGraph, rec: "_FloatRecorder", inputs: Iterable[np.ndarray], targets: list,
                 float_side: bool) -> tuple[dict, dict]:
    """Per target layer, the mean over the calibration set of every (channel, tap) input value it reads:
    from the int8 network (dequantised) and, if ``float_side``, from the float network."""
    from .engine import Int8Plan

    plan = Int8Plan(qg)
    sums_f = {ql.index: 0.0 for ql in targets}
    sums_q = {ql.index: 0.0 for ql in targets}
    n = 0
    for x in inputs:
        fouts = rec.run(x) if float_side else None
        plan.run(x)
        for ql in targets:
            j = ql.src[0]
            xq = qg.tensor_qparams(j).dequantize(plan.input if j < 0 else plan.outputs[j])
            xf = (x if j < 0 else fouts[j]) if float_side else None
            if isinstance(ql.layer, L.Convolutional):
                sums_q[ql.index] = sums_q[ql.index] + _tap_means(xq.reshape(ql.layer.in_shape), ql.layer)
                if float_side:
                    sums_f[ql.index] = sums_f[ql.index] + _tap_means(xf.reshape(ql.layer.in_shape), ql.layer)
            else:
                sums_q[ql.index] = sums_q[ql.index] + xq.reshape(-1).astype(np.float64)
                if float_side:
                    sums_f[ql.index] = sums_f[ql.index] + xf.reshape(-1).astype(np.float64)
        n += 1
    return ({k: v / n for k, v in sums_f.items()} if float_side else {}), {k: v / n for k, v in sums_q.items()}


def _apply(w: np.ndarray, layer: L.Layer, m: np.ndarray) -> np.ndarray:
    """Per output channel, the mean of W x given the (channel, tap) input means ``m``."""
    if isinstance(layer, L.Convolutional) and layer.groups > 1:
        g = layer.groups
        cg, mg = layer.c // g, layer.filters // g
        return np.concatenate([np.einsum("oikl,ikl->o", w[gi * mg:(gi + 1) * mg], m[gi * cg:(gi + 1) * cg])
                               for gi in range(g)])
    if isinstance(layer, L.Convolutional):
        return np.einsum("oikl,ikl->o", w, m)
    return w @ m


def _correct_biases(qg: QGraph, fweights: Weights, rec: "_FloatRecorder", calibration, mode) -> None:
    """Empirical bias correction of conv/connected layers (both linear in the inputs, so only per-(channel,
    tap) input means over the calibration set are needed):

    * ``"weight"``: b += (W - Wq) E[x^] -- the mean error the weight rounding causes on the int8 network's
      own (dequantised) inputs x^; one int8 pass;
    * ``"sequential"``: layer by layer in order, b += E[W x] - E[Wq x^] with x the float network's input --
      also removes the mean of the error arriving from upstream; one int8 pass per corrected layer.
    """
    targets = [ql for ql in qg if ql.weight is not None]

    def wdq(ql):
        return ql.weight.astype(np.float64) * ql.weight_scale.astype(np.float64).reshape(
            (-1,) + (1,) * (ql.weight.ndim - 1))

    def requant_bias(ql, delta):
        p = fweights.params[ql.index]
        ql.bias, _ = quantize_bias(p["biases"].astype(np.float64) + delta, qg.tensor_qparams(ql.src[0]).scale,
                                   ql.weight_scale)

    if mode == "weight":
        _, mq = _input_means(qg, rec, iter_images(calibration, qg.graph.net)[1], targets, False)
        for ql in targets:
            with numpy_warnings(qg.graph, ql.layer, "correcting its bias"):
                w = fweights.params[ql.index]["weights"].astype(np.float64)
                requant_bias(ql, _apply(w - wdq(ql), ql.layer, mq[ql.index]))
        return
    for ql in targets:
        mf, mq = _input_means(qg, rec, iter_images(calibration, qg.graph.net)[1], [ql], True)
        with numpy_warnings(qg.graph, ql.layer, "correcting its bias"):
            w = fweights.params[ql.index]["weights"].astype(np.float64)
            p = fweights.params[ql.index]
            b_dq = ql.bias.astype(np.float64) * (np.float32(qg.tensor_qparams(ql.src[0]).scale)
                                                  * ql.weight_scale.astype(np.float32)).astype(np.float64)
            # b_new makes E[Wq x^ + b_new] = E[W x + b]; expressed as a correction of the float bias
            delta = _apply(w, ql.layer, mf[ql.index]) - _apply(wdq(ql), ql.layer, mq[ql.index]) \
                + (p["biases"].astype(np.float64) - b_dq)
            requant_bias(ql, delta)


