"""Compile a plan's kernels on two cores when the kernel cache is cold.

numba compiles a kernel on its first call, single-threaded, and stores it in the on-disk cache. On a
fresh install the first ``darknetpy classify`` of Tiny Darknet spends ~15 s compiling. A helper process
builds the same plan (same cfg, input size and mode; random weights -- values do not matter to the
compiler) and runs one layer per distinct kernel, in the reverse order of the kernels' first use by the
main process: it compiles what the main process will need last while the main process compiles what it
needs first. numba looks for a kernel in the cache at its first call, so
each process simply loads what the other has already written (cache files are written atomically);
no other coordination is needed, and in the worst case both compile the same kernel, as before.

A marker file next to the cache records networks whose plan has been compiled, so warm runs never
start the helper. ``DARKNETPY_PARALLEL_COMPILE=0`` disables it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from . import layers as L


def _marker(graph: L.Graph, exact: bool, keep_all: bool) -> Path | None:
    import numba

    cache = numba.config.CACHE_DIR
    if not cache or not graph.source_sha256:
        return None
    key = f"{graph.source_sha256}:{graph.net.h}x{graph.net.w}:{int(exact)}{int(keep_all)}"
    return Path(cache) / "compiled" / hashlib.sha256(key.encode()).hexdigest()[:24]


def start(graph: L.Graph, *, exact: bool, keep_all: bool = False) -> subprocess.Popen | None:
    """Start the helper if the cache looks cold for this plan; None when not needed or not possible."""
    if os.environ.get("DARKNETPY_PARALLEL_COMPILE", "1") in ("0", "") or (os.cpu_count() or 1) < 2:
        return None
    marker = _marker(graph, exact, keep_all)
    if marker is None or marker.exists() or not os.path.isfile(graph.path):
        return None
    cmd = [sys.executable, "-m", "darknetpy.warmup", graph.path, str(graph.net.h), str(graph.net.w),
           str(int(exact)), str(int(keep_all))]
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "NUMBA_NUM_THREADS": "1", "DARKNETPY_PARALLEL_COMPILE": "0"})
    except OSError:
        return None


def finish(proc: subprocess.Popen | None, graph: L.Graph, *, exact: bool, keep_all: bool = False) -> None:
    """After the main process has run the plan once: stop the helper (its remaining work is moot) and
    mark the plan as compiled."""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    marker = _marker(graph, exact, keep_all)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass


def _main(argv: list[str]) -> int:
    import warnings

    import numpy as np

    from .graph import load_graph
    from .runtime import Plan
    from .weights import random_params

    cfg, h, w, exact, keep_all = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1", argv[4] == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load_graph(cfg, height=h, width=w)
    plan = Plan(graph, random_params(graph), exact=exact, keep_all=keep_all)
    plan.input[...] = np.zeros(plan.input.shape, np.float32)
    first_use: dict[str, int] = {}
    for i, key in enumerate(plan.kernel_keys):
        first_use.setdefault(key, i)
    for key, i in sorted(first_use.items(), key=lambda kv: -kv[1]):
        plan.steps[i]()
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a helper process
    sys.exit(_main(sys.argv[1:]))
