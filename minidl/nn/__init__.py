"""``minidl.nn``: modules (``Module``, ``Parameter``, containers), layers, ``functional``
(``import minidl.nn.functional as F``) and ``init``, with PyTorch's names and defaults.

``intercept_calls(fn)`` (minidl's own) lets a tool answer module calls in place of their
``forward`` for the length of a ``with`` block; ``minidl.summary`` is built on it.
"""
from __future__ import annotations

from . import functional, init
from .containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .layers import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                     BCELoss, BCEWithLogitsLoss, Conv1d, Conv2d, ConvTranspose2d, CrossEntropyLoss,
                     Dropout, Dropout2d, ELU, Embedding, Flatten, GELU, GroupNorm, Hardsigmoid,
                     Hardswish, Identity, InstanceNorm1d, InstanceNorm2d, KLDivLoss, L1Loss,
                     LayerNorm, LayerNorm2d, LeakyReLU, Linear, LogSoftmax, MaxPool1d, MaxPool2d,
                     MSELoss, NLLLoss, Permute, PReLU, ReLU, ReLU6, Sigmoid, SiLU, SmoothL1Loss,
                     Softmax, StochasticDepth, Tanh, Unflatten, Upsample, ZeroPad2d)
from .layers import SyncBatchNorm
from .module import Module, intercept_calls
from .parameter import Parameter
from . import utils  # nn.utils.clip_grad_norm_ & co. (imports the layers above)

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "ParameterList",
           "ParameterDict", "Linear", "Identity", "Conv2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout",
           "ReLU", "ReLU6", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "Softmax", "LogSoftmax",
           "Flatten", "CrossEntropyLoss", "NLLLoss", "MSELoss", "ConvTranspose2d", "LayerNorm",
           "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "SiLU", "Hardswish", "ELU", "PReLU",
           "Dropout2d", "Upsample", "ZeroPad2d", "Unflatten", "Conv1d", "MaxPool1d", "Embedding",
           "BCEWithLogitsLoss", "BCELoss", "L1Loss", "SmoothL1Loss", "KLDivLoss", "Hardsigmoid",
           "LayerNorm2d", "Permute", "StochasticDepth", "functional", "init", "intercept_calls",
           "utils", "SyncBatchNorm"]
