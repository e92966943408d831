"""int8 convolutions and [connected]: input preparation, weight packing and the kernels, as MLAS computes them.

Layouts (batch 1; activations are int8 (C, H, W), as the int8 engine stores them):

* ``prepare_quads`` makes the uint8 input of a groups=1 convolution with an even channel count:
  ``xs[c4, y, p, j, l] = x[4*c4 + l, y - pad, j*stride + p - pad] + 128`` (zero point + 128 in the padding,
  0 in the padding channels), i.e. padded, split into ``stride`` column phases like ``kernels/conv.py``,
  with four consecutive channels interleaved per pixel: 16 neighbouring output pixels then read 64
  contiguous bytes for one (c4, ky, kx) and the four bytes of a pixel are the two vpmaddubsw pairs MLAS
  forms;
* ``prepare_planes`` makes the padded uint8 input of the im2col (odd channel count), grouped and depthwise
  kernels split into stride x stride phase planes ``xs[c, py, px, Y, X]``, so that every tap of an output
  map is one contiguous run (whatever the stride);
* packed weights for the GEMM: ``ap[ip, (k4*MR + r)*4 + l]`` = weight of output channel ``ip*MR + r`` at
  quad k4, element l (zero rows and elements pad).

Which kernel runs a layer is ``config.int8_conv_path``. Every kernel requantises per ``requant.py`` (the
GEMMs in the micro-kernel's registers). The thread count is passed in (``numba.get_num_threads()`` inside
a kernel defeats caching).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from .microkernel import MR, NR, ONES16, microkernel_u8s8, microkernel_u8s8_fused
from .requant import epilogue, requant_row


# -- input preparation -------------------------------------------------------------------------------------

def quads_shape(c: int, h: int, w: int, pad: int, stride: int) -> tuple[int, int, int, int, int]:
    """Shape of the interleaved uint8 buffer ``prepare_quads`` fills: (C4, Hp, S, Wq, 4)."""
    return (c + 3) // 4, h + 2 * pad, stride, -(-(w + 2 * pad) // stride), 4


def planes_shape(c: int, h: int, w: int, pad: int, stride: int) -> tuple[int, int, int, int, int]:
    """Shape of the phase-plane uint8 buffer ``prepare_planes`` fills: (C, S, S, Hq, Wq)."""
    return c, stride, stride, -(-(h + 2 * pad) // stride), -(-(w + 2 * pad) // stride)


PLANE_SLACK = 64    # bytes after the planes: whole-map loops read up to a row's worth past the last row


@njit(cache=True)
def _prepare_quad(x, pad, zpu, xs32, c4):
    # xs32: (C4, Hp, S, Wq) uint32, one word = the 4 channel bytes of a pixel (lane l in bits 8l..8l+7).
    # Rows are built with whole-word stores so that the interior loop vectorises.
    c, h, w = x.shape
    hp, s, wq = xs32.shape[1], xs32.shape[2], xs32.shape[3]
    nl = min(4, c - 4 * c4)                        # real channels in this quad (the rest are 0)
    padw = np.uint32(0)
    for lane in range(nl):
        padw |= np.uint32(zpu) << np.uint32(8 * lane)
    for y in range(hp):
        iy = y - pad
        for p in range(s):
            dst = xs32[c4, y, p]
            if iy < 0 or iy >= h:
                for j in range(wq):
                    dst[j] = padw
                continue
            # j with 0 <= j*s + p - pad < w
            jlo = max(0, (pad - p + s - 1) // s)
            jhi = min(wq, (w - 1 + pad - p) // s + 1)
            for j in range(jlo):
                dst[j] = padw
            for j in range(max(jhi, jlo), wq):
                dst[j] = padw
            if jhi <= jlo:
                continue
            # missing channels of the last quad read channel 4*c4 and are masked to 0
            a = x[4 * c4, iy]
            b = x[4 * c4 + 1, iy] if nl > 1 else a
            cc = x[4 * c4 + 2, iy] if nl > 2 else a
            d = x[4 * c4 + 3, iy] if nl > 3 else a
            mask = np.uint32(0xFFFFFFFF) >> np.uint32(8 * (4 - nl))
            # unsigned indices: numba then skips its negative-index wraparound, and LLVM vectorises
            base = np.uint64(jlo * s + p - pad)
            su = np.uint64(s)
            ju = np.uint64(jlo)
            for jj in range(jhi - jlo):
                ix = base + np.uint64(jj) * su
                dst[ju + np.uint64(jj)] = mask & (
                    np.uint32(np.int32(a[ix]) + 128) | (np.uint32(np.int32(b[ix]) + 128) << np.uint32(8))
                    | (np.uint32(np.int32(cc[ix]) + 128) << np.uint32(16))
                    | (np.uint32(np.int32(d[ix]) + 128) << np.uint32(24)))


@njit(cache=True, parallel=True)
def _prepare_quads_par(x, pad, zpu, xs32):
    for c4 in prange(xs32.shape[0]):
        _prepare_quad(x, pad, zpu, xs32, c4)


@njit(cache=True)
def _prepare_quads_ser(x, pad, zpu, xs32):
    for c4 in range(xs32.shape[0]):
        _prepare_quad(x, pad, zpu, xs32, c4)


def prepare_quads(x: np.ndarray, pad: int, zero_point: int, xs: np.ndarray) -> None:
    """int8 (C, H, W) -> uint8 (C4, Hp, S, Wq, 4), see the module docstring."""
    f = _prepare_quads_ser if xs.size < config.INT8_SERIAL_BYTES else _prepare_quads_par
    f(x, pad, np.uint32(zero_point + 128), xs.view(np.uint32).reshape(xs.shape[:4]))


@njit(cache=True)
def _prepare_plane(x, pad, zpu, xs, ch):
    # xs[c, py, px, Y, X] = x[c, Y*S + py - pad, X*S + px - pad] + 128, zpu outside the image
    c, h, w = x.shape
    s, hq, wq = xs.shape[1], xs.shape[3], xs.shape[4]
    for py in range(s):
        for yy in range(hq):
            iy = yy * s + py - pad
            if iy < 0 or iy >= h:
                for px in range(s):
                    dst = xs[ch, py, px, yy]
                    for j in range(wq):
                        dst[j] = zpu
                continue
            src = x[ch, iy]
            if s == 2:
                # both column phases in one loop: a complete stride-2 interleave group, which LLVM
                # de-interleaves with shuffles (one phase at a time it would gather)
                d0 = xs[ch, py, 0, yy]
                d1 = xs[ch, py, 1, yy]
                xlo = (pad + 1) // 2                         # first X with both 2X-pad and 2X+1-pad >= 0
                xhi = min(wq, (w + pad - 1) // 2)            # ... and both < w
                for j in range(min(xlo, wq)):
                    i0 = 2 * j - pad
                    d0[j] = np.uint8(np.int32(src[i0]) + 128) if 0 <= i0 < w else zpu
                    d1[j] = np.uint8(np.int32(src[i0 + 1]) + 128) if 0 <= i0 + 1 < w else zpu
                if xhi > xlo:
                    base = np.uint64(2 * xlo - pad)
                    xu = np.uint64(xlo)
                    for jj in range(xhi - xlo):
                        k = base + np.uint64(2 * jj)
                        d0[xu + np.uint64(jj)] = np.uint8(np.int32(src[k]) + 128)
                        d1[xu + np.uint64(jj)] = np.uint8(np.int32(src[k + np.uint64(1)]) + 128)
                for j in range(max(xhi, xlo), wq):
                    i0 = 2 * j - pad
                    d0[j] = np.uint8(np.int32(src[i0]) + 128) if 0 <= i0 < w else zpu
                    d1[j] = np.uint8(np.int32(src[i0 + 1]) + 128) if 0 <= i0 + 1 < w else zpu
                continue
            for px in range(s):
                dst = xs[ch, py, px, yy]
                jlo = max(0, (pad - px + s - 1) // s)
                jhi = min(wq, (w - 1 + pad - px) // s + 1)
                for j in range(jlo):
                    dst[j] = zpu
                for j in range(max(jhi, jlo), wq):
                    dst[j] = zpu
                if jhi > jlo:
                    base = np.uint64(jlo * s + px - pad)
                    su = np.uint64(s)
                    ju = np.uint64(jlo)
                    for jj in range(jhi - jlo):            # unsigned indices: vectorisable
                        dst[ju + np.uint64(jj)] = np.uint8(np.int32(src[base + np.uint64(jj) * su]) + 128)


@njit(cache=True, parallel=True)
def _prepare_planes_par(x, pad, zpu, xs):
    for ch in prange(xs.shape[0]):
        _prepare_plane(x, pad, zpu, xs, ch)


@njit(cache=True)
def _prepare_planes_ser(x, pad, zpu, xs):
    for ch in range(xs.shape[0]):
        _prepare_plane(x, pad, zpu, xs, ch)


def prepare_planes(x: np.ndarray, pad: int, zero_point: int, xs: np.ndarray) -> None:
    """int8 (C, H, W) -> uint8 phase planes (C, S, S, Hq, Wq): +128, zero point + 128 in the padding. Output
    pixel (oy, ox) of tap (ky, kx) then reads plane (ky % S, kx % S) at (oy + ky//S, ox + kx//S), so a whole
    output map (as oy*Wq + ox, with Wq - out_w spare columns) is one contiguous read per tap."""
    f = _prepare_planes_ser if xs.size < config.INT8_SERIAL_BYTES else _prepare_planes_par
    f(x, pad, np.uint8(zero_point + 128), xs)


def tap_offset(ch: int, ky: int, kx: int, s: int, hq: int, wq: int) -> int:
    """Offset of tap (ky, kx) of channel ch from output pixel (oy, ox)'s base oy*Wq + ox in the planes."""
    return ((ch * s + ky % s) * s + kx % s) * hq * wq + (ky // s) * wq + kx // s


# -- weights -----------------------------------------------------------------------------------------------

def pack_quads(w: np.ndarray) -> np.ndarray:
    """OIHW int8 (C even) -> (ceil(M/MR), K4*MR*4) with quads (c4, ky, kx): 4 channels of one tap."""
    m, c, kh, kw = w.shape
    c4 = (c + 3) // 4
    npan = -(-m // MR)
    wp = np.zeros((npan * MR, c4 * 4, kh, kw), np.int8)
    wp[:m, :c] = w
    # (ip, r, c4, l, ky, kx) -> (ip, c4, ky, kx, r, l)
    a = wp.reshape(npan, MR, c4, 4, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(a.reshape(npan, -1))


def pack_flat(w2d: np.ndarray) -> np.ndarray:
    """(M, K) int8 in MLAS's flat order -> (ceil(M/MR), K4*MR*4) with quads of 4 consecutive K."""
    m, k = w2d.shape
    k4 = (k + 3) // 4
    npan = -(-m // MR)
    wp = np.zeros((npan * MR, k4 * 4), np.int8)
    wp[:m, :k] = w2d
    a = wp.reshape(npan, MR, k4, 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(a.reshape(npan, -1))


def flat_kernel(w: np.ndarray) -> np.ndarray:
    """OIHW -> (O, kh*kw*I): MLAS's (ky, kx, c) order in which it pairs products."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


# How a pair of u8 x s8 products is summed (``config.CodegenTarget.int8_pairs``): clamped to int16 (MLAS's
# vpmaddubsw on x86 without VNNI) or exactly (VNNI, other CPUs). The scalar kernels take these bounds; the
# micro-kernel an exact flag.
PAIR_BOUNDS = {"saturating": np.array([-32768, 32767], np.int32),
               "exact": np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], np.int32)}


def _exact(pairs: str) -> int:
    if pairs not in PAIR_BOUNDS:
        raise ValueError(f"unknown pair arithmetic {pairs!r}; choose from {', '.join(PAIR_BOUNDS)}")
    return int(pairs == "exact")


# -- groups=1 convolution: implicit GEMM on the interleaved input ------------------------------------------

@njit(cache=True, parallel=True)
def _conv_quads(xs, ap, koff, bias, scale, fp, ip, ones, direct_rows, nthreads, min_items, exact, out):
    # xs: (C4, Hp, S, Wq, 4) uint8 viewed as uint32 per pixel; out: (M, out_h, out_w) int8
    m, out_h, out_w = out.shape
    n = out_h * out_w
    s, wq = xs.shape[2], xs.shape[3]
    row = s * wq                                   # uint32 units between two padded input rows
    k4 = koff.shape[0]
    npan = (n + NR - 1) // NR
    nip = ap.shape[0]
    # split the output channels too when pixel panels are few, so that every thread gets >= min_items work
    # items (config.INT8_MIN_ITEMS_PER_THREAD)
    want = min_items * nthreads
    mchunks = min(nip, max(1, (want + npan - 1) // npan))
    nitems = npan * mchunks
    x32 = xs.reshape(-1).view(np.uint32)
    xaddr = x32.ctypes.data
    aaddr = ap.ctypes.data
    astride = ap.shape[1]
    out2d = out.reshape(m, n)
    oaddr = out2d.ctypes.data
    onesaddr = ones.ctypes.data
    for th in prange(nthreads):
        bp = np.empty(k4 * NR, dtype=np.uint32)
        tile = np.empty(MR * NR, dtype=np.int32)
        base = np.empty(NR, dtype=np.int64)
        for item in range(th * nitems // nthreads, (th + 1) * nitems // nthreads):
            jp = item // mchunks
            mc = item % mchunks
            n0 = jp * NR
            jn = min(NR, n - n0)
            oy0 = n0 // out_w
            in_place = jn == NR and (direct_rows or oy0 == (n0 + NR - 1) // out_w)
            if in_place:
                b0 = n0 if direct_rows else oy0 * s * row + n0 - oy0 * out_w
                bsrc = xaddr + 4 * b0
                boff = koff.ctypes.data
            else:
                for j in range(jn):
                    oy = (n0 + j) // out_w
                    base[j] = oy * s * row + (n0 + j) - oy * out_w
                for kk in range(k4):
                    o = koff[kk] // 4
                    for j in range(jn):
                        bp[kk * NR + j] = x32[base[j] + o]
                    for j in range(jn, NR):
                        bp[kk * NR + j] = 0
                bsrc = bp.ctypes.data
                boff = 0
            for ip_ in range(mc * nip // mchunks, (mc + 1) * nip // mchunks):
                i0 = ip_ * MR
                if jn == NR:
                    microkernel_u8s8_fused(aaddr + ip_ * astride, bsrc, boff, k4, oaddr + i0 * n + n0, n,
                                           bias.ctypes.data + 4 * i0, scale.ctypes.data + 4 * i0, fp.ctypes.data,
                                           ip.ctypes.data, m - i0, onesaddr, exact)
                    continue
                microkernel_u8s8(aaddr + ip_ * astride, bsrc, boff, k4, tile.ctypes.data, onesaddr, exact)
                for r in range(min(MR, m - i0)):
                    o_ = i0 + r
                    orow = out2d[o_]
                    for j in range(jn):
                        orow[n0 + j] = epilogue(tile[r * NR + j], bias[o_], scale[o_], fp, ip)


def conv_koff(c: int, hp: int, s: int, wq: int, size: int) -> np.ndarray:
    """Byte offsets of each quad (c4, ky, kx) from a pixel's base in the interleaved input."""
    c4 = (c + 3) // 4
    k = np.arange(size)
    off = ((np.arange(c4)[:, None, None] * hp + k[None, :, None]) * s + (k[None, None, :] % s)) * wq \
        + k[None, None, :] // s
    return np.ascontiguousarray((4 * off).reshape(-1).astype(np.int64))


def conv_quads(xs, ap, koff, bias, scale, fp, ip, out, nthreads: int, pairs: str = "saturating") -> None:
    """groups=1 int8 convolution (C even) from ``prepare_quads``'s buffer, requantised per
    ``epilogue_params``. ``bias``/``scale`` must have a multiple of MR entries (zero padded). ``pairs``:
    "saturating" or "exact" sums (``config.CodegenTarget.int8_pairs``)."""
    direct = xs.shape[2] == 1 and xs.shape[1] * xs.shape[3] == out.shape[1] * out.shape[2]
    _conv_quads(xs, ap, koff, bias, scale, fp, ip, ONES16, direct, nthreads, config.INT8_MIN_ITEMS_PER_THREAD,
                _exact(pairs), out)


# -- im2col convolution (odd channel counts: pairs cross kernel taps, as in MLAS's flat K) -----------------

@njit(cache=True, parallel=True)
def _conv_im2col(xs, wq, ap, kidx, bias, scale, fp, ip, ones, nthreads, exact, out):
    # xs: flat planes (prepare_planes); kidx: (K4*4,) tap offsets of flat k (ky, kx, c), -1 = padding of K
    m, out_h, out_w = out.shape
    n = out_h * out_w
    k4 = kidx.shape[0] // 4
    npan = (n + NR - 1) // NR
    nip = ap.shape[0]
    aaddr = ap.ctypes.data
    astride = ap.shape[1]
    out2d = out.reshape(m, n)
    oaddr = out2d.ctypes.data
    onesaddr = ones.ctypes.data
    for th in prange(nthreads):
        bp = np.empty(k4 * NR * 4, dtype=np.uint8)
        tile = np.empty(MR * NR, dtype=np.int32)
        for jp in range(th * npan // nthreads, (th + 1) * npan // nthreads):
            n0 = jp * NR
            jn = min(NR, n - n0)
            for j in range(NR):
                if j < jn:
                    oy = (n0 + j) // out_w
                    b = oy * wq + (n0 + j) - oy * out_w
                    for kk in range(k4 * 4):
                        o = kidx[kk]
                        bp[(kk // 4) * NR * 4 + j * 4 + kk % 4] = xs[b + o] if o >= 0 else 0
                else:
                    for kk in range(k4 * 4):
                        bp[(kk // 4) * NR * 4 + j * 4 + kk % 4] = 0
            for ip_ in range(nip):
                i0 = ip_ * MR
                if jn == NR:
                    microkernel_u8s8_fused(aaddr + ip_ * astride, bp.ctypes.data, 0, k4, oaddr + i0 * n + n0, n,
                                           bias.ctypes.data + 4 * i0, scale.ctypes.data + 4 * i0, fp.ctypes.data,
                                           ip.ctypes.data, m - i0, onesaddr, exact)
                    continue
                microkernel_u8s8(aaddr + ip_ * astride, bp.ctypes.data, 0, k4, tile.ctypes.data, onesaddr, exact)
                for r in range(min(MR, m - i0)):
                    o_ = i0 + r
                    orow = out2d[o_]
                    for j in range(jn):
                        orow[n0 + j] = epilogue(tile[r * NR + j], bias[o_], scale[o_], fp, ip)


def im2col_index(c: int, size: int, s: int, hq: int, wq: int) -> np.ndarray:
    """Tap offset (see ``tap_offset``) of each flat k = (ky, kx, c); -1 pads K to a multiple of 4."""
    idx = [tap_offset(ch, ky, kx, s, hq, wq) for ky in range(size) for kx in range(size) for ch in range(c)]
    idx += [-1] * (-len(idx) % 4)
    return np.array(idx, np.int64)


def conv_im2col(xflat, wq: int, ap, kidx, bias, scale, fp, ip, out, nthreads: int, pairs: str = "saturating") -> None:
    """groups=1 convolution with onnxruntime's cross-tap pairs (odd C), from ``prepare_planes``'s buffer
    (``xflat``: its flat view plus PLANE_SLACK bytes; ``wq``: the planes' width)."""
    _conv_im2col(xflat, wq, ap, kidx, bias, scale, fp, ip, ONES16, nthreads, _exact(pairs), out)


# -- grouped convolution (MLAS: a GEMM per group, pairs over the group's flat (ky, kx, c)) ----------------

@njit(cache=True, parallel=True)
def _conv_grouped(xs, wq, pw, poff, bias, scale, fp, ip, bounds, nthreads, out):
    # pw: (M, P, 2) int32 pair weights; poff: (G, P, 2) tap offsets of the pair's inputs; the whole output
    # map of a channel is accumulated as one run of oh*Wq values (Wq - out_w of them unused per row)
    m, out_h, out_w = out.shape
    g = poff.shape[0]
    npair = poff.shape[1]
    mg = m // g
    nrun = out_h * wq
    lo, hi = bounds[0], bounds[1]                  # a pair's sum is clamped to these (PAIR_BOUNDS)
    for th in prange(nthreads):
        acc = np.empty(nrun, dtype=np.int32)
        q = np.empty(nrun, dtype=np.int8)
        for o in range(th * m // nthreads, (th + 1) * m // nthreads):
            gi = o // mg
            for j in range(nrun):
                acc[j] = 0
            for pq in range(npair):
                w0 = pw[o, pq, 0]
                w1 = pw[o, pq, 1]
                a0 = np.uint64(poff[gi, pq, 0])
                a1 = np.uint64(poff[gi, pq, 1])
                for j in range(nrun):
                    ju = np.uint64(j)
                    v = np.int32(w0 * np.int32(xs[a0 + ju]) + w1 * np.int32(xs[a1 + ju]))
                    acc[ju] = np.int32(acc[ju] + min(max(v, lo), hi))
            requant_row(acc, nrun, bias[o], scale[o], fp, ip, q)
            for oy in range(out_h):
                dst = out[o, oy]
                for j in range(out_w):
                    dst[j] = q[oy * wq + j]


def grouped_pairs(w: np.ndarray, groups: int, s: int, hq: int, wq: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair weights (M, P, 2) and per-group tap offsets (G, P, 2) in MLAS's flat (ky, kx, c) order."""
    m, cg, kh, kw = w.shape
    kflat = kh * kw * cg
    kp = kflat + kflat % 2
    pw = np.zeros((m, kp), np.int32)
    pw[:, :kflat] = flat_kernel(w)
    offs = np.zeros((groups, kp), np.int64)
    for gi in range(groups):
        k = 0
        for ky in range(kh):
            for kx in range(kw):
                for ci in range(cg):
                    offs[gi, k] = tap_offset(gi * cg + ci, ky, kx, s, hq, wq)
                    k += 1
        if kflat % 2:
            offs[gi, kflat] = offs[gi, 0]          # the padding element has weight 0
    return np.ascontiguousarray(pw.reshape(m, kp // 2, 2)), np.ascontiguousarray(offs.reshape(groups, kp // 2, 2))


def conv_grouped(xflat, wq: int, pw, poff, bias, scale, fp, ip, out, nthreads: int, pairs: str = "saturating") -> None:
    """Grouped convolution (not depthwise) with MLAS's per-group pairs, from ``prepare_planes``'s buffer."""
    _conv_grouped(xflat, wq, pw, poff, bias, scale, fp, ip, PAIR_BOUNDS[pairs], nthreads, out)


# -- depthwise convolution (exact int32: MLAS's depthwise kernels do not pair) -----------------------------

@njit(cache=True, parallel=True)
def _conv_depthwise(xs, wq, w, toff, bias, scale, fp, ip, nthreads, out):
    # w: (C, T) int32 tap weights; toff: (C, T) tap offsets; exact int32 sums over whole-map runs
    c, out_h, out_w = out.shape
    ntap = w.shape[1]
    nrun = out_h * wq
    for th in prange(nthreads):
        acc = np.empty(nrun, dtype=np.int32)
        q = np.empty(nrun, dtype=np.int8)
        for ch in range(th * c // nthreads, (th + 1) * c // nthreads):
            if ntap == 9:
                # 3x3: all taps in one vectorised pass (acc written once instead of read/written per tap)
                wr = w[ch]
                o = toff[ch]
                a0, a1, a2 = np.uint64(o[0]), np.uint64(o[1]), np.uint64(o[2])
                a3, a4, a5 = np.uint64(o[3]), np.uint64(o[4]), np.uint64(o[5])
                a6, a7, a8 = np.uint64(o[6]), np.uint64(o[7]), np.uint64(o[8])
                w0, w1, w2, w3, w4, w5, w6, w7, w8 = wr[0], wr[1], wr[2], wr[3], wr[4], wr[5], wr[6], wr[7], wr[8]
                for j in range(nrun):
                    ju = np.uint64(j)
                    acc[ju] = np.int32(
                        w0 * np.int32(xs[a0 + ju]) + w1 * np.int32(xs[a1 + ju]) + w2 * np.int32(xs[a2 + ju])
                        + w3 * np.int32(xs[a3 + ju]) + w4 * np.int32(xs[a4 + ju]) + w5 * np.int32(xs[a5 + ju])
                        + w6 * np.int32(xs[a6 + ju]) + w7 * np.int32(xs[a7 + ju]) + w8 * np.int32(xs[a8 + ju]))
            else:
                for j in range(nrun):
                    acc[j] = 0
                for t in range(ntap):
                    wv = w[ch, t]
                    a = np.uint64(toff[ch, t])
                    for j in range(nrun):
                        ju = np.uint64(j)
                        acc[ju] = np.int32(acc[ju] + wv * np.int32(xs[a + ju]))
            requant_row(acc, nrun, bias[ch], scale[ch], fp, ip, q)
            for oy in range(out_h):
                dst = out[ch, oy]
                for j in range(out_w):
                    dst[j] = q[oy * wq + j]


def depthwise_taps(w: np.ndarray, s: int, hq: int, wq: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, T) int32 weights and tap offsets for a depthwise OIHW (C, 1, k, k) kernel."""
    c, _, kh, kw = w.shape
    offs = np.array([[tap_offset(ch, ky, kx, s, hq, wq) for ky in range(kh) for kx in range(kw)] for ch in range(c)],
                    np.int64)
    return np.ascontiguousarray(w.reshape(c, -1).astype(np.int32)), offs


def conv_depthwise(xflat, wq: int, w, toff, bias, scale, fp, ip, out, nthreads: int) -> None:
    """Depthwise convolution, exact int32 like MLAS's depthwise kernels, from ``prepare_planes``'s buffer."""
    _conv_depthwise(xflat, wq, w, toff, bias, scale, fp, ip, nthreads, out)


# -- connected (QGemm: pairs over the flat input) ----------------------------------------------------------

@njit(cache=True, parallel=True)
def _gemv_pairs(u0, u1, w0, w1, bias, scale, fp, ip, bounds, out):
    # u0/u1: (K2,) int32 even/odd inputs + 128; w0/w1: (N, K2) int32 even/odd weights; out (N,) int8
    n, k2 = w0.shape
    lo, hi = bounds[0], bounds[1]
    for o in prange(n):
        acc = np.int32(0)
        a = w0[o]
        b = w1[o]
        for j in range(k2):
            ju = np.uint64(j)
            v = np.int32(a[ju] * u0[ju] + b[ju] * u1[ju])
            acc = np.int32(acc + min(max(v, lo), hi))
        out[o] = epilogue(acc, bias[o], scale[o], fp, ip)


def split_pairs(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) int8 -> even/odd int32 halves (N, ceil(K/2)) (a zero pads an odd K, as MLAS pads K)."""
    n, k = w.shape
    wp = np.zeros((n, k + k % 2), np.int32)
    wp[:, :k] = w
    return np.ascontiguousarray(wp[:, 0::2]), np.ascontiguousarray(wp[:, 1::2])


def connected(x, w0, w1, bias, scale, fp, ip, out, pairs: str = "saturating") -> None:
    """[connected] as onnxruntime's QGemm (``split_pairs`` weights); ``bias`` holds -(zp_x + 128) * sum(w)."""
    k = x.size
    u = np.zeros(k + k % 2, np.int32)
    u[:k] = x.astype(np.int32) + 128
    _gemv_pairs(np.ascontiguousarray(u[0::2]), np.ascontiguousarray(u[1::2]), w0, w1, bias, scale, fp, ip,
                PAIR_BOUNDS[pairs], out)


# -- bound calls: argument conversions done once, at plan time (the engine's steps call these per run) ------

def bind_prepare_quads(x, pad: int, zero_point: int, xs):
    """``prepare_quads`` with its arguments fixed: returns run()."""
    f = _prepare_quads_ser if xs.size < config.INT8_SERIAL_BYTES else _prepare_quads_par
    zpu = np.uint32(zero_point + 128)
    xs32 = xs.view(np.uint32).reshape(xs.shape[:4])
    return lambda: f(x, pad, zpu, xs32)


def bind_prepare_planes(x, pad: int, zero_point: int, xs):
    """``prepare_planes`` with its arguments fixed: returns run()."""
    f = _prepare_planes_ser if xs.size < config.INT8_SERIAL_BYTES else _prepare_planes_par
    zpu = np.uint8(zero_point + 128)
    return lambda: f(x, pad, zpu, xs)


def bind_conv_quads(xs, ap, koff, bias, scale, fp, ip, out, pairs: str = "saturating"):
    """``conv_quads`` with its arguments fixed: returns run(nthreads)."""
    direct = xs.shape[2] == 1 and xs.shape[1] * xs.shape[3] == out.shape[1] * out.shape[2]
    min_items = config.INT8_MIN_ITEMS_PER_THREAD
    ex = _exact(pairs)
    return lambda nt: _conv_quads(xs, ap, koff, bias, scale, fp, ip, ONES16, direct, nt, min_items, ex, out)


def bind_conv_im2col(xflat, wq: int, ap, kidx, bias, scale, fp, ip, out, pairs: str = "saturating"):
    ex = _exact(pairs)
    return lambda nt: _conv_im2col(xflat, wq, ap, kidx, bias, scale, fp, ip, ONES16, nt, ex, out)


def bind_conv_depthwise(xflat, wq: int, w, toff, bias, scale, fp, ip, out):
    return lambda nt: _conv_depthwise(xflat, wq, w, toff, bias, scale, fp, ip, nt, out)


def bind_conv_grouped(xflat, wq: int, pw, poff, bias, scale, fp, ip, out, pairs: str = "saturating"):
    bounds = PAIR_BOUNDS[pairs]
    return lambda nt: _conv_grouped(xflat, wq, pw, poff, bias, scale, fp, ip, bounds, nt, out)

