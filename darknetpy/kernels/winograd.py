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

import numpy as np
from numba import njit, prange

from .activation import activate_block
from .conv import prepare_input
from .gemm import MR, NR, microkernel, pack_a

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def transform_weights(w: np.ndarray) -> np.ndarray:
    """(M, C, 3, 3) -> packed U: (16, ceil(M/MR), C*MR), U[xi] = (G g G^T)[xi] over (M, C)."""
    m, c = w.shape[:2]
    u = np.einsum("ai,mcij,bj->abmc", _G, w.astype(np.float64), _G).reshape(16, m, c).astype(np.float32)
    return np.stack([pack_a(u[xi]) for xi in range(16)])


def tiles(out_h: int, out_w: int) -> tuple[int, int, int]:
    """(tile rows, tile columns, tile panels) for a 2x2-tiled output."""
    th, tw = (out_h + 1) // 2, (out_w + 1) // 2
    return th, tw, (th * tw + NR - 1) // NR


def padded_shape(c: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """The prepared input (conv.prepare_input layout, stride 1) the transform reads: every 4x4 tile
    inside, odd sizes rounded up."""
    th, tw, _ = tiles(out_h, out_w)
    return c, 2 * th + 2, 1, 2 * tw + 2


@njit(cache=True, inline="always")
def _transform_panel(xp, tp, th, tw, vb):
    # vb: (16, C*NR): B^T d B for the NR tiles of panel tp, in the micro-kernel's B-panel layout.
    c = xp.shape[0]
    ntile = th * tw
    for ch in range(c):
        base = ch * NR
        for j in range(NR):
            t = tp * NR + j
            q = base + j
            if t >= ntile:
                for xi in range(16):
                    vb[xi, q] = np.float32(0.0)
                continue
            y0 = 2 * (t // tw)
            x0 = 2 * (t % tw)
            # d = 4x4 input tile; first B^T d (rows), then (B^T d) B (columns), all in registers
            d00, d01, d02, d03 = xp[ch, y0, 0, x0], xp[ch, y0, 0, x0 + 1], xp[ch, y0, 0, x0 + 2], xp[ch, y0, 0, x0 + 3]
            d10, d11, d12, d13 = xp[ch, y0 + 1, 0, x0], xp[ch, y0 + 1, 0, x0 + 1], xp[ch, y0 + 1, 0, x0 + 2], xp[ch, y0 + 1, 0, x0 + 3]
            d20, d21, d22, d23 = xp[ch, y0 + 2, 0, x0], xp[ch, y0 + 2, 0, x0 + 1], xp[ch, y0 + 2, 0, x0 + 2], xp[ch, y0 + 2, 0, x0 + 3]
            d30, d31, d32, d33 = xp[ch, y0 + 3, 0, x0], xp[ch, y0 + 3, 0, x0 + 1], xp[ch, y0 + 3, 0, x0 + 2], xp[ch, y0 + 3, 0, x0 + 3]
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
def _winograd(xp, up, shift, act, th, tw, out):
    # One work item = one tile panel (NR tiles) x a range of filter panels: transform the input panel,
    # run 16 micro-kernels per filter panel into an L1-resident block, transform back, store.
    m, out_h, out_w = out.shape
    c = xp.shape[0]
    nip = up.shape[1]
    ntile = th * tw
    npan = (ntile + NR - 1) // NR
    mchunks = 1
    if npan < 8:
        mchunks = min(nip, (8 + npan - 1) // npan)
    for item in prange(npan * mchunks):
        tp = item // mchunks
        mc = item % mchunks
        vb = np.empty((16, c * NR), dtype=np.float32)
        blk = np.empty((16, MR * NR), dtype=np.float32)
        res = np.empty((4, MR * NR), dtype=np.float32)
        _transform_panel(xp, tp, th, tw, vb)
        jn = min(NR, ntile - tp * NR)
        for ip in range(mc * nip // mchunks, (mc + 1) * nip // mchunks):
            for xi in range(16):
                microkernel(up[xi, ip].ctypes.data, vb[xi].ctypes.data, c, blk[xi].ctypes.data)
            i0 = ip * MR
            rows = min(MR, m - i0)
            # A^T m A for every (row, tile) at once: vectorises along the MR*NR block
            for r in range(rows):
                s = shift[i0 + r]
                for j in range(NR):
                    q = r * NR + j
                    a0 = blk[0, q] + blk[4, q] + blk[8, q]
                    a1 = blk[1, q] + blk[5, q] + blk[9, q]
                    a2 = blk[2, q] + blk[6, q] + blk[10, q]
                    a3 = blk[3, q] + blk[7, q] + blk[11, q]
                    b0 = blk[4, q] - blk[8, q] - blk[12, q]
                    b1 = blk[5, q] - blk[9, q] - blk[13, q]
                    b2 = blk[6, q] - blk[10, q] - blk[14, q]
                    b3 = blk[7, q] - blk[11, q] - blk[15, q]
                    res[0, q] = a0 + a1 + a2 + s
                    res[1, q] = a1 - a2 - a3 + s
                    res[2, q] = b0 + b1 + b2 + s
                    res[3, q] = b1 - b2 - b3 + s
            activate_block(res.reshape(-1), 4 * MR * NR, act)
            for j in range(jn):
                t = tp * NR + j
                y0 = 2 * (t // tw)
                x0 = 2 * (t % tw)
                right = x0 + 1 < out_w
                below = y0 + 1 < out_h
                for r in range(rows):
                    o = i0 + r
                    q = r * NR + j
                    out[o, y0, x0] = res[0, q]
                    if right:
                        out[o, y0, x0 + 1] = res[1, q]
                    if below:
                        out[o, y0 + 1, x0] = res[2, q]
                        if right:
                            out[o, y0 + 1, x0 + 1] = res[3, q]


def conv3x3_winograd(x, xp, up, shift, act: int, pad: int, out) -> None:
    """3x3 stride-1 conv: out = act(conv(x, W) + shift). ``xp`` is a preallocated scratch buffer of
    ``padded_shape``; ``up`` comes from ``transform_weights``."""
    th, tw, _ = tiles(out.shape[1], out.shape[2])
    prepare_input(x, pad, xp)
    _winograd(xp, up, shift, act, th, tw, out)
