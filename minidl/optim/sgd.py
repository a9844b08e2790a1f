"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

PyTorch's update, for each parameter p with gradient g (maximize: g = -g):

    g = g + weight_decay * p
    buf = g                                       (first step)
    buf = momentum * buf + (1 - dampening) * g    (later steps)
    g = g + momentum * buf  if nesterov  else  buf      (when momentum != 0)
    p = p - lr * g
"""
from __future__ import annotations

from ..autograd import Tensor, no_grad
from .optimizer import Optimizer, _state_array, check_nonnegative


class SGD(Optimizer):
    """``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
    maximize=False)``; state per parameter: ``momentum_buffer``."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, maximize=False):
        check_nonnegative(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            dampening, wd = group["dampening"], group["weight_decay"]
            for p, g in self._gradients(group):
                if wd != 0:
                    g = g + wd * p.data
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = Tensor(g.copy())
                    else:
                        b = _state_array(buf, p)
                        b *= momentum
                        b += (1 - dampening) * g
                    g = g + momentum * buf.data if group["nesterov"] else buf.data
                p.data -= lr * g
                p._bump_version()
        return loss
