"""Graph -> ONNX (float), for onnxruntime and for ST Edge AI Core (``../shared/specs/stm32n6.md`` §2).

Opset 17, IR 8, static shapes, batch 1, one input and one output -- a detector has one output per
[region]/[yolo]/[detection] layer instead (``common.head_outputs``). Batch norm is folded first with
darknet's CPU formula (passes.fold_batchnorm). The layer -> ops mapping is one table, ``FLOAT_EXPORT``: Each darknet layer maps to ONNX ops that compute the same
values (up to float rounding):

=============  ===========================================================================================
convolutional  Conv (group, explicit symmetric pads) + its activation; a 1x1 stride>1 conv reproduces
               darknet's unstrided read with Reshape/Slice/Reshape before a 1x1 stride-1 Conv
maxpool        MaxPool with darknet's total padding split as (padding//2 before, the rest after)
avgpool        GlobalAveragePool
softmax        Flatten, (Mul 1/temperature), Reshape to groups, Softmax(axis=-1), Reshape back
route          Concat(axis=1) (flat routes: Flatten each input, Concat)
shortcut       Add, with Mul for alpha/beta, Slice for channel and stride mismatches
upsample       Resize nearest (asymmetric, floor) [* scale]; stride<0: AveragePool * stride^2 * scale, after
               Reshape/Slice/Reshape when the input is not a multiple of the stride (darknet's reading)
connected      Flatten + Gemm(transB=1)
crop           Slice [* 2 - 1]
reorg          darknet's index map exactly: reverse=1 DepthToSpace (DCR); reverse=0 Reshape -> SpaceToDepth ->
               Reshape (darknet reinterprets its input buffer, detection.md §4.3); flatten Reshape/Transpose
region, yolo,  Identity: the tensor entering the head is the graph output ``l<index>_<kind>``; the heads
detection      description (anchors, masks, classes, coords, kind) is metadata ``darknetpy_heads`` (JSON);
               ``darknetpy.decode(model, outputs, image_size)`` gives darknet's boxes
batchnorm      Mul + Add per channel;  dropout, cost: nothing
activations    LeakyRelu(alpha=0.1) for leaky (ONNX's default is 0.01), Relu, Clip(0, 6), Sigmoid, Tanh,
               Elu, Selu(darknet's constants), Clip(-1, 1) for hardtan, LeakyRelu(0.01) for relie,
               ramp and loggy composed from Relu/Sigmoid; plse, lhtan and stair are refused
=============  ===========================================================================================

Anything that cannot be expressed exactly raises UnsupportedError naming the layer and what is supported.
"""

from __future__ import annotations

import os

import numpy as np

from .. import layers as L
from ..errors import UnsupportedError
from ..passes import bn_scale_shift, fold_batchnorm, numpy_warnings
from ..weights import Weights
from .common import (Builder, Emitter, add_metadata, check_input_layout, check_model, detector_metadata,
                     head_outputs, last_exported, model_name, reorg_nodes, resize_nodes, save_model)

_ACT_OK = ("linear", "leaky", "relu", "relu6", "logistic", "tanh", "elu", "selu", "hardtan", "relie", "ramp",
           "loggy")


def _activation(b: Builder, x: str, act: str, base: str, out: str) -> str:
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


class _Layer:
    """What an emitter needs about the layer being exported: the builder, the graph, every earlier layer's
    output name and flatness, and this layer's node-name prefix, input and output name."""

    def __init__(self, b: Builder, graph: L.Graph, layer: L.Layer, names: dict, flat: dict, out: str):
        self.b, self.graph, self.names, self.flat, self.out = b, graph, names, flat, out
        self.base = f"l{layer.index}_{layer.kind}"
        self.x = names[layer.index - 1]
        self.xflat = flat[layer.index - 1]

    def alias(self, src: str) -> str:
        """Reuse ``src`` as this layer's output (no node), unless it must be the graph output."""
        return self.b.node("Identity", [src], self.base, self.out) if self.out == "output" else src

    def spatial_in(self, src: str, was_flat: bool, lay: L.Layer) -> str:
        """``src`` as (1, C, H, W) of ``lay``'s input, reshaping a flat (1, N) tensor."""
        if not was_flat:
            return src
        shape = self.b.const(f"{self.base}_inshape", np.array([1, lay.c, lay.h, lay.w], np.int64))
        return self.b.node("Reshape", [src, shape], f"{self.base}_unflatten")

    def activation(self, y: str, act: str) -> str:
        return _activation(self.b, y, act, self.base, self.out)


# -- one emitter per layer kind: (ctx, layer, params) -> (output name, output is flat (1, N)) -----------------

def _conv(e: _Layer, layer: L.Convolutional, p: dict):
    b, base, act = e.b, e.base, layer.activation
    x = e.spatial_in(e.x, e.xflat, layer)
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
    conv_out = f"{base}_out" if act != "linear" else e.out
    y = b.node("Conv", [x, wname, bname], f"{base}", conv_out, group=layer.groups,
               kernel_shape=[layer.size, layer.size], strides=[stride, stride], pads=[pad] * 4)
    return (e.activation(y, act) if act != "linear" else y), False


def _check_conv(graph: L.Graph, layer: L.Convolutional) -> str:
    if layer.quirk_1x1_no_subsample and layer.groups != 1:
        return (f"a grouped 1x1 convolution with stride {layer.stride} (darknet's unstrided read) cannot be "
                "exported")
    return ""


def _connected(e: _Layer, layer: L.Connected, p: dict):
    b, base, act = e.b, e.base, layer.activation
    x = e.x if e.xflat else b.node("Flatten", [e.x], f"{base}_flatten", axis=1)
    gemm_out = f"{base}_out" if act != "linear" else e.out
    y = b.node("Gemm", [x, b.const(f"{base}_W", p["weights"]), b.const(f"{base}_B", p["biases"])], base,
               gemm_out, transB=1)
    return (e.activation(y, act) if act != "linear" else y), True


def _maxpool(e: _Layer, layer: L.MaxPool, p: dict):
    before = layer.padding // 2
    after = layer.padding - before
    return e.b.node("MaxPool", [e.spatial_in(e.x, e.xflat, layer)], e.base, e.out, kernel_shape=[layer.size] * 2,
                    strides=[layer.stride] * 2, pads=[before, before, after, after]), False


def _check_maxpool(graph: L.Graph, layer: L.MaxPool) -> str:
    before = layer.padding // 2
    after = layer.padding - before
    if max(before, after) >= layer.size:
        return (f"padding={layer.padding} with size={layer.size} needs pads as large as the window, which ONNX "
                "MaxPool refuses")
    return ""


def _avgpool(e: _Layer, layer: L.AvgPool, p: dict):
    return e.b.node("GlobalAveragePool", [e.spatial_in(e.x, e.xflat, layer)], e.base, e.out), False


def _softmax(e: _Layer, layer: L.Softmax, p: dict):
    b, base = e.b, e.base
    v = e.x if e.xflat else b.node("Flatten", [e.x], f"{base}_flatten", axis=1)
    if layer.temperature != 1:
        v = b.node("Mul", [v, b.const(f"{base}_invT", np.array(1.0 / layer.temperature, np.float32))],
                   f"{base}_temperature")
    if layer.groups == 1:
        return b.node("Softmax", [v], base, e.out, axis=-1), True
    g = b.node("Reshape", [v, b.const(f"{base}_groups", np.array([1, layer.groups, -1], np.int64))],
               f"{base}_group")
    s = b.node("Softmax", [g], base, axis=-1)
    return b.node("Reshape", [s, b.const(f"{base}_ungroup", np.array([1, -1], np.int64))],
                  f"{base}_ungroup", e.out), True


def _passthrough(e: _Layer, layer: L.Layer, p: dict):
    """[dropout] and [cost]: no node, the input is the output."""
    return e.alias(e.x), e.xflat


def _route(e: _Layer, layer: L.Route, p: dict):
    b, base, names, flat = e.b, e.base, e.names, e.flat
    srcs = [names[j] for j in layer.layers]
    if layer.spatial:
        srcs = [s if not flat[j] else e.spatial_in(s, True, e.graph[j]) for s, j in zip(srcs, layer.layers)]
        if len(srcs) == 1:
            return e.alias(srcs[0]), False
        return b.node("Concat", srcs, base, e.out, axis=1), False
    srcs = [s if flat[j] else b.node("Flatten", [s], f"{base}_flatten{k}", axis=1)
            for k, (s, j) in enumerate(zip(srcs, layer.layers))]
    return (b.node("Concat", srcs, base, e.out, axis=1) if len(srcs) > 1 else e.alias(srcs[0])), True


def _shortcut(e: _Layer, layer: L.Shortcut, p: dict):
    b, base, graph = e.b, e.base, e.graph
    prev = e.spatial_in(e.names[layer.index - 1], e.flat[layer.index - 1], layer)
    f = graph[layer.from_]
    src = e.names[layer.from_]
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
    add_out = f"{base}_sum" if (c1 < c2 or act != "linear") else e.out
    y = b.node("Add", [part, src], f"{base}_add", add_out)
    if c1 < c2:
        tail = b.node("Slice", [prev, b.const(f"{base}_ts", np.array([c1], np.int64)),
                                b.const(f"{base}_te", np.array([c2], np.int64)),
                                b.const(f"{base}_ta", np.array([1], np.int64))], f"{base}_prev_tail")
        y = b.node("Concat", [y, tail], f"{base}_concat", f"{base}_cat" if act != "linear" else e.out, axis=1)
    return (e.activation(y, act) if act != "linear" else y), False


def _check_shortcut(graph: L.Graph, layer: L.Shortcut) -> str:
    f = graph[layer.from_]
    if layer.w > f.out_w:
        return f"adding a smaller 'from' layer at every {layer.w // f.out_w}th pixel cannot be exported"
    return ""


def _upsample(e: _Layer, layer: L.Upsample, p: dict):
    b, base = e.b, e.base
    x = e.spatial_in(e.x, e.xflat, layer)
    s = layer.stride
    k = layer.scale * s * s if layer.reverse else layer.scale
    y_name = e.out if k == 1 else f"{base}_unscaled"
    if layer.reverse:
        oh, ow = layer.out_h * s, layer.out_w * s
        if (layer.h, layer.w) != (oh, ow):
            # darknet reads the input with the output's geometry (kernels/elementwise.py upsample): the first
            # c*oh*ow values as (c, oh, ow), reproduced exactly
            r = b.node("Reshape", [x, b.const(f"{base}_q_flat", np.array([1, -1], np.int64))], f"{base}_q_reshape")
            r = b.node("Slice", [r, b.const(f"{base}_q_s", np.array([0], np.int64)),
                                 b.const(f"{base}_q_e", np.array([layer.c * oh * ow], np.int64)),
                                 b.const(f"{base}_q_a", np.array([1], np.int64))], f"{base}_q_slice")
            x = b.node("Reshape", [r, b.const(f"{base}_q_shape", np.array([1, layer.c, oh, ow], np.int64))],
                       f"{base}_q_unflatten")
        y = b.node("AveragePool", [x], f"{base}_pool", y_name, kernel_shape=[s, s], strides=[s, s])
    else:
        y = resize_nodes(b, base, x, s, y_name)
    if k == 1:
        return y, False
    return b.node("Mul", [y, b.const(f"{base}_scale", np.array(k, np.float32))], base, e.out), False


def _reorg(e: _Layer, layer: L.Reorg, p: dict):
    return reorg_nodes(e.b, e.base, e.spatial_in(e.x, e.xflat, layer), layer, e.out), False


def _check_reorg(graph: L.Graph, layer: L.Reorg) -> str:
    if layer.extra:
        return "extra > 0 (a flat copy padded with zeros) cannot be exported"
    if not layer.reverse and not layer.flatten and layer.c % (layer.stride * layer.stride):
        return (f"{layer.c} channels are not a multiple of stride*stride = {layer.stride ** 2}: darknet's mapping "
                "then mixes channels in a way no ONNX operator reproduces")
    return ""


def _head(e: _Layer, layer: L.Layer, p: dict):
    """A detection head: the tensor entering it becomes a graph output named ``l<index>_<kind>`` (its forward pass
    and the boxes are decoded from it on the host: ``darknetpy.decode(model, outputs, image_size)``)."""
    b, base = e.b, e.base
    if isinstance(layer, L.DetectionLayer):
        x = e.x if e.xflat else b.node("Flatten", [e.x], f"{base}_flatten", axis=1)
        return b.node("Identity", [x], base, base), True
    return b.node("Identity", [e.spatial_in(e.x, e.xflat, layer)], base, base), False


def _crop(e: _Layer, layer: L.Crop, p: dict):
    b, base = e.b, e.base
    x = e.spatial_in(e.x, e.xflat, layer)
    dh, dw = (layer.h - layer.out_h) // 2, (layer.w - layer.out_w) // 2
    y = b.node("Slice", [x, b.const(f"{base}_s", np.array([dh, dw], np.int64)),
                         b.const(f"{base}_e", np.array([dh + layer.out_h, dw + layer.out_w], np.int64)),
                         b.const(f"{base}_a", np.array([2, 3], np.int64))], f"{base}_slice",
               e.out if layer.noadjust else f"{base}_crop")
    if layer.noadjust:
        return y, False
    y = b.node("Mul", [y, b.const(f"{base}_two", np.array(2.0, np.float32))], f"{base}_mul")
    return b.node("Add", [y, b.const(f"{base}_minus1", np.array(-1.0, np.float32))], base, e.out), False


def _batchnorm(e: _Layer, layer: L.BatchNorm, p: dict):
    b, base = e.b, e.base
    x = e.spatial_in(e.x, e.xflat, layer)
    s, shift = bn_scale_shift(p, layer.c)           # a standalone [batchnorm] has no bias
    y = b.node("Mul", [x, b.const(f"{base}_scale", s.reshape(1, -1, 1, 1))], f"{base}_mul")
    return b.node("Add", [y, b.const(f"{base}_shift", shift.reshape(1, -1, 1, 1))], base, e.out), False


def _activation_layer(e: _Layer, layer: L.Activation, p: dict):
    return e.activation(e.x, layer.activation), e.xflat


_EXPORTABLE = ("convolutional, connected, maxpool, avgpool, softmax, route, shortcut, upsample, dropout, crop, "
               "batchnorm, activation, cost, reorg, region, yolo, detection")

# One entry per layer kind (tests/core/test_layout.py checks that none is missing).
FLOAT_EXPORT: dict = {
    L.Convolutional: Emitter(_conv, _check_conv),
    L.Connected: Emitter(_connected),
    L.MaxPool: Emitter(_maxpool, _check_maxpool),
    L.AvgPool: Emitter(_avgpool),
    L.Softmax: Emitter(_softmax),
    L.Cost: Emitter(_passthrough),
    L.Route: Emitter(_route),
    L.Shortcut: Emitter(_shortcut, _check_shortcut),
    L.Upsample: Emitter(_upsample),
    L.Dropout: Emitter(_passthrough),
    L.Local: L.Refuse(f"[local] (unshared weights) has no ONNX equivalent; exportable layers: {_EXPORTABLE}"),
    L.Crop: Emitter(_crop),
    L.BatchNorm: Emitter(_batchnorm),
    L.Activation: Emitter(_activation_layer),
    L.Reorg: Emitter(_reorg, _check_reorg),
    L.Region: Emitter(_head),
    L.Yolo: Emitter(_head),
    L.DetectionLayer: Emitter(_head),
}


def check_exportable(graph: L.Graph) -> None:
    """Raise UnsupportedError for the first layer ONNX cannot express exactly."""
    for layer in graph.layers[: graph.output_index + 1]:
        act = getattr(layer, "activation", "linear")
        if act not in _ACT_OK:
            raise UnsupportedError(f"{graph.path}: {layer.describe()}: activation {act!r} cannot be exported to "
                                   f"ONNX exactly; exportable activations: {', '.join(_ACT_OK)}")
        entry = L.dispatch(FLOAT_EXPORT, layer)
        why = entry.why if isinstance(entry, L.Refuse) else (entry.check(graph, layer) if entry.check else "")
        if why:
            raise UnsupportedError(f"{graph.path}: {layer.describe()}: {why}")


def export_onnx(graph: L.Graph, weights: Weights, path: str | os.PathLike | None = None, *,
                input_layout: str = "nchw-float", preprocess: str = "letterbox", check: bool = True):
    """Build (and optionally save) the float ONNX model of ``graph``. Returns the onnx.ModelProto.

    ``input_layout="nhwc-uint8"`` puts the model-zoo interface in the graph: a (1, H, W, C) uint8 input,
    cast, divided by 255 (darknet's exact preprocessing arithmetic) and transposed to NCHW. Either way the
    model takes the image: a cfg's [net] mean/std become Sub and Div nodes after the input.
    """
    from onnx import TensorProto, helper

    check_input_layout(input_layout)
    check_exportable(graph)
    graph, weights = fold_batchnorm(graph, weights)
    b = Builder()
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
    x0 = b.normalize(x0, graph.net)              # the cfg's mean/std: the model takes the [0, 1] image

    names: dict[int, str] = {-1: x0}
    flat: dict[int, bool] = {-1: False}
    last = last_exported(graph)
    heads = head_outputs(graph)
    for layer, p in zip(graph.layers[: last + 1], weights.params):
        out = "output" if layer.index == last and not heads else f"l{layer.index}"
        ctx = _Layer(b, graph, layer, names, flat, out)
        with numpy_warnings(graph, layer, "exporting it"):
            names[layer.index], flat[layer.index] = L.dispatch(FLOAT_EXPORT, layer).emit(ctx, layer, p)

    if heads:                 # a detector: one output per head, the tensor entering it (named l<index>_<kind>)
        outps = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in heads]
    else:
        o = graph.output_layer
        out_shape = [1, o.out_c, o.out_h, o.out_w] if o.spatial and not flat[last] else [1, o.outputs]
        outps = [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)]
    model = b.model(model_name(graph), [inp], outps)
    add_metadata(model, graph, preprocess, input_layout, **detector_metadata(graph))
    if check:
        check_model(model)
    if path is not None:
        save_model(model, path)
    return model
