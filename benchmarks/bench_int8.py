"""darknetpy's int8 engine vs onnxruntime running the same QDQ model, side by side in one process.

For each network (tiny.cfg and the four model-zoo translations, 224x224, batch 1) the float network is
quantised by darknetpy (MinMax on a few seeded random [0, 1) images: the calibration changes no timing),
exported with ``onnx_qdq.export_qdq``, and both engines run that same int8 graph. They are checked to agree
first, warmed up, then timed alternately (one darknetpy run, one onnxruntime run, ...) like
``benchmarks/bench.py``: medians, min and max, and the darknetpy/onnxruntime ratio of medians.

onnxruntime is timed in its default configuration (``ort``: on x86 it rewrites int8 activations to uint8 and
runs QLinearConv & co., falling back to float Conv/Add/Concat for tensors read by several nodes) and, with
``--all-int8``, also with ``session.qdqisint8allowed=1`` (``ort-s8``: every node an integer kernel, on x86
the slow s8s8 path). Threads: numba's pool for darknetpy (numba.set_num_threads), the intra-op pool for
onnxruntime. Idle threads as in ``benchmarks/bench.py``: darknetpy's default (workers spin ~50-100 us after
each parallel region, then sleep), onnxruntime's spinning off (``session.intra_op.allow_spinning=0``: its
long spin would take the core darknetpy runs on next); ``--spin`` keeps onnxruntime's default.

    python benchmarks/bench_int8.py [--runs 50] [--threads 1 2] [--nets tiny dla46_c ...] [--all-int8] [--spin]
                                    [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DARKNETPY_SHARED", ROOT.parent / "shared"))
NETS = ["tiny", "dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]


def _weights_for(name: str) -> Path | None:
    from darknetpy.fetch import find_data
    candidates = {"tiny": [find_data("tiny.weights"), SHARED / "darknet" / "tiny.weights"]}.get(
        name, [SHARED / "arch" / f"{name}.weights"])
    return next((p for p in candidates if p is not None and Path(p).is_file()), None)


def _session(model: bytes, threads: int, int8: bool, spin: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if int8:
        so.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _time(fns, runs: int, warmup: int) -> list[list[float]]:
    for _ in range(warmup):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for _ in range(runs):
        for f, t in zip(fns, times):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return times


def bench_network(name: str, threads: list[int], runs: int, warmup: int, all_int8: bool,
                  spin: bool = False) -> list[dict]:
    import numba

    import darknetpy
    from darknetpy.int8.engine import Int8Plan
    from darknetpy.export.onnx_qdq import export_qdq
    from darknetpy.int8 import quantize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wpath = _weights_for(name)
        net = darknetpy.load(ROOT / "cfg" / f"{name}.cfg", wpath)
    qnet = quantize(net, 4)
    qg = qnet.qgraph
    model = export_qdq(qg).SerializeToString()
    x = np.random.default_rng(0).random(net.input_shape, dtype=np.float32)
    feed = {"input": x[None]}
    last = qg.output_index
    rows = []
    for nt in threads:
        numba.set_num_threads(nt)
        plans = {"ort": Int8Plan(qg, domain="uint8")}
        sessions = {"ort": _session(model, nt, False, spin)}
        if all_int8:
            plans["ort-s8"] = Int8Plan(qg, domain="int8")
            sessions["ort-s8"] = _session(model, nt, True, spin)
        agree = {}
        for key, sess in sessions.items():
            plan = plans[key]
            plan.run(x)
            mine = plan.outputs[last].reshape(-1)
            theirs = sess.run(None, feed)[0].reshape(-1)
            qo = qg[last].out
            theirs = qo.quantize(theirs) if qo is not None else theirs
            agree[key] = float(np.mean(mine == theirs)) if qo is not None else float(np.abs(mine - theirs).max())
        plan = plans["ort"]
        fns = [lambda: plan.run(x)] + [lambda s=s: s.run(None, feed) for s in sessions.values()]
        times = _time(fns, runs, warmup)
        med = [statistics.median(t) for t in times]
        row = {"network": name, "threads": nt, "weights": "file" if wpath else "random", "macs": qg.graph.macs,
               "darknetpy_ms": {"median": med[0] * 1e3, "min": min(times[0]) * 1e3, "max": max(times[0]) * 1e3},
               "runs": runs}
        for k, (key, t) in enumerate(zip(sessions, times[1:]), start=1):
            row[f"{key}_ms"] = {"median": med[k] * 1e3, "min": min(t) * 1e3, "max": max(t) * 1e3}
            row[f"ratio_{key}"] = med[0] / med[k]
            row[f"identical_{key}"] = agree[key]
        row["darknetpy_gmacs"] = qg.graph.macs / med[0] / 1e9
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    keys = [k[:-3] for k in rows[0] if k.endswith("_ms") and k != "darknetpy_ms"] if rows else []
    head = f"{'network':12s} {'thr':>3s} {'darknetpy ms':>13s}"
    for k in keys:
        head += f" {k + ' ms':>12s} {'ratio':>6s} {'same':>6s}"
    out = [head + f" {'GMAC/s':>7s}"]
    for r in rows:
        line = f"{r['network']:12s} {r['threads']:3d} {r['darknetpy_ms']['median']:13.2f}"
        for k in keys:
            line += f" {r[k + '_ms']['median']:12.2f} {r['ratio_' + k]:6.2f} {100 * r['identical_' + k]:5.1f}%"
        out.append(line + f" {r['darknetpy_gmacs']:7.1f}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nets", nargs="+", default=NETS, choices=NETS)
    ap.add_argument("--all-int8", action="store_true", help="also time onnxruntime with session.qdqisint8allowed=1")
    ap.add_argument("--spin", action="store_true", help="keep onnxruntime's default spin-waiting")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import numba
    import onnxruntime as ort

    from darknetpy import __version__
    a.threads = [t for t in a.threads if t <= numba.config.NUMBA_NUM_THREADS]
    rows = []
    for name in a.nets:
        new = bench_network(name, a.threads, a.runs, a.warmup, a.all_int8, a.spin)
        rows += new
        if not a.json:
            text = table(new)
            print(text if len(rows) == len(new) else text.split("\n", 1)[1], flush=True)
    info = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "darknetpy": __version__,
            "onnxruntime": ort.__version__, "numba": numba.__version__, "spin": a.spin, "results": rows}
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"\n{info['date']}, {info['cores']} cores, onnxruntime {ort.__version__}, numba {numba.__version__}; "
              "ratio = darknetpy median / onnxruntime median; same = output int8 values identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
