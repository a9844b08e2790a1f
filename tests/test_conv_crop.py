"""Kernels cut down to the taps that read the input (``ConvGeometry.cropped``,
``kernels.conv.conv2d_code``): on small maps a convolution runs with the part of its
kernel that ever sees the input (a 3x3 kernel on a 1x1 map: its centre).

The geometry (hypothesis): the taps kept are exactly those some output reads inside the
input (``geometry.valid_taps``), the output size is unchanged and no padding goes
negative. The op: conv2d, conv_transpose2d and their gradients with the automatic choice
(cropped) equal the forced reference (which is never cropped) and PyTorch, the weight
gradient of the cut taps is exactly 0, second derivatives agree with PyTorch; the
implementation is chosen for the cropped geometry.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
import minidl.kernels as K
import minidl.nn.functional as F
from minidl import geometry as G
from helpers import check_double_backward, check_op

# name: (x shape, w shape, stride, padding, dilation) with taps that read only padding
CASES = {
    "3x3 on 1x1 (GoogLeNet)": ((3, 5, 1, 1), (4, 5, 3, 3), 1, 1, 1),
    "5x5 p2 on 2x2 (GoogLeNet)": ((2, 3, 2, 2), (4, 3, 5, 5), 1, 2, 1),
    "3x3 on one row": ((2, 3, 1, 6), (5, 3, 3, 3), 1, 1, 1),
    "5x5 p2 stride 2 on 2x2": ((2, 3, 2, 2), (2, 3, 5, 5), 2, 2, 1),
    "dilated 3x3 d2 p2 on 2x3": ((2, 4, 2, 3), (3, 4, 3, 3), 1, 2, 2),
    "asymmetric 3x5 on 1x2": ((2, 3, 1, 2), (4, 3, 3, 5), 1, (1, 2), 1),
}


def _geo(case):
    xs, ws, s, p, d = CASES[case]
    p = (p, p) if isinstance(p, int) else p
    return G.ConvGeometry.of(xs, ws, (s, s), ((p[0], p[0]), (p[1], p[1])), (d, d))


@pytest.mark.parametrize("case", list(CASES))
def test_cases_are_cropped(case):
    assert _geo(case).cropped() is not None


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 2), st.integers(1, 2), st.integers(1, 2), st.integers(1, 2),
       st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))
def test_cropped_keeps_exactly_the_taps_that_read_the_input(H, W, KH, KW, SH, SW, DH, DW,
                                                            PH0, PH1, PW0, PW1):
    geo = G.ConvGeometry.of((1, 1, H, W), (1, 1, KH, KW), (SH, SW), ((PH0, PH1), (PW0, PW1)),
                            (DH, DW))
    if not geo.fits():
        return
    _, tap_k, _ = G.valid_taps((H, W), (geo.OH, geo.OW), (KH, KW), (SH, SW), (PH0, PW0),
                               (DH, DW))
    used = {(int(k) // KW, int(k) % KW) for k in tap_k}
    cut = geo.cropped()
    if cut is None:       # nothing to cut, nothing inside at all, or padding would go < 0
        rows = {i for i, _ in used}
        cols = {j for _, j in used}
        full = rows == set(range(KH)) and cols == set(range(KW))
        negative = (used and (PH0 - min(rows) * DH < 0 or PW0 - min(cols) * DW < 0
                              or PH1 - (KH - 1 - max(rows)) * DH < 0
                              or PW1 - (KW - 1 - max(cols)) * DW < 0))
        assert full or not used or negative
        return
    g, (kh0, kh1, kw0, kw1) = cut
    # used taps form a rectangle (per axis independent), and it is the one kept
    assert used == {(i, j) for i in range(kh0, kh1) for j in range(kw0, kw1)}
    assert (g.OH, g.OW, g.KH, g.KW) == (geo.OH, geo.OW, kh1 - kh0, kw1 - kw0)
    assert min(g.PH0, g.PH1, g.PW0, g.PW1) >= 0
    assert G.ConvGeometry.of((1, 1, H, W), (1, 1, g.KH, g.KW), (SH, SW), g.padding,
                             (DH, DW)) == g


def _tensors(case, dtype, rng):
    xs, ws, *_ = CASES[case]
    return (rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype),
            rng.standard_normal(ws[0]).astype(dtype))


def _conv(case, x, w, b):
    _, _, s, p, d = CASES[case]
    return F.conv2d(x, w, b, stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_cropped_conv2d_equals_the_reference(case, dtype, rng):
    """y and every gradient: automatic (cropped) against use_impl('reference') (the full
    kernel); the cut taps' weight gradient is exactly 0."""
    x, w, b = _tensors(case, dtype, rng)
    geo = _geo(case)
    gy = rng.standard_normal(geo.out_shape).astype(dtype)
    results = []
    for forced in (False, True):
        X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
        if forced:
            with K.use_impl("reference", family="conv2d"):
                y = _conv(case, X, Wt, B)
                y.backward(minidl.tensor(gy))
        else:
            y = _conv(case, X, Wt, B)
            y.backward(minidl.tensor(gy))
        results.append([y.numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, a, r in zip(("y", "dx", "dw", "db"), *results):
        np.testing.assert_allclose(a, r, err_msg=f"{case}: {name}", **tol)
    _, (kh0, kh1, kw0, kw1) = geo.cropped()
    cut = np.ones(w.shape[2:], dtype=bool)
    cut[kh0:kh1, kw0:kw1] = False
    assert np.all(results[0][2][:, :, cut] == 0)


@pytest.mark.parametrize("case", list(CASES))
def test_cropped_conv2d_matches_torch(case):
    xs, ws, s, p, d = CASES[case]
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])]
    check_op(lambda x, w, b: F.conv2d(x, w, b, stride=s, padding=p, dilation=d),
             lambda x, w, b: TF.conv2d(x, w, b, stride=s, padding=p, dilation=d), arrays)
    check_double_backward(lambda x, w: F.conv2d(x, w, None, stride=s, padding=p, dilation=d),
                          lambda x, w: TF.conv2d(x, w, None, stride=s, padding=p, dilation=d),
                          arrays[:2])


@pytest.mark.parametrize("case", ["3x3 on 1x1 (GoogLeNet)", "5x5 p2 on 2x2 (GoogLeNet)"])
def test_cropped_conv_transpose2d_matches_torch(case):
    """conv_transpose2d mapping the small map back: its forward is conv2d's input
    gradient, cropped the same way."""
    xs, ws, s, p, d = CASES[case]
    rng = np.random.default_rng(2)
    y_shape = _geo(case).out_shape
    arrays = [rng.standard_normal(y_shape), rng.standard_normal((ws[0], ws[1]) + ws[2:]),
              rng.standard_normal(ws[1])]
    check_op(lambda g, w, b: F.conv_transpose2d(g, w, b, stride=s, padding=p, dilation=d),
             lambda g, w, b: TF.conv_transpose2d(g, w, b, stride=s, padding=p, dilation=d),
             arrays)


def test_the_choice_is_made_for_the_cropped_kernel(rng):
    """GoogLeNet's 3x3 on a 1x1 map runs as a 1x1 convolution: the implementation chosen
    is the one the 1x1 geometry gets."""
    x = minidl.tensor(rng.standard_normal((4, 48, 1, 1)).astype(np.float32))
    w = minidl.tensor(rng.standard_normal((96, 48, 3, 3)).astype(np.float32))
    with K.decisions() as log:
        F.conv2d(x, w, padding=1)
    with K.decisions() as log_1x1:
        F.conv2d(x, minidl.tensor(w.numpy()[:, :, 1:2, 1:2].copy()))
    assert [d for d in log if d[0] == "conv2d"] == [d for d in log_1x1 if d[0] == "conv2d"]
