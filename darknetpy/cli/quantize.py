"""``darknetpy quantize``: quantise a network to int8 and report what it costs, per layer and at the output.

    darknetpy quantize CFG WEIGHTS --calib DIR [--method minmax|percentile|mse|auto] [--eval DIR]
                       [--report] [--json] [--save OUT.npz] [--onnx OUT.onnx] [--bias-correction MODE]
                       [--softmax int8|float] [--no-pair-safe] [--calib-random N] [--threads N] [--plot FILE.png]

Calibration images are found recursively under DIR and preprocessed like darknet's classify (RGB, /255,
letterbox to the network size); one that cannot be used (corrupt, too thin to letterbox) is a warning naming
it, and the others go on (a folder with no usable image is an error, exit code 9). The report compares the
int8 network (darknetpy's int8 engine, the same arithmetic onnxruntime applies to the QDQ export) with the
float network on the --eval images, or on the calibration images when --eval is not given; for a detector
the output is measured as box agreement (a float box is found by an int8 box of the same class with IoU >= 0.5;
missed, extra, mean IoU). Progress goes to stderr; results to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import jsonout
from .args import percentile, positive_int

# Plain copies of int8.calibrate.CALIB_METHODS and int8.qgraph.SOFTMAX_MODES, so that building the parser
# does not import numba (250 ms during which a Ctrl-C used to print a traceback); tests/cli/test_cli.py
# checks they agree.
CALIB_METHODS = ("minmax", "percentile", "mse", "auto")
SOFTMAX_MODES = ("int8", "float")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cfg", help="network .cfg")
    p.add_argument("weights", help="network .weights")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib", metavar="DIR", help="directory of calibration images (searched recursively)")
    src.add_argument("--calib-random", metavar="N", type=positive_int,
                     help="calibrate on N seeded random inputs instead (a smoke test: the ranges mean nothing)")
    p.add_argument("--method", choices=CALIB_METHODS, default="minmax",
                   help="activation range per tensor: minmax (ST's recipe, default), percentile, mse, or auto "
                        "(per tensor the lowest-MSE of the three)")
    p.add_argument("--percentile", type=percentile, default=99.99,
                   help="the percentile method's upper percentile, above 50 and at most 100 (default 99.99; "
                        "the lower one is 100 minus it)")
    p.add_argument("--bias-correction", choices=("weight", "sequential"), default=None,
                   help="correct conv/connected biases for the mean error quantisation causes (measured: "
                        "helps mse calibration slightly, hurts minmax; off by default)")
    p.add_argument("--softmax", choices=SOFTMAX_MODES, default="int8",
                   help="a [softmax] output: int8 with ST's fixed scale 1/255 (default) or float")
    p.add_argument("--no-pair-safe", dest="pair_safe", action="store_false",
                   help="allow weights whose u8 x s8 pairs can saturate onnxruntime's AVX2 kernels "
                        "(ST's plain recipe; see the README's int8 section)")
    p.add_argument("--eval", metavar="DIR", help="evaluate on these images (default: the calibration images)")
    p.add_argument("--report", action="store_true", help="print the per-layer table (SQNR, cosine, max error)")
    p.add_argument("--json", action="store_true", help="print one JSON object with everything")
    p.add_argument("--save", metavar="OUT", help="write the int8 graph (.npz) for darknetpy.load_quantized")
    p.add_argument("--onnx", metavar="OUT", help="also write the QDQ ONNX model (darknetpy.export.onnx_qdq)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads for the kernels (default: all cores)")
    p.add_argument("--plot", metavar="FILE.png", help="draw every layer's SQNR and cosine (worst layers marked) "
                                                      "into a PNG (needs the [plot] extra: matplotlib)")


def run(args) -> int:
    if args.plot:                                # before any work: a missing extra is an error right away
        from ..plots import require_matplotlib
        require_matplotlib()
    from ..network import load, set_threads
    from ..int8 import quantize
    from ..int8.calibrate import image_folder
    from ..int8.report import compare
    from .progress import progress_bar

    set_threads(args.threads)
    net = load(args.cfg, args.weights)
    if args.calib is not None:
        image_folder(args.calib, what="calibration")          # a missing or empty folder: before any work
        calib = args.calib                                    # a folder: an error about its images names it
    else:
        calib = args.calib_random
    if args.eval:
        image_folder(args.eval, what="evaluation")
    evalset = args.eval or calib
    quiet = args.json
    qnet = quantize(net, calib, method=args.method, softmax=args.softmax, pair_safe=args.pair_safe,
                    bias_correction=args.bias_correction or False, percentile=args.percentile,
                    progress=None if quiet else progress_bar("calibrating"))
    n_calib = qnet.qgraph.info["calibration_images"]          # the images used (unusable ones are skipped)
    if args.save:
        qnet.save(args.save)
    if args.onnx:
        from ..export.onnx_qdq import export_qdq
        export_qdq(qnet.qgraph, args.onnx)
    report = compare(net, qnet, evalset, progress=None if quiet else progress_bar("evaluating"))
    name = os.path.basename(args.cfg)
    if args.plot:
        from ..plots import plot_layers
        plot_layers([e.name for e in report.layers], [e.sqnr_db for e in report.layers],
                    [e.cosine for e in report.layers], args.plot, title=f"{name}: int8 against float, per layer")
    if args.json:
        d = report.to_dict()
        d.update({"cfg": args.cfg, "weights": args.weights, "method": args.method, "calibration_images": n_calib,
                  "evaluated_on": "eval" if args.eval else "calibration", "saved": args.save, "onnx": args.onnx})
        print(jsonout.dumps(d))
        return 0
    print(f"{name}: int8 ({args.method} calibration on {n_calib} "
          f"{'image' if args.calib else 'random input'}{'s' if n_calib != 1 else ''}"
          f"{', bias correction ' + args.bias_correction if args.bias_correction else ''}"
          f"{'' if args.pair_safe else ', pair_safe off'})")
    if args.report:
        print(report.table())
    worst = min(report.layers, key=lambda e: e.sqnr_db, default=None)
    if worst is not None:
        print(f"lowest SQNR: {worst.name} {worst.sqnr_db:.2f} dB (cosine {worst.cosine:.6f})")
    print(report.summary() + (" (evaluation images)" if args.eval else " (calibration images)"))
    print(report.metrics_summary())
    if args.save:
        print(f"saved the int8 graph to {args.save}", file=sys.stderr)
    if args.onnx:
        print(f"wrote the QDQ model {args.onnx}", file=sys.stderr)
    if args.plot:
        print(f"wrote the plot {args.plot}", file=sys.stderr)
    return 0
