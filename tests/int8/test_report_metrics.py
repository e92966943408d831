"""``quantize --report``: ST's metrics (darknetpy.metrics) per layer and for the output, and ``--plot``."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from conftest import write
from darknetpy.cli import main
from darknetpy.metrics import Metrics
from test_quant import SMALL, small_net

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report():
    from darknetpy.int8 import quantize
    from darknetpy.int8.report import compare

    net = small_net()
    rng = np.random.default_rng(1)
    images = [rng.random((3, 8, 8), dtype=np.float32) for _ in range(3)]
    qnet = quantize(net, images)
    return net, qnet, images, compare(net, qnet, images)


def test_output_metrics_are_the_int8_output_against_the_float_one(report):
    net, qnet, images, rep = report
    expected = Metrics(classifier=True)
    for x in images:
        expected.add(qnet.predict(x), net.predict(x))          # predicted: int8 (dequantised); reference: float
    got = rep.output.result()
    for name, value in expected.result().items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert got["acc"] == rep.top1_agreement and got["samples"] == 3


def test_layer_metrics_agree_with_sqnr_and_cosine(report):
    _, _, _, rep = report
    for e in rep.layers:
        m = e.st.result()
        assert m["cos"] == pytest.approx(e.cosine, rel=1e-9)
        if math.isfinite(e.sqnr_db):
            assert e.sqnr_db == pytest.approx(-20 * math.log10(m["l2r"]), rel=1e-9)      # SQNR = -20 log10 l2r
        assert m["rmse"] <= e.max_error + 1e-12 and m["acc"] is None
    d = rep.to_dict()
    assert set(d["layers"][0]["metrics"]) >= {"rmse", "mae", "l2r", "mean", "std", "nse", "cos"}
    assert d["metrics"]["acc"] == rep.top1_agreement
    assert "l2r" in rep.table().splitlines()[0] and "nse" in rep.table().splitlines()[0]


def _quantize(tmp_path, *extra):
    cfg = write(tmp_path, "small.cfg", SMALL)
    weights = tmp_path / "small.weights"
    small_net().save_weights(weights)
    return main(["quantize", str(cfg), str(weights), "--calib-random", "2", *map(str, extra)])


def test_cli_prints_and_writes_the_metrics(tmp_path, capsys):
    assert _quantize(tmp_path, "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["metrics"]["samples"] == 2 and 0 <= d["metrics"]["acc"] <= 1
    assert all("l2r" in layer["metrics"] for layer in d["layers"])
    assert _quantize(tmp_path, "--report") == 0
    out = capsys.readouterr().out
    assert "output, ST's metrics (int8 against float): acc " in out and " l2r " in out and " cos " in out


def test_plot_draws_the_reports_numbers(tmp_path, capsys, monkeypatch):
    from darknetpy import plots

    drawn = []
    original = plots.plot_layers
    monkeypatch.setattr(plots, "plot_layers", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    png = tmp_path / "layers.png"
    assert _quantize(tmp_path, "--json", "--report", "--plot", png) == 0
    d = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == PNG
    (fig,) = drawn
    sqnr_ax, cos_ax = fig.axes
    heights = np.array([p.get_height() for p in sqnr_ax.patches])
    sqnr = np.array([layer["sqnr_db"] for layer in d["layers"]])
    finite = np.isfinite(sqnr)
    np.testing.assert_allclose(heights[finite], sqnr[finite], rtol=1e-12)
    (line,) = [ln for ln in cos_ax.lines if ln.get_gid() == "cosine"]
    np.testing.assert_allclose(line.get_ydata(), [layer["cosine"] for layer in d["layers"]], rtol=1e-12)
    # the three lowest-SQNR layers are the ones marked
    worst = sorted(np.argsort(sqnr, kind="stable")[:3])
    (marks,) = [ln for ln in cos_ax.lines if ln.get_gid() == "cosine-worst"]
    assert list(marks.get_xdata()) == worst
    from matplotlib.colors import to_rgba
    assert [i for i, p in enumerate(sqnr_ax.patches) if p.get_facecolor() == to_rgba(plots.WORST_COLOUR)] == worst
    assert sqnr_ax.get_legend().get_texts()[0].get_text() == "lowest SQNR (3)"


def test_plot_without_matplotlib_is_an_error_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)                # import matplotlib -> ImportError
    code = main(["quantize", str(tmp_path / "missing.cfg"), "w", "--calib-random", "1", "--plot",
                 str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 7, err                                              # UnsupportedError, not the cfg's error 3
    assert "--plot needs matplotlib" in err and "pip install 'darknetpy[plot]'" in err
    assert not (tmp_path / "x.png").exists()
