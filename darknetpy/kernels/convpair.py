"""Two convolutions computed depth-first: A, then a stride-1 "same" convolution B that is A's only consumer.

The first layers of the DLA networks are a 7x7 3->16 and a 3x3 16->16 convolution at 224x224. Run one
after the other, A writes its 3.2 MB output, ``prepare_input`` reads it back into B's zero-padded copy
(another 3.3 MB) and B reads that: three passes over maps that do not fit in a core's L2, each costing
more than the copy itself because the GEMM then reads its B rows from L3 (the same 3x3 layer: 2.51 ms
on an input in L2, 2.64 ms inside the network, plus 0.25 ms of copy; Zen 4, 1 thread).

Here each thread takes a band of B's output rows and walks down it a few rows at a time (``band`` rows):
A computes the rows of its output that those B rows need straight into a small zero-padded buffer (the
thread's ``ring``, B's prepared-input layout for just those rows, in L2), and B reads them from there.
A's output map is never written and B's input is never copied; the last k-1 rows of a step move to the
top of the buffer for the next step (a carry), so A computes each of its rows once, except the k-1
rows at each thread's first step, which the neighbouring thread computes too.

Shapes: A reads its prepared input xs (C_A, Hp, S, Wq) as ``conv_gemm`` does (kernels/conv.py); A's
output and B's input and output are H x W; ring (C_B_in, band + k - 1, W + k - 1) per thread, with
C_B_in = A's filters. Both micro-kernels are conv_gemm's (``microkernel_fused``: bias and activation in
registers), run over the same pixels with the same K order: every output has the same bits as the two
layers run apart. Pixel panels lie on one output row; a row whose width is not a multiple of NR ends
with a panel overlapping the one before (its pixels computed twice, identically), so W >= NR.
"""

from __future__ import annotations

import numpy as np

from . import config
from .conv import kblocked, tap_offsets
from .gemm import FUSED_ACTS, MR, NR, microkernel_fused
from .parallel import Call, addr, f32, thread_body


def band_rows(c: int, h: int, w: int, size: int) -> int:
    """B output rows per step: as many as keep the ring within config.CONV_PAIR_RING_BYTES (at least 1)."""
    row = 4 * c * (w + size - 1)
    return max(1, min(h, config.CONV_PAIR_RING_BYTES // row - (size - 1)))


def ring_floats(c: int, h: int, w: int, size: int) -> int:
    """Floats of one thread's ring for B (size x size) over c channels of h x w: band_rows + size - 1 rows
    of w + size - 1 columns per channel."""
    return c * (band_rows(c, h, w, size) + size - 1) * (w + size - 1)


# argv words (bind_conv_pair builds them):
#   0 xs  1-4 C_A, Hp, S, Wq  5 A's filter panels  6-7 their shape  8 A's shift  9 A's filters (= C_B)
#   10 K_A  11 koff_A  12 A's act  13 B's filter panels  14-15 their shape  16 B's shift  17 B's filters
#   18 K_B  19 koff_B (offsets in the ring)  20 B's act  21 out (M_B, H, W)  22 H  23 W  24 B's size
#   25 band  26 ring scratch (threads, its row)  27 its row


@thread_body(fastmath=True)
def _conv_pair_body(th, nthreads, argv):
    h, w, size, band = argv[22], argv[23], argv[24], argv[25]
    p = (size - 1) // 2
    rows, wp = band + size - 1, w + size - 1
    plane = rows * wp
    ma, mb = argv[9], argv[17]
    ring = f32(argv[26] + 4 * th * argv[27], (ma, rows, wp))
    xrow = argv[3] * argv[4]                           # floats between A's input rows (S * Wq)
    xs_addr, ring_addr, out_addr = argv[0], ring.ctypes.data, argv[21]
    apa, lena, sha, ka, koffa, acta = argv[5], argv[7], argv[8], argv[10], argv[11], argv[12]
    apb, lenb, shb, kb, koffb, actb = argv[13], argv[15], argv[16], argv[18], argv[19], argv[20]
    nipa, nipb = argv[6], argv[14]
    y_lo, y_hi = th * h // nthreads, (th + 1) * h // nthreads
    if y_lo >= y_hi:
        return
    npc = (w + NR - 1) // NR
    # B's left and right zero padding: columns A never writes (the scratch may hold another layer's data)
    for c in range(ma):
        for r in range(rows):
            line = ring[c, r]
            for x in range(p):
                line[x] = np.float32(0.0)
                line[wp - 1 - x] = np.float32(0.0)
    for y0 in range(y_lo, y_hi, band):
        nb = min(band, y_hi - y0)
        r0 = 0
        if y0 > y_lo:
            # the previous step's last size-1 rows of A are this step's first (ring row r <-> A's row y0-p+r)
            for c in range(ma):
                for r in range(size - 1):
                    dst, src = ring[c, r], ring[c, band + r]
                    for x in range(wp):
                        dst[x] = src[x]
            r0 = size - 1
        for r in range(r0, nb + size - 1):
            ya = y0 - p + r
            if ya < 0 or ya >= h:                      # B's top or bottom zero padding
                for c in range(ma):
                    line = ring[c, r]
                    for x in range(wp):
                        line[x] = np.float32(0.0)
                continue
            for j in range(npc):
                ox = min(j * NR, w - NR)
                src = xs_addr + 4 * (ya * argv[3] * xrow + ox)
                for ip in range(nipa):
                    microkernel_fused(apa + 4 * ip * lena, src, koffa, ka,
                                      ring_addr + 4 * (ip * MR * plane + r * wp + p + ox), plane,
                                      sha + 4 * ip * MR, acta, min(MR, ma - ip * MR), 0)
        for oy in range(y0, y0 + nb):
            for j in range(npc):
                ox = min(j * NR, w - NR)
                src = ring_addr + 4 * ((oy - y0) * wp + ox)
                for ip in range(nipb):
                    microkernel_fused(apb + 4 * ip * lenb, src, koffb, kb,
                                      out_addr + 4 * (ip * MR * h * w + oy * w + ox), h * w,
                                      shb + 4 * ip * MR, actb, min(MR, mb - ip * MR), 0)


def bind_conv_pair(xs, ap_a, shift_a, act_a: int, size_a: int, stride_a: int, ap_b, shift_b, act_b: int,
                   size_b: int, out, scratch) -> Call:
    """Convolution A (prepared input ``xs``, weights ``ap_a`` = conv.pack_filters(W_A, H*W)) and then B
    (size_b x size_b, stride 1, padding (size_b-1)/2, weights ``ap_b`` likewise) into ``out`` (M_B, H, W),
    A's output never stored (see the module docstring). ``scratch``: (threads, at least ring_floats(M_A, H,
    W, size_b)) floats, a row for each thread that will run it. Both activations in gemm.FUSED_ACTS."""
    c, hp, s, wq = xs.shape
    mb, h, w = out.shape
    ma = shift_a.shape[0]
    ka, kb = c * size_a * size_a, ma * size_b * size_b
    band = band_rows(ma, h, w, size_b)
    need = ring_floats(ma, h, w, size_b)
    if (s != stride_a or hp < (h - 1) * s + size_a or w + (size_a - 1) // s > wq or size_b % 2 == 0 or w < NR
            or act_a not in FUSED_ACTS or act_b not in FUSED_ACTS or kblocked(ka, ma, h * w)
            or kblocked(kb, mb, h * w) or ap_a.shape != (-(-ma // MR), ka * MR)
            or ap_b.shape != (-(-mb // MR), kb * MR) or shift_b.shape != (mb,) or scratch.shape[1] < need):
        raise ValueError(f"conv_pair: cannot run a {size_a}x{size_a} stride-{stride_a} convolution on {xs.shape} "
                         f"then a {size_b}x{size_b} one into {out.shape} with scratch {scratch.shape}")
    f4 = np.float32
    koff_a = tap_offsets(c, size_a, s, hp, s * wq, wq)
    rows, wp = band + size_b - 1, w + size_b - 1
    koff_b = tap_offsets(ma, size_b, 1, rows, wp, wp)
    words = [addr(xs, f4), c, hp, s, wq, addr(ap_a, f4), *ap_a.shape, addr(shift_a, f4), ma, ka,
             koff_a.ctypes.data, act_a, addr(ap_b, f4), *ap_b.shape, addr(shift_b, f4), mb, kb, koff_b.ctypes.data,
             act_b, addr(out, f4), h, w, size_b, band, addr(scratch, f4), scratch.shape[1]]
    return Call(_conv_pair_body, words, (xs, ap_a, shift_a, ap_b, shift_b, out, scratch, koff_a, koff_b),
                scratch.shape[0])
