"""Grouped and depthwise convolutions as direct convolutions over whole output maps.

Each work item (a group) first lays its input channels out as zero-padded *phase planes*, in a buffer of
its own that stays in cache::

    xs[c, py, px, i, j] = x[c, i*s + py - pad, j*s + px - pad]      shape (C, s, s, Hq, Wq)

so output pixel (oy, ox) under tap (ky, kx) reads plane (ky % s, kx % s) at (oy + ky//s, ox + kx//s): a
stride-1 access for any stride. Every (input channel, tap) is then one offset from an output pixel's
base, and ``dw_plane`` computes an output channel row by row, a vector of pixels at a time:

    out[oy, j] = act(shift + sum_k w[k] * planes[oy*Wq + off[k] + j])

memory-bound work at full vector width, written as vector IR (LLVM does not vectorise the same loop: it
reads ten streams it cannot prove distinct from the one it writes). Stride 2 instead keeps one zero-padded
plane per channel, which ``dw_plane2`` reads two vectors per tap, keeping their even lanes: a plain row
copy instead of a four-way split. Depthwise convolutions (HarDNet: 36 layers) and grouped ones with 2-8
channels per group (DLA-X: 32 groups) are far too small for GEMM tiles.

Shapes: x (C, H, W); weights (M, C/groups, k, k); out (M, out_h, out_w).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .activation import activate_block, activate_scalar
from .gemm import declare_intrinsic, first_lanes
from .parallel import Call, Calls, addr, f32, i64, thread_body
from .vecir import LANES, WIDE, Vec, loop, loop_carry, transpose_rows


def planes_shape(c: int, h: int, w: int, pad: int, stride: int, size: int) -> tuple[int, int, int, int, int]:
    """(C, s, s, Hq, Wq) phase planes covering every tap of every output pixel (plus one spare row so
    the garbage columns of the last output row stay inside the buffer). Stride 2 keeps one zero-padded
    plane per channel, (C, 1, 1, H + 2*pad + 1, W + 2*pad): ``dw_plane2`` picks the even columns out of
    pairs of vectors, so the input is copied once, row by row, instead of split into four phases (on
    HarDNet's 28x28 maps the split cost more than the convolution)."""
    if stride == 2:
        return c, 1, 1, h + 2 * pad + 1, w + 2 * pad
    out_h = (h + 2 * pad - size) // stride + 1
    out_w = (w + 2 * pad - size) // stride + 1
    hq = out_h + (size - 1) // stride + 1
    wq = max(out_w + (size - 1) // stride, -(-(w + 2 * pad) // stride))
    return c, stride, stride, hq, wq


@njit(cache=True, inline="always")
def _copy_phase_row(src, w, px, pad, s, dst):
    # dst[j] = src[j*s + px - pad] where that lies in [0, w), else 0
    wq = dst.shape[0]
    j0 = min(wq, max(0, (pad - px + s - 1) // s))
    j1 = min(wq, max(j0, (w - 1 + pad - px) // s + 1))
    for j in range(j0):
        dst[j] = np.float32(0.0)
    # views indexed from 0 by the loop variable: numba then drops its negative-index wraparound check
    n = j1 - j0
    a = j0 * s + px - pad
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


@njit(cache=True, inline="always")
def _prepare_channel(x, ch, pad, dst5, dc):
    # dst5[dc] (s, s, Hq, Wq) <- the phase planes of input channel ch
    h, w = x.shape[1], x.shape[2]
    s, hq, wq = dst5.shape[1], dst5.shape[3], dst5.shape[4]
    if s == 1:
        # one plane (stride 1, or stride 2 read by dw_plane2): rows copied through a view at the padding
        # offset (the general loop below, with its per-row phase views, costs ~4x as much: 0.079 -> 0.022
        # ms for 132 x 28x28 on a Sapphire Rapids Xeon)
        p = dst5[dc, 0, 0]
        for i in range(hq):
            row = p[i]
            iy = i - pad
            if iy < 0 or iy >= h:
                for j in range(wq):
                    row[j] = np.float32(0.0)
                continue
            src = x[ch, iy]
            j1 = min(wq, pad + w)
            for j in range(pad):
                row[j] = np.float32(0.0)
            d = row[pad:j1]
            for j in range(j1 - pad):
                d[j] = src[j]
            for j in range(j1, wq):
                row[j] = np.float32(0.0)
        return
    for py in range(s):
        for i in range(hq):
            iy = i * s + py - pad
            if iy < 0 or iy >= h:
                for px in range(s):
                    for j in range(wq):
                        dst5[dc, py, px, i, j] = np.float32(0.0)
                continue
            src = x[ch, iy]
            for px in range(s):      # stride 3 and up (stride 2 has one plane: planes_shape)
                _copy_phase_row(src, w, px, pad, s, dst5[dc, py, px, i])


def _dw_plane_codegen(stride: int):
    """dw_plane's code generator: stride 1 reads a vector of pixels per tap, stride 2 two vectors and
    keeps their even lanes (one shuffle: vpermt2ps on AVX-512)."""
    def codegen(context, builder, signature, args):
        out_i, ldo_i, rows_i, cols_i, src_i, ldx_i, offs_i, t_i, w_i, shift_i, act_i = args
        v = Vec(builder, WIDE)
        i64 = ir.IntType(64)
        out, src, wp = v.ptr(out_i), v.ptr(src_i), v.ptr(w_i)
        offs = builder.inttoptr(offs_i, i64.as_pointer())
        sh = v.splat(v.load_scalar(v.ptr(shift_i)))
        vt = ir.VectorType(ir.FloatType(), WIDE)
        mvt = ir.VectorType(ir.IntType(1), WIDE)
        mstore = declare_intrinsic(builder, f"llvm.masked.store.v{WIDE}f32.p0",
                                   ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), ir.IntType(32), mvt]))
        evens = ir.Constant(ir.VectorType(ir.IntType(32), WIDE), list(range(0, 2 * WIDE, 2)))

        def pixels(off, j):
            # the WIDE input pixels of output columns j.. under one tap: src[off + stride*(j + l)]
            if stride == 1:
                return v.load(src, builder.add(off, j))
            p = builder.add(off, builder.mul(j, v.i64(2)))
            return builder.shuffle_vector(v.load(src, p), v.load(src, builder.add(p, v.i64(WIDE))), evens)

        def taps(pos):
            # the outputs at pos = [(input row base, output column)]: one chain of t FMAs each
            def tap(k, vals):
                off = builder.load(builder.gep(offs, [k]))
                wk = v.splat(builder.load(builder.gep(wp, [k])))
                return [v.add(a, v.mul(wk, pixels(builder.add(xb, off), j))) for a, (xb, j) in zip(vals, pos)]
            return [v.activation(a, act_i) for a in loop_carry(builder, v.i64(0), t_i, 1, [sh] * len(pos), tap, "dw.t")]

        n2 = builder.mul(builder.sdiv(cols_i, v.i64(2 * WIDE)), v.i64(2 * WIDE))
        n1 = builder.mul(builder.sdiv(cols_i, v.i64(WIDE)), v.i64(WIDE))
        rows4 = builder.mul(builder.sdiv(rows_i, v.i64(4)), v.i64(4))

        def rows_of(ys):
            # output rows ys (1 or 4 of them): every column of each. Four rows at a time give four
            # independent chains even on maps narrower than a vector (HarDNet's 14x14, 7x7): an FMA's
            # latency is 4 cycles, and a single chain left the FMA unit idle three quarters of the time.
            xbs = [builder.mul(y, ldx_i) for y in ys]
            obs = [builder.mul(y, ldo_i) for y in ys]

            def cols_at(js):
                # rows x columns js: the outputs in rows-major order
                pos = [(xb, j) for j in js for xb in xbs]
                vals = taps(pos)
                for q, (xb, j) in enumerate(pos):
                    v.store(vals[q], out, builder.add(obs[q % len(xbs)], j))

            if len(ys) == 1:
                loop(builder, v.i64(0), n2, 2 * WIDE, lambda j: cols_at([j, builder.add(j, v.i64(WIDE))]), "dw.two")
                loop(builder, n2, n1, WIDE, lambda j: cols_at([j]), "dw.one")
            else:
                loop(builder, v.i64(0), n1, WIDE, lambda j: cols_at([j]), "dw.rows")
            with builder.if_then(builder.icmp_signed("<", n1, cols_i)):
                with builder.if_else(builder.icmp_signed(">=", cols_i, v.i64(WIDE))) as (whole, partial):
                    with whole:                 # the last WIDE columns again, overlapping the previous vector
                        cols_at([builder.sub(cols_i, v.i64(WIDE))])
                    with partial:               # rows narrower than a vector
                        vals = taps([(xb, n1) for xb in xbs])
                        mask = first_lanes(builder, builder.sub(cols_i, n1), WIDE)
                        for a, ob in zip(vals, obs):
                            builder.call(mstore, [a, builder.bitcast(v.at(out, builder.add(ob, n1)), vt.as_pointer()),
                                                  ir.Constant(ir.IntType(32), 4), mask])

        loop(builder, v.i64(0), rows4, 4, lambda y: rows_of([builder.add(y, v.i64(q)) for q in range(4)]), "dw.row4")
        loop(builder, rows4, rows_i, 1, lambda y: rows_of([y]), "dw.row")
        return context.get_dummy_value()
    return codegen


@intrinsic
def dw_plane2(typingctx, out, ldo, rows, cols, src, ldx, offs, t, w, shift, act):
    """``dw_plane`` for stride 2 from one zero-padded plane per channel (planes_shape): output column j
    reads src[oy*ldx + offs[k] + 2*j] (ldx: two input rows). Reads up to 2*WIDE floats past a row's last
    tap (the plane's spare row and the scratch's tail cover it)."""
    return types.void(*([types.intp] * 11)), _dw_plane_codegen(2)


@intrinsic
def dw_plane(typingctx, out, ldo, rows, cols, src, ldx, offs, t, w, shift, act):
    """out[oy*ldo + j] = act(shift[0] + sum_{k<t} w[k] * src[oy*ldx + offs[k] + j]) for oy < rows, j < cols:
    one output channel of a grouped convolution over its whole map, straight from the phase planes into
    the output (``offs``: int64 offsets of each (input channel, tap) from a pixel's base; ``ldx``: the
    planes' row pitch). ``act``: one of gemm.FUSED_ACTS (the caller applies any other afterwards).

    Four output rows at a time, one vector of the CPU's width from each per step (four independent chains
    of t fused multiply-adds; the last rows: two vectors of one row per step); a row's last
    partial vector is recomputed at cols - WIDE (same values) where the row has a whole vector, else
    stored with a mask. Reads up to WIDE floats past a row's last tap (the planes' spare row and the
    scratch after them cover it: ``scratch_size``). Written as vector IR because LLVM would not
    vectorise the loop: it reads ten streams it cannot prove distinct from the one it writes."""
    return types.void(*([types.intp] * 11)), _dw_plane_codegen(1)


@thread_body(fastmath=True)
def _conv_grouped_body(th, nthreads, argv):
    # argv: x, C, H, W, weights (M, C/groups * k*k), groups, shift, act, pad, stride, k, Hq, Wq, scratch,
    # its row, out, M, out_h, out_w, offs.
    # One work item = one group: its cg input channels are laid out as phase planes in a buffer private
    # to the thread (it stays in L2), then each of its mg output channels is computed over the whole map
    # by dw_plane, straight into the output.
    c, h, w, groups = argv[1], argv[2], argv[3], argv[5]
    act, pad, s, size, hq, wq = argv[7], argv[8], argv[9], argv[10], argv[11], argv[12]
    m, out_h, out_w = argv[16], argv[17], argv[18]
    x = f32(argv[0], (c, h, w))
    cg = c // groups
    mg = m // groups
    t = size * size
    wflat = f32(argv[4], (m, cg * t))
    shift = f32(argv[6], (m,))
    out = f32(argv[15], (m, out_h, out_w))
    # (input channel ci, tap) -> offset of that tap from an output pixel's base in the group's planes
    offs = i64(argv[19], (cg * t,))
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    # this thread's row of the scratch holds its planes: reused, never reallocated (a fresh buffer per
    # item costs page faults on every call)
    ps = 1 if s == 2 else s                        # phases per side (planes_shape: one plane for stride 2)
    xs = f32(argv[13] + 4 * th * argv[14], (cg, ps, ps, hq, wq))
    for g in range(th * groups // nthreads, (th + 1) * groups // nthreads):
        for ci in range(cg):
            _prepare_channel(x, g * cg + ci, pad, xs, ci)
        for oi in range(mg):
            o = g * mg + oi
            dst = out[o]
            if argv[9] == 2:
                dw_plane2(dst.ctypes.data, out_w, out_h, out_w, xs.ctypes.data, 2 * wq, offs.ctypes.data, cg * t,
                          wflat[o].ctypes.data, shift.ctypes.data + 4 * o, act if fused else 0)
            else:
                dw_plane(dst.ctypes.data, out_w, out_h, out_w, xs.ctypes.data, wq, offs.ctypes.data, cg * t,
                         wflat[o].ctypes.data, shift.ctypes.data + 4 * o, act if fused else 0)
            if not fused:
                activate_block(dst.reshape(-1), out_h * out_w, act)


def scratch_size(c: int, h: int, w: int, groups: int, pad: int, stride: int, size: int) -> int:
    """Floats of scratch one thread needs: one group's phase planes, plus the two vectors' worth that
    dw_plane2 may read (and ignore) past the last plane's last row."""
    _, s, _, hq, wq = planes_shape(c, h, w, pad, stride, size)
    return (c // groups) * s * s * hq * wq + 2 * WIDE


def bind_conv_grouped(x, weights, groups: int, shift, act: int, pad: int, stride: int, out, scratch=None) -> Call:
    """``conv_grouped`` bound to its arrays. ``scratch``: float32 (threads, scratch_size(...)), one row per
    thread that will run it (allocated here for numba.get_num_threads() if None)."""
    c, h, w = x.shape
    m, out_h, out_w = out.shape
    size = weights.shape[2]
    _, s, _, hq, wq = planes_shape(c, h, w, pad, stride, size)
    cg = c // groups
    if c % groups or m % groups or weights.shape != (m, cg, size, size) or shift.shape != (m,) \
            or (out_h, out_w) != ((h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1):
        raise ValueError(f"conv_grouped: weights {weights.shape}, groups {groups} do not fit {x.shape} -> {out.shape}")
    need = scratch_size(c, h, w, groups, pad, stride, size)
    if scratch is None:
        scratch = np.empty((numba.get_num_threads(), need), dtype=np.float32)
    if scratch.shape[1] < need:
        raise ValueError(f"conv_grouped: scratch {scratch.shape} < (threads, {need})")
    t = size * size
    plane = hq * wq
    ci, ky, kx = np.meshgrid(np.arange(cg), np.arange(size), np.arange(size), indexing="ij")
    if stride == 2:             # one plane per channel (planes_shape): tap (ky, kx) at row ky, column kx
        offs = np.ascontiguousarray((ci * plane + ky * wq + kx).reshape(-1).astype(np.int64))
    else:
        offs = np.ascontiguousarray(((ci * s * s + (ky % s) * s + kx % s) * plane + (ky // s) * wq + kx // s)
                                    .reshape(-1).astype(np.int64))
    f4 = np.float32
    wflat = weights.reshape(m, cg * t)
    words = [addr(x, f4), c, h, w, addr(wflat, f4), groups, addr(shift, f4), act, pad, stride, size, hq, wq,
             addr(scratch, f4), scratch.shape[1], addr(out, f4), m, out_h, out_w, offs.ctypes.data]
    # thread th lays its planes out in row th of scratch: never more threads than rows
    return Call(_conv_grouped_body, words, (x, weights, shift, scratch, out, offs), scratch.shape[0])


def conv_grouped(x, weights, groups: int, shift, act: int, pad: int, stride: int, out, scratch=None) -> None:
    """Grouped/depthwise convolution: out = act(conv(x, W, groups) + shift), x (C, H, W).

    ``scratch``: float32 (threads, scratch_size(...)) reused across calls (allocated here if None)."""
    bind_conv_grouped(x, weights, groups, shift, act, pad, stride, out, scratch)()


@intrinsic
def taps_fma_vw(typingctx, acc, srcs, n, w, t):
    """acc[j] += sum_{k<t} w[k*n + j] * srcs[k][j] for j < n: a weight *vector* per tap (one weight per
    channel when vectorising a depthwise convolution across channels). ``srcs``: int64 addresses."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        acc_i, srcs_i, n_i, w_i, t_i = args
        v = Vec(builder)
        i64 = ir.IntType(64)
        acc, wp = v.ptr(acc_i), v.ptr(w_i)
        srcs = builder.inttoptr(srcs_i, i64.as_pointer())
        nvec = builder.mul(builder.sdiv(n_i, v.i64(LANES)), v.i64(LANES))

        def vec_body(j):
            def tap(k, vals):
                src = v.ptr(builder.load(builder.gep(srcs, [k])))
                wk = v.load(wp, builder.add(builder.mul(k, n_i), j))
                return [v.add(vals[0], v.mul(wk, v.load(src, j)))]
            (a,) = loop_carry(builder, v.i64(0), t_i, 1, [v.load(acc, j)], tap, "vw.v")
            v.store(a, acc, j)

        def scalar_body(j):
            def tap(k, vals):
                src = v.ptr(builder.load(builder.gep(srcs, [k])))
                wk = builder.load(v.at(wp, builder.add(builder.mul(k, n_i), j)))
                return [builder.fadd(vals[0], builder.fmul(wk, builder.load(v.at(src, j))))]
            (a,) = loop_carry(builder, v.i64(0), t_i, 1, [builder.load(v.at(acc, j))], tap, "vw.s")
            builder.store(a, v.at(acc, j))

        loop(builder, v.i64(0), nvec, LANES, vec_body, "vw.vl")
        loop(builder, nvec, n_i, 1, scalar_body, "vw.sl")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def transpose_block(typingctx, src, ld_src, ncols, dst, ld_dst):
    """dst[j*ld_dst + r] = src[r*ld_src + j] for r < WIDE, j < ncols (<= WIDE): a WIDE x ncols block
    (channels x pixels of a CHW map) transposed in registers (vecir.transpose_rows), the rows read by
    masked loads of ncols floats, the first ncols columns stored as whole vectors."""
    sig = types.void(*([types.intp] * 5))

    def codegen(context, builder, signature, args):
        src_i, lds, n_i, dst_i, ldd = args
        lanes = WIDE
        vt = ir.VectorType(ir.FloatType(), lanes)
        mvt = ir.VectorType(ir.IntType(1), lanes)
        i32 = ir.IntType(32)
        load = declare_intrinsic(builder, f"llvm.masked.load.v{lanes}f32.p0",
                                 ir.FunctionType(vt, [vt.as_pointer(), i32, mvt, vt]))
        v = Vec(builder, lanes)
        src, dst = v.ptr(src_i), v.ptr(dst_i)
        mask = first_lanes(builder, builder.trunc(n_i, i32), lanes)
        zero = ir.Constant(vt, [0.0] * lanes)
        rows = [builder.call(load, [builder.bitcast(v.at(src, builder.mul(v.i64(r), lds)), vt.as_pointer()),
                                    ir.Constant(i32, 4), mask, zero]) for r in range(lanes)]
        rows = transpose_rows(builder, rows)
        for j in range(lanes):
            with builder.if_then(builder.icmp_signed("<", v.i64(j), n_i)):
                v.store(rows[j], dst, builder.mul(v.i64(j), ldd))
        return context.get_dummy_value()

    return sig, codegen


@thread_body()
def _to_hwc_body(th, nthreads, argv):
    # argv: x, C, H, W, pad, xt, Hp, Wp. xt (Hp, Wp, C) <- x (C, H, W) zero-padded by pad: channels become
    # the contiguous axis; thread th does its share of the rows.
    c, h, w, pad, hp, wp = argv[1], argv[2], argv[3], argv[4], argv[6], argv[7]
    x = f32(argv[0], (c, h, w))
    xt = f32(argv[5], (hp, wp, c))
    cv = c - c % WIDE                                    # channels moved by transpose_block, WIDE at a time
    for y in range(th * hp // nthreads, (th + 1) * hp // nthreads):
        iy = y - pad
        for xx in range(wp):
            ix = xx - pad
            dst = xt[y, xx]
            if not (0 <= iy < h and 0 <= ix < w):
                for ch in range(c):
                    dst[ch] = np.float32(0.0)
            else:
                for ch in range(cv, c):
                    dst[ch] = x[ch, iy, ix]
        if 0 <= iy < h:
            for c0 in range(0, cv, WIDE):
                for x0 in range(0, w, WIDE):
                    transpose_block(argv[0] + 4 * ((c0 * h + iy) * w + x0), h * w, min(WIDE, w - x0),
                                    xt.ctypes.data + 4 * ((y * wp + pad + x0) * c + c0), c)


@thread_body(fastmath=True)
def _dw_hwc_body(th, nthreads, argv):
    # argv: xt (Hp, Wp, C), Hp, Wp, C, wt (k*k, C) tap-major weights, shift, act, k, stride, out, out_h,
    # out_w. out (C, out_h, out_w) written pixel by pixel; thread th does its share of the output rows.
    wp, c = argv[2], argv[3]
    act, size, stride, out_h, out_w = argv[6], argv[7], argv[8], argv[10], argv[11]
    t = size * size
    shift = f32(argv[5], (c,))
    out = f32(argv[9], (c, out_h, out_w))
    wt_addr = argv[4]
    base = argv[0]
    acc = np.empty(c, dtype=np.float32)
    srcs = np.empty(t, dtype=np.int64)
    for oy in range(th * out_h // nthreads, (th + 1) * out_h // nthreads):
        for ox in range(out_w):
            for ch in range(c):
                acc[ch] = shift[ch]
            for ky in range(size):
                for kx in range(size):
                    srcs[ky * size + kx] = base + 4 * (((oy * stride + ky) * wp + ox * stride + kx) * c)
            taps_fma_vw(acc.ctypes.data, srcs.ctypes.data, c, wt_addr, t)
            if act == 14:
                for ch in range(c):
                    a = acc[ch]
                    a = a if a > 0 else np.float32(0.0)
                    out[ch, oy, ox] = a if a < 6 else np.float32(6.0)
            elif act == 0:
                for ch in range(c):
                    out[ch, oy, ox] = acc[ch]
            elif act == 3:
                for ch in range(c):
                    a = acc[ch]
                    out[ch, oy, ox] = a if a > 0 else np.float32(0.0)
            elif act == 11:
                for ch in range(c):
                    a = acc[ch]
                    out[ch, oy, ox] = a if a > 0 else a * np.float32(0.1)
            else:
                for ch in range(c):
                    out[ch, oy, ox] = activate_scalar(acc[ch], act)


def bind_depthwise_hwc(x, weights, shift, act: int, pad: int, stride: int, out, xt=None):
    """``depthwise_hwc`` bound to its arrays: a callable that runs it."""
    c, h, w = x.shape
    size = weights.shape[2]
    _, out_h, out_w = out.shape
    if weights.shape != (c, 1, size, size) or out.shape[0] != c or shift.shape != (c,) \
            or (out_h, out_w) != ((h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1):
        raise ValueError(f"depthwise_hwc: weights {weights.shape} do not fit {x.shape} -> {out.shape}")
    if xt is None:
        xt = np.empty((h + 2 * pad, w + 2 * pad, c), dtype=np.float32)
    if xt.shape != (h + 2 * pad, w + 2 * pad, c):
        raise ValueError(f"depthwise_hwc: buffer {xt.shape} for an input {x.shape} padded by {pad}")
    wt = np.ascontiguousarray(weights.reshape(c, size * size).T)
    f4 = np.float32
    to_hwc = Call(_to_hwc_body, [addr(x, f4), c, h, w, pad, addr(xt, f4), *xt.shape[:2]], (x, xt))
    body = Call(_dw_hwc_body, [addr(xt, f4), *xt.shape, wt.ctypes.data, addr(shift, f4), act, size, stride,
                               addr(out, f4), out_h, out_w], (xt, wt, shift, out))

    return Calls(to_hwc, body)


def depthwise_hwc(x, weights, shift, act: int, pad: int, stride: int, out, xt=None) -> None:
    """Depthwise convolution vectorised across channels: the input is transposed to a padded HWC buffer
    ``xt`` (Hp, Wp, C) once, then every output pixel is one pass over contiguous channels. Best for
    small maps with many channels (HarDNet's 7x7 and 14x14 layers)."""
    bind_depthwise_hwc(x, weights, shift, act, pad, stride, out, xt)()
