"""``board-run --mode io`` on a detector (issue #14 item 8), against the board emulator over a real
pseudo-terminal. The emulated board runs the int8 model darknetpy exported: its outputs are darknetpy's int8
engine's head tensors computed from the exact bytes it received (``ModelSpec.output_data``), as the NPU computes
the same integers. board-run must decode them into darknet's lines, and with ``--int8-graph`` find them
identical to its own int8 engine's, whether the board keeps darknetpy's output names (int8 outputs) or renames
them and returns float32 channel-last tensors (``stedgeai --output-data-type float32 --outputs-ch-position
chlast``)."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest

if not hasattr(os, "openpty"):
    pytest.skip("no pseudo-terminals on this platform", allow_module_level=True)

from conftest import DARKNET, needs_shared  # noqa: E402
from darknetpy.board import link  # noqa: E402
from darknetpy.board.emulator import BoardEmulator, ModelSpec, TensorSpec  # noqa: E402

NAME = "det_yolov3_tiny_dog"           # two [yolo] heads, route, upsample, maxpool 2/1: 160x160
pytestmark = needs_shared


@pytest.fixture(autouse=True)
def _short_settle(monkeypatch):
    monkeypatch.setattr(link, "BANNER_SETTLE", 0.02)


@pytest.fixture(scope="module")
def detector(det_case, tmp_path_factory):
    """The case's network quantised, its int8 graph saved and its QDQ model exported."""
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize

    net, x, rec, size = det_case(NAME)
    qnet = quantize(net, [x, np.ascontiguousarray(x[:, :, ::-1])])
    root = tmp_path_factory.mktemp("board_det")
    graph, model = root / "yolov3_tiny_int8.npz", root / "yolov3_tiny_int8.onnx"
    qnet.save(graph)
    export_qdq(qnet.qgraph, model)
    return net, qnet, graph, model


def _board(qnet, *, renamed: bool):
    """An emulated board running ``qnet``'s exported model: int8 outputs named like the export, or (``renamed``)
    float32 channel-last outputs named output_1, output_2."""
    from darknetpy.boxes import heads_of

    heads = heads_of(qnet.graph)
    qps = [qnet.qgraph.tensor_qparams(h.index - 1) for h in heads]
    cache: dict = {}

    def outputs(in0: bytes):
        if in0 not in cache:
            x = np.frombuffer(in0, np.uint8).reshape(160, 160, 3).transpose(2, 0, 1).astype(np.float32) / 255
            raw = qnet.head_inputs(np.ascontiguousarray(x), raw=True)
            if renamed:
                cache[in0] = [qp.dequantize(r).transpose(1, 2, 0).tobytes() for qp, r in zip(qps, raw)]
            else:
                cache[in0] = [r.tobytes() for r in raw]
        return cache[in0]

    outputs(bytes(160 * 160 * 3))                # compile the int8 kernels before the client waits on the board
    if renamed:
        specs = [TensorSpec((1, h.h, h.w, h.c), "float32", name=f"output_{k + 1}") for k, h in enumerate(heads)]
    else:
        specs = [TensorSpec((1, h.c, h.h, h.w), "int8", float(qp.scale), int(qp.zero_point), name=f"l{h.index}_yolo")
                 for h, qp in zip(heads, qps)]
    model = ModelSpec(name="yolov3_tiny_int8", cycles=[2_000_000],
                      inputs=[TensorSpec((1, 160, 160, 3), "uint8", 1 / 255, 0)], outputs=specs, output_data=outputs)
    board = BoardEmulator(None, transport="pty", models=[model]).start()
    assert board.wait_idle()
    return board


def _engine(qnet, picture, thresh=0.5):
    """The host's int8 detection on the image as the board receives it: letterboxed, then uint8 (round(x*255))."""
    from darknetpy.boxes import decode
    from darknetpy.image import letterbox, load_image

    img = load_image(picture)
    u8 = np.round(np.clip(letterbox(img, 160, 160), 0, 1) * 255).astype(np.float32)
    return decode(qnet.graph, qnet.head_inputs(u8 / np.float32(255)), (img.shape[2], img.shape[1]), thresh)


def _run(capsys, *args):
    from darknetpy import cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["board-run", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("renamed", [False, True], ids=["int8-named", "float-chlast-renamed"])
def test_board_boxes_are_the_int8_engines(detector, capsys, renamed):
    net, qnet, graph, model = detector
    board = _board(qnet, renamed=renamed)
    try:
        picture = DARKNET / "dog.jpg"
        code, out, err = _run(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--input", picture,
                              "--timeout", "10", "--int8-graph", graph, "--json")
        assert code == 0, err
        d = json.loads(out)["detections"]
        expected = _engine(qnet, picture)
        assert d["lines"] == [x.line for x in expected] and d["lines"]
        assert [h["board_output"] for h in d["heads"]] == (["output_1", "output_2"] if renamed
                                                            else ["l16_yolo", "l23_yolo"])
        c = d["int8_comparison"]
        assert c["boxes_identical"] and c["board_lines"] == c["int8_lines"] == len(expected)
        assert [h["identical"] for h in c["heads"]] == [1.0, 1.0] and c["missed"] == c["extra"] == 0
        assert d["detections"][0]["box"] == expected[0].as_json()["box"]
        # the text report: darknet's lines after the timing, then the verdict
        code, out, err = _run(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--input", picture,
                              "--timeout", "10", "--onnx", model, "--int8-graph", graph)
        assert code == 0, err
        text = out.split("\nboxes    ", 1)[1].splitlines()
        assert text[0].startswith("image ") and "thresh 0.5, nms 0.45" in text[0]
        assert text[1:-1] == [x.line for x in expected]
        assert re.match(rf"int8     boxes identical \({len(expected)} lines board, {len(expected)} darknetpy's int8 "
                        r"engine\)  l16_yolo identical 100\.00 %  l23_yolo identical 100\.00 %$", text[-1]), text[-1]
    finally:
        board.close()
    assert not board.errors


def test_the_exported_model_alone_says_how_to_decode(detector, capsys):
    """--onnx MODEL.onnx: the heads description from the model's metadata; no reference, no comparison."""
    net, qnet, graph, model = detector
    board = _board(qnet, renamed=True)
    try:
        code, out, err = _run(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--input",
                              DARKNET / "dog.jpg", "--onnx", model, "--thresh", "0.3", "--json")
        assert code == 0, err
        d = json.loads(out)["detections"]
        assert "int8_comparison" not in d and d["thresh"] == 0.3
        assert d["lines"] == [x.line for x in _engine(qnet, DARKNET / "dog.jpg", 0.3)]
    finally:
        board.close()


def test_detector_errors_are_one_line(detector, capsys, tmp_path):
    net, qnet, graph, model = detector
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    code, out, err = _run(capsys, "--port", "loop://", "--mode", "io", "--onnx", tmp_path / "junk.onnx")
    assert code == 8 and "junk.onnx: not a readable ONNX model" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(capsys, "--port", "loop://", "--thresh", "0.3")
    assert code != 0 and "--thresh/--nms are for detectors" in err
    # a board whose outputs do not fit the heads: named, before any box is printed
    board = BoardEmulator(None, transport="pty", models=[ModelSpec(
        name="wrong", inputs=[TensorSpec((1, 160, 160, 3), "uint8", 1 / 255, 0)],
        outputs=[TensorSpec((1, 10), "float32")])]).start()
    try:
        assert board.wait_idle()
        code, out, err = _run(capsys, "--port", board.port, "--mode", "io", "--runs", "1", "--onnx", model)
        assert code == 7 and "do not fit the detector's heads: no output of 6375 values for layer 16 [yolo]" in err
        assert "output_1 (1, 10)" in err and "(is it the model on the board?)" in err
    finally:
        board.close()
