"""EfficientNet (Tan and Le, 2019), torchvision's ``efficientnet_b0`` layout and names.

B0 is a network found by architecture search, built from MBConv blocks: MobileNetV2's
inverted residual (1x1 expansion by 6, depthwise 3x3 or 5x5, 1x1 linear projection) with
squeeze-and-excitation (SiLU inside, sigmoid gate) and SiLU ("swish") everywhere.
B1..B7 scale it up in width, depth and resolution together ("compound scaling"); only
B0 is built here, but ``MBConvConfig`` carries torchvision's ``width_mult`` and
``depth_mult`` knobs.

Residual branches are dropped per sample while training (``StochasticDepth``, "row"
mode), with a probability rising linearly from 0 at the first block to
``stochastic_depth_prob * 15 / 16`` at the last of the 16.

``efficientnet_b0()``: 5,288,548 parameters for 1000 classes, about 0.39 G multiply-adds
at 224x224. BatchNorm keeps PyTorch's defaults (eps=1e-5, momentum=0.1), as torchvision's
B0..B4 do (its B5..B7 use eps=0.001, momentum=0.01).
"""
from __future__ import annotations

import copy
import math
from functools import partial

from .. import nn
from .mobilenet import Conv2dNormActivation, _make_divisible
from .mobilenet_v3 import SqueezeExcitation

__all__ = ["MBConvConfig", "MBConv", "EfficientNet", "efficientnet_b0"]


class MBConvConfig:
    """One stage of the table: ``expand_ratio``, ``kernel``, ``stride`` (of its first
    block), input and output channels (scaled by ``width_mult``, rounded to multiples of
    8) and ``num_layers`` (scaled by ``depth_mult``, rounded up)."""

    def __init__(self, expand_ratio, kernel, stride, input_channels, out_channels, num_layers,
                 width_mult=1.0, depth_mult=1.0):
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.num_layers = int(math.ceil(num_layers * depth_mult))

    @staticmethod
    def adjust_channels(channels, width_mult):
        return _make_divisible(channels * width_mult, 8)


class MBConv(nn.Module):
    """torchvision's ``MBConv(cnf, stochastic_depth_prob, norm_layer)``.

    ``block``: [1x1 expansion to ``expand_ratio`` x (absent for ratio 1)] + BN + SiLU,
    depthwise k x k (stride) + BN + SiLU, SqueezeExcitation (squeeze to a quarter of the
    block's *input* width, SiLU, sigmoid gate), 1x1 projection + BN (no activation);
    with stride 1 and equal widths, ``x + stochastic_depth(block(x))``.
    (N, input_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, cnf, stochastic_depth_prob, norm_layer, se_layer=None):
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"MBConv: stride should be 1 or 2, got {cnf.stride}")
        if se_layer is None:
            se_layer = SqueezeExcitation
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        layers = []
        if expanded != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded, kernel_size=1,
                                               norm_layer=norm_layer,
                                               activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=cnf.kernel,
                                           stride=cnf.stride, groups=expanded,
                                           norm_layer=norm_layer, activation_layer=nn.SiLU))
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(se_layer(expanded, squeeze_channels,
                               activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, input):  # noqa: A002
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + input
        return result


class EfficientNet(nn.Module):
    """torchvision's ``EfficientNet(inverted_residual_setting, dropout,
    stochastic_depth_prob=0.2, num_classes=1000, norm_layer=None, last_channel=None)``,
    plus minidl's ``in_channels``.

    features.0: 3x3/2 conv + BN + SiLU; features.1 .. features.S: one ``Sequential`` of
    MBConv blocks per stage; features.S+1: 1x1 conv to ``last_channel`` (default 4x the
    last stage's width) + BN + SiLU; avgpool; classifier: Dropout, Linear.
    Input (N, 3, H, W) -> logits (N, num_classes).
    """

    def __init__(self, inverted_residual_setting, dropout, stochastic_depth_prob=0.2,
                 num_classes=1000, norm_layer=None, last_channel=None, *, in_channels=3):
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("EfficientNet: inverted_residual_setting should not be empty")
        if not all(isinstance(s, MBConvConfig) for s in inverted_residual_setting):
            raise TypeError("EfficientNet: inverted_residual_setting should be a list of "
                            "MBConvConfig")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        first = inverted_residual_setting[0].input_channels
        layers = [Conv2dNormActivation(in_channels, first, kernel_size=3, stride=2,
                                       norm_layer=norm_layer, activation_layer=nn.SiLU)]
        total_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        block_id = 0
        for cnf in inverted_residual_setting:
            stage = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:  # the stage's later blocks keep its width and resolution
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                # deeper blocks are dropped more often (linear in the block's index)
                sd_prob = stochastic_depth_prob * float(block_id) / total_blocks
                stage.append(MBConv(block_cnf, sd_prob, norm_layer))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = inverted_residual_setting[-1].out_channels
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True),
                                        nn.Linear(last_out, num_classes))
        _init_weights(self)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def _init_weights(model):
    """torchvision's EfficientNet init: Kaiming normal (fan_out) convs, norms 1 and 0,
    linears uniform in +-1/sqrt(out_features), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_range = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -init_range, init_range)
            nn.init.zeros_(m.bias)


def _b0_setting(width_mult=1.0, depth_mult=1.0):
    """B0's seven stages (the paper's Table 1)."""
    bneck = partial(MBConvConfig, width_mult=width_mult, depth_mult=depth_mult)
    return [
        # expand, kernel, stride, in, out, layers
        bneck(1, 3, 1, 32, 16, 1),
        bneck(6, 3, 2, 16, 24, 2),
        bneck(6, 5, 2, 24, 40, 2),
        bneck(6, 3, 2, 40, 80, 3),
        bneck(6, 5, 1, 80, 112, 3),
        bneck(6, 5, 2, 112, 192, 4),
        bneck(6, 3, 1, 192, 320, 1),
    ]


def efficientnet_b0(num_classes=1000, dropout=0.2, stochastic_depth_prob=0.2, **kwargs):
    """torchvision's ``efficientnet_b0``: 16 MBConv blocks in 7 stages, 5,288,548
    parameters for 1000 classes."""
    return EfficientNet(_b0_setting(), dropout, stochastic_depth_prob=stochastic_depth_prob,
                        num_classes=num_classes, **kwargs)
