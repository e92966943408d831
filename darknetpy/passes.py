"""Pure graph rewrites: each returns a new (graph, weights) and leaves its input untouched.

``fold_batchnorm`` is the first step of both the ONNX export and the int8 quantizer: every
convolution/connected layer with ``batch_normalize=1`` becomes one without, whose weights are scaled
per output channel and whose bias absorbs the shift, with darknet's CPU formula

    y = (x - mean) / (sqrt(var) + 1e-6) * scale + bias   ==   x * s + (bias - mean * s),
    s = scale / (sqrt(var) + 1e-6)                        (computed in float64, stored as float32).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import layers as L
from .weights import Weights

BN_EPS = 1e-6                      # darknet CPU: sqrt(var) + .000001f (float32 1e-6)


def bn_scale_shift(p: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per output channel so that BN(z) + bias == z*scale + shift, with darknet's CPU formula
    (normalize_cpu: (z - mean) / (sqrt(var) + .000001f), in double here as darknet's float math rounds it the
    same way). (1, biases) without batch norm. A standalone [batchnorm] has no biases: shift = -mean*scale.

    The one batch-norm folding formula of darknetpy: the fast plan, the int8 graph and both ONNX exporters
    use it, so all of them fold identically.
    """
    if "scales" not in p:
        return np.ones(n, np.float32), np.asarray(p["biases"], np.float32).copy()
    eps = np.float64(np.float32(BN_EPS))
    s = p["scales"].astype(np.float64) / (np.sqrt(p["rolling_variance"].astype(np.float64)) + eps)
    bias = p["biases"].astype(np.float64) if "biases" in p else np.zeros(n, np.float64)
    shift = bias - p["rolling_mean"].astype(np.float64) * s
    return s.astype(np.float32), shift.astype(np.float32)


def fold_batchnorm(graph: L.Graph, weights: Weights) -> tuple[L.Graph, Weights]:
    """Fold batch norm into conv/connected weights and biases. Other layers are copied unchanged."""
    new_layers = []
    new_params = []
    for layer, p in zip(graph, weights.params):
        if isinstance(layer, (L.Convolutional, L.Connected)) and layer.batch_normalize:
            n = layer.filters if isinstance(layer, L.Convolutional) else layer.output
            s, shift = bn_scale_shift(p, n)
            w = p["weights"].astype(np.float64) * s.reshape((n,) + (1,) * (p["weights"].ndim - 1))
            new_layers.append(dataclasses.replace(layer, batch_normalize=0))
            new_params.append({"biases": shift, "weights": w.astype(np.float32)})
        else:
            new_layers.append(layer)
            new_params.append({k: v.copy() for k, v in p.items()})
    return dataclasses.replace(graph, layers=tuple(new_layers)), Weights(weights.header, new_params)
