"""The four model-zoo translations reproduce PyTorch's logits from ../shared/arch (issue: DLA/HarDNet cfgs)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ARCH, CFG
from darknetpy.graph import load_graph
from darknetpy.network import Network
from darknetpy.weights import expected_bytes, read_weights

MODELS = ["dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]
pytestmark = pytest.mark.skipif(not ARCH.is_dir(), reason=f"no reference data at {ARCH}")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    name = request.param
    graph = load_graph(CFG / f"{name}.cfg")
    path = ARCH / f"{name}.weights"
    assert expected_bytes(graph, read_weights(path, graph).header) == path.stat().st_size  # no byte missing/left
    return name, graph, read_weights(path, graph), np.load(ARCH / f"{name}_golden.npz")


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_logits_and_softmax(model, exact):
    name, graph, weights, golden = model
    net = Network(graph, weights, exact=exact)
    outs = net.predict(golden["input"][0], all_layers=True)
    logits = outs[-2].reshape(-1)
    assert np.abs(logits - golden["logits"]).max() <= 1e-4, name
    ref = np.exp(golden["logits64"] - golden["logits64"].max())
    ref /= ref.sum()
    np.testing.assert_allclose(outs[-1], ref, rtol=0, atol=1e-5)
    assert np.argmax(outs[-1]) == np.argmax(golden["logits"])


def test_fused_plan_matches(model):
    # predict() runs the plan that fuses shortcuts into the convolution before them (DLA); it must give
    # the same probabilities as the unfused all-layers plan and PyTorch.
    name, graph, weights, golden = model
    net = Network(graph, weights)
    probs = net.predict(golden["input"][0])
    ref = np.exp(golden["logits64"] - golden["logits64"].max())
    ref /= ref.sum()
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    if name.startswith("dla"):
        assert len(net.plan().fused) == {"dla46_c": 12, "dla46x_c": 12, "dla60x_c": 16}[name]


def test_relu6_matters():
    # HarDNet with relu instead of relu6 must fail the check above (the test can fail).
    text = (CFG / "hardnet39ds.cfg").read_text().replace("activation=relu6", "activation=relu")
    from darknetpy.graph import graph_from_text
    graph = graph_from_text(text, "hardnet-relu.cfg")
    weights = read_weights(ARCH / "hardnet39ds.weights", graph)
    golden = np.load(ARCH / "hardnet39ds_golden.npz")
    out = Network(graph, weights).predict(golden["input"][0], all_layers=True)[-2].reshape(-1)
    assert np.abs(out - golden["logits"]).max() > 1e-2
