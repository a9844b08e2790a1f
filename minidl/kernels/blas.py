"""Matrix products on numba's threads: ``matmul(a, b, out, accumulate)``, out = a @ b (or
out += a @ b) for float32/float64 arrays, run as single-threaded BLAS calls inside a
numba parallel loop (``blas_numba``), so that the convolutions' products share the one
pool of threads their im2col and Winograd kernels use (``kernels/threads.py``).

This module imports nothing heavy: the numba kernels load on the first product (importing
the convolution modules, as the registry does, must not import numba).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import registry, threads

__all__ = ["matmul", "GEMM_PARALLEL_MIN_FLOPS"]

# Products of fewer multiply-adds run on the calling thread: a parallel region costs a few
# microseconds, a 64 x 64 x 64 product ~10 us on one core.
GEMM_PARALLEL_MIN_FLOPS = 1 << 19


@functools.cache
def _kernels():
    """``blas_numba`` (imported on the first product that needs it), or None where numba
    does not import or NumPy's BLAS has no cblas symbols to call; looked up once."""
    if not registry.numba_available():
        return None
    from . import blas_numba  # noqa: PLC0415 - numba on the first product only
    return blas_numba if blas_numba.available() else None


def _unit_stride(a):
    """a, or a copy, with a unit stride along one of its last two axes (what BLAS reads)."""
    item = a.itemsize
    if a.strides[-1] == item or a.strides[-2] == item:
        return a
    return np.ascontiguousarray(a)


def _shapes_fit(a, b, out):
    """Whether a, b, out have the shapes ``matmul`` takes (a wrong K would make BLAS read
    past the arrays)."""
    if not (a.ndim in (2, 3) and b.ndim in (2, 3) and out.ndim in (2, 3)):
        return False
    batches = {x.shape[0] for x in (a, b, out) if x.ndim == 3}
    return (len(batches) <= 1 and a.shape[-1] == b.shape[-2]
            and out.shape[-2:] == (a.shape[-2], b.shape[-1]))


def matmul(a, b, out, accumulate=False):
    """out = a @ b, or out += a @ b with ``accumulate``, on numba's threads (one BLAS thread
    each; where the policy allows parallel kernels and the product has at least
    ``GEMM_PARALLEL_MIN_FLOPS`` multiply-adds), and returns out.

    a (M, K) or (B, M, K), b (K, N) or (B, K, N), one float dtype:
    * out (B, M, N): the B products (a 2-D a or b serves every one);
    * out (M, N) with a or b 3-D: the SUM of the B products (a batched weight gradient).
    a and b may be views with a unit stride along either of their last two axes
    (transposed views: BLAS reads them transposed, nothing is copied); out needs a unit
    stride along its rows."""
    if not _shapes_fit(a, b, out):
        raise ValueError(f"blas.matmul: expected a (B, M, K) or (M, K), b (B, K, N) or "
                         f"(K, N), out (B, M, N) or (M, N) (B the same where given), got "
                         f"{a.shape}, {b.shape}, {out.shape}")
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    flops = batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
    summed = out.ndim == 2 and (a.ndim == 3 or b.ndim == 3)
    # Small products that need no sum go to NumPy's matmul: it calls the same BLAS with
    # less on the way than a numba call (RESULTS.md: a 1x1 convolution's 32x32x256 product
    # at batch 1, 19 -> 11 us with this function's checks, 7 us for np.matmul alone).
    small = flops < GEMM_PARALLEL_MIN_FLOPS and not summed
    kernels = None if small else _kernels()
    if kernels is None or out.strides[-1] != out.itemsize or a.dtype != out.dtype \
            or b.dtype != out.dtype or out.dtype not in (np.float32, np.float64):
        with threads.single_blas(flops):
            if not (summed or accumulate):
                return np.matmul(a, b, out=out)
            product = np.matmul(a, b)
            if summed:
                product = product.sum(axis=0)
            if accumulate:
                out += product
            else:
                out[...] = product
        return out
    a3, b3, c3 = (x if x.ndim == 3 else x[None] for x in (_unit_stride(a), _unit_stride(b), out))
    if min(a3.shape[0], b3.shape[0]) == 0:       # no products: a sum of none is 0
        if not accumulate:
            out[...] = 0
        return out
    n = threads.get_num_threads()
    if n > 1 and threads.parallel() and flops >= GEMM_PARALLEL_MIN_FLOPS:
        run, parts = kernels.batched.parallel_build, n // math.gcd(c3.shape[0], n)
    else:
        run, parts = kernels.batched.serial, 1
    with threads.single_blas(flops if parts == 1 else None):
        run(a3, b3, c3, out.dtype.type(1.0 if accumulate else 0.0), parts)
    return out
