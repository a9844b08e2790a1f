"""Depthwise conv2d by direct loops: the ``depthwise`` implementation of the conv2d family
(``kernels/conv.py``; shape letters there), for groups == C == OC (one filter per
channel, channel multiplier 1: MobileNet's 3x3 layers)::

    y[n, c, oh, ow] = sum over (kh, kw) of w[c, 0, kh, kw]
                          * xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW] + b[c]

The reference computes this as im2col (KH*KW copies of x) and C products of one row
each (1 x KH*KW times KH*KW x N*OH*OW), too thin for BLAS; the im2col copy costs more
than the arithmetic. Here numba loops (``conv_depthwise_numba.py``) read x in place,
any kernel size, stride, (asymmetric) padding and dilation:

    forward      per (n, c) plane: y = b, then y += w[c, kh, kw] * x shifted, per (kh, kw)
    grad_input   per (n, c) plane: gx = 0, then gx += w[c, kh, kw] * gy at the positions
                 (kh, kw) read: the forward's adjoint, serial within the plane (no races)
    grad_weight  per channel: gw[c, kh, kw] = sum over n, oh, ow of gy * x shifted
    grad_bias    gy summed over (N, OH, OW)

Threads: the planes (forward, input gradient) or channels (weight gradient) are the
kernels' ``prange`` loops, on numba's threads where the policy runs them parallel
(``kernels/threads.py``), each iteration writing only its own planes: the results do not
depend on the thread count.

Small maps (outputs of at most ``ACROSS_MAX_OUTPUTS`` pixels: MobileNet's 8x8 to 1x1
layers) run with the channels as the inner loop instead (``*_across``: each image's
block of channels transposed to (H*W, C), a multiply-add loop over the channels per
output and tap that falls inside the input, ``geometry.valid_taps``): the per-plane
loops above are a few iterations each there, and their set-up cost most of the time.

3x3 forwards on larger maps (outputs of more than ``ROWS_3X3_ABOVE_OUTPUTS`` pixels,
column stride 1 or 2) take ``forward_3x3`` instead: each plane copied into a
zero-bordered padded plane (its columns split by phase at stride 2), then every output's
nine products summed in one expression over whole rows (a register holds the sum where
the per-plane loops add each tap into y): 1.5-2.3x faster than those.

Forward keeps x (``('x', x)``) for the weight gradient: nothing is unfolded.

Used (``depthwise_can_run``) for NumPy float32/float64 arrays of one dtype with
groups == C == OC; anything else goes to the other implementations.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import memory, registry, threads
from .conv import plane_sums

__all__ = ["forward", "grad_output", "grad_weight", "grad_input", "grad_bias",
           "weight_source", "depthwise_can_run", "depthwise_pays",
           "ACROSS_MAX_OUTPUTS", "across_max_outputs", "ROWS_3X3_ABOVE_OUTPUTS",
           "rows_3x3_above"]

# Outputs of up to this many pixels are made with the channels as the inner loop.
# Measured at MobileNet v2's 3x3 shapes, batch 32, float32, 2 threads (ms, per-plane ->
# channels-inner kernels; forward, then both gradients): (384, 2, 2) 0.77 -> 0.14,
# 1.70 -> 0.50; (960, 1, 1) 0.64 -> 0.13, 1.10 -> 0.32; (144, 8, 8) 1.22 -> 0.57,
# 3.09 -> 1.29; (96, 16, 16) stride 2 (8x8 out) 1.09 -> 0.68, 3.55 -> 1.57; against
# that (32, 16, 16) (16x16 out) 0.72 -> 1.20, 1.70 -> 2.19.
ACROSS_MAX_OUTPUTS = 64

_ACROSS = threads.Setting(ACROSS_MAX_OUTPUTS)


def across_max_outputs(n):
    """Channels-inner kernels for outputs of up to ``n`` pixels instead of
    ``ACROSS_MAX_OUTPUTS`` (0: never); undone at the end of a ``with`` block when used as
    one. Tests use it to run both kinds of kernel."""
    return _ACROSS.set(max(0, int(n)))


# 3x3 forwards (column stride 1 or 2) with outputs of more than this many pixels take
# ``forward_3x3`` (whole rows from a padded copy of each plane), the rest the
# channels-inner or per-plane kernels. Measured at MobileNet v2's 3x3 shapes, batch 32,
# float32, 2 threads (us, per-plane / whole rows / channels inner; PyTorch): (32, 16, 16)
# 236 / 104 / 560, 142; (144, 8, 8) 427 / 183 / 347, 159; (96, 16, 16) stride 2 (8x8 out)
# 379 / 246 / 426, 173; (192, 4, 4) 304 / 110 / 103, 87; (144, 8, 8) stride 2 (4x4 out)
# 253 / 140 / 176, 117; (384, 2, 2) 284 / 133 / 82, 97.
ROWS_3X3_ABOVE_OUTPUTS = 16

_ROWS_3X3 = threads.Setting(ROWS_3X3_ABOVE_OUTPUTS)


def rows_3x3_above(n):
    """3x3 forwards with outputs of more than ``n`` pixels take ``forward_3x3`` instead of
    ``ROWS_3X3_ABOVE_OUTPUTS`` (0: all of them; None: none); undone at the end of a
    ``with`` block when used as one. Tests use it to run every kind of kernel."""
    return _ROWS_3X3.set(None if n is None else max(0, int(n)))


def _rows_3x3(geo):
    """Whether ``forward`` takes ``forward_3x3`` for ``geo``."""
    above = _ROWS_3X3.value
    return (geo.KH == geo.KW == 3 and geo.SW <= 2 and above is not None
            and geo.OH * geo.OW > above)


def _across_taps(geo):
    """``geometry.valid_taps`` of ``geo`` when its output is small enough for the
    channels-inner kernels, else None."""
    if geo.OH * geo.OW > _ACROSS.value:
        return None
    return geo.taps()


def _transposed(w):
    """wt (KH*KW, C) from w (C, 1, KH, KW): the channels-inner kernels' weight layout."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def depthwise_can_run(x, w, geo):
    """NumPy arrays of one float dtype (float32/float64), groups == C == OC (w (C, 1, KH,
    KW)), an output of at least 1x1; any kernel size, stride, padding, dilation."""
    return (geo.G == geo.C == geo.OC and geo.fits()
            and type(x) is np.ndarray and type(w) is np.ndarray
            and x.dtype in registry.FAST_DTYPES and w.dtype == x.dtype)


def depthwise_pays(geo):
    """Always, where it can run: the reference's im2col copy alone costs more than these
    loops' arithmetic (``benchmarks/RESULTS.md``)."""
    return True


def _kernels():
    """conv_depthwise_numba, imported on first use: importing this module (the registry
    does, for ``depthwise_can_run``) must not import numba."""
    from . import conv_depthwise_numba  # noqa: PLC0415
    return conv_depthwise_numba


def _geo_args(geo):
    return geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, C, OH, OW), plane by plane; saved ``('x', x)`` (``('x', None)`` without
    ``keep_for_backward``)."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    y = memory.empty(geo.out_shape, dtype=x.dtype)
    bias = np.zeros(geo.C, dtype=x.dtype) if b is None else np.ascontiguousarray(b, x.dtype)
    k, args = _kernels(), _geo_args(geo)
    if _rows_3x3(geo):
        HP = (geo.OH - 1) * geo.SH + 2 * geo.DH + 1      # the padded rows outputs read
        WQ = ((geo.OW - 1) * geo.SW + 2 * geo.DW) // geo.SW + 1
        k.forward_3x3(x, w, bias, y, threads.pieces(y.size), *args, HP, WQ, size=y.size)
    elif (taps := _across_taps(geo)) is not None:
        wt = _transposed(w)
        k.forward_across(x, wt, bias, y, threads.pieces(y.size), *taps, size=y.size)
    else:
        k.forward(x, w, bias, y, 0, geo.N * geo.C, *args, size=y.size)
    return y, ("x", x if keep_for_backward else None)


def grad_output(gy, geo, products=True):
    """gy itself (C-contiguous): the kernels read it in place."""
    return SimpleNamespace(gy=np.ascontiguousarray(gy), gY=None)


def grad_weight(g, saved, geo, need_b=True):
    """gw (C, 1, KH, KW), channel by channel, and gb (C,) when ``need_b``. ``saved``:
    forward's or ``weight_source``'s ``('x', x)``."""
    x = saved[1]
    gy = g.gy.astype(x.dtype, copy=False)
    k, args, taps = _kernels(), _geo_args(geo), _across_taps(geo)
    if taps is not None:
        gwt = memory.empty((geo.KH * geo.KW, geo.C), dtype=x.dtype)   # (K, C), transposed
        k.grad_weight_across(x, gy, gwt, threads.pieces(gy.size), *taps, size=gy.size)
        gw = np.ascontiguousarray(gwt.T).reshape(geo.OC, 1, geo.KH, geo.KW)
    else:
        gw = memory.empty((geo.OC, 1, geo.KH, geo.KW), dtype=x.dtype)
        zero = x.dtype.type(0)
        k.grad_weight(x, gy, gw, zero, 0, geo.C, *args, size=gy.size)
    return gw, (grad_bias(g, geo) if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W), plane by plane: the adjoint of forward's loops."""
    w = np.ascontiguousarray(w)
    gy = g.gy.astype(w.dtype, copy=False)
    gx = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=w.dtype)
    k, args, taps = _kernels(), _geo_args(geo), _across_taps(geo)
    if taps is not None:
        wt = _transposed(w)
        k.grad_input_across(gy, wt, gx, threads.pieces(gx.size), *taps, size=gx.size)
    else:
        k.grad_input(gy, w, gx, 0, geo.N * geo.C, *args, size=gx.size)
    return gx


def grad_bias(g, geo):
    """gb (C,): the sum of dL/dy over (N, OH, OW)."""
    return plane_sums(g.gy)


def weight_source(x, geo):
    """``('x', x)``: grad_weight reads x in place."""
    return "x", np.ascontiguousarray(x)
