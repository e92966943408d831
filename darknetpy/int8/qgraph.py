"""The int8 graph: quantisation parameters (``QParams``), one ``QLayer`` per darknet layer, the ``QGraph`` with
its file format (one ``.npz``), and which float graphs int8 can express (``INT8_GRAPH``, the stage's table).

The scheme (ST's recipe) is described in ``darknetpy/int8/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import __version__
from .. import layers as L
from ..cfg import write_output_file
from ..errors import QuantizeError, UnsupportedError

INPUT_SCALE = float(np.float32(1.0 / 255.0))     # 0.003921569: QuantizeLinear(1/255, -128) on [0, 1] images
INPUT_ZERO_POINT = -128
SOFTMAX_SCALE = float(np.float32(1.0 / 255.0))   # ST's fixed softmax output parameters (stm32n6.md §1.4)
SOFTMAX_ZERO_POINT = -128
SOFTMAX_MODES = ("int8", "float")
INT8_ACTIVATIONS = ("linear", "relu", "relu6", "leaky")
HOST_HEADS = (L.Region, L.Yolo, L.DetectionLayer)   # decoded on the host from their int8 input
LEAKY_ALPHA = float(np.float32(0.1))             # darknet's leaky slope, as onnx LeakyRelu(alpha=0.1) stores it

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


def input_range(net: L.NetInfo) -> tuple[float, float]:
    """The range of the network input: [0, 1] images, or with the cfg's mean/std the extremes of
    ``(image - mean) / std`` over channels, computed with the float32 arithmetic of ``image.normalize``."""
    if not net.normalizes:
        return 0.0, 1.0
    m = np.asarray(net.mean, np.float32)
    s = np.asarray(net.std, np.float32)
    return float(((np.float32(0) - m) / s).min()), float(((np.float32(1) - m) / s).max())


def input_qparams(net: L.NetInfo) -> QParams:
    """The int8 network input's parameters, fixed by the input range rather than calibrated (every image
    set that reaches black and white calibrates to them): ST's QuantizeLinear(1/255, -128) for [0, 1]
    images; for a normalised input, ``qparams_from_range`` of ``input_range`` (asymmetric, one scale for
    all channels: the int8 activations are per tensor).

    >>> input_qparams(L.NetInfo(224, 224, 3, 150528, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    QParams(scale=0.01865844801068306, zero_point=-14)
    """
    if not net.normalizes:
        return QParams(INPUT_SCALE, INPUT_ZERO_POINT)
    return qparams_from_range(*input_range(net))


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
        """True when the layer computes nothing in int8: its output *is* its (single) input. That includes the
        detection heads ([region], [yolo], [detection]): the int8 graph ends at their inputs, and their forward
        pass and decoding run on the host in float (``boxes.decode`` of the dequantised input), as ST's
        application does on the board."""
        lay = self.layer
        return (isinstance(lay, (L.Dropout, L.Cost) + HOST_HEADS)
                or (isinstance(lay, L.Route) and len(lay.layers) == 1))

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

        Written through ``path.part`` (cfg.write_output_file): a failure or interrupt leaves no ``.part``, an
        OSError is a QuantizeError.

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

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:           # a file object: np.savez adds no ".npz" to it
                np.savez(f, **arrays)
        write_output_file(path, write, error=QuantizeError, what="the int8 graph")

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
    # JSON gives lists: tuples again (layers, anchors, mask), so that the dataclass stays what it was
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# -- which graphs int8 supports: the int8 graph stage's table ---------------------------------------------

SUPPORTED = ("convolutional (any groups; activations linear, relu, relu6, leaky)", "connected (same activations)",
             "maxpool", "avgpool", "route (same-size spatial inputs)", "shortcut (same shape, alpha=beta=1)",
             "softmax (the output layer, groups=1, temperature=1)", "upsample (stride > 0, scale 1)",
             "reorg (without flatten/extra)", "region, yolo, detection (decoded on the host from their int8 input)",
             "dropout", "cost")


@dataclass(frozen=True)
class Int8Kind:
    """How a layer kind enters the int8 graph.

    ``check(graph, layer, last)`` returns why this layer cannot be expressed ("" if it can); ``role(layer)``
    names how calibration quantises it (see calibrate.QLAYER_ROLES):

    * ``"weighted"``: int8 per-channel weights, int32 bias, its own output parameters (and ``pre`` for leaky);
    * ``"sum"``: an elementwise sum with its own output parameters (and ``pre`` for leaky);
    * ``"own"``: computes a new tensor with its own output parameters (avgpool, concat);
    * ``"shares"``: its output has its input's parameters (maxpool; dropout, cost and one-input routes
      compute nothing);
    * ``"softmax"``: ST's fixed output parameters (1/255, -128), or a float output;
    * ``"host"``: a detection head; nothing is computed in int8 (the graph ends at its input, which the host
      dequantises and decodes), its "output" is its input tensor with its parameters.
    """

    check: Callable[[L.Graph, L.Layer, int], str]
    role: Callable[[L.Layer], str]


def _ok(graph: L.Graph, layer: L.Layer, last: int) -> str:
    return ""


def _activation_ok(layer: L.Layer) -> str:
    act = getattr(layer, "activation", "linear")
    return "" if act in INT8_ACTIVATIONS else f"activation {act!r} has no int8 implementation"


def _check_conv(graph: L.Graph, layer: L.Convolutional, last: int) -> str:
    if layer.quirk_1x1_no_subsample:
        return f"a 1x1 convolution with stride {layer.stride} (darknet's unstrided read) is not supported in int8"
    return ""


def _check_maxpool(graph: L.Graph, layer: L.MaxPool, last: int) -> str:
    if max(layer.padding // 2, layer.padding - layer.padding // 2) >= layer.size:
        return "padding as large as the window"
    return ""


def _check_route(graph: L.Graph, layer: L.Route, last: int) -> str:
    if not layer.spatial and len(layer.layers) > 1:
        return "a route over layers of different sizes (flat output)"
    return ""


def _check_shortcut(graph: L.Graph, layer: L.Shortcut, last: int) -> str:
    f = graph[layer.from_]
    if (f.out_c, f.out_h, f.out_w) != (layer.out_c, layer.out_h, layer.out_w):
        return "a shortcut between tensors of different shapes"
    if layer.alpha != 1 or layer.beta != 1:
        return "shortcut alpha/beta other than 1"
    return ""


def _check_softmax(graph: L.Graph, layer: L.Softmax, last: int) -> str:
    if layer.index != last:
        return "a softmax that is not the network output"
    if layer.groups != 1 or layer.temperature != 1:
        return "softmax groups/temperature"
    return ""


def _check_upsample(graph: L.Graph, layer: L.Upsample, last: int) -> str:
    if layer.reverse:
        return "stride < 0 (a sum over blocks) has no int8 implementation"
    if layer.scale != 1:
        return f"scale={layer.scale:g} (a multiplication) has no int8 implementation; only scale=1 copies values"
    return ""


def _check_reorg(graph: L.Graph, layer: L.Reorg, last: int) -> str:
    if layer.extra or layer.flatten:
        return "flatten=1 and extra>0 have no int8 implementation (no detector uses them)"
    s2 = layer.stride * layer.stride
    if not layer.reverse and layer.c % s2:
        return (f"{layer.c} channels are not a multiple of stride*stride = {s2}: darknet's mapping then mixes "
                "channels in a way no ONNX operator reproduces")
    return ""


def _check_head(graph: L.Graph, layer: L.Layer, last: int) -> str:
    readers = [r for r in graph.layers[: last + 1] if layer.index in L.inputs_of(r)]
    if readers:
        return (f"{readers[0].describe()} reads its output; the int8 graph ends at the heads' inputs (decoded on "
                "the host), so nothing may read a head")
    return ""


def _role(name: str) -> Callable[[L.Layer], str]:
    return lambda layer: name


def _activated(check: Callable) -> Callable:
    """``check`` preceded by the activation check of layers that carry one."""
    return lambda graph, layer, last: _activation_ok(layer) or check(graph, layer, last)


# One entry per layer kind (tests/core/test_layout.py checks that none is missing).
INT8_GRAPH: dict = {
    L.Convolutional: Int8Kind(_activated(_check_conv), _role("weighted")),
    L.Connected: Int8Kind(_activated(_ok), _role("weighted")),
    L.Shortcut: Int8Kind(_activated(_check_shortcut), _role("sum")),
    L.MaxPool: Int8Kind(_check_maxpool, _role("shares")),
    L.AvgPool: Int8Kind(_ok, _role("own")),
    L.Route: Int8Kind(_check_route, lambda layer: "shares" if len(layer.layers) == 1 else "own"),
    L.Dropout: Int8Kind(_ok, _role("shares")),
    L.Cost: Int8Kind(_ok, _role("shares")),
    L.Softmax: Int8Kind(_check_softmax, _role("softmax")),
    L.Upsample: Int8Kind(_check_upsample, _role("shares")),
    L.Reorg: Int8Kind(_check_reorg, _role("shares")),
    L.Region: Int8Kind(_check_head, _role("host")),
    L.Yolo: Int8Kind(_check_head, _role("host")),
    L.DetectionLayer: Int8Kind(_check_head, _role("host")),
    L.Local: L.Refuse("[local] has no int8 implementation"),
    L.Crop: L.Refuse("[crop] has no int8 implementation"),
    L.BatchNorm: L.Refuse("[batchnorm] has no int8 implementation"),
    L.Activation: L.Refuse("[activation] has no int8 implementation"),
}


def not_in_int8_graph(what: str) -> L.Refuse:
    """The refusal later int8 stages (engine, QDQ export) give a kind ``INT8_GRAPH`` never lets in."""
    return L.Refuse(f"{what}: the int8 graph never contains it (int8/qgraph.INT8_GRAPH refuses it)")


def check_int8(graph: L.Graph) -> None:
    """Raise UnsupportedError naming the first layer the int8 graph cannot express."""
    where = os.path.basename(graph.path)
    if graph.net.c * graph.net.h * graph.net.w == 0:
        raise UnsupportedError(f"{where}: int8 needs an image input ([net] height, width, channels)")
    last = graph.output_index
    for layer in graph.layers[: last + 1]:
        entry = L.dispatch(INT8_GRAPH, layer)
        why = entry.why if isinstance(entry, L.Refuse) else entry.check(graph, layer, last)
        if why:
            at = f"{where}:{layer.line} " if layer.line else f"{where}: "
            raise UnsupportedError(f"{at}{layer.describe()}: {why}; int8 supports: {'; '.join(SUPPORTED)}")


def qlayer_role(layer: L.Layer) -> str:
    """The calibration role of a layer that ``check_int8`` accepted (see ``Int8Kind``)."""
    return L.dispatch(INT8_GRAPH, layer).role(layer)
