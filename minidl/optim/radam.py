"""RAdam: Adam with a rectified adaptive step (Liu et al., 2019), with PyTorch's
single-tensor update.

For each parameter p with gradient g (maximize: g = -g), at step t = 1, 2, ...:

    RAdam: g = g + weight_decay * p      decoupled_weight_decay: p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)            (lerp, as PyTorch)
    v = beta2 * v + (1 - beta2) * g^2
    m_hat = m / (1 - beta1^t)
    rho_inf = 2 / (1 - beta2) - 1            the longest simple moving average v stands for
    rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                p = p - lr * m_hat * sqrt(1 - beta2^t) / (sqrt(v) + eps) * r
    otherwise:  p = p - lr * m_hat           (v too young to trust: plain momentum SGD)
"""
from __future__ import annotations

from .. import backend
from ..autograd import no_grad
from .adam import _lerp_
from .optimizer import Optimizer, _state_array, check_betas, check_nonnegative


class RAdam(Optimizer):
    """``RAdam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    decoupled_weight_decay=False, maximize=False)``; state per parameter: ``step``,
    ``exp_avg``, ``exp_avg_sq``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, maximize=False):
        check_nonnegative(lr=lr, eps=eps)
        check_betas(betas)
        check_nonnegative(weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self._state(p, "exp_avg", "exp_avg_sq")
                state["step"] += 1
                step = state["step"]
                if wd != 0:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1 - lr * wd
                    else:
                        g = g + wd * p.data
                m = _state_array(state["exp_avg"], p)
                v = _state_array(state["exp_avg_sq"], p)
                _lerp_(m, g, 1 - beta1)
                v *= beta2
                v += (1 - beta2) * g * g                # addcmul_ order
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                m_hat = m / bias_correction1
                rho_inf = 2 / (1 - beta2) - 1
                rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
                if rho_t > 5.0:
                    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                            / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                    denom = xp.sqrt(v)
                    denom += eps
                    # PyTorch computes scalar / tensor as reciprocal(tensor) * scalar
                    adaptive_lr = (1 / denom) * bias_correction2 ** 0.5
                    p.data -= m_hat * lr * adaptive_lr * rect
                else:
                    p.data -= m_hat * lr
                p._bump_version()
        return loss
