"""ResNet-18/34/50/101/152 (He et al., 2016) in torchvision's layout (same module names,
so ``state_dict`` keys match torchvision's), with two minidl options.

Layout at (3, 224, 224)::

    conv1 7x7/2, 64 -> (64, 112, 112), bn1, relu, maxpool 3x3/2 pad 1 -> (64, 56, 56)
    layer1  blocks at 56x56 (planes 64)      layer2  28x28 (planes 128, first block /2)
    layer3  14x14 (planes 256, /2)           layer4  7x7   (planes 512, /2)
    avgpool (C, 1, 1) -> flatten -> fc (num_classes)

    blocks per layer: 18: [2, 2, 2, 2] BasicBlock     34: [3, 4, 6, 3] BasicBlock
                      50: [3, 4, 6, 3] Bottleneck     101: [3, 4, 23, 3]   152: [3, 8, 36, 3]

``BasicBlock``: 3x3 conv (stride) - BN - ReLU - 3x3 conv - BN, plus the shortcut, ReLU.
``Bottleneck``: 1x1 conv (reduce) - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv (expand
x4) - BN, plus the shortcut, ReLU. The shortcut is the identity, or a 1x1 conv (stride)
+ BN (``downsample``) when the shape changes.

Parameters (1000 classes): 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 /
60,192,808. The paper's 1.8 / 3.6 / 3.8 / 7.6 / 11.3 x 10^9 "FLOPs" are multiply-adds
(MACs) at 224x224, and its bottleneck puts the stride in the first 1x1 conv
(``stride_in_1x1=True``); torchvision (the default here) puts it in the 3x3 conv
("ResNet v1.5"), which costs more: about 4.1 G MACs for ResNet-50 instead of 3.8 G.

minidl's options: ``stride_in_1x1`` (the paper's layout, Bottleneck only: in a
BasicBlock the first conv is the 3x3 one in both layouts), ``small_input`` (a 3x3/1
stem without max pool, for 32x32 CIFAR/MNIST-sized inputs; ``maxpool`` becomes an
Identity), ``in_channels`` and ``widths`` (the four layer widths, (64, 128, 256, 512)).
"""
from __future__ import annotations

from .. import nn

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "conv3x3", "conv1x1", "resnet18",
           "resnet34", "resnet50", "resnet101", "resnet152"]


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    """3x3 convolution with padding (= dilation), no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and the shortcut: (N, inplanes, H, W) -> (N, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None, stride_in_1x1=False):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        # stride_in_1x1 changes nothing here: the block's first conv is its 3x3 one.
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) and the shortcut:
    (N, inplanes, H, W) -> (N, 4 * planes, H/s, W/s). The stride sits on the 3x3 conv
    (torchvision) or, with ``stride_in_1x1=True``, on the first 1x1 conv (the paper)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None, stride_in_1x1=False):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, s3, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """``ResNet(block, layers, num_classes=1000, zero_init_residual=False, groups=1,
    width_per_group=64, replace_stride_with_dilation=None, norm_layer=None)`` as
    torchvision's, plus minidl's keyword-only ``stride_in_1x1=False``,
    ``small_input=False``, ``in_channels=3``, ``widths=(64, 128, 256, 512)``.

    Init (torchvision's): Kaiming normal (fan_out, relu) convs, BN weight 1 / bias 0;
    ``zero_init_residual`` zeroes the last BN weight of every block, so each block starts
    as the identity.
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, norm_layer=None, *,
                 stride_in_1x1=False, small_input=False, in_channels=3,
                 widths=(64, 128, 256, 512)):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.stride_in_1x1 = stride_in_1x1
        self.inplanes = widths[0]
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element "
                             f"tuple, got {replace_stride_with_dilation}")
        if len(widths) != 4:
            raise ValueError(f"widths should have 4 entries, got {widths}")
        self.groups = groups
        self.base_width = width_per_group
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1,
                                   padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2,
                                   padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.Identity() if small_input
                        else nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2,
                                       dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2,
                                       dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2,
                                       dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        # only passed when set, so blocks with torchvision's signature still work
        extra = {"stride_in_1x1": True} if self.stride_in_1x1 else {}
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation, norm_layer, **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width, dilation=self.dilation,
                                norm_layer=norm_layer, **extra))
        return nn.Sequential(*layers)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.fc(x)


def _resnet(block, layers, **kwargs):
    return ResNet(block, layers, **kwargs)


def resnet18(**kwargs):
    """ResNet-18: BasicBlock [2, 2, 2, 2]; 11,689,512 parameters, ~1.8 G MACs at 224x224.
    kwargs: ``num_classes=1000, zero_init_residual=False, ...`` and minidl's
    ``stride_in_1x1, small_input, in_channels, widths`` (see ``ResNet``)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs):
    """ResNet-34: BasicBlock [3, 4, 6, 3]; 21,797,672 parameters, ~3.6 G MACs."""
    return _resnet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs):
    """ResNet-50: Bottleneck [3, 4, 6, 3]; 25,557,032 parameters, ~4.1 G MACs
    (torchvision layout) or ~3.8 G (``stride_in_1x1=True``, the paper's)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs):
    """ResNet-101: Bottleneck [3, 4, 23, 3]; 44,549,160 parameters, ~7.6 G MACs (paper)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs):
    """ResNet-152: Bottleneck [3, 8, 36, 3]; 60,192,808 parameters, ~11.3 G MACs (paper)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], **kwargs)
