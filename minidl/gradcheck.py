"""``gradcheck``: compare autograd's gradients with central finite differences.

For a function ``y = f(x1, x2, ...)`` and a random upstream gradient ``v`` (same shape
as ``y``), autograd gives ``g_i = d(v . y)/d(x_i)`` in one backward pass. The numeric
estimate perturbs each element of each input by ``±eps``::

    g_i[j] ~= (v . f(..., x_i + eps e_j, ...) - v . f(..., x_i - eps e_j, ...)) / (2 eps)

A random ``v`` (rather than ``y.sum()``) catches transposed or permuted gradients that a
plain sum would hide. Run it in float64: with float32 the rounding error of the
difference quotient is larger than the gradients' own errors.

With ``report=True`` a failure also draws, for each failing input, an *error map*: a
character grid over one 2-D plane of the input (the last two axes; for an (N, C, H, W)
input the (H, W) plane of the first (n, c) holding a wrong element), '.' where the
gradient is right and 'X' where it is wrong. A wrong border, a stride that skips rows or a
transposed kernel then shows as a picture. ``mismatch_mask`` and ``error_map`` are public:
``minidl.explain.check_backward`` draws its maps with them.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` with a report of the worst mismatching elements."""


# ----------------------------------------------------------------------------- error maps


def mismatch_mask(actual, expected, atol=1e-5, rtol=1e-3):
    """Where ``actual`` is wrong: ``|actual - expected| > atol + rtol * |expected|``.

    actual, expected: arrays of one shape. Returns a bool array of that shape; a NaN or an
    infinity in ``actual`` counts as wrong unless ``expected`` holds the same value there.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.abs(actual - expected) <= atol + rtol * np.abs(expected)
    same_special = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    return ~(ok | same_special)


def _index_text(index, axes):
    if axes:
        return ", ".join(f"{a}={i}" for a, i in zip(axes, index))
    return ", ".join(str(i) for i in index)


def error_map(bad, name="grad", axes=None, max_rows=24, max_cols=32):
    """Draw a bool mask of wrong elements as a small character grid, '.' right, 'X' wrong.

    bad: a bool array, any number of dimensions (``mismatch_mask``'s answer).
        0-D and 1-D are drawn as one row; 2-D as rows x columns; for more dimensions the
        grid is the plane of the last two axes at the leading index of the first wrong
        element (``bad[n, c]`` of an (N, C, H, W) mask), and a line says how many of the
        planes hold wrong elements.
    name: what the mask is of, for the header (``"dx"``).
    axes: optional letters for the axes (``("n", "c", "h", "w")``) used in the labels.
    max_rows, max_cols: larger planes are cut, with a note saying so.

    Returns the lines joined by newlines (no trailing newline).
    """
    bad = np.asarray(bad, dtype=bool)
    axes = tuple(axes) if axes is not None and len(axes) == bad.ndim else None
    if bad.ndim == 0:
        return f"{name}: {'X (wrong)' if bad else '. (right)'}"
    lines = []
    if bad.ndim == 1:
        plane, title = bad[None, :], f"{name}"
        row_labels = [""]
        col_axis = axes[0] if axes else ""
        row_axis = ""
    else:
        lead_shape = bad.shape[:-2]
        if lead_shape:
            wrong_planes = bad.reshape(-1, *bad.shape[-2:]).any(axis=(1, 2))
            first = int(np.argmax(wrong_planes)) if wrong_planes.any() else 0
            lead = np.unravel_index(first, lead_shape)
            plane = bad[lead]
            title = f"{name}[{_index_text(lead, axes[:-2] if axes else None)}]"
        else:
            plane, title, wrong_planes = bad, name, None
        row_labels = [str(i) for i in range(plane.shape[0])]
        row_axis = axes[-2] if axes else ""
        col_axis = axes[-1] if axes else ""
    R, Cn = plane.shape
    shown = plane[:max_rows, :max_cols]
    dims = " x ".join(str(d) for d in (plane.shape if bad.ndim > 1 else bad.shape))
    lines.append(f"{title} ({dims}): '.' right, 'X' wrong, {int(plane.sum())} of "
                 f"{plane.size} wrong")
    width = max([len(row_axis) + 1 + len(r) for r in row_labels] + [len(col_axis) + 1])
    header = " ".join(str(j % 10) for j in range(shown.shape[1]))
    lines.append(f"  {col_axis:>{width}} {header}".rstrip() if col_axis else
                 f"  {'':>{width}} {header}")
    for i, row in enumerate(shown):
        label = row_labels[i] if i < len(row_labels) else ""
        if row_axis and i == 0:
            label = f"{row_axis} {label}"
        cells = " ".join("X" if v else "." for v in row)
        lines.append(f"  {label:>{width}} {cells}")
    if R > max_rows or Cn > max_cols:
        lines.append(f"  (cut to the first {shown.shape[0]} rows and {shown.shape[1]} "
                     f"columns of {R} x {Cn})")
    if bad.ndim > 2 and wrong_planes is not None and wrong_planes.size > 1:
        which = "(" + ", ".join(axes[:-2]) + ")" if axes else "leading-index"
        lines.append(f"  wrong elements in {int(wrong_planes.sum())} of {wrong_planes.size} "
                     f"{which} planes")
    return "\n".join(lines)


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
              max_report=5, report=False):
    """Check ``fn``'s gradients with respect to every input Tensor that requires grad.

    fn: takes ``*inputs`` and returns a Tensor (or a tuple of them).
    inputs: a sequence of Tensors (float64 for a meaningful check) and other arguments.
    Passes when ``|analytic - numeric| <= atol + rtol * |numeric|`` element by element.
    Returns True, or raises ``GradcheckError`` listing the worst elements (input, index,
    analytic, numeric); with ``raise_exception=False`` returns False instead.
    report: on failure also draw an error map ('.' right, 'X' wrong) of each failing input
    (see ``error_map``): inside the GradcheckError's message, or printed when
    ``raise_exception=False``.
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
    maps = []
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
                if report:
                    maps.append(error_map(bad, name=f"input {i} {tuple(arr.shape)}"))
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
    if maps:
        lines.append("error maps (analytic vs numeric):")
        lines += ["  " + line for m in maps for line in m.splitlines()]
    if raise_exception:
        raise GradcheckError("\n".join(lines))
    if report:
        print("\n".join(lines))
    return False


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Check ``fn``'s second derivatives: ``gradcheck`` of its recorded first derivatives.

    The function checked is ``(inputs, v) -> d(v . fn(inputs)) / d(inputs)``, computed
    with ``autograd.grad(..., create_graph=True)`` for random upstream gradients ``v``
    that are themselves inputs (float64, requiring grad), so both the gradient's
    dependence on the inputs (the Hessian part) and on ``v`` (the backward being linear
    in its upstream gradient) are compared with central differences.
    Arguments and result as ``gradcheck``'s.
    """
    from . import autograd  # the module, for autograd.grad

    inputs = list(inputs)
    targets = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not targets:
        raise ValueError("gradgradcheck: no input requires grad; create them with "
                         "requires_grad=True")
    rng = np.random.default_rng(seed + 1)
    with autograd.enable_grad():
        outputs = [y for y in _outputs(fn, inputs) if y.requires_grad]
    if not outputs:
        raise ValueError("gradgradcheck: no output of fn requires grad")
    vs = []
    for y in outputs:
        xp = backend.get_array_module(y.data)
        vs.append(Tensor(xp.asarray(rng.standard_normal(y.shape), dtype=y.dtype),
                         requires_grad=True))
    n = len(inputs)

    def first_derivatives(*args):
        ins, v = list(args[:n]), args[n:]
        with autograd.enable_grad():  # gradcheck's numeric half runs under no_grad
            outs = [y for y in _outputs(fn, ins) if y.requires_grad]
            grads = autograd.grad(outs, [ins[i] for i in targets], v, create_graph=True,
                                  materialize_grads=True)
        return tuple(grads)

    first_derivatives.__name__ = f"gradients of {getattr(fn, '__name__', fn)}"
    return gradcheck(first_derivatives, inputs + vs, eps=eps, atol=atol, rtol=rtol,
                     seed=seed, raise_exception=raise_exception)
