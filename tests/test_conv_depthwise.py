"""The depthwise conv2d (minidl/kernels/conv_depthwise.py) against the im2col reference.

Forced with ``use_impl('depthwise', family='conv2d')``: outputs and every gradient (x, w,
b) equal to the reference's over MobileNet's 3x3 stride-1 and stride-2 layers, 5x5,
asymmetric padding, dilation, odd sizes, batch 1, unbatched inputs through conv2d, no
bias and subsets of the gradients; the same numbers on 1, 2 and 3 threads; a double
backward; which calls the registry leaves to the reference. Each test runs with the
per-plane kernels, with the 3x3 forward over whole rows and with the channels-inner ones
(small maps); which one a call takes by default is tested too.

Tolerances, as the largest error relative to the largest reference value: float64 1e-12;
float32 1e-5 (the sums run in another order than the reference's product).
CPU only (NumPy arrays).
"""
from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.kernels as K
from minidl import geometry
from minidl.kernels import conv_depthwise
from helpers import compare_conv_results, conv2d_impls_agree, run_conv_impl
from minidl.ops.conv import conv2d

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")

REL_TOL = {np.float64: 1e-12, np.float32: 1e-5}

# name: (x shape, KH, KW, stride, padding ((PH0, PH1), (PW0, PW1)), dilation)
CASES = {
    "3x3 p1 s1 (MobileNet)": ((3, 6, 9, 8), 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "3x3 p1 s2 (MobileNet)": ((2, 5, 8, 10), 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "3x3 p1 s2 odd": ((2, 4, 7, 9), 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "3x3 s2 p(2,0),(0,2)": ((2, 3, 9, 8), 3, 3, (2, 2), ((2, 0), (0, 2)), (1, 1)),
    "3x3 s(1,2) p(0,1),(2,1) odd": ((2, 3, 6, 11), 3, 3, (1, 2), ((0, 1), (2, 1)), (1, 1)),
    "3x3 s3": ((2, 3, 10, 11), 3, 3, (3, 3), ((1, 1), (1, 1)), (1, 1)),
    "5x5 p2": ((2, 3, 7, 6), 5, 5, (1, 1), ((2, 2), (2, 2)), (1, 1)),
    "asymmetric (1,0),(0,2)": ((2, 4, 7, 6), 3, 3, (1, 1), ((1, 0), (0, 2)), (1, 1)),
    "asymmetric s(2,1) (0,3),(2,1)": ((2, 3, 6, 5), 3, 2, (2, 1), ((0, 3), (2, 1)), (1, 1)),
    "dilation 2": ((2, 4, 9, 9), 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2)),
    "dilation (2,3) s2": ((2, 3, 11, 10), 3, 3, (2, 2), ((1, 2), (3, 0)), (2, 3)),
    "large padding": ((1, 2, 3, 4), 3, 3, (1, 1), ((4, 3), (2, 5)), (1, 1)),
    "1x1": ((2, 5, 4, 3), 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "batch 1, 2x2 image": ((1, 7, 2, 2), 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
}


@pytest.fixture(autouse=True, params=["planes inner", "3x3 rows", "channels inner"])
def kernels(request):
    """Every test three times: with the per-plane kernels, with the 3x3 forward over whole
    rows (3x3 cases; the others take the per-plane kernels) and with the channels-inner
    kernels (``across_max_outputs``, ``rows_3x3_above``: by default small maps take the
    channels-inner kernels and larger 3x3 forwards the rows)."""
    across = 10**9 if request.param == "channels inner" else 0
    rows = 0 if request.param == "3x3 rows" else None
    with conv_depthwise.across_max_outputs(across), conv_depthwise.rows_3x3_above(rows):
        yield request.param


def _geo(case):
    x_shape, KH, KW, stride, padding, dilation = CASES[case]
    C = x_shape[1]
    return geometry.ConvGeometry.of(x_shape, (C, 1, KH, KW), stride, padding, dilation, C)


def _arrays(rng, geo, dtype):
    x = rng.standard_normal((geo.N, geo.C, geo.H, geo.W)).astype(dtype)
    w = rng.standard_normal((geo.C, 1, geo.KH, geo.KW)).astype(dtype)
    b = rng.standard_normal(geo.C).astype(dtype)
    return x, w, b, rng.standard_normal(geo.out_shape).astype(dtype)


_run = run_conv_impl


def _compare(got, want, dtype, label):
    compare_conv_results(got, want, REL_TOL[dtype], label)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_depthwise_equals_reference(case, dtype, rng):
    geo = _geo(case)
    x, w, b, gy = _arrays(rng, geo, dtype)
    want = _run("reference", geo, x, w, b, gy)
    _compare(_run("depthwise", geo, x, w, b, gy), want, dtype, case)


@pytest.mark.parametrize("case", ["3x3 p1 s1 (MobileNet)", "dilation (2,3) s2"])
def test_no_bias(case, rng):
    geo = _geo(case)
    x, w, _, gy = _arrays(rng, geo, np.float64)
    want = _run("reference", geo, x, w, None, gy)
    _compare(_run("depthwise", geo, x, w, None, gy), want, np.float64, case)


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_threads_give_the_same_numbers(threads_, rng, num_threads, monkeypatch):
    """Every call on the parallel builds (PARALLEL_MIN_ELEMENTS 1): 7 images x 5 channels
    = 35 planes, 5 channels for the weight gradient (ranges of unequal length); bit for
    bit the one-thread result, and the reference's."""
    monkeypatch.setattr(conv_depthwise.threads, "PARALLEL_MIN_ELEMENTS", 1)
    geo = geometry.ConvGeometry.of((7, 5, 6, 7), (5, 1, 3, 3), (2, 1), ((1, 1), (1, 1)),
                                   (1, 1), 5)
    for dtype in (np.float64, np.float32):
        x, w, b, gy = _arrays(rng, geo, dtype)
        num_threads(1)
        one = _run("depthwise", geo, x, w, b, gy)
        num_threads(threads_)
        got = _run("depthwise", geo, x, w, b, gy)
        for a, c in zip(got, one):
            assert np.array_equal(a, c)
        _compare(got, _run("reference", geo, x, w, b, gy), dtype, f"{threads_} threads")


def test_small_map_kernels_cut_channels_per_thread(monkeypatch, num_threads):
    """The channels-inner kernels get one channel range per thread when the policy runs
    them parallel, one range otherwise."""
    num_threads(2)
    assert conv_depthwise.threads.pieces(conv_depthwise.threads.PARALLEL_MIN_ELEMENTS) == 2
    assert conv_depthwise.threads.pieces(conv_depthwise.threads.PARALLEL_MIN_ELEMENTS - 1) == 1
    with conv_depthwise.threads.set_parallel(False):
        assert conv_depthwise.threads.pieces(10**9) == 1


@pytest.mark.parametrize("need", [(True, False, False), (False, True, True),
                                  (False, True, False), (False, False, True),
                                  (False, False, False)],
                         ids=["x only", "weight and bias", "weight only", "bias only",
                              "inference"])
def test_subsets_of_gradients(need, rng):
    """Only the gradients asked for are computed, and they equal the reference's."""
    geo = _geo("asymmetric s(2,1) (0,3),(2,1)")
    x, w, b, gy = _arrays(rng, geo, np.float64)
    want = _run("reference", geo, x, w, b, gy, need)
    _compare(_run("depthwise", geo, x, w, b, gy, need), want, np.float64, str(need))


def test_no_bias_and_unbatched_through_conv2d(rng):
    """conv2d itself: an unbatched (C, H, W) input without bias, stride 2, padding 1."""
    x = rng.standard_normal((5, 7, 6))
    w = rng.standard_normal((5, 1, 3, 3))
    gy = rng.standard_normal((5, 4, 3))
    conv2d_impls_agree("depthwise", x, w, gy, REL_TOL[np.float64], stride=2, padding=1,
                       groups=5)


def test_double_backward(rng, use_impl):
    """create_graph: the recorded backward (Function ops calling the family again) is
    differentiable with depthwise forced; gradgradcheck in float64."""
    x = minidl.tensor(rng.standard_normal((2, 3, 5, 4)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((3, 1, 3, 3)), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(3), requires_grad=True)
    use_impl("depthwise", family="conv2d")
    with K.decisions() as log:
        assert minidl.gradgradcheck(
            lambda x, w, b: conv2d(x, w, b, stride=(2, 1), padding=(1, 0), groups=3), [x, w, b])
    assert {i for f, i in log if f == "conv2d"} == {"depthwise"}


# (x shape, w shape, dtype, conv2d keyword arguments): calls depthwise cannot run
REFUSED = {
    "groups 2 of 4 channels": ((2, 4, 8, 8), (4, 2, 3, 3), np.float32, dict(groups=2, padding=1)),
    "channel multiplier 2": ((2, 4, 8, 8), (8, 1, 3, 3), np.float32, dict(groups=4, padding=1)),
    "ungrouped": ((2, 4, 8, 8), (4, 4, 3, 3), np.float32, dict(padding=1)),
    "float16": ((2, 4, 8, 8), (4, 1, 3, 3), np.float16, dict(groups=4, padding=1)),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_calls_go_to_the_reference(case, rng, use_impl):
    """Forced depthwise leaves what it cannot run to the reference (``decisions``), with
    the same results."""
    x_shape, w_shape, dtype, kwargs = REFUSED[case]
    x = minidl.tensor(rng.standard_normal(x_shape).astype(dtype))
    w = minidl.tensor(rng.standard_normal(w_shape).astype(dtype))
    use_impl("reference", family="conv2d")
    want = conv2d(x, w, **kwargs).numpy()
    use_impl("depthwise", family="conv2d")
    with K.decisions() as log:
        got = conv2d(x, w, **kwargs).numpy()
    assert [i for f, i in log if f == "conv2d"] == ["reference"]
    np.testing.assert_array_equal(got, want)


def test_can_run():
    geo = geometry.ConvGeometry.of((8, 32, 16, 16), (32, 1, 3, 3), (2, 2), ((1, 1), (1, 1)),
                                   (1, 1), 32)
    x32, w32 = np.zeros(1, np.float32), np.zeros(1, np.float32)
    assert conv_depthwise.depthwise_can_run(x32, w32, geo)
    assert conv_depthwise.depthwise_can_run(x32.astype(np.float64), w32.astype(np.float64), geo)
    assert not conv_depthwise.depthwise_can_run(x32, w32.astype(np.float64), geo)
    assert not conv_depthwise.depthwise_can_run(x32.astype(np.float16),
                                                w32.astype(np.float16), geo)
    multiplier2 = geometry.ConvGeometry.of((8, 32, 16, 16), (64, 1, 3, 3), (1, 1),
                                           ((1, 1), (1, 1)), (1, 1), 32)
    assert not conv_depthwise.depthwise_can_run(x32, w32, multiplier2)
    grouped = geometry.ConvGeometry.of((8, 32, 16, 16), (32, 2, 3, 3), (1, 1),
                                       ((1, 1), (1, 1)), (1, 1), 16)
    assert not conv_depthwise.depthwise_can_run(x32, w32, grouped)
