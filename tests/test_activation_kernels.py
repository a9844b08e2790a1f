"""The activation kernels (minidl/kernels/activation_numba.py).

tanh (float32): accuracy against float64 tanh, special values, the fused backward, and the
registry's choice in TanhFunction (float32 NumPy arrays take the kernels, float64 keeps
NumPy's exact tanh).

relu and clamp (float32 and float64): the numba kernels equal the reference bit for bit,
below and above the size from which they split over threads, on 1, 2 and 3 threads; NaN,
+-0, inf and subnormals as PyTorch; strided inputs; the registry's choice in ReLUFunction
and ClampFunction."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import minidl
import minidl.kernels as K
from helpers import float_bits, with_specials
from minidl.kernels import threads
from minidl.kernels.activation import clamp_bound

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")
act = K.activation.TANH.impls["numba"].code
relu_numba = K.activation.RELU.impls["numba"].code
relu_ref = K.activation.RELU.impls["reference"].code
clamp_numba = K.activation.CLAMP.impls["numba"].code
clamp_ref = K.activation.CLAMP.impls["reference"].code

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


# ----------------------------------------------------------------------------- relu

def _spread(rng, n, dtype):
    """``with_specials`` times 4: values on both sides of clamp's bounds (the largest
    specials overflow to inf, which is one more special)."""
    with np.errstate(over="ignore"):
        return with_specials(rng, n, dtype) * dtype(4)


# a size below the parallel threshold (serial build), and one above it that no thread count
# divides evenly (parallel build)
RELU_SIZES = [1001, threads.PARALLEL_MIN_ELEMENTS * 3 + 77]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("size", RELU_SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_numba_equals_reference_bit_for_bit(dtype, size, n_threads, num_threads, rng):
    num_threads(n_threads)
    x = with_specials(rng, size, dtype)
    gy = with_specials(rng, size, dtype)

    y, mask = relu_numba.relu_forward(x)
    y_ref, mask_ref = relu_ref.relu_forward(x)
    assert y.dtype == dtype and y.shape == x.shape and mask.dtype == np.bool_
    np.testing.assert_array_equal(float_bits(y), float_bits(y_ref))
    np.testing.assert_array_equal(mask, mask_ref)
    y_only, none = relu_numba.relu_forward(x, mask=False)
    assert none is None
    np.testing.assert_array_equal(float_bits(y_only), float_bits(y_ref))

    gx = relu_numba.relu_backward(gy, mask)
    assert gx.dtype == dtype and gx.shape == x.shape
    np.testing.assert_array_equal(float_bits(gx), float_bits(relu_ref.relu_backward(gy, mask_ref)))

    z = x.copy()
    assert relu_numba.relu_inplace(z) is z
    np.testing.assert_array_equal(float_bits(z), float_bits(y_ref))


def test_relu_sizes_straddle_the_parallel_threshold():
    assert not threads.parallel(RELU_SIZES[0]) and threads.parallel(RELU_SIZES[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_special_values(dtype):
    """PyTorch's relu: NaN passes (and so does its gradient), -0.0 stays -0.0, the gradient
    is 0 at +-0 and wherever the mask is off, even for a NaN or inf upstream gradient."""
    x = np.array([np.nan, -0.0, 0.0, -1, 2, np.inf, -np.inf, 1e-40, -1e-40], dtype=dtype)
    gy = np.array([5, np.nan, np.inf, -np.inf, 3, -2, np.nan, 7, -1], dtype=dtype)
    want_y = np.array([np.nan, -0.0, 0.0, 0.0, 2, np.inf, 0.0, 1e-40, 0.0], dtype=dtype)
    want_gx = np.array([5, 0, 0, 0, 3, -2, 0, 7, 0], dtype=dtype)
    for code in (relu_numba, relu_ref):
        y, mask = code.relu_forward(x)
        np.testing.assert_array_equal(float_bits(y), float_bits(want_y))
        np.testing.assert_array_equal(float_bits(code.relu_backward(gy, mask)), float_bits(want_gx))
    t = torch.tensor(x, requires_grad=True)
    ty = torch.relu(t)
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(float_bits(ty.detach().numpy()), float_bits(want_y))
    np.testing.assert_array_equal(float_bits(t.grad.numpy()), float_bits(want_gx))


def test_relu_strided_and_empty(rng):
    base = with_specials(rng, 6 * 10, np.float64).reshape(6, 10)
    x = base[:, ::2].T                                                   # a strided view
    y, mask = relu_numba.relu_forward(x)
    y_ref, mask_ref = relu_ref.relu_forward(x)
    np.testing.assert_array_equal(float_bits(y), float_bits(y_ref))
    np.testing.assert_array_equal(mask, mask_ref)
    gy = np.broadcast_to(np.float64(-3), x.shape)                        # zero strides
    np.testing.assert_array_equal(float_bits(relu_numba.relu_backward(gy, mask_ref[::-1, ::-1])),
                                  float_bits(relu_ref.relu_backward(gy, mask_ref[::-1, ::-1])))
    before = base.copy()
    assert relu_numba.relu_inplace(x) is x                               # into the view
    np.testing.assert_array_equal(float_bits(base[:, ::2]), float_bits(y_ref.T))
    np.testing.assert_array_equal(float_bits(base[:, 1::2]),             # untouched
                                  float_bits(before[:, 1::2]))
    y0, m0 = relu_numba.relu_forward(np.zeros((0, 3), np.float32))
    assert y0.shape == m0.shape == (0, 3)
    assert relu_numba.relu_backward(y0, m0).shape == (0, 3)


def test_relu_registry_choice():
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    mask = np.zeros(3, bool)
    assert K.which("relu", f32) == "numba" and K.which("relu", f64) == "numba"
    assert K.which("relu", f32, mask) == "numba"
    assert K.which("relu", np.zeros(3, np.float16)) == "reference"
    assert K.which("relu", np.zeros(3, np.int64)) == "reference"
    with K.use_impl("reference", family="relu"):
        assert K.which("relu", f32) == "reference"


@pytest.mark.parametrize("impl", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_op_dispatch(dtype, impl, use_impl, rng):
    """ReLUFunction runs the family (forced implementation, both passes); both match
    PyTorch bit for bit, special values included."""
    use_impl(impl, family="relu")
    x = with_specials(rng, 4 * 6 * 5 * 5, dtype).reshape(4, 6, 5, 5)
    gy = with_specials(rng, x.size, dtype).reshape(x.shape)
    X = minidl.tensor(x, requires_grad=True)
    with K.decisions() as log:
        y = minidl.relu(X)
        y.backward(minidl.tensor(gy))
    assert [i for fam, i in log if fam == "relu"] == [impl, impl]
    T = torch.tensor(x, requires_grad=True)
    ty = torch.relu(T)
    ty.backward(torch.tensor(gy))
    assert y.dtype == dtype and X.grad.dtype == dtype
    np.testing.assert_array_equal(float_bits(y.numpy()), float_bits(ty.detach().numpy()))
    np.testing.assert_array_equal(float_bits(X.grad.numpy()), float_bits(T.grad.numpy()))


@pytest.mark.parametrize("impl", ["numba", "reference"])
def test_relu_inplace_matches_pytorch(impl, use_impl, rng):
    use_impl(impl, family="relu")
    x = with_specials(rng, 200, np.float32).reshape(10, 20)
    t = torch.tensor(x)
    t.relu_()
    m = minidl.tensor(x.copy())
    view = m[:, ::3]                                      # a strided view, in place too
    with K.decisions() as log:
        assert m.relu_() is m
        minidl.relu(view, inplace=True)
    assert [i for fam, i in log if fam == "relu"] == [impl, impl]
    np.testing.assert_array_equal(float_bits(m.numpy()), float_bits(t.numpy()))



# ----------------------------------------------------------------------------- clamp

# (lo, hi): ReLU6's, one bound only, bounds that are not exact float32 values, lo > hi,
# and a NumPy float64 bound on float32 data (converted to float32, as PyTorch does)
CLAMP_BOUNDS = [(0.0, 6.0), (0.0, None), (None, 0.5), (-0.3, 0.7), (1.0, -1.0),
                (np.float64(0.1), None)]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("size", RELU_SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamp_numba_equals_reference_bit_for_bit(dtype, size, n_threads, num_threads, rng):
    num_threads(n_threads)
    x = _spread(rng, size, dtype)
    gy = with_specials(rng, size, dtype)
    for lo, hi in CLAMP_BOUNDS:
        y = clamp_numba.clamp_forward(x, lo, hi)
        y_ref = clamp_ref.clamp_forward(x, lo, hi)
        assert y.dtype == y_ref.dtype == dtype and y.shape == x.shape
        np.testing.assert_array_equal(float_bits(y), float_bits(y_ref),
                                      err_msg=f"y, bounds {lo, hi}")
        gx = clamp_numba.clamp_backward(gy, x, lo, hi)
        assert gx.dtype == dtype
        np.testing.assert_array_equal(float_bits(gx),
                                      float_bits(clamp_ref.clamp_backward(gy, x, lo, hi)),
                                      err_msg=f"gx, bounds {lo, hi}")
        z = x.copy()
        assert clamp_numba.clamp_inplace(z, lo, hi) is z
        np.testing.assert_array_equal(float_bits(z), float_bits(y_ref),
                                      err_msg=f"in place {lo, hi}")


@pytest.mark.parametrize("bounds", CLAMP_BOUNDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamp_special_values_match_pytorch(dtype, bounds):
    """NaN passes (its gradient is 0), -0.0 stays -0.0, the gradient passes at the bounds
    and is +0.0 where the value was clamped, even for a NaN or inf upstream gradient."""
    lo, hi = bounds
    x = np.array([np.nan, -0.0, 0.0, -1, 2, 6, 7, np.inf, -np.inf, 1e-40, -1e-40, 0.1, 0.5],
                 dtype=dtype)
    gy = np.array([5, np.nan, np.inf, -np.inf, 3, -2, np.nan, 7, -1, 2, -3, 4, -5], dtype=dtype)
    t = torch.tensor(x, requires_grad=True)
    ty = torch.clamp(t, None if lo is None else float(lo), None if hi is None else float(hi))
    ty.backward(torch.tensor(gy))
    for code in (clamp_numba, clamp_ref):
        np.testing.assert_array_equal(float_bits(code.clamp_forward(x, lo, hi)),
                                      float_bits(ty.detach().numpy()))
        np.testing.assert_array_equal(float_bits(code.clamp_backward(gy, x, lo, hi)),
                                      float_bits(t.grad.numpy()))


def test_clamp_bounds_beyond_the_dtype_range():
    """A bound that the input's dtype cannot hold acts as the infinity it rounds to (PyTorch
    refuses it): nothing is clamped, no overflow warning; float32 through both kernels,
    float16 through the reference."""
    x = np.array([np.nan, -0.0, -3e38, 3e38, np.inf, -np.inf, 1.5], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clamp_bound(1e39, x) == np.inf and clamp_bound(-1e300, x) == -np.inf
        for code in (clamp_numba, clamp_ref):
            np.testing.assert_array_equal(float_bits(code.clamp_forward(x, -1e300, 1e39)),
                                          float_bits(x))
        h = x[[0, 1, 6]].astype(np.float16)
        np.testing.assert_array_equal(clamp_ref.clamp_forward(h, -7e4, 7e4).view(np.uint16),
                                      h.view(np.uint16))
    assert clamp_bound(6, x) == 6 and clamp_bound(6, x).dtype == np.float32


def test_clamp_strided_and_empty(rng):
    base = with_specials(rng, 6 * 10, np.float64).reshape(6, 10)
    x = base[:, ::2].T                                                   # a strided view
    gy = np.broadcast_to(np.float64(-3), x.shape)                        # zero strides
    np.testing.assert_array_equal(float_bits(clamp_numba.clamp_forward(x, 0.0, 6.0)),
                                  float_bits(clamp_ref.clamp_forward(x, 0.0, 6.0)))
    np.testing.assert_array_equal(float_bits(clamp_numba.clamp_backward(gy, x, 0.0, 6.0)),
                                  float_bits(clamp_ref.clamp_backward(gy, x, 0.0, 6.0)))
    y_ref = clamp_ref.clamp_forward(x, 0.0, 6.0)
    before = base.copy()
    assert clamp_numba.clamp_inplace(x, 0.0, 6.0) is x                  # into the view
    np.testing.assert_array_equal(float_bits(base[:, ::2]), float_bits(y_ref.T))
    np.testing.assert_array_equal(float_bits(base[:, 1::2]),             # untouched
                                  float_bits(before[:, 1::2]))
    empty = np.zeros((0, 3), np.float32)
    assert clamp_numba.clamp_forward(empty, 0.0, 6.0).shape == (0, 3)
    assert clamp_numba.clamp_backward(empty, empty, 0.0, None).shape == (0, 3)


def test_clamp_registry_choice():
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    assert K.which("clamp", f32) == "numba" and K.which("clamp", f64, f64) == "numba"
    assert K.which("clamp", f32, f64) == "reference"                  # mixed dtypes
    assert K.which("clamp", np.zeros(3, np.float16)) == "reference"
    assert K.which("clamp", np.zeros(3, np.int64)) == "reference"


@pytest.mark.parametrize("impl", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamp_op_and_relu6_dispatch(dtype, impl, use_impl, rng):
    """ClampFunction (and relu6 through it) runs the family, forced implementation, both
    passes; forward and backward match PyTorch's clamp bit for bit, specials included."""
    use_impl(impl, family="clamp")
    x = _spread(rng, 4 * 6 * 5 * 5, dtype).reshape(4, 6, 5, 5)
    gy = with_specials(rng, x.size, dtype).reshape(x.shape)
    for fn, tfn in ((lambda t: minidl.nn.functional.relu6(t), lambda t: torch.clamp(t, 0, 6)),
                    (lambda t: t.clamp(max=0.5), lambda t: t.clamp(max=0.5))):
        X = minidl.tensor(x, requires_grad=True)
        with K.decisions() as log:
            y = fn(X)
            y.backward(minidl.tensor(gy))
        assert [i for fam, i in log if fam == "clamp"] == [impl, impl]
        T = torch.tensor(x, requires_grad=True)
        ty = tfn(T)
        ty.backward(torch.tensor(gy))
        assert y.dtype == dtype and X.grad.dtype == dtype
        np.testing.assert_array_equal(float_bits(y.numpy()), float_bits(ty.detach().numpy()))
        np.testing.assert_array_equal(float_bits(X.grad.numpy()), float_bits(T.grad.numpy()))


def test_clamp_integer_input_and_bad_bounds():
    x = minidl.tensor(np.array([-3, 0, 2, 9]))
    np.testing.assert_array_equal(minidl.clamp(x, 0, 6).numpy(), [0, 0, 2, 6])
    assert minidl.clamp(x, 0, 6).dtype == np.int64
    with pytest.raises(TypeError, match="clamp: expected min to be a number or None, got Tensor"):
        minidl.clamp(minidl.tensor([1.0]), min=minidl.tensor([0.0]))
