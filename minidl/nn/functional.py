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
"""
from __future__ import annotations

from ..ops.activation import gelu, leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from ..ops.conv import conv2d, conv_transpose2d
from ..ops.dropout import dropout, dropout2d
from ..ops.elementwise import clamp
from ..ops.linalg import linear
from ..ops.loss import cross_entropy, mse_loss, nll_loss
from ..ops.norm import batch_norm
from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from ..ops.shape import pad
from ..tensor_methods import apply_inplace

__all__ = ["linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "gelu", "softmax",
           "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "batch_norm", "dropout",
           "pad", "dropout2d", "conv_transpose2d"]


def relu6(input, inplace=False):  # noqa: A002 - PyTorch's names
    """min(max(x, 0), 6), elementwise: ``clamp(x, 0, 6)``, whose gradient is 1 inside
    (0, 6) and 0 outside. At the kinks x = 0 and x = 6 clamp passes the gradient (1)
    where PyTorch's relu6 gives 0; they agree everywhere else. ``inplace=True`` writes
    the result into ``input``."""
    if inplace:
        return apply_inplace(input, "relu6(inplace=True)", lambda x: clamp(x, 0.0, 6.0))
    return clamp(input, 0.0, 6.0)
