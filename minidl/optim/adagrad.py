"""Adagrad, with PyTorch's single-tensor update.

For each parameter p with gradient g (maximize: g = -g), at step t = 1, 2, ...:

    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    s = s + g^2                              (s starts at initial_accumulator_value)
    p = p - clr * g / (sqrt(s) + eps)

Each coordinate's step shrinks with the sum of all its past squared gradients.
"""
from __future__ import annotations

from .. import backend
from ..autograd import Tensor, no_grad
from .optimizer import Optimizer, _state_array, check_nonnegative


class Adagrad(Optimizer):
    """``Adagrad(params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
    eps=1e-10, maximize=False)``; state per parameter: ``step``, ``sum``.

    As in PyTorch the state is created at construction (so ``state_dict()`` holds every
    parameter's ``sum`` before the first step); parameters added later by
    ``add_param_group`` get theirs on their first step."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False):
        check_nonnegative(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, initial_accumulator_value=initial_accumulator_value, eps=eps)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group)

    def _init_state(self, p, group):
        xp = backend.get_array_module(p.data)
        state = self.state[p]
        state["step"] = 0
        state["sum"] = Tensor(xp.full_like(p.data, group["initial_accumulator_value"]))

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, lr_decay = group["lr"], group["lr_decay"]
            eps, wd = group["eps"], group["weight_decay"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self.state[p]
                if not state:
                    self._init_state(p, group)
                state["step"] += 1
                if wd != 0:
                    g = g + wd * p.data
                clr = lr / (1 + (state["step"] - 1) * lr_decay)
                s = _state_array(state["sum"], p)
                s += g * g
                std = xp.sqrt(s)
                std += eps
                p.data += (-clr * g) / std              # addcdiv_ order
                p._bump_version()
        return loss
