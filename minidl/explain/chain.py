"""``explain.chain``: conv2d -> relu -> max_pool2d, the chain rule carrying dP back to dX.

Shape letters as in ``conv.py``, plus::

    PK   pooling window (PKH, PKW), stride the same (non-overlapping windows)
    PH, PW   pooled height and width: floor(OH / PKH), floor(OW / PKW)

    y = conv2d(x, w, b)     (N, OC, OH, OW)
    z = relu(y) = max(y, 0) (N, OC, OH, OW)
    p = max_pool2d(z, PK)   (N, OC, PH, PW)

    dZ[n, o, r, s] = dP[n, o, i, j] where (r, s) is the argmax of window (i, j), else 0
    dY = dZ * [y > 0]       the ReLU passes the gradient where its input was positive
    dW, db, dX              from dY exactly as in ``explain.conv2d``

Drawn values avoid the two places where a derivative is a choice: a window whose positive
maximum is attained twice (which element gets the gradient?) and a conv output exactly 0
(the ReLU's kink). Drawing everything again until neither happens would almost never end
(a few dozen integer outputs, each 0 with a chance of a few percent), so when x is drawn
(given as a shape) the explainer draws again, from the same seeded generator, one value
of x (or of the bias) in the receptive field of the first offending output, and repeats
until none is left (``redraw_ambiguities``): the same seed always gives the same numbers,
and the header says how many values were drawn again. A window whose maximum is 0 (every
conv output in it below 0) is allowed: its gradient goes to the first element and dies at
the ReLU, whichever element it picks. Given arrays are used as they are (minidl breaks
ties towards the first maximum, and the ReLU's derivative at 0 is 0).
"""
from __future__ import annotations

import numpy as np

from .. import geometry
from ..creation import tensor
from ..nn import functional as F
from .conv import (HIGH, autograd_conv, check_sizes, compute, conv_geometry, conv_steps,
                   header, integral, is_shape, max_abs_diff, resolve, shape_of, summary_steps)
from .core import Explanation, Matrix, Step, as_array, draw, planes

__all__ = ["chain"]


def autograd_chain(x, w, b, dp, stride, padding, dilation, groups, pool):
    """(y, z, p, dX, dW, db) from minidl's ops and autograd (dp None: forward only)."""
    xt, wt = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
    bt = None if b is None else tensor(b, requires_grad=True)
    y = F.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    z = F.relu(y)
    p = F.max_pool2d(z, pool)
    if dp is None:
        return y.numpy(), z.numpy(), p.numpy(), None, None, None
    p.backward(tensor(dp))
    return (y.numpy(), z.numpy(), p.numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def windows(z, pk):
    """[(n, o, i, j, r, s, value, ties)]: for every pooling window (i, j) of z
    (N, OC, OH, OW), the position (r, s) of its first maximum, the maximum and how many
    elements equal it. Windows are PKH x PKW with stride (PKH, PKW)."""
    N, OC, OH, OW = z.shape
    PKH, PKW = pk
    out = []
    for n in range(N):
        for o in range(OC):
            for i in range(OH // PKH):
                for j in range(OW // PKW):
                    win = z[n, o, i * PKH:(i + 1) * PKH, j * PKW:(j + 1) * PKW]
                    k = int(np.argmax(win))            # the first maximum, row by row
                    r, s = i * PKH + k // PKW, j * PKW + k % PKW
                    out.append((n, o, i, j, r, s, float(win.max()),
                                int(np.sum(win == win.max()))))
    return out


def first_ambiguity(y, pk):
    """(n, o, r, s): a conv output that is exactly 0, or the second of two equal positive
    maxima of a pooling window of relu(y); None when there is neither."""
    zeros = np.argwhere(y == 0)
    if len(zeros):
        return tuple(int(v) for v in zeros[0])
    PKH, PKW = pk
    z = np.maximum(y, 0)
    for n, o, i, j, r, s, m, ties in windows(z, pk):
        if m > 0 and ties > 1:
            win = z[n, o, i * PKH:(i + 1) * PKH, j * PKW:(j + 1) * PKW]
            k = np.flatnonzero(win.ravel() == m)[1]
            return n, o, i * PKH + k // PKW, j * PKW + k % PKW
    return None


def receptive_field(geo, n, o, i, j):
    """The positions (n, c, p, q) of x that conv output y[n, o, i, j] reads (padding left
    out): c in o's group, p = i*SH + kh*DH - PH0, q = j*SW + kw*DW - PW0."""
    Cg, OCg = geo.C // geo.G, geo.OC // geo.G
    g = o // OCg
    return [(n, c, p, q) for c in range(g * Cg, (g + 1) * Cg)
            for p in (i * geo.SH + kh * geo.DH - geo.PH0 for kh in range(geo.KH))
            for q in (j * geo.SW + kw * geo.DW - geo.PW0 for kw in range(geo.KW))
            if 0 <= p < geo.H and 0 <= q < geo.W]


def redraw_ambiguities(x, w, b, args, pk, rng, values, op, tries=2000):
    """Draw again, one value at a time, the inputs behind every ambiguity (module doc).

    While some conv output is 0 or some window has a positive maximum twice, one value of
    x in that output's receptive field (or its bias) is drawn again from ``rng``. Returns
    (x, b, the number of values drawn again). A ValueError when ``tries`` are not enough
    (an output that reads only padding, with no bias, is 0 whatever x is)."""
    geo = None
    for count in range(tries + 1):
        y = autograd_conv(x, w, b, None, *args)[0]       # F.conv2d validates the geometry
        where = first_ambiguity(y, pk)
        if where is None:
            return x, b, count
        if geo is None:
            geo = conv_geometry(x.shape, w.shape, *args)
        n, o, r, s = where
        candidates = receptive_field(geo, n, o, r, s) + ([("b", o)] if b is not None else [])
        if not candidates:
            break
        pick = candidates[int(rng.integers(len(candidates)))]
        if pick[0] == "b":
            b[o] = draw((), rng, values, HIGH["b"])
        else:
            x[pick] = draw((), rng, values, HIGH["x"])
    raise ValueError(f"explain.{op}: could not draw values without a tie in a pooling window "
                     f"or a conv output of exactly 0 (y[{n}, {o}, {r}, {s}]); try another "
                     f"seed, a bias, less padding or values='float'")


def chain(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, pool=2, dp=None, *,
          values=None, seed=0, summary=False):
    """Explain ``max_pool2d(relu(conv2d(x, w, b, ...)), pool)`` and its backward pass.

    x, w, b, stride, padding, dilation, groups: as ``explain.conv2d``; pool: the pooling
    window, an int or a (PKH, PKW) pair, stride the same; dp: the upstream gradient of
    the pooled output (N, OC, PH, PW), or None to draw one. values, seed, summary: as
    ``explain.conv2d``; drawn values are re-drawn to avoid ties and zeros (module doc).
    Returns an ``Explanation`` checked against autograd end to end.
    """
    op = "chain"
    values = "int" if values is None else values
    if values not in ("int", "float"):
        raise ValueError(f"explain.{op}: values must be 'int' or 'float', got {values!r}")
    pk = geometry.pair(pool, "pool", f"explain.{op}", minimum=1)
    xs, ws = shape_of(x), shape_of(w)
    has_bias = b is not None and b is not False
    args = (stride, padding, dilation, groups)
    if summary:
        # minidl's ops validate the whole chain on one zero image (any size is fine here)
        autograd_chain(np.zeros((1,) + tuple(xs[1:])), np.zeros(ws), None, None, *args, pk)
        geo = conv_geometry(xs, ws, *args)
        with_summary = summary_steps(geo, has_bias, prefix="conv.")
        pooled = (geo.N, geo.OC, geo.OH // pk[0], geo.OW // pk[1])
        S = Matrix.shape_only
        steps = ([s for s in with_summary if s.phase == "forward"]
                 + [Step("relu", "forward", "z = relu(y)", "", [S("z", geo.out_shape)]),
                    Step("pool", "forward", "p = max_pool2d(z)", "", [S("p", pooled)]),
                    Step("dP", "backward", "the upstream gradient dP", "", [S("dP", pooled)]),
                    Step("pool_back", "backward", "dZ: to each window's maximum", "",
                         [S("dZ", geo.out_shape)]),
                    Step("relu_back", "backward", "dY = dZ * [y > 0]", "",
                         [S("dY", geo.out_shape)])]
                 + [s for s in with_summary if s.phase == "backward" and s.key != "conv.dY"])
        return Explanation(op, header(geo, has_bias, padding), steps, None, summary=True)

    check_sizes(op, xs, ws)
    rng = np.random.default_rng(seed)
    x_drawn = is_shape(x)
    x = resolve(x, "x", rng, values, op)
    w = resolve(w, "w", rng, values, op)
    b = None if not has_bias else resolve((ws[0],) if b is True else b, "b", rng, values, op)
    autograd_chain(x, w, b, None, *args, pk)             # validates the whole chain
    redraws = 0
    if x_drawn:
        x, b, redraws = redraw_ambiguities(x, w, b, args, pk, rng, values, op)
    geo = conv_geometry(x.shape, w.shape, *args)
    check_sizes(op, x.shape, w.shape, geo)
    y, z, p = autograd_chain(x, w, b, None, *args, pk)[:3]
    if dp is None:
        dp = draw(p.shape, rng, values, HIGH["dy"])
        dp_note = f"drawn with seed {seed}"
    else:
        dp = as_array(dp, "dp", op) if not is_shape(dp) else draw(dp, rng, values, HIGH["dy"])
        dp_note = "given"
        if dp.shape != p.shape:
            raise ValueError(f"explain.{op}: dp must have the pooled output's shape "
                             f"{p.shape}, got {dp.shape}")

    # forward, by the formulas: y from the conv steps below, then
    z_mine = np.maximum(y, 0.0)                              # relu
    wins = windows(z_mine, pk)
    p_mine = np.zeros(p.shape)
    for n, o, i, j, r, s, m, _ in wins:                      # max over each window
        p_mine[n, o, i, j] = m
    # backward: dP -> dZ (to the argmax) -> dY (the ReLU's mask) -> the conv
    dZ = np.zeros(y.shape)
    for n, o, i, j, r, s, _, _ in wins:
        dZ[n, o, r, s] += dp[n, o, i, j]
    mask = (y > 0).astype(np.float64)
    dY = dZ * mask
    a = compute(x, w, b, dY, geo)

    _, _, _, dX_ref, dW_ref, db_ref = autograd_chain(x, w, b, dp, *args, pk)
    conv_ref = autograd_conv(x, w, b, dY, *args)
    diff = max_abs_diff([("y", a["y"], y), ("z", z_mine, z), ("p", p_mine, p),
                         ("dX", a["dX"], dX_ref), ("dW", a["dW"], dW_ref),
                         ("db", a["db"] if b is not None else None, db_ref),
                         ("dX (flipped kernel)", a["dX_flip"], dX_ref),
                         ("dX (conv alone)", a["dX"], conv_ref[1])], op)
    ex = Explanation(op, [f"conv2d -> relu -> max_pool2d (window {pk}, stride {pk})"]
                     + header(geo, b is not None, padding)
                     + [f"p (N, OC, PH, PW) = {p.shape}"]
                     + ([f"{redraws} value(s) of x or b drawn again to avoid a tie in a "
                         f"pooling window or a conv output of exactly 0"] if redraws else []),
                     [], diff, 0 if integral(x, w, b, dp) else 3)
    f = ex.number
    conv = conv_steps(a, geo, f, dy_note="from the ReLU step", prefix="conv.")
    for s in conv:       # dY's planes were just shown by the relu step: keep its matrix form
        if s.key == "conv.dY":
            s.matrices = [m for m in s.matrices if m.name.startswith("dY (matrix)")]
    pl = dict(letters=("n", "o"), row_title="oh", col_title="ow")
    relu = Step("relu", "forward", "relu: z = max(y, 0)",
                "z[n, o, oh, ow] = y[n, o, oh, ow] if y > 0 else 0", planes("z", z_mine, **pl))
    pool_lines = [f"p[{n},{o},{i},{j}] = max of z[{n},{o},{i * pk[0]}:{(i + 1) * pk[0]},"
                  f"{j * pk[1]}:{(j + 1) * pk[1]}] = {f(m)}, at z[{n},{o},{r},{s}]"
                  + (f"   ({t} equal maxima: the first)" if t > 1 else "")
                  for n, o, i, j, r, s, m, t in wins]
    pool = Step("pool", "forward", f"max_pool2d: the largest value of each {pk[0]}x{pk[1]} "
                "window", "p[n, o, i, j] = max over the window (i, j) of z",
                planes("p", p_mine, letters=("n", "o"), row_title="i", col_title="j"),
                pool_lines)
    dps = Step("dP", "backward", "the upstream gradient dP = dL/dp", f"dP   ({dp_note})",
               planes("dP", dp, letters=("n", "o"), row_title="i", col_title="j"))
    pool_back = Step("pool_back", "backward", "back through the pool: each dP to its window's "
                     "maximum", "dZ[n, o, r, s] = dP[n, o, i, j] where (r, s) is the argmax of "
                     "window (i, j); 0 elsewhere", planes("dZ", dZ, **pl),
                     [f"dP[{n},{o},{i},{j}] = {f(dp[n, o, i, j])} goes to dZ[{n},{o},{r},{s}]"
                      for n, o, i, j, r, s, _, _ in wins])
    relu_back = Step("relu_back", "backward", "back through the relu: dY = dZ where y > 0",
                     "dY[n, o, oh, ow] = dZ[n, o, oh, ow] * [y[n, o, oh, ow] > 0]",
                     planes("[y > 0]", mask, **pl) + planes("dY", dY, **pl))
    ex.steps = ([s for s in conv if s.phase == "forward"] + [relu, pool, dps, pool_back,
                                                              relu_back]
                + [s for s in conv if s.phase == "backward"])
    ex.arrays = {k: v for k, v in a.items() if k != "scatter"}
    ex.arrays.update(z=z_mine, p=p_mine, dp=dp, dZ=dZ, relu_mask=mask, dY_conv=dY)
    ex.geometry = geo
    return ex
