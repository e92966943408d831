"""darknet-exact float kernels: the same float32 operations in the same order as pjreddie's C code.

These reproduce darknet bit for bit (``../shared/specs/darknet.md`` §9): convolution as im2col then
``gemm_nn`` (for each output row, sequential accumulation over k = (c, ky, kx) onto 0, no FMA: numba
without fastmath never contracts), batch norm with ``sqrt(var) + 1e-6f`` in double, avgpool as a
sequential sum times ``1.0f/(h*w)``, connected as gcc's 4-lane SSE dot product. They are slow (like
darknet) and are used by ``exact=True`` / ``DARKNETPY_EXACT=1`` and by the conformance tests.

Shapes: tensors are CHW float32 with batch 1; ``x2d`` means a (C, H*W) view.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .activation import activate_scalar
from .parallel import Call, addr, f32, thread_body


@njit(cache=True)
def _im2col(x, c0, cg, h, w, size, stride, pad, out_h, out_w, col):
    # x: (C, H, W); col: (cg*size*size, out_h*out_w) -- darknet's im2col_cpu for channels c0..c0+cg
    for cc in range(cg):
        for ky in range(size):
            for kx in range(size):
                row = (cc * size + ky) * size + kx
                for oy in range(out_h):
                    iy = oy * stride - pad + ky
                    for ox in range(out_w):
                        ix = ox * stride - pad + kx
                        v = np.float32(0.0)
                        if 0 <= iy < h and 0 <= ix < w:
                            v = x[c0 + cc, iy, ix]
                        col[row, oy * out_w + ox] = v


@njit(cache=True, parallel=True)
def _conv_exact(x, weights, groups, size, stride, pad, out):
    # x: (C, H, W); weights: (M, C/g, size, size); out: (M, out_h, out_w), overwritten.
    c, h, w = x.shape
    m = weights.shape[0]
    out_h, out_w = out.shape[1], out.shape[2]
    n = out_h * out_w
    cg = c // groups
    mg = m // groups
    k = cg * size * size
    xflat = x.reshape(-1)
    wk = weights.reshape(m, k)
    outf = out.reshape(m, n)
    col = np.empty((k, n), dtype=np.float32)
    for g in range(groups):
        if size == 1:
            # darknet skips im2col for size 1 and reads the group's input as rows of length n
            # (out_h*out_w), whatever the stride: the 1x1 stride-2 quirk.
            base = g * cg * h * w
            for kk in range(k):
                for j in range(n):
                    col[kk, j] = xflat[base + kk * n + j]
        else:
            _im2col(x, g * cg, cg, h, w, size, stride, pad, out_h, out_w, col)
        for i in prange(mg):
            o = g * mg + i
            for j in range(n):
                outf[o, j] = np.float32(0.0)
            for kk in range(k):
                a = wk[o, kk]
                for j in range(n):
                    outf[o, j] += a * col[kk, j]


def conv_exact(x: np.ndarray, weights: np.ndarray, groups: int, size: int, stride: int, pad: int,
               out: np.ndarray) -> None:
    """darknet's convolution without bias/BN/activation: out (M, out_h, out_w) = W * x."""
    _check_f32(x, weights, out)
    _conv_exact(x, weights, groups, size, stride, pad, out)


@njit(cache=True, parallel=True)
def _batchnorm_exact(x2d, scales, mean, var):
    # darknet normalize_cpu + scale_bias: ((x - mean) / (sqrt(var) + .000001f)) * scale, in place.
    # x - mean is float32; sqrt and the division are double; then rounded; then * scale in float32.
    eps = np.float64(np.float32(1e-6))
    for ch in prange(x2d.shape[0]):
        den = math.sqrt(np.float64(var[ch])) + eps
        for j in range(x2d.shape[1]):
            v = np.float32(np.float64(x2d[ch, j] - mean[ch]) / den)
            x2d[ch, j] = v * scales[ch]


@njit(cache=True, parallel=True)
def _bias_act_exact(x2d, bias, act):
    # out += bias[ch] (float32), then the activation: darknet's add_bias + activate_array.
    for ch in prange(x2d.shape[0]):
        b = bias[ch]
        for j in range(x2d.shape[1]):
            x2d[ch, j] = activate_scalar(x2d[ch, j] + b, act)


def batchnorm_exact(x2d, scales, mean, var):
    _batchnorm_exact(x2d, scales, mean, var)


def bias_act_exact(x2d, bias, act: int):
    _bias_act_exact(x2d, bias, act)


@njit(cache=True)
def _dot4(a, b, n):
    # gcc -Ofast's vectorisation of darknet's gemm_nt inner loop: four float lanes, then a 2-lane
    # epilogue, then a scalar tail (../shared/specs/darknet.md §9).
    l0 = np.float32(0.0)
    l1 = np.float32(0.0)
    l2 = np.float32(0.0)
    l3 = np.float32(0.0)
    k4 = (n // 4) * 4
    for k in range(0, k4, 4):
        l0 += a[k] * b[k]
        l1 += a[k + 1] * b[k + 1]
        l2 += a[k + 2] * b[k + 2]
        l3 += a[k + 3] * b[k + 3]
    rem = n - k4
    if rem >= 2:
        s = ((l0 + l2) + a[k4] * b[k4]) + ((l1 + l3) + a[k4 + 1] * b[k4 + 1])
        if rem == 3:
            s += a[k4 + 2] * b[k4 + 2]
    else:
        s = (l0 + l2) + (l1 + l3)
        if rem == 1:
            s += a[k4] * b[k4]
    return s


@njit(cache=True, parallel=True)
def _connected_exact(x, weights, out):
    # x: (inputs,), weights: (outputs, inputs), out: (outputs,) = 0 + dot
    n = x.shape[0]
    for o in prange(weights.shape[0]):
        out[o] = np.float32(0.0) + _dot4(x, weights[o], n)


def connected_exact(x, weights, out):
    _check_f32(x, weights, out)
    _connected_exact(x, weights, out)


@njit(cache=True, parallel=True)
def _avgpool_exact(x2d, out):
    # x2d: (C, H*W); out: (C,). Sequential float32 sum, then * (1.0f/(h*w)) as gcc -Ofast emits.
    n = x2d.shape[1]
    inv = np.float32(1.0) / np.float32(n)
    for ch in prange(x2d.shape[0]):
        s = np.float32(0.0)
        for j in range(n):
            s += x2d[ch, j]
        out[ch] = s * inv


def avgpool_exact(x2d, out):
    _avgpool_exact(x2d, out)


@thread_body(fastmath=True)
def _avgpool_fast_body(th, nthreads, argv):
    # argv: x2d (C, n), C, n, out (C,). The fast path's global average pool: a vectorised (reassociated)
    # sum, then * 1/n; thread th does its share of the channels.
    c, n = argv[1], argv[2]
    x2d = f32(argv[0], (c, n))
    out = f32(argv[3], (c,))
    inv = np.float32(1.0) / np.float32(n)
    for ch in range(th * c // nthreads, (th + 1) * c // nthreads):
        s = np.float32(0.0)
        for j in range(n):
            s += x2d[ch, j]
        out[ch] = s * inv


def bind_avgpool_fast(x2d, out) -> Call:
    """The fast global average pool of x2d (C, n) into out (C,), bound to its arrays."""
    return Call(_avgpool_fast_body, [addr(x2d, np.float32), *x2d.shape, addr(out, np.float32)], (x2d, out))


def avgpool_fast(x2d, out):
    bind_avgpool_fast(x2d, out)()


@njit(cache=True, parallel=True)
def _local_exact(x, weights, biases, size, stride, pad, act, out):
    # x: (C, H, W); weights: (L, F, C*size*size) with L = out_h*out_w locations; biases: (F, out_h, out_w);
    # out: (F, out_h, out_w). darknet: out = bias, then for each location a gemm with beta=1 (sequential
    # accumulation over k onto the bias), then the activation.
    c, h, w = x.shape
    f, out_h, out_w = out.shape
    for oy in prange(out_h):
        for ox in range(out_w):
            loc = oy * out_w + ox
            for o in range(f):
                acc = biases[o, oy, ox]
                kk = 0
                for cc in range(c):
                    for ky in range(size):
                        iy = oy * stride - pad + ky
                        for kx in range(size):
                            ix = ox * stride - pad + kx
                            v = np.float32(0.0)
                            if 0 <= iy < h and 0 <= ix < w:
                                v = x[cc, iy, ix]
                            acc += weights[loc, o, kk] * v
                            kk += 1
                out[o, oy, ox] = activate_scalar(acc, act)


def local_exact(x, weights, biases, size, stride, pad, act, out):
    _check_f32(x, weights, biases, out)
    _local_exact(x, weights, biases, size, stride, pad, act, out)


def _check_f32(*arrays):
    for a in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise TypeError(f"kernel needs C-contiguous float32 arrays, got {a.dtype} "
                            f"{'C' if a.flags.c_contiguous else 'non-C'}-contiguous {a.shape}")
