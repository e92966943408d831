"""[net] mean= / std=: darknetpy's input-normalisation extension (cfg/README.md).

The network input is ``(image - mean) / std`` per channel of the [0, 1] RGB image, in float32, applied by
``net.preprocess`` and ``classify``; ``net.predict`` keeps taking the network input tensor.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from conftest import CFG, DARKNET, write

import darknetpy
from darknetpy.cli import main
from darknetpy.errors import CfgError
from darknetpy.graph import graph_from_text
from darknetpy.image import letterbox, load_image, normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYERS = ("[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
          "[maxpool]\nsize=2\nstride=2\n[convolutional]\nfilters=10\nsize=1\nactivation=linear\n"
          "[avgpool]\n[softmax]\n")


def _net_text(extra: str, h: int = 16, w: int = 16) -> str:
    return f"[net]\nheight={h}\nwidth={w}\nchannels=3\n{extra}" + LAYERS


def test_keys_are_read_per_channel():
    g = graph_from_text(_net_text("mean=0.485, 0.456,0.406\nstd=0.229,0.224,0.225\n"))
    assert g.net.mean == IMAGENET_MEAN and g.net.std == IMAGENET_STD and g.net.normalizes
    one = graph_from_text(_net_text("mean=0.5\n"))
    assert one.net.mean == (0.5,) * 3 and one.net.std == (1.0,) * 3
    assert not graph_from_text(_net_text("")).net.normalizes


def test_keys_do_not_warn_as_unknown():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph_from_text(_net_text("mean=0.5,0.5,0.5\nstd=0.25,0.25,0.25\n"))


@pytest.mark.parametrize("extra,line,pattern", [
    ("mean=0.1,0.2\n", 5, r"key 'mean': 2 values for 3 channels"),
    ("std=0.2,0,0.2\n", 5, r"key 'std': 0 is not positive"),
    ("std=-1\n", 5, r"key 'std': -1 is not positive"),
    ("mean=0.1,x,0.2\n", 5, r"key 'mean': 'x' is not a number"),
    ("mean=0.1,,0.2\n", 5, r"key 'mean': '0.1,,0.2' has an empty item"),
    ("mean=0.1,0.2,0.3\nstd=1,2,3,4\n", 6, r"key 'std': 4 values for 3 channels"),
    ("mean=0.1,0.2,0.3e999\n", 5, r"key .mean.: .0.3e999. is beyond the range"),
])
def test_bad_values_name_file_line_and_key(tmp_path, extra, line, pattern):
    cfg = write(tmp_path, "n.cfg", _net_text(extra))
    with pytest.raises(CfgError, match=rf"n\.cfg:{line}: \[net\]: {pattern}"):
        darknetpy.load(cfg)


def test_flat_input_cannot_be_normalised(tmp_path):
    cfg = write(tmp_path, "flat.cfg", "[net]\ninputs=10\nmean=0.5\n[connected]\noutput=4\nactivation=linear\n")
    with pytest.raises(CfgError, match=r"flat\.cfg:3: \[net\]: mean/std normalise image channels"):
        darknetpy.load(cfg)


def test_resized_network_keeps_the_normalisation(tmp_path):
    cfg = write(tmp_path, "n.cfg", _net_text("mean=0.1,0.2,0.3\nstd=0.4,0.5,0.6\n").replace("[softmax]\n", ""))
    net = darknetpy.load(cfg).resized(24, 20)
    assert net.graph.net.mean == (0.1, 0.2, 0.3) and net.graph.net.std == (0.4, 0.5, 0.6)


def test_normalize_is_torchvision_arithmetic():
    """(x - mean) / std in float32, channel by channel: the bits of torchvision's Normalize and of ONNX Sub
    then Div (a multiplication by 1/std would differ in the last bit)."""
    x = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    got = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    for c in range(3):
        want = (x[c] - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert got[c].dtype == np.float32
        np.testing.assert_array_equal(got[c], want)
    assert normalize(x, None, None) is x


def test_preprocess_is_letterbox_then_normalise(tmp_path):
    img = load_image(DARKNET / "dog.jpg") if (DARKNET / "dog.jpg").exists() else \
        np.random.default_rng(1).random((3, 40, 61), dtype=np.float32)
    cfg = write(tmp_path, "n.cfg", _net_text("mean=0.485,0.456,0.406\nstd=0.229,0.224,0.225\n", h=24, w=32))
    net = darknetpy.load(cfg)
    np.testing.assert_array_equal(net.preprocess(img), normalize(letterbox(img, 32, 24), IMAGENET_MEAN,
                                                                  IMAGENET_STD))
    plain = darknetpy.load(CFG / "tiny.cfg")              # tiny.cfg has no mean/std: letterbox only
    np.testing.assert_array_equal(plain.preprocess(img), letterbox(img, 224, 224))
    with pytest.raises(darknetpy.errors.DarknetpyError, match="float32"):
        net.preprocess((img * 255).astype(np.uint8))


def test_translated_cfgs_carry_imagenet_values_and_tiny_none():
    for name in ("dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"):
        net = darknetpy.load(CFG / f"{name}.cfg").graph.net
        assert net.mean == IMAGENET_MEAN and net.std == IMAGENET_STD, name
    assert not darknetpy.load(CFG / "tiny.cfg").graph.net.normalizes


def test_classify_normalises_the_image(tmp_path, capsys):
    """classify on a cfg with mean/std prints what predict gives on the normalised image, which differs from
    the un-normalised one (so the test would catch classify forgetting it)."""
    text = _net_text("mean=0.485,0.456,0.406\nstd=0.229,0.224,0.225\n", h=32, w=32)
    cfg = write(tmp_path, "n.cfg", text)
    net = darknetpy.load(cfg)
    weights = tmp_path / "n.weights"
    net.save_weights(weights)
    img = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    from PIL import Image
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["classify", str(cfg), str(weights), str(tmp_path / "x.png"), "--json", "--top", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    probs = net.predict(net.preprocess(str(tmp_path / "x.png"))).ravel()
    assert [t["index"] for t in out["top"]] == [int(i) for i in np.argsort(-probs, kind="stable")]
    np.testing.assert_allclose([t["prob"] for t in out["top"]], np.sort(probs)[::-1], rtol=0, atol=0)
    raw = net.predict(letterbox(load_image(tmp_path / "x.png"), 32, 32)).ravel()
    assert not np.allclose(raw, probs)


def test_summary_and_cfg_readme_document_the_keys():
    from darknetpy.summary import summary_dict, summary_table

    text = (CFG / "README.md").read_text()
    assert re.search(r"mean=.*std=", text) and "darknet ignores" in text
    g = darknetpy.load_graph(CFG / "dla46_c.cfg")
    assert "(image - mean) / std, mean 0.485, 0.456, 0.406, std 0.229, 0.224, 0.225" in summary_table(g)
    assert summary_dict(g)["mean"] == list(IMAGENET_MEAN)
    assert summary_dict(darknetpy.load_graph(CFG / "tiny.cfg"))["mean"] is None
