"""``explain.softmax_cross_entropy``: softmax and cross-entropy of logits against class
indices, forward and backward, in numbers.

Shape letters::

    N   batch size (rows)          C   classes (columns)

    m[n]        = max over c of z[n, c]                      (N,)   the shift
    e[n, c]     = exp(z[n, c] - m[n])                        (N, C) at most 1: no overflow
    s[n]        = sum over c of e[n, c]                      (N,)
    p[n, c]     = e[n, c] / s[n]                             (N, C) softmax, rows sum to 1
    logp[n, c]  = z[n, c] - m[n] - log s[n]                  (N, C) log-softmax
    q[n, c]     = (1 - eps) * [c == t[n]] + eps / C          (N, C) the target: one-hot, or
                                                                    smoothed by eps
    loss[n]     = -sum over c of q[n, c] * logp[n, c]        (N,)
    L           = sum over n of loss[n] / N                         the mean over the batch
    dZ[n, c]    = dL * (p[n, c] - q[n, c]) / N               (N, C)

Shifting by the row's maximum changes nothing (it cancels in e / s) but keeps exp from
overflowing. dL, the upstream gradient of the scalar loss, is 1 unless given.

The numbers are computed here in plain NumPy, then the same logits go through
``nn.functional.cross_entropy(..., label_smoothing=eps)`` and autograd: L and dZ must be
equal (an AssertionError otherwise). Printed with 4 decimals (whole numbers as integers).
Printable sizes (``LIMITS``): N <= 12, C <= 12; a ValueError beyond, suggesting
``summary=True``.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..autograd import no_grad
from ..creation import tensor
from ..nn import functional as F
from .conv import is_shape, max_abs_diff, shape_of
from .core import Matrix, Step, as_array, check_printable, draw
from .pool import WorkedExplanation, check_values

__all__ = ["softmax_cross_entropy", "LIMITS"]

LIMITS = dict(N=12, C=12)


def as_target(t, op):
    """Class indices as an int64 array (a ValueError for non-integers)."""
    if hasattr(t, "numpy") and callable(t.numpy):
        t = t.numpy()
    a = np.asarray(t)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ValueError(f"explain.{op}: target must hold class indices (integers), got "
                             f"{a.tolist()}")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"explain.{op}: target must hold class indices (integers), got "
                         f"dtype {a.dtype}")
    return a.astype(np.int64)


def autograd_ce(z, t, eps, dl):
    """(L, dZ) from ``F.cross_entropy`` and autograd (dl None: L only)."""
    zt = tensor(z, requires_grad=True)
    loss = F.cross_entropy(zt, tensor(t), label_smoothing=eps)
    if dl is None:
        return float(loss.numpy()), None
    loss.backward(tensor(np.array(dl, dtype=np.float64)))
    return float(loss.numpy()), zt.grad.numpy()


def softmax_cross_entropy(logits, target, label_smoothing=0.0, dy=None, *, values=None,
                          seed=0, summary=False):
    """Explain ``cross_entropy(logits, target, label_smoothing=...)`` (the mean over the
    batch): the max-shift, exp, sum, softmax, log-softmax, each row's loss and the mean;
    backward dlogits = (p - q) / N with q the one-hot (or smoothed) target.

    logits: (N, C) array or Tensor, or a shape tuple (integers in [-3, 3] drawn with
    ``seed``, or normal floats with values='float'); target: (N,) class indices, or None
    to draw them; label_smoothing: eps in [0, 1]; dy: the upstream gradient of the
    scalar loss (a number, default 1). summary: shapes only. Returns a
    ``WorkedExplanation`` (4 decimals).
    """
    op = "softmax_cross_entropy"
    values = check_values(values, op)
    zs = tuple(int(s) for s in shape_of(logits))
    if len(zs) != 2:
        raise ValueError(f"explain.{op}: expected logits of shape (N, C), got {zs}")
    N, C = zs
    rng = np.random.default_rng(seed)
    drawn_t = target is None
    t = np.zeros(N, np.int64) if drawn_t else as_target(target, op)     # drawn below
    with no_grad():    # F.cross_entropy validates target and label_smoothing (its errors)
        F.cross_entropy(tensor(np.zeros(zs)), tensor(t), label_smoothing=label_smoothing)
    if np.any(t < 0):
        raise ValueError(f"explain.{op}: target {t.tolist()} holds an ignored (negative) "
                         f"class; give every row a class in [0, {C - 1}]")
    eps = float(label_smoothing)
    head = [f"logits z (N, C) = {zs}    target t (N,) = {tuple(t.shape)}    "
            f"label_smoothing eps = {eps:g}    reduction = 'mean'"]
    if summary:
        S = Matrix.shape_only
        rows = [("inputs", "forward", "the logits and the targets", [S("z", zs), S("t", (N,))]),
                ("shift", "forward", "z - max of each row", [S("z - m", zs)]),
                ("exp", "forward", "exp", [S("e", zs), S("s", (N,))]),
                ("softmax", "forward", "softmax p = e / s", [S("p", zs)]),
                ("log_softmax", "forward", "log-softmax", [S("logp", zs)]),
                ("target", "forward", "the target distribution q", [S("q", zs)]),
                ("loss", "forward", "each row's loss, and the mean", [S("loss", (N,))]),
                ("dL", "backward", "the upstream gradient", [S("dL", ())]),
                ("dlogits", "backward", "dZ = dL * (p - q) / N", [S("dZ", zs)])]
        return WorkedExplanation(op, head, [Step(k, ph, ti, "", m) for k, ph, ti, m in rows],
                                 None, summary=True)
    check_printable(op, [("batch N", N, LIMITS["N"]), ("classes C", C, LIMITS["C"])])
    if is_shape(logits):
        z = draw(zs, rng, values, 3)
        head.append(f"logits drawn with seed {seed}: " + ("integers in [-3, 3]"
                                                          if values == "int" else
                                                          "standard normal"))
    else:
        z = as_array(logits, "logits", op)
    if drawn_t:
        t = rng.integers(0, C, size=N).astype(np.int64)
        head.append(f"target drawn with seed {seed}: {t.tolist()}")
    if dy is None:
        dl, dl_note = 1.0, "1: L is the loss itself"
    else:
        if not isinstance(dy, numbers.Real) and np.shape(dy) not in ((), (1,)):
            raise ValueError(f"explain.{op}: dy is the gradient of the scalar loss: a number, "
                             f"got shape {np.shape(dy)}")
        dl, dl_note = float(np.asarray(dy, dtype=np.float64).reshape(())), "given"

    # forward ----------------------------------------------------------------------------
    m = z.max(axis=1)                                   # (N,)
    zm = z - m[:, None]                                 # (N, C)
    e = np.exp(zm)                                      # (N, C)
    s = e.sum(axis=1)                                   # (N,)
    p = e / s[:, None]                                  # (N, C) softmax
    logp = zm - np.log(s)[:, None]                      # (N, C) log-softmax
    onehot = np.zeros((N, C))
    onehot[np.arange(N), t] = 1.0
    q = (1.0 - eps) * onehot + eps / C                  # (N, C)
    loss = -(q * logp).sum(axis=1)                      # (N,)
    L = loss.sum() / N
    # backward ---------------------------------------------------------------------------
    diff_pq = p - q                                     # (N, C)
    dZ = dl * diff_pq / N                               # (N, C)

    L_ref, dZ_ref = autograd_ce(z, t, eps, dl)
    diff = max_abs_diff([("loss", np.array(L), np.array(L_ref)), ("dlogits", dZ, dZ_ref)], op)

    ex = WorkedExplanation(op, head, [], diff, 4)
    f = ex.number
    rl = [f"n={n}" for n in range(N)]
    cl = [f"c={c}" for c in range(C)]

    def table(name, a):
        return Matrix.of(name, a, rl, cl, "n", "c")

    def column(name, v):                  # one value per row n, shown as a column
        return Matrix.of(name, np.asarray(v)[:, None], rl, [name], "n", "")

    q_formula = ("q = one-hot of t: q[n, c] = 1 if c == t[n] else 0" if eps == 0 else
                 f"q[n, c] = (1 - eps) * [c == t[n]] + eps / C = {f(1 - eps + eps / C)} at the "
                 f"target, {f(eps / C)} elsewhere  (eps = {eps:g}, C = {C})")
    loss_lines = []
    for n in range(N):
        if eps == 0:
            loss_lines.append(f"loss[{n}] = -logp[{n}, t={t[n]}] = -({f(logp[n, t[n]])}) = "
                              f"{f(loss[n])}")
        else:
            loss_lines.append(f"loss[{n}] = -(" + " + ".join(
                f"{f(q[n, c])}*({f(logp[n, c])})" for c in range(C)) + f") = {f(loss[n])}")
    loss_lines.append(f"L = ({' + '.join(f'({f(v)})' for v in loss)}) / {N} = {f(L)}")
    steps = [
        Step("inputs", "forward", "the logits z (N, C) and the target classes t (N,)",
             "row n holds the scores of sample n for the C classes; t[n] is its class",
             [table("z", z), column("t", t)]),
        Step("shift", "forward", "subtract each row's maximum",
             "m[n] = max over c of z[n, c];  z - m (the largest becomes 0; softmax unchanged, "
             "exp cannot overflow)", [column("m", m), table("z - m", zm)]),
        Step("exp", "forward", "exponentiate, and sum each row",
             "e = exp(z - m), each in (0, 1];  s[n] = sum over c of e[n, c]",
             [table("e", e), column("s", s)],
             [f"s[{n}] = {' + '.join(f(v) for v in e[n])} = {f(s[n])}" for n in range(N)]),
        Step("softmax", "forward", "softmax: p = e / s", "p[n, c] = e[n, c] / s[n]; every row "
             "sums to 1", [table("p", p)]),
        Step("log_softmax", "forward", "log-softmax: logp = (z - m) - log s",
             "logp[n, c] = z[n, c] - m[n] - log s[n] = log p[n, c]  (computed without a log "
             "of a tiny p)", [column("log s", np.log(s)), table("logp", logp)]),
        Step("target", "forward", "the target distribution q", q_formula, [table("q", q)]),
        Step("loss", "forward", "each row's loss, and the mean over the batch",
             "loss[n] = -sum over c of q[n, c] * logp[n, c];  L = sum of loss / N",
             [column("loss", loss), Matrix.of("L", np.array([[L]]), ["L"], ["mean"])],
             loss_lines),
        Step("dL", "backward", "the upstream gradient dL of the scalar loss",
             f"dL = {f(dl)}   ({dl_note})", []),
        Step("dlogits", "backward", "dlogits = dL * (p - q) / N",
             "d loss[n] / d z[n, c] = p[n, c] - q[n, c] (softmax and log cancel to this), and "
             "the mean divides by N\nevery row of p - q sums to 0: the target's score is pushed "
             "up, the others down",
             [table("p", p), table("q", q), table("p - q", diff_pq),
              table(f"dZ = dL * (p - q) / {N}", dZ)],
             [f"dZ[{n}, {c}] = {f(dl)} * ({f(p[n, c])} - {f(q[n, c])}) / {N} = "
              f"{f(dZ[n, c])}" for n in range(min(N, 2)) for c in range(C)]),
    ]
    ex.steps = steps
    ex.arrays = dict(logits=z, target=t, m=m, shifted=zm, e=e, s=s, p=p, logp=logp, q=q,
                     loss_rows=loss, loss=np.array(L), dL=np.array(dl), p_minus_q=diff_pq,
                     dlogits=dZ)
    return ex
