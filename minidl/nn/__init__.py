"""``minidl.nn``: modules (``Module``, ``Parameter``, containers), layers, ``functional``
(``import minidl.nn.functional as F``) and ``init``, with PyTorch's names and defaults.

``intercept_calls(fn)`` (minidl's own) lets a tool answer module calls in place of their
``forward`` for the length of a ``with`` block; ``minidl.summary`` is built on it.
"""
from __future__ import annotations

from . import functional, init
from .containers import ModuleDict, ModuleList, Sequential
from .layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d,
                     BatchNorm2d, Conv2d, ConvTranspose2d, CrossEntropyLoss, Dropout, Flatten,
                     Identity,
                     LeakyReLU, Linear, LogSoftmax, MaxPool2d, MSELoss, NLLLoss, ReLU, ReLU6,
                     Sigmoid, Softmax, Tanh)
from .module import Module, intercept_calls
from .parameter import Parameter
from . import utils  # noqa: E402 - nn.utils.clip_grad_norm_ & co.

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear",
           "Identity", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "ReLU6",
           "LeakyReLU", "Tanh", "Sigmoid", "GELU", "Softmax", "LogSoftmax", "Flatten",
           "CrossEntropyLoss", "NLLLoss", "MSELoss", "functional", "init", "intercept_calls",
           "ConvTranspose2d",
           "utils"]

# issue 15: more layers, losses and the parameter containers
from .containers import ParameterDict, ParameterList  # noqa: E402
from .layers import (ELU, BCELoss, BCEWithLogitsLoss, Conv1d, Dropout2d, Embedding,  # noqa: E402
                     GroupNorm, Hardswish, InstanceNorm1d, InstanceNorm2d, KLDivLoss, L1Loss,
                     LayerNorm, MaxPool1d, PReLU, SiLU, SmoothL1Loss, Unflatten, Upsample,
                     ZeroPad2d)

__all__ += ["ParameterList", "ParameterDict", "LayerNorm", "GroupNorm", "InstanceNorm1d",
            "InstanceNorm2d", "SiLU", "Hardswish", "ELU", "PReLU", "Dropout2d", "Upsample",
            "ZeroPad2d", "Unflatten", "Conv1d", "MaxPool1d", "Embedding", "BCEWithLogitsLoss",
            "BCELoss", "L1Loss", "SmoothL1Loss", "KLDivLoss"]

# issue 15: the small layers of MobileNetV3, EfficientNet and ConvNeXt
from .layers import Hardsigmoid, LayerNorm2d, Permute, StochasticDepth  # noqa: E402

__all__ += ["Hardsigmoid", "LayerNorm2d", "Permute", "StochasticDepth"]
