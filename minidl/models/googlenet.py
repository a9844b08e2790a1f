"""GoogLeNet / Inception v1 (Szegedy et al., 2015) with both auxiliary classifiers, in
torchvision's layout (same module names, so ``state_dict`` keys match torchvision's).

Shapes at (3, 224, 224)::

    conv1 7x7/2 -> (64, 112, 112)   maxpool1 3/2 ceil -> 56
    conv2 1x1   -> (64, 56, 56)     conv3 3x3 -> (192, 56, 56)   maxpool2 -> 28
    inception3a -> (256, 28, 28)    inception3b -> (480, 28, 28)  maxpool3 -> 14
    inception4a -> (512, 14, 14)    -> aux1 (training only): (num_classes,)
    inception4b, 4c -> (512, 14, 14), 4d -> (528, 14, 14)   -> aux2 (training only)
    inception4e -> (832, 14, 14)    maxpool4 2/2 -> 7
    inception5a -> (832, 7, 7)      inception5b -> (1024, 7, 7)
    avgpool (1024, 1, 1) -> flatten -> dropout -> fc (num_classes,)

Each Inception block runs four branches on the same input and concatenates them along
the channels; every branch must keep H and W, so a k x k conv needs padding (k - 1) // 2.
(The lecture's block pads its 5x5 branch by 1, which shrinks that branch by 2 pixels:
``cat`` then fails with both shapes in its message.)

The auxiliary heads help gradients reach the lower layers; the training loss is
``L = L_out + 0.3 L_aux1 + 0.3 L_aux2`` (``googlenet_loss``). In eval mode the model
returns only the main logits.

torchvision's GoogLeNet uses a 3x3 kernel in the "5x5" branch (a bug kept for its
pretrained weights); minidl uses the paper's 5x5 by default, and
``branch3_kernel_size=3`` gives torchvision's exact tensors (6,624,904 parameters without
the auxiliary heads, 13,004,888 with them, for 1000 classes).
"""
from __future__ import annotations

from collections import namedtuple

from .. import nn
from ..nn import functional as F
from ..ops.shape import cat

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux", "BasicConv2d",
           "googlenet", "googlenet_loss", "GoogLeNetLosses"]


class GoogLeNetOutputs(namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])):
    """What GoogLeNet returns in training mode: torchvision's named tuple
    ``(logits, aux_logits2, aux_logits1)``, with the aliases ``main``, ``aux1``, ``aux2``
    (``aux1`` is the head after inception4a, ``aux2`` the one after inception4d)."""

    __slots__ = ()

    @property
    def main(self):
        return self.logits

    @property
    def aux1(self):
        return self.aux_logits1

    @property
    def aux2(self):
        return self.aux_logits2


class BasicConv2d(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d(eps=0.001) -> ReLU, torchvision's GoogLeNet unit
    (parameter names ``conv.weight``, ``bn.*``). kwargs go to Conv2d."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """``Inception(in_channels, out_br1, red_br2, out_br2, red_br3, out_br3, out_br4)``,
    the lecture's block (torchvision's names: ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5,
    pool_proj), with its 5x5 branch padded correctly (2)::

        branch1: 1x1 conv -> out_br1
        branch2: 1x1 conv -> red_br2, 3x3 conv (pad 1) -> out_br2
        branch3: 1x1 conv -> red_br3, 5x5 conv (pad 2) -> out_br3
        branch4: 3x3/1 max pool (pad 1), 1x1 conv -> out_br4
        output: (N, out_br1 + out_br2 + out_br3 + out_br4, H, W), branches concatenated

    ``conv_block`` builds each conv: by default a plain ``Conv2d`` with bias, as in the
    lecture (``Inception(512, 128, 128, 256, 24, 64, 64)`` has 510,104 parameters, against
    2,359,808 for one ``Conv2d(512, 512, 3)``); GoogLeNet passes ``BasicConv2d``
    (conv + BN + ReLU, torchvision's). ``branch3_kernel_size`` (5) may be set to 3 for
    torchvision's tensor shapes.
    """

    def __init__(self, in_channels, out_br1, red_br2, out_br2, red_br3, out_br3, out_br4,
                 conv_block=None, branch3_kernel_size=5):
        super().__init__()
        if conv_block is None:
            conv_block = nn.Conv2d
        k = branch3_kernel_size
        if k % 2 != 1:
            raise ValueError(f"Inception: branch3_kernel_size must be odd (so that padding "
                             f"{k}//2 keeps H and W), got {k}")
        self.branch1 = conv_block(in_channels, out_br1, kernel_size=1)
        self.branch2 = nn.Sequential(
            conv_block(in_channels, red_br2, kernel_size=1),
            conv_block(red_br2, out_br2, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(
            conv_block(in_channels, red_br3, kernel_size=1),
            conv_block(red_br3, out_br3, kernel_size=k, padding=k // 2))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, out_br4, kernel_size=1))
        self.out_channels = out_br1 + out_br2 + out_br3 + out_br4

    def forward(self, x):
        """x (N, in_channels, H, W) -> (N, out_br1 + out_br2 + out_br3 + out_br4, H, W)."""
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return cat(outputs, 1)


class InceptionAux(nn.Module):
    """An auxiliary classifier (torchvision's): adaptive average pool to 4x4, 1x1
    BasicConv2d to 128 channels, fc1 2048 -> 1024, ReLU, dropout (0.7), fc2 -> classes.
    (N, C, H, W) -> (N, num_classes)."""

    def __init__(self, in_channels, num_classes, conv_block=None, dropout=0.7):
        super().__init__()
        if conv_block is None:
            conv_block = BasicConv2d
        self.conv = conv_block(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, (4, 4))     # (N, C, 4, 4)
        x = self.conv(x)                          # (N, 128, 4, 4)
        x = x.flatten(1)                          # (N, 2048)
        x = F.relu(self.fc1(x))                   # (N, 1024)
        x = self.dropout(x)
        return self.fc2(x)                        # (N, num_classes)


class GoogLeNet(nn.Module):
    """``GoogLeNet(num_classes=1000, aux_logits=True, transform_input=False,
    init_weights=True, dropout=0.2, dropout_aux=0.7)`` as torchvision's, plus minidl's
    ``in_channels`` and ``branch3_kernel_size`` (5: the paper; 3: torchvision's).

    Training mode (with ``aux_logits``) returns ``GoogLeNetOutputs(logits, aux_logits2,
    aux_logits1)``; eval mode returns the logits alone. Train it with ``googlenet_loss``.
    """

    def __init__(self, num_classes=1000, aux_logits=True, transform_input=False,
                 init_weights=True, blocks=None, dropout=0.2, dropout_aux=0.7, *,
                 in_channels=3, branch3_kernel_size=5):
        super().__init__()
        if blocks is None:
            blocks = [BasicConv2d, Inception, InceptionAux]
        conv_block, inception_block, inception_aux_block = blocks
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        def inception(*channels):
            return inception_block(*channels, conv_block=conv_block,
                                   branch3_kernel_size=branch3_kernel_size)

        self.conv1 = conv_block(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv_block(64, 64, kernel_size=1)
        self.conv3 = conv_block(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = inception(832, 384, 192, 384, 48, 128, 128)

        if aux_logits:
            self.aux1 = inception_aux_block(512, num_classes, dropout=dropout_aux)
            self.aux2 = inception_aux_block(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:  # torchvision's: truncated N(0, 0.01) for convs and linears
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x):
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 scaling GoogLeNet was trained on."""
        if not self.transform_input:
            return x
        x_ch0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return cat([x_ch0, x_ch1, x_ch2], 1)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes), or ``GoogLeNetOutputs`` in training."""
        x = self._transform_input(x)
        x = self.conv1(x)
        x = self.maxpool1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.maxpool2(x)

        x = self.inception3a(x)
        x = self.inception3b(x)
        x = self.maxpool3(x)
        x = self.inception4a(x)

        aux1 = None
        if self.aux1 is not None and self.training:
            aux1 = self.aux1(x)

        x = self.inception4b(x)
        x = self.inception4c(x)
        x = self.inception4d(x)

        aux2 = None
        if self.aux2 is not None and self.training:
            aux2 = self.aux2(x)

        x = self.inception4e(x)
        x = self.maxpool4(x)
        x = self.inception5a(x)
        x = self.inception5b(x)

        x = self.avgpool(x)
        x = x.flatten(1)
        x = self.dropout(x)
        x = self.fc(x)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def googlenet(num_classes=1000, aux_logits=True, **kwargs):
    """``GoogLeNet(num_classes=1000, aux_logits=True, transform_input=False,
    init_weights=True, dropout=0.2, dropout_aux=0.7, in_channels=3,
    branch3_kernel_size=5)``."""
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, **kwargs)


GoogLeNetLosses = namedtuple("GoogLeNetLosses", ["total", "main", "aux1", "aux2"])


def googlenet_loss(outputs, target, aux_weight=0.3, criterion=None, return_parts=False):
    """The lecture's GoogLeNet loss ``L = L_out + 0.3 L_aux1 + 0.3 L_aux2``.

    Args:
        outputs: what the model returned: ``GoogLeNetOutputs`` in training, or plain
            logits (eval mode, or ``aux_logits=False``: then ``L = L_out``).
        target: (N,) class indices.
        aux_weight: the weight of each auxiliary loss (0.3).
        criterion: ``criterion(logits, target) -> scalar``; cross-entropy by default.
        return_parts: also return the three losses, as
            ``GoogLeNetLosses(total, main, aux1, aux2)`` (aux ones None when absent).
    Returns: the scalar total loss, or the named tuple with ``return_parts``.
    """
    if criterion is None:
        criterion = F.cross_entropy
    if isinstance(outputs, GoogLeNetOutputs):
        main = criterion(outputs.logits, target)
        aux1 = None if outputs.aux_logits1 is None else criterion(outputs.aux_logits1, target)
        aux2 = None if outputs.aux_logits2 is None else criterion(outputs.aux_logits2, target)
    else:
        main, aux1, aux2 = criterion(outputs, target), None, None
    total = main
    for aux in (aux1, aux2):
        if aux is not None:
            total = total + aux_weight * aux
    return GoogLeNetLosses(total, main, aux1, aux2) if return_parts else total
