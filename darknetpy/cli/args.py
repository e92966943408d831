"""argparse types shared by every command: one definition each, one wording of each error."""

from __future__ import annotations

import argparse
import math


def _number(s: str, convert, what: str):
    try:
        return convert(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {s!r}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def positive_int(s: str) -> int:
    """Counts (threads, runs, images): an integer >= 1. ``--calib-random 0`` is an error, not "none"."""
    v = _number(s, int, "a whole number")
    _check(v >= 1, f"must be at least 1, got {v}")
    return v


def index_int(s: str) -> int:
    """Indices (model, layer): an integer >= 0."""
    v = _number(s, int, "a whole number")
    _check(v >= 0, f"must be 0 or more, got {v}")
    return v


def positive_float(s: str) -> float:
    """Durations and similar: a finite number > 0."""
    v = _number(s, float, "a number")
    _check(math.isfinite(v) and v > 0, f"must be a positive number, got {s}")
    return v


def percentile(s: str) -> float:
    """The percentile calibration's upper percentile p: finite, 50 < p <= 100.

    The rule is the library's (int8.calibrate.check_percentile), imported here, when the option is given,
    rather than while the parser is built (it imports numba).
    """
    from ..errors import QuantizeError
    from ..int8.calibrate import check_percentile

    _number(s, float, "a number")
    try:
        return check_percentile(s)
    except QuantizeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
