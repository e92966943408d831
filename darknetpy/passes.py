"""Pure graph rewrites: each returns a new (graph, weights) and leaves its input untouched.

``fold_batchnorm`` is the first step of both the ONNX export and the int8 quantizer: every
convolution/connected layer with ``batch_normalize=1`` becomes one without, whose weights are scaled
per output channel and whose bias absorbs the shift, with darknet's CPU formula

    y = (x - mean) / (sqrt(var) + 1e-6) * scale + bias   ==   x * s + (bias - mean * s),
    s = scale / (sqrt(var) + 1e-6)                        (computed in float64, stored as float32).

``numpy_warnings`` is how every stage that computes on a layer's parameters (this folding, the plans, the int8
quantizer, the exports) reports numpy's floating-point warnings: one warning naming the layer, not numpy's
own ("invalid value encountered in sqrt" from a negative rolling_variance, "overflow encountered in cast"
from weights beyond float32, ...), whose file and line point into darknetpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import numpy as np

from . import layers as L
from .weights import Weights

BN_EPS = 1e-6                      # darknet CPU: sqrt(var) + .000001f (float32 1e-6)


@contextlib.contextmanager
def numpy_warnings(graph: L.Graph, layer: L.Layer, doing: str):
    """Inside the block, numpy's floating-point warnings (overflow, invalid value, division by zero) are
    collected, and at its end re-issued as one warning naming ``layer`` the way a user finds it
    (``tiny.cfg:41 layer 7 [convolutional]: numpy: ... while <doing>``). Other warnings pass unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):
            yield
    numpy_said = []
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and " encountered in " in str(w.message):
            numpy_said.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if numpy_said:
        where = os.path.basename(graph.path)
        at = f"{where}:{layer.line} " if layer.line else f"{where}: "
        warnings.warn(f"{at}{layer.describe()}: numpy: {'; '.join(dict.fromkeys(numpy_said))} while {doing} (its "
                      "parameters or inputs hold NaN, infinity, a negative variance or values beyond float32): its "
                      "results will not be finite")


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
            with numpy_warnings(graph, layer, "folding its batch norm"):
                s, shift = bn_scale_shift(p, n)
                w = p["weights"].astype(np.float64) * s.reshape((n,) + (1,) * (p["weights"].ndim - 1))
                w = w.astype(np.float32)
            new_layers.append(dataclasses.replace(layer, batch_normalize=0))
            new_params.append({"biases": shift, "weights": w})
        else:
            new_layers.append(layer)
            new_params.append({k: v.copy() for k, v in p.items()})
    return dataclasses.replace(graph, layers=tuple(new_layers)), Weights(weights.header, new_params)
