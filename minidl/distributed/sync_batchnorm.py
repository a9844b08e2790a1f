"""Synchronised batch norm: the training statistics of every rank's batch together.

``minidl.nn.SyncBatchNorm`` is the layer; this module holds what it does across the ranks
(``minidl.distributed`` plugs it into the layer when imported: nn sits below distributed
and cannot import it). Shape letters as in ``minidl/ops/norm.py``, plus::

    R        the number of ranks; rank r holds x_r (N_r, C, *S), its own batch
    m_r      values per channel on rank r: m_r = N_r * prod(S) (0 for an empty batch)
    n        values per channel over all ranks: n = sum_r m_r

Forward (training). Each rank computes its own batch's statistics with the batch-norm
kernels, the ranks exchange them in one ``all_gather`` (R x 3 x C numbers: no activations
travel), and every rank merges the same R triples in the same order (Chan et al.'s
formula for combining the mean and variance of parts)::

    mean_r, var_r = batch_stats(x_r)                         (C,) each, this rank's batch
    gather (m_r, mean_r, m_r * var_r) from every rank        (R, 3, C)
    mean = sum_r m_r * mean_r / n                            (C,)
    var  = sum_r (m_r * var_r + m_r * (mean_r - mean)^2) / n (C,)  biased, as BatchNorm's
    y_r  = weight * (x_r - mean) / sqrt(var + eps) + bias    (N_r, C, *S)
    running_var <- (1 - momentum) * running_var + momentum * var * n / (n - 1)

Why not all-reduce sum(x) and sum(x^2) and take var = E[x^2] - E[x]^2: in float32 that
subtraction cancels catastrophically when |mean| >> std (mean 1000, std 1: E[x^2] ~ 1e6
with 7 digits, the variance lost in rounding). Every term of the merge above is a
non-negative variance or squared distance, each batch's variance is computed two-pass
around its own mean (the kernels use float64 sums), and the merge runs in float64; a
second all-reduce round for the sum of squared deviations would be as accurate, but costs
a second exchange. Gathering (not reducing) also gives every rank bit-identical
statistics, so the replicas' running statistics never drift apart.

Backward. y_r depends on every rank's x through mean and var, so the two per-channel sums
of BatchNorm's backward (``ops/norm.py``) run over all ranks' values, one ``all_reduce``::

    gbias_r   = sum(gy_r),  gweight_r = sum(gy_r * xhat_r)    (C,) this rank's sums
    gbias     = sum_r gbias_r,  gweight = sum_r gweight_r     all_reduce
    gx_r      = weight * inv_std * (gy_r - gbias / n - xhat_r * gweight / n)

which is, row for row, the gradient a single process holding the whole batch computes,
the objective being the sum of every rank's loss. The weight and bias gradients returned
are this rank's own sums gweight_r, gbias_r: their sum over the ranks is the whole batch's
gradient, so DistributedDataParallel's average (with each rank's loss a mean over its
batch) gives a single process's gradient for the mean loss over the whole batch.

Higher-order gradients (create_graph=True) run the same formulas in minidl ops, with the
sums over the ranks done by ``_AllReduceSum``, an all-reduce that autograd records (its
gradient is again an all-reduce), so a gradient penalty through SyncBatchNorm works
across the ranks too. Every rank must take part in each collective in the same order:
all ranks train the same model, and the input needs a gradient on all ranks or on none.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels import batchnorm as kernels
from ..nn.layers._checks import as_layer_error
from ..nn.layers.norm import SyncBatchNorm
from .process_group import ReduceOp, all_gather, all_reduce, get_world_size, is_initialized


class DefaultGroup:
    """The collectives SyncBatchNorm needs, over the default process group, on small host
    (NumPy) arrays; they go through the Tensor collectives of ``process_group``.

    A stand-in with the same two methods (a test's threads playing ranks) can be passed
    as ``group`` to ``sync_batch_norm``.
    """

    @staticmethod
    def all_gather(array):
        """Every rank's ``array`` (shape A), stacked in rank order: (R, *A)."""
        parts = [Tensor(np.empty_like(array)) for _ in range(get_world_size())]
        all_gather(parts, Tensor(array))
        return np.stack([p.data for p in parts])

    @staticmethod
    def all_reduce(array):
        """The sum over the ranks of ``array``, a new array (``array`` is left as it was)."""
        total = Tensor(np.array(array))           # a copy: all_reduce works in place
        all_reduce(total, op=ReduceOp.SUM)
        return total.data


def _on_host(array):
    """A float64 NumPy copy of a (C,)-sized statistic, to send (from the GPU too)."""
    return backend.to_numpy(array).astype(np.float64)


def _per_channel_shape(x):
    """(1, C, 1, ...): a (C,) vector broadcast along N and *S of x."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


class SyncBatchNormFunction(Function):
    """Training-mode batch norm over the union of the ranks' batches (module docstring).

    Inputs (positional, differentiable): x (N_r, C, *S), weight (C,) or None, bias (C,) or
    None. Parameters: running_mean, running_var (C,) raw arrays or None (updated in place),
    momentum, eps, group (``DefaultGroup`` or a stand-in). Saved for backward: x, mean,
    inv_std, weight; ctx.count = n.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group):
        xp = backend.get_array_module(x)
        C = x.shape[1]
        m = x.size // C                                             # this rank's count
        if m:
            mean_r, var_r = kernels.batch_stats(x)                  # (C,) each
            mean_r, var_r = _on_host(mean_r), _on_host(var_r)
        else:    # an empty batch adds nothing (its mean would be NaN)
            mean_r = var_r = np.zeros(C)
        # (count, mean, sum of squared deviations) of every rank, merged in rank order
        parts = group.all_gather(np.stack([np.full(C, float(m)), mean_r, m * var_r]))
        counts, means, squares = parts[:, 0], parts[:, 1], parts[:, 2]  # (R, C) each
        n = counts[:, 0].sum()
        if n <= 1:   # the same n on every rank: all of them raise, none waits
            raise ShapeError(f"sync_batch_norm: expected more than 1 value per channel over "
                             f"all ranks when training, got {int(n)} (input {x.shape} here)")
        mean = (counts * means).sum(axis=0) / n                     # (C,)
        var = (squares + counts * (means - mean) ** 2).sum(axis=0) / n
        if running_mean is not None:
            running_mean[...] = ((1 - momentum) * running_mean
                                 + momentum * xp.asarray(mean, dtype=running_mean.dtype))
        if running_var is not None:
            unbiased = xp.asarray(var * (n / (n - 1)), dtype=running_var.dtype)
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
        inv_std = xp.asarray(1 / np.sqrt(var + eps), dtype=x.dtype)  # (C,)
        mean = xp.asarray(mean, dtype=x.dtype)
        if weight is not None:
            weight = weight.astype(x.dtype, copy=False)
        if bias is not None:
            bias = bias.astype(x.dtype, copy=False)
        y = kernels.normalize(x, mean, inv_std, weight, bias) if m else xp.zeros_like(x)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.count, ctx.eps, ctx.group = int(n), eps, group
        return y

    @staticmethod
    def backward(ctx, gy):
        x, mean, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        xp = backend.get_array_module(x)
        C = x.shape[1]
        m = x.size // C
        if m:   # this rank's sums: gbias_r = sum(gy), gweight_r = sum(gy * xhat)   (C,)
            gbias, gweight = kernels.grad_sums(gy, x, mean, inv_std)
        else:
            gbias = gweight = xp.zeros(C, dtype=x.dtype)
        gx = None
        if need_x:
            # summed over the ranks (one exchange), then scaled by m / n: the kernel's
            # formula divides by this rank's m, the statistics' count is n
            totals = ctx.group.all_reduce(np.stack([_on_host(gbias), _on_host(gweight)]))
            share = m / ctx.count
            gx = (kernels.input_grad(gy, x, mean, inv_std, weight,
                                     xp.asarray(totals[0] * share, dtype=x.dtype),
                                     xp.asarray(totals[1] * share, dtype=x.dtype), True)
                  if m else xp.zeros_like(x))                       # (N_r, C, *S)
        return (gx,
                gweight if need_w else None,
                gbias if need_b else None)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # The formulas again on Tensors, mean and inv_std recomputed from x (the saved ones
        # are constants) with recorded all-reduces, so the ranks' paths stay differentiable.
        x, _, _, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        C, n = x.shape[1], ctx.count
        axes = (0,) + tuple(range(2, x.ndim))                  # every dim but the channel's

        def over_ranks(t):                                     # (1, C, 1, ...) summed
            return _AllReduceSum.apply(t, group=ctx.group)

        mean = over_ranks(x.sum(dim=axes, keepdim=True)) / n                # (1, C, 1, ...)
        d = x - mean                                                        # (N_r, C, *S)
        inv_std = (over_ranks((d * d).sum(dim=axes, keepdim=True)) / n + ctx.eps) ** -0.5
        xhat = d * inv_std                                                  # (N_r, C, *S)
        gbias = gy.sum(dim=axes, keepdim=True)                              # this rank's
        gweight = (gy * xhat).sum(dim=axes, keepdim=True)
        gx = None
        if need_x:
            scale = (inv_std if weight is None
                     else weight.reshape(_per_channel_shape(x)) * inv_std)    # (1, C, 1, ...)
            gx = scale * (gy - over_ranks(gbias) / n - xhat * (over_ranks(gweight) / n))
        return (gx,
                gweight.reshape((C,)) if need_w else None,
                gbias.reshape((C,)) if need_b else None)


class _AllReduceSum(Function):
    """y = the sum over the ranks of x, on every rank: an all-reduce autograd records.
    Every rank's x feeds every rank's y, so the gradient is again a sum over the ranks:
    gx = all_reduce(gy). x, y: any shape (here (1, C, 1, ...))."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        xp = backend.get_array_module(x)
        return xp.asarray(group.all_reduce(backend.to_numpy(x)), dtype=x.dtype)

    @staticmethod
    def backward(ctx, gy):
        xp = backend.get_array_module(gy)
        return xp.asarray(ctx.group.all_reduce(backend.to_numpy(gy)), dtype=gy.dtype)

    @staticmethod
    def differentiable_backward(ctx, gy):
        return _AllReduceSum.apply(gy, group=ctx.group)


def sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps,  # noqa: A002
                    group):
    """Training-mode batch norm of ``input`` (N_r, C, *S) with the statistics of every
    rank's batch (module docstring); ``group``: ``DefaultGroup`` or a stand-in.

    running_mean, running_var: (C,) Tensors or None, updated in place with the union's
    statistics; weight, bias: (C,) or None; momentum a number in [0, 1]. The layer checks
    the arguments (``SyncBatchNorm``); here only the count over all ranks is checked.
    """
    return SyncBatchNormFunction.apply(
        input, weight, bias,
        running_mean=None if running_mean is None else running_mean.data,
        running_var=None if running_var is None else running_var.data,
        momentum=float(momentum), eps=float(eps), group=group)


def _across_ranks(layer, input, running_mean, running_var, momentum):  # noqa: A002
    """``SyncBatchNorm``'s training forward when a group of several ranks exists, else
    None (the layer then runs as BatchNorm)."""
    if not is_initialized() or get_world_size() == 1:
        return None
    try:
        return sync_batch_norm(input, running_mean, running_var, layer.weight, layer.bias,
                               momentum, layer.eps, DefaultGroup)
    except ShapeError as e:                 # name the layer, as BatchNorm's errors do
        raise as_layer_error(e, layer, "sync_batch_norm") from None


SyncBatchNorm._across_ranks = _across_ranks
