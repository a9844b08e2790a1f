"""AlexNet with batch normalisation, as written in the lecture (not torchvision's variant,
which has 64 first-layer channels and no batch norm).

Shapes at the lecture's (3, 224, 224) input, with the lecture's parameter counts::

    conv1  Conv 11x11/4 pad 2 -> (96, 55, 55)    34,944   BN 192   ReLU   MaxPool 3/2 -> 27
    conv2  Conv 5x5 pad 2     -> (256, 27, 27)   614,656  BN 512   ReLU   MaxPool 3/2 -> 13
    conv3  Conv 3x3 pad 1     -> (384, 13, 13)   885,120  BN 768   ReLU
    conv4  Conv 3x3 pad 1     -> (384, 13, 13) 1,327,488  BN 768   ReLU
    conv5  Conv 3x3 pad 1     -> (256, 13, 13)   884,992  BN 512   ReLU   MaxPool 3/2 -> 6
    flatten (9216,)
    fc1    Dropout, Linear 9216 -> 4096   37,752,832, ReLU
    fc2    Dropout, Linear 4096 -> 4096   16,781,312, ReLU
    fc3    Linear 4096 -> num_classes         40,970 (10 classes)
                                      total 58,325,066

Only inputs whose conv5 output is 6x6 fit ``fc1`` (224 to 227 pixels).
"""
from __future__ import annotations

from .. import nn

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """The lecture's ``AlexNet(num_classes=10)``; module names ``conv1..conv5`` and
    ``fc1..fc3`` (each a ``Sequential``) as in the lecture code.

    minidl's addition: ``width_mult`` scales every channel count and the 4096 hidden
    units (for quick experiments and tests); 1.0 is the lecture's network.
    """

    def __init__(self, num_classes=10, dropout=0.5, in_channels=3, width_mult=1.0):
        super().__init__()

        def w(c):
            return max(1, int(c * width_mult))

        c1, c2, c3, c4, c5, hidden = w(96), w(256), w(384), w(384), w(256), w(4096)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=11, stride=4, padding=2),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.conv2 = nn.Sequential(
            nn.Conv2d(c1, c2, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.conv3 = nn.Sequential(
            nn.Conv2d(c2, c3, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(c3),
            nn.ReLU())
        self.conv4 = nn.Sequential(
            nn.Conv2d(c3, c4, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(c4),
            nn.ReLU())
        self.conv5 = nn.Sequential(
            nn.Conv2d(c4, c5, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(c5),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.fc1 = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 6 * 6, hidden),
            nn.ReLU())
        self.fc2 = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU())
        self.fc3 = nn.Sequential(
            nn.Linear(hidden, num_classes))

    def forward(self, x):
        """x (N, 3, 224, 224) -> logits (N, num_classes)."""
        out = self.conv1(x)
        out = self.conv2(out)
        out = self.conv3(out)
        out = self.conv4(out)
        out = self.conv5(out)
        out = out.reshape(out.size(0), -1)
        out = self.fc1(out)
        out = self.fc2(out)
        return self.fc3(out)


def alexnet(num_classes=10, **kwargs):
    """``AlexNet(num_classes=10, dropout=0.5, in_channels=3, width_mult=1.0)``: the
    lecture's AlexNet with batch norm (58,325,066 parameters for 10 classes)."""
    return AlexNet(num_classes=num_classes, **kwargs)
