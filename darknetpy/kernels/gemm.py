"""darknetpy's own float32 GEMM: packed panels and a register-blocked micro-kernel in LLVM IR.

Why not BLAS: numba reaches BLAS only through SciPy (an extra ~0.2 s of start-up), a BLAS thread pool
fights numba's for the cores, and BLAS cannot fuse the bias/activation epilogue or the im2col/Winograd
packing. A plain numba loop nest stays at ~20 GFLOP/s because LLVM does not keep the accumulators in
registers; this module writes the inner kernel directly as LLVM vector IR (through
``numba.extending.intrinsic``), which reaches ~87 GFLOP/s on one Zen 3 core (OpenBLAS: ~78).

Layout (BLIS style): C[M, N] = A[M, K] @ B[K, N]
  * ``A`` is packed once (weights, at plan time) into row panels of ``MR`` rows:
    ``Ap[ip, k*MR + r] = A[ip*MR + r, k]`` (zero rows pad the last panel);
  * ``B`` is packed per call into column panels of ``NR`` columns:
    ``Bp[k*NR + j] = B[k, jp*NR + j]`` -- directly by im2col or the Winograd input transform, so the
    unpacked column matrix never exists;
  * the micro-kernel computes one MR x NR tile of C into a small scratch tile, and the caller's
    epilogue adds the bias and applies the activation while the tile is in L1.

The fmul/fadd pairs carry LLVM's ``contract`` flag, so they become FMAs where the CPU has them and
plain multiply-adds elsewhere (portable IR, no x86 intrinsics).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import config
from .vecir import FLT_MAX, Vec, count_loop, loop, running_max

# The micro-tile (MR x NR) and vector width: compile-time constants of the code generator, chosen for the
# CPU by config.codegen_target() (see config.py for the measurements behind them).
_TARGET = config.codegen_target()
MR, _LANES = _TARGET.float_mr, _TARGET.float_lanes
NR = config.FLOAT_NR    # columns of B per micro-tile (pixels): one or two vectors
# the K-blocked GEMM's tile (microkernel_acc*, conv._conv_gemm_kblocked): its B panels are always packed
KMR, KNR = (_TARGET.block_mr or MR), (_TARGET.block_nr or NR)
# ... and its half-width tile for a last pixel panel of at most KNR/2 pixels, where the tile is the wider
# one (0: none). A 13x13 map is 5 panels of 32 pixels and 9 more: 23 of the last 32 columns would be
# computed for nothing (12% of the layer).
KNR_NARROW = KNR // 2 if (KMR, KNR) != (MR, NR) and (KNR // 2) % _LANES == 0 else 0
# activation codes the fused epilogue implements (kernels.activation: LINEAR, RELU, LEAKY, RELU6)
_LINEAR, _RELU, _LEAKY, _RELU6 = 0, 3, 11, 14
FUSED_ACTS = (_LINEAR, _RELU, _LEAKY, _RELU6)


_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def splat(builder, s, lanes: int):
    """A scalar (float or integer value) in every lane of a <lanes x its type> vector (one broadcast)."""
    vt = ir.VectorType(s.type, lanes)
    undef = ir.Constant(vt, ir.Undefined)
    mask = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
    return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(_I32, 0)), undef, mask)


def declare_intrinsic(builder, name: str, fnty: ir.FunctionType) -> ir.Function:
    """The function ``name`` (an LLVM intrinsic, or a C symbol such as libc's syscall) declared once in the
    module being built."""
    return builder.module.globals.get(name) or ir.Function(builder.module, fnty, name)


def first_lanes(builder, n, lanes: int):
    """The <lanes x i1> mask of lanes j < n (n an i64 or i32 value)."""
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(n.type, lanes), list(range(lanes))),
                               splat(builder, n, lanes))


def _codegen_microkernel(builder, ap_i, bp_i, k_i, t_i, koff_i=None, epilogue=None, init_i=None, mr=MR, nr=NR):
    """Emit the MR x NR micro-kernel. B row k is at bp + k*NR, or at bp + koff[k] when koff is given.

    Without ``epilogue`` the tile goes to t[r*NR + j]. With ``epilogue = (ldc, shift_ptr, act)`` row r is
    written to t + r*ldc as act(acc + shift[r]) for the activations of ``FUSED_ACTS``. With ``init_i``
    the accumulators start from the MR x NR tile there (same layout as t) instead of zero: a K-blocked
    GEMM carries its partial sums from one block of K to the next that way. ``mr`` x ``nr``: the tile
    (rows of A x columns of B; nr a multiple of the vector width).
    """
    f32, i64 = _F32, _I64
    vt = ir.VectorType(f32, _LANES)
    a = builder.inttoptr(ap_i, f32.as_pointer())
    b = builder.inttoptr(bp_i, f32.as_pointer())
    t = builder.inttoptr(t_i, f32.as_pointer())
    koff = builder.inttoptr(koff_i, i64.as_pointer()) if koff_i is not None else None
    zero = ir.Constant(vt, [0.0] * _LANES)
    halves = nr // _LANES
    nacc = mr * halves
    start = [zero] * nacc
    if init_i is not None:
        init = builder.inttoptr(init_i, f32.as_pointer())
        start = [builder.load(builder.bitcast(builder.gep(init, [ir.Constant(i64, (i // halves) * nr
                                                                                + (i % halves) * _LANES)]),
                                              vt.as_pointer()), align=4) for i in range(nacc)]

    def step(kk, acc):
        if koff is None:
            kb = builder.mul(kk, ir.Constant(i64, nr))
        else:
            kb = builder.load(builder.gep(koff, [kk]))
        bv = []
        for h in range(halves):
            p = builder.gep(b, [builder.add(kb, ir.Constant(i64, h * _LANES))])
            bv.append(builder.load(builder.bitcast(p, vt.as_pointer()), align=4))
        ka = builder.mul(kk, ir.Constant(i64, mr))
        new = []
        for r in range(mr):
            s = builder.load(builder.gep(a, [builder.add(ka, ir.Constant(i64, r))]))
            av = splat(builder, s, _LANES)
            for h in range(halves):
                prod = builder.fmul(av, bv[h], flags=("contract",))
                new.append(builder.fadd(acc[r * halves + h], prod, flags=("contract",)))
        return new

    res = count_loop(builder, k_i, start, step, "mk")
    if epilogue is None:
        for i, v in enumerate(res):
            r, h = divmod(i, halves)
            p = builder.gep(t, [ir.Constant(i64, r * nr + h * _LANES)])
            builder.store(v, builder.bitcast(p, vt.as_pointer()), align=4)
        return
    ldc, shift_i, act, rows, res_i = epilogue
    has_res = builder.icmp_signed("!=", res_i, ir.Constant(i64, 0))
    with builder.if_else(has_res) as (with_res, without):
        with with_res:
            _codegen_epilogue(builder, res, t, ldc, shift_i, act, rows, builder.inttoptr(res_i, f32.as_pointer()), mr, nr)
        with without:
            _codegen_epilogue(builder, res, t, ldc, shift_i, act, rows, None, mr, nr)


def _codegen_epilogue(builder, res, t, ldc, shift_i, act, rows, resid, mr=MR, nr=NR):
    """act(acc + shift [+ resid]) for rows < ``rows``, stored to t + r*ldc."""
    f32, i64 = _F32, _I64
    vt = ir.VectorType(f32, _LANES)
    halves = nr // _LANES
    shift = builder.inttoptr(shift_i, f32.as_pointer())
    zero_v = ir.Constant(vt, [0.0] * _LANES)
    tenth = ir.Constant(vt, [0.1] * _LANES)
    six = ir.Constant(vt, [6.0] * _LANES)
    is_leaky = builder.icmp_signed("==", act, ir.Constant(i64, _LEAKY))
    is_relu = builder.icmp_signed("==", act, ir.Constant(i64, _RELU))
    is_relu6 = builder.icmp_signed("==", act, ir.Constant(i64, _RELU6))
    # rows >= ``rows`` (zero padding of the last A panel) are computed but not stored
    row_blocks = []
    for r in range(mr):
        if r == 0:
            row_blocks.append(None)
            continue
        keep = builder.icmp_signed(">", rows, ir.Constant(i64, r))
        store_bb = builder.function.append_basic_block(f"mk.row{r}")
        row_blocks.append((keep, store_bb))
    end_bb = builder.function.append_basic_block("mk.rows_done")
    for i, v in enumerate(res):
        r, h = divmod(i, halves)
        if h == 0 and r > 0:
            keep, store_bb = row_blocks[r]
            builder.cbranch(keep, store_bb, end_bb)
            builder.position_at_end(store_bb)
        sr = builder.load(builder.gep(shift, [ir.Constant(i64, r)]))
        sv = splat(builder, sr, _LANES)
        y = builder.fadd(v, sv)
        off = builder.add(builder.mul(ldc, ir.Constant(i64, r)), ir.Constant(i64, h * _LANES))
        if resid is not None:   # a fused [shortcut]: + the residual tile, same layout as the output
            y = builder.fadd(y, builder.load(builder.bitcast(builder.gep(resid, [off]), vt.as_pointer()), align=4))
        pos = builder.fcmp_ordered(">", y, zero_v)
        relu = builder.select(pos, y, zero_v)
        y = builder.select(is_leaky, builder.select(pos, y, builder.fmul(y, tenth)), y)
        y = builder.select(is_relu, relu, y)
        y = builder.select(is_relu6, builder.select(builder.fcmp_ordered("<", relu, six), relu, six), y)
        builder.store(y, builder.bitcast(builder.gep(t, [off]), vt.as_pointer()), align=4)
    builder.branch(end_bb)
    builder.position_at_end(end_bb)


@intrinsic
def microkernel(typingctx, ap, bp, k, tile):
    """tile[r*NR + j] = sum_k ap[k*MR + r] * bp[k*NR + j]  (addresses as intp; k >= 0).

    The MR*NR/8 accumulators live in vector registers across the k loop.
    """
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        _codegen_microkernel(builder, *args)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def microkernel_indirect(typingctx, ap, base, koff, k, tile):
    """tile[r*NR + j] = sum_k ap[k*MR + r] * base[koff[k] + j]: B rows read in place (implicit GEMM).

    ``base`` points at the first of NR neighbouring pixels of a padded image and ``koff`` (int64, length
    k) holds each (channel, ky, kx)'s offset from it, so no column matrix or B panel is built.
    """
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, t_i = args
        _codegen_microkernel(builder, ap_i, base_i, k_i, t_i, koff_i)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def microkernel_fused(typingctx, ap, base, koff, k, c, ldc, shift, act, rows, res):
    """c[r*ldc + j] = act(shift[r] + sum_k ap[k*MR + r] * base[koff[k] + j] [+ res[r*ldc + j]]) for
    r < rows of an MR x NR tile (all NR columns), written straight to the output. For a packed B panel
    pass koff = k*NR. ``res`` (0 for none) is a residual laid out like ``c``: a [shortcut] fused into the
    convolution before it. ``act`` must be one of FUSED_ACTS; the caller handles the others.

    One K loop is emitted; only the short epilogue exists in two copies (with/without residual), which
    keeps the kernels that inline this small enough to compile quickly."""
    sig = types.void(*([types.intp] * 10))

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, c_i, ldc_i, shift_i, act_i, rows_i, res_i = args
        _codegen_microkernel(builder, ap_i, base_i, k_i, c_i, koff_i, (ldc_i, shift_i, act_i, rows_i, res_i))
        return context.get_dummy_value()

    return sig, codegen


def _halves():
    """(<NR/2 x float>, the shuffle masks of a tile row's even and odd columns)."""
    lanes = ir.VectorType(_I32, NR // 2)
    return (ir.VectorType(_F32, NR // 2), ir.Constant(lanes, list(range(0, NR, 2))),
            ir.Constant(lanes, list(range(1, NR, 2))))


@intrinsic
def pool_tiles(typingctx, t0, t1, c, ldc, shift, act, rows):
    """c[r*ldc + j] for r < rows, j < NR/2: the 2x2 stride-2 max-pool of act(shift[r] + tile) over two
    MR x NR tiles (t[r*NR + j]) of vertically adjacent output rows, the same NR columns: a [maxpool] fused
    into the convolution before it (conv_gemm's pool mode). Each output is darknet's running maximum from
    -FLT_MAX over the window in its order (0,0) (0,1) (1,0) (1,1), ``max = (v > max) ? v : max``, as
    [maxpool]'s own kernel computes it: the same bits. ``act`` one of FUSED_ACTS."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        t0_i, t1_i, c_i, ldc, shift_i, act, rows = args
        v = Vec(builder, NR)
        half, even, odd = _halves()
        lowest = ir.Constant(half, [-float(FLT_MAX)] * (NR // 2))
        t0, t1, c, shift = v.ptr(t0_i), v.ptr(t1_i), v.ptr(c_i), v.ptr(shift_i)

        def body(r):
            sh = v.splat(v.load_scalar(shift, r))
            top = v.activation(v.add(v.load(t0, builder.mul(r, v.i64(NR))), sh), act)
            bottom = v.activation(v.add(v.load(t1, builder.mul(r, v.i64(NR))), sh), act)
            m = lowest
            for y in (top, bottom):
                m = running_max(builder, running_max(builder, m, builder.shuffle_vector(y, y, even)),
                                builder.shuffle_vector(y, y, odd))
            dst = v.at(c, builder.mul(r, ldc))
            builder.store(m, builder.bitcast(dst, half.as_pointer()), align=4)

        loop(builder, v.i64(0), rows, 1, body, "pool")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def split_tile2(typingctx, t, c_even, c_odd, ldc, shift, act, rows):
    """c_even[r*ldc + j] = y[2j], c_odd[r*ldc + j] = y[2j+1] for r < rows, j < NR/2, where y = act(shift[r]
    + t[r*NR:(r+1)*NR]): an MR x NR tile of one output row stored into the two column phases of a stride-2
    consumer's prepared input (kernels/convchain.py). The epilogue arithmetic of ``microkernel_fused``
    (the same bits); ``act`` one of FUSED_ACTS."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        t_i, ce_i, co_i, ldc, shift_i, act, rows = args
        v = Vec(builder, NR)
        half, even, odd = _halves()
        t, ce, co, shift = v.ptr(t_i), v.ptr(ce_i), v.ptr(co_i), v.ptr(shift_i)

        def body(r):
            y = v.activation(v.add(v.load(t, builder.mul(r, v.i64(NR))), v.splat(v.load_scalar(shift, r))), act)
            for c, idx in ((ce, even), (co, odd)):
                dst = v.at(c, builder.mul(r, ldc))
                builder.store(builder.shuffle_vector(y, y, idx), builder.bitcast(dst, half.as_pointer()), align=4)

        loop(builder, v.i64(0), rows, 1, body, "split2")
        return context.get_dummy_value()

    return sig, codegen


def _acc_intrinsics(nr: int):
    """The K-blocked GEMM's two micro-kernels on a KMR x nr tile (nr: KNR, or KNR_NARROW for a last
    panel of at most that many pixels), see ``microkernel_acc`` and ``microkernel_acc_fused``."""
    @intrinsic
    def acc(typingctx, ap, bp, k, init, tile):
        def codegen(context, builder, signature, args):
            ap_i, bp_i, k_i, init_i, t_i = args
            _codegen_microkernel(builder, ap_i, bp_i, k_i, t_i, init_i=init_i, mr=KMR, nr=nr)
            return context.get_dummy_value()
        return types.void(*([types.intp] * 5)), codegen

    @intrinsic
    def acc_fused(typingctx, ap, bp, k, init, c, ldc, shift, act, rows, res):
        def codegen(context, builder, signature, args):
            ap_i, bp_i, k_i, init_i, c_i, ldc_i, shift_i, act_i, rows_i, res_i = args
            _codegen_microkernel(builder, ap_i, bp_i, k_i, c_i, None, (ldc_i, shift_i, act_i, rows_i, res_i),
                                 init_i=init_i, mr=KMR, nr=nr)
            return context.get_dummy_value()
        return types.void(*([types.intp] * 10)), codegen

    return acc, acc_fused


# microkernel_acc(ap, bp, k, init, tile): tile[r*KNR + j] = init[r*KNR + j] + sum_k ap[k*KMR + r] *
# bp[k*KNR + j]: one block of K of a K-blocked GEMM, on its KMR x KNR tile (``init`` may be ``tile``
# itself; a zero tile for the first block; ``ap`` packed by ``pack_a(a, KMR)``).
# microkernel_acc_fused(ap, bp, k, init, c, ldc, shift, act, rows, res): the last block of K:
# ``microkernel_fused`` on a packed B panel, the accumulators starting from the tile at ``init`` (the
# earlier blocks' partial sums). The _narrow pair: the same on a KMR x KNR_NARROW tile.
microkernel_acc, microkernel_acc_fused = _acc_intrinsics(KNR)
microkernel_acc_narrow, microkernel_acc_fused_narrow = _acc_intrinsics(KNR_NARROW or KNR)


@intrinsic
def prefetch_rows_w(typingctx, addr, count, stride):
    """Ask for the cache line at addr + r*stride (bytes) for r < count, for writing (prefetchw)."""
    sig = types.void(types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        addr_i, n_i, st_i = args
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = declare_intrinsic(builder, "llvm.prefetch.p0", fnty)
        base = builder.inttoptr(addr_i, i8p)

        def step(kk, carried):
            p = builder.gep(base, [builder.mul(kk, st_i)])
            builder.call(fn, [p, ir.Constant(_I32, 1), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            return carried

        count_loop(builder, n_i, [], step, "pfw")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_l2(typingctx, addr, nbytes):
    """Ask for the cache lines of [addr, addr + nbytes) to be brought into L2 (``llvm.prefetch``, read,
    locality 2: x86's prefetcht1), without waiting for them. The K-blocked GEMM prefetches the next
    filter panel's block of weights while the micro-kernel works on the current one: weights of the
    large late layers (19 MB for yolov3-tiny's 3x3 512->1024) come from DRAM, in blocks spread over
    pages the hardware prefetcher does not follow."""
    sig = types.void(types.intp, types.intp)

    def codegen(context, builder, signature, args):
        addr_i, n_i = args
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = declare_intrinsic(builder, "llvm.prefetch.p0", fnty)
        base = builder.inttoptr(addr_i, i8p)
        lines = builder.sdiv(builder.add(n_i, ir.Constant(_I64, 63)), ir.Constant(_I64, 64))

        def step(kk, carried):
            p = builder.gep(base, [builder.mul(kk, ir.Constant(_I64, 64))])
            builder.call(fn, [p, ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
            return carried

        count_loop(builder, lines, [], step, "pf")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def gather_rows16(typingctx, x, koff, kn, pix, nvalid, dst, ldd):
    """dst[kk*ldd + j] = x[koff[kk] + pix[j]] for kk < kn and the 16 lanes j < nvalid (0.0 in the others):
    16 pixels of kn B rows at once, one gather per row (llvm.masked.gather: vgatherdps, two on AVX2).
    ``pix`` points at 16 int32 offsets. How the GEMMs pack a panel whose pixels are not one run in the
    prepared input (on a 13x13 map a 32-pixel panel spans 3-4 output rows): the copy run by run took
    ~0.55 ns per float (yolov3-tiny's 3x3 256->512 13x13: 0.24 of 2.9 ms)."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        x_i, koff_i, kn_i, pix_i, nvalid_i, dst_i, ldd_i = args
        lanes = 16
        vt = ir.VectorType(_F32, lanes)
        pvt = ir.VectorType(_F32.as_pointer(), lanes)
        i64v = ir.VectorType(_I64, lanes)
        mask = first_lanes(builder, nvalid_i, lanes)
        gather = declare_intrinsic(builder, f"llvm.masked.gather.v{lanes}f32.v{lanes}p0",
                                   ir.FunctionType(vt, [pvt, _I32, mask.type, vt]))
        pix = builder.load(builder.bitcast(builder.inttoptr(pix_i, _I32.as_pointer()),
                                           ir.VectorType(_I32, lanes).as_pointer()), align=4)
        pix_bytes = builder.mul(builder.sext(pix, i64v), ir.Constant(i64v, [4] * lanes))
        zero = ir.Constant(vt, [0.0] * lanes)
        koff = builder.inttoptr(koff_i, _I64.as_pointer())
        dst = builder.inttoptr(dst_i, _F32.as_pointer())

        def step(kk, carried):
            base = builder.add(x_i, builder.mul(builder.load(builder.gep(koff, [kk])), ir.Constant(_I64, 4)))
            ptrs = builder.inttoptr(builder.add(splat(builder, base, lanes), pix_bytes), pvt)
            v = builder.call(gather, [ptrs, ir.Constant(_I32, 4), mask, zero])
            d = builder.gep(dst, [builder.mul(kk, ldd_i)])
            builder.store(v, builder.bitcast(d, vt.as_pointer()), align=4)
            return carried

        count_loop(builder, kn_i, [], step, "gr")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_runs16(typingctx, x, koff, kn, runs, nruns, dst, ldd):
    """For kk < kn and each run r (``runs``: int32 triples src, dst, len <= 16): dst[kk*ldd + dst_r + i] =
    x[koff[kk] + src_r + i] for i < len_r, by one masked load and one masked store of 16 lanes per run and
    row. A panel of pixels across output rows is a few runs (a 32-pixel panel of a 13x13 map: 13 + 13 +
    6), so this moves it at a few instructions per row where gather_rows16 takes two gathers; used where
    masked stores are single instructions (AVX-512: vmovups with a k-mask; the AVX2 form, vmaskmovps, is
    microcoded on AMD CPUs)."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        x_i, koff_i, kn_i, runs_i, nruns_i, dst_i, ldd_i = args
        lanes = 16
        vt = ir.VectorType(_F32, lanes)
        mvt = ir.VectorType(ir.IntType(1), lanes)
        load = declare_intrinsic(builder, f"llvm.masked.load.v{lanes}f32.p0",
                                 ir.FunctionType(vt, [vt.as_pointer(), _I32, mvt, vt]))
        store = declare_intrinsic(builder, f"llvm.masked.store.v{lanes}f32.p0",
                                  ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), _I32, mvt]))
        zero = ir.Constant(vt, [0.0] * lanes)
        koff = builder.inttoptr(koff_i, _I64.as_pointer())
        runs = builder.inttoptr(runs_i, _I32.as_pointer())
        x = builder.inttoptr(x_i, _F32.as_pointer())
        dst = builder.inttoptr(dst_i, _F32.as_pointer())

        def row(kk, carried):
            src_row = builder.gep(x, [builder.load(builder.gep(koff, [kk]))])
            dst_row = builder.gep(dst, [builder.mul(kk, ldd_i)])

            def run(r, c2):
                so, do, n = (builder.load(builder.gep(runs, [builder.add(builder.mul(r, ir.Constant(_I64, 3)),
                                                                         ir.Constant(_I64, f))]))
                             for f in range(3))
                mask = first_lanes(builder, n, lanes)
                v = builder.call(load, [builder.bitcast(builder.gep(src_row, [builder.sext(so, _I64)]),
                                                        vt.as_pointer()), ir.Constant(_I32, 4), mask, zero])
                builder.call(store, [v, builder.bitcast(builder.gep(dst_row, [builder.sext(do, _I64)]),
                                                        vt.as_pointer()), ir.Constant(_I32, 4), mask])
                return c2

            count_loop(builder, nruns_i, [], run, "run")
            return carried

        count_loop(builder, kn_i, [], row, "cr")
        return context.get_dummy_value()

    return sig, codegen


def _codegen_narrow(builder, ap_i, bp_i, k_i, t_i, ncols):
    """tile[r*NR + j] = sum_k ap[k*MR + r] * bp[k*NR + j] for j < ncols only: a nearly empty last panel.

    Vectorised over the MR rows instead of the NR columns: per k, one <MR x float> load of A and ncols
    broadcasts of B. For 1 column that is 1 FMA instead of the full kernel's MR*NR/LANES."""
    f32, i64, i32 = _F32, _I64, _I32
    vt = ir.VectorType(f32, MR)
    a = builder.inttoptr(ap_i, f32.as_pointer())
    b = builder.inttoptr(bp_i, f32.as_pointer())
    t = builder.inttoptr(t_i, f32.as_pointer())
    zero = ir.Constant(vt, [0.0] * MR)
    def step(kk, acc):
        av = builder.load(builder.bitcast(builder.gep(a, [builder.mul(kk, ir.Constant(i64, MR))]),
                                          vt.as_pointer()), align=4)
        kb = builder.mul(kk, ir.Constant(i64, NR))
        new = []
        for j in range(ncols):
            s = builder.load(builder.gep(b, [builder.add(kb, ir.Constant(i64, j))]))
            sv = splat(builder, s, MR)
            new.append(builder.fadd(acc[j], builder.fmul(av, sv, flags=("contract",)), flags=("contract",)))
        return new

    res = count_loop(builder, k_i, [zero] * ncols, step, "nk")
    for j, v in enumerate(res):
        for r in range(MR):
            builder.store(builder.extract_element(v, ir.Constant(i32, r)),
                          builder.gep(t, [ir.Constant(i64, r * NR + j)]))


def _narrow_intrinsic(ncols):
    @intrinsic
    def narrow(typingctx, ap, bp, k, tile):
        def codegen(context, builder, signature, args):
            _codegen_narrow(builder, *args, ncols)
            return context.get_dummy_value()
        return types.void(types.intp, types.intp, types.intp, types.intp), codegen
    return narrow


_narrow1, _narrow2, _narrow4 = _narrow_intrinsic(1), _narrow_intrinsic(2), _narrow_intrinsic(4)


@njit(cache=True, inline="always")
def microkernel_cols(ap, bp, k, tile, jn):
    """``microkernel`` for a packed B panel of which only the first jn columns matter (the rest of the
    tile is left undefined): columns 1, 2 and 3-4 get the row-vectorised kernel, more the full one.
    Same k order and fused multiply-adds, so the same values as the full kernel."""
    if jn == 1:
        _narrow1(ap, bp, k, tile)
    elif jn == 2:
        _narrow2(ap, bp, k, tile)
    elif jn <= 4:
        _narrow4(ap, bp, k, tile)
    else:
        microkernel(ap, bp, k, tile)


def pack_a(a: np.ndarray, mr: int = MR) -> np.ndarray:
    """(M, K) float32 -> (ceil(M/mr), K*mr) row panels, zero-padded. Done once per weight matrix."""
    m, k = a.shape
    npan = -(-m // mr)
    padded = np.zeros((npan * mr, k), dtype=np.float32)
    padded[:m] = a
    # panel ip, element (k, r) at k*mr + r
    return np.ascontiguousarray(padded.reshape(npan, mr, k).transpose(0, 2, 1).reshape(npan, k * mr))


@njit(cache=True)
def pack_b_panel(b2d, n0, bp):
    """Columns n0..n0+NR of b2d (K, N) into bp[k*NR + j]; columns past N are zero."""
    kdim, n = b2d.shape
    w = min(NR, n - n0)
    for k in range(kdim):
        base = k * NR
        for j in range(w):
            bp[base + j] = b2d[k, n0 + j]
        for j in range(w, NR):
            bp[base + j] = np.float32(0.0)
