"""``board-run --mode io --inputs DIR | FILE.npy`` (cli/board_io.py) and ``--mode per-layer --plot``, against
the board emulator: every input sent, ST's metrics against darknetpy's int8 engine and the float network, the
JSON lines written as results come, and a fault mid-way that loses nothing done so far."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from darknetpy.board import link
from darknetpy.board.emulator import BoardEmulator, EpochSpec, Fault, ModelSpec, TensorSpec
from darknetpy.metrics import Metrics
from test_board_run import SMALL_CFG, run_cli

RUN = 11
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _short_settle(monkeypatch):
    monkeypatch.setattr(link, "BANNER_SETTLE", 0.02)


@pytest.fixture
def make_board():
    """make_board(**BoardConfig overrides) -> a started emulator, idle (as in test_board_run.py)."""
    boards = []

    def make(**overrides):
        board = BoardEmulator(None, transport="pty", **overrides).start()
        boards.append(board)
        assert board.wait_idle()
        return board

    yield make
    for board in boards:
        board.close()
    assert not [e for b in boards for e in b.errors], [e for b in boards for e in b.errors]


@pytest.fixture
def setup(tmp_path):
    """A 16x16 10-class network (cfg, weights), its int8 graph calibrated on calib/, five input images of other
    sizes in inputs/ (one in a sub-folder), and an emulated board model computing that int8 graph."""
    from PIL import Image

    import darknetpy
    from darknetpy.int8 import quantize
    from darknetpy.weights import save_weights

    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    net = darknetpy.load(cfg)
    weights = tmp_path / "small.weights"
    save_weights(weights, net.graph, net.weights)
    rng = np.random.default_rng(11)
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8)).save(calib / f"c{k}.png")
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    paths = []
    for k in range(5):
        p = (inputs / "sub" if k == 4 else inputs) / f"in{k}.png"
        Image.fromarray(rng.integers(0, 256, (14 + 3 * k, 18, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    qnet = quantize(net, str(calib))
    qp = qnet.qgraph[qnet.qgraph.output_index].out

    def outputs(in0: bytes):
        x = np.frombuffer(in0, np.uint8).reshape(16, 16, 3).transpose(2, 0, 1).astype(np.float32) / 255
        return [np.asarray(qnet.predict(np.ascontiguousarray(x), raw=True), np.int8).tobytes()]

    outputs(bytes(16 * 16 * 3))                  # compile the int8 kernels before the client waits on the board
    net.predict(np.zeros((3, 16, 16), np.float32))

    def model(**kw):
        return ModelSpec(name="small_int8", cycles=[1_000_000, 1_200_000],
                         inputs=[TensorSpec((1, 16, 16, 3), "uint8", 1 / 255, 0)],
                         outputs=[TensorSpec((1, 10), "int8", float(qp.scale), int(qp.zero_point))],
                         output_data=outputs, **kw)

    ref = ["--cfg", cfg, "--weights", weights, "--calib", calib]
    return dict(net=net, qnet=qnet, qp=qp, paths=sorted(paths), inputs=inputs, ref=ref, model=model)


def expected_metrics(setup, pictures):
    """Board (= the int8 graph) against float and int8, computed here from the pictures the board got."""
    from darknetpy.image import letterbox

    net, qnet, qp = setup["net"], setup["qnet"], setup["qp"]
    vs_float, vs_int8, sent = Metrics(classifier=True), Metrics(classifier=True), []
    for picture in pictures:
        x = picture if picture.shape[1:] == (16, 16) else letterbox(picture, 16, 16)
        u8 = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
        sent.append(u8.transpose(1, 2, 0).tobytes())
        board = qp.dequantize(qnet.predict(u8.astype(np.float32) / 255, raw=True)).astype(np.float64)
        vs_float.add(board, net.predict(x))
        vs_int8.add(board, board)
    return vs_float.result(), vs_int8.result(), sent


def check_close(got: dict, want: dict):
    for name in ("acc", "rmse", "mae", "l2r", "mean", "std", "nse", "cos"):
        if want[name] is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9), name
    assert got["samples"] == want["samples"]


def test_directory_of_images_json_and_json_lines(make_board, capsys, tmp_path, setup):
    from darknetpy.image import load_image

    board = make_board(models=[setup["model"]()])
    lines = tmp_path / "io.jsonl"
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", setup["inputs"],
                                "--timeout", "5", "--json", "--json-out", lines, *setup["ref"])
    assert code == 0, err
    doc = json.loads(out)
    vs_float, vs_int8, sent = expected_metrics(setup, [load_image(p) for p in setup["paths"]])
    assert [r.inputs for r in board.runs] == [[b] for b in sent]            # every image, letterboxed, in order
    assert [r.opt for r in board.runs] == [1, 0, 0, 0, 0]
    assert doc["inputs"] == 5 and doc["done"] == 5 and doc["failed"] == [] and doc["error"] is None
    m = doc["metrics"]
    check_close(m["board_vs_int8"], vs_int8)                                 # the board is the int8 graph: exact
    assert m["board_vs_int8"]["rmse"] == 0.0 and m["board_vs_int8"]["acc"] == 1.0
    assert m["int8_identical"] == 1.0 and m["int8_max_steps"] == 0
    check_close(m["board_vs_float"], vs_float)
    check_close(m["int8_vs_float"], vs_float)
    assert [r["input"] for r in doc["per_input"]] == [str(p) for p in setup["paths"]]
    assert [r["cycles"] for r in doc["per_input"]] == [1_000_000, 1_200_000] * 2 + [1_000_000]
    assert doc["stats"]["max_ms"] == 1.5 and doc["stats"]["min_ms"] == 1.25
    for rec in doc["per_input"]:
        assert rec["int8"]["rmse"] == 0.0 and rec["identical"] == 1.0
        assert rec["top1_int8"] == rec["top5_board"][0] and rec["float"]["samples"] == 1
    # the JSON lines: the session, one line per input (as in --json), the summary
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["type"] for r in records] == ["session"] + ["input"] * 5 + ["summary"]
    assert records[0]["inputs"] == 5 and records[0]["network"]["name"] == "small_int8"
    assert [{k: v for k, v in r.items() if k != "type"} for r in records[1:6]] == doc["per_input"]
    assert records[-1]["metrics"] == doc["metrics"]
    assert "board io" not in err                                             # no progress bar off a terminal


def test_text_report(make_board, capsys, setup):
    board = make_board(models=[setup["model"]()])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", setup["inputs"],
                                "--timeout", "5", *setup["ref"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[3] == f"inputs   5 from {setup['inputs']}"
    assert sum(ln.startswith("input ") for ln in lines) == 5
    assert "done     5 of 5 input(s)" in lines
    assert any(ln.startswith("board against darknetpy int8:  acc 100.00 %  rmse 0.000e+00") for ln in lines), out
    assert any(ln.startswith("board against float:") for ln in lines)
    assert "int8 values identical 100.00 % (max 0 steps)" in lines


def test_npy_batch(make_board, capsys, tmp_path, setup):
    rng = np.random.default_rng(2)
    batch = rng.random((3, 3, 16, 16), dtype=np.float32)
    batch[1, 0, 0, 0] = 1.0
    path = tmp_path / "batch.npy"
    np.save(path, batch)
    board = make_board(models=[setup["model"]()])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", path, "--timeout", "5",
                                "--json", "--int8-graph", _save_graph(setup, tmp_path))
    assert code == 0, err
    doc = json.loads(out)
    vs_float, vs_int8, sent = expected_metrics(setup, list(batch))
    assert [r.inputs for r in board.runs] == [[b] for b in sent]
    assert [r["input"] for r in doc["per_input"]] == ["batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    check_close(doc["metrics"]["board_vs_int8"], vs_int8)
    assert doc["metrics"]["board_vs_float"] is None                     # --int8-graph alone: no float network
    # uint8 arrays of another size: /255 and letterboxed
    small = rng.integers(0, 256, (2, 3, 10, 12), dtype=np.uint8)
    np.save(path, small)
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", path, "--timeout", "5",
                                "--json")
    assert code == 0, err
    _, _, sent = expected_metrics(setup, [a.astype(np.float32) / np.float32(255) for a in small])
    assert [r.inputs for r in board.runs[3:]] == [[b] for b in sent]
    assert json.loads(out)["metrics"]["board_vs_int8"] is None            # no reference: outputs only


def _save_graph(setup, tmp_path):
    path = tmp_path / "small_int8.npz"
    setup["qnet"].save(path)
    return path


@pytest.mark.parametrize("json_mode", [True, False])
def test_fault_mid_way_keeps_what_was_done(make_board, capsys, tmp_path, setup, json_mode):
    """The board reboots on the third run: two inputs done, reported, written; exit code 13 (BoardReset)."""
    board = make_board(models=[setup["model"]()], faults=[Fault("reset", cmd=RUN, occurrence=3)])
    lines = tmp_path / "io.jsonl"
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", setup["inputs"],
                                "--timeout", "5", "--json-out", lines, *setup["ref"],
                                *(["--json"] if json_mode else []))
    assert code == 13, err
    errors = [ln for ln in err.splitlines() if ln.startswith("darknetpy: error: ")]
    assert len(errors) == 1 and "rebooted" in errors[0]
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["type"] for r in records] == ["session", "input", "input", "error", "summary"]
    assert records[3]["exit_code"] == 13 and records[3]["after"] == 2 and "rebooted" in records[3]["message"]
    assert records[4]["done"] == 2 and records[4]["metrics"]["board_vs_int8"]["samples"] == 2
    assert [r["input"] for r in records[1:3]] == [str(p) for p in setup["paths"][:2]]
    if json_mode:
        doc = json.loads(out)
        assert doc["done"] == 2 and len(doc["per_input"]) == 2 and doc["error"]["exit_code"] == 13
        assert doc["metrics"]["board_vs_int8"]["rmse"] == 0.0
    else:
        assert sum(ln.startswith("input ") for ln in out.splitlines()) == 2
        assert "done     2 of 5 input(s), stopped after 2 by the error below" in out


def test_unreadable_image_is_reported_and_the_run_goes_on(make_board, capsys, tmp_path, setup):
    bad = setup["inputs"] / "bad.png"
    bad.write_bytes(b"not a png")
    board = make_board(models=[setup["model"]()])
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", setup["inputs"],
                                "--timeout", "5", "--json", *setup["ref"])
    assert code == 5, err
    assert f"darknetpy: error: {bad}: not an image" in err
    doc = json.loads(out)
    assert doc["done"] == 5 and doc["failed"] == [str(bad)] and len(board.runs) == 5
    (rec,) = [r for r in doc["per_input"] if "error" in r]
    assert rec["exit_code"] == 5 and rec["input"] == str(bad)


def test_bad_sources_and_options_fail_before_the_board(make_board, capsys, tmp_path):
    board = make_board()
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "junk.npy").write_bytes(b"junk")
    np.save(tmp_path / "gray.npy", np.zeros((2, 1, 8, 8), np.float32))
    for source, fragment in ((tmp_path / "missing", "does not exist"), (empty, "no images found"),
                             (tmp_path / "junk.npy", "not a readable .npy array"),
                             (tmp_path / "gray.npy", "an array of shape (2, 1, 8, 8)")):
        code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "io", "--inputs", source)
        assert code == 5 and fragment in err, err
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--inputs", empty)
    assert code == 7 and "it needs --mode io" in err
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--json-out", tmp_path / "x.jsonl")
    assert code == 7 and "--json-out goes with --inputs" in err
    with pytest.raises(SystemExit) as e:                      # argparse: --inputs, --input and --const exclude
        run_cli(capsys, "--port", board.port, "--inputs", empty, "--input", "x.png")
    assert e.value.code == 2 and "not allowed with argument --inputs" in capsys.readouterr().err
    assert board.requests == []


# =============================================================================================
# --mode per-layer --plot
# =============================================================================================

def test_per_layer_plot_draws_the_epoch_table(make_board, capsys, tmp_path, monkeypatch):
    from matplotlib.colors import to_rgba

    from darknetpy import plots

    drawn = []
    original = plots.plot_epochs
    monkeypatch.setattr(plots, "plot_epochs", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    epochs = [EpochSpec("HW", 3_100_000), EpochSpec("SW", 400_000), EpochSpec("HW", 2_500_000, span=2),
              EpochSpec("SW", 30_000)]
    board = make_board(models=[ModelSpec(name="net", epochs=epochs, cycles=[6_100_000])])
    png = tmp_path / "epochs.png"
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "per-layer", "--runs", "2", "--json",
                                "--plot", png, "--timeout", "2")
    assert code == 0, err
    assert png.read_bytes()[:8] == PNG
    rows = json.loads(out)["epochs"]
    (fig,) = drawn
    (ax,) = fig.axes
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [r["ms"] for r in rows], rtol=1e-12)
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours == [to_rgba(plots.KIND_COLOURS[r["kind"]]) for r in rows]
    assert [t.get_text() for t in ax.get_xticklabels()] == [r["epoch"] for r in rows]
    npu = sum(r["percent"] for r in rows if r["kind"] == "HW")
    cpu = sum(r["percent"] for r in rows if r["kind"] == "SW")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"NPU (HW): {sum(r['ms'] for r in rows if r['kind'] == 'HW'):.3f} ms, {npu:.1f} %",
                      f"CPU (SW): {sum(r['ms'] for r in rows if r['kind'] == 'SW'):.3f} ms, {cpu:.1f} %"]


def test_plot_needs_per_layer_mode_and_matplotlib(make_board, capsys, tmp_path, monkeypatch):
    board = make_board()
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--plot", tmp_path / "x.png")
    assert code == 7 and "--plot draws the epochs of --mode per-layer" in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err, _ = run_cli(capsys, "--port", board.port, "--mode", "per-layer", "--plot", tmp_path / "x.png")
    assert code == 7 and "pip install 'darknetpy[plot]'" in err
    assert board.requests == [] and not (tmp_path / "x.png").exists()
