"""Shape ops: reshape, transpose/permute, (un)squeeze, expand, indexing, cat, stack, pad, clone.

Each moves values around without changing them, so each backward moves the
gradient back the opposite way.

Shapes: x is the input, y the output, gy (like y) dL/dy, gx (like x) dL/dx; v (setitem,
copy's src) the values written in, gv (like v) their gradient.

Each backward is linear in gy and uses no value of x, so a recorded backward
(``create_graph=True``) is the same move written with these ops on Tensors: reshape's
is a reshape, getitem's a scatter into zeros (``IndexAddFunction``), whose own backward
is getitem again.

``split`` and ``chunk`` cut a tensor into pieces that are getitem slices (views), so they
need no Function of their own.
"""
from __future__ import annotations

import builtins

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from .utils import normalize_dim, unbroadcast


class ReshapeFunction(Function):
    _view = True  # its output may share the input's memory, so it shares its version

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, gy):
        return gy.reshape(ctx.in_shape)

    differentiable_backward = backward  # Tensor.reshape is reshape


class PermuteFunction(Function):
    _view = True  # its output may share the input's memory, so it shares its version

    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return x.transpose(dims)

    @staticmethod
    def backward(ctx, gy):
        return gy.transpose(_inverse_permutation(ctx.dims))

    @staticmethod
    def differentiable_backward(ctx, gy):  # Tensor.transpose swaps two dims: permute
        return PermuteFunction.apply(gy, dims=_inverse_permutation(ctx.dims))


def _inverse_permutation(dims):
    """The dims that undo ``dims``: ``y = x.permute(dims)`` gives ``x = y.permute(inverse)``."""
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d] = i
    return tuple(inverse)


class ExpandFunction(Function):
    _view = True  # its output may share the input's memory, so it shares its version

    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return backend.get_array_module(x).broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, gy):
        return unbroadcast(gy, ctx.in_shape)

    differentiable_backward = backward  # unbroadcast sums Tensors too


def _is_basic_index(key):
    """True for ints, slices, None and Ellipsis only: no element can be picked twice."""
    items = key if isinstance(key, tuple) else (key,)
    return builtins.all(isinstance(k, (int, slice, type(None), type(Ellipsis))) and
                        not isinstance(k, bool) for k in items)


class GetItemFunction(Function):
    _view = True  # its output may share the input's memory, so it shares its version

    @staticmethod
    def forward(ctx, x, key):
        ctx.meta = (x.shape, x.dtype, key)
        return x[key]

    @staticmethod
    def backward(ctx, gy):
        shape, dtype, key = ctx.meta
        return _index_add_into_zeros(gy, shape, key)

    @staticmethod
    def differentiable_backward(ctx, gy):
        shape, dtype, key = ctx.meta
        return IndexAddFunction.apply(gy, shape=shape, key=key)


def _index_add_into_zeros(v, shape, key):
    """Zeros of ``shape`` with ``v`` added at ``x[key]``: the adjoint of ``x[key]``.

    v: like ``x[key]``, returns: (shape). Each element ``x[key]`` picked receives its
    part of v; an element picked several times (advanced indexing) receives their sum.
    """
    xp = backend.get_array_module(v)
    out = xp.zeros(shape, v.dtype)
    if _is_basic_index(key):
        out[key] = v
    else:  # advanced indexing may pick an element several times: add, do not assign
        xp.add.at(out, key, v)
    return out


class IndexAddFunction(Function):
    """``zeros(shape)`` with ``v`` added at ``[key]``: getitem's backward as an op, so a
    recorded backward can be differentiated again. Its own backward reads the places
    back: ``gy[key]``, a getitem (and getitem's backward is this op)."""

    @staticmethod
    def forward(ctx, v, shape, key):
        ctx.key = key
        return _index_add_into_zeros(v, shape, key)

    @staticmethod
    def backward(ctx, gy):
        return gy[ctx.key]

    @staticmethod
    def differentiable_backward(ctx, gy):
        return GetItemFunction.apply(gy, key=ctx.key)


class SetItemFunction(Function):
    """``x[key] = v`` out of place (a copy of ``x`` with ``v`` written in): the graph node
    of ``__setitem__`` on a tensor in a graph. ``x`` gets the gradient except where it was
    overwritten; ``v`` gets the gradient of the places it went to (summed over broadcast)."""

    @staticmethod
    def forward(ctx, x, v, key):
        ctx.meta = (key, v.shape, v.dtype)
        out = x.copy()
        out[key] = v
        return out

    @staticmethod
    def backward(ctx, gy):
        key, v_shape, v_dtype = ctx.meta
        gx = gv = None
        if ctx.needs_input_grad[0]:
            gx = gy.copy()
            gx[key] = 0
        if ctx.needs_input_grad[1]:
            gv = unbroadcast(gy[key], v_shape).reshape(v_shape).astype(v_dtype, copy=False)
        return gx, gv

    @staticmethod
    def differentiable_backward(ctx, gy):
        key, v_shape, v_dtype = ctx.meta
        gx = gv = None
        if ctx.needs_input_grad[0]:  # gy with zeros written at [key]: a setitem itself
            zero = Tensor(backend.get_array_module(gy.data).zeros((), gy.dtype))
            gx = SetItemFunction.apply(gy, zero, key=key)
        if ctx.needs_input_grad[1]:
            gv = unbroadcast(gy[key], v_shape).reshape(v_shape).to(v_dtype)
        return gx, gv


class FillFunction(Function):
    """``x.fill_(value)`` out of place: a constant, so no gradient reaches ``x``."""

    @staticmethod
    def forward(ctx, x, value):
        return backend.get_array_module(x).full_like(x, value)

    @staticmethod
    def backward(ctx, gy):
        return backend.get_array_module(gy).zeros_like(gy)

    @staticmethod
    def differentiable_backward(ctx, gy):  # a constant zero: nothing to differentiate
        return Tensor(backend.get_array_module(gy.data).zeros_like(gy.data))


class CopyFunction(Function):
    """``x.copy_(src)`` out of place: ``src`` broadcast to ``x``'s shape and dtype; the
    gradient goes to ``src`` (summed over broadcast), none to ``x``."""

    @staticmethod
    def forward(ctx, x, src):
        ctx.meta = (src.shape, src.dtype)
        xp = backend.get_array_module(x)
        return xp.broadcast_to(src, x.shape).astype(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        shape, dtype = ctx.meta
        gx = backend.get_array_module(gy).zeros_like(gy) if ctx.needs_input_grad[0] else None
        gs = unbroadcast(gy, shape).reshape(shape).astype(dtype, copy=False) \
            if ctx.needs_input_grad[1] else None
        return gx, gs

    @staticmethod
    def differentiable_backward(ctx, gy):
        shape, dtype = ctx.meta
        gx = Tensor(backend.get_array_module(gy.data).zeros_like(gy.data)) \
            if ctx.needs_input_grad[0] else None  # a constant zero
        gs = unbroadcast(gy, shape).reshape(shape).to(dtype) if ctx.needs_input_grad[1] else None
        return gx, gs


class CatFunction(Function):
    @staticmethod
    def forward(ctx, *xs, dim):
        ctx.meta = (dim, [x.shape[dim] for x in xs])
        return backend.get_array_module(*xs).concatenate(xs, axis=dim)

    @staticmethod
    def backward(ctx, gy):
        dim, sizes = ctx.meta
        grads, start = [], 0
        for n, need in zip(sizes, ctx.needs_input_grad):
            index = [slice(None)] * gy.ndim
            index[dim] = slice(start, start + n)
            grads.append(gy[tuple(index)] if need else None)
            start += n
        return tuple(grads)

    differentiable_backward = backward  # slicing a Tensor is getitem


class PadFunction(Function):
    @staticmethod
    def forward(ctx, x, widths, value):
        ctx.widths = widths
        xp = backend.get_array_module(x)
        return xp.pad(x, widths, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, gy):  # the gradient of the padding is dropped
        index = tuple(slice(lo, gy.shape[i] - hi) for i, (lo, hi) in enumerate(ctx.widths))
        return gy[index]

    differentiable_backward = backward  # slicing a Tensor is getitem


class CloneFunction(Function):
    """A copy of x in new memory, still in the graph: the gradient passes through."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, gy):
        return gy

    differentiable_backward = backward


# --- wrappers -------------------------------------------------------------------------

def _shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def reshape(x, *shape):
    """``x.reshape(N, -1)`` or ``x.reshape((N, -1))``; one entry may be -1."""
    shape = _shape_args(shape)
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if shape.count(-1) > 1 or (-1 not in shape and known != x.numel()) or \
            (-1 in shape and (known == 0 or x.numel() % known)):
        raise ShapeError(f"reshape: shape {list(shape)} is invalid for input of shape "
                         f"{x.shape} ({x.numel()} elements)")
    return ReshapeFunction.apply(x, shape=shape)


view = reshape


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dims ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C*H*W) with start_dim=1."""
    if x.ndim == 0:
        return reshape(x, 1)
    start, end = normalize_dim((start_dim, end_dim), x.ndim, "flatten")
    if start > end:
        raise ValueError(f"flatten: start_dim ({start_dim}) comes after end_dim ({end_dim})")
    merged = 1
    for s in x.shape[start:end + 1]:
        merged *= s
    return reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1:])


def permute(x, *dims):
    dims = normalize_dim(_shape_args(dims), x.ndim, "permute")
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: dims {list(dims)} are not a permutation of {x.ndim} dims")
    return PermuteFunction.apply(x, dims=dims)


def transpose(x, dim0, dim1):
    d0, d1 = normalize_dim((dim0, dim1), x.ndim, "transpose")
    dims = list(range(x.ndim))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return PermuteFunction.apply(x, dims=tuple(dims))


def t(x):
    if x.ndim > 2:
        raise ShapeError(f"t: expects a tensor with <= 2 dims, got {x.ndim} dims {x.shape}")
    return x if x.ndim < 2 else transpose(x, 0, 1)


def squeeze(x, dim=None):
    if dim is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = normalize_dim(dim, x.ndim, "squeeze")
        shape = tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1))
    return ReshapeFunction.apply(x, shape=shape)


def unsqueeze(x, dim):
    (d,) = normalize_dim(dim, x.ndim + 1, "unsqueeze")
    shape = x.shape[:d] + (1,) + x.shape[d:]
    return ReshapeFunction.apply(x, shape=shape)


def expand(x, *sizes):
    """Broadcast to ``sizes`` without copying; -1 keeps a dim's size."""
    sizes = _shape_args(sizes)
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: cannot expand shape {x.shape} to fewer dims {sizes}")
    shape = []
    for i, s in enumerate(sizes):
        own = x.shape[i - lead] if i >= lead else 1
        if s == -1:
            s = own
        if own != 1 and own != s:
            raise ShapeError(f"expand: the size of dim {i - lead} ({own}) must match the "
                             f"expanded size ({s}) or be 1; shape {x.shape} -> {list(sizes)}")
        shape.append(s)
    return ExpandFunction.apply(x, shape=tuple(shape))


def index_key(key, x):
    """An indexing key for ``x``'s array: index Tensors become their arrays, a list an array
    on x's device (ints, slices, None and ``...`` pass through). ``x[key]`` and
    ``x[key] = v`` both use it."""
    if isinstance(key, tuple):
        return tuple(k.data if isinstance(k, Tensor) else k for k in key)
    if isinstance(key, Tensor):
        return key.data
    if isinstance(key, list):
        return backend.get_array_module(x.data).asarray(key)
    return key


def getitem(x, key):
    """``x[key]`` with a gradient; ``key`` may hold ints, slices, None, ``...``, index tensors."""
    return GetItemFunction.apply(x, key=index_key(key, x))


def cat(tensors, dim=0):
    """Join tensors along an existing dim; every other dim must match."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    first = tensors[0]
    (d,) = normalize_dim(dim, first.ndim, "cat")
    for i, t_ in enumerate(tensors[1:], start=1):
        if t_.ndim != first.ndim or builtins.any(
                a != b for j, (a, b) in enumerate(zip(first.shape, t_.shape)) if j != d):
            raise ShapeError(
                f"cat: tensors must have the same shape except in dim {dim}; tensor 0 has "
                f"shape {first.shape} and tensor {i} has shape {t_.shape}")
        if t_.dtype != first.dtype:
            raise TypeError(f"cat: tensor 0 has dtype {first.dtype} and tensor {i} has dtype "
                            f"{t_.dtype}; convert them to one dtype first")
    return CatFunction.apply(*tensors, dim=d)


concatenate = cat


def stack(tensors, dim=0):
    """Join same-shaped tensors along a new dim."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    for i, t_ in enumerate(tensors[1:], start=1):
        if t_.shape != tensors[0].shape:
            raise ShapeError(f"stack: all tensors must have the same shape; tensor 0 has "
                             f"shape {tensors[0].shape} and tensor {i} has shape {t_.shape}")
    return cat([unsqueeze(t_, dim) for t_ in tensors], dim)


def pad(x, pad, mode="constant", value=0.0):
    """Pad the last dims like ``torch.nn.functional.pad``.

    ``pad`` lists (left, right) pairs starting from the LAST dim:
    ``(PW_left, PW_right, PH_top, PH_bottom)`` pads W then H of an (N, C, H, W) tensor.
    """
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of entries, at most 2 * {x.ndim}, "
                         f"got {len(pad)}")
    if builtins.any(p < 0 for p in pad):
        raise NotImplementedError("pad: negative padding (cropping) is not supported")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return PadFunction.apply(x, widths=tuple(widths), value=value)


def contiguous(x):
    return x


def clone(x, *, memory_format=None):
    """A copy of ``x`` with its own memory that stays in the graph (gradient passes through):
    change the copy in place without touching ``x``. ``memory_format`` is accepted for
    PyTorch's signature and ignored (minidl has one layout)."""
    return CloneFunction.apply(x)


def _split_sizes(n, split_size_or_sections, name):
    """The sizes of the pieces ``split`` cuts a dim of size n into: a list as given (it
    must sum to n), an int s as many pieces of s as fit, then the rest."""
    s = split_size_or_sections
    if isinstance(s, (list, tuple)):
        sizes = [int(k) for k in s]
        if builtins.any(k < 0 for k in sizes) or builtins.sum(sizes) != n:
            raise ValueError(f"{name}: split sizes {sizes} must be non-negative and sum to "
                             f"the size of the dim ({n})")
        return sizes
    if isinstance(s, builtins.bool) or not isinstance(s, int):
        raise TypeError(f"{name}: split_size_or_sections must be an int or a list of ints, "
                        f"got {type(s).__name__}")
    if n == 0:
        return [0]
    if s <= 0:
        raise ValueError(f"{name}: split_size must be positive, got {s}")
    return [s] * (n // s) + ([n % s] if n % s else [])


def split(tensor, split_size_or_sections, dim=0):
    """Cut ``tensor`` along ``dim`` into pieces: an int gives pieces of that size (the last
    one smaller when it does not divide), a list the size of each piece. A tuple of views
    (getitem slices), each in the graph: a piece's gradient lands in its place."""
    (d,) = normalize_dim(dim, tensor.ndim, "split")
    sizes = _split_sizes(tensor.shape[d], split_size_or_sections, "split")
    pieces, start = [], 0
    for n in sizes:
        key = (slice(None),) * d + (slice(start, start + n),)
        pieces.append(getitem(tensor, key))
        start += n
    return tuple(pieces)


def chunk(input, chunks, dim=0):  # noqa: A002 - PyTorch's names
    """Cut ``input`` along ``dim`` into at most ``chunks`` pieces of equal size
    ``ceil(size / chunks)`` (the last one smaller; fewer pieces when the size runs out,
    as PyTorch: 6 elements in 4 chunks give 3 pieces of 2)."""
    if isinstance(chunks, builtins.bool) or not isinstance(chunks, int) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    (d,) = normalize_dim(dim, input.ndim, "chunk")
    n = input.shape[d]
    return split(input, builtins.max(-(-n // chunks), 1), d)
