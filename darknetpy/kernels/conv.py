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
  offsets. The epilogue adds the folded-BN shift and applies the activation. With a 2x2 stride-2
  [maxpool] after it (``pooled``), pairs of tiles from adjacent output rows are pooled instead of stored.
* grouped and depthwise convolutions live in ``depthwise.py``.

Results differ from darknet's summation order by rounding only (``../shared/specs/darknet.md`` §9);
``exact.py`` holds the bit-exact versions. Shapes: x (C, H, W); out (M, out_h, out_w); weights OIHW.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from . import config
from .activation import activate_block
from .parallel import Call, addr, f32, i64, thread_body
from .vecir import FLT_MAX, split_row2
from .gemm import (FUSED_ACTS, KMR, KNR, KNR_NARROW, MR, NR, copy_runs16, gather_rows16, microkernel_acc,
                   microkernel_acc_fused, microkernel_acc_fused_narrow, microkernel_acc_narrow, microkernel_cols,
                   microkernel_fused, microkernel_indirect, pack_a, pool_tiles, prefetch_l2, prefetch_rows_w)


def input_shape(c: int, h: int, w: int, pad: int, stride: int) -> tuple[int, int, int, int]:
    """Shape of the padded, phase-split buffer ``prepare_input`` fills."""
    return c, h + 2 * pad, stride, -(-(w + 2 * pad) // stride)


@thread_body()
def _prepare_input_body(th, nthreads, argv):
    # argv: x, C, H, W, pad, xs, Hp, S, Wq. Thread th fills its share of the channels.
    c, h, w, pad = argv[1], argv[2], argv[3], argv[4]
    hp, s, wq = argv[6], argv[7], argv[8]
    x = f32(argv[0], (c, h, w))
    xs = f32(argv[5], (c, hp, s, wq))
    for ch in range(th * c // nthreads, (th + 1) * c // nthreads):
        for y in range(hp):
            iy = y - pad
            if iy < 0 or iy >= h:
                for p in range(s):
                    for j in range(wq):
                        xs[ch, y, p, j] = np.float32(0.0)
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


def bind_prepare_input(x, pad: int, xs) -> Call:
    """``prepare_input`` bound to its arrays (a plan step calls it many times)."""
    c, h, w = x.shape
    if xs.shape[0] != c or xs.shape[1] != h + 2 * pad:
        raise ValueError(f"prepare_input: buffer {xs.shape} does not fit input {x.shape} with pad {pad}")
    return Call(_prepare_input_body, [addr(x, np.float32), c, h, w, pad, addr(xs, np.float32), *xs.shape[1:]],
                (x, xs))


def prepare_input(x, pad: int, xs) -> None:
    """Fill xs (C, Hp, stride, Wq), see the module docstring; any margin beyond the image is zeroed."""
    bind_prepare_input(x, pad, xs)()


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
        if has_res:
            # one pass, so that the residual may be the output itself (a fused project conv's tile)
            rrow = res2d[i0 + r, n0:n0 + jn]
            for j in range(jn):
                orow[j] = (tile[t0 + r * nr + j] + sh) + rrow[j]
        else:
            for j in range(jn):
                orow[j] = tile[t0 + r * nr + j] + sh
        activate_block(orow, jn, act)


# AVX-512 (k-mask stores): panels across output rows are copied run by run (copy_runs16); on AVX2 they
# are gathered (gather_rows16), since AVX2's masked store is microcoded on AMD CPUs. yolov2-tiny's 3x3
# 1024->1024 13x13, Xeon, packing: 1.59 ms of 21.4 with gathers -> 0.18 of 18.4 with runs (1 thread), 0.53 -> 0.27 (2).
MASKED_RUNS = config.codegen_target().float_lanes == 16


def tap_offsets(c: int, size: int, s: int, hp: int, row: int, wq: int) -> np.ndarray:
    """koff[k] for k = (c, ky, kx): offset of that tap from a pixel's base in the prepared input
    (channel planes hp*row floats apart, rows ``row``, column phase kx % s at (kx % s)*wq)."""
    col = np.array([(kx % s) * wq + kx // s for kx in range(size)], dtype=np.int64)
    base = np.arange(c, dtype=np.int64)[:, None] * (hp * row) + np.arange(size, dtype=np.int64)[None, :] * row
    return np.ascontiguousarray((base[:, :, None] + col[None, None, :]).reshape(-1))


# argv words of the two GEMM bodies, in this order (bind_conv_gemm builds them)
#   0 xs  1-4 C, Hp, S, Wq  5 ap  6-7 ap's shape  8 shift  9 out  10-12 M, out_h*out_w, out_w
#   13 res (= out when there is none)  14 has_res  15 K  16 koff  17 act
#   conv_gemm:  18 kpack  19 in_place_rows  20 in_place_ok  21 (free)  22 a_stationary  23 bscratch  24 its row
#               25 pool (a 2x2 stride-2 [maxpool] fused: 26 is its output, (M, out_h/2, out_w/2))  26 pooled
#               27 prefetch the next item's output lines (config.CONV_PREFETCH_OUT)
#               28 project (a second 1x1 stride-1 convolution whose output is the residual, computed per
#               tile into ``out`` first; 0: none)  29 its input (K_p, N)  30 its filter panels  31 their row
#               length  32 its shift  33 K_p  34 its koff  35 its act  36 its kpack  37 its in_place_ok
#   K-blocked:  18 kc  19 ncp (pixel panels per block)  20 zero tile


@njit(inline="always")
def _gemm_words(argv):
    # words 0-17, which both GEMM bodies read: (flat prepared input, S, Wq, filter panels, M, N, out_w,
    # shift, out (M, N), res (M, N), has_res, K, koff, act)
    c, hp, s, wq, m, n, kdim = argv[1], argv[2], argv[3], argv[4], argv[10], argv[11], argv[15]
    return (f32(argv[0], (c * hp * s * wq,)), s, wq, argv[6], m, n, argv[12], f32(argv[8], (m,)),
            f32(argv[9], (m, n)), f32(argv[13], (m, n)), argv[14] != 0, kdim, i64(argv[16], (kdim,)), argv[17])


@thread_body(fastmath=True)
def _conv_gemm_body(th, nthreads, argv):
    # xs: (C, Hp, S, Wq) prepared input (S == stride); out: (M, out_h, out_w); res: a residual shaped like
    # out added before the activation (a fused [shortcut])
    xflat, s, wq, nip, m, n, out_w, shift, out2d, res2d, has_res, kdim, koff, act = _gemm_words(argv)
    ap = f32(argv[5], (nip, argv[7]))
    kpack = i64(argv[18], (kdim,))                 # the same offsets for a packed B panel
    in_place_rows, in_place_ok, a_stationary = argv[19] != 0, argv[20] != 0, argv[22] != 0
    row = s * wq                                  # floats between two input rows
    npan = (n + NR - 1) // NR
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    tile = np.empty(MR * NR, dtype=np.float32)
    bp = np.empty(kdim * NR, dtype=np.float32)
    srcs = np.empty(max(npan, 2), dtype=np.int64)
    offs = np.empty(max(npan, 2), dtype=np.int64)
    # a fused project conv (words 28-37; K_p = 0 and empty arrays without one)
    project, kp, act_p = argv[28] != 0, argv[33], argv[35]
    xflat_p, ap_p = f32(argv[29], (kp * n,)), f32(argv[30], (nip if project else 0, argv[31]))
    shift_p, koff_p, kpack_p = f32(argv[32], (m if project else 0,)), i64(argv[34], (kp,)), i64(argv[36], (kp,))
    fused_p = act_p == 0 or act_p == 3 or act_p == 11 or act_p == 14
    bp_p = np.empty(kp * NR, dtype=np.float32)
    if argv[25] != 0:
        _pooled_items(th, nthreads, argv[26], ap, xflat, koff, kpack, kdim, m, n, out_w, s, row, in_place_ok,
                      shift, act, tile, bp)
        return
    if a_stationary:
        # Weights larger than the whole (packed) input, which fits in L2: each thread packs every
        # pixel panel once, then takes its share of filter panels (outer loop) and runs each against
        # all pixel panels (inner), so every weight is read from memory once (the other order
        # re-reads all weights for each pixel panel).
        bpa = f32(argv[23] + 4 * th * argv[24], (argv[24],))
        for jp in range(npan):
            srcs[jp], offs[jp] = _panel_source(xflat, koff, kpack, kdim, jp * NR, min(NR, n - jp * NR), out_w,
                                               s, row, in_place_rows, in_place_ok,
                                               bpa[jp * kdim * NR:(jp + 1) * kdim * NR])
        o_lo, o_hi = th * nip // nthreads, (th + 1) * nip // nthreads
    else:
        # The tiles (pixel panel jp, filter panel ip), jp-major, split evenly: thread th takes tiles
        # [u_lo, u_hi), so its share ends in the middle of a pixel panel when the panels do not divide
        # evenly (13 panels of a 14x14 map: 6.5 each, not 6 and 7); that panel is packed by both threads.
        # For each pixel panel it touches (o): pack it, run its filter panels of the share on it.
        u_lo, u_hi = th * npan * nip // nthreads, (th + 1) * npan * nip // nthreads
        o_lo, o_hi = u_lo // nip, (u_hi + nip - 1) // nip if u_hi > u_lo else u_lo // nip
    for o in range(o_lo, o_hi):
        if a_stationary:
            i_lo, i_hi = 0, npan
        else:
            jp = o
            srcs[0], offs[0] = _panel_source(xflat, koff, kpack, kdim, jp * NR, min(NR, n - jp * NR), out_w,
                                             s, row, in_place_rows, in_place_ok, bp)
            if project:
                srcs[1], offs[1] = _panel_source(xflat_p, koff_p, kpack_p, kp, jp * NR, min(NR, n - jp * NR), out_w,
                                                 1, out_w, True, argv[37] != 0, bp_p)
            i_lo, i_hi = max(0, u_lo - jp * nip), min(nip, u_hi - jp * nip)
            if argv[27] != 0 and o + 1 < o_hi:            # the next panel's output lines (CONV_PREFETCH_OUT)
                r1 = min(m, min(nip, u_hi - (jp + 1) * nip) * MR)
                prefetch_rows_w(out2d.ctypes.data + 4 * (jp + 1) * NR, r1, 4 * n)
        for i in range(i_lo, i_hi):
            if a_stationary:
                ip, jp, q = o, i, i
            else:
                ip, q = i, 0
            # with a project conv, its tile into the output first, then this conv's, added to it as the
            # residual (res2d is out2d): the same bits as the two convs run apart with the [shortcut] fused.
            # One _tile call site in a loop (each inlined copy of the micro-kernels costs compile time).
            for second in range(0 if project else 1, 2):
                if second:
                    a_, src, off, kk, fu, ac, sh, hr = ap, srcs[q], offs[q], kdim, fused, act, shift, has_res
                else:
                    a_, src, off, kk, fu, ac, sh, hr = ap_p, srcs[1], offs[1], kp, fused_p, act_p, shift_p, False
                _tile(a_, ip, src, off, kk, jp * NR, min(NR, n - jp * NR), fu, ac, sh, hr, out2d, res2d, tile)


@njit(inline="always")
def _pooled_items(th, nthreads, pooled_addr, ap, xflat, koff, kpack, kdim, m, n, out_w, s, row, in_place_ok,
                  shift, act, tile, bp):
    # conv_gemm with the 2x2 stride-2 [maxpool] after it: items are (pair of output rows, NR columns);
    # each filter panel's two tiles (the rows' same columns) are pooled as they leave the micro-kernel,
    # so the full-size map is never written (the first layers of the YOLOs and Tiny Darknet: 3 input
    # channels, the map of 16 filters at full resolution is 11 MB at 416x416 and the pool read it back
    # from DRAM). The tiles are computed exactly as the unpooled path computes them, and pooled with
    # [maxpool]'s comparisons in its order: the same bits as the two layers run apart.
    out_h = n // out_w
    ph, pw = out_h // 2, out_w // 2
    pooled = f32(pooled_addr, (m, ph * pw))
    nip = ap.shape[0]
    npc = (out_w + NR - 1) // NR
    nitems = ph * npc
    tile1 = np.empty(MR * NR, dtype=np.float32)
    bp1 = np.empty(kdim * NR, dtype=np.float32)
    edge = np.empty((2, NR), dtype=np.float32)
    for o in range(th * nitems // nthreads, (th + 1) * nitems // nthreads):
        py, c0 = o // npc, (o % npc) * NR
        jn = min(NR, out_w - c0)
        n0 = 2 * py * out_w + c0
        src0, off0 = _panel_source(xflat, koff, kpack, kdim, n0, jn, out_w, s, row, False, in_place_ok, bp)
        src1, off1 = _panel_source(xflat, koff, kpack, kdim, n0 + out_w, jn, out_w, s, row, False, in_place_ok,
                                   bp1)
        for ip in range(nip):
            i0 = ip * MR
            rows = min(MR, m - i0)
            a = ap.ctypes.data + 4 * ip * ap.shape[1]
            if jn == NR:
                microkernel_indirect(a, src0, off0, kdim, tile.ctypes.data)
                microkernel_indirect(a, src1, off1, kdim, tile1.ctypes.data)
                pool_tiles(tile.ctypes.data, tile1.ctypes.data,
                           pooled.ctypes.data + 4 * (i0 * ph * pw + py * pw + c0 // 2), ph * pw,
                           shift.ctypes.data + 4 * i0, act, rows)
                continue
            # a last, narrower panel: the unpooled path's kernel and scalar epilogue (_store_tile), then
            # the same comparisons
            microkernel_cols(a, src0, kdim, tile.ctypes.data, jn)
            microkernel_cols(a, src1, kdim, tile1.ctypes.data, jn)
            for r in range(rows):
                sh = shift[i0 + r]
                for j in range(jn):
                    edge[0, j] = tile[r * NR + j] + sh
                    edge[1, j] = tile1[r * NR + j] + sh
                activate_block(edge[0], jn, act)
                activate_block(edge[1], jn, act)
                prow = pooled[i0 + r, py * pw + c0 // 2:py * pw + c0 // 2 + jn // 2]
                for j in range(jn // 2):
                    mx = -FLT_MAX
                    for y in range(2):
                        for x in range(2):
                            v = edge[y, 2 * j + x]
                            mx = v if v > mx else mx
                    prow[j] = mx


@thread_body(fastmath=True)
def _conv_gemm_kblocked_body(th, nthreads, argv):
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
    xflat, s, wq, nip, m, n, out_w, shift, out2d, res2d, has_res, kdim, koff, act = _gemm_words(argv)
    ap_addr, kc, ncp, zero_addr = argv[5], argv[18], argv[19], argv[20]
    row = s * wq
    npan = (n + KNR - 1) // KNR
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    njc = (npan + ncp - 1) // ncp
    nsplit = 1
    if njc >= nthreads:
        njc = (njc + nthreads - 1) // nthreads * nthreads
    else:
        nsplit = min(nip, nthreads // njc)
    per = (npan + njc - 1) // njc
    nitems = njc * nsplit
    tsz = KMR * KNR
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
                a_addr = ap_addr + 4 * KMR * (k0 * nip + ip * kn)
                # the next filter panel's block of weights (or the next block's first panel), a
                # slice per pixel panel: they come from DRAM in the large layers
                if ip + 1 < i_hi:
                    nxt, pf_all = a_addr + 4 * KMR * kn, 4 * KMR * kn
                else:
                    kn2 = min(kc, max(0, kdim - k0 - kc))
                    nxt = ap_addr + 4 * KMR * ((k0 + kc) * nip + i_lo * kn2)
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
                    init = zero_addr if k0 == 0 else t_addr
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


def bind_conv_gemm(xs, ap, shift, act: int, size: int, stride: int, out, res=None, bscratch=None, pooled=None,
                   project=None):
    """``conv_gemm`` bound to its arrays: a callable that runs it (a plan step calls it many times).
    ``bscratch`` is then required when gemm_scratch_size(...) is not 0: (threads, that many floats), for
    as many threads as will ever run it. ``pooled``: the (M, out_h/2, out_w/2) output of a 2x2 stride-2
    [maxpool] after the convolution, computed instead of ``out`` (which is not written; see
    ``can_pool``). ``project``: (xp, ap_p, shift_p, act_p), a second, 1x1 stride-1 unpadded convolution
    act_p(W_p xp + shift_p) of xp (K_p, out_h, out_w) with as many filters, whose output is the residual:
    out = act(conv(x) + shift + act_p(W_p xp + shift_p)), each tile of the second computed into ``out``
    just before the first's (``res`` must then be None; the plain order only, see ``can_pool``)."""
    c, hp, s, wq = xs.shape
    m, out_h, out_w = out.shape
    n = out_h * out_w
    kdim = c * size * size
    blocked = kblocked(kdim, m, n)
    mr = KMR if blocked else MR
    if ap.shape != (-(-m // mr), kdim * mr):
        # the kernels address ap by raw pointer: weights packed for the other path (pack_filters given
        # another pixel count) would be read out of bounds, not refused
        raise ValueError(f"conv_gemm: weights packed as {ap.shape}, this convolution reads "
                         f"{(-(-m // mr), kdim * mr)} (pack_filters(W, {n}))")
    if s != stride or hp < (out_h - 1) * stride + size or out_w + (size - 1) // s > wq or shift.shape != (m,):
        raise ValueError(f"conv_gemm: prepared input {xs.shape} / shift {shift.shape} do not fit a {size}x{size} "
                         f"stride-{stride} convolution to {out.shape}")
    if res is not None and res.size != out.size:
        raise ValueError(f"conv_gemm: residual of {res.size} floats for an output of {out.size}")
    f4 = np.float32
    koff = tap_offsets(c, size, s, hp, s * wq, wq)
    words = [addr(xs, f4), c, hp, s, wq, addr(ap, f4), *ap.shape, addr(shift, f4), addr(out, f4), m, n, out_w,
             addr(out if res is None else res, f4), res is not None, kdim, koff.ctypes.data, act]
    keep = [xs, ap, shift, out, res, koff]
    if blocked:
        # the K-blocked body computes neither (its tiles are summed block by block): refused, not ignored
        if pooled is not None:
            raise ValueError(f"conv_gemm: cannot pool this convolution's output ({out.shape}): it is K-blocked")
        if project is not None:
            raise ValueError(f"conv_gemm: cannot add a project convolution to this one ({xs.shape} -> {out.shape}): "
                             "it is K-blocked")
        zero = np.zeros(KMR * KNR, dtype=np.float32)
        return Call(_conv_gemm_kblocked_body, words + [config.CONV_KC, config.CONV_KBLOCK_PANELS, zero.ctypes.data],
                    keep + [zero])
    kpack = np.arange(kdim, dtype=np.int64) * NR
    nip = ap.shape[0]
    # B rows read in place from many channel planes thrash the TLB once the input is large
    in_place_ok = kdim < config.CONV_PACK_K or xs.nbytes <= config.CONV_IN_PLACE_BYTES
    flat_ok = size == 1 and stride == 1 and hp * wq == n
    need = gemm_scratch_size(kdim, m, n)
    if need:
        if bscratch is None:
            bscratch = np.empty((numba.get_num_threads(), need), dtype=np.float32)
        if bscratch.shape[1] < need:
            raise ValueError(f"conv_gemm: scratch {bscratch.shape} < (threads, {need})")
    if pooled is not None and (need or res is not None or act not in FUSED_ACTS or out_h % 2 or out_w % 2
                               or pooled.shape != (m, out_h // 2, out_w // 2)):
        raise ValueError(f"conv_gemm: cannot pool this convolution's output ({out.shape}, act {act}) into "
                         f"{pooled.shape}")
    words += [kpack.ctypes.data, flat_ok, in_place_ok, 0, need > 0,
              addr(bscratch, f4) if need else 0, bscratch.shape[1] if need else 0,
              pooled is not None, 0 if pooled is None else addr(pooled, f4), config.CONV_PREFETCH_OUT]
    keep.append(pooled)
    if project is None:
        words += [0, addr(out, f4), addr(ap, f4), 0, addr(shift, f4), 0, kpack.ctypes.data, 0, kpack.ctypes.data, 0]
    else:
        xp, ap_p, shift_p, act_p = project
        kp = xp.shape[0]
        if (need or pooled is not None or res is not None or xp.shape != (kp, out_h, out_w)
                or ap_p.shape != (nip, kp * MR) or shift_p.shape != (m,)):
            raise ValueError(f"conv_gemm: cannot add a project convolution of {xp.shape} with weights {ap_p.shape} "
                             f"to this one ({xs.shape} -> {out.shape}{', pooled' if pooled is not None else ''}"
                             f"{', with a residual' if res is not None else ''})")
        koff_p = np.arange(kp, dtype=np.int64) * n       # 1x1 stride 1: B row k is channel plane k
        kpack_p = np.arange(kp, dtype=np.int64) * NR
        words[13:15] = [addr(out, f4), True]                 # the residual is the project's tile in ``out``
        words += [1, addr(xp, f4), addr(ap_p, f4), ap_p.shape[1], addr(shift_p, f4), kp, koff_p.ctypes.data, act_p,
                  kpack_p.ctypes.data, kp < config.CONV_PACK_K or xp.nbytes <= config.CONV_IN_PLACE_BYTES]
        keep += [xp, ap_p, shift_p, koff_p, kpack_p]
    # thread th packs into row th of bscratch: never more threads than rows
    return Call(_conv_gemm_body, words, keep + [kpack, bscratch], bscratch.shape[0] if need else 1 << 30)


def conv_gemm(xs, ap, shift, act: int, size: int, stride: int, out, res=None, bscratch=None) -> None:
    """groups=1 convolution: out = act(conv(x, W) + shift [+ res]). ``ap`` = pack_filters(W.reshape(M, -1), n)
    for the n = out_h*out_w output pixels;
    ``xs`` = the prepared input (or x[:, :, None, :] for a 1x1, stride-1, unpadded conv); ``res`` a
    residual shaped like ``out`` (a fused [shortcut]); ``bscratch`` an optional preallocated
    (threads, gemm_scratch_size(...)) buffer for the weight-stationary order (allocated here if needed)."""
    bind_conv_gemm(xs, ap, shift, act, size, stride, out, res, bscratch)()


def can_pool(kdim: int, m: int, n: int) -> bool:
    """Whether ``conv_gemm`` (K = C*k*k B rows, m filters, n output pixels) can compute the 2x2 stride-2
    max-pool of its output instead of the output (bind_conv_gemm's ``pooled``; the map even-sized, the
    activation one of gemm.FUSED_ACTS, no residual): on the plain order, not K-blocked or
    weight-stationary."""
    return not kblocked(kdim, m, n) and not gemm_scratch_size(kdim, m, n)


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


@thread_body(fastmath=True)
def _connected_body(th, nthreads, argv):
    # argv: x, K, weights, outputs, shift, act, out. y = act(W x + shift) for this thread's share of the
    # outputs; a matrix-vector product is memory-bound, so a vectorised dot per row.
    kdim, nout, act = argv[1], argv[3], argv[5]
    x = f32(argv[0], (kdim,))
    weights = f32(argv[2], (nout, kdim))
    shift = f32(argv[4], (nout,))
    out = f32(argv[6], (nout,))
    lo, hi = th * nout // nthreads, (th + 1) * nout // nthreads
    for o in range(lo, hi):
        s = np.float32(0.0)
        for k in range(kdim):
            s += weights[o, k] * x[k]
        out[o] = s + shift[o]
    activate_block(out[lo:hi], hi - lo, act)


def bind_connected(x, weights, shift, act: int, out) -> Call:
    """``connected`` bound to its arrays."""
    nout, kdim = weights.shape
    if x.size != kdim or out.size != nout or shift.size != nout:
        raise ValueError(f"connected: {weights.shape} weights, input of {x.size}, output of {out.size}")
    f4 = np.float32
    return Call(_connected_body, [addr(x, f4), kdim, addr(weights, f4), nout, addr(shift, f4), act, addr(out, f4)],
                (x, weights, shift, out))


def connected(x, weights, shift, act: int, out) -> None:
    """[connected]: out (outputs,) = act(W @ x + shift), W (outputs, inputs)."""
    bind_connected(x, weights, shift, act, out)()
