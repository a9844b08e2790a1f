"""The cross-entropy kernel family: cross-entropy over class indices, forward and backward.

    N    batch size
    C    number of classes

    x, logp, gx   (N, C)   logits, their log_softmax, and the gradient of x
    target        (N,)     integer class indices; ignore_index marks an element to skip
    losses        (N,)     per-row loss, 0 where ignored; count: the rows not ignored
    G             dL/dloss_n: (N, 1) for reduction='none', one value () for 'sum' and
                  for 'mean' (the mean's 1 / D folded in)

The plain case of ``ops/loss.py``'s CrossEntropyFunction: (N, C) logits, class-index
targets, no class weights, no label smoothing. There the weighted targets A are one-hot
rows (zero rows where ignored) and the general formulas become::

    cross_entropy_forward:   logp   = x - max(x) - log(sum(exp(x - max(x))))   per row
                             losses = -logp[n, target[n]]   (0 where ignored)
                             count  = number of rows not ignored (the mean's D)
    cross_entropy_backward:  gx = G * (softmax(x) - onehot(target))      (N, C)
                             gx = 0 on the rows where target == ignore_index

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one), each with
``cross_entropy_forward(x, target, ignore_index)`` and
``cross_entropy_backward(logp, target, G, ignore_index)``. The forward also checks the
targets: one outside [0, C) that is not ignore_index raises ``target_error`` (the numba
loop reads every target anyway, so there the check is free):

* ``reference``: the formulas above as array expressions, on either device; they give
  the general formulas' numbers bit for bit (sum_c(A) written as the 0/1 "kept" column
  it equals exactly).
* ``numba`` (``loss_numba.py``): one loop per row for each (float32/float64 NumPy
  arrays), where the expressions make several passes and temporaries: at LeNet's
  (100, 10) the time was all in those NumPy calls.
* ``cuda``: the backward as one fused CUDA kernel (``cuda_kernels.cross_entropy_backward``)
  where the array expressions launch eight; the forward is the reference on CuPy.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..backend import get_array_module
from . import cuda_kernels, registry

__all__ = ["CROSS_ENTROPY", "log_softmax_axis1", "cross_entropy_forward_reference",
           "cross_entropy_backward_reference", "target_error", "check_targets"]


def target_error(name, cls, C, ignore_index):
    """The IndexError for class-index target ``cls`` outside [0, C) (``name``: the op)."""
    return IndexError(f"{name}: target contains class {cls} but input has {C} classes "
                      f"(expected targets in [0, {C - 1}] or ignore_index={ignore_index})")


def check_targets(target, C, ignore_index, name="cross_entropy"):
    """Raise ``target_error`` for the first target outside [0, C) that is not
    ``ignore_index``. First the range of all targets (two reductions, one host round trip
    on the GPU); only when it leaves [0, C) are the ignored ones looked at."""
    if target.size == 0 or not bool((target.min() < 0) | (target.max() >= C)):
        return
    bad = ((target < 0) | (target >= C)) & (target != ignore_index)
    if bool(bad.any()):
        raise target_error(name, int(target[bad].reshape(-1)[0]), C, ignore_index)


def log_softmax_axis1(x):
    """log_softmax along axis 1 of x (N, C, *S), stably: s = x - max(x),
    logp = s - log(sum(exp(s)))."""
    xp = get_array_module(x)
    s = x - x.max(axis=1, keepdims=True)
    return s - xp.log(xp.exp(s).sum(axis=1, keepdims=True))


def cross_entropy_forward_reference(x, target, ignore_index):
    """(logp (N, C), losses (N,), count ()): log_softmax of x, each row's
    -logp[n, target[n]] (0 where target == ignore_index), and the rows not ignored (a 0-d
    array of x's dtype: the mean's denominator, kept on the device).

    The target's log-probability is picked (gathered), not multiplied with a one-hot row,
    so a -inf log-probability of another class does not turn the loss into nan.
    """
    check_targets(target, x.shape[1], ignore_index)
    xp = get_array_module(x)
    logp = log_softmax_axis1(x)                                          # (N, C)
    valid = target != ignore_index                                       # (N,)
    safe = xp.where(valid, target, 0)                                    # any index in range
    picked = xp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]       # (N,)
    losses = -xp.where(valid, picked, xp.zeros((), logp.dtype))
    return logp, losses, valid.astype(logp.dtype).sum()


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


CROSS_ENTROPY = registry.family("cross_entropy", __doc__)
CROSS_ENTROPY.register("reference", lambda: SimpleNamespace(
    cross_entropy_forward=cross_entropy_forward_reference,
    cross_entropy_backward=cross_entropy_backward_reference))
CROSS_ENTROPY.register("numba", registry.numba_module("minidl.kernels.loss_numba"),
                       device="cpu", supports=registry.floats_on("cpu"))
CROSS_ENTROPY.register("cuda", lambda: SimpleNamespace(
    cross_entropy_forward=cross_entropy_forward_reference,
    cross_entropy_backward=cuda_kernels.cross_entropy_backward),
    device="cuda", supports=cuda_kernels.available)
