"""Every command's JSON is strict JSON: NaN and infinity (an undefined metric, a NaN output) become null."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from darknetpy.cli import jsonout

CLI = Path(__file__).resolve().parents[2] / "darknetpy" / "cli"


def test_non_finite_floats_are_null_and_the_rest_is_kept():
    doc = {"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": {"d": np.float32("nan"),
           "e": np.float64(2.5), "f": np.int64(3)}, "g": (1, "x"), "h": None, "i": True}
    text = jsonout.dumps(doc)
    assert json.loads(text) == {"a": None, "b": [1.5, None, None], "c": {"d": None, "e": 2.5, "f": 3},
                                "g": [1, "x"], "h": None, "i": True}
    assert "NaN" not in text and "Infinity" not in text


def test_every_command_writes_json_through_jsonout():
    """One definition: no command calls json.dumps itself (it would write NaN)."""
    for path in sorted(CLI.glob("*.py")):
        if path.name == "jsonout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "dumps" and isinstance(node.value, ast.Name):
                assert node.value.id != "json", f"{path.name}:{node.lineno} calls json.dumps"
