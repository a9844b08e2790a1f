"""``gradcheck``: compare autograd's gradients with central finite differences.

For a function ``y = f(x1, x2, ...)`` and a random upstream gradient ``v`` (same shape
as ``y``), autograd gives ``g_i = d(v . y)/d(x_i)`` in one backward pass. The numeric
estimate perturbs each element of each input by ``±eps``::

    g_i[j] ~= (v . f(..., x_i + eps e_j, ...) - v . f(..., x_i - eps e_j, ...)) / (2 eps)

A random ``v`` (rather than ``y.sum()``) catches transposed or permuted gradients that a
plain sum would hide. Run it in float64: with float32 the rounding error of the
difference quotient is larger than the gradients' own errors.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` with a report of the worst mismatching elements."""


def _outputs(fn, inputs):
    out = fn(*inputs)
    return out if isinstance(out, (tuple, list)) else (out,)


def _project(outputs, vs):
    """v . y summed over all differentiable outputs, as a Python float."""
    total = 0.0
    for y, v in zip(outputs, vs):
        if v is not None:
            total += float((backend.to_numpy(y.data).astype(np.float64) * v).sum())
    return total


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True,
              max_report=5):
    """Check ``fn``'s gradients with respect to every input Tensor that requires grad.

    fn: takes ``*inputs`` and returns a Tensor (or a tuple of them).
    inputs: a sequence of Tensors (float64 for a meaningful check) and other arguments.
    Passes when ``|analytic - numeric| <= atol + rtol * |numeric|`` element by element.
    Returns True, or raises ``GradcheckError`` listing the worst elements (input, index,
    analytic, numeric); with ``raise_exception=False`` returns False instead.
    """
    inputs = list(inputs)
    targets = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not targets:
        raise ValueError("gradcheck: no input requires grad; create them with requires_grad=True")
    for i in targets:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; finite "
                             "differences need float64 inputs (use .double())")

    rng = np.random.default_rng(seed)
    outputs = _outputs(fn, inputs)
    vs = [rng.standard_normal(y.shape) if y.requires_grad else None for y in outputs]
    if all(v is None for v in vs):
        raise ValueError("gradcheck: no output of fn requires grad")

    # Analytic: one backward of v . y.
    for i in targets:
        inputs[i].grad = None
    loss = None
    for y, v in zip(outputs, vs):
        if v is not None:
            xp = backend.get_array_module(y.data)
            term = (y * Tensor(xp.asarray(v, dtype=y.dtype))).sum()
            loss = term if loss is None else loss + term
    loss.backward()
    analytic = {i: (backend.to_numpy(inputs[i].grad.data) if inputs[i].grad is not None
                    else np.zeros(inputs[i].shape)) for i in targets}

    # Numeric: central differences, one element at a time, on the arrays in place.
    failures = []
    with no_grad():
        for i in targets:
            arr = inputs[i].data
            host = backend.to_numpy(arr)
            numeric = np.zeros(arr.shape)
            for j in np.ndindex(arr.shape):
                orig = host[j].item()
                arr[j] = orig + eps
                plus = _project(_outputs(fn, inputs), vs)
                arr[j] = orig - eps
                minus = _project(_outputs(fn, inputs), vs)
                arr[j] = orig
                numeric[j] = (plus - minus) / (2 * eps)
            err = np.abs(analytic[i] - numeric)
            bad = err > atol + rtol * np.abs(numeric)
            if bad.any():
                order = np.argsort(-err, axis=None)[:max_report]
                for flat in order:
                    j = np.unravel_index(flat, arr.shape)
                    if bad[j]:
                        failures.append((i, tuple(int(k) for k in j), analytic[i][j],
                                         numeric[j], err[j]))
    if not failures:
        return True
    lines = [f"gradcheck failed for {getattr(fn, '__name__', fn)!r} "
             f"(eps={eps}, atol={atol}, rtol={rtol}); worst elements:"]
    for i, j, a, n, e in failures:
        lines.append(f"  input {i} {inputs[i].shape} at {j}: analytic {a:+.8e}, "
                     f"numeric {n:+.8e}, |diff| {e:.2e}")
    if raise_exception:
        raise GradcheckError("\n".join(lines))
    return False
