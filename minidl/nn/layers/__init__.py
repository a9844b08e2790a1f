"""The layers, one module per family."""
from __future__ import annotations

from .activation import GELU, LeakyReLU, LogSoftmax, ReLU, ReLU6, Sigmoid, Softmax, Tanh
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss, NLLLoss
from .misc import Flatten
from .norm import BatchNorm1d, BatchNorm2d
from .norm import SyncBatchNorm
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d
from .activation import ELU, Hardswish, PReLU, SiLU
from .conv1d import Conv1d, MaxPool1d
from .dropout2d import Dropout2d
from .embedding import Embedding
from .loss_extra import BCELoss, BCEWithLogitsLoss, KLDivLoss, L1Loss, SmoothL1Loss
from .norm import GroupNorm, InstanceNorm1d, InstanceNorm2d, LayerNorm
from .resize import Upsample
from .shape import Unflatten, ZeroPad2d
from .activation import Hardsigmoid
from .channels_last import LayerNorm2d, Permute
from .stochastic_depth import StochasticDepth
