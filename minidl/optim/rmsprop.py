"""RMSprop, with PyTorch's single-tensor update (Hinton's lecture 6e, as in ``torch.optim``).

For each parameter p with gradient g (maximize: g = -g):

    g = g + weight_decay * p
    v = alpha * v + (1 - alpha) * g^2            running mean of squared gradients
    centered:  m = m + (1 - alpha) * (g - m)     running mean of gradients (lerp)
               avg = sqrt(v - m^2) + eps         an estimate of the gradient's std
    otherwise: avg = sqrt(v) + eps
    momentum > 0:  buf = momentum * buf + g / avg;   p = p - lr * buf
    otherwise:     p = p - lr * g / avg

Note that eps is added outside the square root (Adadelta adds it inside).
"""
from __future__ import annotations

from .. import backend
from ..autograd import no_grad
from .adam import _lerp_
from .optimizer import Optimizer, _state_array, check_nonnegative


class RMSprop(Optimizer):
    """``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False, maximize=False)``; state per parameter: ``step``, ``square_avg``
    (and ``momentum_buffer`` with momentum > 0, ``grad_avg`` when centered)."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False):
        check_nonnegative(
            lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            wd, momentum, centered = group["weight_decay"], group["momentum"], group["centered"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self._state(p, "square_avg",
                                    *(("momentum_buffer",) if momentum > 0 else ()),
                                    *(("grad_avg",) if centered else ()))
                state["step"] += 1
                if wd != 0:
                    g = g + wd * p.data
                v = _state_array(state["square_avg"], p)
                v *= alpha
                v += (1 - alpha) * g * g                # addcmul_ order
                if centered:
                    m = _state_array(state["grad_avg"], p)
                    _lerp_(m, g, 1 - alpha)
                    avg = xp.sqrt(v - m * m)
                else:
                    avg = xp.sqrt(v)
                avg += eps
                if momentum > 0:
                    buf = _state_array(state["momentum_buffer"], p)
                    buf *= momentum
                    buf += g / avg
                    p.data -= lr * buf
                else:
                    p.data += (-lr * g) / avg           # addcdiv_ order
                p._bump_version()
        return loss
