"""Stride-2 convolutions on small maps as pixel tiles: filters in the vector lanes, pixels broadcast.

``conv_gemm`` (kernels/conv.py) vectorises over NR neighbouring output pixels of one row and broadcasts
the weights. On the small stride-2 layers (DLA-46-C's 3x3 56->28, 28->14 and 14->7) that shape costs
more than its FMAs: a 7-pixel row fills a 16-pixel panel less than half, panels across rows must be
packed (a K x NR copy per panel: K = 1152 for 128 channels), and 49 pixels make three full panels and
one of a single pixel. Here the tile is PIX_MR output pixels x PIX_F filters (one AVX-512 vector, two
AVX2 ones): per tap (c, ky, kx) one vector load of PIX_F packed weights and one broadcast FMA per
pixel, the pixel's input read in place from the prepared input (``conv.prepare_input``'s layout, at
the pixel's own base + the tap's offset) -- so pixels need not be neighbours, nothing is packed, and
the tiles run across output rows: 49 pixels are 7 tiles of 7. Measured on Zen 4, 1 thread, the layer
alone: 128 x 14x14 -> 7x7 0.249 -> 0.175 ms, 64 x 28x28 -> 14x14 0.230 -> 0.188.

Every output is the same sum over the same taps in the same order with the same fused multiply-adds and
the same epilogue arithmetic as ``conv_gemm``'s: the same bits. Shapes: xs (C, Hp, S, Wq) prepared
input; out (M, out_h, out_w); weights packed as (ceil(M / PIX_F), K*PIX_F) by ``pack_pixel_filters``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import config
from .conv import tap_offsets
from .gemm import FUSED_ACTS, pack_a, splat
from .parallel import Call, addr, f32, i64, thread_body
from .vecir import Vec, count_loop

_LANES = config.codegen_target().float_lanes
PIX_F = 16                                       # filters per tile: one AVX-512 vector, two AVX2 ones
_NV = PIX_F // _LANES
# pixels per tile, two choices (the one that wastes least of the last tile is taken per layer): 8 and 7
# with AVX-512 (8 or 7 accumulators + the weight vector of 32 registers), 6 and 5 with AVX2 (12 or 10
# accumulators + 2 weight vectors of 16). DLA maps are 7 x 2^k pixels wide: 7 divides them all.
PIX_MRS = (8, 7) if _NV == 1 else (6, 5)
_F32, _I64 = ir.FloatType(), ir.IntType(64)


def _codegen_pixels(builder, wp_i, x_i, bases_i, koff_i, k_i, shift_i, act_i, t_i, mr):
    """t[r*PIX_F + j] = act(shift[j] + sum_k wp[k*PIX_F + j] * x[bases[r] + koff[k]]) for mr pixels r."""
    v = Vec(builder, _LANES)
    w, x, t, shift = v.ptr(wp_i), v.ptr(x_i), v.ptr(t_i), v.ptr(shift_i)
    bases = builder.inttoptr(bases_i, _I64.as_pointer())
    koff = builder.inttoptr(koff_i, _I64.as_pointer())
    pix = [builder.gep(x, [builder.load(builder.gep(bases, [ir.Constant(_I64, r)]))]) for r in range(mr)]

    def step(kk, acc):
        off = builder.load(builder.gep(koff, [kk]))
        kw = builder.mul(kk, ir.Constant(_I64, PIX_F))
        wv = [v.load(w, builder.add(kw, ir.Constant(_I64, h * _LANES))) for h in range(_NV)]
        new = []
        for r in range(mr):
            xv = splat(builder, builder.load(builder.gep(pix[r], [off])), _LANES)
            for h in range(_NV):
                # conv_gemm's product and sum (weight x input, then + acc; contracted to one FMA)
                new.append(builder.fadd(acc[r * _NV + h], builder.fmul(xv, wv[h], flags=("contract",)),
                                        flags=("contract",)))
        return new

    res = count_loop(builder, k_i, [v.splat(0.0)] * (mr * _NV), step, "pk")
    for i, acc in enumerate(res):
        r, h = divmod(i, _NV)
        v.store(v.activation(builder.fadd(acc, v.load(shift, h * _LANES)), act_i), t, r * PIX_F + h * _LANES)


def _pixels_intrinsic(mr: int):
    @intrinsic
    def pixels(typingctx, wp, x, bases, koff, k, shift, act, tile):
        def codegen(context, builder, signature, args):
            _codegen_pixels(builder, *args, mr)
            return context.get_dummy_value()
        return types.void(*([types.intp] * 8)), codegen
    return pixels


_pixels_a, _pixels_b = (_pixels_intrinsic(mr) for mr in PIX_MRS)


def pixel_mr(n: int) -> int:
    """Pixels per tile for a map of n output pixels: of PIX_MRS, the one that computes fewer spare pixels in
    the last tile (the wider on a tie)."""
    a, b = PIX_MRS
    return b if -(-n // b) * b < -(-n // a) * a else a


def pack_pixel_filters(w2d: np.ndarray) -> np.ndarray:
    """(M, K) weights -> (ceil(M / PIX_F), K*PIX_F): panel q holds filters q*PIX_F.. tap by tap (zero filters
    pad the last panel)."""
    return pack_a(w2d, PIX_F)


# argv words: 0 xs  1-4 C, Hp, S, Wq  5 wp  6-7 wp's shape  8 shift  9 out  10-12 M, out_h*out_w, out_w
#   13 K  14 koff  15 act  16 pixels per tile (one of PIX_MRS)  17 pixel chunks per filter panel


@thread_body(fastmath=True)
def _conv_pixels_body(th, nthreads, argv):
    c, hp, s, wq, npf, m, n, out_w, kdim, act, mr, pchunks = (argv[1], argv[2], argv[3], argv[4], argv[6],
                                                            argv[10], argv[11], argv[12], argv[13], argv[15],
                                                            argv[16], argv[17])
    xflat = f32(argv[0], (c * hp * s * wq,))
    wp = f32(argv[5], (npf, argv[7]))
    shift = f32(argv[8], (m,))
    out2d = f32(argv[9], (m, n))
    koff = i64(argv[14], (kdim,))
    row = s * wq
    ntiles = (n + mr - 1) // mr
    tile = np.empty(8 * PIX_F, dtype=np.float32)
    fshift = np.empty(PIX_F, dtype=np.float32)
    bases = np.empty(8, dtype=np.int64)
    nitems = npf * pchunks
    for o in range(th * nitems // nthreads, (th + 1) * nitems // nthreads):
        q, pc = o // pchunks, o % pchunks
        f0 = q * PIX_F
        fn = min(PIX_F, m - f0)
        for j in range(PIX_F):                     # the panel's shifts (zero for its padding filters)
            fshift[j] = shift[f0 + j] if j < fn else np.float32(0.0)
        for tq in range(pc * ntiles // pchunks, (pc + 1) * ntiles // pchunks):
            p0 = tq * mr
            pn = min(mr, n - p0)
            for r in range(mr):
                p = p0 + min(r, pn - 1)               # a last tile's spare pixels repeat its last one
                oy = p // out_w
                bases[r] = oy * s * row + (p - oy * out_w)
            if mr == PIX_MRS[0]:
                _pixels_a(wp[q].ctypes.data, xflat.ctypes.data, bases.ctypes.data, koff.ctypes.data, kdim,
                          fshift.ctypes.data, act, tile.ctypes.data)
            else:
                _pixels_b(wp[q].ctypes.data, xflat.ctypes.data, bases.ctypes.data, koff.ctypes.data, kdim,
                          fshift.ctypes.data, act, tile.ctypes.data)
            # the tile is pixel-major; the output is filter planes: pn floats per filter
            for j in range(fn):
                orow = out2d[f0 + j, p0:p0 + pn]
                for r in range(pn):
                    orow[r] = tile[r * PIX_F + j]


def bind_conv_pixels(xs, wp, shift, act: int, size: int, stride: int, out) -> Call:
    """The convolution out = act(conv(x, W) + shift) as pixel tiles, bound to its arrays (config.pixel_tiles
    says which layers). ``xs``: the prepared input (conv.prepare_input), ``wp`` =
    pack_pixel_filters(W.reshape(M, -1))."""
    c, hp, s, wq = xs.shape
    m, out_h, out_w = out.shape
    n, kdim = out_h * out_w, c * size * size
    koff = tap_offsets(c, size, s, hp, s * wq, wq)
    if wp.shape != (-(-m // PIX_F), kdim * PIX_F) or shift.shape != (m,):
        raise ValueError(f"conv_pixels: weights {wp.shape} / taps {koff.shape} / shift {shift.shape} do not fit "
                         f"{m} filters of {kdim} taps")
    if s != stride or hp < (out_h - 1) * stride + size or out_w + (size - 1) // s > wq:
        raise ValueError(f"conv_pixels: prepared input {xs.shape} does not fit a {size}x{size} stride-{stride} "
                         f"convolution to {out.shape}")
    if act not in FUSED_ACTS:
        raise ValueError(f"conv_pixels: activation {act} is not fused by the tile's epilogue")
    mr = pixel_mr(n)
    ntiles, npf = -(-n // mr), wp.shape[0]
    # enough items for the threads when filter panels are few (DLA-46-C's 56 -> 28: 2 panels of 112 tiles)
    pchunks = min(ntiles, max(1, -(-config.CONV_MIN_ITEMS // npf)))
    f4 = np.float32
    words = [addr(xs, f4), c, hp, s, wq, addr(wp, f4), *wp.shape, addr(shift, f4), addr(out, f4), m, n, out_w,
             kdim, addr(koff, np.int64), act, mr, pchunks]
    return Call(_conv_pixels_body, words, (xs, wp, shift, out, koff))


def conv_pixels(xs, wp, shift, act: int, size: int, stride: int, out) -> None:
    """``bind_conv_pixels`` run once (tests)."""
    bind_conv_pixels(xs, wp, shift, act, size, stride, out)()
