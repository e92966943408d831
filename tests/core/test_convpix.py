"""Small-map convolutions as pixel tiles (kernels/convpix.py): the same bits as the implicit GEMM."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

import darknetpy
from conftest import write
from darknetpy.kernels import config
from darknetpy.kernels import conv as kconv
from darknetpy.kernels import convpix as kpix
from darknetpy.kernels.activation import CODE


def _prepared(x, size, stride):
    xs = np.full(kconv.input_shape(*x.shape, size // 2, stride), 9.0, np.float32)    # stale contents
    kconv.prepare_input(x, size // 2, xs)
    return xs


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("c,h,w,m,size,stride", [
    (128, 14, 14, 128, 3, 2),     # DLA-46-C's 14x14 -> 7x7: 49 pixels, 7 tiles of 7 (AVX-512)
    (64, 28, 28, 64, 3, 2),       # 28x28 -> 14x14
    (128, 7, 7, 128, 3, 1),       # stride 1 at 7x7
    (5, 13, 11, 20, 3, 2),        # 7 x 6 = 42 pixels: a last tile partly spare; a half-used filter panel
    (7, 9, 9, 40, 5, 2),          # 5x5, padding 2 (the phases swap); 40 filters: 2.5 panels
    (16, 15, 17, 9, 3, 2),        # 9 filters: one panel, 7 of its lanes padding
    (3, 8, 8, 16, 3, 1),          # 64 pixels: whole tiles of 8 (AVX-512)
    (4, 3, 3, 8, 3, 2),           # a 2x2 output: one tile
    (8, 61, 47, 24, 3, 2),        # 31 x 24 pixels in 8 chunks, each thread all filters of its chunks
    (96, 7, 7, 40, 1, 1),         # a 1x1 at 7x7
])
def test_pixel_tiles_are_the_gemm(c, h, w, m, size, stride, threads):
    rng = np.random.default_rng(c * h + m + size)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c * size * size)) / 4).astype(np.float32)
    shift = rng.standard_normal(m).astype(np.float32)
    xs = _prepared(x, size, stride)
    oh, ow = (h + 2 * (size // 2) - size) // stride + 1, (w + 2 * (size // 2) - size) // stride + 1
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for act in ("relu", "leaky", "linear", "relu6"):
            ref = np.empty((m, oh, ow), np.float32)
            kconv.conv_gemm(xs, kconv.pack_filters(wt, oh * ow), shift, CODE[act], size, stride, ref)
            got = np.full((m, oh, ow), np.nan, np.float32)
            kpix.conv_pixels(xs, kpix.pack_pixel_filters(wt), shift, CODE[act], size, stride, got)
            assert np.array_equal(got.view(np.int32), ref.view(np.int32)), act
    finally:
        numba.set_num_threads(before)


def test_pixel_mr_wastes_least_of_the_last_tile():
    a, b = kpix.PIX_MRS
    for n in range(1, 500):
        mr = kpix.pixel_mr(n)
        assert mr in (a, b)
        assert -(-n // mr) * mr == min(-(-n // a) * a, -(-n // b) * b)
        if -(-n // a) * a == -(-n // b) * b:
            assert mr == max(a, b)
    if kpix.PIX_MRS == (8, 7):
        assert [kpix.pixel_mr(n) for n in (49, 196, 64, 50)] == [7, 7, 8, 8]


def test_pixel_tiles_refuse_what_they_cannot_run():
    xs = _prepared(np.ones((4, 14, 14), np.float32), 3, 2)
    wp = kpix.pack_pixel_filters(np.ones((20, 36), np.float32))
    shift = np.zeros(20, np.float32)
    out = np.zeros((20, 7, 7), np.float32)
    kpix.bind_conv_pixels(xs, wp, shift, CODE["relu"], 3, 2, out)                       # fits
    bad = [
        (xs, wp[:1].copy(), shift, CODE["relu"], 3, 2, out),                          # weights of 16 filters
        (xs, wp, shift[:19].copy(), CODE["relu"], 3, 2, out),                         # shifts of 19
        (xs, wp, shift, CODE["logistic"], 3, 2, out),                                 # not in the epilogue
        (xs, wp, shift, CODE["relu"], 3, 1, out),                                     # stride-2 prepared input
        (_prepared(np.ones((4, 8, 8), np.float32), 3, 2), wp, shift, CODE["relu"], 3, 2, out),   # too small
    ]
    for args in bad:
        with pytest.raises(ValueError, match="conv_pixels"):
            kpix.bind_conv_pixels(*args)


SMALL = """
[net]
height=32
width=32
channels=8
[convolutional]
batch_normalize=1
filters=24
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=24
size=3
stride=2
pad=1
activation=relu
[convolutional]
filters=24
size=3
stride=1
pad=1
activation=linear
[shortcut]
from=-2
activation=linear
[convolutional]
filters=16
size=3
stride=1
pad=1
activation=logistic
[convolutional]
filters=16
size=1
stride=1
pad=1
activation=relu6
[convolutional]
filters=16
size=3
stride=1
pad=1
activation=relu
[maxpool]
size=2
stride=2
"""


def test_small_maps_run_as_pixel_tiles_in_a_plan(tmp_path):
    # 32 -> 16 -> 8 at stride 2 (256 and 64 output pixels), a 1x1 at 8x8: pixel tiles. Fusions keep
    # theirs: the linear conv before a [shortcut] and the relu one before a 2x2 [maxpool] run as the GEMM
    # that fuses them; logistic stays on the GEMM (not in the tile's epilogue). Then the same without the
    # fusions (outputs kept): the 3x3 stride-1 convs at 8x8 become pixel tiles too.
    # (stride 1 only with AVX-512: config.pixel_tiles; elsewhere those stay on the GEMM)
    s1 = "conv:pixels" if config.codegen_target().float_lanes == 16 else "conv:gemm"
    net = darknetpy.load(write(tmp_path, "small.cfg", SMALL))
    plan = net.plan()
    assert plan.kernel_keys[:6] == ["conv:pixels", "conv:pixels", "conv:gemm", "nothing", "conv:gemm", s1]
    assert plan.kernel_keys[6] == "conv:gemm" and plan.fused == {2: 3} and plan.maxpooled == {6: 7}
    x = np.random.default_rng(5).random(net.input_shape, dtype=np.float32)
    exact = net.predict(x, exact=True)
    plan.run(x)
    np.testing.assert_allclose(plan.outputs[net.graph.output_index].reshape(exact.shape), exact, rtol=1e-4, atol=1e-5)
    kept = net.plan(keep=frozenset({2, 6}))
    assert [kept.kernel_keys[i] for i in (2, 4, 5, 6)] == [s1, "conv:gemm", s1, s1]
    kept.run(x)
    np.testing.assert_allclose(kept.outputs[net.graph.output_index].reshape(exact.shape), exact, rtol=1e-4, atol=1e-5)


def test_which_layers_of_dla46_c_are_pixel_tiles():
    # DLA-46-C: the stride-2 3x3 convs to 28x28, 14x14 and 7x7; with AVX-512 also the 3x3 at 7x7
    # (Winograd's otherwise) and the 1x1s at 7x7 but those whose epilogue adds a [shortcut]. The stride-2
    # convs in the depth-first chains (to 112x112 and 56x56) stay in their chains.
    wide = config.codegen_target().float_lanes == 16
    cfgs = Path(__file__).resolve().parents[2] / "cfg"
    net = darknetpy.load(cfgs / "dla46_c.cfg")
    graph, plan = net.graph, net.plan()
    pix = [i for i, key in enumerate(plan.kernel_keys) if key == "conv:pixels"]
    assert [(graph[i].size, graph[i].stride, graph[i].out_h) for i in pix if graph[i].size == 3] == [
        (3, 2, 28), (3, 2, 14), (3, 2, 7)] + ([(3, 1, 7)] if wide else [])
    ones = [i for i in pix if graph[i].size == 1]
    assert bool(ones) == wide and all(graph[i].out_h == 7 for i in ones)
    assert plan.chains == {0: [1, 2], 6: [7]}
    assert config.pixel_tiles(graph[7]) == config.pixel_tiles(graph[2]) == wide    # (AVX2: maps too large)
    assert all(config.pixel_tiles(graph[i]) for i in pix)
    fused_7x7 = [i for i in plan.fused if graph[i].out_h == 7]
    assert fused_7x7 and all(plan.kernel_keys[i] == "conv:gemm" for i in fused_7x7)
    assert all(config.pixel_tiles(graph[i]) == wide for i in fused_7x7)
