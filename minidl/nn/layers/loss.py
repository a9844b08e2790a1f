"""Loss layers, wrapping the functional losses.

- ``CrossEntropyLoss``: input (N, C) logits (or (N, C, d1, ...)), target (N,) int64 class
  indices (or class probabilities of the input's shape) -> scalar (or (N,) with
  ``reduction='none'``). Softmax is inside: feed raw scores.
- ``NLLLoss``: input (N, C) log-probabilities, target (N,) class indices.
- ``MSELoss``: input and target of the same shape.
"""
from __future__ import annotations

import warnings

from .. import functional as F
from ..module import Module
from ._checks import check_tensor


def _legacy_reduction(size_average, reduce):
    """PyTorch's mapping of the deprecated ``size_average``/``reduce`` flags."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    warnings.warn("size_average and reduce args will be deprecated, please use reduction "
                  "instead.", stacklevel=3)
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"{type(self).__name__}: {reduction} is not a valid value for "
                             "reduction (expected 'mean', 'sum' or 'none')")
        self.reduction = reduction


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """``CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean',
    label_smoothing=0.0)``: ``loss_fn(logits (N, C), target (N,))``."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.cross_entropy(input, target, weight=self.weight,
                               ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    """``NLLLoss(weight=None, ignore_index=-100, reduction='mean')``:
    ``loss_fn(log_probs (N, C), target (N,))``."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean"):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(_Loss):
    """``MSELoss(reduction='mean')``: mean of (input - target)^2."""

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.mse_loss(input, target, reduction=self.reduction)
