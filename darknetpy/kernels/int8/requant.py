"""MLAS's float32 requantisation formulas, shared by the int8 convolution and elementwise kernels.

No fastmath anywhere in the int8 kernels: the division in QuantizeLinear and the FMAs of QLinearAdd must
not be rewritten.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


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
def epilogue(acc, bias, scale, fp, ip):
    # conv output: requantise to the conv's (pre-activation) parameters; then leaky into the output's.
    # fp = (lo - zp, hi - zp, s_pre, s_out, alpha, lo - zp_out, hi - zp_out), ip = (zp, leaky, zp_out)
    q = requant(acc + bias, scale, ip[0], fp[0], fp[1])
    if ip[1]:
        q = leaky_q(q, ip[0], fp[2], ip[2], fp[3], fp[4])
    return q


MAGIC = np.float32(12582912.0)    # 1.5 * 2**23: (f + M) - M rounds float32 f half to even for |f| < 2**22


@njit(cache=True)
def requant_row(acc, n, bias, scale, fp, ip, dst):
    # epilogue over acc[0:n] into int8 dst[0:n], written as plain loops (one per case) that LLVM vectorises.
    # The values are clamped to [-255, 255] before rounding, where the magic-number rounding equals rint
    # (numba's np.rint is a scalar libm call that would keep the loop from vectorising).
    zp = np.int32(ip[0])
    flo, fhi = fp[0], fp[1]
    m = MAGIC
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


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 fused multiply-add a*b + c with a single rounding (llvm.fma: vfmadd on FMA CPUs)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen
