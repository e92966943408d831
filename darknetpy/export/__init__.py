"""export: ONNX for onnxruntime and ST Edge AI Core (float and QDQ int8), and the STM32N6 NPU check."""
