"""int8 detectors (issue #14 item 6): the conv backbone and the heads' input layers in int8, the heads decoded on
the host from their dequantised int8 inputs; [maxpool] 2/1, [upsample], [route], [reorg] in the int8 graph and
engine; the report's box agreement. The export side (onnxruntime on the QDQ model: the same int8 head tensors)
is tests/export/test_detectors.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import detection_cases, needs_shared
from darknetpy import layers as L
from darknetpy.errors import UnsupportedError

CASES = detection_cases() or [pytest.param("none", marks=pytest.mark.skip(reason="no det_* cases"))]
_Q: dict = {}


def _quantized(det_case, name):
    from darknetpy.int8 import quantize

    if name not in _Q:
        net, x, rec, size = det_case(name)
        calib = [x, np.ascontiguousarray(x[:, :, ::-1])]        # the case's input and its mirror image
        _Q[name] = quantize(net, calib)
    return _Q[name]


@needs_shared
@pytest.mark.parametrize("name", CASES)
def test_every_det_case_quantizes_and_its_heads_decode_from_int8(det_case, name, tmp_path):
    from darknetpy.boxes import decode, heads_of
    from darknetpy.int8 import load_quantized

    net, x, rec, size = det_case(name)
    qnet = _quantized(det_case, name)
    qg = qnet.qgraph
    heads = heads_of(net.graph)
    for head in heads:                                      # the graph ends at the head's input
        ql = qg[head.index]
        assert ql.alias and ql.out == qg.tensor_qparams(ql.src[0]) and ql.src == (head.index - 1,)
    raw = qnet.head_inputs(x, raw=True)
    deq = qnet.head_inputs(x)
    outs = net.predict(x, all_layers=True)
    for head, r, d in zip(heads, raw, deq):
        f = outs[head.index - 1].reshape(d.shape)
        qp = qg.tensor_qparams(head.index - 1)
        assert r.dtype == np.int8 and d.dtype == np.float32 and np.array_equal(qp.dequantize(r), d)
        sqnr = 10 * np.log10(float((f.astype(np.float64) ** 2).sum() / ((f - d).astype(np.float64) ** 2).sum()))
        assert sqnr > 15, (head.describe(), sqnr)           # random weights, up to 15 int8 layers deep
        # predict(raw=True) gives a head the tensor entering it
        assert np.array_equal(qnet.predict(x, raw=True, all_layers=True)[head.index].reshape(-1), r.reshape(-1))
    args = (size, rec["thresh"], rec["hier_thresh"], rec["nms"])
    ours = decode(net.graph, deq, *args)
    float_lines = [d.line for d in decode(net.graph, [outs[h.index - 1] for h in heads], *args)]
    print(f"\n{name}: int8 {len(ours)} lines, float {len(float_lines)}")
    assert ours and float_lines
    # a saved and loaded int8 graph is the same detector
    path = tmp_path / f"{name}.npz"
    qnet.save(path)
    again = load_quantized(path)
    assert decode(again.graph, again.head_inputs(x), *args) == ours


@needs_shared
def test_detect_letterboxes_and_decodes_like_the_float_network(det_case):
    """QuantizedNetwork.detect = letterbox + int8 engine + decode of the dequantised head inputs."""
    from darknetpy.boxes import decode
    from darknetpy.image import letterbox, load_image
    from conftest import DARKNET

    net, x, rec, size = det_case("det_yolov3_tiny_dog")
    qnet = _quantized(det_case, "det_yolov3_tiny_dog")
    img = load_image(DARKNET / "dog.jpg")
    dets = qnet.detect(img, 0.3)
    assert dets == decode(net.graph, qnet.head_inputs(letterbox(img, 160, 160)), (img.shape[2], img.shape[1]), 0.3)
    assert dets and {d.cls for d in dets} <= set(range(80))


@needs_shared
@pytest.mark.parametrize("name", ["det_yolov3_tiny_dog", "det_yolov1_tiny_eagle"])
def test_report_box_agreement(det_case, name, capsys):
    """compare() on a detector: per-layer errors as before, the output measured as box agreement (rule: same
    class and IoU >= 0.5), with darknet's thresholds for the head kind; no top-1/KL."""
    from darknetpy.int8.report import compare, match_boxes

    net, x, rec, size = det_case(name)
    qnet = _quantized(det_case, name)
    r = compare(net, qnet, [x])
    b = r.boxes
    assert b is not None and (b.thresh, b.nms) == ((0.2, 0.4) if "yolov1" in name else (0.5, 0.45))
    assert b.float_boxes > 0 and 0 < b.found <= min(b.float_boxes, b.int8_boxes)
    assert b.missed + b.found == b.float_boxes and b.extra + b.found == b.int8_boxes
    assert 0.5 <= b.mean_iou <= 1 + 1e-5
    d = json.loads(json.dumps(r.to_dict()))
    assert d["boxes"]["rule"] == "same class and IoU >= 0.5" and d["top1_agreement"] is None
    assert r.summary().startswith("over 1 image(s): boxes (same class, IoU >= 0.5; thresh")
    assert all(e.index not in [h.index for h in net.graph if isinstance(h, (L.Yolo, L.DetectionLayer))]
               for e in r.layers)
    # the float boxes against themselves: all found, IoU 1
    from darknetpy.boxes import decode
    outs = net.predict(x, all_layers=True)
    heads = [h for h in net.graph if isinstance(h, (L.Yolo, L.Region, L.DetectionLayer))]
    dets = decode(net.graph, [outs[h.index - 1] for h in heads], (net.graph.net.w, net.graph.net.h), b.thresh, 0.5,
                  b.nms)
    assert match_boxes(dets, dets) == [pytest.approx(1.0, rel=1e-5)] * len(dets)     # float32 IoU of a box with itself


def test_match_boxes_rule():
    from darknetpy.boxes import Detection
    from darknetpy.int8.report import match_boxes

    def det(cls, x, prob=0.9, w=0.2):
        return Detection(cls=cls, name=str(cls), prob=prob, x=x, y=0.5, w=w, h=0.2, left=0, top=0, right=0, bottom=0)

    ref = [det(0, 0.5), det(1, 0.5), det(0, 0.9, prob=0.95)]
    got = [det(1, 0.51), det(0, 0.62), det(0, 0.9)]             # class 0 at 0.62: IoU 0.25 with 0.5 -> no match
    ious = match_boxes(ref, got)
    assert len(ious) == 2 and ious[0] == pytest.approx(1.0) and ious[1] == pytest.approx(0.19 / 0.21, rel=1e-5)


# -- the layers detectors need, against the float kernels ------------------------------------------------------

def _graph(text):
    from darknetpy.graph import graph_from_text
    return graph_from_text(text)


NET = "[net]\nheight={h}\nwidth={w}\nchannels=3\n"
CONV = "[convolutional]\nfilters={f}\nsize=3\npad=1\nactivation=leaky\n"


@pytest.mark.parametrize("tail", [
    "[maxpool]\nsize=2\nstride=1\n",                                  # darknet's asymmetric padding: 0 before, 1 after
    "[upsample]\nstride=2\n",
    "[reorg]\nstride=2\n",                                             # yolov2's scramble
    "[reorg]\nstride=2\nreverse=1\n",                                  # depth-to-space
    "[reorg]\nstride=3\n",
    "[route]\nlayers=-1,0\n",
])
def test_int8_layout_layers_move_the_int8_values_exactly(tail):
    """These layers keep their input's parameters, so in int8 they must move the int8 values exactly as the
    float kernels move floats: run the float plan on the dequantised int8 input and quantise back."""
    from darknetpy.int8 import quantize
    from darknetpy.network import Network
    from darknetpy.weights import random_params

    g = _graph(NET.format(h=12, w=18) + CONV.format(f=36) + tail)
    net = Network(g, random_params(g, seed=3))
    rng = np.random.default_rng(0)
    x = rng.random((3, 12, 18), dtype=np.float32)
    qnet = quantize(net, [x, rng.random((3, 12, 18), dtype=np.float32)])
    q = qnet.predict(x, raw=True, all_layers=True)
    ql = qnet.qgraph[1]
    assert ql.out == qnet.qgraph[0].out or isinstance(g[1], L.Route)
    prev = qnet.qgraph[0].out.dequantize(q[0])
    if isinstance(g[1], L.Route):                               # same tensor twice: requantised copies
        ref = ql.out.quantize(np.concatenate([prev, prev]))
    else:
        ref = ql.out.quantize(_float_layer(g, 1, prev))
    assert np.array_equal(q[1].reshape(-1), ref.reshape(-1))


def _float_layer(g, i, x):
    """Layer i of ``g`` alone on the float tensor ``x`` (its input), by the float kernels."""
    from darknetpy.kernels import detection as kdet
    from darknetpy.kernels import elementwise as kel

    lay = g[i]
    out = np.zeros(lay.out_shape, np.float32)
    xx = np.ascontiguousarray(x.reshape(lay.in_shape), np.float32)
    if isinstance(lay, L.MaxPool):
        kel.maxpool(xx, lay.size, lay.stride, lay.padding, out)
    elif isinstance(lay, L.Upsample):
        kel.upsample(xx, lay.stride, lay.scale, lay.reverse, out)
    else:
        o = out.reshape(-1)
        kdet.reorg(xx.reshape(-1), lay.c, lay.h, lay.w, lay.stride, lay.reverse, lay.flatten, lay.extra, o)
    return out


@pytest.mark.filterwarnings("ignore:.*not a multiple of stride")
@pytest.mark.parametrize("tail,why", [
    ("[upsample]\nstride=2\nscale=0.5\n", "scale=0.5"),
    ("[upsample]\nstride=-2\n", "stride < 0"),
    ("[reorg]\nstride=2\nflatten=1\n", "flatten=1 and extra>0"),
    ("[reorg]\nstride=2\nextra=3\n", "flatten=1 and extra>0"),
    ("[convolutional]\nfilters=18\nsize=1\nactivation=linear\n[reorg]\nstride=2\n", "18 channels are not a multiple"),
    ("[convolutional]\nfilters=8\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=1,2\nclasses=3\nnum=1\n"
     "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n", "layer 3 \\[convolutional\\] reads its output"),
])
def test_what_int8_refuses_in_detectors_names_the_layer(tail, why):
    from darknetpy.int8.qgraph import check_int8

    g = _graph(NET.format(h=8, w=8) + CONV.format(f=8) + tail)
    with pytest.raises(UnsupportedError, match=why):
        check_int8(g)
