"""``Network.detect`` and ``darknetpy.decode``: the public API, end to end from the photo.

darknet's ``detector test`` (``yolo test`` for the YOLOv1 case) ran on the photos whose stb_image decode is kept
losslessly in ``../shared/conformance/_images/<photo>_stb_decoded.png``: from that PNG, letterbox (resize for
YOLOv1), the network and the decoding give exactly darknet's printed lines, in exact and in fast mode.
"""

from __future__ import annotations

import json
import lzma
import shutil

import numpy as np
import pytest

import darknetpy
from conftest import CONFORMANCE, DARKNET, needs_shared
from darknetpy.errors import DarknetpyError, UnsupportedError

PHOTO_CASES = {"det_yolov3_tiny_dog": "dog", "det_yolov2_tiny_voc_dog": "dog", "det_yolo_nonsquare_scream": "scream",
               "det_yolov1_tiny_eagle": "eagle"}
CASES = [n for n in PHOTO_CASES if (CONFORMANCE / n).is_dir()] or \
    [pytest.param("none", marks=pytest.mark.skip(reason=f"no det_* photo cases at {CONFORMANCE}"))]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_weights")

    def get(name: str):
        path = root / f"{name}.weights"
        if not path.exists():
            path.write_bytes(lzma.open(CONFORMANCE / name / "net.weights.xz").read())
        return path
    return get


def _record(name):
    d = CONFORMANCE / name
    rec = json.loads((d / "detections.json").read_text())
    names = (DARKNET / json.loads((d / "case.json").read_text())["names"]).read_text().splitlines()
    return d, rec, names[: rec["classes"]]


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("name", CASES)
def test_detect_from_the_photo_prints_darknets_lines(name, exact, weights):
    d, rec, names = _record(name)
    net = darknetpy.load(d / "net.cfg", weights(name), exact=exact)
    img = darknetpy.load_image(CONFORMANCE / "_images" / f"{PHOTO_CASES[name]}_stb_decoded.png")
    assert (img.shape[2], img.shape[1]) == (rec["image_w"], rec["image_h"])
    dets = net.detect(img, rec["thresh"], rec["hier_thresh"], rec["nms"], names=names)
    assert [x.line for x in dets] == (d / "darknet_stdout.txt").read_text().splitlines()
    assert all(isinstance(x, darknetpy.Detection) for x in dets)
    # the same through darknetpy.decode from the tensors entering the heads
    heads = [layer for layer in net.graph if layer.kind in ("region", "yolo", "detection")]
    outs = net.predict(np.load(d / "input.npy"), all_layers=True)
    again = darknetpy.decode(net, [outs[h.index - 1] for h in heads], (img.shape[2], img.shape[1]), rec["thresh"],
                             rec["hier_thresh"], rec["nms"], names=names)
    assert [x.line for x in again] == [x.line for x in dets]


@needs_shared
def test_default_names_come_from_fetched_label_files(tmp_path, monkeypatch, weights):
    name = "det_yolov3_tiny_dog"
    d, rec, _ = _record(name)
    net = darknetpy.load(d / "net.cfg", weights(name))
    img = darknetpy.load_image(CONFORMANCE / "_images" / "dog_stb_decoded.png")
    monkeypatch.setenv("DARKNETPY_DATA", str(tmp_path))
    plain = net.detect(img)
    assert plain and all(x.name == str(x.cls) for x in plain)          # no label file: class indices
    shutil.copy(DARKNET / "coco.names", tmp_path / "coco.names")
    named = net.detect(img)
    assert [x.line for x in named] == (d / "darknet_stdout.txt").read_text().splitlines()
    heads = [layer.index - 1 for layer in net.graph if layer.kind == "yolo"]
    outs = net.predict(np.load(d / "input.npy"), all_layers=True)
    assert darknetpy.decode(net, [outs[i] for i in heads], (768, 576)) == named


@needs_shared
def test_detect_refuses_what_it_cannot_use(weights):
    name = "det_yolov3_tiny_dog"
    d, _, _ = _record(name)
    net = darknetpy.load(d / "net.cfg", weights(name))
    with pytest.raises(DarknetpyError, match="float32 \\(C, H, W\\) image"):
        net.detect(np.zeros((3, 20, 20), np.float64))
    with pytest.raises(DarknetpyError, match="a 1-channel image"):
        net.detect(np.zeros((1, 20, 20), np.float32))
    tiny = darknetpy.load(CONFORMANCE / "route" / "net.cfg")
    with pytest.raises(UnsupportedError, match="does not detect objects"):
        tiny.detect(np.zeros((3, 20, 20), np.float32))
