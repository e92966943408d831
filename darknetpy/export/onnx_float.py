"""Graph -> ONNX (float), for onnxruntime and for ST Edge AI Core (``../shared/specs/stm32n6.md`` §2).

Opset 17, IR 8, static shapes, batch 1, one input and one output. Batch norm is folded first with
darknet's CPU formula (passes.fold_batchnorm). Each darknet layer maps to ONNX ops that compute the same
values (up to float rounding):

=============  ===========================================================================================
convolutional  Conv (group, explicit symmetric pads) + its activation; a 1x1 stride>1 conv reproduces
               darknet's unstrided read with Reshape/Slice/Reshape before a 1x1 stride-1 Conv
maxpool        MaxPool with darknet's total padding split as (padding//2 before, the rest after)
avgpool        GlobalAveragePool
softmax        Flatten, (Mul 1/temperature), Reshape to groups, Softmax(axis=-1), Reshape back
route          Concat(axis=1) (flat routes: Flatten each input, Concat)
shortcut       Add, with Mul for alpha/beta, Slice for channel and stride mismatches
upsample       Resize nearest (asymmetric, floor) [* scale]; stride<0: AveragePool * stride^2 * scale
connected      Flatten + Gemm(transB=1)
crop           Slice [* 2 - 1]
batchnorm      Mul + Add per channel;  dropout, cost: nothing
activations    LeakyRelu(alpha=0.1) for leaky (ONNX's default is 0.01), Relu, Clip(0, 6), Sigmoid, Tanh,
               Elu, Selu(darknet's constants), Clip(-1, 1) for hardtan, LeakyRelu(0.01) for relie,
               ramp and loggy composed from Relu/Sigmoid; plse, lhtan and stair are refused
=============  ===========================================================================================

Anything that cannot be expressed exactly raises UnsupportedError naming the layer and what is supported.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .. import __version__
from .. import layers as L
from ..errors import ExportError, UnsupportedError
from ..passes import fold_batchnorm
from ..weights import Weights

OPSET = 17
IR_VERSION = 8
INPUT_LAYOUTS = ("nchw-float", "nhwc-uint8")
_ACT_OK = ("linear", "leaky", "relu", "relu6", "logistic", "tanh", "elu", "selu", "hardtan", "relie", "ramp",
           "loggy")


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes = []
        self.inits = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        out = out or name
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _activation(b: _Builder, x: str, act: str, base: str, out: str) -> str:
    """Append ``act`` applied to ``x``; the result is named ``out``."""
    if act == "linear":
        return b.node("Identity", [x], f"{base}_identity", out)
    if act == "leaky":
        return b.node("LeakyRelu", [x], f"{base}_leaky", out, alpha=0.1)
    if act == "relie":
        return b.node("LeakyRelu", [x], f"{base}_relie", out, alpha=0.01)
    if act == "relu":
        return b.node("Relu", [x], f"{base}_relu", out)
    if act in ("relu6", "hardtan"):
        lo, hi = (0.0, 6.0) if act == "relu6" else (-1.0, 1.0)
        mn = b.const(f"{base}_clip_min", np.array(lo, np.float32))
        mx = b.const(f"{base}_clip_max", np.array(hi, np.float32))
        return b.node("Clip", [x, mn, mx], f"{base}_{act}", out)
    if act == "logistic":
        return b.node("Sigmoid", [x], f"{base}_logistic", out)
    if act == "tanh":
        return b.node("Tanh", [x], f"{base}_tanh", out)
    if act == "elu":
        return b.node("Elu", [x], f"{base}_elu", out, alpha=1.0)
    if act == "selu":
        return b.node("Selu", [x], f"{base}_selu", out, alpha=1.6732, gamma=1.0507)
    if act == "ramp":        # x*(x>0) + 0.1*x
        r = b.node("Relu", [x], f"{base}_ramp_relu")
        t = b.node("Mul", [x, b.const(f"{base}_ramp_k", np.array(0.1, np.float32))], f"{base}_ramp_mul")
        return b.node("Add", [r, t], f"{base}_ramp", out)
    if act == "loggy":       # 2*sigmoid(x) - 1
        s = b.node("Sigmoid", [x], f"{base}_loggy_sigmoid")
        t = b.node("Mul", [s, b.const(f"{base}_loggy_two", np.array(2.0, np.float32))], f"{base}_loggy_mul")
        return b.node("Sub", [t, b.const(f"{base}_loggy_one", np.array(1.0, np.float32))], f"{base}_loggy", out)
    raise AssertionError(act)


def check_exportable(graph: L.Graph) -> None:
    """Raise UnsupportedError for the first layer ONNX cannot express exactly."""
    for layer in graph.layers[: graph.output_index + 1]:
        _check_layer(graph, layer)


def _check_layer(graph: L.Graph, layer: L.Layer) -> None:
    act = getattr(layer, "activation", "linear")
    if act not in _ACT_OK:
        raise UnsupportedError(f"{graph.path}: {layer.describe()}: activation {act!r} cannot be exported to ONNX "
                               f"exactly; exportable activations: {', '.join(_ACT_OK)}")
    if isinstance(layer, L.Local):
        raise UnsupportedError(f"{graph.path}: {layer.describe()}: [local] (unshared weights) has no ONNX "
                               "equivalent; exportable layers: convolutional, connected, maxpool, avgpool, "
                               "softmax, route, shortcut, upsample, dropout, crop, batchnorm, activation, cost")
    if isinstance(layer, L.Convolutional) and layer.quirk_1x1_no_subsample and layer.groups != 1:
        raise UnsupportedError(f"{graph.path}: {layer.describe()}: a grouped 1x1 convolution with stride "
                               f"{layer.stride} (darknet's unstrided read) cannot be exported")
    if isinstance(layer, L.MaxPool):
        before = layer.padding // 2
        after = layer.padding - before
        if max(before, after) >= layer.size:
            raise UnsupportedError(f"{graph.path}: {layer.describe()}: padding={layer.padding} with size="
                                   f"{layer.size} needs pads as large as the window, which ONNX MaxPool refuses")
    if isinstance(layer, L.Shortcut):
        f = graph[layer.from_]
        if layer.w > f.out_w:
            raise UnsupportedError(f"{graph.path}: {layer.describe()}: adding a smaller 'from' layer at every "
                                   f"{layer.w // f.out_w}th pixel cannot be exported")


def export_onnx(graph: L.Graph, weights: Weights, path: str | os.PathLike | None = None, *,
                input_layout: str = "nchw-float", preprocess: str = "letterbox", check: bool = True):
    """Build (and optionally save) the float ONNX model of ``graph``. Returns the onnx.ModelProto.

    ``input_layout="nhwc-uint8"`` puts the model-zoo interface in the graph: a (1, H, W, C) uint8 input,
    cast, divided by 255 (darknet's exact preprocessing arithmetic) and transposed to NCHW.
    """
    import onnx
    from onnx import TensorProto, helper

    if input_layout not in INPUT_LAYOUTS:
        raise ExportError(f"unknown input layout {input_layout!r}; choose from {', '.join(INPUT_LAYOUTS)}")
    check_exportable(graph)
    graph, weights = fold_batchnorm(graph, weights)
    b = _Builder()
    c, h, w = graph.net.c, graph.net.h, graph.net.w
    if not (c and h and w):
        raise UnsupportedError(f"{graph.path}: export needs an image input ([net] height, width, channels)")

    if input_layout == "nhwc-uint8":
        inp = helper.make_tensor_value_info("input", TensorProto.UINT8, [1, h, w, c])
        f = b.node("Cast", ["input"], "input_cast", to=TensorProto.FLOAT)
        f = b.node("Div", [f, b.const("input_255", np.array(255.0, np.float32))], "input_scale")
        x0 = b.node("Transpose", [f], "input_nchw", perm=[0, 3, 1, 2])
    else:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, w])
        x0 = "input"

    names: dict[int, str] = {-1: x0}
    flat: dict[int, bool] = {-1: False}
    last = graph.output_index
    for layer, p in zip(graph.layers[: last + 1], weights.params):
        out = "output" if layer.index == last else f"l{layer.index}"
        names[layer.index], flat[layer.index] = _emit(b, graph, layer, p, names, flat, out)

    o = graph.output_layer
    out_shape = [1, o.out_c, o.out_h, o.out_w] if o.spatial and not flat[last] else [1, o.outputs]
    outp = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    g = helper.make_graph(b.nodes, os.path.splitext(os.path.basename(graph.path))[0] or "darknet", [inp], [outp],
                          b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="darknetpy",
                              producer_version=__version__)
    model.ir_version = IR_VERSION
    _metadata(model, graph, preprocess, input_layout)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # onnx raises ValidationError / InferenceError
            raise ExportError(f"the exported model fails onnx.checker: {e}") from None
    if path is not None:
        save_model(model, path)
    return model


def save_model(model, path: str | os.PathLike) -> None:
    import onnx
    path = os.fspath(path)
    tmp = path + ".part"
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ExportError(f"{path}: cannot write the ONNX model: {e.strerror or e}") from None


def _metadata(model, graph: L.Graph, preprocess: str, input_layout: str) -> None:
    sha = graph.source_sha256
    if not sha and os.path.isfile(graph.path):
        with open(graph.path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
    props = {
        "darknetpy_version": __version__,
        "source_cfg": os.path.basename(graph.path),
        "source_cfg_sha256": sha,
        "preprocessing": f"RGB; scale 1/255; {preprocess} to {graph.net.w}x{graph.net.h} (darknet)",
        "input_layout": input_layout,
        "classes": str(graph.classes),
    }
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v


def _emit(b: _Builder, graph: L.Graph, layer: L.Layer, p: dict, names: dict, flat: dict, out: str):
    """Append the nodes of one layer. Returns (output tensor name, output is flat (1, N))."""
    i = layer.index
    base = f"l{i}_{layer.kind}"
    x = names[i - 1]
    xflat = flat[i - 1]
    act = getattr(layer, "activation", "linear")

    def alias(src: str) -> str:
        """Reuse ``src`` as this layer's output (no node), unless it must be the graph output."""
        return b.node("Identity", [src], base, out) if out == "output" else src

    def spatial_in(src: str, was_flat: bool, lay: L.Layer) -> str:
        if not was_flat:
            return src
        shape = b.const(f"{base}_inshape", np.array([1, lay.c, lay.h, lay.w], np.int64))
        return b.node("Reshape", [src, shape], f"{base}_unflatten")

    if isinstance(layer, L.Convolutional):
        x = spatial_in(x, xflat, layer)
        wname = b.const(f"{base}_W", p["weights"])
        bname = b.const(f"{base}_B", p["biases"])
        stride, pad = layer.stride, layer.padding
        if layer.quirk_1x1_no_subsample:
            # darknet reads the input as rows of out_h*out_w values (no subsampling): reproduce exactly.
            n = layer.out_h * layer.out_w
            r = b.node("Reshape", [x, b.const(f"{base}_q_flat", np.array([1, -1], np.int64))], f"{base}_q_reshape")
            s = b.node("Slice", [r, b.const(f"{base}_q_s", np.array([0], np.int64)),
                                 b.const(f"{base}_q_e", np.array([layer.c * n], np.int64)),
                                 b.const(f"{base}_q_a", np.array([1], np.int64))], f"{base}_q_slice")
            x = b.node("Reshape", [s, b.const(f"{base}_q_shape", np.array([1, layer.c, layer.out_h, layer.out_w],
                                                                       np.int64))], f"{base}_q_rows")
            stride = 1
        conv_out = f"{base}_out" if act != "linear" else out
        y = b.node("Conv", [x, wname, bname], f"{base}", conv_out, group=layer.groups,
                   kernel_shape=[layer.size, layer.size], strides=[stride, stride], pads=[pad] * 4)
        if act != "linear":
            y = _activation(b, y, act, base, out)
        return y, False
    if isinstance(layer, L.Connected):
        if not xflat:
            x = b.node("Flatten", [x], f"{base}_flatten", axis=1)
        gemm_out = f"{base}_out" if act != "linear" else out
        y = b.node("Gemm", [x, b.const(f"{base}_W", p["weights"]), b.const(f"{base}_B", p["biases"])], base,
                   gemm_out, transB=1)
        if act != "linear":
            y = _activation(b, y, act, base, out)
        return y, True
    if isinstance(layer, L.MaxPool):
        before = layer.padding // 2
        after = layer.padding - before
        return b.node("MaxPool", [spatial_in(x, xflat, layer)], base, out, kernel_shape=[layer.size] * 2,
                      strides=[layer.stride] * 2, pads=[before, before, after, after]), False
    if isinstance(layer, L.AvgPool):
        return b.node("GlobalAveragePool", [spatial_in(x, xflat, layer)], base, out), False
    if isinstance(layer, L.Softmax):
        v = x if xflat else b.node("Flatten", [x], f"{base}_flatten", axis=1)
        if layer.temperature != 1:
            v = b.node("Mul", [v, b.const(f"{base}_invT", np.array(1.0 / layer.temperature, np.float32))],
                       f"{base}_temperature")
        if layer.groups == 1:
            return b.node("Softmax", [v], base, out, axis=-1), True
        g = b.node("Reshape", [v, b.const(f"{base}_groups", np.array([1, layer.groups, -1], np.int64))],
                   f"{base}_group")
        s = b.node("Softmax", [g], base, axis=-1)
        return b.node("Reshape", [s, b.const(f"{base}_ungroup", np.array([1, -1], np.int64))],
                      f"{base}_ungroup", out), True
    if isinstance(layer, (L.Dropout, L.Cost)):
        return alias(x), xflat
    if isinstance(layer, L.Route):
        srcs = [names[j] for j in layer.layers]
        if layer.spatial:
            srcs = [s if not flat[j] else spatial_in(s, True, graph[j]) for s, j in zip(srcs, layer.layers)]
            if len(srcs) == 1:
                return alias(srcs[0]), False
            return b.node("Concat", srcs, base, out, axis=1), False
        srcs = [s if flat[j] else b.node("Flatten", [s], f"{base}_flatten{k}", axis=1)
                for k, (s, j) in enumerate(zip(srcs, layer.layers))]
        return (b.node("Concat", srcs, base, out, axis=1) if len(srcs) > 1 else alias(srcs[0])), True
    if isinstance(layer, L.Shortcut):
        return _shortcut(b, graph, layer, names, flat, base, out, spatial_in), False
    if isinstance(layer, L.Upsample):
        x = spatial_in(x, xflat, layer)
        s = layer.stride
        k = layer.scale * s * s if layer.reverse else layer.scale
        y_name = out if k == 1 else f"{base}_unscaled"
        if layer.reverse:
            y = b.node("AveragePool", [x], f"{base}_pool", y_name, kernel_shape=[s, s], strides=[s, s])
        else:
            roi = b.const(f"{base}_roi", np.array([], np.float32))
            scales = b.const(f"{base}_scales", np.array([1, 1, s, s], np.float32))
            y = b.node("Resize", [x, roi, scales], f"{base}_resize", y_name, mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        if k == 1:
            return y, False
        return b.node("Mul", [y, b.const(f"{base}_scale", np.array(k, np.float32))], base, out), False
    if isinstance(layer, L.Crop):
        x = spatial_in(x, xflat, layer)
        dh, dw = (layer.h - layer.out_h) // 2, (layer.w - layer.out_w) // 2
        y = b.node("Slice", [x, b.const(f"{base}_s", np.array([dh, dw], np.int64)),
                             b.const(f"{base}_e", np.array([dh + layer.out_h, dw + layer.out_w], np.int64)),
                             b.const(f"{base}_a", np.array([2, 3], np.int64))], f"{base}_slice",
                   out if layer.noadjust else f"{base}_crop")
        if layer.noadjust:
            return y, False
        y = b.node("Mul", [y, b.const(f"{base}_two", np.array(2.0, np.float32))], f"{base}_mul")
        return b.node("Add", [y, b.const(f"{base}_minus1", np.array(-1.0, np.float32))], base, out), False
    if isinstance(layer, L.BatchNorm):
        x = spatial_in(x, xflat, layer)
        s, shift = _bn_standalone(p)
        y = b.node("Mul", [x, b.const(f"{base}_scale", s.reshape(1, -1, 1, 1))], f"{base}_mul")
        return b.node("Add", [y, b.const(f"{base}_shift", shift.reshape(1, -1, 1, 1))], base, out), False
    if isinstance(layer, L.Activation):
        return _activation(b, x, act, base, out), xflat
    raise UnsupportedError(f"{graph.path}: {layer.describe()} cannot be exported")


def _bn_standalone(p: dict) -> tuple[np.ndarray, np.ndarray]:
    eps = np.float64(np.float32(1e-6))
    s = p["scales"].astype(np.float64) / (np.sqrt(p["rolling_variance"].astype(np.float64)) + eps)
    return s.astype(np.float32), (-p["rolling_mean"].astype(np.float64) * s).astype(np.float32)


def _shortcut(b: _Builder, graph: L.Graph, layer: L.Shortcut, names, flat, base, out, spatial_in) -> str:
    prev = spatial_in(names[layer.index - 1], flat[layer.index - 1], layer)
    f = graph[layer.from_]
    src = names[layer.from_]
    c1, c2 = f.out_c, layer.out_c
    stride = max(f.out_w // layer.w, 1)
    # the part of 'from' that is added: first min(c1, c2) channels, every stride-th pixel, min(h, w) extent
    if stride > 1 or c1 > c2:
        src = b.node("Slice", [src, b.const(f"{base}_fs", np.array([0, 0, 0], np.int64)),
                               b.const(f"{base}_fe", np.array([min(c1, c2), layer.h * stride, layer.w * stride],
                                                              np.int64)),
                               b.const(f"{base}_fa", np.array([1, 2, 3], np.int64)),
                               b.const(f"{base}_fst", np.array([1, stride, stride], np.int64))], f"{base}_from")
    if layer.beta != 1:
        src = b.node("Mul", [src, b.const(f"{base}_beta", np.array(layer.beta, np.float32))], f"{base}_beta_mul")
    part = prev
    if c1 < c2:
        part = b.node("Slice", [prev, b.const(f"{base}_ps", np.array([0], np.int64)),
                                b.const(f"{base}_pe", np.array([c1], np.int64)),
                                b.const(f"{base}_pa", np.array([1], np.int64))], f"{base}_prev_head")
    if layer.alpha != 1:
        part = b.node("Mul", [part, b.const(f"{base}_alpha", np.array(layer.alpha, np.float32))], f"{base}_alpha_mul")
    act = layer.activation
    add_out = f"{base}_sum" if (c1 < c2 or act != "linear") else out
    y = b.node("Add", [part, src], f"{base}_add", add_out)
    if c1 < c2:
        tail = b.node("Slice", [prev, b.const(f"{base}_ts", np.array([c1], np.int64)),
                                b.const(f"{base}_te", np.array([c2], np.int64)),
                                b.const(f"{base}_ta", np.array([1], np.int64))], f"{base}_prev_tail")
        y = b.node("Concat", [y, tail], f"{base}_concat", f"{base}_cat" if act != "linear" else out, axis=1)
    if act != "linear":
        y = _activation(b, y, act, base, out)
    return y


def to_onnx(net, path: str | os.PathLike | None = None, *, int8: bool = False, calibration=None,
            method: str = "minmax", input_layout: str = "nchw-float", preprocess: str = "letterbox"):
    """Export a darknetpy Network to ONNX: float, or QDQ int8 calibrated on ``calibration`` (a directory of
    images, a list of paths or arrays, or an int N for N random inputs). Returns the onnx.ModelProto.

    >>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")          # doctest: +SKIP
    >>> darknetpy.to_onnx(net, "tiny.onnx")                                   # doctest: +SKIP
    >>> darknetpy.to_onnx(net, "tiny_int8.onnx", int8=True, calibration="calib_images/")  # doctest: +SKIP
    """
    if not int8:
        return export_onnx(net.graph, net.weights, path, input_layout=input_layout, preprocess=preprocess)
    if calibration is None:
        from ..errors import QuantizeError
        raise QuantizeError("an int8 export needs calibration data: a directory of representative images "
                            "(or an int N for N random inputs, for a smoke test only)")
    from .onnx_qdq import export_qdq
    from ..int8.quant import quantize
    qnet = quantize(net, calibration, method=method)
    return export_qdq(qnet.qgraph, path, input_layout=input_layout)
