"""Per-sample normalisations: ``layer_norm``, ``group_norm``, ``instance_norm``.

Shape letters::

    N    batch size
    C    channels
    *S   the other dims: none, L, or H, W
    G    groups (group_norm): C / G channels in each group
    D    normalized_shape (layer_norm): the trailing dims that are normalised together
    R    rows: the number of independent normalisations
    M    the number of values in one row

All three are one idea: cut the input into rows of M values, standardise each row on
its own statistics, then (optionally) scale and shift per channel or per element::

    layer_norm     x (*, *D)      rows = every position of *; M = prod(D)
                   weight, bias   (*D)
    group_norm     x (N, C, *S)   rows = (n, group); M = C / G * prod(S)
                   weight, bias   (C,)
    instance_norm  x (N, C, *S)   rows = (n, c); M = prod(S)
                   weight, bias   (C,)

so one Function does the standardising, on the (R, M) view of x (a reshape, no copy)::

    mean    = sum(x) / M                                    (R, 1)
    var     = sum((x - mean)^2) / M                         (R, 1)   biased, as PyTorch
    inv_std = 1 / sqrt(var + eps)                           (R, 1)
    xhat    = (x - mean) * inv_std                          (R, M)

and the affine part ``xhat * weight + bias`` is written with the ordinary (broadcasting)
ops: their gradients, summed over the rows by ``unbroadcast``, are the weight's and bias'.
Unlike batch norm, the statistics are the sample's own, so training and evaluation give
the same result (instance_norm with running statistics is the exception: see there).
"""
from __future__ import annotations

import math
import numbers

from .. import backend
from ..autograd import Function, Tensor, no_grad
from ..errors import ShapeError
from .norm import batch_norm


class StandardizeFunction(Function):
    """xhat = (x - mean) / sqrt(var + eps), each row of x on its own statistics.

    x, xhat, gy, gx: (R, M); mean, var, inv_std: (R, 1). See the module docstring.

    Backward. Every xhat of a row depends on every x of the row (through mean and var),
    so, with sums along the row (as for batch norm, the same three paths)::

        gx = inv_std * (gy - sum(gy) / M - xhat * sum(gy * xhat) / M)        (R, M)
    """

    @staticmethod
    def forward(ctx, x, eps):
        xp = backend.get_array_module(x)
        mean = x.mean(axis=1, keepdims=True)                                # (R, 1)
        d = x - mean                                                        # (R, M)
        inv_std = 1 / xp.sqrt((d * d).mean(axis=1, keepdims=True) + eps)    # (R, 1)
        xhat = d * inv_std                                                  # (R, M)
        ctx.save_for_backward(x, xhat, inv_std)
        ctx.eps = eps
        return xhat

    @staticmethod
    def backward(ctx, gy):
        _, xhat, inv_std = ctx.saved_tensors
        # gx = inv_std * (gy - mean(gy) - xhat * mean(gy * xhat)), means along the row
        return inv_std * (gy - gy.mean(axis=1, keepdims=True)
                          - xhat * (gy * xhat).mean(axis=1, keepdims=True))

    @staticmethod
    def differentiable_backward(ctx, gy):
        # xhat is the output Tensor here (recorded: it reaches x); inv_std, a constant if
        # taken from the save, is recomputed from the input Tensor x so that it is too.
        x, xhat, _ = ctx.saved_tensors
        d = x - x.mean(dim=1, keepdim=True)                                 # (R, M)
        inv_std = ((d * d).mean(dim=1, keepdim=True) + ctx.eps) ** -0.5     # (R, 1)
        return inv_std * (gy - gy.mean(dim=1, keepdim=True)
                          - xhat * (gy * xhat).mean(dim=1, keepdim=True))


def _standardize_rows(x, rows, eps):
    """x (any shape, R * M elements) standardised in ``rows`` rows, back in x's shape."""
    M = x.numel() // rows if rows else 0
    return StandardizeFunction.apply(x.reshape(rows, M), eps=float(eps)).reshape(x.shape)


def _check_input(x, name):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected input to be a Tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating point input, got dtype {x.dtype}; "
                        "convert it with .float()")


def _check_param(p, what, shape, x, name):
    """An affine parameter: None, or a Tensor of ``shape`` on x's device."""
    if p is None:
        return
    if not isinstance(p, Tensor):
        raise TypeError(f"{name}: expected {what} to be a Tensor or None, got "
                        f"{type(p).__name__}")
    if tuple(p.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected {what} of shape {tuple(shape)} for input of "
                         f"shape {x.shape}, got {p.shape}")
    if p.device != x.device:
        raise RuntimeError(f"{name}: {what} is on {p.device} but the input is on {x.device}; "
                           "move it with .to(device)")


def _affine(y, weight, bias, shape):
    """y * weight + bias with the (C,) or (*D) parameters reshaped to ``shape``."""
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """Normalise the trailing dims ``normalized_shape`` (*D) of input (*, *D) per position
    of (*), then ``* weight + bias`` (each (*D) or None), as ``F.layer_norm``."""
    _check_input(input, "layer_norm")
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    D = tuple(int(d) for d in normalized_shape)
    k = len(D)
    if k == 0 or input.ndim < k or tuple(input.shape[input.ndim - k:]) != D:
        raise ShapeError(f"layer_norm: expected input of shape (*, {', '.join(map(str, D))}) "
                         f"(ending in normalized_shape={list(D)}), got {input.shape}")
    _check_param(weight, "weight", D, input, "layer_norm")
    _check_param(bias, "bias", D, input, "layer_norm")
    rows = math.prod(input.shape[:input.ndim - k])
    y = _standardize_rows(input, rows, eps)                                 # (*, *D)
    return _affine(y, weight, bias, D)


def _channel_shape(x):
    """(1, C, 1, ...): a (C,) vector broadcast along N and *S."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):  # noqa: A002
    """Normalise input (N, C, *S) over each group of C / num_groups channels (and *S), per
    sample, then ``* weight + bias`` per channel ((C,) or None), as ``F.group_norm``."""
    _check_input(input, "group_norm")
    if input.ndim < 2:
        raise ShapeError(f"group_norm: expected input (N, C, *), got {input.shape}")
    G = int(num_groups)
    N, C = input.shape[:2]
    if G <= 0 or C % G:
        raise ShapeError(f"group_norm: expected the number of channels ({C}) of input "
                         f"{input.shape} to be divisible by num_groups={num_groups}")
    _check_param(weight, "weight", (C,), input, "group_norm")
    _check_param(bias, "bias", (C,), input, "group_norm")
    y = _standardize_rows(input, N * G, eps)                                # (N, C, *S)
    return _affine(y, weight, bias, _channel_shape(input))


def instance_norm(input, running_mean=None, running_var=None, weight=None,  # noqa: A002
                  bias=None, use_input_stats=True, momentum=0.1, eps=1e-5):
    """Normalise input (N, C, *S) per sample and channel over *S, then ``* weight + bias``
    per channel ((C,) or None), as ``F.instance_norm``.

    running_mean, running_var: (C,) or None. With ``use_input_stats`` (the default) they
    are updated in place, if given, with the average over the batch of each sample's
    mean and unbiased variance (PyTorch's rule); with ``use_input_stats=False`` they are
    the statistics used (then this is batch norm in evaluation mode).
    """
    _check_input(input, "instance_norm")
    if input.ndim < 3:
        raise ShapeError(f"instance_norm: expected input (N, C, *S) with at least one "
                         f"spatial dim, got {input.shape}")
    C = input.shape[1]
    for v, what in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_param(v, what, (C,), input, "instance_norm")
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise RuntimeError("instance_norm: running_mean and running_var must be given "
                               "when use_input_stats=False")
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    M = math.prod(input.shape[2:])
    if M <= 1:
        raise ShapeError(f"instance_norm: expected more than 1 spatial element when "
                         f"training, got input of shape {input.shape}")
    if running_mean is not None or running_var is not None:
        _update_running_stats(input, running_mean, running_var, momentum)
    y = _standardize_rows(input, input.shape[0] * C, eps)                   # (N, C, *S)
    return _affine(y, weight, bias, _channel_shape(input))


def _update_running_stats(x, running_mean, running_var, momentum):
    """running = (1 - momentum) * running + momentum * (batch average of each sample's
    statistic), in place; the variance unbiased (divided by M - 1), as batch norm's."""
    with no_grad():
        a = x.data.reshape(x.shape[0], x.shape[1], -1)                      # (N, C, M)
        if running_mean is not None:
            mean = a.mean(axis=2).mean(axis=0).astype(running_mean.dtype)   # (C,)
            running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
        if running_var is not None:
            var = a.var(axis=2, ddof=1).mean(axis=0).astype(running_var.dtype)  # (C,)
            running_var.data[...] = (1 - momentum) * running_var.data + momentum * var
