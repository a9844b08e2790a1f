"""``Embedding``: a learnt table of V vectors of size D, read by integer index.

Shapes: input (*) int64 indices in [0, V) -> (*, D); weight (V, D), init N(0, 1) with the
``padding_idx`` row (if any) zeroed.
"""
from __future__ import annotations

import numpy as np

from ... import creation
from ...autograd import get_default_dtype, no_grad
from ...errors import ShapeError
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import check_tensor


def _padding_index(padding_idx, num_embeddings, name):
    """PyTorch's rule: padding_idx in [-V, V), a negative one counted from the end."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{name}: padding_idx must be within num_embeddings "
                         f"({num_embeddings}), got {padding_idx}")
    return int(padding_idx) % num_embeddings


class Embedding(Module):
    """``Embedding(num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
    norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False)``:
    see ``F.embedding`` for the arguments; ``sparse=True`` is not supported."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None,
                 _freeze=False, device=None, dtype=None):
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = _padding_index(padding_idx, self.num_embeddings, "Embedding")
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        if sparse:
            raise NotImplementedError("Embedding: sparse=True is not supported by minidl (no "
                                      "sparse gradients); use sparse=False")
        self.sparse = sparse
        if _weight is None:
            self.weight = Parameter(creation.empty(self.num_embeddings, self.embedding_dim,
                                                   dtype=np.dtype(dtype or get_default_dtype())),
                                    requires_grad=not _freeze)
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (self.num_embeddings, self.embedding_dim):
                raise ShapeError(f"Embedding: shape of _weight {tuple(_weight.shape)} does not "
                                 f"match (num_embeddings, embedding_dim) = "
                                 f"{(self.num_embeddings, self.embedding_dim)}")
            self.weight = Parameter(_weight, requires_grad=not _freeze)
        if device is not None:
            self.to(device)

    def reset_parameters(self):
        """weight ~ N(0, 1), the padding row zero (PyTorch's init)."""
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False, sparse=False):
        """An Embedding holding ``embeddings`` (V, D) (shared, not copied); ``freeze``:
        weight.requires_grad = False."""
        if embeddings.ndim != 2:
            raise ShapeError(f"Embedding.from_pretrained: expected embeddings of shape "
                             f"(num_embeddings, embedding_dim), got {tuple(embeddings.shape)}")
        V, D = embeddings.shape
        return cls(V, D, _weight=embeddings, _freeze=freeze, padding_idx=padding_idx,
                   max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse)

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        if input.dtype.kind not in "iu":
            raise TypeError(f"{self!r}: expected an integer index input (int64), got dtype "
                            f"{input.dtype}; convert it with .long()")
        try:
            return F.embedding(input, self.weight, self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, self.sparse)
        except IndexError as exc:
            raise IndexError(f"{self!r}: {str(exc).removeprefix('embedding: ')}") from None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq is not False:
            s += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        if self.sparse is not False:
            s += ", sparse=True"
        return s
