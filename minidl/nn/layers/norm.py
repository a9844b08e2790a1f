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
        shape = x.data.shape
        if len(shape) not in self.input_ranks:
            ranks = " or ".join(f"{r}D" for r in self.input_ranks)
            raise ShapeError(f"{self!r}: expected {ranks} input {self.expected_input_text()}, "
                             f"got {x.shape}")
        if shape[1] != self.num_features:
            raise ShapeError(f"{self!r}: expected input {self.expected_input_text()} with "
                             f"{self.num_features} channels, got {x.shape}")

    def forward(self, input):  # noqa: A002
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.item())
        use_batch_stats = self.training or (self.running_mean is None
                                            and self.running_var is None)
        track = not self.training or self.track_running_stats
        return self._batch_norm(input, self.running_mean if track else None,
                                self.running_var if track else None, use_batch_stats, factor)

    def _batch_norm(self, input, running_mean, running_var, use_batch_stats, factor):  # noqa: A002
        """``F.batch_norm`` with this layer's weight, bias and eps (``SyncBatchNorm``
        replaces it, in training, by the statistics of every rank's batch)."""
        if use_batch_stats:
            per_channel = input.numel() // input.shape[1]
            if per_channel <= 1:
                raise ShapeError(f"{self!r}: expected more than 1 value per channel when "
                                 f"training, got input size {input.shape}")
        return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
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


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of every rank's batch together.

    ``SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, process_group=None, device=None, dtype=None, *, bias=True)``,
    PyTorch's arguments; input (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W),
    statistics per channel C.

    Training, with a process group of more than one rank (``minidl.distributed``): the mean
    and (biased) variance normalising x are those of the union of all ranks' batches, the
    running statistics follow that union's unbiased variance, and the backward pass sums
    its per-channel sums over the ranks, so each rank gets the input gradient of its rows
    that one process holding the whole batch would get. The weight and bias gradients stay
    this rank's own: DistributedDataParallel averages them as it does every parameter's.
    The formulas are in ``minidl/distributed/sync_batchnorm.py``. Every rank must run
    these layers in the same order, forward and backward: they are collective calls.

    Evaluation uses the running statistics and communicates nothing. Without a process
    group, or with a group of one rank, the layer is exactly ``BatchNorm`` (so a model
    converted for distributed training still runs, and tests, in one process; PyTorch 2.x
    does the same on the CPU, and refuses CPU inputs only once a group exists).

    process_group: None, the default group of every rank (the one group
    ``minidl.distributed`` has). ``SyncBatchNorm.convert_sync_batchnorm(model)`` turns
    every BatchNorm1d/2d of a model into one.
    """

    input_ranks = (2, 3, 4, 5)
    input_shape_text = "(N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W)"

    # The collectives live in minidl.distributed, a layer above nn, which nn must not import
    # (tests/test_architecture.py). Importing minidl.distributed plugs its synchronised
    # batch norm in here: ``_across_ranks(layer, input, running_mean, running_var,
    # momentum)`` returns the output, or None when no group of several ranks exists. No
    # group can exist before that import: init_process_group is one of its functions.
    _across_ranks = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        if process_group is not None:
            raise ValueError(f"SyncBatchNorm: expected process_group=None (the default group "
                             f"of every rank: minidl.distributed has no sub-groups), got "
                             f"{process_group!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)
        self.process_group = process_group

    def _batch_norm(self, input, running_mean, running_var, use_batch_stats, factor):  # noqa: A002
        across = SyncBatchNorm._across_ranks
        if self.training and across is not None:
            out = across(self, input, running_mean, running_var, factor)
            if out is not None:
                return out
        return super()._batch_norm(input, running_mean, running_var, use_batch_stats, factor)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace every BatchNorm1d and BatchNorm2d of ``module`` (``module`` itself
        included, at any depth) with a SyncBatchNorm; returns ``module``, or the new layer
        when ``module`` is itself a batch norm.

        The new layer holds the old one's weight and bias (the same Parameter objects, so
        requires_grad and an optimiser built on them carry over), its running statistics
        and batch count (the same buffers) and its training flag. A SyncBatchNorm is made
        anew too (with ``process_group``), as in PyTorch; InstanceNorm is left alone (its
        statistics are per sample: nothing to synchronise).
        """
        out = module
        if isinstance(module, (BatchNorm1d, BatchNorm2d, SyncBatchNorm)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group,
                      bias=module.bias is not None)
            out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


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
