"""Pooling windows: max and average pooling, fixed and adaptive, forward and backward.

Raw arrays in, raw arrays out, no autograd (``minidl.ops.pool`` wraps these in Functions).

Shape letters used throughout::

    N   batch size                 C   channels (pooling treats every (n, c) plane alike)
    H   input height               W   input width
    KH  kernel height              KW  kernel width
    SH  stride along H             SW  stride along W
    PH  padding along H            PW  padding along W (each side)
    DH  dilation along H           DW  dilation along W
    OH  output height              OW  output width
    K   KH * KW, the number of taps in one window

A window's taps: output pixel ``(oh, ow)`` reads the input at rows
``oh*SH - PH + kh*DH`` (``kh = 0 .. KH-1``) and columns ``ow*SW - PW + kw*DW``.
Taps outside the input are padding: ``-inf`` for max pooling, ``0`` for average pooling.

Output size (PyTorch's rule; ``ceil_mode`` rounds up, but the last window must still
start inside the input or its left padding)::

    OH = floor((H + 2 PH - DH (KH - 1) - 1 + (SH - 1 if ceil_mode else 0)) / SH) + 1
    if ceil_mode and (OH - 1) * SH >= H + PH:  OH -= 1

The argmax of a max-pooling window is stored as the tap number ``k = kh*KW + kw``, a
small integer (uint8 while K <= 256, int32 above): 8x less memory than int64 indices,
and the backward pass scatters with the same strided slices the forward pass gathered
with. PyTorch's flat indices (``return_indices``) are computed from it on request.

Two implementations behind one signature
----------------------------------------
* ``*_reference``: NumPy (or CuPy) with a Python loop over the K kernel taps only; each
  step handles one strided slice of the padded input for the whole batch and all
  channels at once (the Chainer way). Never a loop over images or output pixels, never
  ``np.add.at``. The definition the fast paths are tested against.
* ``*_numba``: compiled loops, parallel over (n, c) planes (each thread owns whole
  planes, so the backward scatter needs no atomics and is deterministic), no padded copy.
  A dedicated kernel for the 2x2 stride-2 window without padding (LeNet, VGG, most CNNs).
  numba is imported on first use only; the kernels are cached on disk (``cache=True``,
  one specialisation per kernel and dtype). Used automatically for NumPy float32/float64
  inputs (``impl='auto'``); small inputs run them on one thread (see ``_run``).
  Measured on a 2-core EPYC against PyTorch 2.13 with 2 threads each, max_pool2d forward
  + backward through autograd: 0.2x PyTorch's time at LeNet's 2x2 pools, 0.85x at the
  ResNet stem (3x3, stride 2, padding 1); the reference is 2-6x PyTorch's time.

* On the GPU, ``cuda_kernels``: one CUDA thread per output window forward, and
  gather-style backward kernels, one thread per input pixel summing the gradients of the
  windows that read it (deterministic, no atomics).

The dispatchers (``max_pool2d_forward`` ...) take ``impl``: ``None`` (the module default,
'auto' unless ``force_impl`` says otherwise), ``'auto'``, ``'numpy'``, ``'numba'`` or
``'cuda'``.

Adaptive pooling (output size fixed, windows ``start = floor(i*H/OH)``,
``end = ceil((i+1)*H/OH)``, of varying size and possibly overlapping) is separable: a
rectangle's max is the max over rows of the max over columns, and its average is a
row-averaging matrix times the plane times a column-averaging matrix.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from . import NUMBA_PARALLEL, cuda_kernels
from ._dispatch import FAST_DTYPES, ImplSwitch, numba_available  # noqa: F401 - numba_available is public

__all__ = [
    "Window2d", "pool_output_size", "make_window",
    "max_pool2d_forward", "max_pool2d_backward", "max_pool2d_backward_split",
    "max_pool2d_indices",
    "max_pool2d_forward_reference", "max_pool2d_backward_reference",
    "max_pool2d_forward_numba", "max_pool2d_backward_numba",
    "avg_pool2d_forward", "avg_pool2d_backward", "avg_pool2d_divisor",
    "avg_pool2d_forward_reference", "avg_pool2d_backward_reference",
    "avg_pool2d_forward_numba", "avg_pool2d_backward_numba",
    "adaptive_windows", "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
    "numba_available", "force_impl",
]


# ----------------------------------------------------------------------------- geometry


class Window2d(NamedTuple):
    """The geometry of a 2-D pooling: kernel, stride, padding, dilation, input and output."""

    KH: int
    KW: int
    SH: int
    SW: int
    PH: int
    PW: int
    DH: int
    DW: int
    H: int
    W: int
    OH: int
    OW: int

    @property
    def K(self):
        return self.KH * self.KW

    @property
    def padded_hw(self):
        """(HP, WP): the input plus padding, extended at the bottom/right when a ceil_mode
        window runs past the padded edge, so every tap of every window is inside."""
        HP = max(self.H + 2 * self.PH, (self.OH - 1) * self.SH + (self.KH - 1) * self.DH + 1)
        WP = max(self.W + 2 * self.PW, (self.OW - 1) * self.SW + (self.KW - 1) * self.DW + 1)
        return HP, WP

    def needs_padding(self):
        return self.padded_hw != (self.H, self.W)

    def tap_slices(self):
        """(k, kh, kw, (rows, cols)) for every tap: slices of the padded input that gather
        tap ``(kh, kw)`` of every window at once, an (..., OH, OW) strided view."""
        for kh in range(self.KH):
            r0 = kh * self.DH
            rows = slice(r0, r0 + (self.OH - 1) * self.SH + 1, self.SH)
            for kw in range(self.KW):
                c0 = kw * self.DW
                cols = slice(c0, c0 + (self.OW - 1) * self.SW + 1, self.SW)
                yield kh * self.KW + kw, kh, kw, (Ellipsis, rows, cols)

    def is_2x2_stride2(self):
        """The LeNet/VGG window: 2x2, stride 2, no padding, no dilation, no ceil overrun."""
        return (self.KH, self.KW, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW) == \
            (2, 2, 2, 2, 0, 0, 1, 1) and 2 * self.OH <= self.H and 2 * self.OW <= self.W


def pool_output_size(L, K, S, P, D, ceil_mode):
    """Output length of a pooling along one axis (PyTorch's formula, see the module doc)."""
    span = L + 2 * P - D * (K - 1) - 1
    out = (span + (S - 1 if ceil_mode else 0)) // S + 1
    if ceil_mode and (out - 1) * S >= L + P:
        out -= 1
    return out


def make_window(in_hw, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """A ``Window2d`` from (H, W) and (KH, KW), (SH, SW), (PH, PW), (DH, DW) pairs."""
    H, W = in_hw
    OH = pool_output_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    return Window2d(kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                    dilation[0], dilation[1], H, W, OH, OW)


def _pad(x, win, value):
    """x (N, C, H, W) placed into an (N, C, HP, WP) array filled with ``value``."""
    if not win.needs_padding():
        return x
    xp = get_array_module(x)
    HP, WP = win.padded_hw
    out = xp.full(x.shape[:-2] + (HP, WP), value, dtype=x.dtype)
    out[..., win.PH:win.PH + win.H, win.PW:win.PW + win.W] = x
    return out


def _crop(xpad, win):
    """The (N, C, H, W) input part of a padded (N, C, HP, WP) array (contiguous)."""
    if not win.needs_padding():
        return xpad
    xp = get_array_module(xpad)
    return xp.ascontiguousarray(xpad[..., win.PH:win.PH + win.H, win.PW:win.PW + win.W])


def _lowest(dtype):
    """The padding value of max pooling: -inf, or the smallest integer."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    if dtype.kind == "b":
        return False
    raise TypeError(f"max pooling: unsupported dtype {dtype}")


def _tap_dtype(win):
    """Smallest unsigned integer type that holds a tap number 0 .. K-1."""
    return np.uint8 if win.K <= 256 else np.int32


def _axis_taps(xp, O, S, P, D, L, K):
    """For one axis: ``first`` (O,) the first tap of each window inside the input, and
    ``valid`` (K, O) whether tap k of window o is inside the input."""
    start = xp.arange(O) * S - P                       # (O,) input position of tap 0
    pos = start[None, :] + xp.arange(K)[:, None] * D   # (K, O)
    valid = (pos >= 0) & (pos < L)
    first = (xp.maximum(-start, 0) + D - 1) // D
    return first, valid


# ----------------------------------------------------------------------------- max pooling


def max_pool2d_forward_reference(x, win):
    """Max over each window, and the tap that holds it.

    x: (N, C, H, W). Returns y (N, C, OH, OW) of x's dtype and arg (N, C, OH, OW), the tap
    number ``kh*KW + kw`` (uint8 when K <= 256) of the window's maximum.

    Ties and NaN follow PyTorch's CPU kernel: taps are scanned in row-major order and a
    tap replaces the running maximum when it is strictly greater, or NaN. So the FIRST of
    equal maxima wins, a NaN anywhere makes the output NaN (the last NaN's tap), and a
    window of -inf values points at its first tap inside the input (never at padding).
    """
    xp = get_array_module(x)
    xpad = _pad(x, win, _lowest(x.dtype))
    check_nan = x.dtype.kind == "f"
    tap_t = _tap_dtype(win)
    first_h, _ = _axis_taps(xp, win.OH, win.SH, win.PH, win.DH, win.H, win.KH)
    first_w, _ = _axis_taps(xp, win.OW, win.SW, win.PW, win.DW, win.W, win.KW)
    # Where tap 0 lies in the padding, the running maximum starts at -inf (tap 0's value)
    # while arg starts at the window's first tap inside the input: a window whose inputs
    # are all -inf then points at that first input, as in PyTorch.
    first = (first_h[:, None] * win.KW + first_w[None, :]).astype(tap_t)
    y = arg = None
    for k, _kh, _kw, sl in win.tap_slices():
        v = xpad[sl]
        if y is None:
            y = v.copy()
            arg = xp.empty(y.shape, dtype=tap_t)
            arg[...] = first
            continue
        upd = v > y
        if check_nan:
            upd |= xp.isnan(v)
        xp.copyto(y, v, where=upd)
        xp.copyto(arg, xp.asarray(k, dtype=tap_t), where=upd)
    return y, arg


def max_pool2d_backward_reference(gy, arg, win):
    """Route each window's gradient to the tap that held its maximum.

    gy, arg: (N, C, OH, OW). Returns gx (N, C, H, W): gx[tap] += gy for each window.
    Overlapping windows (stride < kernel) add up where they share the maximum.
    One strided slice per tap: within one tap the windows touch distinct positions.
    """
    xp = get_array_module(gy)
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for k, _kh, _kw, sl in win.tap_slices():
        gxpad[sl] += gy * (arg == k)
    return _crop(gxpad, win)


def max_pool2d_backward_split(gy, x, y, win):
    """tie='split': share each window's gradient evenly among the taps equal to its max.

    gy, y: (N, C, OH, OW); x: (N, C, H, W). Returns gx (N, C, H, W). A window with m
    equal maxima gives gy/m to each; the total (sum of gx) equals the total of gy.
    Padding taps never count, even when the maximum is -inf. A NaN maximum is shared
    among the window's NaN taps. (Reference path only: ties are not the hot path.)
    """
    xp = get_array_module(gy)
    xpad = _pad(x, win, _lowest(x.dtype))
    _, valid_h = _axis_taps(xp, win.OH, win.SH, win.PH, win.DH, win.H, win.KH)
    _, valid_w = _axis_taps(xp, win.OW, win.SW, win.PW, win.DW, win.W, win.KW)
    nan_y = xp.isnan(y) if y.dtype.kind == "f" else None
    if nan_y is not None and not bool(nan_y.any()):
        nan_y = None

    def is_max(kh, kw, sl):
        v = xpad[sl]
        eq = v == y
        if nan_y is not None:
            eq |= xp.isnan(v) & nan_y
        return eq & valid_h[kh][:, None] & valid_w[kw][None, :]

    count = xp.zeros(y.shape, dtype=gy.dtype)
    for _k, kh, kw, sl in win.tap_slices():
        count += is_max(kh, kw, sl)
    share = gy / count
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for _k, kh, kw, sl in win.tap_slices():
        gxpad[sl] += share * is_max(kh, kw, sl)
    return _crop(gxpad, win)


def max_pool2d_indices(arg, win):
    """PyTorch's ``return_indices``: the flat index ``ih*W + iw`` of each window's maximum
    within its (H, W) plane, int64 (N, C, OH, OW), from the tap numbers ``arg``."""
    xp = get_array_module(arg)
    k = arg.astype(xp.int64)
    kh, kw = k // win.KW, k % win.KW
    rows = (xp.arange(win.OH, dtype=xp.int64) * win.SH - win.PH)[:, None]
    cols = (xp.arange(win.OW, dtype=xp.int64) * win.SW - win.PW)[None, :]
    return (rows + kh * win.DH) * win.W + (cols + kw * win.DW)


# ----------------------------------------------------------------------------- avg pooling


def avg_pool2d_divisor(win, count_include_pad=True, divisor_override=None):
    """The (OH, OW) divisor of each window, PyTorch's rule.

    A window's extent is clipped to the padded input ``[-P, L + P)`` (a ceil_mode window
    can run past it); ``count_include_pad`` divides by that clipped extent, padding
    included; otherwise by the number of input taps only. ``divisor_override`` replaces
    both. The rule is separable: divisor = rows(oh) * cols(ow).
    """
    def axis(O, S, P, K, L):
        start = np.arange(O) * S - P
        end = np.minimum(start + K, L + P)
        with_pad = end - start
        inside = np.minimum(end, L) - np.maximum(start, 0)
        return with_pad, inside

    if divisor_override is not None:
        return np.full((win.OH, win.OW), divisor_override, dtype=np.int64)
    h_pad, h_in = axis(win.OH, win.SH, win.PH, win.KH, win.H)
    w_pad, w_in = axis(win.OW, win.SW, win.PW, win.KW, win.W)
    if count_include_pad:
        return h_pad[:, None] * w_pad[None, :]
    return h_in[:, None] * w_in[None, :]


def avg_pool2d_forward_reference(x, win, divisor):
    """Sum over each window (zero padding) divided by ``divisor`` (OH, OW).

    x: (N, C, H, W) float. Returns y (N, C, OH, OW).
    """
    xp = get_array_module(x)
    xpad = _pad(x, win, 0)
    s = None
    for _k, _kh, _kw, sl in win.tap_slices():
        if s is None:
            s = xpad[sl].copy()
        else:
            s += xpad[sl]
    return s / xp.asarray(divisor, dtype=x.dtype)


def avg_pool2d_backward_reference(gy, win, divisor):
    """Every tap of a window gets the window's gradient divided by its divisor.

    gy: (N, C, OH, OW). Returns gx (N, C, H, W); overlapping windows add up, and the
    share that falls on padding is dropped.
    """
    xp = get_array_module(gy)
    share = gy / xp.asarray(divisor, dtype=gy.dtype)
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for _k, _kh, _kw, sl in win.tap_slices():
        gxpad[sl] += share
    return _crop(gxpad, win)


# ----------------------------------------------------------------------------- numba kernels
# Plain Python functions here, compiled by ``_kernel(name)`` on first use, so importing
# this module does not import numba. Arrays are C-contiguous (P, H, W) planes,
# P = N*C; each prange iteration owns one plane (no atomics, deterministic).
# Max pooling is compiled WITHOUT fastmath: fastmath assumes no NaN and no inf, which
# would break NaN propagation and the -inf windows. Average pooling uses it. Constants
# (zero, 1/4) are passed in the array's dtype: a float64 literal would turn a float32
# loop into float64 arithmetic.


def _nb_max_fwd_2x2_plane(x, y, arg):
    """One (H, W) plane -> (OH, OW) maxima and their taps 0..3, for the 2x2/2 window."""
    OH, OW = y.shape
    for oh in range(OH):
        r0 = x[2 * oh]
        r1 = x[2 * oh + 1]
        for ow in range(OW):
            c = 2 * ow
            best = r0[c]
            k = 0
            v = r0[c + 1]
            if v > best or v != v:
                best = v
                k = 1
            v = r1[c]
            if v > best or v != v:
                best = v
                k = 2
            v = r1[c + 1]
            if v > best or v != v:
                best = v
                k = 3
            y[oh, ow] = best
            arg[oh, ow] = k


def _nb_max_fwd_2x2(x, y, arg):
    for p in _prange(x.shape[0]):
        _nb_max_fwd_2x2_plane(x[p], y[p], arg[p])


def _nb_max_bwd_2x2_plane(gy, arg, gx, zero):
    """Write each window's gradient to its argmax tap and zero to the other three.

    Branch-free: zero all four taps, then store at the address the tap number gives
    (row 2*oh + k//2, column 2*ow + k%2). Four ``g if k == t else 0`` selects compiled
    to unpredictable branches and ran about 4x slower on random data."""
    OH, OW = gy.shape
    H, W = gx.shape
    for oh in range(OH):
        r0 = gx[2 * oh]
        r1 = gx[2 * oh + 1]
        for ow in range(OW):
            c = 2 * ow
            r0[c] = zero
            r0[c + 1] = zero
            r1[c] = zero
            r1[c + 1] = zero
            k = arg[oh, ow]
            gx[2 * oh + (k >> 1), c + (k & 1)] = gy[oh, ow]
        for iw in range(2 * OW, W):  # an odd last column is in no window
            r0[iw] = zero
            r1[iw] = zero
    for ih in range(2 * OH, H):      # nor is an odd last row
        for iw in range(W):
            gx[ih, iw] = zero


def _nb_max_bwd_2x2(gy, arg, gx, zero):
    for p in _prange(gy.shape[0]):
        _nb_max_bwd_2x2_plane(gy[p], arg[p], gx[p], zero)


def _nb_max_fwd(x, y, arg, KH, KW, SH, SW, PH, PW, DH, DW):
    # Every window must hold at least one input tap (the op layer checks it), so
    # i0 < i1 and j0 < j1 below and the first read is in bounds.
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in _prange(P):
        for oh in range(OH):
            h0 = oh * SH - PH
            i0 = 0 if h0 >= 0 else (-h0 + DH - 1) // DH       # first tap row inside
            i1 = min(KH, (H - 1 - h0) // DH + 1)              # one past the last
            for ow in range(OW):
                w0 = ow * SW - PW
                j0 = 0 if w0 >= 0 else (-w0 + DW - 1) // DW
                j1 = min(KW, (W - 1 - w0) // DW + 1)
                best = x[p, h0 + i0 * DH, w0 + j0 * DW]
                k = i0 * KW + j0
                for i in range(i0, i1):
                    row = x[p, h0 + i * DH]
                    for j in range(j0, j1):
                        v = row[w0 + j * DW]
                        if v > best or v != v:
                            best = v
                            k = i * KW + j
                y[p, oh, ow] = best
                arg[p, oh, ow] = k


def _nb_max_bwd(gy, arg, gx, KW, SH, SW, PH, PW, DH, DW):
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    for p in _prange(P):
        for ih in range(H):
            for iw in range(W):
                gx[p, ih, iw] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = arg[p, oh, ow]
                i = k // KW
                j = k - i * KW
                gx[p, oh * SH - PH + i * DH, ow * SW - PW + j * DW] += gy[p, oh, ow]


def _nb_avg_fwd_2x2_plane(x, y, quarter):
    OH, OW = y.shape
    for oh in range(OH):
        r0 = x[2 * oh]
        r1 = x[2 * oh + 1]
        out = y[oh]
        for ow in range(OW):
            c = 2 * ow
            out[ow] = (r0[c] + r0[c + 1] + r1[c] + r1[c + 1]) * quarter


def _nb_avg_fwd_2x2(x, y, quarter):
    for p in _prange(x.shape[0]):
        _nb_avg_fwd_2x2_plane(x[p], y[p], quarter)


def _nb_avg_bwd_2x2_plane(gy, gx, quarter):
    OH, OW = gy.shape
    H, W = gx.shape
    for oh in range(OH):
        r0 = gx[2 * oh]
        r1 = gx[2 * oh + 1]
        g = gy[oh]
        for ow in range(OW):
            q = g[ow] * quarter
            c = 2 * ow
            r0[c] = q
            r0[c + 1] = q
            r1[c] = q
            r1[c + 1] = q
        for iw in range(2 * OW, W):
            r0[iw] = 0
            r1[iw] = 0
    for ih in range(2 * OH, H):
        for iw in range(W):
            gx[ih, iw] = 0


def _nb_avg_bwd_2x2(gy, gx, quarter):
    for p in _prange(gy.shape[0]):
        _nb_avg_bwd_2x2_plane(gy[p], gx[p], quarter)


def _nb_avg_fwd(x, y, rdiv, zero, KH, KW, SH, SW, PH, PW):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in _prange(P):
        for oh in range(OH):
            h0 = oh * SH - PH
            ha = max(h0, 0)
            hb = min(h0 + KH, H)
            for ow in range(OW):
                w0 = ow * SW - PW
                wa = max(w0, 0)
                wb = min(w0 + KW, W)
                s = zero  # x's dtype (a float32 sum for float32, as PyTorch)
                for ih in range(ha, hb):
                    for iw in range(wa, wb):
                        s += x[p, ih, iw]
                y[p, oh, ow] = s * rdiv[oh, ow]


def _nb_avg_bwd(gy, gx, rdiv, KH, KW, SH, SW, PH, PW):
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    for p in _prange(P):
        for ih in range(H):
            for iw in range(W):
                gx[p, ih, iw] = 0
        for oh in range(OH):
            h0 = oh * SH - PH
            ha = max(h0, 0)
            hb = min(h0 + KH, H)
            for ow in range(OW):
                w0 = ow * SW - PW
                wa = max(w0, 0)
                wb = min(w0 + KW, W)
                g = gy[p, oh, ow] * rdiv[oh, ow]
                for ih in range(ha, hb):
                    for iw in range(wa, wb):
                        gx[p, ih, iw] += g


_prange = range       # replaced by numba.prange once numba is imported
_compiled = {}        # kernel name -> numba dispatcher
_numba_error = None   # why importing numba failed
_NO_FASTMATH = ("_nb_max_fwd_2x2", "_nb_max_bwd_2x2", "_nb_max_fwd", "_nb_max_bwd")
# The 2x2 kernels call a serial per-plane function from their prange loop: written
# inline in the prange body the same loops ran 3-4x slower per thread (numba's parfor
# lowering kept LLVM from optimising them), measured on the LeNet shapes.
_PLANE_FUNCTIONS = {name: name + "_plane" for name in (
    "_nb_max_fwd_2x2", "_nb_max_bwd_2x2", "_nb_avg_fwd_2x2", "_nb_avg_bwd_2x2")}


def _kernel(name):
    """The compiled numba kernel ``name`` (compiled, or loaded from the disk cache, once)."""
    global _prange, _numba_error
    fn = _compiled.get(name)
    if fn is None:
        if _numba_error is not None:
            raise RuntimeError(f"pooling: the numba fast path needs numba ({_numba_error})")
        try:
            import numba  # noqa: PLC0415 - deliberately lazy
        except Exception as exc:  # ImportError, or a broken LLVM install
            _numba_error = exc
            raise RuntimeError(f"pooling: the numba fast path needs numba ({exc})") from exc
        _prange = numba.prange
        opts = dict(cache=True, error_model="numpy", nogil=True,
                    fastmath=name not in _NO_FASTMATH)
        plane = _PLANE_FUNCTIONS.get(name)
        if plane is not None and not isinstance(globals()[plane], numba.core.dispatcher
                                                .Dispatcher):
            # the driver below looks the plane function up as a global when it compiles
            globals()[plane] = numba.njit(**opts)(globals()[plane])
        fn = numba.njit(parallel=True, **opts)(globals()[name])
        _compiled[name] = fn
    return fn


# The kernels are compiled parallel (one cached build) but run on the calling thread only
# unless MINIDL_NUMBA_PARALLEL=1 (the policy and its measurements: kernels/__init__.py),
# and even then below this many input elements: waking the worker threads costs more than
# the work (about 5-20 us on an idle machine, up to a scheduler time slice on a busy one).
PARALLEL_MIN_ELEMENTS = 1 << 15


def _run(name, n_elements, *args):
    """Call kernel ``name``, in parallel only when allowed and the problem is big enough."""
    fn = _kernel(name)
    if NUMBA_PARALLEL and n_elements >= PARALLEL_MIN_ELEMENTS:
        return fn(*args)
    import numba  # noqa: PLC0415 - already imported by _kernel
    threads = numba.get_num_threads()   # thread-local in numba; PyTorch's count is untouched
    if threads == 1:
        return fn(*args)
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(threads)




def _planes(a):
    """(N, C, H, W) -> C-contiguous (N*C, H, W) view (or copy)."""
    return np.ascontiguousarray(a).reshape((-1,) + a.shape[-2:])


def max_pool2d_forward_numba(x, win):
    """Same as ``max_pool2d_forward_reference``, compiled (NumPy float32/float64, K <= 256)."""
    if x.dtype not in FAST_DTYPES or win.K > 256:
        raise TypeError(f"max_pool2d_forward_numba: expected float32/float64 and at most "
                        f"256 taps, got {x.dtype} and {win.K} taps")
    lead = x.shape[:-2]
    xs = _planes(x)
    y = np.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.uint8)
    if win.is_2x2_stride2():
        _run("_nb_max_fwd_2x2", xs.size, xs, y, arg)
    else:
        _run("_nb_max_fwd", xs.size, xs, y, arg, win.KH, win.KW, win.SH, win.SW, win.PH,
             win.PW, win.DH, win.DW)
    return y.reshape(lead + y.shape[1:]), arg.reshape(lead + y.shape[1:])


def max_pool2d_backward_numba(gy, arg, win):
    """Same as ``max_pool2d_backward_reference``, compiled (arg uint8)."""
    lead = gy.shape[:-2]
    gys, args = _planes(gy), _planes(arg)
    gx = np.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)
    if win.is_2x2_stride2():
        _run("_nb_max_bwd_2x2", gx.size, gys, args, gx, gy.dtype.type(0))
    else:
        _run("_nb_max_bwd", gx.size, gys, args, gx, win.KW, win.SH, win.SW, win.PH, win.PW,
             win.DH, win.DW)
    return gx.reshape(lead + (win.H, win.W))


def avg_pool2d_forward_numba(x, win, divisor):
    """Same as ``avg_pool2d_forward_reference``, compiled (NumPy float32/float64)."""
    lead = x.shape[:-2]
    xs = _planes(x)
    y = np.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)
    if win.is_2x2_stride2() and bool(np.all(divisor == 4)):
        _run("_nb_avg_fwd_2x2", xs.size, xs, y, x.dtype.type(0.25))
        return y.reshape(lead + y.shape[1:])
    rdiv = (1.0 / np.asarray(divisor, dtype=np.float64)).astype(x.dtype)
    _run("_nb_avg_fwd", xs.size, xs, y, rdiv, x.dtype.type(0), win.KH, win.KW, win.SH, win.SW,
         win.PH, win.PW)
    return y.reshape(lead + y.shape[1:])


def avg_pool2d_backward_numba(gy, win, divisor):
    """Same as ``avg_pool2d_backward_reference``, compiled."""
    lead = gy.shape[:-2]
    gys = _planes(gy)
    gx = np.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)
    if win.is_2x2_stride2() and bool(np.all(divisor == 4)):
        _run("_nb_avg_bwd_2x2", gx.size, gys, gx, gy.dtype.type(0.25))
        return gx.reshape(lead + (win.H, win.W))
    rdiv = (1.0 / np.asarray(divisor, dtype=np.float64)).astype(gy.dtype)
    _run("_nb_avg_bwd", gx.size, gys, gx, rdiv, win.KH, win.KW, win.SH, win.SW, win.PH,
         win.PW)
    return gx.reshape(lead + (win.H, win.W))


# ----------------------------------------------------------------------------- dispatch

_switch = ImplSwitch("pooling")
force_impl = _switch.force        # ``with force_impl('numpy'):`` runs the reference


def max_pool2d_forward(x, win, impl=None):
    """(y, arg) for x (N, C, H, W); see ``max_pool2d_forward_reference``."""
    which = _switch.choose(x, impl, "max_pool2d")
    if which == "numba" and win.K <= 256:
        return max_pool2d_forward_numba(x, win)
    if which == "cuda":
        return cuda_kernels.max_pool2d_forward(x, win, _tap_dtype(win))
    return max_pool2d_forward_reference(x, win)


def max_pool2d_backward(gy, arg, win, impl=None):
    """gx (N, C, H, W) from gy and arg (N, C, OH, OW); see the reference."""
    which = _switch.choose(gy, impl, "max_pool2d")
    if which == "numba" and arg.dtype == np.uint8:
        return max_pool2d_backward_numba(gy, arg, win)
    if which == "cuda":
        return cuda_kernels.max_pool2d_backward(gy, arg, win)
    return max_pool2d_backward_reference(gy, arg, win)


def avg_pool2d_forward(x, win, divisor, impl=None):
    """y (N, C, OH, OW) for x (N, C, H, W); see ``avg_pool2d_forward_reference``."""
    which = _switch.choose(x, impl, "avg_pool2d")
    if which == "numba":
        return avg_pool2d_forward_numba(x, win, divisor)
    if which == "cuda":
        return cuda_kernels.avg_pool2d_forward(x, win, divisor)
    return avg_pool2d_forward_reference(x, win, divisor)


def avg_pool2d_backward(gy, win, divisor, impl=None):
    """gx (N, C, H, W) from gy (N, C, OH, OW); see the reference."""
    which = _switch.choose(gy, impl, "avg_pool2d")
    if which == "numba":
        return avg_pool2d_backward_numba(gy, win, divisor)
    if which == "cuda":
        return cuda_kernels.avg_pool2d_backward(gy, win, divisor)
    return avg_pool2d_backward_reference(gy, win, divisor)


# ----------------------------------------------------------------------------- adaptive


def adaptive_windows(L, O):
    """PyTorch's adaptive windows along one axis: start[i] = floor(i*L/O),
    end[i] = ceil((i+1)*L/O), as NumPy int64 arrays of length O."""
    i = np.arange(O, dtype=np.int64)
    return (i * L) // O, -((-(i + 1) * L) // O)


def _avg_matrix(L, O, dtype):
    """(O, L) matrix whose row i averages the input positions start[i] .. end[i]-1."""
    start, end = adaptive_windows(L, O)
    pos = np.arange(L)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def adaptive_avg_pool2d_forward(x, out_hw):
    """x (N, C, H, W) -> y (N, C, OH, OW): y = Ah @ x @ Aw^T per plane, Ah (OH, H) and
    Aw (OW, W) the averaging matrices of the adaptive windows (rows sum to 1)."""
    xp = get_array_module(x)
    H, W = x.shape[-2:]
    OH, OW = out_hw
    if (OH, OW) == (1, 1):  # global average pooling (ResNet, GoogLeNet heads)
        return x.mean(axis=(-2, -1), keepdims=True)
    Ah = xp.asarray(_avg_matrix(H, OH, x.dtype))
    Aw = xp.asarray(_avg_matrix(W, OW, x.dtype))
    t = (x.reshape(-1, W) @ Aw.T).reshape(x.shape[:-1] + (OW,))   # (N, C, H, OW)
    return xp.matmul(Ah, t)                                         # (N, C, OH, OW)


def adaptive_avg_pool2d_backward(gy, in_hw):
    """The transpose of the forward map: gx = Ah^T @ gy @ Aw per plane (each input
    position gets gy/size from every window containing it)."""
    xp = get_array_module(gy)
    H, W = in_hw
    OH, OW = gy.shape[-2:]
    if (OH, OW) == (1, 1):
        return xp.broadcast_to(gy / (H * W), gy.shape[:-2] + (H, W)).astype(gy.dtype)
    Ah = xp.asarray(_avg_matrix(H, OH, gy.dtype))
    Aw = xp.asarray(_avg_matrix(W, OW, gy.dtype))
    t = (gy.reshape(-1, OW) @ Aw).reshape(gy.shape[:-1] + (W,))    # (N, C, OH, W)
    return xp.ascontiguousarray(xp.matmul(Ah.T, t))                 # (N, C, H, W)


def _running_max_along(x, axis, start, end, xp):
    """Max of x over windows [start[i], end[i]) along ``axis`` (-1 or -2), and the input
    position of the first maximum (last NaN), scanning the window from its start."""
    sel = (lambda idx: x[..., idx]) if axis == -1 else (lambda idx: x[..., idx, :])
    start_x, end_x = xp.asarray(start), xp.asarray(end)
    pos_shape = (1, -1) if axis == -1 else (-1, 1)
    best = sel(start_x)                      # fancy indexing: a fresh array
    where = xp.empty(best.shape, dtype=xp.int64)
    where[...] = start_x.reshape(pos_shape)
    check_nan = x.dtype.kind == "f"
    for j in range(1, int((end - start).max())):
        pos = xp.minimum(start_x + j, end_x - 1)   # short windows repeat their last tap,
        v = sel(pos)                                 # which never wins a strict '>'
        upd = v > best
        if check_nan:
            upd |= xp.isnan(v)
        xp.copyto(best, v, where=upd)
        xp.copyto(where, xp.broadcast_to(pos.reshape(pos_shape), where.shape), where=upd)
    return best, where


def adaptive_max_pool2d_forward(x, out_hw):
    """x (N, C, H, W) -> y (N, C, OH, OW) and PyTorch's flat indices (int64, ih*W + iw).

    Separable: first the max over each column window of every row, (N, C, H, OW), then
    the max of those over each row window. Taking the first row that holds the maximum,
    and in it the first column, is exactly PyTorch's row-major first maximum (and for NaN,
    the last NaN in row-major order).
    """
    xp = get_array_module(x)
    H, W = x.shape[-2:]
    OH, OW = out_hw
    hs, he = adaptive_windows(H, OH)
    ws, we = adaptive_windows(W, OW)
    colmax, col = _running_max_along(x, -1, ws, we, xp)          # (N, C, H, OW)
    y, row = _running_max_along(colmax, -2, hs, he, xp)          # (N, C, OH, OW)
    col_at_row = xp.take_along_axis(col, row, axis=-2)
    return y, row * W + col_at_row


def adaptive_max_pool2d_backward(gy, indices, in_hw):
    """Scatter gy (N, C, OH, OW) to the flat indices of the maxima: gx (N, C, H, W).

    Adaptive windows may overlap (and repeat when OH > H), so one input position can
    receive several gradients; ``bincount`` adds them (a scatter-add without np.add.at).
    """
    xp = get_array_module(gy)
    H, W = in_hw
    lead = gy.shape[:-2]
    planes = int(np.prod(lead, dtype=np.int64))
    plane_ids = xp.arange(planes, dtype=xp.int64).reshape(lead + (1, 1))
    flat = (plane_ids * (H * W) + indices).ravel()
    gx = xp.bincount(flat, weights=gy.ravel().astype(xp.float64), minlength=planes * H * W)
    return gx.astype(gy.dtype).reshape(lead + (H, W))
