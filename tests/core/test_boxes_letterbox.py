"""Property tests of the box decoding against straightforward transcriptions of darknet's C (detection.md §5-7).

The references below walk darknet's loops one box at a time with one float32/double operation per C
operation (``get_region_box``, ``get_yolo_box``, ``get_region_detections``, ``get_yolo_detections``,
``correct_region_boxes`` as gcc -Ofast compiled it: the x/y division is a multiply by the double reciprocal of
the float ratio). boxes.py's vectorised code must give the same bits for any image size, any network aspect
(non-square, odd padding) and any grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from darknetpy import boxes as B

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

f32 = np.float32


def correct_c(x, y, w, h, im_w, im_h, netw, neth):
    """correct_region_boxes (region_layer.c:336-362) for one box, relative=1."""
    if f32(netw) / f32(im_w) < f32(neth) / f32(im_h):
        new_w, new_h = netw, (im_h * netw) // im_w
    else:
        new_h, new_w = neth, (im_w * neth) // im_h
    x = f32((float(x) - (netw - new_w) / 2. / netw) * (1.0 / float(f32(new_w) / f32(netw))))
    y = f32((float(y) - (neth - new_h) / 2. / neth) * (1.0 / float(f32(new_h) / f32(neth))))
    w = f32(w) * (f32(netw) / f32(new_w))
    h = f32(h) * (f32(neth) / f32(new_h))
    return x, y, w, h


def region_c(out, head, im_w, im_h, netw, neth, thresh, classes):
    """get_region_detections (region_layer.c:391-431) + correct_region_boxes; returns [(x,y,w,h,obj,probs)]."""
    _, lh, lw = head["shape"]
    coords, ncls = head["coords"], head["classes"]
    plane = lh * lw
    P = ncls + coords + 1
    dets = [None] * (head["num"] * plane)
    for i in range(plane):
        row, col = i // lw, i % lw
        for n in range(head["num"]):
            base = n * P * plane + i
            scale = f32(1) if head["background"] else out[base + coords * plane]
            bx = (f32(col) + out[base]) / f32(lw)
            by = (f32(row) + out[base + plane]) / f32(lh)
            bw = f32(math.exp(float(out[base + 2 * plane])) * float(f32(head["anchors"][2 * n])) / lw)
            bh = f32(math.exp(float(out[base + 3 * plane])) * float(f32(head["anchors"][2 * n + 1])) / lh)
            obj = scale if scale > thresh else f32(0)
            probs = np.zeros(classes, f32)
            if obj:
                for j in range(ncls):
                    p = scale * out[base + (coords + 1 + j) * plane]
                    probs[j] = p if p > thresh else 0
            dets[n * plane + i] = (*correct_c(bx, by, bw, bh, im_w, im_h, netw, neth), obj, probs)
    return dets


def yolo_c(out, head, im_w, im_h, netw, neth, thresh, classes):
    """get_yolo_detections (yolo_layer.c:316-343) + correct_yolo_boxes."""
    _, lh, lw = head["shape"]
    ncls = head["classes"]
    plane = lh * lw
    dets = []
    for i in range(plane):
        row, col = i // lw, i % lw
        for n in range(len(head["mask"])):
            base = n * (ncls + 5) * plane + i
            obj = out[base + 4 * plane]
            if obj <= thresh:
                continue
            m = head["mask"][n]
            bx = (f32(col) + out[base]) / f32(lw)
            by = (f32(row) + out[base + plane]) / f32(lh)
            bw = f32(math.exp(float(out[base + 2 * plane])) * float(f32(head["anchors"][2 * m])) / netw)
            bh = f32(math.exp(float(out[base + 3 * plane])) * float(f32(head["anchors"][2 * m + 1])) / neth)
            probs = np.zeros(classes, f32)
            for j in range(ncls):
                p = obj * out[base + (5 + j) * plane]
                probs[j] = p if p > thresh else 0
            dets.append((*correct_c(bx, by, bw, bh, im_w, im_h, netw, neth), obj, probs))
    return dets


def _same(boxes: B.Boxes, ref: list) -> None:
    assert len(boxes) == len(ref)
    for i, (x, y, w, h, obj, probs) in enumerate(ref):
        got = (boxes.x[i], boxes.y[i], boxes.w[i], boxes.h[i], boxes.objectness[i])
        assert [float(v) for v in got] == [float(v) for v in (x, y, w, h, obj)], i
        assert boxes.prob[i].tolist() == probs.tolist(), i


sizes = st.integers(1, 4000)
net_sizes = st.integers(4, 640)


@settings(max_examples=300, deadline=None)
@given(im_w=sizes, im_h=sizes, netw=net_sizes, neth=net_sizes, seed=st.integers(0, 2 ** 32 - 1))
def test_letterbox_correction_is_darknets_for_any_image_and_network(im_w, im_h, netw, neth, seed):
    new_w, new_h = B.letterbox_size(im_w, im_h, netw, neth)
    hypothesis.assume(new_w >= 1 and new_h >= 1)       # thinner images are refused by letterbox itself
    rng = np.random.default_rng(seed)
    x, y = (rng.random(7, dtype=np.float32) * 1.4 - 0.2 for _ in range(2))
    w, h = (rng.random(7, dtype=np.float32) for _ in range(2))
    got = B.letterbox_correct(x, y, w, h, (im_w, im_h), (netw, neth))
    for i in range(7):
        ref = correct_c(x[i], y[i], w[i], h[i], im_w, im_h, netw, neth)
        assert [float(g[i]) for g in got] == [float(r) for r in ref]
    # the source's own division (instead of the compiled reciprocal multiply) differs by at most one ulp
    src = f32((float(x[0]) - (netw - new_w) / 2. / netw) / float(f32(new_w) / f32(netw)))
    assert abs(float(src) - float(got[0][0])) <= float(np.spacing(abs(src)))


@settings(max_examples=200, deadline=None)
@given(im_w=sizes, im_h=sizes, netw=net_sizes, neth=net_sizes)
def test_the_pasted_image_maps_onto_the_whole_image_with_darknets_half_pixel(im_w, im_h, netw, neth):
    new_w, new_h = B.letterbox_size(im_w, im_h, netw, neth)
    hypothesis.assume(new_w >= 1 and new_h >= 1)
    dx, dy = (netw - new_w) // 2, (neth - new_h) // 2          # where letterbox_image pastes it
    box = [np.float32([v]) for v in ((dx + new_w / 2) / netw, (dy + new_h / 2) / neth, new_w / netw, new_h / neth)]
    x, y, w, h = (float(v[0]) for v in B.letterbox_correct(*box, (im_w, im_h), (netw, neth)))
    # darknet subtracts the exact half padding: half a network pixel too far left/up when the padding is odd
    shift_x = 0.5 / new_w if (netw - new_w) % 2 else 0.0
    shift_y = 0.5 / new_h if (neth - new_h) % 2 else 0.0
    # (the float32 network-relative box is magnified by net/new: so is its rounding error)
    tx, ty = 1e-6 * netw / new_w, 1e-6 * neth / new_h
    assert x == pytest.approx(0.5 - shift_x, abs=tx) and y == pytest.approx(0.5 - shift_y, abs=ty)
    assert w == pytest.approx(1, abs=tx) and h == pytest.approx(1, abs=ty)


def _head_input(rng, c, lh, lw):
    x = rng.normal(0, 2, (c, lh, lw)).astype(np.float32)
    return x


@settings(max_examples=60, deadline=None)
@given(lh=st.integers(1, 9), lw=st.integers(1, 9), num=st.integers(1, 4), classes=st.integers(1, 13),
       softmax=st.booleans(), background=st.booleans(), im_w=sizes, im_h=sizes, netw=net_sizes, neth=net_sizes,
       thresh=st.sampled_from([0.0, 0.2, 0.5, 0.9]), seed=st.integers(0, 2 ** 32 - 1))
def test_region_boxes_are_darknets(lh, lw, num, classes, softmax, background, im_w, im_h, netw, neth, thresh, seed):
    new_w, new_h = B.letterbox_size(im_w, im_h, netw, neth)
    hypothesis.assume(new_w >= 1 and new_h >= 1)
    rng = np.random.default_rng(seed)
    head = {"kind": "region", "layer": 1, "shape": [num * (classes + 5), lh, lw], "classes": classes, "coords": 4,
            "num": num, "anchors": [float(a) for a in rng.random(2 * num) * 5], "softmax": softmax,
            "background": background}
    desc = {"format": "darknetpy-heads", "version": 1, "net_w": netw, "net_h": neth, "classes": classes,
            "names": None, "heads": [head]}
    out = B.head_output(head, _head_input(rng, *head["shape"]))
    boxes = B.network_boxes(B.check_heads(desc), [out], (im_w, im_h), thresh)
    _same(boxes, region_c(out, head, im_w, im_h, netw, neth, f32(thresh), classes))


@settings(max_examples=60, deadline=None)
@given(lh=st.integers(1, 9), lw=st.integers(1, 9), total=st.integers(1, 9), classes=st.integers(1, 13),
       im_w=sizes, im_h=sizes, netw=net_sizes, neth=net_sizes, thresh=st.sampled_from([0.0, 0.3, 0.5, 0.8]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_yolo_boxes_are_darknets(lh, lw, total, classes, im_w, im_h, netw, neth, thresh, seed):
    new_w, new_h = B.letterbox_size(im_w, im_h, netw, neth)
    hypothesis.assume(new_w >= 1 and new_h >= 1)
    rng = np.random.default_rng(seed)
    mask = sorted(rng.choice(total, size=int(rng.integers(1, total + 1)), replace=False).tolist())
    head = {"kind": "yolo", "layer": 1, "shape": [len(mask) * (classes + 5), lh, lw], "classes": classes,
            "num": total, "mask": mask, "anchors": [float(a) for a in rng.random(2 * total) * 200]}
    desc = {"format": "darknetpy-heads", "version": 1, "net_w": netw, "net_h": neth, "classes": classes,
            "names": None, "heads": [head]}
    out = B.head_output(head, _head_input(rng, *head["shape"]))
    boxes = B.network_boxes(B.check_heads(desc), [out], (im_w, im_h), thresh)
    _same(boxes, yolo_c(out, head, im_w, im_h, netw, neth, f32(thresh), classes))
