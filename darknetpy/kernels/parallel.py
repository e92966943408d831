"""Parallel regions for the large kernels: one generic driver calls a compiled thread body by address.

Why not ``@njit(parallel=True)`` around the body. numba compiles a prange's body as a gufunc, wraps it
twice (the gufunc wrapper, the parallel wrapper) and links each of those libraries into the next and
into the kernel; every library re-optimises and re-generates machine code for everything linked into
it. A register-blocked kernel's body was therefore optimised and code-generated four times: conv:gemm
took 8.8 s to compile cold on Zen 4 (4.9 s in LLVM, 2.1 s of it for the two wrappers; 3.9 s in numba's
own passes, the parfor ones over the whole inlined body), Winograd 8.6 s. Written as a thread body
compiled once (a ``numba.cfunc``: the function and its C wrapper) and this module's one driver

    for th in prange(nthreads): body(th, nthreads, argv)

(compiled once for every kernel), Tiny Darknet's conv:gemm compiles in 3.3 s (prepare_input and the
driver included) and conv:winograd in 3.0 s: all its kernels 18.5 -> 8.3 s on one core.

A thread body is a plain function ``body(th, nthreads, argv)``: it does thread ``th``'s share of the
work and returns. ``argv`` points to int64 words -- array addresses, shapes and scalars -- in an order the
body and the ``bind_*`` function that builds them agree on; inside, ``f32``/``i64``/``i32`` view an
address as a C-contiguous array (numba.carray: no copy). The words are built once, when a plan binds a
step (its buffers never move), so a call is one dispatch with integer arguments (``Call``).

On Linux x86-64 a call runs the body's items on darknetpy's own workers (pool.py, ``_drive_pool``:
0.5 us a call on two threads, where the prange region under numba's TBB layer costs 5.3 us); elsewhere,
or with ``DARKNETPY_POOL=0``, on the prange above (``_drive``).

Bodies are compiled on first use, not at import (a cfunc compiles when it is created), and cached on
disk like every kernel. A body cannot raise: it may only call code that does not (no bounds checks are
compiled, and the kernels allocate only small per-thread buffers).
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.core import config as numba_config
from numba.extending import intrinsic
from numba.np.ufunc.parallel import _iget_num_threads, _launch_threads     # numba >= 0.49

from . import pool as _pool
from .pool import call_body

_I64 = ir.IntType(64)
_BODY_SIG = types.void(types.int64, types.int64, types.CPointer(types.int64))


@njit(cache=True, parallel=True)
def _drive(fn, max_threads, argv):
    # the one parallel region every Call runs: thread th calls body(th, n, argv), n = the caller's thread
    # count (numba.get_num_threads()) or max_threads if fewer. The count is read here: from Python,
    # numba.get_num_threads() costs ~1.9 us (a process lock), and numba's jit version of it bakes in a
    # pointer that makes a kernel uncacheable; _iget_num_threads calls the threading layer's
    # get_num_threads by symbol (launched in ThreadBody.address). One thread: no parallel region at all
    # (numba's gufunc launch costs ~2.5 us even then). Per call, 1 thread, Zen 4: 4.7 -> ~0.5 us.
    n = min(_iget_num_threads(), max_threads)
    a = argv.ctypes.data
    if n == 1:
        call_body(fn, 0, 1, a)
        return
    for th in prange(n):
        call_body(fn, th, n, a)


def _pointer_intrinsic(ty: types.Type, llty: ir.Type):
    @intrinsic
    def as_pointer(typingctx, addr):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], llty.as_pointer())
        return types.CPointer(ty)(types.int64), codegen
    return as_pointer


_f32p = _pointer_intrinsic(types.float32, ir.FloatType())
_i64p = _pointer_intrinsic(types.int64, _I64)
_i32p = _pointer_intrinsic(types.int32, ir.IntType(32))


@njit(inline="always")
def f32(addr, shape):
    """The float32 array of ``shape`` (a tuple) at address ``addr``, C order (inside a thread body)."""
    return carray(_f32p(addr), shape)


@njit(inline="always")
def i64(addr, shape):
    """As ``f32``, for int64."""
    return carray(_i64p(addr), shape)


@njit(inline="always")
def i32(addr, shape):
    """As ``f32``, for int32."""
    return carray(_i32p(addr), shape)


class ThreadBody:
    """A thread body, compiled (``numba.cfunc``, cached) the first time its address is asked for."""

    def __init__(self, py_func, fastmath: bool):
        self.py_func = py_func
        self.fastmath = fastmath
        self._address: int | None = None
        self.__doc__ = py_func.__doc__
        self.__name__ = py_func.__name__

    @property
    def address(self) -> int:
        if self._address is None:
            _launch_threads()          # registers get_num_threads for _drive, also when it comes from the cache
            self._address = cfunc(_BODY_SIG, cache=True, fastmath=self.fastmath)(self.py_func).address
        return self._address


def thread_body(fastmath: bool = False):
    """Decorator: ``body(th, nthreads, argv)`` as a ``ThreadBody``."""
    return lambda py_func: ThreadBody(py_func, fastmath)


def addr(a: np.ndarray, dtype) -> int:
    """The address of a C-contiguous ``dtype`` array, for an argv word. The bodies index by raw address:
    anything else (another dtype, a strided view) would be read wrongly, not refused, so it is refused
    here."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"kernel argument: expected a C-contiguous {np.dtype(dtype).name} array, "
                         f"got {a.dtype} with strides {a.strides}")
    return a.ctypes.data


class Call:
    """A thread body bound to its argv words; ``call()`` runs it on numba.get_num_threads() threads (as set
    in the calling thread), or
    ``max_threads`` if fewer (a body that indexes per-thread scratch by ``th`` has that many rows).
    ``keep`` holds the arrays the words point into (they must outlive the call)."""

    __slots__ = ("body", "argv", "keep", "max_threads", "_argv_addr")

    def __init__(self, body: ThreadBody, words, keep=(), max_threads: int = 1 << 30):
        self.body = body
        self.argv = np.array([int(w) for w in words], dtype=np.int64)
        self._argv_addr = self.argv.ctypes.data
        self.keep = tuple(keep)
        self.max_threads = max_threads

    def __call__(self) -> None:
        if _POOL:
            _drive_pool(_CTL or _start_pool(), self.body.address, self.max_threads, self._argv_addr)
        else:
            _drive(self.body.address, self.max_threads, self.argv)


class Calls:
    """Several Calls run one after the other as one callable; ``Calls.merge`` joins a plan's consecutive
    steps that are only Calls, so that they cost one dispatch from Python between them. From Python a
    call dispatches through the interpreter and numba's dispatcher, whose data has left the caches after
    a large kernel: DLA-46-C's softmax step takes 42 us right after the network and 7.6 us again at
    once. ``calls``: the Calls in order (nested Calls flattened)."""

    __slots__ = ("calls", "_table")

    def __init__(self, *calls):
        self.calls: list[Call] = [c for x in calls for c in (x.calls if isinstance(x, Calls) else [x])]
        # (body address, max threads, argv address) per call; the addresses are read on first use, when the
        # bodies compile
        self._table = None

    def __call__(self) -> None:
        if not _POOL:
            for c in self.calls:
                c()
            return
        if self._table is None:
            self._table = np.array([[c.body.address, c.max_threads, c._argv_addr] for c in self.calls], np.int64)
        _drive_pool_seq(_CTL or _start_pool(), self._table.ctypes.data, len(self.calls))

    @staticmethod
    def merge(steps: list) -> list:
        """The steps with each run of consecutive Call / Calls steps joined into one Calls; ``nothing``
        steps (a layer computed elsewhere) dropped."""
        out: list = []
        for st in steps:
            if st is nothing:
                continue
            if isinstance(st, (Call, Calls)):
                if out and isinstance(out[-1], Calls):
                    out[-1] = Calls(out[-1], st)
                    continue
                st = Calls(st)
            out.append(st)
        return out


def nothing() -> None:
    """The step of a layer that computes nothing (computed by another layer's step, or in place)."""


@njit(cache=True, nogil=True)
def _drive_pool_seq(ctl, table, k):
    # _drive_pool for k calls in a row, table: int64 (k, 3) rows (body, max threads, argv)
    t = i64(table, (k, 3))
    for i in range(k):
        _pool.run_job(ctl, t[i, 0], min(_iget_num_threads(), t[i, 1]), t[i, 2])


@njit(cache=True, nogil=True)
def _drive_pool(ctl, fn, max_threads, argv):
    # as _drive, on darknetpy's own workers (pool.py): the caller's thread count, at most max_threads. All
    # arguments are integers: numba's dispatcher types an array argument in ~1 us, an int in ~0.1
    n = min(_iget_num_threads(), max_threads)
    _pool.run_job(ctl, fn, n, argv)


_POOL = _pool.available()
_CTL = 0


def _start_pool() -> int:
    """The pool's control block, its workers started (numba's pool size less the calling thread)."""
    global _CTL
    _CTL = _pool.POOL.address(max(0, numba_config.NUMBA_NUM_THREADS - 1))
    return _CTL


def _forget_pool() -> None:
    global _CTL
    _CTL = 0                       # a forked child starts its own workers on its first call


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
