"""``minidl.models``: the lecture's networks, with torchvision's names where it has them.

=====================  ==========================================  ==================
builder                network                                     params (default)
=====================  ==========================================  ==================
``lenet5()``           the lecture's LeNet-5 (tanh, 32x32x1)       61,706
``alexnet()``          the lecture's AlexNet with batch norm       58,325,066
``vgg11 .. vgg19_bn``  VGG, torchvision's layout                   132.9 M .. 143.7 M
``googlenet()``        GoogLeNet + 2 auxiliary heads               7.0 M + 6.4 M aux
``mobilenet_v1()``     13 depthwise separable blocks               4,231,976
``mobilenet_v2()``     torchvision's MobileNetV2                   3,504,872
``resnet18 .. 152``    torchvision's ResNets (+ paper layout)      11.7 M .. 60.2 M
mobilenet_v3_small()   MobileNetV3-Small: SE, hard swish           2,542,856
``efficientnet_b0()``  EfficientNet-B0: MBConv, SiLU               5,288,548
``convnext_tiny()``    ConvNeXt-T: LayerNorm, GELU, 7x7            28,589,128
=====================  ==========================================  ==================

Building blocks: ``Inception``, ``InceptionAux``, ``BasicConv2d``,
``DepthwiseSeparableConv2d``, ``InvertedResidual``, ``BasicBlock``, ``Bottleneck``.
Issue 15's: ``SqueezeExcitation``, ``InvertedResidualV3``, ``MBConv``, ``CNBlock``.
``googlenet_loss`` is the lecture's ``L_out + 0.3 L_aux1 + 0.3 L_aux2``.
``uninitialized()`` builds models without drawing initial weights (to count them).
"""
from __future__ import annotations

import contextlib

from .alexnet import AlexNet, alexnet
from .googlenet import (BasicConv2d, GoogLeNet, GoogLeNetLosses, GoogLeNetOutputs, Inception,
                        InceptionAux, googlenet, googlenet_loss)
from .lenet import LeNet5, lenet5
from .mobilenet import (Conv2dNormActivation, DepthwiseSeparableConv2d, InvertedResidual,
                        MobileNetV1, MobileNetV2, ReLU6, mobilenet_v1, mobilenet_v2)
from .resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101,
                     resnet152)
from ..nn import init
from .vgg import (VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)
# issue 15: the models of the newer layers (SE + hard swish, SiLU + stochastic depth,
# LayerNorm + GELU + depthwise 7x7)
from .convnext import CNBlock, CNBlockConfig, ConvNeXt, convnext_tiny
from .efficientnet import EfficientNet, MBConv, MBConvConfig, efficientnet_b0
from .mobilenet_v3 import (InvertedResidualConfig, InvertedResidualV3, MobileNetV3,
                           SqueezeExcitation, mobilenet_v3_small)

__all__ = ["LeNet5", "lenet5", "AlexNet", "alexnet", "VGG", "vgg11", "vgg11_bn", "vgg13",
           "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "GoogLeNet", "GoogLeNetOutputs",
           "GoogLeNetLosses", "Inception", "InceptionAux", "BasicConv2d", "googlenet",
           "googlenet_loss", "DepthwiseSeparableConv2d", "MobileNetV1", "mobilenet_v1",
           "MobileNetV2", "mobilenet_v2", "InvertedResidual", "Conv2dNormActivation", "ReLU6",
           "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "uninitialized"]
__all__ += ["MobileNetV3", "mobilenet_v3_small", "InvertedResidualConfig",
            "InvertedResidualV3", "SqueezeExcitation", "EfficientNet", "efficientnet_b0",
            "MBConv", "MBConvConfig", "ConvNeXt", "convnext_tiny", "CNBlock", "CNBlockConfig"]


@contextlib.contextmanager
def uninitialized():
    """``with minidl.models.uninitialized(): net = vgg19()`` builds a model without drawing
    its initial weights (they stay zero), which is what counting parameters or a
    ``summary`` needs: building VGG-19 normally draws 143 M random numbers (seconds).
    Not for training: load a ``state_dict`` into such a model, or re-initialise it.

    The random fills of ``minidl.nn.init`` (every ``*_uniform_``, ``*_normal_`` and
    ``trunc_normal_``) do nothing while the block runs (``init.skip_random_fills``); not
    thread-safe.
    """
    with init.skip_random_fills():
        yield
