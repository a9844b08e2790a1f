"""numba kernels of the tanh and relu families (``kernels/activation.py`` holds the
references and the registration): tanh forward and backward for float32 NumPy arrays, relu
forward and backward for float32 and float64 ones.

    x, y, gy, gx: (*), any shape (made contiguous); mask: (*) bool

tanh
----

tanh in float32 is a rational function of x (Eigen's ``generic_fast_tanh_float``)::

    tanh(x) ~= x                          |x| < 4e-4 (error x^2/3 < 5.3e-8; keeps -0 and
                                          subnormals exact)
    tanh(x) ~= x * P(x^2) / Q(x^2)      P of degree 6, Q of degree 3, |x| <= 7.9053
    tanh(x) ~= tanh(+-7.9053)            7.9053 < |x| <= 9.0109 (x clamped; error < 2.5e-7)
    tanh(x)  = +-1                        |x| > 9.0109, where float32 tanh rounds to 1

Its relative error is below 3e-7 (4.8 float32 ulp; measured against float64 tanh on 2e7
points in [-12, 12] and 1e6 log-spaced down to 1e-30), against 1.1e-7 for NumPy's.
Written as plain arithmetic it vectorises; ``np.tanh`` inside numba calls libm's tanhf
one element at a time, and NumPy's own SIMD tanh is slower too (RESULTS.md). NaN stays
NaN (the clamp is two comparisons that a NaN fails, and ``fastmath`` here leaves out the
no-NaN/no-inf assumptions).

The backward pass is one fused loop: NumPy's ``gy * (1 - y*y)`` makes three temporaries
(half its time, and fresh pages to fault in when they are large).

relu
----
One pass over the flattened arrays each way, instead of NumPy's two passes and two new
arrays forward (``x > 0``, ``maximum``) and a bool * float product backward::

    forward   y[i] = 0 if x[i] < 0 else x[i];   mask[i] = not (x[i] <= 0)
    backward  gx[i] = gy[i] if mask[i] else 0
    in place  x[i] = 0 if x[i] < 0 else x[i]

the reference's formulas element by element, so the results are equal bit for bit (NaN,
-0.0 and inf included: see ``kernels/activation.py``). Compiled without fastmath: its
no-NaN and no-signed-zero assumptions allow LLVM to rewrite the select as a max, which
turns -0.0 into +0.0 and may lose NaN. The compares and selects vectorise as they are.
clamp
-----
The same pattern for clamp (``kernels/activation.py`` states its semantics)::

    forward   v = lo if x[i] < lo else x[i];   y[i] = hi if v > hi else v
    backward  gx[i] = gy[i] if lo <= x[i] <= hi else 0
    in place  the forward written into x

with a missing bound passed as -inf or +inf: x < -inf and x > +inf never hold, and
-inf <= x <= +inf fails only for NaN, where a missing bound's reference fails too (its
other comparison does). Compiled without fastmath, for the same reasons as relu.

These passes only move memory; a second core adds some bandwidth, so large arrays run
the loops' parallel builds (``prange``, on numba's threads: the policy in
``kernels/threads.py``); smaller ones run inline, where waking the workers would cost
more than it saves.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from . import memory
from .activation import clamp_bound
from .threads import jit

__all__ = ["tanh_forward", "tanh_backward", "relu_forward", "relu_backward", "relu_inplace",
           "clamp_forward", "clamp_backward", "clamp_inplace"]

_f32 = np.float32
_CLAMP = _f32(7.90531110763549805)      # the rational is evaluated up to here ...
_SATURATE = _f32(9.0109)                 # ... and from here on tanh(x) rounds to 1
_TINY = _f32(4e-4)                       # below, tanh(x) = x to 5.3e-8 (x^2 / 3)
# numerator x * (A1 + A3 x^2 + ... + A13 x^12), denominator B0 + B2 x^2 + B4 x^4 + B6 x^6
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (_f32(v) for v in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (_f32(v) for v in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))
_ONE = _f32(1)

# fastmath without 'nnan' and 'ninf': NaN and inf inputs keep their meaning.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

@jit(fastmath=_FASTMATH)
def _tanh_forward_loop(x, y):
    for i in prange(x.size):
        a = x[i]
        v = _CLAMP if a > _CLAMP else a
        v = -_CLAMP if v < -_CLAMP else v
        v2 = v * v
        p = ((((((_A13 * v2 + _A11) * v2 + _A9) * v2 + _A7) * v2 + _A5) * v2 + _A3)
             * v2 + _A1) * v
        q = ((_B6 * v2 + _B4) * v2 + _B2) * v2 + _B0
        r = p / q
        r = a if abs(a) < _TINY else r
        r = _ONE if a > _SATURATE else r
        y[i] = -_ONE if a < -_SATURATE else r


@jit(fastmath=_FASTMATH)
def _tanh_backward_loop(gy, y, gx):
    for i in prange(gy.size):
        gx[i] = gy[i] * (_ONE - y[i] * y[i])


def tanh_forward(x):
    """tanh(x) for a float32 NumPy array, relative error < 3e-7 (module doc)."""
    x = np.ascontiguousarray(x)
    y = memory.empty(x.shape, dtype=np.float32)
    _tanh_forward_loop(x.reshape(-1), y.reshape(-1), size=x.size)
    return y


def tanh_backward(gy, y):
    """gy * (1 - y^2) in one pass (float32 NumPy arrays of one shape)."""
    gy = np.ascontiguousarray(gy)
    y = np.ascontiguousarray(y)
    gx = memory.empty(gy.shape, dtype=np.float32)
    _tanh_backward_loop(gy.reshape(-1), y.reshape(-1), gx.reshape(-1), size=gy.size)
    return gx


# ----------------------------------------------------------------------------- relu

@jit(fastmath=False)
def _relu_forward_loop(x, y, mask, zero):
    for i in prange(x.size):
        v = x[i]
        y[i] = zero if v < zero else v       # -0.0 and NaN pass unchanged
        mask[i] = not v <= zero              # true for x > 0 and for NaN (PyTorch)


@jit(fastmath=False)
def _relu_mask_free_loop(x, y, zero):
    for i in prange(x.size):
        v = x[i]
        y[i] = zero if v < zero else v


@jit(fastmath=False)
def _relu_inplace_loop(x, zero):
    # one array argument: given x twice (as y too), LLVM cannot rule out that the two
    # overlap and the serial build runs unvectorised (2M values: 0.32 against 0.09 ms)
    for i in prange(x.size):
        v = x[i]
        x[i] = zero if v < zero else v


@jit(fastmath=False)
def _relu_backward_loop(gy, mask, gx, zero):
    for i in prange(gy.size):
        gx[i] = gy[i] if mask[i] else zero   # a select: +0 where masked, even for NaN gy


def relu_forward(x, mask=True):
    """(y, mask) for a float32/float64 NumPy array x: ``relu_forward_reference``, in one
    pass (mask=False: (y, None), the mask is not written)."""
    x = np.ascontiguousarray(x)
    y = memory.empty(x.shape, dtype=x.dtype)
    zero = x.dtype.type(0)     # in x's dtype: a float64 literal would upcast float32 loops
    if not mask:
        _relu_mask_free_loop(x.reshape(-1), y.reshape(-1), zero, size=x.size)
        return y, None
    m = memory.empty(x.shape, dtype=np.bool_)
    _relu_forward_loop(x.reshape(-1), y.reshape(-1), m.reshape(-1), zero, size=x.size)
    return y, m


def relu_backward(gy, mask):
    """gx = gy where mask, else 0 (gy float32/float64, mask bool, one shape), one pass."""
    gy = np.ascontiguousarray(gy)
    mask = np.ascontiguousarray(mask)
    gx = memory.empty(gy.shape, dtype=gy.dtype)
    _relu_backward_loop(gy.reshape(-1), mask.reshape(-1), gx.reshape(-1), gy.dtype.type(0),
                        size=gy.size)
    return gx


def relu_inplace(x):
    """x = relu(x) written into the float32/float64 NumPy array x; returns x. A
    non-contiguous x is computed in a contiguous copy and copied back."""
    flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    _relu_inplace_loop(flat, x.dtype.type(0), size=flat.size)
    if not x.flags.c_contiguous:
        x[...] = flat.reshape(x.shape)
    return x


# ----------------------------------------------------------------------------- clamp

@jit(fastmath=False)
def _clamp_forward_loop(x, y, lo, hi):
    for i in prange(x.size):
        v = x[i]
        v = lo if v < lo else v               # NaN and -0.0 (at lo = 0) pass unchanged
        y[i] = hi if v > hi else v


@jit(fastmath=False)
def _clamp_inplace_loop(x, lo, hi):
    for i in prange(x.size):                  # one array argument, as _relu_inplace_loop
        v = x[i]
        v = lo if v < lo else v
        x[i] = hi if v > hi else v


@jit(fastmath=False)
def _clamp_backward_loop(gy, x, gx, lo, hi, zero):
    for i in prange(gy.size):
        v = x[i]
        gx[i] = gy[i] if (v >= lo) & (v <= hi) else zero   # a select, bounds included


def _bounds(x, lo, hi):
    """(lo, hi) in x's dtype, a missing one as -inf / +inf (module docstring)."""
    t = x.dtype.type
    lo, hi = clamp_bound(lo, x), clamp_bound(hi, x)
    return t(-np.inf) if lo is None else lo, t(np.inf) if hi is None else hi


def clamp_forward(x, lo, hi):
    """y = clamp(x, lo, hi) for a float32/float64 NumPy array: ``clamp_forward_reference``
    in one pass."""
    x = np.ascontiguousarray(x)
    y = memory.empty(x.shape, dtype=x.dtype)
    _clamp_forward_loop(x.reshape(-1), y.reshape(-1), *_bounds(x, lo, hi), size=x.size)
    return y


def clamp_inplace(x, lo, hi):
    """x = clamp(x, lo, hi) written into the float32/float64 NumPy array x; returns x (a
    non-contiguous x is computed in a contiguous copy and copied back)."""
    flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    _clamp_inplace_loop(flat, *_bounds(x, lo, hi), size=flat.size)
    if not x.flags.c_contiguous:
        x[...] = flat.reshape(x.shape)
    return x


def clamp_backward(gy, x, lo, hi):
    """gx = gy where lo <= x <= hi, else 0 (float32/float64 NumPy arrays of one shape and
    dtype), one pass."""
    gy = np.ascontiguousarray(gy)
    x = np.ascontiguousarray(x)
    gx = memory.empty(gy.shape, dtype=gy.dtype)
    _clamp_backward_loop(gy.reshape(-1), x.reshape(-1), gx.reshape(-1), *_bounds(x, lo, hi),
                         gy.dtype.type(0), size=gy.size)
    return gx
