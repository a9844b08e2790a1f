"""``minidl.nn.utils``: gradient clipping and flattening parameters, as ``torch.nn.utils``.

- ``clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False)``:
  scale every gradient by ``max_norm / (total_norm + 1e-6)`` when that is below 1, where
  ``total_norm`` is the norm of all gradients together (as if concatenated into one
  vector); returns ``total_norm``, a 0-d tensor (what training scripts log).
- ``clip_grad_value_(parameters, clip_value)``: clamp every gradient into
  ``[-clip_value, clip_value]``.
- ``parameters_to_vector(parameters)`` -> one 1-d tensor (differentiable);
  ``vector_to_parameters(vec, parameters)``: the inverse, the parameters' arrays become
  slices of ``vec``'s array.

``parameters`` is a tensor or an iterable of tensors (``model.parameters()``); those
without a ``.grad`` are skipped by the clipping functions. The gradients are changed in
place, outside any graph (with ``no_grad``), as an optimiser changes weights.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, ops
from ..autograd import Tensor, no_grad

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector",
           "vector_to_parameters"]


def _tensors(parameters, name):
    """``parameters`` (one Tensor or an iterable of them) as a list of Tensors."""
    if isinstance(parameters, Tensor):
        return [parameters]
    params = list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: expected Tensors (e.g. model.parameters()), got a "
                            f"{type(p).__name__}")
    return params


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    """Scale the gradients of ``parameters`` so that their total norm is at most
    ``max_norm``; returns the total norm *before* clipping, a 0-d tensor.

    ``total_norm = (sum over all gradient elements g of |g|^p)^(1/p)`` for
    ``norm_type = p`` (``float('inf')``: the largest |g|). Every gradient is multiplied
    by ``min(1, max_norm / (total_norm + 1e-6))`` (the 1e-6 keeps a zero norm finite).
    ``error_if_nonfinite=True`` raises instead when the total norm is NaN or infinite
    (by default such a norm scales the gradients to NaN, as in PyTorch). ``foreach`` is
    accepted for PyTorch compatibility and ignored.
    """
    grads = [p.grad for p in _tensors(parameters, "clip_grad_norm_") if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return Tensor(0.0)
    xp = backend.get_array_module(grads[0].data)
    devices = {g.device for g in grads}
    if len(devices) > 1:
        raise RuntimeError(f"clip_grad_norm_: expected every gradient on one device, got "
                           f"{sorted(str(d) for d in devices)}")
    # Per-gradient norms first (each reduced in its own dtype), then the norm of those
    # norms: the same number as the norm of all gradients concatenated, without the copy.
    if math.isinf(norm_type):
        norms = [xp.abs(g.data).max() if g.data.size else xp.zeros((), g.dtype)
                 for g in grads]
        total = xp.stack(norms).max()
    else:
        norms = [(xp.abs(g.data) ** norm_type).sum() ** (1.0 / norm_type) for g in grads]
        total = (xp.stack(norms) ** norm_type).sum() ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
            f"{float(total)}, which is not finite, so it cannot be clipped. To scale the "
            "gradients by the non-finite norm anyway (they become NaN), pass "
            "error_if_nonfinite=False")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)    # (), <= 1: never scales up
    # (an infinite norm makes coef 0 and inf * 0 a NaN: asked for, so NumPy's warning is not)
    with no_grad(), np.errstate(invalid="ignore"):
        for g in grads:
            g.mul_(Tensor(coef.astype(g.dtype)))
    return Tensor(total)


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient of ``parameters`` into ``[-clip_value, clip_value]``, in
    place; returns None. ``foreach`` is accepted and ignored."""
    clip_value = float(clip_value)
    with no_grad():
        for p in _tensors(parameters, "clip_grad_value_"):
            if p.grad is not None:
                p.grad.clamp_(min=-clip_value, max=clip_value)


def parameters_to_vector(parameters):
    """The parameters flattened and concatenated, in order: one 1-d tensor of
    ``sum(p.numel())`` elements, differentiable (its gradient reaches the parameters)."""
    params = _tensors(parameters, "parameters_to_vector")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise TypeError(f"parameters_to_vector: expected every parameter on one device, "
                        f"got {sorted(str(d) for d in devices)}")
    return ops.cat([ops.reshape(p, (-1,)) for p in params])


def vector_to_parameters(vec, parameters):
    """Copy the slices of the 1-d tensor ``vec`` into ``parameters``, in order (the
    inverse of ``parameters_to_vector``). As in PyTorch, each parameter's array becomes a
    view of ``vec``'s (reshaped; cast when its dtype differs), not a copy; the parameters
    stay leaves."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"vector_to_parameters: expected vec to be a Tensor, got "
                        f"{type(vec).__name__}")
    params = _tensors(parameters, "vector_to_parameters")
    total = sum(p.numel() for p in params)
    if vec.ndim != 1 or vec.numel() != total:
        raise ValueError(f"vector_to_parameters: expected a 1-d vec of {total} elements "
                         f"(the parameters' sum of numel()), got shape {vec.shape}")
    start = 0
    for p in params:
        if p.device != vec.device:
            raise TypeError(f"vector_to_parameters: vec is on {vec.device} but a parameter "
                            f"is on {p.device}")
        n = p.numel()
        piece = vec.data[start:start + n].reshape(p.shape)
        p.data = piece if piece.dtype == p.dtype else piece.astype(p.dtype)
        start += n
