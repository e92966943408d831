"""Inputs that are not files, and writes that fail half-way (fuzzing findings).

A cfg, weights or image "file" that is a FIFO, /dev/zero or /dev/urandom never ends (or, for a FIFO without a
writer, never starts): it is refused with the error class of what it should have been, naming the path,
without opening it. Writes go through ``OUT.part``; any failure or interrupt removes it.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest

from conftest import write
from darknetpy.errors import CfgError, ExportError, ImageError, WeightsError

CFG_TEXT = "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n" \
           "[avgpool]\n[softmax]\n"

needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


def _in_thread(fn, timeout=10.0):
    """Run ``fn`` in a thread and return what it raised; fail (instead of hanging) if it blocks."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as e:          # noqa: BLE001 - handed back to the test
            box["e"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked for {timeout} s"
    return box.get("e")


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "pipe"
    os.mkfifo(p)                            # opened by no writer: open() for reading would block
    return p


@pytest.fixture
def graph(tmp_path):
    from darknetpy.graph import load_graph
    return load_graph(write(tmp_path, "n.cfg", CFG_TEXT))


# -- C: files that never end ----------------------------------------------------------------------------------

@needs_posix
def test_cfg_fifo_is_refused_without_blocking(fifo):
    from darknetpy.graph import load_graph
    e = _in_thread(lambda: load_graph(fifo))
    assert isinstance(e, CfgError) and str(e) == f"{fifo}: cannot read cfg file: it is a FIFO (named pipe), not a " \
                                                  "regular file"


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_cfg_device_is_refused(dev):
    from darknetpy.graph import load_graph
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    e = _in_thread(lambda: load_graph(dev))
    assert isinstance(e, CfgError) and str(e).startswith(f"{dev}: cannot read cfg file: it is a character device")


def test_cfg_directory_is_refused(tmp_path):
    from darknetpy.graph import load_graph
    with pytest.raises(CfgError, match="cannot read cfg file: it is a directory"):
        load_graph(tmp_path)


def test_cfg_larger_than_any_cfg_is_refused(tmp_path, monkeypatch):
    from darknetpy import cfg
    from darknetpy.graph import load_graph
    monkeypatch.setattr(cfg, "CFG_MAX_BYTES", 64)
    p = write(tmp_path, "big.cfg", CFG_TEXT + "#" * 100 + "\n")
    with pytest.raises(CfgError, match=r"big\.cfg: the file is larger than"):
        load_graph(p)


@needs_posix
def test_weights_fifo_is_refused_without_blocking(fifo, graph):
    from darknetpy.weights import read_weights
    e = _in_thread(lambda: read_weights(fifo, graph))
    assert isinstance(e, WeightsError) and str(e) == f"{fifo}: cannot read weights file: it is a FIFO (named pipe), " \
                                                      "not a regular file"


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_weights_device_is_refused(dev, graph):
    from darknetpy.weights import read_weights
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    e = _in_thread(lambda: read_weights(dev, graph))
    assert isinstance(e, WeightsError) and "it is a character device" in str(e)


def test_weights_read_is_bounded_by_the_expected_size(tmp_path, graph, monkeypatch):
    """A huge weights file is not read into memory to find out that it is too long."""
    from darknetpy import cfg
    from darknetpy.weights import expected_bytes, random_params, read_weights, weights_to_bytes
    p = tmp_path / "long.weights"
    data = weights_to_bytes(graph, random_params(graph))
    with open(p, "wb") as f:
        f.write(data)
        f.truncate(1 << 30)                  # sparse: 1 GiB on disk for nothing
    asked = []
    real = cfg.read_input_file

    def spy(path, *, limit, error, what):
        asked.append(limit)
        return real(path, limit=limit, error=error, what=what)
    monkeypatch.setattr(cfg, "read_input_file", spy)
    with pytest.raises(WeightsError) as e:
        read_weights(p, graph)
    assert asked and max(asked) <= expected_bytes(graph) + 1
    need = len(data)
    assert f"the file is too long: {(1 << 30) - need:,} bytes" in str(e.value)
    assert f"the file has {1 << 30:,}" in str(e.value)


@needs_posix
def test_image_fifo_is_refused_without_blocking(fifo):
    from darknetpy.image import load_image
    e = _in_thread(lambda: load_image(fifo))
    assert isinstance(e, ImageError) and str(e) == f"{fifo}: cannot read image file: it is a FIFO (named pipe), not " \
                                                   "a regular file"


@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_image_device_is_refused(dev):
    from darknetpy.image import load_image
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    e = _in_thread(lambda: load_image(dev))
    assert isinstance(e, ImageError) and "it is a character device" in str(e)


@needs_posix
def test_cli_summary_refuses_a_fifo(fifo, capsys):
    from darknetpy.cli import main
    box = {}
    _in_thread(lambda: box.setdefault("code", main(["summary", str(fifo)])))
    out, err = capsys.readouterr()
    assert box["code"] == CfgError.exit_code
    assert err == f"darknetpy: error: {fifo}: cannot read cfg file: it is a FIFO (named pipe), not a regular file\n"


# -- D: leftovers of failed or interrupted writes ----------------------------------------------------------------

@pytest.fixture
def net(tmp_path):
    from darknetpy.network import load
    return load(write(tmp_path, "n.cfg", CFG_TEXT))


def test_export_part_directory_is_an_export_error(net, tmp_path, capsys):
    from darknetpy.cli import main
    from darknetpy.export.onnx_float import export_onnx
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.part").mkdir()
    with pytest.raises(ExportError, match=r"m\.onnx\.part is a directory"):
        export_onnx(net.graph, net.weights, out)
    assert (tmp_path / "m.onnx.part").is_dir() and not out.exists()
    net.save_weights(tmp_path / "n.weights")
    code = main(["export", str(tmp_path / "n.cfg"), str(tmp_path / "n.weights"), "--onnx", str(out)])
    err = capsys.readouterr().err
    assert code == ExportError.exit_code and "Traceback" not in err
    assert err.startswith(f"darknetpy: error: {out}: cannot write the ONNX model: {out}.part is a directory")


def _half_then(exc):
    """An onnx.save stand-in that writes half a file, then raises ``exc``."""
    def save(model, path, *a, **k):
        with open(path, "wb") as f:
            f.write(model.SerializeToString()[:100])
        raise exc
    return save


@pytest.mark.parametrize("exc,expect", [(KeyboardInterrupt(), KeyboardInterrupt),
                                        (OSError(28, "No space left on device"), ExportError),
                                        (RuntimeError("bug"), RuntimeError)])
def test_interrupted_or_failed_onnx_save_leaves_no_part(net, tmp_path, monkeypatch, exc, expect):
    import onnx

    from darknetpy.export.onnx_float import export_onnx
    monkeypatch.setattr(onnx, "save", _half_then(exc))
    out = tmp_path / "m.onnx"
    with pytest.raises(expect):
        export_onnx(net.graph, net.weights, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.cfg"]


def test_weights_part_directory_is_a_weights_error(net, tmp_path):
    (tmp_path / "w.weights.part").mkdir()
    with pytest.raises(WeightsError, match=r"w\.weights\.part is a directory"):
        net.save_weights(tmp_path / "w.weights")
    assert (tmp_path / "w.weights.part").is_dir() and not (tmp_path / "w.weights").exists()


class _HalfFile:
    """A file whose write() stores half of the data, then raises."""

    def __init__(self, path, exc):
        self.f = open(path, "wb")
        self.exc = exc

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise self.exc

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.f.close()


@pytest.mark.parametrize("exc,expect", [(KeyboardInterrupt(), KeyboardInterrupt),
                                        (OSError(28, "No space left on device"), WeightsError)])
def test_interrupted_or_failed_weights_write_leaves_no_part(net, tmp_path, monkeypatch, exc, expect):
    from darknetpy import weights
    monkeypatch.setattr(weights, "open", lambda path, mode="r": _HalfFile(path, exc), raising=False)
    with pytest.raises(expect) as e:
        net.save_weights(tmp_path / "w.weights")
    if expect is WeightsError:
        assert str(e.value) == f"{tmp_path / 'w.weights'}: cannot write weights: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.cfg"]


def test_weights_written_over_a_directory_is_a_weights_error(net, tmp_path):
    (tmp_path / "w.weights").mkdir()
    with pytest.raises(WeightsError, match="cannot write weights"):
        net.save_weights(tmp_path / "w.weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.cfg", "w.weights"]


# -- fetch: a mirror "file" that never ends, a source that sends too much ----------------------------------------

@needs_posix
def test_fetch_from_a_mirror_fifo_is_refused_without_blocking(tmp_path):
    from darknetpy.errors import FetchError
    from darknetpy.fetch import ASSETS, fetch_one
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.mkfifo(mirror / "dog.jpg")
    e = _in_thread(lambda: fetch_one(ASSETS["dog.jpg"], tmp_path / "out", mirror=str(mirror)))
    assert isinstance(e, FetchError) and "not a regular file" in str(e)
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_stops_a_source_that_sends_too_much(tmp_path, monkeypatch):
    from darknetpy import fetch
    from darknetpy.errors import FetchError
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dog.jpg").write_bytes(b"x" * 5000)
    monkeypatch.setattr(fetch, "MAX_DOWNLOAD_BYTES", 4096)
    with pytest.raises(FetchError, match="more than 0 MiB, far more than dog.jpg can be"):
        fetch.fetch_one(fetch.ASSETS["dog.jpg"], tmp_path / "out", mirror=str(mirror))
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_part_directory_is_a_fetch_error(tmp_path):
    from darknetpy.errors import FetchError
    from darknetpy.fetch import ASSETS, fetch_one
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "dog.jpg").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dog.jpg.part").mkdir()
    with pytest.raises(FetchError, match=r"dog\.jpg\.part is a directory"):
        fetch_one(ASSETS["dog.jpg"], tmp_path / "out", mirror=str(mirror))


# -- numpy's floating-point warnings: one warning naming the layer ------------------------------------------------

BN_CFG = "[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\n" \
         "activation=leaky\n[connected]\noutput=3\nbatch_normalize=1\nactivation=linear\n[softmax]\n"


@pytest.fixture
def bad_bn(tmp_path):
    """Layer 0: a negative rolling_variance (sqrt is NaN); layer 1: a zero variance under a huge scale
    (the folded scale overflows float32)."""
    from darknetpy.network import load
    net = load(write(tmp_path, "bn.cfg", BN_CFG))
    net.weights.params[0]["rolling_variance"][1] = -1.0
    net.weights.params[1]["rolling_variance"][...] = 0.0
    net.weights.params[1]["scales"][...] = 3e38
    return net


def _numpy_said(rec):
    raw = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
    assert raw == [], f"numpy's own warnings reached the user: {raw}"
    return [str(w.message) for w in rec]


def test_numpy_warnings_of_the_fast_plan_name_the_layer(bad_bn):
    x = np.full((3, 8, 8), 0.5, np.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = bad_bn.predict(x)
    assert _numpy_said(rec) == [
        "bn.cfg:5 layer 0 [convolutional]: numpy: invalid value encountered in sqrt while preparing its parameters "
        "(its parameters or inputs hold NaN, infinity, a negative variance or values beyond float32): its results "
        "will not be finite",
        "bn.cfg:11 layer 1 [connected]: numpy: overflow encountered in cast while preparing its parameters "
        "(its parameters or inputs hold NaN, infinity, a negative variance or values beyond float32): its results "
        "will not be finite"]
    assert not np.isfinite(out).all()


def test_numpy_warnings_of_folding_and_export_name_the_layer(bad_bn):
    from darknetpy.export.onnx_float import export_onnx
    from darknetpy.passes import fold_batchnorm
    for run in (lambda: fold_batchnorm(bad_bn.graph, bad_bn.weights),
                lambda: export_onnx(bad_bn.graph, bad_bn.weights, check=False)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            run()
        said = _numpy_said(rec)
        assert [m.split(": numpy: ")[0] for m in said] == ["bn.cfg:5 layer 0 [convolutional]",
                                                          "bn.cfg:11 layer 1 [connected]"]
        assert all("while folding its batch norm" in m for m in said)


def test_numpy_warnings_keeps_other_warnings_as_they_are(bad_bn):
    from darknetpy.passes import numpy_warnings
    layer = bad_bn.graph[1]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with numpy_warnings(bad_bn.graph, layer, "testing"):
            warnings.warn("something else")
            np.float32(3e38) * np.float32(10)
            np.sqrt(np.float64(-1))
            np.float32(3e38) * np.float32(10)
    assert [str(w.message) for w in rec] == [
        "something else",
        "bn.cfg:11 layer 1 [connected]: numpy: overflow encountered in scalar multiply; invalid value encountered "
        "in sqrt while testing (its parameters or inputs hold NaN, infinity, a negative variance or values beyond "
        "float32): its results will not be finite"]


def test_cli_classify_prints_no_raw_numpy_warning(bad_bn, tmp_path, capsys):
    from PIL import Image

    from darknetpy.cli import main
    bad_bn.save_weights(tmp_path / "bn.weights")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["classify", bad_bn.graph.path, str(tmp_path / "bn.weights"), str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    warned = [line for line in err.splitlines() if line.startswith("darknetpy: warning:")]
    assert warned[:2] == ["darknetpy: warning: bn.cfg:5 layer 0 [convolutional]: numpy: invalid value encountered in "
                          "sqrt while preparing its parameters (its parameters or inputs hold NaN, infinity, a "
                          "negative variance or values beyond float32): its results will not be finite",
                          "darknetpy: warning: bn.cfg:11 layer 1 [connected]: numpy: overflow encountered in cast "
                          "while preparing its parameters (its parameters or inputs hold NaN, infinity, a negative "
                          "variance or values beyond float32): its results will not be finite"]
    assert all("numpy:" in line or "produced" in line for line in warned), warned


# -- memory: sizes no machine has are refused from the shapes, before allocating -----------------------------------

WIDE_CFG = "[net]\nheight=224\nwidth=100000\nchannels=3\n[convolutional]\nfilters=16\nsize=3\npad=1\nactivation=leaky\n" \
           "[maxpool]\nsize=2\nstride=2\n[convolutional]\nfilters=32\nsize=3\npad=1\nactivation=leaky\n" \
           "[avgpool]\n[softmax]\n"


@pytest.mark.parametrize("text,n", [("8G", 8 << 30), ("8GiB", 8 << 30), ("8gb", 8 << 30), ("512M", 512 << 20),
                                    ("1.5K", 1536), ("1000", 1000), (" 2T ", 2 << 40)])
def test_max_memory_sizes(text, n):
    from darknetpy.memory import parse_size
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["abc", "8X", "-1G", "0", "1e9", "G"])
def test_max_memory_bad_sizes_are_clear_errors(text):
    from darknetpy.errors import DarknetpyError
    from darknetpy.memory import parse_size
    with pytest.raises(DarknetpyError, match="DARKNETPY_MAX_MEMORY="):
        parse_size(text)


def test_memory_limit_defaults_to_the_available_memory(monkeypatch):
    from darknetpy import memory
    monkeypatch.delenv("DARKNETPY_MAX_MEMORY", raising=False)
    cap, source = memory.limit()
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        assert abs(cap - avail) < 1 << 30 and "available on this machine" in source
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "3G")
    assert memory.limit() == (3 << 30, "set by DARKNETPY_MAX_MEMORY")


def test_plan_estimate_follows_the_shapes(tmp_path):
    from darknetpy.graph import load_graph
    from darknetpy.memory import plan_bytes
    g = load_graph(write(tmp_path, "n.cfg", CFG_TEXT))
    exact = plan_bytes(g, exact=True)
    # input + outputs (conv 4x8x8, avgpool 4, softmax 4) and the parameters (4 biases, 4x3x3x3 weights)
    assert exact.activations == 4 * (3 * 64 + 4 * 64 + 4 + 4) and exact.parameters == 4 * (4 + 108)
    fast = plan_bytes(g)
    assert fast.parameters == exact.parameters + 4 * 108 and fast.total > exact.total  # packed weights, scratch


def test_plan_estimate_counts_winograd_blocks(tmp_path, monkeypatch):
    """A Winograd layer's threads each transform a block of its input as large as its transformed weights
    (up to 32 MB): the estimate counts those blocks beside the padded input."""
    from darknetpy.graph import load_graph
    from darknetpy.kernels import config
    from darknetpy.memory import plan_bytes
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    g = load_graph(write(tmp_path, "w.cfg", "[net]\nwidth=13\nheight=13\nchannels=512\n[convolutional]\n"
                                            "filters=1024\nsize=3\nstride=1\npad=1\nactivation=leaky\n"))
    assert config.winograd_variant(g[0]) == 2
    fast = plan_bytes(g)
    padded = 4 * 512 * 16 * 16                       # 13x13 padded to whole 2x2 tiles, plus the margin
    blocks = 2 * 4 * (16 * 512 * 16 * 4)             # 2 threads x 4 panels of 16 tiles (U 32 MB: no cap)
    assert fast.total - fast.activations - fast.parameters == padded + blocks


def test_load_refuses_a_network_larger_than_the_limit_before_reading_weights(tmp_path, monkeypatch):
    import tracemalloc

    from darknetpy import network
    from darknetpy.errors import MemoryLimitError
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "2G")
    monkeypatch.setattr(network, "read_weights", lambda *a: pytest.fail("read the weights first"))
    monkeypatch.setattr(network, "random_params", lambda *a: pytest.fail("allocated the parameters first"))
    tracemalloc.start()
    try:
        with pytest.raises(MemoryLimitError) as e:
            network.load(write(tmp_path, "wide.cfg", WIDE_CFG), tmp_path / "w.weights")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20                  # (imports included) against gigabytes
    assert str(e.value).startswith("wide.cfg: running this network at 100000x224 needs about ")
    assert "the largest layer is wide.cfg:5 layer 0 [convolutional] (16 x 224 x 100000, " in str(e.value)
    assert str(e.value).endswith("more than the 2.0 GiB set by DARKNETPY_MAX_MEMORY")


def test_plans_and_resized_networks_are_checked(tmp_path, monkeypatch):
    from darknetpy.errors import MemoryLimitError
    from darknetpy.network import load
    from darknetpy.runtime import Plan
    net = load(write(tmp_path, "n.cfg", CFG_TEXT))
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "1K")
    with pytest.raises(MemoryLimitError, match=r"n\.cfg: running this network at 8x8 needs about"):
        Plan(net.graph, net.weights)
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "1M")
    Plan(net.graph, net.weights)
    with pytest.raises(MemoryLimitError, match=r"n\.cfg: running this network at 512x512 needs about"):
        net.resized(512, 512)


def test_letterbox_and_resize_to_an_absurd_size_refuse_before_allocating(monkeypatch):
    import tracemalloc

    from darknetpy.errors import MemoryLimitError
    from darknetpy.image import letterbox, resize_image
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "4G")
    img = np.zeros((3, 30, 40), np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryLimitError, match="letterboxing a 40x30 image into 100000x100000 needs about"):
            letterbox(img, 100000, 100000)
        with pytest.raises(MemoryLimitError, match="resizing a 40x30 image to 100000x20000 needs about"):
            resize_image(img, 100000, 20000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20                  # (imports included) against gigabytes


def test_resize_min_refuses_an_elongated_image():
    from darknetpy.image import resize_min
    with pytest.raises(ImageError, match=r"a 1x20000 image is too elongated for resize_min: scaled to 224x4480000"):
        resize_min(np.zeros((3, 20000, 1), np.float32), 224)


def test_resize_min_refuses_a_result_beyond_the_memory_limit(monkeypatch):
    from darknetpy.image import resize_min
    monkeypatch.setenv("DARKNETPY_MAX_MEMORY", "1M")
    with pytest.raises(ImageError, match=r"resize_min of a 1x2000 image to 8x16000 needs about .* more than the "
                                         r"1\.0 MiB set by DARKNETPY_MAX_MEMORY"):
        resize_min(np.zeros((3, 2000, 1), np.float32), 8)
    assert resize_min(np.zeros((3, 20, 10), np.float32), 8).shape == (3, 16, 8)


@pytest.mark.parametrize("n", [0, 1, 1000, (2 << 20) // 4, 3 << 20])
def test_hugepage_buffers_are_zeroed_aligned_and_sized(n):
    from darknetpy import memory
    a = memory.hugepage_zeros(n)
    assert a.dtype == np.float32 and a.size == max(n, 1) and a.flags.c_contiguous and not a.any()
    if 4 * n >= memory.HUGE_PAGE:
        assert a.ctypes.data % memory.HUGE_PAGE == 0                   # a huge page can back it from the start
    src = np.arange(n, dtype=np.float32).reshape(-1, 1) if n else np.zeros((1, 1), np.float32)
    copy = memory.in_huge_pages(src)
    assert copy.shape == src.shape and np.array_equal(copy, src)
    assert (copy is src) == (src.nbytes < memory.HUGE_PAGE)
