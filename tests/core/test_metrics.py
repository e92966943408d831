"""darknetpy.metrics: ST Edge AI Core's validation metrics, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from darknetpy.metrics import NAMES, Metrics, format_metrics, metrics

# P = [1, 2, 3, 4] against R = [1, 3, 2, 5]: e = P - R = [0, -1, 1, -1], n = 4
#   rmse = sqrt(3/4)                      mae = 3/4
#   l2r  = sqrt(3) / sqrt(1+9+4+25) = 1/sqrt(13)
#   mean = -1/4                           std = sqrt(((1/4)^2 + (3/4)^2 + (5/4)^2 + (3/4)^2) / 4) = sqrt(11)/4
#   mean(R) = 11/4, sum((R - 11/4)^2) = 35/4  ->  nse = 1 - 3 / (35/4) = 23/35
#   cos  = (1 + 6 + 6 + 20) / sqrt(30 * 39) = 33 / sqrt(1170)
#   acc  = 1 (argmax 3 in both)
P = [1.0, 2.0, 3.0, 4.0]
R = [1.0, 3.0, 2.0, 5.0]
BY_HAND = {"acc": 1.0, "rmse": math.sqrt(3) / 2, "mae": 0.75, "l2r": 1 / math.sqrt(13), "mean": -0.25,
           "std": math.sqrt(11) / 4, "nse": 23 / 35, "cos": 33 / math.sqrt(1170)}


def test_one_sample_by_hand():
    got = metrics(P, R, classifier=True)
    assert list(got)[:8] == list(NAMES)
    for name, value in BY_HAND.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert got["samples"] == 1 and got["elements"] == 4


def test_accumulated_equals_the_concatenation():
    """Two samples [1, 2] / [1, 3] and [3, 4] / [2, 5]: every metric but acc is the one of the flattened
    arrays; acc counts samples (both argmax 1 == 1)."""
    m = Metrics(classifier=True)
    m.add(P[:2], R[:2])
    m.add(np.array(P[2:]).reshape(1, 2), np.array(R[2:]).reshape(2, 1))      # shapes do not matter
    got = m.result()
    for name, value in BY_HAND.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert got["samples"] == 2 and got["elements"] == 4


def test_many_samples_match_the_one_shot_numbers():
    rng = np.random.default_rng(3)
    p = rng.standard_normal((7, 50)) * 3 + 100          # a large mean: the running variance must stay exact
    r = p + rng.standard_normal((7, 50)) * 0.01
    m = Metrics()
    for a, b in zip(p, r):
        m.add(a, b)
    got = m.result()
    e = (p - r).ravel()
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    assert got["l2r"] == pytest.approx(np.linalg.norm(e) / np.linalg.norm(r), rel=1e-12)
    assert got["mean"] == pytest.approx(e.mean(), rel=1e-9)
    assert got["std"] == pytest.approx(e.std(), rel=1e-9)
    assert got["nse"] == pytest.approx(1 - np.sum(e ** 2) / np.sum((r - r.mean()) ** 2), rel=1e-12)
    assert got["cos"] == pytest.approx(p.ravel() @ r.ravel() / np.linalg.norm(p) / np.linalg.norm(r), rel=1e-12)
    assert got["acc"] is None                            # not a classifier


def test_acc_against_labels_and_ties():
    m = Metrics(classifier=True)
    m.add([0.2, 0.5, 0.3], [0.0, 0.0, 1.0], label=1)     # the label, not the reference's argmax, counts
    m.add([0.5, 0.5, 0.0], [0.0, 1.0, 0.0])              # tie: the lowest index (0) is the prediction -> wrong
    m.add([0.1, 0.1, 0.8], [0.0, 0.0, 1.0])
    assert m.result()["acc"] == pytest.approx(2 / 3)


def test_identical_and_degenerate_references():
    same = metrics([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], classifier=True)
    assert (same["rmse"], same["mae"], same["l2r"], same["mean"], same["std"], same["nse"], same["cos"],
            same["acc"]) == (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    zero = metrics([0.0, 1.0], [0.0, 0.0])               # all-zero reference: l2r undefined, nse undefined
    assert zero["l2r"] is None and zero["nse"] is None and zero["cos"] == 0.0
    assert zero["rmse"] == pytest.approx(math.sqrt(0.5)) and zero["mean"] == 0.5 and zero["std"] == 0.5
    both_zero = metrics([0.0, 0.0], [0.0, 0.0])
    assert both_zero["l2r"] == 0.0 and both_zero["nse"] == 1.0 and both_zero["cos"] == 1.0
    const = metrics([2.0, 3.0], [2.0, 2.0])              # constant reference: nse undefined, l2r defined
    assert const["nse"] is None and const["l2r"] == pytest.approx(1 / math.sqrt(8))
    empty = Metrics(classifier=True).result()
    assert all(empty[name] is None for name in NAMES) and empty["samples"] == 0


def test_sizes_must_agree():
    with pytest.raises(ValueError, match="the prediction has 3 values, the reference 2"):
        metrics([1, 2, 3], [1, 2])


def test_format_in_st_terms():
    line = format_metrics(metrics(P, R, classifier=True))
    assert line == ("acc 100.00 %  rmse 8.660e-01  mae 7.500e-01  l2r 2.774e-01  mean -2.500e-01  "
                    "std 8.292e-01  nse 0.657143  cos 0.964764")
    assert format_metrics(metrics([0.0, 1.0], [0.0, 0.0])).startswith("rmse 7.071e-01  mae 5.000e-01  l2r n/a")
