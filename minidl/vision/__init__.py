"""``minidl.vision``: torchvision's import paths over minidl's data classes.

A torchvision script changes one import line::

    from torchvision import datasets, transforms      # becomes
    from minidl.vision import datasets, transforms

``datasets.MNIST`` / ``datasets.FashionMNIST`` are ``minidl.data``'s (torchvision's
arguments: ``root, train=True, transform=None, target_transform=None, download=False``;
minidl's default is ``download=True``), and ``transforms`` is ``minidl.data.transforms``
(``Compose``, ``ToTensor``, ``Normalize``, ``Resize``, ``RandomCrop``...). ``models`` is
``minidl.models`` (LeNet, AlexNet, VGG, GoogLeNet, ResNet, MobileNet v2).
"""
from __future__ import annotations

from . import datasets
from ..data import transforms
from .. import models

__all__ = ["datasets", "transforms", "models"]
