"""Pooling layers over (N, C, H, W) or unbatched (C, H, W) inputs.

Output size of the windowed poolings, per spatial dim (floor, or ceil with ``ceil_mode``):
OH = (H + 2*PH - DH*(KH - 1) - 1) / SH + 1.
The adaptive ones produce ``output_size`` (OH, OW) whatever the input size.
"""
from __future__ import annotations

from ...errors import ShapeError
from .. import functional as F
from ..module import Module
from ._checks import check_tensor, fmt_shape, shape_error


def _check_pool_input(module, x):
    """At the layer boundary, so that the message names the layer (``MaxPool2d(...)``);
    the argument errors of ``F.*`` name the op (``max_pool2d: ...``)."""
    check_tensor(module, x)
    if x.ndim not in (3, 4):
        raise shape_error(module, fmt_shape(("N", "C", "H", "W")) + " or (C, H, W)", x,
                          cls=ShapeError)


class MaxPool2d(Module):
    """Max over KH x KW windows. (N, C, H, W) -> (N, C, OH, OW); ``return_indices=True``
    also returns the flat (H*W) index of each max. ``tie`` (minidl's extra) picks which of
    equal maxima gets the gradient; the default 'first' is PyTorch's behaviour."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False, tie="first"):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode
        self.tie = tie

    def forward(self, input):  # noqa: A002
        _check_pool_input(self, input)
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
                            tie=self.tie)

    def extra_repr(self):
        s = (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
             f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
        if self.tie != "first":
            s += f", tie={self.tie!r}"
        return s


class AvgPool2d(Module):
    """Mean over KH x KW windows. (N, C, H, W) -> (N, C, OH, OW)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, input):  # noqa: A002
        _check_pool_input(self, input)
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Mean over adaptive windows: (N, C, H, W) -> (N, C, *output_size).
    ``AdaptiveAvgPool2d(1)`` is global average pooling; None in output_size keeps that dim."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):  # noqa: A002
        _check_pool_input(self, input)
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    """Max over adaptive windows: (N, C, H, W) -> (N, C, *output_size)."""

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size = output_size
        self.return_indices = return_indices

    def forward(self, input):  # noqa: A002
        _check_pool_input(self, input)
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices)

    def extra_repr(self):
        return f"output_size={self.output_size}"
