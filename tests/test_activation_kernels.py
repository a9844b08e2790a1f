"""The float32 tanh kernels (minidl/kernels/activation_numba.py): accuracy against float64
tanh, special values, the fused backward, and the registry's choice in TanhFunction (float32
NumPy arrays take the kernels, float64 keeps NumPy's exact tanh)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minidl
import minidl.kernels as K

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")
act = K.activation.TANH.impls["numba"].code

MAX_REL_ERR = 3e-7       # the bound the module docstring states (NumPy's float32: 1.1e-7)


def _rel_err(y, x):
    exact = np.tanh(x.astype(np.float64))
    return np.abs(y.astype(np.float64) - exact) / np.maximum(np.abs(exact), 1e-300)


def test_forward_accuracy(rng):
    x = np.concatenate([
        np.linspace(-12, 12, 400_001, dtype=np.float32),                       # dense grid
        (rng.standard_normal(200_000) * 4).astype(np.float32),
        (10.0 ** rng.uniform(-30, 1, 100_000) * rng.choice([-1, 1], 100_000)).astype(
            np.float32),                                                      # tiny |x|
        np.float32([7.9, 7.9053, 7.906, 8.5, 9.0, 9.0109, 9.011, 20, 1e30]),   # the seams
    ])
    y = act.tanh_forward(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert _rel_err(y, x).max() < MAX_REL_ERR
    assert np.all(np.abs(y) <= 1)
    np.testing.assert_array_equal(np.sign(y), np.sign(x))                  # odd, sign kept


def test_special_values():
    x = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 20.0, -20.0, 1e-40])
    y = act.tanh_forward(x)
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:7], np.float32([1, -1, 0, -0.0, 1, -1]))
    assert np.signbit(y[4])                                                  # -0 stays -0
    assert y[7] == np.float32(1e-40)                                         # subnormal


def test_backward_is_the_formula(rng):
    gy = rng.standard_normal((3, 5, 7)).astype(np.float32)
    y = act.tanh_forward(rng.standard_normal((3, 5, 7)).astype(np.float32))
    gx = act.tanh_backward(gy, y)
    assert gx.dtype == np.float32 and gx.shape == gy.shape
    np.testing.assert_allclose(gx, gy * (1 - y * y), rtol=1e-6, atol=1e-7)


def test_non_contiguous_and_empty(rng):
    x = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2].T                # a strided view
    assert _rel_err(act.tanh_forward(x), x).max() < MAX_REL_ERR
    assert act.tanh_forward(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_registry_choice():
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    assert K.which("tanh", f32, f32) == "numba"
    assert K.which("tanh", f64) == "reference"
    assert K.which("tanh", f32, f64) == "reference"
    assert K.which("tanh", np.zeros(3, np.float16)) == "reference"
    with K.use_impl("reference", family="tanh"):
        assert K.which("tanh", f32) == "reference"
    assert K.which("tanh", f32) == "numba"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_op_dispatch(dtype, rng):
    """float32 through the kernels, float64 through np.tanh (bit for bit); both match PyTorch."""
    x = rng.standard_normal((4, 6, 5, 5)).astype(dtype) * 3
    gy = rng.standard_normal(x.shape).astype(dtype)
    X = minidl.tensor(x, requires_grad=True)
    with K.decisions() as log:
        y = minidl.tanh(X)
        (y * minidl.tensor(gy)).sum().backward()
    calls = [impl for fam, impl in log if fam == "tanh"]
    T = torch.tensor(x, requires_grad=True)
    ty = torch.tanh(T)
    ty.backward(torch.tensor(gy))
    if dtype == np.float32:
        assert calls == ["numba", "numba"]
        # 1 - y^2 near saturation turns y's relative error 3e-7 into ~6e-7 absolute
        tol = dict(rtol=1e-6, atol=2e-6)
    else:
        assert calls == ["reference", "reference"]
        np.testing.assert_array_equal(y.numpy(), np.tanh(x))
        tol = dict(rtol=1e-12, atol=1e-12)
    assert y.dtype == dtype and X.grad.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **tol)
    np.testing.assert_allclose(X.grad.numpy(), T.grad.numpy(), **tol)
