"""VGG-11/13/16/19 (Simonyan & Zisserman, 2015), with and without batch norm, in
torchvision's layout (same module names, so ``state_dict`` keys match torchvision's).

Layout::

    features    Sequential of [Conv2d 3x3 pad 1, (BatchNorm2d), ReLU] blocks and 2x2/2
                MaxPool2d, following the configuration list ('M' = max pool):
                  A (VGG-11): 64 M 128 M 256 256 M 512 512 M 512 512 M
                  B (VGG-13): 64 64 M 128 128 M 256 256 M 512 512 M 512 512 M
                  D (VGG-16): 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M
                  E (VGG-19): 64 64 M 128 128 M 256 256 256 256 M 512 x4 M 512 x4 M
    avgpool     AdaptiveAvgPool2d((7, 7))    (N, 512, H/32, W/32) -> (N, 512, 7, 7)
    classifier  Linear(25088, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout,
                Linear(4096, num_classes)

Parameters (1000 classes): VGG-11 132,863,336; VGG-13 133,047,848; VGG-16 138,357,544;
VGG-19 143,667,240 (the ``_bn`` variants add 2 per conv channel).

The adaptive pool makes any input of at least 32x32 work (smaller feature maps are
stretched to 7x7). minidl's additions, for quick experiments and tests: ``width_mult``
(scales every conv width), ``hidden_features`` (the 4096) and ``pool_size`` (the 7).
"""
from __future__ import annotations

from .. import nn
from ..geometry import pair

__all__ = ["VGG", "make_layers", "cfgs", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16",
           "vgg16_bn", "vgg19", "vgg19_bn"]

cfgs = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
          "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
          512, 512, 512, "M"],
}


def make_layers(cfg, batch_norm=False, in_channels=3, width_mult=1.0):
    """The ``features`` Sequential for a configuration list (ints: conv widths, 'M': pool)."""
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        v = max(1, int(v * width_mult))
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``VGG(features, num_classes=1000, init_weights=True, dropout=0.5)`` as torchvision's.

    The classifier's input size is the last conv width of ``features`` times the pooled
    area (512 * 7 * 7 for the standard networks). ``init_weights``: torchvision's init
    (Kaiming normal, fan_out, for convs; N(0, 0.01) for linears; zero biases).
    """

    def __init__(self, features, num_classes=1000, init_weights=True, dropout=0.5, *,
                 hidden_features=4096, pool_size=7):
        super().__init__()
        self.features = features
        pool_size = pair(pool_size, "pool_size", "VGG", minimum=1)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
        last = convs[-1].out_channels if convs else 512
        self.classifier = nn.Sequential(
            nn.Linear(last * pool_size[0] * pool_size[1], hidden_features),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, hidden_features),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def _vgg(cfg, batch_norm, in_channels=3, width_mult=1.0, **kwargs):
    return VGG(make_layers(cfgs[cfg], batch_norm, in_channels, width_mult), **kwargs)


def vgg11(**kwargs):
    """VGG-11 (configuration A): 132,863,336 parameters. kwargs: ``num_classes=1000,
    init_weights=True, dropout=0.5``, and minidl's ``in_channels, width_mult,
    hidden_features, pool_size``."""
    return _vgg("A", False, **kwargs)


def vgg11_bn(**kwargs):
    """VGG-11 with batch norm. Arguments as ``vgg11``."""
    return _vgg("A", True, **kwargs)


def vgg13(**kwargs):
    """VGG-13 (configuration B): 133,047,848 parameters. Arguments as ``vgg11``."""
    return _vgg("B", False, **kwargs)


def vgg13_bn(**kwargs):
    """VGG-13 with batch norm. Arguments as ``vgg11``."""
    return _vgg("B", True, **kwargs)


def vgg16(**kwargs):
    """VGG-16 (configuration D): 138,357,544 parameters. Arguments as ``vgg11``."""
    return _vgg("D", False, **kwargs)


def vgg16_bn(**kwargs):
    """VGG-16 with batch norm. Arguments as ``vgg11``."""
    return _vgg("D", True, **kwargs)


def vgg19(**kwargs):
    """VGG-19 (configuration E): 143,667,240 parameters. Arguments as ``vgg11``."""
    return _vgg("E", False, **kwargs)


def vgg19_bn(**kwargs):
    """VGG-19 with batch norm. Arguments as ``vgg11``."""
    return _vgg("E", True, **kwargs)
