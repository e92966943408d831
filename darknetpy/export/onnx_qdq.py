"""int8 graph -> QDQ ONNX for onnxruntime and ST Edge AI Core (``../shared/specs/stm32n6.md`` §1.4, §2.2).

The model is exactly the ``QGraph`` (darknetpy/int8/qgraph.py): every scale, zero point, int8 weight and int32 bias comes
from it, so onnxruntime, the STM32N6 and darknetpy's int8 engine compute the same thing. The layout is the
one onnxruntime's ``quantize_static`` produces with ST's arguments (QDQ, per-channel symmetric int8 weights,
asymmetric int8 activations), with the layer -> ops mapping of ``onnx_float``, one table (``QDQ_EXPORT``):

==============  ==========================================================================================
input           float NCHW ``input`` -> QuantizeLinear(1/255, -128) -> DequantizeLinear
                (``input_layout="nhwc-uint8"``: uint8 (1,H,W,C) -> Transpose -> DequantizeLinear(1/255, 0)
                -> the same QuantizeLinear). A cfg with [net] mean/std: Sub(mean) -> Div(std) before the
                input's QuantizeLinear, whose parameters are then ``qgraph.input_qparams`` of the
                normalised range (nhwc-uint8: Transpose -> Cast -> Div(255) -> Sub -> Div -> Q); exact,
                and run on the MCU by ST Edge AI Core (see ``Builder.normalize``)
convolutional   Conv(DQ(x), DequantizeLinear(W int8, per-channel scales, zero point 0, axis=0),
                DequantizeLinear(B int32, scale s_x*s_w, zero point 0, axis=0)) -> Q -> DQ;
                leaky: -> Q -> DQ -> LeakyRelu(alpha=0.1) -> Q -> DQ; relu/relu6 have no node: the output's
                zero point is -128, so QuantizeLinear's saturation computes them (as quantize_static does)
connected       Flatten -> Q -> DQ (same parameters) -> Gemm(transB=1) with the same weight/bias DQs
maxpool         MaxPool (darknet's padding as explicit pads) -> Q -> DQ with its input's parameters
avgpool         GlobalAveragePool -> Q -> DQ
route           Concat(axis=1) -> Q -> DQ (single-input routes are no node)
shortcut        Add -> Q -> DQ (relu: zero point -128; leaky as for conv)
softmax         Flatten -> Q -> DQ -> Softmax(axis=-1) -> Q(1/255, -128) -> DQ -> float ``output``
                (``QGraph.softmax == "float"``: the Softmax output is the float ``output``)
upsample        Resize (nearest, asymmetric, floor) -> Q -> DQ with its input's parameters
reorg           DepthToSpace (reverse=1) or Reshape -> SpaceToDepth -> Reshape -> Q -> DQ with its input's
                parameters: darknet's index map exactly (``common.reorg_nodes``)
region, yolo,   Identity: the dequantised int8 tensor entering the head is a float graph output
detection       ``l<index>_<kind>``, one per head (``darknetpy_heads`` metadata; decoded on the host)
==============  ==========================================================================================

Opset 17, IR 8, static shapes, batch 1, one input and one float output (a detector: one per head); no float
operator between two
quantised ones. The model passes ``onnx.checker.check_model(full_check=True)``.

>>> export_qdq(qnet.qgraph, "tiny_int8.onnx")                           # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np

from .. import layers as L
from ..errors import ExportError
from ..int8.qgraph import HOST_HEADS, QGraph, not_in_int8_graph
from .common import (Builder, add_metadata, check_input_layout, check_model, detector_metadata, head_outputs,
                     last_exported, model_name, reorg_nodes, resize_nodes, save_model)


def export_qdq(qgraph: QGraph, path: str | os.PathLike | None = None, *, input_layout: str = "nchw-float",
               preprocess: str = "letterbox", check: bool = True):
    """Build (and optionally save) the QDQ int8 ONNX model of ``qgraph``. Returns the onnx.ModelProto.

    ``input_layout``: ``"nchw-float"`` (ST's: float (1,C,H,W) in [0, 1], the default) or ``"nhwc-uint8"``
    (the model-zoo interface: uint8 (1,H,W,C) pixels).
    """
    from onnx import TensorProto, helper

    check_input_layout(input_layout)
    graph = qgraph.graph
    c, h, w = graph.net.c, graph.net.h, graph.net.w
    b = Builder()
    qin = b.qparams("input", qgraph.input)
    if input_layout == "nhwc-uint8":
        inp = helper.make_tensor_value_info("input", TensorProto.UINT8, [1, h, w, c])
        t = b.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
        if graph.net.normalizes:
            # u8 / 255 as darknet divides (a DequantizeLinear multiplies by float32(1/255): other bits)
            f = b.node("Cast", [t], "input_cast", to=TensorProto.FLOAT)
            f = b.node("Div", [f, b.const("input_255", np.array(255.0, np.float32))], "input_div255")
            x0 = b.qdq(b.normalize(f, graph.net), qin, "input")
        else:
            u8 = (b.const("input_u8_scale", np.array(qgraph.input.scale, np.float32)),
                  b.const("input_u8_zero_point", np.array(0, np.uint8)))
            f = b.node("DequantizeLinear", [t, *u8], "input_u8_DequantizeLinear", "input_float")
            x0 = b.qdq(f, qin, "input")
    else:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, w])
        x0 = b.qdq(b.normalize("input", graph.net), qin, "input")

    names: dict[int, str] = {-1: x0}          # layer -> its float (dequantised) output name
    params: dict[int, tuple[str, str]] = {-1: qin}
    flat: dict[int, bool] = {-1: False}
    last = last_exported(graph)
    heads = head_outputs(graph)
    for ql in qgraph.layers[: last + 1]:
        e = _QLayer(b, qgraph, ql, names, params, flat, ql.index == last and not heads)
        host = isinstance(ql.layer, HOST_HEADS)   # an alias in the int8 graph, a graph output here
        entry = _alias if ql.alias and not host else L.dispatch(QDQ_EXPORT, ql.layer)
        if isinstance(entry, L.Refuse):
            raise ExportError(f"{graph.path}: {ql.layer.describe()}: {entry.why}")
        entry(e, ql)

    if heads:                 # a detector: one output per head, the dequantised int8 tensor entering it
        outps = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in heads]
    else:
        o = graph.output_layer
        out_shape = [1, o.out_c, o.out_h, o.out_w] if o.spatial and not flat[last] else [1, o.outputs]
        if names[last] != "output":
            names[last] = b.node("Identity", [names[last]], "output_identity", "output")
        outps = [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)]
    model = b.model(model_name(graph, "_int8"), [inp], outps)
    info = qgraph.info
    add_metadata(model, graph, preprocess, input_layout, quantization=(
        f"int8 QDQ by darknetpy: weights per-channel symmetric int8, activations per-tensor asymmetric "
        f"int8; calibration {info.get('method', '?')} on {info.get('calibration_images', '?')} input(s); "
        f"pair_safe={info.get('pair_safe', '?')}; softmax output {qgraph.softmax}"), **detector_metadata(graph))
    if check:
        check_model(model, "int8 model")
    if path is not None:
        save_model(model, path)
    return model


class _QLayer:
    """What an emitter needs about the int8 layer being exported; it records the layer's dequantised output
    name, its (scale, zero point) initializers and its flatness in ``names``/``params``/``flat``."""

    def __init__(self, b: Builder, qg: QGraph, ql, names: dict, params: dict, flat: dict, is_last: bool):
        self.b, self.qg, self.ql, self.names, self.params, self.flat = b, qg, ql, names, params, flat
        self.i = ql.index
        self.base = f"l{ql.index}_{ql.layer.kind}"
        self.out_name = "output" if is_last else f"l{ql.index}"
        self.is_last = is_last

    def own(self) -> tuple[str, str]:
        return self.b.qparams(f"l{self.i}", self.ql.out)

    def spatial(self, j: int) -> str:
        """Layer j's output as (1, C, H, W) of this layer's input (a flat tensor is reshaped and re-QDQ'd)."""
        b, lay = self.b, self.ql.layer
        if not self.flat[j]:
            return self.names[j]
        shape = b.const(f"{self.base}_inshape", np.array([1, lay.c, lay.h, lay.w], np.int64))
        r = b.node("Reshape", [self.names[j], shape], f"{self.base}_unflatten")
        return b.qdq(r, self.params[j], f"{self.base}_unflatten")

    def flatten(self, j: int, tag: str) -> str:
        if self.flat[j]:
            return self.names[j]
        f = self.b.node("Flatten", [self.names[j]], f"{self.base}_{tag}", axis=1)
        return self.b.qdq(f, self.params[j], f"{self.base}_{tag}")

    def finish(self, y: str) -> None:
        """Q -> DQ of a float result (with the leaky step when there is one); records the output."""
        b, ql, i = self.b, self.ql, self.i
        if ql.act == "leaky":
            pre = b.qparams(f"{self.base}_pre", ql.pre)
            d = b.qdq(y, pre, f"{self.base}_pre")
            y = b.node("LeakyRelu", [d], f"{self.base}_leaky", f"{self.base}_leaky_out", alpha=0.1)
        p = self.own()
        self.names[i], self.params[i] = b.qdq(y, p, f"l{i}", self.out_name), p


def _alias(e: _QLayer, ql) -> None:
    """A layer that computes nothing (dropout, cost, one-input route): its output is its input."""
    j = ql.src[0]
    i = ql.index
    e.names[i], e.params[i], e.flat[i] = e.names[j], e.params[j], e.flat[j]
    if e.is_last:
        e.names[i] = e.b.node("Identity", [e.names[j]], e.base, e.out_name)


def _weighted(e: _QLayer, ql) -> None:
    """Conv or Gemm over DequantizeLinear'd int8 weights (axis 0) and int32 biases (scale s_x * s_w)."""
    b, base, lay, j = e.b, e.base, ql.layer, ql.src[0]
    wname = b.const(f"{base}_W_quantized", ql.weight)
    ws = b.const(f"{base}_W_scale", ql.weight_scale.astype(np.float32))
    wz = b.const(f"{base}_W_zero_point", np.zeros(ql.weight.shape[0], np.int8))
    wdq = b.node("DequantizeLinear", [wname, ws, wz], f"{base}_W_DequantizeLinear", f"{base}_W", axis=0)
    sx = np.float32(e.qg.tensor_qparams(j).scale)
    bscale = (sx * ql.weight_scale.astype(np.float32)).astype(np.float32)
    bname = b.const(f"{base}_B_quantized", ql.bias)
    bs = b.const(f"{base}_B_scale", bscale)
    bz = b.const(f"{base}_B_zero_point", np.zeros(ql.bias.shape[0], np.int32))
    bdq = b.node("DequantizeLinear", [bname, bs, bz], f"{base}_B_DequantizeLinear", f"{base}_B", axis=0)
    if isinstance(lay, L.Convolutional):
        y = b.node("Conv", [e.spatial(j), wdq, bdq], base, f"{base}_out", group=lay.groups,
                   kernel_shape=[lay.size, lay.size], strides=[lay.stride, lay.stride], pads=[lay.padding] * 4)
        e.flat[e.i] = False
    else:
        y = b.node("Gemm", [e.flatten(j, "flatten"), wdq, bdq], base, f"{base}_out", transB=1)
        e.flat[e.i] = True
    e.finish(y)


def _maxpool(e: _QLayer, ql) -> None:
    lay, j = ql.layer, ql.src[0]
    before = lay.padding // 2
    after = lay.padding - before
    y = e.b.node("MaxPool", [e.spatial(j)], e.base, f"{e.base}_out", kernel_shape=[lay.size] * 2,
                 strides=[lay.stride] * 2, pads=[before, before, after, after])
    e.names[e.i] = e.b.qdq(y, e.params[j], f"l{e.i}", e.out_name)      # a max keeps its input's scale
    e.params[e.i], e.flat[e.i] = e.params[j], False


def _same_params(e: _QLayer, ql, y: str) -> None:
    """Q -> DQ of a layer that only moves values, with its input's parameters (maxpool, upsample, reorg)."""
    j = ql.src[0]
    e.names[e.i] = e.b.qdq(y, e.params[j], f"l{e.i}", e.out_name)
    e.params[e.i], e.flat[e.i] = e.params[j], False


def _upsample(e: _QLayer, ql) -> None:
    _same_params(e, ql, resize_nodes(e.b, e.base, e.spatial(ql.src[0]), ql.layer.stride, f"{e.base}_out"))


def _reorg(e: _QLayer, ql) -> None:
    _same_params(e, ql, reorg_nodes(e.b, e.base, e.spatial(ql.src[0]), ql.layer, f"{e.base}_out"))


def _head(e: _QLayer, ql) -> None:
    """A detection head: the dequantised int8 tensor entering it is the graph output ``l<index>_<kind>``."""
    j, det = ql.src[0], isinstance(ql.layer, L.DetectionLayer)
    x = e.flatten(j, "flatten") if det else e.spatial(j)
    e.names[e.i] = e.b.node("Identity", [x], e.base, e.base)
    e.params[e.i], e.flat[e.i] = e.params[j], det


def _avgpool(e: _QLayer, ql) -> None:
    y = e.b.node("GlobalAveragePool", [e.spatial(ql.src[0])], e.base, f"{e.base}_out")
    p = e.own()
    e.names[e.i], e.params[e.i], e.flat[e.i] = e.b.qdq(y, p, f"l{e.i}", e.out_name), p, False


def _route(e: _QLayer, ql) -> None:
    y = e.b.node("Concat", [e.spatial(j) for j in ql.layer.layers], e.base, f"{e.base}_out", axis=1)
    p = e.own()
    e.names[e.i], e.params[e.i], e.flat[e.i] = e.b.qdq(y, p, f"l{e.i}", e.out_name), p, False


def _shortcut(e: _QLayer, ql) -> None:
    y = e.b.node("Add", [e.spatial(ql.src[0]), e.spatial(ql.src[1])], f"{e.base}_add", f"{e.base}_out")
    e.finish(y)
    e.flat[e.i] = False


def _softmax(e: _QLayer, ql) -> None:
    b, i = e.b, e.i
    v = e.flatten(ql.src[0], "flatten")
    if ql.out is None:
        e.names[i] = b.node("Softmax", [v], e.base, e.out_name, axis=-1)
        e.params[i] = e.params[ql.src[0]]
    else:
        y = b.node("Softmax", [v], e.base, f"{e.base}_out", axis=-1)
        p = e.own()
        e.names[i], e.params[i] = b.qdq(y, p, f"l{i}", e.out_name), p
    e.flat[i] = True



# One entry per layer kind (tests/core/test_layout.py checks that none is missing). [dropout], [cost] and
# one-input [route]s compute nothing and are aliased before the table is consulted.
QDQ_EXPORT: dict = {
    L.Convolutional: _weighted,
    L.Connected: _weighted,
    L.MaxPool: _maxpool,
    L.AvgPool: _avgpool,
    L.Route: _route,
    L.Shortcut: _shortcut,
    L.Softmax: _softmax,
    L.Dropout: _alias,
    L.Cost: _alias,
    L.Upsample: _upsample,
    L.Reorg: _reorg,
    L.Region: _head,
    L.Yolo: _head,
    L.DetectionLayer: _head,
    L.Local: not_in_int8_graph("[local]"),
    L.Crop: not_in_int8_graph("[crop]"),
    L.BatchNorm: not_in_int8_graph("[batchnorm] (folded into the convolution before quantisation)"),
    L.Activation: not_in_int8_graph("[activation]"),
}
