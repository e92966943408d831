"""Detectors to ONNX for the STM32N6 (issue #14 item 7), on every det_* case (darknet's cfgs and weights):

* float export + onnxruntime + ``darknetpy.decode`` on its outputs print the same lines as darknetpy's float
  network on the same input;
* QDQ export + onnxruntime's integer session (``session.qdqisint8allowed=1``) give the int8 engine's head tensors
  value for value, ``check-n6`` is clean, and decoding onnxruntime's outputs gives the engine's boxes;
* the outputs are the tensors entering the heads, one per head, named ``l<index>_<kind>``; the heads description is
  the model's ``darknetpy_heads`` metadata, and ``decode`` takes the model, its path or its metadata in place of
  the network;
* [reorg] exports as darknet's exact index map (DepthToSpace / Reshape-SpaceToDepth-Reshape / Transpose).
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from conftest import detection_cases, needs_shared, write

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from darknetpy import layers as L  # noqa: E402
from darknetpy.boxes import decode, heads_of  # noqa: E402
from darknetpy.errors import UnsupportedError  # noqa: E402

CASES = detection_cases() or [pytest.param("none", marks=pytest.mark.skip(reason="no det_* cases"))]
_Q: dict = {}


def session(model, int8: bool = False):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if int8:                                  # every node an integer kernel, as the NPU computes
        so.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _quantized(det_case, name):
    from darknetpy.int8 import quantize

    if name not in _Q:
        net, x, rec, size = det_case(name)
        _Q[name] = quantize(net, [x, np.ascontiguousarray(x[:, :, ::-1])])
    return _Q[name]


def _args(rec, size):
    return size, rec["thresh"], rec["hier_thresh"], rec["nms"]


def _outputs_are_the_heads(model, graph):
    heads = heads_of(graph)
    names = [o.name for o in model.graph.output]
    assert names == [f"l{h.index}_{h.kind}" for h in heads]
    for o, h in zip(model.graph.output, heads):
        dims = [d.dim_value for d in o.type.tensor_type.shape.dim]
        assert dims == ([1, h.inputs] if isinstance(h, L.DetectionLayer) else [1, h.c, h.h, h.w])
    props = {p.key: p.value for p in model.metadata_props}
    desc = json.loads(props["darknetpy_heads"])
    assert [(h["layer"], h["kind"], h["output"]) for h in desc["heads"]] == [(h.index, h.kind, f"l{h.index}_{h.kind}")
                                                                            for h in heads]
    assert props["classes"] == str(desc["classes"]) and props["outputs"].startswith(", ".join(names))
    return props


@needs_shared
@pytest.mark.parametrize("name", CASES)
def test_float_export_decodes_to_the_networks_lines(det_case, name, tmp_path):
    from darknetpy.export.onnx_float import export_onnx

    net, x, rec, size = det_case(name)
    path = tmp_path / f"{name}.onnx"
    model = export_onnx(net.graph, net.weights, path)          # onnx.checker(full_check=True) inside
    props = _outputs_are_the_heads(model, net.graph)
    outs = session(model).run(None, {"input": x[None]})
    ref_inputs = [net.predict(x, all_layers=True)[h.index - 1] for h in heads_of(net.graph)]
    for got, ref in zip(outs, ref_inputs):
        np.testing.assert_allclose(got.reshape(-1), ref.reshape(-1), rtol=0, atol=2e-5 * np.abs(ref).max())
    ref = decode(net.graph, ref_inputs, *_args(rec, size))
    got = decode(model, outs, *_args(rec, size))
    assert [d.line for d in got] == [d.line for d in ref] and len(ref) > 0
    for a, b in zip(got, ref):
        assert a.cls == b.cls and abs(a.x - b.x) < 1e-4 and abs(a.w - b.w) < 1e-4
    # the model, its path, its metadata dict or onnxruntime's metadata map in place of the network
    meta = session(model).get_modelmeta().custom_metadata_map
    named = dict(zip([o.name for o in model.graph.output], outs))
    for source in (str(path), path, props, meta):
        assert decode(source, named, *_args(rec, size)) == got
    print(f"\n{name}: {len(got)} lines, float ONNX == darknetpy")


@needs_shared
@pytest.mark.parametrize("name", CASES)
def test_qdq_export_gives_the_engines_head_tensors_and_boxes(det_case, name):
    from darknetpy.export.n6check import N6_LAYERS, check_n6, check_n6_graph
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8.engine import Int8Plan

    net, x, rec, size = det_case(name)
    qnet = _quantized(det_case, name)
    qg = qnet.qgraph
    model = export_qdq(qg)
    _outputs_are_the_heads(model, net.graph)
    assert [str(v) for v in check_n6(model)] == [] and check_n6_graph(qnet.graph) == []
    for n in model.graph.node:                      # every layer's nodes are in its N6_LAYERS entry
        m = re.match(r"l(\d+)_", n.name)
        if m and n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            layer = net.graph[int(m.group(1))]
            allowed = N6_LAYERS[type(layer)] | ({"LeakyRelu"} if getattr(layer, "activation", "") == "leaky" else set())
            assert n.op_type in allowed, (n.name, n.op_type)
    outs = session(model, int8=True).run(None, {"input": x[None]})
    plan = Int8Plan(qg, domain="int8")
    plan.run(x)
    heads = heads_of(net.graph)
    identical = 0
    for got, head in zip(outs, heads):
        qp = qg.tensor_qparams(head.index - 1)
        mine = plan.outputs[head.index - 1].reshape(-1)
        assert np.array_equal(qp.quantize(got).reshape(-1), mine), head.describe()
        assert np.array_equal(got.reshape(-1), qp.dequantize(mine))        # the same float32 DequantizeLinear
        identical += mine.size
    engine = decode(net.graph, qnet.head_inputs(x), *_args(rec, size))
    assert decode(model, outs, *_args(rec, size)) == engine
    print(f"\n{name}: {identical} int8 head values identical to the engine; {len(engine)} lines; check-n6 clean")


@pytest.mark.parametrize("tail", ["[reorg]\nstride=2\n", "[reorg]\nstride=2\nreverse=1\n", "[reorg]\nstride=3\n",
                                  "[reorg]\nstride=2\nflatten=1\n", "[reorg]\nstride=2\nflatten=1\nreverse=1\n"])
def test_reorg_exports_darknets_exact_index_map(tail):
    """A [reorg] right after the input: onnxruntime moves the very values darknetpy's kernel (checked against
    darknet's reorg_cpu in the conformance cases) moves -- bit for bit."""
    from darknetpy.export.onnx_float import export_onnx
    from darknetpy.graph import graph_from_text
    from darknetpy.network import Network
    from darknetpy.weights import random_params

    g = graph_from_text(f"[net]\nheight=6\nwidth=12\nchannels=36\n{tail}")
    net = Network(g, random_params(g))
    x = np.random.default_rng(1).standard_normal((36, 6, 12)).astype(np.float32)
    model = export_onnx(g, net.weights)
    ops = {n.op_type for n in model.graph.node}
    assert ops == ({"Reshape", "Transpose"} if "flatten" in tail else {"DepthToSpace"} if "reverse" in tail
                   else {"Reshape", "SpaceToDepth"})
    got = session(model).run(None, {"input": x[None]})[0]
    assert np.array_equal(got.reshape(-1), net.predict(x).reshape(-1))


@pytest.mark.filterwarnings("ignore:.*not a multiple of stride")
@pytest.mark.parametrize("tail,why", [("[reorg]\nstride=2\nextra=5\n", "extra > 0"),
                                      ("[reorg]\nstride=2\n", "18 channels are not a multiple of stride")])
def test_reorg_the_export_refuses(tail, why):
    from darknetpy.export.onnx_float import check_exportable
    from darknetpy.graph import graph_from_text

    g = graph_from_text(f"[net]\nheight=6\nwidth=12\nchannels=18\n{tail}")
    with pytest.raises(UnsupportedError, match=f"layer 0 \\[reorg\\]: {why}"):
        check_exportable(g)


@needs_shared
def test_export_and_check_n6_commands_on_a_detector(det_case, tmp_path, capsys):
    """`darknetpy export --int8` writes the detector with its head outputs and passes check-n6; `darknetpy check-n6`
    agrees; `darknetpy quantize --report` prints the box agreement."""
    from darknetpy.cli import main
    from darknetpy.weights import save_weights

    net, x, rec, size = det_case("det_yolov3_tiny_dog")
    cfg = write(tmp_path, "yolov3-tiny-160.cfg", open(net.graph.path).read())
    weights = tmp_path / "yolov3-tiny-160.weights"
    save_weights(weights, net.graph, net.weights)
    out = tmp_path / "y_int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["export", str(cfg), str(weights), "--int8", "--calib-random", "2", "--onnx", str(out)])
    o, e = capsys.readouterr()
    assert code == 0, e
    assert "passes check-n6" in o and "detector: 2 outputs l16_yolo, l23_yolo" in o, o
    assert main(["check-n6", str(out)]) == 0
    assert "OK for the STM32N6 NPU" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["quantize", str(cfg), str(weights), "--calib-random", "2", "--report"])
    o, e = capsys.readouterr()
    assert code == 0, e
    assert re.search(r"^over 2 image\(s\): boxes \(same class, IoU >= 0\.5; thresh 0\.5, nms 0\.45\): \d+/\d+ float "
                     r"boxes found by int8, \d+ missed, \d+ extra of \d+; mean IoU of the matched ", o, re.M), o
