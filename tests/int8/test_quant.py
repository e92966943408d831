"""Quantisation parameters, the int8 graph (build, save/load), the error report on a network whose errors are
computed here by hand, and the ``darknetpy quantize`` command (including its errors and exit codes)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import CFG, write
from darknetpy.cli import main
from darknetpy.errors import QuantizeError, UnsupportedError
from darknetpy.graph import graph_from_text
from darknetpy.network import Network
from darknetpy.int8 import load_quantized, quantize
from darknetpy.int8.calibrate import build_qgraph
from darknetpy.int8.qgraph import QGraph, QParams, qparams_from_range
from darknetpy.int8.report import compare
from darknetpy.int8.weights import (PAIR_LIMIT, pair_layout, quad_layout, quantize_bias, quantize_weights,
                                    saturation_free)
from darknetpy.weights import Header, Weights, random_params

f32 = np.float32

SMALL = """[net]
height=8
width=8
channels=3

[convolutional]
filters=8
size=3
stride=1
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=1
stride=1
pad=1
activation=relu

[route]
layers=-1,-2

[convolutional]
filters=4
size=3
stride=2
pad=1
groups=2
activation=relu6

[avgpool]

[connected]
output=5
activation=linear

[softmax]
"""


def small_net(tmp_path=None) -> Network:
    g = graph_from_text(SMALL, "small.cfg")
    return Network(g, random_params(g, seed=4))


# -- parameters ------------------------------------------------------------------------------------------

def test_qparams_from_range():
    assert qparams_from_range(0.0, 6.0) == QParams(float(f32(6 / 255)), -128)       # relu6: zero point -128
    assert qparams_from_range(0.5, 2.0).zero_point == -128                           # the range includes 0
    assert qparams_from_range(-3.0, 0.0).zero_point == 127
    assert qparams_from_range(-1.0, 1.0) == QParams(float(f32(2 / 255)), 0)           # -0.5 rounds half to even
    assert qparams_from_range(0.0, 0.0) == QParams(1.0, 0)
    qp = QParams(float(f32(0.1)), 3)
    np.testing.assert_array_equal(qp.quantize(np.array([0.05, 0.15, -100, 100], f32)), [3, 5, -128, 127])
    with pytest.raises(QuantizeError, match="not finite"):
        qparams_from_range(0.0, float("nan"))


def test_weights_symmetric_and_pair_safe():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 6, 3, 3)).astype(f32)
    q, s = quantize_weights(w, pair_safe=False)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (16,)
    assert (np.abs(q).reshape(16, -1).max(1) == 127).all() and q.min() >= -127
    np.testing.assert_allclose(q * s[:, None, None, None], w, atol=float(s.max()) / 2 + 1e-7)
    assert not saturation_free(q)                       # plain max/127 scaling: some pairs can saturate
    q, s = quantize_weights(w)
    assert saturation_free(q) and q.min() >= -127 and q.max() <= 127
    flat = pair_layout(q.astype(np.int64))
    assert (np.maximum(flat[:, 0::2], 0) + np.maximum(flat[:, 1::2], 0)).max() <= PAIR_LIMIT
    # an odd channel count (the RGB layer) also keeps the engine's per-tap pairing safe
    w3 = rng.normal(0, 1, (8, 3, 3, 3)).astype(f32)
    q3, _ = quantize_weights(w3)
    assert saturation_free(q3, "flat") and saturation_free(q3, "quads")
    assert quad_layout(q3).shape == (8, 36)
    # an all-zero channel gets scale 1
    q0, s0 = quantize_weights(np.zeros((2, 4), f32))
    assert (q0 == 0).all() and (s0 == 1).all()


def test_bias_scale_is_input_times_weight_scale():
    ws = np.array([0.01, 0.02], f32)
    b, bs = quantize_bias(np.array([1.0, -1.0]), float(f32(1 / 255)), ws)
    assert bs.dtype == np.float32 and (bs == f32(1 / 255) * ws).all()
    assert b.dtype == np.int32 and b.tolist() == [int(np.rint(1 / bs[0])), int(np.rint(-1 / bs[1]))]
    with pytest.raises(QuantizeError, match="does not fit in int32"):
        quantize_bias(np.array([1e6]), 1e-6, np.array([1e-6], f32))


# -- the report on a network computed by hand ---------------------------------------------------------------

HAND = """[net]
height=2
width=2
channels=1

[convolutional]
filters=1
size=1
stride=1
pad=0
activation=linear
"""


def test_report_numbers_computed_by_hand():
    """One 1x1 convolution y = x + 0.1 on a 2x2 grey input with exact int8 values k/255: every step of the int8
    computation is written out below, and the report must give the same SQNR, cosine, max error and KL."""
    g = graph_from_text(HAND, "hand.cfg")
    w = Weights(Header(), [{"biases": np.array([0.1], f32), "weights": np.ones((1, 1, 1, 1), f32)}])
    net = Network(g, w)
    k = np.array([0, 51, 102, 255])
    x = (k.astype(f32) / f32(255)).reshape(1, 2, 2)
    qnet = quantize(net, [x])
    ql = qnet.qgraph[0]
    # input: scale 1/255, zero point -128 -> q = k - 128; weight 1.0 -> 127 at scale 1/127
    s_in, s_w = f32(1 / 255), f32(1 / 127)
    assert ql.weight.ravel().tolist() == [127] and ql.weight_scale.tolist() == [s_w]
    b_q = int(np.rint(0.1 / float(f32(s_in * s_w))))
    assert ql.bias.tolist() == [b_q]
    # output range [0, 1.1] (widened to include 0): scale 1.1/255, zero point -128
    y = x.reshape(-1) + f32(0.1)
    s_out = f32(float(y.max()) / 255)
    assert ql.out == QParams(float(s_out), -128)
    # onnxruntime's arithmetic: acc = 127*u + b (u = q + 128 = k), requantised by float32(s_in*s_w)/s_out
    acc = 127 * k + b_q
    q_out = np.clip(np.rint(acc.astype(f32) * f32(f32(s_in * s_w) / s_out)) - 128, -128, 127)
    y_hat = (q_out + 128).astype(f32) * s_out
    np.testing.assert_array_equal(qnet.predict(x).reshape(-1), y_hat)
    report = compare(net, qnet, [x])
    e = report.layers[0]
    yd, yh = y.astype(np.float64), y_hat.astype(np.float64)
    assert e.sqnr_db == pytest.approx(10 * np.log10((yd @ yd) / ((yd - yh) @ (yd - yh))), rel=1e-9)
    assert e.cosine == pytest.approx((yd @ yh) / np.sqrt((yd @ yd) * (yh @ yh)), rel=1e-12)
    assert e.max_error == pytest.approx(np.abs(yd - yh).max(), rel=1e-9)
    # no softmax: the output's probabilities are the softmax of the four values
    p, q = np.exp(yd - yd.max()), np.exp(yh - yh.max())
    p, q = p / p.sum(), q / q.sum()
    assert report.mean_kl == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    assert report.top1_agree == 1


# -- the int8 graph ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "auto"])
def test_methods_and_layers(method):
    net = small_net()
    qnet = quantize(net, 3, method=method)
    qg = qnet.qgraph
    assert qg[1].out == qg[0].out                               # maxpool shares its input's parameters
    assert qg[2].out.zero_point == -128                         # relu: the range starts at 0
    assert qg[4].out.zero_point == -128 and qg[4].out.hi <= 6 + 1e-5   # relu6
    assert qg[0].pre is not None and qg[0].act == "leaky"
    assert qg[7].out == QParams(float(f32(1 / 255)), -128)     # ST's softmax output
    assert qg[5].out is not qg[6].out
    out = qnet.predict(np.random.default_rng(1).random((3, 8, 8), dtype=f32))
    assert out.shape == (5,) and abs(float(out.sum()) - 1) < 0.05


def test_save_load_roundtrip(tmp_path):
    net = small_net()
    qnet = quantize(net, 2, bias_correction="weight", softmax="float")
    path = tmp_path / "small_int8.npz"
    qnet.save(path)
    back = load_quantized(path)
    x = np.random.default_rng(2).random((3, 8, 8), dtype=f32)
    np.testing.assert_array_equal(back.predict(x, raw=True), qnet.predict(x, raw=True))
    for a, b in zip(back.qgraph, qnet.qgraph):
        assert a.layer == b.layer and a.out == b.out and a.pre == b.pre and a.act == b.act
        for name in ("weight", "weight_scale", "bias"):
            ga, gb = getattr(a, name), getattr(b, name)
            assert (ga is None and gb is None) or (ga.dtype == gb.dtype and np.array_equal(ga, gb))
    assert back.qgraph.softmax == "float" and back.qgraph.info["bias_correction"] == "weight"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(QuantizeError, match="not a darknetpy int8 graph"):
        QGraph.load(tmp_path / "junk.npz")


def test_graph_untouched_and_bn_folded():
    net = small_net()
    before = net.graph
    qg = quantize(net, 1).qgraph
    assert net.graph is before and net.graph[0].batch_normalize == 1
    assert qg.graph[0].batch_normalize == 0                     # the int8 graph derives from the folded graph


def test_calibration_inputs(tmp_path):
    net = small_net()
    with pytest.raises(QuantizeError, match=r"\[0, 1\]"):
        build_qgraph(net.graph, net.weights, [np.full((3, 8, 8), 3.0, f32)])
    with pytest.raises(QuantizeError, match="at least one"):
        build_qgraph(net.graph, net.weights, 0)
    with pytest.raises(QuantizeError, match="unknown calibration method"):
        quantize(net, 1, method="entropy!")


def test_unsupported_layer():
    text = SMALL.replace("activation=relu6", "activation=logistic")
    g = graph_from_text(text, "bad.cfg")
    with pytest.raises(UnsupportedError, match=r"layer 4 \[convolutional\]: activation 'logistic'"):
        quantize(Network(g, random_params(g)), 1)


# -- the command ------------------------------------------------------------------------------------------------

def test_cli_report_json_save(tmp_path, capsys):
    cfg = write(tmp_path, "small.cfg", SMALL)
    net = small_net()
    weights = tmp_path / "small.weights"
    net.save_weights(weights)
    out = tmp_path / "small_int8.npz"
    assert main(["quantize", str(cfg), str(weights), "--calib-random", "2", "--json", "--save", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["images"] == 2 and d["calibration_images"] == 2 and len(d["layers"]) == 8
    assert {"sqnr_db", "cosine", "max_error", "layer", "shape"} <= set(d["layers"][0])
    assert 0 <= d["top1_agreement"] <= 1 and d["mean_kl"] >= 0
    assert load_quantized(out).qgraph.info["calibration_images"] == 2
    onnx_path = tmp_path / "small_int8.onnx"
    assert main(["quantize", str(cfg), str(weights), "--calib-random", "2", "--report", "--method", "mse",
                 "--onnx", str(onnx_path)]) == 0
    text = capsys.readouterr().out
    assert "SQNR dB" in text and "layer 6 [connected]" in text and "top-1 agreement" in text
    import onnx
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)


def test_cli_calibration_directory(tmp_path, capsys):
    from PIL import Image
    cfg = write(tmp_path, "small.cfg", SMALL)
    weights = tmp_path / "small.weights"
    small_net().save_weights(weights)
    d = tmp_path / "calib" / "nested"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    (d / "notes.txt").write_text("not an image")
    assert main(["quantize", str(cfg), str(weights), "--calib", str(tmp_path / "calib")]) == 0
    cap = capsys.readouterr()
    assert "minmax calibration on 3 images" in cap.out
    assert "calibrating" not in cap.err          # progress bars only on a terminal (stderr is captured here)


@pytest.mark.parametrize("kind", ["empty", "missing", "file"])
def test_cli_bad_calibration_directory(tmp_path, capsys, kind):
    cfg = write(tmp_path, "small.cfg", SMALL)
    weights = tmp_path / "small.weights"
    small_net().save_weights(weights)
    d = tmp_path / "calib"
    if kind == "empty":
        d.mkdir()
        (d / "readme.txt").write_text("no images here")
    elif kind == "file":
        d.write_text("x")
    code = main(["quantize", str(cfg), str(weights), "--calib", str(d)])
    err = capsys.readouterr().err
    assert code == QuantizeError.exit_code == 9
    assert f"calibration directory {d}" in err
    assert {"empty": "no images found", "missing": "does not exist", "file": "is not a directory"}[kind] in err


def test_cli_unsupported_layer(tmp_path, capsys):
    cfg = write(tmp_path, "up.cfg", SMALL.replace("[avgpool]", "[upsample]\nstride=2\nscale=2\n\n[avgpool]"))
    g = graph_from_text(cfg.read_text(), str(cfg))
    weights = tmp_path / "up.weights"
    Network(g, random_params(g)).save_weights(weights)
    code = main(["quantize", str(cfg), str(weights), "--calib-random", "1"])
    err = capsys.readouterr().err
    assert code == UnsupportedError.exit_code == 7
    assert "layer 5 [upsample]: scale=2" in err and "int8 supports" in err


def test_cli_missing_calibration_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(CFG / "tiny.cfg"), "w.weights"])
    assert e.value.code == 2
    assert "--calib" in capsys.readouterr().err


def test_lazy_export_and_int8_runtime_domain():
    import darknetpy
    from darknetpy.int8.engine import Int8Plan
    q = getattr(darknetpy, "quantize", None)
    if q is not None:                             # wired by the lead (darknetpy/__init__.py _LAZY)
        assert q is quantize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qg = quantize(small_net(), 1).qgraph
    with pytest.raises(ValueError, match="unknown domain"):
        Int8Plan(qg, domain="u8")


def test_progress_bar_only_on_a_terminal():
    import io

    from darknetpy.cli.progress import progress_bar

    assert progress_bar("calibrating", stream=io.StringIO()) is None

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    cb = progress_bar("calibrating", stream=tty)
    for i in range(1, 4):
        cb(i, 3)
    out = tty.getvalue()
    assert "calibrating" in out and "3/3" in out
