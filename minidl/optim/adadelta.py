"""Adadelta, with PyTorch's single-tensor update.

For each parameter p with gradient g (maximize: g = -g):

    g = g + weight_decay * p
    v = rho * v + (1 - rho) * g^2                        running mean of squared gradients
    delta = sqrt(u + eps) / sqrt(v + eps) * g            u: running mean of squared updates
    u = rho * u + (1 - rho) * delta^2
    p = p - lr * delta

The ratio of the two root-mean-squares gives the update the units of p, so lr=1.0 works.
"""
from __future__ import annotations

from .. import backend
from ..autograd import no_grad
from .optimizer import Optimizer, _state_array, check_nonnegative


class Adadelta(Optimizer):
    """``Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False)``;
    state per parameter: ``step``, ``square_avg`` (v), ``acc_delta`` (u)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False):
        check_nonnegative(lr=lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative(eps=eps, weight_decay=weight_decay)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self._state(p, "square_avg", "acc_delta")
                state["step"] += 1
                if wd != 0:
                    g = g + wd * p.data
                v = _state_array(state["square_avg"], p)
                u = _state_array(state["acc_delta"], p)
                v *= rho
                v += (1 - rho) * g * g                  # addcmul_ order
                std = xp.sqrt(v + eps)
                delta = xp.sqrt(u + eps) / std * g
                u *= rho
                u += (1 - rho) * delta * delta
                p.data -= lr * delta
                p._bump_version()
        return loss
