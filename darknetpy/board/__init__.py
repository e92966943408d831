"""STM32N6 board client (ST's aiValidation / NPU_Validation firmware protocol)."""
