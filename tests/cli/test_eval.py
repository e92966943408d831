"""``darknetpy eval``: top-1/top-k of the float and int8 networks on a labelled folder built at run time (synthetic
PNGs, and darknet's sample photos from ../shared), checked against the networks run here image by image."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from conftest import CFG, DARKNET, needs_shared, write
from darknetpy.cli import main

SMALL_CFG = """[net]
height=16
width=16
channels=3
[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=10
size=1
stride=1
activation=linear
[avgpool]
[softmax]
"""
PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def small(tmp_path):
    """A 10-class network (random weights) and a labelled folder: classes 0, 3 and 7, 4 images each."""
    from PIL import Image

    from darknetpy.network import load

    cfg = write(tmp_path, "small.cfg", SMALL_CFG)
    net = load(cfg)
    weights = tmp_path / "small.weights"
    net.save_weights(weights)
    rng = np.random.default_rng(4)
    root = tmp_path / "val"
    for label in (0, 3, 7):
        (root / str(label)).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (12 + k, 20, 3), dtype=np.uint8)).save(root / str(label) / f"{k}.png")
    return cfg, weights, root, net


def by_hand(net, qnet, root, k=5):
    """(paths, labels, float top-k lists, int8 top-k lists) computed here, image by image."""
    from darknetpy.image import find_images, load_image

    paths = find_images(root)
    labels = [int(p.split("/")[-2]) for p in paths]
    ftop, qtop = [], []
    for p in paths:
        x = net.preprocess(load_image(p))
        ftop.append([int(i) for i in np.argsort(-net.predict(x).ravel(), kind="stable")[:k]])
        if qnet is not None:
            qtop.append([int(i) for i in np.argsort(-qnet.predict(x).ravel(), kind="stable")[:k]])
    return paths, labels, ftop, qtop


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_json_float_and_int8_side_by_side(small, capsys, jobs):
    from darknetpy.int8 import quantize

    cfg, weights, root, net = small
    code, out, err = run(capsys, cfg, weights, root, "--int8", "--json", "--top", "3", "--jobs", jobs)
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) >= {"images", "float", "int8", "agreement", "per_image"}
    assert doc["jobs"] == int(jobs)
    # the same int8 network: calibrated on the evaluation images (all 12 < 64), in path order
    paths, labels, ftop, qtop = by_hand(net, quantize(net, sorted(str(p) for p in root.rglob("*.png"))), root, 3)
    assert doc["images"] == 12 and doc["failed"] == 0 and doc["classes"] == 3
    assert [r["image"] for r in doc["per_image"]] == paths
    assert [r["label"] for r in doc["per_image"]] == labels
    assert [r["float"] for r in doc["per_image"]] == ftop
    assert [r["int8"] for r in doc["per_image"]] == qtop
    n = len(paths)
    assert doc["float"] == {"top1": sum(f[0] == lab for f, lab in zip(ftop, labels)) / n,
                            "top3": sum(lab in f for f, lab in zip(ftop, labels)) / n}
    assert doc["int8"] == {"top1": sum(q[0] == lab for q, lab in zip(qtop, labels)) / n,
                           "top3": sum(lab in q for q, lab in zip(qtop, labels)) / n}
    assert doc["agreement"] == sum(f[0] == q[0] for f, q in zip(ftop, qtop)) / n
    m = doc["metrics"]["int8_vs_float"]
    assert m["acc"] == doc["agreement"] and m["samples"] == 12 and 0 < m["cos"] <= 1


def test_text_and_float_only(small, capsys):
    cfg, weights, root, net = small
    code, out, err = run(capsys, cfg, weights, root)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"small.cfg on 12 image(s) of 3 class(es) from {root}"
    assert lines[1].split() == ["top-1", "top-5"] and lines[2].startswith("float ")
    assert len(lines) == 3                                                   # no int8 without --int8
    assert "images/s, 1 process)" in err and "evaluating" not in err         # no progress bar off a terminal
    code, out, err = run(capsys, cfg, weights, root, "--json")
    doc = json.loads(out)
    assert "int8" not in doc and "agreement" not in doc and "int8" not in doc["per_image"][0]


def test_bad_image_is_reported_and_the_others_go_on(small, capsys):
    cfg, weights, root, net = small
    bad = root / "3" / "broken.png"
    bad.write_bytes(b"not an image")
    code, out, err = run(capsys, cfg, weights, root, "--json", "--jobs", "2")
    assert code == 5
    assert err.count("darknetpy: error: ") == 1 and f"darknetpy: error: {bad}: not an image" in err
    doc = json.loads(out)
    assert doc["images"] == 12 and doc["failed"] == 1 and len(doc["per_image"]) == 13
    (rec,) = [r for r in doc["per_image"] if "error" in r]
    assert rec["image"] == str(bad) and rec["exit_code"] == 5 and rec["label"] == 3


def test_folder_names_labels_and_layout_errors(small, capsys, tmp_path):
    cfg, weights, root, net = small
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(10)))
    for label in ("0", "3", "7"):
        (root / label).rename(root / f"class {label}")
    code, out, err = run(capsys, cfg, weights, root, "--labels", names, "--json")
    assert code == 0, err
    assert sorted({r["label"] for r in json.loads(out)["per_image"]}) == [0, 3, 7]
    code, out, err = run(capsys, cfg, weights, root, "--json")         # no labels file: folder names unknown
    assert code == 1 and "3 folder(s) name no class (class 0, class 3, class 7)" in err
    assert "a class index (0..9)" in err
    code, out, err = run(capsys, cfg, weights, tmp_path / "missing")
    assert code == 5 and "does not exist" in err
    empty = tmp_path / "empty"
    (empty / "1").mkdir(parents=True)
    code, out, err = run(capsys, cfg, weights, empty)
    assert code == 5 and "no images in class folders" in err
    code, out, err = run(capsys, cfg, weights, root, "--calib", root)
    assert code == 7 and "--calib goes with --int8" in err


def test_plot_is_the_confusion_of_int8_against_float(small, capsys, tmp_path, monkeypatch):
    from darknetpy import plots
    from darknetpy.plots import confusion

    drawn = []
    original = plots.plot_confusion
    monkeypatch.setattr(plots, "plot_confusion", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    cfg, weights, root, net = small
    png = tmp_path / "confusion.png"
    code, out, err = run(capsys, cfg, weights, root, "--int8", "--json", "--plot", png)
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG
    doc = json.loads(out)
    f = [r["float"][0] for r in doc["per_image"]]
    q = [r["int8"][0] for r in doc["per_image"]]
    matrix, classes = confusion(f, q)
    (fig,) = drawn
    (ax,) = fig.axes
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(c) for c in classes]
    assert int(matrix.sum()) == 12 and sum(matrix[i, i] for i in range(len(classes))) == sum(a == b for a, b in zip(f, q))
    assert ax.get_xlabel() == "int8 top-1" and ax.get_ylabel() == "float top-1"


def test_plot_without_matplotlib_fails_before_any_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, tmp_path / "missing.cfg", "w", tmp_path, "--plot", tmp_path / "c.png")
    assert code == 7 and "pip install 'darknetpy[plot]'" in err


@needs_shared
def test_tiny_darknet_on_darknets_photos(capsys, tmp_path):
    """darknet's sample photos in ImageNet class folders named as imagenet.shortnames.list names them."""
    root = tmp_path / "val"
    for name, photos in (("malamute", ["dog.jpg"]), ("bald eagle", ["eagle.jpg"]), ("sorrel", ["horses.jpg"])):
        (root / name).mkdir(parents=True)
        for photo in photos:
            shutil.copy(DARKNET / photo, root / name / photo)
    labels = DARKNET / "imagenet.shortnames.list"
    code, out, err = run(capsys, CFG / "tiny.cfg", DARKNET / "tiny.weights", root, "--labels", labels, "--int8",
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    names = labels.read_text().splitlines()[:1000]
    per = {r["image"].rsplit("/", 1)[1]: r for r in doc["per_image"]}
    assert names[per["dog.jpg"]["label"]] == "malamute" and names[per["dog.jpg"]["float"][0]] == "malamute"
    assert names[per["eagle.jpg"]["float"][0]] == "bald eagle"
    assert names[per["horses.jpg"]["float"][0]] == "warthog"              # Tiny Darknet gets the horses wrong
    assert doc["images"] == 3 and doc["float"]["top1"] == pytest.approx(2 / 3)
    assert 0 <= doc["int8"]["top1"] <= 1 and 0 <= doc["agreement"] <= 1
