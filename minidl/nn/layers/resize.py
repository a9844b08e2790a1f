"""``Upsample``: resize (N, C, L) or (N, C, H, W) by a size or a scale factor
(``F.interpolate``: 'nearest', 'linear', 'bilinear'), e.g. the decoder of a U-Net or an FPN."""
from __future__ import annotations

from .. import functional as F
from ..module import Module
from ._checks import as_layer_error, check_tensor


class Upsample(Module):
    """``Upsample(size=None, scale_factor=None, mode='nearest', align_corners=None,
    recompute_scale_factor=None)``: ``F.interpolate`` with these settings. scale_factor is
    kept as a float (or a tuple of floats), as PyTorch keeps it."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None):
        super().__init__()
        self.name = type(self).__name__
        self.size = size
        if isinstance(scale_factor, tuple):
            self.scale_factor = tuple(float(f) for f in scale_factor)
        else:
            self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        try:
            return F.interpolate(input, self.size, self.scale_factor, self.mode,
                                 self.align_corners,
                                 recompute_scale_factor=self.recompute_scale_factor)
        except (TypeError, ValueError) as exc:            # ShapeError is a ValueError
            raise as_layer_error(exc, self, "interpolate") from None

    def extra_repr(self):
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return info + f", mode={self.mode!r}"
