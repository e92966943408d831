"""draw.py: darknet's colours, line widths and box geometry (detection.md §9.3) against the det_* records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CONFORMANCE, detection_cases
from darknetpy import boxes as B
from darknetpy import draw as D


def _records():
    for name in detection_cases():
        for sub in ("", "detector_test"):
            f = CONFORMANCE / name / sub / "detections.json"
            if f.is_file():
                yield f"{name}/{sub}", json.loads(f.read_text())


def test_colours_width_and_label_size_are_darknets():
    n = 0
    for where, rec in _records():
        for p in rec["printed"]:
            assert [float(v) for v in D.class_rgb(p["class"], rec["classes"])] == \
                [float(np.float32(v)) for v in p["rgb"]], (where, p["class"])
            assert D.line_width(rec["image_h"]) == p["thickness"]
            assert D.label_size_index(rec["image_h"]) == p["label_size_index"]
            n += 1
    if n == 0:
        pytest.skip(f"no det_* records at {CONFORMANCE}")


def test_get_color_interpolates_darknets_ramp():
    # (red, green, blue) = get_color(2), (1), (0): the table's rows read as (b, g, r)
    assert [float(D.get_color(c, 0, 6)) for c in (2, 1, 0)] == [1, 0, 1]          # magenta
    assert [float(D.get_color(c, 3, 6)) for c in (2, 1, 0)] == [0.5, 1, 0]        # half way yellow -> green
    assert [float(D.get_color(c, 5, 5)) for c in (2, 1, 0)] == [0, 0, 1]          # ratio 5: the last row, blue


def _det(cls, left, top, right, bottom, det_index, name="x"):
    return B.Detection(cls=cls, name=name, prob=0.9, x=0, y=0, w=0, h=0, left=left, top=top, right=right,
                       bottom=bottom, det_index=det_index)


def test_boxes_are_nested_rectangles_clamped_into_the_image():
    img = np.zeros((3, 200, 100), np.float32)          # height 200: line width 1
    out = D.draw_detections(img, [_det(0, 10, 20, 30, 40, 0)], 1, labels=False)
    red, green, blue = (float(v) for v in D.class_rgb(0, 1))
    ys, xs = np.nonzero(out[0] == red) if red else np.nonzero(out[2] == blue)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 30, 20, 40)
    assert out[:, 30, 20].tolist() == [0, 0, 0]         # inside stays untouched
    # a box reaching past the image: its corners are clamped, a box above it (bottom < top) draws a line at 0
    out = D.draw_detections(np.zeros((3, 400, 100), np.float32), [_det(1, 90, 0, 99, -50, 3)], 2, labels=False)
    assert D.line_width(400) == 2 and out[:, 0, 90:100].any() and not out[:, 2:, :].any()
    assert img.sum() == 0                                # the input is not modified


def test_several_classes_of_one_box_are_one_label():
    img = np.ones((3, 500, 400), np.float32)
    one = D.draw_detections(img, [_det(2, 50, 100, 200, 300, 7, "dog"), _det(5, 50, 100, 200, 300, 7, "cat")], 6)
    both = D.label_image("dog, cat", 500)
    lh, lw = both.shape
    rgb = D.class_rgb(2, 6)                              # the first class's colour
    top = 100 + D.line_width(500) - lh                   # moved up by its height: it fits
    assert np.array_equal(one[0, top:top + lh, 50:50 + lw], np.float32(rgb[0]) * both)


def test_pixels_are_truncated_like_save_image():
    img = np.float32([[[0.0, 0.999, 1.0, 0.5]]] * 3)
    assert D.to_u8(img)[0].tolist() == [[0] * 3, [254] * 3, [255] * 3, [127] * 3]
