"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

PyTorch's update, for each parameter p with gradient g (maximize: g = -g):

    g = g + weight_decay * p
    buf = g                                       (first step)
    buf = momentum * buf + (1 - dampening) * g    (later steps)
    g = g + momentum * buf  if nesterov  else  buf      (when momentum != 0)
    p = p - lr * g

The arithmetic is the ``sgd`` kernel family's (``minidl/kernels/optim.py``): its NumPy/CuPy
reference is these formulas; for NumPy float32/float64 parameters a numba kernel makes the
same update in one pass over each parameter, large ones split over the threads.
"""
from __future__ import annotations

from ..autograd import Tensor, no_grad
from ..kernels.optim import sgd_step
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
            options = (group["lr"], group["momentum"], group["dampening"],
                       group["weight_decay"], group["nesterov"], group["maximize"])
            momentum = group["momentum"]
            # the raw gradient: the kernel applies maximize in its single pass
            for p, g in self._gradients(group, negate=False):
                buf = None
                if momentum != 0:
                    state = self.state[p]
                    saved = state.get("momentum_buffer")
                    buf = None if saved is None else _state_array(saved, p)
                new_buf = sgd_step(p.data, g, buf, *options)
                if momentum != 0 and buf is None:
                    state["momentum_buffer"] = Tensor(new_buf)
                p._bump_version()
        return loss
