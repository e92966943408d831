"""The int8 GEMM micro-kernel: u8 x s8 pairs with int32 accumulation, as LLVM vector IR.

MR=4 output channels x NR=2L pixels, int32 accumulators in 8 vector registers of L lanes
(``config.INT8_MR``; ``config.CodegenTarget.int8_lanes``: 8 with AVX2, 16 with AVX-512 VNNI and BW), written
through ``numba.extending.intrinsic`` like ``kernels/gemm.py``. It is portable
IR: the saturating pair sum is written as zext/sext, mul, add, clamp, trunc, which LLVM's x86 backend turns
into ``vpmaddubsw``; the int16 pair sum into int32 is a multiply-add by a ones vector loaded from memory,
which becomes ``vpmaddwd``. On CPUs with AVX2 the two steps are the x86 intrinsics themselves
(``config.codegen_target()``); on other CPUs the same IR compiles to correct (slower) generic code.

Quad k of pixel j is 4 bytes: 4 consecutive channels of one tap (``conv.prepare_quads``), or 4 consecutive
elements of MLAS's flat K (``conv.conv_im2col``'s packed panel); the packed weights hold the same quads
(``conv.pack_quads``/``conv.pack_flat``). The epilogue requantises in registers with the formulas of
``requant.py``.

Two sums, chosen at run time by an argument: the saturating pairs above (MLAS on x86 without VNNI), and
the exact sum of each quad's four products (``_dot_quads``: ``vpdpbusd`` on CPUs with AVX512-VNNI or
AVX-VNNI, where MLAS is exact too; portable IR elsewhere). ``config.CodegenTarget.int8_pairs`` says which
one onnxruntime computes on this CPU.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .. import config
from ..vecir import count_loop

# The register tile: compile-time constants of the code generator (see config.py).
MR = config.INT8_MR     # output channels per micro-tile (2 int32 accumulators each)
L = config.codegen_target().int8_lanes   # int32 lanes per vector: 8 (256-bit) or 16 (512-bit)
NR = 2 * L              # output pixels per micro-tile (2 vectors of 4*L bytes of interleaved uint8 per quad)

_i8 = ir.IntType(8)
_i16 = ir.IntType(16)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_f32 = ir.FloatType()


def _vec(t, n):
    return ir.VectorType(t, n)


# Decided once at import (config.codegen_target), used only while generating IR (not read by any kernel at
# run time). numba keys its cache on the CPU, so code built with the x86 intrinsics is never loaded on a CPU
# without AVX2.
_AVX2 = config.codegen_target().int8_avx2
_VNNI = config.codegen_target().int8_vnni


def _x86(builder, name: str, ret, args):
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return builder.call(fn, args)


def _madd_quads(builder, b, w, ones):
    """<L x i32>: per 32-bit lane, sat16(b0*w0 + b1*w1) + sat16(b2*w2 + b3*w3); b uint8, w int8 (<4L x i8>).

    On AVX2 CPUs the two steps are the x86 intrinsics themselves (``vpmaddubsw``, ``vpmaddwd`` by ones; their
    512-bit AVX512-BW forms with 16 lanes): LLVM matches the generic pattern below to vpmaddubsw, but inside
    the micro-kernel's loop, with the ones vector hoisted out of it, it turns the pair sum into a
    7-instruction sequence."""
    if _AVX2 and L == 16:
        t = _x86(builder, "llvm.x86.avx512.pmaddubs.w.512", _vec(_i16, 32), [b, w])
        return _x86(builder, "llvm.x86.avx512.pmaddw.d.512", _vec(_i32, 16), [t, ones])
    if _AVX2:
        t = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_i16, 16), [b, w])
        return _x86(builder, "llvm.x86.avx2.pmadd.wd", _vec(_i32, 8), [t, ones])
    even = ir.Constant(_vec(_i32, 2 * L), list(range(0, 4 * L, 2)))
    odd = ir.Constant(_vec(_i32, 2 * L), list(range(1, 4 * L, 2)))
    v16 = _vec(_i32, 2 * L)
    s = builder.add(builder.mul(builder.zext(builder.shuffle_vector(b, b, even), v16),
                                builder.sext(builder.shuffle_vector(w, w, even), v16)),
                    builder.mul(builder.zext(builder.shuffle_vector(b, b, odd), v16),
                                builder.sext(builder.shuffle_vector(w, w, odd), v16)))
    lo = ir.Constant(v16, [-32768] * (2 * L))
    hi = ir.Constant(v16, [32767] * (2 * L))
    s = builder.select(builder.icmp_signed(">", s, hi), hi, s)
    s = builder.select(builder.icmp_signed("<", s, lo), lo, s)
    t = builder.trunc(s, _vec(_i16, 2 * L))                                # -> vpmaddubsw
    e2 = ir.Constant(_vec(_i32, L), list(range(0, 2 * L, 2)))
    o2 = ir.Constant(_vec(_i32, L), list(range(1, 2 * L, 2)))
    v8 = _vec(_i32, L)
    return builder.add(builder.mul(builder.sext(builder.shuffle_vector(t, t, e2), v8),
                                   builder.sext(builder.shuffle_vector(ones, ones, e2), v8)),
                       builder.mul(builder.sext(builder.shuffle_vector(t, t, o2), v8),
                                   builder.sext(builder.shuffle_vector(ones, ones, o2), v8)))  # -> vpmaddwd


def _dot_quads(builder, acc, b, w):
    """acc + <L x i32>: per 32-bit lane, the exact sum b0*w0 + b1*w1 + b2*w2 + b3*w3 (b uint8, w int8).

    On VNNI CPUs this is ``vpdpbusd`` (MLAS's VNNI kernels use vpdpbusds, which saturates only the int32
    accumulator: never reached here); elsewhere the same sums in portable IR (correct, slower)."""
    v8 = _vec(_i32, L)
    if _VNNI:
        return _x86(builder, f"llvm.x86.avx512.vpdpbusd.{32 * L}", v8,
                    [acc, builder.bitcast(b, v8), builder.bitcast(w, v8)])
    v32 = _vec(_i32, 4 * L)
    prod = builder.mul(builder.zext(b, v32), builder.sext(w, v32))
    for lane in range(4):
        pick = ir.Constant(_vec(_i32, L), list(range(lane, 4 * L, 4)))
        acc = builder.add(acc, builder.shuffle_vector(prod, prod, pick))
    return acc


def _codegen_microkernel(builder, ap_i, base_i, koff_i, k_i, t_i, ones_i, epilogue=None, exact=False):
    """tile[r*NR + j] = sum over quads k of pairs(B[k, j, :], A[k, r, :]) for an MR x NR tile.

    Quad k of pixel j is the 4 bytes at base + koff[k] + 4*j (koff: int64 array of byte offsets), or at
    base + 64*k when koff_i is None (a packed B panel). With ``epilogue`` (see ``_codegen_epilogue``) the
    accumulators are requantised in registers and stored as int8 to t_i instead. ``exact``: the quads'
    four products are summed exactly (``_dot_quads``) instead of in two saturating pairs (``_madd_quads``).
    """
    u8v = _vec(_i8, 4 * L)
    ap = builder.inttoptr(ap_i, _i32.as_pointer())
    base = builder.inttoptr(base_i, _i8.as_pointer())
    koff = builder.inttoptr(koff_i, _i64.as_pointer()) if koff_i is not None else None
    ones = builder.load(builder.inttoptr(ones_i, _vec(_i16, 2 * L).as_pointer()), align=2)
    v8 = _vec(_i32, L)
    zero = ir.Constant(v8, [0] * L)
    undef = ir.Constant(v8, ir.Undefined)
    bcast = ir.Constant(_vec(_i32, L), [0] * L)
    nacc = MR * 2

    def step(kk, acc):
        if koff is None:
            kb = builder.mul(kk, ir.Constant(_i64, 4 * NR))
        else:
            kb = builder.load(builder.gep(koff, [kk]))
        b = []
        for h in range(2):
            p = builder.gep(base, [builder.add(kb, ir.Constant(_i64, 4 * L * h))])
            b.append(builder.load(builder.bitcast(p, u8v.as_pointer()), align=1))
        ka = builder.mul(kk, ir.Constant(_i64, MR))
        new = []
        for r in range(MR):
            wv = builder.load(builder.gep(ap, [builder.add(ka, ir.Constant(_i64, r))]), align=1)
            wb = builder.bitcast(builder.shuffle_vector(builder.insert_element(undef, wv, ir.Constant(_i32, 0)),
                                                        undef, bcast), u8v)
            for h in range(2):
                if exact:
                    new.append(_dot_quads(builder, acc[r * 2 + h], b[h], wb))
                else:
                    new.append(builder.add(acc[r * 2 + h], _madd_quads(builder, b[h], wb, ones)))
        return new

    res = count_loop(builder, k_i, [zero] * nacc, step, "q8")
    if epilogue is not None:
        _codegen_epilogue(builder, res, t_i, *epilogue)
        return
    t = builder.inttoptr(t_i, _i32.as_pointer())
    for i, phi in enumerate(res):
        r, h = divmod(i, 2)
        dst = builder.gep(t, [ir.Constant(_i64, r * NR + h * L)])
        builder.store(phi, builder.bitcast(dst, v8.as_pointer()), align=4)


def _codegen_epilogue(builder, res, out_i, ldc, bias_i, scale_i, fp_i, ip_i, rows):
    """Requantise MR x NR int32 accumulators in registers and store them as int8 rows of ``out``.

    Per row r: q = rint(clamp(float(acc + bias[r]) * scale[r], fp[0], fp[1])) + ip[0]  (MlasRequantizeOutput);
    if ip[1] (leaky): d = fp[2] * float(q - ip[0]); d = d >= 0 ? d : fp[4] * d; q = rint(clamp(d / fp[3],
    fp[5], fp[6])) + ip[2] (QLinearLeakyRelu's table entry, computed instead of looked up; ip[1] == 2: d * fp[7]
    instead of d / fp[3], where that is exact). Rows >= ``rows`` (zero padding of the last weight panel) are not
    stored.
    """
    v8 = _vec(_i32, L)
    f8 = _vec(_f32, L)
    undef_i = ir.Constant(v8, ir.Undefined)
    undef_f = ir.Constant(f8, ir.Undefined)
    bc = ir.Constant(_vec(_i32, L), [0] * L)
    out = builder.inttoptr(out_i, _i8.as_pointer())
    bias = builder.inttoptr(bias_i, _i32.as_pointer())
    scale = builder.inttoptr(scale_i, _f32.as_pointer())
    fp = builder.inttoptr(fp_i, _f32.as_pointer())
    ip = builder.inttoptr(ip_i, _i32.as_pointer())
    rint = builder.module.globals.get(f"llvm.rint.v{L}f32")
    if rint is None:
        rint = ir.Function(builder.module, ir.FunctionType(f8, [f8]), name=f"llvm.rint.v{L}f32")

    def splat_f(x):
        return builder.shuffle_vector(builder.insert_element(undef_f, x, ir.Constant(_i32, 0)), undef_f, bc)

    def splat_i(x):
        return builder.shuffle_vector(builder.insert_element(undef_i, x, ir.Constant(_i32, 0)), undef_i, bc)

    def fparam(k):
        return splat_f(builder.load(builder.gep(fp, [ir.Constant(_i64, k)])))

    def iparam(k):
        return splat_i(builder.load(builder.gep(ip, [ir.Constant(_i64, k)])))

    def clamp_round(f, lo, hi):
        f = builder.select(builder.fcmp_ordered(">", f, lo), f, lo)        # vmaxps
        f = builder.select(builder.fcmp_ordered("<", f, hi), f, hi)        # vminps
        return builder.fptosi(builder.call(rint, [f]), v8)                 # vcvtps2dq (round half to even)

    flo, fhi, sx2, sy2, alpha, flo2, fhi2, rsy2 = (fparam(k) for k in range(8))
    zp, zy = iparam(0), iparam(2)
    mode = builder.load(builder.gep(ip, [ir.Constant(_i64, 1)]))
    zero_f = ir.Constant(f8, [0.0] * L)

    def emit_rows(leaky: int) -> None:
        # leaky: 0 none, 1 divide by s_out (MLAS), 2 multiply by 1/s_out (chosen only where exact, see
        # epilogue_params). Each variant is its own code path: a vdivps costs ~7 multiplies
        end_bb = builder.function.append_basic_block("q8.rows_done")
        for r in range(MR):
            if r > 0:
                keep = builder.icmp_signed(">", rows, ir.Constant(_i64, r))
                row_bb = builder.function.append_basic_block(f"q8.row{r}")
                builder.cbranch(keep, row_bb, end_bb)
                builder.position_at_end(row_bb)
            b = splat_i(builder.load(builder.gep(bias, [ir.Constant(_i64, r)])))
            sc = splat_f(builder.load(builder.gep(scale, [ir.Constant(_i64, r)])))
            for h in range(2):
                f = builder.fmul(builder.sitofp(builder.add(res[r * 2 + h], b), f8), sc)
                q = builder.add(clamp_round(f, flo, fhi), zp)
                if leaky:
                    d = builder.fmul(sx2, builder.sitofp(builder.sub(q, zp), f8))
                    d = builder.select(builder.fcmp_ordered(">=", d, zero_f), d, builder.fmul(alpha, d))
                    v = builder.fdiv(d, sy2) if leaky == 1 else builder.fmul(d, rsy2)
                    q = builder.add(clamp_round(v, flo2, fhi2), zy)
                off = builder.add(builder.mul(ldc, ir.Constant(_i64, r)), ir.Constant(_i64, L * h))
                dst = builder.bitcast(builder.gep(out, [off]), _vec(_i8, L).as_pointer())
                builder.store(builder.trunc(q, _vec(_i8, L)), dst, align=1)
        builder.branch(end_bb)
        builder.position_at_end(end_bb)

    with builder.if_else(builder.icmp_signed("==", mode, ir.Constant(_i32, 0))) as (plain, lk):
        with plain:
            emit_rows(0)
        with lk:
            with builder.if_else(builder.icmp_signed("==", mode, ir.Constant(_i32, 2))) as (mul, div):
                with mul:
                    emit_rows(2)
                with div:
                    emit_rows(1)


def _four_variants(builder, koff_i, exact_i, emit):
    """emit(koff or None, exact) under run-time branches on koff == 0 (a packed panel) and exact != 0."""
    packed = builder.icmp_signed("==", koff_i, ir.Constant(_i64, 0))
    exact = builder.icmp_signed("!=", exact_i, ir.Constant(_i64, 0))
    with builder.if_else(exact) as (ex, sat):
        for flag, block in ((True, ex), (False, sat)):
            with block:
                with builder.if_else(packed) as (then, otherwise):
                    with then:
                        emit(None, flag)
                    with otherwise:
                        emit(koff_i, flag)


@intrinsic
def microkernel_u8s8(typingctx, ap, base, koff, k, tile, ones, exact):
    """int32 tile[MR*NR] of an MR x NR block: see _codegen_microkernel. koff == 0 selects a packed panel,
    exact != 0 the exact sums (``config.CodegenTarget.int8_pairs``). Arguments are addresses (intp), k
    (quads) and exact (0/1)."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, t_i, ones_i, exact_i = args
        _four_variants(builder, koff_i, exact_i, lambda ko, ex: _codegen_microkernel(
            builder, ap_i, base_i, ko, k_i, t_i, ones_i, exact=ex))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def microkernel_u8s8_fused(typingctx, ap, base, koff, k, out, ldc, bias, scale, fparams, iparams, rows, ones,
                           exact):
    """The micro-kernel with the requantisation epilogue: int8 out[r*ldc + j] for r < rows, all NR columns.

    ``fparams`` float32[7] = (lo - zp, hi - zp, s_pre, s_out, alpha, lo - zp_out, hi - zp_out) and ``iparams``
    int32[3] = (zp, leaky, zp_out), see _codegen_epilogue; ``bias`` int32 and ``scale`` float32 per row."""
    sig = types.void(*([types.intp] * 13))

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, o_i, ldc_i, b_i, s_i, fp_i, ip_i, rows_i, ones_i, exact_i = args
        ep = (ldc_i, b_i, s_i, fp_i, ip_i, rows_i)
        _four_variants(builder, koff_i, exact_i, lambda ko, ex: _codegen_microkernel(
            builder, ap_i, base_i, ko, k_i, o_i, ones_i, ep, exact=ex))
        return context.get_dummy_value()

    return sig, codegen


# The ones vector the pair sums are multiplied by (vpmaddwd); pass its address as ``ones`` (2*L int16 are read).
ONES16 = np.ones(32, np.int16)
