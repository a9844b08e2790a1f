"""LeNet-5 (LeCun et al., 1998), as written in the lecture.

Shapes (the lecture's 32x32 grey-scale input)::

    x       (N, 1, 32, 32)
    conv1   (N, 6, 28, 28)    5x5, 1 -> 6             156 params
    pool    (N, 6, 14, 14)    2x2 max, stride 2
    conv2   (N, 16, 10, 10)   5x5, 6 -> 16          2,416 params
    pool    (N, 16, 5, 5)
    flatten (N, 400)
    fc1     (N, 120)                               48,120 params
    fc2     (N, 84)                                10,164 params
    fc3     (N, 10)                                   850 params
                                           total   61,706 params

The activation (``tanh`` in the lecture) follows conv1, conv2, fc1 and fc2; it is applied
functionally, as in the lecture, so it is not a module (and not a row of ``summary``).
"""
from __future__ import annotations

from .. import nn
from ..nn import functional as F

__all__ = ["LeNet5", "lenet5"]

_ACTIVATIONS = {"tanh": F.tanh, "relu": F.relu, "sigmoid": F.sigmoid}


class LeNet5(nn.Module):
    """The lecture's ``LeNet``: parameter names ``conv1, conv2, fc1, fc2, fc3`` (plus the
    parameter-free ``max_pool``), so its ``state_dict`` loads into the lecture's class.

    Args:
        num_classes: outputs of ``fc3`` (10 digits).
        in_channels: input channels (1: grey-scale).
        activation: ``'tanh'`` (the lecture's), ``'relu'`` or ``'sigmoid'``.
    """

    def __init__(self, num_classes=10, in_channels=1, activation="tanh"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"LeNet5: activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.activation = activation
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, stride=1, padding=0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, stride=1, padding=0)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        # Non-parametric
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        """x (N, C, 32, 32) -> logits (N, num_classes)."""
        act = _ACTIVATIONS[self.activation]
        out = act(self.conv1(x))
        out = self.max_pool(out)
        out = act(self.conv2(out))
        out = self.max_pool(out)
        out = out.reshape(out.size(0), -1)
        out = act(self.fc1(out))
        out = act(self.fc2(out))
        return self.fc3(out)

    def extra_repr(self):
        return f"activation={self.activation!r}" if self.activation != "tanh" else ""


def lenet5(activation="tanh", **kwargs):
    """``LeNet5(activation=..., num_classes=10, in_channels=1)``: the lecture's LeNet-5."""
    return LeNet5(activation=activation, **kwargs)
