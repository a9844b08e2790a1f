"""Resizing: ``interpolate`` (``F.interpolate``), modes 'nearest', 'linear' and 'bilinear'.

Shape letters::

    N, C         batch size, channels (untouched)
    L            length of a 1-D signal: input (N, C, L) -> (N, C, OL)
    H, W         height and width of an image: input (N, C, H, W) -> (N, C, OH, OW)
    IN, OUT      one spatial dim's input and output size

Every mode here is *separable*: resizing an image is resizing each column (H -> OH), then
each row (W -> OW), and each of those is a linear map of one axis, a matrix A (OUT, IN):

    nearest    each output position copies one input position, so A's rows are one-hot;
               it is done as a gather ``x[..., index, :]`` (no multiplications)
    (bi)linear each output position is a weighted average of the two input positions
               around it: row o of A holds 1 - lambda at i0 and lambda at i0 + 1; it is done
               as a matrix product  y = A_H @ x @ A_W^T   (N, C, OH, W) then (N, C, OH, OW)

so no new Function is needed: the gradients are those of getitem (a scatter-add) and of
matmul (y = A x  gives  gx = A^T gy), and they can be differentiated again.

Where an output position o reads from (PyTorch's rules), with scale = IN / OUT, or
1 / scale_factor when a scale_factor is given (unless recompute_scale_factor=True)::

    nearest                        src = min(floor(o * scale), IN - 1)
    linear, align_corners=False    src = max((o + 0.5) * scale - 0.5, 0)   (pixel centres)
    linear, align_corners=True     src = o * (IN - 1) / (OUT - 1)          (corner pixels meet)

and i0 = floor(src), lambda = src - i0 (i0 + 1 clipped to IN - 1 at the border).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from ..autograd import Tensor
from ..errors import ShapeError
from .linalg import matmul

_MODES = ("nearest", "linear", "bilinear")
_SPATIAL = {"linear": 1, "bilinear": 2}     # the modes that need a given number of dims


def _scale(in_size, out_size, scale_factor, align_corners):
    """The source step per output step (see the module docstring)."""
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    if scale_factor is not None and scale_factor > 0:
        return 1.0 / scale_factor
    return in_size / out_size


def nearest_index(in_size, out_size, scale_factor):
    """(OUT,) int64: the input position each output position copies.

    PyTorch computes the position in float32 (``floorf(o * scale)``); so does this, or a
    few positions would differ for scales such as 1 / 3.
    """
    if scale_factor is not None and scale_factor > 0:
        scale = np.float32(1.0 / scale_factor)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def linear_matrix(in_size, out_size, scale_factor, align_corners):
    """A (OUT, IN) float64: row o holds the two weights of linear interpolation."""
    scale = _scale(in_size, out_size, scale_factor, align_corners)
    o = np.arange(out_size, dtype=np.float64)
    src = o * scale if align_corners else np.maximum((o + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)           # (OUT,)
    i1 = np.minimum(i0 + 1, in_size - 1)                                   # (OUT,)
    lam = np.clip(src - i0, 0.0, 1.0)                                      # (OUT,)
    A = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(A, (rows, i0), 1.0 - lam)       # add: i0 and i1 coincide at the border
    np.add.at(A, (rows, i1), lam)
    return A


def _output_size(op, x, size, scale_factor, dims):
    """The output spatial sizes and the scale factors (None when ``size`` was given)."""
    spatial = tuple(x.shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: either size or scale_factor should be defined, not both "
                         f"and not neither (got size={size!r}, scale_factor={scale_factor!r})")
    if size is not None:
        sizes = (size,) * dims if isinstance(size, numbers.Integral) else tuple(size)
        if len(sizes) != dims or not all(isinstance(s, numbers.Integral) for s in sizes):
            raise ValueError(f"{op}: size must be an int or {dims} ints for a {x.ndim}-D "
                             f"input, got {size!r}")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"{op}: size must be positive, got {size!r}")
        return tuple(int(s) for s in sizes), (None,) * dims
    factors = (scale_factor,) * dims if isinstance(scale_factor, numbers.Real) \
        else tuple(scale_factor)
    if len(factors) != dims or not all(isinstance(f, numbers.Real) for f in factors):
        raise ValueError(f"{op}: scale_factor must be a number or {dims} numbers for a "
                         f"{x.ndim}-D input, got {scale_factor!r}")
    factors = tuple(float(f) for f in factors)
    sizes = tuple(math.floor(n * f) for n, f in zip(spatial, factors))
    if any(f <= 0 for f in factors) or any(s <= 0 for s in sizes):
        raise ValueError(f"{op}: scale_factor {scale_factor!r} gives an empty output for "
                         f"input {x.shape}")
    return sizes, factors


def interpolate(input, size=None, scale_factor=None, mode="nearest",  # noqa: A002
                align_corners=None, recompute_scale_factor=None, antialias=False):
    """Resize (N, C, L) or (N, C, H, W) to ``size`` or by ``scale_factor``, as
    ``F.interpolate``.

    size: an int or one per spatial dim; scale_factor: a number or one per spatial dim
        (exactly one of the two). Output size = floor(input size * scale_factor).
    mode: 'nearest' (3-D or 4-D), 'linear' (3-D), 'bilinear' (4-D).
    align_corners: linear modes only (None means False): True maps the corner pixels'
        centres onto each other; False (the default) treats pixels as areas.
    recompute_scale_factor: True computes the source positions from the output size
        rather than from the given scale_factor (they differ when IN * factor is not whole).
    antialias: not supported (False only).
    """
    op = "interpolate"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected input to be a Tensor, got {type(input).__name__}")
    if mode not in _MODES:
        raise NotImplementedError(f"{op}: mode {mode!r} is not supported by minidl "
                                  f"(supported: {', '.join(_MODES)})")
    if antialias:
        raise NotImplementedError(f"{op}: antialias=True is not supported by minidl")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"{op}: align_corners option can only be set with the interpolating "
                         "modes: linear | bilinear")
    if input.ndim not in (3, 4):
        raise ShapeError(f"{op}: expected input (N, C, L) or (N, C, H, W), got {input.shape}")
    dims = input.ndim - 2
    if mode in _SPATIAL and _SPATIAL[mode] != dims:
        want = "3-D (N, C, L)" if mode == "linear" else "4-D (N, C, H, W)"
        raise ShapeError(f"{op}: mode {mode!r} needs a {want} input, got {input.shape}")
    if input.dtype.kind != "f" and mode != "nearest":
        raise TypeError(f"{op}: mode {mode!r} needs a floating point input, got dtype "
                        f"{input.dtype}")
    sizes, factors = _output_size(op, input, size, scale_factor, dims)
    if recompute_scale_factor:
        factors = (None,) * dims
    xp = backend.get_array_module(input.data)
    y = input
    for k, (in_size, out_size, factor) in enumerate(zip(input.shape[2:], sizes, factors)):
        axis = 2 + k
        if mode == "nearest":
            index = xp.asarray(nearest_index(in_size, out_size, factor))
            key = (slice(None),) * axis + (index,)                 # y[:, :, index] or [..., index]
            y = y[key]
        else:
            A = linear_matrix(in_size, out_size, factor, bool(align_corners))   # (OUT, IN)
            A = Tensor(xp.asarray(A.astype(input.dtype)))
            if axis == input.ndim - 1:                  # the last axis: y @ A^T
                y = matmul(y, A.transpose(0, 1))
            else:                                       # H of (N, C, H, W): A @ y
                y = matmul(A, y)
    return y
