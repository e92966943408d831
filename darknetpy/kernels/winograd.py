"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (groups=1): 2.25x fewer multiplications.

Each 2x2 output tile comes from a 4x4 input tile d:  Y = A^T [ (G g G^T) .* (B^T d B) ] A, with

    B^T = [1  0 -1  0]      G = [1    0    0 ]     A^T = [1 1  1  0]
          [0  1  1  0]          [1/2  1/2  1/2]          [0 1 -1 -1]
          [0 -1  1  0]          [1/2 -1/2  1/2]
          [0  1  0 -1]          [0    0    1 ]

Summed over input channels, the 16 element-wise products become 16 independent GEMMs
M[xi] (filters x tiles) = U[xi] (filters x C) @ V[xi] (C x tiles).

* ``transform_weights`` computes U = G g G^T once per layer and packs each U[xi] for the micro-kernel.
* ``_input_transform`` writes V = B^T d B straight into the micro-kernel's B-panel layout
  (V[xi, panel, c*NR + j] for tile panel*NR + j), reading a zero-padded copy of the input so that no
  bounds are checked in the inner loop.
* ``_gemm_output`` runs, per (tile panel, filter panel), the 16 micro-kernels into a 16 x MR x NR block
  that stays in L1, applies A^T m A, adds the shift and the activation and stores the 2x2 pixels.

The rounding differs from direct convolution by a few ulp of the layer's range (well inside
``../shared/specs/darknet.md`` §9's 1e-5 x max|ref|); the exact path never uses it.

Shapes: x (C, H, W), out (M, H + 2*pad - 2, W + 2*pad - 2).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .activation import activate_block
from .conv import prepare_input
from .gemm import FUSED_ACTS, MR, NR, microkernel, pack_a
from .vecir import LANES, Vec, loop

def _at6_v(v: Vec, m):
    """A^T m for one column of F(4x4): 6 vectors -> 4 vectors."""
    a = v.add(m[1], m[2])
    b = v.sub(m[1], m[2])
    c = v.add(m[3], m[4])
    d = v.sub(m[3], m[4])
    return [v.add(v.add(m[0], a), c), v.add(b, v.mul(v.splat(2.0), d)), v.add(a, v.mul(v.splat(4.0), c)),
            v.add(v.add(b, v.mul(v.splat(8.0), d)), m[5])]


def _at4_v(v: Vec, m):
    """A^T m for one column of F(2x2): 4 vectors -> 2 vectors."""
    return [v.add(v.add(m[0], m[1]), m[2]), v.sub(v.sub(m[1], m[2]), m[3])]


def _inverse_codegen(builder, args, t: int, at_fn, nout: int):
    """res[k*nout + l, q] = act(shift[q // NR] + (A^T m A)[k][l]) for every q of an MR x NR block, where
    m[a][b] = blk[t*a + b, q]. blk rows and res rows are MR*NR floats apart. One vector of q per loop
    iteration (a loop in IR, not unrolled: the unrolled form took seconds to compile)."""
    blk_i, res_i, shift_i, act = args
    v = Vec(builder)
    blk, res, shift = v.ptr(blk_i), v.ptr(res_i), v.ptr(shift_i)
    width = MR * NR

    def body(q0):
        sh = v.splat(v.load_scalar(shift, builder.sdiv(q0, v.i64(NR))))
        m = [[v.load(blk, builder.add(q0, v.i64((t * a + bb) * width))) for bb in range(t)] for a in range(t)]
        cols = [at_fn(v, [m[a][bb] for a in range(t)]) for bb in range(t)]      # cols[b][k]
        for k in range(nout):
            y = at_fn(v, [cols[bb][k] for bb in range(t)])
            for l_ in range(nout):
                v.store(v.activation(v.add(y[l_], sh), act), res, builder.add(q0, v.i64((k * nout + l_) * width)))

    loop(builder, v.i64(0), v.i64(width), LANES, body, "inv")


@intrinsic
def _inverse4(typingctx, blk, res, shift, act):
    """F(4x4,3x3) inverse transform of a 36 x (MR*NR) block, plus shift and activation (FUSED_ACTS)."""
    def codegen(context, builder, signature, args):
        _inverse_codegen(builder, args, 6, _at6_v, 4)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp, types.intp), codegen


@intrinsic
def _inverse2(typingctx, blk, res, shift, act):
    """F(2x2,3x3) inverse transform of a 16 x (MR*NR) block, plus shift and activation (FUSED_ACTS)."""
    def codegen(context, builder, signature, args):
        _inverse_codegen(builder, args, 4, _at4_v, 2)
        return context.get_dummy_value()
    return types.void(types.intp, types.intp, types.intp, types.intp), codegen


_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def transform_weights(w: np.ndarray) -> np.ndarray:
    """(M, C, 3, 3) -> packed U: (ceil(M/MR), 16, C*MR), U[:, xi] = (G g G^T)[xi] over (M, C).

    Filter panel outermost: the 16 A panels one filter panel needs are one contiguous stream (U is often
    larger than L2 and is read from L3 once per inference; 16 scattered 2-KB reads defeat the prefetcher)."""
    m, c = w.shape[:2]
    u = np.einsum("ai,mcij,bj->abmc", _G, w.astype(np.float64), _G).reshape(16, m, c).astype(np.float32)
    return np.ascontiguousarray(np.stack([pack_a(u[xi]) for xi in range(16)]).transpose(1, 0, 2))


def tiles(out_h: int, out_w: int) -> tuple[int, int, int]:
    """(tile rows, tile columns, tile panels) for a 2x2-tiled output."""
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2
    return th, tw, (th * tw + NR - 1) // NR


def padded_shape(c: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """The prepared input (conv.prepare_input layout, stride 1) the transform reads: every 4x4 tile
    inside, odd sizes rounded up."""
    th, tw, _ = tiles(out_h, out_w)
    return c, 2 * th + 2, 1, 2 * tw + 2


@njit(cache=True)
def _transform_panel(xf, plane, wp, c, tiles_off, jn, vb):
    # vb: (16, C*NR): B^T d B for the NR tiles of a panel, in the micro-kernel's B-panel layout.
    # xf is the prepared input, flat; tiles_off[j] the offset of tile j's top-left input pixel.
    for ch in range(c):
        base = ch * NR
        cb = ch * plane
        for j in range(NR):
            q = base + j
            if j >= jn:
                for xi in range(16):
                    vb[xi, q] = np.float32(0.0)
                continue
            o = cb + tiles_off[j]
            # d = 4x4 input tile; first B^T d (rows), then (B^T d) B (columns), all in registers
            d00, d01, d02, d03 = xf[o], xf[o + 1], xf[o + 2], xf[o + 3]
            o += wp
            d10, d11, d12, d13 = xf[o], xf[o + 1], xf[o + 2], xf[o + 3]
            o += wp
            d20, d21, d22, d23 = xf[o], xf[o + 1], xf[o + 2], xf[o + 3]
            o += wp
            d30, d31, d32, d33 = xf[o], xf[o + 1], xf[o + 2], xf[o + 3]
            r00, r01, r02, r03 = d00 - d20, d01 - d21, d02 - d22, d03 - d23
            r10, r11, r12, r13 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
            r20, r21, r22, r23 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
            r30, r31, r32, r33 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
            vb[0, q] = r00 - r02
            vb[1, q] = r01 + r02
            vb[2, q] = r02 - r01
            vb[3, q] = r01 - r03
            vb[4, q] = r10 - r12
            vb[5, q] = r11 + r12
            vb[6, q] = r12 - r11
            vb[7, q] = r11 - r13
            vb[8, q] = r20 - r22
            vb[9, q] = r21 + r22
            vb[10, q] = r22 - r21
            vb[11, q] = r21 - r23
            vb[12, q] = r30 - r32
            vb[13, q] = r31 + r32
            vb[14, q] = r32 - r31
            vb[15, q] = r31 - r33


@njit(cache=True, parallel=True, fastmath=True)
def _winograd(xp, up, shift, act, th, tw, nthreads, out):
    # One work item = one tile panel (NR tiles) x a range of filter panels: transform the input panel,
    # run 16 micro-kernels per filter panel into an L1-resident block, transform back, store.
    m, out_h, out_w = out.shape
    c, hp, _, wp = xp.shape
    plane = hp * wp
    nip = up.shape[0]
    ntile = th * tw
    npan = (ntile + NR - 1) // NR
    mchunks = 1
    if npan < 8:
        mchunks = min(nip, (8 + npan - 1) // npan)
    xf = xp.reshape(-1)
    of = out.reshape(-1)
    oplane = out_h * out_w
    nitems = npan * mchunks
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    for th_ in prange(nthreads):
        vb = np.empty((16, c * NR), dtype=np.float32)
        blk = np.empty((16, MR * NR), dtype=np.float32)
        res = np.empty((4, MR * NR), dtype=np.float32)
        shv = np.empty(MR, dtype=np.float32)
        tin = np.empty(NR, dtype=np.int64)      # tile j: offset of its 4x4 input window in a plane
        tout = np.empty(NR, dtype=np.int64)     # tile j: offset of its 2x2 output block in a plane
        right = np.empty(NR, dtype=np.bool_)
        below = np.empty(NR, dtype=np.bool_)
        seg_lo = np.empty(NR, dtype=np.int64)
        seg_hi = np.empty(NR, dtype=np.int64)
        nseg = 0
        last_tp = -1
        for item in range(th_ * nitems // nthreads, (th_ + 1) * nitems // nthreads):
            tp = item // mchunks
            mc = item % mchunks
            jn = min(NR, ntile - tp * NR)
            if tp != last_tp:
                for j in range(jn):
                    t = tp * NR + j
                    y0 = 2 * (t // tw)
                    x0 = 2 * (t % tw)
                    tin[j] = y0 * wp + x0
                    tout[j] = y0 * out_w + x0
                    right[j] = x0 + 1 < out_w
                    below[j] = y0 + 1 < out_h
                # runs of tiles on the same tile row: [seg_lo, seg_hi)
                nseg = 0
                for j in range(jn):
                    if j == 0 or (tp * NR + j) % tw == 0:
                        seg_lo[nseg] = j
                        nseg += 1
                    seg_hi[nseg - 1] = j + 1
                _transform_panel(xf, plane, wp, c, tin, jn, vb)
                last_tp = tp
            for ip in range(mc * nip // mchunks, (mc + 1) * nip // mchunks):
                for xi in range(16):
                    microkernel(up[ip, xi].ctypes.data, vb[xi].ctypes.data, c, blk[xi].ctypes.data)
                i0 = ip * MR
                rows = min(MR, m - i0)
                # A^T m A for every (row, tile) of the block at once: vectorises along the block
                for r in range(MR):
                    shv[r] = shift[i0 + r] if r < rows else np.float32(0.0)
                _inverse2(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                if not fused:
                    activate_block(res.reshape(-1), 4 * MR * NR, act)
                # Store: the panel's tiles as runs along tile rows. An interior run writes two output rows
                # as interleaved stride-2 stores, which vectorise; tiles on an odd right/bottom edge are
                # written one by one with their checks.
                for sg in range(nseg):
                    j0, j1 = seg_lo[sg], seg_hi[sg]
                    full = below[j0] and right[j1 - 1]
                    for r in range(rows):
                        ob = (i0 + r) * oplane + tout[j0]
                        qb = r * NR
                        if full:
                            for j in range(j1 - j0):
                                q = qb + j0 + j
                                of[ob + 2 * j] = res[0, q]
                                of[ob + 2 * j + 1] = res[1, q]
                                of[ob + out_w + 2 * j] = res[2, q]
                                of[ob + out_w + 2 * j + 1] = res[3, q]
                        else:
                            for j in range(j0, j1):
                                q = qb + j
                                o = (i0 + r) * oplane + tout[j]
                                of[o] = res[0, q]
                                if right[j]:
                                    of[o + 1] = res[1, q]
                                if below[j]:
                                    of[o + out_w] = res[2, q]
                                    if right[j]:
                                        of[o + out_w + 1] = res[3, q]


# -- F(4x4, 3x3): 6x6 input tiles, 36 GEMMs, 4x fewer multiplications ---------------------------------
#
#   B^T = [4  0 -5  0  1  0]   G = [ 1/4     0     0 ]   A^T = [1  1  1  1  1  0]
#         [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]         [0  1 -1  2 -2  0]
#         [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6 ]         [0  1  1  4  4  0]
#         [0 -2 -1  2  1  0]       [1/24  1/12   1/6 ]         [0  1 -1  8 -8  1]
#         [0  2 -1 -2  1  0]       [1/24 -1/12   1/6 ]
#         [0  4  0 -5  0  1]       [ 0     0     1  ]
#
# Its rounding error is larger than F(2x2,3x3)'s: 1e-6..2.5e-6 of a layer's range on Tiny Darknet's real
# weights (F(2x2): ~2e-7), still 4x inside darknet.md §9's 1e-5 per-layer tolerance.

_G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def transform_weights4(w: np.ndarray) -> np.ndarray:
    """(M, C, 3, 3) -> packed U: (ceil(M/MR), 36, C*MR), U[:, xi] = (G g G^T)[xi] over (M, C); see
    ``transform_weights`` for the order."""
    m, c = w.shape[:2]
    u = np.einsum("ai,mcij,bj->abmc", _G4, w.astype(np.float64), _G4).reshape(36, m, c).astype(np.float32)
    return np.ascontiguousarray(np.stack([pack_a(u[xi]) for xi in range(36)]).transpose(1, 0, 2))


def tiles4(out_h: int, out_w: int) -> tuple[int, int, int]:
    th, tw = (out_h + 3) // 4, (out_w + 3) // 4
    return th, tw, (th * tw + NR - 1) // NR


def padded_shape4(c: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    th, tw, _ = tiles4(out_h, out_w)
    return c, 4 * th + 2, 1, 4 * tw + 2


@njit(cache=True)
def _bt6(d0, d1, d2, d3, d4, d5):
    # one column (or row) of B^T d
    f4 = np.float32(4.0)
    f5 = np.float32(5.0)
    f2 = np.float32(2.0)
    return (f4 * d0 - f5 * d2 + d4,
            d3 + d4 - f4 * (d1 + d2),
            f4 * (d1 - d2) - d3 + d4,
            f2 * (d3 - d1) - d2 + d4,
            f2 * (d1 - d3) - d2 + d4,
            f4 * d1 - f5 * d3 + d5)


@njit(cache=True)
def _at6(m0, m1, m2, m3, m4, m5):
    # one column (or row) of A^T m
    a = m1 + m2
    b = m1 - m2
    c = m3 + m4
    d = m3 - m4
    return m0 + a + c, b + np.float32(2.0) * d, a + np.float32(4.0) * c, b + np.float32(8.0) * d + m5


@njit(cache=True)
def _transform_panel4(xf, plane, wp, c, tiles_off, jn, vb):
    # vb: (36, C*NR): B^T d B for the NR tiles of a panel (6x6 input windows at tiles_off[j]).
    for ch in range(c):
        base = ch * NR
        cb = ch * plane
        for j in range(NR):
            q = base + j
            if j >= jn:
                for xi in range(36):
                    vb[xi, q] = np.float32(0.0)
                continue
            o = cb + tiles_off[j]
            # columns of B^T d: combine the 6 rows, column by column
            r0 = _bt6(xf[o], xf[o + wp], xf[o + 2 * wp], xf[o + 3 * wp], xf[o + 4 * wp], xf[o + 5 * wp])
            r1 = _bt6(xf[o + 1], xf[o + 1 + wp], xf[o + 1 + 2 * wp], xf[o + 1 + 3 * wp], xf[o + 1 + 4 * wp],
                      xf[o + 1 + 5 * wp])
            r2 = _bt6(xf[o + 2], xf[o + 2 + wp], xf[o + 2 + 2 * wp], xf[o + 2 + 3 * wp], xf[o + 2 + 4 * wp],
                      xf[o + 2 + 5 * wp])
            r3 = _bt6(xf[o + 3], xf[o + 3 + wp], xf[o + 3 + 2 * wp], xf[o + 3 + 3 * wp], xf[o + 3 + 4 * wp],
                      xf[o + 3 + 5 * wp])
            r4 = _bt6(xf[o + 4], xf[o + 4 + wp], xf[o + 4 + 2 * wp], xf[o + 4 + 3 * wp], xf[o + 4 + 4 * wp],
                      xf[o + 4 + 5 * wp])
            r5 = _bt6(xf[o + 5], xf[o + 5 + wp], xf[o + 5 + 2 * wp], xf[o + 5 + 3 * wp], xf[o + 5 + 4 * wp],
                      xf[o + 5 + 5 * wp])
            # r_b[a] = (B^T d)[a][b]; now combine along b for each a (unrolled: a tuple indexed by a
            # loop variable would not vectorise)
            v = _bt6(r0[0], r1[0], r2[0], r3[0], r4[0], r5[0])
            vb[0, q], vb[1, q], vb[2, q], vb[3, q], vb[4, q], vb[5, q] = v[0], v[1], v[2], v[3], v[4], v[5]
            v = _bt6(r0[1], r1[1], r2[1], r3[1], r4[1], r5[1])
            vb[6, q], vb[7, q], vb[8, q], vb[9, q], vb[10, q], vb[11, q] = v[0], v[1], v[2], v[3], v[4], v[5]
            v = _bt6(r0[2], r1[2], r2[2], r3[2], r4[2], r5[2])
            vb[12, q], vb[13, q], vb[14, q], vb[15, q], vb[16, q], vb[17, q] = v[0], v[1], v[2], v[3], v[4], v[5]
            v = _bt6(r0[3], r1[3], r2[3], r3[3], r4[3], r5[3])
            vb[18, q], vb[19, q], vb[20, q], vb[21, q], vb[22, q], vb[23, q] = v[0], v[1], v[2], v[3], v[4], v[5]
            v = _bt6(r0[4], r1[4], r2[4], r3[4], r4[4], r5[4])
            vb[24, q], vb[25, q], vb[26, q], vb[27, q], vb[28, q], vb[29, q] = v[0], v[1], v[2], v[3], v[4], v[5]
            v = _bt6(r0[5], r1[5], r2[5], r3[5], r4[5], r5[5])
            vb[30, q], vb[31, q], vb[32, q], vb[33, q], vb[34, q], vb[35, q] = v[0], v[1], v[2], v[3], v[4], v[5]


@njit(cache=True, parallel=True, fastmath=True)
def _winograd4(xp, up, shift, act, th, tw, nthreads, out):
    # Same structure as _winograd, with 36 micro-kernels per filter panel and 4x4 output tiles.
    m, out_h, out_w = out.shape
    c, hp, _, wp = xp.shape
    plane = hp * wp
    nip = up.shape[0]
    ntile = th * tw
    npan = (ntile + NR - 1) // NR
    mchunks = 1
    if npan < 8:
        mchunks = min(nip, (8 + npan - 1) // npan)
    xf = xp.reshape(-1)
    of = out.reshape(-1)
    oplane = out_h * out_w
    nitems = npan * mchunks
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    for th_ in prange(nthreads):
        vb = np.empty((36, c * NR), dtype=np.float32)
        blk = np.empty((36, MR * NR), dtype=np.float32)
        res = np.empty((16, MR * NR), dtype=np.float32)
        shv = np.empty(MR, dtype=np.float32)
        tin = np.empty(NR, dtype=np.int64)
        tout = np.empty(NR, dtype=np.int64)
        vrows = np.empty(NR, dtype=np.int64)
        vcols = np.empty(NR, dtype=np.int64)
        seg_lo = np.empty(NR, dtype=np.int64)
        seg_hi = np.empty(NR, dtype=np.int64)
        nseg = 0
        last_tp = -1
        for item in range(th_ * nitems // nthreads, (th_ + 1) * nitems // nthreads):
            tp = item // mchunks
            mc = item % mchunks
            jn = min(NR, ntile - tp * NR)
            if tp != last_tp:
                nseg = 0
                for j in range(jn):
                    t = tp * NR + j
                    y0 = 4 * (t // tw)
                    x0 = 4 * (t % tw)
                    tin[j] = y0 * wp + x0
                    tout[j] = y0 * out_w + x0
                    vrows[j] = min(4, out_h - y0)
                    vcols[j] = min(4, out_w - x0)
                    if j == 0 or t % tw == 0:
                        seg_lo[nseg] = j
                        nseg += 1
                    seg_hi[nseg - 1] = j + 1
                _transform_panel4(xf, plane, wp, c, tin, jn, vb)
                last_tp = tp
            for ip in range(mc * nip // mchunks, (mc + 1) * nip // mchunks):
                for xi in range(36):
                    microkernel(up[ip, xi].ctypes.data, vb[xi].ctypes.data, c, blk[xi].ctypes.data)
                i0 = ip * MR
                rows = min(MR, m - i0)
                for r in range(MR):
                    shv[r] = shift[i0 + r] if r < rows else np.float32(0.0)
                _inverse4(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                if not fused:
                    activate_block(res.reshape(-1), 16 * MR * NR, act)
                for sg in range(nseg):
                    j0, j1 = seg_lo[sg], seg_hi[sg]
                    full = vrows[j0] == 4 and vcols[j1 - 1] == 4
                    for r in range(rows):
                        ob = (i0 + r) * oplane + tout[j0]
                        qb = r * NR + j0
                        if full:
                            for dy in range(4):
                                orow = ob + dy * out_w
                                for j in range(j1 - j0):
                                    q = qb + j
                                    of[orow + 4 * j] = res[4 * dy, q]
                                    of[orow + 4 * j + 1] = res[4 * dy + 1, q]
                                    of[orow + 4 * j + 2] = res[4 * dy + 2, q]
                                    of[orow + 4 * j + 3] = res[4 * dy + 3, q]
                        else:
                            for j in range(j0, j1):
                                q = r * NR + j
                                o = (i0 + r) * oplane + tout[j]
                                for dy in range(vrows[j]):
                                    for dx in range(vcols[j]):
                                        of[o + dy * out_w + dx] = res[4 * dy + dx, q]


def conv3x3_winograd4(x, xp, up, shift, act: int, pad: int, out) -> None:
    """3x3 stride-1 conv with F(4x4,3x3): ``xp`` of ``padded_shape4``, ``up`` from ``transform_weights4``."""
    th, tw, _ = tiles4(out.shape[1], out.shape[2])
    prepare_input(x, pad, xp)
    _winograd4(xp, up, shift, act, th, tw, numba.get_num_threads(), out)


def conv3x3_winograd(x, xp, up, shift, act: int, pad: int, out) -> None:
    """3x3 stride-1 conv: out = act(conv(x, W) + shift). ``xp`` is a preallocated scratch buffer of
    ``padded_shape``; ``up`` comes from ``transform_weights``."""
    th, tw, _ = tiles(out.shape[1], out.shape[2])
    prepare_input(x, pad, xp)
    # the thread count is passed in: numba.get_num_threads() inside a kernel makes it uncacheable
    _winograd(xp, up, shift, act, th, tw, numba.get_num_threads(), out)
