"""The tanh, relu and clamp kernel families (``TANH``, ``RELU``, ``CLAMP``): forward and
backward.

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

clamp
-----
y = clamp(x, lo, hi) with PyTorch's semantics (ReLU6 is clamp(x, 0, 6)); either bound may
be None, a bound is a number (converted to a floating x's dtype, as PyTorch keeps the
tensor's dtype)::

    x, y, gy, gx: (*), any shape

    clamp_forward(x, lo, hi)       y  = lo where x < lo, else x; then hi where that is > hi
    clamp_backward(gy, x, lo, hi)  gx = gy where lo <= x <= hi, else 0
    clamp_inplace(x, lo, hi)       x  = clamp(x, lo, hi), written into x (returns x)

* NaN passes unchanged (both comparisons fail) and -0.0 stays -0.0 at lo = 0 (it is not
  below 0), as in PyTorch. ``np.clip`` agrees with two bounds, not with one (its
  ``maximum`` turns -0.0 into +0.0), hence the explicit selects.
* lo > hi: every element becomes hi (PyTorch's rule).
* The gradient passes at the bounds themselves (as PyTorch's clamp; its relu6 and
  hardtanh exclude them) and is a select: +0.0 where the value was clamped or x is NaN,
  even for a NaN or inf gy.

Implementations:

* ``reference``: the selects above on whole arrays (NumPy or CuPy, any dtype).
* ``numba`` (``activation_numba.py``): float32/float64 NumPy arrays, one pass each way
  (``np.clip`` made two passes and the backward's mask three temporaries), large arrays
  over the threads. The same results, bit for bit; a missing bound runs as -inf or +inf,
  which no comparison can tell apart from none.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..backend import get_array_module
from . import cuda_kernels, registry

__all__ = ["TANH", "tanh_forward_reference", "tanh_backward_reference", "RELU",
           "relu_forward_reference", "relu_backward_reference", "relu_inplace_reference",
           "CLAMP", "clamp_bound", "clamp_forward_reference", "clamp_backward_reference",
           "clamp_inplace_reference"]


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


def clamp_bound(bound, x):
    """A clamp bound as the kernels use it: None stays None; a number is converted to a
    floating ``x``'s dtype (float32 x stays float32 whatever the bound's type, as in
    PyTorch), left as it is for an integer x (whose result NumPy's rules then promote)."""
    if bound is None or x.dtype.kind != "f":
        return bound
    if -65504.0 <= bound <= 65504.0:   # fits every float dtype (float16's largest): the
        return x.dtype.type(bound)     # usual case, without errstate's cost (a few us a call)
    with np.errstate(over="ignore"):   # 1e300 for float32 x: inf, as the comparison means
        return x.dtype.type(bound)


def clamp_forward_reference(x, lo, hi):
    """y = lo where x < lo, else x; then hi where that is > hi (either bound may be None)."""
    xp = get_array_module(x)
    lo, hi = clamp_bound(lo, x), clamp_bound(hi, x)
    y = x if lo is None else xp.where(x < lo, lo, x)
    return y if hi is None else xp.where(y > hi, hi, y)


def clamp_backward_reference(gy, x, lo, hi):
    """gx = gy where lo <= x <= hi (bounds included), else 0: a select."""
    xp = get_array_module(gy)
    lo, hi = clamp_bound(lo, x), clamp_bound(hi, x)
    if lo is None:                 # clamp() asks for one bound at least
        inside = x <= hi
    else:
        inside = x >= lo
        if hi is not None:
            inside &= x <= hi
    return xp.where(inside, gy, gy.dtype.type(0))


def clamp_inplace_reference(x, lo, hi):
    """x = clamp(x, lo, hi) in place; returns x."""
    x[...] = clamp_forward_reference(x, lo, hi)
    return x


CLAMP = registry.family("clamp", __doc__)
CLAMP.register("reference", lambda: SimpleNamespace(clamp_forward=clamp_forward_reference,
                                                    clamp_backward=clamp_backward_reference,
                                                    clamp_inplace=clamp_inplace_reference))
CLAMP.register("numba", registry.numba_module("minidl.kernels.activation_numba"), device="cpu",
               supports=lambda *arrays: _numpy_floats(*arrays)
               and all(a.dtype == arrays[0].dtype for a in arrays))
