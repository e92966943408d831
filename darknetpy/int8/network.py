"""The public int8 entry points: ``quantize`` (a float Network -> a ``QuantizedNetwork``), ``load_quantized``."""

from __future__ import annotations

import os

import numpy as np

from .. import layers as L
from ..network import check_input
from .calibrate import build_qgraph
from .qgraph import QGraph
from .report import QuantReport, compare

class QuantizedNetwork:
    """An int8 network ready to run on the CPU (darknetpy's int8 engine).

    >>> qnet = darknetpy.quantize(net, "calib/")            # doctest: +SKIP
    >>> qnet.predict(x)                # (1000,) float32: dequantised int8 probabilities  # doctest: +SKIP
    >>> qnet.save("tiny_int8.npz"); darknetpy.to_onnx(qnet, "tiny_int8.onnx")               # doctest: +SKIP
    """

    def __init__(self, qgraph: QGraph):
        self.qgraph = qgraph
        self._plan = None

    @property
    def graph(self) -> L.Graph:
        return self.qgraph.graph

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.qgraph.graph.net.in_shape

    def plan(self):
        from .engine import Int8Plan

        if self._plan is None:
            self._plan = Int8Plan(self.qgraph)
        return self._plan

    def preprocess(self, image, method: str = "letterbox") -> np.ndarray:
        """The network input for ``image`` (a path or a ``load_image`` array): letterbox, then the cfg's
        mean/std normalisation if it has one (``Network.preprocess``)."""
        from ..network import prepare_input
        return prepare_input(self.graph, image, method)

    def predict(self, x: np.ndarray, *, all_layers: bool = False, raw: bool = False):
        """Run the int8 network on ``x``, the network input (float32 (C, H, W): the [0, 1] image, or the
        normalised image when the cfg has mean/std; ``preprocess`` makes it).

        Returns the output layer's values dequantised to float32 (shaped like the float network's), or with
        ``raw=True`` the int8 tensor itself (a float softmax output stays float). ``all_layers=True``
        returns every layer's output the same way. A detection head computes nothing in int8: its value is
        the tensor entering it (``head_inputs``, ``detect``).
        """
        x = check_input(x, self.input_shape)
        p = self.plan()
        p.run(x)
        qg = self.qgraph

        def value(i: int) -> np.ndarray:
            lay = qg.graph[i]
            o = p.outputs[i].reshape(lay.out_shape)
            qp = qg[i].out
            if raw or qp is None or o.dtype != np.int8:
                return o.copy()
            return qp.dequantize(o)
        if all_layers:
            return [value(i) for i in range(len(qg))]
        return value(qg.output_index)

    def head_inputs(self, x: np.ndarray, *, raw: bool = False) -> list[np.ndarray]:
        """Run the int8 network on ``x`` (the network input) and return, for every [region]/[yolo]/[detection]
        layer in order, the int8 tensor entering it dequantised to float32 (``raw=True``: the int8 tensor),
        shaped as the head's input: what ``darknetpy.decode`` takes, and what the QDQ export outputs.

        The int8 graph ends there: the heads' own forward pass and the boxes run on the host in float, as ST's
        application does with the NPU's outputs.
        """
        from ..boxes import heads_of, unsupported_if_no_heads

        unsupported_if_no_heads(self.graph)
        x = check_input(x, self.input_shape)
        p = self.plan()
        p.run(x)
        out = []
        for head in heads_of(self.graph):
            j = self.qgraph[head.index].src[0]
            shape = (head.inputs,) if isinstance(head, L.DetectionLayer) else head.in_shape
            q = (p.input if j < 0 else p.outputs[j]).reshape(shape)
            out.append(q.copy() if raw else self.qgraph.tensor_qparams(j).dequantize(q))
        return out

    def detect(self, image: np.ndarray, thresh: float = 0.5, hier_thresh: float = 0.5, nms: float = 0.45, *,
               names: list[str] | None = None) -> list:
        """``Network.detect`` with the int8 network: the image letterboxed (resized for a YOLOv1 [detection]
        head, as ``darknet yolo test`` does), the int8 engine up to the heads' inputs, then darknet's decoding
        of the dequantised tensors (``darknetpy.decode``). One ``Detection`` per printed line.

        >>> qnet = darknetpy.quantize(darknetpy.load("yolov2-tiny-voc.cfg", "w.weights"), "calib/")  # doctest: +SKIP
        >>> for d in qnet.detect(darknetpy.load_image("dog.jpg")):                                  # doctest: +SKIP
        ...     print(d.line)
        """
        from ..errors import DarknetpyError
        from ..network import decode

        img = np.asarray(image)
        if img.dtype != np.float32 or img.ndim != 3:
            raise DarknetpyError(f"detect() needs a float32 (C, H, W) image (darknetpy.load_image), got "
                                 f"{img.dtype} {img.shape}")
        yolov1 = any(isinstance(layer, L.DetectionLayer) for layer in self.graph.layers)
        x = self.preprocess(img, "resize" if yolov1 else "letterbox")
        return decode(self.graph, self.head_inputs(x), (img.shape[2], img.shape[1]), thresh, hier_thresh, nms,
                      names=names)

    def save(self, path: str | os.PathLike) -> None:
        self.qgraph.save(path)

    def report(self, net, images, *, progress=None) -> "QuantReport":
        """Per-layer and output errors against the float network ``net`` on ``images`` (see ``compare``)."""
        return compare(net, self, images, progress=progress)


def quantize(net, images, method: str | dict = "minmax", *, softmax: str = "int8", pair_safe: bool = True,
             bias_correction: bool | str = False, percentile: float = 99.99, progress=None) -> QuantizedNetwork:
    """Quantise a float ``Network`` to int8, calibrating on ``images``.

    ``images``: a directory (searched recursively; darknet's letterbox preprocessing), a list of image paths
    or float32 (C, H, W) arrays in [0, 1], an array (N, C, H, W), or an int N for N random inputs (smoke
    tests). ``method``: ``"minmax"`` (ST's recipe), ``"percentile"``, ``"mse"``, ``"auto"``, or a dict
    {layer index: method, "default": method}. ``softmax``: "int8" (ST's 1/255 output) or "float";
    ``pair_safe``: weights whose u8 x s8 pairs cannot saturate (see the module docstring); ``bias_correction``:
    False, "weight" (or True) or "sequential"; ``percentile``: the percentile method's upper percentile, above 50
    and at most 100 (a QuantizeError otherwise); ``progress(i, n)`` is called after each calibration input.

    >>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")        # doctest: +SKIP
    >>> qnet = darknetpy.quantize(net, "calib/", method="mse")              # doctest: +SKIP
    >>> qnet.predict(darknetpy.letterbox(darknetpy.load_image("dog.jpg"), 224, 224)).argmax()  # doctest: +SKIP
    """
    qg = build_qgraph(net.graph, net.weights, images, method=method, softmax=softmax, pair_safe=pair_safe,
                      bias_correction=bias_correction, percentile=percentile, progress=progress)
    return QuantizedNetwork(qg)


def load_quantized(path: str | os.PathLike) -> QuantizedNetwork:
    """Read a network saved with ``QuantizedNetwork.save``."""
    return QuantizedNetwork(QGraph.load(path))


