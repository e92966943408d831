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
    err = capsys.readouterr().err
    assert "argument --percentile: the percentile must be above 50 and at most 100, got 150\n" in err


# -- calibration folders with images that cannot be used ----------------------------------------------------------

def _png(path, w, h):
    from PIL import Image
    Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def calib_dir(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    _png(d / "a_good.png", 12, 10)
    (d / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _png(d / "c_thin.png", 1000, 1)                  # letterboxed into 8x8 it would be 8x0
    return d


def test_calibration_skips_unusable_images_with_a_warning(small, calib_dir):
    from darknetpy.int8.calibrate import build_qgraph
    with pytest.warns(UserWarning) as rec:
        qg = build_qgraph(small.graph, small.weights, calib_dir)
    msgs = [str(w.message) for w in rec]
    assert any(m.startswith(f"{calib_dir / 'b_corrupt.jpg'}: ") and "skipped" in m for m in msgs), msgs
    assert any(m.startswith(f"{calib_dir / 'c_thin.png'}: ") and "too thin to letterbox" in m for m in msgs), msgs
    assert qg.info["calibration_images"] == 1


def test_calibration_with_no_usable_image_names_the_folder(small, calib_dir):
    from darknetpy.int8.calibrate import build_qgraph
    (calib_dir / "a_good.png").unlink()
    with pytest.warns(UserWarning), pytest.raises(QuantizeError) as e:
        build_qgraph(small.graph, small.weights, calib_dir)
    assert str(e.value) == f"calibration directory {calib_dir}: none of the 2 images can be used (each is named " \
                           "in a warning)"


def test_cli_quantize_goes_on_past_unusable_images(small, calib_dir, tmp_path, capsys):
    from darknetpy.cli import main
    small.save_weights(tmp_path / "n.weights")
    code = main(["quantize", small.graph.path, str(tmp_path / "n.weights"), "--calib", str(calib_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"darknetpy: warning: {calib_dir / 'b_corrupt.jpg'}: " in err and "Traceback" not in err
    assert f"darknetpy: warning: {calib_dir / 'c_thin.png'}: " in err
    assert "minmax calibration on 1 image)" in out
    (calib_dir / "a_good.png").unlink()
    code = main(["quantize", small.graph.path, str(tmp_path / "n.weights"), "--calib", str(calib_dir)])
    err = capsys.readouterr().err
    assert code == QuantizeError.exit_code
    assert err.splitlines()[-1] == f"darknetpy: error: calibration directory {calib_dir}: none of the 2 images " \
                                   "can be used (each is named in a warning)"


# -- numpy's floating-point warnings while quantizing: one per layer, naming it ------------------------------------

def test_quantizing_out_of_range_parameters_warns_by_layer(tmp_path):
    import warnings

    from darknetpy.int8.calibrate import build_qgraph
    from darknetpy.network import load
    net = load(write(tmp_path, "bn.cfg", "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nbatch_normalize=1\n"
                                         "filters=4\nsize=3\npad=1\nactivation=leaky\n[connected]\noutput=3\n"
                                         "activation=linear\n[softmax]\n"))
    net.weights.params[0]["rolling_variance"][1] = -1.0          # sqrt: NaN
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        build_qgraph(net.graph, net.weights, 1)
    assert [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)] == []
    said = [str(w.message) for w in rec]
    assert said and all(m.startswith(("bn.cfg:5 layer 0 [convolutional]: numpy: ",
                                      "bn.cfg:11 layer 1 [connected]: numpy: ")) for m in said), said
    assert any("while folding its batch norm" in m for m in said) and any("while quantizing it" in m for m in said)
