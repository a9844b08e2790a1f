"""``Conv2d`` and ``ConvTranspose2d``: 2-D convolution (cross-correlation, as in every deep
learning library) and its transpose (the adjoint: an upsampling by the stride).

Shapes::

    Conv2d           input (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, OH, OW)
                     weight (C_out, C_in/groups, KH, KW), bias (C_out,)
                     OH = floor((H + PH0 + PH1 - DH*(KH - 1) - 1) / SH) + 1
    ConvTranspose2d  input (N, C_in, H, W) or unbatched (C_in, H, W) -> (N, C_out, OH, OW)
                     weight (C_in, C_out/groups, KH, KW), bias (C_out,)
                     OH = (H - 1)*SH - 2*PH + DH*(KH - 1) + output_padding + 1

and likewise OW (``minidl.geometry``; PH0 = PH1 = PH except for ``padding='same'`` with an
even kernel).
"""
from __future__ import annotations

import math

import numpy as np

from ... import creation, geometry
from ...autograd import get_default_dtype
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import as_layer_error, check_float, fmt_shape, shape_error


class _ConvBase(Module):
    """What every convolution layer shares (Conv1d, Conv2d, ConvTranspose2d): its weight, of
    the subclass's ``weight_shape()``, and bias, made and initialised as PyTorch's."""

    def weight_shape(self):
        raise NotImplementedError

    def _make_parameters(self, bias, dtype):
        dtype = np.dtype(dtype or get_default_dtype())
        self.weight = Parameter(creation.empty(*self.weight_shape(), dtype=dtype))
        if bias:
            self.bias = Parameter(creation.empty(self.out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's default: weight ~ kaiming_uniform(a=sqrt(5)), that is
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        fan_in = weight.shape[1] * KH * KW."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)


class _Conv2dBase(_ConvBase):
    """What the two layers share: argument checks, the parameters and PyTorch's init,
    the input check and the repr. ``weight_shape()`` is each layer's own."""

    def _set_arguments(self, in_channels, out_channels, kernel_size, stride, dilation, groups,
                       padding_mode):
        name = type(self).__name__
        if not geometry.is_int(groups):
            raise TypeError(f"{name}: groups must be an int, got {groups!r}")
        if groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by "
                             f"groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        valid = {"zeros", "reflect", "replicate", "circular"}
        if padding_mode not in valid:
            raise ValueError(f"{name}: padding_mode must be one of {sorted(valid)}, but "
                             f"got padding_mode='{padding_mode}'")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = geometry.pair(kernel_size, "kernel_size", name, minimum=1)
        self.stride = geometry.pair(stride, "stride", name, minimum=1)
        self.dilation = geometry.pair(dilation, "dilation", name, minimum=1)
        self.groups = int(groups)
        self.padding_mode = padding_mode

    def _check_input(self, input):  # noqa: A002
        """What only the layer knows: its parameters' dtype and its in_channels."""
        check_float(self, input, self.weight)
        if input.ndim not in (3, 4) or input.shape[-3] != self.in_channels:
            raise shape_error(self, fmt_shape(("N", self.in_channels, "H", "W")), input)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if getattr(self, "output_padding", (0, 0)) != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv2d(_Conv2dBase):
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
        self._set_arguments(in_channels, out_channels, kernel_size, stride, dilation, groups,
                            padding_mode)
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: padding_mode='{padding_mode}' is not "
                                      "supported by minidl (only 'zeros')")
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
        self._make_parameters(bias, dtype)
        if device is not None:
            self.to(device)

    def weight_shape(self):
        """(C_out, C_in/groups, KH, KW)."""
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def forward(self, input):  # noqa: A002
        """input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW) or (C_out, OH, OW).

        Checked here in the layer's own words: what only the layer knows (its parameters'
        dtype, its in_channels). ``F.conv2d`` checks the rest; its errors are re-raised
        with the layer's repr in place of ``conv2d: ``.
        """
        self._check_input(input)
        try:
            return F.conv2d(input, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        except (TypeError, ValueError) as exc:            # ShapeError is a ValueError
            raise as_layer_error(exc, self, "conv2d") from None


class ConvTranspose2d(_Conv2dBase):
    """``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0, groups=1, bias=True, dilation=1, padding_mode='zeros')``: the
    transposed convolution (``F.conv_transpose2d``), with PyTorch's parameter shapes
    (weight (C_in, C_out/groups, KH, KW)) and default init (as ``Conv2d``'s; PyTorch's
    fan_in is then C_out/groups * KH * KW).

    ``padding`` (an int or a pair) is taken off each side of the output;
    ``output_padding`` adds rows/columns at the bottom/right, each smaller than the
    stride or the dilation: a convolution with stride S maps S input sizes to the same
    output size, and output_padding says which of them to give back. Or pass
    ``output_size`` to ``forward``. Only ``padding_mode='zeros'`` exists (as in PyTorch).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__()
        self._set_arguments(in_channels, out_channels, kernel_size, stride, dilation, groups,
                            padding_mode)
        if padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: only padding_mode='zeros' is supported (as "
                             f"in PyTorch), got padding_mode='{padding_mode}'")
        self.padding = geometry.pair(padding, "padding", "ConvTranspose2d", minimum=0)
        self.output_padding = geometry.pair(output_padding, "output_padding",
                                            "ConvTranspose2d", minimum=0)
        self._make_parameters(bias, dtype)
        if device is not None:
            self.to(device)

    def weight_shape(self):
        """(C_in, C_out/groups, KH, KW)."""
        return (self.in_channels, self.out_channels // self.groups) + self.kernel_size

    def forward(self, input, output_size=None):  # noqa: A002
        """input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW) or (C_out, OH, OW).

        output_size: (OH, OW), or the whole output shape, picks ``output_padding`` (in
        place of the layer's): each size must lie between the smallest output
        (output_padding 0) and that plus stride - 1. Errors of ``F.conv_transpose2d``
        are re-raised with the layer's repr in place of ``conv_transpose2d: ``.
        """
        self._check_input(input)
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding(input, output_size)
        try:
            return F.conv_transpose2d(input, self.weight, self.bias, self.stride,
                                      self.padding, output_padding, self.groups,
                                      self.dilation)
        except (TypeError, ValueError) as exc:            # ShapeError is a ValueError
            raise as_layer_error(exc, self, "conv_transpose2d") from None

    def _output_padding(self, input, output_size):  # noqa: A002
        """The output_padding that gives ``output_size`` (PyTorch's rule)."""
        sizes = tuple(output_size)
        if len(sizes) == input.ndim:                      # the whole shape: (N,) C, OH, OW
            sizes = sizes[-2:]
        if len(sizes) != 2 or not all(geometry.is_int(s) for s in sizes):
            raise ValueError(f"{self!r}: for a {input.ndim}-D input, output_size must be 2 "
                             f"or {input.ndim} ints, got {output_size!r}")
        smallest = tuple(geometry.conv_transpose_output_size(L, K, S, P, D) for L, K, S, P, D in
                         zip(input.shape[-2:], self.kernel_size, self.stride, self.padding,
                             self.dilation))
        largest = tuple(m + s - 1 for m, s in zip(smallest, self.stride))
        if any(not lo <= s <= hi for s, lo, hi in zip(sizes, smallest, largest)):
            raise ValueError(f"{self!r}: requested an output size of {tuple(sizes)}, but "
                             f"valid sizes range from {smallest} to {largest} (for an input "
                             f"of {input.shape[-2:]})")
        return tuple(int(s) - m for s, m in zip(sizes, smallest))
