"""``minidl.vision.datasets``: torchvision's ``datasets`` path for minidl's datasets
(``datasets.MNIST(root, train=True, download=True, transform=...)``)."""
from __future__ import annotations

from ..data import MNIST, FashionMNIST

__all__ = ["MNIST", "FashionMNIST"]
