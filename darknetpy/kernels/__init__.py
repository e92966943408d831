"""numba kernels only: each a private @njit function or thread body over plain arrays plus a small public
wrapper (and, for the thread bodies, a bind_* function that checks the arrays once).

exact.py        darknet-exact float kernels (conv, batch norm, connected, avgpool, local)
gemm.py         packed float32 GEMM with an LLVM-IR register-blocked micro-kernel
conv.py         fast convolution (GEMM with fused epilogue; direct grouped/depthwise), connected
convchain.py    chains of convolutions run depth-first (the maps between them never leave L2)
convpix.py      small-map convolutions as pixel tiles (filters in the vector lanes, pixels broadcast)
elementwise.py  maxpool, softmax, shortcut, upsample, crop (exact at full speed)
activation.py   darknet's activations, evaluated as darknet does (in double)
depthwise.py    grouped and depthwise convolutions over whole output maps
winograd.py     Winograd F(2x2,3x3) and F(4x4,3x3)
int8/           int8 engine: u8 x s8 GEMM with int32 accumulation, ONNX-exact requantisation
vecir.py        helpers for writing explicit vector code as LLVM IR
parallel.py     the large kernels' parallel region: thread bodies compiled once, called by address
pool.py         darknetpy's worker threads for the thread bodies (Linux x86-64): claimed items, no arena
config.py       every tunable and threshold (passed to the kernels as arguments), the CPU-feature choice

The GEMM, Winograd, pixel-tile, grouped-convolution and chain kernels, the 2x2/2 [maxpool], [softmax], the fast
global [avgpool] and [route] copies are thread bodies (``parallel.thread_body``) with a ``bind_*``
function that checks their arrays and returns a callable (``parallel.Call``); the plan binds each step
once and runs consecutive Calls as one (``parallel.Calls``). The other kernels (other pools,
element-wise, the exact and int8 ones) are still ``@njit(parallel=True)`` over a prange: for them
numba's parfor compile costs well under a second.

Compiled kernels are cached on disk (``cache=True``). numba invalidates a cached function only when
its own source file changes, not when a helper it inlines from another file does; so the cache lives
in a directory named after a hash of all kernel sources, subfolders included (``$DARKNETPY_CACHE_DIR``
or ``~/.cache/darknetpy/numba/<hash>``), and any change to any kernel file starts a fresh cache. An
explicit ``NUMBA_CACHE_DIR`` is respected.

A plain ``@njit`` helper that a ``fastmath=True`` kernel calls (rather than inlines) must say
``fastmath=False``. Otherwise numba compiles it with the flags of whichever caller compiles it first
(numba#7168) and caches that, and its fast-math code then exists twice: on its own and re-optimised
inside the caller's object. The JIT binds the caller to whichever copy was loaded first (the helper's
own copy in a process that compiles, the caller's copy in one that loads from the cache), so cold and
warm runs would differ by a few ulp, and the darknet-exact activations could lose -0.0 and NaN handling.

Threads: the thread bodies run on darknetpy's own workers on Linux x86-64 (pool.py: 0.5 us a call on two
threads where numba's TBB region costs 5.3), everything else on numba's TBB threading layer when the
``tbb`` package is installed (a dependency on x86-64 Linux and Windows), else OpenMP. Every other
parallel kernel is a ``prange`` over work items (as parallel.py's driver is elsewhere); with OpenMP each such
region ends in a barrier that waits for every thread of the team, so when another process holds one of
the two cores, each of the 20-60 regions of an inference waits for the descheduled thread (measured: Tiny
Darknet at 2 threads 1.35-1.4x its own 1-thread time under a busy loop). TBB's scheduler lets the calling
thread take every item itself when a worker has not started, and waits only for items already running,
the design of onnxruntime's pool (measured: 1.0x). pip installs ``libtbb.so.12`` into the environment's
``lib/``, which the dynamic loader does not search: ``_preload_tbb`` loads it by path first, so that
numba's ``dlopen("libtbb.so.12")`` finds it. An explicit ``NUMBA_THREADING_LAYER`` is respected.
"""

import hashlib as _hashlib
import os as _os
from pathlib import Path as _Path


def _set_cache_dir() -> None:
    import numba

    if _os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = _Path(__file__).resolve().parent
    h = _hashlib.sha256()
    for f in sorted(here.rglob("*.py")):
        h.update(f.relative_to(here).as_posix().encode())
        h.update(f.read_bytes())
    base = _os.environ.get("DARKNETPY_CACHE_DIR") or _os.path.join(
        _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache"), "darknetpy", "numba")
    numba.config.CACHE_DIR = _os.path.join(base, h.hexdigest()[:16])


_set_cache_dir()


def _set_spin() -> None:
    """Keep numba's OpenMP workers spinning ~50-100 us after each parallel region, then sleep
    (``config.GOMP_SPINCOUNT``, where the measurements are). Read by libgomp when numba first loads it,
    so it is set here, before any kernel runs; an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT from the
    user wins.
    """
    from .config import GOMP_SPINCOUNT

    if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
        _os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT


_set_spin()


def _preload_tbb() -> str | None:
    """Load the pip-installed oneTBB runtime by path (RTLD_GLOBAL), so that numba's threading-layer
    selection, which tries TBB first, can use it. Returns the library's path, or None (numba then uses
    OpenMP, as without TBB)."""
    import ctypes

    if _os.environ.get("NUMBA_THREADING_LAYER", "default") not in ("default", "tbb", "safe"):
        return None
    names = ("libtbb.so.12", "tbb12.dll", "libtbb.12.dylib")
    found = None
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        try:
            dist = distribution("tbb")
            found = next((str(dist.locate_file(f)) for f in dist.files or () if _Path(str(f)).name in names),
                         None)
        except PackageNotFoundError:
            found = None
    except ImportError:                         # pragma: no cover - Python without importlib.metadata
        found = None
    if found is None or not _os.path.exists(found):
        return None
    try:
        ctypes.CDLL(found, mode=ctypes.RTLD_GLOBAL)
    except OSError:                             # pragma: no cover - a broken install: numba falls back
        return None
    return found


TBB_LIBRARY = _preload_tbb()
