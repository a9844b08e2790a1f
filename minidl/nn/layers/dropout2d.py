"""``Dropout2d``: in training, zero whole channels (each (n, c) plane of an (N, C, H, W)
input; a 3-D input is read as (N, C, L), as PyTorch reads it today) with probability p and
scale the rest by 1 / (1 - p): neighbouring pixels are correlated, so dropping single ones
regularises little. In eval mode, the identity."""
from __future__ import annotations

from .. import functional as F
from ._checks import check_tensor
from .dropout import Dropout


class Dropout2d(Dropout):
    """``Dropout2d(p=0.5, inplace=False)``: ``F.dropout2d`` (a channel mask)."""

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.dropout2d(input, self.p, self.training, self.inplace)
