"""The heads description read from where an exported model keeps it, and raw tensors matched to the heads
(darknetpy/headspec.py). The ONNX side (a real exported ModelProto and its path): tests/export/test_detectors.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CONFORMANCE, needs_shared
from darknetpy import boxes as B
from darknetpy import headspec as H
from darknetpy.errors import DarknetpyError
from darknetpy.graph import load_graph

pytestmark = needs_shared


def _desc():
    return B.heads_from_graph(load_graph(CONFORMANCE / "det_yolov3_tiny_dog" / "net.cfg"))


def test_output_names_and_metadata_dict():
    d = _desc()
    assert [H.output_name(h) for h in d["heads"]] == ["l16_yolo", "l23_yolo"]
    meta = {"source_cfg": "net.cfg", H.METADATA_KEY: json.dumps(H.with_outputs(d))}
    got = H.describe(meta)                              # onnxruntime's custom_metadata_map looks like this
    assert [h["output"] for h in got["heads"]] == ["l16_yolo", "l23_yolo"]
    assert {k: v for k, v in got.items() if k != "heads"} == {k: v for k, v in d.items() if k != "heads"}
    with pytest.raises(DarknetpyError, match="no 'darknetpy_heads' metadata: not a detector exported by darknetpy"):
        H.describe_model({"source_cfg": "tiny.cfg", "classes": "1000"})
    with pytest.raises(DarknetpyError, match="darknetpy_heads: not valid JSON"):
        H.describe({H.METADATA_KEY: "{nope"})
    with pytest.raises(DarknetpyError, match="missing.onnx: no such ONNX file"):
        H.describe("missing.onnx")


def test_arrange_by_name_by_size_and_channel_last():
    d = _desc()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((255, 5, 5)).astype(np.float32)
    b = rng.standard_normal((255, 10, 10)).astype(np.float32)
    # by name, in any order, batch dimension and all
    got = H.arrange(d, [("l23_yolo", b[None]), ("l16_yolo", a[None])])
    assert np.array_equal(got[0], a) and np.array_equal(got[1], b)
    got = H.arrange(d, {"l23_yolo": b, "l16_yolo": a, "other": a})
    assert got[0] is a and got[1] is b
    # a board that renamed its outputs and returns them channel-last: matched by size, in order
    got = H.arrange(d, [("output_1", a.transpose(1, 2, 0)[None].astype(np.float64)),
                        ("output_2", b.transpose(1, 2, 0)[None])])
    assert np.array_equal(got[0], a) and np.array_equal(got[1], b) and got[0].dtype == np.float32
    got = H.arrange(d, [("x", b.reshape(-1)), ("y", a.reshape(-1))])        # flat: by size, whatever the order
    assert np.array_equal(got[0], a) and np.array_equal(got[1], b)
    with pytest.raises(DarknetpyError, match=r"no output of 25500 values for layer 23 \[yolo\].*output_1 \(6375,\)"):
        H.arrange(d, [("output_1", a.reshape(-1))])
    with pytest.raises(DarknetpyError, match="neither"):
        H.arrange(d, [("l16_yolo", a.reshape(5, 255, 5)), ("l23_yolo", b)])
    with pytest.raises(DarknetpyError, match="no tensor named l23_yolo"):
        H.arrange(d, {"l16_yolo": a})
    # decode accepts every form
    size = (768, 576)
    ref = B.decode(d, [a, b], size, 0.1)
    assert B.decode(d, {"l16_yolo": a, "l23_yolo": b}, size, 0.1) == ref
    assert B.decode(d, [("output_2", b.transpose(1, 2, 0)), ("output_1", a.transpose(1, 2, 0))], size, 0.1) == ref
