"""int8 kernels that only move values: [upsample] (nearest) and [reorg] (darknet's index map).

Both keep their input's scale and zero point (a QDQ model's DQ -> Resize/SpaceToDepth -> Q with the same
parameters is the identity on the int8 values), so the int8 values are copied as they are.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..detection import _reorg


@njit(cache=True, parallel=True)
def _upsample(x, stride, out):
    # nearest neighbour: out[c, y, x] = in[c, y // stride, x // stride] (darknet's upsample_cpu, scale 1)
    oh, ow = out.shape[1], out.shape[2]
    for ch in prange(x.shape[0]):
        for y in range(oh):
            src = x[ch, y // stride]
            dst = out[ch, y]
            for xx in range(ow):
                dst[xx] = src[xx // stride]


def upsample(x: np.ndarray, stride: int, out: np.ndarray) -> None:
    """[upsample] stride > 0, scale 1, on int8 (C, H, W) -> (C, H*stride, W*stride)."""
    _check(x, out)
    _upsample(x, stride, out)


def reorg(x: np.ndarray, c: int, h: int, w: int, stride: int, reverse: bool, out: np.ndarray) -> None:
    """[reorg] (no flatten/extra) on int8: the same index map as the float kernel (``detection.reorg``, darknet's
    ``reorg_cpu`` over the layer input's (c, h, w)); ``x`` and ``out`` flat."""
    _check(x, out)
    _reorg(x.reshape(-1), c, h, w, stride, reverse, out.reshape(-1))


def _check(*arrays):
    for a in arrays:
        if a.dtype != np.int8 or not a.flags.c_contiguous:
            raise TypeError(f"kernel needs C-contiguous int8 arrays, got {a.dtype} {a.shape}")
