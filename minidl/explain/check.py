"""``check_backward``: check a learner's own NumPy backward pass and say what is wrong with it.

A learner writes a layer's backward by hand (NumPy only) and hands the function over::

    from minidl.explain.check import check_backward
    report = check_backward(my_conv_backward, op="conv2d")
    print(report)            # report.ok is True or False

or, from a shell, ``python -m minidl.explain.check my_file.py`` (see ``main``).

The checker calls the function on a fixed set of small geometries (square and non-square,
stride 1 and 2, padding 0 and more, batch > 1), computes the expected answer with minidl's
autograd (``minidl.nn.functional`` + ``.backward(dout)``, on the kernels' NumPy
references), all in float64, and compares
element by element (``|yours - expected| <= ATOL + RTOL * |expected|``). The report lists
every case with pass/fail per gradient, then for each wrong gradient:

- an *error map* of its first failing case: '.' right, 'X' wrong, over one plane
  (the (H, W) of one (n, c) of dx, the (KH, KW) of one (oc, c) of dw, ...), so that a
  wrong border, a stride that skips rows or a transposed kernel shows as a picture;
- the worst elements with their indices, your value and the expected one;
- a DIAGNOSIS when a known mistake explains what you returned. Each known mistake is a
  hypothesis tested with numbers: the checker recomputes the gradient *as the mistake
  would* (the kernel not flipped, the stride ignored, dw of the first image only, ...)
  and names the mistake when that reproduces your output on every failing case.

The ops and the function each expects (all arrays NumPy, float64; ``stride``,
``padding`` and ``kernel_size`` are ints or (h, w) pairs, passed as the case lists them):

=============================  =============================================================
op                             the learner's function
=============================  =============================================================
``"conv2d"``                   ``fn(dout, x, w, b, stride, padding) -> (dx, dw, db)``,
                               x (N, C, H, W), w (OC, C, KH, KW), b (OC,),
                               dout (N, OC, OH, OW)
``"conv2d_forward"``           ``fn(x, w, b, stride, padding) -> out`` (N, OC, OH, OW): the
                               forward pass (a cross-correlation, as ``F.conv2d``)
``"max_pool2d"``               ``fn(dout, x, kernel_size, stride) -> dx``, x (N, C, H, W),
                               no padding; every window's values are distinct (no ties)
``"batch_norm"``               ``fn(dout, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``,
                               training mode, x (N, D) normalised per feature over the
                               batch axis, gamma and beta (D,), biased variance (/ N)
``"batch_norm2d"``             the same function for images: x (N, C, H, W) normalised per
                               channel over (N, H, W), gamma and beta (C,)
``"softmax_cross_entropy"``    ``fn(logits, targets) -> dlogits``: logits (N, K), targets
                               (N,) class indices; the loss is the MEAN over the batch
=============================  =============================================================

The function is called with copies of the arrays, so changing them in place harms nothing.
If it raises, the report shows the exception with the traceback of *your* code (the
checker's own frames are left out); ``NotImplementedError`` is reported as "not implemented
yet". Wrong return values get a message naming the argument (``dw has shape (4, 3, 2, 3),
expected (4, 3, 3, 2) = w.shape``).
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import textwrap
import traceback

import numpy as np

from ..creation import tensor
from ..gradcheck import error_map, mismatch_mask
from ..kernels import use_impl
from ..nn import functional as F

__all__ = ["check_backward", "BackwardReport", "OPS", "EXERCISE_FUNCTIONS", "main",
           "ATOL", "RTOL"]

ATOL = 1e-6   # |yours - expected| <= ATOL + RTOL * |expected| passes, element by element
RTOL = 1e-5
WORST = 5     # how many worst elements a report lists per gradient


# ----------------------------------------------------------------------------- small helpers


def _pair(v):
    """3 -> (3, 3); (2, 1) -> (2, 1)."""
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _shape(a):
    return "(" + ", ".join(str(int(d)) for d in a) + ")"


def _rot180(w):
    """The kernel turned half a circle: w[..., ::-1, ::-1] (KH and KW reversed)."""
    return w[..., ::-1, ::-1].copy()


def _close(a, b, atol=ATOL, rtol=RTOL):
    return a.shape == b.shape and not mismatch_mask(a, b, atol, rtol).any()


def _grads(make_output, arrays, upstream):
    """Run ``make_output(*tensors)`` with minidl's autograd and backpropagate ``upstream``.

    arrays: {name: NumPy array} of the inputs to differentiate (float64).
    Returns ({name: gradient as NumPy}, forward output as NumPy).
    """
    ts = {k: tensor(v, requires_grad=True) for k, v in arrays.items()}
    y = make_output(**ts)
    if upstream is None:
        y.backward()
    else:
        y.backward(tensor(upstream))
    return {k: t.grad.numpy() for k, t in ts.items()}, y.detach().numpy()


class _Case:
    """One geometry: the arguments given to the learner's function, the expected outputs,
    and everything a hypothesis needs (``p``)."""

    def __init__(self, index, text, args, expected, p):
        self.index = index          # 1-based, as printed
        self.text = text            # "x (2, 3, 6, 5), w (4, 3, 3, 2), stride (2, 1), ..."
        self.args = args            # tuple, in the learner's argument order
        self.expected = expected    # {output name: array}
        self.p = p                  # {name: value}: the raw inputs and the geometry


class _Hypothesis:
    """A known mistake: ``compute(case)`` returns what the mistaken code would output for
    ``grad`` (an array, a list of candidate arrays, or None where it does not apply).
    ``shape_only``: the mistake is named when the shape matches (values not compared)."""

    def __init__(self, key, grad, text, compute, shape_only=False):
        self.key, self.grad, self.text = key, grad, text
        self.compute, self.shape_only = compute, shape_only


class _Op:
    """What the checker knows about one op: its signature, outputs, cases and mistakes."""

    def __init__(self, name, signature, outputs, wants, axes, make_cases, hypotheses,
                 patterns=()):
        self.name = name
        self.signature = signature    # "fn(dout, x, w, b, stride, padding) -> (dx, dw, db)"
        self.outputs = outputs        # ("dx", "dw", "db")
        self.wants = wants            # {"dw": "w.shape", ...} for shape messages
        self.axes = axes              # {"dx": ("n", "c", "h", "w"), ...} for error maps
        self.make_cases = make_cases
        self.hypotheses = hypotheses
        self.patterns = patterns      # (key, grad, text, test(failing [(case, bad)]))


# ----------------------------------------------------------------------------- conv2d

# x (N, C, H, W), w (OC, C, KH, KW), stride, padding: as passed to the learner.
CONV_GEOMETRIES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0),
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((2, 2, 7, 6), (3, 2, 3, 2), (2, 1), (1, 0)),
    ((3, 2, 7, 7), (2, 2, 3, 3), 2, 1),
    ((2, 3, 6, 8), (2, 3, 2, 3), (1, 2), (2, 1)),
    ((2, 1, 8, 7), (3, 1, 4, 3), 2, (0, 1)),
]


def _conv_grads(x, w, b, stride, padding, dout):
    """{dx, dw, db} and out of ``F.conv2d(x, w, b, stride, padding)`` with upstream dout."""
    g, out = _grads(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                    {"x": x, "w": w, "b": b}, dout)
    return {"dx": g["x"], "dw": g["w"], "db": g["b"], "out": out}


def _conv_cases(forward=False):
    cases = []
    for i, (xs, ws, stride, padding) in enumerate(CONV_GEOMETRIES, start=1):
        rng = np.random.default_rng(100 + i)
        x = rng.standard_normal(xs)
        w = rng.standard_normal(ws)
        b = rng.standard_normal(ws[0])
        (SH, SW), (PH, PW) = _pair(stride), _pair(padding)
        OH = (xs[2] + 2 * PH - ws[2]) // SH + 1
        OW = (xs[3] + 2 * PW - ws[3]) // SW + 1
        dout = rng.standard_normal((xs[0], ws[0], OH, OW))
        exp = _conv_grads(x, w, b, stride, padding, dout)
        text = (f"x {_shape(xs)}, w {_shape(ws)}, stride {stride}, padding {padding}"
                f" -> out {_shape(dout.shape)}")
        p = dict(x=x, w=w, b=b, dout=dout, stride=stride, padding=padding, SH=SH, SW=SW,
                 PH=PH, PW=PW, KH=ws[2], KW=ws[3], OH=OH, OW=OW, **exp)
        if forward:
            cases.append(_Case(i, text, (x, w, b, stride, padding), {"out": exp["out"]}, p))
        else:
            cases.append(_Case(i, text, (dout, x, w, b, stride, padding),
                               {k: exp[k] for k in ("dx", "dw", "db")}, p))
    return cases


def _conv_padded(p):
    """The gradient of the zero-padded input (N, C, H+2PH, W+2PW): dx before the crop."""
    xp = np.pad(p["x"], ((0, 0), (0, 0), (p["PH"],) * 2, (p["PW"],) * 2))
    return _conv_grads(xp, p["w"], p["b"], p["stride"], 0, p["dout"])["dx"]


def _conv_crop_offsets(p):
    """dx cropped out of the padded gradient at every offset but the right one."""
    if p["PH"] == 0 and p["PW"] == 0:
        return None
    H, W = p["x"].shape[2:]
    full = _conv_padded(p)
    return [full[:, :, a:a + H, c:c + W] for a in range(2 * p["PH"] + 1)
            for c in range(2 * p["PW"] + 1) if (a, c) != (p["PH"], p["PW"])]


def _conv_stride_ignored(p, grad):
    """The gradient when window (oh, ow) is taken at (oh, ow) instead of (oh*SH, ow*SW):
    a stride-1 convolution whose upstream gradient is dout in its top-left corner."""
    if p["SH"] == 1 and p["SW"] == 1:
        return None
    N, C, H, W = p["x"].shape
    OH1 = H + 2 * p["PH"] - p["KH"] + 1
    OW1 = W + 2 * p["PW"] - p["KW"] + 1
    big = np.zeros((N, p["w"].shape[0], OH1, OW1))
    big[:, :, :p["OH"], :p["OW"]] = p["dout"]
    return _conv_grads(p["x"], p["w"], p["b"], 1, p["padding"], big)[grad]


def _conv_batch_variants(p, grad):
    """dw or db of the first image only, of the last image only, and the batch mean."""
    first = _conv_grads(p["x"][:1], p["w"], p["b"], p["stride"], p["padding"],
                        p["dout"][:1])[grad]
    last = _conv_grads(p["x"][-1:], p["w"], p["b"], p["stride"], p["padding"],
                       p["dout"][-1:])[grad]
    return [first, last, p[grad] / p["x"].shape[0]]


def _db_axes_variants(p):
    """dout summed over every set of axes but the right one, (0, 2, 3), and means."""
    d = p["dout"]
    out = []
    for axes in [(0,), (1,), (2,), (3,), (2, 3), (1, 2, 3), (0, 1), (0, 2), (0, 3),
                 (0, 1, 2, 3), (0, 1, 2), (0, 1, 3), (1, 2), (1, 3)]:
        out.append(d.sum(axis=axes))
    out.append(d.mean(axis=(0, 2, 3)))
    out.append(d.sum(axis=(2, 3)).mean(axis=0))
    return out


def _conv_border_band(p):
    """(H, W) bool: the input pixels reached by some window that overlaps the padding."""
    H, W = p["x"].shape[2:]
    band = np.zeros((H, W), dtype=bool)
    for oh in range(p["OH"]):
        r0 = oh * p["SH"] - p["PH"]
        for ow in range(p["OW"]):
            c0 = ow * p["SW"] - p["PW"]
            if r0 < 0 or c0 < 0 or r0 + p["KH"] > H or c0 + p["KW"] > W:
                band[max(r0, 0):r0 + p["KH"], max(c0, 0):c0 + p["KW"]] = True
    return band


def _conv_border_only(failing):
    """True when every failing case has padding and its wrong dx positions all lie where
    windows that overlap the padding reach (and the interior is right)."""
    for case, bad in failing:
        if bad is None or (case.p["PH"] == 0 and case.p["PW"] == 0):
            return False
        band = _conv_border_band(case.p)
        if band.all() or (bad & ~band[None, None]).any():
            return False
    return bool(failing)


CONV_HYPOTHESES = [
    _Hypothesis("padding_not_cropped", "dx",
                "dx has the PADDED shape (N, C, H + 2*PH, W + 2*PW): the padding was not "
                "cropped. The scatter (col2im) fills a canvas the size of the padded input; "
                "the border belongs to the zeros you added, so cut it off: "
                "dx = dx_padded[:, :, PH:PH + H, PW:PW + W].",
                lambda c: _conv_padded(c.p), shape_only=True),
    _Hypothesis("padding_crop_offset", "dx",
                "dx was cut out of the padded canvas at the wrong place: it matches a crop "
                "at another offset. The input starts PH rows down and PW columns in: "
                "dx = dx_padded[:, :, PH:PH + H, PW:PW + W].",
                lambda c: _conv_crop_offsets(c.p)),
    _Hypothesis("kernel_not_flipped", "dx",
                "dx matches the gradient of the kernel turned by 180 degrees: the kernel was "
                "not flipped (or was flipped twice). Written as a convolution, dx is the "
                "'full' cross-correlation of the (stride-dilated, padded) dout with the "
                "ROTATED kernel w[:, :, ::-1, ::-1], summed over OC; written as a scatter "
                "(dcol = W^T @ dout, then col2im) it needs no flip at all.",
                lambda c: _conv_grads(c.p["x"], _rot180(c.p["w"]), c.p["b"], c.p["stride"],
                                      c.p["padding"], c.p["dout"])["dx"]),
    _Hypothesis("kernel_transposed", "dx",
                "dx matches the gradient of the kernel with its KH and KW axes swapped: the "
                "kernel was transposed (w.transpose(0, 1, 3, 2)) where it should be used as is "
                "(or rotated by 180 degrees, which is not a transpose).",
                lambda c: None if c.p["KH"] != c.p["KW"] else _conv_grads(
                    c.p["x"], c.p["w"].transpose(0, 1, 3, 2).copy(), c.p["b"],
                    c.p["stride"], c.p["padding"], c.p["dout"])["dx"]),
    _Hypothesis("stride_ignored", "dx",
                "dx matches a scatter that ignores the stride: the window of output (oh, ow) "
                "was added at input row oh and column ow, where it starts at row oh*SH - PH "
                "and column ow*SW - PW. (As a convolution: dout must be stride-dilated, "
                "SH - 1 zero rows and SW - 1 zero columns between its entries.)",
                lambda c: _conv_stride_ignored(c.p, "dx")),
    _Hypothesis("stride_ignored", "dw",
                "dw matches a gather that ignores the stride: dout[oh, ow] was paired with the "
                "input window at (oh, ow) instead of (oh*SH - PH, ow*SW - PW).",
                lambda c: _conv_stride_ignored(c.p, "dw")),
    _Hypothesis("kernel_flipped_in_dw", "dw",
                "dw is the right answer turned by 180 degrees: dw needs no flip. "
                "dw[oc, c, kh, kw] = sum over n, oh, ow of "
                "dout[n, oc, oh, ow] * x_padded[n, c, oh*SH + kh, ow*SW + kw].",
                lambda c: _rot180(c.p["dw"])),
    _Hypothesis("kernel_transposed", "dw",
                "dw is the right answer with its KH and KW axes swapped: dw[oc, c, kh, kw] "
                "pairs dout with the input shifted kh rows down and kw columns across "
                "(dw has the shape of w, (OC, C, KH, KW)).",
                lambda c: c.p["dw"].transpose(0, 1, 3, 2)),
    _Hypothesis("dw_not_summed_over_batch", "dw",
                "dw is not summed over the batch: it matches the gradient of the first image "
                "only, of the last image only (a loop that assigns `dw = ...` instead of "
                "`dw += ...`), or the batch mean. The weights are shared by all N images, so "
                "dw is the SUM of their contributions.",
                lambda c: _conv_batch_variants(c.p, "dw")),
    _Hypothesis("bias_wrong_axes", "db",
                "db is dout reduced over the wrong axes (or averaged): every output position "
                "of every image adds its bias, so db = dout.sum(axis=(0, 2, 3)), shape (OC,).",
                lambda c: _db_axes_variants(c.p)),
    _Hypothesis("db_not_summed_over_batch", "db",
                "db is not summed over the batch: it matches the first image only, the last "
                "image only, or the batch mean. db = dout.sum(axis=(0, 2, 3)).",
                lambda c: _conv_batch_variants(c.p, "db")),
]

CONV_PATTERNS = [
    ("border_only", "dx",
     "only pixels near the border are wrong, exactly those reached by windows that overlap "
     "the zero padding (the interior is right): look at how a window that hangs over the "
     "edge is handled, e.g. the kernel rows/columns used when the window is clipped to the "
     "image, or where the padded canvas is cropped.",
     _conv_border_only),
]


# ----------------------------------------------------------------------------- conv2d forward


CONV_FORWARD_HYPOTHESES = [
    _Hypothesis("kernel_flipped", "out",
                "out matches a TRUE convolution (kernel rotated by 180 degrees): deep-learning "
                "'convolution' is a cross-correlation, out[n, oc, oh, ow] = b[oc] + sum over "
                "c, kh, kw of w[oc, c, kh, kw] * x_padded[n, c, oh*SH + kh, ow*SW + kw], "
                "with no flip.",
                lambda c: _conv_grads(c.p["x"], _rot180(c.p["w"]), c.p["b"], c.p["stride"],
                                      c.p["padding"], c.p["dout"])["out"]),
    _Hypothesis("bias_missing", "out",
                "out matches the convolution without its bias: add b[oc] to every output "
                "position of channel oc.",
                lambda c: c.p["out"] - c.p["b"][None, :, None, None]),
    _Hypothesis("padding_ignored", "out",
                "out matches the convolution without padding: pad x with PH zero rows above "
                "and below and PW zero columns left and right first (np.pad), and use "
                "OH = (H + 2*PH - KH) // SH + 1.",
                lambda c: None if (c.p["PH"], c.p["PW"]) == (0, 0)
                else _conv_forward_variant(c.p, padding=0)),
    _Hypothesis("stride_ignored", "out",
                "out matches windows taken at (oh, ow) instead of (oh*SH, ow*SW): the stride "
                "was ignored when placing the windows (or in the output size "
                "OH = (H + 2*PH - KH) // SH + 1).",
                lambda c: None if (c.p["SH"], c.p["SW"]) == (1, 1) else [
                    _conv_forward_variant(c.p, stride=1, padding=c.p["padding"]),
                    _conv_forward_variant(c.p, stride=1, padding=c.p["padding"])
                    [:, :, :c.p["OH"], :c.p["OW"]]]),
    _Hypothesis("kernel_transposed", "out",
                "out matches the kernel with its KH and KW axes swapped: w[oc, c, kh, kw] "
                "multiplies x_padded[n, c, oh*SH + kh, ow*SW + kw] (kh with rows).",
                lambda c: None if c.p["KH"] != c.p["KW"] else _conv_forward_variant(
                    c.p, w=c.p["w"].transpose(0, 1, 3, 2).copy())),
]


def _conv_forward_variant(p, w=None, stride=None, padding=None):
    """F.conv2d's output with some arguments changed (no gradient needed)."""
    w = p["w"] if w is None else w
    stride = p["stride"] if stride is None else stride
    padding = p["padding"] if padding is None else padding
    return F.conv2d(tensor(p["x"]), tensor(w), tensor(p["b"]), stride=stride,
                    padding=padding).numpy()


# ----------------------------------------------------------------------------- max_pool2d

# x (N, C, H, W), kernel_size, stride: as passed to the learner.
POOL_GEOMETRIES = [
    ((2, 2, 4, 4), 2, 2),
    ((2, 3, 6, 5), (2, 3), (2, 1)),
    ((2, 2, 7, 7), 3, 2),
    ((3, 1, 5, 8), 2, (1, 3)),
]


def _pool_grad(x, kernel_size, stride, dout, pool=None):
    pool = F.max_pool2d if pool is None else pool
    g, _ = _grads(lambda x: pool(x, kernel_size, stride), {"x": x}, dout)
    return g["x"]


def _pool_cases():
    cases = []
    for i, (xs, k, s) in enumerate(POOL_GEOMETRIES, start=1):
        rng = np.random.default_rng(200 + i)
        # Distinct values everywhere, at least 0.1 apart: no ties, no near-ties.
        x = (rng.permutation(int(np.prod(xs))) * 0.1 - 1.0).reshape(xs)
        x += rng.uniform(0.0, 0.01, xs)
        (KH, KW), (SH, SW) = _pair(k), _pair(s)
        OH, OW = (xs[2] - KH) // SH + 1, (xs[3] - KW) // SW + 1
        dout = rng.standard_normal((xs[0], xs[1], OH, OW))
        dx = _pool_grad(x, k, s, dout)
        text = (f"x {_shape(xs)}, kernel_size {k}, stride {s} -> out "
                f"{_shape(dout.shape)}")
        p = dict(x=x, dout=dout, kernel_size=k, stride=s, KH=KH, KW=KW, SH=SH, SW=SW,
                 OH=OH, OW=OW, dx=dx)
        cases.append(_Case(i, text, (dout, x, k, s), {"dx": dx}, p))
    return cases


def _pool_overwrite(p):
    """The scatter with `dx[window] = mask * dout` (assignment): where windows overlap, a
    later window wipes out what an earlier one put there."""
    x, dout = p["x"], p["dout"]
    dx = np.zeros_like(x)
    for oh in range(p["OH"]):
        for ow in range(p["OW"]):
            h0, w0 = oh * p["SH"], ow * p["SW"]
            win = x[:, :, h0:h0 + p["KH"], w0:w0 + p["KW"]]
            mask = win == win.max(axis=(2, 3), keepdims=True)
            dx[:, :, h0:h0 + p["KH"], w0:w0 + p["KW"]] = mask * dout[:, :, oh, ow, None, None]
    return dx


def _pool_stride_ignored(p):
    if (p["SH"], p["SW"]) == (1, 1):
        return None
    N, C, H, W = p["x"].shape
    big = np.zeros((N, C, H - p["KH"] + 1, W - p["KW"] + 1))
    big[:, :, :p["OH"], :p["OW"]] = p["dout"]
    return _pool_grad(p["x"], p["kernel_size"], 1, big)


POOL_HYPOTHESES = [
    _Hypothesis("pool_gradient_to_every_element", "dx",
                "every element of a window received the window's whole gradient: only the "
                "maximum of the window affected the output, so only its position gets "
                "dout[n, c, oh, ow]; the others get 0 (a mask: window == window.max()).",
                lambda c: _pool_grad(c.p["x"], c.p["kernel_size"], c.p["stride"],
                                     c.p["dout"] * c.p["KH"] * c.p["KW"], F.avg_pool2d)),
    _Hypothesis("pool_gradient_split_evenly", "dx",
                "the window's gradient was split evenly over its KH*KW elements: that is "
                "AVERAGE pooling's gradient. Max pooling sends all of dout[n, c, oh, ow] to "
                "the position of the maximum, nothing to the others.",
                lambda c: _pool_grad(c.p["x"], c.p["kernel_size"], c.p["stride"],
                                     c.p["dout"], F.avg_pool2d)),
    _Hypothesis("pool_mask_without_dout", "dx",
                "dx is the mask of the maxima (1 at each window's maximum) without the upstream "
                "gradient: multiply by dout[n, c, oh, ow].",
                lambda c: _pool_grad(c.p["x"], c.p["kernel_size"], c.p["stride"],
                                     np.ones_like(c.p["dout"]))),
    _Hypothesis("pool_overlap_overwritten", "dx",
                "where windows overlap, a later window overwrote the gradient an earlier one "
                "had put there (`dx[window] = ...`): accumulate with `dx[window] += ...`, a "
                "pixel can be the maximum of several windows.",
                lambda c: None if (c.p["SH"] >= c.p["KH"] and c.p["SW"] >= c.p["KW"])
                else _pool_overwrite(c.p)),
    _Hypothesis("stride_ignored", "dx",
                "dx matches windows placed at (oh, ow) instead of (oh*SH, ow*SW): the stride "
                "was ignored in the scatter.",
                lambda c: _pool_stride_ignored(c.p)),
]


# ----------------------------------------------------------------------------- batch_norm

# x's shape, its features' mean and scale, eps. (N, D) for "batch_norm": statistics over
# the batch axis; (N, C, H, W) for "batch_norm2d": over the batch and the image, per channel.
BN_GEOMETRIES = [
    ((4, 3), 0.0, 1.0, 1e-5),
    ((8, 5), 2.0, 3.0, 1e-5),
    ((5, 7), -1.0, 0.5, 1e-3),
]
BN2D_GEOMETRIES = [
    ((2, 3, 4, 4), 0.0, 1.0, 1e-5),
    ((3, 2, 3, 5), 2.0, 3.0, 1e-5),
    ((4, 4, 2, 3), -1.0, 0.5, 1e-3),
]


def _bn_grads(dout, x, gamma, beta, eps):
    g, _ = _grads(lambda x, gamma, beta: F.batch_norm(x, None, None, gamma, beta,
                                                      training=True, eps=eps),
                  {"x": x, "gamma": gamma, "beta": beta}, dout)
    return {"dx": g["x"], "dgamma": g["gamma"], "dbeta": g["beta"]}


def _bn_cases(geometries):
    cases = []
    for i, (xs, mean, scale, eps) in enumerate(geometries, start=1):
        rng = np.random.default_rng(300 + 10 * len(xs) + i)
        D = xs[1]
        x = mean + scale * rng.standard_normal(xs)
        gamma = rng.uniform(0.5, 1.5, D)
        beta = rng.standard_normal(D)
        dout = rng.standard_normal(xs)
        exp = _bn_grads(dout, x, gamma, beta, eps)
        axes = (0,) if len(xs) == 2 else (0, 2, 3)      # the axes the statistics run over
        bshape = (1, D) if len(xs) == 2 else (1, D, 1, 1)  # a (D,) vector, broadcastable
        mu = x.mean(axis=axes, keepdims=True)
        std = np.sqrt(x.var(axis=axes, keepdims=True) + eps)
        p = dict(x=x, gamma=gamma, beta=beta, dout=dout, eps=eps, axes=axes, bshape=bshape,
                 M=x.size // D, mu=mu, std=std, xhat=(x - mu) / std, **exp)
        text = f"x {_shape(xs)}, gamma ({D},), beta ({D},), eps {eps}"
        cases.append(_Case(i, text, (dout, x, gamma, beta, eps), exp, p))
    return cases


def _bn_mean(p, a):
    return a.mean(axis=p["axes"], keepdims=True)


def _bn_sum(p, a):
    return a.sum(axis=p["axes"])


def _bn_dx(p, mean_term=True, var_term=True, use_gamma=True):
    """dx = (g - mean(g) - xhat * mean(g * xhat)) / std, g = dout * gamma, with terms off."""
    g = p["dout"] * (p["gamma"].reshape(p["bshape"]) if use_gamma else 1.0)
    xhat = p["xhat"]
    dx = g.copy()
    if mean_term:
        dx -= _bn_mean(p, g)
    if var_term:
        dx -= xhat * _bn_mean(p, g * xhat)
    return dx / p["std"]


def _bn_unsummed(p, per_element, grad):
    """dgamma or dbeta left per element, averaged instead of summed, or (images) summed
    over the batch only."""
    out = [per_element, p[grad] / p["M"]]
    if per_element.ndim == 4:
        out.append(per_element.sum(axis=0))
    return out


BN_HYPOTHESES = [
    _Hypothesis("bn_missing_mean_terms", "dx",
                "dx = dout * gamma / std: the mean and the variance were treated as constants, "
                "but both depend on every x in the batch. dx has three terms: "
                "dx = (g - mean(g) - xhat * mean(g * xhat)) / std with g = dout * gamma, "
                "means over the batch axis; the two mean terms are missing.",
                lambda c: _bn_dx(c.p, mean_term=False, var_term=False)),
    _Hypothesis("bn_missing_variance_term", "dx",
                "dx lacks the variance's term, - xhat * mean(g * xhat) / std (g = dout * "
                "gamma): the variance depends on x too.",
                lambda c: _bn_dx(c.p, var_term=False)),
    _Hypothesis("bn_missing_mean_term", "dx",
                "dx lacks the mean's term, - mean(g) / std (g = dout * gamma): the batch "
                "mean depends on x too.",
                lambda c: _bn_dx(c.p, mean_term=False)),
    _Hypothesis("bn_gamma_forgotten", "dx",
                "dx matches the formula with dout where dout * gamma belongs: y = gamma * "
                "xhat + beta, so the gradient reaching xhat is dout * gamma.",
                lambda c: _bn_dx(c.p, use_gamma=False)),
    _Hypothesis("not_summed_over_batch", "dgamma",
                "dgamma is not summed over the batch (and, for images, over H and W): "
                "dgamma = (dout * xhat).sum(axis=0), shape (D,) (axis=(0, 2, 3) for "
                "(N, C, H, W)), a sum, not a mean.",
                lambda c: _bn_unsummed(c.p, c.p["dout"] * c.p["xhat"], "dgamma")),
    _Hypothesis("not_summed_over_batch", "dbeta",
                "dbeta is not summed over the batch (and, for images, over H and W): "
                "dbeta = dout.sum(axis=0), shape (D,) (axis=(0, 2, 3) for (N, C, H, W)), "
                "a sum, not a mean.",
                lambda c: _bn_unsummed(c.p, c.p["dout"], "dbeta")),
    _Hypothesis("dgamma_dbeta_swapped", "dgamma",
                "dgamma is what dbeta should be: dgamma = (dout * xhat).sum(axis=0) and "
                "dbeta = dout.sum(axis=0).",
                lambda c: c.p["dbeta"]),
    _Hypothesis("dgamma_dbeta_swapped", "dbeta",
                "dbeta is what dgamma should be: dbeta = dout.sum(axis=0) and "
                "dgamma = (dout * xhat).sum(axis=0).",
                lambda c: c.p["dgamma"]),
    _Hypothesis("dgamma_uses_x", "dgamma",
                "dgamma = sum(dout * x): it is the NORMALISED input that gamma multiplies, "
                "dgamma = (dout * xhat).sum(axis=0).",
                lambda c: _bn_sum(c.p, c.p["dout"] * c.p["x"])),
]


# ----------------------------------------------------------------------------- softmax-CE

# (N, K)
CE_GEOMETRIES = [(4, 3), (6, 10), (5, 2)]


def _ce_cases():
    cases = []
    for i, (N, K) in enumerate(CE_GEOMETRIES, start=1):
        rng = np.random.default_rng(400 + i)
        logits = 2.0 * rng.standard_normal((N, K))
        targets = rng.integers(0, K, N)
        g, _ = _grads(lambda logits: F.cross_entropy(logits, tensor(targets)),
                      {"logits": logits}, None)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = dict(logits=logits, targets=targets, N=N, K=K, dlogits=g["logits"],
                 probs=z / z.sum(axis=1, keepdims=True))
        text = f"logits {_shape((N, K))}, targets ({N},) in 0..{K - 1}"
        cases.append(_Case(i, text, (logits, targets), {"dlogits": g["logits"]}, p))
    return cases


CE_HYPOTHESES = [
    _Hypothesis("ce_not_divided_by_n", "dlogits",
                "dlogits is N times too large: the loss is the MEAN over the batch, so "
                "dlogits = (softmax(logits) - onehot(targets)) / N.",
                lambda c: c.p["dlogits"] * c.p["N"]),
    _Hypothesis("ce_sign_flipped", "dlogits",
                "dlogits has the wrong sign: d(loss)/d(logits) = softmax - onehot (the "
                "probabilities minus the one-hot targets), divided by N.",
                lambda c: [-c.p["dlogits"], -c.p["dlogits"] * c.p["N"]]),
    _Hypothesis("ce_onehot_missing", "dlogits",
                "dlogits is softmax(logits) / N: subtract 1 at each row's target class "
                "(dlogits = (softmax - onehot) / N).",
                lambda c: [c.p["probs"] / c.p["N"], c.p["probs"]]),
]


# ----------------------------------------------------------------------------- the ops


OPS = {
    "conv2d": _Op(
        "conv2d", "fn(dout, x, w, b, stride, padding) -> (dx, dw, db)", ("dx", "dw", "db"),
        {"dx": "x.shape", "dw": "w.shape", "db": "b.shape"},
        {"dx": ("n", "c", "h", "w"), "dw": ("oc", "c", "kh", "kw"), "db": ("oc",)},
        _conv_cases, CONV_HYPOTHESES, CONV_PATTERNS),
    "conv2d_forward": _Op(
        "conv2d_forward", "fn(x, w, b, stride, padding) -> out", ("out",),
        {"out": "(N, OC, OH, OW)"}, {"out": ("n", "oc", "oh", "ow")},
        lambda: _conv_cases(forward=True), CONV_FORWARD_HYPOTHESES),
    "max_pool2d": _Op(
        "max_pool2d", "fn(dout, x, kernel_size, stride) -> dx", ("dx",),
        {"dx": "x.shape"}, {"dx": ("n", "c", "h", "w")}, _pool_cases, POOL_HYPOTHESES),
    "batch_norm": _Op(
        "batch_norm", "fn(dout, x, gamma, beta, eps) -> (dx, dgamma, dbeta)",
        ("dx", "dgamma", "dbeta"),
        {"dx": "x.shape", "dgamma": "gamma.shape", "dbeta": "beta.shape"},
        {"dx": ("n", "d"), "dgamma": ("d",), "dbeta": ("d",)},
        lambda: _bn_cases(BN_GEOMETRIES), BN_HYPOTHESES),
    "batch_norm2d": _Op(
        "batch_norm2d", "fn(dout, x, gamma, beta, eps) -> (dx, dgamma, dbeta)",
        ("dx", "dgamma", "dbeta"),
        {"dx": "x.shape", "dgamma": "gamma.shape", "dbeta": "beta.shape"},
        {"dx": ("n", "c", "h", "w"), "dgamma": ("c",), "dbeta": ("c",)},
        lambda: _bn_cases(BN2D_GEOMETRIES), BN_HYPOTHESES),
    "softmax_cross_entropy": _Op(
        "softmax_cross_entropy", "fn(logits, targets) -> dlogits", ("dlogits",),
        {"dlogits": "logits.shape"}, {"dlogits": ("n", "k")}, _ce_cases, CE_HYPOTHESES),
}

# The function names ``python -m minidl.explain.check FILE`` looks for, and their ops.
EXERCISE_FUNCTIONS = {
    "conv_forward": "conv2d_forward",
    "conv_backward": "conv2d",
    "max_pool_backward": "max_pool2d",
    "batchnorm_backward": "batch_norm",
    "spatial_batchnorm_backward": "batch_norm2d",
    "softmax_cross_entropy_backward": "softmax_cross_entropy",
}


# ----------------------------------------------------------------------------- running


class _CaseResult:
    """What one call of the learner's function gave: per output, its status
    ('ok', 'WRONG', 'SHAPE', 'MISSING'), the array (when there is one) and the mask of
    wrong elements (when the shape is right)."""

    def __init__(self, case):
        self.case = case
        self.error = None        # text of an exception raised by the function
        self.problem = None      # a message about the return value as a whole
        self.status, self.arrays, self.bad, self.notes = {}, {}, {}, {}


def _learner_traceback(exc):
    """The exception with the learner's frames only (the checker's frame dropped)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def _call(fn, case):
    """Call fn on copies of the case's arguments. Returns (value, exception or None)."""
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in case.args]
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - any error of the learner's code is reported
        return None, exc


def _as_array(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "numpy") and callable(value.numpy):  # a minidl or torch tensor
        value = value.numpy()
    arr = np.asarray(value)
    return arr if arr.dtype.kind in "fiub" else None


def _unpack(op, value, result):
    """Split the return value into the op's outputs; record any problem."""
    names = op.outputs
    want = names[0] if len(names) == 1 else "(" + ", ".join(names) + ")"
    if value is None:
        result.problem = (f"returned None, expected {want}: is the `return` statement "
                          f"missing?")
        return
    if len(names) == 1:
        if isinstance(value, (tuple, list)) and len(value) == 1:
            value = value[0]
        values = [value]
    else:
        if not isinstance(value, (tuple, list)):
            result.problem = (f"returned one {type(value).__name__}, expected the "
                              f"{len(names)} arrays {want}")
            return
        if len(value) != len(names):
            result.problem = f"returned {len(value)} values, expected {len(names)}: {want}"
            return
        values = list(value)
    for name, v in zip(names, values):
        expected = result.case.expected[name]
        if v is None:
            result.status[name] = "MISSING"
            result.notes[name] = f"{name} is None, expected an array of shape " \
                                 f"{_shape(expected.shape)} = {op.wants[name]}"
            continue
        arr = _as_array(v)
        if arr is None:
            result.status[name] = "MISSING"
            result.notes[name] = (f"{name} is a {type(v).__name__}, expected a NumPy array "
                                  f"of shape {_shape(expected.shape)} = {op.wants[name]}")
            continue
        arr = arr.astype(np.float64)
        result.arrays[name] = arr
        if arr.shape != expected.shape:
            result.status[name] = "SHAPE"
            result.notes[name] = (f"{name} has shape {_shape(arr.shape)}, expected "
                                  f"{_shape(expected.shape)} = {op.wants[name]}")
            continue
        bad = mismatch_mask(arr, expected, ATOL, RTOL)
        result.bad[name] = bad
        result.status[name] = "WRONG" if bad.any() else "ok"


class _Diagnosis:
    def __init__(self, grad, key, text):
        self.grad, self.key, self.text = grad, key, text

    def __repr__(self):
        return f"Diagnosis({self.grad!r}, {self.key!r})"


def _diagnose(op, results):
    """Test every hypothesis of the op against the learner's wrong outputs."""
    found = []
    for name in op.outputs:
        failing = [r for r in results if r.status.get(name) in ("WRONG", "SHAPE")]
        if not failing:
            continue
        for h in op.hypotheses:
            if h.grad != name:
                continue
            applied, matched = 0, True
            for r in failing:
                cands = h.compute(r.case)
                if cands is None:
                    continue
                cands = cands if isinstance(cands, list) else [cands]
                applied += 1
                mine = r.arrays[name]
                if not any(mine.shape == c.shape and (h.shape_only or _close(mine, c))
                           for c in cands):
                    matched = False
                    break
            if applied and matched and not any(d.grad == name and d.key == h.key
                                               for d in found):
                found.append(_Diagnosis(name, h.key, h.text))
        for key, grad, text, test in op.patterns:
            if grad == name and not any(d.grad == name for d in found):
                if test([(r.case, r.bad.get(name)) for r in failing]):
                    found.append(_Diagnosis(name, key, text))
        if all(r.status[name] == "WRONG" and not r.arrays[name].any() for r in failing):
            found.append(_Diagnosis(name, "all_zeros",
                                    f"{name} is all zeros: is this part written yet?"))
    return found


class BackwardReport:
    """The result of ``check_backward``.

    ok: True when every output of every case is right.
    op, function: what was checked.
    not_implemented: the function raised NotImplementedError (an exercise's stub).
    diagnoses: the known mistakes that reproduce the wrong outputs, as objects with
        ``grad`` (``"dx"``), ``key`` (``"kernel_not_flipped"``) and ``text``.
    diagnosis_keys: the set of those keys.
    str(report): the full text (cases, error maps, worst elements, diagnoses).
    """

    def __init__(self, op, function, results, diagnoses, not_implemented=False,
                 exception=None):
        self.op, self.function = op, function
        self._results = results
        self.diagnoses = diagnoses
        self.not_implemented = not_implemented
        self.exception = exception   # text of the first exception raised, or None
        self.ok = (not not_implemented and bool(results) and all(
            r.error is None and r.problem is None and
            all(s == "ok" for s in r.status.values()) for r in results))

    @property
    def diagnosis_keys(self):
        return {d.key for d in self.diagnoses}

    @property
    def cases(self):
        """[(case number, description, {output: 'ok' | 'WRONG' | 'SHAPE' | 'MISSING'} or
        the error text)]."""
        out = []
        for r in self._results:
            state = r.error or r.problem or dict(r.status)
            out.append((r.case.index, r.case.text, state))
        return out

    def __repr__(self):
        return f"<BackwardReport {self.function} op={self.op!r} ok={self.ok}>"

    def __str__(self):
        op = OPS[self.op]
        head = f"check_backward({self.function}, op={self.op!r})   {op.signature}"
        lines = [head, "=" * min(len(head), 78)]
        if self.not_implemented:
            lines.append(f"NOT IMPLEMENTED YET: {self.function} raises NotImplementedError.")
            lines.append("Replace its `raise NotImplementedError(...)` with your code, then run "
                         "the check again.")
            return "\n".join(lines)
        for r in self._results:
            if r.error is not None:
                verdict = f"raised {r.error.splitlines()[-1]}"
            elif r.problem is not None:
                verdict = r.problem
            else:
                verdict = ", ".join(f"{n} {r.status[n]}" for n in op.outputs)
            lines.append(f"case {r.case.index}: {r.case.text}")
            lines.append(f"    {verdict}")
        if self.exception is not None:
            lines += ["", "Your function raised an exception (first failing case "
                      "shown; the checker's own frames are left out):", self.exception]
        for r in self._results:
            if r.problem is not None:
                lines += ["", f"PROBLEM in case {r.case.index}: {self.function} {r.problem}"]
                break
        for name in op.outputs:
            lines += self._output_section(op, name)
        lines.append("")
        if self.ok:
            lines.append(f"ALL {len(self._results)} CASES PASS: every output matches minidl's "
                         f"autograd (atol {ATOL:g}, rtol {RTOL:g}).")
        else:
            n_bad = sum(1 for r in self._results if r.error or r.problem or
                        any(s != "ok" for s in r.status.values()))
            if self.diagnoses:
                why = f"diagnosis: {', '.join(sorted(self.diagnosis_keys))}"
            elif self.exception is not None:
                why = "your function raised an exception (above)"
            elif any(r.problem for r in self._results):
                why = "see the PROBLEM above"
            elif any(r.status.get(n) in ("SHAPE", "MISSING") for r in self._results
                     for n in op.outputs):
                why = "wrong shapes (above)"
            else:
                why = "no known mistake reproduces your output: read the error maps"
            lines.append(f"FAILED: {n_bad} of {len(self._results)} cases wrong; {why}")
        return "\n".join(lines)

    def _output_section(self, op, name):
        failing = [r for r in self._results if r.status.get(name, "ok") != "ok"]
        if not failing:
            return []
        first = failing[0]
        lines = ["", f"--- {name}: wrong in case{'s' if len(failing) > 1 else ''} "
                 + ", ".join(str(r.case.index) for r in failing)
                 + f"; first failing case {first.case.index}: {first.case.text}"]
        status = first.status[name]
        if status in ("SHAPE", "MISSING"):
            lines.append(f"  {first.notes[name]}")
        else:
            mine, exp, bad = first.arrays[name], first.case.expected[name], first.bad[name]
            lines += ["  " + ln for ln in error_map(bad, name, op.axes[name]).splitlines()]
            err = np.abs(mine - exp)
            err = np.where(np.isnan(err), np.inf, err)
            order = np.argsort(-err, axis=None)[:WORST]
            lines.append("  worst elements:")
            for flat in order:
                j = np.unravel_index(flat, exp.shape)
                if not bad[j]:
                    continue
                idx = ", ".join(str(int(k)) for k in j)
                lines.append(f"    {name}[{idx}]: yours {mine[j]:+.6e}, expected "
                             f"{exp[j]:+.6e}, |diff| {err[j]:.1e}")
        shape_notes = [f"  case {r.case.index}: {r.notes[name]}" for r in failing[1:]
                       if r.status[name] in ("SHAPE", "MISSING")]
        lines += shape_notes[:3]
        for d in self.diagnoses:
            if d.grad == name:
                lines.append(textwrap.fill(d.text, width=90,
                                           initial_indent=f"  DIAGNOSIS ({d.key}): ",
                                           subsequent_indent="    "))
        return lines


def check_backward(fn, op="conv2d"):
    """Check a hand-written NumPy gradient (or conv forward) against minidl's autograd.

    fn: the learner's function; its signature depends on ``op`` (module docstring):
        ``"conv2d"``: ``fn(dout, x, w, b, stride, padding) -> (dx, dw, db)``;
        ``"conv2d_forward"``: ``fn(x, w, b, stride, padding) -> out``;
        ``"max_pool2d"``: ``fn(dout, x, kernel_size, stride) -> dx``;
        ``"batch_norm"``: ``fn(dout, x, gamma, beta, eps) -> (dx, dgamma, dbeta)``,
        x (N, D), training mode; ``"batch_norm2d"``: the same with x (N, C, H, W);
        ``"softmax_cross_entropy"``: ``fn(logits, targets) -> dlogits``, mean loss.
    op: one of ``OPS``.

    Returns a ``BackwardReport``: ``report.ok``, ``print(report)`` for the details.
    Never raises because of what ``fn`` does; a bad ``op`` or a non-callable ``fn`` raises
    ValueError / TypeError.
    """
    if op not in OPS:
        raise ValueError(f"check_backward: op must be one of {', '.join(map(repr, OPS))}, "
                         f"got {op!r}")
    if not callable(fn):
        raise TypeError(f"check_backward: fn must be a function, got {type(fn).__name__}")
    # The expected values come from the kernels' readable NumPy references (no compiling
    # of fast paths for a handful of tiny arrays).
    with use_impl("reference"):
        return _check(fn, OPS[op])


def _check(fn, spec):
    op = spec.name
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__",
                                                    type(fn).__name__)
    results, first_exc = [], None
    for case in spec.make_cases():
        r = _CaseResult(case)
        value, exc = _call(fn, case)
        if isinstance(exc, NotImplementedError):
            return BackwardReport(op, name, [], [], not_implemented=True)
        if exc is not None:
            r.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None and \
                    isinstance(exc, TypeError):
                r.error += (f" (could not call {name} as {spec.signature.split(' ->')[0]})")
            if first_exc is None:
                first_exc = f"case {case.index}: " + _learner_traceback(exc)
        else:
            _unpack(spec, value, r)
        results.append(r)
    return BackwardReport(op, name, results, _diagnose(spec, results), exception=first_exc)


# ----------------------------------------------------------------------------- command line


def _load(path):
    """Import a learner's file as a module; (module, None) or (None, error text)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None, f"no such file: {path}"
    spec = importlib.util.spec_from_file_location(f"_learner_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a learner's file may fail to import
        return None, f"could not import {path}:\n{_learner_traceback(exc)}"
    return module, None


def main(argv=None):
    """``python -m minidl.explain.check FILE [--op OP --function NAME]``.

    Imports FILE and checks each exercise function it defines (``EXERCISE_FUNCTIONS``:
    ``conv_forward``, ``conv_backward``, ``max_pool_backward``, ``batchnorm_backward``,
    ``spatial_batchnorm_backward``, ``softmax_cross_entropy_backward``), or the one named
    by ``--function`` with ``--op``. Prints one report each. Exit status: 0 all pass, 1 something fails or is not
    implemented yet, 2 the file or function could not be found.
    """
    parser = argparse.ArgumentParser(
        prog="python -m minidl.explain.check",
        description="Check your own NumPy backward pass against minidl's autograd.")
    parser.add_argument("file", help="a Python file defining one of: "
                        + ", ".join(EXERCISE_FUNCTIONS))
    parser.add_argument("--function", help="the function to check (another name)")
    parser.add_argument("--op", choices=sorted(OPS), help="its op (with --function)")
    args = parser.parse_args(argv)
    module, err = _load(args.file)
    if module is None:
        print(err, file=sys.stderr)
        return 2
    if args.function:
        op = args.op or EXERCISE_FUNCTIONS.get(args.function)
        if op is None:
            print(f"--function {args.function}: give its --op", file=sys.stderr)
            return 2
        todo = [(args.function, op)]
    else:
        todo = [(f, op) for f, op in EXERCISE_FUNCTIONS.items() if hasattr(module, f)]
    if not todo:
        print(f"{args.file} defines none of: {', '.join(EXERCISE_FUNCTIONS)}", file=sys.stderr)
        return 2
    status = 0
    for fname, op in todo:
        fn = getattr(module, fname, None)
        if fn is None:
            print(f"{args.file} has no function {fname}", file=sys.stderr)
            return 2
        report = check_backward(fn, op=op)
        print(report)
        print()
        status = status or (0 if report.ok else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
