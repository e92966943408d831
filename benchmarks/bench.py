"""darknetpy vs onnxruntime on the same network (``make bench``): each engine in its own process, alternating.

For each network (tiny.cfg and the four model-zoo translations, 224x224, batch 1) and each thread count,
onnxruntime runs darknetpy's own float ONNX export of the same cfg and weights. By default (``--mode
process``) each engine runs in its own worker process with its default settings (darknetpy's thread count
set with ``set_threads``; onnxruntime with ``intra_op_num_threads`` and everything else default, its
spin-waiting included), as a user comparing them would. Both are checked to give the same output and warmed
up; then the parent alternates rounds (``--round`` runs of one engine, a pause so that spinning threads
settle, then the other) so that load from other processes on a shared machine hits both alike. Reported:
median, min and max per engine, the darknetpy/onnxruntime ratio of medians, and darknetpy's GFLOP/s.

``--busy`` runs the contention case: a busy loop pinned to one core for the whole measurement (another
process taking one of the two cores, as on a shared machine).

``--mode interleaved`` is the older measurement: both engines in this process, one run each in turn, with
onnxruntime's spinning off (``--spin`` keeps it), which in one process would take a core from darknetpy.

    python benchmarks/bench.py [--runs 60] [--round 10] [--threads 1 2] [--nets tiny ...] [--busy] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DARKNETPY_SHARED", ROOT.parent / "shared"))
NETS = ["tiny", "dla46_c", "dla46x_c", "dla60x_c", "hardnet39ds"]
# darknet's Tiny YOLOs at their cfgs' 416x416, from the det_* conformance cases' cfgs in ../shared (read at run
# time, not kept here), with seeded random weights: timing only (issue #14 item 9)
DETECTORS = {"yolov2-tiny": "det_yolov2_tiny_voc_dog", "yolov2-tiny-voc": "det_yolov2_tiny_voc_dog",
             "yolov3-tiny": "det_yolov3_tiny_dog"}
DETECTOR_SIZE = 416

# yolov2-tiny (COCO) is pjreddie's yolov2-tiny-voc.cfg with another head: after the backbone's 3x3 1024
# conv (the cfg's "###########" line), a 3x3 conv of 512 filters instead of 1024, then 5 x (80 + 5) = 425
# filters and the [region] over 80 classes with darknet's COCO anchors. Checked by its parameter count,
# 11,237,145 floats (../shared/specs/detection.md).
YOLOV2_TINY_HEAD = """###########

[convolutional]
batch_normalize=1
size=3
stride=1
pad=1
filters=512
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=425
activation=linear

[region]
anchors =  0.57273, 0.677385, 1.87446, 2.06253, 3.33843, 5.47434, 7.88282, 3.52778, 9.77052, 9.16828
bias_match=1
classes=80
coords=4
num=5
softmax=1
"""
YOLOV2_TINY_FLOATS = 11_237_145


def detector_cfg(name: str) -> Path:
    """The cfg a detector benchmark runs (from ../shared's conformance cases, read at run time)."""
    case = SHARED / "conformance" / DETECTORS[name] / "net.cfg"
    if not case.is_file():
        raise SystemExit(f"{name}: needs {case} (../shared beside the checkout)")
    if name != "yolov2-tiny":
        return case
    import tempfile
    text = case.read_text()
    cut = text.index("###########")
    path = Path(tempfile.mkdtemp(prefix="darknetpy-bench-")) / "yolov2-tiny.cfg"
    path.write_text(text[:cut] + YOLOV2_TINY_HEAD)
    return path
PAUSE = 0.05          # seconds between rounds (onnxruntime's workers stop spinning well before)


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

    from darknetpy.export.onnx_float import export_onnx

    if name in DETECTORS:
        raise SystemExit(f"{name}: the interleaved mode times classifiers only; use --mode process")
    net, wpath = _load(name, exact)
    model = export_onnx(net.graph, net.weights).SerializeToString()
    from darknetpy.image import normalize
    img = np.random.default_rng(0).random(net.input_shape, dtype=np.float32)       # the ONNX model's input
    x = normalize(img, net.graph.net.mean, net.graph.net.std)                      # darknetpy's
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
        feed = {"input": img[None]}
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
        rows.append(_row(name, nt, wpath, macs, td, to, err))
    return rows


# -- process mode: one worker process per engine ------------------------------------------------------------

def _load(name: str, exact: bool):
    import darknetpy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in DETECTORS:
            from darknetpy.graph import load_graph
            from darknetpy.network import Network
            from darknetpy.weights import random_params
            graph = load_graph(detector_cfg(name), height=DETECTOR_SIZE, width=DETECTOR_SIZE)
            if name == "yolov2-tiny":
                floats = graph.nparams
                assert floats == YOLOV2_TINY_FLOATS, f"yolov2-tiny: {floats} floats, not {YOLOV2_TINY_FLOATS}"
            return Network(graph, random_params(graph), exact=exact), None
        wpath = _weights_for(name)
        net = darknetpy.load(ROOT / "cfg" / f"{name}.cfg", wpath, exact=exact)
    return net, wpath


def worker(engine: str, name: str, threads: int, exact: bool) -> int:
    """A worker: load, answer "output" (the output as JSON) and "run K" (K timings in seconds) on stdin."""
    net, _ = _load(name, exact)
    # the input the exported model takes (the image; it normalises in the graph when the cfg says so)
    img = np.random.default_rng(0).random(net.input_shape, dtype=np.float32)
    if engine == "darknetpy":
        from darknetpy.network import set_threads
        set_threads(threads)
        plan = net.plan()
        from darknetpy.image import normalize
        x = normalize(img, net.graph.net.mean, net.graph.net.std)      # what the ONNX model does in its graph

        from darknetpy import layers as L
        from darknetpy.headspec import heads_of
        # what the export outputs: the network output, or for a detector the tensors entering its heads
        outs = [L.inputs_of(h)[0] for h in heads_of(net.graph)] or [net.graph.output_index]

        def once():
            plan.run(x)
            return None

        def output():             # all layers kept (the plan reuses a head input's memory once it is read)
            every = net.predict(x, all_layers=True)
            return np.concatenate([every[j].reshape(-1) for j in outs])
    else:
        import onnxruntime as ort
        from darknetpy.export.onnx_float import export_onnx
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads                 # everything else: onnxruntime's defaults
        sess = ort.InferenceSession(export_onnx(net.graph, net.weights).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        feed = {"input": img[None]}

        def once():
            return sess.run(None, feed)

        def output():
            return np.concatenate([o.reshape(-1) for o in sess.run(None, feed)])
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "output":
            print(json.dumps([float(v) for v in np.asarray(output(), np.float64).reshape(-1)]), flush=True)
        elif cmd[0] == "run":
            times = []
            for _ in range(int(cmd[1])):
                t = time.perf_counter()
                once()
                times.append(time.perf_counter() - t)
            print(json.dumps(times), flush=True)
        else:
            break
    return 0


class _Worker:
    def __init__(self, engine: str, name: str, threads: int, exact: bool):
        cmd = [sys.executable, __file__, "--worker", engine, "--nets", name, "--threads", str(threads)]
        if exact:
            cmd.append("--exact")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line: str):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline()
        if not answer:
            raise SystemExit(f"a benchmark worker died (exit code {self.p.wait()})")
        return json.loads(answer)

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        self.p.wait(timeout=30)


def _busy_loop(cpu: int):
    """A process spinning on one core for the whole measurement (``--busy``)."""
    code = ("import os\n"
            f"os.sched_setaffinity(0, {{{cpu}}})\n"
            "while True:\n    pass\n")
    return subprocess.Popen([sys.executable, "-c", code])


def bench_network_processes(name: str, threads: list[int], runs: int, warmup: int, per_round: int,
                            exact: bool) -> list[dict]:
    net, wpath = _load(name, exact)
    macs = net.graph.macs
    rows = []
    for nt in threads:
        workers = {e: _Worker(e, name, nt, exact) for e in ("darknetpy", "onnxruntime")}
        try:
            mine = np.asarray(workers["darknetpy"].ask("output"))
            ref = np.asarray(workers["onnxruntime"].ask("output"))
            err = float(np.abs(ref - mine).max() / (np.abs(ref).max() or 1.0))
            if err > 1e-4:
                raise SystemExit(f"{name}: darknetpy and onnxruntime disagree (relative error {err:.3g})")
            for w in workers.values():
                w.ask(f"run {warmup}")
            times: dict[str, list[float]] = {e: [] for e in workers}
            order = list(workers)
            rounds = -(-runs // per_round)
            for r in range(rounds):
                for e in (order if r % 2 == 0 else order[::-1]):     # alternate who goes first
                    times[e] += workers[e].ask(f"run {per_round}")
                    time.sleep(PAUSE)                                 # let spinning workers settle
        finally:
            for w in workers.values():
                w.close()
        td, to = times["darknetpy"], times["onnxruntime"]
        rows.append(_row(name, nt, wpath, macs, td, to, err))
    return rows


def cpu_flags() -> str:
    """AVX-512 / VNNI, as the figures depend on them (the CPU is chosen per session)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "?"
    have = [n for n, f in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-VNNI", "avx512_vnni"),
                           ("AVX-VNNI", "avx_vnni")) if f in flags]
    return ", ".join(have) or "no AVX2"


def _row(name: str, nt: int, wpath, macs: int, td: list[float], to: list[float], err: float) -> dict:
    """One result row from the two engines' timings (seconds)."""
    md, mo = statistics.median(td), statistics.median(to)
    return {
        "network": name, "threads": nt, "weights": "file" if wpath else "random", "macs": macs,
        "darknetpy_ms": {"median": md * 1e3, "min": min(td) * 1e3, "max": max(td) * 1e3},
        "onnxruntime_ms": {"median": mo * 1e3, "min": min(to) * 1e3, "max": max(to) * 1e3},
        "ratio": md / mo, "darknetpy_gflops": 2 * macs / md / 1e9, "onnxruntime_gflops": 2 * macs / mo / 1e9,
        "max_rel_diff": err, "runs": len(td),
    }


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
    ap.add_argument("--mode", choices=("process", "interleaved"), default="process")
    ap.add_argument("--runs", type=int, default=60, help="timed runs per engine (default 60)")
    ap.add_argument("--round", type=int, default=10, help="runs per round in process mode (default 10)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--busy", action="store_true", help="a busy loop pinned to one core meanwhile")
    ap.add_argument("--worker", choices=("darknetpy", "onnxruntime"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    have = [d for d, case in DETECTORS.items() if (SHARED / "conformance" / case / "net.cfg").is_file()]
    ap.add_argument("--nets", nargs="+", default=NETS + have, choices=NETS + list(DETECTORS),
                    help=f"default: the classifiers and {', '.join(DETECTORS)} at {DETECTOR_SIZE}x{DETECTOR_SIZE} "
                         "(when ../shared has their cfgs)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--spin", action="store_true", help="keep onnxruntime's spin-waiting threads")
    ap.add_argument("--exact", action="store_true", help="time darknetpy's darknet-exact kernels")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.nets[0], a.threads[0], a.exact)
    import numba
    import onnxruntime as ort

    from darknetpy import __version__
    a.threads = [t for t in a.threads if t <= numba.config.NUMBA_NUM_THREADS]
    busy = _busy_loop((os.cpu_count() or 1) - 1) if a.busy else None
    rows = []
    try:
        for name in a.nets:
            if a.mode == "process":
                rows += bench_network_processes(name, a.threads, a.runs, a.warmup, a.round, a.exact)
            else:
                rows += bench_network(name, a.threads, a.runs, a.warmup, a.spin, a.exact)
            if not a.json:
                print(table([r for r in rows if r["network"] == name]).split("\n", 1)[-1]
                      if len(rows) > len(a.threads) else table(rows), flush=True)
    finally:
        if busy is not None:
            busy.kill()
    info = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_features": cpu_flags(),
            "cores": os.cpu_count(), "mode": a.mode, "busy": a.busy, "darknetpy": __version__,
            "onnxruntime": ort.__version__, "numba": numba.__version__,
            "spin": a.spin if a.mode == "interleaved" else "onnxruntime default", "results": rows}
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"\n{info['date']}, {info['cpu']} ({info['cpu_features']}), {info['cores']} cores, "
              f"{a.mode} mode{', a busy loop on one core' if a.busy else ''}, onnxruntime {ort.__version__}, "
              f"numba {numba.__version__}; ratio = darknetpy median / onnxruntime median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
