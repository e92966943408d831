"""The detection heads [region], [yolo], [reorg], [detection]: cfg checks, kernels against naive numpy, and the
head sections of every detector cfg in pjreddie's cfg/ (../shared/specs/detection.md §2-4).

darknet's own outputs for these layers are checked in test_conformance_detection.py; here:

* every parse-time check of heads.py gives a CfgError naming ``file:line`` (the key's line when one key is
  at fault) and what to change;
* the kernels against slow obvious numpy versions written from detection.md §4 (reorg's index map in both
  directions, flatten, extra; region's logistic/softmax planes, with and without background; yolo; the
  [detection] softmax), and the vector expf against the C library's;
* the head sections of yolov1(-tiny), yolov2(-tiny)(-voc), yolov3(-tiny, -voc, -spp, -openimages), written
  from the spec in small networks, load without a warning (training keys are accepted silently) and run, the
  fast plan agreeing with the exact one.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from darknetpy import layers as L
from darknetpy.errors import CfgError
from darknetpy.graph import graph_from_text
from darknetpy.kernels import detection as kdet
from darknetpy.network import Network
from darknetpy.weights import random_params


def net(w: int, h: int, c: int = 3) -> str:
    return f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


def conv(filters: int, size: int = 1, stride: int = 1, bn: int = 1, activation: str = "leaky") -> str:
    b = "batch_normalize=1\n" if bn else ""
    return f"[convolutional]\n{b}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={activation}\n"


def err(text: str) -> str:
    with pytest.raises(CfgError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph_from_text(text, "d.cfg")
    return str(e.value)


def line_of(text: str, needle: str, after: str = "[net]") -> int:
    """1-based number of the first line of ``text`` that starts with ``needle`` after the line ``after``."""
    lines = text.split("\n")
    start = lines.index(after)
    return next(i for i, ln in enumerate(lines[start:], start + 1) if ln.startswith(needle))


def build(text: str) -> L.Graph:
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no warning: every key is one darknet reads
        return graph_from_text(text, "d.cfg")


# -- parse-time checks -----------------------------------------------------------------------------------------

REGION = "[region]\nanchors=1,2,3,4\nclasses=3\ncoords=4\nnum=2\nsoftmax=1\n"
YOLO = "[yolo]\nmask=1,2\nanchors=10,14,23,27,37,58\nclasses=3\nnum=3\n"


def test_region_channels_must_match_num_classes_coords():
    text = net(8, 8) + conv(17) + REGION
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, '[region]')}: layer 1 [region]: its input has 17 channels"), m
    assert "num*(classes+coords+1) = 16" in m and "filters=16" in m


@pytest.mark.parametrize("anchors,count", [("1,2,3", 3), ("1,2,3,4,5,6", 6)])
def test_region_anchors_must_be_two_per_anchor(anchors, count):
    text = net(8, 8) + conv(16) + REGION.replace("anchors=1,2,3,4", f"anchors={anchors}")
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, 'anchors=')}: layer 1 [region]: key 'anchors' has {count} values, "
                        "but [region] needs 2*num = 4"), m


@pytest.mark.parametrize("anchors,what", [("1,2,,4", "empty item"), ("1,2,x,4", "'x' is not a number"),
                                          ("1,2,3,1e39", "beyond the range of darknet's float")])
def test_anchor_values_are_numbers(anchors, what):
    text = net(8, 8) + conv(16) + REGION.replace("anchors=1,2,3,4", f"anchors={anchors}")
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, 'anchors=')}: layer 1 [region]: key 'anchors'") and what in m, m


def test_region_without_anchors_uses_darknets_default():
    g = build(net(8, 8) + conv(16) + REGION.replace("anchors=1,2,3,4\n", ""))
    assert g[1].anchors == (0.5,) * 4


@pytest.mark.parametrize("key,value,what", [
    ("coords", "3", "coords=3: a box needs at least the 4 coordinates"),
    ("classes", "0", "key 'classes' must be positive, got 0"),
    ("num", "0", "key 'num' must be positive, got 0"),
    ("tree", "data/9k.tree", "a softmax tree (tree=, yolo9000's hierarchical classes) is out of darknetpy's scope"),
])
def test_region_key_checks(key, value, what):
    text = net(8, 8) + conv(16) + REGION.replace("[region]\n", f"[region]\n{key}={value}\n")
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, key + '=')}: layer 1 [region]: {what}"), m


def test_heads_need_an_image_input():
    for head in (REGION, YOLO, "[reorg]\nstride=2\n"):
        text = net(8, 8) + conv(16) + "[softmax]\n" + head
        m = err(text)
        assert re.match(r"d\.cfg:\d+: layer 2 \[\w+\]: a \[\w+\] needs an image input", m), m


def test_yolo_channels_must_match_mask_and_classes():
    text = net(8, 8) + conv(18) + YOLO
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, '[yolo]')}: layer 1 [yolo]: its input has 18 channels"), m
    assert "len(mask)*(classes+5) = 16" in m


@pytest.mark.parametrize("mask,what", [("1,3", "anchor index 3 is out of range: num=3 anchors are listed, so the "
                                               "indices run from 0 to 2"),
                                       ("-1,0", "anchor index -1 is out of range"),
                                       ("1,a", "'a' is not an anchor index"), ("1,", "empty item")])
def test_yolo_mask_indices(mask, what):
    text = net(8, 8) + conv(16) + YOLO.replace("mask=1,2", f"mask={mask}")
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, 'mask=')}: layer 1 [yolo]: key 'mask'") and what in m, m


def test_yolo_anchors_count_against_num():
    text = net(8, 8) + conv(16) + YOLO.replace("num=3", "num=4")
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, 'anchors=')}: layer 1 [yolo]: key 'anchors' has 6 values, but "
                        "[yolo] needs 2*num = 8"), m


def test_yolo_default_mask_is_every_anchor():
    g = build(net(8, 8) + conv(24) + "[yolo]\nanchors=1,2,3,4,5,6\nclasses=3\nnum=3\n")
    assert g[1].mask == (0, 1, 2) and g[1].n == 3 and g[1].anchors == (1, 2, 3, 4, 5, 6)


def test_yolo_fork_keys_that_change_the_boxes_are_refused():
    text = net(8, 8) + conv(16) + YOLO + "scale_x_y=1.05\n"
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, 'scale_x_y')}: layer 1 [yolo]: key 'scale_x_y'=1.05 is an extension"), m


@pytest.mark.parametrize("reorg,key,what", [
    ("stride=3", "stride", "stride=3 does not divide the input's width and height (8x8)"),
    ("stride=0", "stride", "key 'stride' must be positive, got 0"),
    ("stride=4", "stride", "stride=4 needs at least stride*stride = 16 input channels, the input has 8"),
    ("stride=2\nreverse=1", "stride",
     "reverse=1 with stride=2 needs a multiple of stride*stride = 4 channels, the input has 6"),
    ("stride=2\nextra=-1", "extra", "key 'extra' must not be negative"),
    ("stride=2\nflatten=1\nextra=4", "flatten", "flatten=1 with extra > 0 reads past the end of the input"),
])
def test_reorg_checks(reorg, key, what):
    filters = 6 if "reverse" in reorg else 8
    text = net(8, 8) + conv(filters) + f"[reorg]\n{reorg}\n"
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, key + '=', '[reorg]')}: layer 1 [reorg]: {what}"), m


def test_reorg_channels_not_a_multiple_of_stride_squared_warn_and_run():
    with pytest.warns(UserWarning, match=r"d\.cfg:\d+: layer 1 \[reorg\]: 6 input channels are not a multiple"):
        g = graph_from_text(net(4, 4) + conv(6) + "[reorg]\nstride=2\n", "d.cfg")
    assert g[1].out_shape == (24, 2, 2)


def test_detection_input_size():
    text = net(8, 8) + "[connected]\noutput=100\nactivation=linear\n" + \
        "[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\n"
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, '[detection]')}: layer 1 [detection]: its input has 100 values, but "
                        "side=2, num=2, classes=2, coords=4 need side*side*((1+coords)*num+classes) = 48"), m


@pytest.mark.parametrize("key,value,what", [("coords", "1", "coords=1: darknet's [detection] boxes always read 4"),
                                            ("side", "0", "key 'side' must be positive")])
def test_detection_key_checks(key, value, what):
    text = net(8, 8) + "[connected]\noutput=48\nactivation=linear\n" + \
        "[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\n".replace(f"{key}=", f"{key}={value}\n#", 1)
    m = err(text)
    assert m.startswith(f"d.cfg:{line_of(text, key + '=')}: layer 1 [detection]: {what}"), m


def test_nothing_spatial_follows_a_detection_layer():
    text = net(8, 8) + "[connected]\noutput=48\nactivation=linear\n[detection]\nclasses=2\ncoords=4\nside=2\nnum=2\n" \
        + conv(4, 3)
    assert "needs an image input" in err(text)


# -- kernels against naive numpy -------------------------------------------------------------------------------

def _reorg_naive(x: np.ndarray, s: int, reverse: bool) -> np.ndarray:
    """detection.md §4.3 literally: reorg_cpu over the input's (c, h, w)."""
    c, h, w = x.shape
    cp = c // (s * s)
    flat = x.reshape(-1)
    out = np.zeros(c * h * w, np.float32)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                src = (k * h + j) * w + i
                off = k // cp
                dst = ((k % cp) * h * s + j * s + off // s) * w * s + i * s + off % s
                if reverse:
                    out[dst] = flat[src]
                else:
                    out[src] = flat[dst]
    return out


@pytest.mark.parametrize("c,h,w,s", [(8, 6, 12, 2), (18, 6, 12, 3), (6, 4, 4, 2), (32, 3, 6, 2)])
def test_reorg_forward_is_darknets_scramble_not_space_to_depth(c, h, w, s):
    x = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)
    out = np.empty(c * h * w, np.float32)
    if h % s == 0 and w % s == 0:
        kdet.reorg(x.reshape(-1), c, h, w, s, False, False, 0, out)
        assert np.array_equal(out, _reorg_naive(x, s, False))
        textbook = x.reshape(c, h // s, s, w // s, s).transpose(2, 4, 0, 1, 3).reshape(-1)
        assert not np.array_equal(out, textbook)   # the mutation reorg_textbook (detection.md §11.3)
    if c % (s * s) == 0:
        kdet.reorg(x.reshape(-1), c, h, w, s, True, False, 0, out)
        assert np.array_equal(out, _reorg_naive(x, s, True))
        # reverse=1 is a true depth-to-space: out[c2, y*s+dy, x*s+dx] = in[(dy*s+dx)*c' + c2, y, x]
        cp = c // (s * s)
        d2s = x.reshape(s, s, cp, h, w).transpose(2, 3, 0, 4, 1).reshape(-1)
        assert np.array_equal(out, d2s)


def test_reorg_flatten_and_extra():
    x = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
    out = np.full(24, np.nan, np.float32)
    kdet.reorg(x.reshape(-1), 6, 2, 2, 1, False, True, 0, out)
    assert np.array_equal(out, x.reshape(6, 4).T.reshape(-1))            # CHW -> HWC
    back = np.empty(24, np.float32)
    kdet.reorg(out, 6, 2, 2, 1, True, True, 0, back)
    assert np.array_equal(back, x.reshape(-1))                           # reverse: HWC -> CHW
    out = np.full(30, np.nan, np.float32)                                 # a reused buffer: zeros are written
    kdet.reorg(x.reshape(-1), 6, 2, 2, 1, False, False, 6, out)
    assert np.array_equal(out, np.r_[x.reshape(-1), np.zeros(6, np.float32)])


def test_reorg_flatten_and_extra_layers_build_and_run():
    g = build(net(4, 4) + conv(8) + "[reorg]\nstride=2\nflatten=1\n[reorg]\nextra=5\n")
    assert g[1].out_shape == (32, 2, 2) and g[2].out_shape == (133,) and g[2].extra == 5
    net_ = Network(g, random_params(g), exact=True)
    outs = net_.predict(np.ones((3, 4, 4), np.float32), all_layers=True)
    assert np.array_equal(outs[1].reshape(-1), outs[0].reshape(8, 16).T.reshape(-1))
    assert np.array_equal(outs[2], np.r_[outs[1].reshape(-1), np.zeros(5, np.float32)])


def _logistic(v):
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)


def _softmax(v, axis):
    e = np.exp(v.astype(np.float64) - v.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("softmax,background", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("classes", [3, 20])
@pytest.mark.parametrize("fast,hw", [(False, 6), (True, 6), (True, 169), (True, 37)])
def test_region_kernel(softmax, background, classes, fast, hw):
    # fast (the fast plan's predict): float32 exponentials; 169 cells is a 13x13 head, 37 a vector tail
    num, coords = 2, 5
    planes = classes + coords + 1
    x = np.random.default_rng(classes).normal(0, 3, (num, planes, hw)).astype(np.float32)
    out = np.full(x.size, np.nan, np.float32)
    kdet.region(x.reshape(-1), num, coords, classes, softmax, background, hw, out, fast=fast)
    got = out.reshape(num, planes, hw)
    ref = x.copy()
    ref[:, :2] = _logistic(x[:, :2])                                     # x, y; w, h and the extra coord raw
    if not background:
        ref[:, coords] = _logistic(x[:, coords])
    first = coords + (0 if background else 1)
    if softmax:
        ref[:, first:] = _softmax(x[:, first:], axis=1)
    else:
        ref[:, coords + 1:] = _logistic(x[:, coords + 1:])
    assert np.array_equal(got[:, 2:coords], x[:, 2:coords])
    if not fast:
        assert np.array_equal(got[:, :first], ref[:, :first])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        return
    np.testing.assert_allclose(got[:, :first], ref[:, :first], rtol=0, atol=1.2e-7)     # logistic
    np.testing.assert_allclose(got, ref, rtol=0, atol=4e-7)                          # softmax: exp, sum, divide


def test_yolo_kernel():
    n, classes, hw = 3, 4, 10
    x = np.random.default_rng(1).normal(0, 3, (n, classes + 5, hw)).astype(np.float32)
    out = np.empty(x.size, np.float32)
    kdet.yolo(x.reshape(-1), n, classes, hw, out)
    ref = _logistic(x)
    ref[:, 2:4] = x[:, 2:4]                                                # w, h raw
    assert np.array_equal(out.reshape(x.shape), ref)
    fast = np.full(x.size, np.nan, np.float32)
    kdet.yolo(x.reshape(-1), n, classes, hw, fast, fast=True)
    assert np.array_equal(fast.reshape(x.shape)[:, 2:4], ref[:, 2:4])
    np.testing.assert_allclose(fast.reshape(x.shape), ref, rtol=0, atol=1.2e-7)


def test_fast_logistic_is_within_1e7_of_darknets_everywhere():
    # every float32 exponent from 2^-30 to 2^7 in both signs, 2000 mantissas each, plus the far ends
    # (exp overflows or underflows in float32 there) and the plane lengths' vector tails
    rng = np.random.default_rng(7)
    mags = np.ldexp(1 + rng.random((38, 2000)), np.arange(-30, 8)[:, None]).ravel()
    x = np.concatenate([mags, -mags, [0.0, -0.0, 87.0, 88.8, -87.0, -88.8, 104.0, -104.0, 1e30, -1e30,
                                      np.inf, -np.inf]]).astype(np.float32)
    for n in (x.size, 1, 15, 17, 33):
        v = x[:n]
        out = np.empty_like(v)
        kdet._logistic_fast(v, out)
        with np.errstate(over="ignore"):                                 # exp(1e30): the reference's inf
            ref = _logistic(v)
        assert np.abs(out - ref).max() <= 1.2e-7, n


@pytest.mark.parametrize("classes", [6, 10, 11, 20, 23])
def test_detection_kernel(classes):
    cells, num = 4, 2
    x = np.random.default_rng(classes).normal(0, 4, cells * (classes + 5 * num)).astype(np.float32)
    out = np.empty_like(x)
    kdet.detection(x, cells, classes, False, out)
    assert np.array_equal(out, x)
    kdet.detection(x, cells, classes, True, out)
    k = cells * classes
    assert np.array_equal(out[k:], x[k:])                                # confidences and boxes stay raw
    np.testing.assert_allclose(out[:k].reshape(cells, classes), _softmax(x[:k].reshape(cells, classes), 1),
                               rtol=0, atol=1e-6)


def _expf_vec_numpy(x: np.ndarray) -> np.ndarray:
    """detection.md §4.1's libmvec SSE4 expf, in numpy float32 (each operation rounded, no FMA)."""
    f = np.float32
    c1, c2, c3, c4, c5 = np.array([0x3F7FFFFE, 0x3EFFFF34, 0x3E2AACAC, 0x3D2B8392, 0x3C07D9FE], np.uint32).view(f)
    n = (x * f(1.4426950408889634) + f(12582912.0)) - f(12582912.0)
    r = (x - n * f(0.693145751953125)) - n * f(1.4286068e-06)
    p = (((c5 * r + c4) * r + c3) * r + c2) * r + c1
    return np.ldexp((r * p + f(1.0)).astype(np.float64), n.astype(np.int64)).astype(f)


def test_vector_expf_is_libmvecs_and_falls_back_outside_its_range():
    from numba import njit

    @njit
    def both(x, vec, scalar):
        for i in range(x.size):
            vec[i] = kdet._expf_vec(x[i])
            scalar[i] = math.exp(x[i])                 # float32: the C library's expf

    x = np.r_[np.linspace(-87.3, 0, 200001), np.linspace(0, 80, 1001), [-88.0, -100.0, 88.5]].astype(np.float32)
    vec, scalar = np.empty_like(x), np.empty_like(x)
    both(x, vec, scalar)
    assert np.array_equal(vec[:-3], _expf_vec_numpy(x[:-3]))
    ulps = np.abs(vec.view(np.int32).astype(np.int64) - scalar.view(np.int32).astype(np.int64))
    assert ulps.max() <= 3                             # libmvec's error bound (its results matched darknet's)
    assert 0.3 < (ulps > 0).mean() < 0.7               # about half differ from expf (detection.md §4.1)
    assert np.array_equal(vec[-3:], scalar[-3:])       # |x| > 87.34: the scalar expf itself


# -- the head sections of pjreddie's detector cfgs ---------------------------------------------------------------

_V2_COCO = "0.57273, 0.677385, 1.87446, 2.06253, 3.33843, 5.47434, 7.88282, 3.52778, 9.77052, 9.16828"
_V2_VOC = "1.3221, 1.73145, 3.19275, 4.00944, 5.05587, 8.09892, 9.47112, 4.84053, 11.2364, 10.0071"
_V2_TINY_VOC = "1.08,1.19,  3.42,4.41,  6.63,11.38,  9.42,5.11,  16.62,10.52"
_V3 = "10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326"
_V3_TINY = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"


def _region(anchors: str, classes: int, jitter: str, rescore: int) -> str:
    return (f"[region]\nanchors = {anchors}\nbias_match=1\nclasses={classes}\ncoords=4\nnum=5\nsoftmax=1\n"
            f"jitter={jitter}\nrescore={rescore}\n\nobject_scale=5\nnoobject_scale=1\nclass_scale=1\ncoord_scale=1\n\n"
            "absolute=1\nthresh = .6\nrandom=1\n")


def _yolo(mask: str, anchors: str, classes: int, num: int, ignore: str = ".7") -> str:
    return (f"[yolo]\nmask = {mask}\nanchors = {anchors}\nclasses={classes}\nnum={num}\njitter=.3\n"
            f"ignore_thresh = {ignore}\ntruth_thresh = 1\nrandom=1\n")


def _detection(num: int) -> str:
    return (f"[detection]\nclasses=20\ncoords=4\nrescore=1\nside=7\nnum={num}\nsoftmax=0\nsqrt=1\njitter=.2\n\n"
            "object_scale=1\nnoobject_scale=.5\nclass_scale=1\ncoord_scale=5\n")


def _v1(num: int, local: bool) -> str:
    body = conv(16, 3) + "[maxpool]\nsize=2\nstride=2\n" + conv(32, 3) + "[maxpool]\nsize=2\nstride=2\n"
    if local:
        body += "[local]\nsize=3\nstride=1\npad=1\nfilters=8\nactivation=leaky\n\n[dropout]\nprobability=.5\n"
    out = 7 * 7 * (5 * num + 20)
    return net(28, 28) + body + f"[connected]\noutput= {out}\nactivation=linear\n\n" + _detection(num)


def _v2(anchors: str, classes: int) -> str:
    # yolov2's passthrough: route -9 back to the 2x finer map, 1x1 conv, reorg 2, route -1,-4
    return (net(32, 32) + conv(16, 3) + "[maxpool]\nsize=2\nstride=2\n" + conv(32, 3)     # 0..2: 16x16
            + "[maxpool]\nsize=2\nstride=2\n" + conv(64, 3) + conv(32, 1) + conv(64, 3)   # 3..6: 8x8
            + "[maxpool]\nsize=2\nstride=2\n" + conv(128, 3) + conv(64, 1) + conv(128, 3)  # 7..10: 4x4
            + conv(128, 3) + "[route]\nlayers=-9\n" + conv(16, 1) + "[reorg]\nstride=2\n"  # 11..14
            + "[route]\nlayers=-1,-4\n" + conv(128, 3) + conv(5 * (classes + 5), 1, bn=0, activation="linear")
            + _region(anchors, classes, ".3", 1))


def _v2_tiny(anchors: str, classes: int) -> str:
    return (net(32, 32) + conv(16, 3) + "[maxpool]\nsize=2\nstride=2\n" + conv(32, 3)
            + "[maxpool]\nsize=2\nstride=2\n" + conv(64, 3) + "[maxpool]\nsize=2\nstride=1\n"
            + conv(128, 3) + conv(5 * (classes + 5), 1, bn=0, activation="linear") + _region(anchors, classes, ".2", 1))


def _v3(classes: int, spp: bool = False, ignore: str = ".7") -> str:
    f = 3 * (classes + 5)
    spp_block = ("[maxpool]\nstride=1\nsize=5\n\n[route]\nlayers=-2\n\n[maxpool]\nstride=1\nsize=9\n\n"
                 "[route]\nlayers=-4\n\n[maxpool]\nstride=1\nsize=13\n\n[route]\nlayers=-1,-3,-5,-6\n"
                 + conv(32, 1)) if spp else ""
    return (net(32, 32) + conv(8, 3) + conv(16, 3, 2) + conv(8, 1) + conv(16, 3)
            + "[shortcut]\nfrom=-3\nactivation=linear\n"                                   # 0..4: 16x16
            + conv(32, 3, 2) + conv(64, 3, 2) + conv(32, 1) + spp_block + conv(64, 3)       # 8x8, then 4x4
            + conv(f, 1, bn=0, activation="linear") + _yolo("6,7,8", _V3, classes, 9, ignore)
            + "[route]\nlayers = -4\n" + conv(16, 1) + "[upsample]\nstride=2\n" + "[route]\nlayers = -1, 5\n"
            + conv(32, 3) + conv(f, 1, bn=0, activation="linear") + _yolo("3,4,5", _V3, classes, 9, ignore)
            + "[route]\nlayers = -4\n" + conv(16, 1) + "[upsample]\nstride=2\n" + "[route]\nlayers = -1, 4\n"
            + conv(32, 3) + conv(f, 1, bn=0, activation="linear") + _yolo("0,1,2", _V3, classes, 9, ignore))


def _v3_tiny() -> str:
    return (net(32, 32) + conv(16, 3) + "[maxpool]\nsize=2\nstride=2\n" + conv(32, 3)
            + "[maxpool]\nsize=2\nstride=2\n" + conv(64, 3) + "[maxpool]\nsize=2\nstride=1\n"   # 0..5: 8x8
            + conv(128, 3) + conv(32, 1) + conv(64, 3) + conv(255, 1, bn=0, activation="linear")
            + _yolo("3,4,5", _V3_TINY, 80, 6) + "[route]\nlayers = -4\n" + conv(32, 1)
            + "[upsample]\nstride=2\n" + "[route]\nlayers = -1, 2\n" + conv(64, 3)
            + conv(255, 1, bn=0, activation="linear") + _yolo("0,1,2", _V3_TINY, 80, 6))


DETECTOR_CFGS = {
    "yolov1-tiny": (_v1(2, local=False), L.DetectionLayer),
    "yolov1": (_v1(3, local=True), L.DetectionLayer),
    "yolov2-tiny": (_v2_tiny(_V2_COCO, 80), L.Region),
    "yolov2-tiny-voc": (_v2_tiny(_V2_TINY_VOC, 20), L.Region),
    "yolov2": (_v2(_V2_COCO, 80), L.Region),
    "yolov2-voc": (_v2(_V2_VOC, 20), L.Region),
    "yolov3-tiny": (_v3_tiny(), L.Yolo),
    "yolov3": (_v3(80), L.Yolo),
    "yolov3-voc": (_v3(20, ignore=".5"), L.Yolo),
    "yolov3-spp": (_v3(80, spp=True), L.Yolo),
    "yolov3-openimages": (_v3(601), L.Yolo),
}


@pytest.mark.parametrize("name", sorted(DETECTOR_CFGS))
def test_detector_cfg_heads_load_and_run(name):
    text, head = DETECTOR_CFGS[name]
    g = build(text)
    heads = [layer for layer in g if isinstance(layer, head)]
    assert heads and g.output_layer is heads[-1]
    for layer in heads:
        if isinstance(layer, L.Region):
            assert (layer.num, layer.coords, layer.softmax) == (5, 4, True) and len(layer.anchors) == 10
            assert layer.out_c == 5 * (layer.classes + 5)
        elif isinstance(layer, L.Yolo):
            assert layer.n == 3 and len(layer.anchors) == 2 * layer.num and layer.out_c == 3 * (layer.classes + 5)
        else:
            assert (layer.side, layer.sqrt, layer.softmax) == (7, True, False) and layer.out_shape == (layer.inputs,)
    if name == "yolov2":
        reorg = next(layer for layer in g if isinstance(layer, L.Reorg))
        assert (reorg.in_shape, reorg.out_shape) == ((16, 8, 8), (64, 4, 4))
    w = random_params(g, seed=1)
    x = np.random.default_rng(2).uniform(0, 1, g.net.in_shape).astype(np.float32)
    exact = Network(g, w, exact=True).predict(x, all_layers=True)
    fast = Network(g, w, exact=False).predict(x, all_layers=True)
    for layer, a, b in zip(g, exact, fast):
        assert a.shape == b.shape == layer.out_shape
        assert np.abs(a - b).max() <= 5e-5 * max(np.abs(a).max(), 1e-30), layer.describe()


def test_int8_the_exports_and_the_n6_check_take_the_detectors():
    """Issue #14 items 6-7: the int8 graph, the ONNX exports and the N6 check take yolov2 (reorg, route, region) and
    yolov3 (route, upsample, yolo) whole; [local] (yolov1) is still refused, naming the layer."""
    from darknetpy.errors import UnsupportedError
    from darknetpy.export.n6check import check_n6_graph
    from darknetpy.export.onnx_float import check_exportable
    from darknetpy.int8.qgraph import check_int8

    for name in ("yolov2", "yolov3", "yolov3-spp", "yolov2-tiny", "yolov1-tiny"):
        g = build(DETECTOR_CFGS[name][0])
        check_int8(g)
        check_exportable(g)
        assert check_n6_graph(g) == [], name
    g = build(DETECTOR_CFGS["yolov1"][0])
    with pytest.raises(UnsupportedError, match=r"layer 4 \[local\]"):
        check_int8(g)
