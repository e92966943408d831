"""ST Edge AI Core's validation metrics, under ST's names: acc, rmse, mae, l2r, mean, std, nse, cos.

``stedgeai validate`` compares the predictions of the generated C model (or of the board running it) with
those of the original model, and reports these scalars. They are defined in ST's "Evaluation report and
metrics" (ST Edge AI Core 2.2.0 r2.6 / 3.0.0 r2.7,
https://stedgeai-dc.st.com/assets/embedded-docs/evaluation_metrics.html), table "Evaluated metrics":

    ACC   accuracy (classification accuracy)      only classifier models
    RMSE  root mean square error                  all models
    MAE   mean absolute error                     all models
    L2R   L2 relative error                       all models
    MEAN  arithmetic mean of the error            all models
    STD   standard deviation of the error         all models
    NSE   Nash-Sutcliffe efficiency criteria      all models
    COS   cosine similarity                       all models

computed as "simple scalar values ... no specific thresholds or pre/post-processing", on the predicted
values P (the model under test: the board, the int8 network) against the reference values R (the
original model: the float network, or darknetpy's int8 engine when the board is tested), both flattened
over every element of every sample, with e = P - R and n elements (the formulas written out below; the
stored copy of ST's page consulted here gave the names and descriptions above, the formulas are the
standard ones for them):

    rmse = sqrt(sum(e^2) / n)               mae  = sum(|e|) / n
    l2r  = ||e||_2 / ||R||_2                mean = sum(e) / n
    std  = sqrt(sum((e - mean)^2) / n)      nse  = 1 - sum(e^2) / sum((R - mean(R))^2)
    cos  = sum(P R) / (||P||_2 ||R||_2)     acc  = share of samples whose top-1 class (argmax of P)
                                                   is the reference one (argmax of R, or the label)

So l2r is the inverse of the SQNR (SQNR dB = -20 log10 l2r), nse is 1 - MSE / variance of the reference
(1: identical; 0: no better than predicting the reference mean), and cos is the cosine of the angle
between the two flattened outputs. A value that is undefined (l2r against an all-zero reference, nse against
a constant one, while P differs from R) is ``None``; acc is ``None`` for a tensor that is not a class vector.

``Metrics`` accumulates them over samples without keeping the samples (sums and Chan's pairwise merge of
means and squared deviations, in float64), so that "over all inputs" is exactly the metric of the
concatenated arrays; ``metrics(p, r)`` is the one-shot form. numpy only.

>>> m = Metrics(classifier=True)
>>> m.add([0.1, 0.7, 0.2], [0.2, 0.6, 0.2])
>>> round(m.result()["rmse"], 6), m.result()["acc"]
(0.08165, 1.0)
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

NAMES = ("acc", "rmse", "mae", "l2r", "mean", "std", "nse", "cos")


class Metrics:
    """ST's metrics of predictions against references, accumulated sample by sample (``add``)."""

    def __init__(self, classifier: bool = False):
        self.classifier = classifier
        self.samples = 0
        self.correct = 0
        self.n = 0                   # elements
        self.sum_abs = 0.0           # sum |e|
        self.sum_e2 = 0.0            # sum e^2
        self.mean_e = 0.0            # running mean of e and sum of squared deviations (Chan et al.)
        self.m2_e = 0.0
        self.mean_r = 0.0            # the same for R (nse's denominator)
        self.m2_r = 0.0
        self.sum_pr = 0.0            # cos
        self.sum_p2 = 0.0
        self.sum_r2 = 0.0

    def add(self, pred, ref, *, label: Optional[int] = None) -> None:
        """One sample: ``pred`` and ``ref`` of the same size (any shape; flattened). With ``classifier``,
        the sample counts as correct when argmax(pred) is ``label`` (if given) or argmax(ref); ties go to the
        lowest index, as darknet's top-k."""
        p = np.asarray(pred, np.float64).reshape(-1)
        r = np.asarray(ref, np.float64).reshape(-1)
        if p.size != r.size:
            raise ValueError(f"metrics: the prediction has {p.size} values, the reference {r.size}")
        self.samples += 1
        if self.classifier and p.size:
            target = int(np.argmax(r)) if label is None else int(label)
            self.correct += int(int(np.argmax(p)) == target)
        k = p.size
        if k == 0:
            return
        e = p - r
        self.sum_abs += float(np.abs(e).sum())
        self.sum_e2 += float(e @ e)
        self.sum_pr += float(p @ r)
        self.sum_p2 += float(p @ p)
        self.sum_r2 += float(r @ r)
        self.mean_e, self.m2_e = _merge(self.n, self.mean_e, self.m2_e, e)
        self.mean_r, self.m2_r = _merge(self.n, self.mean_r, self.m2_r, r)
        self.n += k

    def result(self) -> dict:
        """{name: value} in ST's order (``NAMES``), plus ``samples`` and ``elements``. Values are floats,
        or None where undefined (see the module docstring); all None before any element."""
        out: dict = {name: None for name in NAMES}
        out["acc"] = self.correct / self.samples if self.classifier and self.samples else None
        out.update(samples=self.samples, elements=self.n)
        if self.n == 0:
            return out
        n = self.n
        exact = self.sum_e2 == 0.0
        out["rmse"] = math.sqrt(self.sum_e2 / n)
        out["mae"] = self.sum_abs / n
        out["l2r"] = (0.0 if exact else None) if self.sum_r2 == 0.0 else math.sqrt(self.sum_e2 / self.sum_r2)
        out["mean"] = self.mean_e
        out["std"] = math.sqrt(max(self.m2_e, 0.0) / n)
        out["nse"] = (1.0 if exact else None) if self.m2_r == 0.0 else 1.0 - self.sum_e2 / self.m2_r
        den = math.sqrt(self.sum_p2 * self.sum_r2)
        out["cos"] = self.sum_pr / den if den > 0 else (1.0 if exact else 0.0)
        return out


def _merge(n: int, mean: float, m2: float, x: np.ndarray) -> tuple[float, float]:
    """Chan et al.'s update of (mean, sum of squared deviations) over n values with the values ``x``."""
    k = x.size
    mean_x = float(x.mean())
    m2_x = float(((x - mean_x) ** 2).sum())
    if n == 0:
        return mean_x, m2_x
    total = n + k
    delta = mean_x - mean
    return mean + delta * k / total, m2 + m2_x + delta * delta * n * k / total


def metrics(pred, ref, *, classifier: bool = False, label: Optional[int] = None) -> dict:
    """ST's metrics of one prediction against its reference (``Metrics`` with a single sample)."""
    m = Metrics(classifier)
    m.add(pred, ref, label=label)
    return m.result()


def format_metrics(result: dict, names: tuple[str, ...] = NAMES) -> str:
    """One line in ST's terms: ``acc 98.00 %  rmse 1.234e-03  ...`` (``n/a`` where undefined; acc omitted when
    the tensor is not a class vector)."""
    parts = []
    for name in names:
        v = result.get(name)
        if name == "acc":
            if v is not None:
                parts.append(f"acc {100 * v:.2f} %")
            continue
        parts.append(f"{name} {'n/a' if v is None else f'{v:.6f}' if name in ('nse', 'cos') else f'{v:.3e}'}")
    return "  ".join(parts)
