"""kernels/parallel.py: the thread-body driver the GEMM, Winograd and grouped kernels run on, and the
argument checks of their bind_* functions (they address arrays by raw pointer, so a wrong array must be
refused before it is read)."""

import gc

import numba
import numpy as np
import pytest

from darknetpy.kernels import conv as kconv
from darknetpy.kernels import depthwise as kdw
from darknetpy.kernels import parallel
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
