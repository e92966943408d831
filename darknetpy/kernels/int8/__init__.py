"""int8 kernels: the arithmetic onnxruntime (MLAS, x86) performs on a QDQ model, reproduced bit for bit.

How onnxruntime 1.31 runs an int8 QDQ model on x86 (established by experiment,
``tests/int8/test_int8_kernels.py``): int8 activations are shifted to uint8 (``u = q + 128``, zero point
+ 128), convolutions and Gemm become QLinearConv / QGemm computing, per output value,

    acc = sum over pairs (k, k+1) of sat16(u[k] * w[k] + u[k+1] * w[k+1])  -  (zp + 128) * sum(w)  +  bias
    q   = saturate(round_half_even(float32(acc) * float32(float32(s_x * s_w[c]) / s_y)) + zp_y)

where the pairs run over the kernel flattened as (ky, kx, c) (per group) and ``sat16`` is the int16
saturation of AVX2's ``vpmaddubsw``; depthwise convolutions are exact (no pairs). These kernels multiply
the same pairs with the same instruction, so they compute the same values whatever the weights (and with
``pair_safe`` weights, see darknetpy/int8, no pair ever saturates and the result is the exact integer one).
Requantisation, leaky, add, concat, pooling and softmax follow MLAS's float32 formulas exactly.

microkernel.py  the u8 x s8 GEMM micro-kernel (LLVM vector IR) with its requantising epilogue
requant.py      MLAS's float32 requantisation formulas, shared by the other two
conv.py         input preparation, weight packing, the convolution and [connected] kernels
elementwise.py  QuantizeLinear, concat tables, QLinearAdd, pooling, softmax
layout.py       [upsample] and [reorg]: int8 values moved, parameters kept

This package exports the public names of all five (``from darknetpy.kernels import int8 as k8``).
"""

from .conv import (PLANE_SLACK, bind_conv_depthwise, bind_conv_grouped, bind_conv_im2col, bind_conv_quads,
                   bind_prepare_planes, bind_prepare_quads, connected, conv_depthwise, conv_grouped, conv_im2col,
                   conv_koff, conv_quads, depthwise_taps, flat_kernel, grouped_pairs, im2col_index, pack_flat,
                   pack_quads, planes_shape, prepare_planes, prepare_quads, quads_shape, split_pairs, tap_offset)
from .elementwise import (add, bind_maxpool, global_avgpool, maxpool, quantize, requant_copy, requant_table,
                          softmax_float, softmax_int8, softmax_table)
from .layout import reorg, upsample
from .microkernel import MR, NR, ONES16, microkernel_u8s8, microkernel_u8s8_fused
from .requant import epilogue_params, leaky_q, quantize_value, requant

__all__ = [
    "MR", "NR", "ONES16", "PLANE_SLACK", "add", "bind_conv_depthwise", "bind_conv_grouped", "bind_conv_im2col",
    "bind_conv_quads", "bind_maxpool", "bind_prepare_planes", "bind_prepare_quads", "connected", "conv_depthwise",
    "conv_grouped", "conv_im2col", "conv_koff", "conv_quads", "depthwise_taps", "epilogue_params", "flat_kernel",
    "global_avgpool", "grouped_pairs", "im2col_index", "leaky_q", "maxpool", "microkernel_u8s8",
    "microkernel_u8s8_fused", "pack_flat", "pack_quads", "planes_shape", "prepare_planes", "prepare_quads",
    "quads_shape", "quantize", "quantize_value", "reorg", "requant", "requant_copy", "requant_table",
    "softmax_float", "softmax_int8", "softmax_table", "split_pairs", "tap_offset", "upsample",
]
