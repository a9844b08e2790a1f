"""``minidl.utils.data``: ``torch.utils.data``'s names for minidl's data classes.

The same objects as ``minidl.data``'s (``minidl.utils.data.DataLoader is
minidl.data.DataLoader``), under the path PyTorch code imports them from::

    from minidl.utils.data import DataLoader, Dataset, TensorDataset, random_split
"""
from __future__ import annotations

from ...data import (ConcatDataset, DataLoader, Dataset, Subset, TensorDataset,
                     default_collate, random_split)

__all__ = ["DataLoader", "Dataset", "TensorDataset", "Subset", "ConcatDataset",
           "random_split", "default_collate"]
