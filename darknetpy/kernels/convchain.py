"""A chain of convolutions computed depth-first: each one the only consumer of the one before it.

The DLA networks open with a 7x7 3->16 and a 3x3 16->16 convolution at 224x224 and a 3x3 stride-2
16->32 one. Run one after the other, each 3.2 MB map is written, copied by ``prepare_input`` into the
next layer's zero-padded (for stride 2: phase-split) input, and read back: passes over maps that do
not fit in a core's L2, which also leave the GEMM reading its B rows from L3 (the stride-2 layer: 1.11 ms
on an input in cache, 1.66 ms inside the network; Zen 4, 1 thread).

Here each thread takes a band of the last layer's output rows and walks down it ``band`` rows at a
time. For each step, every earlier layer computes just the rows the next one needs into a small ring
(the next layer's prepared-input layout for those rows, in L2), first to last; the rows a step shares
with the one before it (k - s per link) are moved to the top of the ring instead of being recomputed.
Only the last layer's map is written. A thread's first step computes all its rings' rows, some of which
the neighbouring thread computes too (the halo).

Level i of the chain: M_i filters, size k_i, stride s_i, output H_i x W_i; level 0 reads its prepared
input xs (C, Hp, S, Wq) as ``conv_gemm`` does (kernels/conv.py); level i >= 1 reads ring i, (M_{i-1},
R_i, s_i, Wq_i) with Wq_i = ceil((W_{i-1} + 2p_i) / s_i), padding p_i = (k_i - 1) / 2, and ring row r
holding level i-1's output row lo_{i-1} + r. Every output is computed by conv_gemm's micro-kernel over
the same taps in the same order, with the same epilogue arithmetic: the same bits as the layers run
apart. Pixel panels lie on one output row; a row whose width is not a multiple of NR ends with a panel
overlapping the one before (its pixels computed twice, identically), so every W_i >= NR. The last level
may instead run as pixel tiles (kernels/convpix.py: filters in the vector lanes, tiles of 7 or 8 pixels
along a row, no overlap), with the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from . import config
from .conv import kblocked, tap_offsets
from .convpix import DIRECT, MR_MAX, PIX_F, padded_shift, pixel_mr, pixel_tile
from .gemm import FUSED_ACTS, MR, NR, microkernel_fused, microkernel_indirect, split_tile2
from .parallel import Call, addr, f32, thread_body


def ring_shapes(levels, band: int) -> list[tuple[int, int, int, int]]:
    """The rings (M_{i-1}, R_i, s_i, Wq_i) of levels 1..n for ``band`` rows of the last level per step.
    ``levels``: (M_i, H_i, W_i, k_i, s_i) of every level, level 0 first."""
    shapes = []
    rows = band
    for i in range(len(levels) - 1, 0, -1):
        _, _, w_in, _, _ = levels[i - 1]
        _, _, _, k, s = levels[i]
        rows = (rows - 1) * s + k               # level i-1 rows that ``rows`` rows of level i read
        shapes.append((levels[i - 1][0], rows, s, -(-(w_in + k - 1) // s)))
    return shapes[::-1]


def band_rows(levels) -> int:
    """Last-level rows per step: as many as keep the rings within config.CONV_CHAIN_RING_BYTES, but at least
    config.CONV_CHAIN_MIN_BAND (or all of them)."""
    band = levels[-1][1]
    floor = min(band, config.CONV_CHAIN_MIN_BAND)
    while band > floor and 4 * ring_floats(levels, band) > config.CONV_CHAIN_RING_BYTES:
        band -= 1
    return band


def ring_floats(levels, band: int | None = None) -> int:
    """Floats of one thread's rings (all levels') for ``band`` (default: band_rows) rows per step."""
    shapes = ring_shapes(levels, band_rows(levels) if band is None else band)
    return sum(m * r * s * wq for m, r, s, wq in shapes)


# argv words (bind_conv_chain builds them): 0 levels n+1  1 band  2 scratch (threads, its row)  3 its row
#   4 xs  5 its S  6 its Wq  7 out (M_n, H_n, W_n); then per level i, from word 8 + LEVEL_WORDS * i:
#   +0 filter panels  +1 their row length  +2 shift  +3 M  +4 K  +5 koff (into xs for level 0, its ring
#   for the others)  +6 act  +7 k  +8 s  +9 H  +10 W  +11 the ring it reads: offset in the thread's
#   scratch (floats)  +12 R  +13 Wq; then, from word 8 + LEVEL_WORDS * (n+1): the last level as pixel
#   tiles (kernels/convpix.py; 0: as the GEMM)  +1 its weights (pack_pixel_filters)  +2 their row length
#   +3 its shifts, zero-padded to whole 16-filter panels  +4 pixels per tile
LEVEL_WORDS = 14
PIXEL_WORDS = 5


@njit(inline="always")
def _level(argv, i):
    o = 8 + LEVEL_WORDS * i
    return argv[o:o + LEVEL_WORDS]


@njit(inline="always")
def _zero_padding_columns(argv, scratch, i):
    # ring i's padding columns, which no step writes (the scratch may hold another layer's data): padded
    # column j < pad or >= pad + W_{i-1} of every row, at phase j % s, position j // s
    lv, prev = _level(argv, i), _level(argv, i - 1)
    m, rows, s, wq, pad, w_in = prev[3], lv[12], lv[8], lv[13], (lv[7] - 1) // 2, prev[10]
    ring = f32(scratch + 4 * lv[11], (m * rows, s * wq))
    for q in range(m * rows):
        line = ring[q]
        for j in range(s * wq):
            if j < pad or j >= pad + w_in:
                line[(j % s) * wq + j // s] = np.float32(0.0)


@njit(inline="always")
def _carry(ring, m, plane, row, count, d):
    # rows d..d+count of each of the m channel planes (plane floats apart, rows of ``row`` floats) moved
    # to rows 0..count: always upwards, so row by row in order never overwrites a row still to move
    for q in range(m):
        for r in range(count):
            a, b = q * plane + r * row, q * plane + (r + d) * row
            for j in range(row):
                ring[a + j] = ring[b + j]


@njit(inline="always")
def _pixel_rows(argv, pix, lv, bases, y0, y1, src_base, src_row, first):
    # the last level's output rows y0..y1 as pixel tiles along each row, every filter panel of a tile in
    # turn: the same bits as its GEMM panels (kernels/convpix.py), without their overlap on rows that are
    # not a multiple of NR wide (56: 64 pixels computed) or their phase-split reads
    m, kdim, koff, act, s, h, w = lv[3], lv[4], lv[5], lv[6], lv[8], lv[9], lv[10]
    wp, wlen, pshift, mr = pix[1], pix[2], pix[3], pix[4]
    for y in range(y0, y1):
        row = (y * s - first) * src_row
        for t0 in range(0, w, mr):
            pn = min(mr, w - t0)
            for r in range(mr):
                bases[r] = row + t0 + min(r, pn - 1)
            for q in range((m + PIX_F - 1) // PIX_F):
                f0 = q * PIX_F
                pixel_tile(mr, wp + 4 * q * wlen, src_base, bases.ctypes.data, koff, kdim, pshift + 4 * f0, act,
                           argv[7] + 4 * (f0 * h * w + y * w + t0), h * w, min(PIX_F, m - f0), pn)


@thread_body(fastmath=True)
def _conv_chain_body(th, nthreads, argp):
    argv = carray(argp, (8 + LEVEL_WORDS * argp[0] + PIXEL_WORDS,))   # the words as an array, to slice by level
    nl, band = argv[0], argv[1]
    n = nl - 1
    scratch = argv[2] + 4 * th * argv[3]
    last = _level(argv, n)
    h_out = last[9]
    y_lo, y_hi = th * h_out // nthreads, (th + 1) * h_out // nthreads
    if y_lo >= y_hi:
        return
    tile = np.empty(MR * NR, dtype=np.float32)
    pix = argv[8 + LEVEL_WORDS * nl:]              # the last level as pixel tiles (pix[0] != 0)
    bases = np.empty(MR_MAX, dtype=np.int64)
    lo = np.zeros(nl, dtype=np.int64)              # this step's rows of each level: [lo, hi)
    hi = np.zeros(nl, dtype=np.int64)
    have_lo = np.full(nl, -(1 << 40), dtype=np.int64)     # the rows each level's ring (the next) holds
    have_hi = np.full(nl, -(1 << 40), dtype=np.int64)
    for i in range(1, nl):
        _zero_padding_columns(argv, scratch, i)
    for y0 in range(y_lo, y_hi, band):
        lo[n], hi[n] = y0, min(y0 + band, y_hi)
        for i in range(n, 0, -1):
            lv = _level(argv, i)
            k, s = lv[7], lv[8]
            lo[i - 1] = lo[i] * s - (k - 1) // 2
            hi[i - 1] = (hi[i] - 1) * s - (k - 1) // 2 + k
        for i in range(nl):
            lv = _level(argv, i)
            ap, alen, shift, m, kdim, koff, act = lv[0], lv[1], lv[2], lv[3], lv[4], lv[5], lv[6]
            k, s, h, w = lv[7], lv[8], lv[9], lv[10]
            # where this level's rows go: the output map (level n), else the next level's ring
            rs, rrows, rwq, rpad, dst, plane, ring = 1, 0, 0, 0, 0, 0, tile
            start = lo[i]
            if i < n:
                nxt = _level(argv, i + 1)
                rs, rrows, rwq, rpad = nxt[8], nxt[12], nxt[13], (nxt[7] - 1) // 2
                dst = scratch + 4 * nxt[11]
                plane = rrows * rs * rwq
                ring = f32(dst, (m * plane,))
                if have_hi[i] > lo[i]:
                    # rows the last step computed too: moved to the ring's top
                    _carry(ring, m, plane, rs * rwq, have_hi[i] - lo[i], lo[i] - have_lo[i])
                    start = have_hi[i]
                have_lo[i], have_hi[i] = lo[i], hi[i]
            if i == 0:
                # the prepared input: output row y's first tap is padded row y*s, rows S*Wq floats apart
                src_base, src_row, first = argv[4], argv[5] * argv[6], 0
            else:
                # ring i: level i-1's row y*s - pad at ring row y*s - pad - lo[i-1], rows s*Wq floats apart
                src_base, src_row, first = scratch + 4 * lv[11], s * lv[13], (k - 1) // 2 + lo[i - 1]
            if i == n and pix[0] != 0:
                _pixel_rows(argv, pix, lv, bases, start, hi[i], src_base, src_row, first)
                continue
            for y in range(start, hi[i]):
                if i < n and (y < 0 or y >= h):                 # the next level's top or bottom padding
                    for q in range(m):
                        for j in range(rs * rwq):
                            ring[q * plane + (y - lo[i]) * rs * rwq + j] = np.float32(0.0)
                    continue
                for jp in range((w + NR - 1) // NR):
                    ox = min(jp * NR, w - NR)
                    src = src_base + 4 * ((y * s - first) * src_row + ox)
                    for ip in range((m + MR - 1) // MR):
                        rows = min(MR, m - ip * MR)
                        a_ip, sh_ip = ap + 4 * ip * alen, shift + 4 * ip * MR
                        if i == n:
                            microkernel_fused(a_ip, src, koff, kdim, argv[7] + 4 * (ip * MR * h * w + y * w + ox),
                                              h * w, sh_ip, act, rows, 0)
                        elif rs == 1:
                            microkernel_fused(a_ip, src, koff, kdim,
                                              dst + 4 * (ip * MR * plane + (y - lo[i]) * rwq + rpad + ox), plane,
                                              sh_ip, act, rows, 0)
                        else:
                            # stride 2: pixel ox + j is padded column ox + j + pad, phase (ox + j + pad) % 2
                            microkernel_indirect(a_ip, src, koff, kdim, tile.ctypes.data)
                            row0 = dst + 4 * (ip * MR * plane + (y - lo[i]) * 2 * rwq)
                            c0 = ox + rpad
                            first_ph = row0 + 4 * ((c0 % 2) * rwq + c0 // 2)
                            other_ph = row0 + 4 * (((c0 + 1) % 2) * rwq + (c0 + 1) // 2)
                            split_tile2(tile.ctypes.data, first_ph, other_ph, plane, sh_ip, act, rows)


def bind_conv_chain(xs, convs, out, scratch, pixels=None) -> Call:
    """A chain of groups=1 convolutions, depth-first (see the module docstring). ``xs``: the first one's
    prepared input; ``convs``: per level (filter panels = conv.pack_filters(W, H*W), shift, act, size,
    stride, H, W), the first level's size/stride those ``xs`` was prepared for, the others' padding
    (size-1)/2; ``out``: the last level's output (M_n, H_n, W_n); ``scratch``: (threads, >=
    ring_floats(levels)) floats, a row for each thread that will run it. Activations in gemm.FUSED_ACTS.
    ``pixels``: the last level's weights as convpix.pack_pixel_filters packs them, to run it as pixel
    tiles (convpix.DIRECT targets only), else None."""
    c, hp, s0, wq0 = xs.shape
    levels = [(cv[1].shape[0], cv[5], cv[6], cv[3], cv[4]) for cv in convs]
    band = band_rows(levels)
    rings = [None] + ring_shapes(levels, band)
    size0, h0, w0 = convs[0][3], convs[0][5], convs[0][6]
    ok = (len(convs) >= 2 and s0 == convs[0][4] and hp >= (h0 - 1) * s0 + size0 and w0 + (size0 - 1) // s0 <= wq0
          and out.shape == levels[-1][:3] and scratch.shape[1] >= ring_floats(levels)
          and all(lv[2] >= NR for lv in levels) and all(cv[2] in FUSED_ACTS for cv in convs)
          and all(cv[3] % 2 == 1 and cv[5] == (prev[1] - 1) // cv[4] + 1 and cv[6] == (prev[2] - 1) // cv[4] + 1
                  for cv, prev in zip(convs[1:], levels)))
    words = [len(convs), band, addr(scratch, np.float32), scratch.shape[1], addr(xs, np.float32), s0, wq0,
             addr(out, np.float32)]
    keep = [xs, out, scratch]
    offset, cin = 0, c
    for i, (ap, shift, act, size, stride, h, w) in enumerate(convs):
        m, kdim = shift.shape[0], cin * size * size
        ok = ok and not kblocked(kdim, m, h * w) and ap.shape == (-(-m // MR), kdim * MR)
        if i == 0:
            koff, ring = tap_offsets(cin, size, s0, hp, s0 * wq0, wq0), (0, 0, 0)
        else:
            _, rows, rs, rwq = rings[i]
            koff, ring = tap_offsets(cin, size, rs, rows, rs * rwq, rwq), (offset, rows, rwq)
            offset += cin * rows * rs * rwq
        words += [addr(ap, np.float32), ap.shape[1], addr(shift, np.float32), m, kdim, koff.ctypes.data, act, size,
                  stride, h, w, *ring]
        keep += [ap, shift, koff]
        cin = m
    if pixels is None:
        words += [0] * PIXEL_WORDS
    else:
        m = levels[-1][0]
        npf = -(-m // PIX_F)
        ok = ok and DIRECT and pixels.shape == (npf, kdim * PIX_F)
        pshift = padded_shift(convs[-1][1])
        words += [1, addr(pixels, np.float32), pixels.shape[1], addr(pshift, np.float32), pixel_mr(levels[-1][2])]
        keep += [pixels, pshift]
    if not ok:
        raise ValueError(f"conv_chain: cannot run {[cv[3:] for cv in convs]} (size, stride, H, W) convolutions "
                         f"on {xs.shape} into {out.shape} with scratch {scratch.shape}")
    return Call(_conv_chain_body, words, keep, scratch.shape[0])
