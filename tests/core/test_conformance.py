"""darknet's own outputs (../shared/conformance) against darknetpy, at darknet.md §9's tolerances.

Every case folder found is tested, so cases added later are picked up without editing this file.
Per case, as far as its files allow:

* shapes of every layer equal darknet's ``meta.txt``; parameter names and counts equal ``case.json``;
* the .weights header is read and re-saved byte for byte (original header kept), and darknet's own
  ``save_weights`` output is reproduced (``resave.weights`` where present);
* exact mode: every layer bit-identical to darknet's dump (softmax within 1e-6), both fed darknet's
  input of that layer (isolated) and chained from the network input;
* fast mode: per layer |err| <= 1e-5 max|ref| isolated and 5e-5 max|ref| chained; final output within
  1e-5 with the same top-5;
* image cases: preprocessing bit-exact from ``decoded_u8.npy``; darknet's printed top-5 reproduced.

The detection cases (``det_*``, ../shared/specs/detection.md) get the same layer-by-layer checks in
``test_conformance_detection.py``, which reuses ``Case`` and ``feed_and_run`` from here.

Quirk cases are reproduced unless listed in ``REJECTED`` (a documented decision, see graph.py).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import CFG, CONFORMANCE, conformance_cases, rel_err
from darknetpy import layers as L
from darknetpy.errors import CfgError
from darknetpy.graph import load_graph
from darknetpy.image import from_u8, letterbox, letterbox_size, resize_image, resize_min, resize_min_size
from darknetpy.network import Network
from darknetpy.weights import Header, read_weights, weights_to_bytes

# quirk cases darknetpy deliberately refuses, with the text the error must contain
REJECTED = {
    "quirk_unknown_activation": ["unknown activation", "swish", "valid names", "leaky", "relu6"],
}



def _cases(*needs: str) -> list:
    """Case names (reproduced ones only) that have every file in ``needs``; a skip if there are none."""
    names = [n for n in conformance_cases() if n not in REJECTED and all((CONFORMANCE / n / f).exists() for f in needs)]
    return names or [pytest.param("none", marks=pytest.mark.skip(reason=f"no conformance data at {CONFORMANCE}"))]


class Case:
    def __init__(self, name: str):
        self.name = name
        self.dir = CONFORMANCE / name
        meta = (self.dir / "meta.txt").read_text().splitlines()
        net_line = next(line for line in meta if line.startswith("net "))
        self.net = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", net_line)}
        self.meta = [line.split() for line in meta if line[:1].isdigit()]
        self.json = json.loads((self.dir / "case.json").read_text()) if (self.dir / "case.json").exists() else {}
        source = (self.dir / "SOURCE.txt").read_text() if (self.dir / "SOURCE.txt").exists() else ""
        self.source = dict(re.findall(r"^(\w+)=(.*)$", source, re.M))

    @property
    def cfg(self) -> Path:
        # Image cases run pjreddie's tiny.cfg: use the project's own cfg/tiny.cfg, written from the spec.
        return self.dir / "net.cfg" if (self.dir / "net.cfg").exists() else CFG / "tiny.cfg"

    @property
    def weights(self) -> Path:
        if (self.dir / "net.weights").exists():
            return self.dir / "net.weights"
        return (self.dir / self.source["weights"]).resolve()

    def graph(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_graph(self.cfg, height=self.net["h"], width=self.net["w"])

    def layer_refs(self) -> list[np.ndarray] | None:
        d = self.dir / "layers"
        if not d.is_dir():
            return None
        files = sorted(d.glob("*.npy"))
        return [np.load(f) for f in files]


def _network(case: Case, exact: bool) -> Network:
    g = case.graph()
    return Network(g, read_weights(case.weights, g), exact=exact)


@pytest.mark.parametrize("name", [n for n in sorted(REJECTED) if (CONFORMANCE / n).is_dir()]
                         or [pytest.param("none", marks=pytest.mark.skip(reason="no quirk cases present"))])
def test_rejected_quirks(name):
    with pytest.raises(CfgError) as e:
        load_graph(CONFORMANCE / name / "net.cfg")
    msg = str(e.value)
    for part in REJECTED[name]:
        assert part in msg, msg
    assert re.match(r".*net\.cfg:\d+: ", msg), "the error names file and line"


@pytest.mark.parametrize("name", _cases("meta.txt"))
def test_shapes_match_darknet(name):
    case = Case(name)
    g = case.graph()
    assert len(g) == len(case.meta)
    for layer, row in zip(g, case.meta):
        idx, kind, out = int(row[0]), row[1], tuple(int(v) for v in row[5:9])
        assert (layer.index, layer.kind) == (idx, kind)
        assert (layer.out_c, layer.out_h, layer.out_w, layer.outputs) == out, layer.describe()


@pytest.mark.parametrize("name", _cases("case.json"))
def test_params_match_case_json(name):
    case = Case(name)
    g = case.graph()
    for layer, ref in zip(g, case.json["layers"]):
        assert [[n, c] for n, c in layer.load_params()] == ref.get("params", []), layer.describe()
    if "weights_bytes" in case.json:
        assert Header(*case.json["header"]).size + 4 * g.nparams == case.json["weights_bytes"]


@pytest.mark.parametrize("name", _cases("meta.txt"))
def test_weights_header_and_resave(name):
    case = Case(name)
    g = case.graph()
    data = case.weights.read_bytes()
    w = read_weights(case.weights, g)
    if "header" in case.json:
        assert [w.header.major, w.header.minor, w.header.revision] == case.json["header"]
    assert weights_to_bytes(g, w, keep_header=True) == data
    resave = case.dir / "resave.weights"
    darknet_save = weights_to_bytes(g, w)
    if resave.exists():
        assert darknet_save == resave.read_bytes()
    elif w.header.seen_bytes == 8 and (w.header.major, w.header.minor, w.header.revision) == (0, 2, 0):
        assert darknet_save == data


def feed_and_run(net: Network, exact: bool, x: np.ndarray, refs: list[np.ndarray], i: int) -> np.ndarray:
    """Run layer i alone, its inputs set to darknet's dumped outputs."""
    plan = net.plan(exact, keep_all=True)
    layer = net.graph[i]
    for src in L.inputs_of(layer):
        if src < 0:
            plan.input[...] = x.reshape(plan.input.shape)
        else:
            plan.outputs[src][...] = refs[src].reshape(plan.outputs[src].shape)
    plan.steps[i]()
    return plan.outputs[i].reshape(layer.out_shape).copy()


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("name", _cases("layers", "input.npy"))
def test_layers_isolated(name, exact):
    case = Case(name)
    refs = case.layer_refs()
    net = _network(case, exact)
    x = np.load(case.dir / "input.npy")
    for i, layer in enumerate(net.graph):
        got = feed_and_run(net, exact, x, refs, i)
        assert got.shape == refs[i].shape
        if exact and layer.kind != "softmax":
            assert np.array_equal(got, refs[i], equal_nan=True), f"{layer.describe()} not bit-exact: " \
                f"max err {np.abs(got - refs[i]).max():.3g}"
        elif layer.kind == "softmax":
            np.testing.assert_allclose(got, refs[i], rtol=0, atol=1e-6, err_msg=layer.describe())
        else:
            assert rel_err(got, refs[i]) <= 1e-5, f"{layer.describe()}: {rel_err(got, refs[i]):.3g}"


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("name", _cases("input.npy", "output.npy"))
def test_chained_and_final(name, exact):
    case = Case(name)
    net = _network(case, exact)
    x = np.load(case.dir / "input.npy")
    refs = case.layer_refs()
    if refs is not None:
        outs = net.predict(x, all_layers=True)
        for layer, got, ref in zip(net.graph, outs, refs):
            if exact and layer.kind != "softmax":
                assert np.array_equal(got, ref, equal_nan=True), layer.describe()
            elif layer.kind == "softmax":
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=layer.describe())
            else:
                assert rel_err(got, ref) <= 5e-5, f"{layer.describe()}: {rel_err(got, ref):.3g}"
    ref = np.load(case.dir / "output.npy")
    got = net.predict(x)
    assert got.shape == ref.shape
    if ref.ndim == 1:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        top = np.argsort(-ref, kind="stable")[:5]
        assert np.array_equal(np.argsort(-got, kind="stable")[:5], top)
    else:
        assert rel_err(got, ref) <= (0 if exact else 5e-5)


@pytest.mark.parametrize("name", _cases("decoded_u8.npy"))
def test_image_preprocessing_bit_exact(name):
    case = Case(name)
    u8_path = case.dir / "decoded_u8.npy"
    u8 = np.load(u8_path)
    img = from_u8(u8)
    if (case.dir / "loaded.npy").exists():
        assert np.array_equal(img, np.load(case.dir / "loaded.npy"))
    prep = case.source.get("prep", "letterbox")
    h, w = u8.shape[:2]
    if prep == "resize_min":
        x = resize_min(img, 224)
        assert x.shape[1:] == (case.net["h"], case.net["w"])
        assert resize_min_size(w, h, 224) == (case.net["w"], case.net["h"])
    else:
        assert prep == "letterbox"
        x = letterbox(img, case.net["w"], case.net["h"])
        if (case.dir / "resized.npy").exists():
            nw, nh = letterbox_size(w, h, case.net["w"], case.net["h"])
            assert np.array_equal(resize_image(img, nw, nh), np.load(case.dir / "resized.npy"))
    assert np.array_equal(x, np.load(case.dir / "input.npy"))


@pytest.mark.parametrize("name", _cases("decoded_u8.npy", "darknet_stdout.txt"))
def test_image_case_top5_lines(name):
    """darknet's printed classify lines, reproduced from darknet's decoded pixels."""
    case = Case(name)
    out = case.dir / "darknet_stdout.txt"
    names = (CONFORMANCE.parent / "darknet" / "imagenet.shortnames.list").read_text().splitlines()[:1000]
    expect = [(float(p), n) for p, n in re.findall(r"^\s*([\d.]+)%: (.*)$", out.read_text(), re.M)]
    net = _network(case, exact=False)
    probs = net.predict(np.load(case.dir / "input.npy"))
    top = np.argsort(-probs, kind="stable")[:len(expect)]
    assert [names[i] for i in top] == [n for _, n in expect]
    for i, (p, _) in zip(top, expect):
        assert abs(float(np.float32(probs[i]) * np.float32(100)) - p) <= 0.01
