"""int8 elementwise kernels: QuantizeLinear, QLinearConcat's tables, QLinearAdd, pooling and softmax.

Each follows onnxruntime's (MLAS's) float32 formula exactly, with the helpers of ``requant.py``. Long
passes run as ``config.ELEMENTWISE_CHUNKS`` chunks of plain 32-bit loops that LLVM vectorises; a small
2x2 maxpool on one thread (``config.INT8_SERIAL_BYTES``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .. import config
from .requant import MAGIC, fma32, quantize_value, requant


@njit(cache=True, parallel=True)
def _quantize(x, scale, zp, nchunk, out):
    # QuantizeLinear, vectorisable form of quantize_value (clamp, then magic-number rounding, see requant_row)
    n = x.size
    lo = np.float32(-128 - zp)
    hi = np.float32(127 - zp)
    z = np.int32(zp)
    m = MAGIC
    for c in prange(nchunk):
        for i in range(c * n // nchunk, (c + 1) * n // nchunk):
            iu = np.uint64(i)
            f = x[iu] / scale
            f = f if f > lo else lo
            f = f if f < hi else hi
            out[iu] = np.int32(np.int32((f + m) - m) + z)


def quantize(x: np.ndarray, scale: float, zero_point: int, out: np.ndarray) -> None:
    """QuantizeLinear of a float32 tensor into ``out`` (int8, same size)."""
    _quantize(x.reshape(-1), np.float32(scale), np.int64(zero_point), config.ELEMENTWISE_CHUNKS, out.reshape(-1))


@njit(cache=True)
def _requant_table(zx, sx, zy, sy, table):
    # QLinearConcat's table: entry u (= q + 128) holds quantize(sx * (q - zx)) in the output's parameters
    for u in range(256):
        table[u] = quantize_value(sx * np.float32(u - 128 - zx), sy, zy)


def requant_table(zx: int, sx: float, zy: int, sy: float) -> np.ndarray | None:
    """The int8 -> int8 table re-expressing a tensor in another scale/zero point (None: a plain copy)."""
    if zx == zy and np.float32(sx) == np.float32(sy):
        return None
    t = np.empty(256, np.int8)
    _requant_table(np.int64(zx), np.float32(sx), np.int64(zy), np.float32(sy), t)
    return t


@njit(cache=True, parallel=True)
def _lookup(x, table, nchunk, out):
    n = x.size
    for c in prange(nchunk):
        for i in range(c * n // nchunk, (c + 1) * n // nchunk):
            iu = np.uint64(i)
            out[iu] = table[np.uint64(np.int32(x[iu]) + 128)]


def requant_copy(x: np.ndarray, table: np.ndarray | None, out: np.ndarray) -> None:
    """Copy int8 ``x`` into ``out`` through ``requant_table``'s table (or as is)."""
    if table is None:
        out.reshape(-1)[...] = x.reshape(-1)
    else:
        _lookup(x.reshape(-1), table, config.ELEMENTWISE_CHUNKS, out.reshape(-1))


@njit(cache=True, parallel=True)
def _add(a, b, rac, rbc, fixed, offset, leaky, zx2, sx2, zy, sy, alpha, nchunk, out):
    # QLinearAdd (MLAS AVX2) with u = q + offset: c = fma(a_u, rac, fma(b_u, rbc, fixed)), rounded half to
    # even, saturated to the domain's [lo, hi]; then back to int8 (and through leaky if asked). Chunks of
    # plain 32-bit loops so that LLVM vectorises them (see requant.requant_row).
    lo = np.float32(-128 + offset)
    hi = np.float32(127 + offset)
    off = np.int32(offset)
    m = MAGIC
    n = a.size
    flo2 = np.float32(-128 - zy)
    fhi2 = np.float32(127 - zy)
    for c in prange(nchunk):
        i0 = c * n // nchunk
        i1 = (c + 1) * n // nchunk
        if not leaky:
            for i in range(i0, i1):
                iu = np.uint64(i)
                au = np.float32(np.int32(np.int32(a[iu]) + off))
                bu = np.float32(np.int32(np.int32(b[iu]) + off))
                v = fma32(au, rac, fma32(bu, rbc, fixed))
                # cvtps2dq then packs/packus: saturation after rounding, equal to clamping before it
                v = v if v > lo else lo
                v = v if v < hi else hi
                out[iu] = np.int32(np.int32((v + m) - m) - off)
        else:
            for i in range(i0, i1):
                iu = np.uint64(i)
                au = np.float32(np.int32(np.int32(a[iu]) + off))
                bu = np.float32(np.int32(np.int32(b[iu]) + off))
                v = fma32(au, rac, fma32(bu, rbc, fixed))
                v = v if v > lo else lo
                v = v if v < hi else hi
                q = np.int32(np.int32((v + m) - m) - off - zx2)
                d = sx2 * np.float32(q)
                d = d if d >= np.float32(0.0) else alpha * d
                f = d / sy
                f = f if f > flo2 else flo2
                f = f if f < fhi2 else fhi2
                out[iu] = np.int32(np.int32((f + m) - m) + zy)


def add(a, za: int, sa: float, b, zb: int, sb: float, zc: int, sc: float, out, leaky=None, offset: int = 128) -> None:
    """[shortcut] as onnxruntime's QLinearAdd (output parameters (sc, zc)); ``leaky`` = (zy, sy, alpha).

    ``offset`` is the integer domain onnxruntime evaluates the formula in: 128 for its uint8 rewrite of int8
    activations (x86 default), 0 for int8 (``session.qdqisint8allowed=1``, ARM). The float32 rounding of the
    formula depends on it."""
    f32 = np.float32
    rac, rbc = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    zau, zbu, zcu = f32(za + offset), f32(zb + offset), f32(zc + offset)
    # (float)ZeroPointC - (ScaleRatio_AC * ZeroPointA + ScaleRatio_BC * ZeroPointB), contracted to an FMA
    fixed = f32(zcu - _fma_np(rac, zau, f32(rbc * zbu)))
    if leaky is None:
        lk, zy, sy, alpha = False, 0, f32(1), f32(0)
    else:
        lk, (zy, sy, alpha) = True, leaky
    _add(a.reshape(-1), b.reshape(-1), rac, rbc, fixed, np.int32(offset), lk, np.int32(zc), f32(sc), np.int32(zy),
         f32(sy), f32(alpha), config.ELEMENTWISE_CHUNKS, out.reshape(-1))



def _fma_np(a, b, c) -> np.float32:
    """float32 fma evaluated in float64 (exact product; one rounding of the sum in all practical cases)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(cache=True, parallel=True)
def _maxpool(x, size, stride, pad, out):
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    off = -(pad // 2)
    for ch in prange(c):
        for i in range(out_h):
            for j in range(out_w):
                m = np.int8(-128)
                for n in range(size):
                    y = off + i * stride + n
                    if y < 0 or y >= h:
                        continue
                    for k in range(size):
                        xx = off + j * stride + k
                        if 0 <= xx < w and x[ch, y, xx] > m:
                            m = x[ch, y, xx]
                out[ch, i, j] = m


@njit(cache=True)
def _maxpool_2x2s2_channel(x, out, ch):
    # size 2, stride 2, window offset 0; an odd last row/column sees only the pixels that exist
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    fw = w // 2
    for i in range(out_h):
        r0 = x[ch, 2 * i]
        r1 = x[ch, min(2 * i + 1, h - 1)]
        dst = out[ch, i]
        for j in range(fw):
            ju = np.uint64(2 * j)
            dst[np.uint64(j)] = max(max(r0[ju], r0[ju + np.uint64(1)]), max(r1[ju], r1[ju + np.uint64(1)]))
        if out_w > fw:
            dst[fw] = max(r0[w - 1], r1[w - 1])


@njit(cache=True, parallel=True)
def _maxpool_2x2s2_par(x, out):
    for ch in prange(x.shape[0]):
        _maxpool_2x2s2_channel(x, out, ch)


@njit(cache=True)
def _maxpool_2x2s2_ser(x, out):
    for ch in range(x.shape[0]):
        _maxpool_2x2s2_channel(x, out, ch)


def maxpool(x: np.ndarray, size: int, stride: int, pad: int, out: np.ndarray) -> None:
    """darknet [maxpool] on int8 (a max is exact in any representation); ``pad`` is darknet's total."""
    if size == 2 and stride == 2 and pad // 2 == 0:
        (_maxpool_2x2s2_ser if x.size < config.INT8_SERIAL_BYTES else _maxpool_2x2s2_par)(x, out)
    else:
        _maxpool(x, size, stride, pad, out)


@njit(cache=True)
def _global_avgpool(x, zx, scale, zy, out):
    # a few hundred thousand bytes at most (the last feature map): one thread, no parallel region
    c, n = x.shape
    flo, fhi = np.float32(-128 - zy), np.float32(127 - zy)
    for ch in range(c):
        acc = np.int32(0)
        row = x[ch]
        for i in range(n):
            acc = np.int32(acc + np.int32(row[np.uint64(i)]))
        out[ch] = requant(acc - zx * n, scale, zy, flo, fhi)


def global_avgpool(x: np.ndarray, zx: int, sx: float, zy: int, sy: float, out: np.ndarray) -> None:
    """QLinearGlobalAveragePool: float32(sum - zx*N) * (sx / (sy * N)), rounded, + zy."""
    c = x.shape[0]
    n = x.size // c
    scale = np.float32(np.float32(sx) / (np.float32(sy) * np.float32(n)))
    _global_avgpool(x.reshape(c, n), np.int64(zx), scale, np.int64(zy), out.reshape(-1))


def softmax_table(sx: float, d: int) -> np.ndarray:
    """QLinearSoftmax's exp table (float32, 256 entries, index = uint8 value - max + 255)."""
    flt_max = float(np.finfo(np.float32).max)
    shift = max(0.0, math.log(flt_max / d) - 5.0) / float(np.float32(sx))
    s = float(np.float32(sx))
    return np.array([math.exp((i - 255 + shift) * s) for i in range(256)], np.float32)


@njit(cache=True)
def _softmax_q(x, table, yscale, yzpu, out):
    # onnxruntime's QlinearSoftmaxCPU<uint8_t> on u = x + 128: sum in order, then round(t * yscale / sum)
    n = x.size
    xmax = 0
    for i in range(n):
        if x[i] + 128 > xmax:
            xmax = x[i] + 128
    sh = 255 - xmax
    vsum = np.float32(0.0)
    for i in range(n):
        vsum += table[x[i] + 128 + sh]
    for i in range(n):
        v = np.int64(np.rint((table[x[i] + 128 + sh] * yscale) / vsum)) + yzpu
        out[i] = min(v, 255) - 128


def softmax_int8(x: np.ndarray, table: np.ndarray, sy: float, zy: int, out: np.ndarray) -> None:
    """QLinearSoftmax (axis -1 over the flat vector) into int8 ``out``."""
    yscale = np.float32(math.floor(np.float32(1.0) / np.float32(sy)))
    _softmax_q(x.reshape(-1), table, yscale, np.int64(zy + 128), out.reshape(-1))


@njit(cache=True)
def _softmax_f(x, zx, sx, out):
    n = x.size
    m = np.float32(-np.inf)
    for i in range(n):
        v = sx * np.float32(x[i] - zx)
        out[i] = v
        m = max(m, v)
    s = 0.0
    for i in range(n):
        e = math.exp(np.float64(out[i] - m))
        out[i] = e
        s += e
    for i in range(n):
        out[i] = np.float32(out[i] / s)


def softmax_float(x: np.ndarray, zx: int, sx: float, out: np.ndarray) -> None:
    """Float softmax of the dequantised int8 vector (the QDQ model's DequantizeLinear -> Softmax)."""
    _softmax_f(x.reshape(-1), np.int64(zx), np.float32(sx), out.reshape(-1))


# -- bound calls: argument conversions done once, at plan time -------------------------------------------

def bind_maxpool(x, size: int, stride: int, pad: int, out):
    """``maxpool`` with its arguments fixed: returns run()."""
    if size == 2 and stride == 2 and pad // 2 == 0:
        f = _maxpool_2x2s2_ser if x.size < config.INT8_SERIAL_BYTES else _maxpool_2x2s2_par
        return lambda: f(x, out)
    return lambda: _maxpool(x, size, stride, pad, out)
