"""More loss layers, wrapping the functional losses (``minidl/ops/loss.py``); input and
target have one shape (*), the output is () or (*) with ``reduction='none'``.

- ``BCEWithLogitsLoss(weight=None, reduction='mean', pos_weight=None)``: logits in,
  sigmoid inside (stable); ``pos_weight`` (C,) weighs the positives of each class.
- ``BCELoss(weight=None, reduction='mean')``: probabilities in [0, 1] in.
- ``L1Loss``, ``SmoothL1Loss(beta=1.0)``: |input - target| and its Huber-like form.
- ``KLDivLoss(reduction='mean', log_target=False)``: input log-probabilities; use
  ``reduction='batchmean'`` for the KL divergence per sample.

``weight`` and ``pos_weight`` are buffers (in ``state_dict()`` when given, as PyTorch's).
"""
from __future__ import annotations

from .. import functional as F
from ._checks import check_tensor
from .loss import _legacy_reduction, _Loss, _WeightedLoss


class BCEWithLogitsLoss(_WeightedLoss):
    """``loss_fn(logits (*), target (*))``: ``F.binary_cross_entropy_with_logits``."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean",
                 pos_weight=None):
        super().__init__(weight, size_average, reduce, reduction)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class BCELoss(_WeightedLoss):
    """``loss_fn(probabilities (*), target (*))``: ``F.binary_cross_entropy``."""

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class L1Loss(_Loss):
    """``L1Loss(reduction='mean')``: mean of |input - target|."""

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """``SmoothL1Loss(reduction='mean', beta=1.0)``: quadratic below beta, linear above."""

    def __init__(self, size_average=None, reduce=None, reduction="mean", beta=1.0):
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class KLDivLoss(_Loss):
    """``KLDivLoss(reduction='mean', log_target=False)``: ``F.kl_div``; reduction may also
    be 'batchmean' (the true KL divergence per sample)."""

    def __init__(self, size_average=None, reduce=None, reduction="mean", log_target=False):
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        batchmean = reduction == "batchmean"
        super().__init__(reduction="mean" if batchmean else reduction)
        self.reduction = reduction
        self.log_target = log_target

    def forward(self, input, target):  # noqa: A002
        check_tensor(self, input)
        check_tensor(self, target, "target")
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
