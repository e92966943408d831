"""The example scripts run (they read fetched data: point them at ../shared/darknet via DARKNETPY_DATA)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


from conftest import DARKNET, REPO, needs_shared


@needs_shared
def test_classify_example(tmp_path):
    # the example reads weights/ of the checkout; run a copy of it against a weights dir made from ../shared
    root = tmp_path / "repo"
    (root / "examples").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "classify.py", root / "examples")
    shutil.copytree(REPO / "cfg", root / "cfg")
    (root / "weights").mkdir()
    for name in ("tiny.weights", "dog.jpg", "imagenet.shortnames.list"):
        os.symlink(DARKNET / name, root / "weights" / name)
    p = subprocess.run([sys.executable, str(root / "examples" / "classify.py")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].endswith("malamute")


@needs_shared
def test_plots_example(tmp_path):
    """examples/plots.py (make plots): its three PNGs, from a data folder made of ../shared's files (the test
    extra installs matplotlib, so that every --plot test runs)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("tiny.weights", "dog.jpg", "eagle.jpg", "imagenet.shortnames.list"):
        os.symlink(DARKNET / name, data / name)
    out = tmp_path / "plots"
    env = {**os.environ, "DARKNETPY_DATA": str(data), "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, str(REPO / "examples" / "plots.py"), "--out", str(out), "--crops", "2"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    for name in ("quantize_layers.png", "eval_confusion.png", "board_epochs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
