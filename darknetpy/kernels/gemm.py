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

MR = 6          # rows of A per micro-tile   (6 x 2 vectors = 12 accumulators)
NR = 16         # columns of B per micro-tile (2 vectors of 8 floats)
_LANES = 8


@intrinsic
def microkernel(typingctx, ap, bp, k, tile):
    """tile[r*NR + j] = sum_k ap[k*MR + r] * bp[k*NR + j]  (addresses as intp; k >= 0).

    The MR*NR/8 accumulators live in vector registers across the k loop.
    """
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        ap_i, bp_i, k_i, t_i = args
        f32 = ir.FloatType()
        vt = ir.VectorType(f32, _LANES)
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        a = builder.inttoptr(ap_i, f32.as_pointer())
        b = builder.inttoptr(bp_i, f32.as_pointer())
        t = builder.inttoptr(t_i, f32.as_pointer())
        zero = ir.Constant(vt, [0.0] * _LANES)
        undef = ir.Constant(vt, ir.Undefined)
        bcast = ir.Constant(ir.VectorType(i32, _LANES), [0] * _LANES)
        halves = NR // _LANES
        nacc = MR * halves

        pre = builder.block
        loop = builder.function.append_basic_block("mk.loop")
        done = builder.function.append_basic_block("mk.done")
        builder.cbranch(builder.icmp_signed(">", k_i, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        kk = builder.phi(i64)
        acc = [builder.phi(vt) for _ in range(nacc)]
        kb = builder.mul(kk, ir.Constant(i64, NR))
        bv = []
        for h in range(halves):
            p = builder.gep(b, [builder.add(kb, ir.Constant(i64, h * _LANES))])
            bv.append(builder.load(builder.bitcast(p, vt.as_pointer()), align=4))
        ka = builder.mul(kk, ir.Constant(i64, MR))
        new = []
        for r in range(MR):
            s = builder.load(builder.gep(a, [builder.add(ka, ir.Constant(i64, r))]))
            av = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, bcast)
            for h in range(halves):
                prod = builder.fmul(av, bv[h], flags=("contract",))
                new.append(builder.fadd(acc[r * halves + h], prod, flags=("contract",)))
        k1 = builder.add(kk, ir.Constant(i64, 1))
        latch = builder.block
        builder.cbranch(builder.icmp_signed("<", k1, k_i), loop, done)
        kk.add_incoming(ir.Constant(i64, 0), pre)
        kk.add_incoming(k1, latch)
        for p, n in zip(acc, new):
            p.add_incoming(zero, pre)
            p.add_incoming(n, latch)

        builder.position_at_end(done)
        res = []
        for n in new:
            phi = builder.phi(vt)
            phi.add_incoming(zero, pre)
            phi.add_incoming(n, latch)
            res.append(phi)
        for i, v in enumerate(res):
            r, h = divmod(i, halves)
            p = builder.gep(t, [ir.Constant(i64, r * NR + h * _LANES)])
            builder.store(v, builder.bitcast(p, vt.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def pack_a(a: np.ndarray) -> np.ndarray:
    """(M, K) float32 -> (ceil(M/MR), K*MR) row panels, zero-padded. Done once per weight matrix."""
    m, k = a.shape
    npan = -(-m // MR)
    padded = np.zeros((npan * MR, k), dtype=np.float32)
    padded[:m] = a
    # panel ip, element (k, r) at k*MR + r
    return np.ascontiguousarray(padded.reshape(npan, MR, k).transpose(0, 2, 1).reshape(npan, k * MR))


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
