"""darknetpy: Darknet networks on the CPU and on the STM32N6."""

__version__ = "0.1.0"
