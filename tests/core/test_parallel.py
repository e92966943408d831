"""kernels/parallel.py: the thread-body driver the GEMM, Winograd and grouped kernels run on, and the
argument checks of their bind_* functions (they address arrays by raw pointer, so a wrong array must be
refused before it is read)."""

import gc
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from darknetpy.kernels import conv as kconv
from darknetpy.kernels import depthwise as kdw
from darknetpy.kernels import parallel
from darknetpy.kernels import pool
from darknetpy.kernels import winograd as kwino


@parallel.thread_body()
def _count_body(th, nthreads, argv):
    # argv: out (int64, n), n. out[th] += 1; out[n - 1] = the thread count the body was told
    n = argv[1]
    out = parallel.i64(argv[0], (n,))
    out[th] += 1
    out[n - 1] = nthreads


@parallel.thread_body()
def _scale_body(th, nthreads, argv):
    # argv: x (float32, n), n, factor. Thread th scales its share of x.
    n = argv[1]
    x = parallel.f32(argv[0], (n,))
    for i in range(th * n // nthreads, (th + 1) * n // nthreads):
        x[i] *= np.float32(argv[2])


@pytest.mark.parametrize("threads", sorted({1, numba.config.NUMBA_NUM_THREADS}))
def test_every_thread_index_runs_once(threads):
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        out = np.zeros(16, np.int64)
        parallel.Call(_count_body, [parallel.addr(out, np.int64), out.size], (out,))()
    finally:
        numba.set_num_threads(old)
    assert out[-1] == threads
    assert list(out[:threads]) == [1] * threads and not out[threads:-1].any()


def test_max_threads_bounds_the_thread_count():
    out = np.zeros(16, np.int64)
    parallel.Call(_count_body, [out.ctypes.data, out.size], (out,), max_threads=1)()
    assert out[0] == 1 and out[-1] == 1 and not out[1:-1].any()


def test_a_bound_call_keeps_its_arrays_and_runs_again():
    call = parallel.Call(_scale_body, [parallel.addr(x := np.arange(1000, dtype=np.float32), np.float32), 1000, 3],
                         (x,))
    ref = x * 9
    del x
    gc.collect()
    call()
    call()
    assert np.array_equal(call.keep[0], ref)


def test_addr_refuses_other_dtypes_and_strided_views():
    x = np.zeros((4, 6), np.float32)
    assert parallel.addr(x, np.float32) == x.ctypes.data
    assert parallel.addr(x[1:3], np.float32) == x[1:].ctypes.data     # whole rows: contiguous
    with pytest.raises(ValueError, match="C-contiguous float32"):
        parallel.addr(x[:, :3], np.float32)
    with pytest.raises(ValueError, match="float32"):
        parallel.addr(x.astype(np.float64), np.float32)


def test_bind_functions_refuse_arrays_that_do_not_fit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    shift = np.zeros(6, np.float32)
    out = np.zeros((6, 8, 8), np.float32)
    xs = np.zeros(kconv.input_shape(4, 8, 8, 1, 1), np.float32)
    ap = kconv.pack_filters(w.reshape(6, -1), 64)
    kconv.bind_conv_gemm(xs, ap, shift, 0, 3, 1, out)          # fits
    with pytest.raises(ValueError, match="prepared input"):    # prepared without padding
        kconv.bind_conv_gemm(np.zeros(kconv.input_shape(4, 8, 8, 0, 1), np.float32), ap, shift, 0, 3, 1, out)
    with pytest.raises(ValueError, match="residual"):
        kconv.bind_conv_gemm(xs, ap, shift, 0, 3, 1, out, res=np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="prepare_input"):
        kconv.bind_prepare_input(x, 2, xs)
    with pytest.raises(ValueError, match="connected"):
        kconv.bind_connected(np.zeros(5, np.float32), np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0,
                             np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="winograd"):          # weights transformed for F(2x2), run as F(4x4)
        kwino.bind_winograd(x, kwino.transform_weights(w), shift, 0, 1, out, t=4)
    with pytest.raises(ValueError, match="conv_grouped"):
        kdw.bind_conv_grouped(x, np.zeros((6, 1, 3, 3), np.float32), 3, shift, 0, 1, 1, out)
    with pytest.raises(ValueError, match="scratch"):
        kdw.bind_conv_grouped(x, np.zeros((6, 2, 3, 3), np.float32), 2, shift, 0, 1, 1, out,
                              scratch=np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="depthwise_hwc"):
        kdw.bind_depthwise_hwc(x, np.zeros((4, 1, 3, 3), np.float32), shift, 0, 1, 1, out)


# -- kernels/pool.py: darknetpy's worker threads -----------------------------------------------------------

needs_pool = pytest.mark.skipif(not pool.available(), reason="the pool runs on Linux x86-64 only")


@parallel.thread_body()
def _wait_for_partner_body(th, nthreads, argv):
    # argv: flags (int64, 4), spins. Item 0 waits (up to ``spins`` rounds) for item 1 to have started
    # and records whether it saw it: only true if the two items ran at the same time, on two threads.
    flags = parallel.i64(argv[0], (4,))
    if th == 1:
        flags[1] = 1
        return
    seen = 0
    for _ in range(argv[1]):
        if flags[1] != 0:
            seen = 1
            break
    flags[0] = seen


def _block():
    raw = np.zeros(80, np.int64)
    return raw, raw.ctypes.data + (-raw.ctypes.data % 64)


@needs_pool
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_a_job_without_workers_runs_every_item_on_the_caller(n):
    # no worker ever looks at this control block: the caller claims and runs every item itself
    raw, ctl = _block()
    out = np.zeros(16, np.int64)
    argv = np.array([out.ctypes.data, 16], np.int64)
    for _ in range(3):
        pool.run_job(ctl, _count_body.address, n, argv.ctypes.data)
    assert list(out[:n]) == [3] * n and not out[n:15].any() and out[15] == n
    assert raw[(ctl - raw.ctypes.data) // 8 + pool.BUSY // 8] == 0       # released for the next job


@needs_pool
def test_a_second_caller_runs_its_job_inline():
    # while another caller has a job out (BUSY), a call does not queue behind it: it runs its items itself
    raw, ctl = _block()
    raw[(ctl - raw.ctypes.data) // 8 + pool.BUSY // 8] = 1
    out = np.zeros(16, np.int64)
    argv = np.array([out.ctypes.data, 16], np.int64)
    pool.run_job(ctl, _count_body.address, 4, argv.ctypes.data)
    assert list(out[:4]) == [1, 1, 1, 1] and out[15] == 4
    assert raw[(ctl - raw.ctypes.data) // 8 + pool.BUSY // 8] == 1       # still the other caller's


@needs_pool
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
def test_the_workers_take_items_while_the_caller_runs_its_own():
    # Call() on two threads goes through the pool: item 1 runs on a worker while the caller is in item 0
    # (the caller, never waiting for an item nobody claimed, would otherwise run it only afterwards).
    # A worker may be descheduled on a busy machine, so one success in 20 tries is asked for.
    old = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        flags = np.zeros(4, np.int64)
        call = parallel.Call(_wait_for_partner_body, [flags.ctypes.data, 50_000_000], (flags,))
        seen = 0
        for _ in range(20):
            flags[:] = 0
            call()
            assert flags[1] == 1
            seen += int(flags[0])
            if seen:
                break
        assert seen
    finally:
        numba.set_num_threads(old)


@needs_pool
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
def test_workers_that_went_to_sleep_wake_for_the_next_job(tmp_path):
    # With a spin budget of 10 rounds the workers sleep on the futex between calls (50 ms apart); each
    # call must wake one to run item 1 beside the caller's item 0 (a missing wake-up would leave every
    # item to the caller: never seen together). In a child process, for its own POOL_SPINS.
    script = tmp_path / "sleepers.py"
    script.write_text(
        "import sys, time, numba, numpy as np\n"
        "from darknetpy.kernels import config, parallel, pool\n"
        "config.POOL_SPINS = 10\n"
        "sys.path.insert(0, %r)\n"
        "from test_parallel import _wait_for_partner_body\n"
        "numba.set_num_threads(2)\n"
        "flags = np.zeros(4, np.int64)\n"
        "call = parallel.Call(_wait_for_partner_body, [flags.ctypes.data, 50_000_000], (flags,))\n"
        "seen = 0\n"
        "for _ in range(20):\n"
        "    time.sleep(0.05)\n"
        "    asleep = pool.POOL.block[pool.SLEEPERS // 8]\n"
        "    flags[:] = 0\n"
        "    call()\n"
        "    seen += int(flags[0]) if asleep else 0\n"
        "print('seen after sleeping', seen)\n" % str(Path(__file__).parent))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 0, out.stdout


@needs_pool
def test_a_forked_child_starts_its_own_workers():
    # after fork the parent's workers do not exist in the child: its first call starts new ones (a call
    # that found none would still finish, on the caller alone)
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    out = np.zeros(16, np.int64)
    call = parallel.Call(_count_body, [out.ctypes.data, 16], (out,))
    call()
    with ctx.Pool(1) as p:
        threads = p.apply(_child_runs_a_call)
    assert threads == numba.config.NUMBA_NUM_THREADS - 1


def _child_runs_a_call():
    out = np.zeros(16, np.int64)
    parallel.Call(_count_body, [out.ctypes.data, 16], (out,))()
    t = numba.get_num_threads()
    assert list(out[:t]) == [1] * t and out[15] == t
    return len(pool.POOL.threads)


def test_consecutive_kernel_steps_are_merged_into_one_run():
    # Calls.merge joins runs of Call / Calls steps (one dispatch from Python), drops the steps of layers
    # computed elsewhere and keeps any other step where it was, in order
    out = np.zeros(16, np.int64)
    a = parallel.Call(_count_body, [out.ctypes.data, 16], (out,))
    b = parallel.Calls(a, a)
    log = []

    def other():
        log.append(int(out[0]))
    runs = parallel.Calls.merge([a, parallel.nothing, b, other, parallel.nothing, a])
    assert [type(r) for r in runs] == [parallel.Calls, type(other), parallel.Calls]
    assert [len(r.calls) for r in (runs[0], runs[2])] == [3, 1]
    for r in runs:
        r()
    assert log == [3] and out[0] == 4                 # three calls before the other step, one after


def test_a_plan_runs_its_merged_steps_with_the_same_results():
    # Plan.run goes through the merged runs (DARKNETPY_DEBUG: step by step); both give the same bits
    import darknetpy
    net = darknetpy.load(darknetpy.__path__[0] + "/../cfg/dla46_c.cfg")
    plan = net.plan()
    assert len(plan._runs) < len(plan.steps) and all(r is not parallel.nothing for r in plan._runs)
    x = np.random.default_rng(5).random(net.input_shape, dtype=np.float32)
    plan.run(x)
    merged = plan.outputs[net.graph.output_index].copy()
    for step in plan.steps:
        step()
    assert np.array_equal(merged, plan.outputs[net.graph.output_index])
