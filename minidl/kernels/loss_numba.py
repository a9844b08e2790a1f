"""numba kernels of the cross-entropy family (``kernels/loss.py`` holds the reference and
the registration): the plain case's forward and backward for float32/float64 NumPy arrays.

    x, logp, gx   (N, C)   logits, their log_softmax, the gradient of x
    target        (N,)     integer class indices (checked in range by the forward loop)
    losses        (N,)     -logp[n, target[n]], 0 where target[n] == ignore_index
    G             (N,) or (1,)  dL/dloss_n per row, or one value for every row

One pass per row where NumPy's expressions make five to eight passes and as many
temporaries: at LeNet's (100, 10) the arrays are tiny and the time was all in those
calls. Written without fastmath: a logit of -inf or a NaN keeps its meaning (as in the
reference), which the no-NaN/no-inf assumptions of fastmath would not guarantee.
"""
from __future__ import annotations

import math

import numpy as np

from .loss import target_error
from .threads import jit

__all__ = ["cross_entropy_forward", "cross_entropy_backward"]


@jit(fastmath=False)
def _forward_kernel(x, target, ignore_index, logp, losses):
    """logp = log_softmax(x) row by row (x - max - log(sum(exp(x - max)))), losses;
    returns the number of rows not ignored, or -1 - n for the first row n whose target is
    outside [0, C) and not ignore_index."""
    N, C = x.shape
    count = 0
    for n in range(N):
        t = target[n]
        if t != ignore_index and (t < 0 or t >= C):
            return -1 - n
        m = x[n, 0]
        for c in range(1, C):
            if x[n, c] > m:
                m = x[n, c]
        s = x[n, 0] * 0                       # a zero of x's dtype
        for c in range(C):
            s += math.exp(x[n, c] - m)
        lse = m + math.log(s)
        for c in range(C):
            logp[n, c] = x[n, c] - lse
        if t == ignore_index:
            losses[n] = 0
        else:
            losses[n] = -logp[n, t]
            count += 1
    return count


@jit(fastmath=False)
def _backward_kernel(logp, target, ignore_index, G, gx):
    """gx[n] = G[n] * (softmax row - onehot(target[n])), a zero row where ignored."""
    N, C = logp.shape
    per_row = G.shape[0] == N
    for n in range(N):
        t = target[n]
        if t == ignore_index:
            for c in range(C):
                gx[n, c] = 0
            continue
        g = G[n] if per_row else G[0]
        for c in range(C):
            gx[n, c] = g * math.exp(logp[n, c])
        gx[n, t] -= g


def cross_entropy_forward(x, target, ignore_index):
    """(logp (N, C), losses (N,), count ()): see ``loss.cross_entropy_forward_reference``."""
    x = np.ascontiguousarray(x)
    logp = np.empty_like(x)
    losses = np.empty(x.shape[0], dtype=x.dtype)
    target = np.ascontiguousarray(target, dtype=np.int64)
    count = _forward_kernel(x, target, ignore_index, logp, losses, size=x.size)
    if count < 0:
        raise target_error("cross_entropy", int(target[-1 - count]), x.shape[1], ignore_index)
    return logp, losses, x.dtype.type(count)   # a NumPy scalar, as the reference's sum()


def cross_entropy_backward(logp, target, G, ignore_index):
    """gx (N, C) = G * (softmax - onehot(target)), zero rows where ignored."""
    logp = np.ascontiguousarray(logp)
    gx = np.empty_like(logp)
    G = np.ascontiguousarray(np.asarray(G, dtype=logp.dtype).reshape(-1))
    _backward_kernel(logp, np.ascontiguousarray(target, dtype=np.int64), ignore_index, G, gx,
                     size=logp.size)
    return gx
