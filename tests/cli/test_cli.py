"""The darknetpy command: outputs users see, and every error path's message and exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import CFG, CONFORMANCE, DARKNET, needs_shared, write
from darknetpy.cli import main
from darknetpy.errors import (CfgError, FetchError, ImageError, UnsupportedError, WeightsError)

SMALL_CFG = """[net]
height=16
width=16
channels=3
[convolutional]
filters=10
size=3
stride=2
pad=1
activation=leaky
[avgpool]
[softmax]
"""


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def small(tmp_path):
    """A 10-class network with random weights, saved as cfg + weights."""
    from darknetpy.network import load
    cfg = write(tmp_path, "small.cfg", SMALL_CFG)
    net = load(cfg)
    net.save_weights(tmp_path / "small.weights")
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    return cfg, tmp_path / "small.weights", tmp_path / "a.png"


def expected_lines(path):
    return [(float(p), n) for p, n in re.findall(r"^\s*([\d.]+)%: (.*)$", path.read_text(), re.M)]


@needs_shared
@pytest.mark.parametrize("case,prep", [("tiny_real_dog", "letterbox"), ("tiny_real_dog_resize_min", "resize_min")])
def test_classify_dog_like_darknet(case, prep, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(DARKNET))
    code, out, err = run(["classify", CFG / "tiny.cfg", DARKNET / "tiny.weights", DARKNET / "dog.jpg",
                          "--preprocess", prep], capsys)
    assert code == 0
    got = [(float(p), n) for p, n in re.findall(r"^\s*([\d.]+)%: (.*)$", out, re.M)]
    want = expected_lines(CONFORMANCE / case / "darknet_stdout.txt")
    assert [n for _, n in got] == [n for _, n in want]                   # same classes, same order
    assert all(abs(a - b) <= 0.5 for (a, _), (b, _) in zip(got, want))  # JPEG decoders differ slightly
    assert re.search(r"dog\.jpg: Predicted in \d+\.\d{6} seconds\.", err)
    assert all(re.fullmatch(r"[ \d]\d\.\d\d%: .+", line) for line in out.splitlines())


def test_classify_json_top_and_index_labels(small, capsys):
    cfg, weights, img = small
    code, out, _ = run(["classify", cfg, weights, img, img, "--json", "--top", "3"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"image", "seconds", "top"}
    top = rows[0]["top"]
    assert [set(t) for t in top] == [{"index", "name", "prob"}] * 3
    assert top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"] and top[0]["name"] == str(top[0]["index"])


def test_classify_names_file(small, capsys, tmp_path):
    cfg, weights, img = small
    names = write(tmp_path, "names.txt", "\n".join(f"class{i}" for i in range(12)))
    code, out, _ = run(["classify", cfg, weights, img, "--names", names, "--top", "2"], capsys)
    assert code == 0 and all(re.fullmatch(r"[ \d]\d\.\d\d%: class\d+", line) for line in out.splitlines())
    short = write(tmp_path, "short.txt", "a\nb\n")
    code, _, err = run(["classify", cfg, weights, img, "--names", short], capsys)
    assert code == 1 and "has 2 names but the network has 10 outputs" in err


def test_classify_bad_inputs(small, capsys, tmp_path):
    cfg, weights, img = small
    code, _, err = run(["classify", tmp_path / "nope.cfg", weights, img], capsys)
    assert code == CfgError.exit_code and "cannot read cfg file" in err
    bad = write(tmp_path, "bad.cfg", SMALL_CFG.replace("activation=leaky", "activation=swish"))
    code, _, err = run(["classify", bad, weights, img], capsys)
    assert code == 3 and re.search(r"bad\.cfg:10: layer 0 \[convolutional\]: unknown activation 'swish'", err)
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-8])
    code, _, err = run(["classify", cfg, short, img], capsys)
    assert code == WeightsError.exit_code and "too short" in err and "layer 0 [convolutional]" in err
    txt = write(tmp_path, "x.png", "hello")
    code, _, err = run(["classify", cfg, weights, txt], capsys)
    assert code == ImageError.exit_code and "not an image" in err
    code, _, err = run(["classify", cfg, weights, tmp_path / "missing.jpg"], capsys)
    assert code == ImageError.exit_code and "no such image file" in err


def test_resize_min_refused_for_fixed_size_networks(capsys, tmp_path, small):
    _, _, img = small
    cfg = write(tmp_path, "fc.cfg", "[net]\nheight=8\nwidth=8\nchannels=3\n[connected]\noutput=4\n[softmax]\n")
    from darknetpy.network import load
    load(cfg).save_weights(tmp_path / "fc.weights")
    code, _, err = run(["classify", cfg, tmp_path / "fc.weights", img, "--preprocess", "resize_min"], capsys)
    assert code == UnsupportedError.exit_code and "layer 0 [connected] has a fixed input size" in err


def test_summary(capsys):
    code, out, _ = run(["summary", CFG / "tiny.cfg"], capsys)
    assert code == 0
    assert "parameters: 1,046,488 floats" in out and "MACs: 491,524,096 (0.983 BFLOPs)" in out
    assert re.search(r"^\s+0 conv\s+16\s+3 x 3 / 1\s+224 x 224 x\s+3 ->\s+224 x 224 x\s+16\s+496\s+0\.043", out, re.M)
    code, out, _ = run(["summary", CFG / "dla46x_c.cfg", "--json"], capsys)
    d = json.loads(out)
    assert d["params"] == 1_079_320 and len(d["layers"]) == 77


def test_fetch_failure_exit_code(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DARKNETPY_MIRROR", str(tmp_path / "empty"))
    code, _, err = run(["fetch", "--dest", tmp_path / "out"], capsys)
    assert code == FetchError.exit_code and "mirror directory" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "a.cfg", "b.weights", "c.jpg", "--threads", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_real_process_exit_code_and_no_traceback(tmp_path):
    bad = write(tmp_path, "bad.cfg", "[net]\nheight=4\nwidth=4\nchannels=3\n[route]\nlayers=-2\n")
    p = subprocess.run([sys.executable, "-m", "darknetpy.cli", "summary", str(bad)], capture_output=True, text=True)
    assert p.returncode == 3
    assert p.stderr.startswith("darknetpy: error: ") and "bad.cfg:6: layer 0 [route]" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("argv", [
    ["export", "cfg/tiny.cfg", "--int8", "--calib-random", "0"],
    ["quantize", "cfg/tiny.cfg", "w.weights", "--calib-random", "0"],
    ["classify", "cfg/tiny.cfg", "w.weights", "x.jpg", "--threads", "0"],
    ["board-run", "--port", "loop://", "--runs", "0"],
])
def test_counts_below_one_are_command_line_errors(argv, capsys):
    """One positive-integer type for every command: 0 is an error (exit 2), never "none" or "default"."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


# -- fuzzing findings: numbers on the command line and in cfgs, Ctrl-C ------------------------------------------

@pytest.mark.parametrize("value", ["150", "nan", "inf", "-1", "50", "0", "x"])
def test_quantize_percentile_out_of_range_is_a_command_line_error(value, capsys):
    # choose_range clips to [percentile(100 - p), percentile(p)]: numpy raised ValueError outside 0..100,
    # and p <= 50 inverts the range
    with pytest.raises(SystemExit) as e:
        main(["quantize", "cfg/tiny.cfg", "w.weights", "--calib-random", "2", "--percentile", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --percentile:" in err and "Traceback" not in err


def test_quantize_parser_lists_the_int8_choices_without_importing_numba():
    from darknetpy.cli import quantize
    from darknetpy.int8.calibrate import CALIB_METHODS
    from darknetpy.int8.qgraph import SOFTMAX_MODES
    assert quantize.CALIB_METHODS == CALIB_METHODS and quantize.SOFTMAX_MODES == SOFTMAX_MODES
    code = "import sys; from darknetpy.cli.main import build_parser; build_parser(); print('numba' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "False", p.stderr


@pytest.mark.parametrize("value", ["1" * 5000, "9" * 400, "４"])
def test_summary_of_absurd_numbers_is_one_cfg_error(value, capsys, tmp_path):
    cfg = write(tmp_path, "n.cfg", SMALL_CFG.replace("filters=10", f"filters={value}"))
    for extra in ([], ["--json"]):
        code, _, err = run(["summary", cfg, *extra], capsys)
        assert code == CfgError.exit_code
        assert err.startswith(f"darknetpy: error: {cfg}:6: layer 0 [convolutional]: key 'filters': ")
        assert err.count("\n") == 1


def test_ctrl_c_while_parsing_is_exit_130(capsys, monkeypatch):
    # the parser is built inside main()'s handler: a Ctrl-C there is one line too
    main_module = sys.modules["darknetpy.cli.main"]      # (darknetpy.cli.main is also the function)

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(main_module, "build_parser", interrupted)
    monkeypatch.setattr(main_module, "_said_interrupted", False)
    code, _, err = run(["summary", "x.cfg"], capsys)
    assert code == 130 and err == "darknetpy: interrupted\n"


def test_classify_batch_goes_on_after_a_bad_image(small, capsys, tmp_path):
    from PIL import Image
    cfg, weights, img = small
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 1000, 3), np.uint8)).save(thin)        # letterboxes to 16x0
    corrupt = write(tmp_path, "corrupt.jpg", "not a jpeg")
    missing = tmp_path / "missing.jpg"
    code, out, err = run(["classify", cfg, weights, img, thin, corrupt, missing, img, "--top", "2"], capsys)
    assert code == ImageError.exit_code                                 # the first failure's class
    errors = [ln for ln in err.splitlines() if ln.startswith("darknetpy: error: ")]
    assert len(errors) == 3
    assert errors[0].startswith(f"darknetpy: error: {thin}: a 1000x1 image is too thin to letterbox into 16x16")
    assert errors[1].startswith(f"darknetpy: error: {corrupt}: not an image")
    assert errors[2] == f"darknetpy: error: {missing}: no such image file"
    assert err.count("Predicted in") == 2 and len(out.splitlines()) == 4  # both good images classified
    code, out, err = run(["classify", cfg, weights, missing, img, "--json"], capsys)
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert code == ImageError.exit_code and err.count("darknetpy: error: ") == 1
    assert lines[0] == {"image": str(missing), "error": f"{missing}: no such image file", "exit_code": 5}
    assert lines[1]["image"] == str(img) and len(lines[1]["top"]) == 5


def test_classify_top_must_be_positive(small, capsys):
    cfg, weights, img = small
    with pytest.raises(SystemExit) as e:
        main(["classify", str(cfg), str(weights), str(img), "--top", "-3"])     # printed all but 3 classes
    assert e.value.code == 2


def test_classify_names_that_are_not_a_file(small, capsys):
    cfg, weights, img = small
    code, _, err = run(["classify", cfg, weights, img, "--names", "/dev/zero"], capsys)
    assert code == 1 and err == ("darknetpy: error: /dev/zero: cannot read label names: it is a character device, "
                                 "not a regular file\n")
