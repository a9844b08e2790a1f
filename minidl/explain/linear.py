"""``explain.linear``: a fully connected layer forward and backward, in numbers.

Shape letters::

    N    batch size (rows of x)        IN   input features        OUT  output features

    y  = x . W^T + b        (N, OUT) = (N, IN) . (IN, OUT) + (OUT,)
    dX = dY . W             (N, IN)  = (N, OUT) . (OUT, IN)
    dW = dY^T . x           (OUT, IN) = (OUT, N) . (N, IN)
    db = sum over n of dY   (OUT,)

Checked against ``nn.functional.linear`` and autograd. Printable sizes: N, IN and OUT at
most 12 each (``LIMITS``); a ValueError beyond, suggesting ``summary=True``.
"""
from __future__ import annotations

import numpy as np

from ..creation import tensor
from ..nn import functional as F
from .conv import integral, is_shape, max_abs_diff, resolve, shape_of
from .core import Explanation, Matrix, Step, check_printable, draw

__all__ = ["linear", "LIMITS"]

LIMITS = dict(N=12, IN=12, OUT=12)


def autograd_linear(x, w, b, dy):
    """(y, dX, dW, db) from ``F.linear`` and autograd on float64 arrays (dy None: y only)."""
    xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    bt = None if b is None else tensor(b, requires_grad=True)
    y = F.linear(xt, wt, bt)
    if dy is None:
        return y.numpy(), None, None, None
    y.backward(tensor(dy))
    return y.numpy(), xt.grad.numpy(), wt.grad.numpy(), None if b is None else bt.grad.numpy()


def linear(x, w, b=None, dy=None, *, values=None, seed=0, summary=False):
    """Explain ``y = x . W^T + b`` and its three gradients, step by step.

    x: (N, IN) array or shape tuple; w: (OUT, IN) array or shape; b: (OUT,) array, shape,
    True (draw one) or None; dy: (N, OUT) upstream gradient, or None to draw one.
    values: 'int' (default for drawn values: x in [-3, 3], w, b, dY in [-2, 2]) or 'float';
    seed: for drawn values; summary: shapes only. Returns an ``Explanation``.
    """
    op = "linear"
    values = "int" if values is None else values
    if values not in ("int", "float"):
        raise ValueError(f"explain.{op}: values must be 'int' or 'float', got {values!r}")
    xs, ws = shape_of(x), shape_of(w)
    if len(xs) != 2 or len(ws) != 2:
        raise ValueError(f"explain.{op}: expected x (N, IN) and w (OUT, IN), got x {xs} and "
                         f"w {ws}")
    (N, IN), (OUT, IN_w) = xs, ws
    if IN != IN_w:   # the same words F.linear uses
        raise ValueError(f"explain.{op}: expected input (..., {IN_w}) for weight of shape "
                         f"{ws}, got {xs}")
    has_bias = b is not None and b is not False
    head = [f"x (N, IN) = {xs}    W (OUT, IN) = {ws}    b (OUT,) = "
            f"{(OUT,) if has_bias else None}    y (N, OUT) = {(N, OUT)}"]
    if summary:
        S = Matrix.shape_only
        steps = [Step("inputs", "forward", "the inputs", "", [S("x", xs), S("W", ws)]),
                 Step("y", "forward", "y = x . W^T + b", "", [S("y", (N, OUT))]),
                 Step("dY", "backward", "the upstream gradient", "", [S("dY", (N, OUT))]),
                 Step("dX", "backward", "dX = dY . W", "", [S("dX", xs)]),
                 Step("dW", "backward", "dW = dY^T . x", "", [S("dW", ws)])]
        if has_bias:
            steps.append(Step("db", "backward", "db = sum of dY over n", "", [S("db", (OUT,))]))
        return Explanation(op, head, steps, None, summary=True)
    check_printable(op, [("batch N", N, LIMITS["N"]), ("input features IN", IN, LIMITS["IN"]),
                         ("output features OUT", OUT, LIMITS["OUT"])])
    rng = np.random.default_rng(seed)
    x = resolve(x, "x", rng, values, op)
    w = resolve(w, "w", rng, values, op)
    b = None if not has_bias else resolve((OUT,) if b is True else b, "b", rng, values, op)
    y_ref = autograd_linear(x, w, b, None)[0]
    if dy is None:
        dy = draw(y_ref.shape, rng, values, 2)
        dy_note = f"drawn with seed {seed}"
    else:
        dy_note = "given"
        dy = resolve(dy, "dy", rng, values, op) if not is_shape(dy) else draw(dy, rng, values, 2)
        if dy.shape != y_ref.shape:
            raise ValueError(f"explain.{op}: dy must have the output's shape {y_ref.shape}, "
                             f"got {dy.shape}")

    # the formulas, one line each
    y = x @ w.T + (0.0 if b is None else b)          # (N, OUT)
    dX = dy @ w                                      # (N, IN)
    dW = dy.T @ x                                    # (OUT, IN)
    db = dy.sum(axis=0)                              # (OUT,)

    _, dX_ref, dW_ref, db_ref = autograd_linear(x, w, b, dy)
    diff = max_abs_diff([("y", y, y_ref), ("dX", dX, dX_ref), ("dW", dW, dW_ref),
                         ("db", db if b is not None else None, db_ref)], op)
    ex = Explanation(op, head, [], diff, 0 if integral(x, w, b, dy) else 3,
                     arrays=dict(x=x, w=w, b=b, y=y, dy=dy, dX=dX, dW=dW, db=db))
    f = ex.number
    n_lab = [f"n={n}" for n in range(N)]
    i_lab = [f"i={i}" for i in range(IN)]
    o_lab = [f"o={o}" for o in range(OUT)]
    M = Matrix.of
    inputs = [M("x", x, n_lab, i_lab, "n", "i"), M("W", w, o_lab, i_lab, "o", "i")]
    if b is not None:
        inputs.append(M("b", b, ["b"], o_lab, "", "o"))
    worked = " + ".join(f"({f(x[0, i])})({f(w[0, i])})" for i in range(IN))
    ex.steps = [
        Step("inputs", "forward", "the inputs: x (N, IN), W (OUT, IN), b (OUT,)",
             "each row of x is one sample; each row of W one output feature's weights", inputs),
        Step("y", "forward", "y = x . W^T + b",
             "y[n, o] = sum over i of x[n, i] * W[o, i] + b[o]    (N, OUT)",
             [M("W^T", w.T, i_lab, o_lab, "i", "o"), M("y", y, n_lab, o_lab, "n", "o")],
             [f"y[0, 0] = {worked}" + (f" + ({f(b[0])})" if b is not None else "")
              + f" = {f(y[0, 0])}"]),
        Step("dY", "backward", "the upstream gradient dY = dL/dy",
             f"dY (N, OUT)   ({dy_note})", [M("dY", dy, n_lab, o_lab, "n", "o")]),
        Step("dX", "backward", "dX = dY . W",
             "dX[n, i] = sum over o of dY[n, o] * W[o, i]: each input fed every output",
             [M("dX", dX, n_lab, i_lab, "n", "i")]),
        Step("dW", "backward", "dW = dY^T . x",
             "dW[o, i] = sum over n of dY[n, o] * x[n, i]: summed over the batch",
             [M("dY^T", dy.T, o_lab, n_lab, "o", "n"), M("dW", dW, o_lab, i_lab, "o", "i")]),
    ]
    if b is not None:
        ex.steps.append(Step("db", "backward", "db = sum of dY over the batch",
                             "db[o] = sum over n of dY[n, o]", [M("db", db, ["db"], o_lab, "",
                                                                   "o")]))
    return ex
