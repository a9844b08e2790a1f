"""``minidl.nn.functional`` (``import minidl.nn.functional as F``): the stateless ops the
layers are built on, with ``torch.nn.functional``'s names and signatures.

Shapes: N batch, C channels, H/W height/width, IN/OUT features.

- ``linear(input (..., IN), weight (OUT, IN), bias (OUT,)=None) -> (..., OUT)``
- ``conv2d(input (N, C, H, W), weight (OUT, C/groups, KH, KW), bias=None, stride=1,
  padding=0, dilation=1, groups=1) -> (N, OUT, OH, OW)``
- ``conv_transpose2d(input (N, C, H, W), weight (C, OUT/groups, KH, KW), bias=None,
  stride=1, padding=0, output_padding=0, groups=1, dilation=1) -> (N, OUT, OH, OW)``
- ``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``, ``adaptive_max_pool2d``:
  (N, C, H, W) -> (N, C, OH, OW)
- ``relu``, ``relu6``, ``leaky_relu``, ``tanh``, ``sigmoid``, ``gelu``: elementwise, any
  shape
- ``softmax(input, dim, temperature=1.0)``, ``log_softmax``: any shape, normalised over dim
- ``cross_entropy(input (N, C) logits, target (N,) class indices)``, ``nll_loss``,
  ``mse_loss``
- ``batch_norm(input (N, C, ...), running_mean (C,), running_var (C,), weight, bias,
  training, momentum, eps)``
- ``dropout(input, p=0.5, training=True)``
- ``pad(input, pad, mode='constant', value=0.0)``
- ``one_hot(tensor (*) int64, num_classes=-1) -> (*, num_classes) int64``
- ``layer_norm(input (*, *D), normalized_shape D, weight, bias, eps)``, ``group_norm(input
  (N, C, *), num_groups, ...)``, ``instance_norm(input (N, C, *S), running_mean, ...)``
- ``silu``, ``hardswish``, ``elu``, ``prelu(input, weight (C,) or (1,))``: elementwise
- ``interpolate(input (N, C, L) or (N, C, H, W), size, scale_factor, mode, align_corners)``
- ``embedding(input (*) indices, weight (V, D)) -> (*, D)``
- ``conv1d(input (N, C, L), weight (OC, C/groups, K), ...)``, ``max_pool1d``
- ``binary_cross_entropy_with_logits``, ``binary_cross_entropy``, ``l1_loss``,
  ``smooth_l1_loss``, ``kl_div``: elementwise losses, input and target (*)
- ``hardsigmoid(input)``: relu6(x + 3) / 6, elementwise
- ``stochastic_depth(input (N, *), p, mode, training=True)``: torchvision.ops' function
"""
from __future__ import annotations

from ..kernels.activation import CLAMP
from ..ops.activation import (elu, gelu, hardsigmoid, hardswish, leaky_relu, log_softmax, prelu,
                              relu, sigmoid, silu, softmax, tanh)
from ..ops.conv import conv2d, conv_transpose2d
from ..ops.conv1d import conv1d, max_pool1d
from ..ops.dropout import dropout, dropout2d
from ..ops.elementwise import clamp
from ..ops.embedding import embedding
from ..ops.indexing import one_hot
from ..ops.linalg import linear
from ..ops.loss import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                        kl_div, l1_loss, mse_loss, nll_loss, smooth_l1_loss)
from ..ops.norm import batch_norm
from ..ops.norm_extra import group_norm, instance_norm, layer_norm
from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from ..ops.resize import interpolate
from ..ops.shape import pad
from ..ops.stochastic_depth import stochastic_depth
from ..tensor_methods import apply_inplace

__all__ = ["linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "gelu",
           "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "batch_norm",
           "dropout", "pad", "dropout2d", "conv_transpose2d", "one_hot", "layer_norm",
           "group_norm", "instance_norm", "silu", "hardswish", "elu", "prelu", "interpolate",
           "embedding", "conv1d", "max_pool1d", "binary_cross_entropy_with_logits",
           "binary_cross_entropy", "l1_loss", "smooth_l1_loss", "kl_div", "hardsigmoid",
           "stochastic_depth"]


def relu6(input, inplace=False):  # noqa: A002 - PyTorch's names
    """min(max(x, 0), 6), elementwise: ``clamp(x, 0, 6)``, whose gradient is 1 inside
    (0, 6) and 0 outside. At the kinks x = 0 and x = 6 clamp passes the gradient (1)
    where PyTorch's relu6 gives 0; they agree everywhere else. ``inplace=True`` writes
    the result into ``input``."""
    if inplace:
        return apply_inplace(input, "relu6(inplace=True)", lambda x: clamp(x, 0.0, 6.0),
                             lambda a: CLAMP.code(a).clamp_inplace(a, 0.0, 6.0))
    return clamp(input, 0.0, 6.0)
