"""darknet's detection cases (../shared/conformance/det_*) against darknetpy, layer by layer.

Every ``det_*`` folder found is tested (../shared/specs/detection.md explains each one). The weights are
kept xz-compressed there; each test module run decompresses them once into a temporary folder. Per case:

* shapes of every layer equal darknet's ``meta.txt`` (its ``none`` rows are [upsample]s); parameter names
  and counts equal ``case.json``; the decompressed .weights is read and re-saved byte for byte;
* exact mode: every layer identical to darknet's dump (the logistic/softmax heads [region], [yolo],
  [detection] within 1e-6), both fed darknet's input of that layer (isolated) and chained from the network
  input, and for the cases that also ran ``detector test`` on another input (``detector_test/``), that run's
  detection layer too;
* fast mode: per layer |err| <= 1e-5 max|ref| isolated and 5e-5 max|ref| chained (darknet.md §9, detection.md
  §11.2);
* ``darknetpy summary`` names every layer as darknet's own table does;
* on glibc/x86-64 (the C library and the CPU family darknet ran on), the heads are bit-identical too: the
  softmax reproduces libmvec's vector expf and calls the C library's scalar expf (kernels/detection.py).
"""

from __future__ import annotations

import hashlib
import lzma
import platform
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import CONFORMANCE, detection_cases, rel_err
from darknetpy import layers as L
from darknetpy.network import Network
from darknetpy.summary import SUMMARY_ROWS, summary_table
from darknetpy.weights import Header, read_weights, weights_to_bytes
from test_conformance import Case, feed_and_run

HEADS = ("region", "yolo", "detection")      # logistic / softmax outputs: compared within 1e-6
META_KIND = {"none": "upsample"}             # darknet's get_layer_string has no name for [upsample]
GLIBC_X86 = platform.libc_ver()[0] == "glibc" and platform.machine() in ("x86_64", "AMD64")

CASES = detection_cases() or [pytest.param("none", marks=pytest.mark.skip(reason=f"no det_* cases at {CONFORMANCE}"))]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """name -> the case's .weights, decompressed from net.weights.xz into a temporary folder (once)."""
    root = tmp_path_factory.mktemp("det_weights")

    def get(name: str) -> Path:
        path = root / f"{name}.weights"
        if not path.exists():
            path.write_bytes(lzma.open(CONFORMANCE / name / "net.weights.xz").read())
        return path
    return get


_NETWORKS: dict = {}


def _network(name: str, weights_file, exact: bool) -> Network:
    key = (name, exact)
    if key not in _NETWORKS:
        g = Case(name).graph()
        _NETWORKS[key] = Network(g, read_weights(weights_file(name), g), exact=exact)
    return _NETWORKS[key]


def _compare(layer, got: np.ndarray, ref: np.ndarray, exact: bool, tolerance: float) -> None:
    assert got.shape == ref.shape, f"{layer.describe()}: shape {got.shape}, darknet {ref.shape}"
    if layer.kind in HEADS:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 if exact else tolerance * np.abs(ref).max(),
                                   err_msg=layer.describe())
    elif exact:
        assert np.array_equal(got, ref, equal_nan=True), \
            f"{layer.describe()} not bit-exact: max err {np.abs(got - ref).max():.3g}"
    else:
        assert rel_err(got, ref) <= tolerance, f"{layer.describe()}: {rel_err(got, ref):.3g}"


@pytest.mark.parametrize("name", CASES)
def test_shapes_match_darknet(name):
    case = Case(name)
    g = case.graph()
    assert len(g) == len(case.meta)
    for layer, row in zip(g, case.meta):
        idx, kind, out = int(row[0]), META_KIND.get(row[1], row[1]), tuple(int(v) for v in row[5:9])
        assert (layer.index, layer.kind) == (idx, kind)
        assert (layer.out_c, layer.out_h, layer.out_w, layer.outputs) == out, layer.describe()


@pytest.mark.parametrize("name", CASES)
def test_params_and_weights_file(name, weights_file):
    case = Case(name)
    g = case.graph()
    for layer, ref in zip(g, case.json["layers"]):
        assert [[n, c] for n, c in layer.load_params()] == ref.get("params", []), layer.describe()
    header = Header(*case.json["header"])
    assert header.size + 4 * g.nparams == case.json["weights_bytes"]
    assert g.nparams == case.json["weights_floats"]
    data = weights_file(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == case.json["weights_sha256"]
    w = read_weights(weights_file(name), g)
    assert weights_to_bytes(g, w, keep_header=True) == data
    assert weights_to_bytes(g, w) == data                     # header 0.2.0 with a 64-bit seen: darknet's own


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("name", CASES)
def test_layers_isolated(name, exact, weights_file):
    case = Case(name)
    refs = case.layer_refs()
    net = _network(name, weights_file, exact)
    x = np.load(case.dir / "input.npy")
    for i, layer in enumerate(net.graph):
        _compare(layer, feed_and_run(net, exact, x, refs, i), refs[i], exact, 1e-5)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("name", CASES)
def test_chained_and_final(name, exact, weights_file):
    case = Case(name)
    net = _network(name, weights_file, exact)
    outs = net.predict(np.load(case.dir / "input.npy"), all_layers=True)
    refs = case.layer_refs()
    assert len(outs) == len(refs)
    for layer, got, ref in zip(net.graph, outs, refs):
        _compare(layer, got, ref, exact, 5e-5)
    # the network output (what the box decoding reads) is the last layer's
    _compare(net.graph.output_layer, net.predict(np.load(case.dir / "input.npy")), np.load(case.dir / "output.npy"),
             exact, 5e-5)
    other = case.dir / "detector_test"                         # the same net run by `detector test`
    if other.is_dir():
        for ref_file in sorted((other / "layers").glob("*.npy")):
            i = int(ref_file.name[:3])
            got = net.predict(np.load(other / "input.npy"), all_layers=True)[i]
            _compare(net.graph[i], got, np.load(ref_file), exact, 5e-5)


@pytest.mark.skipif(not GLIBC_X86, reason="darknet's expf bits are those of glibc on x86-64")
@pytest.mark.parametrize("name", CASES)
def test_heads_bit_exact(name, weights_file):
    """Exact mode reproduces darknet's [region]/[yolo]/[detection] outputs bit for bit, fed darknet's input."""
    case = Case(name)
    refs = case.layer_refs()
    net = _network(name, weights_file, True)
    x = np.load(case.dir / "input.npy")
    heads = [layer for layer in net.graph if layer.kind in HEADS]
    assert heads
    for layer in heads:
        got = feed_and_run(net, True, x, refs, layer.index)
        bad = int((got != refs[layer.index]).sum())
        assert bad == 0, f"{layer.describe()}: {bad} of {got.size} values differ from darknet's"


@pytest.mark.parametrize("name", CASES)
def test_summary_names_layers_like_darknets_table(name):
    """``darknetpy summary`` calls each layer what darknet's own table (darknet_stderr.txt) calls it: a
    [region] is "detection", a [detection] "Detection Layer", a [reorg] shows its stride as "/ s"."""
    case = Case(name)
    g = case.graph()
    rows = [line for line in (case.dir / "darknet_stderr.txt").read_text().splitlines()
            if re.match(r"\s+\d+ \S", line)]
    assert len(rows) == len(g)
    table = summary_table(g).splitlines()[1:len(g) + 1]
    for layer, row, ours in zip(g, rows, table):
        words = row.split()
        kind = "Detection Layer" if words[1] == "Detection" else words[1]
        ours_kind, _, size = L.dispatch(SUMMARY_ROWS, layer)(layer)
        assert ours_kind == kind, f"{layer.describe()}: darknet prints {row.strip()!r}"
        assert ours.split()[:len(kind.split()) + 1] == [str(layer.index), *kind.split()]
        if kind == "reorg":
            assert size.split() == words[2:4]                  # "/", stride
