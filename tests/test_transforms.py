"""minidl.data.transforms: torchvision semantics, one image and whole batches, seeded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
from minidl.data import transforms as T


def uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- ToTensor


def test_totensor_hw_and_hwc():
    img = uint8_images((5, 7))
    t = T.ToTensor()(img)
    assert isinstance(t, minidl.Tensor) and t.dtype == np.float32 and t.shape == (1, 5, 7)
    np.testing.assert_array_equal(t.numpy()[0], torch.tensor(img).float().div(255).numpy())
    hwc = uint8_images((5, 7, 3))
    t = T.ToTensor()(hwc)
    assert t.shape == (3, 5, 7)
    np.testing.assert_array_equal(t.numpy(), hwc.transpose(2, 0, 1).astype(np.float32) / 255)
    assert t.numpy().flags.c_contiguous
    assert T.ToTensor()(np.zeros((2, 2), np.uint8) + 255).numpy().max() == 1.0


def test_totensor_batches():
    nhw = uint8_images((4, 5, 6))
    b = T.ToTensor().apply_batch(nhw)
    assert b.shape == (4, 1, 5, 6)
    for i in range(4):
        np.testing.assert_array_equal(b.numpy()[i], T.ToTensor()(nhw[i]).numpy())
    nhwc = uint8_images((4, 5, 6, 3))
    b = T.ToTensor()(nhwc)  # 4-D is a batch in __call__ too
    assert b.shape == (4, 3, 5, 6)
    np.testing.assert_array_equal(b.numpy()[2], T.ToTensor()(nhwc[2]).numpy())


def test_totensor_keeps_float_values():
    x = np.full((3, 3), 0.5, np.float64)
    t = T.ToTensor()(x)
    assert t.dtype == np.float32 and float(t.numpy().max()) == 0.5


# ----------------------------------------------------------------------------- Normalize


def test_normalize_per_channel_single_and_batch():
    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 5)).astype(np.float32)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    y = T.Normalize(mean, std)(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    expected = (torch.tensor(x) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None,
                                                                                          None]
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-6)
    xb = rng.random((2, 3, 4, 5)).astype(np.float32)
    yb = T.Normalize(mean, std)(minidl.tensor(xb))
    assert isinstance(yb, minidl.Tensor)
    np.testing.assert_allclose(yb.numpy()[1], T.Normalize(mean, std)(xb[1]), rtol=1e-6)
    one = T.Normalize((0.1307,), (0.3081,))(xb[:, :1])
    np.testing.assert_allclose(one, (xb[:, :1] - 0.1307) / 0.3081, rtol=1e-5)


def test_normalize_errors():
    with pytest.raises(ValueError, match="zero"):
        T.Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="2 means"):
        T.Normalize((0.5, 0.5), (1.0, 1.0))(np.zeros((3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="ToTensor first"):
        T.Normalize((0.5,), (1.0,))(np.zeros((1, 2, 2), np.uint8))


# ----------------------------------------------------------------------------- Resize vs PyTorch


def torch_resize(x, size, antialias=False, mode="bilinear"):
    kw = dict(align_corners=False, antialias=antialias) if mode == "bilinear" else {}
    return F.interpolate(torch.tensor(x), size=size, mode=mode, **kw).numpy()


def test_resize_lecture_32x32_single_and_batch():
    rng = np.random.default_rng(1)
    batch = rng.random((8, 1, 28, 28)).astype(np.float32)
    expected = torch_resize(batch, (32, 32))
    got = T.Resize((32, 32))(batch)
    assert got.shape == (8, 1, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    got_b = T.Resize((32, 32)).apply_batch(minidl.tensor(batch))
    np.testing.assert_allclose(got_b.numpy(), expected, rtol=0, atol=1e-5)
    single = T.Resize((32, 32))(batch[3])
    assert single.shape == (1, 32, 32)
    np.testing.assert_allclose(single, expected[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (45, 29), (29, 64), (7, 9), (3, 40)])
@pytest.mark.parametrize("antialias", [False, True])
def test_resize_matches_interpolate(size, antialias):
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 13, 17)).astype(np.float32)
    np.testing.assert_allclose(T.resize(x, size, antialias=antialias),
                               torch_resize(x, size, antialias=antialias), rtol=0, atol=1e-5)


def test_resize_lecture_batch_of_100_and_strided_views():
    """The lecture's batch of 100, from strided views (one channel of two; every other row
    and column) as well as contiguous images, float32 and float64."""
    rng = np.random.default_rng(5)
    two = rng.random((100, 2, 28, 28)).astype(np.float32)
    for batch in (two[:, 1:], np.ascontiguousarray(two[:, :1]), two[:, :, ::2, 1::2]):
        np.testing.assert_allclose(T.resize(batch, (32, 30)), torch_resize(batch, (32, 30)),
                                   rtol=0, atol=1e-5)
    wide = rng.random((40, 3, 28, 28))                 # float64, 3 channels an image
    np.testing.assert_allclose(T.resize(wide, (32, 40)), torch_resize(wide, (32, 40)),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(32, 32), (5, 30)])
def test_resize_nearest_matches_interpolate(size):
    x = np.random.default_rng(3).random((2, 1, 13, 17)).astype(np.float32)
    np.testing.assert_array_equal(T.resize(x, size, "nearest"), torch_resize(x, size,
                                                                              mode="nearest"))


def test_resize_float64_and_uint8_and_int_size():
    x = np.random.default_rng(4).random((1, 10, 20))
    np.testing.assert_allclose(T.resize(x, (14, 31)), torch_resize(x[None], (14, 31))[0],
                               atol=1e-12)
    img = uint8_images((1, 10, 12))
    out = T.resize(img, (15, 18))
    assert out.dtype == np.uint8
    ref = np.clip(np.rint(torch_resize(img.astype(np.float32)[None], (15, 18))[0]), 0, 255)
    assert np.abs(out.astype(int) - ref).max() <= 1
    # an int: the shorter side, keeping the aspect ratio (torchvision)
    assert T.Resize(10)(np.zeros((1, 20, 30), np.float32)).shape == (1, 10, 15)
    assert T.Resize(10)(np.zeros((1, 30, 20), np.float32)).shape == (1, 15, 10)
    assert T.Resize(10, max_size=12)(np.zeros((1, 20, 30), np.float32)).shape == (1, 8, 12)
    same = np.zeros((1, 4, 4), np.float32)
    assert T.Resize((4, 4))(same) is same


# ----------------------------------------------------------------------------- Pad / crops


def test_pad_forms_and_modes():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert T.Pad(2)(x).shape == (2, 7, 8)
    y = T.Pad((1, 2), fill=-1)(x)  # left/right 1, top/bottom 2
    assert y.shape == (2, 7, 6) and y[0, 0, 0] == -1
    np.testing.assert_array_equal(y[:, 2:5, 1:5], x)
    y = T.Pad((1, 2, 3, 4))(x)  # left, top, right, bottom
    assert y.shape == (2, 3 + 2 + 4, 4 + 1 + 3)
    np.testing.assert_array_equal(y[:, 2:5, 1:5], x)
    assert y.sum() == x.sum()
    for mode, torch_mode in (("reflect", "reflect"), ("edge", "replicate")):
        got = T.Pad((1, 2, 3, 1), padding_mode=mode)(x)
        ref = F.pad(torch.tensor(x)[None], (1, 3, 2, 1), mode=torch_mode)[0].numpy()
        np.testing.assert_array_equal(got, ref)
    sym = T.Pad(1, padding_mode="symmetric")(x)
    np.testing.assert_array_equal(sym, np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="symmetric"))
    batch = np.stack([x, x + 1])
    np.testing.assert_array_equal(T.Pad(3, fill=5)(batch)[1], T.Pad(3, fill=5)(x + 1))
    t = T.Pad(1)(minidl.tensor(x))
    assert isinstance(t, minidl.Tensor) and t.shape == (2, 5, 6)
    with pytest.raises(ValueError):
        T.Pad((1, 2, 3))


def test_center_crop():
    x = np.arange(36, dtype=np.float32).reshape(1, 6, 6)
    np.testing.assert_array_equal(T.CenterCrop(2)(x), x[:, 2:4, 2:4])
    assert T.CenterCrop((8, 4))(x).shape == (1, 8, 4)


def test_random_crop_batch_equals_per_image_crops():
    batch = np.random.default_rng(5).random((16, 3, 12, 10)).astype(np.float32)
    rc = T.RandomCrop((8, 7), padding=2)
    minidl.manual_seed(42)
    out = rc.apply_batch(batch)
    assert out.shape == (16, 3, 8, 7)
    minidl.manual_seed(42)
    top, left = rc.get_batch_params(16, (16, 14))
    padded = np.pad(batch, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(16):
        np.testing.assert_array_equal(out[i], padded[i, :, top[i]:top[i] + 8,
                                                     left[i]:left[i] + 7])
    assert len(set(zip(top.tolist(), left.tolist()))) > 1  # each image its own offsets
    # the same seed gives the same crops; the functional form agrees
    minidl.manual_seed(42)
    np.testing.assert_array_equal(rc(batch), out)
    np.testing.assert_array_equal(T.crop_batch(padded, top, left, 8, 7), out)


def test_random_crop_single_image_and_generator():
    x = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    rc = T.RandomCrop(4, generator=np.random.default_rng(0))
    crops = [rc(x) for _ in range(20)]
    for c in crops:
        assert c.shape == (1, 4, 4)
        top, left = divmod(int(c[0, 0, 0]), 10)
        np.testing.assert_array_equal(c, x[:, top:top + 4, left:left + 4])
    rc2 = T.RandomCrop(4, generator=np.random.default_rng(0))
    np.testing.assert_array_equal(np.stack([rc2(x) for _ in range(20)]), np.stack(crops))
    with pytest.raises(ValueError, match="larger than"):
        T.RandomCrop(11)(x)
    assert T.RandomCrop(12, pad_if_needed=True)(x).shape == (1, 12, 12)
    nhw = np.zeros((3, 10, 10), np.float32)
    assert T.RandomCrop(4).apply_batch(nhw).shape == (3, 4, 4)


def test_random_horizontal_flip():
    x = np.arange(24, dtype=np.float32).reshape(2, 1, 3, 4)
    np.testing.assert_array_equal(T.RandomHorizontalFlip(1.0)(x), x[..., ::-1])
    np.testing.assert_array_equal(T.RandomHorizontalFlip(0.0)(x), x)
    flip = T.RandomHorizontalFlip(0.5, generator=np.random.default_rng(1))
    big = np.repeat(x[:1], 64, axis=0)
    out = flip(big)
    flipped = [bool(np.array_equal(o, x[0, ..., ::-1])) for o in out]
    assert 0 < sum(flipped) < 64
    assert all(f or np.array_equal(o, x[0]) for f, o in zip(flipped, out))


# ----------------------------------------------------------------------------- RandomAffine


def test_affine_identity_translation_rotation():
    x = np.random.default_rng(6).random((2, 1, 7, 7)).astype(np.float32)
    eye = T._inverse_affine_matrices(np.zeros(2), np.zeros(2), np.zeros(2), np.ones(2),
                                     np.zeros(2), np.zeros(2))
    for mode in ("nearest", "bilinear"):
        np.testing.assert_allclose(T.affine(x, eye, mode), x, atol=1e-6)
    # translate by (+2 right, -1 up): out[y, x] = in[y + 1, x - 2], fill elsewhere
    m = T._inverse_affine_matrices(np.zeros(2), np.full(2, 2.0), np.full(2, -1.0), np.ones(2),
                                   np.zeros(2), np.zeros(2))
    for mode in ("nearest", "bilinear"):
        out = T.affine(x, m, mode, fill=9.0)
        np.testing.assert_allclose(out[..., :6, 2:], x[..., 1:, :5], atol=1e-6)
        assert np.all(out[..., :, :2] == 9.0) and np.all(out[..., 6, :] == 9.0)
    # +90 degrees: counter-clockwise, as np.rot90
    m = T._inverse_affine_matrices(np.full(2, 90.0), np.zeros(2), np.zeros(2), np.ones(2),
                                   np.zeros(2), np.zeros(2))
    np.testing.assert_array_equal(T.affine(x, m, "nearest"), np.rot90(x, 1, axes=(2, 3)))


def test_random_affine_batch_equals_per_image_and_is_seeded():
    x = np.random.default_rng(7).random((6, 2, 9, 11)).astype(np.float32)
    ra = T.RandomAffine(15, translate=(0.2, 0.1), scale=(0.8, 1.2), shear=5)
    minidl.manual_seed(3)
    out = ra(x)
    minidl.manual_seed(3)
    m = ra.get_batch_params(6, (9, 11))
    for i in range(6):
        np.testing.assert_array_equal(out[i], T.affine(x[i:i + 1], m[i:i + 1])[0])
    minidl.manual_seed(3)
    np.testing.assert_array_equal(ra.apply_batch(minidl.tensor(x)).numpy(), out)
    assert not np.array_equal(out, x)
    single = T.RandomAffine(10, interpolation="bilinear")(x[0])
    assert single.shape == (2, 9, 11)
    with pytest.raises(ValueError):
        T.RandomAffine(10, translate=(2.0, 0.0))


# ----------------------------------------------------------------------------- composition


def test_compose_batch_support_and_lambda():
    tf = T.Compose([T.ToTensor(), T.Resize((32, 32)), T.Normalize((0.5,), (0.5,))])
    assert T.supports_batch(tf)
    imgs = uint8_images((3, 28, 28))
    batch = tf.apply_batch(imgs)
    assert isinstance(batch, minidl.Tensor) and batch.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(batch.numpy()[1], tf(imgs[1]).numpy(), atol=1e-6)
    plain = T.Compose([T.ToTensor(), lambda t: t * 2])
    assert not T.supports_batch(plain) and not T.supports_batch(lambda t: t)
    with pytest.raises(TypeError, match="cannot transform a batch"):
        plain.apply_batch(imgs)
    assert T.supports_batch(T.Compose([T.ToTensor(), T.Lambda(lambda t: t * 2, batched=True)]))
    assert "Resize" in repr(tf)
