"""MobileNetV3 (Howard et al., 2019), torchvision's ``mobilenet_v3_small`` layout and names.

MobileNetV2's inverted residual (1x1 expansion, depthwise k x k, 1x1 linear projection)
gains two things found by architecture search:

- **squeeze-and-excitation** (Hu et al., 2018) in some blocks: average-pool the expanded
  map to one value per channel, pass it through a small bottleneck (1x1 conv to a quarter
  of the channels, ReLU, 1x1 conv back) and a gate (hard sigmoid), and multiply each
  channel by its gate: the block learns which channels matter for this image;
- **hard swish** ``x * relu6(x + 3) / 6`` in the deeper blocks: swish's shape without an
  exponential (cheap on phones), with ReLU kept in the early, high-resolution blocks.

``mobilenet_v3_small()``: 2,542,856 parameters for 1000 classes, about 57 M multiply-adds
at 224x224. BatchNorm uses eps=0.001 and momentum=0.01 (torchvision's values, from the
TensorFlow original).
"""
from __future__ import annotations

from functools import partial

from .. import nn
from .mobilenet import Conv2dNormActivation, _make_divisible

__all__ = ["SqueezeExcitation", "InvertedResidualConfig", "InvertedResidualV3",
           "MobileNetV3", "mobilenet_v3_small"]


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation(input_channels, squeeze_channels,
    activation=nn.ReLU, scale_activation=nn.Sigmoid)``.

    x (N, C, H, W) -> avgpool (N, C, 1, 1) -> fc1 1x1 conv (N, S, 1, 1) -> activation ->
    fc2 1x1 conv (N, C, 1, 1) -> scale_activation -> scale; output ``scale * x``
    (N, C, H, W): every channel of every sample multiplied by its gate in (0, 1).
    Names: ``fc1``, ``fc2`` (Conv2d with bias), ``avgpool``, ``activation``,
    ``scale_activation``.
    """

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU,
                 scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input):  # noqa: A002
        scale = self.avgpool(input)                       # (N, C, 1, 1): the "squeeze"
        scale = self.activation(self.fc1(scale))          # (N, S, 1, 1)
        scale = self.scale_activation(self.fc2(scale))    # (N, C, 1, 1): the "excitation"
        return scale * input                              # broadcast over H, W


class InvertedResidualConfig:
    """One block of the table: input/expanded/output channels (all scaled by
    ``width_mult`` and rounded to multiples of 8), kernel, SE or not, activation
    (``"RE"`` ReLU or ``"HS"`` hard swish), stride, dilation."""

    def __init__(self, input_channels, kernel, expanded_channels, out_channels, use_se,
                 activation, stride, dilation, width_mult):
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels, width_mult):
        return _make_divisible(channels * width_mult, 8)


class InvertedResidualV3(nn.Module):
    """MobileNetV3's block (torchvision's ``InvertedResidual``; the V3 suffix keeps it apart
    from V2's): ``block`` = [1x1 expansion (absent when the widths are equal)], depthwise
    k x k, [SqueezeExcitation with a hard-sigmoid gate], 1x1 projection without
    activation; the input is added back when stride is 1 and the widths match.
    (N, input_channels, H, W) -> (N, out_channels, H / stride, W / stride)."""

    def __init__(self, cnf, norm_layer, se_layer=None):
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"InvertedResidualV3: stride should be 1 or 2, got {cnf.stride}")
        if se_layer is None:
            se_layer = partial(SqueezeExcitation, scale_activation=nn.Hardsigmoid)
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels,
                                               kernel_size=1, norm_layer=norm_layer,
                                               activation_layer=activation_layer))
        stride = 1 if cnf.dilation > 1 else cnf.stride  # dilation replaces the stride
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels,
                                           kernel_size=cnf.kernel, stride=stride,
                                           dilation=cnf.dilation, groups=cnf.expanded_channels,
                                           norm_layer=norm_layer,
                                           activation_layer=activation_layer))
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(se_layer(cnf.expanded_channels, squeeze_channels))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels,
                                           kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, input):  # noqa: A002
        result = self.block(input)
        if self.use_res_connect:
            result = result + input
        return result


def _small_setting(width_mult):
    """mobilenet_v3_small's table (the paper's Table 2) and its last hidden width."""
    bneck = partial(InvertedResidualConfig, width_mult=width_mult)
    setting = [
        # in, kernel, expanded, out, SE, activation, stride, dilation
        bneck(16, 3, 16, 16, True, "RE", 2, 1),
        bneck(16, 3, 72, 24, False, "RE", 2, 1),
        bneck(24, 3, 88, 24, False, "RE", 1, 1),
        bneck(24, 5, 96, 40, True, "HS", 2, 1),
        bneck(40, 5, 240, 40, True, "HS", 1, 1),
        bneck(40, 5, 240, 40, True, "HS", 1, 1),
        bneck(40, 5, 120, 48, True, "HS", 1, 1),
        bneck(48, 5, 144, 48, True, "HS", 1, 1),
        bneck(48, 5, 288, 96, True, "HS", 2, 1),
        bneck(96, 5, 576, 96, True, "HS", 1, 1),
        bneck(96, 5, 576, 96, True, "HS", 1, 1),
    ]
    return setting, InvertedResidualConfig.adjust_channels(1024, width_mult)


class MobileNetV3(nn.Module):
    """torchvision's ``MobileNetV3(inverted_residual_setting, last_channel,
    num_classes=1000, block=None, norm_layer=None, dropout=0.2)``, plus minidl's
    ``in_channels``.

    features.0: 3x3/2 conv + BN + hard swish; features.1 .. features.K: the blocks;
    features.K+1: 1x1 conv to 6x the last block's width + BN + hard swish; avgpool;
    classifier: Linear(6 * c, last_channel), Hardswish, Dropout, Linear(last_channel,
    num_classes). Input (N, 3, H, W) -> logits (N, num_classes); H, W >= 32 (5 halvings).
    """

    def __init__(self, inverted_residual_setting, last_channel, num_classes=1000, block=None,
                 norm_layer=None, dropout=0.2, *, in_channels=3):
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("MobileNetV3: inverted_residual_setting should not be empty")
        if not all(isinstance(s, InvertedResidualConfig) for s in inverted_residual_setting):
            raise TypeError("MobileNetV3: inverted_residual_setting should be a list of "
                            "InvertedResidualConfig")
        if block is None:
            block = InvertedResidualV3
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        first = inverted_residual_setting[0].input_channels
        layers = [Conv2dNormActivation(in_channels, first, kernel_size=3, stride=2,
                                       norm_layer=norm_layer, activation_layer=nn.Hardswish)]
        layers += [block(cnf, norm_layer) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel), nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True), nn.Linear(last_channel, num_classes))
        _init_weights(self)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


def _init_weights(model):
    """torchvision's MobileNetV3 init: Kaiming normal (fan_out) convs, norms 1 and 0,
    N(0, 0.01) linears, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_v3_small(num_classes=1000, width_mult=1.0, dropout=0.2, **kwargs):
    """torchvision's ``mobilenet_v3_small``: 11 blocks, 2,542,856 parameters for 1000
    classes. ``width_mult`` scales every width (rounded to multiples of 8)."""
    setting, last_channel = _small_setting(width_mult)
    return MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=dropout,
                       **kwargs)
