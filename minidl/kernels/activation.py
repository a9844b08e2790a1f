"""The tanh and relu kernel families (``TANH``, ``RELU``): forward and backward.

tanh
----

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

relu
----
y = relu(x) with PyTorch's semantics, special values included::

    x, y, gy, gx, mask: (*), any shape; mask is bool

    relu_forward(x, mask=True)  y    = 0 where x < 0, else x
                                mask = not (x <= 0)       (None with mask=False)
    relu_backward(gy, mask)     gx   = gy where mask, else 0
    relu_inplace(x)             x    = relu(x), written into x (returns x; no mask)

* ``x < 0`` rather than ``max(x, 0)``: NaN and -0.0 pass unchanged, as in PyTorch
  (relu(NaN) = NaN, relu(-0.0) = -0.0, where ``np.maximum(-0.0, 0)`` gives +0.0).
* The mask is where the gradient passes: PyTorch's backward zeroes it where y <= 0, i.e.
  x <= 0, so the gradient at x = 0 and -0.0 is 0, and at NaN it is gy.
* The backward is a select, not ``gy * mask``: a masked-off element is +0.0 even where gy
  is NaN or inf (PyTorch's too).
* The mask (1 byte an element) is kept rather than y: an in-place change of y after the
  relu then leaves its gradient right.

Implementations:

* ``reference``: the formulas above on whole arrays (NumPy or CuPy, any dtype).
* ``numba`` (``activation_numba.py``): float32/float64 NumPy arrays; one pass each way,
  large arrays cut into ranges over the threads. The same results, bit for bit.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..backend import get_array_module
from . import cuda_kernels, registry

__all__ = ["TANH", "tanh_forward_reference", "tanh_backward_reference", "RELU",
           "relu_forward_reference", "relu_backward_reference", "relu_inplace_reference"]


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


def relu_forward_reference(x, mask=True):
    """(y, mask): y = 0 where x < 0, else x; mask = not (x <= 0), or None with mask=False."""
    xp = get_array_module(x)
    y = xp.where(x < 0, x.dtype.type(0), x)     # a zero of x's dtype: no upcast
    return y, (~(x <= 0) if mask else None)


def relu_backward_reference(gy, mask):
    """gx = gy where mask, else 0."""
    return get_array_module(gy).where(mask, gy, gy.dtype.type(0))


def relu_inplace_reference(x):
    """x = relu(x) in place; returns x."""
    x[x < 0] = 0
    return x


def _numpy_floats(*arrays):
    """numba's relu runs float32/float64 NumPy arrays (and the bool mask beside them)."""
    return type(arrays[0]) is np.ndarray and arrays[0].dtype.char in "fd" and \
        all(type(a) is np.ndarray for a in arrays[1:])


RELU = registry.family("relu", __doc__)
RELU.register("reference", lambda: SimpleNamespace(relu_forward=relu_forward_reference,
                                                   relu_backward=relu_backward_reference,
                                                   relu_inplace=relu_inplace_reference))
RELU.register("numba", registry.numba_module("minidl.kernels.activation_numba"), device="cpu",
              supports=_numpy_floats)
