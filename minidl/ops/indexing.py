"""Index ops: gather, scatter, scatter_add, masked_fill, topk, sort/argsort, and the
integer tools one_hot, unique, bincount, nonzero.

Shapes: x (the input, any shape S, ``D = S[dim]``), index (int64, as many dims as x,
shape I with ``I[d] <= S[d]`` for every d != dim), src (at least I in every dim), y the
result; gy (like y) dL/dy, gx (like x) dL/dx, gsrc (like src) dL/dsrc.

``gather(x, dim, index)[i, j, k] = x[i, index[i, j, k], k]`` (for dim = 1): the index
replaces the coordinate along ``dim``, the other coordinates are the element's own. Every
such place is one *flat position* in x's memory order (``_positions``), so

- gather reads ``x.reshape(-1)[pos]``                                  y: (I)
- scatter writes ``src`` at ``pos`` into a copy of x                    y: (S)
- scatter_add adds ``src`` at ``pos`` into x (repeats add up)           y: (S)

and their gradients are each other: gather's backward is a scatter_add of gy into zeros,
scatter_add's backward to src is a gather of gy, scatter's backward to x is gy with
zeros where something was written. The recorded backwards (``create_graph=True``) are
these same ops on Tensors. topk and sort pick indices (no gradient: they are integers)
and then gather the values, so their gradient is gather's.

Ties in topk/sort: minidl sorts stably (equal values keep their order), as PyTorch does
with ``stable=True``; PyTorch's default may order ties otherwise, so tests use distinct
values.
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from .elementwise import where
from .shape import getitem
from .utils import as_tensor, normalize_dim

# What topk and sort return: a pair with names, like torch.return_types.topk / .sort.
TopK = namedtuple("topk", ["values", "indices"])
Sort = namedtuple("sort", ["values", "indices"])


# --- flat positions ------------------------------------------------------------------------

def _positions(index, shape, dim):
    """For each element of ``index`` (shape I), the flat position (C order) in an array of
    ``shape`` that it points to: its own coordinates, except ``index``'s value along ``dim``.

    index: (I) integer array; returns: (I) int64 array of positions in ``[0, prod(shape))``.
    """
    xp = backend.get_array_module(index)
    strides = [1] * len(shape)                  # element strides of a C-ordered array
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    pos = index.astype(xp.int64) * strides[dim]
    for d, n in enumerate(index.shape):
        if d != dim:
            along = [1] * index.ndim
            along[d] = n
            pos = pos + xp.arange(n, dtype=xp.int64).reshape(along) * strides[d]
    return pos


def _add_at(v, pos, shape):
    """Zeros of ``shape`` with ``v`` (like pos) added at the flat positions ``pos``; a
    position named several times receives the sum. Floats go through ``bincount`` (one
    pass, deterministic on the GPU too, no ``add.at`` in the hot path); integers, whose
    sums float64 could round, through ``add.at``."""
    xp = backend.get_array_module(v)
    size = int(np.prod(shape, dtype=np.int64))
    if v.dtype.kind == "f":
        out = xp.bincount(pos.reshape(-1), weights=v.reshape(-1), minlength=size)
        return out.astype(v.dtype, copy=False).reshape(shape)
    out = xp.zeros(size, v.dtype)
    xp.add.at(out, pos.reshape(-1), v.reshape(-1))
    return out.reshape(shape)


def _read_at(a, pos):
    """``a``'s elements at the flat positions ``pos``: (pos's shape)."""
    return a.reshape(-1)[pos]


# --- gather / scatter_add / scatter ------------------------------------------------------

class GatherFunction(Function):
    """y = x.reshape(-1)[pos]; x: (S), pos: (I) flat positions -> y: (I)."""

    @staticmethod
    def forward(ctx, x, pos):
        ctx.meta = (pos, x.shape)
        return _read_at(x, pos)

    @staticmethod
    def backward(ctx, gy):  # each picked element gets its gy; picked twice, the sum
        pos, shape = ctx.meta
        return _add_at(gy, pos, shape)

    @staticmethod
    def differentiable_backward(ctx, gy):
        pos, shape = ctx.meta
        zeros = Tensor(backend.get_array_module(gy.data).zeros(shape, gy.dtype))
        return ScatterAddFunction.apply(zeros, gy, pos=pos)


class ScatterAddFunction(Function):
    """y = x with src added at the flat positions pos; x: (S), src: (I), pos: (I) -> (S)."""

    @staticmethod
    def forward(ctx, x, src, pos):
        ctx.pos = pos
        return x + _add_at(src, pos, x.shape)

    @staticmethod
    def backward(ctx, gy):  # dy/dx = 1; each src element lands at its pos: read gy there
        gsrc = _read_at(gy, ctx.pos) if ctx.needs_input_grad[1] else None
        return gy, gsrc

    @staticmethod
    def differentiable_backward(ctx, gy):
        gsrc = GatherFunction.apply(gy, pos=ctx.pos) if ctx.needs_input_grad[1] else None
        return gy, gsrc


def _kept(pos, shape, dtype):
    """1 where scatter keeps x's value, 0 where it wrote: a constant mask (S)."""
    xp = backend.get_array_module(pos)
    keep = xp.ones(shape, dtype)
    keep.reshape(-1)[pos.reshape(-1)] = 0
    return keep


class ScatterFunction(Function):
    """y = copy of x with src (or the number ``value`` when src is None) written at pos;
    x: (S), src: (I) or None, pos: (I) -> y: (S). A position written twice keeps one of the
    values (which one is unspecified, as in PyTorch)."""

    @staticmethod
    def forward(ctx, x, src, pos, value):
        ctx.pos = pos
        y = x.copy()
        flat = y.reshape(-1)  # y is a fresh C-ordered copy: a view
        flat[pos.reshape(-1)] = value if src is None else src.reshape(-1)
        return y

    @staticmethod
    def backward(ctx, gy):  # overwritten places pass nothing back to x; src reads gy at pos
        pos = ctx.pos
        gx = gy * _kept(pos, gy.shape, gy.dtype) if ctx.needs_input_grad[0] else None
        gsrc = _read_at(gy, pos) if ctx.needs_input_grad[1] else None
        return gx, gsrc

    @staticmethod
    def differentiable_backward(ctx, gy):
        pos = ctx.pos
        gx = gy * Tensor(_kept(pos, gy.shape, gy.dtype)) if ctx.needs_input_grad[0] else None
        gsrc = GatherFunction.apply(gy, pos=pos) if ctx.needs_input_grad[1] else None
        return gx, gsrc


def _check_index(name, x, dim, index, src=None):
    """Validate gather/scatter arguments as PyTorch does; returns (dim, flat positions)."""
    if not isinstance(index, Tensor):
        raise TypeError(f"{name}: index must be a Tensor of dtype int64, got "
                        f"{type(index).__name__}")
    if index.dtype != np.int64:
        raise TypeError(f"{name}: expected index of dtype int64, got {index.dtype}")
    if index.device != x.device:
        raise RuntimeError(f"{name}: index is on {index.device}, the input on {x.device}; "
                           "move it with .to(device)")
    (d,) = normalize_dim(dim, x.ndim, name)
    if index.ndim != x.ndim and not (index.ndim <= 1 and x.ndim <= 1):
        raise ShapeError(f"{name}: index must have as many dims as the input ({x.ndim}), "
                         f"got index of shape {index.shape} for input {x.shape}")
    x_shape = x.shape if x.ndim else (1,)
    i_shape = index.shape if index.ndim else (1,)
    for k, (n, m) in enumerate(zip(i_shape, x_shape)):
        if k != d and n > m:
            raise ShapeError(f"{name}: index {index.shape} is larger than the input "
                             f"{x.shape} in dim {k} ({n} > {m}); only dim {d} may differ")
    if src is not None:
        s_shape = src.shape if src.ndim else (1,)
        if len(s_shape) != len(i_shape) or builtins.any(n > m for n, m in zip(i_shape, s_shape)):
            raise ShapeError(f"{name}: index {index.shape} must be no larger than src "
                             f"{src.shape} in every dim")
    idx = index.data.reshape(i_shape)
    if idx.size:  # on the GPU one sync for min/max: the price of naming the bad index
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= x_shape[d]:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name}: index {bad} is out of bounds for dim {d} with size "
                             f"{x_shape[d]} (expected values in [0, {x_shape[d] - 1}])")
    return d, _positions(idx, x_shape, d)


def gather(input, dim, index, *, sparse_grad=False):  # noqa: A002 - PyTorch's names
    """Values of ``input`` picked along ``dim`` by ``index``: y has index's shape and
    ``y[i][j] = input[index[i][j]][j]`` (dim 0), ``input[i][index[i][j]]`` (dim 1).
    ``sparse_grad`` is accepted for PyTorch's signature (minidl's gradients are dense)."""
    _, pos = _check_index("gather", input, dim, index)
    return GatherFunction.apply(input, pos=pos.reshape(index.shape))


def _src_part(src, index):
    """The part of ``src`` that index addresses (its leading corner of index's shape),
    through getitem so its gradient lands back in src's place (zeros elsewhere)."""
    if src.shape == index.shape:
        return src
    return getitem(src, tuple(slice(0, n) for n in index.shape))


def scatter(input, dim, index, src=None, *, value=None, reduce=None):  # noqa: A002
    """A copy of ``input`` with ``src`` (a tensor) or ``value`` (a number) written at the
    places ``index`` names along ``dim``: ``y[index[i][j]][j] = src[i][j]`` (dim 0).

    ``src`` may be given as a number (``x.scatter(1, idx, 0.0)``), as PyTorch allows.
    ``reduce='add'`` is ``scatter_add``; ``'multiply'`` is not supported.
    """
    if src is not None and not isinstance(src, Tensor):
        src, value = None, src
    if (src is None) == (value is None):
        raise TypeError("scatter: give exactly one of src (a Tensor) and value (a number)")
    if reduce is not None:
        if reduce == "add":
            if src is None:
                src = as_tensor(value, input).expand(index.shape)
            return scatter_add(input, dim, index, src)
        if reduce == "multiply":
            raise NotImplementedError("scatter: reduce='multiply' is not supported by minidl; "
                                      "use reduce=None or 'add' (scatter_add)")
        raise ValueError(f"scatter: reduce must be None, 'add' or 'multiply', got {reduce!r}")
    if src is not None and src.dtype != input.dtype:
        raise TypeError(f"scatter: expected src of the input's dtype {input.dtype}, "
                        f"got {src.dtype}")
    _, pos = _check_index("scatter", input, dim, index, src)
    part = _src_part(src, index) if src is not None else None
    if value is not None:
        value = value.item() if isinstance(value, Tensor) else value
    return ScatterFunction.apply(input, part, pos=pos.reshape(index.shape), value=value)


def scatter_add(input, dim, index, src):  # noqa: A002 - PyTorch's names
    """A copy of ``input`` with ``src`` added at the places ``index`` names along ``dim``:
    ``y[index[i][j]][j] += src[i][j]`` (dim 0); a place named twice receives both."""
    if not isinstance(src, Tensor):
        raise TypeError(f"scatter_add: src must be a Tensor, got {type(src).__name__}")
    if src.dtype != input.dtype:
        raise TypeError(f"scatter_add: expected src of the input's dtype {input.dtype}, "
                        f"got {src.dtype}")
    _, pos = _check_index("scatter_add", input, dim, index, src)
    return ScatterAddFunction.apply(input, _src_part(src, index), pos=pos.reshape(index.shape))


# --- masked_fill -------------------------------------------------------------------------

def masked_fill(input, mask, value):  # noqa: A002 - PyTorch's names
    """``input`` with ``value`` where the boolean ``mask`` (broadcast to input's shape) is
    True. ``value``: a number, or a 0-d tensor (which then receives a gradient: the sum of
    gy over the filled places). Written as ``where(mask, value, input)``, whose gradient
    is exactly that."""
    if not isinstance(mask, Tensor) or mask.dtype != np.bool_:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"masked_fill: expected a boolean mask tensor, got {got}")
    try:
        shape = np.broadcast_shapes(mask.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise ShapeError(f"masked_fill: mask of shape {mask.shape} cannot be broadcast to the "
                         f"input's shape {input.shape}")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ShapeError(f"masked_fill: only a 0-dim value tensor is supported, got shape "
                             f"{value.shape}")
        value = value if value.dtype == input.dtype else value.to(input.dtype)
    else:
        xp = backend.get_array_module(input.data)
        value = Tensor(xp.asarray(value, dtype=input.dtype))
    return where(mask, value, input)


# --- sorting -----------------------------------------------------------------------------

def _argsort(a, axis, descending):
    """Indices that sort ``a`` along ``axis``, stably: equal values keep their order in both
    directions (descending: sort the reversed array ascending, reverse the result, and map
    the positions back), NaN counted as the largest value, as in PyTorch."""
    xp = backend.get_array_module(a)
    if not descending:
        return xp.argsort(a, axis=axis, kind="stable")
    n = a.shape[axis]
    rev = xp.argsort(xp.flip(a, axis=axis), axis=axis, kind="stable")
    return (n - 1) - xp.flip(rev, axis=axis)


def _sortable(name, input, dim):
    """(input as at least 1-D, the dim to sort along): a 0-d tensor sorts as one element."""
    (d,) = normalize_dim(dim, input.ndim, name)
    return (input.reshape(1) if input.ndim == 0 else input), d


def _pick(x1, d, idx, shape):
    """The values of ``x1`` at ``idx`` along dim d (gathered: gradient flows), and the
    indices, both reshaped to ``shape`` (0-d inputs)."""
    pos = _positions(idx, x1.shape, d)
    values = GatherFunction.apply(x1, pos=pos)
    indices = Tensor(idx.astype(np.int64, copy=False))
    if values.shape != tuple(shape):
        values, indices = values.reshape(shape), indices.reshape(shape)
    return values, indices


def sort(input, dim=-1, descending=False, stable=False):  # noqa: A002 - PyTorch's names
    """``(values, indices)``: ``input`` sorted along ``dim`` (ascending unless
    ``descending``), and where each value came from. Always stable in minidl (``stable``
    is accepted; see the module notes on ties). The gradient of ``values`` goes back to
    the places the indices name."""
    x1, d = _sortable("sort", input, dim)
    idx = _argsort(x1.data, d, descending)
    return Sort(*_pick(x1, d, idx, input.shape))


def argsort(input, dim=-1, descending=False, stable=False):  # noqa: A002 - PyTorch's names
    """The int64 indices that sort ``input`` along ``dim`` (no gradient)."""
    return sort(input, dim, descending, stable).indices


def topk(input, k, dim=-1, largest=True, sorted=True):  # noqa: A002 - PyTorch's names
    """``(values, indices)`` of the ``k`` largest (``largest=False``: smallest) elements
    along ``dim``, largest first. Always sorted in minidl (``sorted=False`` allows any
    order in PyTorch, so sorted is one of them). Gradient as ``sort``'s."""
    x1, d = _sortable("topk", input, dim)
    n = x1.shape[d]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"topk: k must be an int, got {type(k).__name__}")
    if not 0 <= k <= n:
        raise ValueError(f"topk: k ({k}) is out of range for dim {d} of size {n} "
                         f"(expected 0 <= k <= {n})")
    idx = _argsort(x1.data, d, descending=largest)
    key = [slice(None)] * x1.ndim
    key[d] = slice(0, k)
    idx = idx[tuple(key)]
    shape = list(x1.shape)
    shape[d] = k
    return TopK(*_pick(x1, d, idx, shape if input.ndim else ()))


# --- integer tools (no gradient) ---------------------------------------------------------

def one_hot(tensor, num_classes=-1):
    """(*) int64 class indices -> (*, num_classes) int64, 1 at each index, 0 elsewhere.
    ``num_classes=-1``: one more than the largest index."""
    if not isinstance(tensor, Tensor) or tensor.dtype != np.int64:
        got = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
        raise TypeError(f"one_hot: expected an int64 tensor of class indices, got {got}")
    xp = backend.get_array_module(tensor.data)
    a = tensor.data
    if a.size and int(a.min()) < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {int(a.min())}")
    if num_classes == -1:
        if a.size == 0:
            raise ValueError("one_hot: cannot infer the number of classes from an empty "
                             "tensor; pass num_classes")
        num_classes = int(a.max()) + 1
    elif a.size and int(a.max()) >= num_classes:
        raise ValueError(f"one_hot: class values must be smaller than num_classes "
                         f"({num_classes}), got {int(a.max())}")
    classes = xp.arange(num_classes, dtype=xp.int64)
    return Tensor((a[..., None] == classes).astype(xp.int64))


def unique(input, sorted=True, return_inverse=False, return_counts=False,  # noqa: A002
           dim=None):
    """The distinct values of ``input`` (dim=None: of all its elements, a 1-D result;
    else the distinct slices along ``dim``), in ascending order (``sorted`` is accepted;
    minidl always sorts). ``return_inverse``: also where each element (slice) went,
    shaped like the input (``dim``: one per slice); ``return_counts``: how many of each.
    No gradient."""
    xp = backend.get_array_module(input.data)
    axis = None if dim is None else normalize_dim(dim, input.ndim, "unique")[0]
    out = xp.unique(input.data, return_inverse=return_inverse, return_counts=return_counts,
                    axis=axis)
    if not (return_inverse or return_counts):
        return Tensor(out)
    out = list(out)
    result = [Tensor(out[0])]
    if return_inverse:
        shape = input.shape if axis is None else (input.shape[axis],)
        result.append(Tensor(out[1].reshape(shape).astype(xp.int64, copy=False)))
    if return_counts:
        result.append(Tensor(out[-1].astype(xp.int64, copy=False)))
    return tuple(result)


def bincount(input, weights=None, minlength=0):  # noqa: A002 - PyTorch's names
    """(N,) non-negative integers -> how many times each value 0..max occurs (int64), or
    the sum of ``weights`` (N,) at each value (float32 for float32 weights, else float64,
    as PyTorch). Length ``max(max(input) + 1, minlength)``. No gradient."""
    if input.ndim != 1 or input.dtype.kind not in "iu":
        raise ShapeError(f"bincount: expected a 1-D integer tensor, got shape {input.shape} "
                         f"dtype {input.dtype}")
    if weights is not None and weights.shape != input.shape:
        raise ShapeError(f"bincount: weights must have the input's shape {input.shape}, got "
                         f"{weights.shape}")
    if minlength < 0:
        raise ValueError(f"bincount: minlength must be non-negative, got {minlength}")
    xp = backend.get_array_module(input.data)
    a = input.data
    if a.size and int(a.min()) < 0:
        raise ValueError(f"bincount: input must be non-negative, got {int(a.min())}")
    dtype = np.int64 if weights is None else (
        weights.dtype if weights.dtype in (np.float32, np.float64) else np.float64)
    length = builtins.max(int(a.max()) + 1 if a.size else 0, minlength)
    if a.size == 0:
        return Tensor(xp.zeros(length, dtype))
    w = None if weights is None else weights.data
    out = xp.bincount(a, weights=w, minlength=length)
    return Tensor(out.astype(dtype, copy=False))


def nonzero(input, *, as_tuple=False):  # noqa: A002 - PyTorch's names
    """Indices of the non-zero elements: (n, ndim) int64, one row per element in C order;
    ``as_tuple=True``: a tuple of ndim (n,) tensors, one per dim (what ``where(cond)``
    returns). No gradient."""
    xp = backend.get_array_module(input.data)
    a = input.data if input.ndim else input.data.reshape(1)
    per_dim = tuple(i.astype(xp.int64, copy=False) for i in xp.nonzero(a))
    if as_tuple:
        return tuple(Tensor(i) for i in per_dim)
    if input.ndim == 0:
        return Tensor(xp.zeros((len(per_dim[0]), 0), xp.int64))
    return Tensor(xp.stack(per_dim, axis=1))
