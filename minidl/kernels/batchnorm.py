"""The batch-norm kernel family: per-channel statistics, the normalisation, and its gradients.

Raw arrays in, raw arrays out, no autograd (``minidl.ops.norm`` wraps these in a Function
and holds the formulas' derivation).

Shape letters used throughout::

    N    batch size
    C    channels: every statistic is per channel
    *S   the other dims (none, L, or H, W);  S = prod(*S) when flattened
    m    values per channel: m = N * S

    x, y, gy, gx                                      (N, C, *S)
    mean, var, inv_std, weight, bias, gbias, gweight  (C,), in x's dtype

The four steps, as the reference writes them (every sum over the m values of a channel)::

    batch_stats:  mean    = sum(x) / m,   var = sum((x - mean)^2) / m        (biased)
    normalize:    y       = weight * (x - mean) * inv_std + bias
    grad_sums:    gbias   = sum(gy),      gweight = sum(gy * xhat),  xhat = (x - mean) * inv_std
    input_grad:   gx      = weight * inv_std / m * (m * gy - gbias - xhat * gweight)   (training)
                  gx      = weight * inv_std * gy                                  (evaluation)

``xhat`` is never stored: the backward pass recomputes it from x, mean and inv_std
(x is alive anyway as the op's input), which saves one (N, C, *S) array per layer and
one pass over memory.

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one), each with
the four functions ``batch_stats``, ``normalize``, ``grad_sums``, ``input_grad``:

* ``reference`` (``batchnorm_reference.py``): the formulas above as whole-array
  expressions, on either device; the definition the others are tested against, and what
  every other dtype (float16) takes.
* ``numba`` (``batchnorm_numba.py``): NumPy float32/float64 arrays; one pass over the
  data per step, float64 sums (Chan's merge of per-plane two-pass statistics: no
  ``E[x^2] - E[x]^2`` cancellation), serial unless the thread policy allows more.
* ``cuda``: CuPy float32/float64 arrays; ``normalize`` and ``input_grad`` are one fused
  CUDA kernel each (``cuda_kernels.bn_normalize`` / ``bn_input_grad``, where the
  reference's expressions launch six), the per-channel sums are the reference's (CuPy's
  own reductions).

The choice looks at the data array of each call: x for ``batch_stats``, ``normalize``
and ``grad_sums``, gy for ``input_grad`` (the per-channel vectors follow it).
"""
from __future__ import annotations

from types import SimpleNamespace

from . import batchnorm_reference, cuda_kernels, registry

__all__ = ["BATCH_NORM", "batch_stats", "normalize", "grad_sums", "input_grad"]

BATCH_NORM = registry.family("batch_norm", __doc__)
BATCH_NORM.register("reference", lambda: batchnorm_reference)
BATCH_NORM.register("numba", registry.numba_module("minidl.kernels.batchnorm_numba"),
                    device="cpu")
BATCH_NORM.register("cuda", lambda: SimpleNamespace(
                        batch_stats=batchnorm_reference.batch_stats,
                        normalize=cuda_kernels.bn_normalize,
                        grad_sums=batchnorm_reference.grad_sums,
                        input_grad=cuda_kernels.bn_input_grad),
                    device="cuda", supports=cuda_kernels.available)


def batch_stats(x):
    """(mean, var): the per-channel mean and biased variance of x (N, C, *S), (C,) each."""
    return BATCH_NORM.code(x).batch_stats(x)


def normalize(x, mean, inv_std, weight=None, bias=None):
    """y (N, C, *S) = weight * (x - mean) * inv_std + bias (weight, bias may be None)."""
    return BATCH_NORM.code(x).normalize(x, mean, inv_std, weight, bias)


def grad_sums(gy, x, mean, inv_std):
    """(gbias, gweight) = (sum(gy), sum(gy * xhat)) per channel, (C,) each."""
    return BATCH_NORM.code(x).grad_sums(gy, x, mean, inv_std)


def input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """gx (N, C, *S), the input's gradient, training or evaluation mode (formulas above)."""
    return BATCH_NORM.code(gy).input_grad(gy, x, mean, inv_std, weight, gbias, gweight,
                                          training)
