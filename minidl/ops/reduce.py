"""Reductions: sum, mean, max/min, var/std, argmax/argmin, with ``dim`` and ``keepdim``.

Backward of a reduction puts the reduced axes back (size 1) and broadcasts the
upstream gradient over them.

Shapes: x is the input (any shape, ``shape``); y the result, with the reduced ``axes``
removed (or kept as size 1 with ``keepdim``); gy (like y) is dL/dy, gx (like x) dL/dx.

Recorded backwards (``create_graph=True``) write the same formulas with Tensors; where
the raw one uses an array the forward computed from x (``x - mean``), they compute it
again from the input Tensor, and the selection of max/min is a constant mask.
"""
from __future__ import annotations

import builtins
from collections import namedtuple

from .. import backend
from ..autograd import Function, Tensor
from .utils import normalize_dim

values_indices = namedtuple("values_indices", ["values", "indices"])


def _expand_back(gy, shape, axes, keepdim):
    """Reshape a reduced gradient so it broadcasts against the input of ``shape``."""
    if not keepdim:
        kept = list(shape)
        for a in axes:
            kept[a] = 1
        gy = gy.reshape(kept)
    return gy


class SumFunction(Function):
    @staticmethod
    def forward(ctx, x, axes, keepdim):
        ctx.meta = (x.shape, axes, keepdim)
        return x.sum(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, gy):  # every summed element gets the same gradient
        shape, axes, keepdim = ctx.meta
        xp = backend.get_array_module(gy)
        return xp.broadcast_to(_expand_back(gy, shape, axes, keepdim), shape)

    @staticmethod
    def differentiable_backward(ctx, gy):
        shape, axes, keepdim = ctx.meta
        return _expand_back(gy, shape, axes, keepdim).expand(shape)


class MeanFunction(Function):
    @staticmethod
    def forward(ctx, x, axes, keepdim):
        ctx.meta = (x.shape, axes, keepdim)
        return x.mean(axis=axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, gy):  # each of the n averaged elements gets gy / n
        shape, axes, keepdim = ctx.meta
        n = 1
        for a in axes:
            n *= shape[a]
        xp = backend.get_array_module(gy)
        return xp.broadcast_to(_expand_back(gy, shape, axes, keepdim) / n, shape).astype(gy.dtype)

    @staticmethod
    def differentiable_backward(ctx, gy):
        shape, axes, keepdim = ctx.meta
        n = 1
        for a in axes:
            n *= shape[a]
        return (_expand_back(gy, shape, axes, keepdim) / n).expand(shape)


class VarFunction(Function):
    """Variance with ``correction`` (1: unbiased, divides by n - 1; 0: biased, by n)."""

    @staticmethod
    def forward(ctx, x, axes, correction, keepdim):
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        n = 1
        for a in axes:
            n *= x.shape[a]
        denom = builtins.max(n - correction, 0)
        # x itself too: a recorded backward differentiates through x - mean, so it needs
        # the input Tensor (a saved ``centered`` would be a constant there).
        ctx.save_for_backward(centered, x)
        ctx.meta = (x.shape, axes, keepdim, denom)
        return (centered * centered).sum(axis=axes, keepdims=keepdim) / denom

    @staticmethod
    def backward(ctx, gy):  # d var / dx_i = 2 (x_i - mean) / denom
        centered, _ = ctx.saved_tensors
        shape, axes, keepdim, denom = ctx.meta
        scale = 2.0 / denom if denom > 0 else float("nan")  # one sample, unbiased: nan as PyTorch
        return (_expand_back(gy, shape, axes, keepdim) * scale * centered).astype(gy.dtype)

    @staticmethod
    def differentiable_backward(ctx, gy):
        _, x = ctx.saved_tensors
        shape, axes, keepdim, denom = ctx.meta
        scale = 2.0 / denom if denom > 0 else float("nan")
        centered = x - x.mean(dim=axes, keepdim=True)  # x - mean depends on x: recomputed
        return _expand_back(gy, shape, axes, keepdim) * scale * centered


class MaxMinAllFunction(Function):
    """Max (or min) over all elements; ties share the gradient evenly, as in PyTorch."""

    @staticmethod
    def forward(ctx, x, take_max):
        y = x.max() if take_max else x.min()
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, y = ctx.saved_tensors
        mask = x == y
        return (gy * mask / mask.sum()).astype(gy.dtype)

    @staticmethod
    def differentiable_backward(ctx, gy):
        x, y = ctx.saved_tensors
        mask = x.data == y.data  # which elements are selected: constant almost everywhere
        return gy * Tensor((mask / mask.sum()).astype(gy.dtype))


class MaxMinDimFunction(Function):
    """Max (or min) along one dim; the gradient goes to the element whose index is returned."""

    @staticmethod
    def forward(ctx, x, dim, keepdim, take_max):
        xp = backend.get_array_module(x)
        idx = xp.argmax(x, axis=dim) if take_max else xp.argmin(x, axis=dim)
        idx_k = xp.expand_dims(idx, dim)
        values = xp.take_along_axis(x, idx_k, axis=dim)
        ctx.save_for_backward(idx_k)
        ctx.meta = (x.shape, dim, keepdim)
        if not keepdim:
            values = values.squeeze(dim)
        return values, (idx_k if keepdim else idx)

    @staticmethod
    def backward(ctx, gy, _g_indices):
        (idx_k,) = ctx.saved_tensors
        shape, dim, keepdim = ctx.meta
        xp = backend.get_array_module(gy)
        gx = xp.zeros(shape, gy.dtype)
        if not keepdim:
            gy = xp.expand_dims(gy, dim)
        xp.put_along_axis(gx, idx_k, gy, axis=dim)
        return gx

    @staticmethod
    def differentiable_backward(ctx, gy, _g_indices):
        # The same scatter as a product: a constant one-hot mask of the selected elements
        # times gy broadcast along dim (whose own backward sums along dim: a gather).
        (idx_k,) = ctx.saved_tensors
        shape, dim, keepdim = ctx.meta
        xp = backend.get_array_module(idx_k.data)
        onehot = xp.zeros(shape, gy.dtype)
        xp.put_along_axis(onehot, idx_k.data, 1, axis=dim)
        return _expand_back(gy, shape, (dim,), keepdim) * Tensor(onehot)


def sum(x, dim=None, keepdim=False):  # noqa: A001 - PyTorch's name
    return SumFunction.apply(x, axes=normalize_dim(dim, x.ndim, "sum"), keepdim=keepdim)


def mean(x, dim=None, keepdim=False, *, dtype=None):
    """Average over ``dim``; ``dtype`` casts first (``mean(correct, dtype=minidl.float)``)."""
    if dtype is not None:
        x = x.to(dtype)
    if x.dtype.kind not in "fc":
        raise TypeError(f"mean: expected a floating point tensor, got dtype {x.dtype}")
    return MeanFunction.apply(x, axes=normalize_dim(dim, x.ndim, "mean"), keepdim=keepdim)


def var(x, dim=None, unbiased=None, keepdim=False, correction=None):
    """Variance over ``dim``; unbiased (``correction=1``) by default, as in PyTorch."""
    if correction is None:
        correction = 0 if unbiased is False else 1
    return VarFunction.apply(x, axes=normalize_dim(dim, x.ndim, "var"), correction=correction,
                             keepdim=keepdim)


def std(x, dim=None, unbiased=None, keepdim=False, correction=None):
    return var(x, dim, unbiased, keepdim, correction) ** 0.5


def _max_min(x, dim, keepdim, take_max, name):
    if dim is None:
        if x.numel() == 0:
            raise RuntimeError(f"{name}(): cannot reduce an empty tensor")
        return MaxMinAllFunction.apply(x, take_max=take_max)
    (d,) = normalize_dim(dim, x.ndim, name)
    values, indices = MaxMinDimFunction.apply(x, dim=d, keepdim=keepdim, take_max=take_max)
    return values_indices(values, indices)


def max(x, dim=None, keepdim=False):  # noqa: A001 - PyTorch's name
    """The largest element, or ``(values, indices)`` along ``dim``."""
    return _max_min(x, dim, keepdim, True, "max")


def min(x, dim=None, keepdim=False):  # noqa: A001 - PyTorch's name
    """The smallest element, or ``(values, indices)`` along ``dim``."""
    return _max_min(x, dim, keepdim, False, "min")


def amax(x, dim=None, keepdim=False):
    if dim is None:
        return MaxMinAllFunction.apply(x, take_max=True)
    return max(x, dim, keepdim).values


def argmax(x, dim=None, keepdim=False):
    """Index of the largest element (of the flattened tensor when ``dim`` is None)."""
    return _arg(x, dim, keepdim, True)


def argmin(x, dim=None, keepdim=False):
    return _arg(x, dim, keepdim, False)


def _arg(x, dim, keepdim, take_max):
    xp = backend.get_array_module(x.data)
    f = xp.argmax if take_max else xp.argmin
    if dim is None:
        out = f(x.data)
        if keepdim:
            out = out.reshape((1,) * x.ndim)
        return Tensor(xp.asarray(out, dtype=xp.int64))
    (d,) = normalize_dim(dim, x.ndim, "argmax" if take_max else "argmin")
    out = f(x.data, axis=d)
    if keepdim:
        out = xp.expand_dims(out, d)
    return Tensor(out.astype(xp.int64, copy=False))


def all(x, dim=None, keepdim=False):  # noqa: A001
    return Tensor(x.data.all(axis=normalize_dim(dim, x.ndim, "all"), keepdims=keepdim))


def any(x, dim=None, keepdim=False):  # noqa: A001
    return Tensor(x.data.any(axis=normalize_dim(dim, x.ndim, "any"), keepdims=keepdim))
