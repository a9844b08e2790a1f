"""``Conv1d`` and ``MaxPool1d``: convolution and max pooling along one axis (audio, time
series, text as (N, embedding channels, length)).

Shapes::

    Conv1d     input (N, C_in, L) or unbatched (C_in, L) -> (N, C_out, OL)
               weight (C_out, C_in/groups, K), bias (C_out,)
               OL = floor((L + 2P - D*(K - 1) - 1) / S) + 1
    MaxPool1d  input (N, C, L) or (C, L) -> (N, C, OL)

Both run the 2-D ops on a height-1 view (``minidl/ops/conv1d.py`` says why that is exact).
"""
from __future__ import annotations

from ... import geometry
from .. import functional as F
from ..module import Module
from ._checks import as_layer_error, check_float, check_tensor, fmt_shape, shape_error
from .conv import _ConvBase


def _single(value, name, layer, minimum):
    """``3`` or ``(3,)`` -> ``(3,)``, PyTorch's stored form for the 1-D layers."""
    if isinstance(value, (tuple, list)) and len(value) != 1:
        raise TypeError(f"{layer}: {name} must be an int or a 1-tuple of ints, got {value!r}")
    return (geometry.pair(value, name, layer, minimum=minimum)[0],)


class Conv1d(_ConvBase):
    """``Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True, padding_mode='zeros')`` with PyTorch's default init (as Conv2d's):
    weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise,
    fan_in = C_in/groups * K. ``padding``: an int, (P,), 'valid' or 'same'."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__()
        name = "Conv1d"
        if not geometry.is_int(groups) or groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
        for what, n in (("in_channels", in_channels), ("out_channels", out_channels)):
            if n % groups:
                raise ValueError(f"{name}: {what} ({n}) must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise NotImplementedError(f"{name}: padding_mode='{padding_mode}' is not "
                                      "supported by minidl (only 'zeros')")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _single(kernel_size, "kernel_size", name, 1)
        self.stride = _single(stride, "stride", name, 1)
        self.dilation = _single(dilation, "dilation", name, 1)
        self.groups = int(groups)
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: invalid padding string {padding!r}, should be one "
                                 "of {'valid', 'same'}")
            if padding == "same" and self.stride != (1,):
                raise ValueError(f"{name}: padding='same' is not supported for strided "
                                 "convolutions")
            self.padding = padding
        else:
            self.padding = _single(padding, "padding", name, 0)
        self._make_parameters(bias, dtype)
        if device is not None:
            self.to(device)

    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[0])

    def forward(self, input):  # noqa: A002
        """input (N, C_in, L) or (C_in, L) -> (N, C_out, OL) or (C_out, OL)."""
        check_float(self, input, self.weight)
        if input.ndim not in (2, 3) or input.shape[-2] != self.in_channels:
            raise shape_error(self, fmt_shape(("N", self.in_channels, "L")), input)
        try:
            return F.conv1d(input, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        except (TypeError, ValueError) as exc:            # ShapeError is a ValueError
            raise as_layer_error(exc, self, "conv1d") from None

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,):
            s += f", padding={self.padding}"
        if self.dilation != (1,):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class MaxPool1d(Module):
    """``MaxPool1d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)``: the max over windows along L; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        if input.ndim not in (2, 3):
            raise shape_error(self, "(N, C, L) or (C, L)", input)
        try:
            return F.max_pool1d(input, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.ceil_mode, self.return_indices)
        except (TypeError, ValueError) as exc:
            raise as_layer_error(exc, self, "max_pool1d") from None

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")
