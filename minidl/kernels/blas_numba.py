"""NumPy's own BLAS (``cblas_sgemm`` / ``cblas_dgemm``) called from numba kernels, one BLAS
thread per numba thread: the kernels of ``blas.matmul`` (``kernels/blas.py``).

Why: minidl's convolutions are im2col or Winograd transforms (numba kernels) around matrix
products (BLAS). Run side by side on Python threads, every hand-off between the calling
thread and a worker cost 70-330 us on the 2-core dev VM (a futex wake and the GIL: an
empty two-thread section, ``benchmarks/RESULTS.md``), and ResNet-18 needs ~60 of them per
evaluation and ~180 per training step. numba's OpenMP workers take a parallel region in
2-5 us (they spin between regions), so the products go where the transforms already are:
a ``prange`` loop over the products (or over column blocks of one product), each
iteration one single-threaded BLAS call.

The BLAS is the library NumPy itself links (found through ``threadpoolctl``, the same
handle ``threads.single_blas`` uses; preferred over the other BLAS libraries in the
process, such as the SciPy OpenBLAS that importing numba brings in, which threadpoolctl
may list first: ``_numpy_first``): OpenBLAS in NumPy's wheels exports
``scipy_cblas_sgemm64_`` (64-bit integers), other builds ``cblas_sgemm64_`` or
``cblas_sgemm``, MKL ``cblas_sgemm``. Its address is given to LLVM under a fixed name
(``minidl_cblas_sgemm``), so kernels calling it are cached on disk like the others.
Where no such symbol is found (``available()`` False) ``blas.matmul`` is ``np.matmul``.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from . import threads

__all__ = ["available", "gemm", "batched"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_first(paths):
    """The BLAS libraries' ``paths`` with NumPy's own first (a wheel's, in ``numpy.libs``
    or inside the package): SciPy's OpenBLAS, which numba loads into the process, may be
    listed before it, and its 32-bit build and thread pool are not the ones NumPy's
    products and ``threads.single_blas`` were measured with."""
    package = os.path.dirname(os.path.abspath(np.__file__))
    own = (os.path.join(os.path.dirname(package), "numpy.libs") + os.sep, package + os.sep)
    return sorted(paths, key=lambda p: not os.path.abspath(p).startswith(own))


def _find_cblas():
    """(sgemm address, dgemm address, 64-bit integers) of NumPy's BLAS, or None."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - a core dependency
        np.ones((2, 2)) @ np.ones((2, 2))    # NumPy loads its BLAS on first use
        paths = [i["filepath"] for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:   # noqa: BLE001 - no threadpoolctl answer: the NumPy fallback
        return None
    for path in _numpy_first(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            s = getattr(lib, f"{prefix}cblas_sgemm{suffix}", None)
            d = getattr(lib, f"{prefix}cblas_dgemm{suffix}", None)
            if s is not None and d is not None:
                address = (ctypes.cast(s, ctypes.c_void_p).value,
                           ctypes.cast(d, ctypes.c_void_p).value)
                return address[0], address[1], suffix == "64_"
    return None


_CBLAS = _find_cblas()


def available():
    """Whether numba kernels can call NumPy's BLAS here (else ``blas.matmul`` is
    np.matmul)."""
    return _CBLAS is not None


if _CBLAS is not None:
    import llvmlite.binding as _llvm
    import numba
    from numba import prange, types

    _llvm.add_symbol("minidl_cblas_sgemm", _CBLAS[0])
    _llvm.add_symbol("minidl_cblas_dgemm", _CBLAS[1])
    _int = types.int64 if _CBLAS[2] else types.int32

    def _signature(real):
        i32, vp = types.int32, types.voidptr
        return types.void(i32, i32, i32, _int, _int, _int, real, vp, _int, vp, _int, real,
                          vp, _int)

    _sgemm = types.ExternalFunction("minidl_cblas_sgemm", _signature(types.float32))
    _dgemm = types.ExternalFunction("minidl_cblas_dgemm", _signature(types.float64))

    @numba.njit(inline="always")
    def _layout(a):
        """(transposed, leading dimension) of a 2-D matrix with a unit stride along one
        axis: rows (a plain matrix) or columns (a transposed view)."""
        item = a.itemsize
        rows, cols = a.shape
        if cols == 1 or a.strides[1] == item:
            return False, max(a.strides[0] // item if rows > 1 else cols, cols, 1)
        return True, max(a.strides[1] // item if cols > 1 else rows, rows, 1)

    @threads.njit_helper
    def gemm(a, b, c, beta):
        """c = a @ b + beta c, on the calling thread: a (M, K), b (K, N), c (M, N) of one
        dtype, each with a unit stride along one axis (c along its rows)."""
        M, K = a.shape
        N = b.shape[1]
        ta, lda = _layout(a)
        tb, ldb = _layout(b)
        ldc = max(c.strides[0] // c.itemsize if M > 1 else N, N, 1)
        opa = _TRANS if ta else _NO_TRANS
        opb = _TRANS if tb else _NO_TRANS
        if c.itemsize == 4:
            _sgemm(_ROW_MAJOR, opa, opb, M, N, K, 1.0, a.ctypes, lda, b.ctypes, ldb, beta,
                   c.ctypes, ldc)
        else:
            _dgemm(_ROW_MAJOR, opa, opb, M, N, K, 1.0, a.ctypes, lda, b.ctypes, ldb, beta,
                   c.ctypes, ldc)

    @threads.jit
    def batched(a, b, c, beta, parts):
        """c[i] = a[i] @ b[i] + beta c[i] for every i of c's batch (a or b of batch 1: the
        same matrix for every i), or, when c has batch 1 and a or b more, c[0] = the sum
        over i of a[i] @ b[i] + beta c[0]. c's columns are cut into ``parts`` blocks, one
        per prange iteration: each iteration writes its own columns of c."""
        batch = max(a.shape[0], b.shape[0])
        N = c.shape[2]
        summed = c.shape[0] == 1 and batch > 1
        for job in prange(c.shape[0] * parts):
            i, j = job // parts, job % parts
            n0, n1 = j * N // parts, (j + 1) * N // parts
            if n1 == n0:
                continue
            if summed:
                for k in range(batch):
                    gemm(a[min(k, a.shape[0] - 1)], b[min(k, b.shape[0] - 1), :, n0:n1],
                         c[0, :, n0:n1], beta if k == 0 else 1.0)
            else:
                gemm(a[min(i, a.shape[0] - 1)], b[min(i, b.shape[0] - 1), :, n0:n1],
                     c[i, :, n0:n1], beta)
else:
    gemm = batched = None
