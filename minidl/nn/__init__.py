"""``minidl.nn``: modules (``Module``, ``Parameter``, containers), layers, ``functional``
(``import minidl.nn.functional as F``) and ``init``, with PyTorch's names and defaults."""
from __future__ import annotations

from . import functional, init
from .containers import ModuleDict, ModuleList, Sequential
from .layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d,
                     BatchNorm2d, Conv2d, CrossEntropyLoss, Dropout, Flatten, Identity,
                     LeakyReLU, Linear, LogSoftmax, MaxPool2d, MSELoss, NLLLoss, ReLU, Sigmoid,
                     Softmax, Tanh)
from .module import Module
from .parameter import Parameter

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "Linear",
           "Identity", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU",
           "Tanh", "Sigmoid", "GELU", "Softmax", "LogSoftmax", "Flatten", "CrossEntropyLoss",
           "NLLLoss", "MSELoss", "functional", "init"]
