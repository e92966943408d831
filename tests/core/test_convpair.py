"""Depth-first convolution pairs (kernels/convpair.py): the same bits as the two convolutions run apart."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

import darknetpy
from conftest import write
from darknetpy.kernels import config
from darknetpy.kernels import conv as kconv
from darknetpy.kernels import convpair as kpair
from darknetpy.kernels.activation import CODE
from darknetpy.kernels.gemm import NR
from darknetpy.runtime import Plan, _pair_fusions


def _prepared(x, size, stride, pad):
    if size == 1 and stride == 1 and not pad:
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    xs = np.full(kconv.input_shape(*x.shape, pad, stride), 9.0, np.float32)     # stale contents
    kconv.prepare_input(x, pad, xs)
    return xs


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("ring_rows", [1, 3, 100])
@pytest.mark.parametrize("c,h,w,ma,size_a,stride_a,mb,size_b", [
    (3, 30, 40, 16, 7, 1, 16, 3),     # the DLA stem, smaller: rows of 40 = 2 x 16 + an overlapping panel
    (3, 41, 37, 12, 3, 2, 20, 3),     # stride-2 first conv (21 x 19), partial filter panels in both
    (8, 20, 33, 9, 1, 1, 7, 5),       # a 1x1 first conv read in place, a 5x5 second (2 rows of padding)
    (4, 18, 16, 8, 3, 1, 8, 1),       # a 1x1 second conv: no padding, no carried rows
])
def test_pair_is_the_two_convolutions_run_apart(monkeypatch, c, h, w, ma, size_a, stride_a, mb, size_b,
                                                ring_rows, threads):
    rng = np.random.default_rng(c * h + w + ma + mb)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wa = (rng.standard_normal((ma, c * size_a * size_a)) / 4).astype(np.float32)
    wb = (rng.standard_normal((mb, ma * size_b * size_b)) / 4).astype(np.float32)
    sa, sb = rng.standard_normal(ma).astype(np.float32), rng.standard_normal(mb).astype(np.float32)
    pad_a, pad_b = size_a // 2, size_b // 2
    oh, ow = (h + 2 * pad_a - size_a) // stride_a + 1, (w + 2 * pad_a - size_a) // stride_a + 1
    apa, apb = kconv.pack_filters(wa, oh * ow), kconv.pack_filters(wb, oh * ow)
    xs = _prepared(x, size_a, stride_a, pad_a)
    # a ring of ring_rows output rows: several steps per thread, each carrying size_b - 1 rows to the next
    monkeypatch.setattr(config, "CONV_PAIR_RING_BYTES", 4 * ma * (ow + size_b - 1) * (ring_rows + size_b - 1))
    band = kpair.band_rows(ma, oh, ow, size_b)
    assert band == min(ring_rows, oh)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for acts in (("relu", "leaky"), ("linear", "relu6"), ("leaky", "linear")):
            mid = np.empty((ma, oh, ow), np.float32)
            kconv.conv_gemm(xs, apa, sa, CODE[acts[0]], size_a, stride_a, mid)
            ref = np.empty((mb, oh, ow), np.float32)
            kconv.conv_gemm(_prepared(mid, size_b, 1, pad_b), apb, sb, CODE[acts[1]], size_b, 1, ref)
            scratch = np.full((4, kpair.ring_floats(ma, oh, ow, size_b)), np.nan, np.float32)
            got = np.full(ref.shape, np.nan, np.float32)
            kpair.bind_conv_pair(xs, apa, sa, CODE[acts[0]], size_a, stride_a, apb, sb, CODE[acts[1]], size_b,
                                 got, scratch)()
            assert np.array_equal(got.view(np.int32), ref.view(np.int32)), acts
    finally:
        numba.set_num_threads(before)


def test_pair_refuses_what_it_cannot_run():
    x = np.ones((3, 20, 20), np.float32)
    xs = _prepared(x, 3, 1, 1)
    ap = kconv.pack_filters(np.ones((8, 27), np.float32), 400)
    apb = kconv.pack_filters(np.ones((8, 72), np.float32), 400)
    scratch = np.zeros((4, kpair.ring_floats(8, 20, 20, 3)), np.float32)
    out = np.zeros((8, 20, 20), np.float32)
    args = (xs, ap, np.zeros(8, np.float32), CODE["relu"], 3, 1, apb, np.zeros(8, np.float32))
    kpair.bind_conv_pair(*args, CODE["relu"], 3, out, scratch)          # fits
    with pytest.raises(ValueError, match="conv_pair"):                  # an activation the epilogue does not apply
        kpair.bind_conv_pair(*args, CODE["logistic"], 3, out, scratch)
    with pytest.raises(ValueError, match="conv_pair"):                  # an even size has no "same" padding
        kpair.bind_conv_pair(*args, CODE["relu"], 2, out, scratch)
    with pytest.raises(ValueError, match="conv_pair"):                  # a ring too small
        kpair.bind_conv_pair(*args, CODE["relu"], 3, out, scratch[:, :10])
    narrow = _prepared(np.ones((3, 20, NR - 1), np.float32), 3, 1, 1)  # rows narrower than a pixel panel
    with pytest.raises(ValueError, match="conv_pair"):
        kpair.bind_conv_pair(narrow, *args[1:], CODE["relu"], 3, np.zeros((8, 20, NR - 1), np.float32), scratch)


STEM = """
[net]
height=36
width=50
channels=3
[convolutional]
batch_normalize=1
filters=16
size=7
stride=1
pad=1
activation=relu
[convolutional]
batch_normalize=1
filters=12
size=3
stride=1
pad=1
activation=leaky
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=relu
[convolutional]
filters=8
size=3
stride=1
pad=1
activation=logistic
"""


def test_stem_conv_pair_runs_as_one_step(tmp_path, monkeypatch):
    # layers 0 and 1 (relu, leaky; 1 stride 1 "same") pair; 1 -> 2 does not (2 has stride 2), nor 2 -> 3
    # (logistic is not applied in the epilogue; also 2's 8 x 18 x 25 map is under the size threshold)
    monkeypatch.setattr(config, "CONV_PAIR_MIN_BYTES", 16 * 36 * 50 * 4)
    net = darknetpy.load(write(tmp_path, "stem.cfg", STEM))
    plan = net.plan()
    assert plan.paired == {0: 1} and plan.kernel_keys[:3] == ["conv:pair", "nothing", "conv:gemm"]
    # the first conv's map is never written: its memory is free for the layers after it
    assert np.shares_memory(plan.outputs[0], plan.outputs[2])
    assert net.plan(keep=frozenset({0})).paired == {} and net.plan(keep_all=True).paired == {}
    assert net.plan(exact=True).paired == {}
    x = np.random.default_rng(3).random(net.input_shape, dtype=np.float32)
    plan.run(x)
    got = plan.outputs[3].copy()
    monkeypatch.setattr(config, "CONV_PAIR_MIN_BYTES", 16 * 36 * 50 * 4 + 1)        # now under it
    unpaired = Plan(net.graph, net.weights)                           # (net.plan() is built once)
    assert unpaired.paired == {}
    unpaired.run(x)
    assert np.array_equal(got.view(np.int32), unpaired.outputs[3].view(np.int32))
    exact = net.predict(x, exact=True)
    np.testing.assert_allclose(got.reshape(exact.shape), exact, rtol=1e-4, atol=1e-5)


def test_dla_stems_pair_their_first_two_convolutions():
    # the networks it was made for: 7x7 3->16 then 3x3 16->16 at 224x224 (3.2 MB maps)
    cfgs = Path(__file__).resolve().parents[2] / "cfg"
    for name in ("dla46_c", "dla46x_c", "dla60x_c"):
        assert _pair_fusions(darknetpy.load(cfgs / f"{name}.cfg").graph) == {0: 1}, name
