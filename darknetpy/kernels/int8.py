"""int8 kernels: the arithmetic onnxruntime (MLAS, x86) performs on a QDQ model, reproduced bit for bit.

How onnxruntime 1.31 runs an int8 QDQ model on x86 (established by experiment, ``tests/test_int8_kernels.py``):
int8 activations are shifted to uint8 (``u = q + 128``, zero point + 128), convolutions and Gemm become
QLinearConv / QGemm computing, per output value,

    acc = sum over pairs (k, k+1) of sat16(u[k] * w[k] + u[k+1] * w[k+1])  -  (zp + 128) * sum(w)  +  bias
    q   = saturate(round_half_even(float32(acc) * float32(float32(s_x * s_w[c]) / s_y)) + zp_y)

where the pairs run over the kernel flattened as (ky, kx, c) (per group) and ``sat16`` is the int16
saturation of AVX2's ``vpmaddubsw``; depthwise convolutions are exact (no pairs). This module multiplies
the same pairs with the same instruction, so it computes the same values whatever the weights (and with
``pair_safe`` weights, see quant.py, no pair ever saturates and the result is the exact integer one).

Layouts (batch 1):

* activations are int8 (C, H, W) (or (N,) flat), as the int8 engine stores them;
* ``prepare_quads`` makes the uint8 input of a groups=1 convolution with an even channel count:
  ``xs[c4, y, p, j, l] = x[4*c4 + l, y - pad, j*stride + p - pad] + 128`` (zero point + 128 in the padding,
  0 in the padding channels), i.e. padded, split into ``stride`` column phases like ``conv.py``, with four
  consecutive channels interleaved per pixel: 16 neighbouring output pixels then read 64 contiguous bytes
  for one (c4, ky, kx) and the four bytes of a pixel are the two vpmaddubsw pairs MLAS forms;
* ``prepare_planes`` makes the padded uint8 input of the im2col (odd channel count), grouped and depthwise
  kernels split into stride x stride phase planes ``xs[c, py, px, Y, X]``, so that every tap of an output map
  is one contiguous run (whatever the stride);
* packed weights for the GEMM: ``ap[ip, (k4*MR + r)*4 + l]`` = weight of output channel ``ip*MR + r`` at
  quad k4, element l (zero rows and elements pad).

The GEMM micro-kernel (MR=4 output channels x NR=16 pixels, int32 accumulators in 8 vector registers) is
LLVM vector IR written through ``numba.extending.intrinsic`` like ``gemm.py``. It is portable IR: the
saturating pair sum is written as zext/sext, mul, add, clamp, trunc, which LLVM's x86 backend turns into
``vpmaddubsw``; the int16 pair sum into int32 is a multiply-add by a ones vector loaded from memory, which
becomes ``vpmaddwd``. On other CPUs the same IR compiles to correct (slower) generic code.

Requantisation, leaky, add, concat, pooling and softmax follow MLAS's float32 formulas exactly (no
fastmath anywhere in this module: the division in QuantizeLinear and the FMAs of QLinearAdd must not be
rewritten). The thread count is passed in (``numba.get_num_threads()`` inside a kernel defeats caching).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .vecir import count_loop

MR = 4            # output channels per micro-tile (8 int32 accumulators of 8 lanes)
NR = 16           # output pixels per micro-tile (2 x 32 bytes of interleaved uint8 input per quad)

_i8 = ir.IntType(8)
_i16 = ir.IntType(16)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_f32 = ir.FloatType()


def _vec(t, n):
    return ir.VectorType(t, n)


def _host_has_avx2() -> bool:
    try:
        import llvmlite.binding as llvm
        return "+avx2" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:  # pragma: no cover - a platform llvmlite cannot query
        return False


# Decided once at import, used only while generating IR (not read by any kernel at run time). numba keys its
# cache on the CPU, so code built with the x86 intrinsics is never loaded on a CPU without AVX2.
_AVX2 = _host_has_avx2()


def _x86(builder, name: str, ret, args):
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return builder.call(fn, args)


def _madd_quads(builder, b, w, ones):
    """<8 x i32>: per 32-bit lane, sat16(b0*w0 + b1*w1) + sat16(b2*w2 + b3*w3); b uint8, w int8 (<32 x i8>).

    On AVX2 CPUs the two steps are the x86 intrinsics themselves (``vpmaddubsw``, ``vpmaddwd`` by ones):
    LLVM matches the generic pattern below to vpmaddubsw, but inside the micro-kernel's loop, with the ones
    vector hoisted out of it, it turns the pair sum into a 7-instruction sequence."""
    if _AVX2:
        t = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(_i16, 16), [b, w])
        return _x86(builder, "llvm.x86.avx2.pmadd.wd", _vec(_i32, 8), [t, ones])
    even = ir.Constant(_vec(_i32, 16), list(range(0, 32, 2)))
    odd = ir.Constant(_vec(_i32, 16), list(range(1, 32, 2)))
    v16 = _vec(_i32, 16)
    s = builder.add(builder.mul(builder.zext(builder.shuffle_vector(b, b, even), v16),
                                builder.sext(builder.shuffle_vector(w, w, even), v16)),
                    builder.mul(builder.zext(builder.shuffle_vector(b, b, odd), v16),
                                builder.sext(builder.shuffle_vector(w, w, odd), v16)))
    lo = ir.Constant(v16, [-32768] * 16)
    hi = ir.Constant(v16, [32767] * 16)
    s = builder.select(builder.icmp_signed(">", s, hi), hi, s)
    s = builder.select(builder.icmp_signed("<", s, lo), lo, s)
    t = builder.trunc(s, _vec(_i16, 16))                                   # -> vpmaddubsw
    e2 = ir.Constant(_vec(_i32, 8), list(range(0, 16, 2)))
    o2 = ir.Constant(_vec(_i32, 8), list(range(1, 16, 2)))
    v8 = _vec(_i32, 8)
    return builder.add(builder.mul(builder.sext(builder.shuffle_vector(t, t, e2), v8),
                                   builder.sext(builder.shuffle_vector(ones, ones, e2), v8)),
                       builder.mul(builder.sext(builder.shuffle_vector(t, t, o2), v8),
                                   builder.sext(builder.shuffle_vector(ones, ones, o2), v8)))  # -> vpmaddwd


def _codegen_microkernel(builder, ap_i, base_i, koff_i, k_i, t_i, ones_i, epilogue=None):
    """tile[r*NR + j] = sum over quads k of pairs(B[k, j, :], A[k, r, :]) for an MR x NR tile.

    Quad k of pixel j is the 4 bytes at base + koff[k] + 4*j (koff: int64 array of byte offsets), or at
    base + 64*k when koff_i is None (a packed B panel). With ``epilogue`` (see ``_codegen_epilogue``) the
    accumulators are requantised in registers and stored as int8 to t_i instead.
    """
    u8v = _vec(_i8, 32)
    ap = builder.inttoptr(ap_i, _i32.as_pointer())
    base = builder.inttoptr(base_i, _i8.as_pointer())
    koff = builder.inttoptr(koff_i, _i64.as_pointer()) if koff_i is not None else None
    ones = builder.load(builder.inttoptr(ones_i, _vec(_i16, 16).as_pointer()), align=2)
    v8 = _vec(_i32, 8)
    zero = ir.Constant(v8, [0] * 8)
    undef = ir.Constant(v8, ir.Undefined)
    bcast = ir.Constant(_vec(_i32, 8), [0] * 8)
    nacc = MR * 2

    def step(kk, acc):
        if koff is None:
            kb = builder.mul(kk, ir.Constant(_i64, 4 * NR))
        else:
            kb = builder.load(builder.gep(koff, [kk]))
        b = []
        for h in range(2):
            p = builder.gep(base, [builder.add(kb, ir.Constant(_i64, 32 * h))])
            b.append(builder.load(builder.bitcast(p, u8v.as_pointer()), align=1))
        ka = builder.mul(kk, ir.Constant(_i64, MR))
        new = []
        for r in range(MR):
            wv = builder.load(builder.gep(ap, [builder.add(ka, ir.Constant(_i64, r))]), align=1)
            wb = builder.bitcast(builder.shuffle_vector(builder.insert_element(undef, wv, ir.Constant(_i32, 0)),
                                                        undef, bcast), u8v)
            for h in range(2):
                new.append(builder.add(acc[r * 2 + h], _madd_quads(builder, b[h], wb, ones)))
        return new

    res = count_loop(builder, k_i, [zero] * nacc, step, "q8")
    if epilogue is not None:
        _codegen_epilogue(builder, res, t_i, *epilogue)
        return
    t = builder.inttoptr(t_i, _i32.as_pointer())
    for i, phi in enumerate(res):
        r, h = divmod(i, 2)
        dst = builder.gep(t, [ir.Constant(_i64, r * NR + h * 8)])
        builder.store(phi, builder.bitcast(dst, v8.as_pointer()), align=4)


def _codegen_epilogue(builder, res, out_i, ldc, bias_i, scale_i, fp_i, ip_i, rows):
    """Requantise MR x NR int32 accumulators in registers and store them as int8 rows of ``out``.

    Per row r: q = rint(clamp(float(acc + bias[r]) * scale[r], fp[0], fp[1])) + ip[0]  (MlasRequantizeOutput);
    if ip[1] (leaky): d = fp[2] * float(q - ip[0]); d = d >= 0 ? d : fp[4] * d; q = rint(clamp(d / fp[3],
    fp[5], fp[6])) + ip[2] (QLinearLeakyRelu's table entry, computed instead of looked up; ip[1] == 2: d * fp[7]
    instead of d / fp[3], where that is exact). Rows >= ``rows`` (zero padding of the last weight panel) are not
    stored.
    """
    v8 = _vec(_i32, 8)
    f8 = _vec(_f32, 8)
    undef_i = ir.Constant(v8, ir.Undefined)
    undef_f = ir.Constant(f8, ir.Undefined)
    bc = ir.Constant(_vec(_i32, 8), [0] * 8)
    out = builder.inttoptr(out_i, _i8.as_pointer())
    bias = builder.inttoptr(bias_i, _i32.as_pointer())
    scale = builder.inttoptr(scale_i, _f32.as_pointer())
    fp = builder.inttoptr(fp_i, _f32.as_pointer())
    ip = builder.inttoptr(ip_i, _i32.as_pointer())
    rint = builder.module.globals.get("llvm.rint.v8f32")
    if rint is None:
        rint = ir.Function(builder.module, ir.FunctionType(f8, [f8]), name="llvm.rint.v8f32")

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
    zero_f = ir.Constant(f8, [0.0] * 8)

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
                off = builder.add(builder.mul(ldc, ir.Constant(_i64, r)), ir.Constant(_i64, 8 * h))
                dst = builder.bitcast(builder.gep(out, [off]), _vec(_i8, 8).as_pointer())
                builder.store(builder.trunc(q, _vec(_i8, 8)), dst, align=1)
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


@intrinsic
def microkernel_u8s8(typingctx, ap, base, koff, k, tile, ones):
    """int32 tile[MR*NR] of an MR x NR block: see _codegen_microkernel. koff == 0 selects a packed panel.
    Arguments are addresses (intp) and k (quads)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, t_i, ones_i = args
        packed = builder.icmp_signed("==", koff_i, ir.Constant(_i64, 0))
        with builder.if_else(packed) as (then, otherwise):
            with then:
                _codegen_microkernel(builder, ap_i, base_i, None, k_i, t_i, ones_i)
            with otherwise:
                _codegen_microkernel(builder, ap_i, base_i, koff_i, k_i, t_i, ones_i)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def microkernel_u8s8_fused(typingctx, ap, base, koff, k, out, ldc, bias, scale, fparams, iparams, rows, ones):
    """The micro-kernel with the requantisation epilogue: int8 out[r*ldc + j] for r < rows, all NR columns.

    ``fparams`` float32[7] = (lo - zp, hi - zp, s_pre, s_out, alpha, lo - zp_out, hi - zp_out) and ``iparams``
    int32[3] = (zp, leaky, zp_out), see _codegen_epilogue; ``bias`` int32 and ``scale`` float32 per row."""
    sig = types.void(*([types.intp] * 12))

    def codegen(context, builder, signature, args):
        ap_i, base_i, koff_i, k_i, o_i, ldc_i, b_i, s_i, fp_i, ip_i, rows_i, ones_i = args
        ep = (ldc_i, b_i, s_i, fp_i, ip_i, rows_i)
        packed = builder.icmp_signed("==", koff_i, ir.Constant(_i64, 0))
        with builder.if_else(packed) as (then, otherwise):
            with then:
                _codegen_microkernel(builder, ap_i, base_i, None, k_i, o_i, ones_i, ep)
            with otherwise:
                _codegen_microkernel(builder, ap_i, base_i, koff_i, k_i, o_i, ones_i, ep)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 fused multiply-add a*b + c with a single rounding (llvm.fma: vfmadd on FMA CPUs)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


ONES16 = np.ones(16, np.int16)


# -- requantisation (MLAS float32 formulas) --------------------------------------------------------------

@njit(cache=True)
def requant(acc, scale, zp, flo, fhi):
    """MlasRequantizeOutput: clamp(float32(acc) * scale, lo - zp, hi - zp), round half even, + zp."""
    f = np.float32(acc) * scale
    if f < flo:
        f = flo
    if f > fhi:
        f = fhi
    return np.int64(np.rint(f)) + zp


@njit(cache=True)
def quantize_value(v, scale, zp):
    """MlasQuantizeLinear (ONNX QuantizeLinear): saturate(round_half_even(v / scale) + zp), float32 v."""
    f = v / scale
    lo = np.float32(-128 - zp)
    hi = np.float32(127 - zp)
    if f < lo:
        f = lo
    if f > hi:
        f = hi
    return np.int64(np.rint(f)) + zp


@njit(cache=True)
def leaky_q(q, zx, sx, zy, sy, alpha):
    """QLinearLeakyRelu's table entry for int8 q: quantize(leaky(sx * (q - zx))) (all float32)."""
    d = sx * np.float32(q - zx)
    if not (d >= np.float32(0.0)):
        d = alpha * d
    return quantize_value(d, sy, zy)


@njit(cache=True)
def _epilogue(acc, bias, scale, fp, ip):
    # conv output: requantise to the conv's (pre-activation) parameters; then leaky into the output's.
    # fp = (lo - zp, hi - zp, s_pre, s_out, alpha, lo - zp_out, hi - zp_out), ip = (zp, leaky, zp_out)
    q = requant(acc + bias, scale, ip[0], fp[0], fp[1])
    if ip[1]:
        q = leaky_q(q, ip[0], fp[2], ip[2], fp[3], fp[4])
    return q


_MAGIC = np.float32(12582912.0)    # 1.5 * 2**23: (f + M) - M rounds float32 f half to even for |f| < 2**22


@njit(cache=True)
def _requant_row(acc, n, bias, scale, fp, ip, dst):
    # _epilogue over acc[0:n] into int8 dst[0:n], written as plain loops (one per case) that LLVM vectorises.
    # The values are clamped to [-255, 255] before rounding, where the magic-number rounding equals rint
    # (numba's np.rint is a scalar libm call that would keep the loop from vectorising).
    zp = np.int32(ip[0])
    flo, fhi = fp[0], fp[1]
    m = _MAGIC
    if ip[1] == 0:
        for j in range(n):
            ju = np.uint64(j)
            # np.int32(...) everywhere: numba widens int32 arithmetic to int64, which AVX2 cannot convert
            # to float in vectors; truncating lets LLVM keep (and vectorise) the 32-bit operations
            f = np.float32(np.int32(acc[ju] + bias)) * scale
            f = f if f > flo else flo
            f = f if f < fhi else fhi
            dst[ju] = np.int32(np.int32((f + m) - m) + zp)
        return
    sx, sy, alpha, flo2, fhi2, rsy = fp[2], fp[3], fp[4], fp[5], fp[6], fp[7]
    mul = ip[1] == 2
    zy = np.int32(ip[2])
    for j in range(n):
        ju = np.uint64(j)
        f = np.float32(np.int32(acc[ju] + bias)) * scale
        f = f if f > flo else flo
        f = f if f < fhi else fhi
        q = np.int32((f + m) - m)                   # = requantised value - zp
        d = sx * np.float32(q)
        d = d if d >= np.float32(0.0) else alpha * d
        v = d * rsy if mul else d / sy
        v = v if v > flo2 else flo2
        v = v if v < fhi2 else fhi2
        dst[ju] = np.int32(np.int32((v + m) - m) + zy)


def epilogue_params(zp: int, leaky) -> tuple[np.ndarray, np.ndarray]:
    """(fp float32[8], ip int32[3]) for a conv requantised to zero point ``zp``; ``leaky`` = None or
    (zp_out, scale_out, alpha, scale_pre): then the result goes through leaky into (scale_out, zp_out).

    MLAS divides by the output scale; multiplying by its reciprocal is much cheaper and gives the same
    rounded result unless a quotient lies within an ulp of a rounding boundary. Only 256 inputs exist, so
    all are tried here: ip[1] = 2 (multiply) only when every one agrees, else 1 (divide)."""
    if leaky is None:
        zy, sy, alpha, sx = 0, 1.0, 0.0, 1.0
    else:
        zy, sy, alpha, sx = leaky
    f = np.float32
    mode = 0
    if leaky is not None:
        q = np.arange(-128, 128, dtype=np.int32)
        d = (f(sx) * (q - zp).astype(f)).astype(f)
        d = np.where(d >= 0, d, (f(alpha) * d).astype(f)).astype(f)
        lo, hi = f(-128 - zy), f(127 - zy)
        by_div = np.rint(np.clip((d / f(sy)).astype(f), lo, hi))
        by_mul = np.rint(np.clip((d * f(f(1) / f(sy))).astype(f), lo, hi))
        mode = 2 if np.array_equal(by_div, by_mul) else 1
    fp = np.array([-128 - zp, 127 - zp, sx, sy, alpha, -128 - zy, 127 - zy, f(f(1) / f(sy))], np.float32)
    ip = np.array([zp, mode, zy], np.int32)
    return fp, ip


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


SERIAL_BYTES = 64 * 1024    # below this, one thread does an elementwise pass: a parallel region costs ~2-13 us


def prepare_quads(x: np.ndarray, pad: int, zero_point: int, xs: np.ndarray) -> None:
    """int8 (C, H, W) -> uint8 (C4, Hp, S, Wq, 4), see the module docstring."""
    f = _prepare_quads_ser if xs.size < SERIAL_BYTES else _prepare_quads_par
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
    f = _prepare_planes_ser if xs.size < SERIAL_BYTES else _prepare_planes_par
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


# -- groups=1 convolution: implicit GEMM on the interleaved input ------------------------------------------

@njit(cache=True, parallel=True)
def _conv_quads(xs, ap, koff, bias, scale, fp, ip, ones, direct_rows, nthreads, out):
    # xs: (C4, Hp, S, Wq, 4) uint8 viewed as uint32 per pixel; out: (M, out_h, out_w) int8
    m, out_h, out_w = out.shape
    n = out_h * out_w
    s, wq = xs.shape[2], xs.shape[3]
    row = s * wq                                   # uint32 units between two padded input rows
    k4 = koff.shape[0]
    npan = (n + NR - 1) // NR
    nip = ap.shape[0]
    # split the output channels too when pixel panels are few, so that every thread gets >= 8 work items
    # (a static split of 13 panels over 2 threads leaves one idle 1/13 of the time)
    want = 8 * nthreads
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
                                           ip.ctypes.data, m - i0, onesaddr)
                    continue
                microkernel_u8s8(aaddr + ip_ * astride, bsrc, boff, k4, tile.ctypes.data, onesaddr)
                for r in range(min(MR, m - i0)):
                    o_ = i0 + r
                    orow = out2d[o_]
                    for j in range(jn):
                        orow[n0 + j] = _epilogue(tile[r * NR + j], bias[o_], scale[o_], fp, ip)


def conv_koff(c: int, hp: int, s: int, wq: int, size: int) -> np.ndarray:
    """Byte offsets of each quad (c4, ky, kx) from a pixel's base in the interleaved input."""
    c4 = (c + 3) // 4
    k = np.arange(size)
    off = ((np.arange(c4)[:, None, None] * hp + k[None, :, None]) * s + (k[None, None, :] % s)) * wq \
        + k[None, None, :] // s
    return np.ascontiguousarray((4 * off).reshape(-1).astype(np.int64))


def conv_quads(xs, ap, koff, bias, scale, fp, ip, out, nthreads: int) -> None:
    """groups=1 int8 convolution (C even) from ``prepare_quads``'s buffer, requantised per
    ``epilogue_params``. ``bias``/``scale`` must have a multiple of MR entries (zero padded)."""
    direct = xs.shape[2] == 1 and xs.shape[1] * xs.shape[3] == out.shape[1] * out.shape[2]
    _conv_quads(xs, ap, koff, bias, scale, fp, ip, ONES16, direct, nthreads, out)


# -- im2col convolution (odd channel counts: pairs cross kernel taps, as in MLAS's flat K) -----------------

@njit(cache=True, parallel=True)
def _conv_im2col(xs, wq, ap, kidx, bias, scale, fp, ip, ones, nthreads, out):
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
                                           ip.ctypes.data, m - i0, onesaddr)
                    continue
                microkernel_u8s8(aaddr + ip_ * astride, bp.ctypes.data, 0, k4, tile.ctypes.data, onesaddr)
                for r in range(min(MR, m - i0)):
                    o_ = i0 + r
                    orow = out2d[o_]
                    for j in range(jn):
                        orow[n0 + j] = _epilogue(tile[r * NR + j], bias[o_], scale[o_], fp, ip)


def im2col_index(c: int, size: int, s: int, hq: int, wq: int) -> np.ndarray:
    """Tap offset (see ``tap_offset``) of each flat k = (ky, kx, c); -1 pads K to a multiple of 4."""
    idx = [tap_offset(ch, ky, kx, s, hq, wq) for ky in range(size) for kx in range(size) for ch in range(c)]
    idx += [-1] * (-len(idx) % 4)
    return np.array(idx, np.int64)


def conv_im2col(xflat, wq: int, ap, kidx, bias, scale, fp, ip, out, nthreads: int) -> None:
    """groups=1 convolution with onnxruntime's cross-tap pairs (odd C), from ``prepare_planes``'s buffer
    (``xflat``: its flat view plus PLANE_SLACK bytes; ``wq``: the planes' width)."""
    _conv_im2col(xflat, wq, ap, kidx, bias, scale, fp, ip, ONES16, nthreads, out)


# -- grouped convolution (MLAS: a GEMM per group, pairs over the group's flat (ky, kx, c)) ----------------

@njit(cache=True, parallel=True)
def _conv_grouped(xs, wq, pw, poff, bias, scale, fp, ip, nthreads, out):
    # pw: (M, P, 2) int32 pair weights; poff: (G, P, 2) tap offsets of the pair's inputs; the whole output
    # map of a channel is accumulated as one run of oh*Wq values (Wq - out_w of them unused per row)
    m, out_h, out_w = out.shape
    g = poff.shape[0]
    npair = poff.shape[1]
    mg = m // g
    nrun = out_h * wq
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
                    acc[ju] = np.int32(acc[ju] + min(max(v, np.int32(-32768)), np.int32(32767)))
            _requant_row(acc, nrun, bias[o], scale[o], fp, ip, q)
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


def conv_grouped(xflat, wq: int, pw, poff, bias, scale, fp, ip, out, nthreads: int) -> None:
    """Grouped convolution (not depthwise) with MLAS's per-group pairs, from ``prepare_planes``'s buffer."""
    _conv_grouped(xflat, wq, pw, poff, bias, scale, fp, ip, nthreads, out)


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
            _requant_row(acc, nrun, bias[ch], scale[ch], fp, ip, q)
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
def _gemv_pairs(u0, u1, w0, w1, bias, scale, fp, ip, out):
    # u0/u1: (K2,) int32 even/odd inputs + 128; w0/w1: (N, K2) int32 even/odd weights; out (N,) int8
    n, k2 = w0.shape
    for o in prange(n):
        acc = np.int32(0)
        a = w0[o]
        b = w1[o]
        for j in range(k2):
            ju = np.uint64(j)
            v = np.int32(a[ju] * u0[ju] + b[ju] * u1[ju])
            acc = np.int32(acc + min(max(v, np.int32(-32768)), np.int32(32767)))
        out[o] = _epilogue(acc, bias[o], scale[o], fp, ip)


def split_pairs(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) int8 -> even/odd int32 halves (N, ceil(K/2)) (a zero pads an odd K, as MLAS pads K)."""
    n, k = w.shape
    wp = np.zeros((n, k + k % 2), np.int32)
    wp[:, :k] = w
    return np.ascontiguousarray(wp[:, 0::2]), np.ascontiguousarray(wp[:, 1::2])


def connected(x, w0, w1, bias, scale, fp, ip, out) -> None:
    """[connected] as onnxruntime's QGemm (``split_pairs`` weights); ``bias`` holds -(zp_x + 128) * sum(w)."""
    k = x.size
    u = np.zeros(k + k % 2, np.int32)
    u[:k] = x.astype(np.int32) + 128
    _gemv_pairs(np.ascontiguousarray(u[0::2]), np.ascontiguousarray(u[1::2]), w0, w1, bias, scale, fp, ip, out)


# -- elementwise -------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _quantize(x, scale, zp, out):
    # QuantizeLinear, vectorisable form of quantize_value (clamp, then magic-number rounding, see _requant_row)
    n = x.size
    lo = np.float32(-128 - zp)
    hi = np.float32(127 - zp)
    z = np.int32(zp)
    m = _MAGIC
    nchunk = 64
    for c in prange(nchunk):
        for i in range(c * n // nchunk, (c + 1) * n // nchunk):
            iu = np.uint64(i)
            f = x[iu] / scale
            f = f if f > lo else lo
            f = f if f < hi else hi
            out[iu] = np.int32(np.int32((f + m) - m) + z)


def quantize(x: np.ndarray, scale: float, zero_point: int, out: np.ndarray) -> None:
    """QuantizeLinear of a float32 tensor into ``out`` (int8, same size)."""
    _quantize(x.reshape(-1), np.float32(scale), np.int64(zero_point), out.reshape(-1))


@njit(cache=True)
def _requant_table(zx, sx, zy, sy, table):
    # QLinearConcat's table: entry u (= q + 128) holds quantize(sx * (q - zx)) in the output's parameters
    for u in range(256):
        table[u] = quantize_value(sx * np.float32(u - 128 - zx), sy, zy)


def requant_table(zx: int, sx: float, zy: int, sy: float) -> np.ndarray | None:
    """The int8 -> int8 table re-expressing a tensor in another scale/zero point (None: a plain copy)."""
    if zx == zy and np.float32(sx) == np.float32(sy):
        return None
    t = np.empty(256, np.int8)
    _requant_table(np.int64(zx), np.float32(sx), np.int64(zy), np.float32(sy), t)
    return t


@njit(cache=True, parallel=True)
def _lookup(x, table, out):
    n = x.size
    nchunk = 64
    for c in prange(nchunk):
        for i in range(c * n // nchunk, (c + 1) * n // nchunk):
            iu = np.uint64(i)
            out[iu] = table[np.uint64(np.int32(x[iu]) + 128)]


def requant_copy(x: np.ndarray, table: np.ndarray | None, out: np.ndarray) -> None:
    """Copy int8 ``x`` into ``out`` through ``requant_table``'s table (or as is)."""
    if table is None:
        out.reshape(-1)[...] = x.reshape(-1)
    else:
        _lookup(x.reshape(-1), table, out.reshape(-1))


@njit(cache=True, parallel=True)
def _leaky_inplace(x, zx, sx, zy, sy, alpha):
    for i in prange(x.size):
        x[i] = leaky_q(x[i], zx, sx, zy, sy, alpha)


@njit(cache=True, parallel=True)
def _add(a, b, rac, rbc, fixed, offset, leaky, zx2, sx2, zy, sy, alpha, out):
    # QLinearAdd (MLAS AVX2) with u = q + offset: c = fma(a_u, rac, fma(b_u, rbc, fixed)), rounded half to
    # even, saturated to the domain's [lo, hi]; then back to int8 (and through leaky if asked). Chunks of
    # plain 32-bit loops so that LLVM vectorises them (see _requant_row).
    lo = np.float32(-128 + offset)
    hi = np.float32(127 + offset)
    off = np.int32(offset)
    m = _MAGIC
    n = a.size
    nchunk = 64
    flo2 = np.float32(-128 - zy)
    fhi2 = np.float32(127 - zy)
    for c in prange(nchunk):
        i0 = c * n // nchunk
        i1 = (c + 1) * n // nchunk
        if not leaky:
            for i in range(i0, i1):
                iu = np.uint64(i)
                au = np.float32(np.int32(np.int32(a[iu]) + off))
                bu = np.float32(np.int32(np.int32(b[iu]) + off))
                v = fma32(au, rac, fma32(bu, rbc, fixed))
                # cvtps2dq then packs/packus: saturation after rounding, equal to clamping before it
                v = v if v > lo else lo
                v = v if v < hi else hi
                out[iu] = np.int32(np.int32((v + m) - m) - off)
        else:
            for i in range(i0, i1):
                iu = np.uint64(i)
                au = np.float32(np.int32(np.int32(a[iu]) + off))
                bu = np.float32(np.int32(np.int32(b[iu]) + off))
                v = fma32(au, rac, fma32(bu, rbc, fixed))
                v = v if v > lo else lo
                v = v if v < hi else hi
                q = np.int32(np.int32((v + m) - m) - off - zx2)
                d = sx2 * np.float32(q)
                d = d if d >= np.float32(0.0) else alpha * d
                f = d / sy
                f = f if f > flo2 else flo2
                f = f if f < fhi2 else fhi2
                out[iu] = np.int32(np.int32((f + m) - m) + zy)


def add(a, za: int, sa: float, b, zb: int, sb: float, zc: int, sc: float, out, leaky=None, offset: int = 128) -> None:
    """[shortcut] as onnxruntime's QLinearAdd (output parameters (sc, zc)); ``leaky`` = (zy, sy, alpha).

    ``offset`` is the integer domain onnxruntime evaluates the formula in: 128 for its uint8 rewrite of int8
    activations (x86 default), 0 for int8 (``session.qdqisint8allowed=1``, ARM). The float32 rounding of the
    formula depends on it."""
    f32 = np.float32
    rac, rbc = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    zau, zbu, zcu = f32(za + offset), f32(zb + offset), f32(zc + offset)
    # (float)ZeroPointC - (ScaleRatio_AC * ZeroPointA + ScaleRatio_BC * ZeroPointB), contracted to an FMA
    fixed = f32(zcu - _fma_np(rac, zau, f32(rbc * zbu)))
    if leaky is None:
        lk, zy, sy, alpha = False, 0, f32(1), f32(0)
    else:
        lk, (zy, sy, alpha) = True, leaky
    _add(a.reshape(-1), b.reshape(-1), rac, rbc, fixed, np.int32(offset), lk, np.int32(zc), f32(sc), np.int32(zy),
         f32(sy), f32(alpha), out.reshape(-1))


def _fma_np(a, b, c) -> np.float32:
    """float32 fma evaluated in float64 (exact product; one rounding of the sum in all practical cases)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(cache=True, parallel=True)
def _maxpool(x, size, stride, pad, out):
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    off = -(pad // 2)
    for ch in prange(c):
        for i in range(out_h):
            for j in range(out_w):
                m = np.int8(-128)
                for n in range(size):
                    y = off + i * stride + n
                    if y < 0 or y >= h:
                        continue
                    for k in range(size):
                        xx = off + j * stride + k
                        if 0 <= xx < w and x[ch, y, xx] > m:
                            m = x[ch, y, xx]
                out[ch, i, j] = m


@njit(cache=True)
def _maxpool_2x2s2_channel(x, out, ch):
    # size 2, stride 2, window offset 0; an odd last row/column sees only the pixels that exist
    c, h, w = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    fw = w // 2
    for i in range(out_h):
        r0 = x[ch, 2 * i]
        r1 = x[ch, min(2 * i + 1, h - 1)]
        dst = out[ch, i]
        for j in range(fw):
            ju = np.uint64(2 * j)
            dst[np.uint64(j)] = max(max(r0[ju], r0[ju + np.uint64(1)]), max(r1[ju], r1[ju + np.uint64(1)]))
        if out_w > fw:
            dst[fw] = max(r0[w - 1], r1[w - 1])


@njit(cache=True, parallel=True)
def _maxpool_2x2s2_par(x, out):
    for ch in prange(x.shape[0]):
        _maxpool_2x2s2_channel(x, out, ch)


@njit(cache=True)
def _maxpool_2x2s2_ser(x, out):
    for ch in range(x.shape[0]):
        _maxpool_2x2s2_channel(x, out, ch)


def maxpool(x: np.ndarray, size: int, stride: int, pad: int, out: np.ndarray) -> None:
    """darknet [maxpool] on int8 (a max is exact in any representation); ``pad`` is darknet's total."""
    if size == 2 and stride == 2 and pad // 2 == 0:
        (_maxpool_2x2s2_ser if x.size < SERIAL_BYTES else _maxpool_2x2s2_par)(x, out)
    else:
        _maxpool(x, size, stride, pad, out)


@njit(cache=True)
def _global_avgpool(x, zx, scale, zy, out):
    # a few hundred thousand bytes at most (the last feature map): one thread, no parallel region
    c, n = x.shape
    flo, fhi = np.float32(-128 - zy), np.float32(127 - zy)
    for ch in range(c):
        acc = np.int32(0)
        row = x[ch]
        for i in range(n):
            acc = np.int32(acc + np.int32(row[np.uint64(i)]))
        out[ch] = requant(acc - zx * n, scale, zy, flo, fhi)


def global_avgpool(x: np.ndarray, zx: int, sx: float, zy: int, sy: float, out: np.ndarray) -> None:
    """QLinearGlobalAveragePool: float32(sum - zx*N) * (sx / (sy * N)), rounded, + zy."""
    c = x.shape[0]
    n = x.size // c
    scale = np.float32(np.float32(sx) / (np.float32(sy) * np.float32(n)))
    _global_avgpool(x.reshape(c, n), np.int64(zx), scale, np.int64(zy), out.reshape(-1))


def softmax_table(sx: float, d: int) -> np.ndarray:
    """QLinearSoftmax's exp table (float32, 256 entries, index = uint8 value - max + 255)."""
    flt_max = float(np.finfo(np.float32).max)
    shift = max(0.0, math.log(flt_max / d) - 5.0) / float(np.float32(sx))
    s = float(np.float32(sx))
    return np.array([math.exp((i - 255 + shift) * s) for i in range(256)], np.float32)


@njit(cache=True)
def _softmax_q(x, table, yscale, yzpu, out):
    # onnxruntime's QlinearSoftmaxCPU<uint8_t> on u = x + 128: sum in order, then round(t * yscale / sum)
    n = x.size
    xmax = 0
    for i in range(n):
        if x[i] + 128 > xmax:
            xmax = x[i] + 128
    sh = 255 - xmax
    vsum = np.float32(0.0)
    for i in range(n):
        vsum += table[x[i] + 128 + sh]
    for i in range(n):
        v = np.int64(np.rint((table[x[i] + 128 + sh] * yscale) / vsum)) + yzpu
        out[i] = min(v, 255) - 128


def softmax_int8(x: np.ndarray, table: np.ndarray, sy: float, zy: int, out: np.ndarray) -> None:
    """QLinearSoftmax (axis -1 over the flat vector) into int8 ``out``."""
    yscale = np.float32(math.floor(np.float32(1.0) / np.float32(sy)))
    _softmax_q(x.reshape(-1), table, yscale, np.int64(zy + 128), out.reshape(-1))


@njit(cache=True)
def _softmax_f(x, zx, sx, out):
    n = x.size
    m = np.float32(-np.inf)
    for i in range(n):
        v = sx * np.float32(x[i] - zx)
        out[i] = v
        m = max(m, v)
    s = 0.0
    for i in range(n):
        e = math.exp(np.float64(out[i] - m))
        out[i] = e
        s += e
    for i in range(n):
        out[i] = np.float32(out[i] / s)


def softmax_float(x: np.ndarray, zx: int, sx: float, out: np.ndarray) -> None:
    """Float softmax of the dequantised int8 vector (the QDQ model's DequantizeLinear -> Softmax)."""
    _softmax_f(x.reshape(-1), np.int64(zx), np.float32(sx), out.reshape(-1))


def nthreads() -> int:
    return numba.get_num_threads()


# -- bound calls: argument conversions done once, at plan time (the engine's steps call these per run) ------

def bind_prepare_quads(x, pad: int, zero_point: int, xs):
    """``prepare_quads`` with its arguments fixed: returns run()."""
    f = _prepare_quads_ser if xs.size < SERIAL_BYTES else _prepare_quads_par
    zpu = np.uint32(zero_point + 128)
    xs32 = xs.view(np.uint32).reshape(xs.shape[:4])
    return lambda: f(x, pad, zpu, xs32)


def bind_prepare_planes(x, pad: int, zero_point: int, xs):
    """``prepare_planes`` with its arguments fixed: returns run()."""
    f = _prepare_planes_ser if xs.size < SERIAL_BYTES else _prepare_planes_par
    zpu = np.uint8(zero_point + 128)
    return lambda: f(x, pad, zpu, xs)


def bind_conv_quads(xs, ap, koff, bias, scale, fp, ip, out):
    """``conv_quads`` with its arguments fixed: returns run(nthreads)."""
    direct = xs.shape[2] == 1 and xs.shape[1] * xs.shape[3] == out.shape[1] * out.shape[2]
    return lambda nt: _conv_quads(xs, ap, koff, bias, scale, fp, ip, ONES16, direct, nt, out)


def bind_conv_im2col(xflat, wq: int, ap, kidx, bias, scale, fp, ip, out):
    return lambda nt: _conv_im2col(xflat, wq, ap, kidx, bias, scale, fp, ip, ONES16, nt, out)


def bind_conv_depthwise(xflat, wq: int, w, toff, bias, scale, fp, ip, out):
    return lambda nt: _conv_depthwise(xflat, wq, w, toff, bias, scale, fp, ip, nt, out)


def bind_conv_grouped(xflat, wq: int, pw, poff, bias, scale, fp, ip, out):
    return lambda nt: _conv_grouped(xflat, wq, pw, poff, bias, scale, fp, ip, nt, out)


def bind_maxpool(x, size: int, stride: int, pad: int, out):
    if size == 2 and stride == 2 and pad // 2 == 0:
        f = _maxpool_2x2s2_ser if x.size < SERIAL_BYTES else _maxpool_2x2s2_par
        return lambda: f(x, out)
    return lambda: _maxpool(x, size, stride, pad, out)
