"""How much memory darknetpy may use, and what a plan or an image would take, known before allocating it.

A cfg can ask for sizes no machine has (``width=100000`` in ``[net]``: every activation buffer of Tiny Darknet
at 224x100000 adds up to 6 GiB; at 20000x20000 a single layer is 24 GiB), and an image can too (``--preprocess
resize_min`` scales a 1x20000 image to 224x4480000). numpy would try, and the machine would swap or the kernel
kill the process. So the sizes are computed from the shapes first and refused above a limit:

* the limit is ``DARKNETPY_MAX_MEMORY`` (bytes, or a number with K, M, G or T: powers of 1024, e.g. ``8G``,
  ``512MiB``), else the memory the machine has available now (``MemAvailable`` of /proc/meminfo, else
  ``os.sysconf`` available pages x page size), else none;
* a plan (``plan_bytes``): the network input, every layer's output buffer (the plan shares memory between
  layers whose lifetimes do not overlap, so this is an upper bound, and exact for ``keep_all`` plans), the
  parameters, their packed copies in the fast mode (Winograd's transformed weights are 16/9 or 36/9 larger)
  and the largest prepared-input scratch buffer (for Winograd, with the transformed-input blocks its
  threads hold, up to 32 MB each: kernels.config.winograd_v_scratch);
* above the limit: ``MemoryLimitError`` (exit code 17) naming the total and the largest layer.

Imports no numba (image.py uses it); the kernel choices are read when a plan is estimated.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from . import layers as L
from .errors import DarknetpyError, MemoryLimitError

ENV = "DARKNETPY_MAX_MEMORY"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"8G"`` -> 8589934592: bytes, or a number with K, M, G or T (powers of 1024; ``GiB``, ``GB`` also read)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise DarknetpyError(f"{ENV}={text!r} is not a size: give bytes, or a number with K, M, G or T "
                             "(powers of 1024), e.g. 8G")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise DarknetpyError(f"{ENV}={text!r}: the limit must be at least one byte")
    return n


def limit() -> tuple[int | None, str]:
    """(bytes darknetpy may allocate, where that figure comes from); (None, "") when nothing says."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return parse_size(env), f"set by {ENV}"
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024, f"available on this machine (set {ENV} to change the limit)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        n = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if n > 0:
            return n, f"available on this machine (set {ENV} to change the limit)"
    except (AttributeError, ValueError, OSError):
        pass
    return None, ""


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check(need: int, what: str, *, error: type[DarknetpyError] = MemoryLimitError) -> None:
    """Raise ``error`` when ``need`` bytes are more than the limit: ``<what> needs about X, more than the Y ...``."""
    cap, source = limit()
    if cap is not None and need > cap:
        raise error(f"{what} needs about {format_bytes(need)}, more than the {format_bytes(cap)} {source}")


# -- what a plan takes ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanMemory:
    """Bytes a ``runtime.Plan`` of a graph allocates (see the module docstring), and its largest layer."""

    total: int
    activations: int
    parameters: int
    largest: L.Layer | None
    largest_bytes: int


def _threads() -> int:
    """The most threads a plan's kernels may run on: numba's pool size (NUMBA_NUM_THREADS, else the CPU
    count), read without importing numba."""
    try:
        return max(1, int(os.environ.get("NUMBA_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def plan_bytes(graph: L.Graph, *, exact: bool = False) -> PlanMemory:
    """Estimate, from the shapes only, what a plan of ``graph`` allocates (fast mode unless ``exact``)."""
    from .kernels import config as kcfg

    c, h, w = (tuple(graph.net.in_shape) + (1, 1))[:3]
    act = 4 * c * h * w
    par = 0
    scratch = 0
    largest, largest_bytes = None, -1
    for layer in graph:
        own = 4 * layer.outputs
        params = 4 * layer.nparams
        if not exact and isinstance(layer, L.Convolutional) and not layer.quirk_1x1_no_subsample:
            nw = layer.filters * (layer.c // layer.groups) * layer.size * layer.size
            t = kcfg.winograd_variant(layer)
            params += 4 * nw * {4: 4, 2: 16 / 9}.get(t, 1)
            p, s = layer.padding, layer.stride
            scratch = max(scratch, 4 * layer.c * (layer.h + 2 * p + 2) * (layer.w + 2 * p + s))
            if t:          # padded to whole t x t tiles (kernels/winograd.padded_shape), and the threads' V blocks
                npan, panel = kcfg.winograd_v_panels(layer.c, layer.out_h, layer.out_w, t)
                u = 4 * nw * (t + 2) ** 2 // 9
                scratch = max(scratch, 4 * layer.c * (-(-layer.out_h // t) * t + 2) * (-(-layer.out_w // t) * t + 2)
                              + kcfg.winograd_v_scratch(u, npan, panel, _threads()))
        elif not exact and isinstance(layer, L.Connected):
            params += 4 * layer.inputs * layer.output
        act += own
        par += int(params)
        if own + params > largest_bytes:
            largest, largest_bytes = layer, int(own + params)
    return PlanMemory(act + par + scratch, act, par, largest, max(largest_bytes, 0))


def check_plan(graph: L.Graph, *, exact: bool = False) -> None:
    """MemoryLimitError if a plan of ``graph`` would need more than the limit (before anything is allocated)."""
    cap, source = limit()
    if cap is None:
        return
    m = plan_bytes(graph, exact=exact)
    if m.total <= cap:
        return
    name = os.path.basename(graph.path)
    net = graph.net
    big = m.largest
    at = ""
    if big is not None:
        where = f"{name}:{big.line} " if big.line else ""
        shape = " x ".join(map(str, big.out_shape))
        at = (f"; the largest layer is {where}{big.describe()} ({shape}, {format_bytes(m.largest_bytes)} with its "
              "weights)")
    raise MemoryLimitError(
        f"{name}: running this network at {net.w}x{net.h} needs about {format_bytes(m.total)} (activations "
        f"{format_bytes(m.activations)}, weights {format_bytes(m.parameters)}){at}: more than the "
        f"{format_bytes(cap)} {source}")


# -- huge pages ------------------------------------------------------------------------------------------

HUGE_PAGE = 2 << 20          # x86-64's transparent huge page
_MADV_HUGEPAGE = 14          # <sys/mman.h>, Linux


def hugepage_zeros(n: int) -> np.ndarray:
    """n zeroed float32 values, starting on a 2 MB boundary and, on Linux, madvise'd for transparent huge
    pages (``/sys/kernel/mm/transparent_hugepage/enabled`` "always" or "madvise", the usual default).

    Why: a convolution reads its input one row per channel plane, hundreds of planes at a time (the
    implicit GEMM's B panels, a 1x1 convolution's K rows): with 4 KB pages each plane is another page and
    the L1 TLB (64 entries) misses on nearly every load. One 2 MB page covers the planes of a whole
    layer's input. Measured on a Sapphire Rapids Xeon, 1 thread, input in 4 KB pages -> in huge pages, ms:
    1x1 128->16 at 56x56 0.173 -> 0.110, 256->32 at 28x28 0.121 -> 0.097 (onnxruntime, whose NCHWc layout
    reads channels contiguously: 0.118, 0.085). Where the kernel declines (THP "never", no memory to
    compact, another OS) the array is an ordinary one: the same values, only slower."""
    if n * 4 < HUGE_PAGE:
        return np.zeros(max(n, 1), dtype=np.float32)
    pad = HUGE_PAGE // 4
    raw = np.zeros(n + pad, dtype=np.float32)     # untouched pages: faulted in after the advice below
    start = (-raw.ctypes.data) % HUGE_PAGE // 4
    arr = raw[start:start + n]
    _advise_huge(arr.ctypes.data, -(-n * 4 // HUGE_PAGE) * HUGE_PAGE)
    return arr


def in_huge_pages(a: np.ndarray) -> np.ndarray:
    """A copy of float32 ``a`` in huge pages (``hugepage_zeros``) when it is at least one huge page, else
    ``a`` itself: packed weights of the large layers (yolov3-tiny's 3x3 512->1024: 19 MB), read as a
    stream from memory on every inference."""
    if a.nbytes < HUGE_PAGE:
        return a
    h = hugepage_zeros(a.size).reshape(a.shape)
    h[...] = a
    return h


def _advise_huge(addr: int, nbytes: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(nbytes), _MADV_HUGEPAGE)
    except (OSError, AttributeError):            # no libc symbol: keep the ordinary pages
        pass
