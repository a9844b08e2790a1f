"""Direct convolution kernels (minidl/kernels/conv_direct.py) against the im2col reference.

The kernels in both layouts ('planar', 'batch_last') against conv2d through the im2col
path (``use_impl('reference', family='conv2d')``): outputs and every gradient, float64
tight and float32 loose, on LeNet's shapes, non-square inputs and kernels, batch 1,
paddings that are asymmetric or larger than the kernel, unbatched inputs, and subsets of
the gradients. Then the registry's choice: which convolutions take the direct kernels,
both ways (``K.decisions()``).

CPU only, so not parametrised over devices: the direct kernels take NumPy arrays (on a GPU
conv2d always runs im2col + GEMM, which test_conv.py covers on each device).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
import minidl.kernels as K
from minidl import geometry
from minidl.kernels import threads
from minidl.kernels.conv import CONV2D
from minidl.ops.conv import conv2d
from helpers import check_op

pytestmark = [
    pytest.mark.skipif(not K.numba_available(), reason="numba is not installed"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]
conv_direct = CONV2D.impls["direct"].code if K.numba_available() else None

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


def _geo(x_shape, w_shape, padding):
    """The ConvGeometry of conv2d(x, w, padding=padding), stride 1."""
    pads = geometry.conv_padding(padding, w_shape[2:], (1, 1), (1, 1))
    return geometry.ConvGeometry.of(x_shape, w_shape, (1, 1), pads, (1, 1))


def _reference(x, w, b, gy, padding):
    """y, gx, gw, gb through conv2d's im2col path."""
    X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
    with K.use_impl("reference", family="conv2d"), K.decisions() as log:
        y = conv2d(X, Wt, B, padding=padding)
        (y * minidl.tensor(gy)).sum().backward()
    assert ("conv2d", "reference") in log and ("conv2d", "direct") not in log
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
    geo = _geo(xs, ws, padding)
    y, saved = conv_direct.conv2d_forward(x, w, b, geo, layout)
    gy = rng.standard_normal(y.shape).astype(dtype)
    ry, rgx, rgw, rgb = _reference(x, w, b, gy, padding)
    assert y.dtype == dtype and y.shape == ry.shape and saved[0] == layout
    _close(y, ry, dtype, "y")
    gx, gw, gb = conv_direct.conv2d_backward(saved, w, gy, geo)
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
        geo = _geo(xs, ws, 0)
        y, saved = conv_direct.conv2d_forward(x, w, b, geo, layout)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = conv_direct.conv2d_backward(saved, w, gy, geo)
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
    geo = geometry.ConvGeometry.of(x.shape, w.shape, padding=((1, 1), (0, 1)))
    y, saved = conv_direct.conv2d_forward(x, w, b, geo, layout)
    gy = rng.standard_normal(y.shape)
    full = conv_direct.conv2d_backward(saved, w, gy, geo)
    if not need[1]:
        saved = (layout, None)           # what forward keeps without a weight grad
    part = conv_direct.conv2d_backward(saved, w, gy, geo, *need)
    for wanted, got, ref in zip(need, part, full):
        if wanted:
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
        else:
            assert got is None


# ----------------------------------------------------------------------------- through the op

@pytest.mark.parametrize("min_n", [conv_direct.BATCH_LAST_MIN_N, 1])
@pytest.mark.parametrize("case", ["lenet conv2", "non-square", "padding", "same, even kernel"])
def test_op_against_torch(case, min_n, rng, monkeypatch):
    """conv2d on the direct path: PyTorch parity (float64 tight, float32 loose) + gradcheck;
    2 images: planar as the rule has it, and batch-last with the rule's batch minimum at 1."""
    monkeypatch.setattr(conv_direct, "BATCH_LAST_MIN_N", min_n)
    xs, ws, padding = CASES[case]
    xs = (2,) + xs[1:]
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])]
    geo = _geo(xs, ws, padding)
    assert conv_direct.choose_layout(geo) == ("planar" if min_n > 2 or geo.OW >= 16
                                              else "batch_last")
    with K.use_impl("direct", family="conv2d"), K.decisions() as log:
        check_op(lambda *a: conv2d(*a, padding=padding), lambda *a: F.conv2d(*a, padding=padding),
                 arrays)
    assert ("conv2d", "direct") in log and ("conv2d", "reference") not in log


def test_op_unbatched_and_no_bias(rng, use_impl):
    x, w = rng.standard_normal((3, 8, 9)), rng.standard_normal((5, 3, 3, 3))
    use_impl("direct", family="conv2d")
    check_op(lambda x, w: conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
             [x, w])
    with K.decisions() as log:
        y = conv2d(minidl.tensor(x, requires_grad=True), minidl.tensor(w))
    assert log == [("conv2d", "direct")] and y.shape == (5, 6, 7)


def test_op_input_grad_only(rng):
    """No weight gradient wanted: the forward keeps no input copy; gx still right."""
    x, w = rng.standard_normal((2, 6, 14, 14)), rng.standard_normal((16, 6, 5, 5))
    X = minidl.tensor(x, requires_grad=True)
    with K.decisions() as log:
        y = conv2d(X, minidl.tensor(w))
    assert log == [("conv2d", "direct")]
    x_saved, weight, kept = y.grad_fn.saved_tensors
    assert x_saved is None and kept[1] is None and weight is not None
    gy = rng.standard_normal(y.shape)
    (y * minidl.tensor(gy)).sum().backward()
    T = torch.tensor(x, requires_grad=True)
    F.conv2d(T, torch.tensor(w)).backward(torch.tensor(gy))
    np.testing.assert_allclose(X.grad.numpy(), T.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- dispatch

def _takes_direct(xs, ws, dtype=np.float32, **kw):
    with K.decisions() as log:
        conv2d(minidl.tensor(np.zeros(xs, dtype), requires_grad=True),
               minidl.tensor(np.zeros(ws, dtype)), **kw)
    [(family, impl)] = [d for d in log if d[0] == "conv2d"]
    return impl == "direct"


def test_dispatch_auto():
    assert _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))                  # LeNet conv1
    assert _takes_direct((2, 6, 14, 14), (16, 6, 5, 5))                 # LeNet conv2
    assert _takes_direct((2, 3, 8, 8), (16, 3, 3, 3), np.float64, padding=1)
    assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), stride=2)
    assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), dilation=2)
    assert not _takes_direct((2, 4, 8, 8), (6, 2, 3, 3), groups=2)
    assert not _takes_direct((2, 64, 8, 8), (16, 64, 3, 3))             # K = 576 > 400
    assert not _takes_direct((2, 16, 8, 8), (64, 16, 3, 3))             # K = 144, OC 64 > 32
    assert _takes_direct((2, 3, 8, 8), (64, 3, 3, 3), padding=1)        # K = 27: a stem
    assert _takes_direct((2, 3, 8, 8), (128, 3, 3, 3))                  # K = 27, OC = 128
    assert not _takes_direct((2, 3, 8, 8), (256, 3, 3, 3))              # OC = 256 > 128
    assert not _takes_direct((2, 4, 8, 8), (64, 4, 3, 3))               # K = 36 > 32
    assert not _takes_direct((2, 144, 8, 8), (24, 144, 1, 1))           # 1x1: a plain product
    assert not _takes_direct((2, 3, 8, 8), (16, 3, 1, 1))
    x, w = np.zeros((2, 1, 32, 32), np.float32), np.zeros((6, 1, 5, 5), np.float32)
    geo = geometry.ConvGeometry.of(x.shape, w.shape)
    assert K.which("conv2d", x, w, geo=geo) == "direct"
    assert K.which("conv2d", x.astype(np.float16), w.astype(np.float16), geo=geo) == "reference"
    assert K.which("conv2d", x, w.astype(np.float64), geo=geo) == "reference"


def test_dispatch_forced(use_impl):
    with K.use_impl("reference", family="conv2d"):
        assert not _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))
    with K.use_impl("reference"):                                       # every family
        assert not _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))
    with K.use_impl("direct", family="conv2d"):
        assert _takes_direct((2, 64, 8, 8), (16, 64, 3, 3))              # any size when forced
        assert not _takes_direct((2, 3, 8, 8), (6, 3, 3, 3), stride=2)   # cannot run it
    assert _takes_direct((2, 1, 32, 32), (6, 1, 5, 5))                  # restored
    use_impl("direct")                                                  # every family that has it
    assert _takes_direct((2, 64, 8, 8), (16, 64, 3, 3))
    with pytest.raises(ValueError, match="the conv2d family has no 'numba' implementation"):
        K.use_impl("numba", family="conv2d")


def test_choose_layout():
    def layout(N, H, K):
        return conv_direct.choose_layout(geometry.ConvGeometry.of((N, 6, H, H), (16, 6, K, K)))
    assert layout(100, 32, 5) == "planar"          # LeNet conv1: 28x28 output
    assert layout(100, 14, 5) == "batch_last"      # LeNet conv2: 10x10
    assert layout(8, 14, 5) == "batch_last"        # BATCH_LAST_MIN_N
    assert layout(7, 14, 5) == "planar"            # too few images for batch-last rows
    assert layout(1, 14, 5) == "planar"
    assert layout(8, 18, 3) == "planar"            # OW = 16
    with pytest.raises(ValueError, match="layout must be"):
        x, w = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2))
        conv_direct.conv2d_forward(x, w, None, geometry.ConvGeometry.of(x.shape, w.shape),
                                   "nchw")


@pytest.mark.parametrize("layout", ["planar", "batch_last"])
def test_parallel_builds_give_the_same_results(layout, rng, num_threads, monkeypatch):
    """Every kernel on its parallel build (image chunks, output rows, tap blocks on numba's
    threads): the same results as the serial builds (the planar weight gradient adds
    per-chunk partial sums, so only to rounding)."""
    x, w = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((6, 3, 3, 2))
    b = rng.standard_normal(6)
    geo = geometry.ConvGeometry.of(x.shape, w.shape, padding=((1, 0), (2, 1)))
    with threads.set_parallel(False):
        y, saved = conv_direct.conv2d_forward(x, w, b, geo, layout)
        gy = rng.standard_normal(y.shape)
        grads = conv_direct.conv2d_backward(saved, w, gy, geo)
    num_threads(2)
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    with threads.set_parallel(True):
        y2, saved2 = conv_direct.conv2d_forward(x, w, b, geo, layout)
        np.testing.assert_array_equal(y2, y)
        for got, ref in zip(conv_direct.conv2d_backward(saved2, w, gy, geo), grads):
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("layout", ["planar", "batch_last"])
def test_numba_parallel_build(layout, rng):
    """The parallel builds (``threads.set_parallel(True)``, inputs above the size threshold)
    give the results of the serial ones (the planar weight gradient: per-chunk partial
    sums, so to rounding)."""
    x, w = rng.standard_normal((8, 3, 40, 40)), rng.standard_normal((6, 3, 3, 3))
    b = rng.standard_normal(6)
    geo = geometry.ConvGeometry.of(x.shape, w.shape, padding=((1, 1), (1, 1)))
    y, saved = conv_direct.conv2d_forward(x, w, b, geo, layout)
    gy = rng.standard_normal(y.shape)
    grads = conv_direct.conv2d_backward(saved, w, gy, geo)
    with threads.set_parallel(True):
        assert threads.parallel(y.size)
        y2, saved2 = conv_direct.conv2d_forward(x, w, b, geo, layout)
        grads2 = conv_direct.conv2d_backward(saved2, w, gy, geo)
    np.testing.assert_allclose(y2, y, rtol=1e-13, atol=1e-13)
    for got, ref in zip(grads2, grads):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def _parts_of(a, S, Ns):
    """NumPy's batch-last parts of a (N, C, H, W): (S, C, H, W, Ns), spare columns zero."""
    out = np.zeros((S,) + a.shape[1:] + (Ns,), a.dtype)
    for p in range(S):
        part = a[p * Ns:(p + 1) * Ns]
        out[p, ..., :len(part)] = part.transpose(1, 2, 3, 0)
    return out


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", [None, (1, 5), (2, 3), (3, 2), (5, 1)])
def test_batch_last_parts_are_numpys_transposes(parts, parallel, dtype, rng, num_threads,
                                                monkeypatch):
    """The batch-last parts (``_to_batch_last``, zero-padded by a geometry's padding or not)
    are exactly NumPy's transposes of each part's images, the last part's spare columns
    zero, on either build, for contiguous and strided inputs."""
    num_threads(2)
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    x = rng.standard_normal((5, 3, 7, 6)).astype(dtype)
    strided = rng.standard_normal((5, 6, 7, 12)).astype(dtype)[:, ::2, :, ::2]
    w = np.zeros((4, 3, 3, 3), dtype)
    with threads.set_parallel(parallel):
        S, Ns = parts or conv_direct.batch_parts(5, x.size)
        assert (S, Ns) == (parts or ((2, 3) if parallel else (1, 5)))
        for src in (x, strided):
            np.testing.assert_array_equal(conv_direct._to_batch_last(src, parts=parts),
                                          _parts_of(src, S, Ns))
            geo = geometry.ConvGeometry.of(src.shape, w.shape, padding=((2, 0), (1, 3)))
            padded = np.pad(src, ((0, 0), (0, 0), (2, 0), (1, 3)))
            np.testing.assert_array_equal(conv_direct._to_batch_last(src, geo, parts),
                                          _parts_of(padded, S, Ns))


@pytest.mark.parametrize("N, threads_, parts", [(100, 2, (2, 50)), (5, 2, (2, 3)),
                                                (5, 4, (3, 2)), (1, 2, (1, 1)), (7, 1, (1, 7))])
def test_batch_parts(N, threads_, parts, num_threads, monkeypatch):
    """One part per thread, the last holding what is left, and never an empty part."""
    num_threads(threads_)
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    with threads.set_parallel(True):
        assert conv_direct.batch_parts(N, 10**6) == parts
    with threads.set_parallel(False):
        assert conv_direct.batch_parts(N, 10**6) == (1, N)


def test_backward_cut_unlike_the_forward(rng, num_threads, monkeypatch):
    """Threads changed between forward and backward: the weight gradient cuts gy as the
    saved input was cut, the input gradient as it likes; both still exact."""
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    x, w = rng.standard_normal((7, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    geo = geometry.ConvGeometry.of(x.shape, w.shape, padding=((1, 0), (0, 1)))
    with threads.set_parallel(False):
        y, saved = conv_direct.conv2d_forward(x, w, b, geo, "batch_last")
        gy = rng.standard_normal(y.shape)
        ref = conv_direct.conv2d_backward(saved, w, gy, geo)
    num_threads(3)
    with threads.set_parallel(True):
        _, saved3 = conv_direct.conv2d_forward(x, w, b, geo, "batch_last")
    assert saved[1].shape[0] == 1 and saved3[1].shape[0] == 3
    num_threads(2)
    with threads.set_parallel(True):
        for s in (saved, saved3):
            g = conv_direct.grad_output(gy, geo)
            gx = conv_direct.grad_input(g, w, geo)            # cut in 2 here
            gw, gb = conv_direct.grad_weight(g, s, geo)       # cut as s was
            for got, want in zip((gx, gw, gb), ref):
                np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
