"""``darknetpy import-onnx MODEL.onnx CFG -o OUT.weights``: trained weights for a cfg from a float ONNX model.

The ONNX graph is followed from its input and mapped onto the cfg's layers (darknetpy/onnx_import.py); any
mismatch is one error naming the cfg line, the layer and the ONNX node (exit code 16). After writing, the
import proves itself: onnxruntime on the ONNX model and darknetpy on cfg + the new weights get the same
input, and a difference above 1e-4 x max|output| is an error.
"""

from __future__ import annotations

import os
import sys

TOLERANCE = 1e-4


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="a float ONNX classifier (e.g. ST model zoo <model>_pt_224.onnx)")
    p.add_argument("cfg", help="the Darknet cfg it should fill (e.g. cfg/dla46_c.cfg)")
    p.add_argument("-o", "--output", metavar="OUT.weights", default=None,
                   help="weights file to write (default: <cfg name>.weights here)")


def run(args) -> int:
    from ..onnx_import import import_onnx_model, verify

    out = args.output or os.path.splitext(os.path.basename(args.cfg))[0] + ".weights"
    imported = import_onnx_model(args.model, args.cfg)
    net = imported.network
    err = verify(imported, args.model, tolerance=TOLERANCE)   # before writing: a wrong file is never left
    net.save_weights(out)
    n = net.graph.nparams
    print(f"wrote {out}: {n:,} floats for {len(net.graph)} layers of {os.path.basename(args.cfg)}")
    cfg_net = net.graph.net
    if imported.mean is not None:
        mean = ", ".join(f"{v:.4g}" for v in imported.mean)
        std = ", ".join(f"{v:.4g}" for v in imported.std)
        print(f"the ONNX model normalises its input: mean ({mean}), std ({std}), as the cfg's [net] does")
    elif cfg_net.normalizes:
        print("the ONNX model takes the normalised image as its input (PyTorch style); the cfg's [net] mean/std "
              "normalise images for it (if the model had its normalisation folded into the first conv, remove "
              "mean=/std= from the cfg)")
    print(f"checked against onnxruntime: largest difference {err:.3g} x max|output| "
          f"(layer {imported.output_layer}, limit {TOLERANCE:g})", file=sys.stderr)
    return 0
