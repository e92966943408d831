"""Bad input to the int8 stage (issue #16, round 2): writes that fail half-way, calibration folders with
images that cannot be used, and calibration options outside their range."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import write
from darknetpy.errors import QuantizeError

CFG_TEXT = "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n" \
           "[avgpool]\n[softmax]\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from darknetpy.network import load
    return load(write(tmp_path_factory.mktemp("net"), "n.cfg", CFG_TEXT))


@pytest.fixture(scope="module")
def qgraph(small):
    from darknetpy.int8.calibrate import build_qgraph
    return build_qgraph(small.graph, small.weights, 2)


# -- QGraph.save: no .part left behind ------------------------------------------------------------------------

def _half_then(exc):
    """An np.savez stand-in that writes a few bytes, then raises ``exc``."""
    def savez(file, *a, **k):
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
        else:
            file.write(b"PK\x03\x04 half a zip")
        raise exc
    return savez


@pytest.mark.parametrize("exc,expect", [(KeyboardInterrupt(), KeyboardInterrupt),
                                        (OSError(28, "No space left on device"), QuantizeError),
                                        (RuntimeError("bug"), RuntimeError)])
def test_interrupted_or_failed_qgraph_save_leaves_no_part(qgraph, tmp_path, monkeypatch, exc, expect):
    monkeypatch.setattr(np, "savez", _half_then(exc))
    out = tmp_path / "q.npz"
    with pytest.raises(expect) as e:
        qgraph.save(out)
    if expect is QuantizeError:
        assert str(e.value) == f"{out}: cannot write the int8 graph: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_qgraph_save_part_directory_is_a_quantize_error(qgraph, tmp_path):
    (tmp_path / "q.npz.part").mkdir()
    with pytest.raises(QuantizeError, match=r"q\.npz\.part is a directory"):
        qgraph.save(tmp_path / "q.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.npz.part"]


def test_qgraph_save_and_load_round_trip(qgraph, tmp_path):
    from darknetpy.int8.qgraph import QGraph
    qgraph.save(tmp_path / "q")                      # no extension added (a file object is written)
    assert [p.name for p in tmp_path.iterdir()] == ["q"]
    back = QGraph.load(tmp_path / "q")
    assert [ql.out for ql in back] == [ql.out for ql in qgraph]


# -- the percentile option: one rule, in the library and on the command line -------------------------------------

@pytest.mark.parametrize("p", [150, float("nan"), float("inf"), -1, 50, 0, "x", None])
def test_percentile_out_of_range_is_a_quantize_error(small, p):
    from darknetpy.int8 import quantize
    from darknetpy.int8.calibrate import build_qgraph
    with pytest.raises(QuantizeError, match="the percentile must be"):
        build_qgraph(small.graph, small.weights, 1, method="percentile", percentile=p)
    with pytest.raises(QuantizeError, match="the percentile must be"):
        quantize(small, 1, method="minmax", percentile=p)   # checked whatever the method


def test_choose_range_checks_the_percentile():
    from darknetpy.int8.calibrate import TensorStats, choose_range
    st = TensorStats(np.random.default_rng(0))
    st.add(np.arange(10, dtype=np.float32))
    assert choose_range(st, "percentile", 100) == (0.0, 9.0)
    with pytest.raises(QuantizeError, match="above 50 and at most 100, got 150"):
        choose_range(st, "percentile", 150)


def test_cli_percentile_uses_the_library_rule(capsys):
    from darknetpy.cli import main
    with pytest.raises(SystemExit) as e:
        main(["quantize", "cfg/tiny.cfg", "w.weights", "--calib-random", "2", "--percentile", "150"])
    assert e.value.code == 2
    assert "argument --percentile: the percentile must be above 50 and at most 100, got 150\n" in capsys.readouterr().err
