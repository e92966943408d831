"""``darknetpy check-n6 MODEL.onnx``: list every STM32N6 NPU constraint a model violates (n6check.py)."""

from __future__ import annotations

import os

from . import jsonout
from ..errors import ExportError


def add_arguments(p) -> None:
    p.add_argument("model", help="an ONNX model (e.g. from `darknetpy export --int8 --onnx`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import onnx

    from ..export.n6check import check_n6, input_edge

    if not os.path.isfile(args.model):
        raise ExportError(f"{args.model}: no such ONNX file")
    try:
        model = onnx.load(args.model)
    except Exception as e:  # onnx raises DecodeError and friends
        raise ExportError(f"{args.model}: not a readable ONNX model ({e})") from None
    violations = check_n6(model)
    edge = input_edge(model)
    if args.json:
        print(jsonout.dumps({"model": args.model, "ok": not violations, "mcu_input_nodes": edge,
                          "violations": [{"node": v.node, "rule": v.rule, "message": v.message} for v in violations]}))
    elif not violations:
        print(f"{args.model}: OK for the STM32N6 NPU (int8 per-channel weights, int8 activations, static shapes, "
              "known operators)")
        if edge:
            print(f"  input preprocessing in the model, run on the MCU before the NPU: {', '.join(edge)}")
    else:
        print(f"{args.model}: {len(violations)} violation(s) of the STM32N6 NPU constraints:")
        for v in violations:
            print(f"  {v}")
    if violations:
        raise ExportError(f"{args.model}: {len(violations)} violation(s) of the STM32N6 NPU constraints (listed above)")
    return 0
