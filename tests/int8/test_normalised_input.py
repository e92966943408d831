"""A cfg with [net] mean/std through quantize, export and board-run: the int8 input, the ONNX graphs and the
board's input bytes all see the normalised image, exactly as darknetpy computes it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write

import darknetpy
from darknetpy.errors import QuantizeError
from darknetpy.image import from_u8, letterbox, normalize
from darknetpy.int8.qgraph import INPUT_SCALE, input_qparams, input_range

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CFG_TEXT = ("[net]\nheight=24\nwidth=24\nchannels=3\nmean=0.485,0.456,0.406\nstd=0.229,0.224,0.225\n"
            "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
            "[maxpool]\nsize=2\nstride=2\n"
            "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=relu\n"
            "[convolutional]\nfilters=10\nsize=1\nactivation=linear\n[avgpool]\n[softmax]\n")


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("norm")
    net = darknetpy.load(write(d, "n.cfg", CFG_TEXT))
    return net, darknetpy.quantize(net, 4)


def _session(model, outputs=()):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in outputs:                  # expose an intermediate tensor as an extra output
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_input_qparams_cover_the_normalised_range(nets):
    net, qnet = nets
    lo, hi = input_range(net.graph.net)
    assert lo == pytest.approx(-0.485 / 0.229, rel=1e-6) and hi == pytest.approx((1 - 0.406) / 0.225, rel=1e-6)
    qp = qnet.qgraph.input
    assert qp == input_qparams(net.graph.net) and qp.scale != INPUT_SCALE
    # black and white pixels of every channel stay inside the int8 range without clipping more than rounding
    for v in (0.0, 1.0):
        x = normalize(np.full((3, 1, 1), v, np.float32), MEAN, STD).ravel()
        q = np.round(x / qp.scale) + qp.zero_point
        assert q.min() >= -128.5 and q.max() <= 127.5


def test_calibration_inputs_are_normalised_images(nets):
    """Random calibration draws [0, 1] images and normalises them; arrays outside the normalised range
    (e.g. un-normalised network inputs given as [0, 255]) are refused, saying the range."""
    net, _ = nets
    with pytest.raises(QuantizeError, match=r"in \[-2\.118, 2\.64\]"):
        darknetpy.quantize(net, [np.full(net.input_shape, 3.0, np.float32)])


def test_qgraph_save_load_keeps_the_normalisation(nets, tmp_path):
    _, qnet = nets
    qnet.save(tmp_path / "q.npz")
    again = darknetpy.load_quantized(tmp_path / "q.npz")
    assert again.graph.net.mean == MEAN and again.graph.net.std == STD
    assert again.qgraph.input == qnet.qgraph.input


@pytest.mark.parametrize("layout", ["nchw-float", "nhwc-uint8"])
def test_qdq_input_quantisation_is_the_engines(nets, layout, tmp_path):
    """onnxruntime's QuantizeLinear of the model's own Sub/Div output equals the int8 engine's quantised
    input bit for bit, and the outputs agree; the model passes check-n6 with Sub/Div on the MCU edge."""
    from darknetpy.export.n6check import check_n6, input_edge

    net, qnet = nets
    model = darknetpy.to_onnx(qnet, tmp_path / "q.onnx", input_layout=layout)
    names = [n.name for n in model.graph.node]
    assert names.index("input_mean_Sub") < names.index("input_std_Div") < names.index("input_QuantizeLinear")
    assert check_n6(model) == []
    assert {"input_mean_Sub", "input_std_Div"} <= set(input_edge(model))
    u8 = np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    img = from_u8(u8)                                     # (3, 24, 24): u8 / 255 like load_image
    feed = u8[None] if layout == "nhwc-uint8" else img[None]
    sess = _session(model, ["input_quantized"])
    out, q_in = sess.run(["output", "input_quantized"], {"input": feed})
    x = normalize(img, MEAN, STD)                       # the network input (img is already 24x24)
    plan = qnet.plan()
    yq = qnet.predict(x)
    np.testing.assert_array_equal(plan.input.reshape(q_in.shape), q_in)
    np.testing.assert_allclose(out.ravel(), yq.ravel(), atol=1.01 / 255)


def test_float_export_normalises_in_the_graph(nets, tmp_path):
    net, _ = nets
    model = darknetpy.to_onnx(net, tmp_path / "f.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert "(x - mean) / std in the graph" in meta["preprocessing"]
    img = letterbox(np.random.default_rng(6).random((3, 30, 20), dtype=np.float32), 24, 24)
    y, xn = _session(model, ["input_normalized"]).run(["output", "input_normalized"], {"input": img[None]})
    np.testing.assert_array_equal(xn[0], normalize(img, MEAN, STD))    # the same bits as darknetpy's
    np.testing.assert_allclose(y.ravel(), net.predict(normalize(img, MEAN, STD)).ravel(), rtol=1e-5, atol=1e-6)


def test_board_input_bytes(nets):
    """board-run --input: a 1/255-quantised descriptor gets the image (darknetpy's models normalise inside);
    a descriptor quantised otherwise gets the normalised image quantised with its parameters when the cfg's
    mean/std are known, and is refused naming --cfg when not."""
    from darknetpy.board.results import TensorInfo
    from darknetpy.cli.board_run import image_to_tensor
    from darknetpy.errors import BoardRejected

    net, qnet = nets
    x = letterbox(np.random.default_rng(7).random((3, 24, 24), dtype=np.float32), 24, 24)
    def info(dtype, scale, zero_point):
        return TensorInfo(name="in", shape=(1, 24, 24, 3), dtype=dtype, format=0, size=24 * 24 * 3, scale=scale,
                          zero_point=zero_point, flags=0)

    plain = info("uint8", 1 / 255, 0)
    assert image_to_tensor(x, plain, (MEAN, STD)) == image_to_tensor(x, plain)
    qp = qnet.qgraph.input
    normed = info("int8", qp.scale, qp.zero_point)
    got = np.frombuffer(image_to_tensor(x, normed, (MEAN, STD)), np.int8).reshape(24, 24, 3).transpose(2, 0, 1)
    qnet.predict(normalize(x, MEAN, STD))
    np.testing.assert_array_equal(got, qnet.plan().input.reshape(3, 24, 24))
    with pytest.raises(BoardRejected, match="--cfg"):
        image_to_tensor(x, normed)


def test_export_cli_says_where_the_normalisation_runs(nets, tmp_path, capsys):
    from darknetpy.cli import main

    net, _ = nets
    cfg = write(tmp_path, "n.cfg", CFG_TEXT)
    net.save_weights(tmp_path / "n.weights")
    assert main(["export", str(cfg), str(tmp_path / "n.weights"), "--int8", "--calib-random", "2",
                 "--onnx", str(tmp_path / "n.onnx")]) == 0
    out = capsys.readouterr().out
    assert "passes check-n6" in out and "run on the MCU before the NPU: input_mean_Sub, input_std_Div" in out
    # Sub/Div precede the input's QuantizeLinear: stedgeai cannot turn the input into uint8, so no such flag
    assert "--input-data-type uint8" not in out and "--input-layout nhwc-uint8" in out
