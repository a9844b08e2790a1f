"""numba kernel of the add family (``kernels/arith.py`` holds the reference and the
registration): a + b for C-contiguous NumPy float32/float64 arrays of one dtype and shape,
one loop over the flat arrays, on numba's threads for large arrays. Without fastmath: one
IEEE addition per element, the reference's result to the bit."""
from __future__ import annotations

import numpy as np
from numba import prange

from . import memory
from .threads import jit

__all__ = ["add"]


@jit(fastmath=False)
def _add_loop(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def add(a, b):
    """a + b (C-contiguous NumPy arrays of one float dtype and shape)."""
    out = memory.empty(a.shape, dtype=a.dtype)
    _add_loop(a.reshape(-1), b.reshape(-1), out.reshape(-1), size=a.size)
    return out
