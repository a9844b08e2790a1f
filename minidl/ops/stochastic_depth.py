"""Stochastic depth (Huang et al., 2016): drop a residual branch for whole samples.

A residual block computes ``x + f(x)``. While training, stochastic depth replaces f(x) by
``f(x) * mask / (1 - p)``: for each sample ("row" mode) the branch is dropped with
probability ``p`` (the block is then the identity for that sample) and kept, scaled by
1 / (1 - p), otherwise; the expected output is unchanged, so evaluation uses f(x) as is.
"batch" mode draws one decision for the whole batch. It is dropout with a coarser mask
(torchvision's ``ops.stochastic_depth``, which EfficientNet and ConvNeXt use)::

    mask: (N, 1, ..., 1) in "row" mode, (1, 1, ..., 1) in "batch" mode,
          values 0 or 1 / (1 - p); y = x * mask, gx = gy * mask

Shapes: x, y, gy, gx: (N, *) (any rank >= 1). The mask comes from minidl's seeded
generator, as dropout's.
"""
from __future__ import annotations

import numbers

from ..autograd import Tensor
from .dropout import _dropout


def stochastic_depth(input, p, mode, training=True):  # noqa: A002 - torchvision's names
    """Zero whole samples (``mode='row'``) or the whole batch (``'batch'``) with
    probability ``p``, scaling what is kept by 1 / (1 - p); the identity when
    ``training`` is False or p is 0."""
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"stochastic_depth: p must be in [0, 1] (the probability of "
                         f"dropping the branch), got {p!r}")
    if mode not in ("row", "batch"):
        raise ValueError(f"stochastic_depth: mode must be 'row' or 'batch', got {mode!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"stochastic_depth: expected a Tensor, got {type(input).__name__}")
    if input.ndim == 0:
        raise ValueError("stochastic_depth: expected an input with a batch dim (N, *), got "
                         "a 0-d tensor")
    rows = input.shape[0] if mode == "row" else 1
    mask_shape = (rows,) + (1,) * (input.ndim - 1)    # one draw per sample (or per batch)
    return _dropout(input, p, training, False, mask_shape, "stochastic_depth")
