"""Tensor factories, conversions, dtypes, seeding and repr."""
import numpy as np
import pytest
import torch

import minidl


def test_default_dtypes_follow_pytorch():
    assert minidl.tensor([1.0, 2.0]).dtype == np.float32
    assert minidl.tensor([1, 2]).dtype == np.int64
    assert minidl.tensor([True]).dtype == np.bool_
    assert minidl.tensor(np.zeros(2)).dtype == np.float64  # NumPy arrays keep their dtype
    assert minidl.tensor(2.5).shape == ()
    for f in (minidl.zeros, minidl.ones, minidl.randn, minidl.rand):
        t = f(2, 3)
        assert t.shape == (2, 3) and t.dtype == np.float32
        assert f((2, 3)).shape == (2, 3)
    assert minidl.arange(5).dtype == np.int64 and minidl.arange(0, 1, 0.25).dtype == np.float32
    np.testing.assert_array_equal(minidl.arange(2, 8, 2).numpy(), torch.arange(2, 8, 2).numpy())


def test_tensor_copies_its_data():
    a = np.zeros(3, np.float32)
    t = minidl.tensor(a)
    a[0] = 1
    assert t.numpy()[0] == 0
    assert minidl.from_numpy(a).numpy() is a or minidl.from_numpy(a).numpy()[0] == 1


def test_like_factories():
    x = minidl.randn(2, 3, dtype=minidl.float64)
    for f in (minidl.zeros_like, minidl.ones_like, minidl.randn_like, minidl.rand_like):
        y = f(x)
        assert y.shape == x.shape and y.dtype == np.float64
    assert minidl.full_like(x, 7.0).numpy().max() == 7.0


def test_manual_seed_makes_draws_repeatable():
    minidl.manual_seed(42)
    a = minidl.randn(5).numpy().copy()
    b = minidl.rand(5).numpy().copy()
    minidl.manual_seed(42)
    np.testing.assert_array_equal(minidl.randn(5).numpy(), a)
    np.testing.assert_array_equal(minidl.rand(5).numpy(), b)
    assert not np.array_equal(minidl.randn(5).numpy(), a)


def test_conversions():
    t = minidl.tensor([[1.5, 2.0]])
    assert t.tolist() == [[1.5, 2.0]]
    assert minidl.tensor([3.0]).item() == 3.0 and isinstance(t.sum().item(), float)
    assert float(minidl.tensor(2.0)) == 2.0
    with pytest.raises(ValueError, match="only one-element tensors"):
        t.item()
    assert np.asarray(t).shape == (1, 2)


def test_repr_like_pytorch():
    assert repr(minidl.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert "requires_grad=True" in repr(minidl.tensor([1.0], requires_grad=True))
    assert "grad_fn=<MulBackward>" in repr(minidl.tensor([1.0], requires_grad=True) * 2)
    assert "dtype=minidl.float64" in repr(minidl.tensor(np.zeros(2)))


def test_to_dtype_and_device_cpu():
    x = minidl.randn(2)
    assert x.to("cpu") is x
    assert x.to(minidl.float64).dtype == np.float64
    assert x.double().float().dtype == np.float32
    assert str(x.device) == "cpu" and x.device == "cpu"
    assert minidl.device("cuda:1").index == 1
    with pytest.raises(ValueError, match="unknown device type"):
        minidl.device("tpu")
