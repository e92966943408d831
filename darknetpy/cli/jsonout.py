"""The one way the commands write JSON: strict (RFC 8259) JSON, where a float that is NaN or infinite (an
undefined metric, a NaN network output) is ``null`` -- Python's ``json.dumps`` would write ``NaN``, which
JSON parsers reject."""

from __future__ import annotations

import json
import math


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():     # a numpy scalar
        return _finite(obj.item())
    return obj


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of ``obj`` with non-finite floats (also numpy scalars) as null; never writes NaN.

    >>> dumps({"a": float("nan"), "b": [1.5, float("inf")]})
    '{"a": null, "b": [1.5, null]}'
    """
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)
