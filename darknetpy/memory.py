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
  and the largest prepared-input scratch buffer;
* above the limit: ``MemoryLimitError`` (exit code 17) naming the total and the largest layer.

Imports no numba (image.py uses it); the kernel choices are read when a plan is estimated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

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
            params += 4 * nw * {4: 4, 2: 16 / 9}.get(kcfg.winograd_variant(layer), 1)
            p, s = layer.padding, layer.stride
            scratch = max(scratch, 4 * layer.c * (layer.h + 2 * p + 2) * (layer.w + 2 * p + s))
            t = kcfg.winograd_variant(layer)
            if t:          # padded to whole t x t tiles (kernels/winograd.padded_shape)
                scratch = max(scratch, 4 * layer.c * (-(-layer.out_h // t) * t + 2) * (-(-layer.out_w // t) * t + 2))
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
