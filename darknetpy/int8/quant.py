"""Calibration and the int8 graph: a rewrite of the (batch-norm folded) float graph, with its error report.

The int8 graph (``QGraph``) is what three consumers execute identically: darknetpy's int8 engine
(``int8_runtime.Int8Plan``), onnxruntime running the QDQ export (``onnx_qdq.export_qdq``), and ST Edge AI Core
on the STM32N6 NPU. Its quantisation scheme is ST's ONNX Runtime recipe (``../shared/specs/stm32n6.md`` §1.4,
§2.2):

* weights int8 per output channel (axis 0), symmetric, zero point 0, in [-127, 127];
* biases int32 with scale ``float32(s_in * s_w[c])`` and zero point 0;
* activations int8 per tensor, asymmetric: ``scale = (max(hi, 0) - min(lo, 0)) / 255``,
  ``zero_point = round(-128 - min(lo, 0) / scale)`` (onnxruntime's ``compute_scale_zp``);
* the network input: scale ``float32(1/255)``, zero point -128 for [0, 1] images (so q = u8 - 128);
* relu and relu6 are not separate steps: their output range starts at 0, so the zero point is -128 and the
  QuantizeLinear saturation *is* the activation (onnxruntime's quantizer drops those nodes the same way);
  leaky has its own step, conv -> Q(pre) -> DQ -> LeakyRelu -> Q(out);
* maxpool, dropout and single-input routes share their input's parameters; avgpool, concat and shortcut
  outputs get their own; a softmax output is quantised with ST's fixed scale 1/255, zero point -128
  (``softmax="int8"``), or left in float (``softmax="float"``).

**The u8 x s8 pair constraint** (``pair_safe=True``, the default). onnxruntime on x86 runs int8 activations
as uint8 (x + 128) and, on AVX2 CPUs without VNNI, multiplies them by the int8 weights with ``vpmaddubsw``,
which adds two neighbouring products (consecutive input channels of one kernel tap, or consecutive elements of
the flattened (ky, kx, c) kernel) in a *saturating* int16. With weights up to 127 and activations up to 255 a
pair can reach 64770 and is clipped to 32767: onnxruntime then computes something else than the model says
(measured: 85-100 % of a layer's outputs change on adversarial inputs). ``pair_safe`` chooses each output
channel's weight scale so that every such pair satisfies ``sum(positive w) <= 128`` and
``sum(-negative w) <= 128``; then no pair can saturate, and the model means the same on every onnxruntime
build, on the NPU and in darknetpy's engine (which multiplies the same pairs with the same instruction). It
costs 1-4 dB of weight SQNR per layer, yet measured better end to end (Tiny Darknet, 35 evaluation crops:
mean KL 0.065 vs 0.112 for plain scaling executed exactly, and vs 1.24 for plain scaling as onnxruntime's
AVX2 kernels run it; see the README's int8 section).

Calibration methods (``CALIB_METHODS``), applied to each activation tensor separately:

* ``minmax``: the observed range (ST's recipe, the default);
* ``percentile``: the 0.01 % / 99.99 % percentiles of the observed values (zero always kept);
* ``mse``: the clipping range that minimises the quantisation mean squared error of the observed values;
* ``auto``: per tensor, the minimum-MSE choice among the three ranges above.

The logits (what a [softmax] output reads) stay ``minmax`` unless a layer dict names them: clipping them
saturates the best class scores into ties. ``bias_correction`` ("weight" or "sequential") adds the mean
output error of quantisation to conv/connected biases; measured, it helps ``mse`` a little and hurts
``minmax``, so it is off by default.

Serialisation: one ``.npz`` with the arrays and a JSON description of the graph (``QGraph.save``/``load``).

>>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")          # doctest: +SKIP
>>> qnet = darknetpy.quantize(net, "calib_images/", method="minmax")      # doctest: +SKIP
>>> probs = qnet.predict(x)                                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from .. import __version__
from .. import layers as L
from ..errors import DarknetpyError, QuantizeError, UnsupportedError
from ..passes import fold_batchnorm
from ..weights import Weights

INPUT_SCALE = float(np.float32(1.0 / 255.0))     # 0.003921569: QuantizeLinear(1/255, -128) on [0, 1] images
INPUT_ZERO_POINT = -128
SOFTMAX_SCALE = float(np.float32(1.0 / 255.0))   # ST's fixed softmax output parameters (stm32n6.md §1.4)
SOFTMAX_ZERO_POINT = -128
CALIB_METHODS = ("minmax", "percentile", "mse", "auto")
SOFTMAX_MODES = ("int8", "float")
INT8_ACTIVATIONS = ("linear", "relu", "relu6", "leaky")
LEAKY_ALPHA = float(np.float32(0.1))             # darknet's leaky slope, as onnx LeakyRelu(alpha=0.1) stores it
PAIR_LIMIT = 128                                 # 255 * 128 = 32640 <= 32767: a u8 x s8 pair cannot saturate
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SAMPLES_PER_IMAGE = 8192                        # values kept per tensor and image for percentile/mse
_MAX_SAMPLES = 1 << 20


# -- quantisation parameters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class QParams:
    """Per-tensor int8 quantisation: real = scale * (q - zero_point). ``scale`` is a float32 value."""

    scale: float
    zero_point: int

    @property
    def scale32(self) -> np.float32:
        return np.float32(self.scale)

    @property
    def lo(self) -> float:
        """The smallest representable real value."""
        return float(self.scale32 * np.float32(-128 - self.zero_point))

    @property
    def hi(self) -> float:
        return float(self.scale32 * np.float32(127 - self.zero_point))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), in float32."""
        v = np.rint(np.asarray(x, np.float32) / self.scale32)
        return np.clip(v + np.float32(self.zero_point), -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """ONNX DequantizeLinear: (q - zero_point) * scale, in float32."""
        return (np.asarray(q, np.int32) - self.zero_point).astype(np.float32) * self.scale32

    def to_json(self) -> list:
        return [self.scale, self.zero_point]

    @classmethod
    def from_json(cls, v) -> "QParams":
        return cls(float(np.float32(v[0])), int(v[1]))


def qparams_from_range(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters for the real range [lo, hi], as onnxruntime's ``compute_scale_zp``.

    The range is widened to include 0 (so 0 is exact); ``scale = (hi - lo) / 255`` computed in float64 and
    stored as float32, ``zero_point = round_half_even(-128 - lo / scale)``. A degenerate range gives scale 1.

    >>> qparams_from_range(0.0, 6.0)
    QParams(scale=0.0235294122248888, zero_point=-128)
    """
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise QuantizeError(f"cannot quantise the range [{lo}, {hi}]: it is not finite (NaN or infinity in "
                            "the calibration activations)")
    scale = (hi - lo) / 255.0
    if scale < np.finfo(np.float32).tiny:
        return QParams(1.0, 0)
    zp = int(np.clip(np.round(-128.0 - lo / scale), -128, 127))
    return QParams(float(np.float32(scale)), zp)


# -- weights ---------------------------------------------------------------------------------------------

def pair_layout(w: np.ndarray, groups: int = 1) -> np.ndarray:
    """(O, K) view of weights in onnxruntime/MLAS's multiplication order, K padded to even length.

    Conv weights OIHW are flattened per output channel as (ky, kx, c) -- MLAS's im2col order, in which it
    forms pairs (k, k+1) for ``vpmaddubsw``; connected weights (O, I) are already flat. Depthwise convs
    (MLAS multiplies them exactly) are not paired by onnxruntime; callers skip them.
    """
    if w.ndim == 4:
        flat = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    else:
        flat = w.reshape(w.shape[0], -1)
    if flat.shape[1] % 2:
        flat = np.concatenate([flat, np.zeros((flat.shape[0], 1), flat.dtype)], axis=1)
    return flat


def quad_layout(w: np.ndarray) -> np.ndarray:
    """(O, K) view of conv weights OIHW as darknetpy's GEMM pairs them: per tap (ky, kx), the channels padded to
    a multiple of 4 and paired (c, c+1). The same pairs as :func:`pair_layout` when C is even; for an odd C
    (the RGB input layer) they differ, and the engine uses its faster interleaved kernel on such a layer only
    when neither pairing can saturate."""
    o, c, kh, kw = w.shape
    c4 = -(-c // 4) * 4
    wp = np.zeros((o, kh, kw, c4), w.dtype)
    wp[..., :c] = w.transpose(0, 2, 3, 1)
    return wp.reshape(o, -1)


def saturation_free(q: np.ndarray, layout: str = "flat") -> bool:
    """True when no u8 x s8 pair of the int8 weights ``q`` can leave int16 (so any pairing is exact)."""
    flat = pair_layout(q.astype(np.int64)) if layout == "flat" else quad_layout(q.astype(np.int64))
    return bool((_pair_sums(flat) <= PAIR_LIMIT).all())


def _pair_sums(flat: np.ndarray) -> np.ndarray:
    """Per output channel, the largest same-sign pair magnitude sum (what vpmaddubsw may overflow)."""
    pos = np.maximum(flat, 0)
    neg = np.maximum(-flat, 0)
    return np.maximum((pos[:, 0::2] + pos[:, 1::2]).max(axis=1), (neg[:, 0::2] + neg[:, 1::2]).max(axis=1))


def quantize_weights(w: np.ndarray, *, pair_safe: bool = True, paired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights: (q int8 in [-127, 127], scale float32 (O,)).

    ``scale[c] = max|w[c]| / 127``; with ``pair_safe`` (and ``paired``: the layer's products are paired by
    onnxruntime) the scale grows until every pair of :func:`pair_layout` satisfies the no-saturation limit,
    and a pair pushed over the limit by rounding has its element with the largest rounding error rounded
    toward zero instead. All-zero channels get scale 1.

    >>> q, s = quantize_weights(np.array([[1.0, 0.5, -0.25, 0.0]], np.float32), pair_safe=False)
    >>> q.tolist(), s.tolist()
    ([[127, 64, -32, 0]], [0.007874015718698502])
    """
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    flat = w.reshape(o, -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    scale = amax / 127.0
    # odd channel counts: also the engine's per-tap pairing (see quad_layout), so its fast kernel applies
    layouts = []
    if pair_safe and paired:
        layouts = [pair_layout] + ([quad_layout] if w.ndim == 4 and w.shape[1] % 2 else [])
    for lay in layouts:
        scale = np.maximum(scale, _pair_sums(lay(w.astype(np.float64))) / PAIR_LIMIT)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w.reshape(o, -1) / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    for _ in range(4):                      # fixing one pairing's pairs can only lower the other's sums
        if all(_pair_sums(lay(q.astype(np.int64))).max(initial=0) <= PAIR_LIMIT for lay in layouts):
            break
        for lay in layouts:
            q = _fix_pairs(w, q, scale, lay)
    return q, scale


def _fix_pairs(w: np.ndarray, q: np.ndarray, scale: np.ndarray, layout=None) -> np.ndarray:
    """Round toward zero the element of any pair that rounding pushed past PAIR_LIMIT (rare: sum 129-130)."""
    layout = layout or pair_layout
    qf = layout(q.astype(np.int64))
    bad = _pair_sums(qf) > PAIR_LIMIT
    if not bad.any():
        return q
    wf = layout(w.astype(np.float64))
    for c in np.nonzero(bad)[0]:
        row, ideal = qf[c], wf[c] / np.float64(scale[c])
        for j in range(0, row.size, 2):
            for sign in (1, -1):
                while sign * row[j] > 0 or sign * row[j + 1] > 0:
                    s = max(sign * row[j], 0) + max(sign * row[j + 1], 0)
                    if s <= PAIR_LIMIT:
                        break
                    # the element whose rounding moved it furthest away from zero gives way
                    err = [(sign * (row[k] - ideal[k]) if sign * row[k] > 0 else -np.inf) for k in (j, j + 1)]
                    k = j + int(np.argmax(err))
                    row[k] -= sign
        qf[c] = row
    # back to the original layout
    if w.ndim == 4:
        o, ci, kh, kw = w.shape
        if layout is quad_layout:
            c4 = -(-ci // 4) * 4
            return qf.reshape(o, kh, kw, c4)[..., :ci].transpose(0, 3, 1, 2).astype(np.int8).copy()
        return qf[:, :ci * kh * kw].reshape(o, kh, kw, ci).transpose(0, 3, 1, 2).astype(np.int8).copy()
    return qf[:, :w.shape[1]].astype(np.int8).reshape(w.shape)


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale float32(s_in * s_w[c]) and zero point 0, as onnxruntime's quantizer does."""
    bscale = (np.float32(in_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    v = np.rint(np.asarray(b, np.float64) / bscale.astype(np.float64))
    if np.abs(v).max(initial=0) >= 2 ** 31:
        raise QuantizeError(f"a bias does not fit in int32 at scale {float(bscale.min()):.3g} (input scale "
                            f"{in_scale:.3g} too small for this layer's bias)")
    return v.astype(np.int32), bscale


# -- the int8 graph ----------------------------------------------------------------------------------------

@dataclass
class QLayer:
    """One layer of the int8 graph (same index as darknet's layer).

    ``out`` is the int8 parameters of the layer's output (``None``: a float output, i.e. a float softmax);
    ``pre`` those of the output before a leaky activation (conv/connected/shortcut with ``act == 'leaky'``).
    ``weight`` int8 (OIHW or (O, I)), ``weight_scale`` float32 (O,), ``bias`` int32 (O,) for conv/connected.
    """

    index: int
    layer: L.Layer
    src: tuple[int, ...]
    out: QParams | None
    pre: QParams | None = None
    act: str = "linear"
    weight: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return self.layer.kind

    @property
    def alias(self) -> bool:
        """True when the layer computes nothing: its output *is* its (single) input."""
        lay = self.layer
        return isinstance(lay, (L.Dropout, L.Cost)) or (isinstance(lay, L.Route) and len(lay.layers) == 1)

    @property
    def depthwise(self) -> bool:
        lay = self.layer
        return isinstance(lay, L.Convolutional) and lay.groups > 1 and lay.c == lay.groups == lay.filters


@dataclass
class QGraph:
    """The int8 network: the folded float graph's structure plus every layer's int8 parameters.

    ``input`` is the network input's parameters (1/255, -128); ``softmax`` is "int8" (ST's quantised
    output) or "float"; ``info`` records how it was made (method, calibration images, options, measurements).
    """

    graph: L.Graph
    layers: list[QLayer]
    input: QParams
    softmax: str = "int8"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> QLayer:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def output_index(self) -> int:
        return self.graph.output_index

    def tensor_qparams(self, i: int) -> QParams | None:
        """Parameters of layer i's output (-1: the network input)."""
        return self.input if i < 0 else self.layers[i].out

    # -- serialisation --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write one ``.npz``: the int8/int32/float32 arrays plus a JSON description (key ``__qgraph__``).

        >>> qgraph.save("tiny_int8.npz"); QGraph.load("tiny_int8.npz")        # doctest: +SKIP
        """
        path = os.fspath(path)
        arrays: dict[str, np.ndarray] = {}
        layers = []
        for ql in self.layers:
            d = {"index": ql.index, "layer": _layer_to_json(ql.layer), "src": list(ql.src),
                 "out": ql.out.to_json() if ql.out else None, "pre": ql.pre.to_json() if ql.pre else None,
                 "act": ql.act}
            for name in ("weight", "weight_scale", "bias"):
                a = getattr(ql, name)
                if a is not None:
                    arrays[f"l{ql.index}.{name}"] = a
            layers.append(d)
        g = self.graph
        meta = {"format": "darknetpy-int8", "version": 1, "darknetpy": __version__,
                "net": dataclasses.asdict(g.net), "path": g.path, "source_sha256": g.source_sha256,
                "input": self.input.to_json(), "softmax": self.softmax, "layers": layers, "info": self.info}
        arrays["__qgraph__"] = np.array(json.dumps(meta))
        tmp = path + ".part.npz"
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise QuantizeError(f"{path}: cannot write the int8 graph: {e.strerror or e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QGraph":
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__qgraph__"]))
                arrays = {k: z[k] for k in z.files if k != "__qgraph__"}
        except (OSError, KeyError, ValueError) as e:
            raise QuantizeError(f"{path}: not a darknetpy int8 graph ({e})") from None
        if meta.get("format") != "darknetpy-int8":
            raise QuantizeError(f"{path}: not a darknetpy int8 graph")
        net = L.NetInfo(**meta["net"])
        layers, qlayers = [], []
        for d in meta["layers"]:
            lay = _layer_from_json(d["layer"])
            layers.append(lay)
            i = d["index"]
            qlayers.append(QLayer(i, lay, tuple(d["src"]),
                                  QParams.from_json(d["out"]) if d["out"] else None,
                                  QParams.from_json(d["pre"]) if d["pre"] else None, d["act"],
                                  arrays.get(f"l{i}.weight"), arrays.get(f"l{i}.weight_scale"),
                                  arrays.get(f"l{i}.bias")))
        graph = L.Graph(net=net, layers=tuple(layers), path=meta["path"], source_sha256=meta["source_sha256"])
        return cls(graph, qlayers, QParams.from_json(meta["input"]), meta["softmax"], meta.get("info", {}))


_CLASSES = {cls.kind: cls for cls in L.LAYER_CLASSES}


def _layer_to_json(layer: L.Layer) -> dict:
    d = dataclasses.asdict(layer)
    d["kind"] = layer.kind
    return d


def _layer_from_json(d: dict) -> L.Layer:
    d = dict(d)
    cls = _CLASSES[d.pop("kind")]
    if "layers" in d:
        d["layers"] = tuple(d["layers"])
    return cls(**d)


# -- which graphs int8 supports --------------------------------------------------------------------------

SUPPORTED = ("convolutional (any groups; activations linear, relu, relu6, leaky)", "connected (same activations)",
             "maxpool", "avgpool", "route (same-size spatial inputs)", "shortcut (same shape, alpha=beta=1)",
             "softmax (the output layer, groups=1, temperature=1)", "dropout", "cost")


def check_int8(graph: L.Graph) -> None:
    """Raise UnsupportedError naming the first layer the int8 graph cannot express."""
    where = os.path.basename(graph.path)
    if graph.net.c * graph.net.h * graph.net.w == 0:
        raise UnsupportedError(f"{where}: int8 needs an image input ([net] height, width, channels)")
    last = graph.output_index
    for layer in graph.layers[: last + 1]:
        why = _unsupported_reason(graph, layer, last)
        if why:
            at = f"{where}:{layer.line} " if layer.line else f"{where}: "
            raise UnsupportedError(f"{at}{layer.describe()}: {why}; int8 supports: {'; '.join(SUPPORTED)}")


def _unsupported_reason(graph: L.Graph, layer: L.Layer, last: int) -> str:
    act = getattr(layer, "activation", "linear")
    if isinstance(layer, (L.Convolutional, L.Connected, L.Shortcut)) and act not in INT8_ACTIVATIONS:
        return f"activation {act!r} has no int8 implementation"
    if isinstance(layer, L.Convolutional):
        if layer.quirk_1x1_no_subsample:
            return f"a 1x1 convolution with stride {layer.stride} (darknet's unstrided read) is not supported in int8"
        return ""
    if isinstance(layer, (L.Connected, L.MaxPool, L.AvgPool, L.Dropout, L.Cost)):
        if isinstance(layer, L.MaxPool) and max(layer.padding // 2, layer.padding - layer.padding // 2) >= layer.size:
            return "padding as large as the window"
        return ""
    if isinstance(layer, L.Route):
        if not layer.spatial and len(layer.layers) > 1:
            return "a route over layers of different sizes (flat output)"
        return ""
    if isinstance(layer, L.Shortcut):
        f = graph[layer.from_]
        if (f.out_c, f.out_h, f.out_w) != (layer.out_c, layer.out_h, layer.out_w):
            return "a shortcut between tensors of different shapes"
        if layer.alpha != 1 or layer.beta != 1:
            return "shortcut alpha/beta other than 1"
        return ""
    if isinstance(layer, L.Softmax):
        if layer.index != last:
            return "a softmax that is not the network output"
        if layer.groups != 1 or layer.temperature != 1:
            return "softmax groups/temperature"
        return ""
    return f"[{layer.kind}] has no int8 implementation"


def _sources(layer: L.Layer) -> tuple[int, ...]:
    return L.inputs_of(layer)


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


def choose_range(stats: TensorStats, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The real range [lo, hi] to quantise a tensor to, by ``method`` (see the module docstring)."""
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "minmax" or stats.count == 0:
        return lo, hi
    v = stats.samples.astype(np.float64)
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


def iter_images(source, shape: tuple[int, int, int], *, what: str = "calibration") -> tuple[int, Iterator[np.ndarray]]:
    """(count, iterator of float32 (C, H, W) inputs) from a directory, a list of paths/arrays, an array
    (N, C, H, W) or an int N (N seeded uniform-random [0, 1) inputs: smoke tests only).

    Images are loaded like darknet's classify: ``load_image`` then ``letterbox`` to the network size.
    """
    c, h, w = shape
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        n = int(source)
        if n < 1:
            raise QuantizeError(f"need at least one {what} input, got {n}")
        rng = np.random.default_rng(0)
        return n, (rng.random(shape, dtype=np.float32) for _ in range(n))
    if isinstance(source, np.ndarray):
        arr = source.reshape((-1,) + tuple(shape)) if source.ndim == 4 or source.shape != shape else source[None]
        return len(arr), (np.ascontiguousarray(a, np.float32) for a in arr)
    if isinstance(source, (str, os.PathLike)):
        paths = find_images(source, what=what)
        return len(paths), _load_many(paths, w, h, c)
    items = list(source)
    if not items:
        raise QuantizeError(f"no {what} images given")
    if all(isinstance(p, (str, os.PathLike)) for p in items):
        return len(items), _load_many([os.fspath(p) for p in items], w, h, c)
    return len(items), (np.ascontiguousarray(np.asarray(a, np.float32).reshape(shape)) for a in items)


def find_images(directory: str | os.PathLike, *, what: str = "calibration") -> list[str]:
    """Image files under ``directory`` (recursively, sorted); QuantizeError naming it when there are none."""
    d = os.fspath(directory)
    if not os.path.exists(d):
        raise QuantizeError(f"{what} directory {d}: does not exist")
    if not os.path.isdir(d):
        raise QuantizeError(f"{what} directory {d}: is not a directory")
    found: list[str] = []
    errors: list[OSError] = []
    for root, dirs, files in os.walk(d, onerror=errors.append):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if errors and not found:
        e = errors[0]
        raise QuantizeError(f"{what} directory {d}: cannot read it: {e.strerror or e}")
    if not found:
        raise QuantizeError(f"{what} directory {d}: no images found (looked recursively for "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
    return found


def _load_many(paths: list[str], w: int, h: int, c: int) -> Iterator[np.ndarray]:
    from ..image import letterbox, load_image

    for p in paths:
        img = load_image(p)
        if img.shape[0] != c:
            raise UnsupportedError(f"{p}: the network takes {c} channels, images are RGB")
        yield letterbox(img, w, h)


class _FloatRecorder:
    """Runs the float network (darknetpy's fast plan) and exposes every tensor the int8 graph quantises:
    each layer's output and, for leaky layers, the output before the activation."""

    def __init__(self, graph: L.Graph, weights: Weights):
        from ..kernels.activation import activate
        from ..runtime import Plan

        self.leaky = [i for i, lay in enumerate(graph) if getattr(lay, "activation", "") == "leaky"
                      and isinstance(lay, (L.Convolutional, L.Connected, L.Shortcut))]
        lin = list(graph.layers)
        for i in self.leaky:
            lin[i] = dataclasses.replace(lin[i], activation="linear")
        g = dataclasses.replace(graph, layers=tuple(lin))
        try:
            # keep_all: every layer's own output is materialised (no conv + shortcut fusion)
            self.plan = Plan(g, weights, keep_all=True)
        except TypeError:  # pragma: no cover - a runtime without output fusion
            self.plan = Plan(g, weights)
        self.pre: dict[int, np.ndarray] = {}
        for i in self.leaky:
            step, out = self.plan.steps[i], self.plan.outputs[i]
            flat = out.reshape(-1)

            def wrapped(step=step, out=out, flat=flat, i=i):
                step()
                self.pre[i] = out.copy()          # before the activation
                activate(flat, "leaky")           # darknet's leaky, in place: what the next layers read
            self.plan.steps[i] = wrapped

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
    methods = _method_table(method, graph)
    check_int8(graph)
    fgraph, fweights = fold_batchnorm(graph, weights)
    n, inputs = iter_images(calibration, fgraph.net.in_shape)
    rec = _FloatRecorder(fgraph, fweights)
    rng = np.random.default_rng(1234)
    out_stats = [TensorStats(rng) for _ in fgraph]
    pre_stats = {i: TensorStats(rng) for i in rec.leaky}
    first = True
    done = 0
    for x in inputs:
        if x.shape != fgraph.net.in_shape:
            raise QuantizeError(f"calibration input of shape {x.shape} does not match the network input "
                                f"{fgraph.net.in_shape}")
        if first and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
            raise QuantizeError(f"calibration inputs must be images in [0, 1] (the int8 input is quantised "
                                f"with scale 1/255, zero point -128); got values in [{x.min():.3g}, {x.max():.3g}]")
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
    qin = QParams(INPUT_SCALE, INPUT_ZERO_POINT)

    def qp_of(j: int) -> QParams:
        return qin if j < 0 else qlayers[j].out

    chosen: dict[int, str] = {}
    for layer, p in zip(fgraph.layers, fweights.params):
        i = layer.index
        src = _sources(layer)
        m = methods[i]
        act = getattr(layer, "activation", "linear")
        own = qparams_from_range(*choose_range(out_stats[i], m, percentile))
        if i > last:
            ql = QLayer(i, layer, src, qp_of(src[0]))
        elif isinstance(layer, (L.Convolutional, L.Connected)):
            chosen[i] = m
            paired = not (isinstance(layer, L.Convolutional) and layer.groups > 1 and layer.c == layer.groups
                          == layer.filters)
            wq, ws = quantize_weights(p["weights"], pair_safe=pair_safe, paired=paired)
            bq, _ = quantize_bias(p["biases"], qp_of(src[0]).scale, ws)
            pre = qparams_from_range(*choose_range(pre_stats[i], m, percentile)) if act == "leaky" else None
            ql = QLayer(i, layer, src, own, pre, act, wq, ws, bq)
        elif isinstance(layer, L.Shortcut):
            chosen[i] = m
            pre = qparams_from_range(*choose_range(pre_stats[i], m, percentile)) if act == "leaky" else None
            ql = QLayer(i, layer, src, own, pre, act)
        elif isinstance(layer, L.MaxPool) or (isinstance(layer, (L.Route, L.Dropout, L.Cost)) and len(src) == 1):
            ql = QLayer(i, layer, src, qp_of(src[0]))
        elif isinstance(layer, L.Softmax):
            out = QParams(SOFTMAX_SCALE, SOFTMAX_ZERO_POINT) if softmax == "int8" else None
            ql = QLayer(i, layer, src, out)
        else:                                   # avgpool, concat
            chosen[i] = m
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
    shape = qg.graph.net.in_shape

    def wdq(ql):
        return ql.weight.astype(np.float64) * ql.weight_scale.astype(np.float64).reshape(
            (-1,) + (1,) * (ql.weight.ndim - 1))

    def requant_bias(ql, delta):
        p = fweights.params[ql.index]
        ql.bias, _ = quantize_bias(p["biases"].astype(np.float64) + delta, qg.tensor_qparams(ql.src[0]).scale,
                                   ql.weight_scale)

    if mode == "weight":
        _, mq = _input_means(qg, rec, iter_images(calibration, shape)[1], targets, False)
        for ql in targets:
            w = fweights.params[ql.index]["weights"].astype(np.float64)
            requant_bias(ql, _apply(w - wdq(ql), ql.layer, mq[ql.index]))
        return
    for ql in targets:
        mf, mq = _input_means(qg, rec, iter_images(calibration, shape)[1], [ql], True)
        w = fweights.params[ql.index]["weights"].astype(np.float64)
        p = fweights.params[ql.index]
        b_dq = ql.bias.astype(np.float64) * (np.float32(qg.tensor_qparams(ql.src[0]).scale)
                                              * ql.weight_scale.astype(np.float32)).astype(np.float64)
        # b_new makes E[Wq x^ + b_new] = E[W x + b]; expressed as a correction of the float bias
        delta = _apply(w, ql.layer, mf[ql.index]) - _apply(wdq(ql), ql.layer, mq[ql.index]) \
            + (p["biases"].astype(np.float64) - b_dq)
        requant_bias(ql, delta)


# -- the public entry point and the int8 network -----------------------------------------------------------

class QuantizedNetwork:
    """An int8 network ready to run on the CPU (darknetpy's int8 engine).

    >>> qnet = darknetpy.quantize(net, "calib/")            # doctest: +SKIP
    >>> qnet.predict(x)                # (1000,) float32: dequantised int8 probabilities  # doctest: +SKIP
    >>> qnet.save("tiny_int8.npz"); qnet.export_onnx("tiny_int8.onnx")                     # doctest: +SKIP
    """

    def __init__(self, qgraph: QGraph):
        self.qgraph = qgraph
        self._plan = None

    @property
    def graph(self) -> L.Graph:
        return self.qgraph.graph

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.qgraph.graph.net.in_shape

    def plan(self):
        from .engine import Int8Plan

        if self._plan is None:
            self._plan = Int8Plan(self.qgraph)
        return self._plan

    def predict(self, x: np.ndarray, *, all_layers: bool = False, raw: bool = False):
        """Run the int8 network on ``x`` (float32 (C, H, W) in [0, 1]).

        Returns the output layer's values dequantised to float32 (shaped like the float network's), or with
        ``raw=True`` the int8 tensor itself (a float softmax output stays float). ``all_layers=True``
        returns every layer's output the same way.
        """
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise DarknetpyError(f"predict() needs float32 input, got {x.dtype}")
        want = self.input_shape
        if x.shape != want and not (x.ndim == 4 and x.shape[0] == 1 and x.shape[1:] == want):
            raise DarknetpyError(f"input shape {x.shape} does not match the network input {want} (C, H, W)")
        p = self.plan()
        p.run(x.reshape(want))
        qg = self.qgraph

        def value(i: int) -> np.ndarray:
            lay = qg.graph[i]
            o = p.outputs[i].reshape(lay.out_shape)
            qp = qg[i].out
            if raw or qp is None or o.dtype != np.int8:
                return o.copy()
            return qp.dequantize(o)
        if all_layers:
            return [value(i) for i in range(len(qg))]
        return value(qg.output_index)

    def save(self, path: str | os.PathLike) -> None:
        self.qgraph.save(path)

    def export_onnx(self, path: str | os.PathLike | None = None, **kw):
        """The QDQ ONNX model of this network (see onnx_qdq.export_qdq)."""
        from ..export.onnx_qdq import export_qdq

        return export_qdq(self.qgraph, path, **kw)

    def report(self, net, images, *, progress=None) -> "QuantReport":
        """Per-layer and output errors against the float network ``net`` on ``images`` (see ``compare``)."""
        return compare(net, self, images, progress=progress)


def quantize(net, images, method: str | dict = "minmax", *, softmax: str = "int8", pair_safe: bool = True,
             bias_correction: bool | str = False, percentile: float = 99.99, progress=None) -> QuantizedNetwork:
    """Quantise a float ``Network`` to int8, calibrating on ``images``.

    ``images``: a directory (searched recursively; darknet's letterbox preprocessing), a list of image paths
    or float32 (C, H, W) arrays in [0, 1], an array (N, C, H, W), or an int N for N random inputs (smoke
    tests). ``method``: ``"minmax"`` (ST's recipe), ``"percentile"``, ``"mse"``, ``"auto"``, or a dict
    {layer index: method, "default": method}. ``softmax``: "int8" (ST's 1/255 output) or "float";
    ``pair_safe``: weights whose u8 x s8 pairs cannot saturate (see the module docstring); ``bias_correction``:
    False, "weight" (or True) or "sequential"; ``progress(i, n)`` is called after each calibration input.

    >>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")        # doctest: +SKIP
    >>> qnet = darknetpy.quantize(net, "calib/", method="mse")              # doctest: +SKIP
    >>> qnet.predict(darknetpy.letterbox(darknetpy.load_image("dog.jpg"), 224, 224)).argmax()  # doctest: +SKIP
    """
    qg = build_qgraph(net.graph, net.weights, images, method=method, softmax=softmax, pair_safe=pair_safe,
                      bias_correction=bias_correction, percentile=percentile, progress=progress)
    return QuantizedNetwork(qg)


def load_quantized(path: str | os.PathLike) -> QuantizedNetwork:
    """Read a network saved with ``QuantizedNetwork.save``."""
    return QuantizedNetwork(QGraph.load(path))


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
                "cosine": self.cosine, "max_error": self.max_error}


@dataclass
class QuantReport:
    """What int8 costs: per-layer errors, and for the output top-1 agreement and KL divergence."""

    layers: list[LayerError]
    images: int
    top1_agree: int
    kl: list[float]
    info: dict = field(default_factory=dict)

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.images if self.images else float("nan")

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else float("nan")

    def to_dict(self) -> dict:
        return {"images": self.images, "top1_agreement": self.top1_agreement, "top1_agree": self.top1_agree,
                "mean_kl": self.mean_kl, "kl": self.kl, "layers": [e.to_dict() for e in self.layers],
                "info": self.info}

    def table(self) -> str:
        rows = [f"{'layer':32s} {'shape':>16s} {'SQNR dB':>8s} {'cosine':>9s} {'max err':>10s}"]
        for e in self.layers:
            shape = "x".join(str(s) for s in e.shape)
            rows.append(f"{e.name:32s} {shape:>16s} {e.sqnr_db:8.2f} {e.cosine:9.6f} {e.max_error:10.4g}")
        return "\n".join(rows)

    def summary(self) -> str:
        return (f"output over {self.images} image(s): top-1 agreement {self.top1_agree}/{self.images} "
                f"({100 * self.top1_agreement:.1f} %), mean KL(float || int8) {self.mean_kl:.5f} nats")


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


def compare(net, qnet: QuantizedNetwork, images, *, progress=None) -> QuantReport:
    """Run the float ``net`` and the int8 ``qnet`` on ``images`` and measure, per layer (darknet index), the
    SQNR, cosine similarity and max |error| of the int8 activations (dequantised) against the float ones, and
    for the output the top-1 agreement and mean KL(float || int8) of the class probabilities.

    Layers are compared end to end (each int8 layer reads int8 inputs), so errors accumulate as on the board.
    int8 top-1 is the argmax of the int8 network's output as the board returns it (ties: lowest index); the
    KL uses ``int8_probabilities`` (the softmax of the int8 logits).
    """
    qg = qnet.qgraph
    graph = qg.graph
    n, inputs = iter_images(images, graph.net.in_shape, what="evaluation")
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
        agree += int(np.argmax(pf) == np.argmax(qplan.outputs[last].reshape(-1)))
        kls.append(kl_divergence(pf, pq))
        done += 1
        if progress:
            progress(done, n)
    return QuantReport(errs, done, agree, kls, info=dict(qg.info))


def print_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback that draws ``label  i/n`` on stderr (the CLI's; the library never prints)."""
    def cb(i: int, n: int) -> None:
        width = 30
        filled = int(width * i / max(n, 1))
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {i}/{n}")
        if i >= n:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return cb
