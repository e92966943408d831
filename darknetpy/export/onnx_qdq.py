"""int8 graph -> QDQ ONNX for onnxruntime and ST Edge AI Core (``../shared/specs/stm32n6.md`` §1.4, §2.2).

The model is exactly the ``QGraph`` (quant.py): every scale, zero point, int8 weight and int32 bias comes
from it, so onnxruntime, the STM32N6 and darknetpy's int8 engine compute the same thing. The layout is the
one onnxruntime's ``quantize_static`` produces with ST's arguments (QDQ, per-channel symmetric int8 weights,
asymmetric int8 activations), with the layer -> ops mapping of ``onnx_export``:

==============  ==========================================================================================
input           float NCHW ``input`` -> QuantizeLinear(1/255, -128) -> DequantizeLinear
                (``input_layout="nhwc-uint8"``: uint8 (1,H,W,C) -> Transpose -> DequantizeLinear(1/255, 0)
                -> the same QuantizeLinear)
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
==============  ==========================================================================================

Opset 17, IR 8, static shapes, batch 1, one input and one float output; no float operator between two
quantised ones. The model passes ``onnx.checker.check_model(full_check=True)``.

>>> export_qdq(qnet.qgraph, "tiny_int8.onnx")                           # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np

from .. import __version__
from .. import layers as L
from ..errors import ExportError
from .onnx_float import INPUT_LAYOUTS, IR_VERSION, OPSET, _metadata, save_model
from ..int8.quant import QGraph, QParams


class _Builder:
    """Nodes and initializers with unique names; one (scale, zero point) initializer pair per QParams user."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes = []
        self.inits = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self._names:
            self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
            self._names.add(name)
        return name

    def node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        out = out or name
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def qparams(self, base: str, qp: QParams) -> tuple[str, str]:
        return (self.const(f"{base}_scale", np.array(qp.scale, np.float32)),
                self.const(f"{base}_zero_point", np.array(qp.zero_point, np.int8)))

    def qdq(self, x: str, params: tuple[str, str], base: str, out: str | None = None) -> str:
        """x (float) -> QuantizeLinear -> DequantizeLinear; returns the float name (``out`` if given)."""
        q = self.node("QuantizeLinear", [x, *params], f"{base}_QuantizeLinear", f"{base}_quantized")
        return self.node("DequantizeLinear", [q, *params], f"{base}_DequantizeLinear", out or f"{base}_dq")


def export_qdq(qgraph: QGraph, path: str | os.PathLike | None = None, *, input_layout: str = "nchw-float",
               preprocess: str = "letterbox", check: bool = True):
    """Build (and optionally save) the QDQ int8 ONNX model of ``qgraph``. Returns the onnx.ModelProto.

    ``input_layout``: ``"nchw-float"`` (ST's: float (1,C,H,W) in [0, 1], the default) or ``"nhwc-uint8"``
    (the model-zoo interface: uint8 (1,H,W,C) pixels).
    """
    import onnx
    from onnx import TensorProto, helper

    if input_layout not in INPUT_LAYOUTS:
        raise ExportError(f"unknown input layout {input_layout!r}; choose from {', '.join(INPUT_LAYOUTS)}")
    graph = qgraph.graph
    c, h, w = graph.net.c, graph.net.h, graph.net.w
    b = _Builder()
    qin = b.qparams("input", qgraph.input)
    if input_layout == "nhwc-uint8":
        inp = helper.make_tensor_value_info("input", TensorProto.UINT8, [1, h, w, c])
        t = b.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
        u8 = (b.const("input_u8_scale", np.array(qgraph.input.scale, np.float32)),
              b.const("input_u8_zero_point", np.array(0, np.uint8)))
        f = b.node("DequantizeLinear", [t, *u8], "input_u8_DequantizeLinear", "input_float")
        x0 = b.qdq(f, qin, "input")
    else:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, w])
        x0 = b.qdq("input", qin, "input")

    names: dict[int, str] = {-1: x0}          # layer -> its float (dequantised) output name
    params: dict[int, tuple[str, str]] = {-1: qin}
    flat: dict[int, bool] = {-1: False}
    last = qgraph.output_index
    for ql in qgraph.layers[: last + 1]:
        _emit(b, qgraph, ql, names, params, flat, ql.index == last)

    o = graph.output_layer
    out_shape = [1, o.out_c, o.out_h, o.out_w] if o.spatial and not flat[last] else [1, o.outputs]
    if names[last] != "output":
        names[last] = b.node("Identity", [names[last]], "output_identity", "output")
    outp = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    name = (os.path.splitext(os.path.basename(graph.path))[0] or "darknet") + "_int8"
    g = helper.make_graph(b.nodes, name, [inp], [outp], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="darknetpy",
                              producer_version=__version__)
    model.ir_version = IR_VERSION
    _metadata(model, graph, preprocess, input_layout)
    info = qgraph.info
    e = model.metadata_props.add()
    e.key = "quantization"
    e.value = (f"int8 QDQ by darknetpy: weights per-channel symmetric int8, activations per-tensor asymmetric "
               f"int8; calibration {info.get('method', '?')} on {info.get('calibration_images', '?')} input(s); "
               f"pair_safe={info.get('pair_safe', '?')}; softmax output {qgraph.softmax}")
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as ex:  # onnx raises ValidationError / InferenceError
            raise ExportError(f"the exported int8 model fails onnx.checker: {ex}") from None
    if path is not None:
        save_model(model, path)
    return model


def _emit(b: _Builder, qg: QGraph, ql, names: dict, params: dict, flat: dict, is_last: bool) -> None:
    lay = ql.layer
    i = ql.index
    base = f"l{i}_{lay.kind}"
    out_name = "output" if is_last else f"l{i}"

    def own() -> tuple[str, str]:
        return b.qparams(f"l{i}", ql.out)

    def spatial(j: int) -> str:
        if not flat[j]:
            return names[j]
        shape = b.const(f"{base}_inshape", np.array([1, lay.c, lay.h, lay.w], np.int64))
        r = b.node("Reshape", [names[j], shape], f"{base}_unflatten")
        return b.qdq(r, params[j], f"{base}_unflatten")

    def flatten(j: int, tag: str) -> str:
        if flat[j]:
            return names[j]
        f = b.node("Flatten", [names[j]], f"{base}_{tag}", axis=1)
        return b.qdq(f, params[j], f"{base}_{tag}")

    def finish(y: str, qp_pre, act: str) -> tuple[str, tuple[str, str]]:
        """Q -> DQ of a float result, and the leaky step when there is one."""
        if act == "leaky":
            pre = b.qparams(f"{base}_pre", qp_pre)
            d = b.qdq(y, pre, f"{base}_pre")
            lk = b.node("LeakyRelu", [d], f"{base}_leaky", f"{base}_leaky_out", alpha=0.1)
            p = own()
            return b.qdq(lk, p, f"l{i}", out_name), p
        p = own()
        return b.qdq(y, p, f"l{i}", out_name), p

    if ql.alias:
        j = ql.src[0]
        names[i], params[i], flat[i] = names[j], params[j], flat[j]
        if is_last:
            names[i] = b.node("Identity", [names[j]], base, out_name)
        return
    if isinstance(lay, (L.Convolutional, L.Connected)):
        j = ql.src[0]
        wname = b.const(f"{base}_W_quantized", ql.weight)
        ws = b.const(f"{base}_W_scale", ql.weight_scale.astype(np.float32))
        wz = b.const(f"{base}_W_zero_point", np.zeros(ql.weight.shape[0], np.int8))
        wdq = b.node("DequantizeLinear", [wname, ws, wz], f"{base}_W_DequantizeLinear", f"{base}_W", axis=0)
        sx = np.float32(qg.tensor_qparams(j).scale)
        bscale = (sx * ql.weight_scale.astype(np.float32)).astype(np.float32)
        bname = b.const(f"{base}_B_quantized", ql.bias)
        bs = b.const(f"{base}_B_scale", bscale)
        bz = b.const(f"{base}_B_zero_point", np.zeros(ql.bias.shape[0], np.int32))
        bdq = b.node("DequantizeLinear", [bname, bs, bz], f"{base}_B_DequantizeLinear", f"{base}_B", axis=0)
        if isinstance(lay, L.Convolutional):
            y = b.node("Conv", [spatial(j), wdq, bdq], base, f"{base}_out", group=lay.groups,
                       kernel_shape=[lay.size, lay.size], strides=[lay.stride, lay.stride], pads=[lay.padding] * 4)
            flat[i] = False
        else:
            y = b.node("Gemm", [flatten(j, "flatten"), wdq, bdq], base, f"{base}_out", transB=1)
            flat[i] = True
        names[i], params[i] = finish(y, ql.pre, ql.act)
        return
    if isinstance(lay, L.MaxPool):
        j = ql.src[0]
        before = lay.padding // 2
        after = lay.padding - before
        y = b.node("MaxPool", [spatial(j)], base, f"{base}_out", kernel_shape=[lay.size] * 2,
                   strides=[lay.stride] * 2, pads=[before, before, after, after])
        names[i] = b.qdq(y, params[j], f"l{i}", out_name)
        params[i], flat[i] = params[j], False
        return
    if isinstance(lay, L.AvgPool):
        y = b.node("GlobalAveragePool", [spatial(ql.src[0])], base, f"{base}_out")
        p = own()
        names[i], params[i], flat[i] = b.qdq(y, p, f"l{i}", out_name), p, False
        return
    if isinstance(lay, L.Route):
        y = b.node("Concat", [spatial(j) for j in lay.layers], base, f"{base}_out", axis=1)
        p = own()
        names[i], params[i], flat[i] = b.qdq(y, p, f"l{i}", out_name), p, False
        return
    if isinstance(lay, L.Shortcut):
        y = b.node("Add", [spatial(ql.src[0]), spatial(ql.src[1])], f"{base}_add", f"{base}_out")
        names[i], params[i] = finish(y, ql.pre, ql.act)
        flat[i] = False
        return
    if isinstance(lay, L.Softmax):
        v = flatten(ql.src[0], "flatten")
        if ql.out is None:
            names[i] = b.node("Softmax", [v], base, out_name, axis=-1)
            params[i] = params[ql.src[0]]
        else:
            y = b.node("Softmax", [v], base, f"{base}_out", axis=-1)
            p = own()
            names[i], params[i] = b.qdq(y, p, f"l{i}", out_name), p
        flat[i] = True
        return
    raise ExportError(f"{qg.graph.path}: {lay.describe()} has no QDQ export")
