"""Tensor's operators and methods, attached in one place: ``x + y``, ``x @ w``,
``x.sum(dim=1)``, ``x.reshape(...)``, ``x.relu()``...

Why not in the class body: ``Tensor`` lives in ``autograd.py``, the core that every op is
built on, and the ops (``minidl/ops/``) sit above it. A method such as ``Tensor.sum`` *is*
the op ``ops.sum``, so the class cannot name it without the core importing the layer above.
Instead ``minidl/__init__.py`` calls ``attach()`` once, right after importing the ops and
before anything uses a tensor; every method below is the op function itself (``x.exp()``
runs ``ops.exp(x)``), so there is one implementation of each.

Tensor's own class body keeps what needs no op: shape and dtype queries, ``item``,
``numpy``, ``backward``, ``to``/``cuda``/``cpu``, in-place fills, and ``__hash__``.
"""
from __future__ import annotations

from . import ops
from .autograd import Tensor
from .ops.utils import as_tensor

__all__ = ["attach", "METHODS"]

# Methods that are an op under the same name: ``x.<name>(*args)`` is ``ops.<name>(x, *args)``.
METHODS = ("exp", "log", "sqrt", "abs", "clamp", "clip", "maximum", "minimum", "matmul",
           "sum", "mean", "max", "min", "amax", "var", "std", "argmax", "argmin", "all", "any",
           "reshape", "view", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
           "expand", "contiguous", "t", "pow", "add", "sub", "mul", "div", "neg",
           "eq", "ne", "lt", "le", "gt", "ge", "relu", "tanh", "sigmoid", "softmax",
           "log_softmax")


def _reflected(fn):
    """``2 - x`` calls ``x.__rsub__(2)``: make the plain operand a tensor, then ``fn(2, x)``."""
    return lambda self, other: fn(as_tensor(other, self), self)


def attach(T=Tensor):
    """Attach the operators and methods to the Tensor class ``T`` (idempotent)."""
    # Arithmetic operators and their reflected forms (number OP tensor).
    T.__add__, T.__radd__ = ops.add, _reflected(ops.add)
    T.__sub__, T.__rsub__ = ops.sub, _reflected(ops.sub)
    T.__mul__, T.__rmul__ = ops.mul, _reflected(ops.mul)
    T.__truediv__, T.__rtruediv__ = ops.div, _reflected(ops.div)
    T.__pow__, T.__rpow__ = ops.pow, _reflected(ops.pow)
    T.__matmul__, T.__rmatmul__ = ops.matmul, _reflected(ops.matmul)
    T.__neg__ = ops.neg
    T.__pos__ = lambda self: self
    T.__abs__ = ops.abs
    # Comparisons give boolean tensors (Tensor.__hash__, by identity, is in the class body).
    T.__eq__, T.__ne__ = ops.eq, ops.ne
    T.__lt__, T.__le__, T.__gt__, T.__ge__ = ops.lt, ops.le, ops.gt, ops.ge
    T.__getitem__ = ops.getitem

    for name in METHODS:
        setattr(T, name, getattr(ops, name))

    # Shape helpers written with the ops above.
    T.T = property(lambda self: ops.permute(self, tuple(reversed(range(self.ndim)))))
    T.expand_as = lambda self, other: ops.expand(self, other.shape)
    T.view_as = lambda self, other: ops.reshape(self, other.shape)
    T.reshape_as = T.view_as
    return T
