"""``explain.max_pool2d`` and ``explain.avg_pool2d``: every window, its result, and where
each gradient goes, in numbers.

Shape letters (as in ``minidl/ops/pool.py``)::

    N   batch size            C   channels
    H   input height          W   input width
    KH  kernel height         KW  kernel width          K = KH * KW taps in one window
    SH  stride along H        SW  stride along W        (default: the kernel size)
    PH  padding along H       PW  padding along W       (each side, at most K // 2)
    DH  dilation along H      DW  dilation along W      (max pooling only)
    OH  output height         OW  output width

    tap (kh, kw) of window (oh, ow) reads x[n, c, i, j] with
        i = oh*SH - PH + kh*DH,   j = ow*SW - PW + kw*DW      (outside x: padding)

    max:  y[n, c, oh, ow] = max over the taps inside x          (padding counts as -inf)
          dX[n, c, i, j]  = sum of dY[n, c, oh, ow] over the windows whose maximum is
                            x[n, c, i, j]; on a tie, tie='first' gives it all to the first
                            maximum (row-major: smallest kh, then kw; PyTorch's rule),
                            tie='split' gives dY / m to each of the m equal maxima
    avg:  y[n, c, oh, ow] = (sum of the window's taps, padding = 0) / d[oh, ow]
          dX[n, c, i, j]  = sum of dY[n, c, oh, ow] / d[oh, ow] over the windows that
                            read x[n, c, i, j]

The divisor d (PyTorch's rule): the window's rows run from hs = oh*SH - PH to
he = min(hs + KH, H + PH) (a ``ceil_mode`` window that runs past the padding is cut
there), its columns likewise; with ``count_include_pad`` d = (he - hs) * (we - ws),
padding included; without, d counts only the taps inside x.

The numbers are computed here by explicit loops over the windows (readable, no kernel),
then the same inputs go through ``nn.functional.max_pool2d`` / ``avg_pool2d`` and
autograd, and y, dX (and the max-pool indices) must be equal (an AssertionError
otherwise: a disagreement is a bug, never a lesson).

Drawn values (x given as a shape): for max pooling with ``tie='first'`` the values of a
plane are distinct (no tie, one obvious maximum per window); with ``tie='split'`` they
come from three levels (integers 0, 1, 2, or three normal floats) so that windows do
tie, and are drawn again (same seed, same numbers) until at least one window has a tie
when the geometry allows one. Given arrays are used as they are.

Printable sizes (``LIMITS``): N <= 4, C <= 6, H and W <= 16, KH and KW <= 5, OH and
OW <= 12, and at most 64 windows in all (N*C*OH*OW: one line each). Anything larger raises
a ValueError that suggests smaller sizes or ``summary=True``.
"""
from __future__ import annotations

import numpy as np

from .. import geometry
from ..autograd import no_grad
from ..creation import tensor
from ..nn import functional as F
from .conv import integral, is_shape, max_abs_diff, shape_of
from .core import Explanation, Matrix, Step, as_array, check_printable, draw, fmt_number, planes

__all__ = ["max_pool2d", "avg_pool2d", "LIMITS", "WorkedExplanation"]

LIMITS = dict(N=4, C=6, H=16, W=16, KH=5, KW=5, OH=12, OW=12, windows=64)
HIGH_DY = 2          # drawn dY: integers in [-2, 2]


class WorkedExplanation(Explanation):
    """An Explanation whose whole numbers print as integers and every other value with
    ``decimals`` digits: integer inputs stay readable (``3``) next to the fractions they
    lead to (``0.500``, ``-1.2247``)."""

    def number(self, v):
        if np.isfinite(v) and float(v) == round(float(v)):
            return fmt_number(v, 0)
        return fmt_number(v, self.decimals)


# ----------------------------------------------------------------------------- geometry

def pool_window(op, x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """The ``geometry.Window2d``, resolved as ``F.max_pool2d`` resolves it (call after the
    op has validated the arguments)."""
    kernel, stride, padding, dilation = geometry.pool_args(kernel_size, stride, padding,
                                                           dilation, op)
    return geometry.make_window(tuple(x_shape[-2:]), kernel, stride, padding, dilation,
                                bool(ceil_mode))


def taps(win, oh, ow):
    """[(kh, kw, i, j, inside)] for every tap of window (oh, ow), row-major: the input
    position it reads and whether that is inside x (else padding)."""
    out = []
    for kh in range(win.KH):
        for kw in range(win.KW):
            i = oh * win.SH - win.PH + kh * win.DH
            j = ow * win.SW - win.PW + kw * win.DW
            out.append((kh, kw, i, j, 0 <= i < win.H and 0 <= j < win.W))
    return out


def header(op, win, ceil_mode, extra=()):
    """Lines: the geometry, and OH, OW worked out with the numbers put in."""
    lines = [f"x (N, C, H, W) = {extra[0]}" if extra else "",
             f"kernel (KH, KW) = {(win.KH, win.KW)}    stride (SH, SW) = {(win.SH, win.SW)}"
             f"    padding (PH, PW) = {(win.PH, win.PW)}"
             + (f"    dilation (DH, DW) = {(win.DH, win.DW)}" if op == "max_pool2d" else "")
             + f"    ceil_mode = {bool(ceil_mode)}"]
    for L, K, S, P, D, O, name in ((win.H, win.KH, win.SH, win.PH, win.DH, win.OH, "OH"),
                                   (win.W, win.KW, win.SW, win.PW, win.DW, win.OW, "OW")):
        span = L + 2 * P - D * (K - 1) - 1
        # avg_pool2d has no dilation: its formula is written with K - 1
        reach, nums = (("D*(K-1)", f"{D}*{K - 1}") if op == "max_pool2d" else
                       ("(K-1)", f"{K - 1}"))
        if ceil_mode:
            out = (span + S - 1) // S + 1
            text = (f"{name} = floor((L + 2P - {reach} - 1 + S-1) / S) + 1 (ceil_mode) = "
                    f"floor(({L} + {2 * P} - {nums} - 1 + {S - 1}) / {S}) + 1 = {out}")
            if out != O:
                text += (f", minus 1 because the last window would start at "
                         f"{(out - 1) * S} >= L + P = {L + P} (past the input and its "
                         f"padding): {O}")
        else:
            text = (f"{name} = floor((L + 2P - {reach} - 1) / S) + 1 = "
                    f"floor(({L} + {2 * P} - {nums} - 1) / {S}) + 1 = {O}")
        lines.append(text)
    return [line for line in lines if line]


def padded(x, win, fill):
    """x (N, C, H, W) on a canvas of the padded size (``win.padded_hw``: the padding, and
    past it the rows/columns a ceil_mode window runs into), filled with ``fill``."""
    HP, WP = win.padded_hw
    canvas = np.full(x.shape[:2] + (HP, WP), fill, dtype=np.float64)
    canvas[:, :, win.PH:win.PH + win.H, win.PW:win.PW + win.W] = x
    return canvas


def check_sizes(op, x_shape, win=None):
    N, C, H, W = x_shape
    sizes = [("batch N", N, LIMITS["N"]), ("channels C", C, LIMITS["C"]),
             ("input height H", H, LIMITS["H"]), ("input width W", W, LIMITS["W"])]
    if win is not None:
        sizes += [("kernel height KH", win.KH, LIMITS["KH"]),
                  ("kernel width KW", win.KW, LIMITS["KW"]),
                  ("output height OH", win.OH, LIMITS["OH"]),
                  ("output width OW", win.OW, LIMITS["OW"]),
                  ("windows N*C*OH*OW", N * C * win.OH * win.OW, LIMITS["windows"])]
    check_printable(op, sizes)


def batched_input(x, op):
    """(x as given or as a float64 (N, C, H, W) array, its 4-D shape): a (C, H, W) image
    or shape becomes a batch of one."""
    xs = shape_of(x)
    if len(xs) == 3:
        xs = (1,) + tuple(xs)
        x = xs if is_shape(x) else as_array(x, "x", op)[None]
    return x, tuple(int(s) for s in xs)


def check_values(values, op):
    values = "int" if values is None else values
    if values not in ("int", "float"):
        raise ValueError(f"explain.{op}: values must be 'int' or 'float', got {values!r}")
    return values


def upstream(dy, shape, rng, values, seed, op):
    """(dY array, note): drawn when None (or a shape), else checked against the output's
    shape."""
    if dy is None or is_shape(dy):
        note = (f"drawn with seed {seed}: integers in [-{HIGH_DY}, {HIGH_DY}]"
                if values == "int" else f"drawn with seed {seed}: standard normal")
        return draw(shape, rng, values, HIGH_DY), note
    dy = as_array(dy, "dy", op)
    if dy.ndim == 3 and len(shape) == 4 and shape[0] == 1:
        dy = dy[None]
    if dy.shape != tuple(shape):
        raise ValueError(f"explain.{op}: dy must have the output's shape {tuple(shape)}, "
                         f"got {dy.shape}")
    return dy, "given"


def cell(*idx):
    return "[" + ",".join(str(int(v)) for v in idx) + "]"


def out_labels(N, C, win):
    return [f"({n},{c},{oh},{ow})" for n in range(N) for c in range(C)
            for oh in range(win.OH) for ow in range(win.OW)]


def tap_labels(win):
    return [f"({kh},{kw})" for kh in range(win.KH) for kw in range(win.KW)]


def scatter_lines(terms, dX, fmt, what):
    """'dX[n,c,i,j] = share + share = total' for every cell of dX; ``terms`` maps a cell
    to [(text of the share, value)]."""
    lines = []
    for (n, c, i, j), ts in terms.items():
        if not ts:
            lines.append(f"dX{cell(n, c, i, j)} = 0   ({what})")
            continue
        refs = " + ".join(t for t, _ in ts)
        vals = " + ".join(f"({fmt(v)})" for _, v in ts)
        total = fmt(dX[n, c, i, j])
        lines.append(f"dX{cell(n, c, i, j)} = {refs} = {vals} = {total}")
    return lines


# ============================================================================= max pooling

def draw_max_input(shape, rng, values, tie, win_of):
    """x for max pooling given as a shape (module docstring): distinct values per plane for
    tie='first', three levels (redrawn until some window ties) for tie='split'.
    Returns (x, note)."""
    N, C, H, W = shape
    if tie == "first":
        if values == "int":
            R = max(9, (H * W + 1) // 2 + 2)
            x = np.stack([rng.choice(np.arange(-R, R + 1), size=H * W, replace=False)
                          for _ in range(N * C)]).reshape(shape).astype(np.float64)
            return x, (f"x drawn with seed {{seed}}: distinct integers in [-{R}, {R}] in "
                       f"each plane (no ties)")
        return rng.standard_normal(shape), "x drawn with seed {seed}: standard normal"
    win = win_of(shape)
    can_tie = any(sum(t[4] for t in taps(win, oh, ow)) > 1
                  for oh in range(win.OH) for ow in range(win.OW))
    for _ in range(200):
        if values == "int":
            levels = np.array([0.0, 1.0, 2.0])
        else:
            levels = np.round(rng.standard_normal(3), 3)
        x = levels[rng.integers(0, 3, size=shape)]
        if not can_tie or max_windows(x, win)[1]:
            break
    what = "the integers 0, 1, 2" if values == "int" else "three normal values"
    return x, (f"x drawn with seed {{seed}} from {what}, so that windows tie "
               f"(tie='split' shares their gradient)")


def max_windows(x, win):
    """Every window of x (N, C, H, W), by loops: a list of dicts with the output cell
    (n, c, oh, ow), its taps [(kh, kw, i, j, inside, value)], the maximum and the maxima
    [(kh, kw, i, j)] in row-major order; and whether any window has a tie."""
    N, C = x.shape[:2]
    out, any_tie = [], False
    for n in range(N):
        for c in range(C):
            for oh in range(win.OH):
                for ow in range(win.OW):
                    ts = [(kh, kw, i, j, inside, x[n, c, i, j] if inside else -np.inf)
                          for kh, kw, i, j, inside in taps(win, oh, ow)]
                    m = max(v for *_, v in ts)
                    maxima = [(kh, kw, i, j) for kh, kw, i, j, inside, v in ts
                              if inside and v == m]
                    any_tie |= len(maxima) > 1
                    out.append(dict(cell=(n, c, oh, ow), taps=ts, max=m, maxima=maxima))
    return out, any_tie


def max_backward(wins, dy, x_shape, tie):
    """dX by the rule of ``tie``, and {(n, c, i, j): [(share text, value)]}."""
    dX = np.zeros(x_shape)
    terms = {(n, c, i, j): [] for n in range(x_shape[0]) for c in range(x_shape[1])
             for i in range(x_shape[2]) for j in range(x_shape[3])}
    for w in wins:
        n, c, oh, ow = w["cell"]
        g = dy[n, c, oh, ow]
        targets = w["maxima"][:1] if tie == "first" else w["maxima"]
        m = len(targets)
        for _, _, i, j in targets:
            dX[n, c, i, j] += g / m
            terms[n, c, i, j].append((f"dY{cell(n, c, oh, ow)}" + (f"/{m}" if m > 1 else ""),
                                      g / m))
    return dX, terms


def autograd_max(x, dy, args, tie):
    """(y, indices, dX) from ``F.max_pool2d`` and autograd (dy None: dX None)."""
    with no_grad():
        y, idx = F.max_pool2d(tensor(x), *args, return_indices=True, tie=tie)
    if dy is None:
        return y.numpy(), idx.numpy(), None
    xt = tensor(x, requires_grad=True)
    F.max_pool2d(xt, *args, tie=tie).backward(tensor(dy))
    return y.numpy(), idx.numpy(), xt.grad.numpy()


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               tie="first", dy=None, *, values=None, seed=0, summary=False):
    """Explain ``max_pool2d`` forward and backward: every window's taps, its maximum and
    where it sits, and where each gradient goes.

    x: (N, C, H, W) or (C, H, W) array or Tensor, or a shape tuple (values drawn: see the
    module docstring); kernel_size, stride, padding, dilation, ceil_mode: as
    ``nn.functional.max_pool2d``; tie: 'first' (PyTorch's rule: a window's whole gradient
    to its first maximum) or 'split' (shared evenly by equal maxima). dy: the upstream
    gradient (N, C, OH, OW), or None to draw one. values: 'int' (default) or 'float';
    seed: for the drawn values; summary: shapes only (any size, nothing checked).

    When some window has equal maxima a step compares dX under both rules. Returns a
    ``WorkedExplanation``; errors: ``F.max_pool2d``'s for impossible arguments, a
    ValueError when too large to print.
    """
    op = "max_pool2d"
    values = check_values(values, op)
    if tie not in ("first", "split"):
        raise ValueError(f"explain.{op}: tie must be 'first' or 'split', got {tie!r}")
    x, xs = batched_input(x, op)
    if len(xs) != 4:
        raise ValueError(f"explain.{op}: expected x of shape (N, C, H, W) or (C, H, W), got "
                         f"{xs}")
    args = (kernel_size, stride, padding, dilation, ceil_mode)
    with no_grad():       # F.max_pool2d validates the arguments on one zero image
        F.max_pool2d(tensor(np.zeros((1,) + xs[1:])), *args, tie=tie)
    win = pool_window(op, xs, *args[:4], ceil_mode)
    head = header(op, win, ceil_mode, (xs,)) + [
        f"y (N, C, OH, OW) = {(xs[0], xs[1], win.OH, win.OW)}    tie = {tie!r}"]
    if summary:
        return pool_summary(op, xs, win, head)
    check_sizes(op, xs, win)
    rng = np.random.default_rng(seed)
    if is_shape(x):
        x, note = draw_max_input(xs, rng, values, tie,
                                 lambda s: pool_window(op, s, *args[:4], ceil_mode))
        head.append(note.format(seed=seed))
    else:
        x = as_array(x, "x", op)
    wins, any_tie = max_windows(x, win)
    dy, dy_note = upstream(dy, (xs[0], xs[1], win.OH, win.OW), rng, values, seed, op)

    # forward: y = each window's max; argmax as a tap (kh*KW + kw) and as PyTorch's index
    N, C = xs[:2]
    y = np.zeros((N, C, win.OH, win.OW))
    tap = np.zeros_like(y)
    index = np.zeros_like(y)
    for w in wins:
        kh, kw, i, j = w["maxima"][0]
        y[w["cell"]] = w["max"]
        tap[w["cell"]] = kh * win.KW + kw
        index[w["cell"]] = i * win.W + j
    # backward: each window's dY to its maximum (or shared by its maxima)
    dX, terms = max_backward(wins, dy, xs, tie)
    other = "split" if tie == "first" else "first"
    dX_other, _ = max_backward(wins, dy, xs, other)

    y_ref, idx_ref, dX_ref = autograd_max(x, dy, args, tie)
    pairs = [("y", y, y_ref), ("indices", index, idx_ref), ("dX", dX, dX_ref)]
    if any_tie:
        pairs.append((f"dX (tie={other!r})", dX_other, autograd_max(x, dy, args, other)[2]))
    diff = max_abs_diff(pairs, op)

    ex = WorkedExplanation(op, head, [], diff, 0 if integral(x, dy, dX, dX_other) else 3)
    f = ex.number
    xpad = padded(x, win, -np.inf)
    win_matrix = np.array([[v for *_, v in w["taps"]] for w in wins])
    pl = dict(row_title="oh", col_title="ow")
    window_lines = []
    for w in wins:
        parts = [f"x{cell(w['cell'][0], w['cell'][1], i, j)}={f(v)}" if inside else "pad"
                 for kh, kw, i, j, inside, v in w["taps"]]
        kh, kw, i, j = w["maxima"][0]
        line = (f"y{cell(*w['cell'])} = max({', '.join(parts)}) = {f(w['max'])} at tap "
                f"({kh},{kw}) = x{cell(w['cell'][0], w['cell'][1], i, j)}")
        if len(w["maxima"]) > 1:
            line += (f"   ({len(w['maxima'])} equal maxima, taps "
                     + ", ".join(f"({a},{b})" for a, b, _, _ in w["maxima"]) + ")")
        window_lines.append(line)
    steps = [
        Step("inputs", "forward", "the input x (N, C, H, W)", "", planes("x", x)),
        Step("x_pad", "forward", "pad with -inf (a padded tap never wins the max)",
             f"xpad[n, c, PH + i, PW + j] = x[n, c, i, j], -inf elsewhere; (PH, PW) = "
             f"{(win.PH, win.PW)}" + ("; extended past the padding where a ceil_mode window "
                                      "runs over the edge" if win.padded_hw !=
                                      (win.H + 2 * win.PH, win.W + 2 * win.PW) else ""),
             planes("xpad", xpad)),
        Step("windows", "forward", "every window's taps: one row per output cell",
             "tap (kh, kw) of window (oh, ow) reads x[n, c, oh*SH - PH + kh*DH, "
             "ow*SW - PW + kw*DW]  (-inf: padding)",
             [Matrix.of("windows", win_matrix, out_labels(N, C, win), tap_labels(win),
                        "(n,c,oh,ow)", "(kh,kw)")], window_lines),
        Step("y", "forward", "y = the maximum of each window, and where it is",
             "y[n, c, oh, ow] = max over the window's taps\n"
             "argmax tap k = kh*KW + kw (the first maximum, row-major); "
             "index = i*W + j, its position in x (PyTorch's return_indices)",
             planes("y", y, **pl) + planes("argmax tap k", tap, **pl)
             + planes("argmax index i*W+j", index, **pl)),
        Step("dY", "backward", "the upstream gradient dY = dL/dy", f"dY (N, C, OH, OW)   "
             f"({dy_note})", planes("dY", dy, **pl)),
        Step("route", "backward", "each dY goes to its window's maximum"
             + (" (shared on a tie)" if tie == "split" else ""),
             "the max is a selection: y[n,c,oh,ow] = x at the argmax, so dY[n,c,oh,ow] flows "
             "to that tap only\n" + ("tie='first': all of it to the first maximum (PyTorch)"
                                     if tie == "first" else
                                     "tie='split': dY/m to each of the m equal maxima"),
             [], route_lines(wins, dy, tie, f)),
        Step("dX", "backward", "dX: the sum of what every window sent to each input",
             "dX[n, c, i, j] = sum of dY[n, c, oh, ow] over the windows whose maximum is "
             "x[n, c, i, j]" + (" (divided by m on a tie)" if tie == "split" else ""),
             planes("dX", dX), scatter_lines(terms, dX, f, "the maximum of no window")),
    ]
    if any_tie:
        first, split = (dX, dX_other) if tie == "first" else (dX_other, dX)
        steps.append(Step(
            "ties", "backward", "equal maxima: tie='first' (PyTorch) against tie='split'",
            "a window with m equal maxima is not differentiable there; each rule picks a "
            "subgradient:\n'first' gives dY to the first maximum, 'split' gives dY/m to each; "
            "both keep the window's total",
            planes("dX (tie='first')", first) + planes("dX (tie='split')", split)
            + planes("split - first", split - first),
            [f"chosen here: tie={tie!r}; both checked against F.max_pool2d(..., tie=...)"]))
    ex.steps = steps
    ex.arrays = dict(x=x, x_pad=xpad, windows=win_matrix, y=y, argmax_tap=tap,
                     indices=index, dy=dy, dX=dX, **{f"dX_{other}": dX_other})
    ex.geometry = win
    ex.scatter = {k: [(f"({kh},{kw})", f"({n},{c},{oh},{ow})", v)
                      for (kh, kw, n, c, oh, ow, v) in ts]
                  for k, ts in scatter_taps(wins, dy, xs, tie).items()}
    return ex


def route_lines(wins, dy, tie, f):
    lines = []
    for w in wins:
        n, c, oh, ow = w["cell"]
        g = dy[n, c, oh, ow]
        targets = w["maxima"][:1] if tie == "first" else w["maxima"]
        m = len(targets)
        dest = ", ".join(f"x{cell(n, c, i, j)}" for _, _, i, j in targets)
        if m == 1:
            lines.append(f"dY{cell(n, c, oh, ow)} = {f(g)} -> {dest}"
                         + (f"   (first of {len(w['maxima'])} equal maxima)"
                            if len(w["maxima"]) > 1 else ""))
        else:
            lines.append(f"dY{cell(n, c, oh, ow)} = {f(g)} -> {f(g)}/{m} = {f(g / m)} to "
                         f"each of {dest}")
    return lines


def scatter_taps(wins, dy, x_shape, tie):
    """{(n, c, i, j): [(kh, kw, n, c, oh, ow, share)]}: which window's gradient lands on
    each input (for the HTML page)."""
    out = {(n, c, i, j): [] for n in range(x_shape[0]) for c in range(x_shape[1])
           for i in range(x_shape[2]) for j in range(x_shape[3])}
    for w in wins:
        n, c, oh, ow = w["cell"]
        targets = w["maxima"][:1] if tie == "first" else w["maxima"]
        for kh, kw, i, j in targets:
            out[n, c, i, j].append((kh, kw, n, c, oh, ow, dy[n, c, oh, ow] / len(targets)))
    return out


def pool_summary(op, xs, win, head):
    """Shapes only (any size)."""
    S = Matrix.shape_only
    N, C = xs[:2]
    out = (N, C, win.OH, win.OW)
    rows = [("inputs", "forward", "the input", [S("x", xs)]),
            ("x_pad", "forward", "pad the input", [S("xpad", (N, C) + win.padded_hw)]),
            ("windows", "forward", "every window's taps (N*C*OH*OW x KH*KW)",
             [S("windows", (N * C * win.OH * win.OW, win.KH * win.KW), "(n,c,oh,ow)",
                "(kh,kw)")])]
    if op == "avg_pool2d":
        rows.append(("divisor", "forward", "the divisor of each window", [S("d", out[2:])]))
    rows += [("y", "forward", "the output", [S("y", out)]),
             ("dY", "backward", "the upstream gradient", [S("dY", out)])]
    if op == "avg_pool2d":
        rows.append(("share", "backward", "each window's share dY / d", [S("dY/d", out)]))
    rows.append(("dX", "backward", "the gradient of the input", [S("dX", xs)]))
    return WorkedExplanation(op, head, [Step(k, ph, t, "", m) for k, ph, t, m in rows], None,
                             summary=True)


# ============================================================================= avg pooling

def divisors(win, count_include_pad):
    """d (OH, OW) by PyTorch's rule (module docstring), and the window's row/column span
    clipped to the padded input, for every output cell."""
    d = np.zeros((win.OH, win.OW))
    for oh in range(win.OH):
        hs = oh * win.SH - win.PH
        he = min(hs + win.KH, win.H + win.PH)         # cut at the end of the padding
        for ow in range(win.OW):
            ws = ow * win.SW - win.PW
            we = min(ws + win.KW, win.W + win.PW)
            if count_include_pad:
                d[oh, ow] = (he - hs) * (we - ws)
            else:                                     # only the taps inside x
                d[oh, ow] = (min(he, win.H) - max(hs, 0)) * (min(we, win.W) - max(ws, 0))
    return d


def autograd_avg(x, dy, args):
    with no_grad():
        y = F.avg_pool2d(tensor(x), *args)
    if dy is None:
        return y.numpy(), None
    xt = tensor(x, requires_grad=True)
    F.avg_pool2d(xt, *args).backward(tensor(dy))
    return y.numpy(), xt.grad.numpy()


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, dy=None, *, values=None, seed=0, summary=False):
    """Explain ``avg_pool2d`` forward and backward: every window's sum and divisor, and
    each tap's share dY / d of the gradient.

    x: (N, C, H, W) or (C, H, W) array or Tensor, or a shape tuple (integers in [-3, 3]
    drawn with ``seed``, or normal floats with values='float'); kernel_size, stride,
    padding, ceil_mode, count_include_pad: as ``nn.functional.avg_pool2d``; dy: the
    upstream gradient (N, C, OH, OW), or None to draw one. The divisor of every output
    cell is shown both ways (with and without count_include_pad) next to KH*KW, so the
    effect of padding and ceil_mode can be read off. Returns a ``WorkedExplanation``.
    """
    op = "avg_pool2d"
    values = check_values(values, op)
    x, xs = batched_input(x, op)
    if len(xs) != 4:
        raise ValueError(f"explain.{op}: expected x of shape (N, C, H, W) or (C, H, W), got "
                         f"{xs}")
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad)
    with no_grad():
        F.avg_pool2d(tensor(np.zeros((1,) + xs[1:])), *args)
    win = pool_window(op, xs, kernel_size, stride, padding, 1, ceil_mode)
    head = header(op, win, ceil_mode, (xs,)) + [
        f"y (N, C, OH, OW) = {(xs[0], xs[1], win.OH, win.OW)}    "
        f"count_include_pad = {bool(count_include_pad)}"]
    if summary:
        return pool_summary(op, xs, win, head)
    check_sizes(op, xs, win)
    rng = np.random.default_rng(seed)
    if is_shape(x):
        x = draw(xs, rng, values, 3)
        head.append(f"x drawn with seed {seed}: " + ("integers in [-3, 3]" if values == "int"
                                                     else "standard normal"))
    else:
        x = as_array(x, "x", op)
    N, C = xs[:2]
    dy, dy_note = upstream(dy, (N, C, win.OH, win.OW), rng, values, seed, op)

    d_with = divisors(win, True)
    d_without = divisors(win, False)
    d = d_with if count_include_pad else d_without
    # forward, by loops over the windows
    sums = np.zeros((N, C, win.OH, win.OW))
    win_rows, lines = [], []
    for n in range(N):
        for c in range(C):
            for oh in range(win.OH):
                for ow in range(win.OW):
                    ts = taps(win, oh, ow)
                    vals = [x[n, c, i, j] if inside else 0.0 for _, _, i, j, inside in ts]
                    win_rows.append(vals)
                    sums[n, c, oh, ow] = sum(vals)
    y = sums / d
    share = dy / d
    dX = np.zeros(xs)
    terms = {(n, c, i, j): [] for n in range(N) for c in range(C)
             for i in range(xs[2]) for j in range(xs[3])}
    scatter = {k: [] for k in terms}
    for n in range(N):
        for c in range(C):
            for oh in range(win.OH):
                for ow in range(win.OW):
                    for kh, kw, i, j, inside in taps(win, oh, ow):
                        if inside:                       # a share on padding is dropped
                            dX[n, c, i, j] += share[n, c, oh, ow]
                            terms[n, c, i, j].append(
                                (f"dY{cell(n, c, oh, ow)}/{int(d[oh, ow])}",
                                 share[n, c, oh, ow]))
                            scatter[n, c, i, j].append((f"({kh},{kw})", f"({n},{c},{oh},{ow})",
                                                        share[n, c, oh, ow]))

    y_ref, dX_ref = autograd_avg(x, dy, args)
    diff = max_abs_diff([("y", y, y_ref), ("dX", dX, dX_ref)], op)
    ex = WorkedExplanation(op, head, [], diff, 0 if integral(x, dy, y, dX) else 3)
    f = ex.number
    for n in range(N):
        for c in range(C):
            for oh in range(win.OH):
                for ow in range(win.OW):
                    parts = [f"x{cell(n, c, i, j)}" if inside else "pad"
                             for _, _, i, j, inside in taps(win, oh, ow)]
                    nums = " + ".join(f"({f(x[n, c, i, j])})" if inside else "0"
                                      for _, _, i, j, inside in taps(win, oh, ow))
                    lines.append(f"y{cell(n, c, oh, ow)} = ({' + '.join(parts)}) / "
                                 f"{int(d[oh, ow])} = ({nums}) / {int(d[oh, ow])} = "
                                 f"{f(sums[n, c, oh, ow])}/{int(d[oh, ow])} = "
                                 f"{f(y[n, c, oh, ow])}")
    pl = dict(row_title="oh", col_title="ow")
    full = np.full((win.OH, win.OW), float(win.KH * win.KW))
    why = divisor_lines(win, d_with, d_without)
    ex.steps = [
        Step("inputs", "forward", "the input x (N, C, H, W)", "", planes("x", x)),
        Step("x_pad", "forward", "pad with zeros (a padded tap adds nothing to the sum)",
             f"xpad[n, c, PH + i, PW + j] = x[n, c, i, j], 0 elsewhere; (PH, PW) = "
             f"{(win.PH, win.PW)}", planes("xpad", padded(x, win, 0.0))),
        Step("windows", "forward", "every window's taps: one row per output cell",
             "tap (kh, kw) of window (oh, ow) reads x[n, c, oh*SH - PH + kh, ow*SW - PW + kw]"
             "  (0: padding, or past it)",
             [Matrix.of("windows", np.array(win_rows), out_labels(N, C, win), tap_labels(win),
                        "(n,c,oh,ow)", "(kh,kw)")]),
        Step("divisor", "forward", "the divisor d of each window",
             "rows hs = oh*SH - PH .. he = min(hs + KH, H + PH) (a ceil_mode window is cut at "
             "the end of the padding), columns likewise\n"
             "count_include_pad=True:  d = (he - hs) * (we - ws), padding counted\n"
             "count_include_pad=False: d = the taps inside x only\n"
             f"used here: count_include_pad={bool(count_include_pad)}",
             [Matrix.of("KH*KW", full, row_title="oh", col_title="ow"),
              Matrix.of("d (count_include_pad=True)", d_with, row_title="oh", col_title="ow"),
              Matrix.of("d (count_include_pad=False)", d_without, row_title="oh",
                        col_title="ow")], why),
        Step("y", "forward", "y = each window's sum / its divisor",
             "y[n, c, oh, ow] = (sum of the window's taps) / d[oh, ow]",
             planes("window sums", sums, **pl) + planes("y", y, **pl), lines),
        Step("dY", "backward", "the upstream gradient dY = dL/dy",
             f"dY (N, C, OH, OW)   ({dy_note})", planes("dY", dy, **pl)),
        Step("share", "backward", "each tap's share: dY / d",
             "y is a sum of taps times 1/d, so every tap of window (oh, ow) gets "
             "dY[n, c, oh, ow] / d[oh, ow]", planes("dY/d", share, **pl)),
        Step("dX", "backward", "dX: the shares of every window that read each input",
             "dX[n, c, i, j] = sum of dY[n, c, oh, ow] / d[oh, ow] over the windows that read "
             "x[n, c, i, j]  (overlapping windows add; shares on padding are dropped)",
             planes("dX", dX), scatter_lines(terms, dX, f, "read by no window")),
    ]
    ex.arrays = dict(x=x, windows=np.array(win_rows), divisor=d, divisor_with_pad=d_with,
                     divisor_without_pad=d_without, sums=sums, y=y, dy=dy, share=share, dX=dX)
    ex.geometry = win
    ex.scatter = scatter
    return ex


def divisor_lines(win, d_with, d_without):
    """Why a divisor differs from KH*KW: the window's rows and columns, where they hit the
    padding or (ceil_mode) run past it."""
    lines = []
    for oh in range(win.OH):
        hs = oh * win.SH - win.PH
        he_raw, he = hs + win.KH, min(hs + win.KH, win.H + win.PH)
        for ow in range(win.OW):
            ws = ow * win.SW - win.PW
            we_raw, we = ws + win.KW, min(ws + win.KW, win.W + win.PW)
            if d_with[oh, ow] == d_without[oh, ow] == win.KH * win.KW:
                continue
            cut = []
            if he != he_raw or we != we_raw:
                cut.append("cut at the end of the padding (ceil_mode)")
            lines.append(
                f"d[{oh},{ow}]: rows {hs}..{he - 1}, columns {ws}..{we - 1}"
                + (f" ({', '.join(cut)})" if cut else "")
                + f": with padding {he - hs}*{we - ws} = {int(d_with[oh, ow])}; inside x "
                f"{min(he, win.H) - max(hs, 0)}*{min(we, win.W) - max(ws, 0)} = "
                f"{int(d_without[oh, ow])}")
    if not lines:
        lines.append(f"every window lies inside x: d = KH*KW = {win.KH * win.KW} everywhere")
    return lines
