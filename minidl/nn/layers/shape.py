"""Shape layers: ``ZeroPad2d`` (pad the borders of an image with zeros) and ``Unflatten``
(split one dim into several: ``Flatten``'s inverse)."""
from __future__ import annotations

import math

from ...errors import ShapeError
from .. import functional as F
from ..module import Module
from ._checks import check_tensor


class ZeroPad2d(Module):
    """``ZeroPad2d(padding)``: (N, C, H, W) or (C, H, W) -> (..., H + top + bottom,
    W + left + right), zeros outside. padding: an int (all four sides) or (left, right,
    top, bottom)."""

    def __init__(self, padding):
        super().__init__()
        if isinstance(padding, int):
            padding = (padding,) * 4
        padding = tuple(padding)
        if len(padding) != 4 or not all(isinstance(p, int) for p in padding):
            raise ValueError(f"ZeroPad2d: padding must be an int or 4 ints (left, right, top, "
                             f"bottom), got {padding!r}")
        self.padding = padding

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        if input.ndim not in (3, 4):
            raise ShapeError(f"{self!r}: expected input (N, C, H, W) or (C, H, W), got "
                             f"{input.shape}")
        return F.pad(input, self.padding, value=0.0)

    def extra_repr(self):
        return f"{self.padding}"


class Unflatten(Module):
    """``Unflatten(dim, unflattened_size)``: dim ``dim`` of size prod(unflattened_size)
    becomes the dims ``unflattened_size`` (one entry may be -1): (N, 12) -> (N, 3, 4)."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        if not isinstance(dim, int):
            raise TypeError(f"Unflatten: dim must be an int, got {type(dim).__name__}")
        if not isinstance(unflattened_size, (tuple, list)) or \
                not all(isinstance(s, int) for s in unflattened_size):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple of ints, got "
                            f"{unflattened_size!r}")
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        if not -input.ndim <= self.dim < input.ndim:
            raise IndexError(f"{self!r}: dim {self.dim} is out of range for input of shape "
                             f"{input.shape}")
        d = self.dim % input.ndim
        n = input.shape[d]
        sizes = self.unflattened_size
        known = math.prod(s for s in sizes if s != -1)
        ok = (n % known == 0 and sizes.count(-1) == 1) if -1 in sizes else known == n
        if not ok:
            raise ShapeError(f"{self!r}: unflattened_size {sizes} does not fit dim {d} of "
                             f"size {n} (input {input.shape})")
        return input.reshape(input.shape[:d] + sizes + input.shape[d + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
