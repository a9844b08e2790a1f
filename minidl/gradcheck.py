"""``gradcheck``: compare autograd's gradients with central finite differences, and check
that backward behaves.

For a function ``y = f(x1, x2, ...)`` and a random upstream gradient ``v`` (same shape
as ``y``), autograd gives ``g_i = d(v . y)/d(x_i)`` in one backward pass. The numeric
estimate perturbs each element of each input by ``±eps``::

    g_i[j] ~= (v . f(..., x_i + eps e_j, ...) - v . f(..., x_i - eps e_j, ...)) / (2 eps)

A random ``v`` (rather than ``y.sum()``) catches transposed or permuted gradients that a
plain sum would hide. Run it in float64: with float32 the rounding error of the
difference quotient is larger than the gradients' own errors.

``fast_mode=True`` (PyTorch's keyword) checks one random direction ``u_i`` per input
instead of every element: the analytic side is ``<g_i, u_i>`` from the same backward, the
numeric side one central difference along ``u_i``::

    <g_i, u_i> ~= (v . f(..., x_i + eps u_i, ...) - v . f(..., x_i - eps u_i, ...)) / (2 eps)

Two forward calls per input instead of two per element, so it runs at realistic sizes
(an (8, 16, 32, 32) convolution). A wrong gradient almost surely changes a random
projection; what it cannot say is *which* elements are wrong (use the full mode on a
small case for that).

Besides the values, every check also verifies what a backward must do (Chainer's
``check_backward`` and ``torch.autograd.gradcheck`` do the same):

* **dtype, shape, device**: the gradient backward hands to each input has the input's
  dtype, shape and device. The engine casts a leaf's ``.grad`` to the leaf's dtype, which
  would hide a float32 gradient computed for a float64 input; so gradcheck looks at the
  gradients *before* they reach the inputs: each input enters ``fn`` through a
  pass-through node (``_Watch``) whose backward records what arrives (the sum of what
  every consumer's backward returned for that input).
* **determinism**: backward runs twice on the same graph; the two gradients must agree
  within ``nondet_tol`` (0.0 by default: bit for bit).
* **linearity at zero**: a zero upstream gradient must give zero gradients (or none) for
  every input (within ``nondet_tol``); a backward that ignores its upstream gradient, or
  adds a constant to it, fails here.

With ``raise_exception=False`` the answer is a ``GradcheckResult``: falsy on failure,
truthy on success, holding the failing elements, the largest error and the report text.

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
from .autograd import Function, Tensor, enable_grad, no_grad


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` with a report of the worst mismatching elements."""


class GradcheckResult:
    """What ``gradcheck(..., raise_exception=False)`` returns: falsy when a check failed,
    truthy when all passed (``assert not gradcheck(bad, xs, raise_exception=False)``).

    ok: whether every check passed.
    failures: the worst wrong elements, a list of ``(input index, element index, analytic,
        numeric, abs error)``; the element index is None in fast mode (one direction).
    problems: the failed backward checks other than values, as sentences (dtype, shape or
        device of a gradient; non-determinism; a nonzero gradient from a zero upstream).
    max_abs_error: the largest ``|analytic - numeric|`` over everything compared.
    message: the report text (also ``str(result)``).
    """

    def __init__(self, failures, problems, max_abs_error, message):
        self.failures = failures
        self.problems = problems
        self.max_abs_error = max_abs_error
        self.message = message

    @property
    def ok(self):
        return not self.failures and not self.problems

    def __bool__(self):
        return self.ok

    def __str__(self):
        return self.message

    def __repr__(self):
        return (f"GradcheckResult(ok={self.ok}, failures={len(self.failures)}, "
                f"problems={len(self.problems)}, max_abs_error={self.max_abs_error:.3e})")


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


def _targets(inputs):
    """Indices of the inputs to check: Tensors that require grad, all float64."""
    targets = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not targets:
        raise ValueError("gradcheck: no input requires grad; create them with requires_grad=True")
    for i in targets:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; finite "
                             "differences need float64 inputs (use .double())")
    return targets


# ----------------------------------------------------------------------------- analytic


class _Watch(Function):
    """The identity, whose backward records the gradient arriving for its input.

    gradcheck passes each checked input through one, so that it sees what the backward of
    ``fn`` produced for that input exactly as produced (dtype, shape, device), before the
    engine casts it into a leaf's ``.grad``. It passes nothing on: the inputs' own
    ``.grad`` are left as they were.
    """

    _view = True  # the output is the input's array itself

    @staticmethod
    def forward(ctx, x, log):
        ctx.log = log
        return x

    @staticmethod
    def backward(ctx, gy):
        ctx.log.append(gy)
        return None


def _backward_through(outputs, vs, retain_graph):
    """One backward pass of ``sum_k v_k . y_k`` through the outputs' graph."""
    loss = None
    for y, v in zip(outputs, vs):
        if v is not None:
            xp = backend.get_array_module(y.data)
            term = (y * Tensor(xp.asarray(v, dtype=y.dtype))).sum()
            loss = term if loss is None else loss + term
    loss.backward(retain_graph=retain_graph)


def _watched_outputs(fn, inputs, targets):
    """Run ``fn`` (recording) with each checked input behind a ``_Watch``. Returns the
    outputs and, per checked input, the list its watch appends arriving gradients to."""
    logs = {i: [] for i in targets}
    with enable_grad():
        watched = [_Watch.apply(t, log=logs[i]) if i in logs else t for i, t in enumerate(inputs)]
        outputs = _outputs(fn, watched)
    return outputs, logs


def _backward_passes(outputs, logs, vs):
    """Three backward passes through the same graph: with ``v``, with ``v`` again (the
    determinism check) and with a zero upstream gradient. Returns ``(first, second,
    zero)``: per pass, a dict input index -> the gradient array backward produced for it
    (None when none reached it)."""
    zeros = [None if v is None else np.zeros_like(v) for v in vs]
    passes = []
    for upstream, retain in ((vs, True), (vs, True), (zeros, False)):
        for log in logs.values():
            log.clear()
        _backward_through(outputs, upstream, retain)
        passes.append({i: (log[0] if log else None) for i, log in logs.items()})
    return passes


def _check_gradient_kinds(inputs, grads):
    """Each gradient has its input's dtype, shape and device. Returns the problems found
    as sentences, and the set of inputs whose gradient has the wrong shape (their values
    cannot be compared)."""
    problems, bad_shape = [], set()
    for i, g in grads.items():
        if g is None:
            continue
        x = inputs[i]
        if tuple(g.shape) != x.shape:
            problems.append(f"the gradient of input {i} has shape {tuple(g.shape)}, expected "
                            f"{x.shape} (the input's shape)")
            bad_shape.add(i)
        if g.dtype != x.dtype:
            problems.append(f"the gradient of input {i} has dtype {g.dtype}, expected "
                            f"{x.dtype} (the input's dtype)")
        if backend.device_of(g) != x.device:
            problems.append(f"the gradient of input {i} is on {backend.device_of(g)}, "
                            f"expected {x.device} (the input's device)")
    return problems, bad_shape


def _check_deterministic(first, second, nondet_tol):
    """The two backward passes with the same upstream gradient agree within nondet_tol."""
    problems = []
    for i in first:
        a, b = first[i], second[i]
        if (a is None) != (b is None):
            problems.append(f"backward is non-deterministic: input {i} got a gradient in "
                            "one of two identical backward passes and none in the other")
            continue
        if a is None or a.shape != b.shape:
            continue
        diff = np.abs(backend.to_numpy(a).astype(np.float64) -
                      backend.to_numpy(b).astype(np.float64))
        worst = float(np.nanmax(diff)) if diff.size else 0.0
        if worst > nondet_tol or (np.isnan(diff).any() and not np.array_equal(
                backend.to_numpy(a), backend.to_numpy(b), equal_nan=True)):
            problems.append(f"backward is non-deterministic: two backward passes with the "
                            f"same upstream gradient differ by up to {worst:.3e} for input "
                            f"{i} (nondet_tol={nondet_tol})")
    return problems


def _check_zero_upstream(zero, nondet_tol):
    """A zero upstream gradient gives zero gradients (or none): backward is linear in it.
    Zero within ``nondet_tol``: a backward allowed that much noise is allowed it here."""
    problems = []
    for i, g in zero.items():
        if g is None:
            continue
        g = np.abs(backend.to_numpy(g).astype(np.float64))
        nonzero = int(np.count_nonzero(~(g <= nondet_tol)))   # NaN counts as nonzero
        if nonzero:
            problems.append(f"a zero upstream gradient gave a nonzero gradient for input {i} "
                            f"({nonzero} of {g.size} elements, largest {float(np.max(g)):.3e}):"
                            " backward must multiply by its upstream gradient")
    return problems


# ----------------------------------------------------------------------------- numeric


def _numeric_full(fn, inputs, i, vs, eps):
    """d(v . f)/d(x_i) by central differences, one element at a time, on the array in
    place (restored after each element)."""
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
    return numeric


def _numeric_direction(fn, inputs, i, u, vs, eps):
    """d(v . f)/d(x_i) . u: one central difference along direction ``u`` (x_i's shape)."""
    arr = inputs[i].data
    xp = backend.get_array_module(arr)
    orig = arr.copy()
    step = xp.asarray(eps * u, dtype=arr.dtype)
    arr[...] = orig + step
    plus = _project(_outputs(fn, inputs), vs)
    arr[...] = orig - step
    minus = _project(_outputs(fn, inputs), vs)
    arr[...] = orig
    return (plus - minus) / (2 * eps)


def _compare_full(fn, inputs, targets, analytic, vs, eps, atol, rtol, max_report, report):
    """Every element of every checked input: (failures, max abs error, error maps)."""
    failures, maps, max_err = [], [], 0.0
    for i in targets:
        numeric = _numeric_full(fn, inputs, i, vs, eps)
        err = np.abs(analytic[i] - numeric)
        if err.size:  # a NaN on either side is as wrong as it gets
            max_err = max(max_err, float(np.max(np.nan_to_num(err, nan=np.inf))))
        bad = mismatch_mask(analytic[i], numeric, atol, rtol)
        if not bad.any():
            continue
        if report:
            maps.append(error_map(bad, name=f"input {i} {inputs[i].shape}"))
        order = np.argsort(-np.nan_to_num(err, nan=np.inf), axis=None)
        worst = [np.unravel_index(f, err.shape) for f in order if bad.flat[f]][:max_report]
        failures += [(i, tuple(int(k) for k in j), analytic[i][j], numeric[j], err[j])
                     for j in worst]
    return failures, max_err, maps


def _compare_fast(fn, inputs, targets, analytic, vs, eps, atol, rtol, rng):
    """One random direction per checked input: (failures, max abs error)."""
    failures, max_err = [], 0.0
    for i in targets:
        u = rng.standard_normal(inputs[i].shape)
        a = float((analytic[i] * u).sum())
        n = _numeric_direction(fn, inputs, i, u, vs, eps)
        err = abs(a - n)
        max_err = max(max_err, err)
        if mismatch_mask(a, n, atol, rtol):
            failures.append((i, None, a, n, err))
    return failures, max_err


# ----------------------------------------------------------------------------- the report


def _message(fn, inputs, failures, problems, maps, eps, atol, rtol, fast_mode):
    name = getattr(fn, "__name__", fn)
    if not failures and not problems:
        return f"gradcheck passed for {name!r} (eps={eps}, atol={atol}, rtol={rtol})"
    lines = [f"gradcheck failed for {name!r} (eps={eps}, atol={atol}, rtol={rtol}"
             f"{', fast_mode' if fast_mode else ''}):"]
    lines += [f"  {p}" for p in problems]
    if failures and fast_mode:
        lines.append("  gradients along a random direction u (<grad, u> against a central "
                     "difference along u):")
        for i, _, a, n, e in failures:
            rel = e / abs(n) if n else np.inf
            lines.append(f"  input {i} {inputs[i].shape}: analytic {a:+.8e}, numeric "
                         f"{n:+.8e}, |diff| {e:.2e}, relative {rel:.2e}")
    elif failures:
        lines.append("  worst elements:")
        for i, j, a, n, e in failures:
            lines.append(f"  input {i} {inputs[i].shape} at {j}: analytic {a:+.8e}, "
                         f"numeric {n:+.8e}, |diff| {e:.2e}")
    if maps:
        lines.append("error maps (analytic vs numeric):")
        lines += ["  " + line for m in maps for line in m.splitlines()]
    return "\n".join(lines)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True,
              max_report=5, report=False, nondet_tol=0.0, fast_mode=False):
    """Check ``fn``'s gradients with respect to every input Tensor that requires grad.

    fn: takes ``*inputs`` and returns a Tensor (or a tuple of them).
    inputs: a sequence of Tensors (float64 for a meaningful check) and other arguments.
    Passes when ``|analytic - numeric| <= atol + rtol * |numeric|`` element by element (in
    fast mode: for one random direction per input), and backward passes the checks of the
    module docstring: every gradient with its input's dtype, shape and device; two backward
    passes within ``nondet_tol`` of each other; zero gradients from a zero upstream.
    fast_mode: check ``<grad, u>`` along one random direction ``u`` per input instead of
        every element (two forward calls per input: realistic sizes).
    seed: for the random upstream gradient and the directions.
    Returns True, or raises ``GradcheckError`` with a report (the worst ``max_report``
    elements of each input: index, analytic, numeric); with ``raise_exception=False`` it
    returns a ``GradcheckResult`` instead, falsy on failure and truthy on success.
    report: on failure also draw an error map ('.' right, 'X' wrong) of each failing input
    (see ``error_map``; not in fast mode, which has no elements): inside the
    GradcheckError's message, or printed when ``raise_exception=False``.
    The inputs' ``.grad`` are left as they were.
    """
    inputs = list(inputs)
    targets = _targets(inputs)
    rng = np.random.default_rng(seed)
    outputs, logs = _watched_outputs(fn, inputs, targets)
    vs = [rng.standard_normal(y.shape) if y.requires_grad else None for y in outputs]
    if all(v is None for v in vs):
        raise ValueError("gradcheck: no output of fn requires grad")

    first, second, zero = _backward_passes(outputs, logs, vs)
    problems, bad_shape = _check_gradient_kinds(inputs, first)
    problems += _check_deterministic(first, second, nondet_tol)
    problems += _check_zero_upstream(zero, nondet_tol)

    compared = [i for i in targets if i not in bad_shape]
    analytic = {i: (backend.to_numpy(first[i]).astype(np.float64) if first[i] is not None
                    else np.zeros(inputs[i].shape)) for i in compared}
    maps = []
    with no_grad():
        if fast_mode:
            failures, max_err = _compare_fast(fn, inputs, compared, analytic, vs, eps, atol,
                                              rtol, rng)
        else:
            failures, max_err, maps = _compare_full(fn, inputs, compared, analytic, vs, eps,
                                                    atol, rtol, max_report, report)
    message = _message(fn, inputs, failures, problems, maps, eps, atol, rtol, fast_mode)
    result = GradcheckResult(failures, problems, max_err, message)
    if raise_exception:
        if not result:
            raise GradcheckError(message)
        return True
    if report and not result:
        print(message)
    return result


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True,
                  fast_mode=False, nondet_tol=0.0):
    """Check ``fn``'s second derivatives: ``gradcheck`` of its recorded first derivatives.

    The function checked is ``(inputs, v) -> d(v . fn(inputs)) / d(inputs)``, computed
    with ``autograd.grad(..., create_graph=True)`` for random upstream gradients ``v``
    that are themselves inputs (float64, requiring grad), so both the gradient's
    dependence on the inputs (the Hessian part) and on ``v`` (the backward being linear
    in its upstream gradient) are compared with central differences.
    Arguments and result as ``gradcheck``'s (``fast_mode`` checks one random direction
    of the second derivatives, for realistic sizes).
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
                     seed=seed, raise_exception=raise_exception, fast_mode=fast_mode,
                     nondet_tol=nondet_tol)
