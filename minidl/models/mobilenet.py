"""Depthwise separable convolutions (Chollet, 2017) and the MobileNets built from them.

A standard k x k convolution from C to n_k channels has C * kH * kW * n_k weights. A
depthwise separable one splits it in two:

    depthwise  C kernels kH x kW x 1, one per input channel (``groups=C``): C * kH * kW
    pointwise  n_k kernels 1 x 1 x C mixing the channels:                  C * n_k
    total      C * (kH * kW + n_k) weights

The lecture's table: (C, n_k, k) = (512, 512, 3): 2,359,296 vs 266,752 weights;
(1028, 1028, 3): 9,511,056 vs 1,066,036; (1028, 1028, 5): 26,419,600 vs 1,082,484.

``MobileNetV1`` (Howard et al., 2017) stacks 13 of them after a 3x3/2 conv: 4,231,976
parameters and about 569 M multiply-adds at 224x224 with ``width_mult=1``.
``MobileNetV2`` (Sandler et al., 2018) is torchvision's (inverted residuals with linear
bottlenecks, ReLU6; same module names): 3,504,872 parameters, about 300 M multiply-adds.
"""
from __future__ import annotations

from .. import nn

__all__ = ["DepthwiseSeparableConv2d", "MobileNetV1", "mobilenet_v1", "ReLU6",
           "Conv2dNormActivation", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]


# MobileNetV2's activation is ``nn.ReLU6``; the name stays importable from here.
ReLU6 = nn.ReLU6


class DepthwiseSeparableConv2d(nn.Module):
    """``DepthwiseSeparableConv2d(in_channels, out_channels, kernel_size, stride=1,
    padding=0, dilation=1, bias=None, norm_layer=None, activation_layer=None)``.

    depthwise: ``Conv2d(C, C, kernel_size, stride, padding, dilation, groups=C)``,
    then optional ``norm_layer(C)`` (``bn1``) and activation; pointwise:
    ``Conv2d(C, out_channels, 1)``, then optional ``norm_layer(out_channels)`` (``bn2``)
    and activation. ``bias`` defaults to True without a norm layer and False with one
    (the norm's shift replaces it). ``activation_layer`` (e.g. ``nn.ReLU``) is one module,
    ``act``, applied after each half.

    Shapes: (N, C, H, W) -> (N, out_channels, OH, OW), OH as for one Conv2d with the
    same kernel, stride, padding and dilation.
    Weights: C * KH * KW + C * out_channels (plus biases / norm parameters when present).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, bias=None, norm_layer=None, activation_layer=None):
        super().__init__()
        if bias is None:
            bias = norm_layer is None
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, groups=in_channels,
                                   bias=bias)
        self.bn1 = norm_layer(in_channels) if norm_layer is not None else None
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.bn2 = norm_layer(out_channels) if norm_layer is not None else None
        self.act = activation_layer() if activation_layer is not None else None

    def forward(self, x):
        x = self.depthwise(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        if self.act is not None:
            x = self.act(x)
        x = self.pointwise(x)
        if self.bn2 is not None:
            x = self.bn2(x)
        if self.act is not None:
            x = self.act(x)
        return x


class Conv2dNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: Sequential(conv, norm, activation), names
    ``0, 1, 2``. ``padding`` defaults to (kernel_size - 1) // 2 * dilation ("same" for odd
    kernels at stride 1); ``bias`` to True only without a norm layer."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None,
                 groups=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, dilation=1,
                 inplace=True, bias=None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                            dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels


def _init_mobilenet(model):
    """torchvision's MobileNet init: Kaiming normal (fan_out) convs, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d,)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV1(nn.Module):
    """MobileNet v1: a 3x3/2 conv to 32 channels, then 13 depthwise separable blocks
    (each with BN and ReLU after both halves), global average pool, dropout, linear.

    Blocks (out channels, stride): (64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
    (512, 2), 5 x (512, 1), (1024, 2), (1024, 1); at 224x224 the last map is 7x7.
    ``width_mult`` (the paper's alpha) scales every width: ``int(c * width_mult)``.

    Names: ``features.0`` (Conv2dNormActivation: ``0`` conv, ``1`` bn), ``features.1`` ..
    ``features.13`` (DepthwiseSeparableConv2d: ``depthwise``, ``bn1``, ``pointwise``,
    ``bn2``), ``classifier.1`` (the Linear).
    """

    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
           (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2, in_channels=3):
        super().__init__()

        def w(c):
            return max(1, int(c * width_mult))

        layers = [Conv2dNormActivation(in_channels, w(32), kernel_size=3, stride=2)]
        c_in = w(32)
        for c, s in self.cfg:
            layers.append(DepthwiseSeparableConv2d(c_in, w(c), 3, stride=s, padding=1,
                                                   norm_layer=nn.BatchNorm2d,
                                                   activation_layer=nn.ReLU))
            c_in = w(c)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(c_in, num_classes))
        self.last_channel = c_in
        _init_mobilenet(self)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def mobilenet_v1(num_classes=1000, width_mult=1.0, **kwargs):
    """``MobileNetV1(num_classes=1000, width_mult=1.0, dropout=0.2, in_channels=3)``."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, **kwargs)


# ----------------------------------------------------------------------------- v2


def _make_divisible(v, divisor, min_value=None):
    """Round ``v`` to a multiple of ``divisor`` (not below 90% of v): torchvision's rule."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (``expand_ratio`` x), 3x3 depthwise (stride), 1x1
    linear projection; the input is added back when stride is 1 and widths match.
    (N, inp, H, W) -> (N, oup, H / stride, W / stride). Names as torchvision's (``conv``)."""

    def __init__(self, inp, oup, stride, expand_ratio, norm_layer=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=ReLU6))
        layers.extend([
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                 norm_layer=norm_layer, activation_layer=ReLU6),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2(num_classes=1000, width_mult=1.0,
    inverted_residual_setting=None, round_nearest=8, block=None, norm_layer=None,
    dropout=0.2)``, plus minidl's ``in_channels``."""

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None,
                 round_nearest=8, block=None, norm_layer=None, dropout=0.2, *, in_channels=3):
        super().__init__()
        if block is None:
            block = InvertedResidual
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        input_channel, last_channel = 32, 1280
        if inverted_residual_setting is None:
            inverted_residual_setting = [
                # t (expansion), c (channels), n (repeats), s (first stride)
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]
        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError("inverted_residual_setting should be non-empty and a 4-element "
                             f"list, got {inverted_residual_setting}")
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(in_channels, input_channel, stride=2,
                                         norm_layer=norm_layer, activation_layer=ReLU6)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(block(input_channel, output_channel, stride, expand_ratio=t,
                                      norm_layer=norm_layer))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             norm_layer=norm_layer, activation_layer=ReLU6))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def mobilenet_v2(num_classes=1000, width_mult=1.0, **kwargs):
    """``MobileNetV2(num_classes=1000, width_mult=1.0, ..., dropout=0.2)``, torchvision's."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, **kwargs)
