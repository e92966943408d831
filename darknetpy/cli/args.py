"""argparse types shared by every command: one definition each, one wording of each error."""

from __future__ import annotations

import argparse
import math


def positive_int(s: str) -> int:
    """Counts (threads, runs, images): an integer >= 1. ``--calib-random 0`` is an error, not "none"."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def index_int(s: str) -> int:
    """Indices (model, layer): an integer >= 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def positive_float(s: str) -> float:
    """Durations and similar: a finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def percentile(s: str) -> float:
    """The percentile calibration's upper percentile p: finite, 50 < p <= 100.

    int8.calibrate.choose_range clips each tensor to [percentile(100 - p), percentile(p)]: numpy accepts only
    0..100 (150 or nan raised ValueError), and p <= 50 puts the lower bound at or above the upper one.
    """
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not (math.isfinite(v) and 50 < v <= 100):
        raise argparse.ArgumentTypeError(f"must be above 50 and at most 100, got {s}")
    return v
