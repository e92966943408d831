"""The ``board-run`` report: what a run of the board said, as text or as JSON-ready data.

``format_report`` gives the text ``darknetpy board-run`` prints, ``report_dict`` what ``--json``
prints. Both take a :class:`~darknetpy.board.results.BoardReport` and, optionally, the int8
comparison the command computed (a plain dict: this module knows nothing of the engine).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .results import BoardReport, OutputTensor, RunResult, TensorInfo

_MODE_NAMES = {"perf": "PERF", "io": "IO_ONLY", "per-layer": "PER_LAYER"}


def _param_text(mode: str, const: bool) -> str:
    return _MODE_NAMES[mode] + ("|CONST_VALUE" if const else "")


def _mhz(hz: Optional[int]) -> str:
    return "?" if not hz else f"{hz / 1e6:g} MHz"


def _epoch_table(runs: list[RunResult]) -> list[dict]:
    """Per-epoch mean over runs, with its share of the mean whole-inference time."""
    first = runs[0].epochs
    if not first:
        return []
    total = float(np.mean([r.ms for r in runs]))
    rows = []
    for i, epoch in enumerate(first):
        ms = float(np.mean([r.epochs[i].ms for r in runs if i < len(r.epochs)]))
        rows.append({"epoch": epoch.label, "kind": epoch.kind, "ms": ms,
                     "cycles": epoch.cycles, "percent": 100.0 * ms / total if total else None})
    return rows


def _output_summary(output: OutputTensor) -> dict:
    info = output.info
    entry = {"name": info.name, "shape": list(info.shape), "dtype": info.dtype,
             "scale": info.scale, "zero_point": info.zero_point}
    if output.data is None:
        entry["data"] = None
        return entry
    values = output.values()
    flat = values.ravel()
    if sum(1 for d in values.shape if d != 1) <= 1:          # a class vector
        order = np.argsort(-flat, kind="stable")[:5]
        entry["top5"] = [{"index": int(i), "value": float(flat[i])} for i in order]
    entry.update(min=float(flat.min()), max=float(flat.max()), mean=float(flat.mean()))
    return entry


def report_dict(report: BoardReport, source: str, const: bool,
                comparison: Optional[dict] = None) -> dict:
    """The whole report as JSON-ready data (what ``--json`` prints)."""
    out = {"device": report.device.as_dict(), "network": report.network.as_dict(),
           "mode": report.mode, "run_param": _param_text(report.mode, const), "input": source,
           "runs": [r.as_dict() for r in report.runs], "stats": report.stats(),
           "warnings": report.warnings + [w for r in report.runs for w in r.warnings]}
    if report.mode == "per-layer":
        out["epochs"] = _epoch_table(report.runs)
    if report.mode != "perf":
        out["outputs"] = [_output_summary(o) for o in report.runs[-1].outputs]
    if comparison is not None:
        out["int8_comparison"] = comparison
    return out


def _tensor_line(kind: str, i: int, t: TensorInfo) -> str:
    quant = (f"scale {t.scale:.6g}  zero point {t.zero_point}" if t.scale
             else "not quantized")
    return f"  {kind} {i}  {t.dtype:<7} {str(tuple(t.shape)):<18} {quant}  ({t.name})"


def format_report(report: BoardReport, source: str, const: bool,
                  comparison: Optional[dict] = None) -> str:
    """The human-readable report."""
    d, n = report.device, report.network
    lines = [f"device   {d.name} (id 0x{d.devid:x})  CPU {_mhz(d.sclock)}  NPU {_mhz(d.npu_hz)}  "
             f"protocol {d.protocol}, framing {d.framing}, {d.packet_size}-byte packets",
             f"network  {n.name!r} (index {n.index})  MACs "
             f"{'n/a' if n.macc is None else f'{n.macc:,}'}  epochs {n.n_epochs}"]
    lines += [_tensor_line("input ", i, t) for i, t in enumerate(n.inputs)]
    lines += [_tensor_line("output", i, t) for i, t in enumerate(n.outputs)]
    lines.append(f"mode     {report.mode} ({_param_text(report.mode, const)}), input {source}")
    for i, r in enumerate(report.runs, 1):
        cycles = f"{r.cycles:,} cycles" if r.cycles is not None else "cycles n/a"
        lines.append(f"run {i:>3}  {r.ms:9.3f} ms  ({cycles})")
    s = report.stats()
    ips = f"{s['inferences_per_s']:.1f}" if s["inferences_per_s"] else "?"
    lines.append(f"ms       min {s['min_ms']:.3f}  median {s['median_ms']:.3f}  mean "
                 f"{s['mean_ms']:.3f}  max {s['max_ms']:.3f}  -> {ips} inferences/s")
    if report.mode == "per-layer":
        lines.append(f"{'epoch':<12} {'kind':<8} {'ms':>9} {'%':>6}")
        for row in _epoch_table(report.runs):
            pct = f"{row['percent']:6.1f}" if row["percent"] is not None else "     ?"
            lines.append(f"  {row['epoch']:<10} {row['kind']:<8} {row['ms']:9.4f} {pct}")
    if report.mode != "perf":
        for i, o in enumerate(report.runs[-1].outputs):
            entry = _output_summary(o)
            if entry.get("data", True) is None:
                lines.append(f"output {i}  no data")
            elif "top5" in entry:
                top = "  ".join(f"{t['index']}:{t['value']:.4g}" for t in entry["top5"])
                lines.append(f"output {i}  top-5 {top}")
            else:
                lines.append(f"output {i}  {tuple(entry['shape'])} min {entry['min']:.4g} "
                             f"max {entry['max']:.4g} mean {entry['mean']:.4g}")
    if comparison is not None:
        c = comparison
        lines.append(f"int8     max |diff| {c['max_abs_diff']:.4g}  mean |diff| "
                     f"{c['mean_abs_diff']:.4g}  top-1 board {c['top1_board']} / darknetpy "
                     f"{c['top1_int8']}  top-5 overlap {c['top5_overlap']}/5"
                     + (f"  identical {100 * c['identical']:.2f} % (max {c['max_steps']} step"
                        f"{'s' if c['max_steps'] != 1 else ''})" if "identical" in c else ""))
    for warning in report.warnings + [w for r in report.runs for w in r.warnings]:
        lines.append(f"warning  {warning}")
    return "\n".join(lines)
