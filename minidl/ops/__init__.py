"""The differentiable primitives, one module per family.

Each module holds ``XxxFunction`` classes (forward and backward on raw arrays) next to
their lowercase wrappers (``exp = ...``) that take Tensors. The Tensor operators and
methods (``x + y``, ``x.sum(dim=1)``) are these functions, attached to the class in one
place: ``minidl/tensor_methods.py`` (it says why they are not in ``autograd.py``).
"""
from __future__ import annotations

from . import activation, elementwise, linalg, reduce, shape
from .activation import log_softmax, relu, sigmoid, softmax, tanh
from .elementwise import (abs, add, clamp, clip, div, eq, exp, ge, gt, le, log, lt, maximum,
                          minimum, mul, ne, neg, pow, sqrt, sub, where)
from .linalg import linear, matmul
from .reduce import all, amax, any, argmax, argmin, max, mean, min, std, sum, var
from .shape import (cat, clone, concatenate, contiguous, expand, flatten, getitem, pad, permute,
                    reshape, squeeze, stack, t, transpose, unsqueeze, view)

from . import indexing, math
from .indexing import (argsort, bincount, gather, masked_fill, nonzero, one_hot, scatter,
                       scatter_add, sort, topk, unique)
from .math import (allclose, bmm, cos, cumsum, einsum, isclose, lerp, matrix_norm, norm, sin,
                   vector_norm)
from .shape import chunk, split
