"""Activation layers: elementwise (any shape in, same shape out) and (log-)softmax over a dim.

``inplace=True`` is accepted for source compatibility with PyTorch code
(``nn.ReLU(inplace=True)``) and shown in the repr, but minidl always computes out of place:
the result is the same, only memory use differs.
"""
from __future__ import annotations

from .. import functional as F
from ..module import Module
from ._checks import check_tensor


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        return F.relu(input)

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
        return F.relu6(input)

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
        return F.leaky_relu(input, self.negative_slope)

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
