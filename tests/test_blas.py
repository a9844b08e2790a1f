"""``kernels.blas.matmul``: NumPy's BLAS called from numba kernels (``blas_numba``) equals
``np.matmul`` for every form it takes (batched, one matrix for the batch, the batch
summed, accumulated, transposed views, float32 and float64), on the serial and the
parallel build; the NumPy fallback gives the same; bad shapes get a clear error."""
from __future__ import annotations

import numpy as np
import pytest

import minidl.kernels as K
from minidl.kernels import blas, threads

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _view(a, transposed):
    """a itself, or the same values as a transposed view of a contiguous transposed copy
    (unit stride along axis -2: what BLAS reads as 'T')."""
    if not transposed:
        return a
    axes = tuple(range(a.ndim - 2)) + (a.ndim - 1, a.ndim - 2)
    return np.ascontiguousarray(a.transpose(axes)).transpose(axes)


def test_numba_blas_is_found_here():
    """On this project's machines NumPy's wheels bring OpenBLAS with cblas symbols: the
    fast path must be the one these tests exercise, not the fallback."""
    from minidl.kernels import blas_numba  # noqa: PLC0415
    assert blas_numba.available()


def test_numpys_own_blas_is_chosen_before_others():
    """numba loads SciPy's OpenBLAS into the process too, and threadpoolctl may list it
    first: the products must still call NumPy's own library (the one its wheel ships in
    ``numpy.libs``), whichever order the libraries come in."""
    import os  # noqa: PLC0415

    from minidl.kernels import blas_numba  # noqa: PLC0415
    package = os.path.dirname(os.path.abspath(np.__file__))
    own = os.path.join(os.path.dirname(package), "numpy.libs", "libopenblas.so")
    inside = os.path.join(package, "lib", "libblas.so")
    other = "/opt/scipy.libs/libscipy_openblas.so"
    assert blas_numba._numpy_first([other, own]) == [own, other]
    assert blas_numba._numpy_first([other, inside, own]) == [inside, own, other]
    assert blas_numba._numpy_first([other, "/usr/lib/libblas.so"]) == \
        [other, "/usr/lib/libblas.so"]               # neither NumPy's: the order kept
    # in this process (SciPy's BLAS loaded too, where SciPy is installed), on this
    # project's machines, where NumPy comes from a wheel: its library's sgemm is chosen
    try:
        import scipy.linalg  # noqa: F401, PLC0415
    except ImportError:
        pass
    import ctypes  # noqa: PLC0415

    from threadpoolctl import threadpool_info  # noqa: PLC0415
    libs = [i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"]
    wheel = [p for p in libs if os.path.abspath(p).startswith(
        (os.path.join(os.path.dirname(package), "numpy.libs"), package))]
    assert wheel, f"NumPy's BLAS not found among {libs}"
    lib = ctypes.CDLL(wheel[0])
    names = ("scipy_cblas_sgemm64_", "cblas_sgemm64_", "scipy_cblas_sgemm", "cblas_sgemm")
    sgemm = next(getattr(lib, n) for n in names if hasattr(lib, n))
    assert blas_numba._find_cblas()[0] == ctypes.cast(sgemm, ctypes.c_void_p).value


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("path", ["small", "serial", "parallel"])
@pytest.mark.parametrize("form", ["batched", "broadcast a", "broadcast b", "summed", "2-D",
                                  "1 x 1"])
def test_matmul_equals_numpy(form, path, ta, tb, dtype, rng, monkeypatch, num_threads):
    """Every form on each path: a small product (NumPy's matmul, or the serial kernel
    for a sum), the serial kernel, the parallel one."""
    B, M, Kd, N = 5, 7, 9, 11
    if form == "1 x 1":
        B, M, Kd, N = 3, 1, 1, 1
    a = rng.standard_normal((B, M, Kd)).astype(dtype)
    b = rng.standard_normal((B, Kd, N)).astype(dtype)
    if form == "broadcast a":
        a = a[0]
    elif form == "broadcast b":
        b = b[0]
    elif form == "2-D":
        a, b = a[0], b[0]
    want = np.matmul(a, b)
    if form == "summed":
        want = want.sum(axis=0)
    num_threads(2)
    monkeypatch.setattr(blas, "GEMM_PARALLEL_MIN_FLOPS", 10**12 if path == "small" else 1)
    with threads.set_parallel(path != "serial"):
        out = np.full(want.shape, np.nan, dtype=dtype)
        assert blas.matmul(_view(a, ta), _view(b, tb), out) is out
        np.testing.assert_allclose(out, want, **TOL[dtype])
        start = rng.standard_normal(want.shape).astype(dtype)
        acc = start.copy()
        blas.matmul(_view(a, ta), _view(b, tb), acc, accumulate=True)
        np.testing.assert_allclose(acc, start + want, **TOL[dtype])


def test_small_products_skip_the_numba_kernels(rng, monkeypatch):
    """A product under ``GEMM_PARALLEL_MIN_FLOPS`` multiply-adds that needs no sum is
    NumPy's matmul (fewer microseconds on the way to the same BLAS); a sum of products
    still takes the kernels (no (B, M, N) temporary)."""
    calls = []
    found = blas._kernels()
    monkeypatch.setattr(blas, "_kernels", lambda: calls.append(1) or found)
    a, b = rng.standard_normal((2, 8, 16)), rng.standard_normal((16, 8))
    out = np.empty((2, 8, 8))
    np.testing.assert_allclose(blas.matmul(a, b, out), a @ b, rtol=1e-12)
    np.testing.assert_allclose(blas.matmul(a[0], b, out[0], accumulate=True),
                               2 * (a[0] @ b), rtol=1e-12)
    assert calls == []
    summed = np.empty((8, 8))
    np.testing.assert_allclose(blas.matmul(a, b, summed), (a @ b).sum(0), rtol=1e-12)
    assert calls == [1]


def test_rows_of_a_larger_array_and_strided_views(rng):
    """Operands and outputs that are views with a row stride larger than their width (a
    block's images inside ``col``, a group's channels inside y): BLAS's leading
    dimensions, nothing copied into ``out``'s place."""
    big = rng.standard_normal((6, 4, 20))
    a = rng.standard_normal((3, 4))
    y = np.zeros((4, 2, 3, 20))
    blas.matmul(a, big[:4, :, 2:17], y[:, 1, :, 5:])          # batch-strided views
    np.testing.assert_allclose(y[:, 1, :, 5:], np.matmul(a, big[:4, :, 2:17]), rtol=1e-12)
    assert not y[:, 0].any() and not y[:, 1, :, :5].any()


def test_fallback_without_numba_blas_equals_numpy(rng, monkeypatch):
    """Where NumPy's BLAS has no cblas symbols (``_kernels`` None) the same call runs
    np.matmul: the same results for every form."""
    monkeypatch.setattr(blas, "_kernels", lambda: None)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 6))
    out = np.empty((3, 4, 6))
    np.testing.assert_allclose(blas.matmul(a, b, out), a @ b, rtol=1e-12)
    summed = np.ones((4, 6))
    blas.matmul(a, b, summed, accumulate=True)
    np.testing.assert_allclose(summed, 1 + (a @ b).sum(0), rtol=1e-12)


def test_mixed_dtypes_and_odd_outputs_take_numpy(rng):
    """Operands of another dtype than out, or an out without unit stride along its rows:
    np.matmul's answer (with its casting), not a wrong BLAS call."""
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 6))
    out = np.empty((4, 6))
    np.testing.assert_allclose(blas.matmul(a, b, out), a.astype(np.float64) @ b, rtol=1e-6)
    wide = np.zeros((4, 12))
    blas.matmul(b.T[:4], b, wide[:, ::2])
    np.testing.assert_allclose(wide[:, ::2], b.T[:4] @ b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_operands(dtype):
    """K = 0: a product of zeros (out = 0, or out unchanged when accumulating); an empty
    batch: nothing for a 3-D out, 0 for a summed 2-D out; empty M or N: nothing."""
    out = np.full((3, 4), np.nan, dtype)
    np.testing.assert_array_equal(blas.matmul(np.ones((3, 0), dtype), np.ones((0, 4), dtype),
                                              out), np.zeros((3, 4)))
    acc = np.full((2, 3, 4), 5, dtype)
    blas.matmul(np.ones((2, 3, 0), dtype), np.ones((2, 0, 4), dtype), acc, accumulate=True)
    np.testing.assert_array_equal(acc, np.full((2, 3, 4), 5))
    assert blas.matmul(np.ones((0, 3, 2), dtype), np.ones((0, 2, 4), dtype),
                       np.empty((0, 3, 4), dtype)).shape == (0, 3, 4)
    summed = np.full((3, 4), np.nan, dtype)
    blas.matmul(np.ones((0, 3, 2), dtype), np.ones((0, 2, 4), dtype), summed)
    np.testing.assert_array_equal(summed, np.zeros((3, 4)))
    assert blas.matmul(np.ones((3, 2), dtype), np.ones((2, 0), dtype),
                       np.empty((3, 0), dtype)).shape == (3, 0)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"blas.matmul: expected .* got \(2,\), \(2, 2\)"):
        blas.matmul(np.ones(2), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="blas.matmul"):         # batches 2 and 3
        blas.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 5)), np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="blas.matmul"):         # K 4 against 5
        blas.matmul(np.ones((3, 4)), np.ones((5, 5)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="blas.matmul"):         # out (3, 6), product (3, 5)
        blas.matmul(np.ones((3, 4)), np.ones((4, 5)), np.ones((3, 6)))
