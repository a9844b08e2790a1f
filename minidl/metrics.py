"""Classification metrics: top-k accuracy and the confusion matrix.

Scores and labels may be minidl Tensors, NumPy or CuPy arrays, or lists; results are
plain Python floats / NumPy arrays (metrics are bookkeeping, not part of the graph).

Ties: among equal scores the lower class index ranks first (as ``argmax`` picks it).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .autograd import Tensor

__all__ = ["accuracy", "topk_indices", "confusion_matrix"]


def _np(x):
    if isinstance(x, Tensor):
        x = x.data
    if backend.is_cupy_array(x):
        return backend.to_numpy(x)
    return np.asarray(x)


def _labels(target, n, what="target"):
    t = _np(target)
    if t.ndim == 2:  # one-hot (or probabilities): the true class is the argmax
        t = t.argmax(axis=1)
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"{what}: expected class indices of shape ({n},) or one-hot "
                         f"({n}, C), got shape {tuple(_np(target).shape)}")
    if t.dtype.kind not in "iub":
        if not np.all(np.equal(np.mod(t, 1), 0)):
            raise ValueError(f"{what}: class indices must be integers")
        t = t.astype(np.int64)
    return t.astype(np.int64, copy=False)


def topk_indices(scores, k):
    """(N, k) class indices of the ``k`` highest scores of each row of ``scores`` (N, C),
    best first; ties go to the lower index."""
    s = _np(scores)
    if s.ndim != 2:
        raise ValueError(f"topk_indices: expected scores (N, C), got shape {tuple(s.shape)}")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"topk_indices: k={k} must lie in 1..{s.shape[1]} (the number of "
                         "classes)")
    if s.dtype.kind in "ub":
        s = s.astype(np.int64)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def accuracy(output, target, topk=(1,)):
    """Top-k accuracy in percent, as the usual PyTorch recipe computes it: the share of
    samples whose true class is among the ``k`` highest scores, times 100.

    output: scores (N, C) (logits or probabilities); target: class indices (N,) or one-hot
    (N, C). topk: a tuple of k's gives a list of floats (one per k); an int gives a float.
    """
    scores = _np(output)
    if scores.ndim != 2:
        raise ValueError(f"accuracy: expected output (N, C), got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    t = _labels(target, n)
    single = isinstance(topk, numbers.Integral)
    ks = (int(topk),) if single else tuple(int(k) for k in topk)
    if n == 0:
        raise ValueError("accuracy: empty batch")
    ranked = topk_indices(scores, max(ks))
    hit = ranked == t[:, None]                       # (N, maxk)
    res = [100.0 * float(hit[:, :k].any(axis=1).sum()) / n for k in ks]
    return res[0] if single else res


def confusion_matrix(pred, target, num_classes=None):
    """(C, C) int64 counts: ``cm[i, j]`` = samples of true class ``i`` predicted as ``j``
    (rows: true class, columns: prediction). ``pred`` is class indices (N,) or scores
    (N, C) (their argmax); ``num_classes`` defaults to the scores' C or the largest label
    + 1."""
    p = _np(pred)
    if p.ndim == 2:
        if num_classes is None:
            num_classes = p.shape[1]
        p = p.argmax(axis=1)
    p = _labels(p, p.shape[0] if p.ndim else -1, "pred")
    t = _labels(target, len(p))
    if num_classes is None:
        num_classes = int(max(p.max(initial=-1), t.max(initial=-1))) + 1
    c = int(num_classes)
    for name, a in (("pred", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= c):
            raise ValueError(f"confusion_matrix: {name} has classes outside 0..{c - 1}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)
