"""Shared test fixtures.

Reference data (darknet's outputs, the real weights, sample images) lives in ``../shared`` beside the
checkout and is read at run time, never committed. ``DARKNETPY_SHARED`` may point elsewhere. Tests that
need it are skipped, with the reason, only when that folder does not exist.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DARKNETPY_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"
DARKNET = SHARED / "darknet"
ARCH = SHARED / "arch"
CFG = REPO / "cfg"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data folder {SHARED} does not exist")


def _case_dirs() -> list[str]:
    if not CONFORMANCE.is_dir():
        return []
    return sorted(p.name for p in CONFORMANCE.iterdir() if p.is_dir() and not p.name.startswith("_"))


def conformance_cases() -> list[str]:
    """The classification cases (every folder but the ``det_*`` detection ones)."""
    return [n for n in _case_dirs() if not n.startswith("det_")]


def detection_cases() -> list[str]:
    """The ``det_*`` cases: darknet's detection path (../shared/specs/detection.md)."""
    return [n for n in _case_dirs() if n.startswith("det_")]


@pytest.fixture
def quiet():
    """Silence darknetpy's cfg warnings inside a test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|: darknet.md §9's per-layer error measure."""
    m = float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(a - ref).max()) / (m or 1.0) if ref.size else 0.0


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def quantize_static_st(net, calib, tmp_path) -> Path:
    """onnxruntime's quantize_static with ST's arguments (../shared/specs/stm32n6.md §2.2: quant_pre_process, then
    MinMax, QDQ, per-channel symmetric int8 weights, asymmetric int8 activations) on darknetpy's float export of
    ``net``, calibrated on the (C, H, W) arrays ``calib``. Returns the path of the quantised model."""
    import warnings

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    from darknetpy.export.onnx_float import export_onnx

    f, pre, q = tmp_path / "float.onnx", tmp_path / "float_pre.onnx", tmp_path / "float_st_int8.onnx"
    export_onnx(net.graph, net.weights, f)
    quant_pre_process(str(f), str(pre), skip_optimization=False, skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(q), Reader(), calibrate_method=CalibrationMethod.MinMax,
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return q


@pytest.fixture(scope="session")
def det_case(tmp_path_factory):
    """det_case(name) -> (Network, network input, detections.json record, image size) of a ``det_*`` case, the
    weights decompressed from net.weights.xz into a temporary folder once per session (never into the tree)."""
    import json
    import lzma

    from darknetpy.graph import load_graph
    from darknetpy.network import Network
    from darknetpy.weights import read_weights

    root = tmp_path_factory.mktemp("det_cases")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            d = CONFORMANCE / name
            path = root / f"{name}.weights"
            path.write_bytes(lzma.open(d / "net.weights.xz").read())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = load_graph(d / "net.cfg")
            rec = json.loads((d / "detections.json").read_text())
            cache[name] = (Network(g, read_weights(path, g)), np.load(d / "input.npy"), rec,
                           (rec["image_w"], rec["image_h"]))
        return cache[name]
    return get
