"""Pooling: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d.

Signatures, defaults and results are PyTorch's (``torch.nn.functional``); the array work
lives in the ``pool`` kernel family (``minidl.kernels.pool``: a readable NumPy reference,
numba and CUDA fast paths, one chosen per call), the window geometry in ``minidl.geometry``.

Shape letters::

    N   batch size              C   channels
    H   input height            W   input width
    KH  kernel height           KW  kernel width
    SH  stride along H          SW  stride along W          (default: the kernel size)
    PH  padding along H         PW  padding along W         (each side; at most K // 2)
    DH  dilation along H        DW  dilation along W        (max pooling only)
    OH  output height           OW  output width

    OH = floor((H + 2 PH - DH (KH - 1) - 1 + (SH - 1 if ceil_mode else 0)) / SH) + 1
         minus 1 when ceil_mode made the last window start past the input and its
         left padding, i.e. when (OH - 1) SH >= H + PH                  (likewise OW)

Every op accepts a batch (N, C, H, W) or a single image (C, H, W) and returns the same
kind. Pooling acts on each (n, c) plane separately.

minidl's addition: ``max_pool2d(..., tie='first' | 'split')`` chooses where the gradient
of a window goes when several taps share its maximum (see ``MaxPool2dFunction``).

Higher-order gradients: every pooling backward is linear in gy, with coefficients the
forward fixed (the argmax taps, the divisors, the windows): gx = R gy. So a recorded
backward (create_graph=True) is ``PoolScatterFunction`` applying R, whose own gradient
is R's transpose, ``PoolGatherFunction``, and vice versa; R holds no trace of x, so the
second derivative through x is zero (almost everywhere, for max pooling), as in PyTorch.

Where minidl refuses what PyTorch 2.13 accepts (each with an error naming the op):
average pooling of integer tensors (PyTorch averages them on the CPU with integer
division), an adaptive output size of 0 (PyTorch returns an empty tensor), and a dilated
max-pooling window that covers only padding (PyTorch returns -inf with an index outside
the plane, and its backward then corrupts memory).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import geometry
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels import pool as K

__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
           "MaxPool2dFunction", "AvgPool2dFunction", "AdaptiveAvgPool2dFunction",
           "AdaptiveMaxPool2dFunction", "PoolScatterFunction", "PoolGatherFunction"]


# ----------------------------------------------------------------------------- helpers


def _batched(x):
    """(N, C, H, W) view of x, and whether x was a single (C, H, W) image."""
    return (x[None], True) if x.ndim == 3 else (x, False)


def _unbatched(a, was_unbatched):
    return a[0] if was_unbatched else a


# ----------------------------------------------------------------------------- recorded backwards


class _Route:
    """Where each window's gradient goes: the linear map R of a pooling backward, gx = R gy,
    fixed by the forward. ``scatter`` applies R, ``gather`` its transpose R^T, both on raw
    arrays (N, C, ., .) through the kernel family; single images get their N axis here."""

    def __init__(self, scatter, gather, unbatched):
        self._scatter, self._gather, self._unbatched = scatter, gather, unbatched

    def _batched_call(self, fn, a):
        return _unbatched(fn(a[None] if self._unbatched else a), self._unbatched)

    def scatter(self, gy):       # (N, C, OH, OW) -> (N, C, H, W)
        return self._batched_call(self._scatter, gy)

    def gather(self, gx):        # (N, C, H, W) -> (N, C, OH, OW)
        return self._batched_call(self._gather, gx)


class PoolScatterFunction(Function):
    """gx = R gy: a pooling backward as a differentiable op of gy (create_graph=True).

    gy (N, C, OH, OW) -> gx (N, C, H, W) (single images: no N); ``route`` holds R (see
    ``_Route``): the argmax taps, divisors or windows of the pooling forward, constants.

    Gradient: R is linear and fixed, so d(gx)/d(gy) is R itself and the upstream gradient
    ggx comes back as R^T ggx, a gather at the same taps (``PoolGatherFunction``).
    """

    @staticmethod
    def forward(ctx, gy, route):
        ctx.route = route
        return route.scatter(gy)

    @staticmethod
    def backward(ctx, ggx):
        return ctx.route.gather(ggx)

    @staticmethod
    def differentiable_backward(ctx, ggx):
        return PoolGatherFunction.apply(ggx, route=ctx.route)


class PoolGatherFunction(Function):
    """gy' = R^T gx, the transpose of ``PoolScatterFunction``: (N, C, H, W) -> (N, C, OH, OW).
    Its gradient is the scatter R."""

    @staticmethod
    def forward(ctx, gx, route):
        ctx.route = route
        return route.gather(gx)

    @staticmethod
    def backward(ctx, ggy):
        return ctx.route.scatter(ggy)

    @staticmethod
    def differentiable_backward(ctx, ggy):
        return PoolScatterFunction.apply(ggy, route=ctx.route)


# ----------------------------------------------------------------------------- max pooling


class MaxPool2dFunction(Function):
    """Max over each KH x KW window (dilated by DH, DW), padding counting as -inf.

    Shapes:
        win      the geometry (``geometry.Window2d``): kernel (KH, KW), stride
                 (SH, SW), padding (PH, PW) on each side, dilation (DH, DW), input
                 (H, W) and output (OH, OW) sizes (formula in the module doc)
        x        (N, C, H, W) or (C, H, W)
        y        (N, C, OH, OW)   y[n, c, oh, ow] = max over kh < KH, kw < KW of
                                  x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]
        indices  (N, C, OH, OW) int64, only with return_indices: the flat position
                 ih*W + iw of each maximum in its (H, W) plane, as PyTorch returns it
        (single images drop the N axis everywhere)

    Gradient: the max is a selection, so a window's output equals one input tap and the
    window's upstream gradient flows back to that tap alone; every other tap of the
    window gets nothing from it. Taps shared by overlapping windows (stride < kernel)
    add up the gradients of every window whose maximum they hold. When several taps of
    a window tie for the maximum the max is not differentiable there, and ``tie``
    chooses a subgradient:

    * ``'first'`` (default, PyTorch's CPU choice): the first maximum in row-major order
      of the window (smallest kh, then smallest kw) takes it all. This is also the tap
      that ``indices`` points at, and a NaN makes the last NaN tap the "maximum".
    * ``'split'``: the m tied maxima get gy / m each, so the gradient is symmetric in
      the tied inputs and its total is preserved.
    """

    @staticmethod
    def forward(ctx, x, win, return_indices, tie):
        xb, unbatched = _batched(x)                  # (N, C, H, W)
        y, arg = K.max_pool2d_forward(xb, win)       # (N, C, OH, OW): max, tap kh*KW + kw
        ctx.win, ctx.tie, ctx.unbatched = win, tie, unbatched
        if tie == "split":
            ctx.save_for_backward(xb, y)             # the ties are found again from x and y
        else:
            ctx.save_for_backward(arg)               # the tap number, a uint8 per output
        y_out = _unbatched(y, unbatched)
        if return_indices:                           # (N, C, OH, OW) int64 ih*W + iw
            return y_out, _unbatched(K.max_pool2d_indices(arg, win), unbatched)
        return y_out

    @staticmethod
    def backward(ctx, gy, *_grad_indices):  # indices carry no gradient
        gyb = gy[None] if ctx.unbatched else gy      # (N, C, OH, OW)
        if ctx.tie == "split":
            xb, y = ctx.saved_tensors
            gx = K.max_pool2d_backward_split(gyb, xb, y, ctx.win)   # gy/m to each of m maxima
        else:
            (arg,) = ctx.saved_tensors
            gx = K.max_pool2d_backward(gyb, arg, ctx.win)           # gx[tap arg] += gy
        return _unbatched(gx, ctx.unbatched)         # (N, C, H, W)

    @staticmethod
    def differentiable_backward(ctx, gy, *_grad_indices):
        # gx = R gy, R the routing to the maxima: taps (or ties) are piecewise constant
        # in x, so their arrays are constants here and d gx / dx = 0.
        win = ctx.win
        if ctx.tie == "split":
            xb, y = (t.data for t in ctx.saved_tensors)
            route = _Route(lambda g: K.max_pool2d_backward_split(g, xb, y, win),
                           lambda g: K.max_pool2d_gather_split(g, xb, y, win), ctx.unbatched)
        else:
            (arg,) = (t.data for t in ctx.saved_tensors)
            route = _Route(lambda g: K.max_pool2d_backward(g, arg, win),
                           lambda g: K.max_pool2d_gather(g, arg, win), ctx.unbatched)
        return PoolScatterFunction.apply(gy, route=route)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, tie="first"):
    """2-D max pooling over an (N, C, H, W) or (C, H, W) tensor, as ``F.max_pool2d``.

    kernel_size, stride, padding, dilation: an int or an (H, W) pair; ``stride``
    defaults to ``kernel_size``; padding (at most half the kernel) counts as -inf.
    ceil_mode: round the output size up (PyTorch's rule, see the module doc).
    return_indices: also return int64 flat indices (ih*W + iw) of the maxima.
    tie: ``'first'`` (PyTorch's behaviour) gives a window's whole gradient to its first
    maximum; ``'split'`` shares it evenly among equal maxima (see MaxPool2dFunction).
    """
    op = "max_pool2d"
    if tie not in ("first", "split"):
        raise ValueError(f"{op}: tie must be 'first' or 'split', got {tie!r}")
    _check_input(input, op)
    if input.dtype.kind not in "fiu":
        raise TypeError(f"{op}: expected a floating point or integer input, got dtype "
                        f"{input.dtype}")
    win = _window(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    return MaxPool2dFunction.apply(input, win=win, return_indices=bool(return_indices),
                                   tie=tie)


# ----------------------------------------------------------------------------- avg pooling


class AvgPool2dFunction(Function):
    """Average over each KH x KW window, padding counting as 0.

    Shapes:
        win      the geometry (``geometry.Window2d``): kernel (KH, KW), stride
                 (SH, SW), padding (PH, PW) on each side, input (H, W) and output
                 (OH, OW) sizes (formula in the module doc; no dilation here)
        x        (N, C, H, W) or (C, H, W), floating point
        y        (N, C, OH, OW)   y[n, c, oh, ow] = (sum over the window's taps of
                                  x[n, c, oh*SH - PH + kh, ow*SW - PW + kw]) / d[oh, ow]
        d        (OH, OW) divisors, PyTorch's rule: ``divisor_override`` if given; else
                 with ``count_include_pad`` the window's size clipped to the padded input
                 (a ceil_mode window running past the padding counts only what lies
                 inside it); else the number of taps that hit the input

    Gradient: y is a linear function of x, each tap of a window entering with weight
    1/d. So every tap of window (oh, ow) receives gy[oh, ow] / d[oh, ow]; a pixel in
    several overlapping windows adds up their shares, and the shares that land on
    padding are dropped.
    """

    @staticmethod
    def forward(ctx, x, win, count_include_pad, divisor_override):
        xb, unbatched = _batched(x)                                            # (N, C, H, W)
        d = K.avg_pool2d_divisor(win, count_include_pad, divisor_override)     # (OH, OW)
        ctx.win, ctx.divisor, ctx.unbatched = win, d, unbatched
        y = K.avg_pool2d_forward(xb, win, d)              # (N, C, OH, OW) window sums / d
        return _unbatched(y, unbatched)

    @staticmethod
    def backward(ctx, gy):
        gyb = gy[None] if ctx.unbatched else gy           # (N, C, OH, OW)
        gx = K.avg_pool2d_backward(gyb, ctx.win, ctx.divisor)   # every tap += gy / d
        return _unbatched(gx, ctx.unbatched)              # (N, C, H, W)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # gx = R gy with R the transpose of the pooling itself, so R^T is avg pooling again
        win, d = ctx.win, ctx.divisor
        route = _Route(lambda g: K.avg_pool2d_backward(g, win, d),
                       lambda g: K.avg_pool2d_forward(g, win, d), ctx.unbatched)
        return PoolScatterFunction.apply(gy, route=route)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling over an (N, C, H, W) or (C, H, W) tensor, as ``F.avg_pool2d``.

    count_include_pad: padding taps count in the divisor (default True);
    divisor_override: a non-zero int dividing every window's sum instead.
    """
    op = "avg_pool2d"
    _check_input(input, op)
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    if divisor_override is not None:
        if not geometry.is_int(divisor_override):
            raise TypeError(f"{op}: divisor_override must be an int, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{op}: divisor_override must be non-zero, got 0")
    win = _window(op, input, kernel_size, stride, padding, 1, ceil_mode)
    return AvgPool2dFunction.apply(input, win=win, count_include_pad=bool(count_include_pad),
                                   divisor_override=divisor_override)


# ----------------------------------------------------------------------------- adaptive


class AdaptiveAvgPool2dFunction(Function):
    """Average pooling to a fixed output size (OH, OW), whatever the input size.

    Shapes:
        x   (N, C, H, W) or (C, H, W), floating point
        y   (N, C, OH, OW)   y[.., i, j] = mean of x[.., hs[i]:he[i], ws[j]:we[j]]
            with hs[i] = floor(i*H/OH), he[i] = ceil((i+1)*H/OH) (likewise ws, we)
        There is no fixed kernel, stride or padding: window i spans KH_i = he[i] - hs[i]
        rows (KW_j likewise), the sizes differ by at most one, consecutive windows may
        overlap (when OH does not divide H) and repeat (when OH > H). When OH divides
        H this is avg_pool2d with KH = SH = H / OH and PH = 0.

    Gradient: each window is an average of (he-hs)*(we-ws) inputs, so each of them gets
    gy[i, j] / ((he-hs)*(we-ws)); a pixel in several windows adds up their shares.
    Written as matrices: y = Ah x Aw^T per plane, so gx = Ah^T gy Aw.
    """

    @staticmethod
    def forward(ctx, x, out_hw):
        xb, unbatched = _batched(x)                             # (N, C, H, W)
        ctx.in_hw, ctx.unbatched = xb.shape[-2:], unbatched
        y = K.adaptive_avg_pool2d_forward(xb, out_hw)           # (N, C, OH, OW) = Ah x Aw^T
        return _unbatched(y, unbatched)

    @staticmethod
    def backward(ctx, gy):
        gyb = gy[None] if ctx.unbatched else gy                 # (N, C, OH, OW)
        gx = K.adaptive_avg_pool2d_backward(gyb, ctx.in_hw)     # (N, C, H, W) = Ah^T gy Aw
        return _unbatched(gx, ctx.unbatched)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # gx = Ah^T gy Aw, whose transpose is the pooling again: Ah gx Aw^T
        in_hw, out_hw = ctx.in_hw, tuple(gy.shape[-2:])
        route = _Route(lambda g: K.adaptive_avg_pool2d_backward(g, in_hw),
                       lambda g: K.adaptive_avg_pool2d_forward(g, out_hw), ctx.unbatched)
        return PoolScatterFunction.apply(gy, route=route)


class AdaptiveMaxPool2dFunction(Function):
    """Max pooling to a fixed output size (OH, OW), whatever the input size.

    Shapes:
        x        (N, C, H, W) or (C, H, W)
        y        (N, C, OH, OW)   y[.., i, j] = max of x[.., hs[i]:he[i], ws[j]:we[j]]
                                  (the windows of AdaptiveAvgPool2dFunction: sizes
                                  KH_i, KW_j vary, no stride or padding)
        indices  (N, C, OH, OW) int64, flat ih*W + iw of each maximum (the first in
                 row-major order on ties, as PyTorch), only with return_indices

    Gradient: as for max_pool2d, each window's gradient flows to the input tap that
    held its maximum (the one ``indices`` names); overlapping windows add up.
    """

    @staticmethod
    def forward(ctx, x, out_hw, return_indices):
        xb, unbatched = _batched(x)                             # (N, C, H, W)
        y, idx = K.adaptive_max_pool2d_forward(xb, out_hw)      # (N, C, OH, OW) each
        ctx.in_hw, ctx.unbatched = xb.shape[-2:], unbatched
        ctx.save_for_backward(idx)
        if return_indices:
            return _unbatched(y, unbatched), _unbatched(idx, unbatched)
        return _unbatched(y, unbatched)

    @staticmethod
    def backward(ctx, gy, *_grad_indices):
        (idx,) = ctx.saved_tensors
        gyb = gy[None] if ctx.unbatched else gy                 # (N, C, OH, OW)
        gx = K.adaptive_max_pool2d_backward(gyb, idx, ctx.in_hw)   # gx[idx] += gy
        return _unbatched(gx, ctx.unbatched)                    # (N, C, H, W)

    @staticmethod
    def differentiable_backward(ctx, gy, *_grad_indices):
        # gx = R gy, R the scatter to the maxima's indices (constants): gather is R^T
        (idx,) = (t.data for t in ctx.saved_tensors)           # (N, C, OH, OW)
        in_hw = ctx.in_hw
        route = _Route(lambda g: K.adaptive_max_pool2d_backward(g, idx, in_hw),
                       lambda g: K.adaptive_max_pool2d_gather(g, idx), ctx.unbatched)
        return PoolScatterFunction.apply(gy, route=route)


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to ``output_size`` (an int or an (OH, OW) pair; ``None`` keeps
    that input size), as ``F.adaptive_avg_pool2d``."""
    op = "adaptive_avg_pool2d"
    _check_input(input, op)
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating point input, got dtype {input.dtype}")
    out_hw = geometry.adaptive_output_size(input.shape[-2:], output_size, op)
    return AdaptiveAvgPool2dFunction.apply(input, out_hw=out_hw)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max pooling to ``output_size`` (an int or an (OH, OW) pair; ``None`` keeps that
    input size), as ``F.adaptive_max_pool2d``; ``return_indices`` as in max_pool2d."""
    op = "adaptive_max_pool2d"
    _check_input(input, op)
    if input.dtype.kind not in "fiu":
        raise TypeError(f"{op}: expected a floating point or integer input, got dtype "
                        f"{input.dtype}")
    out_hw = geometry.adaptive_output_size(input.shape[-2:], output_size, op)
    return AdaptiveMaxPool2dFunction.apply(input, out_hw=out_hw,
                                           return_indices=bool(return_indices))


# ----------------------------------------------------------------------------- validation


def _check_input(x, op):
    """x must be a Tensor of shape (N, C, H, W) or (C, H, W) with C, H, W > 0."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a minidl Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ShapeError(f"{op}: expected input of shape (N, C, H, W) or (C, H, W), "
                         f"got shape {x.shape} ({x.ndim} dims)")
    if 0 in x.shape[-3:]:
        raise ShapeError(f"{op}: expected input with non-zero C, H and W (shape (N, C, H, W) "
                         f"or (C, H, W)), got shape {x.shape}")


def _window(op, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate the pooling parameters against the input and return a ``geometry.Window2d``.

    PyTorch's forms: an int or a 1- or 2-sequence of ints for each argument; ``stride``
    None (or ``()``) means the kernel size.
    """
    kernel, stride, padding, dilation = geometry.pool_args(kernel_size, stride, padding,
                                                           dilation, op)
    return _checked_window(op, tuple(x.shape[-2:]), kernel, stride, padding, dilation,
                           bool(ceil_mode))


@functools.lru_cache(maxsize=256)
def _checked_window(op, in_hw, kernel, stride, padding, dilation, ceil_mode):
    """``_window``'s checks and window for the input size ``in_hw`` and the parameters as
    (h, w) pairs. Cached per geometry: a model pools the same shapes at every step, and
    the checks' small NumPy operations cost more than a small pooling (a failing check
    raises, and is not cached)."""
    H, W = in_hw
    half = (kernel[0] // 2, kernel[1] // 2)
    if padding[0] > half[0] or padding[1] > half[1]:
        raise ValueError(f"{op}: padding must be at most half the kernel size, got "
                         f"padding={padding} for kernel_size={kernel} (at most {half})")
    win = geometry.make_window((H, W), kernel, stride, padding, dilation, ceil_mode)
    span = win.reach                                                  # (DH (KH-1) + 1, ...)
    padded = (H + 2 * padding[0], W + 2 * padding[1])
    if span[0] > padded[0] or span[1] > padded[1]:
        extent = f"kernel_size={kernel}" + (
            f" (spanning {span} with dilation={dilation})" if dilation != (1, 1) else "")
        raise ShapeError(f"{op}: {extent} is larger than the padded input {padded} "
                         f"(input (H, W) = {(H, W)}, padding={padding})")
    # The kernel fits the padded input, so OH, OW >= 1.
    # With dilation a window can fall entirely on padding (kernel 2, dilation 3,
    # padding 1 on a 2-pixel input: taps at -1 and 2). PyTorch returns -inf and an
    # index outside the plane there (its backward then corrupts memory); refuse it.
    for axis, (O, S, P, D, L, Kk) in enumerate(((win.OH, win.SH, win.PH, win.DH, H, win.KH),
                                                (win.OW, win.SW, win.PW, win.DW, W, win.KW))):
        pos = (np.arange(O) * S - P)[:, None] + np.arange(Kk)[None, :] * D   # (O, K) taps
        empty = ~((pos >= 0) & (pos < L)).any(axis=1)
        if empty.any():
            raise ValueError(
                f"{op}: the window of output {'row' if axis == 0 else 'column'} "
                f"{int(np.argmax(empty))} covers only padding (kernel_size={kernel}, "
                f"dilation={dilation}, padding={padding}, input (H, W) = {(H, W)}); "
                "use less padding")
    return win
