"""numba kernels only: each a private @njit function over plain arrays plus a small public wrapper.

exact.py        darknet-exact float kernels (conv, batch norm, connected, avgpool, local)
gemm.py         packed float32 GEMM with an LLVM-IR register-blocked micro-kernel
conv.py         fast convolution (GEMM with fused epilogue; direct grouped/depthwise), connected
elementwise.py  maxpool, softmax, shortcut, upsample, crop (exact at full speed)
activation.py   darknet's activations, evaluated as darknet does (in double)
"""
