"""Batch normalisation: ``BatchNorm1d`` (N, C) or (N, C, L) and ``BatchNorm2d`` (N, C, H, W).

y = (x - mean) / sqrt(var + eps) * weight + bias, per channel C (``affine=False``: no
weight/bias; ``bias=False``, keyword-only as in PyTorch 2.13: weight only). In training the batch
statistics are used (biased variance) and the running ones are updated with the unbiased
variance: running = (1 - momentum) * running + momentum * batch. ``momentum=None`` uses a
cumulative average (factor 1 / num_batches_tracked). In eval mode the running statistics
are used, unless ``track_running_stats=False``.
"""
from __future__ import annotations

import numpy as np

from ... import creation
from ...autograd import Tensor, get_default_dtype
from ...errors import ShapeError
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ._checks import check_float
from ._checks import fmt_shape as _fmt_shape


class _BatchNorm(Module):
    """The shared body of ``BatchNorm1d`` and ``BatchNorm2d``; each subclass states the
    inputs it accepts in two public class attributes, which ``forward``'s check and tools
    such as ``minidl.summary`` read:

    - ``input_ranks``: the accepted ``input.ndim`` values, e.g. ``(4,)``;
    - ``input_shape_text``: those shapes in words, e.g. ``"(N, C, H, W)"``
      (``expected_input_text()`` writes it with C = num_features).
    """

    input_ranks = ()
    input_shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        dtype = np.dtype(dtype or get_default_dtype())
        if affine:
            self.weight = Parameter(creation.ones(num_features, dtype=dtype))
            if bias:
                self.bias = Parameter(creation.zeros(num_features, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", creation.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", creation.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if device is not None:
            self.to(device)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def expected_input_text(self):
        """The accepted input shapes in words, C written as ``num_features``:
        ``"(N, 16, H, W)"``."""
        return self.input_shape_text.replace("C", str(self.num_features))

    def _check_input(self, x):
        # ShapeError is a ValueError, the class PyTorch's batch norm raises for these
        check_float(self, x, self.weight if self.affine else self.running_mean)
        expected = self.expected_input_text()
        if x.ndim not in self.input_ranks:
            ranks = " or ".join(f"{r}D" for r in self.input_ranks)
            raise ShapeError(f"{self!r}: expected {ranks} input {expected}, got {x.shape}")
        if x.shape[1] != self.num_features:
            raise ShapeError(f"{self!r}: expected input {expected} with {self.num_features} "
                             f"channels, got {x.shape}")

    def forward(self, input):  # noqa: A002
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        if use_batch_stats:
            per_channel = input.numel() // input.shape[1]
            if per_channel <= 1:
                raise ShapeError(f"{self!r}: expected more than 1 value per channel when "
                                 f"training, got input size {input.shape}")
        track = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if track else None,
                            self.running_var if track else None, self.weight, self.bias,
                            use_batch_stats, factor, self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L), statistics per channel C."""

    input_ranks = (2, 3)
    input_shape_text = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W), statistics per channel C over N, H and W."""

    input_ranks = (4,)
    input_shape_text = "(N, C, H, W)"


# --- per-sample normalisation: LayerNorm, GroupNorm, InstanceNorm1d/2d ---------------------
# Statistics of each sample's own values (``minidl/ops/norm_extra.py``): nothing depends on
# the batch, so training and evaluation agree (InstanceNorm with track_running_stats=True
# is the exception, as in PyTorch).


def _make_affine(module, shape, affine, bias, dtype):
    """weight = ones(shape), bias = zeros(shape) (PyTorch's init), or None for each."""
    dtype = np.dtype(dtype or get_default_dtype())
    if affine:
        module.weight = Parameter(creation.ones(*shape, dtype=dtype))
        if bias:
            module.bias = Parameter(creation.zeros(*shape, dtype=dtype))
        else:
            module.register_parameter("bias", None)
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


class _AffineNorm(Module):
    """A per-sample normalisation with an optional affine weight and bias (``_make_affine``):
    LayerNorm and GroupNorm."""

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class LayerNorm(_AffineNorm):
    """``LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``:
    input (*, *D) normalised over its trailing dims D = normalized_shape, per position of
    (*) (each token of a transformer, each sample of an MLP); weight, bias: (*D), init 1, 0."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(int(d) for d in normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _make_affine(self, self.normalized_shape, elementwise_affine, bias, dtype)
        if device is not None:
            self.to(device)

    def forward(self, input):  # noqa: A002
        check_float(self, input, self.weight)
        D = self.normalized_shape
        if input.ndim < len(D) or tuple(input.shape[input.ndim - len(D):]) != D:
            raise ShapeError(f"{self!r}: expected input {_fmt_shape(('*',) + D)}, got "
                              f"{input.shape}")
        return F.layer_norm(input, D, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class GroupNorm(_AffineNorm):
    """``GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, bias=True)``: input
    (N, C, *) normalised per sample over each group of C / num_groups channels; weight,
    bias: (C,) per channel, init 1, 0. num_groups=1 normalises all channels together,
    num_groups=C each alone (InstanceNorm with affine)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None,
                 dtype=None, *, bias=True):
        super().__init__()
        if num_groups <= 0 or num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = eps
        self.affine = affine
        _make_affine(self, (self.num_channels,), affine, bias, dtype)
        if device is not None:
            self.to(device)

    def forward(self, input):  # noqa: A002
        check_float(self, input, self.weight)
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ShapeError(f"{self!r}: expected input (N, {self.num_channels}, *), got "
                              f"{input.shape}")
        return F.group_norm(input, self.num_groups, self.weight, self.bias,
                                      self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, bias={self.bias is not None}")


class _InstanceNorm(_BatchNorm):
    """InstanceNorm1d/2d: the BatchNorm modules' parameters, buffers and repr, with
    ``affine=False`` and ``track_running_stats=False`` by default, statistics per sample
    and channel, and an unbatched input accepted (one dim fewer)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)

    def _check_input(self, x):
        check_float(self, x, self.weight if self.affine else self.running_mean)
        batched = max(self.input_ranks)
        if x.ndim not in (batched, batched - 1):
            raise ShapeError(f"{self!r}: expected {batched}D input "
                              f"{self.expected_input_text()} or {batched - 1}D unbatched "
                              f"input, got {x.shape}")
        C = x.shape[1 if x.ndim == batched else 0]
        # PyTorch refuses a wrong channel count only where parameters or statistics need it
        if C != self.num_features and (self.affine or self.track_running_stats):
            raise ShapeError(f"{self!r}: expected input {self.expected_input_text()} with "
                              f"{self.num_features} channels, got {x.shape}")

    def forward(self, input):  # noqa: A002
        self._check_input(input)
        unbatched = input.ndim == max(self.input_ranks) - 1
        x = input.unsqueeze(0) if unbatched else input
        y = F.instance_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            use_input_stats=self.training or not self.track_running_stats,
            momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps)
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or unbatched (C, L): per sample and channel, over L."""

    input_ranks = (3,)
    input_shape_text = "(N, C, L)"


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or unbatched (C, H, W): per sample and channel, over
    H and W (style transfer, image generation)."""

    input_ranks = (4,)
    input_shape_text = "(N, C, H, W)"
