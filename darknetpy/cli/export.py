"""``darknetpy export``: a cfg + weights -> ONNX (float, or QDQ int8 for the STM32N6 NPU).

    darknetpy export [CFG [WEIGHTS]] [--onnx [OUT.onnx]] [--int8] [--calib DIR | --calib-random N]
                     [--method minmax|...] [--input-layout nchw-float|nhwc-uint8]

CFG defaults to cfg/tiny.cfg and WEIGHTS (for tiny.cfg) to the fetched tiny.weights; the output to
``<cfg name>[_int8].onnx``. An int8 export without --calib calibrates on darknet's sample photos if they
were fetched (``darknetpy fetch --all``) and says so; without any images it stops and asks for --calib:
a model meant for a board is never calibrated on random data silently.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

from ..errors import DarknetpyError, ExportError, QuantizeError
from .args import positive_int

STEDGEAI = ("stedgeai generate --model {model} --target stm32n6 --st-neural-art default@user_neuralart.json"
            "{io}")


def add_arguments(p) -> None:
    p.add_argument("cfg", nargs="?", default=None, help="network .cfg (default: cfg/tiny.cfg)")
    p.add_argument("weights", nargs="?", default=None, help="its .weights (default for tiny.cfg: the fetched tiny.weights)")
    p.add_argument("--onnx", nargs="?", const="", default="", metavar="OUT.onnx",
                   help="output file (default: <cfg name>[_int8].onnx)")
    p.add_argument("--int8", action="store_true", help="QDQ int8 (per-channel symmetric weights, int8 activations)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--calib", metavar="DIR", help="directory of calibration images (searched recursively)")
    g.add_argument("--calib-random", type=positive_int, metavar="N", help="N random inputs (smoke tests only)")
    p.add_argument("--method", default="minmax", help="calibration method (see `darknetpy quantize --help`)")
    p.add_argument("--input-layout", choices=("nchw-float", "nhwc-uint8"), default="nchw-float",
                   help="nchw-float: (1,3,H,W) float input (default, ST's recipe); nhwc-uint8: (1,H,W,3) uint8 "
                        "input as in ST's model zoo")


def _default_cfg() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):     # cwd, then this checkout
        p = base / "cfg" / "tiny.cfg"
        if p.is_file():
            return p
    raise ExportError("no CFG given and cfg/tiny.cfg not found here; pass the .cfg to export")


def _default_calibration(weights: str | None):
    """darknet's sample photos next to the fetched weights, if present: (directory, count) or None."""
    from ..fetch import ASSETS, data_dirs

    photos = [n for n in ASSETS if n.endswith(".jpg")]
    dirs = ([Path(weights).resolve().parent] if weights else []) + data_dirs()
    for d in dirs:
        found = [d / n for n in photos if (d / n).is_file()]
        if found:
            return [str(f) for f in found]
    return None


def run(args) -> int:
    import onnx

    from .. import load
    from ..fetch import find_data
    from ..export.n6check import check_n6, input_edge
    from ..export import to_onnx

    cfg = Path(args.cfg) if args.cfg else _default_cfg()
    weights = args.weights
    if weights is None:
        if cfg.name != "tiny.cfg":
            raise ExportError(f"{cfg}: no WEIGHTS given (export needs trained weights; only tiny.cfg has a default)")
        found = find_data("tiny.weights")
        if found is None:
            raise ExportError("tiny.weights not found: run `darknetpy fetch`, or pass the weights file")
        weights = str(found)
    net = load(cfg, weights)
    out = args.onnx or f"{cfg.stem}{'_int8' if args.int8 else ''}.onnx"
    calibration = None
    if args.int8:
        if args.calib:
            calibration = args.calib
            print(f"calibrating on the images in {args.calib}", file=sys.stderr)
        elif args.calib_random:
            calibration = int(args.calib_random)
            print(f"calibrating on {calibration} random inputs: fine for a smoke test, NOT for a model meant for "
                  "a board (pass --calib DIR)", file=sys.stderr)
        else:
            calibration = _default_calibration(weights)
            if calibration is None:
                raise QuantizeError("--int8 needs calibration images: pass --calib DIR (a few hundred images like "
                                    "the ones the network will see), or --calib-random N for a smoke test")
            print(f"no --calib given: calibrating on darknet's {len(calibration)} sample photos in "
                  f"{Path(calibration[0]).parent} (pass --calib DIR with images of your data for a real model)",
                  file=sys.stderr)
    try:
        model = to_onnx(net, out, int8=args.int8, calibration=calibration, method=args.method,
                        input_layout=args.input_layout)
    except DarknetpyError:
        raise
    ops = collections.Counter(n.op_type for n in model.graph.node)
    params = sum(int(onnx.numpy_helper.to_array(t).size) for t in model.graph.initializer)
    print(f"wrote {out}: {os.path.getsize(out):,} bytes, {len(model.graph.node)} nodes, {params:,} parameters "
          f"(opset {model.opset_import[0].version}, IR {model.ir_version})")
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    if len(model.graph.output) > 1 or any(p.key == "darknetpy_heads" for p in model.metadata_props):
        names = [o.name for o in model.graph.output]
        print(f"  detector: {len(names)} output{'s' if len(names) > 1 else ''} {', '.join(names)} (the tensors entering "
              "the heads; decode them with darknetpy.decode(model, outputs, image_size), heads in the metadata "
              "darknetpy_heads)")
    violations = check_n6(model)
    if args.int8:
        io = "" if args.input_layout == "nhwc-uint8" else (" --input-data-type uint8 --output-data-type float32 "
                                                           "--inputs-ch-position chlast")
        if net.graph.net.normalizes and args.input_layout != "nhwc-uint8":
            # the float Sub/Div come before the input's QuantizeLinear: stedgeai cannot absorb a uint8 input
            # into it, so the float input stays (or the uint8 image goes into the graph: nhwc-uint8)
            io = " --output-data-type float32"
        print("  STM32N6: " + ("passes check-n6" if not violations else f"{len(violations)} check-n6 violation(s)"))
        edge = input_edge(model)
        if edge:
            print(f"  input preprocessing in the model, run on the MCU before the NPU: {', '.join(edge)}")
        print("next, with ST Edge AI Core:\n  " + STEDGEAI.format(model=out, io=io))
        if net.graph.net.normalizes and args.input_layout != "nhwc-uint8":
            print("  (the model normalises a float [0, 1] image; for a uint8 camera image in the graph, export with "
                  "--input-layout nhwc-uint8)")
        if violations:
            for v in violations:
                print(f"  {v}", file=sys.stderr)
            raise ExportError(f"{out}: the int8 model violates {len(violations)} STM32N6 constraint(s) (listed above)")
    else:
        print("  float model: onnxruntime runs it as is; the STM32N6 NPU needs int8 weights and activations "
              "(add --int8)")
    return 0
