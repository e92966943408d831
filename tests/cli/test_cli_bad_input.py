"""Bad input through the darknetpy command (issue #16, round 2): networks whose output is not finite, sizes
that would need more memory than the machine has. Each ends in warnings or one error line, never a traceback."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import write
from darknetpy.cli import main

NAN_CFG = """[net]
height=8
width=8
channels=3
[convolutional]
filters=4
size=3
pad=1
activation=leaky
[convolutional]
filters=5
size=1
activation=tanh
[avgpool]
[softmax]
"""


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _png(path, w, h, seed=0):
    from PIL import Image
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def nan_net(tmp_path):
    """Layer 1's tanh overflows (darknet's (e^2x - 1)/(e^2x + 1) is inf/inf = NaN past x ~ 355)."""
    from darknetpy.network import load
    cfg = write(tmp_path, "nan.cfg", NAN_CFG)
    net = load(cfg)
    p0, p1 = net.weights.params[0], net.weights.params[1]
    p0["weights"][...] = np.abs(p0["weights"])
    p0["biases"][...] = 1.0                          # layer 0: positive, finite
    p1["weights"][...] = 1e4                         # layer 1: far past tanh's overflow
    net.save_weights(tmp_path / "nan.weights")
    return cfg, tmp_path / "nan.weights", _png(tmp_path / "a.png", 12, 10)


@pytest.mark.parametrize("exact", [False, True])
def test_classify_nan_output_names_the_first_layer(nan_net, capsys, exact):
    cfg, weights, img = nan_net
    code, out, err = run(["classify", cfg, weights, img, "--top", "3"] + (["--exact"] if exact else []), capsys)
    assert code == 0
    # darknet's printf("%5.2f%%") of a NaN: glibc's "-nan" (sign bit set) or "nan", right-aligned
    assert re.fullmatch(r"( -nan|  nan)%: 0\n( -nan|  nan)%: 1\n( -nan|  nan)%: 2\n", out), out
    warning = [line for line in err.splitlines() if line.startswith("darknetpy: warning:")]
    assert warning == [f"darknetpy: warning: {img}: the network output contains NaN: layer 1 (convolutional) "
                       f"produced NaN (nan.cfg:10), the first layer to do so"]


def test_classify_json_nan_is_null_and_valid_json(nan_net, capsys):
    cfg, weights, img = nan_net
    img2 = _png(img.parent / "b.png", 9, 11, seed=1)
    code, out, err = run(["classify", cfg, weights, img, img2, "--json", "--top", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        d = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
        assert [t["prob"] for t in d["top"]] == [None, None]
    assert err.count("layer 1 (convolutional) produced NaN") == 2 and f"{img2}: " in err


def test_top_k_with_nan_is_darknets():
    from darknetpy.cli.classify import _top_k
    nan = float("nan")
    # darknet's insertion: a NaN takes an empty slot and keeps it; nothing compares greater than it
    assert _top_k(np.array([nan, 0.5, 0.2, 0.9], np.float32), 2) == [0, 3]
    assert _top_k(np.array([0.2, nan, 0.5, 0.1], np.float32), 3) == [2, 1, 0]   # 0.2 cannot pass the NaN
    assert _top_k(np.array([nan, nan, nan], np.float32), 2) == [0, 1]
    assert _top_k(np.array([0.1, 0.3, 0.3, np.inf], np.float32), 3) == [3, 1, 2]


def test_percent_prints_like_glibc():
    from darknetpy.cli.classify import _percent
    assert _percent(np.float32(0.5)) == "50.00"
    assert _percent(np.float32("nan")) == "  nan"
    assert _percent(-np.float32("nan")) == " -nan"
    assert _percent(np.float32("inf")) == "  inf"
