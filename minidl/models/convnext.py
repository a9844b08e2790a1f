"""ConvNeXt (Liu et al., 2022), torchvision's ``convnext_tiny`` layout and names.

A ResNet modernised step by step towards a vision transformer's recipe, still all
convolutions:

- a "patchify" stem: a 4x4 conv with stride 4 (non-overlapping patches), then LayerNorm;
- stages of 3, 3, 9, 3 blocks (Swin-T's ratio) at widths 96, 192, 384, 768, with a
  LayerNorm + 2x2/2 conv between stages;
- the block (``CNBlock``) is a transformer's MLP with a large depthwise conv in front:
  depthwise 7x7 conv (mixes space, per channel) -> LayerNorm over channels -> Linear to 4C
  -> GELU -> Linear back to C (mixes channels, per pixel), scaled per channel by a learnt
  ``layer_scale`` (started at 1e-6, so each block starts close to the identity), dropped
  per sample while training (``StochasticDepth``) and added to the input.

The Linear layers act on the last dim, so the block moves channels last, (N, H, W, C),
for the LayerNorm and the MLP and back to (N, C, H, W) after it (``nn.Permute``).
Outside the blocks ``nn.LayerNorm2d`` does the same round trip.

``convnext_tiny()``: 28,589,128 parameters for 1000 classes, about 4.5 G multiply-adds at
224x224.
"""
from __future__ import annotations

from functools import partial

from .. import creation, nn
from .mobilenet import Conv2dNormActivation

__all__ = ["CNBlockConfig", "CNBlock", "ConvNeXt", "convnext_tiny"]


class CNBlock(nn.Module):
    """torchvision's ``CNBlock(dim, layer_scale, stochastic_depth_prob, norm_layer=None)``.

    ``block``: 0 depthwise Conv2d(dim, dim, 7, padding=3, groups=dim), 1 Permute to
    (N, H, W, C), 2 LayerNorm(dim, eps=1e-6), 3 Linear(dim, 4 dim), 4 GELU,
    5 Linear(4 dim, dim), 6 Permute back; ``layer_scale``: a Parameter (dim, 1, 1);
    output ``x + stochastic_depth(layer_scale * block(x))``, (N, dim, H, W) both ways.
    """

    def __init__(self, dim, layer_scale, stochastic_depth_prob, norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            nn.Permute([0, 2, 3, 1]),                # (N, C, H, W) -> (N, H, W, C)
            norm_layer(dim),
            nn.Linear(dim, 4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias=True),
            nn.Permute([0, 3, 1, 2]),                # back to (N, C, H, W)
        )
        # (dim, 1, 1) broadcasts over H and W: one scale per channel
        self.layer_scale = nn.Parameter(creation.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input):  # noqa: A002
        result = self.layer_scale * self.block(input)
        return self.stochastic_depth(result) + input


class CNBlockConfig:
    """One stage: ``num_layers`` blocks at width ``input_channels``, then (unless
    ``out_channels`` is None, the last stage) a downsampling to ``out_channels``."""

    def __init__(self, input_channels, out_channels, num_layers):
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers


class ConvNeXt(nn.Module):
    """torchvision's ``ConvNeXt(block_setting, stochastic_depth_prob=0.0,
    layer_scale=1e-6, num_classes=1000, block=None, norm_layer=None)``, plus minidl's
    ``in_channels``.

    features.0: stem (Conv2d 4x4/4 with bias + LayerNorm2d); then per stage a
    ``Sequential`` of CNBlocks and, between stages, a ``Sequential(LayerNorm2d, Conv2d
    2x2/2)``; avgpool; classifier: LayerNorm2d, Flatten, Linear. Input (N, 3, H, W), H and
    W multiples of 32 for ConvNeXt-T's four downsamplings -> logits (N, num_classes).
    """

    def __init__(self, block_setting, stochastic_depth_prob=0.0, layer_scale=1e-6,
                 num_classes=1000, block=None, norm_layer=None, *, in_channels=3):
        super().__init__()
        if not block_setting:
            raise ValueError("ConvNeXt: block_setting should not be empty")
        if not all(isinstance(s, CNBlockConfig) for s in block_setting):
            raise TypeError("ConvNeXt: block_setting should be a list of CNBlockConfig")
        if block is None:
            block = CNBlock
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm2d, eps=1e-6)
        first = block_setting[0].input_channels
        layers = [Conv2dNormActivation(in_channels, first, kernel_size=4, stride=4, padding=0,
                                       norm_layer=norm_layer, activation_layer=None,
                                       bias=True)]
        total_blocks = sum(cnf.num_layers for cnf in block_setting)
        block_id = 0
        for cnf in block_setting:
            stage = []
            for _ in range(cnf.num_layers):
                # from 0 at the first block to stochastic_depth_prob at the last
                sd_prob = stochastic_depth_prob * block_id / max(total_blocks - 1.0, 1.0)
                stage.append(block(cnf.input_channels, layer_scale, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:
                layers.append(nn.Sequential(
                    norm_layer(cnf.input_channels),
                    nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = block_setting[-1]
        last_out = last.out_channels if last.out_channels is not None else last.input_channels
        self.classifier = nn.Sequential(norm_layer(last_out), nn.Flatten(1),
                                        nn.Linear(last_out, num_classes))
        _init_weights(self)

    def forward(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes)."""
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)


def _init_weights(model):
    """torchvision's ConvNeXt init: convs and linears truncated normal (std 0.02, cut at
    +-2), zero biases; the LayerNorms keep their 1 and 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def convnext_tiny(num_classes=1000, stochastic_depth_prob=0.1, layer_scale=1e-6, **kwargs):
    """torchvision's ``convnext_tiny``: stages (3, 3, 9, 3) at widths (96, 192, 384, 768),
    28,589,128 parameters for 1000 classes."""
    setting = [CNBlockConfig(96, 192, 3), CNBlockConfig(192, 384, 3),
               CNBlockConfig(384, 768, 9), CNBlockConfig(768, None, 3)]
    return ConvNeXt(setting, stochastic_depth_prob=stochastic_depth_prob,
                    layer_scale=layer_scale, num_classes=num_classes, **kwargs)
