"""The differentiable primitives, one module per family, and the Tensor methods built on them.

Each module holds ``XxxFunction`` classes (forward and backward on raw arrays) next to
their lowercase wrappers (``exp = ...``) that take Tensors. This package also installs
the Tensor operators and methods (``x + y``, ``x.sum(dim=1)``), which is why they are
not written in ``autograd.py``: the autograd core sits below the ops.
"""
from __future__ import annotations

from ..autograd import Tensor
from . import activation, elementwise, linalg, reduce, shape
from .activation import log_softmax, relu, sigmoid, softmax, tanh
from .elementwise import (abs, add, clamp, clip, div, eq, exp, ge, gt, le, log, lt, maximum,
                          minimum, mul, ne, neg, pow, sqrt, sub, where)
from .linalg import linear, matmul
from .reduce import all, amax, any, argmax, argmin, max, mean, min, std, sum, var
from .shape import (cat, concatenate, contiguous, expand, flatten, getitem, pad, permute,
                    reshape, squeeze, stack, t, transpose, unsqueeze, view)
from .utils import as_tensor


def _reflect(fn):
    return lambda self, other: fn(as_tensor(other, self), self)


def _install_tensor_methods():
    T = Tensor
    T.__add__, T.__radd__ = add, _reflect(add)
    T.__sub__, T.__rsub__ = sub, _reflect(sub)
    T.__mul__, T.__rmul__ = mul, _reflect(mul)
    T.__truediv__, T.__rtruediv__ = div, _reflect(div)
    T.__pow__, T.__rpow__ = pow, _reflect(pow)
    T.__matmul__, T.__rmatmul__ = matmul, _reflect(matmul)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__abs__ = abs
    T.__eq__, T.__ne__ = eq, ne
    T.__lt__, T.__le__, T.__gt__, T.__ge__ = lt, le, gt, ge
    T.__getitem__ = getitem
    T.__hash__ = lambda self: id(self)  # defining __eq__ above would otherwise drop it

    for name in ("exp", "log", "sqrt", "abs", "clamp", "clip", "maximum", "minimum", "matmul",
                 "sum", "mean", "max", "min", "amax", "var", "std", "argmax", "argmin",
                 "all", "any", "reshape", "view", "flatten", "permute", "transpose",
                 "squeeze", "unsqueeze", "expand", "contiguous", "t", "pow", "add", "sub",
                 "mul", "div", "neg", "eq", "ne", "lt", "le", "gt", "ge",
                 "relu", "tanh", "sigmoid", "softmax", "log_softmax"):
        setattr(T, name, globals()[name])
    T.T = property(lambda self: permute(self, tuple(reversed(range(self.ndim)))))
    T.expand_as = lambda self, other: expand(self, other.shape)
    T.view_as = lambda self, other: reshape(self, other.shape)
    T.reshape_as = T.view_as


_install_tensor_methods()
