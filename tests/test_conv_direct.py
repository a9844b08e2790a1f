"""Direct convolution kernels (minidl/kernels/conv_direct.py) against the im2col reference.

The kernels in both layouts ('planar', 'batch_last') against conv2d through the im2col
path (``force_impl('im2col')``): outputs and every gradient, float64 tight and float32
loose, on LeNet's shapes, non-square inputs and kernels, batch 1, paddings that are
asymmetric or larger than the kernel, unbatched inputs, and subsets of the gradients.
Then the dispatch: which convolutions take the direct kernels, both ways.

CPU only, so not parametrised over devices: the direct kernels take NumPy arrays (on a GPU
conv2d always runs im2col + GEMM, which test_conv.py covers on each device).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
from minidl.kernels import conv_direct
from minidl.ops.conv import conv2d
from helpers import check_op

pytestmark = [
    pytest.mark.skipif(not conv_direct.numba_available(), reason="numba is not installed"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}

# (x shape, weight shape, padding as conv2d takes it)
CASES = {
    "lenet conv1": ((3, 1, 32, 32), (6, 1, 5, 5), 0),
    "lenet conv2": ((3, 6, 14, 14), (16, 6, 5, 5), 0),
    "non-square": ((2, 3, 9, 13), (5, 3, 2, 4), 0),
    "batch 1, 1x1 kernel": ((1, 4, 5, 6), (7, 4, 1, 1), 0),
    "padding": ((2, 2, 7, 5), (3, 2, 3, 3), (1, 2)),
    "same, even kernel": ((2, 3, 6, 7), (4, 3, 4, 2), "same"),
    "padding > kernel": ((1, 2, 4, 5), (6, 2, 2, 3), (3, 4)),
    "kernel = input": ((2, 3, 5, 4), (9, 3, 5, 4), 0),
}


def _pads(padding, kernel):
    """conv2d's padding argument as ((top, bottom), (left, right))."""
    from minidl.ops.conv import _padding  # noqa: PLC0415
    return _padding(padding, kernel, (1, 1), (1, 1))


def _reference(x, w, b, gy, padding):
    """y, gx, gw, gb through conv2d's im2col path."""
    X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
    with conv_direct.force_impl("im2col"):
        y = conv2d(X, Wt, B, padding=padding)
    assert not y.grad_fn.direct
    (y * minidl.tensor(gy)).sum().backward()
    return y.numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()


def _close(actual, expected, dtype, what):
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["planar", "batch_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_im2col(case, layout, dtype, rng):
    xs, ws, padding = CASES[case]
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    pads = _pads(padding, ws[2:])
    y, saved = conv_direct.conv2d_forward(x, w, b, pads, layout)
    gy = rng.standard_normal(y.shape).astype(dtype)
    ry, rgx, rgw, rgb = _reference(x, w, b, gy, padding)
    assert y.dtype == dtype and y.shape == ry.shape and saved[0] == layout
    _close(y, ry, dtype, "y")
    gx, gw, gb = conv_direct.conv2d_backward(saved, w, gy, pads, xs[2:])
    for got, ref, name in ((gx, rgx, "gx"), (gw, rgw, "gw"), (gb, rgb, "gb")):
        assert got.dtype == dtype and got.shape == ref.shape, name
        _close(got, ref, dtype, name)


@pytest.mark.parametrize("layout", ["planar", "batch_last"])
def test_lenet_batch_float32(layout, rng):
    """The lecture's batch of 100 in float32, both layers, against PyTorch."""
    for xs, ws in (((100, 1, 32, 32), (6, 1, 5, 5)), ((100, 6, 14, 14), (16, 6, 5, 5))):
        x = rng.standard_normal(xs).astype(np.float32)
        w = (rng.standard_normal(ws) * 0.2).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        pads = ((0, 0), (0, 0))
        y, saved = conv_direct.conv2d_forward(x, w, b, pads, layout)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = conv_direct.conv2d_backward(saved, w, gy, pads, xs[2:])
        X, Wt, B = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        ty = F.conv2d(X, Wt, B)
        ty.backward(torch.tensor(gy))
        scale = {"y": 1, "gx": 1, "gw": 100, "gb": 100}     # gw, gb: sums over the batch
        for name, got, ref in (("y", y, ty), ("gx", gx, X.grad), ("gw", gw, Wt.grad),
                               ("gb", gb, B.grad)):
            np.testing.assert_allclose(got, ref.detach().numpy(), err_msg=name,
                                       rtol=1e-4, atol=1e-4 * scale[name])


@pytest.mark.parametrize("layout", ["planar", "batch_last"])
@pytest.mark.parametrize("need", [(True, False, False), (False, True, False),
                                  (False, False, True), (True, False, True)])
def test_only_requested_gradients(layout, need, rng):
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    pads = ((1, 1), (0, 1))
    y, saved = conv_direct.conv2d_forward(x, w, b, pads, layout)
    gy = rng.standard_normal(y.shape)
    full = conv_direct.conv2d_backward(saved, w, gy, pads, (7, 6))
    if not need[1]:
        saved = (layout, None)           # what Conv2dFunction keeps without a weight grad
    part = conv_direct.conv2d_backward(saved, w, gy, pads, (7, 6), *need)
    for wanted, got, ref in zip(need, part, full):
        if wanted:
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
        else:
            assert got is None


# ----------------------------------------------------------------------------- through the op

@pytest.mark.parametrize("case", ["lenet conv2", "non-square", "padding", "same, even kernel"])
def test_op_against_torch(case, rng):
    """conv2d on the direct path: PyTorch parity (float64 tight, float32 loose) + gradcheck."""
    xs, ws, padding = CASES[case]
    xs = (2,) + xs[1:]
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])]
    with conv_direct.force_impl("direct"):
        check_op(lambda *a: conv2d(*a, padding=padding), lambda *a: F.conv2d(*a, padding=padding),
                 arrays)


def test_op_unbatched_and_no_bias(rng):
    x, w = rng.standard_normal((3, 8, 9)), rng.standard_normal((5, 3, 3, 3))
    with conv_direct.force_impl("direct"):
        check_op(lambda x, w: conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
                 [x, w])
        y = conv2d(minidl.tensor(x, requires_grad=True), minidl.tensor(w))
    assert y.grad_fn.direct and y.shape == (5, 6, 7)


def test_op_input_grad_only(rng):
    """No weight gradient wanted: the forward keeps no input copy; gx still right."""
    x, w = rng.standard_normal((2, 6, 14, 14)), rng.standard_normal((16, 6, 5, 5))
    X = minidl.tensor(x, requires_grad=True)
    y = conv2d(X, minidl.tensor(w))
    assert y.grad_fn.direct and y.grad_fn.saved_tensors[0][1] is None
    gy = rng.standard_normal(y.shape)
    (y * minidl.tensor(gy)).sum().backward()
    T = torch.tensor(x, requires_grad=True)
    F.conv2d(T, torch.tensor(w)).backward(torch.tensor(gy))
    np.testing.assert_allclose(X.grad.numpy(), T.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- dispatch

def _takes_direct(xs, ws, dtype=np.float32, **kw):
    y = conv2d(minidl.tensor(np.zeros(xs, dtype), requires_grad=True),
               minidl.tensor(np.zeros(ws, dtype)), **kw)
    return y.grad_fn.direct


def test_dispatch_auto():
    assert _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))                  # LeNet conv1
    assert _takes_direct((2, 6, 14, 14), (16, 6, 5, 5))                 # LeNet conv2
    assert _takes_direct((2, 3, 8, 8), (16, 3, 3, 3), np.float64, padding=1)
    assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), stride=2)
    assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), dilation=2)
    assert not _takes_direct((2, 4, 8, 8), (6, 2, 3, 3), groups=2)
    assert not _takes_direct((2, 64, 8, 8), (16, 64, 3, 3))             # K = 576 > 400
    assert not _takes_direct((2, 3, 8, 8), (64, 3, 3, 3))               # OC = 64 > 32


def test_dispatch_forced():
    with conv_direct.force_impl("im2col"):
        assert not _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))
    with conv_direct.force_impl("direct"):
        assert _takes_direct((2, 64, 8, 8), (16, 64, 3, 3))
        assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), stride=2)   # cannot run it
    assert _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))                  # restored
    with pytest.raises(ValueError, match="impl must be"):
        with conv_direct.force_impl("numba"):
            pass


def test_choose_layout():
    assert conv_direct.choose_layout(28) == "planar"          # LeNet conv1: 28x28 output
    assert conv_direct.choose_layout(10) == "batch_last"      # LeNet conv2: 10x10
    with pytest.raises(ValueError, match="layout must be"):
        conv_direct.conv2d_forward(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2)), None,
                                   ((0, 0), (0, 0)), "nchw")


@pytest.mark.parametrize("layout", ["planar", "batch_last"])
def test_split_over_threads(layout, rng):
    """set_threads(n) cuts each kernel into n pieces on n threads; the same results (the
    planar weight gradient adds per-piece partial sums, so only to rounding)."""
    x, w = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((6, 3, 3, 2))
    b = rng.standard_normal(6)
    pads = ((1, 0), (2, 1))
    y, saved = conv_direct.conv2d_forward(x, w, b, pads, layout)
    gy = rng.standard_normal(y.shape)
    grads = conv_direct.conv2d_backward(saved, w, gy, pads, (9, 8))
    try:
        for n in (2, 3, 8):
            conv_direct.set_threads(n)
            y2, saved2 = conv_direct.conv2d_forward(x, w, b, pads, layout)
            np.testing.assert_array_equal(y2, y)
            for got, ref in zip(conv_direct.conv2d_backward(saved2, w, gy, pads, (9, 8)), grads):
                np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
    finally:
        conv_direct.set_threads(1)
    with pytest.raises(ValueError, match="must be >= 1"):
        conv_direct.set_threads(0)
