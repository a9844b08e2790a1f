"""``minidl.set_num_threads`` / ``get_num_threads``: numba's and NumPy's BLAS thread counts
follow it (read back through threadpoolctl and numba), as PyTorch's do for torch."""
import os

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import minidl
from minidl.kernels import threads


def _numpy_blas_threads():
    """Thread counts of the BLAS libraries loaded in this process (NumPy's among them)."""
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure NumPy's BLAS is loaded
    return {info["filepath"]: info["num_threads"] for info in threadpool_info()
            if info["user_api"] == "blas"}


@pytest.fixture
def restore_threads():
    before_numba, before_blas = numba.get_num_threads(), _numpy_blas_threads()
    before = threads._NUM_THREADS.value
    yield
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(before_numba)
    for path, n in before_blas.items():
        threadpool_limits(limits=n, user_api="blas")
    threads._NUM_THREADS.value = before


def test_default_is_the_physical_cores(monkeypatch):
    monkeypatch.setattr(threads._NUM_THREADS, "value", None)  # as in a fresh process
    assert minidl.get_num_threads() == threads.physical_cores()
    assert 1 <= threads.physical_cores() <= len(os.sched_getaffinity(0))


def test_set_num_threads_limits_numba_and_blas(restore_threads):
    minidl.set_num_threads(1)
    assert minidl.get_num_threads() == 1
    assert numba.get_num_threads() == 1
    assert set(_numpy_blas_threads().values()) == {1}
    n = min(2, numba.config.NUMBA_NUM_THREADS)
    minidl.set_num_threads(n)
    assert minidl.get_num_threads() == n and numba.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_non_positive_ints(bad):
    with pytest.raises(ValueError, match="set_num_threads: n must be a positive int"):
        minidl.set_num_threads(bad)


def test_single_blas_runs_minidl_products_on_one_blas_thread(restore_threads):
    """Inside ``single_blas`` NumPy's BLAS has one thread, nested blocks change nothing,
    and the count comes back after; ``set_single_blas(False)`` leaves BLAS alone."""
    minidl.set_num_threads(2)
    assert set(_numpy_blas_threads().values()) == {2}
    with threads.single_blas():
        assert set(_numpy_blas_threads().values()) == {1}
        with threads.single_blas():
            assert set(_numpy_blas_threads().values()) == {1}
        assert set(_numpy_blas_threads().values()) == {1}
    assert set(_numpy_blas_threads().values()) == {2}
    with threads.set_single_blas(False), threads.single_blas():
        assert set(_numpy_blas_threads().values()) == {2}


def test_linear_and_conv_products_run_under_single_blas(restore_threads, monkeypatch):
    """The policy is applied where minidl multiplies: linear, matmul and the reference
    convolution's GEMMs each enter ``single_blas``."""
    entered = []
    real = threads.single_blas

    def spy():
        entered.append(1)
        return real()

    import minidl.kernels.conv as conv_kernels
    import minidl.ops.linalg as linalg
    monkeypatch.setattr(threads, "single_blas", spy)
    monkeypatch.setattr(linalg, "single_blas", spy)
    x = minidl.randn(4, 3, requires_grad=True)
    w = minidl.randn(2, 3, requires_grad=True)
    minidl.nn.functional.linear(x, w).sum().backward()
    assert len(entered) == 2                    # forward, backward
    (x @ w.T).sum().backward()
    assert len(entered) == 4
    img = minidl.randn(2, 3, 6, 6, requires_grad=True)
    k = minidl.randn(4, 3, 3, 3, requires_grad=True)
    with minidl.kernels.use_impl("reference", family="conv2d"):
        minidl.nn.functional.conv2d(img, k).sum().backward()
    assert len(entered) == 7                    # forward, weight and input gradients
    assert conv_kernels.threads is threads


def test_run_on_threads_returns_in_order_and_raises_after_all(restore_threads):
    import threading
    done = []

    def job(t):
        if t == 1:
            raise ValueError("job 1")
        done.append(t)
        return t * 10

    assert threads.run_on_threads(3, lambda t: (t, threading.current_thread().name)
                                  )[0] == (0, threading.current_thread().name)
    with pytest.raises(ValueError, match="job 1"):
        threads.run_on_threads(3, job)
    assert sorted(done) == [0, 2]               # every other job finished first
    assert threads.run_on_threads(2, lambda t: t + 1, blas_single=True) == [1, 2]


@pytest.fixture
def fresh_sections(monkeypatch):
    """The process as if no run_on_threads section had run yet, under the automatic
    policy (whatever the environment says)."""
    monkeypatch.setattr(threads._Sections, "used", False)
    with threads.set_parallel(None):
        yield


def test_automatic_policy_parallel_until_sections_run(fresh_sections, restore_threads):
    """numba's parallel kernels (large inputs only) until the process runs a section on
    several threads; never inside a section; serial afterwards. set_parallel(True) /
    (False) force it either way, a section still keeping its jobs serial."""
    big, small = threads.PARALLEL_MIN_ELEMENTS, threads.PARALLEL_MIN_ELEMENTS - 1
    assert threads.parallel(big) and not threads.parallel(small)
    minidl.set_num_threads(2)
    inside = threads.run_on_threads(2, lambda t: threads.parallel(big))
    assert inside == [False, False]
    assert threads._Sections.used and not threads.parallel(big)
    with threads.set_parallel(True):
        assert threads.parallel(big)
        assert threads.run_on_threads(2, lambda t: threads.parallel(big)) == [False, False]
    with threads.set_parallel(False):
        threads._Sections.used = False
        assert not threads.parallel(big)


def test_single_thread_sections_leave_the_policy_alone(fresh_sections):
    """A 'section' of one job runs inline: nothing shares the cores, nothing switches."""
    assert threads.run_on_threads(1, lambda t: threads.parallel(10**9)) == [True]
    assert not threads._Sections.used


def test_parallel_builds_are_cached_under_their_own_name():
    """numba keys its cache by function name and signature, not by the parallel flag: the
    parallel build is compiled from a copy named ``<name>__parallel``, cached on disk
    beside the serial build (a later process loads it instead of compiling again)."""
    from minidl.kernels import activation_numba  # noqa: PLC0415 - numba only here
    kernel = next(v for v in vars(activation_numba).values()
                  if isinstance(v, threads.Kernel) and v.serial is not None)
    build = kernel.parallel_build
    assert build.py_func.__qualname__ == kernel.py_func.__qualname__ + "__parallel"
    assert build.py_func.__code__ is kernel.py_func.__code__
    assert build._cache.__class__.__name__ == "FunctionCache"      # not numba's NullCache
    serial_index = kernel.serial._cache._cache_file._index_name
    parallel_index = build._cache._cache_file._index_name
    assert "__parallel" in parallel_index and serial_index != parallel_index


def test_kernels_without_prange_keep_their_serial_build(fresh_sections):
    """A kernel with no prange loop (the depthwise channels-inner kernels) runs its serial
    build even where the policy allows parallel ones: its parallel build would only warn
    (NumbaPerformanceWarning) and run the same loops."""
    import warnings  # noqa: PLC0415

    from minidl.kernels import conv_depthwise_numba as dw  # noqa: PLC0415 - numba only here
    assert not dw.forward_across.has_prange and dw.forward.has_prange
    x = np.ones((2, 3, 2, 2), np.float32)
    wt, bias, y = np.ones((9, 3), np.float32), np.zeros(3, np.float32), np.empty_like(x)
    taps = minidl.geometry.valid_taps((2, 2), (2, 2), (3, 3), (1, 1), (1, 1), (1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dw.forward_across(x, wt, bias, y, 0, 3, *taps, size=10**9)
    assert dw.forward_across._parallel is None            # never compiled
    np.testing.assert_array_equal(y, np.full_like(x, 4))  # each 2x2 output sees 4 ones
