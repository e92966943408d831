"""Darknet activations (activations.h), evaluated exactly as darknet does.

darknet's formulas use C ``double`` literals, so each is evaluated in double from the float32 input and
rounded back to float32 (``../shared/specs/darknet.md`` §4); e.g. leaky is ``float(0.1 * (double)x)``,
which differs from ``float32(0.1) * x`` by one ulp now and then. ``relu6`` is AlexeyAB's
``min(max(x, 0), 6)``.

Activation codes are small ints so that a single compiled kernel serves every activation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import config

NAMES = ("linear", "logistic", "loggy", "relu", "elu", "selu", "relie", "plse", "hardtan", "lhtan",
         "ramp", "leaky", "tanh", "stair", "relu6")
CODE = {name: i for i, name in enumerate(NAMES)}
LINEAR, LOGISTIC, LOGGY, RELU, ELU, SELU, RELIE, PLSE, HARDTAN, LHTAN, RAMP, LEAKY, TANH, STAIR, RELU6 = range(15)


@njit(cache=True, fastmath=False)
def activate_scalar(x, act):
    """One float32 value through activation ``act`` (a CODE), darknet-exact. Returns float32."""
    d = np.float64(x)
    if act == LINEAR:
        return x
    elif act == LEAKY:
        return np.float32(d if x > 0 else 0.1 * d)
    elif act == RELU:
        return x * np.float32(x > 0)                         # x*(x>0): keeps -0.0 like darknet
    elif act == RELU6:
        y = x if x > 0 else np.float32(0.0)
        return y if y < 6 else np.float32(6.0)
    elif act == LOGISTIC:
        return np.float32(1.0 / (1.0 + math.exp(-d)))
    elif act == LOGGY:
        return np.float32(2.0 / (1.0 + math.exp(-d)) - 1.0)
    elif act == TANH:
        e = math.exp(np.float64(np.float32(2.0) * x))      # 2*x is a float product in darknet
        return np.float32((e - 1.0) / (e + 1.0))           # NaN for x >= ~355, as in darknet
    elif act == ELU:
        return np.float32((d >= 0) * d + (d < 0) * (math.exp(d) - 1.0))
    elif act == SELU:
        return np.float32((d >= 0) * 1.0507 * d + (d < 0) * 1.0507 * 1.6732 * (math.exp(d) - 1.0))
    elif act == RELIE:
        return np.float32(d if x > 0 else 0.01 * d)
    elif act == RAMP:
        return np.float32(np.float64(x * np.float32(x > 0)) + 0.1 * d)
    elif act == PLSE:
        if x < -4:
            return np.float32(0.01 * np.float64(x + np.float32(4.0)))
        if x > 4:
            return np.float32(0.01 * np.float64(x - np.float32(4.0)) + 1.0)
        return np.float32(0.125 * d + 0.5)
    elif act == HARDTAN:
        if x < -1:
            return np.float32(-1.0)
        if x > 1:
            return np.float32(1.0)
        return x
    elif act == LHTAN:
        if x < 0:
            return np.float32(0.001 * d)
        if x > 1:
            return np.float32(0.001 * np.float64(x - np.float32(1.0)) + 1.0)
        return x
    elif act == STAIR:
        n = math.floor(d)
        ni = np.int64(n)
        if ni % 2 == 0:
            return np.float32(math.floor(d / 2.0))
        # (x - n) is a float32 subtraction in C (int n converted to float)
        return np.float32(np.float64(x - np.float32(ni)) + math.floor(d / 2.0))
    return x


@njit(cache=True, fastmath=False)
def activate_fast(x, act):
    """The fast path's activation: float32 arithmetic for the common ones (leaky may differ from darknet
    by one ulp: float32(0.1)*x), the exact formula for the rest. Branch-free enough to vectorise."""
    if act == LINEAR:
        return x
    if act == LEAKY:
        return x if x > 0 else x * np.float32(0.1)
    if act == RELU:
        return x if x > 0 else np.float32(0.0)
    if act == RELU6:
        y = x if x > 0 else np.float32(0.0)
        return y if y < 6 else np.float32(6.0)
    return activate_scalar(x, act)


@njit(cache=True, fastmath=False)
def activate_block(a, n, act):
    """Apply the fast-path activation to a[0:n] in place. The branch on ``act`` is taken once, so each
    loop below is a plain vectorisable loop (a per-element dispatch costs ~40% of a Winograd layer)."""
    if act == LINEAR:
        return
    if act == LEAKY:
        for i in range(n):
            v = a[i]
            a[i] = v if v > 0 else v * np.float32(0.1)
    elif act == RELU:
        for i in range(n):
            v = a[i]
            a[i] = v if v > 0 else np.float32(0.0)
    elif act == RELU6:
        for i in range(n):
            v = a[i]
            v = v if v > 0 else np.float32(0.0)
            a[i] = v if v < 6 else np.float32(6.0)
    else:
        for i in range(n):
            a[i] = activate_scalar(a[i], act)


@njit(cache=True, parallel=True)
def _activate(x, act, nchunk):
    # x: float32[:] (flat view of any tensor), modified in place, in nchunk chunks (config.ELEMENTWISE_CHUNKS)
    n = x.size
    if act == LINEAR:
        return
    step = (n + nchunk - 1) // nchunk
    for c in prange(nchunk):
        for i in range(c * step, min(n, (c + 1) * step)):
            x[i] = activate_scalar(x[i], act)


def activate(x: np.ndarray, activation: str) -> None:
    """Apply ``activation`` (a darknet name) to the float32 array ``x`` in place."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise TypeError("activate() needs a C-contiguous float32 array")
    _activate(x.reshape(-1), CODE[activation], config.ELEMENTWISE_CHUNKS)
