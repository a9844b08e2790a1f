"""The cross-entropy kernel family: the gradient of cross-entropy over class indices.

    N    batch size
    C    number of classes

    logp, gx      (N, C)   log_softmax of the logits x, and the gradient of x
    target        (N,)     integer class indices; ignore_index marks an element to skip
    G             dL/dloss_n: (N, 1) for reduction='none', one value () for 'sum' and
                  for 'mean' (the mean's 1 / D folded in)

The plain case of ``ops/loss.py``'s CrossEntropyFunction: (N, C) logits, class-index
targets, no class weights, no label smoothing. There the weighted targets A are one-hot
rows (zero rows where ignored) and the general gradient ``G * (p * sum_c(A) - A)``
becomes::

    cross_entropy_backward:  gx = G * (softmax(x) - onehot(target))      (N, C)
                             gx = 0 on the rows where target == ignore_index

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one), each with
the function ``cross_entropy_backward(logp, target, G, ignore_index)``:

* ``reference``: the formula above as array expressions, on either device; it gives the
  general formula's numbers bit for bit (it is that formula with sum_c(A) written as the
  0/1 "kept" column it equals exactly).
* ``cuda``: one fused CUDA kernel (``cuda_kernels.cross_entropy_backward``) where the
  array expressions launch eight.

There is no numba implementation: the expressions cost little next to the forward pass.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..backend import get_array_module
from . import cuda_kernels, registry

__all__ = ["CROSS_ENTROPY", "cross_entropy_backward_reference"]


def cross_entropy_backward_reference(logp, target, G, ignore_index):
    """gx (N, C) = G * (p - onehot(target)) with p = exp(logp) = softmax(x); zero rows
    where target == ignore_index.

    logp: (N, C); target: (N,) integers; G: (N, 1) or () (see the module docstring).
    """
    xp = get_array_module(logp)
    C = logp.shape[1]
    p = xp.exp(logp)                                                     # (N, C)
    kept = (target != ignore_index)[:, None]                             # (N, 1)
    onehot = ((target[:, None] == xp.arange(C)[None, :]) & kept).astype(logp.dtype)  # (N, C)
    # p * kept: the softmax row, or a zero row where ignored (exactly what the general
    # formula's p * sum_c(A) is, so the numbers agree to the bit)
    return (p * kept.astype(logp.dtype) - onehot) * G                   # (N, C)


CROSS_ENTROPY = registry.family("cross_entropy", __doc__, preference=("cuda",))
CROSS_ENTROPY.register("reference", lambda: SimpleNamespace(
    cross_entropy_backward=cross_entropy_backward_reference))
CROSS_ENTROPY.register("cuda", lambda: SimpleNamespace(
    cross_entropy_backward=cuda_kernels.cross_entropy_backward),
    device="cuda", supports=cuda_kernels.available)
