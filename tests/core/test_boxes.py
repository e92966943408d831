"""boxes.py against darknet's own detection records (../shared/conformance/det_*/detections.json).

Per case, from darknet's dumped tensors entering each head (``layers/NNN`` of the layer before it), with the
case's image size and thresholds:

* the boxes before NMS (``raw``) and after (``after_nms``): the same entries at the same positions, objectness
  and probabilities identical (float32), coordinates within 2e-7 (darknet divides with RCPPS, we exactly:
  detection.md §7); every entry the record leaves out is all zero;
* ``decode``: the printed lines equal ``darknet_stdout.txt`` (and the real CLI's ``cli_stdout.txt``), and
  the Detections carry the record's classes, probabilities, det_index and clamped pixel edges;
* the ``detector_test/`` records (a [detection] net through ``detector test``): the same lines; boxes that
  darknet gives in pixels are ours times the image size.
"""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest

import darknetpy
from conftest import CONFORMANCE, DARKNET, detection_cases
from darknetpy import boxes as B
from darknetpy.errors import DarknetpyError, UnsupportedError
from darknetpy.graph import load_graph

CASES = detection_cases() or [pytest.param("none", marks=pytest.mark.skip(reason=f"no det_* cases at {CONFORMANCE}"))]
COORD_TOL = 2e-7                  # |ours - darknet's| for relative coordinates (RCPPS, detection.md §7)


class Det:
    """One det_* case: its graph, record, names, and the tensors entering its heads."""

    def __init__(self, name: str, sub: str = ""):
        self.dir = CONFORMANCE / name
        self.rec = json.loads((self.dir / sub / "detections.json").read_text())
        self.graph = load_graph(self.dir / "net.cfg")
        case = json.loads((self.dir / "case.json").read_text())
        self.names = (DARKNET / case["names"]).read_text().splitlines()[: self.rec["classes"]]
        self.size = (self.rec["image_w"], self.rec["image_h"])
        self.stdout = (self.dir / sub / "darknet_stdout.txt").read_text().splitlines()
        cli = self.dir / sub / "cli_stdout.txt"
        self.cli = cli.read_text().splitlines()[1:] if cli.is_file() else None   # after "...: Predicted in"

    def layer(self, index: int) -> np.ndarray:
        (path,) = (self.dir / "layers").glob(f"{index:03d}_*.npy")
        return np.load(path)

    def head_inputs(self) -> list[np.ndarray]:
        return [self.layer(h.index - 1) for h in B.heads_of(self.graph)]

    def decode(self, **kw) -> list[B.Detection]:
        r = self.rec
        return B.decode(self.graph, self.head_inputs(), self.size, r["thresh"], r["hier_thresh"], r["nms"],
                        names=self.names, **kw)


def case(name: str) -> Det:
    if not (CONFORMANCE / name).is_dir():
        pytest.skip(f"no {name} at {CONFORMANCE}")
    return Det(name)


def _check_array(boxes: B.Boxes, entries: list[dict], scale=(1.0, 1.0)) -> None:
    listed = set()
    for e in entries:
        i = e["index"]
        listed.add(i)
        assert boxes.objectness[i] == np.float32(e["objectness"]), i
        got = [(int(j), boxes.prob[i, j]) for j in np.flatnonzero(boxes.prob[i])]
        assert got == [(j, np.float32(p)) for j, p in e["probs"]], i
        for k, s in zip("xywh", (scale[0], scale[1], scale[0], scale[1])):
            ref = np.float32(e["bbox"][k])
            assert abs(float(getattr(boxes, k)[i]) * s - float(ref)) <= COORD_TOL * s * max(1.0, abs(float(ref)) / s), \
                (i, k)
    for i in set(range(len(boxes))) - listed:
        assert boxes.objectness[i] == 0 and not boxes.prob[i].any(), i


@pytest.mark.parametrize("name", CASES)
def test_boxes_before_and_after_nms_are_darknets(name):
    c = Det(name)
    desc = B.heads_from_graph(c.graph)
    outs = [B.head_output(h, x) for h, x in zip(desc["heads"], c.head_inputs())]
    raw = B.network_boxes(desc, outs, c.size, c.rec["thresh"])
    assert len(raw) == c.rec["nboxes"]
    _check_array(raw, c.rec["raw"])
    after = B.do_nms_sort(raw, c.rec["nms"])
    _check_array(after, c.rec["after_nms"])


@pytest.mark.parametrize("name", CASES)
def test_decode_prints_darknets_lines(name):
    c = Det(name)
    dets = c.decode()
    assert [d.line for d in dets] == c.stdout
    if c.cli is not None:
        assert [d.line for d in dets] == c.cli
    records = [(p["det_index"], lab["class"], np.float32(lab["prob"]), lab["name"], p["left"], p["top"], p["right"],
                p["bot"]) for p in c.rec["printed"] for lab in p["labels"]]
    mine = [(d.det_index, d.cls, np.float32(d.prob), d.name, d.left, d.top, d.right, d.bottom) for d in dets]
    assert mine == records
    for d in dets:                                    # the box fields are the after-NMS array's
        e = c.rec["after_nms"][[a["index"] for a in c.rec["after_nms"]].index(d.det_index)]
        assert abs(d.x - e["bbox"]["x"]) <= COORD_TOL and abs(d.h - e["bbox"]["h"]) <= COORD_TOL


def test_printed_records_pixel_edges_are_clamped_like_darknet():
    # right/bot are only clamped from above and left/top from below: a box above the image has bot < top
    c = case("det_yolov3_tiny_dog")
    rec = {p["det_index"]: p for p in c.rec["printed"]}
    above = [d for d in c.decode() if rec[d.det_index]["unclipped"][3] < 0]
    assert above and all(d.top == 0 and d.bottom < 0 for d in above)


@pytest.mark.parametrize("name", [n for n in ("det_yolov1_tiny_eagle", "det_detection_softmax_raw")
                                  if (CONFORMANCE / n / "detector_test").is_dir()])
def test_detection_head_through_detector_test(name, tmp_path):
    """darknet's ``detector test`` on a [detection] net: same lines; its pixel boxes are ours x image size."""
    c = Det(name, "detector_test")
    head = B.heads_of(c.graph)[0]
    if not head.softmax:                              # the dumped output is the input (a copy)
        x = np.load(c.dir / "detector_test" / "layers" / f"{head.index:03d}_detection.npy")
    else:                                             # run the network on that record's input
        w = tmp_path / "net.weights"
        w.write_bytes(lzma.open(c.dir / "net.weights.xz").read())
        net = darknetpy.load(c.dir / "net.cfg", w, exact=True)
        x = net.predict(np.load(c.dir / "detector_test" / "input.npy"), all_layers=True)[head.index - 1]
    r = c.rec
    dets = B.decode(c.graph, [x], c.size, r["thresh"], r["hier_thresh"], r["nms"], names=c.names)
    assert [d.line for d in dets] == c.stdout
    desc = B.heads_from_graph(c.graph)
    boxes = B.do_nms_sort(B.network_boxes(desc, [B.head_output(desc["heads"][0], x)], c.size, r["thresh"]), r["nms"])
    _check_array(boxes, r["after_nms"], scale=c.size)


# -- the heads description -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_decode_from_the_plain_description(name):
    c = Det(name)
    desc = json.loads(json.dumps(B.heads_from_graph(c.graph, names=c.names)))    # JSON round trip
    r = c.rec
    dets = B.decode(desc, c.head_inputs(), c.size, r["thresh"], r["hier_thresh"], r["nms"])
    assert dets == c.decode()
    text = json.dumps(B.heads_from_graph(c.graph, names=c.names))               # as model metadata carries it
    assert B.decode(text, c.head_inputs(), c.size, r["thresh"], r["hier_thresh"], r["nms"]) == dets
    # batch-of-one and flat inputs are accepted too
    flat = [x.reshape(-1) for x in c.head_inputs()]
    assert B.decode(desc, flat, c.size, r["thresh"], r["hier_thresh"], r["nms"]) == dets


def test_description_content():
    g = case("det_yolov3_tiny_dog").graph
    d = B.heads_from_graph(g)
    assert (d["format"], d["version"], d["net_w"], d["net_h"], d["classes"], d["names"]) == \
        ("darknetpy-heads", 1, 160, 160, 80, None)
    assert [(h["kind"], h["layer"], h["shape"], h["mask"]) for h in d["heads"]] == \
        [("yolo", 16, [255, 5, 5], [3, 4, 5]), ("yolo", 23, [255, 10, 10], [0, 1, 2])]
    assert d["heads"][0]["anchors"][:4] == [10.0, 14.0, 23.0, 27.0] and d["heads"][0]["num"] == 6


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(net_w=0), "net_w"),
    (lambda d: d.update(heads=[]), "non-empty"),
    (lambda d: d["heads"][0].pop("mask"), "missing mask"),
    (lambda d: d["heads"][0].update(mask=[3, 4, 6]), "anchor indices 0..5"),
    (lambda d: d["heads"][0].update(anchors=[1.0, 2.0]), "2[*]num = 12"),
    (lambda d: d["heads"][0].update(shape=[254, 5, 5]), "254 channels, the keys make 255"),
    (lambda d: d["heads"][1].update(classes=3), "has 3 classes"),
    (lambda d: d["heads"][0].update(kind="softmax"), "kind must be"),
    (lambda d: d.update(names=["a", "b"]), "2 names for 80 classes"),
])
def test_bad_descriptions_are_clear_errors(change, message):
    d = B.heads_from_graph(case("det_yolov3_tiny_dog").graph)
    change(d)
    with pytest.raises(DarknetpyError, match=message):
        B.decode(d, [np.zeros((255, 5, 5), np.float32), np.zeros((255, 10, 10), np.float32)], (10, 10))


def test_bad_inputs_are_clear_errors():
    g = case("det_yolov3_tiny_dog").graph
    a, b = np.zeros((255, 5, 5), np.float32), np.zeros((255, 10, 10), np.float32)
    with pytest.raises(DarknetpyError, match="got 1 head input.*layer 16 \\[yolo\\], layer 23 \\[yolo\\]"):
        B.decode(g, [a], (10, 10))
    with pytest.raises(DarknetpyError, match="layer 23 \\[yolo\\]: its input has shape \\(255, 5, 5\\)"):
        B.decode(g, [a, a], (10, 10))
    with pytest.raises(DarknetpyError, match="must be float32"):
        B.decode(g, [a.astype(np.float64), b], (10, 10))
    for size in ((0, 10), (10,), "10x10", (10.5, 3)):
        with pytest.raises(DarknetpyError, match="image_size"):
            B.decode(g, [a, b], size)
    with pytest.raises(DarknetpyError, match="thresh must be a finite number"):
        B.decode(g, [a, b], (10, 10), thresh=float("nan"))
    with pytest.raises(DarknetpyError, match="Network, a Graph or a heads description"):
        B.decode("net.cfg", [a, b], (10, 10))
    with pytest.raises(DarknetpyError, match="not valid JSON"):
        B.decode("{format: 1}", [a, b], (10, 10))
    with pytest.raises(UnsupportedError, match="no \\[region\\], \\[yolo\\] or \\[detection\\] layer"):
        B.heads_from_graph(load_graph(CONFORMANCE / "route" / "net.cfg"))


# -- darknet's rules, one at a time ----------------------------------------------------------------------------

def test_hier_thresh_has_no_effect_and_nms_zero_skips_nms():
    c = case("det_yolov2_tiny_voc_dog")
    r = c.rec
    a = B.decode(c.graph, c.head_inputs(), c.size, r["thresh"], 0.01, r["nms"], names=c.names)
    b = B.decode(c.graph, c.head_inputs(), c.size, r["thresh"], 0.99, r["nms"], names=c.names)
    assert a == b
    no_nms = B.decode(c.graph, c.head_inputs(), c.size, r["thresh"], r["hier_thresh"], 0, names=c.names)
    # without NMS nothing is compacted, sorted or suppressed: get_network_boxes' array as it is
    desc = B.heads_from_graph(c.graph)
    raw = B.network_boxes(desc, [B.head_output(h, x) for h, x in zip(desc["heads"], c.head_inputs())], c.size,
                          r["thresh"])
    assert no_nms == B.detections(raw, r["thresh"], c.size, c.names) != a


def _boxes(xs, probs, objectness=None):
    xs = np.asarray(xs, np.float32)
    n = len(xs)
    prob = np.asarray(probs, np.float32).reshape(n, -1)
    obj = np.asarray(objectness if objectness is not None else prob.max(axis=1), np.float32)
    one = np.full(n, 0.2, np.float32)
    return B.Boxes(xs, np.full(n, 0.5, np.float32), one, one, obj, prob, n)


def test_nms_compaction_swaps_from_the_end():
    # objectness 0 at positions 0 and 2: position 0 takes the last box, 2 the one before it
    b = _boxes([0.1, 0.3, 0.5, 0.7, 0.9], [[0], [0.6], [0], [0.7], [0.8]], objectness=[0, .6, 0, .7, .8])
    out = B.do_nms_sort(b, 0.45)
    assert out.total == 3
    # class 0 sort (stable, descending): 0.8 (was last), 0.7, 0.6
    assert out.x.tolist()[:3] == pytest.approx([0.9, 0.7, 0.3])


def test_nms_sort_is_stable_and_per_class():
    # two classes; ties in class 1 keep the order class 0's sort left
    b = _boxes([0.1, 0.3, 0.5, 0.7], [[0.6, 0.9], [0.8, 0.9], [0.7, 0.0], [0.0, 0.9]])
    out = B.do_nms_sort(b, 0.45)
    # class 0 order: 0.3 (0.8), 0.5 (0.7), 0.1 (0.6), 0.7 (0); class 1 ties (0.9) keep it: 0.3, 0.1, 0.7, then 0.5
    assert out.x.tolist() == pytest.approx([0.3, 0.1, 0.7, 0.5])


def test_nms_suppresses_overlaps_of_the_same_class_only():
    b = _boxes([0.50, 0.52, 0.51], [[0.9, 0], [0.8, 0], [0, 0.7]])
    out = B.do_nms_sort(b, 0.45)
    by_x = {round(float(x), 2): p for x, p in zip(out.x, out.prob.tolist())}
    # 0.52 lost class 0 to 0.50; 0.51, as close, keeps class 1: NMS is per class
    assert by_x == {0.5: pytest.approx([0.9, 0]), 0.52: [0, 0], 0.51: pytest.approx([0, 0.7])}


def _iou_c(a, b):
    """box.c's box_iou, one float32 operation at a time."""
    f = np.float32

    def overlap(x1, w1, x2, w2):
        l1, l2 = f(x1) - f(w1) / f(2), f(x2) - f(w2) / f(2)
        r1, r2 = f(x1) + f(w1) / f(2), f(x2) + f(w2) / f(2)
        return (r1 if r1 < r2 else r2) - (l1 if l1 > l2 else l2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = f(0) if w < 0 or h < 0 else w * h
    return inter / ((f(a[2]) * f(a[3]) + f(b[2]) * f(b[3])) - inter)


def test_iou_matches_darknets_float_formula():
    rng = np.random.default_rng(5)
    a = rng.random(4, dtype=np.float32)
    b = rng.random((4, 200), dtype=np.float32)
    b[:, 0] = a                                       # the same box
    iou = B.box_iou(*a, *b)
    assert iou.dtype == np.float32
    assert [float(v) for v in iou] == [float(_iou_c(a, b[:, j])) for j in range(200)]
    assert B.box_iou(*np.float32([0.5, 0.5, 0.4, 0.2]), *np.float32([[0.9], [0.5], [0.1], [0.2]]))[0] == 0


@pytest.mark.parametrize("prob,line", [(0.915, "dog: 92%"), (0.125, "dog: 12%"), (0.135, "dog: 14%"),
                                       (1.02063, "dog: 102%"), (0.5000001, "dog: 50%")])
def test_printed_percentage_rounds_the_float_product_half_to_even(prob, line):
    d = B.Detection(cls=0, name="dog", prob=prob, x=0, y=0, w=0, h=0, left=0, top=0, right=0, bottom=0)
    assert d.line == line
    assert d.line == "dog: %.0f%%" % float(np.float32(prob) * np.float32(100))


def test_pixel_box_truncates_and_clamps_like_draw_detections():
    assert B.pixel_box(0.5, 0.5, 0.2, 0.4, (100, 50)) == (40, 15, 60, 35)
    assert B.pixel_box(-0.003, 0.5, 0.0, 0.0, (100, 50)) == (0, 25, 0, 25)      # -0.3 px truncates to 0
    assert B.pixel_box(0.5, 1.5, 4.0, 0.2, (100, 50)) == (0, 70, 99, 49)        # top 70 > bottom 49
    assert B.pixel_box(float("nan"), 0.5, 0.1, 0.1, (100, 50))[::2] == (0, -2147483648)
