"""NAdam: Adam with Nesterov momentum (Dozat, 2016), with PyTorch's single-tensor update.

For each parameter p with gradient g (maximize: g = -g), at step t = 1, 2, ...:

    NAdam: g = g + weight_decay * p      decoupled_weight_decay: p = p * (1 - lr * weight_decay)
    mu_t     = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))     the momentum schedule
    mu_{t+1} = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
    P_t = mu_1 * mu_2 * ... * mu_t                               (state 'mu_product')
    m = m + (1 - beta1) * (g - m)            (lerp, as PyTorch)
    v = beta2 * v + (1 - beta2) * g^2
    denom = sqrt(v / (1 - beta2^t)) + eps
    p = p - lr * (1 - mu_t) / (1 - P_t) * g / denom                 the gradient's share
    p = p - lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * m / denom        the look-ahead momentum
"""
from __future__ import annotations

from .. import backend
from ..autograd import no_grad
from .adam import _lerp_
from .optimizer import Optimizer, _state_array, check_betas, check_nonnegative


class NAdam(Optimizer):
    """``NAdam(params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)``; state per
    parameter: ``step``, ``mu_product`` (a Python float), ``exp_avg``, ``exp_avg_sq``."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False):
        check_nonnegative(lr=lr, eps=eps)
        check_betas(betas)
        check_nonnegative(weight_decay=weight_decay, momentum_decay=momentum_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd, psi = group["eps"], group["weight_decay"], group["momentum_decay"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self._state(p, "exp_avg", "exp_avg_sq", mu_product=1.0)
                state["step"] += 1
                step = state["step"]
                bias_correction2 = 1 - beta2 ** step
                if wd != 0:
                    if group["decoupled_weight_decay"]:
                        p.data *= 1 - lr * wd
                    else:
                        g = g + wd * p.data
                mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
                mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
                state["mu_product"] *= mu
                mu_product = state["mu_product"]
                mu_product_next = mu_product * mu_next
                m = _state_array(state["exp_avg"], p)
                v = _state_array(state["exp_avg_sq"], p)
                _lerp_(m, g, 1 - beta1)
                v *= beta2
                v += (1 - beta2) * g * g                # addcmul_ order
                denom = xp.sqrt(v / bias_correction2)
                denom += eps
                p.data += (-lr * (1.0 - mu) / (1.0 - mu_product)) * g / denom
                p.data += ((-lr * mu_next) / (1.0 - mu_product_next)) * m / denom
                p._bump_version()
        return loss
