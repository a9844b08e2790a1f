"""Adam and AdamW (decoupled weight decay), with PyTorch's single-tensor update.

For each parameter p with gradient g (maximize: g = -g), at step t = 1, 2, ...:

    Adam:  g = g + weight_decay * p          AdamW: p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)            (lerp, as PyTorch)
    v = beta2 * v + (1 - beta2) * g^2
    v_max = max(v_max, v)                    (amsgrad: used in place of v below)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
from __future__ import annotations

from .. import backend
from ..autograd import no_grad
from .optimizer import Optimizer, _state_array, check_betas, check_nonnegative


def _lerp_(start, end, weight):
    """``start += weight * (end - start)`` in place, with PyTorch's two-sided formula."""
    if weight < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1 - weight)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
    maximize=False)``; state per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``
    (and ``max_exp_avg_sq`` with amsgrad)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False):
        check_nonnegative(lr=lr, eps=eps)
        check_betas(betas)
        check_nonnegative(weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd, amsgrad = group["eps"], group["weight_decay"], group["amsgrad"]
            for p, g in self._gradients(group):
                xp = backend.get_array_module(p.data)
                state = self._state(p, "exp_avg", "exp_avg_sq",
                                    *(("max_exp_avg_sq",) if amsgrad else ()))
                state["step"] += 1
                step = state["step"]
                if wd != 0:
                    if self._decoupled:
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
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5
                if amsgrad:
                    vmax = _state_array(state["max_exp_avg_sq"], p)
                    xp.maximum(vmax, v, out=vmax)
                    denom = xp.sqrt(vmax) / bias_correction2_sqrt + eps
                else:
                    denom = xp.sqrt(v) / bias_correction2_sqrt + eps
                p.data += (-step_size * m) / denom       # addcdiv_ order
                p._bump_version()
        return loss


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
    amsgrad=False, maximize=False)``: Adam with weight decay applied to the parameter
    directly (p *= 1 - lr * weight_decay) instead of being added to the gradient."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
