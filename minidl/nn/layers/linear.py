"""Fully connected layers: ``Linear`` and the pass-through ``Identity``."""
from __future__ import annotations

import math

import numpy as np

from ... import creation
from ...autograd import get_default_dtype
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import check_float, fmt_shape, shape_error


class Identity(Module):
    """Returns its input unchanged (any arguments to the constructor are ignored)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):  # noqa: A002
        return input


class Linear(Module):
    """y = x W^T + b.

    input: (..., in_features) -> output: (..., out_features).
    weight: (out_features, in_features), bias: (out_features,).
    Init (PyTorch's): weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
    bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        dtype = np.dtype(dtype or get_default_dtype())
        self.weight = Parameter(creation.empty(out_features, in_features, dtype=dtype))
        if bias:
            self.bias = Parameter(creation.empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()
        if device is not None:
            self.to(device)

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):  # noqa: A002
        check_float(self, input, self.weight)
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise shape_error(self, fmt_shape(("...", self.in_features)), input)
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")
