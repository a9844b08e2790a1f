"""minidl.explain: the teaching tools. Every step of an op's forward and backward pass, in
numbers a learner can redo by hand, computed with minidl's own kernels and checked against
autograd before anything is printed.

    import minidl.explain as ex
    e = ex.conv2d((1, 2, 5, 4), (3, 2, 3, 3), b=True, stride=2, padding=1)
    print(e)                     # or e.to_markdown(), e.to_latex(); e.step('col').matrices
    ex.linear((2, 3), (4, 3), b=True)
    ex.chain((1, 1, 6, 6), (2, 1, 3, 3), pool=2)     # conv2d -> relu -> max_pool2d
    ex.max_pool2d((1, 1, 4, 4), 2, tie="split")      # where each gradient goes, on ties
    ex.avg_pool2d((1, 1, 5, 5), 3, stride=2, padding=1, count_include_pad=False)
    ex.batch_norm((4, 3))                            # dX's three terms
    ex.softmax_cross_entropy((3, 4), [0, 2, 1], label_smoothing=0.1)

The command line: ``python -m minidl.explain conv2d --input 1x2x5x4 --kernel 3x2x3x3
--stride 2 --padding 1`` (``--help`` for the rest).

Inputs may be arrays (NumPy, minidl Tensors) or shape tuples, for which values are drawn
with ``seed``: small integers by default (``values='int'``), normal floats with
``values='float'``. The result is an ``Explanation`` (``core.py``): a list of labelled
steps with ``to_text()``, ``to_markdown()``, ``to_latex()`` and ``_repr_html_()``.
"""
from __future__ import annotations

from .chain import chain
from .conv import conv2d
from .core import Explanation, Matrix, Step
from .linear import linear
from .loss import softmax_cross_entropy
from .norm import batch_norm
from .pool import avg_pool2d, max_pool2d

__all__ = ["conv2d", "linear", "chain", "max_pool2d", "avg_pool2d", "batch_norm",
           "softmax_cross_entropy", "check_backward", "Explanation", "Step", "Matrix"]


def check_backward(*args, **kwargs):
    """Check a learner's own backward against autograd (``minidl/explain/check.py``,
    imported on first use)."""
    from .check import check_backward as check
    return check(*args, **kwargs)
