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
    # a product small enough for BLAS to run it on the calling thread anyway: no change;
    # a large one (or one of unknown size): one thread
    with threads.single_blas(threads.BLAS_ONE_THREAD_BELOW - 1):
        assert set(_numpy_blas_threads().values()) == {2}
    for large in (threads.BLAS_ONE_THREAD_BELOW, None):
        with threads.single_blas(large):
            assert set(_numpy_blas_threads().values()) == {1}


def _single_blas_spy(monkeypatch, *modules):
    """The list of the multiply-adds every ``single_blas`` block is entered with, through
    ``modules``' own references to it (replaced by a recording wrapper)."""
    entered = []
    real = threads.single_blas

    def spy(multiply_adds=None):
        entered.append(multiply_adds)
        return real(multiply_adds)

    for module in modules:
        monkeypatch.setattr(module, "single_blas", spy)
    return entered


def test_linear_and_conv_products_run_under_single_blas(restore_threads, monkeypatch):
    """The policy is applied where minidl multiplies: linear, matmul and the reference
    convolution's GEMMs each enter ``single_blas``."""
    import minidl.kernels.conv as conv_kernels
    import minidl.ops.linalg as linalg
    entered = _single_blas_spy(monkeypatch, threads, linalg)
    x = minidl.randn(4, 3, requires_grad=True)
    w = minidl.randn(2, 3, requires_grad=True)
    minidl.nn.functional.linear(x, w).sum().backward()
    assert entered == [4 * 3 * 2] * 3           # forward, both gradients; their multiply-adds
    (x @ w.T).sum().backward()
    assert len(entered) == 6
    img = minidl.randn(2, 3, 6, 6, requires_grad=True)
    k = minidl.randn(4, 3, 3, 3, requires_grad=True)
    with minidl.kernels.use_impl("reference", family="conv2d"):
        minidl.nn.functional.conv2d(img, k).sum().backward()
    assert len(entered) == 9                    # forward, weight and input gradients
    assert conv_kernels.threads is threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_linear_and_matmul_products_run_on_numba_threads(dtype, restore_threads,
                                                                monkeypatch, rng):
    """Products of two matrices with at least ``GEMM_PARALLEL_MIN_FLOPS`` multiply-adds go
    to ``kernels.blas.matmul`` (numba's threads, one BLAS thread each): linear's forward
    and both gradients, matmul's; smaller ones, leading dims and float16 stay on ``@``.
    The results are the products NumPy computes."""
    import minidl.kernels.blas as blas
    import minidl.ops.linalg as linalg
    calls = []
    real = blas.matmul

    def spy(a, b, out, accumulate=False):
        calls.append((a.shape, b.shape))
        return real(a, b, out, accumulate)

    monkeypatch.setattr(linalg.blas, "matmul", spy)
    minidl.set_num_threads(2)
    M, IN, OUT = 16, 256, 128                  # 524,288 multiply-adds: the threshold
    assert M * IN * OUT >= blas.GEMM_PARALLEL_MIN_FLOPS
    xa = rng.standard_normal((M, IN)).astype(dtype)
    wa = rng.standard_normal((OUT, IN)).astype(dtype)
    x, w = minidl.tensor(xa, requires_grad=True), minidl.tensor(wa, requires_grad=True)
    y = minidl.nn.functional.linear(x, w)
    gy = rng.standard_normal((M, OUT)).astype(dtype)
    y.backward(minidl.tensor(gy))
    assert calls == [((M, IN), (IN, OUT)), ((M, OUT), (OUT, IN)), ((OUT, M), (M, IN))]
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for got, want in ((y.numpy(), xa @ wa.T), (x.grad.numpy(), gy @ wa),
                      (w.grad.numpy(), gy.T @ xa)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    (x @ w.T).sum().backward()
    assert len(calls) == 6
    calls.clear()
    minidl.nn.functional.linear(minidl.tensor(xa[:2]), minidl.tensor(wa))     # small
    minidl.nn.functional.linear(minidl.tensor(xa.astype(np.float16)),
                                minidl.tensor(wa.astype(np.float16)))
    assert calls == []


def _summed_to(g, shape):
    """g summed over the dims that broadcasting added or stretched, to ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_batched_matmul_products_run_on_numba_threads(dtype, restore_threads,
                                                            monkeypatch, rng):
    """Stacks of matrices go to ``kernels.blas.matmul`` too: equal leading dims (any
    number of them) as one batched call, a C-contiguous stack times one matrix as one
    product of all its rows, one matrix times a stack as a batched call; leading dims that
    broadcast against each other stay on ``@``. Forward and both gradients are NumPy's
    products (the stacked operand's gradient summed over the batch where it was shared)."""
    import minidl.kernels.blas as blas
    import minidl.ops.linalg as linalg
    calls = []
    real = blas.matmul

    def spy(a, b, out, accumulate=False):
        calls.append((a.shape, b.shape, out.shape))
        return real(a, b, out, accumulate)

    monkeypatch.setattr(linalg.blas, "matmul", spy)
    minidl.set_num_threads(2)
    tol = 1e-12 if dtype == np.float64 else 1e-4

    def check(sa, sb):
        a0 = rng.standard_normal(sa).astype(dtype)
        b0 = rng.standard_normal(sb).astype(dtype)
        a, b = minidl.tensor(a0, requires_grad=True), minidl.tensor(b0, requires_grad=True)
        y = a @ b
        gy = rng.standard_normal(y.shape).astype(dtype)
        y.backward(minidl.tensor(gy))
        ga = gy @ np.swapaxes(b0, -1, -2)
        gb = np.swapaxes(a0, -1, -2) @ gy
        ga, gb = _summed_to(ga, sa), _summed_to(gb, sb)
        for got, want in ((y.numpy(), a0 @ b0), (a.grad.numpy(), ga), (b.grad.numpy(), gb)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())

    check((4, 32, 64), (4, 64, 128))                 # 1,048,576 multiply-adds each
    assert calls == [((4, 32, 64), (4, 64, 128), (4, 32, 128)),
                     ((4, 32, 128), (4, 128, 64), (4, 32, 64)),
                     ((4, 64, 32), (4, 32, 128), (4, 64, 128))]
    calls.clear()
    check((2, 2, 32, 64), (2, 2, 64, 128))           # two leading dims: one batch of 4
    assert [c[2] for c in calls] == [(4, 32, 128), (4, 32, 64), (4, 64, 128)]
    calls.clear()
    check((4, 32, 64), (64, 128))                    # a stack times a matrix: rows
    assert calls[0] == ((128, 64), (64, 128), (128, 128))
    calls.clear()
    check((32, 64), (4, 64, 128))                    # a matrix times a stack: a batch
    assert calls[0] == ((32, 64), (4, 64, 128), (4, 32, 128))
    calls.clear()
    check((2, 1, 32, 64), (1, 2, 64, 128))           # broadcast leading dims: ``@``
    assert calls == []
    strided = rng.standard_normal((4, 64, 32)).astype(dtype)
    w0 = rng.standard_normal((64, 128)).astype(dtype)
    y = minidl.tensor(strided).transpose(-1, -2) @ minidl.tensor(w0)   # a transposed stack
    assert calls == [((4, 32, 64), (64, 128), (4, 32, 128))]          # batched, not rows
    want = strided.swapaxes(-1, -2) @ w0
    np.testing.assert_allclose(y.numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


def test_pooling_and_einsum_products_run_under_single_blas(restore_threads, monkeypatch):
    """Adaptive average pooling's averaging matrices and einsum's contractions are matrix
    products too: each enters ``single_blas`` with its multiply-adds (a product left to
    OpenBLAS's own threads kept its worker spinning beside numba's: GoogLeNet's training
    step 1.6x slower with OpenBLAS's Haswell kernels, benchmarks/RESULTS.md)."""
    import minidl.kernels.pool_reference as pool_reference
    import minidl.ops.math as math_ops
    entered = _single_blas_spy(monkeypatch, pool_reference, math_ops)
    x = minidl.randn(2, 3, 2, 5, requires_grad=True)
    minidl.nn.functional.adaptive_avg_pool2d(x, (4, 3)).sum().backward()
    assert entered == [2 * 3 * 2 * 5 * 4, 2 * 3 * 4 * 3 * 5]   # forward, backward
    a, b = minidl.randn(3, 4), minidl.randn(4, 5)
    minidl.einsum("ij,jk->ik", a, b)
    assert entered[2:] == [None]


def test_parallel_policy(restore_threads):
    """numba's parallel builds for inputs of at least PARALLEL_MIN_ELEMENTS; set_parallel
    (False) forbids them, (True) allows them, None restores the default (allowed unless
    MINIDL_NUMBA_PARALLEL=0), each undone at the end of its block."""
    big, small = threads.PARALLEL_MIN_ELEMENTS, threads.PARALLEL_MIN_ELEMENTS - 1
    default = os.environ.get("MINIDL_NUMBA_PARALLEL", "") != "0"
    assert threads.parallel(big) is default and not threads.parallel(small)
    with threads.set_parallel(False):
        assert not threads.parallel(big) and not threads.parallel()
        with threads.set_parallel(True):
            assert threads.parallel(big) and not threads.parallel(small)
        with threads.set_parallel(None):
            assert threads.parallel(big) is default
        assert not threads.parallel(big)
    assert threads.parallel(big) is default


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


def test_kernels_without_prange_keep_their_serial_build():
    """A kernel with no prange loop (batch norm's rows statistics) runs its serial build
    even where the policy allows parallel ones: its parallel build would only warn
    (NumbaPerformanceWarning) and run the same loops."""
    import warnings  # noqa: PLC0415

    from minidl.kernels import batchnorm_numba as bn  # noqa: PLC0415 - numba only here
    assert not bn._stats_rows.has_prange and bn._stats_planes.has_prange
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    mean, var = np.empty(3), np.empty(3)
    with warnings.catch_warnings(), threads.set_parallel(True):
        warnings.simplefilter("error")
        bn._stats_rows(x, mean, var, size=10**9)
    assert bn._stats_rows._parallel is None               # never compiled
    np.testing.assert_array_equal(mean, x.mean(axis=0))
    np.testing.assert_array_equal(var, x.var(axis=0))


def test_stale_kernel_caches_are_deleted(tmp_path, monkeypatch):
    """numba checks only a function's own file before loading its cache, so a kernel that
    inlines another module's helper would load code compiled from the helper's old
    source. The cache directory keeps a digest of every kernel module's source: where it
    differs, minidl's cache files there are deleted (no one else's) and the digest
    rewritten; where it matches, nothing is touched."""
    from types import SimpleNamespace  # noqa: PLC0415

    sources = [os.path.basename(p) for p in threads.kernel_sources()]
    assert {"im2col_numba.py", "pool_numba.py", "conv_depthwise_numba.py",
            "threads.py"} <= set(sources)
    digest = threads.kernel_sources_digest()
    assert digest == threads.kernel_sources_digest() and len(digest) == 64
    ours = ["pool_numba._max_forward_across-205.py311.1.nbc",
            "pool_numba._max_forward_across-205.py311.nbi"]
    theirs = ["somelib.f-3.py311.nbi", "somelib.f-3.py311.1.nbc", "notes.txt"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    fake = SimpleNamespace(_cache=SimpleNamespace(_cache_path=str(tmp_path)))
    stamp = tmp_path / threads.KERNEL_DIGEST_FILE
    stamp.write_text("0" * 64 + "\n")                  # compiled from other sources
    monkeypatch.setattr(threads, "_CHECKED_DIRS", set())
    threads._check_cache_dir(fake)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        theirs + [threads.KERNEL_DIGEST_FILE])
    assert stamp.read_text().strip() == digest
    threads._check_cache_dir(fake)                     # once per process and directory
    for name in ours:
        (tmp_path / name).write_text("x")
    monkeypatch.setattr(threads, "_CHECKED_DIRS", set())
    threads._check_cache_dir(fake)                     # the digest matches: kept
    assert {p.name for p in tmp_path.iterdir()} >= set(ours)


def test_the_kernel_cache_directory_records_the_sources_digest():
    """Compiling minidl's kernels (here: importing one module of them) leaves the digest
    of the sources in use in their cache directory, where it is writable."""
    from minidl.kernels import pool_numba  # noqa: PLC0415 - numba only here
    kernel = next(v for v in vars(pool_numba).values()
                  if isinstance(v, threads.Kernel) and v.serial is not None)
    path = kernel.serial._cache._cache_path
    if not os.access(path, os.W_OK):
        pytest.skip(f"numba's cache directory {path} is not writable here")
    with open(os.path.join(path, threads.KERNEL_DIGEST_FILE)) as f:
        assert f.read().strip() == threads.kernel_sources_digest()
