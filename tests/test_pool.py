"""Pooling: PyTorch parity (forward, indices, gradients) and gradcheck for max_pool2d,
avg_pool2d, adaptive_avg_pool2d and adaptive_max_pool2d, on each device; the tie
policies; the numba fast paths against the NumPy reference, directly and through the
kernel registry; the registry's choices; every validation error.

Inputs come from ``distinct`` (no ties) unless a test is about ties. Implementations are
chosen with ``minidl.kernels.use_impl`` only, and ``decisions()`` checks that the chosen
one really ran.
"""
import contextlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minidl
import minidl.kernels as K
from helpers import check_op, distinct, to_host, torch_device
from minidl import geometry as G
from minidl.errors import ShapeError
from minidl.kernels import pool as KP
from minidl.kernels import pool_reference as KR
from minidl.kernels import threads
from minidl.ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

F64 = (np.float64,)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- max_pool2d

MAX_CASES = [
    ((2, 3, 6, 6), dict(kernel_size=2)),                                  # 2x2/2 fast path
    ((2, 2, 7, 9), dict(kernel_size=2, stride=2)),                        # odd: last row/col out
    ((1, 2, 7, 5), dict(kernel_size=(3, 2), stride=(2, 1))),              # non-square
    ((2, 1, 7, 8), dict(kernel_size=3, stride=2, padding=1)),             # ResNet stem
    ((1, 2, 8, 7), dict(kernel_size=(2, 3), stride=(3, 2), padding=(1, 1), dilation=(2, 1))),
    ((1, 1, 9, 9), dict(kernel_size=3, stride=1, dilation=2)),
    ((2, 2, 5, 7), dict(kernel_size=2, stride=2, ceil_mode=True)),        # ceil on odd sizes
    ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 1, 6, 6), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),  # last window dropped
    ((2, 1, 5, 6), dict(kernel_size=(3, 3), stride=(2, 3), dilation=(1, 2), ceil_mode=True)),
    ((1, 2, 4, 5), dict(kernel_size=(1, 3))),
    ((1, 1, 5, 5), dict(kernel_size=3, stride=1, padding=1)),             # overlapping windows
    ((3, 5, 7), dict(kernel_size=2, stride=1)),                           # unbatched
    ((2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),  # unbatched
]


def _ids(cases):
    return [f"{s}-{','.join(f'{k}={v}' for k, v in kw.items())}" for s, kw in cases]


# Each op through the NumPy reference (written with the array API NumPy and CuPy share, so
# it runs on either device) and through the device's fast path: the numba kernels on the
# CPU, the CUDA kernels (kernels/cuda_kernels.py) on the GPU.
IMPLS = ["reference", "fast"]


def _impl(impl, device):
    """The pool implementation that runs ``impl`` ('reference' or 'fast') on ``device``."""
    if impl == "reference":
        return "reference"
    return "numba" if minidl.device(device).type == "cpu" else "cuda"


@contextlib.contextmanager
def through(impl, device):
    """Run the block's pooling kernels through ``impl`` ('reference' or 'fast', see
    ``_impl``) and check that every dispatched pooling call took it, and that there was
    at least one."""
    name = _impl(impl, device)
    if name == "numba" and not K.numba_available():
        pytest.skip("numba is not installed")
    with K.use_impl(name, family="pool"), K.decisions() as log:
        yield
    taken = [i for family, i in log if family == "pool"]
    assert taken and set(taken) == {name}, f"pooling calls took {taken}, expected {name}"


@pytest.mark.parametrize("shape,kw", MAX_CASES, ids=_ids(MAX_CASES))
@pytest.mark.parametrize("tie", ["first", "split"])
@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool2d_matches_torch(shape, kw, tie, impl, rng, device):
    x = distinct(rng, shape)
    with through(impl, device):
        check_op(lambda t: max_pool2d(t, **kw, tie=tie), lambda t: F.max_pool2d(t, **kw), [x],
                 gradcheck=tie == "first", device=device)


@pytest.mark.parametrize("shape,kw", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool2d_return_indices(shape, kw, rng, device):
    x = distinct(rng, shape)
    check_op(lambda t: max_pool2d(t, **kw, return_indices=True),
             lambda t: F.max_pool2d(t, **kw, return_indices=True), [x], gradcheck=False,
             device=device)
    for dtype in (np.float32, np.float64):
        _, idx = max_pool2d(minidl.tensor(x.astype(dtype), device=device), **kw,
                            return_indices=True)
        _, tidx = F.max_pool2d(torch.tensor(x.astype(dtype), device=torch_device(device)), **kw,
                               return_indices=True)
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(to_host(idx), to_host(tidx))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_input_and_gradient(impl, rng, device):
    """A transposed input, and an upstream gradient that arrives transposed."""
    x = distinct(rng, (2, 3, 9, 8)).transpose(0, 1, 3, 2)
    with through(impl, device):
        check_op(lambda t: max_pool2d(t, 3, 2, 1).transpose(2, 3),
                 lambda t: F.max_pool2d(t, 3, 2, 1).transpose(2, 3), [x], gradcheck=False,
                 device=device)
        check_op(lambda t: avg_pool2d(t, 2).transpose(2, 3),
                 lambda t: F.avg_pool2d(t, 2).transpose(2, 3), [x], gradcheck=False,
                 device=device)


def test_max_pool2d_integer_input(rng, device):
    x = rng.integers(-50, 50, (2, 3, 7, 6))
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)):
        y, idx = max_pool2d(minidl.tensor(x, device=device), **kw, return_indices=True)
        # the reference on the CPU: PyTorch's CUDA max pooling takes floating types only
        ty, tidx = F.max_pool2d(torch.tensor(x), **kw, return_indices=True)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(to_host(y), ty.numpy())
        np.testing.assert_array_equal(to_host(idx), tidx.numpy())


def test_max_pool2d_nan_and_inf_follow_torch():
    """NaN propagates (index of the last NaN); an all -inf window next to padding points at
    its first input tap, never at the padding."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = np.nan
    x[0, 0, 2, 3] = np.nan
    x[0, 1] = -np.inf
    for impl in IMPLS:
        for k, s, p, ceil_mode in ((2, 2, 0, False), (2, 2, 1, False), (3, 2, 1, True)):
            kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode)
            win = G.make_window((4, 4), (k, k), (s, s), (p, p), (1, 1), ceil_mode)
            with through(impl, "cpu"):
                y, arg = KP.max_pool2d_forward(x, win)
            ty, tidx = F.max_pool2d(torch.tensor(x), **kw, return_indices=True)
            np.testing.assert_array_equal(y, ty.numpy())  # NaN == NaN here
            np.testing.assert_array_equal(KP.max_pool2d_indices(arg, win), tidx.numpy())


# ----------------------------------------------------------------------------- ties


def _tied_input():
    """One plane with tied maxima inside windows, for 2x2/2 and for 3x3/1 with padding."""
    return np.array([[[[1., 3., 2., 2.],
                       [3., 0., 2., 2.],
                       [5., 4., 5., 1.],
                       [0., 5., 1., 5.]]]])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=2, stride=1, dilation=2),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
@pytest.mark.parametrize("impl", IMPLS)
def test_tie_first_matches_torch_exactly(kw, impl, device):
    x = _tied_input()
    for dtype in (np.float32, np.float64):
        xm = minidl.tensor(x.astype(dtype), requires_grad=True, device=device)
        xt = torch.tensor(x.astype(dtype), requires_grad=True, device=torch_device(device))
        with through(impl, device):
            y, idx = max_pool2d(xm, **kw, return_indices=True)
        ty, tidx = F.max_pool2d(xt, **kw, return_indices=True)
        np.testing.assert_array_equal(to_host(idx), to_host(tidx))
        g = np.arange(1, y.numel() + 1, dtype=dtype).reshape(y.shape)
        with through(impl, device):
            y.backward(minidl.tensor(g, device=device))
        ty.backward(torch.tensor(g, device=xt.device))
        np.testing.assert_array_equal(to_host(y), to_host(ty))
        np.testing.assert_array_equal(to_host(xm.grad), to_host(xt.grad))


def test_tie_split_shares_gradient_evenly(device):
    x = _tied_input()
    xm = minidl.tensor(x, requires_grad=True, device=device)
    y = max_pool2d(xm, 2, tie="split")
    g = np.array([[[[1., 2.], [4., 8.]]]])
    y.backward(minidl.tensor(g, device=device))
    expected = np.array([[[[0, .5, .5, .5],
                           [.5, 0, .5, .5],
                           [2, 0, 4, 0],
                           [0, 2, 0, 4]]]])
    np.testing.assert_allclose(to_host(xm.grad), expected)
    assert to_host(xm.grad).sum() == pytest.approx(g.sum())  # total preserved


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=1, padding=1),
                                dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
                                dict(kernel_size=(2, 3), stride=1, dilation=(1, 2))])
def test_tie_split_overlapping_windows_and_padding(kw, rng, device):
    """Each window hands out exactly its gradient, split among its tied maxima inside the
    input; checked against an explicit per-window loop. -inf inputs next to -inf
    padding: the padding never takes a share."""
    x = rng.integers(0, 3, (2, 2, 5, 6)).astype(np.float64)
    x[1, 1] = -np.inf
    xm = minidl.tensor(x, requires_grad=True, device=device)
    y = max_pool2d(xm, **kw, tie="split")
    g = rng.standard_normal(y.shape)
    y.backward(minidl.tensor(g, device=device))
    y_host = to_host(y)
    # brute force: every window, every tap
    kh, kw_ = _pair(kw["kernel_size"])
    sh, sw = _pair(kw["stride"])
    ph, pw = _pair(kw.get("padding", 0))
    dh, dw = _pair(kw.get("dilation", 1))
    expected = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for oh in range(y.shape[2]):
                for ow in range(y.shape[3]):
                    taps = [(oh * sh - ph + i * dh, ow * sw - pw + j * dw)
                            for i in range(kh) for j in range(kw_)]
                    taps = [(r, q) for r, q in taps if 0 <= r < H and 0 <= q < W]
                    m = max(x[n, c, r, q] for r, q in taps)
                    tied = [(r, q) for r, q in taps if x[n, c, r, q] == m]
                    assert y_host[n, c, oh, ow] == m
                    for r, q in tied:
                        expected[n, c, r, q] += g[n, c, oh, ow] / len(tied)
    np.testing.assert_allclose(to_host(xm.grad), expected, rtol=1e-12, atol=1e-12)
    assert to_host(xm.grad).sum() == pytest.approx(g.sum())


def test_tie_argument_is_checked():
    with pytest.raises(ValueError, match=r"max_pool2d: tie must be 'first' or 'split', got 'x'"):
        max_pool2d(minidl.ones(1, 1, 4, 4), 2, tie="x")


# ----------------------------------------------------------------------------- avg_pool2d

AVG_CASES = [
    ((2, 3, 6, 6), dict(kernel_size=2)),                                  # 2x2/2 fast path
    ((2, 2, 7, 9), dict(kernel_size=2, stride=2)),
    ((1, 2, 7, 5), dict(kernel_size=(3, 2), stride=(2, 1))),
    ((2, 1, 7, 8), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 1, 7, 8), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False)),
    ((1, 1, 5, 5), dict(kernel_size=2, stride=2, ceil_mode=True)),        # runs past the edge
    ((1, 1, 5, 7), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 5, 7), dict(kernel_size=(2, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True,
                        divisor_override=5)),
    ((2, 2, 6, 6), dict(kernel_size=2, divisor_override=3)),              # not the 1/4 fast path
    ((1, 1, 6, 5), dict(kernel_size=3, stride=1, padding=1, divisor_override=-2)),
    ((3, 5, 7), dict(kernel_size=2, stride=1)),                           # unbatched
    ((2, 5, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
]


@pytest.mark.parametrize("shape,kw", AVG_CASES, ids=_ids(AVG_CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_avg_pool2d_matches_torch(shape, kw, impl, rng, device):
    x = rng.standard_normal(shape)
    with through(impl, device):
        check_op(lambda t: avg_pool2d(t, **kw), lambda t: F.avg_pool2d(t, **kw), [x],
                 device=device)


# ----------------------------------------------------------------------------- adaptive

ADAPTIVE_CASES = [
    ((2, 3, 7, 9), (3, 4)),      # windows of different sizes, overlapping
    ((1, 2, 8, 10), 3),
    ((2, 2, 6, 6), (3, 2)),      # divides the input
    ((1, 2, 5, 7), 1),           # global pooling
    ((2, 3, 1, 1), 1),           # global pooling of 1x1 planes
    ((3, 4, 4), 1),              # global pooling, unbatched
    ((1, 2, 5, 7), (4, None)),   # None keeps W
    ((1, 1, 4, 5), (7, 9)),      # larger than the input: windows repeat
    ((2, 3, 2, 2), (4, 4)),      # a multiple of the input: each input repeated
    ((1, 2, 3, 2), (3, 6)),      # repeated along W only
    ((1, 2, 3, 4), (6, 5)),      # along H only, W's windows of one or two
    ((3, 7, 5), (2, 3)),         # unbatched
    ((1, 2, 5, 6), (None, 4)),
]


@pytest.mark.parametrize("shape,size", ADAPTIVE_CASES, ids=[str(c) for c in ADAPTIVE_CASES])
def test_adaptive_avg_pool2d_matches_torch(shape, size, rng, device):
    x = rng.standard_normal(shape)
    check_op(lambda t: adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size),
             [x], device=device)


def test_global_average_pool_float16_and_1x1_planes(rng):
    """Global average pooling is a product with the averaging vector; float16 keeps
    NumPy's mean (sums in float32), and a 1x1 plane comes back as a copy of itself."""
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float16)
    y = adaptive_avg_pool2d(minidl.tensor(x), 1).numpy()
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x.mean(axis=(2, 3), keepdims=True))
    one = minidl.tensor(rng.standard_normal((2, 3, 1, 1)).astype(np.float32))
    y = adaptive_avg_pool2d(one, 1)
    np.testing.assert_array_equal(y.numpy(), one.numpy())
    assert not np.shares_memory(y.numpy(), one.numpy())


@pytest.mark.parametrize("shape,size", ADAPTIVE_CASES, ids=[str(c) for c in ADAPTIVE_CASES])
def test_adaptive_max_pool2d_matches_torch(shape, size, rng, device):
    x = distinct(rng, shape)
    check_op(lambda t: adaptive_max_pool2d(t, size), lambda t: F.adaptive_max_pool2d(t, size),
             [x], device=device)
    check_op(lambda t: adaptive_max_pool2d(t, size, return_indices=True),
             lambda t: F.adaptive_max_pool2d(t, size, return_indices=True), [x],
             gradcheck=False, device=device)
    _, idx = adaptive_max_pool2d(minidl.tensor(x, device=device), size, return_indices=True)
    _, tidx = F.adaptive_max_pool2d(torch.tensor(x, device=torch_device(device)), size,
                                    return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(to_host(idx), to_host(tidx))


def test_adaptive_max_pool2d_ties_and_nan_follow_torch(rng, device):
    """Against PyTorch's CPU kernel on every device: its CUDA kernel scans the same
    windows, but the tie and NaN rules minidl follows are the CPU kernel's."""
    x = rng.integers(0, 3, (2, 2, 7, 9)).astype(np.float64)
    x[1, 0, 2, 3] = x[1, 0, 3, 1] = np.nan
    xm = minidl.tensor(x, requires_grad=True, device=device)
    xt = torch.tensor(x, requires_grad=True)
    y, idx = adaptive_max_pool2d(xm, (3, 4), return_indices=True)
    ty, tidx = F.adaptive_max_pool2d(xt, (3, 4), return_indices=True)
    np.testing.assert_array_equal(to_host(y), ty.detach().numpy())
    np.testing.assert_array_equal(to_host(idx), tidx.numpy())
    g = rng.standard_normal(y.shape)
    y.backward(minidl.tensor(g, device=device))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(to_host(xm.grad), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- property test


def _window_ok(L, k, s, p, d, ceil_mode):
    """PyTorch's constraints, plus: no window may fall entirely on padding."""
    if p > k // 2 or d * (k - 1) + 1 > L + 2 * p:
        return False
    O = G.pool_output_size(L, k, s, p, d, ceil_mode)
    return all(any(0 <= o * s - p + i * d < L for i in range(k)) for o in range(O))


@st.composite
def pool_configs(draw, dilation=True):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    ceil_mode = draw(st.booleans())
    assume(_window_ok(h, kh, sh, ph, dh, ceil_mode) and _window_ok(w, kw, sw, pw, dw, ceil_mode))
    kwargs = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil_mode=ceil_mode)
    if dilation:
        kwargs["dilation"] = (dh, dw)
    return (n, c, h, w), kwargs


# ``device`` is a function-scoped fixture, but only a constant string: sharing it between
# examples is safe.
_PROPERTY = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(cfg=pool_configs(), impl=st.sampled_from(IMPLS), seed=st.integers(0, 2**16))
def test_max_pool2d_property(cfg, impl, seed, device):
    shape, kw = cfg
    x = distinct(np.random.default_rng(seed), shape)
    with through(impl, device):
        check_op(lambda t: max_pool2d(t, **kw, return_indices=True),
                 lambda t: F.max_pool2d(t, **kw, return_indices=True), [x], dtypes=F64,
                 gradcheck=False, device=device)


@_PROPERTY
@given(cfg=pool_configs(dilation=False), count_include_pad=st.booleans(),
       impl=st.sampled_from(IMPLS), seed=st.integers(0, 2**16))
def test_avg_pool2d_property(cfg, count_include_pad, impl, seed, device):
    shape, kw = cfg
    x = np.random.default_rng(seed).standard_normal(shape)
    with through(impl, device):
        check_op(lambda t: avg_pool2d(t, **kw, count_include_pad=count_include_pad),
                 lambda t: F.avg_pool2d(t, **kw, count_include_pad=count_include_pad), [x],
                 dtypes=F64, gradcheck=False, device=device)


# ----------------------------------------------------------------------------- fast paths

FAST_WINDOWS = [
    # (H, W), kernel, stride, padding, dilation, ceil_mode
    ((8, 10), (2, 2), (2, 2), (0, 0), (1, 1), False),   # the 2x2 kernels
    ((7, 9), (2, 2), (2, 2), (0, 0), (1, 1), False),    # 2x2, odd sizes
    ((7, 9), (2, 2), (2, 2), (0, 0), (1, 1), True),     # ceil overrun: general kernel
    ((9, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((9, 8), (3, 2), (1, 2), (1, 1), (2, 1), True),
    ((6, 7), (2, 3), (3, 1), (1, 0), (1, 2), True),
    # stride 1 (GoogLeNet's 3x3/1 p1, dilated, uneven, ceil_mode); outputs of up to
    # 64 pixels take the planes-inner kernel, larger ones the canvas (MANY_PLANES)
    ((8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False),
    ((7, 9), (3, 2), (1, 1), (1, 0), (2, 1), False),
    ((5, 6), (2, 2), (1, 1), (0, 0), (1, 1), True),
    ((4, 4), (3, 3), (1, 1), (1, 1), (1, 2), False),
    ((2, 2), (3, 3), (1, 1), (1, 1), (1, 1), False),
    ((12, 9), (3, 3), (1, 1), (1, 1), (1, 1), True),
    ((13, 11), (3, 2), (2, 1), (1, 1), (2, 2), True),
]


def _tap_windows():
    return [G.make_window(*w) for w in FAST_WINDOWS]


@pytest.fixture
def nb():
    """The numba implementation's functions (``pool_numba``), called directly."""
    if not K.numba_available():
        pytest.skip("numba is not installed")
    return KP.POOL.impls["numba"].code


@pytest.mark.parametrize("win", _tap_windows(), ids=[str(w) for w in FAST_WINDOWS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_numba_equals_reference(win, dtype, rng, nb):
    # few distinct values: many ties; plus NaN and -inf
    x = rng.integers(-3, 3, (3, 2, win.H, win.W)).astype(dtype)
    x[0, 0, 0, :3] = np.nan
    x[1, 1] = -np.inf
    y_ref, arg_ref = KR.max_pool2d_forward(x, win)
    y_nb, arg_nb = nb.max_pool2d_forward(x, win)
    assert y_nb.dtype == dtype and arg_nb.dtype == np.uint8
    np.testing.assert_array_equal(y_nb, y_ref)
    np.testing.assert_array_equal(arg_nb, arg_ref)
    gy = rng.integers(-4, 5, y_ref.shape).astype(dtype)  # integer values: sums are exact
    np.testing.assert_array_equal(nb.max_pool2d_backward(gy, arg_ref, win),
                                  KR.max_pool2d_backward(gy, arg_ref, win))


MANY_PLANES = [
    # x shape, window (H, W), kernel, stride, padding, dilation, ceil_mode
    # small outputs, planes as the inner loop (GoogLeNet's 3x3/1 p1 on 1x1, 2x2 and 4x4
    # maps, its 3x3/2 on 8x8):
    ((20, 1000, 1, 1), ((1, 1), (3, 3), (1, 1), (1, 1), (1, 1), False)),
    ((3, 1500, 2, 2), ((2, 2), (3, 3), (1, 1), (1, 1), (1, 1), False)),
    ((3, 401, 4, 4), ((4, 4), (3, 3), (1, 1), (1, 1), (1, 1), False)),
    ((2, 151, 8, 8), ((8, 8), (3, 3), (2, 2), (0, 0), (1, 1), False)),
    # larger outputs, through the canvas: stride 1, stride 2 with ceil_mode, dilated
    ((2, 41, 18, 17), ((18, 17), (3, 3), (1, 1), (1, 1), (1, 1), False)),
    ((3, 29, 21, 20), ((21, 20), (3, 3), (2, 2), (1, 1), (1, 1), True)),
    ((3, 25, 19, 22), ((19, 22), (3, 2), (2, 3), (1, 1), (2, 2), False)),
]


def _planes_per_chunk(win):
    """(kernel, planes per chunk) the general max forward uses for ``win``."""
    from minidl.kernels import pool_numba as KPN  # noqa: PLC0415 - numba only here
    if win.OH * win.OW <= KPN.ACROSS_MAX_OUTPUTS:
        return "across", max(8, KPN._ACROSS_ELEMENTS // (win.H * win.W))
    PL = (((win.OH - 1) * win.SH + (win.KH - 1) * win.DH) // win.SH + 1) * (
        ((win.OW - 1) * win.SW + (win.KW - 1) * win.DW) // win.SW + 1)
    return "canvas", max(1, KPN._GROUP_ELEMENTS // ((win.SH * win.SW + 2) * PL))


@pytest.mark.parametrize("shape, w", MANY_PLANES, ids=[str(c[0]) for c in MANY_PLANES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_numba_many_planes(shape, w, dtype, rng, nb):
    """The general max forward works on chunks of planes at once (the planes as the
    inner loop, ``_max_forward_across``, or a canvas of stacked planes,
    ``_max_forward_group``): every chunk, the partial last one included, equals the
    reference, with ties, NaN and all -inf planes among them."""
    win = G.make_window(*w)
    _, chunk = _planes_per_chunk(win)
    P = shape[0] * shape[1]
    assert P > 2 * chunk and P % chunk, "the case must make several chunks, one partial"
    x = rng.integers(-6, 6, shape).astype(dtype)
    x.reshape(P, -1)[::7, 0] = np.nan
    x.reshape(P, -1)[3::11] = -np.inf
    y_ref, arg_ref = KR.max_pool2d_forward(x, win)
    y_nb, arg_nb = nb.max_pool2d_forward(x, win)
    np.testing.assert_array_equal(y_nb, y_ref)
    np.testing.assert_array_equal(arg_nb, arg_ref)
    gy = rng.integers(-4, 5, y_ref.shape).astype(dtype)
    np.testing.assert_array_equal(nb.max_pool2d_backward(gy, arg_ref, win),
                                  KR.max_pool2d_backward(gy, arg_ref, win))


def test_max_pool_numba_kernel_cases():
    """MANY_PLANES and FAST_WINDOWS reach both general kernels."""
    kinds = {_planes_per_chunk(G.make_window(*w))[0] for _, w in MANY_PLANES}
    kinds |= {_planes_per_chunk(w)[0] for w in _tap_windows() if not w.is_2x2_stride2()}
    assert kinds == {"across", "canvas"}


@pytest.mark.parametrize("win", [w for w in _tap_windows() if w.DH == w.DW == 1],
                         ids=[str(w) for w in FAST_WINDOWS if w[4] == (1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor", ["include", "exclude", 3])
def test_avg_pool_numba_equals_reference(win, dtype, divisor, rng, nb):
    d = KR.avg_pool2d_divisor(win, divisor == "include",
                              divisor if isinstance(divisor, int) else None)
    x = rng.standard_normal((3, 2, win.H, win.W)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    y_ref = KR.avg_pool2d_forward(x, win, d)
    y_nb = nb.avg_pool2d_forward(x, win, d)
    assert y_nb.dtype == dtype
    np.testing.assert_allclose(y_nb, y_ref, **tol)
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    gx_nb = nb.avg_pool2d_backward(gy, win, d)
    assert gx_nb.dtype == dtype
    np.testing.assert_allclose(gx_nb, KR.avg_pool2d_backward(gy, win, d), **tol)


def _all_four(x, win, gy, d):
    """y, arg, gx of max pooling and y, gx of average pooling, through the registry."""
    y, arg = KP.max_pool2d_forward(x, win)
    return (y, arg, KP.max_pool2d_backward(gy, arg, win), KP.avg_pool2d_forward(x, win, d),
            KP.avg_pool2d_backward(gy, win, d))


@pytest.mark.parametrize("win", [w for w in _tap_windows() if w.DH == w.DW == 1],
                         ids=[str(w) for w in FAST_WINDOWS if w[4] == (1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_registry_numba_and_reference_agree(win, dtype, rng):
    """The family's dispatch functions under use_impl('numba') and use_impl('reference'):
    each ran the implementation asked for, and they agree (max exactly, avg to rounding)."""
    x = rng.integers(-3, 3, (3, 2, win.H, win.W)).astype(dtype)   # ties
    x[0, 0, 0, :3] = np.nan
    gy = rng.integers(-4, 5, (3, 2, win.OH, win.OW)).astype(dtype)
    d = KR.avg_pool2d_divisor(win, count_include_pad=False)
    results = {}
    for impl in ("reference", "fast"):
        with through(impl, "cpu"):
            results[impl] = _all_four(x, win, gy, d)
    (y, arg, gx, ya, gxa), (y_nb, arg_nb, gx_nb, ya_nb, gxa_nb) = results.values()
    np.testing.assert_array_equal(y_nb, y)
    np.testing.assert_array_equal(arg_nb, arg)
    np.testing.assert_array_equal(gx_nb, gx)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ya_nb, ya, **tol)
    np.testing.assert_allclose(gxa_nb, gxa, **tol)


@pytest.mark.parametrize("win", [G.make_window((33, 32), (2, 2), (2, 2), (0, 0)),
                                 G.make_window((33, 32), (3, 3), (2, 2), (1, 1), (1, 1), True)],
                         ids=["2x2", "3x3s2p1ceil"])
def test_parallel_kernels_equal_reference(win, rng, nb):
    """With parallel kernels allowed (MINIDL_NUMBA_PARALLEL=1), inputs above
    PARALLEL_MIN_ELEMENTS run on numba's threads (the parallel build, compiled here)."""
    x = rng.integers(-20, 20, (4, 8, win.H, win.W)).astype(np.float32)
    gy = rng.integers(-4, 5, (4, 8, win.OH, win.OW)).astype(np.float32)
    d = KR.avg_pool2d_divisor(win)
    with threads.set_parallel(True):
        assert x.size >= threads.PARALLEL_MIN_ELEMENTS and threads.parallel(x.size)
        y, arg = nb.max_pool2d_forward(x, win)
        gx = nb.max_pool2d_backward(gy, arg, win)
        ya, gxa = nb.avg_pool2d_forward(x, win, d), nb.avg_pool2d_backward(gy, win, d)
    y_ref, arg_ref = KR.max_pool2d_forward(x, win)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    np.testing.assert_array_equal(gx, KR.max_pool2d_backward(gy, arg, win))
    np.testing.assert_allclose(ya, KR.avg_pool2d_forward(x, win, d), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gxa, KR.avg_pool2d_backward(gy, win, d), rtol=1e-6, atol=1e-6)


def test_registry_choice(rng):
    """float32/float64 NumPy arrays take numba; other dtypes, windows of more than 256
    taps and int32 tap numbers take the reference; a forced implementation that cannot
    run a call leaves it to the reference."""
    f64, f32 = np.zeros((1, 1, 6, 6)), np.zeros((1, 1, 6, 6), np.float32)
    if K.numba_available():
        assert K.which("pool", f64, taps=4) == "numba"
        assert K.which("pool", f32, taps=256) == "numba"
        assert K.which("pool", f32, arg_dtype=np.uint8) == "numba"
    for arrays, facts in (((f64.astype(np.int64),), {}), ((f64.astype(np.float16),), {}),
                          ((f64,), dict(taps=257)), ((f64,), dict(arg_dtype=np.int32))):
        assert K.which("pool", *arrays, **facts) == "reference"
    if not minidl.cuda.is_available():      # NumPy arrays never take the CUDA kernels
        with K.use_impl("cuda", family="pool"):
            assert K.which("pool", f64) == "reference"
    with K.use_impl("reference", family="pool"):
        assert K.which("pool", f64, taps=4) == "reference"
    with pytest.raises(ValueError, match="use_impl: the pool family has no 'fast' "
                                         "implementation|use_impl: impl must be one of"):
        K.use_impl("fast", family="pool")
    # int inputs and huge windows run (through the reference)
    win = G.make_window((6, 6), (2, 2), (2, 2), (0, 0))
    y, arg = KP.max_pool2d_forward(rng.integers(0, 9, (1, 1, 6, 6)), win)
    assert y.dtype == np.int64
    big = G.make_window((17, 17), (17, 17), (1, 1), (0, 0))
    with K.decisions() as log:
        y, arg = KP.max_pool2d_forward(rng.standard_normal((1, 1, 17, 17)), big)
        KP.max_pool2d_backward(np.ones(y.shape), arg, big)
    assert arg.dtype == np.int32 and y.shape == (1, 1, 1, 1)
    assert log == [("pool", "reference"), ("pool", "reference")]


def test_ops_take_the_fast_path_by_default(rng):
    """max_pool2d and avg_pool2d on float32 NumPy tensors run all four kernels on numba."""
    if not K.numba_available():
        pytest.skip("numba is not installed")
    x = minidl.tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), requires_grad=True)
    with K.decisions() as log:
        (max_pool2d(x, 2).sum() + avg_pool2d(x, 3, 2, 1).sum()).backward()
    assert sorted(log) == [("pool", "numba")] * 4


@pytest.mark.parametrize("scope", ["pool", None])
def test_use_impl_reference_routes_every_pooling_call(scope, rng, use_impl):
    """use_impl('reference', family='pool') (or for every family) sends each dispatched
    pooling call, forward and backward, max and average, to the reference, and the
    results are the reference functions' own."""
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    use_impl("reference", family=scope)
    xm = minidl.tensor(x, requires_grad=True)
    with K.decisions() as log:
        y = max_pool2d(xm, 3, 2, 1)
        z = avg_pool2d(xm, 2)
        (y.sum() + z.sum()).backward()
    assert [i for f, i in log if f == "pool"] == ["reference"] * 4
    win = G.make_window((9, 8), (3, 3), (2, 2), (1, 1))
    y_ref, arg = KR.max_pool2d_forward(x, win)
    win2 = G.make_window((9, 8), (2, 2), (2, 2), (0, 0))
    d = KR.avg_pool2d_divisor(win2)
    gx_ref = (KR.max_pool2d_backward(np.ones_like(y_ref), arg, win)
              + KR.avg_pool2d_backward(np.ones((2, 3, 4, 4), np.float32), win2, d))
    np.testing.assert_array_equal(y.numpy(), y_ref)
    np.testing.assert_array_equal(z.numpy(), KR.avg_pool2d_forward(x, win2, d))
    np.testing.assert_array_equal(xm.grad.numpy(), gx_ref)


def test_big_window_reference_path(rng, device):
    x = distinct(rng, (1, 2, 17, 18))
    check_op(lambda t: max_pool2d(t, (17, 16), stride=1),
             lambda t: F.max_pool2d(t, (17, 16), stride=1), [x], gradcheck=False, device=device)


# ----------------------------------------------------------------------------- devices


def test_pools_on_device(device, rng):
    """The same ops on each device (on a GPU: the CUDA kernels, and the reference for the
    split tie rule and adaptive pooling)."""
    x = distinct(rng, (2, 3, 7, 8))
    calls = [
        (lambda t: max_pool2d(t, 3, 2, 1, ceil_mode=True),
         lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
        (lambda t: max_pool2d(t, 2, tie="split"), lambda t: F.max_pool2d(t, 2)),
        (lambda t: avg_pool2d(t, 3, 2, 1, count_include_pad=False),
         lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)),
        (lambda t: adaptive_avg_pool2d(t, (3, 5)), lambda t: F.adaptive_avg_pool2d(t, (3, 5))),
        (lambda t: adaptive_max_pool2d(t, (3, 5)), lambda t: F.adaptive_max_pool2d(t, (3, 5))),
    ]
    for md, tf in calls:
        xm = minidl.tensor(x).to(device).requires_grad_()
        xt = torch.tensor(x, requires_grad=True)
        y, ty = md(xm), tf(xt)
        assert y.device == minidl.device(device)
        g = rng.standard_normal(ty.shape)
        y.backward(minidl.tensor(g).to(device))
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(y.cpu().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(xm.grad.cpu().numpy(), xt.grad.numpy(), rtol=1e-12,
                                   atol=1e-12)


# ----------------------------------------------------------------------------- errors


def _x(*shape, dtype=np.float32):
    return minidl.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("fn,name", [(lambda t: max_pool2d(t, 2), "max_pool2d"),
                                     (lambda t: avg_pool2d(t, 2), "avg_pool2d"),
                                     (lambda t: adaptive_avg_pool2d(t, 2), "adaptive_avg_pool2d"),
                                     (lambda t: adaptive_max_pool2d(t, 2), "adaptive_max_pool2d")])
def test_wrong_rank(fn, name):
    """A ShapeError (a ValueError and a RuntimeError: either ``except`` still works)."""
    with pytest.raises(ShapeError, match=rf"{name}: expected input of shape \(N, C, H, W\) or "
                                         r"\(C, H, W\), got shape \(5, 5\)"):
        fn(_x(5, 5))
    with pytest.raises(ShapeError, match=rf"{name}: expected input of shape .* got shape "
                                         r"\(1, 1, 1, 5, 5\)"):
        fn(_x(1, 1, 1, 5, 5))
    with pytest.raises(ShapeError, match=rf"{name}: expected input with non-zero C, H and W"):
        fn(_x(1, 0, 5, 5))
    with pytest.raises(TypeError, match=rf"{name}: expected a minidl Tensor, got ndarray"):
        fn(np.zeros((1, 1, 5, 5)))


def test_zero_batch_is_fine(device):
    x = _x(0, 2, 4, 4).to(device)       # on a GPU: no kernel may launch an empty grid
    assert max_pool2d(x, 2).shape == (0, 2, 2, 2)
    assert avg_pool2d(x, 2).shape == (0, 2, 2, 2)


def test_window_is_cached_per_geometry_and_errors_are_not():
    """The checked window is computed once per (op, input size, parameters): the same call
    again is a cache hit with the same window; a failing call raises every time."""
    from minidl.ops import pool as pool_ops
    x = _x(1, 1, 6, 6)
    max_pool2d(x, 3, 2, 1)
    before = pool_ops._checked_window.cache_info().hits
    y = max_pool2d(x, 3, 2, 1)
    assert pool_ops._checked_window.cache_info().hits == before + 1
    assert y.shape == (1, 1, 3, 3)
    assert max_pool2d(_x(1, 1, 8, 8), 3, 2, 1).shape == (1, 1, 4, 4)   # another input size
    for _ in range(2):
        with pytest.raises(ValueError, match="max_pool2d: padding must be at most half"):
            max_pool2d(x, 2, padding=2)


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_window_errors(pool):
    name = pool.__name__
    x = _x(1, 1, 5, 5)
    with pytest.raises(ShapeError, match=rf"{name}: kernel_size=\(6, 6\) is larger than the "
                                         r"padded input \(5, 5\) \(input \(H, W\) = \(5, 5\)"):
        pool(x, 6)
    with pytest.raises(ShapeError, match=rf"{name}: kernel_size=\(3, 8\) is larger than the "
                                         r"padded input \(7, 7\)"):
        pool(x, (3, 8), padding=1)
    with pytest.raises(ValueError, match=rf"{name}: padding must be at most half the kernel "
                                         r"size, got padding=\(2, 2\) for kernel_size=\(2, 2\) "
                                         r"\(at most \(1, 1\)\)"):
        pool(x, 2, padding=2)
    with pytest.raises(ValueError, match=rf"{name}: padding must be at most half"):
        pool(x, (3, 2), padding=(1, 2))
    for stride in (0, -1, (1, 0)):
        with pytest.raises(ValueError, match=rf"{name}: stride must be >= 1, got "
                                             rf"{re.escape(repr(stride))}"):
            pool(x, 2, stride=stride)
    with pytest.raises(ValueError, match=rf"{name}: kernel_size must be >= 1, got \(0, 2\)"):
        pool(x, (0, 2), stride=1)
    with pytest.raises(ValueError, match=rf"{name}: padding must be >= 0, got -1"):
        pool(x, 2, padding=-1)
    with pytest.raises(TypeError, match=rf"{name}: kernel_size must be an int or a pair of ints"):
        pool(x, (2, 2, 2))
    with pytest.raises(TypeError, match=rf"{name}: stride must be an int or a pair of ints"):
        pool(x, 2, stride=1.5)
    with pytest.raises(TypeError, match=rf"{name}: kernel_size must be an int or a pair of ints"):
        pool(x, 2.0)
    # PyTorch's accepted forms: an int, a 1- or 2-sequence; stride None or () is the kernel
    for kernel, stride in ((2, None), ((2,), ()), ([2, 2], [2]), ((2, 2), 2)):
        assert pool(x, kernel, stride).shape == (1, 1, 2, 2)


def test_max_pool_only_errors():
    x = _x(1, 1, 5, 5)
    with pytest.raises(ValueError, match=r"max_pool2d: dilation must be >= 1, got 0"):
        max_pool2d(x, 2, dilation=0)
    with pytest.raises(ShapeError, match=r"max_pool2d: kernel_size=\(3, 3\) \(spanning \(5, 5\) "
                                         r"with dilation=\(2, 2\)\) is larger than the padded "
                                         r"input \(3, 3\)"):
        max_pool2d(_x(1, 1, 3, 3), 3, dilation=2)
    # PyTorch accepts this and corrupts memory in its backward: every tap of the only
    # window (rows -1 and 2 of a 2-row input) is padding.
    with pytest.raises(ValueError, match=r"max_pool2d: the window of output row 0 covers only "
                                         r"padding"):
        max_pool2d(_x(1, 1, 2, 2), 2, stride=1, padding=1, dilation=3)
    with pytest.raises(TypeError, match=r"max_pool2d: expected a floating point or integer "
                                        r"input, got dtype bool"):
        max_pool2d(_x(1, 1, 4, 4, dtype=np.bool_), 2)


def test_avg_pool_only_errors():
    with pytest.raises(TypeError, match=r"avg_pool2d: expected a floating point input, got "
                                        r"dtype int64"):
        avg_pool2d(_x(1, 1, 4, 4, dtype=np.int64), 2)
    with pytest.raises(TypeError, match=r"adaptive_avg_pool2d: expected a floating point "
                                        r"input, got dtype int32"):
        adaptive_avg_pool2d(_x(1, 1, 4, 4, dtype=np.int32), 2)
    with pytest.raises(ValueError, match=r"avg_pool2d: divisor_override must be non-zero"):
        avg_pool2d(_x(1, 1, 4, 4), 2, divisor_override=0)
    with pytest.raises(TypeError, match=r"avg_pool2d: divisor_override must be an int"):
        avg_pool2d(_x(1, 1, 4, 4), 2, divisor_override=2.5)


@pytest.mark.parametrize("pool", [adaptive_avg_pool2d, adaptive_max_pool2d])
def test_adaptive_errors(pool):
    name = pool.__name__
    x = _x(1, 1, 5, 5)
    with pytest.raises(ValueError, match=rf"{name}: output_size must be at least 1 in each "
                                         r"dim, got \(0, 3\)"):
        pool(x, (0, 3))
    with pytest.raises(ValueError, match=rf"{name}: output_size must be at least 1"):
        pool(x, -1)
    with pytest.raises(TypeError, match=rf"{name}: output_size must be an int or a pair"):
        pool(x, (2, 2, 2))


@pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("threads_", [1, 2, 3])
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, stride=2)])
def test_large_max_pool_parallel_equals_reference(kw, threads_, num_threads,
                                                            use_impl):
    """Large inputs run the numba max pool's parallel build (ranges of planes on numba's
    threads):
    forward, argmax and backward equal the reference's, whatever the thread count (the
    planes are independent: no sums are reordered)."""
    from minidl.kernels import threads
    x = distinct(np.random.default_rng(0), (3, 7, 320, 320)).astype(np.float32)
    assert threads.parallel(x.size)
    num_threads(threads_)
    out = {}
    for impl in ("reference", "numba"):
        use_impl(impl, family="pool")
        t = minidl.tensor(x, requires_grad=True)
        y = max_pool2d(t, **kw)
        y.backward(minidl.tensor(np.arange(y.numel(), dtype=np.float32).reshape(y.shape)))
        out[impl] = (y.numpy(), t.grad.numpy())
    assert np.array_equal(out["numba"][0], out["reference"][0])
    assert np.array_equal(out["numba"][1], out["reference"][1])
