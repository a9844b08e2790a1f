"""Dropout: zero random elements (``dropout``) or whole channels (``dropout2d``) while training.

Inverted dropout: each element is kept with probability 1 - p and the kept ones are
scaled by 1 / (1 - p), so the expected value of every output equals its input and
evaluation needs no rescaling (``training=False`` returns the input unchanged)::

    mask = bernoulli(1 - p) / (1 - p)       values 0 or 1 / (1 - p)
    y    = x * mask                         gx = gy * mask

Shapes: x, y, gy, gx: (*). The mask has x's shape for ``dropout``, and (N, C, 1, 1)
for ``dropout2d`` on (N, C, H, W) input (one draw per channel, broadcast over H, W).

The mask is drawn from minidl's seeded generator (``minidl.random``), so
``minidl.manual_seed(s)`` makes the masks, and whole training runs, repeatable.
"""
from __future__ import annotations

import numbers

from .. import backend, random
from ..autograd import Function, Tensor, is_grad_enabled
from ..errors import ShapeError


def _draw_mask(x, p, mask_shape):
    """The scaled keep-mask: 1 / (1 - p) with probability 1 - p, else 0, in x's dtype."""
    xp = backend.get_array_module(x)
    if p == 1:
        return xp.zeros(mask_shape, x.dtype)       # everything dropped (1 / (1 - p) is inf)
    keep = random.random_array("bernoulli", mask_shape, x.dtype,
                               device=backend.device_of(x), p=1 - p)
    return keep * (1 / (1 - p))                     # a Python float: x's dtype is kept


class DropoutFunction(Function):
    """y = x * mask with a fresh random mask (see the module docstring).

    x, y, gy, gx: (*); mask: ``mask_shape``, which broadcasts to x's shape (x's own
    shape for dropout, (N, C, 1, ...) for dropout2d).

    Backward: y is linear in x with the mask as coefficient, so gx = gy * mask, summed
    over nothing: the mask broadcasts, the input does not. The same line is the recorded
    backward (create_graph=True), the mask a constant: d gx / dx = 0, d gx / d gy = mask.
    """

    @staticmethod
    def forward(ctx, x, p, mask_shape):
        mask = _draw_mask(x, p, mask_shape)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, gy):
        (mask,) = ctx.saved_tensors
        return gy * mask

    differentiable_backward = backward  # the mask is a constant Tensor there: gx is linear in gy


def _dropout(input, p, training, inplace, mask_shape, name):  # noqa: A002
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be in [0, 1] (the probability of zeroing an "
                         f"element), got {p!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
    if input.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {input.dtype}")
    if not training or p == 0:
        return input
    p = float(p)
    if inplace and not (input.requires_grad and is_grad_enabled()):
        input.data *= _draw_mask(input.data, p, mask_shape)
        return input
    # With a graph being recorded, inplace=True is not honoured: minidl keeps no version
    # counters, so overwriting an array that an earlier op saved for its backward would go
    # unnoticed and give wrong gradients. A new tensor is returned instead.
    return DropoutFunction.apply(input, p=p, mask_shape=mask_shape)


def dropout(input, p=0.5, training=True, inplace=False):  # noqa: A002
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p).

    training=False (or p=0) returns ``input`` itself; p=1 gives zeros. inplace=True
    overwrites ``input`` and returns it, unless a graph is being recorded through it
    (then a new tensor is returned, as that is the only safe choice without version
    counters).
    """
    return _dropout(input, p, training, inplace, input.shape if isinstance(input, Tensor)
                    else None, "dropout")


def dropout2d(input, p=0.5, training=True, inplace=False):  # noqa: A002
    """Zero whole channels: input (N, C, H, W), one draw per (n, c), kept ones scaled by
    1 / (1 - p). A 3-D input is taken as (N, C, L), as PyTorch does today (it warns that
    this will change to unbatched (C, H, W))."""
    if isinstance(input, Tensor) and input.ndim not in (3, 4):
        raise ShapeError(f"dropout2d: expected input (N, C, H, W) (or (N, C, L)), "
                         f"got {input.shape}")
    mask_shape = None
    if isinstance(input, Tensor):
        mask_shape = input.shape[:2] + (1,) * (input.ndim - 2)
    return _dropout(input, p, training, inplace, mask_shape, "dropout2d")
