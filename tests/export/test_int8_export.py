"""The QDQ int8 export: ST's layout (stm32n6.md §1.4, §2.2; issue 7), inspected node by node, and checked to
be exactly the int8 graph it was written from."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from conftest import CFG

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from darknetpy.export.n6check import input_edge  # noqa: E402
from darknetpy.image import normalize  # noqa: E402
from darknetpy.int8.qgraph import input_qparams  # noqa: E402

f32 = np.float32
# the five shipped cfgs: conv/leaky/maxpool/avgpool (tiny), shortcut/concat/relu (dla46_c), grouped (dla46x_c,
# dla60x_c), depthwise/relu6/connected (hardnet39ds)
NETS = ["tiny", "dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]


@pytest.fixture(scope="module", params=NETS)
def exported(request):
    import darknetpy
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = darknetpy.load(CFG / f"{request.param}.cfg")            # seeded random weights: layout only
    rng = np.random.default_rng(0)
    calib = [rng.random(net.input_shape, dtype=f32) for _ in range(2)]
    qnet = quantize(net, calib)
    return request.param, qnet, export_qdq(qnet.qgraph), net, calib


def _init(model) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def test_model_header_and_io(exported):
    name, qnet, model = exported[:3]
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    init = _init(model)
    net = qnet.graph.net
    nodes = list(model.graph.node)
    if net.normalizes:                   # the four model-zoo cfgs: [net] mean/std as Sub, Div on the image
        sub, div = nodes[:2]
        assert (sub.op_type, sub.input[0], div.op_type, div.input[0]) == ("Sub", "input", "Div", sub.output[0])
        np.testing.assert_array_equal(init[sub.input[1]].ravel(), np.asarray(net.mean, f32))
        np.testing.assert_array_equal(init[div.input[1]].ravel(), np.asarray(net.std, f32))
        nodes = nodes[2:]
    q0 = nodes[0]
    assert q0.op_type == "QuantizeLinear" and q0.input[0] == ("input_normalized" if net.normalizes else "input")
    want = input_qparams(net)
    assert init[q0.input[1]] == f32(want.scale) and init[q0.input[1]].dtype == np.float32
    assert init[q0.input[2]] == want.zero_point and init[q0.input[2]].dtype == np.int8
    assert net.normalizes or (want.scale, want.zero_point) == (f32(1 / 255), -128)
    props = {p.key: p.value for p in model.metadata_props}
    assert "int8 QDQ" in props["quantization"] and props["classes"] == "1000"


def test_weights_biases_activations(exported):
    name, qnet, model = exported[:3]
    init = _init(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    qlayers = [ql for ql in qnet.qgraph if ql.weight is not None]
    assert len(convs) == len(qlayers)
    for node, ql in zip(convs, qlayers):
        x_dq, w_dq, b_dq = (producer[i] for i in node.input)
        assert {x_dq.op_type, w_dq.op_type, b_dq.op_type} == {"DequantizeLinear"}
        w, ws, wz = (init[i] for i in w_dq.input)
        assert w.dtype == np.int8 and w.min() >= -127 and w.max() <= 127 and np.array_equal(w, ql.weight)
        assert ws.dtype == np.float32 and ws.shape == (w.shape[0],) and (ws > 0).all()
        assert wz.dtype == np.int8 and wz.shape == (w.shape[0],) and not wz.any()
        assert _attr(w_dq, "axis") == 0
        b, bs, bz = (init[i] for i in b_dq.input)
        assert b.dtype == np.int32 and np.array_equal(b, ql.bias) and bz.dtype == np.int32 and not bz.any()
        sx = init[x_dq.input[1]]
        assert bs.dtype == np.float32 and np.array_equal(bs, (sx * ws).astype(f32))     # s_in * s_w, exactly
        assert _attr(b_dq, "axis") == 0
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            s, z = init[n.input[1]], init[n.input[2]]
            assert s.shape == () and s.dtype == np.float32 and s > 0 and z.shape == () and z.dtype == np.int8


def test_no_float_operator_between_quantised_ones(exported):
    name, qnet, model = exported[:3]
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    init = _init(model)
    edge = set(input_edge(model))               # the cfg's mean/std before the input's QuantizeLinear
    assert edge == ({"input_mean_Sub", "input_std_Div"} if qnet.graph.net.normalizes else set())
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.name in edge:
            continue
        if n.op_type == "Identity" and n.output[0] == "output":
            continue
        for i in n.input:
            if i in init:
                continue                       # shapes of Reshape and the like
            assert producer[i].op_type == "DequantizeLinear", (n.name, i)
        for o in n.output:
            assert all(c.op_type == "QuantizeLinear" for c in consumers.get(o, [])), n.name
            assert o != "output" or n.op_type == "Softmax"
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    for n in pools:                            # MaxPool keeps its input's scale and zero point
        dq = producer[n.input[0]]
        q = consumers[n.output[0]][0]
        assert dq.input[1:] == q.input[1:]


def test_export_runs_in_onnxruntime_like_the_engine(exported):
    name, qnet, model = exported[:3]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 224, 224), dtype=f32)
    from darknetpy.int8.engine import Int8Plan
    plan = Int8Plan(qnet.qgraph, domain="int8")
    plan.run(normalize(x, qnet.graph.net.mean, qnet.graph.net.std))    # the model normalises the image itself
    qg = qnet.qgraph
    theirs = qg[qg.output_index].out.quantize(sess.run(None, {"input": x[None]})[0]).reshape(-1)
    np.testing.assert_array_equal(plan.outputs[qg.output_index].reshape(-1), theirs)


def test_nhwc_uint8_input_layout(tmp_path):
    import darknetpy
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = darknetpy.load(CFG / "tiny.cfg")
    qg = quantize(net, 1).qgraph
    path = tmp_path / "tiny_int8_nhwc.onnx"
    m = export_qdq(qg, path, input_layout="nhwc-uint8")
    assert path.is_file()
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 224, 224, 3]
    u8 = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(export_qdq(qg).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = (u8.transpose(2, 0, 1).astype(f32) / f32(255))[None]
    np.testing.assert_array_equal(a.run(None, {"input": u8[None]})[0], b.run(None, {"input": x})[0])
    from darknetpy.errors import ExportError
    with pytest.raises(ExportError, match="unknown input layout"):
        export_qdq(qg, input_layout="nchw-uint8")


def test_passes_check_n6(exported):
    from darknetpy.export.n6check import check_n6
    name, qnet, model = exported[:3]
    assert [str(v) for v in check_n6(model)] == []


def test_n6_layer_table_matches_the_export(exported):
    """N6_LAYERS (the N6 check's per-kind table) names exactly the operators the QDQ export emits for each
    layer: every node of layer i is named l{i}_{kind}..., and its op (Q/DQ aside) must be in the kind's set;
    check_n6_graph then agrees with check_n6 on the exported model (both clean)."""
    from darknetpy import layers as L
    from darknetpy.export.n6check import N6_LAYERS, check_n6, check_n6_graph

    name, qnet, model = exported[:3]
    graph = qnet.graph
    seen = {}
    for n in model.graph.node:
        m = re.match(r"l(\d+)_", n.name)
        if not m or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        layer = graph[int(m.group(1))]
        allowed = set(N6_LAYERS[type(layer)]) | ({"LeakyRelu"} if getattr(layer, "activation", "") == "leaky"
                                                 else set())
        assert n.op_type in allowed, f"{n.name}: {n.op_type} not in N6_LAYERS[{layer.kind}] = {allowed}"
        seen.setdefault(layer.kind, set()).add(n.op_type)
    assert seen, "no layer nodes found"
    assert check_n6_graph(graph) == [] and check_n6(model) == []
    assert not isinstance(N6_LAYERS[L.Local], set)


def test_n6_graph_check_names_the_layer(tmp_path):
    from darknetpy.export.n6check import check_n6_graph
    from darknetpy.graph import graph_from_text

    g = graph_from_text("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\n"
                        "activation=logistic\n[upsample]\nstride=2\nscale=2\n")
    v = check_n6_graph(g)
    assert [(x.node, x.rule) for x in v] == [("layer 0 [convolutional]", "int8-layer"),
                                            ("layer 1 [upsample]", "int8-layer")]
    assert "logistic" in v[0].message and "scale=2" in v[1].message


def _structure(model) -> tuple[dict, dict]:
    """Per compute node (by name): op type, and for each input and output how it is quantised -- ``None``
    (float), or (tensor dtype, axis, scale shape, zero-point dtype, zero points all 0) of its Q/DQ; plus the
    activation scales by (node, slot) for reporting."""
    init = _init(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def qdq_info(node):
        zp = init[node.input[2]]
        data = init.get(node.input[0])
        dtype = data.dtype.name if data is not None else "activation"
        return (dtype, _attr(node, "axis", 1) if zp.ndim else None, init[node.input[1]].shape, zp.dtype.name,
                bool((zp == 0).all()) if data is not None else None)

    structure, scales = {}, {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity"):
            continue
        ins = []
        for k, i in enumerate(n.input):
            p = producer.get(i)
            ins.append(qdq_info(p) if p is not None and p.op_type == "DequantizeLinear" else None)
            if p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in init:
                scales[(n.name, f"in{k}")] = float(init[p.input[1]])
        outs = []
        for o in n.output:
            qs = [c for c in consumers.get(o, []) if c.op_type == "QuantizeLinear"]
            outs.append(qdq_info(qs[0]) if qs else None)
            if qs:
                scales[(n.name, "out")] = float(init[qs[0].input[1]])
        structure[n.name] = (n.op_type, tuple(ins), tuple(outs))
    return structure, scales


def test_same_structure_as_quantize_static_with_st_arguments(exported, tmp_path):
    """onnxruntime's quantize_static with ST's arguments (stm32n6.md §2.2), on darknetpy's float export with the
    same calibration inputs, quantises the same tensors with the same dtypes, axes and zero-point layout. The
    scales differ (pair_safe weight scales; darknetpy's own calibration): printed, not hidden."""
    from conftest import quantize_static_st
    name, qnet, model, net, calib = exported
    st = onnx.load(str(quantize_static_st(net, calib, tmp_path)))
    ours, our_scales = _structure(model)
    theirs, their_scales = _structure(st)
    assert sorted(ours) == sorted(theirs), f"{name}: nodes differ: {set(ours) ^ set(theirs)}"
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not diff, f"{name}: quantised differently: {diff}"
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)     # noqa: E731
    for op in ("QuantizeLinear", "DequantizeLinear"):
        assert count(model, op) == count(st, op), (name, op)
    # activation scales: same calibration method (MinMax) on the same inputs; report how far apart they are
    common = sorted(set(our_scales) & set(their_scales))
    rel = np.array([abs(our_scales[k] - their_scales[k]) / their_scales[k] for k in common])
    worst = common[int(rel.argmax())]
    print(f"\n{name}: {len(common)} activation scales; identical {np.mean(rel == 0):.1%}, "
          f"median relative difference {np.median(rel):.2e}, max {rel.max():.2e} at {worst}")
    # weight scales: pair_safe grows some channels' scales (quant.py); report the share and the factor
    w_ours = [x for x in model.graph.initializer if x.name.endswith("_W_scale")]
    init_st = _init(st)
    producer = {o: n for n in st.graph.node for o in n.output}
    by_name = {n.name: n for n in st.graph.node}
    grown = []
    for wi in w_ours:
        w_dq = producer[by_name[wi.name[: -len("_W_scale")]].input[1]]       # Conv/Gemm input 1: the weights
        grown.append(onnx.numpy_helper.to_array(wi) / init_st[w_dq.input[1]])
    g = np.concatenate(grown)
    print(f"{name}: weight scales darknetpy/quantize_static: equal for {np.mean(np.isclose(g, 1, rtol=1e-6)):.1%} "
          f"of {g.size} channels, max ratio {g.max():.3f} (pair_safe)")
    assert (g >= 1 - 1e-6).all()           # pair_safe only ever grows a scale
    # without pair_safe the weight scales are quantize_static's (max|w|/127 per output channel)
    from darknetpy.int8 import quantize
    plain = {ql.index: ql.weight_scale for ql in quantize(net, calib, pair_safe=False).qgraph if ql.weight is not None}
    for wi in w_ours:
        node = wi.name[: -len("_W_scale")]
        w_dq = producer[by_name[node].input[1]]
        i = int(node.split("_")[0][1:])
        np.testing.assert_allclose(plain[i], init_st[w_dq.input[1]], rtol=1e-6, err_msg=node)
