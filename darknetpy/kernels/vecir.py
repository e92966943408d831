"""Explicit 8-lane float vector code for numba intrinsics (used where LLVM will not vectorise on its own).

LLVM's loop vectoriser gives up on loops that read and write many arrays it cannot prove distinct
(the Winograd inverse transform touches 36 + 16 streams), and it turns in-place ``select``s into masked
stores that are microcoded on AMD CPUs. Writing the vector code directly avoids both. ``Vec`` wraps an
llvmlite IRBuilder with the handful of operations the kernels need; lanes are 8 floats (one AVX
register; LLVM splits or widens it on other targets) unless a kernel asks for its CPU's width.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import config

LANES = 8
# darknet's FLT_MAX: a running maximum ([maxpool], the detection heads' softmax) starts from -FLT_MAX
FLT_MAX = np.float32(3.4028234663852886e38)
_f32 = ir.FloatType()
_i64 = ir.IntType(64)
_i32 = ir.IntType(32)


class Vec:
    """Vector operations on float pointers passed to an intrinsic as intp addresses."""

    def __init__(self, builder: ir.IRBuilder, lanes: int = LANES):
        self.b = builder
        self.lanes = lanes
        self._vt = ir.VectorType(_f32, lanes)
        self._undef = ir.Constant(self._vt, ir.Undefined)
        self._bcast = ir.Constant(ir.VectorType(_i32, lanes), [0] * lanes)

    def ptr(self, addr) -> ir.Value:
        return self.b.inttoptr(addr, _f32.as_pointer())

    def i64(self, v: int) -> ir.Constant:
        return ir.Constant(_i64, v)

    def at(self, p, offset) -> ir.Value:
        """p + offset (offset: int or i64 value), as a float pointer."""
        off = self.i64(offset) if isinstance(offset, int) else offset
        return self.b.gep(p, [off])

    def load(self, p, offset=0) -> ir.Value:
        return self.b.load(self.b.bitcast(self.at(p, offset), self._vt.as_pointer()), align=4)

    def store(self, v, p, offset=0) -> None:
        self.b.store(v, self.b.bitcast(self.at(p, offset), self._vt.as_pointer()), align=4)

    def splat(self, x) -> ir.Value:
        """A scalar (float value or Python float) in every lane."""
        if isinstance(x, float):
            return ir.Constant(self._vt, [x] * self.lanes)
        return self.b.shuffle_vector(self.b.insert_element(self._undef, x, ir.Constant(_i32, 0)), self._undef,
                                     self._bcast)

    def load_scalar(self, p, offset=0) -> ir.Value:
        return self.b.load(self.at(p, offset))

    def add(self, a, b):
        return self.b.fadd(a, b, flags=("contract",))

    def sub(self, a, b):
        return self.b.fsub(a, b, flags=("contract",))

    def mul(self, a, b):
        return self.b.fmul(a, b, flags=("contract",))

    def activation(self, y, act) -> ir.Value:
        """linear / relu / leaky / relu6 chosen by the i64 ``act`` code, branch-free (see gemm.FUSED_ACTS)."""
        b = self.b
        zero = self.splat(0.0)
        pos = b.fcmp_ordered(">", y, zero)
        relu = b.select(pos, y, zero)
        out = b.select(b.icmp_signed("==", act, self.i64(11)), b.select(pos, y, b.fmul(y, self.splat(0.1))), y)
        out = b.select(b.icmp_signed("==", act, self.i64(3)), relu, out)
        six = self.splat(6.0)
        return b.select(b.icmp_signed("==", act, self.i64(14)), b.select(b.fcmp_ordered("<", relu, six), relu, six),
                        out)


def running_max(builder: ir.IRBuilder, m, x):
    """One step of darknet's running maximum, ``max = (x > max) ? x : max`` (vectors or scalars): the
    comparison [maxpool]'s kernel makes, so a maximum taken in its order gives its bits."""
    return builder.select(builder.fcmp_ordered(">", x, m), x, m)


def loop(builder: ir.IRBuilder, start, stop, step: int, body, name: str) -> None:
    """Emit ``for i in range(start, stop, step): body(i)`` (i64 values); body may use the builder."""
    pre = builder.block
    head = builder.function.append_basic_block(f"{name}.head")
    blk = builder.function.append_basic_block(f"{name}.body")
    done = builder.function.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_i64)
    i.add_incoming(start, pre)
    builder.cbranch(builder.icmp_signed("<", i, stop), blk, done)
    builder.position_at_end(blk)
    body(i)
    nxt = builder.add(i, ir.Constant(_i64, step))
    i.add_incoming(nxt, builder.block)
    builder.branch(head)
    builder.position_at_end(done)


def loop_carry(builder: ir.IRBuilder, start, stop, step: int, init: list, body, name: str) -> list:
    """``for i in range(start, stop, step): vals = body(i, vals)`` with loop-carried SSA values (phi
    nodes, no stack slots); returns the final values."""
    pre = builder.block
    head = builder.function.append_basic_block(f"{name}.head")
    blk = builder.function.append_basic_block(f"{name}.body")
    done = builder.function.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_i64)
    i.add_incoming(start, pre)
    carried = []
    for v in init:
        phi = builder.phi(v.type)
        phi.add_incoming(v, pre)
        carried.append(phi)
    builder.cbranch(builder.icmp_signed("<", i, stop), blk, done)
    builder.position_at_end(blk)
    new = body(i, carried)
    nxt = builder.add(i, ir.Constant(_i64, step))
    end = builder.block
    i.add_incoming(nxt, end)
    for phi, v in zip(carried, new):
        phi.add_incoming(v, end)
    builder.branch(head)
    builder.position_at_end(done)
    return carried


def transpose_rows(builder: ir.IRBuilder, rows: list) -> list:
    """The lanes x lanes matrix whose rows are the vectors ``rows`` (as many as lanes), transposed in
    registers: log2(lanes) rounds of two-vector shuffles, round b swapping bit b of the row and column
    indices (element j of result r is element r of rows[j])."""
    lanes = len(rows)
    vi = ir.VectorType(_i32, lanes)
    b = 1
    while b < lanes:
        lo = ir.Constant(vi, [k if not k & b else lanes + (k & ~b) for k in range(lanes)])
        hi = ir.Constant(vi, [(k | b) if not k & b else lanes + (k | b) for k in range(lanes)])
        new = list(rows)
        for i in range(lanes):
            if not i & b:
                new[i] = builder.shuffle_vector(rows[i], rows[i | b], lo)
                new[i | b] = builder.shuffle_vector(rows[i], rows[i | b], hi)
        rows = new
        b *= 2
    return rows


def count_loop(builder: ir.IRBuilder, k, init: list, body, name: str) -> list:
    """``for kk in range(k): vals = body(kk, vals)`` (k an i64 value, vals SSA values), emitted bottom-tested
    and entered only when k > 0 -- the shape of the GEMM micro-kernels' K loops, which keeps their
    accumulators in registers; returns the final values (``init`` when k <= 0)."""
    pre = builder.block
    body_bb = builder.function.append_basic_block(f"{name}.loop")
    done = builder.function.append_basic_block(f"{name}.done")
    builder.cbranch(builder.icmp_signed(">", k, ir.Constant(_i64, 0)), body_bb, done)
    builder.position_at_end(body_bb)
    kk = builder.phi(_i64)
    carried = [builder.phi(v.type) for v in init]
    new = body(kk, carried)
    k1 = builder.add(kk, ir.Constant(_i64, 1))
    latch = builder.block
    builder.cbranch(builder.icmp_signed("<", k1, k), body_bb, done)
    kk.add_incoming(ir.Constant(_i64, 0), pre)
    kk.add_incoming(k1, latch)
    for phi, v0, v in zip(carried, init, new):
        phi.add_incoming(v0, pre)
        phi.add_incoming(v, latch)
    builder.position_at_end(done)
    out = []
    for v0, v in zip(init, new):                # all phis first: LLVM wants them at the block's top
        phi = builder.phi(v0.type)
        phi.add_incoming(v0, pre)
        phi.add_incoming(v, latch)
        out.append(phi)
    return out


# the CPU's float vector width (16 with AVX-512, 8 with AVX2), for kernels that move whole vectors
WIDE = config.codegen_target().float_lanes


@intrinsic
def deinterleave2(typingctx, src, n, d0, d1):
    """d0[j] = src[2j], d1[j] = src[2j + 1] for j < n (float addresses): a row split into its two
    stride-2 column phases. Per 2*WIDE floats, two vector loads and two shuffles (vpermt2ps on AVX-512);
    LLVM's own vectorisation of the same loop, inside the kernels that call it, ran at ~0.45 ns per float
    on Zen 4 (48 x 112x112: 0.26 ms)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        src_i, n_i, d0_i, d1_i = args
        v = Vec(builder, WIDE)
        src, d0, d1 = v.ptr(src_i), v.ptr(d0_i), v.ptr(d1_i)
        even = ir.Constant(ir.VectorType(_i32, WIDE), list(range(0, 2 * WIDE, 2)))
        odd = ir.Constant(ir.VectorType(_i32, WIDE), list(range(1, 2 * WIDE, 2)))
        nvec = builder.mul(builder.sdiv(n_i, v.i64(WIDE)), v.i64(WIDE))

        def vec(j):
            j2 = builder.add(j, j)
            a, b = v.load(src, j2), v.load(src, builder.add(j2, v.i64(WIDE)))
            v.store(builder.shuffle_vector(a, b, even), d0, j)
            v.store(builder.shuffle_vector(a, b, odd), d1, j)

        def one(j):
            j2 = builder.add(j, j)
            builder.store(builder.load(v.at(src, j2)), v.at(d0, j))
            builder.store(builder.load(v.at(src, builder.add(j2, v.i64(1)))), v.at(d1, j))

        loop(builder, v.i64(0), nvec, WIDE, vec, "dei.v")
        loop(builder, nvec, n_i, 1, one, "dei.s")
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def split_row2(src, w, pad, d0, d1):
    """One input row (w floats) into its two stride-2 column phases with ``pad`` zero columns on the left:
    d0[j] = src[2j - pad], d1[j] = src[2j + 1 - pad] (0 outside the row), for j < len(d0). The interior,
    where both phases lie inside the row, by ``deinterleave2``; the few edge columns one by one. How the
    stride-2 GEMM input (conv.prepare_input) is built (the depthwise kernel reads stride 2 from one plane)."""
    wq = d0.shape[0]
    j0 = min(wq, (pad + 1) // 2)
    j1 = min(wq, max(j0, (w - 1 + pad - 1) // 2 + 1))
    for j in range(j0):
        ix = 2 * j - pad
        d0[j] = src[ix] if 0 <= ix < w else np.float32(0.0)
        d1[j] = src[ix + 1] if 0 <= ix + 1 < w else np.float32(0.0)
    deinterleave2(src.ctypes.data + 4 * (2 * j0 - pad), j1 - j0, d0.ctypes.data + 4 * j0, d1.ctypes.data + 4 * j0)
    for j in range(j1, wq):
        ix = 2 * j - pad
        d0[j] = src[ix] if 0 <= ix < w else np.float32(0.0)
        d1[j] = src[ix + 1] if 0 <= ix + 1 < w else np.float32(0.0)
