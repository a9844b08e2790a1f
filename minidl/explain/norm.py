"""``explain.batch_norm``: batch normalisation in training mode, forward and backward, with
the three paths of dX shown one by one.

Shape letters (as in ``minidl/ops/norm.py``)::

    N   batch size        C   channels        *S  the other dims: none, or H, W
    m   values per channel: m = N * prod(S)
    x, y, dY, dX   (N, C, *S), shown per channel as a (C, m) table: row c holds every
                   value of channel c, its columns labelled n (for (N, C)) or (n,h,w)
    gamma, beta, mean, var, inv_std, dgamma, dbeta   (C,)

Forward, per channel c (statistics over the m values of the channel)::

    mean    = sum(x) / m
    var     = sum((x - mean)^2) / m              biased: divides by m, not m - 1
    inv_std = 1 / sqrt(var + eps)
    xhat    = (x - mean) * inv_std
    y       = gamma * xhat + beta

Backward: every x of a channel reaches y three ways, directly (xhat's numerator), through
the mean and through the variance; dX is the sum of the three::

    dbeta   = sum(dY)
    dgamma  = sum(dY * xhat)
    direct  =  gamma * inv_std * dY
    mean    = -gamma * inv_std * mean(dY)                     (the same for the channel)
    var     = -gamma * inv_std * xhat * mean(dY * xhat)
    dX      = direct + mean + var
            = gamma * inv_std * (dY - mean(dY) - xhat * mean(dY * xhat))

The numbers are computed here in plain NumPy, one formula a step, then the same inputs
go through ``nn.functional.batch_norm(training=True)`` and autograd: y, dX, dgamma and
dbeta must be equal (an AssertionError otherwise). Values are printed with 4 decimals
(whole numbers as integers): ``eps`` makes them non-integer even for integer x.

gamma / beta: None draws them (integers, gamma in [1, 3] and beta in [-2, 2], or normal
floats), an array or shape tuple gives them, False leaves them out (``F.batch_norm``'s
weight=None / bias=None: gamma = 1, beta = 0, no dgamma / dbeta). A drawn x whose
channel has all-equal values (variance 0: y = beta whatever x) is drawn again, from the
same seeded generator.

Printable sizes (``LIMITS``): C <= 6 channels and m <= 24 values per channel; a
ValueError beyond, suggesting ``summary=True``.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..autograd import no_grad
from ..creation import tensor
from ..nn import functional as F
from .conv import is_shape, max_abs_diff, shape_of
from .core import Matrix, Step, as_array, check_printable, draw, planes
from .pool import WorkedExplanation, check_values

__all__ = ["batch_norm", "LIMITS"]

LIMITS = dict(C=6, m=24)


def by_channel(a):
    """(N, C, *S) -> (C, m): row c holds every value of channel c, in (n, *s) order."""
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def from_channels(a, shape):
    """(C, m) -> (N, C, *S), the inverse of ``by_channel``."""
    moved = (shape[1], shape[0]) + tuple(shape[2:])
    return np.moveaxis(a.reshape(moved), 0, 1)


def column_labels(shape):
    """'n' (for (N, C)) or '(n,h,w)' labels of the m columns of the (C, m) tables."""
    rest = [shape[0]] + list(shape[2:])
    idx = np.ndindex(*rest)
    if len(rest) == 1:
        return [f"n={i[0]}" for i in idx], "n"
    title = "(n," + ",".join("hwd"[k] if k < 3 else f"s{k}" for k in range(len(rest) - 1)) + ")"
    return ["(" + ",".join(str(v) for v in i) + ")" for i in idx], title


def clean(v):
    """A sum that is 0 up to round-off, printed as 0."""
    return 0.0 if abs(v) < 1e-9 else float(v)


def autograd_bn(x, gamma, beta, eps, dy):
    """(y, dX, dgamma, dbeta) from ``F.batch_norm(training=True)`` and autograd."""
    xt = tensor(x, requires_grad=True)
    gt = None if gamma is None else tensor(gamma, requires_grad=True)
    bt = None if beta is None else tensor(beta, requires_grad=True)
    y = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    if dy is None:
        return y.numpy(), None, None, None
    y.backward(tensor(dy))
    return (y.numpy(), xt.grad.numpy(), None if gt is None else gt.grad.numpy(),
            None if bt is None else bt.grad.numpy())


def param(v, name, C, rng, values, low, high, op):
    """gamma or beta: None draws one, False none, else an array (or a shape to draw)."""
    if v is False:
        return None
    if v is None or v is True or is_shape(v):
        shape = (C,) if v is None or v is True else shape_of(v)
        if values == "int":
            return rng.integers(low, high + 1, size=shape).astype(np.float64)
        return rng.standard_normal(shape)
    return as_array(v, name, op)


def batch_norm(x, gamma=None, beta=None, eps=1e-5, dy=None, *, values=None, seed=0,
               summary=False):
    """Explain ``batch_norm`` in training mode: the per-channel statistics, xhat, y, and
    the backward pass with dX's three terms (direct, through the mean, through the
    variance) shown separately and summed.

    x: (N, C) or (N, C, H, W) (any (N, C, *S)) array or Tensor, or a shape tuple (integers
    in [-3, 3] drawn with ``seed``, or normal floats with values='float'); gamma, beta:
    (C,) arrays, None (drawn) or False (left out, as weight=None / bias=None); eps: added
    to the variance; dy: the upstream gradient (x's shape) or None to draw one (integers
    in [-2, 2]). summary: shapes only. Returns a ``WorkedExplanation`` (4 decimals).
    """
    op = "batch_norm"
    values = check_values(values, op)
    if not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"explain.{op}: eps must be a number >= 0, got {eps!r}")
    xs = tuple(int(s) for s in shape_of(x))
    given = {k: as_array(v, k, op) for k, v in (("gamma", gamma), ("beta", beta))
             if v is not None and v is not False and v is not True and not is_shape(v)}
    with no_grad():      # F.batch_norm validates the shapes on zeros (its own errors)
        F.batch_norm(tensor(np.zeros(xs)), None, None,
                     tensor(given["gamma"]) if "gamma" in given else None,
                     tensor(given["beta"]) if "beta" in given else None,
                     training=True, eps=eps)
    N, C = xs[:2]
    m = int(np.prod(xs)) // C
    has_gamma, has_beta = gamma is not False, beta is not False
    head = [f"x {('(N, C)' if len(xs) == 2 else '(N, C, *S)')} = {xs}    gamma, beta (C,) = "
            f"{(C,) if has_gamma else None}, {(C,) if has_beta else None}    eps = {eps:g}",
            f"training mode: statistics over the m = {m} values of each channel "
            f"(N{' * ' + ' * '.join(['H', 'W'][:len(xs) - 2]) if len(xs) in (3, 4) else ''}"
            f" = {' * '.join(str(s) for s in (xs[0],) + xs[2:])})"]
    if summary:
        return bn_summary(op, xs, m, has_gamma, has_beta, head)
    check_printable(op, [("channels C", C, LIMITS["C"]),
                         ("values per channel m", m, LIMITS["m"])])
    rng = np.random.default_rng(seed)
    if is_shape(x):
        x = draw(xs, rng, values, 3)
        redrawn = 0
        xc = by_channel(x)
        for c in range(C):
            while np.all(xc[c] == xc[c, 0]):          # variance 0: draw the channel again
                xc[c] = draw((m,), rng, values, 3)
                redrawn += 1
        x = from_channels(xc, xs)
        head.append(f"x drawn with seed {seed}: " + ("integers in [-3, 3]" if values == "int"
                                                     else "standard normal")
                    + (f" ({redrawn} constant channel(s) drawn again)" if redrawn else ""))
    else:
        x = as_array(x, "x", op)
    g = param(gamma, "gamma", C, rng, values, 1, 3, op)
    b = param(beta, "beta", C, rng, values, -2, 2, op)
    if dy is None or is_shape(dy):
        dy, dy_note = draw(xs, rng, values, 2), f"drawn with seed {seed}"
    else:
        dy, dy_note = as_array(dy, "dy", op), "given"
        if dy.shape != xs:
            raise ValueError(f"explain.{op}: dy must have the input's shape {xs}, got "
                             f"{dy.shape}")

    # forward, per channel: X is (C, m), one row a channel ------------------------------
    gv = np.ones(C) if g is None else g                        # (C,)
    bv = np.zeros(C) if b is None else b                       # (C,)
    X = by_channel(x)                                          # (C, m)
    mean = X.sum(axis=1) / m                                   # (C,)
    xc = X - mean[:, None]                                     # (C, m)
    sq = xc ** 2                                               # (C, m)
    var = sq.sum(axis=1) / m                                   # (C,) biased
    inv_std = 1.0 / np.sqrt(var + eps)                         # (C,)
    xhat = xc * inv_std[:, None]                               # (C, m)
    Y = gv[:, None] * xhat + bv[:, None]                       # (C, m)
    # backward -------------------------------------------------------------------------
    dY = by_channel(dy)                                        # (C, m)
    dbeta = dY.sum(axis=1)                                     # (C,)
    dy_xhat = dY * xhat                                        # (C, m)
    dgamma = dy_xhat.sum(axis=1)                               # (C,)
    scale = gv * inv_std                                       # (C,) gamma * inv_std
    mean_dy = dY.sum(axis=1) / m                               # (C,)
    mean_dy_xhat = dy_xhat.sum(axis=1) / m                     # (C,)
    direct = scale[:, None] * dY                               # (C, m)
    via_mean = -scale[:, None] * mean_dy[:, None] * np.ones_like(dY)     # (C, m)
    via_var = -scale[:, None] * xhat * mean_dy_xhat[:, None]  # (C, m)
    dXc = direct + via_mean + via_var                          # (C, m)
    y, dX = from_channels(Y, xs), from_channels(dXc, xs)

    y_ref, dX_ref, dg_ref, db_ref = autograd_bn(x, g, b, eps, dy)
    diff = max_abs_diff([("y", y, y_ref), ("dX", dX, dX_ref),
                         ("dgamma", dgamma if g is not None else None, dg_ref),
                         ("dbeta", dbeta if b is not None else None, db_ref)], op)

    ex = WorkedExplanation(op, head, [], diff, 4)
    f = ex.number
    cols, col_title = column_labels(xs)
    rows = [f"c={c}" for c in range(C)]
    c_lab = [f"c={c}" for c in range(C)]

    def table(name, a):                       # a (C, m)
        return Matrix.of(name, a, rows, cols, "c", col_title)

    def vector(name, v):                      # v (C,)
        return Matrix.of(name, v, [name.split(" ")[0]], c_lab, "", "c")

    def layout(name, a):                      # a (N, C, *S), as the user sees it
        if a.ndim == 2:
            return [Matrix.of(name, a, [f"n={n}" for n in range(N)], c_lab, "n", "c")]
        if a.ndim == 4:
            return planes(name, a)
        return []

    def terms(v):
        return " + ".join(f"({f(t)})" for t in v)

    sums = [f"mean[{c}] = ({terms(X[c])}) / {m} = {f(X[c].sum())} / {m} = {f(mean[c])}"
            for c in range(C)]
    var_lines = [f"var[{c}] = ({terms(sq[c])}) / {m} = {f(var[c])}" for c in range(C)]
    inv_lines = [f"inv_std[{c}] = 1 / sqrt({f(var[c])} + {eps:g}) = {f(inv_std[c])}"
                 for c in range(C)]
    worked = [f"dX[c=0, {cols[k]}] = ({f(direct[0, k])}) + ({f(via_mean[0, k])}) + "
              f"({f(via_var[0, k])}) = {f(dXc[0, k])}" for k in range(m)]
    worked += [f"sum of dX over channel {c} = {f(clean(dXc[c].sum()))}: the mean path takes "
               f"away what the direct path adds in total" for c in range(C)]
    gname = "gamma" if g is not None else "gamma (= 1, no weight)"
    inputs = layout("x", x) + [table("x by channel", X)]
    if g is not None:
        inputs.append(vector("gamma", g))
    if b is not None:
        inputs.append(vector("beta", b))
    steps = [
        Step("inputs", "forward", "the input, and the same numbers one row per channel",
             f"x by channel (C, m): row c holds the m = {m} values of channel c", inputs),
        Step("mean", "forward", "the mean of each channel", "mean[c] = sum of row c / m",
             [vector("mean", mean)], sums),
        Step("centered", "forward", "subtract the mean", "x - mean[c]   (C, m)",
             [table("x - mean", xc)]),
        Step("var", "forward", "the variance of each channel (biased: / m)",
             "var[c] = sum of (x - mean)^2 over row c / m",
             [table("(x - mean)^2", sq), vector("var", var)], var_lines),
        Step("inv_std", "forward", "one over the standard deviation",
             "inv_std[c] = 1 / sqrt(var[c] + eps)", [vector("inv_std", inv_std)], inv_lines),
        Step("xhat", "forward", "normalise: xhat = (x - mean) * inv_std",
             "each row now has mean 0 and variance var/(var + eps) (just under 1)",
             [table("xhat", xhat)]),
        Step("y", "forward", "scale and shift: y = gamma * xhat + beta",
             f"y[.., c, ..] = {gname}[c] * xhat + "
             + ("beta[c]" if b is not None else "0 (no bias)"),
             [table("y by channel", Y)] + layout("y", y)),
        Step("dY", "backward", "the upstream gradient dY = dL/dy", f"dY   ({dy_note})",
             layout("dY", dy) + [table("dY by channel", dY)]),
    ]
    if b is not None:
        steps.append(Step("dbeta", "backward", "dbeta = sum of dY over each channel",
                          "dbeta[c] = sum of row c of dY (beta is added to every value)",
                          [vector("dbeta", dbeta)],
                          [f"dbeta[{c}] = {terms(dY[c])} = {f(dbeta[c])}" for c in range(C)]))
    if g is not None:
        steps.append(Step("dgamma", "backward", "dgamma = sum of dY * xhat over each channel",
                          "dgamma[c] = sum of row c of dY * xhat",
                          [table("dY * xhat", dy_xhat), vector("dgamma", dgamma)],
                          [f"dgamma[{c}] = {terms(dy_xhat[c])} = {f(dgamma[c])}"
                           for c in range(C)]))
    steps += [
        Step("direct", "backward", "dX, term 1: the direct path",
             "direct = gamma * inv_std * dY   (x -> xhat's numerator -> y, with mean and "
             "var held fixed)",
             [vector("gamma*inv_std", scale), table("direct", direct)]),
        Step("via_mean", "backward", "dX, term 2: through the mean",
             "via_mean = -gamma * inv_std * mean(dY)   (each x moves the mean, which every "
             "xhat of its channel subtracts)",
             [vector("mean(dY)", mean_dy), table("via_mean", via_mean)]),
        Step("via_var", "backward", "dX, term 3: through the variance",
             "via_var = -gamma * inv_std * xhat * mean(dY * xhat)   (each x moves the "
             "variance, which scales every xhat of its channel)",
             [vector("mean(dY*xhat)", mean_dy_xhat), table("via_var", via_var)]),
        Step("dX", "backward", "dX = direct + via_mean + via_var",
             "dX = gamma * inv_std * (dY - mean(dY) - xhat * mean(dY * xhat))",
             [table("dX by channel", dXc)] + layout("dX", dX), worked),
    ]
    ex.steps = steps
    ex.arrays = dict(x=x, gamma=g, beta=b, x_by_channel=X, mean=mean, centered=xc,
                     squared=sq, var=var, inv_std=inv_std, xhat=xhat, y=y, dy=dy,
                     dy_by_channel=dY, dbeta=dbeta, dgamma=dgamma, dy_xhat=dy_xhat,
                     mean_dy=mean_dy, mean_dy_xhat=mean_dy_xhat, direct=direct,
                     via_mean=via_mean, via_var=via_var, dX_by_channel=dXc, dX=dX)
    return ex


def bn_summary(op, xs, m, has_gamma, has_beta, head):
    S = Matrix.shape_only
    C = xs[1]
    cm, c1 = (C, m), (C,)
    rows = [("inputs", "forward", "the input, one row per channel", [S("x", xs),
                                                                     S("x by channel", cm)]),
            ("mean", "forward", "mean", [S("mean", c1)]),
            ("centered", "forward", "x - mean", [S("x - mean", cm)]),
            ("var", "forward", "var", [S("var", c1)]),
            ("inv_std", "forward", "inv_std", [S("inv_std", c1)]),
            ("xhat", "forward", "xhat", [S("xhat", cm)]),
            ("y", "forward", "y = gamma * xhat + beta", [S("y", xs)]),
            ("dY", "backward", "the upstream gradient", [S("dY", xs)])]
    if has_beta:
        rows.append(("dbeta", "backward", "dbeta", [S("dbeta", c1)]))
    if has_gamma:
        rows.append(("dgamma", "backward", "dgamma", [S("dgamma", c1)]))
    rows += [("direct", "backward", "dX, term 1: direct", [S("direct", cm)]),
             ("via_mean", "backward", "dX, term 2: through the mean", [S("via_mean", cm)]),
             ("via_var", "backward", "dX, term 3: through the variance", [S("via_var", cm)]),
             ("dX", "backward", "dX = the sum of the three", [S("dX", xs)])]
    return WorkedExplanation(op, head, [Step(k, ph, t, "", mm) for k, ph, t, mm in rows],
                             None, summary=True)
