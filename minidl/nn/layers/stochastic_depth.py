"""``StochasticDepth(p, mode)``: torchvision's layer that drops a residual branch per
sample while training (``F.stochastic_depth``); the identity in eval mode.
Input (N, *), output the same shape."""
from __future__ import annotations

from .. import functional as F
from ..module import Module
from ._checks import check_tensor


class StochasticDepth(Module):
    """``StochasticDepth(p, mode)``: p the probability of dropping the branch, mode
    ``'row'`` (one draw per sample, what EfficientNet and ConvNeXt use) or ``'batch'``
    (one draw for the batch). Put it on the residual branch: ``x + sd(f(x))``."""

    def __init__(self, p, mode):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"StochasticDepth: p must be in [0, 1], got {p}")
        if mode not in ("row", "batch"):
            raise ValueError(f"StochasticDepth: mode must be 'row' or 'batch', got {mode!r}")
        self.p = p
        self.mode = mode

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.stochastic_depth(input, self.p, self.mode, self.training)

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode}"
