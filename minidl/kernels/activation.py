"""The tanh kernel family: forward and backward of y = tanh(x).

    x, y, gy, gx: (*), any shape

    tanh_forward(x)       y  = tanh(x)
    tanh_backward(gy, y)  gx = gy * (1 - y^2)          (tanh' = 1 - tanh^2: only y is kept)

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one):

* ``reference``: the two formulas above with the array library's own tanh, on either
  device; exact in float64, where gradient checks need ~1e-10.
* ``numba`` (``activation_numba.py``): float32 NumPy arrays only; a vectorised rational
  tanh (relative error < 3e-7) and a one-pass backward with no temporaries.
* ``cuda``: the backward as one fused CUDA kernel (``cuda_kernels.tanh_backward``, instead
  of three); the forward is CuPy's tanh.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..backend import get_array_module
from . import cuda_kernels, registry

__all__ = ["TANH", "tanh_forward_reference", "tanh_backward_reference"]


def tanh_forward_reference(x):
    """y = tanh(x)."""
    return get_array_module(x).tanh(x)


def tanh_backward_reference(gy, y):
    """gx = gy * (1 - y^2)."""
    return gy * (1 - y * y)


TANH = registry.family("tanh", __doc__)
TANH.register("reference", lambda: SimpleNamespace(tanh_forward=tanh_forward_reference,
                                                   tanh_backward=tanh_backward_reference))
TANH.register("numba", registry.numba_module("minidl.kernels.activation_numba"), device="cpu",
              supports=lambda *arrays: all(type(a) is np.ndarray and a.dtype == np.float32
                                           for a in arrays))
TANH.register("cuda", lambda: SimpleNamespace(tanh_forward=tanh_forward_reference,
                                              tanh_backward=cuda_kernels.tanh_backward),
              device="cuda", supports=cuda_kernels.available)
