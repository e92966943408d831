"""Bad input through the darknetpy command (issue #16, round 2): networks whose output is not finite, sizes
that would need more memory than the machine has. Each ends in warnings or one error line, never a traceback."""

from __future__ import annotations

import json
import re
import warnings

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
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no raw numpy overflow warning
        assert _percent(np.float32(3e38)) == "  inf"         # float math: 3e38f * 100 is inf


# -- sizes that need more memory than the limit ---------------------------------------------------------------------

WIDE_CFG = """[net]
height=224
width=100000
channels=3
[convolutional]
filters=16
size=3
pad=1
activation=leaky
[avgpool]
[softmax]
"""

SMALL_CFG = "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n" \
            "[avgpool]\n[softmax]\n"


def test_classify_refuses_a_network_wider_than_memory(tmp_path, capsys, monkeypatch):
    from darknetpy.errors import MemoryLimitError
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "1G")
    cfg = write(tmp_path, "wide.cfg", WIDE_CFG)
    code, out, err = run(["classify", cfg, tmp_path / "none.weights", _png(tmp_path / "a.png", 12, 10)], capsys)
    assert code == MemoryLimitError.exit_code == 17 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("darknetpy: error: wide.cfg: running this network at 100000x224 needs about ")
    assert "the largest layer is wide.cfg:5 layer 0 [convolutional] (16 x 224 x 100000" in err
    assert err.endswith("more than the 1.0 GiB set by DARKNETPY_MAX_MEMORY\n")


def test_classify_resize_min_refuses_an_elongated_image_and_goes_on(tmp_path, capsys):
    from darknetpy.errors import ImageError
    from darknetpy.network import load
    cfg = write(tmp_path, "s.cfg", SMALL_CFG.replace("height=8\nwidth=8", "height=224\nwidth=224"))
    load(cfg).save_weights(tmp_path / "s.weights")
    thin = _png(tmp_path / "thin.png", 1, 20000)
    good = _png(tmp_path / "good.png", 300, 200)
    code, out, err = run(["classify", cfg, tmp_path / "s.weights", thin, good, "--preprocess", "resize_min"], capsys)
    assert code == ImageError.exit_code
    # one error line for the image (on a cold kernel cache stderr also says that it compiles)
    errors = [line for line in err.splitlines() if line.startswith("darknetpy: error:")]
    assert errors[0] == f"darknetpy: error: {thin}: a 1x20000 image is too elongated for resize_min: " \
                                  "scaled to 224x4480000 it holds more values than darknet's int can count " \
                                  "(2,147,483,647), and no network runs at that size"
    assert len(errors) == 1
    assert len(out.splitlines()) == 4                      # good.png is classified (4 classes)


def test_classify_resize_min_beyond_the_memory_limit_is_that_image_only(tmp_path, capsys, monkeypatch):
    from darknetpy.errors import ImageError
    from darknetpy.network import load
    cfg = write(tmp_path, "s.cfg", SMALL_CFG)
    load(cfg).save_weights(tmp_path / "s.weights")
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "1M")
    thin = _png(tmp_path / "thin.png", 1, 2000)
    good = _png(tmp_path / "good.png", 12, 10)
    code, out, err = run(["classify", cfg, tmp_path / "s.weights", thin, good, "--preprocess", "resize_min",
                          "--json"], capsys)
    assert code == ImageError.exit_code
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["image"] == str(thin) and first["exit_code"] == 5
    assert first["error"].startswith(f"{thin}: resize_min of a 1x2000 image to 8x16000 needs about ")
    assert second["image"] == str(good) and len(second["top"]) == 4
