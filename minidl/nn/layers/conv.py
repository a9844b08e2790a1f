"""``Conv2d``: 2-D convolution (cross-correlation, as in every deep learning library).

Shapes: input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, KH, KW);
bias (C_out,); output (N, C_out, OH, OW) with
OH = floor((H + PH0 + PH1 - DH*(KH - 1) - 1) / SH) + 1, and likewise OW
(``minidl.geometry``; PH0 = PH1 = PH except for ``padding='same'`` with an even kernel).
"""
from __future__ import annotations

import math

import numpy as np

from ... import creation, geometry
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import as_layer_error, check_float, fmt_shape, shape_error


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
        if not geometry.is_int(groups):
            raise TypeError(f"Conv2d: groups must be an int, got {groups!r}")
        if groups <= 0:
            raise ValueError(f"Conv2d: groups must be a positive integer, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) must be divisible by "
                             f"groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"Conv2d: out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        if padding_mode != "zeros":
            valid = {"zeros", "reflect", "replicate", "circular"}
            if padding_mode not in valid:
                raise ValueError(f"Conv2d: padding_mode must be one of {sorted(valid)}, but "
                                 f"got padding_mode='{padding_mode}'")
            raise NotImplementedError(f"Conv2d: padding_mode='{padding_mode}' is not "
                                      "supported by minidl (only 'zeros')")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = geometry.pair(kernel_size, "kernel_size", "Conv2d", minimum=1)
        self.stride = geometry.pair(stride, "stride", "Conv2d", minimum=1)
        self.dilation = geometry.pair(dilation, "dilation", "Conv2d", minimum=1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: invalid padding string {padding!r}, should be one "
                                 "of {'valid', 'same'}")
            # raises for 'same' with a stride (PyTorch's rule), in the layer's name
            geometry.conv_padding(padding, self.kernel_size, self.stride, self.dilation,
                                  op="Conv2d")
            self.padding = padding
        else:
            self.padding = geometry.pair(padding, "padding", "Conv2d", minimum=0)
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

    def forward(self, input):  # noqa: A002
        """input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW) or (C_out, OH, OW).

        Checked here in the layer's own words: what only the layer knows (its parameters'
        dtype, its in_channels). ``F.conv2d`` checks the rest; its errors are re-raised
        with the layer's repr in place of ``conv2d: ``.
        """
        check_float(self, input, self.weight)
        if input.ndim not in (3, 4) or input.shape[-3] != self.in_channels:
            raise shape_error(self, fmt_shape(("N", self.in_channels, "H", "W")), input)
        try:
            return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        except (TypeError, ValueError) as exc:            # ShapeError is a ValueError
            raise as_layer_error(exc, self, "conv2d") from None

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
