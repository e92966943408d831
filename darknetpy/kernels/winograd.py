"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (groups=1): 2.25x fewer multiplications.

Each 2x2 output tile comes from a 4x4 input tile d:  Y = A^T [ (G g G^T) .* (B^T d B) ] A, with

    B^T = [1  0 -1  0]      G = [1    0    0 ]     A^T = [1 1  1  0]
          [0  1  1  0]          [1/2  1/2  1/2]          [0 1 -1 -1]
          [0 -1  1  0]          [1/2 -1/2  1/2]
          [0  1  0 -1]          [0    0    1 ]

Summed over input channels, the 16 element-wise products become 16 independent GEMMs
M[xi] (filters x tiles) = U[xi] (filters x C) @ V[xi] (C x tiles).

* ``transform_weights`` computes U = G g G^T once per layer and packs each U[xi] for the micro-kernel,
  filter panel outermost.
* ``_transform_panel`` writes V = B^T d B straight into the micro-kernel's B-panel layout
  (V[xi, c*NR + j] for tile j of a panel). It reads the input where it is: a tile whose window lies inside
  the image straight from x, an edge tile from a small zero-padded staging copy of its window, so no
  padded copy of the whole input is made (nor a parallel region spent on one).
* ``_thread_body`` runs, per (block of tile panels, filter panel), the 16 micro-kernels per tile panel
  into a 16 x MR x NR block that stays in L1, applies A^T m A, adds the shift and the activation and
  stores the 2x2 pixels.

The rounding differs from direct convolution by a few ulp of the layer's range (well inside
``../shared/specs/darknet.md`` §9's 1e-5 x max|ref|); the exact path never uses it.

Shapes: x (C, H, W), out (M, H + 2*pad - 2, W + 2*pad - 2).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import config
from .activation import activate_block
from .gemm import MR, NR, microkernel_cols, pack_a
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


@njit(cache=True, fastmath=False)
def _transform_panel(xf, plane, wp, c, tiles_off, jn, vb, edge, want):
    # vb: (16, C*NR): B^T d B for the NR tiles of a panel, in the micro-kernel's B-panel layout. Only the
    # tiles with edge[j] == want are read, from xf at tiles_off[j] (their 4x4 window's top-left), rows wp
    # and channels plane floats apart; the want=True pass also zeroes the columns past jn. Called twice per
    # panel, once on the input itself and once on the edge tiles' staging copy: with one source per call
    # the strides stay loop-invariant (one call choosing the source per tile measured 0.1-0.3 ms slower on
    # Tiny Darknet).
    for ch in range(c):
        base = ch * NR
        cb = ch * plane
        for j in range(NR):
            q = base + j
            if j >= jn:
                if want:
                    for xi in range(16):
                        vb[xi, q] = np.float32(0.0)
                continue
            if edge[j] != want:                 # the other source's tile (two passes, see _thread_body)
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


@njit(cache=True, fastmath=False)
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


@njit(cache=True, fastmath=False)
def _at6(m0, m1, m2, m3, m4, m5):
    # one column (or row) of A^T m
    a = m1 + m2
    b = m1 - m2
    c = m3 + m4
    d = m3 - m4
    return m0 + a + c, b + np.float32(2.0) * d, a + np.float32(4.0) * c, b + np.float32(8.0) * d + m5


@njit(cache=True, fastmath=False)
def _transform_panel4(xf, plane, wp, c, tiles_off, jn, vb, edge, want):
    # vb: (36, C*NR): B^T d B for the NR tiles of a panel (6x6 windows, read as in _transform_panel).
    for ch in range(c):
        base = ch * NR
        cb = ch * plane
        for j in range(NR):
            q = base + j
            if j >= jn:
                if want:
                    for xi in range(36):
                        vb[xi, q] = np.float32(0.0)
                continue
            if edge[j] != want:                 # the other source's tile (two passes, see _thread_body)
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


@njit(cache=True, inline="always")
def _store_full(of, res, ob, qb, ntiles, out_w, t):
    # ntiles whole t x t tiles side by side from output offset ob: t output rows, each the tiles' rows
    # interleaved; t is a constant at each (inlined) call, so the inner loops unroll and vectorise
    for dy in range(t):
        orow = ob + dy * out_w
        for j in range(ntiles):
            q = qb + j
            for dx in range(t):
                of[orow + t * j + dx] = res[t * dy + dx, q]


@njit(cache=True, inline="always")
def _thread_body(th_, nthreads, xf, h, w, pad, c, up, shift, act, tw, ntile, out_w, out_h, of, f4, vblock):
    # One thread's share: a range of tile panels (all filter panels), or with fewer tile panels than
    # threads, every tile panel and a range of filter panels. Panels are taken in blocks: transform the
    # block's input tiles, then for each filter panel run the nx micro-kernels per tile panel into an
    # L1-resident block, transform back (+ shift, activation), store. vblock: bytes of transformed input
    # (V) a block may hold (config.WINOGRAD_V_BLOCK_BYTES): U is then read once per block of panels.
    nx = 36 if f4 else 16                  # Winograd points: (t+2)^2 for t x t output tiles
    t = 4 if f4 else 2
    m = shift.shape[0]
    oplane = out_h * out_w
    nip = up.shape[0]
    npan = (ntile + NR - 1) // NR
    if npan >= nthreads:
        tp_lo, tp_hi = th_ * npan // nthreads, (th_ + 1) * npan // nthreads
        ip_lo, ip_hi = 0, nip
    else:
        tp_lo, tp_hi = 0, npan
        ip_lo, ip_hi = th_ * nip // nthreads, (th_ + 1) * nip // nthreads
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    bsize = max(1, vblock // (nx * c * NR * 4))
    vbs = np.empty((min(bsize, max(1, tp_hi - tp_lo)), nx, c * NR), dtype=np.float32)
    nb = vbs.shape[0]
    blk = np.empty((nx, MR * NR), dtype=np.float32)
    res = np.empty((t * t, MR * NR), dtype=np.float32)
    shv = np.empty(MR, dtype=np.float32)
    tin = np.empty(NR, dtype=np.int64)
    tout = np.empty((nb, NR), dtype=np.int64)      # tile j of a panel: offset of its output block
    vrows = np.empty((nb, NR), dtype=np.int64)     # its valid rows and columns (t, fewer on an edge)
    vcols = np.empty((nb, NR), dtype=np.int64)
    seg_lo = np.empty((nb, NR), dtype=np.int64)    # runs of the panel's tiles along one tile row
    seg_hi = np.empty((nb, NR), dtype=np.int64)
    nseg = np.zeros(nb, dtype=np.int64)
    # The input is read where it is (C, H, W): a tile whose (t+2)x(t+2) window lies inside the image
    # straight from x; an edge tile's window, zero-padded, from a staging copy (C, NR, t+2, t+2).
    sw = t + 2
    plane = h * w
    edge = np.zeros(NR, dtype=np.bool_)
    soff = np.empty(NR, dtype=np.int64)
    stage = np.empty(c * NR * sw * sw, dtype=np.float32)
    # the two passes' "want" flags as runtime booleans: literal True/False arguments would compile each
    # transform twice (numba specialises on literal arguments)
    outer = nb > 0
    inner = not outer
    for b0 in range(tp_lo, tp_hi, nb):
        b1 = min(tp_hi, b0 + nb)
        for tp in range(b0, b1):
            pb = tp - b0
            jn = min(NR, ntile - tp * NR)
            ns = 0
            for j in range(jn):
                tt = tp * NR + j
                y0 = t * (tt // tw)
                x0 = t * (tt % tw)
                iy, ix = y0 - pad, x0 - pad            # the window's top-left in x
                edge[j] = iy < 0 or ix < 0 or iy + sw > h or ix + sw > w
                tin[j] = iy * w + ix
                soff[j] = j * sw * sw
                if edge[j]:
                    for ch in range(c):
                        sb = (ch * NR + j) * sw * sw
                        for r in range(sw):
                            yy = iy + r
                            for q in range(sw):
                                xx = ix + q
                                inside = 0 <= yy < h and 0 <= xx < w
                                stage[sb + r * sw + q] = xf[ch * plane + yy * w + xx] if inside else np.float32(0.0)
                tout[pb, j] = y0 * out_w + x0
                vrows[pb, j] = min(t, out_h - y0)
                vcols[pb, j] = min(t, out_w - x0)
                if j == 0 or tt % tw == 0:
                    seg_lo[pb, ns] = j
                    ns += 1
                seg_hi[pb, ns - 1] = j + 1
            nseg[pb] = ns
            if f4:
                _transform_panel4(xf, plane, w, c, tin, jn, vbs[pb], edge, inner)
                _transform_panel4(stage, NR * sw * sw, sw, c, soff, jn, vbs[pb], edge, outer)
            else:
                _transform_panel(xf, plane, w, c, tin, jn, vbs[pb], edge, inner)
                _transform_panel(stage, NR * sw * sw, sw, c, soff, jn, vbs[pb], edge, outer)
        for ip in range(ip_lo, ip_hi):
            i0 = ip * MR
            rows = min(MR, m - i0)
            for r in range(MR):
                shv[r] = shift[i0 + r] if r < rows else np.float32(0.0)
            for tp in range(b0, b1):
                pb = tp - b0
                jn = min(NR, ntile - tp * NR)
                vb = vbs[pb]
                for xi in range(nx):
                    microkernel_cols(up[ip, xi].ctypes.data, vb[xi].ctypes.data, c, blk[xi].ctypes.data, jn)
                # A^T m A for every (row, tile) of the block at once: vectorises along the block
                if f4:
                    _inverse4(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                else:
                    _inverse2(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                if not fused:
                    activate_block(res.reshape(-1), t * t * MR * NR, act)
                # Store the panel's tiles as runs along tile rows; whole tiles row by row (vectorised),
                # tiles on a right/bottom edge element by element.
                for sg in range(nseg[pb]):
                    j0, j1 = seg_lo[pb, sg], seg_hi[pb, sg]
                    full = vrows[pb, j0] == t and vcols[pb, j1 - 1] == t
                    for r in range(rows):
                        ob = (i0 + r) * oplane + tout[pb, j0]
                        qb = r * NR + j0
                        if full and f4:
                            _store_full(of, res, ob, qb, j1 - j0, out_w, 4)
                        elif full:
                            _store_full(of, res, ob, qb, j1 - j0, out_w, 2)
                        else:
                            for j in range(j0, j1):
                                q = r * NR + j
                                o = (i0 + r) * oplane + tout[pb, j]
                                for dy in range(vrows[pb, j]):
                                    for dx in range(vcols[pb, j]):
                                        of[o + dy * out_w + dx] = res[t * dy + dx, q]


@njit(cache=True, parallel=True, fastmath=True)
def _winograd(x, up, shift, act, pad, th, tw, nthreads, f4, vblock, out):
    # f4: F(4x4,3x3), else F(2x2,3x3). The thread body is an ordinary call (once per thread), not inlined
    # into the parallel loop, and serves both variants: one compiled kernel instead of two (a cold start
    # compiled the pair for ~13 s); the inner loops branch on f4 outside their bodies.
    m, out_h, out_w = out.shape
    c, h, w = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for th_ in prange(nthreads):
        _thread_body(th_, nthreads, xf, h, w, pad, c, up, shift, act, tw, th * tw, out_w, out_h, of, f4, vblock)


def conv3x3_winograd4(x, up, shift, act: int, pad: int, out) -> None:
    """3x3 stride-1 conv with F(4x4,3x3): out = act(conv(x, W) + shift), ``up`` from ``transform_weights4``."""
    th, tw, _ = tiles4(out.shape[1], out.shape[2])
    _winograd(x, up, shift, act, pad, th, tw, numba.get_num_threads(), True, config.WINOGRAD_V_BLOCK_BYTES, out)


def conv3x3_winograd(x, up, shift, act: int, pad: int, out) -> None:
    """3x3 stride-1 conv with F(2x2,3x3): out = act(conv(x, W) + shift), ``up`` from ``transform_weights``."""
    th, tw, _ = tiles(out.shape[1], out.shape[2])
    # the thread count is passed in: numba.get_num_threads() inside a kernel makes it uncacheable
    _winograd(x, up, shift, act, pad, th, tw, numba.get_num_threads(), False, config.WINOGRAD_V_BLOCK_BYTES, out)
