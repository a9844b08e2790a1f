"""Batch normalisation: ``batch_norm``, one fused Function with a closed-form backward.

Shape letters::

    N    batch size
    C    channels (features): statistics are kept per channel
    *S   the other dims: none for (N, C), L for (N, C, L), H, W for (N, C, H, W)
    m    the number of values per channel: m = N * prod(S)

    x, y, gy, gx          (N, C, *S)
    weight (gamma), bias (beta), running_mean, running_var, and their gradients   (C,)
    mean, var, inv_std    (C,): the per-channel statistics (broadcast along N and *S)

Training mode normalises with the batch's own statistics (over N and *S, per channel)::

    mean    = sum(x) / m
    var     = sum((x - mean)^2) / m                         biased: divides by m
    inv_std = 1 / sqrt(var + eps)
    xhat    = (x - mean) * inv_std
    y       = gamma * xhat + beta

and updates the running statistics in place, with the *unbiased* variance (m - 1),
exactly as PyTorch does::

    running_mean = (1 - momentum) * running_mean + momentum * mean
    running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

Evaluation mode uses the running statistics instead of the batch's:
    y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta.

Higher-order gradients (create_graph=True): ``BatchNormFunction.differentiable_backward``
writes the backward's formulas again with minidl ops on the input Tensors. In training
mode mean, var, inv_std and xhat are recomputed from x (they depend on it smoothly, so the
saved arrays, constants there, would lose their derivatives); in evaluation mode the
running statistics are constants anyway.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels import batchnorm as kernels


class BatchNormFunction(Function):
    """y = weight * xhat + bias, with xhat normalised per channel (see the module docstring).

    Inputs (positional, differentiable): x (N, C, *S), weight (C,) or None, bias (C,) or None.
    Parameters: running_mean, running_var: (C,) raw arrays or None (updated in place when
    training, read when not), training, momentum, eps.

    Backward, training mode. The batch statistics depend on every x of the channel, so
    the gradient has three paths (through xhat directly, through the mean, through the
    variance). Summing them, with every sum over the m values of one channel::

        gbias   = sum(gy)                                               (C,)
        gweight = sum(gy * xhat)                                        (C,)
        gxhat   = gy * weight                                           (N, C, *S)
        gx      = inv_std / m * (m * gxhat - sum(gxhat) - xhat * sum(gxhat * xhat))
                = weight * inv_std / m * (m * gy - gbias - xhat * gweight)

    (the second line because sum(gxhat) = weight * gbias and sum(gxhat * xhat) =
    weight * gweight: the two parameter gradients are reused for the input's).

    Backward, evaluation mode. The running statistics are constants, so y is an affine
    function of x per channel::

        gx = gy * weight * inv_std,    gweight = sum(gy * xhat),    gbias = sum(gy)

    Each step is one call into the batch-norm kernel family (``kernels/batchnorm.py``:
    statistics, normalisation, the two gradient sums, gx), whose reference writes these
    formulas out as array expressions and whose fast paths (numba on the CPU, fused CUDA
    kernels on the GPU) make one pass over the data per step. Saved for backward: x,
    mean, inv_std, weight; xhat is recomputed rather than stored.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = backend.get_array_module(x)
        C = x.shape[1]
        m = x.size // C                                     # values per channel
        if training:
            # mean = sum(x) / m,  var = sum((x - mean)^2) / m               (C,) each
            mean, var = kernels.batch_stats(x)
            # running averages, in place, with the unbiased variance var * m / (m - 1)
            if running_mean is not None:
                running_mean[...] = ((1 - momentum) * running_mean
                                     + momentum * mean.astype(running_mean.dtype))
            if running_var is not None:
                unbiased = var.astype(running_var.dtype) * (m / (m - 1))
                running_var[...] = (1 - momentum) * running_var + momentum * unbiased
        else:   # copies: a later training step updates the running statistics in place
            mean = running_mean.astype(x.dtype)                             # (C,)
            var = running_var.astype(x.dtype)                               # (C,)
        inv_std = 1 / xp.sqrt(var + eps)                                    # (C,)
        if weight is not None:
            weight = weight.astype(x.dtype, copy=False)                     # (C,)
        if bias is not None:
            bias = bias.astype(x.dtype, copy=False)                         # (C,)
        # y = weight * xhat + bias,  xhat = (x - mean) * inv_std           (N, C, *S)
        # xhat is not kept: backward recomputes it from x (the input, alive anyway).
        y = kernels.normalize(x, mean, inv_std, weight, bias)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.training, ctx.eps = training, eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, mean, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gbias = gweight = gx = None
        # gbias = sum(gy),  gweight = sum(gy * xhat)                        (C,) each
        # (training mode needs both for gx as well)
        if ctx.training or need_w or need_b:
            gbias, gweight = kernels.grad_sums(gy, x, mean, inv_std)
        # gx = weight * inv_std / m * (m * gy - gbias - xhat * gweight)    (training)
        # gx = weight * inv_std * gy                                       (evaluation)
        if need_x:
            gx = kernels.input_grad(gy, x, mean, inv_std, weight, gbias, gweight,
                                    ctx.training)                           # (N, C, *S)
        return (gx,
                gweight if need_w else None,
                gbias if need_b else None)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # The same formulas on Tensors: x (and weight, when it has x's dtype) are the input
        # Tensors; mean and inv_std are constants here, right for the running statistics
        # (evaluation) but recomputed from x in training mode.
        x, mean, inv_std, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        C = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))               # every dim but the channel's
        per_channel = (1, C) + (1,) * (x.ndim - 2)          # (C,) broadcast along N and *S
        m = x.numel() // C
        if ctx.training:
            mean = x.sum(dim=axes, keepdim=True) / m                       # (1, C, 1, ...)
            d = x - mean                                                    # (N, C, *S)
            inv_std = ((d * d).sum(dim=axes, keepdim=True) / m + ctx.eps) ** -0.5
        else:
            mean = Tensor(mean.data.reshape(per_channel))
            inv_std = Tensor(inv_std.data.reshape(per_channel))
            d = x - mean
        xhat = d * inv_std                                                  # (N, C, *S)
        gbias = gweight = gx = None
        if ctx.training or need_w or need_b:
            gbias = gy.sum(dim=axes, keepdim=True)                          # (1, C, 1, ...)
            gweight = (gy * xhat).sum(dim=axes, keepdim=True)               # (1, C, 1, ...)
        if need_x:
            scale = inv_std if weight is None else weight.reshape(per_channel) * inv_std
            if ctx.training:
                gx = scale / m * (m * gy - gbias - xhat * gweight)
            else:
                gx = scale * gy
        return (gx,
                gweight.reshape((C,)) if need_w else None,
                gbias.reshape((C,)) if need_b else None)


def _check_vector(v, what, C, input):  # noqa: A002
    """A per-channel (C,) Tensor on the input's device, or None."""
    if v is None:
        return None
    if not isinstance(v, Tensor):
        raise TypeError(f"batch_norm: expected {what} to be a Tensor or None, "
                        f"got {type(v).__name__}")
    d = v.data
    if d.shape != (C,):
        raise ShapeError(f"batch_norm: expected {what} of shape ({C},) for input "
                         f"{input.shape} with {C} channels, got {v.shape}")
    # NumPy arrays all live on the CPU: only other arrays need their devices compared
    if (type(d) is not np.ndarray or type(input.data) is not np.ndarray) \
            and v.device != input.device:
        raise RuntimeError(f"batch_norm: {what} is on {v.device} but the input is on "
                           f"{input.device}; move it with .to(device)")
    return v


def batch_norm(input, running_mean, running_var, weight=None, bias=None,  # noqa: A002
               training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation of ``input`` (N, C), (N, C, L) or (N, C, H, W) (any (N, C, *S)).

    running_mean, running_var: (C,) Tensors or None. When training, they are updated in
        place (unbiased variance); when not, they are the statistics used and are required.
    weight, bias: (C,) affine parameters (gamma, beta), or None.
    training: use the batch statistics (True) or the running ones (False).
    momentum: the running-average factor, a number in [0, 1]. PyTorch's BatchNorm modules
        also accept momentum=None (a cumulative average); they handle it themselves by
        passing momentum = 1 / num_batches_tracked here, and so must minidl's modules: the
        functional form raises for None, as PyTorch's does.
    eps: added to the variance before the square root.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm: expected input to be a Tensor, got {type(input).__name__}")
    data = input.data
    if data.ndim < 2:
        raise ShapeError(f"batch_norm: expected input (N, C), (N, C, L) or (N, C, H, W), "
                         f"got {input.shape}")
    if data.dtype.kind != "f":
        raise TypeError(f"batch_norm: expected a floating point input, got dtype {input.dtype}")
    if momentum is None:
        raise ValueError("batch_norm: momentum=None (a cumulative moving average) needs the "
                         "number of batches seen; the BatchNorm modules handle it by passing "
                         "momentum=1/num_batches_tracked. Pass a number here.")
    if not isinstance(momentum, numbers.Real):
        raise TypeError(f"batch_norm: momentum must be a number in [0, 1], got "
                        f"{type(momentum).__name__} {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1], got {momentum!r}")
    C = data.shape[1]
    rm = _check_vector(running_mean, "running_mean", C, input)
    rv = _check_vector(running_var, "running_var", C, input)
    _check_vector(weight, "weight", C, input)
    _check_vector(bias, "bias", C, input)
    if training:
        if data.size // C <= 1:   # a variance needs two values (ValueError too)
            raise ShapeError(f"batch_norm: expected more than 1 value per channel when "
                             f"training, got input of shape {input.shape}")
    elif rm is None or rv is None:
        raise RuntimeError("batch_norm: running_mean and running_var must be given in "
                           "evaluation mode (training=False)")
    return BatchNormFunction.apply(
        input, weight, bias,
        running_mean=None if rm is None else rm.data,
        running_var=None if rv is None else rv.data,
        training=bool(training), momentum=float(momentum), eps=float(eps))
