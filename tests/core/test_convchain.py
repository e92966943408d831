"""Depth-first convolution chains (kernels/convchain.py): the same bits as the convolutions run apart."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

import darknetpy
from conftest import write
from darknetpy.kernels import config
from darknetpy.kernels import conv as kconv
from darknetpy.kernels import convchain as kchain
from darknetpy.kernels import convpix as kpix
from darknetpy.kernels.activation import CODE
from darknetpy.kernels.gemm import NR
from darknetpy.fusions import chain_fusions
from darknetpy.runtime import Plan


def _prepared(x, size, stride, pad):
    if size == 1 and stride == 1 and not pad:
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    xs = np.full(kconv.input_shape(*x.shape, pad, stride), 9.0, np.float32)     # stale contents
    kconv.prepare_input(x, pad, xs)
    return xs


ACTS = [("relu", "leaky", "relu6"), ("linear", "relu6", "leaky"), ("leaky", "linear", "relu")]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("band", [1, 3, 1000])
@pytest.mark.parametrize("c,h,w,convs", [
    # convs: (filters, size, stride) per level; the first one's padding size // 2 too
    (3, 30, 40, [(16, 7, 1), (16, 3, 1), (12, 3, 2)]),   # the DLA stem, smaller (rows of 40: a last panel
                                                         # overlapping the one before; stride-2 rows of 20)
    (3, 41, 37, [(12, 3, 2), (20, 3, 1)]),               # a stride-2 first conv (21 x 19), partial filter panels
    (8, 20, 33, [(9, 1, 1), (7, 5, 1)]),                 # a 1x1 first conv read in place, a 5x5 second
    (4, 18, 16, [(8, 3, 1), (8, 1, 1)]),                 # a 1x1 second conv: no padding, no rows carried
    (6, 25, 37, [(16, 3, 1), (8, 3, 2), (10, 3, 1)]),    # a stride-2 link from an odd width (37 -> 19)
    (5, 20, 64, [(8, 1, 1), (9, 5, 2)]),                 # a 5x5 stride-2 link (padding 2: phases swap)
])
def test_chain_is_the_convolutions_run_apart(monkeypatch, c, h, w, convs, band, threads):
    rng = np.random.default_rng(c * h + w + len(convs))
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    weights, levels, cin, hh, ww = [], [], c, h, w
    for m, k, s in convs:
        hh, ww = (hh + 2 * (k // 2) - k) // s + 1, (ww + 2 * (k // 2) - k) // s + 1
        weights.append(((rng.standard_normal((m, cin * k * k)) / 4).astype(np.float32),
                        rng.standard_normal(m).astype(np.float32)))
        levels.append((m, hh, ww, k, s))
        cin = m
    # rings for ``band`` rows of the last level per step: several steps per thread, each carrying k - s
    # rows of every map to the next
    monkeypatch.setattr(config, "CONV_CHAIN_RING_BYTES", 4 * kchain.ring_floats(levels, min(band, levels[-1][1])))
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BAND", 1)
    assert kchain.band_rows(levels) == min(band, levels[-1][1])
    xs = _prepared(x, convs[0][1], convs[0][2], convs[0][1] // 2)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for acts in ACTS:
            ref, src = None, x
            bound = []
            for (m, k, s), (wt, sh), (_, oh, ow, _, _), act in zip(convs, weights, levels, acts):
                ap = kconv.pack_filters(wt, oh * ow)
                ref = np.empty((m, oh, ow), np.float32)
                kconv.conv_gemm(_prepared(src, k, s, k // 2), ap, sh, CODE[act], k, s, ref)
                bound.append((ap, sh, CODE[act], k, s, oh, ow))
                src = ref
            scratch = np.full((4, kchain.ring_floats(levels)), np.nan, np.float32)
            got = np.full(ref.shape, np.nan, np.float32)
            kchain.bind_conv_chain(xs, bound, got, scratch)()
            assert np.array_equal(got.view(np.int32), ref.view(np.int32)), acts
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("band", [1, 3, 1000])
@pytest.mark.parametrize("c,h,w,convs", [
    (3, 30, 40, [(16, 7, 1), (16, 3, 1), (12, 3, 2)]),   # the DLA stem, smaller: rows of 20 (tiles of 7 + 6)
    (5, 20, 64, [(8, 1, 1), (20, 5, 2)]),                # a 5x5 stride-2 last level, 20 filters (2 panels)
])
def test_chain_with_pixel_tiles_last_is_the_convolutions_run_apart(monkeypatch, c, h, w, convs, band, threads):
    # the last level as pixel tiles (kernels/convpix.py) where the tile stores straight into the output
    # (AVX-512); elsewhere bind refuses them
    rng = np.random.default_rng(c * h + w)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    bound, levels, cin, hh, ww, ref, src = [], [], c, h, w, None, x
    for m, k, s in convs:
        hh, ww = (hh + 2 * (k // 2) - k) // s + 1, (ww + 2 * (k // 2) - k) // s + 1
        wt = (rng.standard_normal((m, cin * k * k)) / 4).astype(np.float32)
        sh = rng.standard_normal(m).astype(np.float32)
        ap = kconv.pack_filters(wt, hh * ww)
        ref = np.empty((m, hh, ww), np.float32)
        kconv.conv_gemm(_prepared(src, k, s, k // 2), ap, sh, CODE["leaky"], k, s, ref)
        bound.append((ap, sh, CODE["leaky"], k, s, hh, ww))
        levels.append((m, hh, ww, k, s))
        src, cin = ref, m
    monkeypatch.setattr(config, "CONV_CHAIN_RING_BYTES", 4 * kchain.ring_floats(levels, min(band, levels[-1][1])))
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BAND", 1)
    xs = _prepared(x, convs[0][1], convs[0][2], convs[0][1] // 2)
    wp = kpix.pack_pixel_filters(wt)
    scratch = np.full((4, kchain.ring_floats(levels)), np.nan, np.float32)
    got = np.full(ref.shape, np.nan, np.float32)
    if not kpix.DIRECT:
        with pytest.raises(ValueError, match="conv_chain"):
            kchain.bind_conv_chain(xs, bound, got, scratch, wp)
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        kchain.bind_conv_chain(xs, bound, got, scratch, wp)()
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(got.view(np.int32), ref.view(np.int32))


def test_band_rows_fill_the_ring_budget_but_not_below_the_floor(monkeypatch):
    # the DLA stem's levels (filters, H, W, size, stride): 256 KB of rings hold 3 rows of the last level,
    # the floor of 8 rows wins (a step's carry costs the same whatever its rows); a roomier budget gives more
    stem = [(16, 224, 224, 7, 1), (16, 224, 224, 3, 1), (32, 112, 112, 3, 2)]
    monkeypatch.setattr(config, "CONV_CHAIN_RING_BYTES", 256 * 1024)
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BAND", 1)
    assert kchain.band_rows(stem) == 3
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BAND", 8)
    assert kchain.band_rows(stem) == 8
    monkeypatch.setattr(config, "CONV_CHAIN_RING_BYTES", 4 << 20)
    assert kchain.band_rows(stem) > 8 and 4 * kchain.ring_floats(stem) <= 4 << 20
    assert kchain.band_rows([(16, 5, 40, 3, 1), (16, 5, 40, 3, 1)]) == 5           # all of a short map


def test_chain_refuses_what_it_cannot_run():
    xs = _prepared(np.ones((3, 20, 20), np.float32), 3, 1, 1)
    a = (kconv.pack_filters(np.ones((8, 27), np.float32), 400), np.zeros(8, np.float32), CODE["relu"], 3, 1, 20, 20)
    b = (kconv.pack_filters(np.ones((8, 72), np.float32), 400), np.zeros(8, np.float32), CODE["relu"], 3, 1, 20, 20)
    levels = [(8, 20, 20, 3, 1)] * 2
    scratch = np.zeros((4, kchain.ring_floats(levels)), np.float32)
    out = np.zeros((8, 20, 20), np.float32)
    kchain.bind_conv_chain(xs, [a, b], out, scratch)                         # fits
    bad = [
        [a],                                                 # one conv is not a chain
        [a, b[:2] + (CODE["logistic"],) + b[3:]],            # an activation the epilogue does not apply
        [a, b[:3] + (2,) + b[4:]],                           # an even size has no "same" padding
        [a, b[:5] + (19, 20)],                               # a shape that does not follow from the first
    ]
    for convs in bad:
        with pytest.raises(ValueError, match="conv_chain"):
            kchain.bind_conv_chain(xs, convs, out, scratch)
    with pytest.raises(ValueError, match="conv_chain"):                       # rings too small
        kchain.bind_conv_chain(xs, [a, b], out, scratch[:, :10].copy())
    narrow = _prepared(np.ones((3, 20, NR - 1), np.float32), 3, 1, 1)        # rows narrower than a pixel panel
    with pytest.raises(ValueError, match="conv_chain"):
        kchain.bind_conv_chain(narrow, [a[:5] + (20, NR - 1), b[:5] + (20, NR - 1)],
                               np.zeros((8, 20, NR - 1), np.float32), scratch)


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


def test_stem_conv_chain_runs_as_one_step(tmp_path, monkeypatch):
    # layers 0, 1 (stride 1 "same") and 2 (stride 2) chain; 3 does not join: logistic is not applied in
    # the epilogue (and 2's 8 x 18 x 25 map is under the size threshold)
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BYTES", 12 * 36 * 50 * 4)
    net = darknetpy.load(write(tmp_path, "stem.cfg", STEM))
    plan = net.plan()
    assert plan.chains == {0: [1, 2]} and plan.kernel_keys == ["conv:chain", "nothing", "nothing", "conv:gemm"]
    # the maps inside the chain are never written: they take no memory, which the layers after reuse
    assert np.shares_memory(plan.outputs[0], plan.outputs[3]) and np.shares_memory(plan.outputs[1], plan.outputs[3])
    assert net.plan(keep=frozenset({1})).chains == {} and net.plan(keep_all=True).chains == {}
    assert net.plan(keep=frozenset({2})).chains == {0: [1]}            # a chain stops before a kept layer
    assert net.plan(exact=True).chains == {}
    x = np.random.default_rng(3).random(net.input_shape, dtype=np.float32)
    plan.run(x)
    got = plan.outputs[3].copy()
    monkeypatch.setattr(config, "CONV_CHAIN_MIN_BYTES", 16 * 36 * 50 * 4 + 1)       # now under it
    unchained = Plan(net.graph, net.weights)                           # (net.plan() is built once)
    assert unchained.chains == {}
    unchained.run(x)
    assert np.array_equal(got.view(np.int32), unchained.outputs[3].view(np.int32))
    exact = net.predict(x, exact=True)
    np.testing.assert_allclose(got.reshape(exact.shape), exact, rtol=1e-4, atol=1e-5)


def test_dla_stems_chain_their_first_three_convolutions():
    # the networks it was made for: 7x7 3->16, 3x3 16->16 and 3x3 stride-2 16->32 at 224x224 (3.2 MB maps)
    cfgs = Path(__file__).resolve().parents[2] / "cfg"
    for name in ("dla46_c", "dla46x_c", "dla60x_c"):
        chains = chain_fusions(darknetpy.load(cfgs / f"{name}.cfg").graph)
        assert chains[0] == [1, 2], name
