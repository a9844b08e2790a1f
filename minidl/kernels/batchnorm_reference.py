"""The batch-norm kernels as whole-array expressions: the definition of the family
(``kernels/batchnorm.py`` has the shape legend and the registration).

    x, y, gy, gx                                       (N, C, *S)
    mean, var, inv_std, weight, bias, gbias, gweight   (C,), in x's dtype
    m = N * prod(S), the values per channel; every sum below runs over them

Written with the array API NumPy and CuPy share, so it runs on either device; the fast
paths (``batchnorm_numba.py``, ``cuda_kernels``) are tested against these four functions.
"""
from __future__ import annotations

__all__ = ["batch_stats", "normalize", "grad_sums", "input_grad"]


def _reduce_axes(x):
    """Every axis but the channel axis: (0, 2, 3, ...)."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    """A (C,) vector shaped (1, C, 1, ...) to broadcast against x (N, C, *S)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_stats(x):
    """Per-channel mean and biased variance of x (N, C, *S): two (C,) arrays of x's dtype.

    mean = sum(x) / m,  var = sum((x - mean)^2) / m,  sums over N and *S (m values).
    """
    axes = _reduce_axes(x)
    mean = x.mean(axis=axes)                                   # (C,)
    centered = x - _per_channel(mean, x)                       # (N, C, *S)
    var = (centered * centered).mean(axis=axes)                # (C,)
    return mean, var


def normalize(x, mean, inv_std, weight=None, bias=None):
    """y = weight * xhat + bias with xhat = (x - mean) * inv_std, per channel.

    x: (N, C, *S); mean, inv_std, weight, bias: (C,) (weight, bias may be None).
    Returns y (N, C, *S).
    """
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)          # (N, C, *S)
    y = xhat
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y


def grad_sums(gy, x, mean, inv_std):
    """The per-channel sums of the backward pass: gbias = sum(gy), gweight = sum(gy * xhat).

    gy, x: (N, C, *S); mean, inv_std: (C,). Returns two (C,) arrays (the gradients of
    bias and weight; training-mode backward needs both for gx as well).
    """
    axes = _reduce_axes(x)
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)          # (N, C, *S)
    return gy.sum(axis=axes), (gy * xhat).sum(axis=axes)


def input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """gx (N, C, *S), the gradient of the input.

    training: gx = weight * inv_std / m * (m * gy - gbias - xhat * gweight), where gbias
        and gweight come from ``grad_sums`` (the batch statistics depend on x);
    evaluation: gx = weight * inv_std * gy (the statistics are constants; x, gbias and
        gweight are not used and may be None).
    weight None means 1.
    """
    scale = inv_std if weight is None else weight * inv_std               # (C,)
    if not training:
        return gy * _per_channel(scale, gy)
    m = x.size // x.shape[1]
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)          # (N, C, *S)
    return _per_channel(scale / m, x) * (m * gy - _per_channel(gbias, x)
                                         - xhat * _per_channel(gweight, x))
