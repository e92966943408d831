"""The int8 engine: a ``QGraph`` -> an execution plan (kernels bound, buffers preallocated); ``plan.run(x)``.

Every tensor is int8 (C, H, W) (or flat), exactly the values onnxruntime holds for the QDQ export of the
same graph (in its uint8 form, minus 128). Each darknet layer maps to the onnxruntime operator the QDQ
pattern becomes, with the same arithmetic (``kernels/int8.py``):

==============  =====================================================================================
convolutional   QLinearConv (+ QLinearLeakyRelu): u8 x s8 pairs, float32 requantisation; groups=1 with an
                even channel count runs the vpmaddubsw GEMM on an interleaved input, an odd count (the
                RGB input) an im2col GEMM, grouped convs a direct kernel, depthwise an exact one
connected       QGemm (+ QLinearLeakyRelu)
maxpool         MaxPool on int8 (same parameters as its input)
avgpool         QLinearGlobalAveragePool
route           QLinearConcat: each input copied, or re-expressed in the route's scale/zero point
shortcut        QLinearAdd (+ QLinearLeakyRelu); relu is the saturation at zero point -128
softmax         QLinearSoftmax (int8 output, ST's recipe) or a float softmax of the dequantised input
upsample        Resize nearest: int8 values copied (same parameters)
reorg           SpaceToDepth / DepthToSpace: darknet's index map on the int8 values (same parameters)
dropout, cost   nothing (the output is the input)
region, yolo,   nothing: the graph ends at the head's input (an int8 tensor), which the host dequantises and
detection       decodes (boxes.decode), as ST's application does after the NPU
==============  =====================================================================================

Which method binds a layer is the table ``INT8_PLAN`` (layer class -> bind method; ``layers.Refuse`` for the
kinds the int8 graph never contains); which int8 kernel runs a convolution is ``kernels/config.int8_conv_path``.
The network input is QuantizeLinear(1/255, -128) of the float image. ``DARKNETPY_DEBUG=1`` prints each
layer's time and int8 range on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numba
import numpy as np

from .. import layers as L
from ..errors import UnsupportedError
from ..kernels import config as kcfg
from ..kernels import int8 as k8
from .qgraph import LEAKY_ALPHA, QGraph, QLayer, QParams, not_in_int8_graph
from .weights import saturation_free

# The integer domain onnxruntime evaluates QLinearAdd in (the only kernel whose float32 rounding depends on
# it): "uint8" on x86 by default (onnxruntime rewrites int8 activations to uint8), "int8" with the session
# option session.qdqisint8allowed=1 or on ARM. Every other kernel gives the same int8 values in both.
DOMAINS = ("uint8", "int8")


class Int8Plan:
    """A compiled int8 forward pass.

    >>> plan = Int8Plan(qgraph)          # doctest: +SKIP
    >>> plan.run(x)                      # x: float32 (C, H, W) in [0, 1]   # doctest: +SKIP
    >>> plan.outputs[-1]                 # int8 (or float32 for a float softmax)   # doctest: +SKIP
    """

    def __init__(self, qgraph: QGraph, *, domain: str = "uint8", pairs: str | None = None):
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
        # how u8 x s8 products are summed: as onnxruntime's MLAS does on this CPU (saturating int16 pairs on
        # x86 without VNNI, exact with VNNI), unless a test asks for the other
        self.pairs = kcfg.codegen_target().int8_pairs if pairs is None else pairs
        if self.pairs not in ("saturating", "exact"):
            raise ValueError(f"unknown pair arithmetic {pairs!r}; choose from saturating, exact")
        self.qgraph = qgraph
        self.domain = domain
        self._offset = 128 if domain == "uint8" else 0
        g = qgraph.graph
        self.input = np.zeros(g.net.in_shape, np.int8)
        self.outputs: list[np.ndarray] = [None] * len(g)  # type: ignore[list-item]
        for ql in qgraph:
            lay = ql.layer
            if ql.alias:
                src = self.input if ql.src[0] < 0 else self.outputs[ql.src[0]]
                self.outputs[ql.index] = src.reshape(lay.out_shape)
            else:
                dtype = np.float32 if ql.out is None else np.int8
                self.outputs[ql.index] = np.zeros(lay.out_shape, dtype)
        need = max((self._scratch_bytes(ql) for ql in qgraph), default=0)
        self._scratch = np.zeros(max(need, 1), np.uint8)
        last = qgraph.output_index
        self.steps: list[Callable[[int], None]] = []
        self.bound: list[int] = []
        for ql in qgraph:
            if ql.alias or ql.index > last:
                continue
            self.steps.append(self._bind(ql))
            self.bound.append(ql.index)
        self.debug = os.environ.get("DARKNETPY_DEBUG", "") not in ("", "0")

    # -- helpers ---------------------------------------------------------------------------------------

    def _src(self, j: int) -> np.ndarray:
        return self.input if j < 0 else self.outputs[j]

    def _qp(self, j: int) -> QParams:
        return self.qgraph.tensor_qparams(j)

    def _conv_path(self, ql: QLayer) -> str:
        """The int8 kernel of a [convolutional] layer (kernels/config.int8_conv_path)."""
        lay = ql.layer
        return kcfg.int8_conv_path(lay.c, lay.groups, ql.depthwise,
                                   lambda: saturation_free(ql.weight, "flat") and saturation_free(ql.weight, "quads"),
                                   self.pairs)

    def _scratch_bytes(self, ql: QLayer) -> int:
        lay = ql.layer
        if not isinstance(lay, L.Convolutional):
            return 0
        path = self._conv_path(ql)
        if path == "quads":
            return int(np.prod(k8.quads_shape(lay.c, lay.h, lay.w, lay.padding, lay.stride)))
        return int(np.prod(k8.planes_shape(lay.c, lay.h, lay.w, lay.padding, lay.stride))) + k8.PLANE_SLACK

    def _scratch_view(self, shape) -> np.ndarray:
        return self._scratch[: int(np.prod(shape))].reshape(shape)

    # -- binding ---------------------------------------------------------------------------------------

    def _bind(self, ql: QLayer) -> Callable[[int], None]:
        """The layer's step: run(nthreads), every argument converted here, once (``INT8_PLAN``)."""
        lay = ql.layer
        entry = L.dispatch(INT8_PLAN, lay)
        if isinstance(entry, L.Refuse):
            where = os.path.basename(self.qgraph.graph.path)
            at = f"{where}:{lay.line} " if lay.line else f"{where}: "
            raise UnsupportedError(f"{at}{lay.describe()}: {entry.why}")
        return entry(self, ql, self.outputs[ql.index])

    def _bind_nothing(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        """[dropout] and [cost] compute nothing: their output is their input's tensor (``QLayer.alias``, so
        __init__ makes it a view and binds no step for them)."""
        return lambda nt: None

    def _bind_maxpool(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        lay = ql.layer
        pool = k8.bind_maxpool(self._src(ql.src[0]).reshape(lay.c, lay.h, lay.w), lay.size, lay.stride,
                               lay.padding, out)
        return lambda nt: pool()

    def _bind_upsample(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        lay = ql.layer
        x = self._src(ql.src[0]).reshape(lay.c, lay.h, lay.w)
        return lambda nt: k8.upsample(x, lay.stride, out)

    def _bind_reorg(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        lay = ql.layer
        x = self._src(ql.src[0])
        return lambda nt: k8.reorg(x, lay.c, lay.h, lay.w, lay.stride, lay.reverse, out)

    def _bind_avgpool(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        x = self._src(ql.src[0])
        qi = self._qp(ql.src[0])
        qo = ql.out
        return lambda nt: k8.global_avgpool(x, qi.zero_point, qi.scale, qo.zero_point, qo.scale, out)

    def _bind_route(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        flat = out.reshape(-1)
        parts = []
        pos = 0
        qo = ql.out
        for j in ql.layer.layers:
            src = self._src(j).reshape(-1)
            qi = self._qp(j)
            table = k8.requant_table(qi.zero_point, qi.scale, qo.zero_point, qo.scale)
            parts.append((src, table, flat[pos:pos + src.size]))
            pos += src.size

        def run_route(nt):
            for src, table, dst in parts:
                k8.requant_copy(src, table, dst)
        return run_route

    def _bind_shortcut(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        a = self._src(ql.src[0])
        b = self._src(ql.src[1])
        qa, qb = self._qp(ql.src[0]), self._qp(ql.src[1])
        qc = ql.pre if ql.act == "leaky" else ql.out
        leaky = (ql.out.zero_point, ql.out.scale, LEAKY_ALPHA) if ql.act == "leaky" else None
        off = self._offset
        return lambda nt: k8.add(a, qa.zero_point, qa.scale, b, qb.zero_point, qb.scale, qc.zero_point,
                                 qc.scale, out, leaky, off)

    def _bind_softmax(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        x = self._src(ql.src[0])
        qi = self._qp(ql.src[0])
        if ql.out is None:
            return lambda nt: k8.softmax_float(x, qi.zero_point, qi.scale, out)
        table = k8.softmax_table(qi.scale, x.size)
        qo = ql.out
        return lambda nt: k8.softmax_int8(x, table, qo.scale, qo.zero_point, out)

    def _requant_params(self, ql: QLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bias, scale, fp, ip) of a conv/connected layer: int32 bias with the input zero point folded in,
        float32 requantisation scale per channel (both padded to a multiple of MR rows), epilogue_params."""
        qi = self._qp(ql.src[0])
        target = ql.pre if ql.act == "leaky" else ql.out          # what the accumulator is requantised to
        f32 = np.float32
        # QLinearConv's float32(float32(s_x * s_w[c]) / s_y), evaluated in that order
        scale = ((f32(qi.scale) * ql.weight_scale.astype(np.float32)).astype(np.float32) / f32(target.scale)) \
            .astype(np.float32)
        # u = q + 128 multiplies the weights: the input zero point comes off through the weight sums
        wsum = ql.weight.reshape(ql.weight.shape[0], -1).astype(np.int64).sum(axis=1)
        bias = (ql.bias.astype(np.int64) - (qi.zero_point + 128) * wsum).astype(np.int32)
        leaky = (ql.out.zero_point, ql.out.scale, LEAKY_ALPHA, target.scale) if ql.act == "leaky" else None
        fp, ip = k8.epilogue_params(target.zero_point, leaky)
        # the GEMM epilogue reads MR rows at a time: pad the per-channel arrays
        mpad = -(-len(bias) // k8.MR) * k8.MR
        bias = np.concatenate([bias, np.zeros(mpad - len(bias), np.int32)])
        scale = np.concatenate([scale, np.ones(mpad - len(scale), np.float32)])
        return bias, scale, fp, ip

    def _bind_connected(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        bias, scale, fp, ip = self._requant_params(ql)
        w0, w1 = k8.split_pairs(ql.weight)
        x1, o1 = self._src(ql.src[0]).reshape(-1), out.reshape(-1)
        pairs = self.pairs
        return lambda nt: k8.connected(x1, w0, w1, bias, scale, fp, ip, o1, pairs)

    def _bind_conv(self, ql: QLayer, out: np.ndarray) -> Callable[[int], None]:
        lay = ql.layer
        qi = self._qp(ql.src[0])
        bias, scale, fp, ip = self._requant_params(ql)
        path = self._conv_path(ql)
        x3 = self._src(ql.src[0]).reshape(lay.c, lay.h, lay.w)
        pad, size, stride = lay.padding, lay.size, lay.stride
        if path == "quads":
            shape = k8.quads_shape(lay.c, lay.h, lay.w, pad, stride)
            xs = self._scratch_view(shape)
            prep = k8.bind_prepare_quads(x3, pad, qi.zero_point, xs)
            koff = k8.conv_koff(lay.c, shape[1], stride, shape[3], size)
            conv = k8.bind_conv_quads(xs, k8.pack_quads(ql.weight), koff, bias, scale, fp, ip, out, self.pairs)
        else:
            shape = k8.planes_shape(lay.c, lay.h, lay.w, pad, stride)
            xs = self._scratch_view(shape)
            xflat = self._scratch[: xs.size + k8.PLANE_SLACK]     # the kernels read a little past the planes
            hq, wq = shape[3], shape[4]
            prep = k8.bind_prepare_planes(x3, pad, qi.zero_point, xs)
            if path == "im2col":
                conv = k8.bind_conv_im2col(xflat, wq, k8.pack_flat(k8.flat_kernel(ql.weight)),
                                           k8.im2col_index(lay.c, size, stride, hq, wq), bias, scale, fp, ip, out,
                                           self.pairs)
            elif path == "depthwise":
                w, toff = k8.depthwise_taps(ql.weight, stride, hq, wq)
                conv = k8.bind_conv_depthwise(xflat, wq, w, toff, bias, scale, fp, ip, out)
            else:
                pw, poff = k8.grouped_pairs(ql.weight, lay.groups, stride, hq, wq)
                conv = k8.bind_conv_grouped(xflat, wq, pw, poff, bias, scale, fp, ip, out, self.pairs)

        def run_conv(nt):
            prep()
            conv(nt)
        return run_conv

    # -- running ---------------------------------------------------------------------------------------

    def run(self, x: np.ndarray) -> None:
        """Forward pass on float32 ``x`` (the network input shape, values in [0, 1])."""
        qin = self.qgraph.input
        k8.quantize(np.ascontiguousarray(x, np.float32).reshape(self.input.shape), qin.scale, qin.zero_point,
                    self.input)
        nt = numba.get_num_threads()          # read once per run (it costs microseconds), passed to the kernels
        if not self.debug:
            for step in self.steps:
                step(nt)
            return
        for i, step in zip(self.bound, self.steps):
            t = time.perf_counter()
            step(nt)
            dt = (time.perf_counter() - t) * 1e3
            lay = self.qgraph.graph[i]
            o = self.outputs[i]
            print(f"darknetpy: int8 {lay.describe():28s} {str(lay.out_shape):18s} {dt:8.3f} ms  "
                  f"range [{o.min()}, {o.max()}]", file=sys.stderr)



# One entry per layer kind (tests/core/test_layout.py checks that none is missing): layer class -> the Int8Plan
# method that binds its step.
INT8_PLAN: dict = {
    L.Convolutional: Int8Plan._bind_conv,
    L.Connected: Int8Plan._bind_connected,
    L.MaxPool: Int8Plan._bind_maxpool,
    L.AvgPool: Int8Plan._bind_avgpool,
    L.Route: Int8Plan._bind_route,
    L.Shortcut: Int8Plan._bind_shortcut,
    L.Softmax: Int8Plan._bind_softmax,
    L.Dropout: Int8Plan._bind_nothing,
    L.Cost: Int8Plan._bind_nothing,
    L.Upsample: Int8Plan._bind_upsample,
    L.Reorg: Int8Plan._bind_reorg,
    L.Local: not_in_int8_graph("[local]"),
    L.Crop: not_in_int8_graph("[crop]"),
    L.BatchNorm: not_in_int8_graph("[batchnorm]"),
    L.Activation: not_in_int8_graph("[activation]"),
    # the heads compute nothing in int8 (QLayer.alias): their "output" is their int8 input, decoded on the host
    L.Region: Int8Plan._bind_nothing,
    L.Yolo: Int8Plan._bind_nothing,
    L.DetectionLayer: Int8Plan._bind_nothing,
}
