"""export: ONNX for onnxruntime and ST Edge AI Core (float and QDQ int8), and the STM32N6 NPU check.

Modules: ``common`` (opset, IR version, input layouts, the node builder, metadata, checked atomic save),
``onnx_float`` (graph -> float ONNX, table ``FLOAT_EXPORT``), ``onnx_qdq`` (int8 graph -> QDQ ONNX, table
``QDQ_EXPORT``), ``n6check`` (an ONNX model against the NPU's documented constraints; table ``N6_LAYERS``), and
here ``to_onnx``, the one call for a Network or a QuantizedNetwork.
"""

from __future__ import annotations

import os

from ..errors import QuantizeError
from ..int8 import QuantizedNetwork, quantize
from .n6check import check_n6
from .onnx_float import export_onnx
from .onnx_qdq import export_qdq

__all__ = ["check_n6", "export_onnx", "export_qdq", "to_onnx"]


def to_onnx(net, path: str | os.PathLike | None = None, *, int8: bool = False, calibration=None,
            method: str = "minmax", input_layout: str = "nchw-float", preprocess: str = "letterbox"):
    """Export a darknetpy ``Network`` to ONNX: float, or QDQ int8 calibrated on ``calibration`` (a directory of
    images, a list of paths or arrays, or an int N for N random inputs); or a ``QuantizedNetwork`` (from
    ``darknetpy.quantize``) to its QDQ model. Returns the onnx.ModelProto.

    >>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")          # doctest: +SKIP
    >>> darknetpy.to_onnx(net, "tiny.onnx")                                   # doctest: +SKIP
    >>> darknetpy.to_onnx(net, "tiny_int8.onnx", int8=True, calibration="calib_images/")  # doctest: +SKIP
    >>> darknetpy.to_onnx(darknetpy.quantize(net, "calib_images/"), "tiny_int8.onnx")      # doctest: +SKIP
    """
    if isinstance(net, QuantizedNetwork):
        return export_qdq(net.qgraph, path, input_layout=input_layout, preprocess=preprocess)
    if not int8:
        return export_onnx(net.graph, net.weights, path, input_layout=input_layout, preprocess=preprocess)
    if calibration is None:
        raise QuantizeError("an int8 export needs calibration data: a directory of representative images "
                            "(or an int N for N random inputs, for a smoke test only)")
    qnet = quantize(net, calibration, method=method)
    return export_qdq(qnet.qgraph, path, input_layout=input_layout)
