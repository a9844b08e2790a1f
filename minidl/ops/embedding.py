"""Embedding lookup: ``embedding`` (``F.embedding``), a table of learnt vectors read by index.

Shape letters::

    V      number of embeddings (rows of the table, the vocabulary size)
    D      embedding dimension
    *      the shape of the index tensor (e.g. (N, T): a batch of token sequences)

    input (*) integer indices in [0, V)
    weight, gweight (V, D)
    y, gy (*, D):  y[..., :] = weight[input[...], :]

The forward is a gather of rows. Its gradient scatters back: every row of the table
receives the sum of the upstream gradients of the positions that read it (a row read
twice gets both); rows nobody read get zero::

    gweight[v] = sum over positions p with input[p] == v of gy[p]           (D,)

except the ``padding_idx`` row, which receives no gradient (its vector stays fixed, zero by
the layer's init: "no token here"). ``scale_grad_by_freq`` divides each position's
gradient by how often its index occurs in this input.
"""
from __future__ import annotations

import numbers

from .. import backend
from ..autograd import Function, Tensor, no_grad
from ..errors import ShapeError
from .shape import IndexAddFunction


class EmbeddingFunction(Function):
    """y = weight[index] (rows), the table's gradient scattered back. Shapes: see above.

    The index array is a parameter (not differentiable). Saved: the flat index (P,) and,
    for the recorded backward, the per-position factor (P, 1): 0 at padding_idx, else 1 or
    1 / count with ``scale_grad_by_freq``.
    """

    @staticmethod
    def forward(ctx, weight, index, padding_idx, scale_grad_by_freq):
        xp = backend.get_array_module(weight)
        flat = index.reshape(-1)                                            # (P,)
        factor = None
        if padding_idx is not None or scale_grad_by_freq:
            factor = xp.ones((flat.size, 1), weight.dtype)                  # (P, 1)
            if scale_grad_by_freq:
                counts = xp.bincount(flat, minlength=weight.shape[0])       # (V,)
                factor = factor / counts[flat][:, None].astype(weight.dtype)
            if padding_idx is not None:
                factor = factor * (flat != padding_idx)[:, None]
        ctx.save_for_backward(flat, factor)
        ctx.shapes = (weight.shape, index.shape)
        return weight[flat].reshape(index.shape + (weight.shape[1],))       # (*, D)

    @staticmethod
    def backward(ctx, gy):
        flat, factor = ctx.saved_tensors
        (V, D), _ = ctx.shapes
        xp = backend.get_array_module(gy)
        g = gy.reshape(-1, D)                                               # (P, D)
        if factor is not None:
            g = g * factor
        gweight = xp.zeros((V, D), gy.dtype)
        xp.add.at(gweight, flat, g)        # add, not assign: an index may repeat
        return gweight

    @staticmethod
    def differentiable_backward(ctx, gy):
        flat, factor = ctx.saved_tensors   # constants here; gy is the recorded Tensor
        (V, D), _ = ctx.shapes
        g = gy.reshape(-1, D)                                               # (P, D)
        if factor is not None:
            g = g * factor
        return IndexAddFunction.apply(g, shape=(V, D), key=flat.data)


def _renorm_(weight, index, max_norm, norm_type):
    """Rescale, in place and unrecorded, the rows of ``weight`` that ``index`` reads whose
    ``norm_type``-norm exceeds ``max_norm`` to that norm (PyTorch's embedding_renorm_)."""
    xp = backend.get_array_module(weight.data)
    with no_grad():
        rows = xp.unique(index.data.reshape(-1))
        w = weight.data[rows]                                               # (U, D)
        norms = (xp.abs(w) ** norm_type).sum(axis=1, keepdims=True) ** (1.0 / norm_type)
        scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        weight.data[rows] = (w * scale).astype(weight.dtype, copy=False)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,  # noqa: A002
              scale_grad_by_freq=False, sparse=False):
    """Rows of ``weight`` (V, D) picked by the integer ``input`` (*): (*, D), as
    ``F.embedding``. padding_idx: that row gets no gradient. max_norm: rows read are first
    rescaled in place to at most that ``norm_type``-norm. sparse=True is not supported
    (minidl has no sparse tensors)."""
    op = "embedding"
    if not isinstance(input, Tensor) or not isinstance(weight, Tensor):
        bad = input if not isinstance(input, Tensor) else weight
        raise TypeError(f"{op}: expected input and weight to be Tensors, got "
                        f"{type(bad).__name__}")
    if input.dtype.kind not in "iu":
        raise TypeError(f"{op}: expected an integer index input (int64 or int32), got dtype "
                        f"{input.dtype}")
    if weight.ndim != 2:
        raise ShapeError(f"{op}: expected weight of shape (num_embeddings, embedding_dim), "
                         f"got {weight.shape}")
    if input.device != weight.device:
        raise RuntimeError(f"{op}: input is on {input.device} but weight is on "
                           f"{weight.device}; move one with .to(device)")
    if sparse:
        raise NotImplementedError(f"{op}: sparse=True is not supported by minidl (no sparse "
                                  "gradients); use sparse=False")
    V = weight.shape[0]
    if padding_idx is not None:
        if not isinstance(padding_idx, numbers.Integral) or not -V <= padding_idx < V:
            raise ValueError(f"{op}: padding_idx must be within num_embeddings ({V}), got "
                             f"{padding_idx!r}")
        padding_idx = int(padding_idx) % V
    if input.numel():
        lo, hi = int(input.data.min()), int(input.data.max())
        if lo < 0 or hi >= V:
            raise IndexError(f"{op}: index out of range: indices must be in [0, {V}) for a "
                             f"weight of {V} rows, got values in [{lo}, {hi}]")
    if max_norm is not None:
        _renorm_(weight, input, float(max_norm), float(norm_type))
    return EmbeddingFunction.apply(weight, index=input.data, padding_idx=padding_idx,
                                   scale_grad_by_freq=bool(scale_grad_by_freq))
