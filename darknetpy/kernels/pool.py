"""darknetpy's own worker threads for the thread bodies (``parallel.Call``), on Linux x86-64.

Why not numba's parallel region for every call. A ``prange`` under numba's TBB layer builds a
``task_arena`` (and an observer) per call: 5.3 us for an empty body on two threads of a Zen 4 (OpenMP:
2.7 us, one thread: 0.7 us), and an inference makes 60-100 such calls (DLA-46-C: 64 thread-body calls, so
~0.3 ms of its ~6.7 ms at 2 threads). Here workers wait for jobs in a spin loop, then on a futex.

A job is a body and its n items (``body(k, n, argv)`` for k < n, as a region would run them). The
caller publishes it and then takes items itself, exactly as the workers do: each item is claimed by one
compare-and-swap on a word holding (job number, next item), so an item no thread has claimed is never
waited for (a worker that is late or descheduled leaves its items to the caller, which then finishes
the job alone: TBB's guarantee, kept); the caller waits only for items a worker is running. Jobs are
one at a time: a second Python thread that calls while a job runs takes all its items itself.

Words of the control block (int64, each on its own cache line):
  JOB      job number (its low 32 bits are the futex word sleeping workers wait on)
  CLAIM    job number << 20 | next item to claim
  DONE     items finished in this job
  BODY, N, ARGV   the job
  SLEEPERS workers waiting on the futex (the caller wakes them only if any)
  BUSY     1 while a caller has a job out (a second caller runs its job inline)
  STOP     1: workers return (interpreter exit)

Elsewhere (another OS or CPU, or ``DARKNETPY_POOL=0``) ``parallel._drive`` runs every call as before.
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import config
from .gemm import declare_intrinsic

# byte offsets of the control block's words, a cache line apart
JOB, CLAIM, DONE, BODY, N, ARGV, SLEEPERS, BUSY, STOP = (64 * i for i in range(9))
_WORDS = 8 * 9 + 8                                     # int64s (+ room to align the block to 64 bytes)
_ITEM_BITS = 20
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_SYS_FUTEX, _SYS_SCHED_YIELD = 202, 24                 # x86-64 Linux
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129


def available() -> bool:
    """Whether calls go through this pool: Linux on x86-64, and not switched off by DARKNETPY_POOL=0."""
    return (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")
            and os.environ.get("DARKNETPY_POOL", "1") != "0")


def _ptr(builder, a):
    return builder.inttoptr(a, _I64.as_pointer())


@intrinsic
def _load(typingctx, a):
    """The int64 at address a (sequentially consistent)."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_ptr(builder, args[0]), "seq_cst", 8)
    return types.int64(types.intp), codegen


@intrinsic
def _store(typingctx, a, v):
    """*a = v (sequentially consistent)."""
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[1], _ptr(builder, args[0]), "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(types.intp, types.int64), codegen


@intrinsic
def _add(typingctx, a, v):
    """*a += v atomically; the old value."""
    def codegen(context, builder, signature, args):
        return builder.atomic_rmw("add", _ptr(builder, args[0]), args[1], "seq_cst")
    return types.int64(types.intp, types.int64), codegen


@intrinsic
def _cas(typingctx, a, old, new):
    """*a = new if *a == old, atomically; whether it was."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_ptr(builder, args[0]), args[1], args[2], "seq_cst", "seq_cst")
        return builder.zext(builder.extract_value(pair, 1), _I64)
    return types.int64(types.intp, types.int64, types.int64), codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 ``pause``): frees the core's resources for its sibling while spinning."""
    def codegen(context, builder, signature, args):
        fn = declare_intrinsic(builder, "llvm.x86.sse2.pause", ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _syscall4(typingctx, nr, a1, a2, a3):
    """libc's syscall(nr, a1, a2, a3, 0, 0): the futex and sched_yield calls (resolved from the process
    when the kernel is loaded, so the compiled code caches like any other)."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I64, [_I64], var_arg=True)
        fn = declare_intrinsic(builder, "syscall", fnty)
        zero = ir.Constant(_I64, 0)
        return builder.call(fn, [args[0], args[1], args[2], args[3], zero, zero])
    return types.int64(types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def call_body(typingctx, fn, k, n, argv):
    """fn(k, n, argv): a C call of a thread body by its address (all int64 words): item k of n."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [_I64, _I64, _I64.as_pointer()])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()),
                     [args[1], args[2], builder.inttoptr(args[3], _I64.as_pointer())])
        return context.get_dummy_value()
    return types.void(types.int64, types.int64, types.int64, types.int64), codegen


@njit(cache=True, nogil=True)
def _take_items(ctl, job, fn, n, argv):
    # claim and run items of ``job`` until none is left (or the job is no longer the current one)
    mask = (1 << _ITEM_BITS) - 1
    while True:
        w = _load(ctl + CLAIM)
        if (w >> _ITEM_BITS) != job or (w & mask) >= n:
            return
        if _cas(ctl + CLAIM, w, w + 1):
            call_body(fn, w & mask, n, argv)
            _add(ctl + DONE, 1)


@njit(cache=True, nogil=True)
def _worker(ctl, spins):
    # a worker thread's life: wait for a new job (spinning, then on the futex), take its items, repeat
    seen = _load(ctl + JOB)
    while True:
        k = 0
        job = _load(ctl + JOB)
        while job == seen:
            if _load(ctl + STOP):
                return
            k += 1
            if k < spins:
                _pause()
                if k % 64 == 0:
                    # let a thread that shares this core run (the caller, when another process holds
                    # the other core): spinning must not slow down the thread it waits for
                    _syscall4(_SYS_SCHED_YIELD, 0, 0, 0)
            else:
                _add(ctl + SLEEPERS, 1)
                if _load(ctl + JOB) == seen and not _load(ctl + STOP):
                    _syscall4(_SYS_FUTEX, ctl + JOB, _FUTEX_WAIT_PRIVATE, seen & 0xFFFFFFFF)
                _add(ctl + SLEEPERS, -1)
                k = 0
            job = _load(ctl + JOB)
        seen = job
        _take_items(ctl, job, _load(ctl + BODY), _load(ctl + N), _load(ctl + ARGV))


@njit(cache=True, nogil=True)
def run_job(ctl, fn, n, argv):
    """Run body ``fn``'s items 0..n-1 on the caller and whichever workers are free (see the module
    docstring). ``ctl``: the control block's address (0: no pool, every item on the caller)."""
    if ctl == 0 or n == 1 or not _cas(ctl + BUSY, 0, 1):
        for k in range(n):
            call_body(fn, k, n, argv)
        return
    job = _load(ctl + JOB) + 1
    _store(ctl + DONE, 0)
    _store(ctl + BODY, fn)
    _store(ctl + N, n)
    _store(ctl + ARGV, argv)
    _store(ctl + CLAIM, job << _ITEM_BITS)
    _store(ctl + JOB, job)
    if _load(ctl + SLEEPERS) > 0:
        _syscall4(_SYS_FUTEX, ctl + JOB, _FUTEX_WAKE_PRIVATE, 1 << 30)
    _take_items(ctl, job, fn, n, argv)
    # every item is claimed: wait for the ones a worker is still running (yielding the core now and
    # then, in case that worker is waiting for it)
    k = 0
    while _load(ctl + DONE) < n:
        k += 1
        _pause()
        if k % 256 == 0:
            _syscall4(_SYS_SCHED_YIELD, 0, 0, 0)
    _store(ctl + BUSY, 0)


class _Pool:
    """The control block and the worker threads (started on first use, restarted after a fork)."""

    def __init__(self):
        raw = np.zeros(_WORDS, dtype=np.int64)
        skip = (-raw.ctypes.data % 64) // 8
        self.block = raw[skip:skip + 8 * 9]
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def address(self, workers: int) -> int:
        """The control block, with ``workers`` threads waiting on it (started now if need be)."""
        if len(self.threads) < workers:
            with self.lock:
                while len(self.threads) < workers:
                    t = threading.Thread(target=_worker, args=(self.block.ctypes.data, config.POOL_SPINS),
                                         name=f"darknetpy-worker-{len(self.threads)}", daemon=True)
                    t.start()
                    self.threads.append(t)
        return self.block.ctypes.data

    def stop(self) -> None:
        """Workers return (at interpreter exit): STOP set, the sleeping ones woken (a futex wake from
        Python, so nothing compiles at exit)."""
        self.block[STOP // 8] = 1
        if self.threads:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(self.block.ctypes.data + JOB),
                         ctypes.c_long(_FUTEX_WAKE_PRIVATE), ctypes.c_long(1 << 30), None, None, ctypes.c_long(0))
            for t in self.threads:
                t.join(timeout=1.0)

    def forget_threads(self) -> None:
        # in a forked child: the parent's workers do not exist here (a job out at fork time is abandoned)
        self.block[:] = 0
        self.threads = []
        self.lock = threading.Lock()


POOL = _Pool()
atexit.register(POOL.stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.forget_threads)
