"""``Conv2d``: 2-D convolution (cross-correlation, as in every deep learning library).

Shapes: input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, KH, KW);
bias (C_out,); output (N, C_out, OH, OW) with
OH = floor((H + 2*PH - DH*(KH - 1) - 1) / SH) + 1, and likewise OW.
"""
from __future__ import annotations

import math

import numpy as np

from ... import creation
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import check_float, fmt_shape, pair, shape_error


class Conv2d(Module):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True, padding_mode='zeros')`` with PyTorch's default init:
    weight ~ kaiming_uniform(a=sqrt(5)), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = C_in/groups * KH * KW.

    ``padding`` may be an int, a pair, ``'valid'`` (no padding) or ``'same'`` (output as
    large as the input; stride 1 only). Only ``padding_mode='zeros'`` is supported.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode != "zeros":
            valid = {"zeros", "reflect", "replicate", "circular"}
            if padding_mode not in valid:
                raise ValueError(f"padding_mode must be one of {sorted(valid)}, but got "
                                 f"padding_mode='{padding_mode}'")
            raise NotImplementedError(f"Conv2d: padding_mode='{padding_mode}' is not "
                                      "supported by minidl (only 'zeros')")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of "
                                 "{'valid', 'same'}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding")
        self.output_padding = (0, 0)
        self.transposed = False
        self.groups = int(groups)
        self.padding_mode = padding_mode
        dtype = np.dtype(dtype or np.float32)
        kh, kw = self.kernel_size
        self.weight = Parameter(creation.empty(out_channels, in_channels // groups, kh, kw,
                                               dtype=dtype))
        if bias:
            self.bias = Parameter(creation.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if device is not None:
            self.to(device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def _explicit_padding(self):
        """((top, bottom), (left, right)) zero padding for the current ``padding``."""
        if self.padding == "valid":
            return ((0, 0), (0, 0))
        if self.padding == "same":
            out = []
            for d, k in zip(self.dilation, self.kernel_size):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        return tuple((p, p) for p in self.padding)

    def forward(self, input):  # noqa: A002
        """input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW) or (C_out, OH, OW)."""
        check_float(self, input, self.weight)
        if input.ndim not in (3, 4) or input.shape[-3] != self.in_channels:
            raise shape_error(self, fmt_shape(("N", self.in_channels, "H", "W")), input)
        for i, (lo, hi) in enumerate(self._explicit_padding()):
            size = input.shape[-2 + i] + lo + hi
            reach = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            if size < reach:
                raise RuntimeError(
                    f"{self!r}: input {input.shape} is too small: its padded "
                    f"{'height' if i == 0 else 'width'} ({size}) is smaller than the "
                    f"(dilated) kernel ({reach})")
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
