"""darknetpy: Darknet networks on the CPU and on the STM32N6.

>>> import darknetpy
>>> net = darknetpy.load("cfg/tiny.cfg", "weights/tiny.weights")               # doctest: +SKIP
>>> x = darknetpy.letterbox(darknetpy.load_image("weights/dog.jpg"), 224, 224)  # doctest: +SKIP
>>> probs = net.predict(x)                                                      # doctest: +SKIP

The public names are imported lazily, so ``import darknetpy`` stays cheap (numba loads on first use).
"""

from .errors import (BoardError, CfgError, DarknetpyError, ExportError, FetchError, ImageError, MemoryLimitError,
                     OnnxImportError, QuantizeError, UnsupportedError, WeightsError)

__version__ = "0.1.0"

_LAZY = {
    "load": ("network", "load"),
    "Network": ("network", "Network"),
    "set_threads": ("network", "set_threads"),
    "load_graph": ("graph", "load_graph"),
    "load_image": ("image", "load_image"),
    "letterbox": ("image", "letterbox"),
    "resize_image": ("image", "resize_image"),
    "read_weights": ("weights", "read_weights"),
    "save_weights": ("weights", "save_weights"),
    "fetch": ("fetch", "fetch"),
    "decode": ("network", "decode"),
    "Detection": ("boxes", "Detection"),
    "to_onnx": ("export", "to_onnx"),
    "export_onnx": ("export.onnx_float", "export_onnx"),
    "check_n6": ("export.n6check", "check_n6"),
    "import_onnx": ("onnx_import", "import_onnx"),
    "quantize": ("int8.network", "quantize"),
    "load_quantized": ("int8.network", "load_quantized"),
    "QuantizedNetwork": ("int8.network", "QuantizedNetwork"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'darknetpy' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["BoardError", "CfgError", "DarknetpyError", "ExportError", "FetchError", "ImageError", "MemoryLimitError",
           "OnnxImportError",
           "QuantizeError",
           "UnsupportedError", "WeightsError", "__version__", *_LAZY]
