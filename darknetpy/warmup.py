"""Compile a plan's kernels on two cores when the kernel cache is cold.

numba compiles a kernel on its first call, single-threaded, and stores it in the on-disk cache. On a
fresh install Tiny Darknet's kernels take ~8 s of compiling on one core (Zen 4; 18.5 s before the large
kernels became thread bodies, kernels/parallel.py). ``classify`` therefore starts a helper
process that builds the same plan (same cfg, input size and mode; random weights -- values do not matter
to the compiler), and the two share the work by kernel:

* a plan step per distinct kernel key (``Plan.kernel_keys``) is the unit; whoever first creates its
  claim file (``O_CREAT | O_EXCL``) in a per-run directory compiles it by running that step, then writes
  a done file;
* the main process goes through the keys in the order the network uses them, the helper from the
  end, convolution kernels first (the long compiles);
* a key the other process claimed is skipped, and the main process comes back for it at the end and
  waits for its done file (numba loads it from the cache at the first call), or, if the helper died,
  compiles it itself.

So no kernel is compiled twice, except numba functions two kernels share (parallel.py's driver).
A marker file next to the cache records networks whose plan has been compiled, so warm runs never
start the helper (``is_cold`` asks it; commands use it to say, once, that they are compiling).
``DARKNETPY_PARALLEL_COMPILE=0`` disables the helper.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import layers as L


def _marker(graph: L.Graph, exact: bool, keep_all: bool) -> Path | None:
    import numba

    cache = numba.config.CACHE_DIR
    if not cache or not graph.source_sha256:
        return None
    key = f"{graph.source_sha256}:{graph.net.h}x{graph.net.w}:{int(exact)}{int(keep_all)}"
    return Path(cache) / "compiled" / hashlib.sha256(key.encode()).hexdigest()[:24]


def is_cold(graph: L.Graph, *, exact: bool, keep_all: bool = False) -> bool:
    """True when this plan's kernels have not been compiled here yet (no marker): the first run compiles them.
    False when it cannot be known (no cache directory, or a graph not read from a file)."""
    marker = _marker(graph, exact, keep_all)
    return marker is not None and not marker.exists()


def cache_dir() -> str:
    """Where the compiled kernels are kept (numba's cache directory, see darknetpy/kernels/__init__.py)."""
    import numba

    return str(numba.config.CACHE_DIR)


@dataclass
class Helper:
    """A running helper process and the directory where the two processes claim kernels."""
    proc: subprocess.Popen | None
    claims: Path


def start(graph: L.Graph, *, exact: bool, keep_all: bool = False) -> Helper | None:
    """Start the helper if the cache looks cold for this plan; None when not needed or not possible."""
    if os.environ.get("DARKNETPY_PARALLEL_COMPILE", "1") in ("0", "") or (os.cpu_count() or 1) < 2:
        return None
    marker = _marker(graph, exact, keep_all)
    if marker is None or marker.exists() or not os.path.isfile(graph.path):
        return None
    claims = marker.parent / f"{marker.name}.claims.{os.getpid()}.{time.time_ns()}"
    try:
        claims.mkdir(parents=True)
    except OSError:
        return None
    cmd = [sys.executable, "-m", "darknetpy.warmup", graph.path, str(graph.net.h), str(graph.net.w),
           str(int(exact)), str(int(keep_all)), str(claims)]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "NUMBA_NUM_THREADS": "1", "DARKNETPY_PARALLEL_COMPILE": "0"})
    except OSError:
        _remove(claims)
        return None
    return Helper(proc, claims)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key)


def _claim(claims: Path, key: str) -> bool:
    try:
        os.close(os.open(claims / f"{_slug(key)}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
    except OSError:                 # cannot write there: compile it ourselves, share nothing
        return True


def _done(claims: Path, key: str) -> None:
    try:
        (claims / f"{_slug(key)}.done").touch()
    except OSError:
        pass


def _first_uses(plan) -> list[tuple[str, int]]:
    """(kernel key, index of the first step that uses it), in the network's order."""
    first: dict[str, int] = {}
    for i, key in enumerate(plan.kernel_keys):
        first.setdefault(key, i)
    return sorted(first.items(), key=lambda kv: kv[1])


def cooperate(helper: Helper | None, plan, *, wait_s: float = 600.0, progress=None) -> None:
    """Main process: compile every kernel of ``plan`` that the helper has not claimed, then wait for the
    helper's (module docstring). Runs steps on whatever the buffers hold; the real run comes after.
    ``progress(done, total)`` is called as kernels are done (by either process). Without a helper the
    kernels are compiled here one by one, or on a warm cache loaded (~0.2 s for Tiny Darknet, most of it
    numba's own first-use set-up): either way before the caller times its first run."""
    keys = _first_uses(plan)
    if helper is None:
        for n, (_, i) in enumerate(keys, 1):
            plan.steps[i]()
            if progress is not None:
                progress(n, len(keys))
        return

    def tell() -> None:
        if progress is not None:
            progress(sum((helper.claims / f"{_slug(k)}.done").exists() for k, _ in keys), len(keys))
    theirs = []
    for key, i in keys:
        if _claim(helper.claims, key):
            plan.steps[i]()
            _done(helper.claims, key)
            tell()
        else:
            theirs.append((key, i))
    deadline = time.monotonic() + wait_s       # one bound for all the waiting, however many kernels
    for key, i in theirs:
        while not (helper.claims / f"{_slug(key)}.done").exists():
            if (helper.proc is not None and helper.proc.poll() is not None) or time.monotonic() > deadline:
                break               # the helper is gone (or stuck): compile it here
            time.sleep(0.01)
        plan.steps[i]()
        tell()
    if progress is not None:
        progress(len(keys), len(keys))


def finish(helper: Helper | None, graph: L.Graph, *, exact: bool, keep_all: bool = False,
           mark: bool = True) -> None:
    """Stop the helper (its remaining work is moot) and remove the claims; with ``mark`` (the plan's
    kernels are all compiled: after ``cooperate``, or once the plan has run) record the plan as compiled."""
    if helper is not None:
        proc = helper.proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        _remove(helper.claims)
    if not mark:
        return
    marker = _marker(graph, exact, keep_all)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass


def _remove(claims: Path) -> None:
    try:
        for f in claims.iterdir():
            f.unlink()
        claims.rmdir()
    except OSError:
        pass


def _main(argv: list[str]) -> int:
    import warnings

    import numpy as np

    from .graph import load_graph
    from .runtime import Plan
    from .weights import random_params

    cfg, h, w, exact, keep_all = argv[0], int(argv[1]), int(argv[2]), argv[3] == "1", argv[4] == "1"
    claims = Path(argv[5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load_graph(cfg, height=h, width=w)
    plan = Plan(graph, random_params(graph), exact=exact, keep_all=keep_all)
    plan.input[...] = np.zeros(plan.input.shape, np.float32)
    # from the end of the network, convolutions first: they are the long compiles (seconds each), and
    # the main process reaches them last
    order = sorted(_first_uses(plan), key=lambda kv: (not kv[0].startswith("conv"), -kv[1]))
    for key, i in order:
        if _claim(claims, key):
            plan.steps[i]()
            _done(claims, key)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a helper process
    sys.exit(_main(sys.argv[1:]))
