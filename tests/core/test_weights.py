"""The .weights format: headers of every version, file order, exact sizes, round trips, errors."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from conftest import CFG, DARKNET, needs_shared
from darknetpy.errors import WeightsError
from darknetpy.graph import graph_from_text, load_graph
from darknetpy.weights import Header, expected_bytes, read_weights, save_weights, weights_from_bytes, weights_to_bytes

CFG_TEXT = """[net]
height=4
width=5
channels=3
[convolutional]
batch_normalize=1
filters=2
size=3
pad=1
activation=leaky
[connected]
output=7
activation=leaky
[connected]
output=6
batch_normalize=1
activation=logistic
[softmax]
"""


def graph():
    return graph_from_text(CFG_TEXT, "t.cfg")


def file_bytes(header: bytes, floats: np.ndarray) -> bytes:
    return header + floats.astype("<f4").tobytes()


def test_header_versions():
    assert Header(0, 1, 0).seen_bytes == 4 and Header(0, 1, 0).size == 16
    assert Header(0, 2, 0).seen_bytes == 8 and Header(0, 2, 0).size == 20
    assert Header(1, 0, 0).seen_bytes == 8
    assert Header(0, 1001, 0).seen_bytes == 4 and Header(0, 1001, 0).transpose
    assert Header(1001, 0, 0).transpose and not Header(0, 2, 0).transpose


def test_file_order_conv_bn_before_weights_connected_bn_after():
    g = graph()
    n = (g.nparams)
    vals = np.arange(n, dtype=np.float32)
    w = weights_from_bytes(file_bytes(struct.pack("<iiiQ", 0, 2, 0, 5), vals), g)
    conv, fc1, fc2 = w.params[0], w.params[1], w.params[2]
    assert conv["biases"].tolist() == [0, 1] and conv["scales"].tolist() == [2, 3]
    assert conv["rolling_mean"].tolist() == [4, 5] and conv["rolling_variance"].tolist() == [6, 7]
    assert conv["weights"].shape == (2, 3, 3, 3) and conv["weights"].ravel()[0] == 8
    off = 8 + 54
    assert fc1["biases"][0] == off and fc1["weights"].shape == (7, 40) and fc1["weights"][0, 1] == off + 8
    off += 7 + 280
    assert fc2["biases"][0] == off and fc2["weights"][0, 0] == off + 6
    assert fc2["scales"][0] == off + 6 + 42          # BN block after the weights for connected


def test_v01_int32_seen_and_transposed_connected():
    g = graph()
    rng = np.random.default_rng(0)
    ref = weights_from_bytes(file_bytes(struct.pack("<iiiQ", 0, 2, 0, 9), rng.standard_normal(g.nparams)), g)
    # write the same parameters with a transposing v0.1001 header (int32 seen)
    body = []
    for layer, p in zip(g, ref.params):
        for name, _ in layer.params():
            a = p[name]
            if name == "weights" and layer.kind == "connected":
                a = a.T
            body.append(a.ravel())
    data = file_bytes(struct.pack("<iiii", 0, 1001, 0, 9), np.concatenate(body))
    w = weights_from_bytes(data, g)
    assert w.header.seen == 9 and w.header.seen_bytes == 4
    for a, b in zip(w.params, ref.params):
        for k in a:
            assert np.array_equal(a[k], b[k])
    assert weights_to_bytes(g, w, keep_header=True) == data               # byte-identical round trip
    resaved = weights_to_bytes(g, w)                                       # darknet's save: 0.2.0, untransposed
    assert resaved[:20] == struct.pack("<iiiQ", 0, 2, 0, 9)
    assert weights_from_bytes(resaved, g).params[1]["weights"].tolist() == ref.params[1]["weights"].tolist()


def test_short_file_names_layer_and_offset():
    g = graph()
    data = file_bytes(struct.pack("<iiiQ", 0, 2, 0, 0), np.zeros(g.nparams - 10))
    with pytest.raises(WeightsError) as e:
        weights_from_bytes(data, g, "m.weights")
    m = str(e.value)
    assert "too short" in m and f"{len(data):,} bytes" in m
    assert f"needs {expected_bytes(g, Header()):,}" in m
    assert "layer 2 [connected]" in m and "t.cfg:14" in m and "'rolling_mean'" in m and "bytes 1,632..1,656" in m
    assert "mismatched" in m


def test_long_file_reports_leftover_bytes_and_offset():
    g = graph()
    data = file_bytes(struct.pack("<iiiQ", 0, 2, 0, 0), np.zeros(g.nparams + 3))
    with pytest.raises(WeightsError) as e:
        weights_from_bytes(data, g, "m.weights")
    m = str(e.value)
    assert "too long" in m and "12 bytes (3 floats) are left over" in m
    assert f"byte offset {expected_bytes(g, Header()):,}" in m and "layer 2 [connected]" in m


def test_header_version_confusion_hint():
    g = graph()
    # a v0.2 body with a v0.1 header: 4 bytes too many
    data = struct.pack("<iiiQ", 0, 1, 0, 0) + np.zeros(g.nparams, "<f4").tobytes()
    with pytest.raises(WeightsError, match="4-byte 'seen'|8-byte 'seen'"):
        weights_from_bytes(data, g)


def test_not_a_weights_file(tmp_path):
    g = graph()
    with pytest.raises(WeightsError, match="too short for a darknet weights header"):
        weights_from_bytes(b"abc", g)
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    with pytest.raises(WeightsError, match="looks like an image"):
        weights_from_bytes(png, g)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_weights(tmp_path / "missing.weights", g)


def test_dontload_numload_dontloadscales_change_the_byte_count():
    text = CFG_TEXT.replace("activation=leaky\n[connected]", "activation=leaky\ndontloadscales=1\n[connected]", 1)
    g = graph_from_text(text)
    assert [n for n, _ in g[0].load_params()] == ["biases", "weights"]
    assert expected_bytes(g) == expected_bytes(graph()) - 4 * 6
    text = CFG_TEXT.replace("filters=2", "filters=2\nnumload=1", 1)
    g = graph_from_text(text)
    assert dict(g[0].load_params()) == {"biases": 1, "scales": 1, "rolling_mean": 1, "rolling_variance": 1,
                                        "weights": 27}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w = weights_from_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + np.ones(expected_bytes(g) // 4 - 5, "<f4").tobytes(), g)
    assert any("numload=1" in str(r.message) for r in rec)
    assert w.params[0]["weights"][1].sum() == 0 and w.params[0]["weights"][0].sum() == 27
    g = graph_from_text(CFG_TEXT.replace("output=7", "output=7\ndontload=1"))
    assert g[1].load_params() == []


def test_dontsave_skips_layer_on_save():
    g = graph_from_text(CFG_TEXT.replace("output=7", "output=7\ndontsave=1"))
    w = weights_from_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + np.zeros(g.nparams, "<f4").tobytes(), g)
    assert len(weights_to_bytes(g, w)) == 20 + 4 * (g.nparams - g[1].nparams)


def test_save_is_atomic_and_reports_unwritable(tmp_path):
    g = graph()
    w = weights_from_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + np.zeros(g.nparams, "<f4").tobytes(), g)
    save_weights(tmp_path / "out.weights", g, w)
    assert (tmp_path / "out.weights").stat().st_size == expected_bytes(g)
    with pytest.raises(WeightsError, match="cannot write weights"):
        save_weights(tmp_path / "no" / "dir" / "out.weights", g, w)


@needs_shared
def test_real_tiny_weights_round_trip():
    g = load_graph(CFG / "tiny.cfg")
    path = DARKNET / "tiny.weights"
    w = read_weights(path, g)
    assert (w.header.major, w.header.minor, w.header.revision, w.header.seen) == (0, 1, 0, 204_800_000)
    assert weights_to_bytes(g, w, keep_header=True) == path.read_bytes()
    assert len(weights_to_bytes(g, w)) == 4_185_972
