"""The add kernel family: the elementwise sum of two arrays of one shape, for the large
adds of a network (ResNet's residual connections, ``out + identity``).

    a, b, out: (*), one shape

    add(a, b) -> a + b

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one):

* ``reference``: ``a + b`` (NumPy or CuPy, any dtype). NumPy's add runs on one thread.
* ``numba`` (``arith_numba.py``): NumPy float32/float64 arrays of one dtype, both
  C-contiguous: one loop, on numba's threads from ``PARALLEL_MIN_ELEMENTS`` values (the
  policy in ``kernels/threads.py``). One IEEE addition per element, compiled without
  fastmath: the reference's result to the bit. (32, 64, 32, 32) float32: NumPy 0.35 ms,
  PyTorch 0.22 ms on the 2-core dev VM.

``ops/elementwise.py`` sends same-shape adds of at least ``ADD_MIN_ELEMENTS`` values here;
smaller or broadcasting adds stay NumPy's ``a + b`` (there one thread is as fast, and the
registry's choice would cost more than the add).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import registry
from .threads import PARALLEL_MIN_ELEMENTS

__all__ = ["ADD", "ADD_MIN_ELEMENTS", "add_reference", "numba_can_run"]

ADD_MIN_ELEMENTS = PARALLEL_MIN_ELEMENTS


def add_reference(a, b):
    """a + b."""
    return a + b


def numba_can_run(a, b):
    """NumPy float32/float64 arrays of one dtype and shape, both C-contiguous."""
    return (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype in registry.FAST_DTYPES
            and b.dtype == a.dtype and a.shape == b.shape
            and a.flags.c_contiguous and b.flags.c_contiguous)


ADD = registry.family("add", __doc__)
ADD.register("reference", lambda: SimpleNamespace(add=add_reference))
ADD.register("numba", registry.numba_module("minidl.kernels.arith_numba"), device="cpu",
             supports=numba_can_run)
