"""The detection heads' forward passes: [region], [yolo], [reorg], [detection] (``../shared/specs/detection.md`` §4).

All are darknet-exact, and the fast and the exact plans share them, except [yolo]'s logistic and
[region]'s logistic and softmax, which the fast plan computes with float32 exponentials (``fast=True``;
the boxes are always decoded with darknet's arithmetic from the heads' inputs):

* logistic is darknet's ``1/(1+exp(-x))`` in double (``activation.activate_scalar``);
* the softmax of [region] and [detection] is darknet's ``softmax()`` as gcc ``-Ofast`` compiled it: the
  arguments ``x - max`` in float; with 11 values or more the exponentials of the first ``4*floor(n/4)`` come
  from glibc's SSE4 vector ``expf`` (libmvec ``_ZGVbN4v_expf``, reproduced bit for bit by ``_expf_vec``) summed
  in four float lanes combined as ``(l0+l2)+(l1+l3)``, the rest from scalar ``expf`` added one by one; with
  fewer values scalar ``expf`` and a sequential sum; then every value times ``1/sum``. Scalar ``expf`` is
  ``math.exp`` of a float32, which numba compiles to a call of the C library's ``expf`` (glibc's, as darknet
  calls it);
* [reorg] is darknet's ``reorg_cpu`` index map (its ``reverse=0`` direction is not the textbook
  space-to-depth), ``flatten`` its channel/space transpose, ``extra`` a copy followed by zeros.

Shapes: every tensor is passed flat (float32, C-contiguous), with the layer's geometry as arguments; a plane
is ``h*w`` consecutive values.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .activation import LOGISTIC, activate_scalar
from .vecir import FLT_MAX

# glibc 2.36 libmvec, sysdeps/x86_64/fpu/multiarch/svml_s_expf4_core_sse4.S (detection.md §4.1).
_LOG2E = np.float32(1.4426950408889634)
_SHIFT = np.float32(12582912.0)                      # 1.5 * 2^23: rounds to an integer
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.4286068e-06)
_C1, _C2, _C3, _C4, _C5 = np.array([0x3F7FFFFE, 0x3EFFFF34, 0x3E2AACAC, 0x3D2B8392, 0x3C07D9FE],
                                   np.uint32).view(np.float32)
_VEC_LIMIT = np.float32(87.336548)                   # beyond: libmvec falls back to scalar expf


@njit(cache=True, fastmath=False)
def _expf_vec(x):
    """One lane of libmvec's SSE4 expf, every operation rounded to float32 and no FMA. float32 -> float32."""
    if abs(x) > _VEC_LIMIT:
        return math.exp(x)
    t = x * _LOG2E + _SHIFT
    n = t - _SHIFT
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = (((_C5 * r + _C4) * r + _C3) * r + _C2) * r + _C1
    y = r * p + np.float32(1.0)
    return np.float32(math.ldexp(np.float64(y), int(n)))


@njit(cache=True, fastmath=False)
def _softmax(v, base, n, stride):
    """darknet's softmax (temperature 1) in place over v[base + i*stride], i < n (see the module docstring)."""
    largest = -FLT_MAX
    for i in range(n):
        if v[base + i * stride] > largest:
            largest = v[base + i * stride]
    total = np.float32(0.0)
    start = 0
    if n >= 11:
        l0 = np.float32(0.0)
        l1 = np.float32(0.0)
        l2 = np.float32(0.0)
        l3 = np.float32(0.0)
        start = (n // 4) * 4
        for i in range(0, start, 4):
            j = base + i * stride
            e0 = _expf_vec(v[j] - largest)
            e1 = _expf_vec(v[j + stride] - largest)
            e2 = _expf_vec(v[j + 2 * stride] - largest)
            e3 = _expf_vec(v[j + 3 * stride] - largest)
            l0 += e0
            l1 += e1
            l2 += e2
            l3 += e3
            v[j] = e0
            v[j + stride] = e1
            v[j + 2 * stride] = e2
            v[j + 3 * stride] = e3
        total = (l0 + l2) + (l1 + l3)
    for i in range(start, n):
        j = base + i * stride
        e = math.exp(v[j] - largest)                 # float32 argument: the C library's expf
        total += e
        v[j] = e
    inv = np.float32(1.0) / total
    for i in range(n):
        v[base + i * stride] *= inv


def softmax_strided(v: np.ndarray, base: int, n: int, stride: int) -> None:
    """darknet's compiled softmax over ``v[base + i*stride]``, ``i < n``, in place (``v`` flat float32)."""
    _check(v)
    _softmax(v, base, n, stride)


@njit(cache=True, fastmath=False)
def _logistic(v, start, count):
    for i in range(start, start + count):
        v[i] = activate_scalar(v[i], LOGISTIC)


@njit(cache=True, fastmath=False)
def _region(x, num, coords, classes, softmax, background, hw, out):
    # x, out: (num * (classes+coords+1) * hw,). region_layer.c forward_region_layer (CPU).
    for i in range(x.size):
        out[i] = x[i]
    planes = classes + coords + 1
    for a in range(num):
        base = a * planes * hw
        _logistic(out, base, 2 * hw)                                     # x, y
        if not background:
            _logistic(out, base + coords * hw, hw)                       # objectness
        if not softmax:
            _logistic(out, base + (coords + 1) * hw, classes * hw)       # classes
    if softmax:
        # from the raw values (those planes were not touched above): classes (+ objectness with background)
        first = coords + (0 if background else 1)
        for a in range(num):
            base = (a * planes + first) * hw
            for cell in range(hw):
                _softmax(out, base + cell, classes + (1 if background else 0), hw)


def region(x: np.ndarray, num: int, coords: int, classes: int, softmax: bool, background: bool, hw: int,
           out: np.ndarray, fast: bool = False) -> None:
    """[region] forward: ``x`` and ``out`` flat, ``num*(classes+coords+1)`` planes of ``hw`` values.
    ``fast``: float32 exponentials (``_region_fast``: the fast plan's ``predict``; logistic within 1.2e-7 and
    softmax within 4e-7 of darknet's) instead of darknet's own arithmetic (the exact plan; box decoding
    always uses darknet's, ``boxes.decode``)."""
    _check(x, out)
    if fast:
        # the thread count is passed in: numba.get_num_threads() inside a kernel makes it uncacheable
        _region_fast(x, num, coords, classes, softmax, background, hw, numba.get_num_threads(), out)
    else:
        _region(x, num, coords, classes, softmax, background, hw, out)


@njit(cache=True, inline="always")
def _exp_fast(v):
    # exp(v) in float32, vectorisable: exp(v) = 2^t, t = v*log2(e) clamped to [-126, 126], split as 2^k (a
    # float built from its exponent bits by a scalar bit view) * 2^f, |f| <= 1/2, 2^f by a degree-6
    # polynomial (relative error ~1e-7). Inlined into the loops below, which LLVM vectorises whole.
    t = v * np.float32(1.4426950408889634)
    t = min(max(t, np.float32(-126.0)), np.float32(126.0))
    k = np.float32(math.floor(t + np.float32(0.5)))
    f = t - k
    p = np.float32(1.535336188319500e-4)
    p = p * f + np.float32(1.339887440266574e-3)
    p = p * f + np.float32(9.618437357674640e-3)
    p = p * f + np.float32(5.550332471162809e-2)
    p = p * f + np.float32(2.402264791363012e-1)
    p = p * f + np.float32(6.931472028550421e-1)
    p = p * f + np.float32(1.0)
    return p * np.int32((np.int32(k) + np.int32(127)) << 23).view(np.float32)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _logistic_fast(x, out):
    # out[i] = 1 / (1 + exp(-x[i])) in float32 (_exp_fast). At most 1.2e-7 from darknet's double-precision
    # logistic (measured over N(0, 36) inputs); below exp's float range (x > 87) it gives 1.2e-38 instead of
    # ~0. Why these compile flags: error_model="numpy" drops the zero-division check that kept the
    # division scalar (1.6 -> 0.7 ns per value); only "contract" (fused multiply-adds) of the fast-math
    # flags, since "arcp" (division as a reciprocal) measured 1.5e-7 from darknet's, beyond the 1.2e-7.
    for i in range(x.shape[0]):
        out[i] = np.float32(1.0) / (np.float32(1.0) + _exp_fast(-x[i]))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _softmax_planes_fast(v, base, n, hw, mx, total):
    # softmax over n planes of hw values in place, cell by cell (v[base + i*hw + cell], i < n), vectorised
    # across the cells: the maximum, then exp(x - max) (_exp_fast) and their sum, then x / sum.
    # mx, total: float32 scratch of hw values. Rows as slices: an index like v[row + cell] may be negative
    # for all numba knows, and its wraparound check turned the loops into gathers (20 us per anchor).
    first = v[base:base + hw]
    for cell in range(hw):
        mx[cell] = first[cell]
        total[cell] = np.float32(0.0)
    for i in range(1, n):
        r = v[base + i * hw:base + (i + 1) * hw]
        for cell in range(hw):
            mx[cell] = max(mx[cell], r[cell])
    for i in range(n):
        r = v[base + i * hw:base + (i + 1) * hw]
        for cell in range(hw):
            e = _exp_fast(r[cell] - mx[cell])
            r[cell] = e
            total[cell] += e
    for cell in range(hw):
        total[cell] = np.float32(1.0) / total[cell]
    for i in range(n):
        r = v[base + i * hw:base + (i + 1) * hw]
        for cell in range(hw):
            r[cell] *= total[cell]


@njit(cache=True)
def _copy(src, dst):
    for i in range(src.shape[0]):
        dst[i] = src[i]


@njit(cache=True, parallel=True, fastmath=False)
def _region_fast(x, num, coords, classes, softmax, background, hw, nthreads, out):
    # region_layer.c forward_region_layer with float32 exponentials (_exp_fast): per anchor, the planes
    # copied, x and y (and objectness, and without softmax the classes) through the logistic, the softmax
    # across the class planes (+ objectness with background) cell by cell. Anchors shared out among the
    # threads. yolov2-tiny-voc's 13x13 head: darknet's arithmetic 0.20 ms -> 0.02 (1 thread).
    planes = classes + coords + 1
    for th in prange(nthreads):
        mx = np.empty(hw, dtype=np.float32)
        total = np.empty(hw, dtype=np.float32)
        for a in range(th * num // nthreads, (th + 1) * num // nthreads):
            base = a * planes * hw
            # copied: the planes no logistic writes (w, h, extra coords; objectness with background;
            # the classes, which the softmax then transforms in place)
            raw_hi = coords + (1 if background else 0)
            _copy(x[base + 2 * hw:base + raw_hi * hw], out[base + 2 * hw:base + raw_hi * hw])
            if softmax:
                _copy(x[base + (coords + 1) * hw:base + planes * hw], out[base + (coords + 1) * hw:base + planes * hw])
            _logistic_fast(x[base:base + 2 * hw], out[base:base + 2 * hw])                       # x, y
            if not background:
                o = base + coords * hw
                _logistic_fast(x[o:o + hw], out[o:o + hw])                                       # objectness
            if softmax:
                first = coords + (0 if background else 1)
                _softmax_planes_fast(out, base + first * hw, classes + (1 if background else 0), hw, mx, total)
            else:
                o = base + (coords + 1) * hw
                _logistic_fast(x[o:o + classes * hw], out[o:o + classes * hw])                   # classes


@njit(cache=True, parallel=True, fastmath=False)
def _yolo(x, n, classes, hw, fast, nthreads, out):
    # x, out: (n * (classes+5) * hw,). yolo_layer.c forward_yolo_layer (CPU): per anchor, the x, y,
    # objectness and class planes through the logistic, w and h copied. The planes are shared out among
    # the threads (darknet's logistic is a call of exp per value: yolov3-tiny's 26x26 head, 1 thread,
    # ~0.9 ms; fast: ~0.3 ms).
    planes = n * (classes + 5)
    for th in prange(nthreads):
        for q in range(th * planes // nthreads, (th + 1) * planes // nthreads):
            p = q % (classes + 5)
            base = q * hw
            if p == 2 or p == 3:
                _copy(x[base:base + hw], out[base:base + hw])
            elif fast:
                _logistic_fast(x[base:base + hw], out[base:base + hw])
            else:
                for i in range(hw):
                    out[base + i] = activate_scalar(x[base + i], LOGISTIC)


def yolo(x: np.ndarray, n: int, classes: int, hw: int, out: np.ndarray, fast: bool = False) -> None:
    """[yolo] forward: ``x`` and ``out`` flat, ``n*(classes+5)`` planes of ``hw`` values. ``fast``: the
    float32 logistic of ``_logistic_fast`` (the fast plan's ``predict``; within 1.2e-7 of darknet's) instead
    of darknet's double-precision one (the exact plan, and every box decoding: ``boxes.decode``)."""
    _check(x, out)
    # the thread count is passed in: numba.get_num_threads() inside a kernel makes it uncacheable
    _yolo(x, n, classes, hw, fast, numba.get_num_threads(), out)


@njit(cache=True, fastmath=False)
def _reorg(x, c, h, w, s, forward, out):
    # blas.c reorg_cpu over the layer INPUT's (c, h, w): forward=1 scatters x into out, forward=0 gathers.
    cp = c // (s * s)
    for k in range(c):
        c2 = k % cp
        off = k // cp
        for j in range(h):
            h2 = j * s + off // s
            for i in range(w):
                w2 = i * s + off % s
                src = (k * h + j) * w + i
                dst = (c2 * h * s + h2) * w * s + w2
                if forward:
                    out[dst] = x[src]
                else:
                    out[src] = x[dst]


@njit(cache=True, fastmath=False)
def _flatten(x, size, layers, forward, out):
    # blas.c flatten: forward = (layers, size) -> (size, layers), i.e. CHW -> HWC; else the inverse.
    for ch in range(layers):
        for i in range(size):
            if forward:
                out[i * layers + ch] = x[ch * size + i]
            else:
                out[ch * size + i] = x[i * layers + ch]


@njit(cache=True, fastmath=False)
def _copy_extra(x, out):
    for i in range(x.size):
        out[i] = x[i]
    for i in range(x.size, out.size):
        out[i] = np.float32(0.0)


def reorg(x: np.ndarray, c: int, h: int, w: int, stride: int, reverse: bool, flatten: bool, extra: int,
          out: np.ndarray) -> None:
    """[reorg] forward (reorg_layer.c): ``x`` flat ``c*h*w`` (the layer input), ``out`` flat ``outputs``."""
    _check(x, out)
    if flatten:
        _flatten(x, h * w, c, not reverse, out)
    elif extra:
        _copy_extra(x, out)
    else:
        _reorg(x, c, h, w, stride, reverse, out)      # reverse=1 runs reorg_cpu's forward=1


@njit(cache=True, fastmath=False)
def _detection(x, cells, classes, softmax, out):
    # detection_layer.c forward_detection_layer (CPU): a copy, then a softmax over each cell's classes.
    for i in range(x.size):
        out[i] = x[i]
    if softmax:
        for cell in range(cells):
            _softmax(out, cell * classes, classes, 1)


def detection(x: np.ndarray, cells: int, classes: int, softmax: bool, out: np.ndarray) -> None:
    """[detection] forward: ``x`` and ``out`` flat; the first ``cells*classes`` values are class scores."""
    _check(x, out)
    _detection(x, cells, classes, softmax, out)


def _check(*arrays):
    for a in arrays:
        if a.dtype != np.float32 or a.ndim != 1 or not a.flags.c_contiguous:
            raise TypeError(f"kernel needs flat C-contiguous float32 arrays, got {a.dtype} {a.shape}")
