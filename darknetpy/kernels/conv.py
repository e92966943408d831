"""Fast float32 convolution kernels (batch norm already folded into weights + per-channel shift).

Every fast convolution reads its input from one layout, prepared by ``prepare_input``:

    xs[c, y, p, j] = x[c, y - pad, j*stride + p - pad]     (zero outside the image)
    shape (C, H + 2*pad, stride, ceil((W + 2*pad) / stride))

i.e. zero-padded, and for stride s split into s column phases. Then the input pixel of output (oy, ox)
under tap (ky, kx) is ``xs[c, oy*s + ky, kx % s, ox + kx // s]``: NR neighbouring outputs of one row
read NR *contiguous* floats for every tap, whatever the stride, and no bounds are ever checked.

* ``conv_gemm`` (groups=1): an implicit GEMM. For each (c, ky, kx) row of B the offset from a pixel's
  base is precomputed (``koff``); panels of NR pixels on one output row feed the micro-kernel straight
  from ``xs`` (``microkernel_indirect``), other panels are gathered into a B panel with the same
  offsets. The epilogue adds the folded-BN shift and applies the activation.
* grouped and depthwise convolutions live in ``depthwise.py``.

Results differ from darknet's summation order by rounding only (``../shared/specs/darknet.md`` §9);
``exact.py`` holds the bit-exact versions. Shapes: x (C, H, W); out (M, out_h, out_w); weights OIHW.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import config
from .activation import activate_block
from .vecir import split_row2
from .gemm import (KMR, KNR, KNR_NARROW, MR, NR, copy_runs16, gather_rows16, microkernel_acc, microkernel_acc_fused,
                   microkernel_acc_fused_narrow, microkernel_acc_narrow, microkernel_cols, microkernel_fused,
                   microkernel_indirect, pack_a, prefetch_l2)


def input_shape(c: int, h: int, w: int, pad: int, stride: int) -> tuple[int, int, int, int]:
    """Shape of the padded, phase-split buffer ``prepare_input`` fills."""
    return c, h + 2 * pad, stride, -(-(w + 2 * pad) // stride)


@njit(cache=True, parallel=True)
def _prepare_input(x, pad, xs):
    c, h, w = x.shape
    hp, s, wq = xs.shape[1], xs.shape[2], xs.shape[3]
    for ch in prange(c):
        for y in range(hp):
            iy = y - pad
            if iy < 0 or iy >= h:
                for p in range(s):
                    for j in range(wq):             # a loop, not xs[..., :] = 0: inside a parallel kernel
                        xs[ch, y, p, j] = np.float32(0.0)   # an array expression becomes another parfor
                continue
            src = x[ch, iy]
            if s == 2:
                split_row2(src, w, pad, xs[ch, y, 0], xs[ch, y, 1])
                continue
            for p in range(s):
                dst = xs[ch, y, p]
                # columns j with 0 <= j*s + p - pad < w: [j0, j1); copied through views indexed from 0 by
                # the loop variable, so numba drops its negative-index check and LLVM vectorises
                j0 = min(wq, max(0, (pad - p + s - 1) // s))
                j1 = min(wq, max(j0, (w - 1 + pad - p) // s + 1))
                for j in range(j0):
                    dst[j] = np.float32(0.0)
                n = j1 - j0
                a = j0 * s + p - pad
                d = dst[j0:j1]
                if s == 1:
                    sv = src[a:a + n]
                    for j in range(n):
                        d[j] = sv[j]
                else:
                    for j in range(n):
                        d[j] = src[a + j * s]
                for j in range(j1, wq):
                    dst[j] = np.float32(0.0)


def prepare_input(x, pad: int, xs) -> None:
    """Fill xs (C, Hp, stride, Wq), see the module docstring; any margin beyond the image is zeroed."""
    _prepare_input(x, pad, xs)


@njit(cache=True)
def _gather(xflat, koff, k0, kn, n0, jn, width, out_w, s, row, bp):
    """B rows k0..k0+kn of the ``width`` pixels from n0 (jn of them real) into a packed panel,
    bp[kk*width + j]; columns jn..width are zero. width: NR (conv_gemm) or KNR (the K-blocked GEMM).
    Pixels that are one run in the prepared input (on one output row; any panel of a 1x1 stride-1
    conv) are copied; others (a panel across output rows) moved as runs by masked loads and stores
    where those are cheap (MASKED_RUNS, copy_runs16), else gathered 16 at a time (gather_rows16)."""
    pix = np.empty(width, dtype=np.int32)
    for j in range(width):
        n1 = n0 + min(j, jn - 1)
        oy = n1 // out_w
        pix[j] = oy * s * row + n1 - oy * out_w
    if not MASKED_RUNS and jn == width and pix[width - 1] - pix[0] == width - 1:   # one run (a 1x1 conv's)
        for kk in range(kn):
            o = pix[0] + koff[k0 + kk]
            d = bp[kk * width:(kk + 1) * width]
            sv = xflat[o:o + width]
            for t in range(width):
                d[t] = sv[t]
        return
    if not MASKED_RUNS:
        for j0 in range(0, width, 16):
            gather_rows16(xflat.ctypes.data, koff.ctypes.data + 8 * k0, kn, pix.ctypes.data + 4 * j0,
                          max(0, min(16, jn - j0)), bp.ctypes.data + 4 * j0, width)
        return
    # the panel as runs of consecutive source offsets, at most 16 long: (src, dst, len) triples
    runs = np.empty(3 * width, dtype=np.int32)
    nr = 0
    j = 0
    while j < jn:
        e = j + 1
        while e < jn and e - j < 16 and pix[e] == pix[e - 1] + 1:
            e += 1
        runs[3 * nr], runs[3 * nr + 1], runs[3 * nr + 2] = pix[j], j, e - j
        nr += 1
        j = e
    copy_runs16(xflat.ctypes.data, koff.ctypes.data + 8 * k0, kn, runs.ctypes.data, nr, bp.ctypes.data, width)
    if jn < width:
        for kk in range(kn):
            for t in range(jn, width):
                bp[kk * width + t] = np.float32(0.0)


@njit(cache=True)
def _panel_source(xflat, koff, kpack, kdim, n0, jn, out_w, s, row, in_place_rows, in_place_ok, bp):
    """(address of B rows, address of their offsets) for the NR pixels from n0: read in place from the
    prepared input when they are contiguous there (on one output row, or anywhere in the flat image for
    a 1x1 stride-1 unpadded conv: in_place_rows) and K is small, else gathered into the packed panel bp."""
    oy0 = n0 // out_w
    if jn == NR and (in_place_rows or oy0 == (n0 + NR - 1) // out_w) and in_place_ok:
        b0 = n0 if in_place_rows else oy0 * s * row + n0 - oy0 * out_w
        return xflat.ctypes.data + 4 * b0, koff.ctypes.data
    _gather(xflat, koff, 0, kdim, n0, jn, NR, out_w, s, row, bp)
    return bp.ctypes.data, kpack.ctypes.data


@njit(cache=True, inline="always")
def _tile(ap, ip, bsrc, boff, kdim, n0, jn, fused, act, shift, has_res, out2d, res2d, tile):
    """One MR x NR block of out = act(A @ B + shift [+ res]) for filter panel ip and pixels n0..n0+jn."""
    m, n = out2d.shape
    i0 = ip * MR
    if fused and jn == NR:
        # bias, (residual,) activation and store in the micro-kernel's registers
        microkernel_fused(ap.ctypes.data + 4 * ip * ap.shape[1], bsrc, boff, kdim,
                          out2d.ctypes.data + 4 * (i0 * n + n0), n, shift.ctypes.data + 4 * i0, act, m - i0,
                          res2d.ctypes.data + 4 * (i0 * n + n0) if has_res else 0)
        return
    if jn < NR:
        # a last panel of 1-4 pixels (a 1x1 map: the classifier; 7x7: 49 = 3*16 + 1) is always packed
        # (_panel_source): the row-vectorised kernels do 1-4 columns, not a whole MR x NR tile
        microkernel_cols(ap.ctypes.data + 4 * ip * ap.shape[1], bsrc, kdim, tile.ctypes.data, jn)
    else:
        microkernel_indirect(ap.ctypes.data + 4 * ip * ap.shape[1], bsrc, boff, kdim, tile.ctypes.data)
    _store_tile(tile, 0, MR, NR, i0, n0, jn, act, shift, has_res, out2d, res2d)


@njit(cache=True, inline="always")
def _store_tile(tile, t0, mr, nr, i0, n0, jn, act, shift, has_res, out2d, res2d):
    """out2d[i0 + r, n0 + j] = act(tile[t0 + r*nr + j] + shift[i0 + r] [+ res]) for the mr x nr tile's
    real rows and its first jn columns: the scalar epilogue, for activations the micro-kernel does not
    fuse and for partial pixel panels."""
    m = out2d.shape[0]
    for r in range(min(mr, m - i0)):
        sh = shift[i0 + r]
        orow = out2d[i0 + r, n0:n0 + jn]
        for j in range(jn):
            orow[j] = tile[t0 + r * nr + j] + sh
        if has_res:
            rrow = res2d[i0 + r, n0:n0 + jn]
            for j in range(jn):
                orow[j] += rrow[j]
        activate_block(orow, jn, act)


# AVX-512 (k-mask stores): panels across output rows are copied run by run (copy_runs16); on AVX2 they
# are gathered (gather_rows16), since AVX2's masked store is microcoded on AMD CPUs. yolov2-tiny's 3x3
# 1024->1024 13x13, Xeon, packing: 1.59 ms of 21.4 with gathers -> 0.18 of 18.4 with runs (1 thread), 0.53 -> 0.27 (2).
MASKED_RUNS = config.codegen_target().float_lanes == 16


# Array expressions (np.zeros, np.arange, arithmetic on arrays) in a parallel=True kernel outside its
# prange become parallel regions of their own: waking the other thread for 448 floats cost ~13 us per
# call (measured inside the K-blocked GEMM at 2 threads). These small helpers are compiled serially.
@njit(cache=True)
def _zeros(n):
    z = np.empty(n, dtype=np.float32)
    for i in range(n):
        z[i] = np.float32(0.0)
    return z


@njit(cache=True)
def _strided(n, step):
    """[0, step, 2*step, ...] (n int64 values)."""
    a = np.empty(n, dtype=np.int64)
    for i in range(n):
        a[i] = i * step
    return a


@njit(cache=True)
def _offsets(c, size, s, hp, row, wq):
    """koff[k] for k = (c, ky, kx): offset of that tap from a pixel's base in the prepared input."""
    # the column part of each kx once (a division by the stride per tap was 2 ns per entry: 5 us per call
    # for K = 2304)
    col = np.empty(size, dtype=np.int64)
    for kx in range(size):
        col[kx] = (kx % s) * wq + kx // s
    koff = np.empty(c * size * size, dtype=np.int64)
    k = 0
    for cc in range(c):
        for ky in range(size):
            base = cc * hp * row + ky * row
            for kx in range(size):
                koff[k] = base + col[kx]
                k += 1
    return koff


@njit(cache=True, parallel=True, fastmath=True)
def _conv_gemm(xs, ap, shift, act, size, stride, in_place_rows, in_place_ok, nthreads, min_items, a_stationary,
               bscratch, res, out):
    # res: a residual shaped like out added before the activation (a fused [shortcut]), or empty
    # xs: (C, Hp, S, Wq) prepared input (S == stride); out: (M, out_h, out_w)
    # bscratch: (nthreads, >= K*npan*NR) when a_stationary, else unused
    m, out_h, out_w = out.shape
    n = out_h * out_w
    c, hp, s, wq = xs.shape
    row = s * wq                                  # floats between two input rows
    kdim = c * size * size
    npan = (n + NR - 1) // NR
    nip = ap.shape[0]
    koff = _offsets(c, size, s, hp, row, wq)
    kpack = _strided(kdim, NR)                    # the same offsets for a packed B panel
    xflat = xs.reshape(-1)
    out2d = out.reshape(m, n)
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    has_res = res.size == out.size
    res2d = res.reshape(m, n) if has_res else out2d
    mchunks = 1                                   # split M too when pixel panels are few
    if npan < min_items:
        mchunks = min(nip, (min_items + npan - 1) // npan)
    nitems = npan * mchunks
    for th in prange(nthreads):
        tile = np.empty(MR * NR, dtype=np.float32)
        bp = np.empty(kdim * NR, dtype=np.float32)
        srcs = np.empty(npan, dtype=np.int64)
        offs = np.empty(npan, dtype=np.int64)
        if a_stationary:
            # Weights larger than the whole (packed) input, which fits in L2: each thread packs every
            # pixel panel once, then takes its share of filter panels (outer loop) and runs each against
            # all pixel panels (inner), so every weight is read from memory once (the other order
            # re-reads all weights for each pixel panel).
            bpa = bscratch[th]
            for jp in range(npan):
                srcs[jp], offs[jp] = _panel_source(xflat, koff, kpack, kdim, jp * NR, min(NR, n - jp * NR), out_w,
                                                   s, row, in_place_rows, in_place_ok,
                                                   bpa[jp * kdim * NR:(jp + 1) * kdim * NR])
            o_lo, o_hi = th * nip // nthreads, (th + 1) * nip // nthreads
        else:
            # items = (pixel panel, range of filter panels): pack the panel, run the filter panels on it
            o_lo, o_hi = th * nitems // nthreads, (th + 1) * nitems // nthreads
        for o in range(o_lo, o_hi):
            if a_stationary:
                i_lo, i_hi = 0, npan
            else:
                jp = o // mchunks
                mc = o % mchunks
                srcs[0], offs[0] = _panel_source(xflat, koff, kpack, kdim, jp * NR, min(NR, n - jp * NR), out_w,
                                                 s, row, in_place_rows, in_place_ok, bp)
                i_lo, i_hi = mc * nip // mchunks, (mc + 1) * nip // mchunks
            for i in range(i_lo, i_hi):
                if a_stationary:
                    ip, jp, q = o, i, i
                else:
                    ip, q = i, 0
                _tile(ap, ip, srcs[q], offs[q], kdim, jp * NR, min(NR, n - jp * NR), fused, act, shift, has_res,
                      out2d, res2d, tile)


@njit(cache=True, parallel=True, fastmath=True)
def _conv_gemm_kblocked(xs, ap, shift, act, size, stride, nthreads, kc, ncp, res, out):
    # The implicit GEMM with K (= C*k*k) cut into blocks of kc rows, for the layers whose K runs into the
    # thousands (3x3 over 256-512 channels): there a whole pixel panel (K x NR) or filter panel (MR x K)
    # no longer fits in a core's cache, and the micro-kernel would stream both from L3/DRAM. Here a thread
    # packs, for one block of K, the B rows of about ncp pixel panels (kc x KNR floats each, in L2), then
    # runs each of its filter panels' kc x KMR slice (in L1) across them; partial sums wait in ``cacc``
    # (one KMR x KNR tile per filter panel x pixel panel) until the last block of K, whose micro-kernel
    # adds the shift and applies the activation on the way out. ap: pack_filters(W) (kc = CONV_KC).
    # Work items: (block of pixel panels, range of filter panels). Many pixel panels: the blocks are shared
    # out (each thread packs only its pixels, reads all weights once per block); few: one block, the
    # filter panels are shared out (each thread packs all pixels, reads its share of the weights).
    m, out_h, out_w = out.shape
    n = out_h * out_w
    c, hp, s, wq = xs.shape
    row = s * wq
    kdim = c * size * size
    npan = (n + KNR - 1) // KNR
    nip = ap.shape[0]
    koff = _offsets(c, size, s, hp, row, wq)
    xflat = xs.reshape(-1)
    out2d = out.reshape(m, n)
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    has_res = res.size == out.size
    res2d = res.reshape(m, n) if has_res else out2d
    njc = (npan + ncp - 1) // ncp
    nsplit = 1
    if njc >= nthreads:
        njc = (njc + nthreads - 1) // nthreads * nthreads
    else:
        nsplit = min(nip, nthreads // njc)
    per = (npan + njc - 1) // njc
    nitems = njc * nsplit
    tsz = KMR * KNR
    zero = _zeros(tsz)
    for th in prange(nthreads):
        bblk = np.empty(per * kc * KNR, dtype=np.float32)
        cacc = np.empty(((nip + nsplit - 1) // nsplit + 1) * per * tsz, dtype=np.float32)
        for item in range(th * nitems // nthreads, (th + 1) * nitems // nthreads):
            jc, sp = item // nsplit, item % nsplit
            j_lo, j_hi = min(npan, jc * per), min(npan, (jc + 1) * per)
            nj = j_hi - j_lo
            if nj <= 0:
                continue
            # filter panels shared out: by tiles (filter panel x pixel panel, filter panel major), so a
            # filter panel may be split between two items: 37 panels x 6 (512 filters on 13x13) as 111 + 111
            # tiles, not 18 + 19 panels (at 2 threads the one thread took 8% longer than the other)
            t_lo, t_hi = sp * nip * nj // nsplit, (sp + 1) * nip * nj // nsplit
            i_lo, i_hi = t_lo // nj, (t_hi + nj - 1) // nj
            for k0 in range(0, kdim, kc):
                kn = min(kc, kdim - k0)
                last = k0 + kn == kdim
                for jp in range(j_lo, j_hi):
                    jn = min(KNR, n - jp * KNR)
                    # a last panel of at most KNR_NARROW pixels is packed that wide, for the narrow tile
                    width = KNR_NARROW if jn <= KNR_NARROW else KNR
                    _gather(xflat, koff, k0, kn, jp * KNR, jn, width, out_w, s, row,
                            bblk[(jp - j_lo) * kc * KNR:(jp - j_lo) * kc * KNR + kc * width])
                for ip in range(i_lo, i_hi):
                    i0 = ip * KMR
                    # pack_filters' layout: block of K by block of K, each block panel after panel
                    a_addr = ap.ctypes.data + 4 * KMR * (k0 * nip + ip * kn)
                    # the next filter panel's block of weights (or the next block's first panel), a
                    # slice per pixel panel: they come from DRAM in the large layers
                    if ip + 1 < i_hi:
                        nxt, pf_all = a_addr + 4 * KMR * kn, 4 * KMR * kn
                    else:
                        kn2 = min(kc, max(0, kdim - k0 - kc))
                        nxt = ap.ctypes.data + 4 * KMR * ((k0 + kc) * nip + i_lo * kn2)
                        pf_all = 4 * KMR * kn2
                    pf_step = (pf_all // nj + 63) // 64 * 64
                    for jp in range(j_lo + max(0, t_lo - ip * nj), j_lo + min(nj, t_hi - ip * nj)):
                        pf0 = (jp - j_lo) * pf_step
                        if pf0 < pf_all:
                            prefetch_l2(nxt + pf0, min(pf_step, pf_all - pf0))
                        n0 = jp * KNR
                        jn = min(KNR, n - n0)
                        b_addr = bblk.ctypes.data + 4 * (jp - j_lo) * kc * KNR
                        t0 = ((ip - i_lo) * nj + (jp - j_lo)) * tsz
                        t_addr = cacc.ctypes.data + 4 * t0
                        init = zero.ctypes.data if k0 == 0 else t_addr
                        c_addr = out2d.ctypes.data + 4 * (i0 * n + n0)
                        r_addr = res2d.ctypes.data + 4 * (i0 * n + n0) if has_res else 0
                        if jn <= KNR_NARROW:
                            if last and fused and jn == KNR_NARROW:
                                microkernel_acc_fused_narrow(a_addr, b_addr, kn, init, c_addr, n,
                                                             shift.ctypes.data + 4 * i0, act, m - i0, r_addr)
                            else:
                                microkernel_acc_narrow(a_addr, b_addr, kn, init, t_addr)
                                if last:
                                    _store_tile(cacc, t0, KMR, KNR_NARROW, i0, n0, jn, act, shift, has_res, out2d,
                                                res2d)
                        elif last and fused and jn == KNR:
                            microkernel_acc_fused(a_addr, b_addr, kn, init, c_addr, n, shift.ctypes.data + 4 * i0,
                                                  act, m - i0, r_addr)
                        else:
                            microkernel_acc(a_addr, b_addr, kn, init, t_addr)
                            if last:
                                _store_tile(cacc, t0, KMR, KNR, i0, n0, jn, act, shift, has_res, out2d, res2d)


def kblocked(kdim: int, m: int, n: int) -> bool:
    """Whether ``conv_gemm`` runs a convolution (K = C*k*k B rows, m filters, n output pixels) K-blocked
    (then its weights are packed by ``pack_filters`` in KMR-row panels): always from
    config.CONV_KBLOCK_MIN_K rows; and where the K-blocked path has its own, wider tile (KMR x KNR), from
    CONV_KBLOCK_WIDE_MIN_M filters on maps of CONV_KBLOCK_WIDE_MIN_N pixels, or CONV_KBLOCK_SMALL_MAP_*
    (K, filters, pixels) on smaller maps."""
    if kdim >= config.CONV_KBLOCK_MIN_K:
        return True
    if (KMR, KNR) == (MR, NR):
        return False
    if m >= config.CONV_KBLOCK_WIDE_MIN_M and n >= config.CONV_KBLOCK_WIDE_MIN_N:
        return True
    return (kdim >= config.CONV_KBLOCK_SMALL_MAP_MIN_K and m >= config.CONV_KBLOCK_SMALL_MAP_MIN_M
            and n >= config.CONV_KBLOCK_SMALL_MAP_MIN_N)


def pack_filters(w2d: np.ndarray, n: int) -> np.ndarray:
    """(M, K) weights of a convolution with n output pixels -> the panels ``conv_gemm`` reads: gemm.pack_a
    (MR-row panels). K-blocked: KMR-row
    panels, stored block of K by block of K (config.CONV_KC rows each): block b's slices of all panels
    follow each other, so the kernel, which runs every panel over one block before the next, reads the
    weights as one sequential stream (which the hardware prefetcher follows) instead of a slice every
    K*KMR*4 bytes. Shape (panels, K*KMR) either way."""
    kdim = w2d.shape[1]
    if not kblocked(kdim, w2d.shape[0], n):
        return pack_a(w2d, MR)
    ap = pack_a(w2d, KMR)
    nip, kc = ap.shape[0], config.CONV_KC
    flat = np.empty(ap.size, dtype=np.float32)
    for k0 in range(0, kdim, kc):
        kn = min(kc, kdim - k0)
        flat[k0 * nip * KMR:(k0 + kn) * nip * KMR] = ap[:, k0 * KMR:(k0 + kn) * KMR].reshape(-1)
    return flat.reshape(ap.shape)


_NO_RES = np.zeros(0, dtype=np.float32)
_NO_SCRATCH = np.zeros((1, 1), dtype=np.float32)


def conv_gemm(xs, ap, shift, act: int, size: int, stride: int, out, res=None, bscratch=None) -> None:
    """groups=1 convolution: out = act(conv(x, W) + shift [+ res]). ``ap`` = pack_filters(W.reshape(M, -1), n)
    for the n = out_h*out_w output pixels;
    ``xs`` = the prepared input (or x[:, :, None, :] for a 1x1, stride-1, unpadded conv); ``res`` a
    residual shaped like ``out`` (a fused [shortcut]); ``bscratch`` an optional preallocated
    (threads, gemm_scratch_size(...)) buffer for the weight-stationary order (allocated here if needed)."""
    c, hp, s, wq = xs.shape
    m, out_h, out_w = out.shape
    nt = numba.get_num_threads()
    blocked = kblocked(c * size * size, m, out_h * out_w)
    mr = KMR if blocked else MR
    if ap.shape != (-(-m // mr), c * size * size * mr):
        # the kernels address ap by raw pointer: weights packed for the other path (pack_filters given
        # another pixel count) would be read out of bounds, not refused
        raise ValueError(f"conv_gemm: weights packed as {ap.shape}, this convolution reads "
                         f"{(-(-m // mr), c * size * size * mr)} (pack_filters(W, {out_h * out_w}))")
    if blocked:
        _conv_gemm_kblocked(xs, ap, shift, act, size, stride, nt, config.CONV_KC, config.CONV_KBLOCK_PANELS,
                            _NO_RES if res is None else res.reshape(-1), out)
        return
    flat_ok = size == 1 and stride == 1 and hp * wq == out_h * out_w
    need = gemm_scratch_size(c * size * size, m, out_h * out_w)
    if need and (bscratch is None or bscratch.shape[0] < nt or bscratch.shape[1] < need):
        bscratch = np.empty((nt, need), dtype=np.float32)
    # The thread count is passed in: numba.get_num_threads() inside a kernel makes it uncacheable.
    # res always goes in as a flat array, so there is one compiled specialisation either way
    # B rows read in place from many channel planes thrash the TLB once the input is large
    in_place_ok = c * size * size < config.CONV_PACK_K or xs.nbytes <= config.CONV_IN_PLACE_BYTES
    _conv_gemm(xs, ap, shift, act, size, stride, flat_ok, in_place_ok, nt, config.CONV_MIN_ITEMS, need > 0,
               _NO_SCRATCH if not need else bscratch, _NO_RES if res is None else res.reshape(-1), out)


def gemm_scratch_size(kdim: int, m: int, n: int) -> int:
    """Floats per thread the weight-stationary GEMM packs the whole input into; 0 when the usual
    order (pixel panels outermost) or K-blocking is used (config.CONV_B_STATIONARY_MAX says when)."""
    if kblocked(kdim, m, n):
        return 0
    npan = -(-n // NR)
    bbytes = 4 * kdim * npan * NR
    abytes = 4 * kdim * (-(-m // MR)) * MR
    if abytes > bbytes and bbytes <= config.CONV_B_STATIONARY_MAX:
        return kdim * npan * NR
    return 0


@njit(cache=True, parallel=True, fastmath=True)
def _connected(x, weights, shift, act, out):
    # y = act(W x + shift); a matrix-vector product is memory-bound, so a vectorised dot per row.
    kdim = x.shape[0]
    for o in prange(out.shape[0]):
        s = np.float32(0.0)
        for k in range(kdim):
            s += weights[o, k] * x[k]
        out[o] = s + shift[o]
    activate_block(out, out.shape[0], act)


def connected(x, weights, shift, act: int, out) -> None:
    """[connected]: out (outputs,) = act(W @ x + shift), W (outputs, inputs)."""
    _connected(x, weights, shift, act, out)
