"""``darknetpy detect``: darknet's lines on stdout, the time on stderr, --json, the picture, errors per image."""

from __future__ import annotations

import json
import lzma
import shutil

import numpy as np
import pytest

from conftest import CONFORMANCE, DARKNET, write
from darknetpy.cli import main

CASE = CONFORMANCE / "det_yolov3_tiny_dog"
needs_case = pytest.mark.skipif(not CASE.is_dir(), reason=f"no {CASE}")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """det_yolov3_tiny_dog's cfg, weights and photo (stb's decode, lossless), and coco.names in a data dir."""
    root = tmp_path_factory.mktemp("detect")
    (root / "net.weights").write_bytes(lzma.open(CASE / "net.weights.xz").read())
    shutil.copy(CASE / "net.cfg", root / "net.cfg")
    shutil.copy(CONFORMANCE / "_images" / "dog_stb_decoded.png", root / "dog.png")
    data = root / "data"
    data.mkdir()
    shutil.copy(DARKNET / "coco.names", data / "coco.names")
    return root


@needs_case
def test_detect_prints_darknets_lines_and_draws(yolo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(yolo / "data"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["detect", yolo / "net.cfg", yolo / "net.weights", yolo / "dog.png"], capsys)
    assert code == 0
    assert out.splitlines() == (CASE / "darknet_stdout.txt").read_text().splitlines()
    assert err.startswith(f"{yolo / 'dog.png'}: Predicted in ") and err.rstrip().endswith(" seconds.")
    from PIL import Image
    pic = np.asarray(Image.open(tmp_path / "predictions.png").convert("RGB"))
    assert pic.shape == (576, 768, 3)
    # darknet's first printed box ("book", 3 px wide, colour (0.4375, 1, 0)) is drawn where it drew it
    rec = json.loads((CASE / "detections.json").read_text())["printed"][0]
    assert (rec["left"], rec["top"], rec["right"], rec["bot"], rec["thickness"]) == (490, 210, 597, 337, 3)
    assert pic[300, 490].tolist() == [int(255 * np.float32(v)) for v in rec["rgb"]] == pic[300, 492].tolist()


@needs_case
def test_detect_json_and_out_dir(yolo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(tmp_path / "nothing"))            # no coco.names: indices
    code, out, err = run(["detect", yolo / "net.cfg", yolo / "net.weights", yolo / "dog.png", yolo / "dog.png",
                          "--json", "--out-dir", tmp_path / "pics", "--names", DARKNET / "coco.names", "--exact"], capsys)
    assert code == 0 and err == ""
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["image"], first["width"], first["height"]) == (str(yolo / "dog.png"), 768, 576)
    assert first["picture"] == str(tmp_path / "pics" / "dog.png")
    assert second["picture"] == str(tmp_path / "pics" / "dog_2.png")
    assert (tmp_path / "pics" / "dog.png").is_file() and (tmp_path / "pics" / "dog_2.png").is_file()
    lines = (CASE / "darknet_stdout.txt").read_text().splitlines()
    dets = first["detections"]
    assert [f"{d['name']}: {float(np.float32(d['prob']) * np.float32(100)):.0f}%" for d in dets] == lines
    assert dets[0] == {"class": 73, "name": "book", "prob": pytest.approx(0.579526246, abs=1e-9),
                       "box": {k: pytest.approx(v, abs=2e-7) for k, v in
                               {"x": 0.708704352, "y": 0.475687057, "w": 0.139766648, "h": 0.222143292}.items()},
                       "left": 490, "top": 210, "right": 597, "bottom": 337}
    assert first["detections"] == second["detections"]


@needs_case
def test_detect_without_label_file_warns_and_prints_indices(yolo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(tmp_path))
    code, out, err = run(["detect", yolo / "net.cfg", yolo / "net.weights", yolo / "dog.png", "--out",
                          tmp_path / "p.jpg", "--thresh", "0.6", "--nms", "0"], capsys)
    assert code == 0 and "darknetpy: warning: coco.names not found (run `darknetpy fetch coco.names`" in err
    assert out.splitlines()[0].split(":")[0].isdigit() and (tmp_path / "p.jpg").is_file()


@needs_case
def test_a_bad_image_is_one_error_and_the_batch_goes_on(yolo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(yolo / "data"))
    bad = write(tmp_path, "bad.jpg", "not an image")
    thin = tmp_path / "thin.png"
    from PIL import Image
    Image.fromarray(np.zeros((1, 600, 3), np.uint8)).save(thin)
    code, out, err = run(["detect", yolo / "net.cfg", yolo / "net.weights", bad, yolo / "dog.png", thin, "--json",
                          "--out-dir", tmp_path / "pics"], capsys)
    assert code == 5                                          # ImageError, the first one's
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [str(bad), str(yolo / "dog.png"), str(thin)]
    assert records[0]["exit_code"] == 5 and "error" in records[2] and "detections" in records[1]
    assert err.count("darknetpy: error: ") == 2 and f"darknetpy: error: {bad}:" in err


def test_usage_errors(tmp_path, capsys):
    cfg = write(tmp_path, "c.cfg", "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n")
    for argv, message in ((["--thresh", "nan"], "must be a finite number"),
                          (["--out", "x.png", "--out-dir", "d"], "not allowed with argument")):
        with pytest.raises(SystemExit) as e:
            main(["detect", str(cfg), "w", "a.jpg", *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
    from darknetpy.network import load
    load(cfg).save_weights(tmp_path / "c.weights")
    code, _, err = run(["detect", cfg, tmp_path / "c.weights", "a.jpg"], capsys)
    assert code == 7 and "no [region], [yolo] or [detection] layer" in err


@needs_case
def test_out_with_several_images_is_refused(yolo, capsys):
    code, _, err = run(["detect", yolo / "net.cfg", yolo / "net.weights", "a.png", "b.png", "--out", "x.png"], capsys)
    assert code == 1 and "--out names one picture but there are 2 images: use --out-dir" in err
