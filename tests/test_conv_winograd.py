"""The Winograd conv2d (minidl/kernels/conv_winograd.py), F(2x2, 3x3) and F(4x4, 3x3)
tiles, against the im2col reference.

Forced with ``use_impl('winograd', family='conv2d')`` and, for each tile size,
``conv_winograd.tile_size(m)`` (the ``tile`` fixture): outputs and every gradient (x, w,
b) equal to the reference's over paddings (none, ResNet's 1, large, asymmetric), odd and
tiny inputs (partial tiles: OH, OW of every remainder modulo 4, H or W < 4, one tile for
everything), batch 1, unbatched inputs, C != OC, no bias and subsets of the gradients;
with one image per block on 1, 2 and 3 threads, with blocks held to a minimum number of
tiles, and as one whole-batch block (small maps: transforms split by images, GEMMs by
component, Z made once for both gradients); by images (each thread's blocks of images
through the whole forward, or backward, on that thread) on 1-3 threads, y the same bit
for bit on any number of them, and when it is chosen; the transposed convolution (its forward is
the input gradient) and a double backward; the transforms' identities and adjoints; the
automatic tile size; which calls the registry leaves to other implementations.

Tolerances, as the largest error relative to the largest reference value: float64 1e-12
for both (observed ~3e-16 for F(2x2): additions and halvings; ~3e-14 for F(4x4) at
ResNet-18's sizes: its constants up to 8 and 1/6). float32: F(2x2) 2e-6 (observed ~3e-7
on these small inputs; at ResNet-18's sizes, against a float64 reference, 4e-7 to 8e-7
for y, dx and dw, about the float32 im2col reference's own 2e-7 to 7e-7); F(4x4) 4e-5,
4x the largest error measured at ResNet-18's sizes ((4, 64, 32, 32), (4, 128, 16, 16)
and (4, 256, 8, 8) with as many output channels, padding 1: y 7e-6 to 1.0e-5, dx 3e-6
to 6e-6, dw 4e-6 to 9e-6).
CPU only (NumPy arrays).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import minidl
import minidl.kernels as K
from minidl import geometry
from minidl.kernels import blas, conv_blocked, conv_winograd, threads
from helpers import compare_conv_results, conv2d_impls_agree, run_conv_impl
from minidl.ops.conv import conv2d, conv_transpose2d

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")

# (tile size m, dtype): tolerance (module docstring)
REL_TOL = {(2, np.float64): 1e-12, (2, np.float32): 2e-6,
           (4, np.float64): 1e-12, (4, np.float32): 4e-5}
TILES = [2, 4]


@pytest.fixture(params=TILES, ids=[f"F{m}x{m}" for m in TILES])
def tile(request):
    """The tile size m (2 or 4) forced for the test (``conv_winograd.tile_size``)."""
    with conv_winograd.tile_size(request.param):
        yield request.param


# name: (x shape, weight shape, padding ((PH0, PH1), (PW0, PW1)))
CASES = {
    "p1 (ResNet)": ((3, 6, 9, 8), (7, 6, 3, 3), ((1, 1), (1, 1))),
    "p0": ((2, 5, 8, 10), (4, 5, 3, 3), ((0, 0), (0, 0))),
    "p0 odd": ((2, 3, 7, 9), (5, 3, 3, 3), ((0, 0), (0, 0))),
    "asymmetric (1,0),(0,1)": ((2, 4, 7, 6), (3, 4, 3, 3), ((1, 0), (0, 1))),
    "asymmetric (0,2),(3,0)": ((2, 3, 5, 6), (4, 3, 3, 3), ((0, 2), (3, 0))),
    "large padding": ((1, 2, 4, 3), (3, 2, 3, 3), ((4, 3), (2, 5))),
    "H, W < 4": ((2, 3, 2, 3), (4, 3, 3, 3), ((1, 1), (1, 1))),
    "3x3 p0: one output": ((3, 4, 3, 3), (2, 4, 3, 3), ((0, 0), (0, 0))),
    "1 row": ((2, 3, 1, 7), (3, 3, 3, 3), ((1, 1), (1, 1))),
    "batch 1, C != OC": ((1, 9, 6, 5), (2, 9, 3, 3), ((1, 1), (1, 1))),
    # OH, OW of each remainder modulo 4 (F(4x4)'s partial tiles) and single tiles
    "10x9": ((2, 4, 10, 9), (3, 4, 3, 3), ((1, 1), (1, 1))),
    "13x14": ((1, 2, 13, 14), (2, 2, 3, 3), ((1, 1), (1, 1))),
    "p0 12x11 -> 10x9": ((2, 3, 12, 11), (2, 3, 3, 3), ((0, 0), (0, 0))),
    "one 4x4 tile": ((2, 3, 4, 4), (2, 3, 3, 3), ((1, 1), (1, 1))),
    "p0 6x6 -> 4x4: one tile": ((1, 2, 6, 6), (3, 2, 3, 3), ((0, 0), (0, 0))),
    "3x2 in one tile": ((2, 2, 3, 2), (2, 2, 3, 3), ((1, 1), (1, 1))),
}


def _run(impl, x, w, b, gy, padding, need=(True, True, True)):
    """``helpers.run_conv_impl`` for a 3x3 stride-1 convolution with ``padding``."""
    geo = geometry.ConvGeometry.of(x.shape, w.shape, (1, 1), padding, (1, 1))
    return run_conv_impl(impl, geo, x, w, b, gy, need)


def _arrays(rng, x_shape, w_shape, padding, dtype):
    geo = geometry.ConvGeometry.of(x_shape, w_shape, (1, 1), padding, (1, 1))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b, rng.standard_normal(geo.out_shape).astype(dtype)


def _compare(got, want, m, dtype, label):
    compare_conv_results(got, want, REL_TOL[m, dtype], f"F({m}x{m}) {label}")


# mode: (whole_batch_bytes limit, by images). Limit 0 runs every call in blocks, HUGE as
# one whole-batch block, both with ``by_images(False)``; "by images" runs forward and
# backward by images.
HUGE = 2**62
MODES = {"blocks": (0, False), "whole batch": (HUGE, False), "by images": (0, True)}


@contextlib.contextmanager
def _mode(name):
    limit, images = MODES[name]
    with conv_winograd.whole_batch_bytes(limit), conv_winograd.by_images(images):
        yield


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_winograd_equals_reference(case, dtype, mode, rng, tile):
    x_shape, w_shape, padding = CASES[case]
    x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, dtype)
    want = _run("reference", x, w, b, gy, padding)
    with _mode(mode):
        got = _run("winograd", x, w, b, gy, padding)
    _compare(got, want, tile, dtype, f"{case}, {mode}")


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_blocks_on_threads_equal_reference(threads_, rng, num_threads, tile):
    """One image per block (many blocks), dealt out to 1, 2 or 3 threads."""
    x_shape, w_shape, padding = (7, 5, 6, 7), (6, 5, 3, 3), ((1, 1), (1, 1))
    for dtype in (np.float64, np.float32):
        x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, dtype)
        want = _run("reference", x, w, b, gy, padding)
        num_threads(threads_)
        with conv_blocked.block_col_bytes(1), conv_winograd.min_tiles(1), _mode("blocks"):
            got = _run("winograd", x, w, b, gy, padding)
        _compare(got, want, tile, dtype, f"{threads_} threads")


@pytest.mark.parametrize("threads_", [1, 2])
def test_blocks_of_at_least_min_tiles(threads_, rng, num_threads, monkeypatch, tile):
    """Small images: blocks of at least ``min_tiles`` tiles (here 3 images' worth: 4x4
    outputs are 4 F(2x2) tiles, 1 F(4x4) tile); the results still equal the reference's."""
    x_shape, w_shape, padding = (7, 5, 4, 4), (6, 5, 3, 3), ((1, 1), (1, 1))
    seen = []
    real = conv_blocked._for_blocks

    def spy(geo, dtype, body, min_images=1):
        seen.append(conv_blocked.image_blocks(geo, dtype, min_images))
        return real(geo, dtype, body, min_images)

    monkeypatch.setattr(conv_blocked, "_for_blocks", spy)
    for dtype in (np.float64, np.float32):
        x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, dtype)
        want = _run("reference", x, w, b, gy, padding)
        num_threads(threads_)
        seen.clear()
        per_image = 4 if tile == 2 else 1
        with conv_blocked.block_col_bytes(1), conv_winograd.min_tiles(3 * per_image), \
                _mode("blocks"):
            got = _run("winograd", x, w, b, gy, padding)
        _compare(got, want, tile, dtype, f"{threads_} threads")
        # forward, weight and input gradients: 7 images in blocks of 3 or more
        assert seen and all(blocks == [(0, 4), (4, 7)] for blocks in seen), seen


def test_image_blocks_min_images():
    """``image_blocks``' min_images: blocks of at least that many images; 1 keeps the
    blocks cut by ``col`` bytes alone."""
    geo = geometry.ConvGeometry.of((32, 512, 4, 4), (512, 512, 3, 3), (1, 1),
                                   ((1, 1), (1, 1)))
    by_bytes = conv_blocked.image_blocks(geo, np.float32)
    assert len(by_bytes) == 3 and by_bytes == conv_blocked.image_blocks(geo, np.float32, 1)
    assert conv_blocked.image_blocks(geo, np.float32, 64) == [(0, 32)]
    assert conv_blocked.image_blocks(geo, np.float32, 10) == [(0, 11), (11, 22), (22, 32)]
    assert conv_blocked.image_blocks(geo, np.float32, 12) == [(0, 16), (16, 32)]


def test_threads_are_deterministic(rng, num_threads, tile):
    """Fixed blocks, each product on a fixed thread, the weight gradient summed block after
    block: runs agree bit for bit."""
    x_shape, w_shape, padding = (6, 4, 5, 5), (5, 4, 3, 3), ((1, 1), (1, 1))
    x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, np.float32)
    num_threads(2)
    for mode in MODES:
        with conv_blocked.block_col_bytes(1), conv_winograd.min_tiles(1), _mode(mode):
            runs = [_run("winograd", x, w, b, gy, padding) for _ in range(3)]
        for other in runs[1:]:
            for a, c in zip(runs[0], other):
                assert np.array_equal(a, c)


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_whole_batch_on_threads_equals_reference(threads_, rng, num_threads, monkeypatch,
                                                tile):
    """As one block, every kernel and product on its parallel build (numba's 1-3 threads):
    backward makes Z once (one grad_transform call over the 7 images), and the results
    equal the reference's."""
    x_shape, w_shape, padding = (7, 5, 6, 7), (6, 5, 3, 3), ((1, 0), (2, 1))
    calls = []
    scheme = conv_winograd._SCHEMES[tile]
    kernels = scheme.kernels()
    real = kernels.grad_transform

    def counting(gy, n0, n1, t0, *rest, **kw):
        calls.append((n0, n1, t0))
        return real(gy, n0, n1, t0, *rest, **kw)

    monkeypatch.setattr(kernels, "grad_transform", counting)
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(blas, "GEMM_PARALLEL_MIN_FLOPS", 1)
    for dtype in (np.float64, np.float32):
        x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, dtype)
        want = _run("reference", x, w, b, gy, padding)
        num_threads(threads_)
        calls.clear()
        with _mode("whole batch"):
            got = _run("winograd", x, w, b, gy, padding)
        _compare(got, want, tile, dtype, f"{threads_} threads")
        assert calls == [(0, 7, 0)]


@pytest.mark.parametrize("need", [(True, True, True), (False, True, False),
                                  (True, False, False)], ids=["x and w", "w only", "x only"])
def test_blocks_make_z_once_when_both_gradients_run(need, rng, num_threads, monkeypatch, tile):
    """In blocks, with the input gradient following, the weight gradient's pass makes each
    block's part of gx from the same Z: one grad_transform per block instead of two; the
    results are the reference's for every subset of the gradients."""
    x_shape, w_shape, padding = (5, 6, 6, 7), (7, 6, 3, 3), ((1, 1), (1, 1))
    x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, np.float64)
    want = _run("reference", x, w, b, gy, padding, need)
    calls = []
    kernels = conv_winograd._SCHEMES[tile].kernels()
    real = kernels.grad_transform
    monkeypatch.setattr(kernels, "grad_transform",
                        lambda gy_, n0, n1, *rest, **kw: calls.append(n0) or
                        real(gy_, n0, n1, *rest, **kw))
    num_threads(2)
    with conv_blocked.block_col_bytes(1), conv_winograd.min_tiles(1), _mode("blocks"):
        got = _run("winograd", x, w, b, gy, padding, need)
    _compare(got, want, tile, np.float64, str(need))
    assert sorted(calls) == list(range(5))         # 5 blocks of one image, Z once each


def test_whole_batch_chosen_for_small_maps(tile):
    """ResNet-18's 16x16, 8x8 and 4x4 stages at batch 32 run as one block, its 32x32 one
    in blocks, and so does the 16x16 one at batch 128, but not the 8x8 one (V and M at
    most ``WHOLE_BATCH_BYTES``, or 8 times U), with either tile size (F(4x4)'s V is 9/16
    of F(2x2)'s)."""
    def geo(c, hw, n=32):
        return geometry.ConvGeometry.of((n, c, hw, hw), (c, c, 3, 3), (1, 1),
                                        ((1, 1), (1, 1)))
    f32 = np.float32
    assert conv_winograd.whole_batch(geo(512, 4), f32)
    assert conv_winograd.whole_batch(geo(256, 8), f32)
    assert conv_winograd.whole_batch(geo(128, 16), f32)
    assert not conv_winograd.whole_batch(geo(64, 32), f32)
    assert not conv_winograd.whole_batch(geo(128, 16, n=128), f32)
    assert conv_winograd.whole_batch(geo(256, 8, n=128), f32)   # V 32 MiB, U 4 MiB
    with conv_winograd.whole_batch_bytes(0):
        assert not conv_winograd.whole_batch(geo(512, 4), f32)


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_by_images_on_threads_equals_reference(threads_, rng, num_threads, monkeypatch,
                                               tile):
    """Forward and backward by images on their parallel builds, 7 images (uneven parts) in
    blocks of one image (``IMAGE_BLOCK_TILES`` 1) or of three, dealt out to 1-3 threads:
    y and every gradient equal the reference's (also each gradient alone), and y is the
    same bit for bit as on one thread."""
    x_shape, w_shape, padding = (7, 5, 6, 7), (6, 5, 3, 3), ((1, 0), (2, 1))
    geo = geometry.ConvGeometry.of(x_shape, w_shape, (1, 1), padding, (1, 1))
    per_image = np.prod(conv_winograd._tiles(geo, conv_winograd._scheme(geo)))
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    for dtype in (np.float64, np.float32):
        x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, dtype)
        want = _run("reference", x, w, b, gy, padding)
        for tiles in (1, 3 * per_image):
            monkeypatch.setattr(conv_winograd, "IMAGE_BLOCK_TILES", tiles)
            with conv_winograd.by_images(True):
                num_threads(1)
                one, _ = conv_winograd.forward(x, w, b, geo)
                num_threads(threads_)
                got = _run("winograd", x, w, b, gy, padding)
                alone = [_run("winograd", x, w, b, gy, padding, need)
                         for need in ((True, False, False), (False, True, False))]
            label = f"{threads_} threads, {tiles} tiles"
            _compare(got, want, tile, dtype, label)
            _compare(alone[0][:2], want[:2], tile, dtype, label + ", dx alone")
            _compare(alone[1][::2], want[::2], tile, dtype, label + ", dw alone")
            assert np.array_equal(got[0], one)


def test_image_bounds():
    """Blocks cut from image 0, dealt out in order, the same blocks for any part count."""
    bounds = conv_blocked.image_bounds
    assert bounds(7, 4, 2).tolist() == [[[0, 4]], [[4, 7]]]
    assert bounds(7, 1, 3).tolist() == [[[0, 1], [1, 2], [0, 0]], [[2, 3], [3, 4], [0, 0]],
                                        [[4, 5], [5, 6], [6, 7]]]
    assert bounds(5, 2, 2).tolist() == [[[0, 2], [0, 0]], [[2, 4], [4, 5]]]
    assert bounds(3, 4, 1).tolist() == [[[0, 3]]]
    for parts in (1, 2, 3, 5):
        b = bounds(32, 3, parts).reshape(-1, 2)
        assert sorted(map(tuple, b[b[:, 1] > b[:, 0]].tolist())) == \
            [(n0, min(32, n0 + 3)) for n0 in range(0, 32, 3)]


def test_by_images_chosen(num_threads):
    """On two threads, ResNet-18's 3x3 layers run by images at batch 32 and 128 but its
    512-channel 4x4 stage (U outweighs V: 2 OC > T); so does a batch whose blocks do not
    deal out evenly (3 single-image blocks on 2 threads) unless it has 4 blocks per thread;
    ``by_images`` forces either."""
    def geo(c, hw, n=32):
        return geometry.ConvGeometry.of((n, c, hw, hw), (c, c, 3, 3), (1, 1),
                                        ((1, 1), (1, 1)))
    f32 = np.float32
    num_threads(2)
    for n in (32, 128):
        assert all(conv_winograd.runs_by_images(geo(c, hw, n), f32)
                   for c, hw in ((64, 32), (128, 16), (256, 8)))
        assert not conv_winograd.runs_by_images(geo(512, 4, n), f32)
    assert not conv_winograd.runs_by_images(geo(64, 32, 3), f32)
    assert conv_winograd.runs_by_images(geo(64, 32, 9), f32)
    num_threads(1)
    assert conv_winograd.runs_by_images(geo(64, 32, 3), f32)
    with conv_winograd.by_images(True):
        assert conv_winograd.runs_by_images(geo(512, 4), f32)
    with conv_winograd.by_images(False):
        assert not conv_winograd.runs_by_images(geo(64, 32), f32)
    with pytest.raises(ValueError, match="by_images"):
        conv_winograd.by_images("yes")


@pytest.mark.parametrize("need", [(True, False, False), (False, True, True),
                                  (False, True, False), (False, False, True),
                                  (False, False, False)],
                         ids=["x only", "weight and bias", "weight only", "bias only",
                              "inference"])
def test_subsets_of_gradients(need, rng, tile):
    """Only the gradients asked for are computed, and they equal the reference's."""
    x_shape, w_shape, padding = CASES["asymmetric (1,0),(0,1)"]
    x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, np.float64)
    want = _run("reference", x, w, b, gy, padding, need)
    _compare(_run("winograd", x, w, b, gy, padding, need), want, tile, np.float64, str(need))


def test_no_bias_and_unbatched_through_conv2d(rng, tile):
    """conv2d itself: an unbatched (C, H, W) input without bias, padding='same'."""
    x = rng.standard_normal((5, 7, 6))
    w = rng.standard_normal((3, 5, 3, 3))
    gy = rng.standard_normal((3, 7, 6))
    conv2d_impls_agree("winograd", x, w, gy, REL_TOL[tile, np.float64], padding="same")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_transpose2d_forward_is_the_input_gradient(dtype, rng, tile):
    """conv_transpose2d (3x3, stride 1) runs on the family's grad_input (and its backward
    on forward and grad_weight)."""
    g = rng.standard_normal((2, 6, 5, 7)).astype(dtype)         # (N, C_in, H, W)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)         # (C_in, C_out, 3, 3)
    b = rng.standard_normal(4).astype(dtype)
    gz = rng.standard_normal((2, 4, 5, 7)).astype(dtype)
    results = {}
    for impl in ("reference", "winograd"):
        G, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (g, w, b))
        with K.use_impl(impl, family="conv2d"), K.decisions() as log:
            z = conv_transpose2d(G, Wt, B, padding=1)
            z.backward(minidl.tensor(gz))
        assert {i for f, i in log if f == "conv2d"} == {impl}
        results[impl] = [z.numpy(), G.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()]
    _compare(results["winograd"], results["reference"], tile, dtype, "conv_transpose2d")


def test_double_backward(rng, use_impl, tile):
    """create_graph: the recorded backward (Function ops calling the family again) is
    differentiable with Winograd forced; gradgradcheck in float64."""
    x = minidl.tensor(rng.standard_normal((2, 2, 4, 5)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    b = minidl.tensor(rng.standard_normal(3), requires_grad=True)
    use_impl("winograd", family="conv2d")
    with K.decisions() as log:
        assert minidl.gradgradcheck(lambda x, w, b: conv2d(x, w, b, padding=(1, 0)), [x, w, b])
    assert {i for f, i in log if f == "conv2d"} == {"winograd"}


@pytest.mark.parametrize("m", TILES)
def test_weight_transform_adjoint(m, rng):
    """<U(w), dU> == <w, U^T(dU)>: weight_transform_adjoint is the transpose of the map
    weight_transform (what the weight gradient relies on)."""
    w = rng.standard_normal((3, 4, 3, 3))
    dU = rng.standard_normal(((m + 2) ** 2, 3, 4))
    lhs = np.sum(conv_winograd.weight_transform(w, m) * dU)
    rhs = np.sum(w * conv_winograd.weight_transform_adjoint(dU))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


# (x shape, w shape, conv2d keyword arguments): calls Winograd F(2x2, 3x3) cannot run
REFUSED = {
    "stride 2": ((2, 4, 8, 8), (4, 4, 3, 3), dict(stride=2, padding=1)),
    "1x1": ((2, 4, 8, 8), (4, 4, 1, 1), {}),
    "5x5": ((2, 4, 8, 8), (4, 4, 5, 5), dict(padding=2)),
    "3x2": ((2, 4, 8, 8), (4, 4, 3, 2), {}),
    "groups": ((2, 4, 8, 8), (4, 2, 3, 3), dict(groups=2, padding=1)),
    "dilation": ((2, 4, 8, 8), (4, 4, 3, 3), dict(dilation=2, padding=2)),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_calls_go_elsewhere(case, rng, use_impl):
    """Forced Winograd leaves what it cannot run to the reference (``decisions``), with
    the same results."""
    x_shape, w_shape, kwargs = REFUSED[case]
    x = minidl.tensor(rng.standard_normal(x_shape).astype(np.float32))
    w = minidl.tensor(rng.standard_normal(w_shape).astype(np.float32))
    want = conv2d(x, w, **kwargs).numpy()
    use_impl("winograd", family="conv2d")
    with K.decisions() as log:
        got = conv2d(x, w, **kwargs).numpy()
    assert [i for f, i in log if f == "conv2d"] == ["reference"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_supports_and_pays():
    geo = geometry.ConvGeometry.of((8, 64, 16, 16), (64, 64, 3, 3), (1, 1), ((1, 1), (1, 1)))
    x32, w32 = np.zeros(1, np.float32), np.zeros(1, np.float32)
    assert conv_winograd.winograd_can_run(x32, w32, geo)
    assert not conv_winograd.winograd_can_run(x32, w32.astype(np.float64), geo)
    assert not conv_winograd.winograd_can_run(x32.astype(np.float16), w32.astype(np.float16),
                                              geo)
    assert conv_winograd.winograd_pays(geo)
    small = geometry.ConvGeometry.of((8, 3, 16, 16), (64, 3, 3, 3), (1, 1), ((1, 1), (1, 1)))
    assert not conv_winograd.winograd_pays(small)      # 3 input channels: thin GEMMs
    last = geometry.ConvGeometry.of((32, 512, 4, 4), (512, 512, 3, 3), (1, 1), ((1, 1), (1, 1)))
    assert conv_winograd.winograd_pays(last)           # ResNet-18's 4x4 stage: large blocks
    tiny = geometry.ConvGeometry.of((32, 512, 2, 2), (512, 512, 3, 3), (1, 1), ((1, 1), (1, 1)))
    assert not conv_winograd.winograd_pays(tiny)       # one tile per image, mostly padding
    one = geometry.ConvGeometry.of((1, 128, 16, 16), (128, 128, 3, 3), (1, 1), ((1, 1), (1, 1)))
    assert not conv_winograd.winograd_pays(one)        # 16 tiles: U costs more than it saves
    four = one._replace(N=4)
    assert conv_winograd.winograd_pays(four)           # 64 tiles
    assert 4 * 16 == conv_winograd.WINOGRAD_MIN_BATCH_TILES


@pytest.mark.parametrize("need", [(True, True, True), (True, False, True), (False, True, True)])
def test_forward_weight_transform_is_reused_by_the_input_gradient(need, rng, monkeypatch,
                                                                 tile):
    """Forward keeps U = G w G^T and the input gradient reads it (one weight_transform per
    forward + backward when the weight gradient runs); the results are the reference's."""
    calls = []
    real = conv_winograd.weight_transform

    def counting(w, m=2):
        calls.append(m)
        return real(w, m)

    x = rng.standard_normal((3, 16, 9, 8))
    w = rng.standard_normal((16, 16, 3, 3))
    b = rng.standard_normal(16)
    gy = rng.standard_normal((3, 16, 9, 8))
    pad = ((1, 1), (1, 1))
    want = _run("reference", x, w, b, gy, pad, need)
    monkeypatch.setattr(conv_winograd, "weight_transform", counting)
    got = _run("winograd", x, w, b, gy, pad, need)
    assert calls == ([tile] if need[1] else [tile, tile])   # forward; again only without dW
    for g, r in zip(got, want):
        if r is not None:
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_weight_transforms_split_over_threads(threads_, rng, num_threads, tile):
    """A large weight is transformed (and its adjoint taken) on the kernels' parallel
    builds: the same numbers as on one thread, and the adjoint identity <G w G^T, dU> =
    <w, adjoint(dU)> holds."""
    w = rng.standard_normal((131, 127, 3, 3))            # 16,637 kernels: not a multiple of 64
    dU = rng.standard_normal(((tile + 2) ** 2, 131, 127))
    assert threads.parallel(131 * 127 * 9)
    num_threads(1)
    U1, gw1 = conv_winograd.weight_transform(w, tile), conv_winograd.weight_transform_adjoint(dU)
    num_threads(threads_)
    U, gw = conv_winograd.weight_transform(w, tile), conv_winograd.weight_transform_adjoint(dU)
    assert np.array_equal(U, U1) and np.array_equal(gw, gw1)
    np.testing.assert_allclose(np.vdot(U, dU), np.vdot(w, gw), rtol=1e-12)


# The transform matrices of each tile size (conv_winograd's docstring): (B^T, G, A^T)
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], float)),
}


@pytest.mark.parametrize("m", TILES)
def test_transforms_match_their_matrices(m, rng):
    """float64, per tile size: A^T [(G w G^T) (.) (B^T d B)] A is the 3x3 valid correlation
    of an (m+2)x(m+2) d; and each numba kernel computes its matrix formula tile by tile
    (input_transform: B^T d B of the padded input's overlapping tiles, output_transform:
    A^T m A + b cropped, weight_transform: G w G^T) or is the exact adjoint of one
    (grad_transform, input_scatter, weight_adjoint: <f(a), b> = <a, f^T(b)>)."""
    BT, G, AT = MATRICES[m]
    a = m + 2
    d, w = rng.standard_normal((a, a)), rng.standard_normal((3, 3))
    corr = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(AT @ ((G @ w @ G.T) * (BT @ d @ BT.T)) @ AT.T, corr,
                               rtol=0, atol=1e-13 * np.abs(corr).max())

    sc = conv_winograd._SCHEMES[m]
    kern = sc.kernels()
    N, C, H, W, (P0, P1), (Q0, Q1) = 2, 3, 9, 7, (2, 1), (1, 3)
    OH, OW = H + P0 + P1 - 2, W + Q0 + Q1 - 2
    TH, TW = -(-OH // m), -(-OW // m)
    T = N * TH * TW
    x = rng.standard_normal((N, C, H, W))
    xpad = np.zeros((N, C, m * TH + 2, m * TW + 2))
    xpad[:, :, P0:P0 + H, Q0:Q0 + W] = x
    V = np.empty((a * a, C, T))
    kern.input_transform(x, 0, N, 0, P0, Q0, TH, TW, V, size=V.size)
    M = rng.standard_normal((a * a, C, T))
    bias = rng.standard_normal(C)
    y = np.empty((N, C, OH, OW))
    kern.output_transform(M, 0, N, 0, TH, TW, bias, True, y, size=M.size)
    yfull = np.zeros((N, C, m * TH, m * TW))
    for n in range(N):
        for th in range(TH):
            for tw in range(TW):
                t = (n * TH + th) * TW + tw
                tile_d = xpad[n, :, m * th:m * th + a, m * tw:m * tw + a]
                want = np.einsum("ai,cij,bj->abc", BT, tile_d, BT).reshape(a * a, C)
                np.testing.assert_allclose(V[:, :, t], want, rtol=0, atol=1e-13)
                yfull[n, :, m * th:m * th + m, m * tw:m * tw + m] = np.einsum(
                    "ai,ijc,bj->cab", AT, M[:, :, t].reshape(a, a, C), AT)
    np.testing.assert_allclose(y, yfull[:, :, :OH, :OW] + bias[:, None, None], rtol=0,
                               atol=1e-12)

    def close(u, v):
        assert abs(u - v) <= 1e-12 * max(abs(u), abs(v)), (u, v)

    gy = rng.standard_normal((N, C, OH, OW))
    Z = np.empty((a * a, C, T))
    kern.grad_transform(gy, 0, N, 0, TH, TW, Z, size=Z.size)
    kern.output_transform(M, 0, N, 0, TH, TW, bias, False, y, size=M.size)
    close(np.vdot(y, gy), np.vdot(M, Z))
    gx = np.empty_like(x)
    kern.input_scatter(M, 0, N, 0, P0, Q0, TH, TW, gx, size=M.size)
    close(np.vdot(V, M), np.vdot(x, gx))
    wk = rng.standard_normal((4, 5, 3, 3))
    np.testing.assert_allclose(conv_winograd.weight_transform(wk, m),
                               np.einsum("ai,ocij,bj->aboc", G, wk, G).reshape(a * a, 4, 5),
                               rtol=0, atol=1e-15)
    dU = rng.standard_normal((a * a, 4, 5))
    np.testing.assert_allclose(conv_winograd.weight_transform_adjoint(dU),
                               np.einsum("ai,aboc,bj->ocij", G, dU.reshape(a, a, 4, 5), G),
                               rtol=0, atol=1e-14)


def test_tile_size_choice():
    """Automatic: F(4x4) from WINOGRAD4_MIN_SIZE outputs in both dims, F(2x2) below;
    ``tile_size`` forces one (undone after ``with``) and refuses other sizes."""
    def geo(h, w):
        return geometry.ConvGeometry.of((2, 16, h, w), (16, 16, 3, 3), (1, 1), ((1, 1), (1, 1)))
    big = conv_winograd.WINOGRAD4_MIN_SIZE
    assert conv_winograd._tile_size(geo(big, big)) == 4
    assert conv_winograd._tile_size(geo(32, 32)) == 4
    assert conv_winograd._tile_size(geo(big - 1, 32)) == 2
    assert conv_winograd._tile_size(geo(32, big - 1)) == 2
    assert conv_winograd._tile_size(geo(4, 4)) == 2
    with conv_winograd.tile_size(2):
        assert conv_winograd._tile_size(geo(32, 32)) == 2
        with conv_winograd.tile_size(None):
            assert conv_winograd._tile_size(geo(32, 32)) == 4
        assert conv_winograd._tile_size(geo(32, 32)) == 2
    with conv_winograd.tile_size(4):
        assert conv_winograd._tile_size(geo(4, 4)) == 4
        assert conv_winograd._tiles(geo(5, 9), conv_winograd._scheme(geo(5, 9))) == (2, 3)
    assert conv_winograd._tile_size(geo(4, 4)) == 2
    for bad in (3, 6, -2):
        with pytest.raises(ValueError, match=r"tile_size: expected 2 or 4.*got"):
            conv_winograd.tile_size(bad)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("order", [(4, 2), (2, 4)])
def test_tile_size_changed_between_forward_and_backward(order, mode, rng, monkeypatch):
    """Forward keeps U of its own tile size; a backward run with the other one does not
    reuse it (its components differ) but transforms the weight again for its own, and
    its gradients are still the reference's."""
    from minidl.ops.conv import Conv2dFunction
    x_shape, w_shape, padding = CASES["10x9"]
    x, w, b, gy = _arrays(rng, x_shape, w_shape, padding, np.float64)
    want = _run("reference", x, w, b, gy, padding)
    geo = geometry.ConvGeometry.of(x_shape, w_shape, (1, 1), padding, (1, 1))
    calls = []
    real = conv_winograd.weight_transform
    monkeypatch.setattr(conv_winograd, "weight_transform",
                        lambda w_, m=2: calls.append(m) or real(w_, m))
    X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
    with K.use_impl("winograd", family="conv2d"), _mode(mode):
        with conv_winograd.tile_size(order[0]):
            y = Conv2dFunction.apply(X, Wt, B, geo=geo)
        with conv_winograd.tile_size(order[1]):
            y.backward(minidl.tensor(gy))
    assert calls == list(order)
    got = [y.numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()]
    _compare(got, want, 4, np.float64, f"{order}, {mode}")
