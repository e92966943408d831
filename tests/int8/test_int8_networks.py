"""The int8 engine against onnxruntime running darknetpy's own QDQ export, on the five shipped networks.

Acceptance (issue 4): >= 99.9 % of the quantised output values identical, none more than one step apart,
the same top-1 -- checked on the output and on the int8 logits that feed the softmax (with random weights
the four model-zoo translations put every class below 1/510, so their int8 softmax output is all zeros).

onnxruntime is run two ways:

* ``session.qdqisint8allowed=1``: every node becomes an integer QLinear*/QGemm kernel (on x86 the slow
  s8s8 path). This is the int8 model executed in integer arithmetic; the engine (``domain="int8"``) must give
  the same values.
* the default session: on x86 onnxruntime rewrites int8 activations to uint8, but only for tensors read by a
  single node; nodes touching tensors read by several nodes (routes, shortcuts) stay float Conv/Add/Concat
  between DequantizeLinear and QuantizeLinear. Tiny Darknet has no such tensor and runs entirely as integer
  kernels: the engine (``domain="uint8"``) must match it exactly. For the four translations the float nodes
  round differently from the integer kernels in rare cases, and with random weights those differences grow
  from layer to layer (on the DLA-46-C logits the default session agrees with onnxruntime's own integer
  execution of the same model on only ~50 % of the values), so the integer configuration is the reference;
  the test checks that the float fallback is confined to the fan-out nodes, i.e. that it is the only cause.
  The STM32N6 NPU runs every node in integer arithmetic, as the engine does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import ARCH, CFG, DARKNET, needs_shared
from darknetpy.image import normalize

ort = pytest.importorskip("onnxruntime")

NETS = ["tiny", "dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]
pytestmark = needs_shared


def _weights(name: str):
    return DARKNET / "tiny.weights" if name == "tiny" else ARCH / f"{name}.weights"


def _photo(name: str):
    from darknetpy.image import letterbox, load_image
    return letterbox(load_image(DARKNET / f"{name}.jpg"), 224, 224)


@pytest.fixture(scope="module", params=NETS)
def case(request):
    import darknetpy
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize

    name = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = darknetpy.load(CFG / f"{name}.cfg", _weights(name))
    norm = (net.graph.net.mean, net.graph.net.std)          # the model-zoo cfgs' [net] mean/std (tiny: none)
    qnet = quantize(net, [normalize(_photo("dog"), *norm), normalize(_photo("eagle"), *norm)])
    model = export_qdq(qnet.qgraph).SerializeToString()
    rng = np.random.default_rng(3)
    inputs = [_photo("kite"), _photo("person"), rng.random(net.input_shape, dtype=np.float32),
              rng.random(net.input_shape, dtype=np.float32)]
    return name, qnet, model, inputs


def _session(model: bytes, int8_allowed: bool):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if int8_allowed:
        so.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _logits_model(model: bytes, qg) -> bytes:
    """The same QDQ model with the int8 logits (the DequantizeLinear the softmax reads) as a second output.
    A DequantizeLinear that is a graph output cannot join a node group, so the Softmax runs in float here;
    the logits are computed exactly as in the original model."""
    import onnx
    m = onnx.load_from_string(model)
    sm = next(n for n in m.graph.node if n.op_type == "Softmax")
    flat = next(n for n in m.graph.node if n.output[0] == sm.input[0])
    m.graph.output.append(onnx.helper.make_tensor_value_info(flat.output[0], onnx.TensorProto.FLOAT, None))
    return m.SerializeToString()


def _compare(qnet, model, inputs, domain, int8_allowed):
    """Per input: (fraction identical, max step difference, same top-1) for the output and the logits."""
    from darknetpy.int8.engine import Int8Plan

    qg = qnet.qgraph
    last = qg.output_index
    j = qg[last].src[0]
    plan = Int8Plan(qg, domain=domain)
    s_out = _session(model, int8_allowed)
    s_log = _session(_logits_model(model, qg), int8_allowed)
    rows = []
    for x in inputs:                                 # images: the model normalises them, the engine is given
        plan.run(normalize(x, qg.graph.net.mean, qg.graph.net.std))      # the network input
        out = qg[last].out.quantize(s_out.run(None, {"input": x[None]})[0]).reshape(-1)
        logits = qg.tensor_qparams(j).quantize(s_log.run(None, {"input": x[None]})[1]).reshape(-1)
        for mine, theirs in ((plan.outputs[last].reshape(-1), out), (plan.outputs[j].reshape(-1), logits)):
            d = np.abs(mine.astype(int) - theirs.astype(int))
            rows.append((float(np.mean(d == 0)), int(d.max()), int(np.argmax(mine)) == int(np.argmax(theirs))))
    return rows


def test_engine_equals_onnxruntime_integer_kernels(case):
    name, qnet, model, inputs = case
    for same, step, top1 in _compare(qnet, model, inputs, "int8", True):
        assert same >= 0.999 and step <= 1 and top1, (name, same, step)
        assert same == 1.0, f"{name}: {same:.5f} identical (expected bit-exact)"


ARITHMETIC = ("Conv", "Add", "Concat", "Gemm")      # ops onnxruntime runs as QLinear* when it can (MaxPool: int8)


def _fan_out_nodes(model: bytes) -> tuple[set[str], set[str]]:
    """(producers, readers) of the quantised tensors that more than one node reads: the node whose output a
    QuantizeLinear -> DequantizeLinear pair carries, and the nodes reading that DequantizeLinear."""
    import onnx
    m = onnx.load_from_string(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    prods, reads = set(), set()
    for n in m.graph.node:
        users = readers.get(n.output[0], [])
        if n.op_type == "DequantizeLinear" and len(users) > 1 and n.input[0] in producer:
            q = producer[n.input[0]]
            if q.input[0] in producer and producer[q.input[0]].op_type in ARITHMETIC:
                prods.add(producer[q.input[0]].name)
            reads.update(u.name for u in users)
    return prods, reads


def test_engine_equals_onnxruntime_default_session(case, tmp_path):
    name, qnet, model, inputs = case
    if name == "tiny":
        rows = _compare(qnet, model, inputs, "uint8", False)
        assert all(same == 1.0 for same, _, _ in rows), rows  # all integer kernels in onnxruntime: bit-exact
        return
    # The translations: onnxruntime's default x86 session leaves the nodes around fan-out tensors in float
    # (QDQS8ToU8Transformer converts a QuantizeLinear only when exactly one DequantizeLinear reads it). Check
    # that this, and nothing else, is what separates it from the integer execution the engine reproduces:
    # the float nodes are producers/readers of fan-out tensors, every producer among them, all others integer.
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    import onnx
    optimized = onnx.load(so.optimized_model_filepath)
    float_nodes = {n.name for n in optimized.graph.node if n.op_type in ARITHMETIC}
    producers, readers = _fan_out_nodes(model)
    assert producers, f"{name}: expected fan-out tensors"
    assert producers <= float_nodes <= producers | readers, (name, sorted(float_nodes - producers - readers))
    assert any(n.op_type == "QLinearConv" for n in optimized.graph.node)
    # what the float fallback costs on these random-weight networks, for the record (not a property of ours)
    rows = _compare(qnet, model, inputs, "uint8", False)
    print(f"{name}: default x86 session vs the engine, (identical, max step, top-1) per output/logits: {rows}")
