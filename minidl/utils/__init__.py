"""``minidl.utils``: PyTorch's ``torch.utils`` paths for code that imports from them
(``from torch.utils.data import DataLoader`` runs as ``from minidl.utils.data import
DataLoader``). The classes themselves live in ``minidl.data``."""
from __future__ import annotations

from . import data

__all__ = ["data"]
