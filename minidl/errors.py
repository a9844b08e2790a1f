"""minidl's exception policy: the same kind of mistake raises the same class everywhere.

======================================  ==============  ===================================
mistake                                 class           example
======================================  ==============  ===================================
not a Tensor where one is needed;       ``TypeError``   ``conv2d: input must be a Tensor,
a wrong dtype (int input to a conv,                     got ndarray``
mixed float32/float64); an argument
of the wrong type (stride=1.5)
a Tensor of the wrong rank or shape,    ``ShapeError``  ``max_pool2d: expected a 3-D or
or too small for the kernel                             4-D input, got (8, 28)``
a bad argument value (negative          ``ValueError``  ``conv2d: stride must be >= 1,
stride, unknown mode, groups that do                    got 0``
not divide the channels)
======================================  ==============  ===================================

``ShapeError`` derives from both ``RuntimeError`` and ``ValueError``: PyTorch raises a
RuntimeError for a wrong-shaped input to a convolution, pooling or linear layer and a
ValueError for one to batch norm, so code written for either keeps working.

Every message starts with the op (``conv2d: ``) or the layer's repr (``Conv2d(3, 16,
kernel_size=(3, 3), stride=(1, 1)): ``) that refused, then says what was expected, what
came, and where it helps, how to fix it. ``tests/test_error_policy.py`` sweeps the ops
and layers with bad arguments and checks class and prefix.
"""
from __future__ import annotations

__all__ = ["ShapeError"]


class ShapeError(RuntimeError, ValueError):
    """A tensor of the wrong rank or shape (a RuntimeError and a ValueError, see above)."""
