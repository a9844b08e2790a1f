"""numba kernels of the tanh family (``kernels/activation.py`` holds the reference and the
registration): tanh forward and backward for float32 NumPy arrays.

    x, y, gy, gx: (*), any shape (made contiguous)

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
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .threads import jit

__all__ = ["tanh_forward", "tanh_backward"]

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
    y = np.empty(x.shape, dtype=np.float32)
    _tanh_forward_loop(x.reshape(-1), y.reshape(-1), size=x.size)
    return y


def tanh_backward(gy, y):
    """gy * (1 - y^2) in one pass (float32 NumPy arrays of one shape)."""
    gy = np.ascontiguousarray(gy)
    y = np.ascontiguousarray(y)
    gx = np.empty(gy.shape, dtype=np.float32)
    _tanh_backward_loop(gy.reshape(-1), y.reshape(-1), gx.reshape(-1), size=gy.size)
    return gx
