"""``minidl.linalg`` (``torch.linalg``'s names): norms of vectors and matrices.

- ``vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None)``: the ord-norm of the
  elements over ``dim`` (all of them when None); ord a number, ``inf`` or ``-inf``.
- ``matrix_norm(A, ord='fro', dim=(-2, -1), keepdim=False, *, dtype=None)``: 'fro', 1, -1,
  inf, -inf (2, -2 and 'nuc' need singular values: not in minidl).
- ``norm(A, ord=None, dim=None, keepdim=False, *, dtype=None)``: a vector norm (2 by
  default) over ``dim``, or with ord given and two dims (or a 2-D input and no dim) a
  matrix norm.

The formulas and their gradients live in ``minidl/ops/math.py``; this module only gives
them their ``linalg`` names.
"""
from __future__ import annotations

from .ops.math import matrix_norm, vector_norm

__all__ = ["vector_norm", "matrix_norm", "norm"]


def norm(A, ord=None, dim=None, keepdim=False, *, dtype=None):  # noqa: N803, A002
    """``torch.linalg.norm``: ord None is the 2-norm of all elements (over ``dim``); a
    string ord, or a number with a 2-D input (no dim) or two dims, is a matrix norm;
    otherwise a vector norm."""
    if isinstance(dim, int):
        dim = (dim,)
    matrix = isinstance(ord, str) or (ord is not None and (
        (dim is None and A.ndim == 2) or (dim is not None and len(dim) == 2)))
    if matrix:
        return matrix_norm(A, ord, (-2, -1) if dim is None else dim, keepdim, dtype=dtype)
    return vector_norm(A, 2 if ord is None else ord, dim, keepdim, dtype=dtype)
