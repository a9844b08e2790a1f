"""1-D convolution and max pooling, ``conv1d`` and ``max_pool1d``, as the 2-D ops on a
height-1 image.

Shape letters::

    N, C, OC     batch size, input and output channels
    L, OL        input and output length
    K, S, P, D   kernel size, stride, padding, dilation (along L)

    conv1d       input (N, C, L) or (C, L), weight (OC, C/groups, K), bias (OC,)
                 -> (N, OC, OL),   OL = floor((L + 2P - D (K - 1) - 1) / S) + 1
    max_pool1d   input (N, C, L) or (C, L) -> (N, C, OL)   (ceil_mode rounds up)

A signal (N, C, L) *is* an image (N, C, 1, L) of height 1, and a 1-D kernel (OC, C, K) an
image kernel (OC, C, 1, K): sliding it along W with stride (1, S), padding (0, P) and
dilation (1, D) is the 1-D operation exactly. So both functions reshape (a view, no copy),
call the 2-D op (its kernels, its gradients, its double backward) and reshape back; no
new Function. Argument and shape errors are checked here first, in 1-D words.
"""
from __future__ import annotations

from .. import geometry
from ..autograd import Tensor
from ..errors import ShapeError
from .conv import conv2d
from .pool import max_pool2d


def _single(value, name, op, minimum):
    """``3`` or ``(3,)`` -> 3; errors name the op (``conv1d: stride must be ...``)."""
    if isinstance(value, (tuple, list)) and len(value) != 1:
        raise TypeError(f"{op}: {name} must be an int or a 1-tuple of ints, got {value!r}")
    return geometry.pair(value, name, op, minimum=minimum)[0]


def _as_image(x):
    """(N, C, L) -> (N, C, 1, L); an unbatched (C, L) -> (C, 1, L)."""
    return x.unsqueeze(-2)


def _renamed(exc, op):
    """An error of the 2-D op, re-raised as the 1-D op's (same class, 1-D name)."""
    message = str(exc).replace("conv2d: ", f"{op}: ").replace("max_pool2d: ", f"{op}: ")
    return type(exc)(message)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """1-D convolution (cross-correlation) of input (N, C, L) or (C, L) with weight
    (OC, C/groups, K), as ``F.conv1d``; padding an int, (P,), 'valid' or 'same'."""
    op = "conv1d"
    for value, what in ((input, "input"), (weight, "weight")):
        if not isinstance(value, Tensor):
            raise TypeError(f"{op}: expected {what} to be a Tensor, got {type(value).__name__}")
    if input.ndim not in (2, 3):
        raise ShapeError(f"{op}: expected a 3-D input (N, C, L) or a 2-D unbatched input "
                         f"(C, L), got input of shape {input.shape}")
    if weight.ndim != 3:
        raise ShapeError(f"{op}: expected a 3-D weight (OC, C/groups, K), got weight of "
                         f"shape {weight.shape}")
    stride = (1, _single(stride, "stride", op, 1))
    dilation = (1, _single(dilation, "dilation", op, 1))
    if not isinstance(padding, str):
        padding = (0, _single(padding, "padding", op, 0))
    try:
        y = conv2d(_as_image(input), _as_image(weight), bias, stride, padding, dilation,
                   groups)
    except (TypeError, ValueError) as exc:                  # ShapeError is a ValueError
        raise _renamed(exc, op) from None
    return y.squeeze(-2)                                    # (N, OC, 1, OL) -> (N, OC, OL)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1,  # noqa: A002
               ceil_mode=False, return_indices=False):
    """1-D max pooling of input (N, C, L) or (C, L), as ``F.max_pool1d``; ``stride``
    defaults to ``kernel_size``. return_indices: also the int64 positions along L."""
    op = "max_pool1d"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a minidl Tensor, got {type(input).__name__}")
    if input.ndim not in (2, 3):
        raise ShapeError(f"{op}: expected input of shape (N, C, L) or (C, L), got shape "
                         f"{input.shape} ({input.ndim} dims)")
    kernel = (1, _single(kernel_size, "kernel_size", op, 1))
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel
    else:
        stride = (1, _single(stride, "stride", op, 1))
    padding = (0, _single(padding, "padding", op, 0))
    dilation = (1, _single(dilation, "dilation", op, 1))
    try:
        out = max_pool2d(_as_image(input), kernel, stride, padding, dilation, ceil_mode,
                         return_indices)
    except (TypeError, ValueError) as exc:
        raise _renamed(exc, op) from None
    if return_indices:                  # flat index ih * W + iw with ih = 0: the position
        y, index = out
        return y.squeeze(-2), index.squeeze(-2)
    return out.squeeze(-2)
