"""``minidl.optim``: optimisers (``SGD``, ``Adam``, ``AdamW``) and ``lr_scheduler``, with
PyTorch's names, defaults and update rules."""
from __future__ import annotations

from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
