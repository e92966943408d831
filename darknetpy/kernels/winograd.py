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
* the input is first copied, zero-padded, into ``xp`` (``padded_shape``: every tile's window inside it);
* ``_transform2``/``_transform4`` write V = B^T d B straight into the micro-kernel's B-panel layout
  (V[xi, c*NR + j] for tile j of a panel), vectorised across the NR tiles of a panel: each element of
  the tiles' windows is one gather (LLVM's masked.gather: vgatherdps on AVX2 and AVX-512).
* ``_thread_body`` runs, per (block of tile panels, filter panel), the 16 micro-kernels per tile panel
  into a 16 x MR x NR block that stays in L1, applies A^T m A, adds the shift and the activation and
  stores the 2x2 pixels.

The rounding differs from direct convolution by a few ulp of the layer's range (well inside
``../shared/specs/darknet.md`` §9's 1e-5 x max|ref|); the exact path never uses it. Measured with
ReLU-like inputs and N(0, 1/9C) weights, max error / max|ref|: F(2x2) 1.4e-7 (C = 16) to 9.9e-7
(C = 1024), at or below the GEMM's own (2.4e-7 to 2.7e-6); F(4x4) 2.6e-6 (C = 16), 5.6e-6 (64), 1.1e-5
(512), so config.winograd_variant keeps F(4x4) to C <= 64.

Shapes: x (C, H, W), out (M, H + 2*pad - 2, W + 2*pad - 2).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import config
from .activation import activate_block
from .gemm import MR, NR, microkernel_cols, pack_a, splat
from .parallel import Call, Calls, addr, f32, thread_body
from .vecir import FLT_MAX, WIDE, Vec, count_loop, loop, running_max

# lanes of the inverse transform's vectors: the CPU's (16 floats with AVX-512, 8 with AVX2)
_LANES = WIDE


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


def _inverse_codegen(builder, args, t: int, at_fn, nout: int, pool: bool = False):
    """res[k, q*nout + l] = act(shift[q // NR] + (A^T m A)[k][l]) for every q of an MR x NR block, where
    m[a][b] = blk[t*a + b, q]: row k of res holds the block's output rows k, each tile's nout pixels side
    by side, as they lie in the output image (a panel's tiles along one tile row then store as one run).
    blk rows are MR*NR floats apart, res rows MR*NR*nout. One vector of q per loop iteration (a loop in
    IR, not unrolled: the unrolled form took seconds to compile); the nout vectors of an output row are
    interleaved with shuffles.

    ``pool``: res holds the tiles' 2x2 max-pool instead (a [maxpool] size 2 stride 2 fused after the
    convolution; tiles start at even coordinates, so each tile pools on its own): nout/2 rows of nout/2
    pixels per tile, each darknet's running maximum from -FLT_MAX over the window's pixels in its order
    (0,0) (0,1) (1,0) (1,1), ``max = (v > max) ? v : max`` (kernels/elementwise.py's 2x2 kernel)."""
    blk_i, res_i, shift_i, act = args
    v = Vec(builder, _LANES)
    lanes = _LANES
    blk, res, shift = v.ptr(blk_i), v.ptr(res_i), v.ptr(shift_i)
    width = MR * NR
    i32 = ir.IntType(32)

    def interleave(a, b, lanes):
        # (a0, b0, a1, b1, ...) of two vectors of ``lanes`` floats each
        mask = ir.Constant(ir.VectorType(i32, 2 * lanes), [x for i in range(lanes) for x in (i, lanes + i)])
        return builder.shuffle_vector(a, b, mask)

    def store_row(y, k):
        # one output row of nout pixels per lane-tile, interleaved as they lie in the image
        n = len(y)
        if n == 1:
            row = y[0]
        elif n == 2:
            row = interleave(y[0], y[1], lanes)
        else:       # (y0, y1, y2, y3) lane by lane: pairs (y0, y2) and (y1, y3), then those two
            row = interleave(interleave(y[0], y[2], lanes), interleave(y[1], y[3], lanes), 2 * lanes)
        rt = ir.VectorType(ir.FloatType(), n * lanes)
        dst = v.at(res, builder.add(builder.mul(q0_[0], v.i64(n)), v.i64(k * width * n)))
        builder.store(row, builder.bitcast(dst, rt.as_pointer()), align=4)

    def vmax(m, x):
        return running_max(builder, m, x)

    q0_ = [None]
    lowest = v.splat(-float(FLT_MAX))

    def body(q0):
        q0_[0] = q0
        sh = v.splat(v.load_scalar(shift, builder.sdiv(q0, v.i64(NR))))
        m = [[v.load(blk, builder.add(q0, v.i64((t * a + bb) * width))) for bb in range(t)] for a in range(t)]
        cols = [at_fn(v, [m[a][bb] for a in range(t)]) for bb in range(t)]      # cols[b][k]
        ys = []
        for k in range(nout):
            y = at_fn(v, [cols[bb][k] for bb in range(t)])
            y = [v.activation(v.add(y[l_], sh), act) for l_ in range(nout)]
            if not pool:
                store_row(y, k)
                continue
            ys.append(y)
            if k % 2:
                r0, r1 = ys
                store_row([vmax(vmax(vmax(vmax(lowest, r0[2 * j]), r0[2 * j + 1]), r1[2 * j]), r1[2 * j + 1])
                           for j in range(nout // 2)], k // 2)
                ys = []

    loop(builder, v.i64(0), v.i64(width), lanes, body, "inv")


def _inverse_intrinsic(t: int, at_fn, nout: int, what: str, pool: bool = False):
    """The inverse transform of a t*t x (MR*NR) block into nout x (MR*NR*nout), plus shift and activation
    (FUSED_ACTS), as an intrinsic (blk, res, shift, act): see ``_inverse_codegen`` (``pool``: its 2x2
    max-pool, nout/2 x (MR*NR*nout/2))."""
    @intrinsic
    def inverse(typingctx, blk, res, shift, act):
        def codegen(context, builder, signature, args):
            _inverse_codegen(builder, args, t, at_fn, nout, pool)
            return context.get_dummy_value()
        return types.void(types.intp, types.intp, types.intp, types.intp), codegen
    inverse.__doc__ = what
    return inverse


_inverse4 = _inverse_intrinsic(6, _at6_v, 4, "F(4x4,3x3) inverse transform")
_inverse2 = _inverse_intrinsic(4, _at4_v, 2, "F(2x2,3x3) inverse transform")
_inverse4_pool = _inverse_intrinsic(6, _at6_v, 4, "F(4x4,3x3) inverse transform, 2x2 max-pooled", True)
_inverse2_pool = _inverse_intrinsic(4, _at4_v, 2, "F(2x2,3x3) inverse transform, 2x2 max-pooled", True)


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


def _bt6_v(b, d):
    """B^T d for one column (or row) of F(4x4)'s 6x6 input tile: 6 vectors -> 6 vectors."""
    f2, f4, f5 = (ir.Constant(d[0].type, [x] * d[0].type.count) for x in (2.0, 4.0, 5.0))
    return [b.fadd(b.fsub(b.fmul(f4, d[0]), b.fmul(f5, d[2])), d[4]),
            b.fsub(b.fadd(d[3], d[4]), b.fmul(f4, b.fadd(d[1], d[2]))),
            b.fadd(b.fsub(b.fmul(f4, b.fsub(d[1], d[2])), d[3]), d[4]),
            b.fadd(b.fsub(b.fmul(f2, b.fsub(d[3], d[1])), d[2]), d[4]),
            b.fadd(b.fsub(b.fmul(f2, b.fsub(d[1], d[3])), d[2]), d[4]),
            b.fadd(b.fsub(b.fmul(f4, d[1]), b.fmul(f5, d[3])), d[5])]


def _bt4_v(b, d):
    """B^T d for one column (or row) of F(2x2)'s 4x4 input tile: 4 vectors -> 4 vectors."""
    return [b.fsub(d[0], d[2]), b.fadd(d[1], d[2]), b.fsub(d[2], d[1]), b.fsub(d[1], d[3])]


def _transform_codegen(builder, args, t, bt_fn):
    """V = B^T d B for the NR tiles of a panel, every channel, into the micro-kernel's B-panel layout:
    vb[xi*ldv + ch*NR + j] for xi = a*t + b. Tile j's t x t window starts tin[j] (int32) floats into each
    channel plane of the zero-padded input xp (planes ``plane`` floats apart, rows ``wp``): its element
    (a, b) for the NR tiles is one gather of NR lanes (vgatherdps). Per channel: t*t gathers, the 2*t
    vectorised B^T passes (rows, then columns), t*t vector stores -- the scalar form of the same
    transform cost ~350 cycles per 6x6 tile and channel, more than F(4x4)'s multiplications it saves."""
    xp_i, tin_i, wp, plane, c, vb_i, ldv = args
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vt = ir.VectorType(ir.FloatType(), NR)
    pvt = ir.VectorType(ir.FloatType().as_pointer(), NR)
    i64v = ir.VectorType(i64, NR)
    mask = ir.Constant(ir.VectorType(ir.IntType(1), NR), [1] * NR)
    name = f"llvm.masked.gather.v{NR}f32.v{NR}p0"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(vt, [pvt, i32, mask.type, vt]), name)
    undef = ir.Constant(vt, ir.Undefined)
    tin = builder.load(builder.bitcast(builder.inttoptr(tin_i, i32.as_pointer()), ir.VectorType(i32, NR).as_pointer()),
                       align=4)
    tin_bytes = builder.mul(builder.sext(tin, i64v), ir.Constant(i64v, [4] * NR))
    vb = builder.inttoptr(vb_i, ir.FloatType().as_pointer())

    def step(ch, carried):
        base = builder.add(xp_i, builder.mul(builder.mul(ch, plane), ir.Constant(i64, 4)))
        rows = []
        for a in range(t):
            row = builder.add(base, builder.mul(builder.mul(wp, ir.Constant(i64, a)), ir.Constant(i64, 4)))
            addr = builder.add(splat(builder, row, NR), tin_bytes)
            d = []
            for bb in range(t):
                ptrs = builder.inttoptr(builder.add(addr, ir.Constant(i64v, [4 * bb] * NR)), pvt)
                d.append(builder.call(fn, [ptrs, ir.Constant(i32, 4), mask, undef]))
            rows.append(bt_fn(builder, d))                  # rows[a][b'] = (d B)[a][b']
        chb = builder.mul(ch, ir.Constant(i64, NR))
        for bb in range(t):
            col = bt_fn(builder, [rows[a][bb] for a in range(t)])   # col[a'] = (B^T d B)[a'][b']
            for a in range(t):
                off = builder.add(builder.mul(ldv, ir.Constant(i64, a * t + bb)), chb)
                builder.store(col[a], builder.bitcast(builder.gep(vb, [off]), vt.as_pointer()), align=4)
        return carried

    count_loop(builder, c, [], step, "wt")


def _transform_intrinsic(t: int, bt_fn):
    """The input transform of a tile panel with t x t windows as an intrinsic (xp, tin, wp, plane, c, vb,
    ldv): see ``_transform_codegen``."""
    @intrinsic
    def transform(typingctx, xp, tin, wp, plane, c, vb, ldv):
        def codegen(context, builder, signature, args):
            _transform_codegen(builder, args, t, bt_fn)
            return context.get_dummy_value()
        return types.void(*([types.intp] * 7)), codegen
    return transform


_transform4 = _transform_intrinsic(6, _bt6_v)    # F(4x4,3x3): 6x6 windows
_transform2 = _transform_intrinsic(4, _bt4_v)    # F(2x2,3x3): 4x4 windows


def padded_shape(c: int, h: int, w: int, pad: int, t: int) -> tuple[int, int, int]:
    """The zero-padded input a Winograd convolution with t x t output tiles reads: (C, Hp, Wp), every
    tile's (t+2) x (t+2) window inside it (the last tile row and column may reach past the padding)."""
    th, tw = -(-(h + 2 * pad - 2) // t), -(-(w + 2 * pad - 2) // t)
    return c, th * t + 2, tw * t + 2


@njit(cache=True, inline="always")
def _pad_plane(x, pad, xp, ch):
    # xp[ch, y, x] = x[ch, y - pad, x - pad], zero outside the image
    h, w = x.shape[1], x.shape[2]
    hp, wp = xp.shape[1], xp.shape[2]
    for y in range(hp):
        iy = y - pad
        d = xp[ch, y]
        if iy < 0 or iy >= h:
            for j in range(wp):
                d[j] = np.float32(0.0)
            continue
        src = x[ch, iy]
        for j in range(pad):
            d[j] = np.float32(0.0)
        dd = d[pad:pad + w]
        for j in range(w):
            dd[j] = src[j]
        for j in range(pad + w, wp):
            d[j] = np.float32(0.0)


@njit(cache=True, inline="always")
def _store_full(of, res, ob, qb, ntiles, out_w, t):
    # ntiles whole t x t tiles side by side from output offset ob: output row dy is one run of res's row dy
    # (the inverse transform interleaved the tiles' pixels already)
    for dy in range(t):
        src = res[dy, qb * t:(qb + ntiles) * t]
        dst = of[ob + dy * out_w:ob + dy * out_w + ntiles * t]
        for i in range(ntiles * t):
            dst[i] = src[i]


@njit(cache=True, inline="always")
def _thread_body(th_, nthreads, xp, c, up, shift, act, tw, ntile, out_w, out_h, of, f4, vblock, pool, by_filters):
    # One thread's share: a range of (tile panel, filter panel) pairs, or with fewer tile panels than
    # threads or ``by_filters`` (config.winograd_split_filters), every tile panel and a range of filter
    # panels. Panels are taken in blocks: transform the block's input tiles, then for each filter panel
    # run the nx micro-kernels per tile panel into an L1-resident block, transform back (+ shift,
    # activation), store. vblock: bytes of transformed input (V) a block may hold
    # (config.winograd_v_block): U is then read once per block of panels.
    # xp: the zero-padded input (C, Hp, Wp), see padded_shape. pool: ``of`` is the output's 2x2 max-pool
    # (out_h, out_w even; act one of FUSED_ACTS), stored st x st per tile instead of t x t.
    nx = 36 if f4 else 16                  # Winograd points: (t+2)^2 for t x t output tiles
    t = 4 if f4 else 2
    ds = 2 if pool else 1                  # the stored map: the output, or its 2x2 max-pool
    st, so_w = t // ds, out_w // ds        # stored pixels per tile side; stored row length
    m = shift.shape[0]
    oplane = (out_h // ds) * so_w
    nip = up.shape[0]
    npan = (ntile + NR - 1) // NR
    if npan >= nthreads and not by_filters:
        # the (tile panel, filter panel) pairs, tile-panel major, split evenly: a share may end in the
        # middle of a tile panel (13 panels on 2 threads: 6.5 each, not 6 and 7; that panel's input is
        # transformed by both threads, a small part of its cost)
        u_lo, u_hi = th_ * npan * nip // nthreads, (th_ + 1) * npan * nip // nthreads
        tp_lo, tp_hi = u_lo // nip, (u_hi + nip - 1) // nip if u_hi > u_lo else u_lo // nip
        ip_lo, ip_hi = 0, nip
    else:
        tp_lo, tp_hi = 0, npan
        ip_lo, ip_hi = th_ * nip // nthreads, (th_ + 1) * nip // nthreads
        u_lo, u_hi = 0, npan * nip
    fused = act == 0 or act == 3 or act == 11 or act == 14    # gemm.FUSED_ACTS
    bsize = max(1, vblock // (nx * c * NR * 4))
    vbs = np.empty((min(bsize, max(1, tp_hi - tp_lo)), nx, c * NR), dtype=np.float32)
    nb = vbs.shape[0]
    blk = np.empty((nx, MR * NR), dtype=np.float32)
    res = np.empty((t, MR * NR * t), dtype=np.float32)    # output rows of the block, see _inverse_codegen
    sres = res.reshape(-1)[:st * MR * NR * st].reshape((st, MR * NR * st))    # ... as stored (pooled: st rows)
    shv = np.empty(MR, dtype=np.float32)
    tin = np.empty(NR, dtype=np.int32)             # tile j of a panel: its window's offset in a plane of xp
    tout = np.empty((nb, NR), dtype=np.int64)      # ... the offset of its output block
    vrows = np.empty((nb, NR), dtype=np.int64)     # its valid rows and columns (t, fewer on an edge)
    vcols = np.empty((nb, NR), dtype=np.int64)
    seg_lo = np.empty((nb, NR), dtype=np.int64)    # runs of the panel's tiles along one tile row
    seg_hi = np.empty((nb, NR), dtype=np.int64)
    nseg = np.zeros(nb, dtype=np.int64)
    hp, wp = xp.shape[1], xp.shape[2]
    xaddr = xp.ctypes.data
    for b0 in range(tp_lo, tp_hi, nb):
        b1 = min(tp_hi, b0 + nb)
        for tp in range(b0, b1):
            pb = tp - b0
            jn = min(NR, ntile - tp * NR)
            ns = 0
            for j in range(NR):
                tt = tp * NR + min(j, jn - 1)          # columns past jn repeat the last tile (not stored)
                y0 = t * (tt // tw)
                x0 = t * (tt % tw)
                tin[j] = y0 * wp + x0                  # padded coordinates: the window starts at (y0, x0)
                if j >= jn:
                    continue
                tout[pb, j] = (y0 // ds) * so_w + x0 // ds
                vrows[pb, j] = min(st, (out_h - y0) // ds)
                vcols[pb, j] = min(st, (out_w - x0) // ds)
                if j == 0 or tt % tw == 0:
                    seg_lo[pb, ns] = j
                    ns += 1
                seg_hi[pb, ns - 1] = j + 1
            nseg[pb] = ns
            if f4:
                _transform4(xaddr, tin.ctypes.data, wp, hp * wp, c, vbs[pb].ctypes.data, c * NR)
            else:
                _transform2(xaddr, tin.ctypes.data, wp, hp * wp, c, vbs[pb].ctypes.data, c * NR)
        for ip in range(ip_lo, ip_hi):
            i0 = ip * MR
            rows = min(MR, m - i0)
            for r in range(MR):
                shv[r] = shift[i0 + r] if r < rows else np.float32(0.0)
            for tp in range(b0, b1):
                if tp * nip + ip < u_lo or tp * nip + ip >= u_hi:
                    continue                            # the other thread's part of a shared tile panel
                pb = tp - b0
                jn = min(NR, ntile - tp * NR)
                vb = vbs[pb]
                for xi in range(nx):
                    microkernel_cols(up[ip, xi].ctypes.data, vb[xi].ctypes.data, c, blk[xi].ctypes.data, jn)
                # A^T m A for every (row, tile) of the block at once: vectorises along the block
                if f4 and pool:
                    _inverse4_pool(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act)
                elif f4:
                    _inverse4(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                elif pool:
                    _inverse2_pool(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act)
                else:
                    _inverse2(blk.ctypes.data, res.ctypes.data, shv.ctypes.data, act if fused else 0)
                if not fused:
                    activate_block(res.reshape(-1), t * t * MR * NR, act)
                # Store the panel's tiles as runs along tile rows; whole tiles row by row (vectorised),
                # tiles on a right/bottom edge element by element.
                for sg in range(nseg[pb]):
                    j0, j1 = seg_lo[pb, sg], seg_hi[pb, sg]
                    full = vrows[pb, j0] == st and vcols[pb, j1 - 1] == st
                    for r in range(rows):
                        ob = (i0 + r) * oplane + tout[pb, j0]
                        qb = r * NR + j0
                        if full and st == 4:
                            _store_full(of, sres, ob, qb, j1 - j0, so_w, 4)
                        elif full and st == 2:
                            _store_full(of, sres, ob, qb, j1 - j0, so_w, 2)
                        elif full:
                            _store_full(of, sres, ob, qb, j1 - j0, so_w, 1)
                        else:
                            for j in range(j0, j1):
                                q = r * NR + j
                                o = (i0 + r) * oplane + tout[pb, j]
                                for dy in range(vrows[pb, j]):
                                    for dx in range(vcols[pb, j]):
                                        of[o + dy * so_w + dx] = sres[dy, q * st + dx]


@thread_body()
def _pad_body(th, nthreads, argv):
    # argv: x, C, H, W, pad, xp, Hp, Wp. Thread th pads its share of the channels into xp.
    c, pad = argv[1], argv[4]
    x = f32(argv[0], (c, argv[2], argv[3]))
    xp = f32(argv[5], (c, argv[6], argv[7]))
    for ch in range(th * c // nthreads, (th + 1) * c // nthreads):
        _pad_plane(x, pad, xp, ch)


@thread_body(fastmath=True)
def _winograd_body(th, nthreads, argv):
    # argv: xp (the zero-padded input, padded_shape(C, H, W, pad, t)), C, Hp, Wp, up, its 3 dims, shift,
    # out, M, out_h, out_w (the convolution's), act, tile columns, tiles, f4 (F(4x4,3x3), else F(2x2,3x3)),
    # vblock, pool (out is the (M, out_h/2, out_w/2) 2x2 max-pool), the most threads that share out the
    # filter panels instead of the tile panels (config.winograd_split_filters). One body serves every
    # variant: one compiled kernel; the inner loops branch on f4 and pool outside their bodies.
    c, hp, wp = argv[1], argv[2], argv[3]
    xp = f32(argv[0], (c, hp, wp))
    up = f32(argv[4], (argv[5], argv[6], argv[7]))
    m, out_h, out_w = argv[10], argv[11], argv[12]
    shift = f32(argv[8], (m,))
    pool = argv[18] != 0
    of = f32(argv[9], (m * (out_h // 2) * (out_w // 2) if pool else m * out_h * out_w,))
    _thread_body(th, nthreads, xp, c, up, shift, argv[13], argv[14], argv[15], out_w, out_h, of, argv[16] != 0,
                 argv[17], pool, nthreads <= argv[19])


def _scratch(x, pad: int, t: int, xp):
    shape = padded_shape(*x.shape, pad, t)
    n = shape[0] * shape[1] * shape[2]
    if xp is None or xp.size < n:
        return np.empty(shape, dtype=np.float32)
    return xp.reshape(-1)[:n].reshape(shape)


def bind_winograd(x, up, shift, act: int, pad: int, out, xp=None, t: int = 2, pool: bool = False):
    """A 3x3 stride-1 convolution by Winograd F(t x t, 3x3) (t = 2 or 4) bound to its arrays: a callable
    that runs it. ``up`` from ``transform_weights`` (t = 2) or ``transform_weights4`` (t = 4); ``xp`` an
    optional float32 scratch of at least prod(padded_shape(C, H, W, pad, t)) floats. ``pool``: ``out`` is
    the convolution's 2x2 stride-2 max-pool (darknet's [maxpool] size=2 stride=2 on an even map, bit for
    bit), computed from the tiles in registers: the full-size output is never written (for ``act`` in
    gemm.FUSED_ACTS and an even output size only)."""
    c, h, w = x.shape
    m, out_h, out_w = out.shape
    if pool:
        out_h, out_w = h + 2 * pad - 2, w + 2 * pad - 2
        if out_h % 2 or out_w % 2 or out.shape[1:] != (out_h // 2, out_w // 2) or act not in (0, 3, 11, 14):
            raise ValueError(f"winograd with a 2x2 max-pool: {x.shape} with pad {pad} -> {out.shape}, "
                             f"activation {act}")
    th, tw, _ = (tiles4 if t == 4 else tiles)(out_h, out_w)
    if up.shape != (-(-m // MR), t * t + 4 * t + 4, c * MR) or shift.shape != (m,) \
            or (out_h, out_w) != (h + 2 * pad - 2, w + 2 * pad - 2):
        raise ValueError(f"winograd F({t}x{t}): weights {up.shape}, shift {shift.shape} do not fit "
                         f"{x.shape} -> {out.shape} with pad {pad}")
    xp = _scratch(x, pad, t, xp)
    f4 = np.float32
    pad_call = Call(_pad_body, [addr(x, f4), c, h, w, pad, addr(xp, f4), xp.shape[1], xp.shape[2]], (x, xp))
    npan, panel_bytes = config.winograd_v_panels(c, out_h, out_w, t)
    body = Call(_winograd_body, [addr(xp, f4), *xp.shape, addr(up, f4), *up.shape, addr(shift, f4), addr(out, f4),
                                 m, out_h, out_w, act, tw, th * tw, t == 4, config.winograd_v_block(up.nbytes), pool,
                                 config.winograd_split_filters(up.nbytes, npan * panel_bytes)],
                (xp, up, shift, out))

    return Calls(pad_call, body)


def conv3x3_winograd4(x, up, shift, act: int, pad: int, out, xp=None) -> None:
    """3x3 stride-1 conv with F(4x4,3x3): out = act(conv(x, W) + shift), ``up`` from ``transform_weights4``.
    ``xp``: an optional float32 scratch of at least prod(padded_shape(C, H, W, pad, 4)) floats."""
    bind_winograd(x, up, shift, act, pad, out, xp, 4)()


def conv3x3_winograd(x, up, shift, act: int, pad: int, out, xp=None) -> None:
    """3x3 stride-1 conv with F(2x2,3x3): out = act(conv(x, W) + shift), ``up`` from ``transform_weights``.
    ``xp``: as for ``conv3x3_winograd4``, with 2 for 4."""
    bind_winograd(x, up, shift, act, pad, out, xp, 2)()
