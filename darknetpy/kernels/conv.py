"""Fast float32 convolution kernels (batch norm already folded into weights + per-channel shift).

* ``conv_gemm``: groups=1 convolution as a packed GEMM; each thread builds one B panel straight
  from the image (im2col restricted to NR output pixels, or a plain copy for 1x1 stride 1), multiplies
  every A panel against it and writes ``act(acc + shift)``. No column matrix is ever materialised.
* ``conv_direct``: grouped and depthwise convolution as a direct loop over each output channel's
  plane (vectorised along the row). Depthwise convolutions are memory-bound and a grouped conv with 2-8
  channels per group is far too small for GEMM tiles, so both are better served this way.

Results differ from darknet's order of summation by rounding only (tolerances in
``../shared/specs/darknet.md`` §9); ``exact.py`` holds the bit-exact versions.

Shapes: x (C, H, W); out (M, out_h, out_w); weights OIHW; ``ap`` = ``gemm.pack_a(W.reshape(M, K))``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import activate_scalar
from .gemm import MR, NR, microkernel, pack_b_panel


@njit(cache=True)
def _im2col_panel(x, size, stride, pad, out_w, n0, n, bp, oy_, ox_):
    # bp[k*NR + j] = x[c, oy*stride - pad + ky, ox*stride - pad + kx] for pixel n0+j = (oy, ox),
    # k = (c*size + ky)*size + kx; zero outside the image and past n.
    c, h, w = x.shape
    jn = min(NR, n - n0)
    for j in range(jn):
        oy_[j] = (n0 + j) // out_w
        ox_[j] = (n0 + j) % out_w
    k = 0
    for cc in range(c):
        for ky in range(size):
            for kx in range(size):
                base = k * NR
                for j in range(jn):
                    iy = oy_[j] * stride - pad + ky
                    ix = ox_[j] * stride - pad + kx
                    v = np.float32(0.0)
                    if 0 <= iy < h and 0 <= ix < w:
                        v = x[cc, iy, ix]
                    bp[base + j] = v
                for j in range(jn, NR):
                    bp[base + j] = np.float32(0.0)
                k += 1


@njit(cache=True, parallel=True)
def _conv_gemm(x, ap, shift, act, size, stride, pad, out):
    m, out_h, out_w = out.shape
    n = out_h * out_w
    c = x.shape[0]
    kdim = c * size * size
    npan = (n + NR - 1) // NR
    nip = ap.shape[0]
    # Split M too when there are few pixel panels, so both threads get work.
    mchunks = 1
    if npan < 8:
        mchunks = min(nip, (8 + npan - 1) // npan)
    direct = size == 1 and stride == 1 and pad == 0
    x2d = x.reshape(c, x.shape[1] * x.shape[2])
    out2d = out.reshape(m, n)
    for item in prange(npan * mchunks):
        jp = item // mchunks
        mc = item % mchunks
        ip0 = mc * nip // mchunks
        ip1 = (mc + 1) * nip // mchunks
        n0 = jp * NR
        bp = np.empty(kdim * NR, dtype=np.float32)
        tile = np.empty(MR * NR, dtype=np.float32)
        if direct:
            pack_b_panel(x2d, n0, bp)
        else:
            oy_ = np.empty(NR, dtype=np.int64)
            ox_ = np.empty(NR, dtype=np.int64)
            _im2col_panel(x, size, stride, pad, out_w, n0, n, bp, oy_, ox_)
        jn = min(NR, n - n0)
        for ip in range(ip0, ip1):
            microkernel(ap[ip].ctypes.data, bp.ctypes.data, kdim, tile.ctypes.data)
            i0 = ip * MR
            for r in range(min(MR, m - i0)):
                s = shift[i0 + r]
                for j in range(jn):
                    out2d[i0 + r, n0 + j] = activate_scalar(tile[r * NR + j] + s, act)


def conv_gemm(x, ap, shift, act: int, size: int, stride: int, pad: int, out) -> None:
    """groups=1 convolution: out = act(conv(x, W) + shift), with ``ap`` the packed (M, C*size*size) W."""
    _conv_gemm(x, ap, shift, act, size, stride, pad, out)


@njit(cache=True, parallel=True, fastmath=True)
def _conv_direct(x, weights, groups, shift, act, stride, pad, out):
    c, h, w = x.shape
    m, out_h, out_w = out.shape
    cg = c // groups
    mg = m // groups
    size = weights.shape[2]
    for o in prange(m):
        g = o // mg
        plane = out[o]
        for oy in range(out_h):
            for ox in range(out_w):
                plane[oy, ox] = np.float32(0.0)
        for ci in range(cg):
            src = x[g * cg + ci]
            for ky in range(size):
                for kx in range(size):
                    wv = weights[o, ci, ky, kx]
                    # output columns whose input column ox*stride - pad + kx lies inside [0, w)
                    lo = max(0, (pad - kx + stride - 1) // stride)
                    hi = min(out_w, (w - 1 + pad - kx) // stride + 1)
                    for oy in range(out_h):
                        iy = oy * stride - pad + ky
                        if iy < 0 or iy >= h:
                            continue
                        if stride == 1:
                            off = kx - pad
                            for ox in range(lo, hi):
                                plane[oy, ox] += wv * src[iy, ox + off]
                        else:
                            for ox in range(lo, hi):
                                plane[oy, ox] += wv * src[iy, ox * stride - pad + kx]
        s = shift[o]
        for oy in range(out_h):
            for ox in range(out_w):
                plane[oy, ox] = activate_scalar(plane[oy, ox] + s, act)


def conv_direct(x, weights, groups: int, shift, act: int, stride: int, pad: int, out) -> None:
    """Grouped/depthwise convolution: out = act(conv(x, W, groups) + shift)."""
    _conv_direct(x, weights, groups, shift, act, stride, pad, out)


@njit(cache=True, parallel=True, fastmath=True)
def _connected(x, weights, shift, act, out):
    # y = act(W x + shift); a matrix-vector product is memory-bound, so a vectorised dot per row.
    kdim = x.shape[0]
    for o in prange(out.shape[0]):
        s = np.float32(0.0)
        for k in range(kdim):
            s += weights[o, k] * x[k]
        out[o] = activate_scalar(s + shift[o], act)


def connected(x, weights, shift, act: int, out) -> None:
    """[connected]: out (outputs,) = act(W @ x + shift), W (outputs, inputs)."""
    _connected(x, weights, shift, act, out)
