"""``explain.conv2d``: every step of a convolution's forward and backward pass, in numbers.

Shape letters (as in ``minidl/ops/conv.py``)::

    N   batch size            C   input channels         OC  output channels
    H   input height          W   input width            G   groups
    KH  kernel height         KW  kernel width           Cg = C / G,  OCg = OC / G
    SH  stride along H        SW  stride along W         K  = Cg * KH * KW  (one window)
    PH0, PH1  padding above and below                    L  = N * OH * OW   (all windows)
    PW0, PW1  padding left and right                     RH = DH*(KH-1) + 1 (the dilated
    DH  dilation along H      DW  dilation along W       RW = DW*(KW-1) + 1  kernel's reach)
    OH  output height         OW  output width

The steps are computed with the pieces that train minidl's models: ``im2col`` / ``col2im``
from ``minidl.kernels.im2col`` on a ``minidl.geometry.ConvGeometry``, and NumPy matrix
products for the GEMMs. The same inputs then go through ``nn.functional.conv2d`` and
autograd, and the explainer's y, dW, db and dX must equal autograd's (an AssertionError
otherwise: a disagreement is a bug, never a lesson). The flipped-kernel view of dX is
computed a third way, by explicit loops, and must equal col2im's dX.

Printable sizes (``LIMITS``): numbers are shown when N <= 4, C <= 6, OC <= 6, H and W <= 16,
KH and KW <= 5, OH and OW <= 12, and the im2col matrix of one group has at most 64 rows
(K = Cg*KH*KW) and 64 columns (L = N*OH*OW). Anything larger raises a ValueError that
suggests smaller sizes or ``summary=True`` (the shape of every step, no numbers).
"""
from __future__ import annotations

import numpy as np

from .. import geometry
from ..autograd import no_grad
from ..creation import tensor
from ..kernels.im2col import col2im, im2col
from ..nn import functional as F
from .core import Explanation, Matrix, Step, as_array, check_printable, draw, planes

__all__ = ["conv2d", "LIMITS", "conv_steps"]

LIMITS = dict(N=4, C=6, OC=6, H=16, W=16, KH=5, KW=5, OH=12, OW=12, K=64, L=64)

# |value| bounds of the integers drawn for an input given as a shape (values='int')
HIGH = dict(x=3, w=2, b=2, dy=2)


# ----------------------------------------------------------------------------- labels

def row_labels(geo, g):
    """Labels '(c,kh,kw)' of the K rows of group g's im2col matrix; c is the channel of x
    (g*Cg + the row's channel within the group)."""
    Cg = geo.C // geo.G
    return [f"({g * Cg + c},{kh},{kw})"
            for c in range(Cg) for kh in range(geo.KH) for kw in range(geo.KW)]


def col_labels(geo):
    """Labels '(n,oh,ow)' of the L = N*OH*OW columns of the im2col matrix (row-major)."""
    return [f"({n},{oh},{ow})"
            for n in range(geo.N) for oh in range(geo.OH) for ow in range(geo.OW)]


def out_labels(geo, g):
    """Labels 'o' of the OCg output channels of group g."""
    OCg = geo.OC // geo.G
    return [str(g * OCg + o) for o in range(OCg)]


# ----------------------------------------------------------------------------- numbers

def compute(x, w, b, dy, geo):
    """Every array of every step, as a dict. x (N, C, H, W), w (OC, Cg, KH, KW), b (OC,) or
    None, dy (N, OC, OH, OW), all float64; geo the ConvGeometry."""
    G, C, OC = geo.G, geo.C, geo.OC
    Cg, OCg = C // G, OC // G
    K, L = Cg * geo.KH * geo.KW, geo.N * geo.OH * geo.OW
    a = dict(x=x, w=w, b=b, dy=dy)

    # forward ------------------------------------------------------------------------
    a["x_pad"] = np.pad(x, ((0, 0), (0, 0), (geo.PH0, geo.PH1), (geo.PW0, geo.PW1)))
    # col[c, kh, kw, n, oh, ow] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]
    col6 = im2col(x, geo)                                   # (C, KH, KW, N, OH, OW)
    a["col"] = col6.reshape(G, K, L)                        # (G, K, L), a view
    a["Wm"] = w.reshape(G, OCg, K)                          # (G, OCg, K)
    a["Y"] = a["Wm"] @ a["col"]                             # (G, OCg, L): one GEMM a group
    y = a["Y"].reshape(OC, geo.N, geo.OH, geo.OW).transpose(1, 0, 2, 3)  # (N, OC, OH, OW)
    a["y"] = y + (0.0 if b is None else b[None, :, None, None])

    # backward -----------------------------------------------------------------------
    a["dY"] = dy.transpose(1, 0, 2, 3).reshape(G, OCg, L)   # (G, OCg, L), like Y
    a["dWm"] = a["dY"] @ a["col"].transpose(0, 2, 1)        # (G, OCg, K)
    a["dW"] = a["dWm"].reshape(w.shape)                     # (OC, Cg, KH, KW)
    a["db"] = dy.sum(axis=(0, 2, 3))                        # (OC,)
    a["dcol"] = a["Wm"].transpose(0, 2, 1) @ a["dY"]        # (G, K, L)
    a["dX"] = col2im(a["dcol"].reshape(geo.col_shape), geo)  # (N, C, H, W)
    a["scatter"] = scatter_terms(a["dcol"], geo)
    a.update(flipped_kernel_dx(dy, w, geo))
    return a


def scatter_terms(dcol, geo):
    """{(n, c, i, j): [(row, column, value), ...]}: every dcol entry that col2im adds into
    dX[n, c, i, j], found by running im2col's index formula forwards:
    entry ((c,kh,kw), (n,oh,ow)) came from xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW], that is
    x[n, c, i, j] with i = oh*SH + kh*DH - PH0, j = ow*SW + kw*DW - PW0 (when inside x;
    an entry copied from the zero padding goes nowhere)."""
    terms = {(n, c, i, j): [] for n in range(geo.N) for c in range(geo.C)
             for i in range(geo.H) for j in range(geo.W)}
    Cg = geo.C // geo.G
    rows = [(c, kh, kw) for c in range(Cg) for kh in range(geo.KH) for kw in range(geo.KW)]
    cols = [(n, oh, ow) for n in range(geo.N) for oh in range(geo.OH) for ow in range(geo.OW)]
    for g in range(geo.G):
        for r, (cl, kh, kw) in enumerate(rows):
            c = g * Cg + cl
            for k, (n, oh, ow) in enumerate(cols):
                i = oh * geo.SH + kh * geo.DH - geo.PH0
                j = ow * geo.SW + kw * geo.DW - geo.PW0
                if 0 <= i < geo.H and 0 <= j < geo.W:
                    terms[n, c, i, j].append((f"({c},{kh},{kw})", f"({n},{oh},{ow})",
                                              dcol[g, r, k]))
    return terms


def flipped_kernel_dx(dy, w, geo):
    """dX as a "full" convolution, computed with explicit loops (no im2col):

    1. dilate dY by the stride: U[n, o, oh*SH, ow*SW] = dY[n, o, oh, ow], zeros between;
       U is (N, OC, (OH-1)*SH + 1, (OW-1)*SW + 1)
    2. pad U with RH-1 zero rows above and below, RW-1 zero columns left and right
    3. dilate the kernel by the dilation and rotate it by 180 degrees:
       Wrot[o, c, RH-1-kh*DH, RW-1-kw*DW] = W[o, c, kh, kw]        (OC, Cg, RH, RW)
    4. correlate (slide without flipping) the padded U with Wrot, summing over the output
       channels o of c's group: the gradient of the padded input, rows 0 .. (OH-1)*SH+RH-1
    5. crop: dX = that[PH0 : PH0 + H, PW0 : PW0 + W] (rows past its end, which no window
       reached, are 0)

    Returns {'dy_dilated', 'dy_padded', 'w_rot', 'dX_full', 'dX_flip'}.
    """
    N, OC, C, G = geo.N, geo.OC, geo.C, geo.G
    Cg, OCg = C // G, OC // G
    RH, RW = geo.reach
    U = np.zeros((N, OC, (geo.OH - 1) * geo.SH + 1, (geo.OW - 1) * geo.SW + 1))
    U[:, :, ::geo.SH, ::geo.SW] = dy                                   # 1
    Up = np.pad(U, ((0, 0), (0, 0), (RH - 1, RH - 1), (RW - 1, RW - 1)))   # 2
    Wd = np.zeros((OC, Cg, RH, RW))
    Wd[:, :, ::geo.DH, ::geo.DW] = w
    Wrot = Wd[:, :, ::-1, ::-1]                                        # 3
    FH, FW = U.shape[2] + RH - 1, U.shape[3] + RW - 1
    full = np.zeros((N, C, FH, FW))
    for c in range(C):                                                 # 4
        g = c // Cg
        for o in range(g * OCg, (g + 1) * OCg):
            for th in range(RH):
                for tw in range(RW):
                    full[:, c] += Wrot[o, c - g * Cg, th, tw] * Up[:, o, th:th + FH, tw:tw + FW]
    canvas = np.zeros((N, C, max(FH, geo.PH0 + geo.H), max(FW, geo.PW0 + geo.W)))
    canvas[:, :, :FH, :FW] = full
    dX = canvas[:, :, geo.PH0:geo.PH0 + geo.H, geo.PW0:geo.PW0 + geo.W]   # 5
    return dict(dy_dilated=U, dy_padded=Up, w_rot=np.ascontiguousarray(Wrot), dX_full=full,
                dX_flip=dX)


# ----------------------------------------------------------------------------- autograd

def autograd_conv(x, w, b, dy, stride, padding, dilation, groups):
    """(y, dX, dW, db) from ``nn.functional.conv2d`` and autograd on the same float64 arrays.
    dy None: only the forward (y, None, None, None)."""
    xt = tensor(x, requires_grad=True)
    wt = tensor(w, requires_grad=True)
    bt = None if b is None else tensor(b, requires_grad=True)
    y = F.conv2d(xt, wt, bt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if dy is None:
        return y.numpy(), None, None, None
    y.backward(tensor(dy))
    return (y.numpy(), xt.grad.numpy(), wt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def max_abs_diff(pairs, name):
    """max |a - b| over (label, a, b) triples; AssertionError (a bug in the explainer or in
    minidl, never shown as a lesson) beyond float64 round-off."""
    worst, scale = 0.0, 1.0
    for label, a, b in pairs:
        if a is None and b is None:
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise AssertionError(f"explain.{name}: {label} has shape {a.shape}, autograd's "
                                 f"{b.shape}")
        d = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = max(scale, float(np.max(np.abs(b))) if b.size else 0.0)
        if d > 1e-9 * scale:
            raise AssertionError(f"explain.{name}: {label} differs from autograd by {d:.3g}: "
                                 f"a bug in the explainer or in minidl")
        worst = max(worst, d)
    return worst


# ----------------------------------------------------------------------------- inputs

def is_shape(v):
    """A tuple of ints stands for a shape to draw values for."""
    return isinstance(v, tuple) and all(geometry.is_int(s) for s in v)


def shape_of(v):
    if is_shape(v):
        return tuple(int(s) for s in v)
    if hasattr(v, "shape"):
        return tuple(v.shape)
    return np.shape(v)


def resolve(v, name, rng, values, op):
    """An input as a float64 array: drawn when given as a shape tuple, else copied."""
    if is_shape(v):
        return draw(shape_of(v), rng, values, HIGH.get(name, 2))
    return as_array(v, name, op)


def integral(*arrays):
    return all(a is None or np.array_equal(a, np.round(a)) for a in arrays)


def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """The ConvGeometry, resolved as ``F.conv2d`` resolves it (call after F.conv2d has
    validated the arguments)."""
    KH, KW = w_shape[2], w_shape[3]
    stride = geometry.pair(stride, "stride", "conv2d", minimum=1)
    dilation = geometry.pair(dilation, "dilation", "conv2d", minimum=1)
    pads = geometry.conv_padding(padding, (KH, KW), stride, dilation, op="conv2d")
    return geometry.ConvGeometry.of(x_shape, w_shape, stride, pads, dilation, groups)


def check_sizes(op, x_shape, w_shape, geo=None):
    """ValueError when too large to print (module docstring: ``LIMITS``). Before the
    geometry is known (geo None) only the sizes that cost memory to draw are checked."""
    sizes = []
    if len(x_shape) == 4:
        N, C, H, W = x_shape
        sizes += [("batch N", N, LIMITS["N"]), ("input channels C", C, LIMITS["C"]),
                  ("input height H", H, LIMITS["H"]), ("input width W", W, LIMITS["W"])]
    if len(w_shape) == 4:
        OC, _, KH, KW = w_shape
        sizes.append(("output channels OC", OC, LIMITS["OC"]))
        # before F.conv2d has seen the geometry only an absurd kernel is refused here, so
        # that a kernel larger than the input gets F.conv2d's own error first
        kmax = (LIMITS["KH"], LIMITS["KW"]) if geo is not None else (64, 64)
        sizes += [("kernel height KH", KH, kmax[0]), ("kernel width KW", KW, kmax[1])]
    if geo is not None:
        sizes += [("output height OH", geo.OH, LIMITS["OH"]),
                  ("output width OW", geo.OW, LIMITS["OW"]),
                  ("im2col rows K = C/G*KH*KW", geo.C // geo.G * geo.KH * geo.KW, LIMITS["K"]),
                  ("im2col columns L = N*OH*OW", geo.N * geo.OH * geo.OW, LIMITS["L"])]
    check_printable(op, sizes)


# ----------------------------------------------------------------------------- steps

def header(geo, has_bias, padding_arg):
    """Lines describing the inputs and the output size, with the numbers put in."""
    pad = f"(PH0, PH1), (PW0, PW1) = {geo.padding[0]}, {geo.padding[1]}"
    if isinstance(padding_arg, str):
        pad += f"  (padding={padding_arg!r})"
    Cg = geo.C // geo.G
    lines = [
        f"x (N, C, H, W) = {(geo.N, geo.C, geo.H, geo.W)}    "
        f"w (OC, C/G, KH, KW) = {(geo.OC, Cg, geo.KH, geo.KW)}    "
        f"b (OC,) = {(geo.OC,) if has_bias else None}",
        f"stride (SH, SW) = {geo.stride}    padding {pad}    "
        f"dilation (DH, DW) = {geo.dilation}    groups G = {geo.G}",
    ]
    for L, K, S, P0, P1, D, O, axis in ((geo.H, geo.KH, geo.SH, geo.PH0, geo.PH1, geo.DH,
                                          geo.OH, "OH"),
                                         (geo.W, geo.KW, geo.SW, geo.PW0, geo.PW1, geo.DW,
                                          geo.OW, "OW")):
        letters = "H, PH0, PH1, DH, KH, SH" if axis == "OH" else "W, PW0, PW1, DW, KW, SW"
        lines.append(f"{axis} = floor((L + P0 + P1 - D*(K-1) - 1) / S) + 1 with "
                     f"({letters}) = ({L}, {P0}, {P1}, {D}, {K}, {S}): "
                     f"floor(({L} + {P0} + {P1} - {D}*{K - 1} - 1) / {S}) + 1 = {O}")
    lines.append(f"y (N, OC, OH, OW) = {geo.out_shape}")
    return lines


def per_group(name, stack, rows, cols, row_title, col_title, G):
    """One Matrix per group of a (G, R, K) stack (the group in the name when G > 1)."""
    return [Matrix.of(name + (f" (group {g})" if G > 1 else ""), stack[g], rows(g), cols(g),
                      row_title, col_title) for g in range(G)]


def conv_steps(a, geo, fmt, *, dy_note="", prefix=""):
    """The forward and backward Steps of a convolution from ``compute``'s arrays.

    fmt: formats one number (the Explanation's); dy_note: where dY came from; prefix: put
    before every step key (a chain explains several ops)."""
    G, Cg, OCg = geo.G, geo.C // geo.G, geo.OC // geo.G
    K = Cg * geo.KH * geo.KW
    rl = (lambda g: row_labels(geo, g))
    cl = (lambda g: col_labels(geo))
    ol = (lambda g: out_labels(geo, g))
    group = " (one product per group g: its Cg input and OCg output channels)" if G > 1 else ""
    steps = []

    def add(key, phase, title, formula, matrices=(), lines=()):
        steps.append(Step(prefix + key, phase, title, formula, list(matrices), list(lines)))

    # ---- forward
    inputs = planes("x", a["x"]) + planes("w", a["w"], letters=("o", "c"), row_title="kh",
                                          col_title="kw")
    if a["b"] is not None:
        inputs.append(Matrix.of("b", a["b"], rows=["b"], col_title="o"))
    add("inputs", "forward", "the inputs: x (N, C, H, W), the kernel w (OC, C/G, KH, KW), b",
        "x[n, c] is one image's channel c; w[o, c] is output channel o's kernel on the c-th "
        "channel of its group", inputs)
    pad_lines = [f"input row i is padded row i + {geo.PH0}, input column j is padded column "
                 f"j + {geo.PW0}"] if (geo.PH0 or geo.PH1 or geo.PW0 or geo.PW1) else \
        ["no padding: xpad = x"]
    add("x_pad", "forward", "pad the input with zeros",
        f"xpad = x with {geo.PH0} zero rows above, {geo.PH1} below, {geo.PW0} zero columns "
        f"left, {geo.PW1} right: (N, C, H+PH0+PH1, W+PW0+PW1) = {a['x_pad'].shape}",
        planes("xpad", a["x_pad"]), pad_lines)
    windows = []
    for k, lab in enumerate(col_labels(geo)[:12]):
        n, oh, ow = (int(v) for v in lab.strip("()").split(","))
        r0, c0 = oh * geo.SH, ow * geo.SW
        windows.append(f"column {lab} is the window xpad[{n}, c, {r0}:{r0 + geo.reach[0]}:"
                       f"{geo.DH}, {c0}:{c0 + geo.reach[1]}:{geo.DW}] of every channel c, "
                       f"read row by row")
    if geo.N * geo.OH * geo.OW > 12:
        windows.append("... (one column for each output position)")
    add("col", "forward", "im2col: unfold every receptive window into a column" + group,
        f"col[(c,kh,kw), (n,oh,ow)] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]"
        f" = xpad[n, c, oh*{geo.SH} + kh*{geo.DH}, ow*{geo.SW} + kw*{geo.DW}]\n"
        f"col: (C/G*KH*KW, N*OH*OW) = ({K}, {geo.N * geo.OH * geo.OW}) per group; "
        f"minidl.kernels.im2col.im2col returns it as (C, KH, KW, N, OH, OW)",
        per_group("col", a["col"], rl, cl, "(c,kh,kw)", "(n,oh,ow)", G), windows)
    add("Wm", "forward", "the kernel as a matrix: one row per output channel",
        f"Wm = w.reshape(OC, C/G*KH*KW): Wm[o, (c,kh,kw)] = w[o, c, kh, kw]; ({geo.OC}, {K})",
        per_group("Wm", a["Wm"], ol, lambda g: [lab for lab in row_labels(geo, g)], "o",
                  "(c,kh,kw)", G))
    # one worked entry of the product
    r = a["col"][0][:, 0]
    terms = [f"({fmt(wv)})({fmt(cv)})" for wv, cv in zip(a["Wm"][0][0], r) if cv != 0]
    worked = [f"Y[0, (0,0,0)] = sum over (c,kh,kw) of Wm[0, (c,kh,kw)] * col[(c,kh,kw), (0,0,0)]"
              f" = " + (" + ".join(terms) if terms else "0")
              + f" = {fmt(a['Y'][0][0, 0])}" + ("   (zero entries of col left out)"
                                                  if len(terms) < K else "")]
    add("Y", "forward", "the GEMM: every output value is a row of Wm times a column of col",
        f"Y = Wm . col: Y[o, (n,oh,ow)] = sum over (c,kh,kw) of Wm[o, (c,kh,kw)] * "
        f"col[(c,kh,kw), (n,oh,ow)]; (OC, N*OH*OW) = ({geo.OC}, {geo.N * geo.OH * geo.OW})",
        per_group("Y", a["Y"], ol, cl, "o", "(n,oh,ow)", G), worked)
    add("y", "forward", "reshape Y to the output" + (" and add the bias" if a["b"] is not None
                                                      else ""),
        "y = Y.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3)"
        + (" + b[o]" if a["b"] is not None else "") + f": (N, OC, OH, OW) = {geo.out_shape}",
        planes("y", a["y"], letters=("n", "o"), row_title="oh", col_title="ow"))

    # ---- backward
    add("dY", "backward", "the upstream gradient dY = dL/dy, and as a matrix like Y",
        "dY[n, o, oh, ow] = dL/dy[n, o, oh, ow]" + (f"   ({dy_note})" if dy_note else "")
        + "\ndY as a matrix: dy.transpose(1, 0, 2, 3).reshape(OC, N*OH*OW)",
        planes("dY", a["dy"], letters=("n", "o"), row_title="oh", col_title="ow")
        + per_group("dY (matrix)", a["dY"], ol, cl, "o", "(n,oh,ow)", G))
    dyr, colr = a["dY"][0][0], a["col"][0][0]
    terms = [f"({fmt(d)})({fmt(c)})" for d, c in zip(dyr, colr) if c != 0 and d != 0]
    worked = [f"dW[0, (0,0,0)] = sum over (n,oh,ow) of dY[0, (n,oh,ow)] * col[(0,0,0), "
              f"(n,oh,ow)] = " + (" + ".join(terms) if terms else "0")
              + f" = {fmt(a['dWm'][0][0, 0])}   (zero terms left out)"]
    add("dW", "backward", "the weight gradient: dW = dY . col^T" + group,
        "dW[o, (c,kh,kw)] = sum over (n,oh,ow) of dY[o, (n,oh,ow)] * col[(c,kh,kw), (n,oh,ow)]"
        f"\n(each weight met every window; summed over the batch); reshaped to w's shape "
        f"{tuple(a['w'].shape)}",
        per_group("dW", a["dWm"], ol, rl, "o", "(c,kh,kw)", G), worked)
    if a["b"] is not None:
        add("db", "backward", "the bias gradient: db = the sum of dY over n, oh, ow",
            "db[o] = sum over (n, oh, ow) of dY[n, o, oh, ow] (b was added at every position)",
            [Matrix.of("db", a["db"], rows=["db"], col_title="o")])
    add("dcol", "backward", "the gradient of the unfolded input: dcol = Wm^T . dY" + group,
        "dcol[(c,kh,kw), (n,oh,ow)] = sum over o of Wm[o, (c,kh,kw)] * dY[o, (n,oh,ow)]",
        per_group("dcol", a["dcol"], rl, cl, "(c,kh,kw)", "(n,oh,ow)", G))
    add("col2im", "backward", "col2im: add every dcol entry back where im2col copied it from",
        "dX[n, c, i, j] = sum of dcol[(c,kh,kw), (n,oh,ow)] over every entry with "
        "oh*SH + kh*DH - PH0 = i and ow*SW + kw*DW - PW0 = j\n(entries copied from the "
        "zero padding go nowhere); minidl.kernels.im2col.col2im",
        planes("dX", a["dX"]), scatter_lines(a["scatter"], a["dX"], fmt))
    RH, RW = geo.reach
    add("flip_dy", "backward", "dX another way (1/3): dilate dY by the stride, pad it",
        f"U[n, o, oh*SH, ow*SW] = dY[n, o, oh, ow] with SH-1 = {geo.SH - 1} zero rows and "
        f"SW-1 = {geo.SW - 1} zero columns between entries: {a['dy_dilated'].shape}\n"
        f"then RH-1 = {RH - 1} zero rows above and below, RW-1 = {RW - 1} zero columns left "
        f"and right (RH, RW = the dilated kernel's reach {geo.reach}): {a['dy_padded'].shape}",
        planes("U", a["dy_dilated"], letters=("n", "o"))
        + planes("Upad", a["dy_padded"], letters=("n", "o")))
    add("flip_w", "backward", "dX another way (2/3): the kernel rotated by 180 degrees",
        "Wrot[o, c, RH-1-kh*DH, RW-1-kw*DW] = w[o, c, kh, kw] (upside down and left to right"
        + (", dilated" if (geo.DH, geo.DW) != (1, 1) else "") + ")",
        planes("Wrot", a["w_rot"], letters=("o", "c")))
    diff = float(np.max(np.abs(a["dX_flip"] - a["dX"]))) if a["dX"].size else 0.0
    add("flip_dx", "backward", "dX another way (3/3): the full convolution, cropped",
        "full[n, c, p, q] = sum over o (of c's group), th, tw of Upad[n, o, p+th, q+tw] * "
        "Wrot[o, c, th, tw]\n"
        f"dX[n, c, i, j] = full[n, c, i + PH0, j + PW0] with (PH0, PW0) = "
        f"({geo.PH0}, {geo.PW0}): the padding cropped off (0 past full's end)",
        planes("full", a["dX_full"]) + planes("dX (flipped kernel)", a["dX_flip"]),
        [f"max |dX (flipped kernel) - dX (col2im)| = {diff:.3g}: the same gradient"])
    return steps


def scatter_lines(terms, dX, fmt, limit=80):
    """'dX[n,c,i,j] = dcol[(c,kh,kw),(n,oh,ow)] + ... = v1 + v2 = total' for the first
    ``limit`` cells of dX (the rest named in one line)."""
    lines = []
    for count, ((n, c, i, j), ts) in enumerate(terms.items()):
        if count == limit:
            lines.append(f"... {len(terms) - limit} more cells of dX, by the same rule")
            break
        cell = f"dX[{n},{c},{i},{j}]"
        if not ts:
            lines.append(f"{cell} = 0   (no window reads x[{n},{c},{i},{j}])")
            continue
        refs = " + ".join(f"dcol[{r},{k}]" for r, k, _ in ts)
        vals = " + ".join(f"({fmt(v)})" for _, _, v in ts)
        lines.append(f"{cell} = {refs} = {vals} = {fmt(dX[n, c, i, j])}")
    return lines


def summary_steps(geo, has_bias, prefix=""):
    """The same steps with shapes only (no numbers), for any size."""
    G, Cg = geo.G, geo.C // geo.G
    N, C, H, W, OC, OH, OW = geo.N, geo.C, geo.H, geo.W, geo.OC, geo.OH, geo.OW
    K, L, OCg = Cg * geo.KH * geo.KW, N * OH * OW, OC // G
    gs = f"G = {G} x " if G > 1 else ""
    full = ((OH - 1) * geo.SH + geo.reach[0], (OW - 1) * geo.SW + geo.reach[1])
    S = Matrix.shape_only
    rows = [
        ("inputs", "forward", "the inputs", [S("x", (N, C, H, W)), S("w", (OC, Cg, geo.KH, geo.KW))]
         + ([S("b", (OC,))] if has_bias else [])),
        ("x_pad", "forward", "pad the input", [S("xpad", (N, C) + geo.padded_hw)]),
        ("col", "forward", f"im2col ({gs}K x L)", [S("col", (K, L), "(c,kh,kw)", "(n,oh,ow)")]),
        ("Wm", "forward", f"the kernel as a matrix ({gs}OCg x K)", [S("Wm", (OCg, K))]),
        ("Y", "forward", f"the GEMM Y = Wm . col ({gs}OCg x L)", [S("Y", (OCg, L))]),
        ("y", "forward", "reshape to the output", [S("y", geo.out_shape)]),
        ("dY", "backward", "the upstream gradient", [S("dY", geo.out_shape), S("dY (matrix)",
                                                                             (OCg, L))]),
        ("dW", "backward", f"dW = dY . col^T ({gs}OCg x K)", [S("dW", (OCg, K))]),
    ] + ([("db", "backward", "db = sum of dY over n, oh, ow", [S("db", (OC,))])]
         if has_bias else []) + [
        ("dcol", "backward", f"dcol = Wm^T . dY ({gs}K x L)", [S("dcol", (K, L))]),
        ("col2im", "backward", "col2im", [S("dX", (N, C, H, W))]),
        ("flip_dy", "backward", "dY dilated by the stride, padded",
         [S("U", (N, OC, (OH - 1) * geo.SH + 1, (OW - 1) * geo.SW + 1)),
          S("Upad", (N, OC, (OH - 1) * geo.SH + 2 * geo.reach[0] - 1,
                     (OW - 1) * geo.SW + 2 * geo.reach[1] - 1))]),
        ("flip_w", "backward", "the kernel rotated by 180 degrees",
         [S("Wrot", (OC, Cg) + geo.reach)]),
        ("flip_dx", "backward", "the full convolution, cropped",
         [S("full", (N, C) + full), S("dX (flipped kernel)", (N, C, H, W))]),
    ]
    return [Step(prefix + k, ph, t, "", m) for k, ph, t, m in rows]


# ----------------------------------------------------------------------------- the API

def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, dy=None, *,
           values=None, seed=0, summary=False):
    """Explain ``conv2d(x, w, b)`` forward and backward, step by step, in numbers.

    x: (N, C, H, W) array or Tensor, or a shape tuple (values drawn); w: (OC, C/G, KH, KW)
    array or shape; b: (OC,) array, a shape, True (draw one) or None; stride, padding,
    dilation, groups: as ``nn.functional.conv2d`` (padding may be 'same' / 'valid' / a
    pair). dy: the upstream gradient (N, OC, OH, OW), or None to draw one.
    values: 'int' (default for drawn values: integers, x in [-3, 3], w, b, dY in [-2, 2],
    exact in float64) or 'float' (standard normal, printed to 3 decimals); seed: for the
    drawn values. summary: shapes of every step only (any size, nothing checked).

    Returns an ``Explanation``; print it, or ``.to_markdown()`` / ``.to_latex()``.
    Errors: the same as ``F.conv2d`` for an impossible geometry; a ValueError when the
    numbers would be too many to print (``LIMITS`` in the module docstring).
    """
    op = "conv2d"
    values = "int" if values is None else values
    if values not in ("int", "float"):
        raise ValueError(f"explain.{op}: values must be 'int' or 'float', got {values!r}")
    rng = np.random.default_rng(seed)
    xs, ws = shape_of(x), shape_of(w)
    if len(xs) == 3:                          # unbatched (C, H, W): a batch of one
        xs = (1,) + xs
        x = xs if is_shape(x) else as_array(x, "x", op)[None]
    if summary:
        # F.conv2d validates the geometry on one zero image (any size is fine here)
        with no_grad():
            F.conv2d(tensor(np.zeros((1,) + xs[1:], np.float32)),
                     tensor(np.zeros(ws, np.float32)),
                     None, stride=stride, padding=padding, dilation=dilation, groups=groups)
        geo = conv_geometry(xs, ws, stride, padding, dilation, groups)
        has_bias = b is not None and b is not False
        return Explanation(op, header(geo, has_bias, padding),
                           summary_steps(geo, has_bias), None, summary=True)
    check_sizes(op, xs, ws)
    x = resolve(x, "x", rng, values, op)
    w = resolve(w, "w", rng, values, op)
    if b is True:
        b = (ws[0],) if len(ws) == 4 else (1,)
    b = None if b is None or b is False else resolve(b, "b", rng, values, op)
    y_ref = autograd_conv(x, w, b, None, stride, padding, dilation, groups)[0]  # validates
    geo = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    check_sizes(op, x.shape, w.shape, geo)
    if dy is None:
        dy = draw(y_ref.shape, rng, values, HIGH["dy"])
        dy_note = (f"drawn with seed {seed}: integers in [-{HIGH['dy']}, {HIGH['dy']}]"
                   if values == "int" else f"drawn with seed {seed}: standard normal")
    else:
        dy = resolve(dy, "dy", rng, values, op)
        dy_note = "given"
        if dy.shape != y_ref.shape:
            raise ValueError(f"explain.{op}: dy must have the output's shape {y_ref.shape}, "
                             f"got {dy.shape}")
    return explain_arrays(x, w, b, dy, geo, (stride, padding, dilation, groups), dy_note)


def explain_arrays(x, w, b, dy, geo, args, dy_note="", extra_steps=(), op="conv2d"):
    """The Explanation of a conv on float64 arrays whose geometry ``geo`` is validated.
    args: (stride, padding, dilation, groups) for the autograd run."""
    a = compute(x, w, b, dy, geo)
    y, dX, dW, db = autograd_conv(x, w, b, dy, *args)
    scatter_sum = np.zeros_like(a["dX"])
    for (n, c, i, j), ts in a["scatter"].items():
        scatter_sum[n, c, i, j] = sum(v for _, _, v in ts)
    diff = max_abs_diff([("y", a["y"], y), ("dW", a["dW"], dW), ("db", a["db"] if b is not None
                                                                 else None, db),
                         ("dX (col2im)", a["dX"], dX), ("dX (flipped kernel)", a["dX_flip"], dX),
                         ("dX (scatter list)", scatter_sum, dX)], op)
    decimals = 0 if integral(x, w, b, dy) else 3
    ex = Explanation(op, header(geo, b is not None, args[1]), [], diff, decimals)
    ex.steps = conv_steps(a, geo, ex.number, dy_note=dy_note) + list(extra_steps)
    ex.arrays = {k: v for k, v in a.items() if k != "scatter"}
    ex.scatter = a["scatter"]
    ex.geometry = geo
    return ex
