"""ONNX export: onnx.checker, onnxruntime parity, metadata, input layouts, check-n6, and error paths."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import ARCH, CFG, CONFORMANCE, DARKNET, conformance_cases, rel_err, write
from darknetpy.cli import main
from darknetpy.errors import ExportError, QuantizeError, UnsupportedError
from darknetpy.graph import load_graph
from darknetpy.export.n6check import check_n6
from darknetpy.image import normalize
from darknetpy.network import Network, load
from darknetpy.export import to_onnx
from darknetpy.export.onnx_float import export_onnx
from darknetpy.weights import read_weights


def session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def shipped():
    out = []
    if (DARKNET / "tiny.weights").exists():
        out.append(("tiny", DARKNET / "tiny.weights"))
    out += [(n, ARCH / f"{n}.weights") for n in ("dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds")
            if (ARCH / f"{n}.weights").exists()]
    return out or [pytest.param("none", None, marks=pytest.mark.skip(reason="no reference weights in ../shared"))]


@pytest.mark.parametrize("name,weights", shipped())
def test_shipped_networks_float_export_matches(name, weights):
    net = load(CFG / f"{name}.cfg", weights)
    model = export_onnx(net.graph, net.weights)       # runs onnx.checker.check_model(full_check=True)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 1000]
    x = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
    ref = net.predict(normalize(x, net.graph.net.mean, net.graph.net.std))   # the model takes the image
    got = session(model).run(None, {"input": x[None]})[0].reshape(-1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert np.argmax(got) == np.argmax(ref)


def _exportable_cases():
    out = []
    for n in conformance_cases():
        d = CONFORMANCE / n
        if not (d / "input.npy").exists() or n.startswith("quirk_unknown"):
            continue
        out.append(n)
    return out or [pytest.param("none", marks=pytest.mark.skip(reason="no conformance data"))]


@pytest.mark.parametrize("name", _exportable_cases())
def test_conformance_cases_export_or_refuse(name):
    d = CONFORMANCE / name
    cfg = d / "net.cfg" if (d / "net.cfg").exists() else CFG / "tiny.cfg"
    wts = d / "net.weights" if (d / "net.weights").exists() else DARKNET / "tiny.weights"
    meta = (d / "meta.txt").read_text()
    h, w = (int(v) for v in re.search(r"h=(\d+) w=(\d+)", meta).groups())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_graph(cfg, height=h, width=w)
    net = Network(g, read_weights(wts, g))
    if any(layer.kind == "local" for layer in g):
        with pytest.raises(UnsupportedError, match=r"layer \d+ \[local\].*no ONNX equivalent"):
            export_onnx(g, net.weights)
        return
    model = export_onnx(g, net.weights)
    x = np.load(d / "input.npy")
    ref = net.predict(x)
    got = session(model).run(None, {"input": x[None]})[0].reshape(ref.shape)
    assert rel_err(got, ref) <= 1e-5, rel_err(got, ref)


def test_metadata_and_nhwc_uint8_layout(tmp_path):
    net = load(CFG / "tiny.cfg")
    model = export_onnx(net.graph, net.weights, input_layout="nhwc-uint8")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_cfg"] == "tiny.cfg" and len(meta["source_cfg_sha256"]) == 64
    assert meta["classes"] == "1000" and "1/255" in meta["preprocessing"] and "letterbox" in meta["preprocessing"]
    assert meta["darknetpy_version"]
    inp = model.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8 and [d.dim_value for d in inp.shape.dim] == [1, 224, 224, 3]
    u8 = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = session(model).run(None, {"input": u8[None]})[0].reshape(-1)
    x = np.ascontiguousarray(u8.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)   # darknet's /255
    np.testing.assert_allclose(got, net.predict(x), rtol=0, atol=1e-5)


def test_check_n6_flags_a_float_model_by_node(tmp_path):
    net = load(CFG / "tiny.cfg")
    model = export_onnx(net.graph, net.weights)
    v = check_n6(model)
    rules = {x.rule for x in v}
    assert {"int8-weights", "float-input", "hybrid"} <= rules
    assert any(x.node == "l0_convolutional" and x.rule == "int8-weights" for x in v)
    path = tmp_path / "f.onnx"
    onnx.save(model, path)
    assert main(["check-n6", str(path)]) == ExportError.exit_code


def test_check_n6_rules_on_hand_made_models():
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.full((4, 3, 1, 1), -128, np.int8), "w")
    ws = numpy_helper.from_array(np.array(0.1, np.float32), "ws")          # per-tensor weight scale
    xs = numpy_helper.from_array(np.array(1 / 255, np.float32), "xs")
    xz = numpy_helper.from_array(np.array(0, np.uint8), "xz")              # uint8 activations
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["q"], name="q_in"),
             helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["dq"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"], name="dq_w"),
             helper.make_node("Conv", ["dq", "wf"], ["y"], name="conv"),
             helper.make_node("Erf", ["y"], ["output"], name="erf")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])], [w, ws, xs, xz])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    found = {(x.node, x.rule) for x in check_n6(m)}
    assert ("model", "opset") in found and ("input", "static-shape") in found
    assert ("q_in", "int8-activations") in found
    assert ("conv", "int8-weights") in found and ("conv", "per-channel") in found
    assert ("erf", "npu-op") in found and ("conv", "hybrid") in found


def test_to_onnx_errors(tmp_path):
    net = load(CFG / "tiny.cfg")
    with pytest.raises(QuantizeError, match="needs calibration data"):
        to_onnx(net, None, int8=True)
    with pytest.raises(ExportError, match="cannot write the ONNX model"):
        to_onnx(net, tmp_path / "no" / "dir" / "x.onnx")
    cfg = write(tmp_path, "t.cfg", "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=3\n"
                                   "pad=1\nactivation=plse\n")
    with pytest.raises(UnsupportedError, match=r"layer 0 \[convolutional\]: activation 'plse'.*exportable activations"):
        to_onnx(load(cfg), None)


def test_export_cli_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DARKNETPY_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(CFG / "dla46_c.cfg")]) == ExportError.exit_code
    assert "no WEIGHTS given" in capsys.readouterr().err
    assert main(["export", str(CFG / "tiny.cfg")]) == ExportError.exit_code
    assert "tiny.weights not found" in capsys.readouterr().err
    net = load(CFG / "tiny.cfg")
    net.save_weights(tmp_path / "t.weights")
    code = main(["export", str(CFG / "tiny.cfg"), str(tmp_path / "t.weights"), "--int8"])
    err = capsys.readouterr().err
    assert code == QuantizeError.exit_code and "--int8 needs calibration images" in err and "Traceback" not in err
    assert main(["export", str(CFG / "tiny.cfg"), str(tmp_path / "t.weights"), "--onnx",
                 str(tmp_path / "x" / "y.onnx")]) == ExportError.exit_code
    assert main(["check-n6", str(tmp_path / "missing.onnx")]) == ExportError.exit_code


def test_export_cli_defaults_float(tmp_path, capsys, monkeypatch):
    net = load(CFG / "tiny.cfg")
    data = tmp_path / "data"
    data.mkdir()
    net.save_weights(data / "tiny.weights")
    monkeypatch.setenv("DARKNETPY_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--onnx"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "tiny.onnx").is_file() and "wrote tiny.onnx" in out and "Conv 16" in out


def test_export_cli_int8_onnx_as_users_type_it(tmp_path, capsys, monkeypatch):
    """`darknetpy export --int8 --onnx`: cfg/tiny.cfg, the fetched tiny.weights, calibration on the sample photos
    found beside them (said on stderr), tiny_int8.onnx written, check-n6 clean, stedgeai command printed."""
    from PIL import Image

    net = load(CFG / "tiny.cfg")
    data = tmp_path / "data"
    data.mkdir()
    net.save_weights(data / "tiny.weights")
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(data / "dog.jpg")
    monkeypatch.setenv("DARKNETPY_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--int8", "--onnx"]) == 0
    out, err = capsys.readouterr()
    assert "calibrating on darknet's 1 sample photos" in err and "pass --calib DIR" in err
    assert (tmp_path / "tiny_int8.onnx").is_file() and "wrote tiny_int8.onnx" in out
    assert "stedgeai generate" in out and "--input-data-type uint8" in out and "--inputs-ch-position chlast" in out
    assert check_n6(str(tmp_path / "tiny_int8.onnx")) == []


@pytest.mark.parametrize("h,w,s", [(7, 9, 2), (5, 8, 2), (9, 11, 3), (6, 6, 2)])
def test_downsample_of_a_size_not_a_multiple_of_the_stride_exports_darknets_reading(tmp_path, h, w, s):
    """[upsample] stride<0 reads its input with the output's geometry (kernels/elementwise.py upsample): the
    export reproduces it, and agrees with darknetpy (whose kernel is checked against darknet's upsample_cpu)."""
    cfg = write(tmp_path, "d.cfg", f"[net]\nheight={h}\nwidth={w}\nchannels=3\n[convolutional]\nfilters=4\nsize=3\n"
                                   f"pad=1\nactivation=leaky\n[upsample]\nstride=-{s}\nscale=0.5\n")
    net = load(cfg)
    x = np.random.default_rng(h * w).random((3, h, w), dtype=np.float32)
    ref = net.predict(x)
    got = session(export_onnx(net.graph, net.weights)).run(None, {"input": x[None]})[0].reshape(ref.shape)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
