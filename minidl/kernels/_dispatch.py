"""Choosing between a kernel family's NumPy reference and its fast paths.

Each family (im2col, pooling, batch norm, ...) keeps one ``ImplSwitch``: ``auto`` takes
the numba kernels for float32/float64 NumPy arrays when numba imports, the CuPy kernels
(``cuda_kernels.py``) for float32/float64 CuPy arrays, and the reference otherwise (other
dtypes); ``numpy`` forces the reference (on either device: it is written with the array
API NumPy and CuPy share), ``numba`` and ``cuda`` a fast path. A call may name its
``impl``; ``force_impl(...)`` changes the family's default for a block (tests use it to
run whole ops through one path).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend

FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
IMPLS = ("auto", "numpy", "numba", "cuda")

_numba_ok = None  # whether numba imports, once asked


def numba_available():
    """True when the numba kernels can be used (numba imports)."""
    global _numba_ok
    if _numba_ok is None:
        try:
            import numba  # noqa: F401, PLC0415 - deliberately lazy
            _numba_ok = True
        except Exception:  # ImportError, or a broken LLVM install
            _numba_ok = False
    return _numba_ok


class ImplSwitch:
    """The default implementation of one kernel family, and the per-call decision."""

    def __init__(self, family):
        self.family = family
        self.default = "auto"

    @contextlib.contextmanager
    def force(self, impl):
        """``with force_impl('numpy'):``: every call in the block that names no ``impl``
        uses that one ('auto', 'numpy' or 'numba')."""
        if impl not in IMPLS:
            raise ValueError(f"force_impl: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
        previous, self.default = self.default, impl
        try:
            yield
        finally:
            self.default = previous

    def choose(self, a, impl, name):
        """'numpy', 'numba' or 'cuda': the implementation the call ``name`` on array ``a``
        takes (``impl`` None means the family's default)."""
        impl = self.default if impl is None else impl
        if impl not in IMPLS:
            raise ValueError(f"{name}: impl must be one of {', '.join(IMPLS)}; got {impl!r}")
        if impl != "auto":
            return impl
        if a.dtype not in FAST_DTYPES:
            return "numpy"
        if isinstance(a, np.ndarray):
            return "numba" if numba_available() else "numpy"
        return "cuda" if backend.is_cupy_array(a) else "numpy"

    def use_numba(self, a, impl, name):
        """Whether the call ``name`` on array ``a`` takes the numba fast path."""
        return self.choose(a, impl, name) == "numba"
