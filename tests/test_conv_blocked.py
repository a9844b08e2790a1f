"""The blocked conv2d (minidl/kernels/conv_blocked.py) against the im2col reference.

Forced with ``use_impl('blocked', family='conv2d')``, with blocks of one or a few images
(``block_col_bytes``), ``col`` kept from forward or unfolded again (``keep_col_bytes``),
block by block and as one whole-batch block (``whole_batch_bytes``), on 1, 2 and 3
threads: outputs and every gradient equal to the reference (float64 tight, float32
loose) over strides, paddings, dilations, groups and 1x1 kernels; the passes by images
(each thread unfolds its own images, in forward and again in backward) on 1-3 threads,
forward and input gradient the same bit for bit on any number of them, and when they
are chosen; what forward keeps;
the blocks' partition; determinism across runs; the registry's automatic choice. CPU
only (NumPy arrays).
"""
from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.kernels as K
from minidl import geometry
from minidl.kernels import conv as conv_kernels
from minidl.kernels import conv_blocked
from minidl.kernels.im2col import col2im, col2im_reference, im2col
from minidl.ops.conv import conv2d

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")

HUGE = 2**62       # whole_batch_bytes: every ungrouped call as one block

TOL = {np.float64: dict(rtol=1e-11, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-4)}

# (x shape, weight shape, conv2d keyword arguments)
CASES = {
    "3x3 p1": ((5, 6, 9, 8), (7, 6, 3, 3), dict(padding=1)),
    "3x3 s2 p1": ((4, 5, 11, 10), (6, 5, 3, 3), dict(stride=2, padding=1)),
    "1x1 s2": ((5, 8, 8, 8), (4, 8, 1, 1), dict(stride=2)),
    "1x1 pointwise": ((3, 8, 9, 8), (5, 8, 1, 1), {}),              # 72 pixels: per image
    "1x1 small map": ((3, 8, 7, 7), (5, 8, 1, 1), {}),              # 49 pixels: whole batch
    "1x1 on 1x1 maps": ((6, 8, 1, 1), (5, 8, 1, 1), {}),            # a linear layer
    "dilated, uneven": ((3, 3, 12, 9), (5, 3, 3, 2), dict(dilation=(2, 1), padding=(2, 0))),
    "groups": ((4, 6, 7, 7), (9, 2, 3, 3), dict(groups=3, padding=1)),
    "batch 1": ((1, 4, 6, 6), (3, 4, 3, 3), dict(padding=1)),
}


def _run(impl, x, w, b, gy, kwargs):
    X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
    with K.use_impl(impl, family="conv2d"), K.decisions() as log:
        y = conv2d(X, Wt, B, **kwargs)
        y.backward(minidl.tensor(gy))
    assert {i for f, i in log if f == "conv2d"} == {impl}
    return [y.numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()]


def _arrays(rng, x_shape, w_shape, dtype, kwargs):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y_shape = conv2d(minidl.tensor(x), minidl.tensor(w), **kwargs).shape
    return x, w, b, rng.standard_normal(y_shape).astype(dtype)


@pytest.mark.parametrize("threads_", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_blocked_equals_reference(case, dtype, threads_, rng, num_threads):
    x_shape, w_shape, kwargs = CASES[case]
    arrays = _arrays(rng, x_shape, w_shape, dtype, kwargs)
    want = _run("reference", *arrays, kwargs)
    num_threads(threads_)
    per_image = x_shape[1] * w_shape[2] * w_shape[3] * 8       # bytes of col per row of pixels
    # one image per block; a few; the whole batch as one block; col unfolded again or kept
    # (stage-split: by images forced off), by images (forced on), or as chosen
    for block_bytes, whole in ((1, 0), (per_image * 40, 0), (1, HUGE)):
        for keep, images in ((0, False), (HUGE, False), (HUGE, True), (0, None)):
            with conv_blocked.block_col_bytes(block_bytes), conv_kernels.keep_col_bytes(keep), \
                    conv_blocked.whole_batch_bytes(whole), conv_blocked.by_images(images):
                got = _run("blocked", *arrays, kwargs)
            for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
                assert g.dtype == r.dtype and g.shape == r.shape, name
                np.testing.assert_allclose(
                    g, r, err_msg=f"{name}, blocks of {block_bytes} B, whole up to {whole} B, "
                                  f"col kept up to {keep} B, by images {images}", **TOL[dtype])


@pytest.mark.parametrize("threads_", [1, 2, 3])
@pytest.mark.parametrize("case", ["3x3 s2 p1", "dilated, uneven", "1x1 s2"])
def test_by_images_on_threads(case, threads_, rng, num_threads, monkeypatch):
    """The passes by images on their parallel builds, 7 images in blocks of one (uneven
    parts) or of three (products over a block's images side by side), on 1-3 threads,
    with and without bias, with both gradients or one: y and every gradient equal the
    reference's; y and dx are the same bit for bit as on one thread (each image's numbers
    never depend on the parts), dW up to the order of the parts' sums."""
    from minidl.kernels import threads  # noqa: PLC0415
    x_shape, w_shape, kwargs = CASES[case]
    x_shape = (7,) + x_shape[1:]
    monkeypatch.setattr(threads, "PARALLEL_MIN_ELEMENTS", 1)
    for dtype in (np.float64, np.float32):
        arrays = _arrays(rng, x_shape, w_shape, dtype, kwargs)
        want = _run("reference", *arrays, kwargs)
        x, w, b, gy = arrays
        for outputs in (1, 3 * want[0].shape[2] * want[0].shape[3]):
            monkeypatch.setattr(conv_blocked, "IMAGE_BLOCK_OUTPUTS", outputs)
            with conv_blocked.by_images(True):
                num_threads(1)
                one = _run("blocked", *arrays, kwargs)
                num_threads(threads_)
                got = _run("blocked", *arrays, kwargs)
                with K.use_impl("blocked", family="conv2d"), minidl.no_grad():
                    plain = conv2d(minidl.tensor(x), minidl.tensor(w), None, **kwargs)
                for grad in ("x", "w"):                       # one gradient only
                    X = minidl.tensor(x, requires_grad=grad == "x")
                    Wt = minidl.tensor(w, requires_grad=grad == "w")
                    with K.use_impl("blocked", family="conv2d"):
                        conv2d(X, Wt, None, **kwargs).backward(minidl.tensor(gy))
                    only = (X if grad == "x" else Wt).grad.numpy()
                    np.testing.assert_allclose(only, want[1 if grad == "x" else 2],
                                               err_msg=f"d{grad} alone", **TOL[dtype])
            for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
                np.testing.assert_allclose(g, r, err_msg=name, **TOL[dtype])
            np.testing.assert_allclose(plain.numpy() + b.reshape(-1, 1, 1), want[0],
                                       **TOL[dtype])
            assert np.array_equal(got[0], one[0]) and np.array_equal(got[1], one[1])


def test_by_images_chosen(num_threads, monkeypatch):
    """On two threads ResNet-18's stride-2 layers run by images at batch 32 but the one
    whose weight outweighs half the batch's col (256 -> 512 at 8x8: 2 OC > N OH OW), at
    batch 128 not that one either (4x4 outputs, under IMAGE_MIN_OUTPUTS) while its 1x1
    twin does, and so does a 3x3 layer with 8x8 outputs; a batch whose blocks do not
    deal out evenly does not;
    grouped ones and 1x1 stride-1 ones never. Forward by images keeps x and the weight
    (backward unfolds x again) in training, nothing else in evaluation."""
    def geo(c, hw, oc, k, n=32, groups=1, s=2):
        return geometry.ConvGeometry.of((n, c, hw, hw), (oc, c // groups, k, k), (s, s),
                                        ((k // 2, k // 2), (k // 2, k // 2)), (1, 1), groups)
    f32 = np.float32
    num_threads(2)
    assert conv_blocked.runs_by_images(geo(64, 32, 128, 3), f32)
    assert conv_blocked.runs_by_images(geo(128, 16, 256, 3), f32)
    assert conv_blocked.runs_by_images(geo(64, 32, 128, 1), f32)
    assert not conv_blocked.runs_by_images(geo(256, 8, 512, 3), f32)
    assert not conv_blocked.runs_by_images(geo(256, 8, 512, 3, n=128), f32)
    assert conv_blocked.runs_by_images(geo(256, 8, 512, 1, n=128), f32)
    assert not conv_blocked.runs_by_images(geo(64, 8, 128, 3, n=128), f32)
    assert conv_blocked.runs_by_images(geo(512, 16, 64, 3, n=128), f32)
    assert not conv_blocked.runs_by_images(geo(64, 32, 128, 3, n=3), f32)   # 3 blocks, 2 threads
    assert conv_blocked.runs_by_images(geo(64, 32, 128, 3, n=9), f32)
    assert not conv_blocked.runs_by_images(geo(64, 32, 128, 3, groups=2), f32)
    assert not conv_blocked.runs_by_images(geo(64, 32, 128, 1, s=1), f32)
    with conv_blocked.by_images(True):
        assert conv_blocked.runs_by_images(geo(256, 8, 512, 3), f32)
        assert not conv_blocked.runs_by_images(geo(64, 32, 128, 3, groups=2), f32)
    with pytest.raises(ValueError, match="by_images"):
        conv_blocked.by_images("yes")
    calls = []
    monkeypatch.setattr(conv_blocked, "_forward_by_images", lambda *a: calls.append(a))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 5, 11, 10)), rng.standard_normal((6, 5, 3, 3))
    g = geometry.ConvGeometry.of(x.shape, w.shape, (2, 2), ((1, 1), (1, 1)), (1, 1))
    with conv_kernels.keep_col_bytes(HUGE), conv_blocked.by_images(True):
        _, saved = conv_blocked.forward(x, w, None, g, keep_for_backward=True)
        assert len(calls) == 1 and saved[0] == "x" and saved[1] is x
        assert np.array_equal(saved[2], w.reshape(6, -1))
        _, saved = conv_blocked.forward(x, w, None, g, keep_for_backward=False)
        assert len(calls) == 2 and saved == ("x", None)


@pytest.mark.parametrize("whole", [0, HUGE])
def test_what_forward_keeps(whole, rng):
    """Stage-split (``by_images(False)``), within ``keep_col_bytes`` forward keeps the
    unfolded input (as one block ``('col', col)``, in blocks each block's own array with
    its images), else x; by images it keeps x and the weight whatever the limit; a 1x1
    stride-1 layer reads x itself and keeps x; the weight gradient from each is the
    reference's."""
    x = rng.standard_normal((4, 5, 11, 10))
    w = rng.standard_normal((6, 5, 3, 3))
    gy = rng.standard_normal((4, 6, 6, 5))
    geo = geometry.ConvGeometry.of(x.shape, w.shape, (2, 2), ((1, 1), (1, 1)), (1, 1))
    col_bytes = conv_blocked.col_bytes(geo, x.dtype)
    g_ref = conv_kernels.grad_output(gy, geo)
    want = conv_kernels.grad_weight(g_ref, ("x", x), geo)
    with conv_blocked.block_col_bytes(1), conv_blocked.whole_batch_bytes(whole):
        for limit, kind, images in ((col_bytes, "cols" if not whole else "col", False),
                                    (col_bytes - 1, "x", False), (col_bytes, "x", True)):
            with conv_kernels.keep_col_bytes(limit), conv_blocked.by_images(images):
                _, saved = conv_blocked.forward(x, w, None, geo, keep_for_backward=True)
                assert saved[0] == kind and len(saved) == (3 if images else 2)
                if kind == "cols":     # one image per block, in order
                    assert [(n0, n1) for n0, n1, _ in saved[1]] == [(n, n + 1) for n in range(4)]
                if kind == "x":
                    assert saved[1] is x
                g = conv_blocked.grad_output(gy, geo)
                got = conv_blocked.grad_weight(g, saved, geo)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, **TOL[np.float64])
        _, saved = conv_blocked.forward(x, w, None, geo, keep_for_backward=False)
        assert saved == ("x", None)
    x1 = rng.standard_normal((3, 8, 9, 8))
    geo1 = geometry.ConvGeometry.of(x1.shape, (5, 8, 1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1))
    with conv_kernels.keep_col_bytes(HUGE):
        _, saved = conv_blocked.forward(x1, rng.standard_normal((5, 8, 1, 1)), None, geo1)
    assert saved[0] == "x" and saved[1] is x1


def test_without_weight_gradient_and_unbatched(rng):
    """Inference (no weight gradient: nothing kept) and an unbatched (C, H, W) input."""
    x = rng.standard_normal((6, 9, 9))
    w = rng.standard_normal((4, 6, 3, 3))
    with K.use_impl("reference", family="conv2d"):
        want = conv2d(minidl.tensor(x), minidl.tensor(w), padding=1).numpy()
    with K.use_impl("blocked", family="conv2d"), conv_blocked.block_col_bytes(1):
        with minidl.no_grad():
            got = conv2d(minidl.tensor(x), minidl.tensor(w), padding=1).numpy()
    np.testing.assert_allclose(got, want, **TOL[np.float64])


@pytest.mark.parametrize("n", [1, 5, 7, 32])
@pytest.mark.parametrize("block_bytes", [1, 10_000, 10**9])
def test_image_blocks_partition_the_batch(n, block_bytes):
    geo = geometry.ConvGeometry.of((n, 4, 10, 10), (8, 4, 3, 3), (1, 1), ((1, 1), (1, 1)),
                                   (1, 1))
    with conv_blocked.block_col_bytes(block_bytes):
        blocks = conv_blocked.image_blocks(geo, np.float32)
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [b - a for a, b in blocks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    per_image = 4 * 9 * 100 * 4
    assert max(sizes) == 1 or max(sizes) * per_image <= 2 * block_bytes
    if block_bytes >= n * per_image:
        assert blocks == [(0, n)]


def test_threads_are_deterministic(rng, num_threads):
    """Fixed blocks, each product's columns on a fixed thread, the weight gradient summed
    image after image (by images: each part's images on its own thread, the parts' sums
    added in order): runs agree bit for bit."""
    x_shape, w_shape, kwargs = CASES["3x3 p1"]
    arrays = _arrays(rng, x_shape, w_shape, np.float32, kwargs)
    num_threads(2)
    for whole, images in ((0, False), (HUGE, False), (0, True)):
        with conv_blocked.block_col_bytes(1), conv_kernels.keep_col_bytes(0), \
                conv_blocked.whole_batch_bytes(whole), conv_blocked.by_images(images):
            runs = [_run("blocked", *arrays, kwargs) for _ in range(3)]
        for other in runs[1:]:
            for a, b in zip(runs[0], other):
                assert np.array_equal(a, b)


def test_whole_batch_transposes_gy_once_and_is_chosen_for_small_col(rng, num_threads,
                                                                   monkeypatch):
    """As one block, backward transposes gy once for both gradients (in ``grad_output``),
    and the automatic limit takes ResNet-18's stride-2 and 1x1 layers at 16x16 and 8x8
    (batch 32) whole, its 32x32 stride-2 layer in blocks."""
    calls = []
    real = conv_blocked._gY_whole
    monkeypatch.setattr(conv_blocked, "_gY_whole",
                        lambda gy, geo: calls.append(geo) or real(gy, geo))
    x_shape, w_shape, kwargs = CASES["3x3 s2 p1"]
    arrays = _arrays(rng, x_shape, w_shape, np.float64, kwargs)
    want = _run("reference", *arrays, kwargs)
    num_threads(2)
    with conv_blocked.whole_batch_bytes(HUGE), conv_blocked.by_images(False):
        got = _run("blocked", *arrays, kwargs)
    assert len(calls) == 1
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, **TOL[np.float64])

    def whole(c, hw, oc, k, n=32):
        geo = geometry.ConvGeometry.of((n, c, hw, hw), (oc, c, k, k), (2, 2),
                                       ((k // 2,) * 2,) * 2, (1, 1))
        return conv_blocked.whole_batch(geo, np.float32)
    assert whole(128, 16, 256, 3) and whole(256, 8, 512, 3)
    assert whole(64, 32, 128, 1) and whole(128, 16, 256, 1)
    assert not whole(64, 32, 128, 3)                  # col 18.9 MB
    assert not whole(128, 16, 256, 3, n=128)          # col 37.7 MB, weight 1.2 MB
    assert whole(256, 8, 512, 3, n=128)               # col 18.9 MB, weight 4.7 MB


def test_pointwise_layers_unfold_nothing(rng, monkeypatch):
    """1x1 stride-1 unpadded layers on maps of at least POINTWISE_MIN_OUTPUTS pixels run
    as per-image products on x, gy and gx in place: im2col, col2im and the transposed gY
    never run, and the results equal the reference's."""
    x_shape, w_shape, kwargs = CASES["1x1 pointwise"]
    geo = geometry.ConvGeometry.of(x_shape, w_shape)
    assert conv_blocked.pointwise(geo)
    assert not conv_blocked.pointwise(geometry.ConvGeometry.of(*CASES["1x1 small map"][:2]))
    assert not conv_blocked.pointwise(geometry.ConvGeometry.of(x_shape, w_shape,
                                                               padding=((1, 1), (1, 1))))
    arrays = _arrays(rng, x_shape, w_shape, np.float64, kwargs)
    want = _run("reference", *arrays, kwargs)

    def unused(*args, **kw):
        raise AssertionError("a pointwise layer unfolded or transposed something")

    for name in ("im2col", "col2im", "_gY_whole", "_planes_swapped"):
        monkeypatch.setattr(conv_blocked, name, unused)
    for got, ref in zip(_run("blocked", *arrays, kwargs), want):
        np.testing.assert_allclose(got, ref, **TOL[np.float64])


def test_single_pixel_layers_are_linear_layers(rng, monkeypatch):
    """A 1x1 stride-1 layer on 1x1 maps runs as one product per pass over the batch, x and
    gy read as (N, C) and (N, OC) matrices: no per-image products, nothing unfolded or
    transposed; the numbers are the reference's."""
    x_shape, w_shape, kwargs = CASES["1x1 on 1x1 maps"]
    assert conv_blocked.single_pixel(geometry.ConvGeometry.of(x_shape, w_shape))
    assert not conv_blocked.single_pixel(geometry.ConvGeometry.of(*CASES["1x1 small map"][:2]))
    assert not conv_blocked.single_pixel(geometry.ConvGeometry.of((6, 8, 2, 2), w_shape,
                                                                  stride=(2, 2)))
    arrays = _arrays(rng, x_shape, w_shape, np.float64, kwargs)
    want = _run("reference", *arrays, kwargs)

    def unused(*args, **kw):
        raise AssertionError("a single-pixel layer ran per image, unfolded or transposed")

    for name in ("_images", "im2col", "col2im", "_gY_whole", "_planes_swapped"):
        monkeypatch.setattr(conv_blocked, name, unused)
    for got, ref in zip(_run("blocked", *arrays, kwargs), want):
        np.testing.assert_allclose(got, ref, **TOL[np.float64])


def test_small_map_1x1_forward_per_image_gradients_as_one_block(rng, monkeypatch):
    """On maps under POINTWISE_MIN_OUTPUTS pixels a 1x1 stride-1 layer's forward is still
    per-image products (no unfolded copy, no transpose: POINTWISE_FORWARD_MIN_OUTPUTS),
    its gradients the one-block path (gY transposed, x unfolded again); the same numbers
    as the reference."""
    x_shape, w_shape, kwargs = CASES["1x1 small map"]
    geo = geometry.ConvGeometry.of(x_shape, w_shape)
    assert conv_blocked.pointwise(geo, conv_blocked.POINTWISE_FORWARD_MIN_OUTPUTS)
    assert not conv_blocked.pointwise(geo)
    x, w, b, gy = _arrays(rng, x_shape, w_shape, np.float64, kwargs)
    want = _run("reference", x, w, b, gy, kwargs)
    calls = []
    for name in ("im2col", "_planes_swapped", "_gY_whole"):
        real = getattr(conv_blocked, name)
        monkeypatch.setattr(conv_blocked, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    y, saved = conv_blocked.forward(x, w, b, geo)
    assert calls == [] and saved[0] == "x"
    np.testing.assert_allclose(y, want[0], **TOL[np.float64])
    for got, ref in zip(_run("blocked", x, w, b, gy, kwargs), want):
        np.testing.assert_allclose(got, ref, **TOL[np.float64])
    assert "_gY_whole" in calls and "im2col" in calls       # the gradients, one block


def test_blocked_pays_for_ungrouped_batches(monkeypatch):
    """The blocked code pays for ungrouped convolutions of more than one image whose col
    reaches BLOCKED_MIN_COL_BYTES; not for one image, nor for grouped ones."""
    def pays(x_shape, w_shape, groups=1):
        geo = geometry.ConvGeometry.of(x_shape, w_shape, (1, 1), ((1, 1), (1, 1)), (1, 1),
                                       groups)
        return conv_blocked.blocked_pays(np.zeros(1, np.float32), geo)

    assert pays((8, 64, 32, 32), (64, 64, 3, 3))          # col 18 MB
    assert pays((2, 16, 8, 8), (64, 16, 3, 3))            # col 74 KB
    assert not pays((1, 512, 64, 64), (64, 512, 3, 3))    # one image: nothing to cut
    assert not pays((2, 16, 8, 8), (64, 4, 3, 3), groups=4)
    monkeypatch.setattr(conv_blocked, "BLOCKED_MIN_COL_BYTES", 2**20)
    assert not pays((2, 16, 8, 8), (64, 16, 3, 3))        # col 74 KB
    assert pays((2, 64, 32, 32), (64, 64, 3, 3))          # col 4.5 MB


@pytest.mark.parametrize("impl", ["reference", "numba"])
def test_col2im_into_out(impl, rng, use_impl):
    """col2im(..., out=) overwrites every entry of a block of a larger array."""
    geo = geometry.ConvGeometry.of((2, 3, 6, 5), (4, 3, 3, 2), (2, 1), ((1, 0), (1, 1)),
                                   (1, 1))
    col = rng.standard_normal(geo.col_shape)
    use_impl(impl, family="im2col")
    big = np.full((5, 3, 6, 5), np.nan)
    out = col2im(col, geo, out=big[1:3])
    assert out.base is big or np.shares_memory(out, big)
    np.testing.assert_allclose(big[1:3], col2im_reference(col, geo), rtol=1e-13, atol=1e-13)
    assert np.isnan(big[0]).all() and np.isnan(big[3:]).all()
    with pytest.raises(ValueError, match=r"col2im: out must be a C-contiguous float64 array "
                                         r"of shape \(2, 3, 6, 5\), got float32"):
        col2im(col, geo, out=np.empty((2, 3, 6, 5), np.float32))
    assert np.array_equal(im2col(np.zeros((2, 3, 6, 5)), geo), np.zeros(geo.col_shape))
