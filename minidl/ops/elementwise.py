"""Elementwise arithmetic and math with NumPy broadcasting.

Binary ops broadcast their inputs; their backward sums each gradient back to the
shape of its input (``unbroadcast``). Comparisons return boolean tensors and carry
no gradient.

Most backwards here use only ``*``, ``/``, ``-`` and ``unbroadcast``, which Tensors
share with arrays, so the same formula is the recorded one (``differentiable_backward
= backward``); the others write it again with Tensors, a mask or a sign kept constant
(its derivative is zero almost everywhere).
"""
from __future__ import annotations

import numbers

from .. import backend
from ..autograd import Function, Tensor
from ..kernels.activation import CLAMP, clamp_bound
from ..kernels.arith import ADD, ADD_MIN_ELEMENTS
from .utils import as_tensor, check_broadcast, unbroadcast


# --- binary arithmetic ------------------------------------------------------------------

class AddFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        if a.shape == b.shape and a.size >= ADD_MIN_ELEMENTS:
            return ADD.code(a, b).add(a, b)      # large adds: the add family (kernels/arith.py)
        return a + b

    @staticmethod
    def backward(ctx, gy):  # d(a+b)/da = d(a+b)/db = 1
        sa, sb = ctx.shapes
        return unbroadcast(gy, sa), unbroadcast(gy, sb)

    differentiable_backward = backward


class SubFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, gy):
        sa, sb = ctx.shapes
        gb = unbroadcast(-gy, sb) if ctx.needs_input_grad[1] else None
        return unbroadcast(gy, sa), gb

    differentiable_backward = backward


class MulFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, gy):  # d(ab)/da = b, d(ab)/db = a
        a, b = ctx.saved_tensors
        ga = unbroadcast(gy * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(gy * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb

    differentiable_backward = backward


class DivFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, gy):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        a, b = ctx.saved_tensors
        ga = unbroadcast(gy / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-gy * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb

    differentiable_backward = backward


class PowFunction(Function):
    """``a ** b`` for tensors ``a`` and ``b`` (use ``a ** 2`` with a Python number when you can)."""

    @staticmethod
    def forward(ctx, a, b):
        y = a ** b
        ctx.save_for_backward(a, b, y)
        return y

    @staticmethod
    def backward(ctx, gy):  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b log a
        a, b, y = ctx.saved_tensors
        xp = backend.get_array_module(a)
        ga = unbroadcast(gy * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            # log a is undefined for a <= 0; PyTorch gives 0 where a == 0 and b >= 0.
            safe = xp.where(a > 0, a, xp.ones_like(a))
            gb = unbroadcast(gy * y * xp.log(safe), b.shape)
        return ga, gb

    @staticmethod
    def differentiable_backward(ctx, gy):
        a, b, y = ctx.saved_tensors
        ga = unbroadcast(gy * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            safe = where(a > 0, a, 1.0)
            gb = unbroadcast(gy * y * log(safe), b.shape)
        return ga, gb


class PowScalarFunction(Function):
    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** exponent

    @staticmethod
    def backward(ctx, gy):  # d(a^p)/da = p a^(p-1)
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        return gy * (p * a ** (p - 1)).astype(a.dtype, copy=False)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        return gy * (p * a ** (p - 1))


class NegFunction(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, gy):
        return -gy

    differentiable_backward = backward


def add(a, b):
    return AddFunction.apply(*_as_operands(a, b, "add"))


def sub(a, b):
    return SubFunction.apply(*_as_operands(a, b, "sub"))


def mul(a, b):
    return MulFunction.apply(*_as_operands(a, b, "mul"))


def div(a, b):
    return DivFunction.apply(*_as_operands(a, b, "div"))


def pow(a, b):  # noqa: A001 - PyTorch's name
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalarFunction.apply(a, exponent=b)
    return PowFunction.apply(*_as_operands(a, b, "pow"))


def neg(a):
    return NegFunction.apply(a)


def _as_operands(a, b, op):
    """Both operands as Tensors; an integer/bool operand meeting a float one takes its dtype
    (PyTorch's rule: int64 tensor * 0.5 is float32, where NumPy would give float64).
    Shapes that do not broadcast are refused here, naming the op (NumPy's own message
    names neither)."""
    if isinstance(a, Tensor):
        b = as_tensor(b, a)
    else:
        a = as_tensor(a, b)
    da, db = a.data, b.data
    check_broadcast(da.shape, db.shape, lambda: f"{op}: shapes {a.shape} and {b.shape} do not "
                    f"broadcast (each dim, aligned from the right, must be equal or 1)")
    ka, kb = da.dtype.kind, db.dtype.kind
    if ka != kb:
        if ka in "iub" and kb == "f":
            a = a.to(b.dtype)
        elif kb in "iub" and ka == "f":
            b = b.to(a.dtype)
    return a, b


# --- unary math -----------------------------------------------------------------------

class ExpFunction(Function):
    @staticmethod
    def forward(ctx, x):
        y = backend.get_array_module(x).exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):  # d exp(x)/dx = exp(x)
        (y,) = ctx.saved_tensors
        return gy * y

    differentiable_backward = backward


class LogFunction(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.get_array_module(x).log(x)

    @staticmethod
    def backward(ctx, gy):  # d log(x)/dx = 1/x
        (x,) = ctx.saved_tensors
        return gy / x

    differentiable_backward = backward


class SqrtFunction(Function):
    @staticmethod
    def forward(ctx, x):
        y = backend.get_array_module(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):  # d sqrt(x)/dx = 1 / (2 sqrt(x))
        (y,) = ctx.saved_tensors
        return gy / (2 * y)

    differentiable_backward = backward


class AbsFunction(Function):
    @staticmethod
    def forward(ctx, x):
        xp = backend.get_array_module(x)
        ctx.save_for_backward(x)
        return xp.abs(x)

    @staticmethod
    def backward(ctx, gy):  # d|x|/dx = sign(x), 0 at x = 0 (as in PyTorch)
        (x,) = ctx.saved_tensors
        return gy * backend.get_array_module(x).sign(x)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return gy * Tensor(backend.get_array_module(x.data).sign(x.data))


def _inside(x, lo, hi):
    """Where ``x`` lies inside ``[lo, hi]``, bounds included (either may be None)."""
    mask = backend.get_array_module(x).ones(x.shape, dtype=bool)
    if lo is not None:
        mask &= x >= lo
    if hi is not None:
        mask &= x <= hi
    return mask


class ClampFunction(Function):
    """y = clamp(x, min, max) through the clamp kernel family (``kernels/activation.py``:
    PyTorch's semantics for NaN, -0.0 and min > max)."""

    @staticmethod
    def forward(ctx, x, min=None, max=None):  # noqa: A002 - PyTorch's names
        ctx.save_for_backward(x)
        ctx.bounds = (min, max)
        return CLAMP.code(x).clamp_forward(x, min, max)

    @staticmethod
    def backward(ctx, gy):
        # Gradient passes where the input lies inside [min, max] (bounds included, as in
        # PyTorch), and is zero where the clamp replaced the value.
        (x,) = ctx.saved_tensors
        return CLAMP.code(gy, x).clamp_backward(gy, x, *ctx.bounds)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # gy times the constant mask (its derivative is zero almost everywhere)
        (x,) = ctx.saved_tensors
        lo, hi = (clamp_bound(b, x.data) for b in ctx.bounds)
        return gy * Tensor(_inside(x.data, lo, hi).astype(gy.dtype))


def exp(x):
    return ExpFunction.apply(x)


def log(x):
    return LogFunction.apply(x)


def sqrt(x):
    return SqrtFunction.apply(x)


def abs(x):  # noqa: A001 - PyTorch's name
    return AbsFunction.apply(x)


def clamp(x, min=None, max=None):  # noqa: A002 - PyTorch's names
    """Limit ``x`` to ``[min, max]`` (either bound may be None, the other a number).
    NaN stays NaN; with min > max every element becomes max (PyTorch's rules)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    for name, bound in (("min", min), ("max", max)):
        if bound is not None and not isinstance(bound, numbers.Real):
            raise TypeError(f"clamp: expected {name} to be a number or None, got "
                            f"{type(bound).__name__}")
    return ClampFunction.apply(x, min=min, max=max)


clip = clamp


# --- selections -------------------------------------------------------------------------

def _split(gy, wa, shape_a, shape_b):
    """``gy`` shared between two inputs: ``wa`` (1, 0 or 0.5 at a tie; a constant) to the
    first, ``1 - wa`` to the second."""
    wa = wa.astype(gy.dtype) if not isinstance(wa, Tensor) else wa.to(gy.dtype)
    return unbroadcast(gy * wa, shape_a), unbroadcast(gy * (1 - wa), shape_b)


class MaximumFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return backend.get_array_module(a, b).maximum(a, b)

    @staticmethod
    def backward(ctx, gy):
        # Ties split the gradient evenly between the two inputs, as PyTorch does.
        a, b = ctx.saved_tensors
        return _split(gy, (a > b) + 0.5 * (a == b), a.shape, b.shape)

    @staticmethod
    def differentiable_backward(ctx, gy):
        a, b = ctx.saved_tensors
        return _split(gy, Tensor((a.data > b.data) + 0.5 * (a.data == b.data)), a.shape, b.shape)


class MinimumFunction(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return backend.get_array_module(a, b).minimum(a, b)

    @staticmethod
    def backward(ctx, gy):
        a, b = ctx.saved_tensors
        return _split(gy, (a < b) + 0.5 * (a == b), a.shape, b.shape)

    @staticmethod
    def differentiable_backward(ctx, gy):
        a, b = ctx.saved_tensors
        return _split(gy, Tensor((a.data < b.data) + 0.5 * (a.data == b.data)), a.shape, b.shape)


class WhereFunction(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        xp = backend.get_array_module(cond, a, b)
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, b.shape)
        return xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, gy):
        (cond,) = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        zero = xp.zeros((), gy.dtype)
        sa, sb = ctx.shapes
        ga = unbroadcast(xp.where(cond, gy, zero), sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(xp.where(cond, zero, gy), sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb

    @staticmethod
    def differentiable_backward(ctx, gy):
        (cond,) = ctx.saved_tensors
        sa, sb = ctx.shapes
        ga = unbroadcast(where(cond, gy, 0.0), sa) if ctx.needs_input_grad[1] else None
        gb = unbroadcast(where(cond, 0.0, gy), sb) if ctx.needs_input_grad[2] else None
        return None, ga, gb


def maximum(a, b):
    return MaximumFunction.apply(*_as_operands(a, b, "maximum"))


def minimum(a, b):
    return MinimumFunction.apply(*_as_operands(a, b, "minimum"))


def where(condition, input=None, other=None):  # noqa: A002 - PyTorch's names
    """``input`` where ``condition`` holds, else ``other`` (all three broadcast).
    ``where(condition)`` alone: the indices where it holds, one int64 tensor per dim
    (``nonzero(condition, as_tuple=True)``), as PyTorch."""
    if input is None and other is None:
        xp = backend.get_array_module(condition.data)
        c = condition.data if condition.ndim else condition.data.reshape(1)
        return tuple(Tensor(i.astype(xp.int64, copy=False)) for i in xp.nonzero(c))
    like = input if isinstance(input, Tensor) else other
    if not isinstance(like, Tensor):
        raise TypeError("where: at least one of input and other must be a Tensor")
    input, other = as_tensor(input, like), as_tensor(other, like)
    cond = condition if isinstance(condition, Tensor) else as_tensor(condition, like)
    if cond.dtype.kind != "b":
        raise TypeError(f"where: condition must be a boolean tensor, got dtype {cond.dtype}")
    if input.dtype != other.dtype:
        raise TypeError(f"where: input and other must have the same dtype, "
                        f"got {input.dtype} and {other.dtype}")
    return WhereFunction.apply(cond, input, other)


# --- comparisons (no gradient) ----------------------------------------------------------

def _compare(op):
    def compare(a, b):
        b = as_tensor(b, a)
        if a.device != b.device:
            raise RuntimeError(f"comparison: tensors on different devices ({a.device}, {b.device})")
        return Tensor(op(a.data, b.data))
    return compare


eq = _compare(lambda a, b: a == b)
ne = _compare(lambda a, b: a != b)
lt = _compare(lambda a, b: a < b)
le = _compare(lambda a, b: a <= b)
gt = _compare(lambda a, b: a > b)
ge = _compare(lambda a, b: a >= b)
