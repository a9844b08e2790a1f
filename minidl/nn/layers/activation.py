"""Activation layers: elementwise (any shape in, same shape out) and (log-)softmax over a dim.

``inplace=True`` (``nn.ReLU(inplace=True)``, as PyTorch code writes it) is shown in the repr.
ReLU, ReLU6 and LeakyReLU then write their result into the input, as PyTorch's do, unless
the call is recorded for backward (grad mode on and an input that requires grad): there
minidl computes out of place, since an in-place op in a graph costs a copy of the input
(``tensor_methods._record``); the result is the same, only memory use differs. The other
activations always compute out of place.
"""
from __future__ import annotations

import numpy as _np

from ... import creation as _creation
from ...autograd import get_default_dtype, is_grad_enabled
from .. import functional as F
from ..module import Module
from ..parameter import Parameter as _Parameter
from ._checks import as_layer_error, check_float as _check_float, check_tensor


def _in_place(module, input):  # noqa: A002
    """Whether ``module.inplace`` writes into ``input`` on this call (module docstring):
    unless the call is recorded for backward."""
    return module.inplace and not (input.requires_grad and is_grad_enabled())


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.relu(input, inplace=_in_place(self, input))

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU6(Module):
    """min(max(x, 0), 6), elementwise (MobileNetV2's activation): a ReLU whose output is
    capped, which keeps activations small enough for low-precision arithmetic."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.relu6(input, inplace=_in_place(self, input))

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(Module):
    """x if x >= 0 else negative_slope * x."""

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.leaky_relu(input, self.negative_slope, inplace=_in_place(self, input))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class Tanh(Module):
    """tanh(x)."""

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.tanh(input)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.sigmoid(input)


class GELU(Module):
    """x * Phi(x) (``approximate='none'``) or its tanh approximation (``'tanh'``)."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class _SoftmaxBase(Module):
    def __init__(self, dim=None, temperature=1.0):
        super().__init__()
        self.dim = dim
        self.temperature = temperature

    def extra_repr(self):
        s = f"dim={self.dim}"
        if self.temperature != 1.0:
            s += f", temperature={self.temperature}"
        return s


class Softmax(_SoftmaxBase):
    """exp(x_i / T) / sum_j exp(x_j / T) along ``dim``; ``temperature`` T (minidl's extra,
    default 1 = PyTorch's softmax) flattens (T > 1) or sharpens (T < 1) the distribution."""

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.softmax(input, self.dim, temperature=self.temperature)


class LogSoftmax(_SoftmaxBase):
    """log(softmax(x / T)) along ``dim``, computed stably; ``temperature`` as in Softmax."""

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.log_softmax(input, self.dim, temperature=self.temperature)


# --- SiLU, Hardswish, ELU, PReLU ------------------------------------------------------------


class SiLU(Module):
    """x * sigmoid(x) (the "swish": EfficientNet's, YOLO's activation)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.silu(input)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Hardswish(Module):
    """x * relu6(x + 3) / 6 (MobileNetV3's): SiLU's shape from cheap pieces."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.hardswish(input)


class ELU(Module):
    """x if x > 0 else alpha * (exp(x) - 1): smooth below 0, saturating at -alpha."""

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.elu(input, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}" + (", inplace=True" if self.inplace else "")


class PReLU(Module):
    """``PReLU(num_parameters=1, init=0.25)``: x if x > 0 else a * x with a learnt slope a,
    one shared (num_parameters=1) or one per channel (dim 1 of the input:
    num_parameters=C). weight: (num_parameters,), every element ``init``."""

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.init = init
        self.weight = _Parameter(_creation.full((self.num_parameters,), float(init),
                                                dtype=_np.dtype(dtype or get_default_dtype())))
        if device is not None:
            self.to(device)

    def reset_parameters(self):
        self.weight.data[...] = self.init

    def forward(self, input):  # noqa: A002
        _check_float(self, input, self.weight)
        try:
            return F.prelu(input, self.weight)
        except ValueError as exc:                      # ShapeError is a ValueError
            raise as_layer_error(exc, self, "prelu") from None

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Hardsigmoid(Module):
    """relu6(x + 3) / 6 (MobileNetV3's gate): sigmoid's S shape, piecewise linear."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.hardsigmoid(input)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""
