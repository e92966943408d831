"""Every kernel against an obvious, slow reference written here with plain loops.

Inputs are small integers (or halves) so every partial sum is exactly representable in float32: any
order of summation gives the same bits, and the fast kernels (GEMM tiles, FMA) must equal the
reference exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from darknetpy.kernels import conv as kconv
from darknetpy.kernels import depthwise as kdw
from darknetpy.kernels import elementwise as kel
from darknetpy.kernels import exact as kex
from darknetpy.kernels.activation import CODE, NAMES, activate
from darknetpy.kernels.gemm import MR, NR, pack_a

rng = np.random.default_rng(1234)


def ints(shape, lo=-3, hi=4):
    return rng.integers(lo, hi, size=shape).astype(np.float32)


def naive_conv(x, w, groups, stride, pad):
    """Textbook convolution in float64 loops. x (C,H,W), w (M, C/g, k, k)."""
    c, h, wd = x.shape
    m, cg, k, _ = w.shape
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((m, oh, ow))
    mg = m // groups
    for o in range(m):
        g = o // mg
        for y in range(oh):
            for xx in range(ow):
                s = 0.0
                for ci in range(cg):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = y * stride - pad + ky, xx * stride - pad + kx
                            if 0 <= iy < h and 0 <= ix < wd:
                                s += w[o, ci, ky, kx] * x[g * cg + ci, iy, ix]
                out[o, y, xx] = s
    return out


CONV_CASES = [
    # (C, H, W, M, k, stride, pad, groups)
    (3, 7, 9, 4, 3, 1, 1, 1),
    (3, 8, 7, 13, 3, 2, 1, 1),      # M not a multiple of MR, stride 2
    (5, 6, 6, 7, 5, 1, 2, 1),
    (4, 9, 11, 16, 1, 1, 0, 1),     # 1x1: packed straight from the input
    (2, 5, 5, 3, 2, 1, 1, 1),       # even kernel with pad 1: output one larger
    (8, 17, 19, 20, 3, 1, 1, 1),    # N = 323: partial last panel
    (6, 8, 10, 6, 3, 1, 1, 2),      # grouped
    (6, 8, 10, 6, 3, 1, 1, 6),      # depthwise
    (6, 9, 9, 6, 3, 2, 1, 6),       # depthwise stride 2
    (8, 7, 7, 16, 3, 1, 1, 4),
    (12, 8, 10, 12, 1, 1, 0, 3),    # grouped 1x1
    (3, 23, 21, 16, 7, 1, 3, 1),    # 7x7 (DLA stem)
    (4, 20, 37, 10, 3, 2, 1, 1),    # stride 2: phase-split input, panels inside and across rows
    (5, 19, 40, 7, 3, 3, 1, 1),     # stride 3
    (64, 9, 33, 64, 3, 2, 1, 32),   # DLA-X: 32 groups of 2 channels, stride 2
    (8, 9, 9, 8, 5, 2, 2, 8),       # depthwise 5x5 stride 2 (generic taps)
    (5, 10, 7, 5, 3, 3, 1, 5),      # depthwise stride 3
    (48, 14, 13, 48, 3, 2, 1, 48),  # depthwise stride 2, odd width (edge of the interleaved copy)
    (4, 6, 50, 4, 3, 1, 1, 4),      # depthwise rows of 50: two vectors, one, and an overlapping last one
    (6, 7, 75, 6, 3, 2, 1, 6),      # depthwise stride 2, rows of 38 (vector deinterleave of the input)
    (9, 5, 40, 6, 3, 1, 1, 3),      # 3 channels per group (9 taps each: 27 per output), rows of 40
]



# Shapes where the weights outweigh the packed input, so conv_gemm takes the weight-stationary order
# (every pixel panel packed first, filter panels outermost); asserted below so the case cannot drift.
STATIONARY_CASES = [
    (8, 5, 5, 40, 3, 1, 1, "linear", False),     # 2 pixel panels, the second partial
    (16, 6, 6, 70, 1, 1, 0, "leaky", False),     # 1x1 flat: full panels read in place
    (12, 7, 6, 33, 3, 2, 1, "logistic", False),  # stride 2, an activation the epilogue does not fuse
    (16, 4, 8, 48, 1, 1, 0, "linear", True),     # with a fused residual
]


def gemm_case(c, h, w, m, k, stride, pad, act, with_res):
    """Integer data for a groups=1 conv_gemm call: (prepared input, weights, shift, residual or None, the
    naive reference after shift, residual and activation, a NaN-filled output)."""
    x = ints((c, h, w))
    wt = ints((m, c, k, k))
    shift = ints((m,))
    ref = naive_conv(x, wt, 1, stride, pad) + shift[:, None, None]
    res = ints(ref.shape) if with_res else None
    if with_res:
        ref = ref + res
    ref = np.array([reference_activation(act, v) for v in ref.astype(np.float32).ravel()]).reshape(ref.shape)
    xs = np.full(kconv.input_shape(c, h, w, pad, stride), 9.0, np.float32)
    kconv.prepare_input(x, pad, xs)
    if k == 1 and stride == 1 and pad == 0:
        xs = x.reshape(c, h, 1, w)
    return xs, wt, shift, res, ref, np.full(ref.shape, np.nan, np.float32)


@pytest.mark.parametrize("act", ["leaky", "relu6", "logistic", "elu"])
@pytest.mark.parametrize("c,h,w,groups,stride", [(6, 7, 50, 6, 1), (8, 9, 37, 4, 2), (32, 5, 7, 32, 2)])
def test_conv_grouped_activations(c, h, w, groups, stride, act):
    # the grouped kernel applies leaky/relu6 in its vector code (dw_plane) and any other activation
    # afterwards; rows of 50 and 19 take its whole-vector paths, a 3x4 output its masked one
    x = ints((c, h, w))
    wt = ints((c, c // groups, 3, 3))
    shift = ints((c,))
    ref = naive_conv(x, wt, groups, stride, 1) + shift[:, None, None]
    ref = np.array([reference_activation(act, v) for v in ref.astype(np.float32).ravel()]).reshape(ref.shape)
    out = np.full(ref.shape, np.nan, np.float32)
    kdw.conv_grouped(x, wt, groups, shift, CODE[act], 1, stride, out)
    np.testing.assert_allclose(out, ref, rtol=2e-6 if act in ("logistic", "elu") else 0, atol=1e-6)


@pytest.mark.parametrize("c,h,w,m,k,stride,pad,act,with_res", STATIONARY_CASES)
def test_conv_gemm_weight_stationary_matches_naive(c, h, w, m, k, stride, pad, act, with_res):
    xs, wt, shift, res, ref, out = gemm_case(c, h, w, m, k, stride, pad, act, with_res)
    assert kconv.gemm_scratch_size(c * k * k, m, ref.shape[1] * ref.shape[2]) > 0
    kconv.conv_gemm(xs, filters(wt, out), shift, CODE[act], k, stride, out, res)
    np.testing.assert_allclose(out, ref, rtol=2e-7 if act != "linear" else 0, atol=0)

# K = C*k*k >= config.CONV_KBLOCK_MIN_K: the K-blocked GEMM (several blocks of K, a partial last block,
# partial filter and pixel panels of its own tile, fused and unfused activations, a residual, stride 2,
# many pixel panels shared out between threads and few with the filter panels shared out)
KBLOCKED_CASES = [
    (120, 9, 11, 33, 3, 1, 1, "leaky", False),
    (1030, 5, 5, 20, 1, 1, 0, "linear", True),
    (130, 13, 13, 15, 3, 2, 1, "logistic", False),
    (114, 40, 40, 17, 3, 1, 1, "relu6", False),
    (1024, 1, 1, 3, 1, 1, 0, "relu", False),
    (3, 24, 24, 70, 3, 1, 1, "leaky", True),      # K = 27, blocked only where the blocked tile is wider
    (1100, 6, 8, 29, 1, 1, 0, "leaky", True),     # 48 pixels: a last panel exactly half wide (gemm.KNR_NARROW)
    (520, 10, 10, 30, 3, 1, 1, "relu", False),    # 100 pixels: 3 full panels of 32 and 4 more
    (600, 12, 12, 210, 1, 1, 0, "leaky", False),  # K = 600 on 144 pixels: blocked where the tile is wider
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c,h,w,m,k,stride,pad,act,with_res", KBLOCKED_CASES)
def test_conv_gemm_kblocked_matches_naive(c, h, w, m, k, stride, pad, act, with_res, threads):
    import numba
    from darknetpy.kernels.gemm import KMR, KNR
    wide = (KMR, KNR) != (MR, NR)
    assert kconv.kblocked(c * k * k, m, h * w) == (c * k * k >= 1024 or wide)
    xs, wt, shift, res, ref, out = gemm_case(c, h, w, m, k, stride, pad, act, with_res)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        kconv.conv_gemm(xs, filters(wt, out), shift, CODE[act], k, stride, out, res)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(out, ref, rtol=2e-7 if act not in ("linear", "relu", "relu6") else 0,
                               atol=0)


@pytest.mark.parametrize("c,m", [(8, 20), (120, 33)])
def test_conv_gemm_refuses_weights_packed_for_another_shape(c, m):
    # the kernels read the packed weights by raw pointer: a wrong packing must be an error, not a wild read
    xs, wt, shift, res, ref, out = gemm_case(c, 6, 6, m, 3, 1, 1, "linear", False)
    good = filters(wt, out)
    bad = np.zeros((good.shape[0], good.shape[1] + 1), np.float32)
    with pytest.raises(ValueError, match="packed as"):
        kconv.conv_gemm(xs, bad, shift, CODE["linear"], 3, 1, out)
    kconv.conv_gemm(xs, good, shift, CODE["linear"], 3, 1, out)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("c,h,w,m,k,stride,pad,groups", CONV_CASES)
def test_conv_exact_matches_naive(c, h, w, m, k, stride, pad, groups):
    x = ints((c, h, w))
    wt = ints((m, c // groups, k, k))
    ref = naive_conv(x, wt, groups, stride, pad)
    out = np.empty(ref.shape, np.float32)
    kex.conv_exact(x, wt, groups, k, stride, pad, out)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("c,h,w,m,k,stride,pad,groups", CONV_CASES)
def test_conv_fast_matches_naive(c, h, w, m, k, stride, pad, groups):
    x = ints((c, h, w))
    wt = ints((m, c // groups, k, k))
    shift = ints((m,))
    ref = naive_conv(x, wt, groups, stride, pad) + shift[:, None, None]
    out = np.empty(ref.shape, np.float32)
    if groups == 1:
        xs = np.full(kconv.input_shape(c, h, w, pad, stride), 9.0, np.float32)    # stale scratch contents
        kconv.prepare_input(x, pad, xs)
        kconv.conv_gemm(xs, filters(wt, out), shift, CODE["linear"], k, stride, out)
    else:
        scratch = np.full((4, kdw.scratch_size(c, h, w, groups, pad, stride, k)), 9.0, np.float32)
        kdw.conv_grouped(x, wt, groups, shift, CODE["linear"], pad, stride, out, scratch)
    assert np.array_equal(out, ref)


def test_conv_gemm_fuses_activation_and_writes_into_a_view():
    # The GEMM writes act(acc + shift) into a channel slice of a larger (route) buffer.
    x = ints((4, 6, 6))
    wt = ints((5, 4, 3, 3))
    shift = ints((5,))
    big = np.full((9, 6, 6), 7.0, np.float32)
    xs = np.full(kconv.input_shape(4, 6, 6, 1, 1), 99.0, np.float32)   # reused scratch, stale contents
    kconv.prepare_input(x, 1, xs)
    kconv.conv_gemm(xs, kconv.pack_filters(wt.reshape(5, -1), 36), shift, CODE["relu"], 3, 1, big[2:7])
    ref = np.maximum(naive_conv(x, wt, 1, 1, 1) + shift[:, None, None], 0)
    assert np.array_equal(big[2:7], ref)
    assert np.all(big[:2] == 7) and np.all(big[7:] == 7)


@pytest.mark.parametrize("c,h,w,m", [(8, 7, 9, 5), (16, 12, 12, 13), (9, 15, 14, 32), (8, 1, 5, 3), (8, 33, 3, 7)])
@pytest.mark.parametrize("act", ["linear", "leaky", "relu6"])
def test_winograd_matches_naive(c, h, w, m, act):
    # integer inputs: the 1/2 factors of G and every sum stay exact, so Winograd must equal the reference
    from darknetpy.kernels import winograd as kw
    x = ints((c, h, w))
    wt = ints((m, c, 3, 3))
    shift = ints((m,))
    ref = naive_conv(x, wt, 1, 1, 1) + shift[:, None, None]
    ref = np.array([reference_activation(act, v) for v in ref.astype(np.float32).ravel()]).reshape(ref.shape)
    out = np.full(ref.shape, np.nan, np.float32)
    kw.conv3x3_winograd(x, kw.transform_weights(wt), shift, CODE[act], 1, out)
    if act == "leaky":      # the fast path's leaky is float32(0.1)*x: within one ulp of darknet's
        np.testing.assert_allclose(out, ref, rtol=2e-7, atol=0)
    else:
        assert np.array_equal(out, ref)


@pytest.mark.parametrize("f4", [False, True])
@pytest.mark.parametrize("c,h,w,m,threads", [
    (8, 20, 20, 17, 2),      # 2 tile panels (F4) / 7 (F2): one block per thread
    (130, 18, 18, 9, 1),     # transformed input of one panel > the block budget: one panel per block
    (12, 6, 6, 40, 2),       # a single tile panel: the threads split the filter panels instead
    (16, 13, 9, 8, 2),       # odd edges: partial tiles on the right and bottom
    (32, 40, 40, 160, 2),    # blocks sized by U (327 KB of F(2x2) weights): several per thread
    (256, 13, 13, 272, 2),   # U > 4 MB and 4x V: the threads split the filter panels of 4 tile panels
])
def test_winograd_blocks_and_thread_splits_match_naive(c, h, w, m, threads, f4):
    import numba

    from darknetpy.kernels import winograd as kw
    rng = np.random.default_rng(c * h + m)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    shift = rng.standard_normal(m).astype(np.float32)
    # float64, one tap at a time (the layer shapes here are too large for naive_conv's Python loops)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    ref = sum(np.einsum("mc,chw->mhw", wt[:, :, ky, kx].astype(np.float64), xp[:, ky:ky + h, kx:kx + w])
              for ky in range(3) for kx in range(3)) + shift[:, None, None]
    out = np.full(ref.shape, np.nan, np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        if f4:
            kw.conv3x3_winograd4(x, kw.transform_weights4(wt), shift, CODE["linear"], 1, out)
        else:
            kw.conv3x3_winograd(x, kw.transform_weights(wt), shift, CODE["linear"], 1, out)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_winograd_work_split_choices():
    from darknetpy.kernels import config
    assert config.winograd_split_filters(32 << 20, 2 << 20) == 4     # yolov2-tiny's 512->1024 at 13x13
    assert not config.winograd_split_filters(6 << 20, 4 << 20)       # U not much larger than V
    assert not config.winograd_split_filters(2 << 20, 256 << 10)     # U stays in cache
    # the V blocks the threads hold at once (memory.plan_bytes counts them): 512->1024 at 13x13, F(2x2):
    # 4 panels of 512 KB; 2 threads split the filters (all 4 panels each); 8 threads outnumber the panels
    npan, panel = config.winograd_v_panels(512, 13, 13, 2)
    assert (npan, panel) == (4, 16 * 512 * 16 * 4)
    assert config.winograd_v_scratch(32 << 20, npan, panel, 2) == 2 * 4 * panel
    assert config.winograd_v_scratch(32 << 20, npan, panel, 8) == 8 * 4 * panel
    # Tiny Darknet's 16->32 at 112x112, F(4x4): 49 panels of 36 KB, blocks of 256 KB (7 panels) per thread
    npan, panel = config.winograd_v_panels(16, 112, 112, 4)
    assert (npan, config.winograd_v_scratch(74 << 10, npan, panel, 2)) == (49, 2 * 7 * panel)



@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c,h,w,m,size,stride,pad", [
    (3, 40, 64, 16, 3, 1, 1),      # whole pixel panels (the YOLOs' first layer, smaller)
    (3, 20, 36, 24, 3, 1, 1),      # a last panel of 4 columns per row pair, a partial filter panel
    (5, 12, 20, 13, 3, 1, 1),      # 13 filters: one and a bit filter panels
    (4, 26, 22, 24, 1, 1, 0),      # 1x1 read in place (rows of 22: a panel of 6 at each row's end)
    (6, 36, 52, 16, 3, 2, 1),      # stride 2 -> 18 x 26
    (3, 30, 34, 8, 7, 1, 3),       # 7x7
])
def test_conv_gemm_with_fused_maxpool_is_the_maxpool_of_its_output(c, h, w, m, size, stride, pad, threads):
    # the 2x2 stride-2 max-pool computed from pairs of tiles (bind_conv_gemm(pooled=...)) against
    # [maxpool]'s own kernel on the GEMM's full output: the same bits, for every activation it fuses
    import numba
    rng = np.random.default_rng(c * h + m + size)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c * size * size)) / 4).astype(np.float32)
    shift = rng.standard_normal(m).astype(np.float32)
    oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
    assert kconv.can_pool(c * size * size, m, oh * ow)
    ap = kconv.pack_filters(wt, oh * ow)
    if size == 1 and stride == 1 and not pad:
        xs = x.reshape(c, h, 1, w)
    else:
        xs = np.zeros(kconv.input_shape(c, h, w, pad, stride), np.float32)
        kconv.prepare_input(x, pad, xs)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for act in ("linear", "relu", "leaky", "relu6"):
            full = np.empty((m, oh, ow), np.float32)
            kconv.conv_gemm(xs, ap, shift, CODE[act], size, stride, full)
            ref = np.empty((m, oh // 2, ow // 2), np.float32)
            kel.maxpool(full, 2, 2, 0, ref)
            got = np.full(ref.shape, np.nan, np.float32)
            untouched = np.full(full.shape, 7.0, np.float32)
            kconv.bind_conv_gemm(xs, ap, shift, CODE[act], size, stride, untouched, pooled=got)()
            assert np.array_equal(got.view(np.int32), ref.view(np.int32)), act
            assert (untouched == 7.0).all()           # the full-size map is not written
    finally:
        numba.set_num_threads(before)
    with pytest.raises(ValueError, match="cannot pool"):        # an activation the epilogue does not apply
        kconv.bind_conv_gemm(xs, ap, shift, CODE["logistic"], size, stride, full, pooled=got)
    with pytest.raises(ValueError, match="cannot pool"):        # a residual (a fused [shortcut]) as well
        kconv.bind_conv_gemm(xs, ap, shift, CODE["leaky"], size, stride, full, res=full.copy(), pooled=got)
    with pytest.raises(ValueError, match="cannot pool"):        # a pooled buffer of the wrong shape
        kconv.bind_conv_gemm(xs, ap, shift, CODE["leaky"], size, stride, full, pooled=got[:, :-1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("t", [2, 4])
@pytest.mark.parametrize("c,h,w,m", [
    (16, 20, 20, 32),        # whole tiles
    (16, 26, 26, 40),        # F(4x4): a last tile row and column of 2 pixels (pooled: 1)
    (32, 14, 18, 64),        # different partial edges across and down
    (12, 2, 2, 8),           # a single tile, itself partial for F(4x4)
    (24, 52, 52, 9),         # many tile panels, a partial filter panel
])
def test_winograd_with_fused_maxpool_is_the_maxpool_of_its_output(c, h, w, m, t, threads):
    # the 2x2 stride-2 max-pool computed from the tiles in registers (bind_winograd(pool=True)) against
    # [maxpool]'s own kernel on the full output: the same bits, for every activation the pool can fuse
    import numba

    from darknetpy.kernels import winograd as kw
    rng = np.random.default_rng(c * h + m + t)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c, 3, 3)) / 10).astype(np.float32)
    shift = rng.standard_normal(m).astype(np.float32)
    up = (kw.transform_weights4 if t == 4 else kw.transform_weights)(wt)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for act in ("linear", "relu", "leaky", "relu6"):
            full = np.empty((m, h, w), np.float32)
            kw.bind_winograd(x, up, shift, CODE[act], 1, full, None, t)()
            ref = np.empty((m, h // 2, w // 2), np.float32)
            kel.maxpool(full, 2, 2, 1, ref)
            got = np.full(ref.shape, np.nan, np.float32)
            kw.bind_winograd(x, up, shift, CODE[act], 1, got, None, t, pool=True)()
            assert np.array_equal(got, ref), act
    finally:
        numba.set_num_threads(before)
    with pytest.raises(ValueError, match="max-pool"):          # an activation the inverse transform does not apply
        kw.bind_winograd(x, up, shift, CODE["logistic"], 1, got, None, t, pool=True)
    with pytest.raises(ValueError, match="max-pool"):          # an odd map
        kw.bind_winograd(x[:, :-1], up, shift, CODE["leaky"], 1, got, None, t, pool=True)


@pytest.mark.parametrize("jn", [1, 2, 3, 4, 5, 16])
def test_microkernel_cols_equals_the_full_kernel_on_its_columns(jn):
    from numba import njit

    from darknetpy.kernels.gemm import microkernel, microkernel_cols

    @njit
    def both(ap, bp, k, t_full, t_cols, jn):
        microkernel(ap.ctypes.data, bp.ctypes.data, k, t_full.ctypes.data)
        microkernel_cols(ap.ctypes.data, bp.ctypes.data, k, t_cols.ctypes.data, jn)

    rng = np.random.default_rng(jn)
    k = 37
    ap = rng.standard_normal(k * MR).astype(np.float32)
    bp = rng.standard_normal(k * NR).astype(np.float32)
    full, cols = np.zeros(MR * NR, np.float32), np.full(MR * NR, np.nan, np.float32)
    both(ap, bp, k, full, cols, jn)
    assert np.array_equal(cols.reshape(MR, NR)[:, :jn], full.reshape(MR, NR)[:, :jn])
    ref = ap.reshape(k, MR).T.astype(np.float64) @ bp.reshape(k, NR).astype(np.float64)
    np.testing.assert_allclose(full.reshape(MR, NR), ref, rtol=1e-5, atol=1e-5)


def test_pack_a_layout():
    rows = MR + 1                       # one full panel and one with a single row (MR is 6 or 8 by CPU)
    a = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 1
    ap = pack_a(a)
    assert ap.shape == (2, 3 * MR)
    for i in range(rows):
        for k in range(3):
            assert ap[i // MR, k * MR + i % MR] == a[i, k]
    assert np.all(ap[1, [k * MR + r for k in range(3) for r in range(1, MR)]] == 0)
    assert NR % 8 == 0


def test_conv_exact_1x1_stride2_reads_rows_unstrided():
    # darknet's quirk: with size 1 the input is read as rows of out_h*out_w values, no subsampling.
    x = ints((2, 6, 8))
    wt = ints((3, 2, 1, 1))
    out = np.empty((3, 3, 4), np.float32)
    kex.conv_exact(x, wt, 1, 1, 2, 0, out)
    flat = x.reshape(-1)
    n = 12
    ref = np.stack([sum(wt[o, c, 0, 0] * flat[c * n:(c + 1) * n] for c in range(2)) for o in range(3)])
    assert np.array_equal(out.reshape(3, -1), ref)


def naive_dot4(a, b):
    """The lane pattern of darknet.md §9, written out independently."""
    n = len(a)
    lanes = [np.float32(0)] * 4
    k4 = n - n % 4
    for k in range(k4):
        lanes[k % 4] = np.float32(lanes[k % 4] + np.float32(a[k] * b[k]))
    rem = n - k4
    f = np.float32
    if rem >= 2:
        s = f(f(f(lanes[0] + lanes[2]) + f(a[k4] * b[k4])) + f(f(lanes[1] + lanes[3]) + f(a[k4 + 1] * b[k4 + 1])))
        if rem == 3:
            s = f(s + f(a[k4 + 2] * b[k4 + 2]))
    else:
        s = f(f(lanes[0] + lanes[2]) + f(lanes[1] + lanes[3]))
        if rem == 1:
            s = f(s + f(a[k4] * b[k4]))
    return s


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 40, 41, 42, 43])
def test_connected_exact_lane_order(n):
    # random reals, not integers: the order of summation must be exactly the lane pattern
    x = rng.standard_normal(n).astype(np.float32)
    w = rng.standard_normal((5, n)).astype(np.float32)
    out = np.empty(5, np.float32)
    kex.connected_exact(x, w, out)
    assert np.array_equal(out, np.array([naive_dot4(x, w[o]) for o in range(5)], np.float32))


def test_connected_fast():
    x = ints((37,))
    w = ints((9, 37))
    shift = ints((9,))
    out = np.empty(9, np.float32)
    kconv.connected(x, w, shift, CODE["linear"], out)
    assert np.array_equal(out, w.astype(np.float64) @ x + shift)


def filters(wt, out):
    """conv_gemm's packed weights for OIHW weights ``wt`` and output ``out``."""
    return kconv.pack_filters(wt.reshape(wt.shape[0], -1), out.shape[1] * out.shape[2])


def naive_maxpool(x, size, stride, pad):
    c, h, w = x.shape
    oh = (h + pad - size) // stride + 1
    ow = (w + pad - size) // stride + 1
    off = -(pad // 2)
    out = np.full((c, oh, ow), -np.finfo(np.float32).max, np.float32)
    for ch in range(c):
        for i in range(oh):
            for j in range(ow):
                for n in range(size):
                    for m in range(size):
                        y, xx = off + i * stride + n, off + j * stride + m
                        if 0 <= y < h and 0 <= xx < w:
                            out[ch, i, j] = max(out[ch, i, j], x[ch, y, xx])
    return out


@pytest.mark.parametrize("h,w,size,stride,pad", [(7, 9, 2, 2, 1), (6, 6, 2, 1, 1), (11, 13, 3, 2, 2),
                                                  (5, 5, 3, 1, 2), (8, 8, 2, 2, 0), (5, 7, 1, 1, 0),
                                                  (4, 4, 3, 3, 6), (13, 13, 2, 1, 1), (9, 10, 4, 3, 3),
                                                  (6, 5, 5, 2, 8), (10, 9, 3, 2, 0), (7, 9, 2, 1, 0),
                                                  (5, 8, 2, 1, 1), (1, 4, 2, 1, 1), (3, 1, 2, 1, 1)])
def test_maxpool(h, w, size, stride, pad):
    x = ints((3, h, w), -50, 50)
    ref = naive_maxpool(x, size, stride, pad)
    out = np.empty(ref.shape, np.float32)
    kel.maxpool(x, size, stride, pad, out)
    assert np.array_equal(out, ref)


def test_maxpool_window_entirely_in_padding_gives_minus_flt_max():
    # size 1, total padding 2 on a 2x2 input: 4x4 output whose border windows start at -1 (padding only)
    x = ints((1, 2, 2))
    out = np.empty((1, 4, 4), np.float32)
    kel.maxpool(x, 1, 1, 2, out)
    assert out[0, 0, 0] == out[0, 3, 3] == np.float32(-3.4028234663852886e38)
    assert np.array_equal(out[0, 1:3, 1:3], x[0])


def test_avgpool_is_sum_times_reciprocal():
    x = rng.standard_normal((4, 5 * 7)).astype(np.float32)
    out = np.empty(4, np.float32)
    kex.avgpool_exact(x, out)
    for ch in range(4):
        s = np.float32(0)
        for v in x[ch]:
            s = np.float32(s + v)
        assert out[ch] == np.float32(s * (np.float32(1) / np.float32(35)))


def test_softmax_groups_and_temperature():
    # its own generator: the module's ``rng`` would give this test other values whenever a test before it
    # draws more or fewer; darknet.md 9: softmax agrees with a double reference to 1e-6 absolute
    x = np.random.default_rng(7).standard_normal(12).astype(np.float32) * 3
    out = np.empty(12, np.float32)
    kel.softmax(x, 3, 2.0, out)
    for g in range(3):
        v = x[g * 4:(g + 1) * 4].astype(np.float64) / 2
        e = np.exp(v - v.max())
        np.testing.assert_allclose(out[g * 4:(g + 1) * 4], e / e.sum(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("src_shape,prev_shape", [((4, 6, 6), (4, 6, 6)), ((4, 6, 6), (6, 6, 6)),
                                                   ((6, 6, 6), (2, 6, 6)), ((3, 8, 8), (3, 4, 4)),
                                                   ((3, 4, 4), (3, 8, 8))])
def test_shortcut_channels_and_spatial(src_shape, prev_shape):
    src, prev = ints(src_shape), ints(prev_shape)
    alpha, beta = 0.5, -2.0
    out = np.empty(prev_shape, np.float32)
    kel.shortcut(prev, src, alpha, beta, CODE["linear"], out)
    ref = prev.copy()
    (c1, h1, w1), (c2, h2, w2) = src_shape, prev_shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    for k in range(min(c1, c2)):
        for j in range(min(h1, h2)):
            for i in range(min(w1, w2)):
                ref[k, j * sample, i * sample] = alpha * ref[k, j * sample, i * sample] + beta * src[k, j * stride, i * stride]
    assert np.array_equal(out, ref)


def test_upsample_and_downsample_sum():
    x = ints((2, 3, 4))
    out = np.empty((2, 9, 12), np.float32)
    kel.upsample(x, 3, 0.5, False, out)
    assert np.array_equal(out, 0.5 * x.repeat(3, 1).repeat(3, 2))
    y = ints((2, 8, 10))
    down = np.empty((2, 4, 5), np.float32)
    kel.upsample(y, 2, 2.0, True, down)
    ref = np.zeros((2, 4, 5))
    for c in range(2):
        for j in range(8):
            for i in range(10):
                ref[c, j // 2, i // 2] += 2.0 * y[c, j, i]
    assert np.array_equal(down, ref)


def upsample_cpu(inp, w, h, c, stride, forward, scale, out):
    """darknet's upsample_cpu (src/blas.c), batch 1, on flat float32 arrays, line for line."""
    scale = np.float32(scale)
    for k in range(c):
        for j in range(h * stride):
            for i in range(w * stride):
                in_index = k * w * h + (j // stride) * w + i // stride
                out_index = k * w * h * stride * stride + j * w * stride + i
                if forward:
                    out[out_index] = scale * inp[in_index]
                else:
                    inp[in_index] += scale * out[out_index]


@pytest.mark.parametrize("c,h,w,s", [(2, 7, 9, 2), (3, 5, 8, 2), (1, 7, 7, 3), (2, 9, 11, 3), (3, 6, 6, 2)])
def test_downsample_reads_its_input_like_darknet(c, h, w, s):
    """forward_upsample_layer with stride < 0: upsample_cpu(l.output, out_w, out_h, c, .., 0, scale, net.input)
    reads the input with the output's row and channel strides; odd sizes mix neighbouring rows and channels."""
    x = np.random.default_rng(c * h * w * s).standard_normal((c, h, w)).astype(np.float32)
    oh, ow = h // s, w // s
    ref = np.zeros(c * oh * ow, np.float32)                 # fill_cpu(l.outputs, 0, l.output)
    upsample_cpu(ref, ow, oh, c, s, 0, 0.75, x.reshape(-1))
    out = np.empty((c, oh, ow), np.float32)
    kel.upsample(x, s, 0.75, True, out)
    assert np.array_equal(out.reshape(-1), ref)
    up = np.empty((c, h * s, w * s), np.float32)              # and the forward direction, for completeness
    kel.upsample(x, s, 0.75, False, up)
    ref_up = np.zeros(c * h * w * s * s, np.float32)
    upsample_cpu(x.reshape(-1), w, h, c, s, 1, 0.75, ref_up)
    assert np.array_equal(up.reshape(-1), ref_up)


def test_crop():
    x = ints((2, 9, 9))
    out = np.empty((2, 5, 7), np.float32)
    kel.crop(x, out, noadjust=False)
    assert np.array_equal(out, x[:, 2:7, 1:8] * 2 - 1)
    kel.crop(x, out, noadjust=True)
    assert np.array_equal(out, x[:, 2:7, 1:8])


def test_local_layer():
    c, h, w, f, k, pad = 2, 5, 5, 3, 3, 1
    x = ints((c, h, w))
    oh, ow = h, w
    wt = ints((oh * ow, f, c * k * k))
    b = ints((f, oh, ow))
    out = np.empty((f, oh, ow), np.float32)
    kex.local_exact(x, wt, b, k, 1, pad, CODE["linear"], out)
    ref = b.astype(np.float64).copy()
    for y in range(oh):
        for xx in range(ow):
            for o in range(f):
                kk = 0
                for ci in range(c):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = y - pad + ky, xx - pad + kx
                            if 0 <= iy < h and 0 <= ix < w:
                                ref[o, y, xx] += wt[y * ow + xx, o, kk] * x[ci, iy, ix]
                            kk += 1
    assert np.array_equal(out, ref)


def reference_activation(name: str, x: float) -> np.float32:
    """darknet's activations.h formulas, evaluated in double (C semantics), written independently."""
    f = np.float32
    d = float(x)
    if name == "linear":
        return f(x)
    if name == "leaky":
        return f(d if x > 0 else 0.1 * d)
    if name == "relu":
        return f(x) * f(x > 0)
    if name == "relu6":
        return f(min(max(d, 0.0), 6.0))
    if name == "logistic":
        return f(1.0 / (1.0 + math.exp(-d)))
    if name == "loggy":
        return f(2.0 / (1.0 + math.exp(-d)) - 1.0)
    if name == "tanh":
        two_x = float(f(2) * f(x))
        e = math.exp(two_x) if two_x < 709 else math.inf
        return f((e - 1) / (e + 1)) if e != math.inf else f("nan")
    if name == "elu":
        return f((d >= 0) * d + (d < 0) * (math.exp(d) - 1))
    if name == "selu":
        return f((d >= 0) * 1.0507 * d + (d < 0) * 1.0507 * 1.6732 * (math.exp(d) - 1))
    if name == "relie":
        return f(d if x > 0 else 0.01 * d)
    if name == "ramp":
        return f(float(f(x) * f(x > 0)) + 0.1 * d)
    if name == "plse":
        if x < -4:
            return f(0.01 * float(f(x) + f(4)))
        if x > 4:
            return f(0.01 * float(f(x) - f(4)) + 1)
        return f(0.125 * d + 0.5)
    if name == "hardtan":
        return f(-1) if x < -1 else f(1) if x > 1 else f(x)
    if name == "lhtan":
        return f(0.001 * d) if x < 0 else f(0.001 * float(f(x) - f(1)) + 1) if x > 1 else f(x)
    if name == "stair":
        n = math.floor(d)
        if n % 2 == 0:
            return f(math.floor(d / 2))
        return f(float(f(x) - f(n)) + math.floor(d / 2))
    raise KeyError(name)


@pytest.mark.parametrize("name", NAMES)
def test_activation_formulas(name):
    xs = np.concatenate([np.array([-7.5, -6, -4.5, -4, -1.5, -1, -0.1, 0, 0.1, 0.5, 1, 1.5, 3.999, 4, 4.5,
                                   5.99, 6, 6.01, 7.5, 40], np.float32),
                         rng.standard_normal(300).astype(np.float32) * 5])
    y = xs.copy()
    activate(y, name)
    ref = np.array([reference_activation(name, v) for v in xs], np.float32)
    np.testing.assert_array_equal(y, ref)


def test_relu6_straddles_zero_and_six():
    x = np.array([-1e-7, -0.0, 0.0, 1e-7, 5.9999995, 6.0, 6.0000005, 100], np.float32)
    activate(x, "relu6")
    assert x.tolist() == [0.0, 0.0, 0.0, np.float32(1e-7), np.float32(5.9999995), 6.0, 6.0, 6.0]


def test_tanh_overflows_to_nan_like_darknet():
    x = np.array([356.0, 1.0], np.float32)
    activate(x, "tanh")
    assert np.isnan(x[0]) and x[1] == np.float32(math.tanh(1.0))


def test_leaky_uses_double_point_one():
    # float32(0.1)*x and float(0.1*(double)x) differ for some x; darknet is the latter.
    xs = -rng.uniform(0, 100, 20000).astype(np.float32)
    y = xs.copy()
    activate(y, "leaky")
    assert np.array_equal(y, (0.1 * xs.astype(np.float64)).astype(np.float32))
    assert not np.array_equal(y, np.float32(0.1) * xs)


def test_batchnorm_exact_formula():
    x = rng.standard_normal((3, 10)).astype(np.float32) * 4
    scale = rng.standard_normal(3).astype(np.float32)
    mean = rng.standard_normal(3).astype(np.float32)
    var = np.array([1e-12, 0.5, 3.0], np.float32)
    y = x.copy()
    kex.batchnorm_exact(y, scale, mean, var)
    den = np.sqrt(var.astype(np.float64)) + np.float64(np.float32(1e-6))
    ref = ((x - mean[:, None]).astype(np.float64) / den[:, None]).astype(np.float32) * scale[:, None]
    assert np.array_equal(y, ref)


@pytest.mark.parametrize("c,h,w,stride", [(3, 5, 5, 1), (3, 5, 6, 2), (3, 6, 5, 2), (2, 1, 1, 1), (2, 2, 3, 2),
                                          (4, 9, 8, 1), (4, 8, 9, 2), (70, 14, 14, 2), (66, 7, 7, 1), (5, 2, 1, 2),
                                          (32, 6, 37, 1), (48, 3, 16, 2), (17, 9, 18, 1), (8, 4, 8, 1)])
def test_depthwise_hwc_kernel(c, h, w, stride):
    # the depthwise path vectorised across channels (HWC) against the naive loops; the transpose into HWC
    # moves blocks of 8 or 16 channels (the vector width) by up to that many pixels: channel counts with
    # and without a remainder, rows shorter than, equal to and longer than a block (37 = 16 + 16 + 5)
    x = ints((c, h, w))
    wt = ints((c, 1, 3, 3))
    shift = ints((c,))
    ref = naive_conv(x, wt, c, stride, 1) + shift[:, None, None]
    out = np.full(ref.shape, np.nan, np.float32)
    kdw.depthwise_hwc(x, wt, shift, CODE["linear"], 1, stride, out)
    assert np.array_equal(out, ref)
    kdw.depthwise_hwc(x, wt, shift, CODE["relu6"], 1, stride, out)
    assert np.array_equal(out, np.clip(ref, 0, 6))


# -- kernels/config.py: tunables reach the kernels as arguments ----------------------------------------------

def test_no_kernel_reads_a_tunable_as_a_global():
    """numba's on-disk cache freezes the module globals a kernel reads, so a tunable changed later would be
    ignored by cached code: every @njit function gets config's values as arguments."""
    import ast
    from pathlib import Path

    from darknetpy.kernels import config
    tunables = {n for n in vars(config) if n.isupper()} | {"config", "kcfg"}
    root = Path(config.__file__).parent
    checked = 0
    for path in sorted(root.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            decorators = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in fn.decorator_list}
            if not decorators & {"njit", "numba.njit"}:
                continue
            checked += 1
            names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
            assert not names & tunables, f"{path.name}:{fn.lineno} {fn.name} reads {names & tunables}"
    assert checked > 50


@pytest.mark.parametrize("vblock", [1, 1 << 30])
def test_winograd_block_size_changes_the_split_not_the_result(monkeypatch, vblock):
    # one tile panel per block, or every panel in one block: the same values as the default
    from darknetpy.kernels import config
    from darknetpy.kernels import winograd as kw
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 19, 21)).astype(np.float32)
    wt = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)
    shift = rng.standard_normal(20).astype(np.float32)
    for f4, transform, conv in [(True, kw.transform_weights4, kw.conv3x3_winograd4),
                                (False, kw.transform_weights, kw.conv3x3_winograd)]:
        up = transform(wt)
        ref = np.empty((20, 19, 21), np.float32)
        conv(x, up, shift, CODE["leaky"], 1, ref)
        monkeypatch.setattr(config, "WINOGRAD_V_BLOCK_BYTES", vblock)
        out = np.full_like(ref, np.nan)
        conv(x, up, shift, CODE["leaky"], 1, out)
        monkeypatch.undo()
        assert np.array_equal(out, ref), f4


@pytest.mark.parametrize("f4,pool", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("vblock", [1, 1 << 30])
def test_winograd_work_split_changes_nothing(monkeypatch, f4, pool, vblock):
    # the body run as n threads would run it (pool.run_job without a pool: its items one after the other),
    # n = 1..7: shares of (tile panel, filter panel) pairs that end inside a tile panel (F(4x4): 5 tile
    # panels x 3 filter panels on a 30 x 34 map; F(2x2): 16), or with more threads than tile panels the
    # filter panels shared out: every split the same bits, every output written, close to the textbook sum
    from darknetpy.kernels import config
    from darknetpy.kernels import winograd as kw
    from darknetpy.kernels.pool import run_job
    monkeypatch.setattr(config, "WINOGRAD_V_BLOCK_BYTES", vblock)
    rng = np.random.default_rng(9)
    c, h, w, m = 12, 30, 34, 20
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    shift = rng.standard_normal(m).astype(np.float32)
    up = (kw.transform_weights4 if f4 else kw.transform_weights)(wt)
    want = np.maximum(naive_conv(x, wt, 1, 1, 1) + shift[:, None, None], 0)
    if pool:
        want = want.reshape(m, h // 2, 2, w // 2, 2).max(axis=(2, 4))
    first = None
    for n in range(1, 8):
        out = np.full(want.shape, np.nan, np.float32)
        pad, body = kw.bind_winograd(x, up, shift, CODE["relu"], 1, out, t=4 if f4 else 2, pool=pool).calls
        pad()
        run_job(0, body.body.address, n, body.argv.ctypes.data)
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
        first = out if first is None else first
        assert np.array_equal(out, first), n


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("c,cp,h,w,m,size,act,act_p", [
    (32, 32, 12, 16, 64, 1, "relu", "linear"),    # DLA's shape, smaller: 1x1 conv, 1x1 project, whole panels
    (16, 24, 7, 7, 40, 1, "leaky", "relu"),       # 49 pixels: a last panel of 1, a partial filter panel
    (8, 12, 9, 11, 20, 3, "relu6", "linear"),     # a 3x3 conv with the project
    (6, 5, 10, 12, 16, 1, "logistic", "tanh"),    # activations the epilogue does not apply (scalar path)
])
def test_conv_gemm_with_a_project_conv_is_the_shortcut_of_the_two(c, cp, h, w, m, size, act, act_p, threads):
    # bind_conv_gemm(project=...): act(conv(x) + shift + act_p(W_p xp + shift_p)), each project tile
    # computed into the output just before the conv's tile, against the two run apart with the
    # residual read back (what the plan did before): the same bits
    import numba
    rng = np.random.default_rng(c + cp + h + m)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    xp = rng.standard_normal((cp, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c * size * size)) / 4).astype(np.float32)
    wp = (rng.standard_normal((m, cp)) / 4).astype(np.float32)
    shift, shift_p = rng.standard_normal(m).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    ap, app = kconv.pack_filters(wt, h * w), kconv.pack_filters(wp, h * w)
    pad = size // 2
    xs = np.zeros(kconv.input_shape(c, h, w, pad, 1), np.float32)
    kconv.prepare_input(x, pad, xs)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        y_p = np.empty((m, h, w), np.float32)
        kconv.conv_gemm(xp.reshape(cp, h, 1, w), app, shift_p, CODE[act_p], 1, 1, y_p)
        ref = np.empty((m, h, w), np.float32)
        kconv.conv_gemm(xs, ap, shift, CODE[act], size, 1, ref, res=y_p)
        got = np.full(ref.shape, np.nan, np.float32)
        kconv.bind_conv_gemm(xs, ap, shift, CODE[act], size, 1, got, project=(xp, app, shift_p, CODE[act_p]))()
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(got.view(np.int32), ref.view(np.int32))
    with pytest.raises(ValueError, match="cannot add a project"):           # a residual as well
        kconv.bind_conv_gemm(xs, ap, shift, CODE[act], size, 1, got, res=y_p, project=(xp, app, shift_p, 0))
    with pytest.raises(ValueError, match="cannot add a project"):           # its input the wrong size
        kconv.bind_conv_gemm(xs, ap, shift, CODE[act], size, 1, got, project=(xp[:, 1:], app, shift_p, 0))
    with pytest.raises(ValueError, match="cannot add a project"):           # its weights packed for another K
        wrong_k = kconv.pack_filters(np.zeros((m, cp + 1), np.float32), h * w)
        kconv.bind_conv_gemm(xs, ap, shift, CODE[act], size, 1, got, project=(xp, wrong_k, shift_p, 0))


def test_conv_gemm_k_blocked_refuses_a_pool_or_a_project(monkeypatch):
    # its body computes neither: a plan that asked would get the plain output, so it is refused
    monkeypatch.setattr(kconv, "kblocked", lambda kdim, m, n: True)
    c, h, w, m = 16, 8, 8, 24
    xs = np.zeros(kconv.input_shape(c, h, w, 0, 1), np.float32)
    ap = kconv.pack_filters(np.ones((m, c), np.float32), h * w)
    shift, out = np.zeros(m, np.float32), np.empty((m, h, w), np.float32)
    kconv.bind_conv_gemm(xs, ap, shift, 0, 1, 1, out)                      # on its own: bound
    with pytest.raises(ValueError, match="cannot pool .* K-blocked"):
        kconv.bind_conv_gemm(xs, ap, shift, 0, 1, 1, out, pooled=np.empty((m, h // 2, w // 2), np.float32))
    app = kconv.pack_filters(np.ones((m, c), np.float32), h * w)
    with pytest.raises(ValueError, match="cannot add a project .* K-blocked"):
        kconv.bind_conv_gemm(xs, ap, shift, 0, 1, 1, out, project=(np.zeros((c, h, w), np.float32), app, shift, 0))


@pytest.mark.parametrize("c,h,w,m,project", [
    (16, 3, 5, 40, False),       # 15 pixels: one panel, so the threads split its filter panels
    (16, 14, 14, 24, False),     # 13 panels (the last of 4 pixels) x 3 filter panels: shares end mid-panel
    (8, 7, 9, 20, True),         # 4 panels, a partial filter panel, with a project conv
])
def test_conv_gemm_work_split_changes_nothing(c, h, w, m, project):
    # the body run as n threads would run it, its items one after the other on this thread (pool.run_job
    # without a pool), n = 1..7: every split of the tiles (weight-stationary for the first shape) gives
    # the same bits, every output written
    from darknetpy.kernels.pool import run_job
    x, wt, shift = ints((c, h, w)), ints((m, c, 3, 3)), ints((m,))
    xs = np.zeros(kconv.input_shape(c, h, w, 1, 1), np.float32)
    kconv.prepare_input(x, 1, xs)
    ap = kconv.pack_filters(wt.reshape(m, -1), h * w)
    extra, res = None, None
    if project:
        xp, wp = ints((c + 3, h, w)), ints((m, c + 3))
        extra = (xp, kconv.pack_filters(wp, h * w), shift, CODE["linear"])
        res = np.einsum("mk,khw->mhw", wp, xp) + shift[:, None, None]
    ref = naive_conv(x, wt, 1, 1, 1) + shift[:, None, None] + (0 if res is None else res)
    ref = np.maximum(ref, 0)
    # scratch rows for 7 threads (a weight-stationary body packs into row th)
    scratch = np.empty((7, max(1, kconv.gemm_scratch_size(c * 9, m, h * w))), np.float32)
    for n in range(1, 8):
        out = np.full((m, h, w), np.nan, np.float32)
        call = kconv.bind_conv_gemm(xs, ap, shift, CODE["relu"], 3, 1, out, None, scratch, project=extra)
        assert call.max_threads >= n
        run_job(0, call.body.address, n, call.argv.ctypes.data)
        assert np.array_equal(out, ref), n


@pytest.mark.parametrize("lanes", [16, 8])
def test_pixel_tile_choices_follow_the_cpu(monkeypatch, lanes):
    from types import SimpleNamespace

    from darknetpy.kernels import config

    def conv(c, filters, hw, size=3, stride=1, padding=1, groups=1, activation="leaky"):
        return SimpleNamespace(c=c, filters=filters, size=size, stride=stride, padding=padding, groups=groups,
                               out_h=hw, out_w=hw, activation=activation)
    # the choice as made on an AVX-512 CPU (16 lanes) and on an AVX2 one (8), whichever runs the tests
    target = config.choose_target({"+avx2", "+fma", "+avx512f", "+avx512vl"} if lanes == 16 else {"+avx2", "+fma"},
                                  wide=lanes == 16, machine="x86_64", cpu="znver4" if lanes == 16 else "znver3")
    assert target.float_lanes == lanes
    monkeypatch.setattr(config, "codegen_target", lambda: target)
    wide = lanes == 16
    # stride 2: small maps on both; up to 12544 pixels with AVX-512, 1024 with AVX2; not past 2304 taps
    assert config.pixel_tiles(conv(128, 128, 7, stride=2)) and config.pixel_tiles(conv(32, 32, 28, stride=2))
    assert config.pixel_tiles(conv(256, 512, 26, stride=2))             # 2304 taps, 676 pixels
    assert config.pixel_tiles(conv(16, 32, 112, stride=2)) == wide       # 12544 pixels
    assert not config.pixel_tiles(conv(512, 1024, 13, stride=2))        # 4608 taps: the K-blocked GEMM's
    assert not config.pixel_tiles(conv(32, 64, 208, stride=2))          # 43264 pixels: the GEMM's
    assert not config.pixel_tiles(conv(128, 128, 7, stride=2, activation="logistic"))   # not in the epilogue
    assert not config.pixel_tiles(conv(64, 64, 7, stride=2, groups=64))  # depthwise
    # stride 1 (AVX-512 only): 7x7 maps, with the weights in L2 (else Winograd's) or 1x1
    assert config.pixel_tiles(conv(128, 128, 7)) == wide
    assert not config.pixel_tiles(conv(128, 128, 14))                    # 196 pixels: Winograd's
    assert not config.pixel_tiles(conv(256, 256, 7))                    # 2.4 MB of weights: Winograd's
    assert config.pixel_tiles(conv(768, 256, 7, size=1, padding=0)) == wide    # 1x1 at 7x7: any weights
    assert not config.pixel_tiles(conv(128, 128, 14, size=1, padding=0))  # ... at 14x14 they tie the GEMM
    assert not config.pixel_tiles(conv(128, 128, 1, size=1, padding=0))  # a matrix-vector product
    assert not config.pixel_tiles(conv(128, 128, 7, size=1, padding=0, stride=2))


def test_kernel_choices_follow_config():
    from types import SimpleNamespace

    from darknetpy.kernels import config

    def conv(c, filters, hw, size=3, stride=1, padding=1, groups=1, activation="leaky"):
        return SimpleNamespace(c=c, filters=filters, size=size, stride=stride, padding=padding, groups=groups,
                               out_h=hw, out_w=hw, activation=activation)
    assert config.winograd_variant(conv(64, 128, 28)) == 4               # Tiny Darknet's 28x28 layers
    assert config.winograd_variant(conv(64, 64, 14)) == 2                # 14x14: F(4x4) would pad it to 16x16
    assert config.winograd_variant(conv(64, 64, 16)) == 4                # ... 16x16: whole 4x4 tiles
    assert config.winograd_variant(conv(32, 64, 22)) == 4                # ... larger maps: F(4x4) still
    assert config.winograd_variant(conv(64, 512, 14)) == 2              # F(4x4) weights past its budget
    assert config.winograd_variant(conv(128, 128, 7)) == 2               # F(4x4) only to 64 channels
    assert not config.pixel_tiles(conv(64, 64, 7, groups=64))           # depthwise
    assert config.winograd_variant(conv(384, 256, 26)) == 2              # 6.3 MB of U on 676 pixels
    assert config.winograd_variant(conv(256, 512, 13)) == 2              # 8.4 MB of U on 169 pixels
    assert config.winograd_variant(conv(1024, 1024, 7)) == 2             # 64 MB of U on 49
    assert config.winograd_variant(conv(512, 512, 5)) == 0               # 16 MB of U on 25: the GEMM
    assert config.winograd_variant(conv(256, 256, 3)) == 2               # ... but 4 MB stays in cache
    assert config.winograd_variant(conv(2048, 1024, 13)) == 0            # F(2x2) weights past its budget
    # V blocks as large as U (so U is read once per block), within bounds
    assert config.winograd_v_block(74 << 10) == config.WINOGRAD_V_BLOCK_BYTES
    assert config.winograd_v_block(6 << 20) == 6 << 20
    assert config.winograd_v_block(84 << 20) == config.WINOGRAD_V_BLOCK_MAX_BYTES
    assert config.winograd_variant(conv(8, 128, 28)) == 0
    assert config.winograd_variant(conv(16, 16, 224)) == 0
    assert config.winograd_variant(conv(64, 128, 28, stride=2)) == 0
    assert config.depthwise_kind(conv(64, 64, 7, groups=64)) == "hwc"
    assert config.depthwise_kind(conv(64, 64, 7, stride=2, groups=64)) == "hwc"
    assert config.depthwise_kind(conv(64, 64, 14, groups=64)) == "planes"
    assert config.depthwise_kind(conv(320, 320, 14, stride=2, groups=320)) == "planes"
    assert config.depthwise_kind(conv(32, 32, 7, groups=32)) == "planes"
    assert config.depthwise_kind(conv(64, 64, 14, groups=32)) == "planes"
    assert config.depthwise_kind(conv(64, 64, 14)) == ""
    target = config.codegen_target()
    assert (target.float_mr, target.float_lanes) in ((16, 16), (8, 16), (6, 8))
    avx512 = {"+avx2", "+fma", "+avx512f", "+avx512vl"}
    assert config.choose_target(avx512, wide=True, machine="x86_64", cpu="sapphirerapids").float_mr == 16
    assert config.choose_target(avx512, wide=True, machine="x86_64", cpu="znver4").float_mr == 8
    assert config.choose_target(avx512, wide=True, machine="x86_64").float_mr == 16
    assert config.choose_target({"+avx2", "+fma"}, wide=False, machine="x86_64", cpu="haswell").float_mr == 6
    assert config.int8_conv_path(3, 1, False, lambda: False) == "im2col"
    assert config.int8_conv_path(3, 1, False, lambda: True) == "quads"
    assert config.int8_conv_path(4, 1, False, lambda: 1 / 0) == "quads"   # the pair check is for odd C only
    assert config.int8_conv_path(8, 8, True, lambda: 1 / 0) == "depthwise"
    assert config.int8_conv_path(8, 4, False, lambda: 1 / 0) == "grouped"


def test_helpers_called_from_fastmath_kernels_pin_fastmath():
    """See kernels/__init__.py: left unset, fastmath is inherited from the first caller, and cold and warm
    runs (compiled vs cached kernels) give different bits (Winograd F(4x4) on Tiny Darknet's layer 5)."""
    from darknetpy.kernels import activation as kact
    for fn in (kact.activate_scalar, kact.activate_fast, kact.activate_block):
        assert fn.targetoptions.get("fastmath") is False, fn.py_func.__name__


def test_copies_moves_every_pair_and_refuses_a_size_mismatch():
    # [route]'s inputs that could not be written in place: several copies as one Call, each split among
    # the threads (odd sizes: the split's edges)
    import numba
    srcs = [np.arange(n, dtype=np.float32) + 100 * n for n in (1, 7, 1001)]
    dsts = [np.full(s.size, np.nan, np.float32) for s in srcs]
    old = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        kel.bind_copies(list(zip(srcs, dsts)))()
    finally:
        numba.set_num_threads(old)
    assert all(np.array_equal(s, d) for s, d in zip(srcs, dsts))
    with pytest.raises(ValueError, match="copies"):
        kel.bind_copies([(srcs[1], dsts[2])])
