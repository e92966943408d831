"""int8 weights and biases: per-output-channel symmetric int8 weights (optionally pair-safe) and int32 biases.

**The u8 x s8 pair constraint** is explained in ``darknetpy/int8/__init__.py``: ``quantize_weights`` with
``pair_safe=True`` chooses each output channel's scale so that no pair of neighbouring products can saturate
``vpmaddubsw``'s int16.
"""

from __future__ import annotations

import numpy as np

from ..errors import QuantizeError

PAIR_LIMIT = 128                                 # 255 * 128 = 32640 <= 32767: a u8 x s8 pair cannot saturate


def pair_layout(w: np.ndarray, groups: int = 1) -> np.ndarray:
    """(O, K) view of weights in onnxruntime/MLAS's multiplication order, K padded to even length.

    Conv weights OIHW are flattened per output channel as (ky, kx, c) -- MLAS's im2col order, in which it
    forms pairs (k, k+1) for ``vpmaddubsw``; connected weights (O, I) are already flat. Depthwise convs
    (MLAS multiplies them exactly) are not paired by onnxruntime; callers skip them.
    """
    if w.ndim == 4:
        flat = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    else:
        flat = w.reshape(w.shape[0], -1)
    if flat.shape[1] % 2:
        flat = np.concatenate([flat, np.zeros((flat.shape[0], 1), flat.dtype)], axis=1)
    return flat


def quad_layout(w: np.ndarray) -> np.ndarray:
    """(O, K) view of conv weights OIHW as darknetpy's GEMM pairs them: per tap (ky, kx), the channels padded to
    a multiple of 4 and paired (c, c+1). The same pairs as :func:`pair_layout` when C is even; for an odd C
    (the RGB input layer) they differ, and the engine uses its faster interleaved kernel on such a layer only
    when neither pairing can saturate."""
    o, c, kh, kw = w.shape
    c4 = -(-c // 4) * 4
    wp = np.zeros((o, kh, kw, c4), w.dtype)
    wp[..., :c] = w.transpose(0, 2, 3, 1)
    return wp.reshape(o, -1)


def saturation_free(q: np.ndarray, layout: str = "flat") -> bool:
    """True when no u8 x s8 pair of the int8 weights ``q`` can leave int16 (so any pairing is exact)."""
    flat = pair_layout(q.astype(np.int64)) if layout == "flat" else quad_layout(q.astype(np.int64))
    return bool((_pair_sums(flat) <= PAIR_LIMIT).all())


def _pair_sums(flat: np.ndarray) -> np.ndarray:
    """Per output channel, the largest same-sign pair magnitude sum (what vpmaddubsw may overflow)."""
    pos = np.maximum(flat, 0)
    neg = np.maximum(-flat, 0)
    return np.maximum((pos[:, 0::2] + pos[:, 1::2]).max(axis=1), (neg[:, 0::2] + neg[:, 1::2]).max(axis=1))


def quantize_weights(w: np.ndarray, *, pair_safe: bool = True, paired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights: (q int8 in [-127, 127], scale float32 (O,)).

    ``scale[c] = max|w[c]| / 127``; with ``pair_safe`` (and ``paired``: the layer's products are paired by
    onnxruntime) the scale grows until every pair of :func:`pair_layout` satisfies the no-saturation limit,
    and a pair pushed over the limit by rounding has its element with the largest rounding error rounded
    toward zero instead. All-zero channels get scale 1.

    >>> q, s = quantize_weights(np.array([[1.0, 0.5, -0.25, 0.0]], np.float32), pair_safe=False)
    >>> q.tolist(), s.tolist()
    ([[127, 64, -32, 0]], [0.007874015718698502])
    """
    w = np.asarray(w, np.float32)
    o = w.shape[0]
    flat = w.reshape(o, -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    scale = amax / 127.0
    # odd channel counts: also the engine's per-tap pairing (see quad_layout), so its fast kernel applies
    layouts = []
    if pair_safe and paired:
        layouts = [pair_layout] + ([quad_layout] if w.ndim == 4 and w.shape[1] % 2 else [])
    for lay in layouts:
        scale = np.maximum(scale, _pair_sums(lay(w.astype(np.float64))) / PAIR_LIMIT)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w.reshape(o, -1) / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
    for _ in range(4):                      # fixing one pairing's pairs can only lower the other's sums
        if all(_pair_sums(lay(q.astype(np.int64))).max(initial=0) <= PAIR_LIMIT for lay in layouts):
            break
        for lay in layouts:
            q = _fix_pairs(w, q, scale, lay)
    return q, scale


def _fix_pairs(w: np.ndarray, q: np.ndarray, scale: np.ndarray, layout=None) -> np.ndarray:
    """Round toward zero the element of any pair that rounding pushed past PAIR_LIMIT (rare: sum 129-130)."""
    layout = layout or pair_layout
    qf = layout(q.astype(np.int64))
    bad = _pair_sums(qf) > PAIR_LIMIT
    if not bad.any():
        return q
    wf = layout(w.astype(np.float64))
    for c in np.nonzero(bad)[0]:
        row, ideal = qf[c], wf[c] / np.float64(scale[c])
        for j in range(0, row.size, 2):
            for sign in (1, -1):
                while sign * row[j] > 0 or sign * row[j + 1] > 0:
                    s = max(sign * row[j], 0) + max(sign * row[j + 1], 0)
                    if s <= PAIR_LIMIT:
                        break
                    # the element whose rounding moved it furthest away from zero gives way
                    err = [(sign * (row[k] - ideal[k]) if sign * row[k] > 0 else -np.inf) for k in (j, j + 1)]
                    k = j + int(np.argmax(err))
                    row[k] -= sign
        qf[c] = row
    # back to the original layout
    if w.ndim == 4:
        o, ci, kh, kw = w.shape
        if layout is quad_layout:
            c4 = -(-ci // 4) * 4
            return qf.reshape(o, kh, kw, c4)[..., :ci].transpose(0, 3, 1, 2).astype(np.int8).copy()
        return qf[:, :ci * kh * kw].reshape(o, kh, kw, ci).transpose(0, 3, 1, 2).astype(np.int8).copy()
    return qf[:, :w.shape[1]].astype(np.int8).reshape(w.shape)


def quantize_bias(b: np.ndarray, in_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale float32(s_in * s_w[c]) and zero point 0, as onnxruntime's quantizer does."""
    bscale = (np.float32(in_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    v = np.rint(np.asarray(b, np.float64) / bscale.astype(np.float64))
    if np.abs(v).max(initial=0) >= 2 ** 31:
        raise QuantizeError(f"a bias does not fit in int32 at scale {float(bscale.min()):.3g} (input scale "
                            f"{in_scale:.3g} too small for this layer's bias)")
    return v.astype(np.int32), bscale

