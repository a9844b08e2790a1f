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
