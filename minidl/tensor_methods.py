"""Tensor's operators and methods, attached in one place: ``x + y``, ``x @ w``,
``x.sum(dim=1)``, ``x.reshape(...)``, ``x.relu()``...

Why not in the class body: ``Tensor`` lives in ``autograd.py``, the core that every op is
built on, and the ops (``minidl/ops/``) sit above it. A method such as ``Tensor.sum`` *is*
the op ``ops.sum``, so the class cannot name it without the core importing the layer above.
Instead ``minidl/__init__.py`` calls ``attach()`` once, right after importing the ops and
before anything uses a tensor; every method below is the op function itself (``x.exp()``
runs ``ops.exp(x)``), so there is one implementation of each.

Tensor's own class body keeps what needs no op: shape and dtype queries, ``item``,
``numpy``, ``backward``, ``to``/``cuda``/``cpu``, and ``__hash__``.

In-place ops (``add_``, ``zero_``, ``t[i] = v``, ``a += b``...) are here too. Each one
bumps the tensor's version counter (shared with its views), so a graph that saved the
old values refuses backward instead of giving a wrong gradient (``Context.saved_tensors``).
Three cases, as in PyTorch:

- a leaf that requires grad, with grad mode on: refused (change it under ``no_grad()``);
- in a graph (grad mode on and the tensor or an operand requires grad): differentiable.
  The op runs out of place on a copy of the old values, the result is written into the
  tensor's array (so every alias sees it) and the tensor takes the result's ``grad_fn``.
  Not on a view (``x[0].add_(1)`` with ``x`` in a graph): refused, use ``.clone()``;
- otherwise: the array is changed in place, no graph.
"""
from __future__ import annotations

import numpy as np

from . import backend, ops, random
from .autograd import Tensor, is_grad_enabled
from .errors import ShapeError
from .ops.shape import CopyFunction, FillFunction, SetItemFunction, index_key
from .ops.utils import as_tensor

__all__ = ["attach", "METHODS"]

# Methods that are an op under the same name: ``x.<name>(*args)`` is ``ops.<name>(x, *args)``.
METHODS = ("exp", "log", "sqrt", "abs", "clamp", "clip", "maximum", "minimum", "matmul",
           "sum", "mean", "max", "min", "amax", "var", "std", "argmax", "argmin", "all", "any",
           "reshape", "view", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
           "expand", "contiguous", "clone", "t", "pow", "add", "sub", "mul", "div", "neg",
           "eq", "ne", "lt", "le", "gt", "ge", "relu", "tanh", "sigmoid", "softmax",
           "log_softmax")
# Tensor functions of issue 15 (indexing, sorting, math): also ops under the same name.
METHODS += ("topk", "sort", "argsort", "gather", "scatter", "scatter_add", "masked_fill",
            "chunk", "split", "cumsum", "norm", "sin", "cos", "lerp", "bmm", "allclose",
            "isclose", "unique", "bincount", "nonzero")


def _reflected(fn):
    """``2 - x`` calls ``x.__rsub__(2)``: make the plain operand a tensor, then ``fn(2, x)``."""
    return lambda self, other: fn(as_tensor(other, self), self)


# ----------------------------------------------------------------------------- in-place ops


def _in_graph(t, name, operands=()):
    """Whether the in-place op ``name`` on ``t`` must be recorded; refuses the cases PyTorch
    refuses (a leaf that requires grad) or minidl cannot record (a view in a graph)."""
    if not is_grad_enabled():
        return False
    if t.requires_grad and t.is_leaf:
        raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used in an "
                           "in-place operation. Change it inside `with minidl.no_grad():` "
                           "(as an optimiser does), or work on a .clone() of it.")
    if not (t.requires_grad or any(isinstance(o, Tensor) and o.requires_grad
                                   for o in operands)):
        return False
    if t._is_view:
        raise RuntimeError(f"{name}: in-place change of a view (or detach()) of a tensor, "
                           "recorded for backward, is not supported by minidl; apply it to "
                           ".clone() of the view, or use the out-of-place op")
    return True


def _record(t, name, out_of_place):
    """The graph case: ``out_of_place(old)`` on a copy of ``t``'s values (so nodes that save
    them keep the old ones), written back into ``t.data``; ``t`` takes the result's node."""
    old = Tensor(t.data.copy())
    old._requires_grad, old.grad_fn, old._output_nr = t.requires_grad, t.grad_fn, t._output_nr
    out = out_of_place(old)
    if out.shape != t.shape:
        raise ShapeError(f"{name}: the result has shape {out.shape}, which cannot be written "
                         f"into the tensor of shape {t.shape}")
    t.data[...] = out.data
    t._bump_version()
    if out.grad_fn is not None:
        t.grad_fn, t._output_nr, t._requires_grad = out.grad_fn, out._output_nr, True
    return t


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def _on_device_of(t, value):
    """``value`` (a Tensor, an array of either device, or a nested list) as an array on
    ``t``'s device."""
    arr = _raw(value)
    if not hasattr(arr, "shape"):
        arr = np.asarray(arr)
    return backend.to_device(arr, t.device)


def _write(t, name, fn):
    """The plain case: ``fn(array)`` changes the array in place; shape errors name the op."""
    try:
        fn(t.data)
    except ValueError as e:
        if "broadcast" in str(e):
            raise ShapeError(f"{name}: the operand cannot be broadcast to the tensor's shape "
                             f"{t.shape} ({e})") from None
        raise
    t._bump_version()
    return t


def _arith(name, op, ufunc):
    def method(self, other, *, alpha=None):
        if alpha is not None:
            other = other * alpha
        if _in_graph(self, name, (other,)):
            return _record(self, name, lambda old: op(old, as_tensor(other, self)))
        o = _raw(other)
        return _write(self, name, lambda a: ufunc(a, o, out=a))
    method.__name__ = name
    method.__doc__ = f"In place: ``x.{name}(y)`` is ``x = x.{name[:-1]}(y)`` written into x."
    return method


def _np(name):
    return lambda a, o, out: getattr(backend.get_array_module(a), name)(a, o, out=out)


add_ = _arith("add_", ops.add, _np("add"))
sub_ = _arith("sub_", ops.sub, _np("subtract"))
mul_ = _arith("mul_", ops.mul, _np("multiply"))
div_ = _arith("div_", ops.div, _np("true_divide"))


def clamp_(self, min=None, max=None):
    """In place: ``x.clamp_(min, max)``."""
    if _in_graph(self, "clamp_"):
        return _record(self, "clamp_", lambda old: ops.clamp(old, min, max))
    lo, hi = _raw(min), _raw(max)
    xp = backend.get_array_module(self.data)
    return _write(self, "clamp_", lambda a: (
        xp.maximum(a, lo, out=a) if lo is not None else a,
        xp.minimum(a, hi, out=a) if hi is not None else a))


clip_ = clamp_


def fill_(self, value):
    """In place: every element becomes ``value``."""
    value = value.item() if isinstance(value, Tensor) else value
    if _in_graph(self, "fill_"):
        return _record(self, "fill_", lambda old: FillFunction.apply(old, value=value))
    return _write(self, "fill_", lambda a: a.fill(value))


def zero_(self):
    """In place: every element becomes 0."""
    if _in_graph(self, "zero_"):
        return _record(self, "zero_", lambda old: FillFunction.apply(old, value=0))
    return _write(self, "zero_", lambda a: a.fill(0))


def copy_(self, src):
    """In place: ``src``'s values (broadcast to this shape, cast to this dtype, moved to
    this device) written into this tensor."""
    if _in_graph(self, "copy_", (src,)):
        s = src.to(self.device) if isinstance(src, Tensor) else Tensor(_on_device_of(self, src))
        return _record(self, "copy_", lambda old: CopyFunction.apply(old, s))
    arr = _on_device_of(self, src)

    def write(a):
        a[...] = arr
    return _write(self, "copy_", write)


def _random_(name, kind, **kw):
    def method(self, *args, **kwargs):
        names = list(kw)
        params = dict(kw)
        params.update(zip(names, args))
        params.update(kwargs)
        arr = random.random_array(kind, self.shape, self.dtype, device=self.device,
                                  **{k: float(v) for k, v in params.items()})
        if _in_graph(self, name):
            return _record(self, name, lambda old: CopyFunction.apply(old, Tensor(arr)))

        def write(a):
            a[...] = arr
        return _write(self, name, write)
    method.__name__ = name
    return method


# Tensor.normal_(mean=0, std=1), uniform_(from=0, to=1) (PyTorch's ``from``/``to``: a, b here).
normal_ = _random_("normal_", "normal", mean=0.0, std=1.0)
_uniform_ = _random_("uniform_", "uniform", low=0.0, high=1.0)


def uniform_(self, a=0.0, b=1.0, **kwargs):
    """In place: samples of U(a, b) (also ``from``/``to`` as keywords, as in PyTorch)."""
    a = kwargs.pop("from", a)
    b = kwargs.pop("to", b)
    return _uniform_(self, a, b)


def setitem(self, key, value):
    """``x[key] = value``: in place, differentiable in a graph (``SetItemFunction``)."""
    key = index_key(key, self)
    if _in_graph(self, "__setitem__", (value,)):
        v = as_tensor(value, self)
        return _record(self, "__setitem__", lambda old: SetItemFunction.apply(old, v, key=key))
    v = _on_device_of(self, value) if hasattr(_raw(value), "shape") else value

    def write(a):
        a[key] = v
    _write(self, "__setitem__", write)


def masked_fill_(self, mask, value):
    """In place: ``value`` written where ``mask`` (broadcast to this shape) is True."""
    if _in_graph(self, "masked_fill_", (value,)):
        return _record(self, "masked_fill_", lambda old: ops.masked_fill(old, mask, value))
    out = ops.masked_fill(self.detach(), mask, value)
    return _write(self, "masked_fill_", lambda a: a.__setitem__(Ellipsis, out.data))


def scatter_(self, dim, index, src=None, *, value=None, reduce=None):
    """In place: ``x.scatter(dim, index, src | value)`` written into x."""
    if _in_graph(self, "scatter_", (src,)):
        return _record(self, "scatter_", lambda old: ops.scatter(old, dim, index, src,
                                                                 value=value, reduce=reduce))
    out = ops.scatter(self.detach(), dim, index, src, value=value, reduce=reduce)
    return _write(self, "scatter_", lambda a: a.__setitem__(Ellipsis, out.data))


def scatter_add_(self, dim, index, src):
    """In place: ``x.scatter_add(dim, index, src)`` written into x."""
    if _in_graph(self, "scatter_add_", (src,)):
        return _record(self, "scatter_add_", lambda old: ops.scatter_add(old, dim, index, src))
    out = ops.scatter_add(self.detach(), dim, index, src)
    return _write(self, "scatter_add_", lambda a: a.__setitem__(Ellipsis, out.data))


def apply_inplace(t, name, out_of_place, in_place=None):
    """The in-place form of an elementwise op (``F.relu(x, inplace=True)``, ``x.relu_()``):
    ``out_of_place(t)`` written into ``t``, under the three cases above. ``in_place(array)``,
    when given, changes the raw array itself in the plain case (no temporary array);
    otherwise the out-of-place result is copied in. Returns ``t``."""
    if _in_graph(t, name):
        return _record(t, name, out_of_place)
    if in_place is not None:
        return _write(t, name, in_place)
    result = out_of_place(t).data

    def write(a):
        a[...] = result
    return _write(t, name, write)


def relu_(self):
    """In place: ``x.relu_()`` is ``x = x.relu()`` written into x."""
    return ops.relu(self, inplace=True)


INPLACE = {"add_": add_, "sub_": sub_, "mul_": mul_, "div_": div_, "clamp_": clamp_,
           "clip_": clip_, "fill_": fill_, "zero_": zero_, "copy_": copy_,
           "normal_": normal_, "uniform_": uniform_, "__setitem__": setitem,
           "__iadd__": add_, "__isub__": sub_, "__imul__": mul_, "__itruediv__": div_,
           "relu_": relu_}
INPLACE.update({"masked_fill_": masked_fill_, "scatter_": scatter_,
                "scatter_add_": scatter_add_})


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
    for name, fn in INPLACE.items():
        setattr(T, name, fn)

    for name in METHODS:
        setattr(T, name, getattr(ops, name))

    # Shape helpers written with the ops above.
    T.T = property(lambda self: ops.permute(self, tuple(reversed(range(self.ndim)))))
    T.expand_as = lambda self, other: ops.expand(self, other.shape)
    T.view_as = lambda self, other: ops.reshape(self, other.shape)
    T.reshape_as = T.view_as
    # x.where(condition, y) is where(condition, x, y): the tensor is the second argument.
    T.where = lambda self, condition, y: ops.where(condition, self, y)
    return T
