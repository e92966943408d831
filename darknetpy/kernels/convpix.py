"""Convolutions as pixel tiles: filters in the vector lanes, pixels broadcast.

``conv_gemm`` (kernels/conv.py) vectorises over NR neighbouring output pixels of one row and broadcasts
the weights. On stride-2 layers, and on stride-1 ones on the smallest maps, that shape costs more than
its FMAs: stride 2 needs a phase-split input, a 7-pixel row fills a 16-pixel panel less than half,
panels across rows are packed (a K x NR copy per panel: K = 1152 for 128 channels), and 49 pixels make
three full panels and one of a single pixel. Here the tile is PIX_MR output pixels x PIX_F filters (one
AVX-512 vector, two AVX2 ones): per tap (c, ky, kx) one vector load of PIX_F packed weights and one
broadcast FMA per pixel, the pixel's input read in place from the prepared input (``conv.prepare_input``'s
layout, at the pixel's own base + the tap's offset), so pixels need not be neighbours, nothing is
packed, and tiles run across output rows: 49 pixels are 7 tiles of 7. Which layers: config.pixel_tiles
(with the measurements).

Every output is the same sum over the same taps in the same order with the same fused multiply-adds and
the same epilogue arithmetic as ``conv_gemm``'s: the same bits. Shapes: xs (C, Hp, S, Wq) prepared
input; out (M, out_h, out_w); weights packed as (ceil(M / PIX_F), K*PIX_F) by ``pack_pixel_filters``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import config
from .conv import tap_offsets
from .gemm import FUSED_ACTS, declare_intrinsic, first_lanes, pack_a, splat
from .parallel import Call, addr, f32, i64, thread_body
from .vecir import Vec, count_loop, transpose_rows

_LANES = config.codegen_target().float_lanes
PIX_F = 16                                       # filters per tile: one AVX-512 vector, two AVX2 ones
_NV = PIX_F // _LANES
# pixels per tile, two choices (the one that wastes least of the last tile is taken per layer): 8 and 7
# with AVX-512 (8 or 7 accumulators + the weight vector of 32 registers), 6 and 5 with AVX2 (12 or 10
# accumulators + 2 weight vectors of 16). DLA maps are 7 x 2^k pixels wide: 7 divides them all.
PIX_MRS = (8, 7) if _NV == 1 else (6, 5)
MR_MAX = max(PIX_MRS)
_F32, _I64 = ir.FloatType(), ir.IntType(64)


# With AVX-512 a tile leaves the registers transposed (vecir.transpose_rows: 16 filter rows of pixels)
# by masked stores of its pixels, straight into the output planes; with AVX2 (whose masked stores are
# microcoded on AMD CPUs) it goes to a pixel-major scratch tile, which the body copies out.
DIRECT = _NV == 1


def _codegen_pixels(builder, wp_i, x_i, bases_i, koff_i, k_i, shift_i, act_i, t_i, ldt, fn, pn, mr):
    """act(shift[j] + sum_k wp[k*PIX_F + j] * x[bases[r] + koff[k]]) for mr pixels r and the PIX_F filters j:
    to t[j*ldt + r] for j < fn, r < pn (DIRECT), else to t[r*PIX_F + j] (all of them)."""
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
    ys = [v.activation(builder.fadd(acc, v.load(shift, (i % _NV) * _LANES)), act_i) for i, acc in enumerate(res)]
    if not DIRECT:
        for i, y in enumerate(ys):
            r, h = divmod(i, _NV)
            v.store(y, t, r * PIX_F + h * _LANES)
        return
    vt = ir.VectorType(_F32, _LANES)
    mvt = ir.VectorType(ir.IntType(1), _LANES)
    i32 = ir.IntType(32)
    store = declare_intrinsic(builder, f"llvm.masked.store.v{_LANES}f32.p0",
                              ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mvt]))
    cols = transpose_rows(builder, ys + [ir.Constant(vt, ir.Undefined)] * (_LANES - mr))
    mask = first_lanes(builder, builder.trunc(pn, i32), _LANES)
    for j in range(PIX_F):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, j), fn)):
            dst = builder.bitcast(v.at(t, builder.mul(ir.Constant(_I64, j), ldt)), vt.as_pointer())
            builder.call(store, [cols[j], dst, ir.Constant(i32, 4), mask])


def _pixels_intrinsic(mr: int):
    @intrinsic
    def pixels(typingctx, wp, x, bases, koff, k, shift, act, t, ldt, fn, pn):
        def codegen(context, builder, signature, args):
            _codegen_pixels(builder, *args, mr)
            return context.get_dummy_value()
        return types.void(*([types.intp] * 11)), codegen
    return pixels


_pixels_a, _pixels_b = (_pixels_intrinsic(mr) for mr in PIX_MRS)


@njit(inline="always")
def pixel_tile(mr, wp, x, bases, koff, kdim, shift, act, dst, ldt, fn, pn):
    """One tile of ``mr`` (one of PIX_MRS) pixels x PIX_F filters (``_codegen_pixels``; all arguments
    addresses or integers): the tile body for this module's kernel and for kernels/convchain.py."""
    if mr == PIX_MRS[0]:
        _pixels_a(wp, x, bases, koff, kdim, shift, act, dst, ldt, fn, pn)
    else:
        _pixels_b(wp, x, bases, koff, kdim, shift, act, dst, ldt, fn, pn)


def pixel_mr(n: int) -> int:
    """Pixels per tile for a map of n output pixels: of PIX_MRS, the one that computes fewer spare pixels in
    the last tile (the wider on a tie)."""
    a, b = PIX_MRS
    return b if -(-n // b) * b < -(-n // a) * a else a


def pack_pixel_filters(w2d: np.ndarray) -> np.ndarray:
    """(M, K) weights -> (ceil(M / PIX_F), K*PIX_F): panel q holds filters q*PIX_F.. tap by tap (zero filters
    pad the last panel)."""
    return pack_a(w2d, PIX_F)


def padded_shift(shift: np.ndarray) -> np.ndarray:
    """The filters' shifts zero-padded to whole PIX_F-filter panels: a tile loads its panel's as vectors."""
    out = np.zeros(-(-shift.shape[0] // PIX_F) * PIX_F, np.float32)
    out[:shift.shape[0]] = shift
    return out


# argv words: 0 xs  1-4 C, Hp, S, Wq  5 wp  6-7 wp's shape  8 shift (padded_shift)  9 out  10-12 M, out_h*out_w, out_w
#   13 K  14 koff  15 act  16 pixels per tile (one of PIX_MRS)  17 pixel chunks per filter panel


@thread_body(fastmath=True)
def _conv_pixels_body(th, nthreads, argv):
    c, hp, s, wq, npf, m, n, out_w, kdim, act, mr, pchunks = (argv[1], argv[2], argv[3], argv[4], argv[6],
                                                            argv[10], argv[11], argv[12], argv[13], argv[15],
                                                            argv[16], argv[17])
    xflat = f32(argv[0], (c * hp * s * wq,))
    wp = f32(argv[5], (npf, argv[7]))
    out2d = f32(argv[9], (m, n))
    koff = i64(argv[14], (kdim,))
    row = s * wq
    ntiles = (n + mr - 1) // mr
    tile = np.empty(MR_MAX * PIX_F, dtype=np.float32)
    bases = np.empty(MR_MAX, dtype=np.int64)
    nitems = npf * pchunks
    for o in range(th * nitems // nthreads, (th + 1) * nitems // nthreads):
        pc, q = o // npf, o % npf             # pixel-chunk major: a thread reads its share of the input
        f0 = q * PIX_F
        fn = min(PIX_F, m - f0)
        t_lo = pc * ntiles // pchunks
        oy, ox = divmod(t_lo * mr, out_w)          # the tile's first pixel, advanced without divisions
        for tq in range(t_lo, (pc + 1) * ntiles // pchunks):
            p0 = tq * mr
            pn = min(mr, n - p0)
            for r in range(mr):
                bases[r] = oy * s * row + ox
                if r + 1 < pn:                       # a last tile's spare pixels repeat its last one
                    ox += 1
                    if ox == out_w:
                        ox = 0
                        oy += 1
            if pn == mr:                             # the next tile's first pixel
                ox += 1
                if ox == out_w:
                    ox = 0
                    oy += 1
            dst = out2d.ctypes.data + 4 * (f0 * n + p0) if DIRECT else tile.ctypes.data
            pixel_tile(mr, wp[q].ctypes.data, xflat.ctypes.data, bases.ctypes.data, koff.ctypes.data, kdim,
                       argv[8] + 4 * f0, act, dst, n, fn, pn)
            if not DIRECT:
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
    ntiles = -(-n // mr)
    # items (chunk of pixel tiles, filter panel), chunk-major: each thread computes all filters of its
    # share of the pixels, reading only its share of the input (large maps at 2 threads: 32 x 112x112 ->
    # 64 x 56x56 0.91 ms filter-major, 0.77 so) and all weights per chunk; unless the weights are the
    # larger: then as few chunks as give the threads CONV_MIN_ITEMS items, and each weight is read once
    # or twice
    npf = wp.shape[0]
    pchunks = min(ntiles, -(-config.CONV_MIN_ITEMS // npf) if wp.nbytes > xs.nbytes else config.CONV_MIN_ITEMS)
    f4 = np.float32
    pshift = padded_shift(shift)
    words = [addr(xs, f4), c, hp, s, wq, addr(wp, f4), *wp.shape, addr(pshift, f4), addr(out, f4), m, n, out_w,
             kdim, addr(koff, np.int64), act, mr, pchunks]
    return Call(_conv_pixels_body, words, (xs, wp, pshift, out, koff))


def conv_pixels(xs, wp, shift, act: int, size: int, stride: int, out) -> None:
    """``bind_conv_pixels`` run once (tests)."""
    bind_conv_pixels(xs, wp, shift, act, size, stride, out)()
