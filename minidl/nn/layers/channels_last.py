"""Layers for channels-last blocks on NCHW tensors (torchvision's ``ops.Permute`` and
ConvNeXt's ``LayerNorm2d``).

ConvNeXt normalises each pixel's C channels with a LayerNorm, as a transformer
normalises each token: on an (N, C, H, W) tensor that means moving C last, (N, H, W, C),
normalising over the last dim and moving it back. ``Permute`` does the moves inside a
``Sequential``; ``LayerNorm2d`` is the whole round trip in one layer.
"""
from __future__ import annotations

from ...errors import ShapeError
from .. import functional as F
from ..module import Module
from ._checks import check_tensor
from .norm import LayerNorm


class Permute(Module):
    """``Permute(dims)``: ``input.permute(*dims)``; e.g. ``Permute([0, 2, 3, 1])`` takes
    (N, C, H, W) to (N, H, W, C). No parameters."""

    def __init__(self, dims):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if sorted(d % len(self.dims) for d in self.dims) != list(range(len(self.dims))):
            raise ValueError(f"Permute: dims {self.dims} are not a permutation of "
                             f"{len(self.dims)} dims")

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        if input.ndim != len(self.dims):
            raise ShapeError(f"{self!r}: expected an input with {len(self.dims)} dims, got "
                             f"{input.shape}")
        return input.permute(*self.dims)

    def extra_repr(self):
        return f"dims={self.dims}"


class LayerNorm2d(LayerNorm):
    """``LayerNorm2d(num_channels, eps=1e-5, ...)``: LayerNorm over the channels of each
    pixel of an (N, C, H, W) input: (N, C, H, W) -> (N, H, W, C) -> normalise over C ->
    (N, C, H, W). Parameters as ``LayerNorm(C)``: weight, bias (C,)."""

    def __init__(self, num_channels, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__(num_channels, eps, elementwise_affine, bias, device, dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm2d: expected one channel count, got "
                             f"{self.normalized_shape}")

    def forward(self, input):  # noqa: A002
        check_tensor(self, input)
        (C,) = self.normalized_shape
        if input.ndim != 4 or input.shape[1] != C:
            raise ShapeError(f"{self!r}: expected input (N, {C}, H, W), got {input.shape}")
        x = input.permute(0, 2, 3, 1)                                      # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)                                       # (N, C, H, W)
