"""Weight initialisation, as ``torch.nn.init``: every function fills its tensor in place
(under ``no_grad``), draws from minidl's seeded generator (``minidl.manual_seed``), and
returns the tensor.

Fans: for a weight of shape (OUT, IN, *kernel), ``fan_in = IN * prod(kernel)`` and
``fan_out = OUT * prod(kernel)`` (a Linear weight (OUT, IN) has no kernel dims).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from .. import random
from ..autograd import Tensor, no_grad

__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_",
           "ones_", "eye_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
           "kaiming_normal_"]


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity`` (PyTorch's table).

    linear / conv* / sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + negative_slope^2)) with negative_slope = ``param`` (0.01 if None);
    selu: 3/4.
    """
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d"]
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    """``(fan_in, fan_out)`` of a weight with at least 2 dims (see the module docstring)."""
    if tensor.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than "
                         f"2 dimensions (got shape {tensor.shape})")
    receptive = 1
    for s in tensor.shape[2:]:
        receptive *= s
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


_skip_random = False   # set by skip_random_fills()


@contextlib.contextmanager
def skip_random_fills():
    """``with skip_random_fills():`` every random fill of this module (``*_uniform_``,
    ``*_normal_``, ``trunc_normal_``) leaves its tensor as it is: building a large model
    only to count its parameters need not draw millions of numbers
    (``minidl.models.uninitialized`` uses it). Not thread-safe."""
    global _skip_random
    previous, _skip_random = _skip_random, True
    try:
        yield
    finally:
        _skip_random = previous


def _fill(tensor, kind, **kw):
    """Write fresh samples into ``tensor``'s array in place (drawn on the host, moved)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"init: expected a minidl Tensor, got {type(tensor).__name__}")
    if _skip_random:
        return tensor
    with no_grad():
        arr = random.random_array(kind, tensor.shape, tensor.dtype, device=tensor.device, **kw)
        tensor.data[...] = arr
        tensor._bump_version()
    return tensor


def uniform_(tensor, a=0.0, b=1.0):
    """Fill with samples of U(a, b)."""
    return _fill(tensor, "uniform", low=a, high=b)


def normal_(tensor, mean=0.0, std=1.0):
    """Fill with samples of N(mean, std^2)."""
    return _fill(tensor, "normal", mean=mean, std=std)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Fill with N(mean, std^2) samples redrawn until they fall in [a, b]."""
    if _skip_random:
        return tensor
    g = random.generator()
    n = tensor.numel()
    out = np.empty(0)
    while out.size < n:
        draw = g.standard_normal(max(2 * (n - out.size), 16)) * std + mean
        out = np.concatenate([out, draw[(draw >= a) & (draw <= b)]])
    with no_grad():
        tensor.copy_(out[:n].reshape(tensor.shape).astype(tensor.dtype))
    return tensor


def constant_(tensor, val):
    """Fill with ``val``."""
    with no_grad():
        tensor.data[...] = val
        tensor._bump_version()
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def eye_(tensor):
    """Fill a 2-D tensor with the identity matrix."""
    if tensor.ndim != 2:
        raise ValueError(f"Only tensors with 2 dimensions are supported, got shape {tensor.shape}")
    with no_grad():
        tensor.data[...] = 0
        n = min(tensor.shape)
        tensor.data[range(n), range(n)] = 1
        tensor._bump_version()
    return tensor


def xavier_uniform_(tensor, gain=1.0):
    """Glorot uniform: U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return uniform_(tensor, -a, a)


def xavier_normal_(tensor, gain=1.0):
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He uniform: U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    ``a`` is the negative slope of the following leaky ReLU (PyTorch's Linear and Conv2d
    default init uses a = sqrt(5), which gives b = 1 / sqrt(fan_in)).
    """
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    bound = math.sqrt(3.0) * gain / math.sqrt(fan)
    return uniform_(tensor, -bound, bound)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """He normal: N(0, std^2), std = gain / sqrt(fan)."""
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std)
