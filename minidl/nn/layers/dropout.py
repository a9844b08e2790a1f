"""``Dropout``: in training, zero each element with probability p and scale the rest by
1 / (1 - p); in eval mode, the identity. Any input shape; output has the same shape."""
from __future__ import annotations

from .. import functional as F
from ..module import Module
from ._checks import check_tensor


class Dropout(Module):
    """``Dropout(p=0.5, inplace=False)``; masks come from minidl's seeded generator.
    ``inplace`` is passed on to ``F.dropout`` (honoured only when no graph is recorded)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: dropout probability has to be between 0 "
                             f"and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
