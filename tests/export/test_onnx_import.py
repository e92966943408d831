"""import-onnx: float ONNX classifiers -> weights for our cfgs (darknetpy/onnx_import.py).

No PyTorch here: the models are darknetpy's own float export rewritten into the shapes PyTorch's exporter
produces (torch-style node names, BatchNormalization nodes or folded convs, Clip with attributes (opset
10) or inputs (11-17), Gemm or MatMul+Add heads, Sub/Div input normalisation), and every import is proven
against onnxruntime on the same input. Mismatches must be refused naming the cfg line, layer and node.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from conftest import CFG, write

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

import darknetpy  # noqa: E402
from darknetpy.cli import main  # noqa: E402
from darknetpy.errors import OnnxImportError  # noqa: E402
from darknetpy.onnx_import import import_onnx_model, verify  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load(cfg, weights=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return darknetpy.load(cfg, weights)


def torch_style(model, *, bn=False, clip="input", head="gemm", normalize=False, opset=17, seed=0):
    """darknetpy's float export rewritten the way torch.onnx.export writes the same network."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    own = {"input_mean_Sub", "input_std_Div"}         # darknetpy's export of a cfg's [net] mean/std: dropped,
    for n in g.node:                                  # a PyTorch export takes the normalised tensor
        n.input[:] = ["input" if x == "input_normalized" else x for x in n.input]
    for k, n in enumerate(g.node):
        if n.name in own:
            continue
        scope = re.sub(r"^l(\d+)_.*", r"/features.\1", n.name)
        if n.op_type == "Conv" and bn:
            # an unfolded BatchNormalization after the Conv, with its own random statistics
            c = numpy_helper.to_array(inits[n.input[1]]).shape[0]
            out = n.output[0]
            n.output[0] = out + "_prebn"
            names = [f"{scope}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
            vals = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            for name, v in zip(names, vals):
                g.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
            n.name = f"{scope}/conv/Conv"
            nodes.append(n)
            nodes.append(helper.make_node("BatchNormalization", [n.output[0], *names], [out],
                                          name=f"{scope}/bn/BatchNormalization", epsilon=1e-5))
            continue
        if n.op_type == "Clip" and clip == "attr":
            lo = float(numpy_helper.to_array(inits[n.input[1]]))
            hi = float(numpy_helper.to_array(inits[n.input[2]]))
            nodes.append(helper.make_node("Clip", [n.input[0]], list(n.output), name=f"{scope}/Clip", min=lo, max=hi))
            continue
        if n.op_type == "Gemm" and head == "matmul":
            w = numpy_helper.to_array(inits[n.input[1]])
            wt = f"{scope}.fc.weight_T"
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), wt))
            mm = n.output[0] + "_mm"
            nodes.append(helper.make_node("MatMul", [n.input[0], wt], [mm], name=f"{scope}/fc/MatMul"))
            nodes.append(helper.make_node("Add", [mm, n.input[2]], list(n.output), name=f"{scope}/fc/Add"))
            continue
        n.name = f"{scope}/{n.op_type}"
        nodes.append(n)
    if normalize:
        mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
        std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
        g.initializer.extend([numpy_helper.from_array(mean, "norm.mean"), numpy_helper.from_array(std, "norm.std")])
        for n in nodes:
            n.input[:] = ["input_normalised" if x == "input" else x for x in n.input]
        nodes = [helper.make_node("Sub", ["input", "norm.mean"], ["input_centred"], name="/Sub"),
                 helper.make_node("Div", ["input_centred", "norm.std"], ["input_normalised"], name="/Div"),
                 *nodes]
    del g.node[:]
    g.node.extend(nodes)
    m.opset_import[0].version = opset
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("name,weights", [("tiny", "random"), ("dla46_c", None), ("dla46x_c", None),
                                          ("dla60x_c", None), ("hardnet39ds", None)])
def test_own_float_export_reimports_identically(name, weights):
    """export -> import gives back a network that computes exactly what the original computes: a BN conv
    gets scale 1, mean 0, unit variance and the folded weights; the outputs are bit-identical."""
    net = _load(CFG / f"{name}.cfg")
    model = darknetpy.to_onnx(net)
    imp = import_onnx_model(model, CFG / f"{name}.cfg")
    assert verify(imp, model) < 1e-5
    x = np.random.default_rng(1).random(net.input_shape, dtype=np.float32)
    np.testing.assert_array_equal(imp.network.predict(x), net.predict(x))
    assert imp.output_layer == net.graph.output_index
    if name == "tiny":                          # tiny.cfg has no [net] mean/std, so the export has none
        assert imp.mean is None
    else:                                       # the export's Sub/Div are read back as the cfg's values
        np.testing.assert_allclose(imp.mean, IMAGENET_MEAN, rtol=1e-6)
        np.testing.assert_allclose(imp.std, IMAGENET_STD, rtol=1e-6)


def test_weights_identical_without_batch_norm(tmp_path):
    cfg = write(tmp_path, "nobn.cfg", "[net]\nheight=16\nwidth=16\nchannels=3\n"
                "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n[maxpool]\nsize=2\nstride=2\n"
                "[convolutional]\nfilters=8\nsize=1\nactivation=relu\n[route]\nlayers=-1,-2\n"
                "[convolutional]\nfilters=10\nsize=1\nactivation=linear\n[avgpool]\n[softmax]\n")
    net = _load(cfg)
    imp = import_onnx_model(darknetpy.to_onnx(net), cfg)
    for a, b in zip(net.weights.params, imp.network.weights.params):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("name", ["dla46_c", "hardnet39ds"])
def test_pytorch_style_unfolded_bn_normalisation_matmul_head(name, opset):
    net = _load(CFG / f"{name}.cfg")
    model = torch_style(darknetpy.to_onnx(net), bn=True, head="matmul", normalize=True, opset=opset)
    imp = import_onnx_model(model, CFG / f"{name}.cfg")
    assert verify(imp, model) < 1e-4
    np.testing.assert_allclose(imp.mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(imp.std, IMAGENET_STD, rtol=1e-6)


def test_normalisation_must_match_the_cfg(tmp_path):
    """An ONNX model with Sub/Div normalisation into a cfg without mean/std, or with other values, is refused
    naming the cfg's [net] line and the values to write; a cfg with mean/std takes a model without them."""
    net = _load(CFG / "dla46_c.cfg")
    model = torch_style(darknetpy.to_onnx(net), normalize=True)
    text = (CFG / "dla46_c.cfg").read_text()
    plain = write(tmp_path, "plain.cfg", text.replace("mean=0.485,0.456,0.406\n", "").replace(
        "std=0.229,0.224,0.225\n", ""))
    _refused(model, plain, r"plain\.cfg:\d+ \[net\]", "no mean=/std=", "add mean=0.485,0.456,0.406")
    other = write(tmp_path, "other.cfg", text.replace("mean=0.485,0.456,0.406", "mean=0.5,0.5,0.5"))
    _refused(model, other, r"other\.cfg:\d+ \[net\]", "mean=0.5,0.5,0.5", "mean=0.485")
    imp = import_onnx_model(torch_style(darknetpy.to_onnx(net)), CFG / "dla46_c.cfg")
    assert imp.mean is None and imp.network.graph.net.mean == IMAGENET_MEAN


def test_clip_in_attribute_form_opset_10():
    net = _load(CFG / "hardnet39ds.cfg")                         # relu6 convs -> Clip(0, 6)
    model = torch_style(darknetpy.to_onnx(net), clip="attr", opset=10)
    assert any(n.op_type == "Clip" and not n.input[1:] for n in model.graph.node)
    assert verify(import_onnx_model(model, CFG / "hardnet39ds.cfg"), model) < 1e-4


def test_bn_node_into_a_cfg_without_batch_norm(tmp_path):
    """A cfg conv without batch_normalize takes a BatchNormalization node folded into its weights."""
    text = ("[net]\nheight=12\nwidth=12\nchannels=3\n[convolutional]\nfilters=6\nsize=3\npad=1\nactivation=relu\n"
            "[convolutional]\nfilters=5\nsize=1\nactivation=linear\n[avgpool]\n[softmax]\n")
    cfg = write(tmp_path, "plain.cfg", text)
    model = torch_style(darknetpy.to_onnx(_load(cfg)), bn=True)
    assert verify(import_onnx_model(model, cfg), model) < 1e-5


def _refused(model, cfg, *patterns):
    with pytest.raises(OnnxImportError) as e:
        import_onnx_model(model, cfg)
    msg = str(e.value)
    for p in patterns:
        assert re.search(p, msg), msg
    return msg


def test_mismatch_one_filter_more(tmp_path):
    model = darknetpy.to_onnx(_load(CFG / "tiny.cfg"))
    text = (CFG / "tiny.cfg").read_text().replace("filters=16", "filters=17", 1)
    cfg = write(tmp_path, "tiny17.cfg", text)
    _refused(model, cfg, r"tiny17\.cfg:\d+ layer 0 \[convolutional\]", r"\(17, 3, 3, 3\)", r"ONNX node .*\(Conv\)")


def test_mismatch_concat_order_swapped(tmp_path):
    text = (CFG / "dla46_c.cfg").read_text()
    model = darknetpy.to_onnx(_load(CFG / "dla46_c.cfg"))
    m = re.search(r"^layers\s*=\s*(-?\d+)\s*,\s*(-?\d+)\s*$", text, re.M)
    swapped = text[:m.start()] + f"layers={m.group(2)},{m.group(1)}" + text[m.end():]
    cfg = write(tmp_path, "dla_swapped.cfg", swapped)
    _refused(model, cfg, r"dla_swapped\.cfg:\d+ layer \d+ \[route\]", "concat order differs", r"\(Concat\)")


def test_mismatch_leaky_alpha(tmp_path):
    model = darknetpy.to_onnx(_load(CFG / "tiny.cfg"))
    for n in model.graph.node:
        if n.op_type == "LeakyRelu":
            n.attribute[0].f = 0.2
            break
    _refused(model, CFG / "tiny.cfg", r"tiny\.cfg:\d+ layer 0 \[convolutional\]", "alpha=0.2", r"\(LeakyRelu\)")


def test_mismatch_activation_missing(tmp_path):
    model = darknetpy.to_onnx(_load(CFG / "hardnet39ds.cfg"))
    text = re.sub(r"^activation=relu6$", "activation=relu", (CFG / "hardnet39ds.cfg").read_text(), count=1,
                  flags=re.M)
    cfg = write(tmp_path, "h.cfg", text)
    _refused(model, cfg, r"h\.cfg:\d+ layer \d+ \[convolutional\]", "activation relu", "Clip")


def test_cli_writes_weights_that_classify(tmp_path, capsys):
    net = _load(CFG / "dla46x_c.cfg")
    onnx_path = tmp_path / "dla46xc_pt_224.onnx"
    onnx.save(torch_style(darknetpy.to_onnx(net), bn=True), onnx_path)
    out = tmp_path / "dla46x_c.weights"
    assert main(["import-onnx", str(onnx_path), str(CFG / "dla46x_c.cfg"), "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert f"wrote {out}" in cap.out and "checked against onnxruntime" in cap.err
    assert out.stat().st_size == 20 + 4 * net.graph.nparams
    again = _load(CFG / "dla46x_c.cfg", out)                      # loads exactly: no byte missing or left
    x = np.random.default_rng(2).random(net.input_shape, dtype=np.float32)
    assert np.isfinite(again.predict(x)).all()


def test_cli_mismatch_exit_code(tmp_path, capsys):
    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(darknetpy.to_onnx(_load(CFG / "tiny.cfg")), onnx_path)
    out = tmp_path / "x.weights"
    assert main(["import-onnx", str(onnx_path), str(CFG / "dla46_c.cfg"), "-o", str(out)]) == 16
    err = capsys.readouterr().err
    assert err.startswith("darknetpy: error: dla46_c.cfg:") and err.count("\n") == 1
    assert not out.exists()
