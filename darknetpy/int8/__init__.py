"""int8: calibration, the int8 graph (a rewrite of the float graph), its engine and its error report."""

from .quant import QuantizedNetwork, load_quantized, quantize

__all__ = ["QuantizedNetwork", "load_quantized", "quantize"]
