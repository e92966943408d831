"""darknetpy vs onnxruntime, side by side in one process, interleaved (``make bench``).

For each network (tiny.cfg and the four model-zoo translations, 224x224, batch 1) and each thread count,
onnxruntime runs darknetpy's own float ONNX export of the same cfg and weights. Both engines are first
checked to give the same output, warmed up, then timed alternately (one darknetpy run, one onnxruntime
run, ...) so that load from other processes on this shared machine hits both alike. Reported: median,
min and max per engine, the darknetpy/onnxruntime ratio of medians, and darknetpy's GFLOP/s
(2 x MACs / median).

Threads: darknetpy's kernels use numba's pool (numba.set_num_threads), onnxruntime its intra-op pool
(intra_op_num_threads); neither uses BLAS threads. Idle threads: darknetpy's OpenMP workers spin ~50-100 us
after each parallel region and then sleep (its default, GOMP_SPINCOUNT=3000: see darknetpy/kernels), which
covers the gaps inside one inference. onnxruntime's workers spin far longer by default -- long enough to
take a core from the darknetpy run that follows in this interleaved loop (measured: darknetpy at 2 threads
5.9 -> 16 ms) -- so its spinning is turned off (``session.intra_op.allow_spinning=0``; ``--spin`` keeps it).

    python benchmarks/bench.py [--runs 50] [--threads 1 2] [--nets tiny dla46_c ...] [--json] [--exact]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DARKNETPY_SHARED", ROOT.parent / "shared"))
NETS = ["tiny", "dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]


def _weights_for(name: str) -> Path | None:
    """Real weights where we have them (outputs are then meaningful); random init otherwise."""
    from darknetpy.fetch import find_data
    candidates = {"tiny": [find_data("tiny.weights"), SHARED / "darknet" / "tiny.weights"]}.get(
        name, [SHARED / "arch" / f"{name}.weights"])
    return next((p for p in candidates if p is not None and Path(p).is_file()), None)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_network(name: str, threads: list[int], runs: int, warmup: int, spin: bool, exact: bool) -> list[dict]:
    import numba
    import onnxruntime as ort

    import darknetpy
    from darknetpy.export.onnx_float import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wpath = _weights_for(name)
        net = darknetpy.load(ROOT / "cfg" / f"{name}.cfg", wpath, exact=exact)
    model = export_onnx(net.graph, net.weights).SerializeToString()
    x = np.random.default_rng(0).random(net.input_shape, dtype=np.float32)
    plan = net.plan()
    macs = net.graph.macs
    rows = []
    for nt in threads:
        numba.set_num_threads(nt)
        so = ort.SessionOptions()
        so.intra_op_num_threads = nt
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {"input": x[None]}
        out = sess.run(None, feed)[0].reshape(-1)
        mine = net.predict(x).reshape(-1)
        err = float(np.abs(out - mine).max() / (np.abs(out).max() or 1.0))
        if err > 1e-4:
            raise SystemExit(f"{name}: darknetpy and onnxruntime disagree (relative error {err:.3g})")
        for _ in range(warmup):
            plan.run(x)
            sess.run(None, feed)
        td, to = [], []
        for _ in range(runs):
            t = time.perf_counter()
            plan.run(x)
            td.append(time.perf_counter() - t)
            t = time.perf_counter()
            sess.run(None, feed)
            to.append(time.perf_counter() - t)
        md, mo = statistics.median(td), statistics.median(to)
        rows.append({
            "network": name, "threads": nt, "weights": "file" if wpath else "random", "macs": macs,
            "darknetpy_ms": {"median": md * 1e3, "min": min(td) * 1e3, "max": max(td) * 1e3},
            "onnxruntime_ms": {"median": mo * 1e3, "min": min(to) * 1e3, "max": max(to) * 1e3},
            "ratio": md / mo, "darknetpy_gflops": 2 * macs / md / 1e9, "onnxruntime_gflops": 2 * macs / mo / 1e9,
            "max_rel_diff": err, "runs": runs,
        })
    return rows


def table(rows: list[dict]) -> str:
    out = [f"{'network':12s} {'thr':>3s} {'darknetpy ms (min-max)':>24s} {'onnxruntime ms (min-max)':>26s} "
           f"{'ratio':>6s} {'GFLOP/s':>8s}"]
    for r in rows:
        d, o = r["darknetpy_ms"], r["onnxruntime_ms"]
        out.append(f"{r['network']:12s} {r['threads']:3d} {d['median']:7.2f} ({d['min']:6.2f}-{d['max']:6.2f}) "
                   f"{o['median']:9.2f} ({o['min']:6.2f}-{o['max']:7.2f}) {r['ratio']:6.2f} "
                   f"{r['darknetpy_gflops']:8.1f}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nets", nargs="+", default=NETS, choices=NETS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--spin", action="store_true", help="keep onnxruntime's spin-waiting threads")
    ap.add_argument("--exact", action="store_true", help="time darknetpy's darknet-exact kernels")
    a = ap.parse_args(argv)
    import numba
    import onnxruntime as ort

    from darknetpy import __version__
    a.threads = [t for t in a.threads if t <= numba.config.NUMBA_NUM_THREADS]
    rows = []
    for name in a.nets:
        rows += bench_network(name, a.threads, a.runs, a.warmup, a.spin, a.exact)
        if not a.json:
            print(table([r for r in rows if r["network"] == name]).split("\n", 1)[-1] if len(rows) > len(a.threads)
                  else table(rows), flush=True)
    info = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "darknetpy": __version__, "onnxruntime": ort.__version__, "numba": numba.__version__,
            "spin": a.spin, "results": rows}
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"\n{info['date']}, {info['cpu']}, {info['cores']} cores, onnxruntime {ort.__version__}, "
              f"numba {numba.__version__}; ratio = darknetpy median / onnxruntime median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
