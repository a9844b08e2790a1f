"""Activations against PyTorch (float64 tight, float32 loose) and gradcheck, via check_op."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
from minidl.ops.activation import gelu, leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from tests.helpers import check_op, rand_away_from, to_host, torch_device

# --- elementwise activations ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2)])
def test_relu(rng, shape, device):
    check_op(relu, F.relu, [rand_away_from(rng, shape)], device=device)


@pytest.mark.parametrize("slope", [0.01, 0.2, -0.5])
def test_leaky_relu(rng, slope, device):
    check_op(lambda x: leaky_relu(x, slope), lambda x: F.leaky_relu(x, slope),
             [rand_away_from(rng, (3, 4))], device=device)


def test_leaky_relu_default_slope(rng, device):
    check_op(leaky_relu, F.leaky_relu, [rand_away_from(rng, (2, 5))], device=device)


def test_relu_and_leaky_relu_gradient_at_zero_match_pytorch(device):
    x = np.array([-1.0, 0.0, 2.0])
    for md_fn, t_fn in ((relu, F.relu), (lambda a: leaky_relu(a, 0.1),
                                         lambda a: F.leaky_relu(a, 0.1))):
        m = minidl.tensor(x, requires_grad=True, device=device)
        t = torch.tensor(x, requires_grad=True, device=torch_device(device))
        md_fn(m).sum().backward()
        t_fn(t).sum().backward()
        np.testing.assert_array_equal(to_host(m.grad), to_host(t.grad))


def test_relu_special_values_match_pytorch(device):
    """NaN passes forward and backward, -0.0 stays -0.0, the gradient is 0 at +-0 and is
    +0 where the input is negative even for a NaN or inf upstream gradient (forward,
    backward and inplace=True, through whichever kernel the device takes).

    The reference is PyTorch's CPU kernel on every device: its CUDA relu returns +0.0 for
    -0.0 (seen with torch 2.11 on an H200), so PyTorch's two devices disagree on the sign
    of that zero; minidl gives the CPU's answer, bit for bit, on both."""
    x = np.array([np.nan, -0.0, 0.0, -1.0, 2.0, np.inf, -np.inf, -3.0])
    gy = np.array([5.0, np.nan, np.inf, -np.inf, 3.0, -2.0, np.nan, -4.0])
    m = minidl.tensor(x, requires_grad=True, device=device)
    t = torch.tensor(x, requires_grad=True)
    y, ty = relu(m), F.relu(t)
    y.backward(minidl.tensor(gy, device=device))
    ty.backward(torch.tensor(gy))
    for got, want in ((y, ty), (m.grad, t.grad)):
        got, want = to_host(got), to_host(want)
        np.testing.assert_array_equal(got, want)                  # NaN == NaN here
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    z = minidl.tensor(x, device=device)
    relu(z, inplace=True)
    np.testing.assert_array_equal(np.signbit(to_host(z)), np.signbit(to_host(ty)))
    np.testing.assert_array_equal(to_host(z), to_host(ty))


def test_tanh(rng, device):
    check_op(tanh, torch.tanh, [rng.uniform(-3, 3, (3, 4))], device=device)


def test_sigmoid(rng, device):
    check_op(sigmoid, torch.sigmoid, [rng.uniform(-6, 6, (3, 4))], device=device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_for_large_inputs(dtype, device):
    x = np.array([-1000.0, -100.0, -30.0, 0.0, 30.0, 100.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning from exp
        m = minidl.tensor(x, requires_grad=True, device=device)
        y = sigmoid(m)
        y.sum().backward()
    assert y.dtype == dtype and np.isfinite(to_host(y)).all()
    expected = torch.sigmoid(torch.tensor(x, device=torch_device(device)))
    np.testing.assert_allclose(to_host(y), to_host(expected), rtol=1e-6,
                               atol=1e-30)  # minidl keeps denormals PyTorch flushes
    assert np.isfinite(to_host(m.grad)).all()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, approximate, device):
    check_op(lambda x: gelu(x, approximate), lambda x: F.gelu(x, approximate=approximate),
             [rng.uniform(-4, 4, (3, 4))], device=device)


def test_gelu_exact_matches_pytorch_over_a_wide_range(device):
    # Covers both branches of the erf evaluation (|x| / sqrt 2 below and above 2.5) and
    # the far tails, forward and backward.
    x = np.linspace(-12, 12, 2401)
    m = minidl.tensor(x, requires_grad=True, device=device)
    t = torch.tensor(x, requires_grad=True, device=torch_device(device))
    y, ty = gelu(m), F.gelu(t)
    np.testing.assert_allclose(to_host(y), to_host(ty), rtol=1e-12, atol=1e-14)
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(to_host(m.grad), to_host(t.grad), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", [relu, leaky_relu, tanh, sigmoid, gelu,
                                lambda x: gelu(x, "tanh"), lambda x: softmax(x, 1),
                                lambda x: log_softmax(x, 1),
                                lambda x: softmax(x, 1, temperature=0.5)])
def test_float32_stays_float32(rng, fn, device):
    x = minidl.tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True,
                      device=device)
    y = fn(x)
    assert y.dtype == np.float32
    y.backward(minidl.ones(2, 3, device=device))
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("fn,name", [(tanh, "tanh"), (sigmoid, "sigmoid"), (gelu, "gelu"),
                                     (leaky_relu, "leaky_relu"),
                                     (lambda x: softmax(x, 0), "softmax")])
def test_integer_input_is_rejected(fn, name):
    with pytest.raises(TypeError,
                       match=f"{name}: expected a floating point tensor, got dtype int64"):
        fn(minidl.tensor([1, 2, 3]))


def test_gelu_unknown_approximation():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh', got 'erf'"):
        gelu(minidl.tensor([1.0]), approximate="erf")


# --- softmax and log_softmax ------------------------------------------------------------

SOFTMAX_CASES = [((4,), 0), ((3, 5), 1), ((3, 5), 0), ((3, 5), -1), ((2, 3, 4), 1),
                 ((2, 3, 2, 2), 1), ((2, 3, 2, 2), -1)]


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_softmax(rng, shape, dim, device):
    check_op(lambda x: softmax(x, dim), lambda x: F.softmax(x, dim),
             [rng.standard_normal(shape)], device=device)


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_log_softmax(rng, shape, dim, device):
    check_op(lambda x: log_softmax(x, dim), lambda x: F.log_softmax(x, dim),
             [rng.standard_normal(shape)], device=device)


@pytest.mark.parametrize("fn,t_fn", [(softmax, F.softmax), (log_softmax, F.log_softmax)])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 4])
def test_temperature_number(rng, fn, t_fn, temperature, device):
    check_op(lambda x: fn(x, 1, temperature), lambda x: t_fn(x / temperature, 1),
             [rng.standard_normal((3, 4))], device=device)


@pytest.mark.parametrize("fn,t_fn", [(softmax, F.softmax), (log_softmax, F.log_softmax)])
@pytest.mark.parametrize("t_shape", [(), (1,), (3, 1)])
def test_temperature_tensor_learns(rng, fn, t_fn, t_shape, device):
    """The gradient with respect to a learnable temperature matches PyTorch's and
    finite differences (check_op differentiates every float input, T included)."""
    x = rng.standard_normal((3, 4))
    T = rng.uniform(0.5, 2.0, t_shape)
    check_op(lambda x, T: fn(x, 1, temperature=T), lambda x, T: t_fn(x / T, 1), [x, T],
             device=device)


def test_temperature_tensor_with_float32_input_and_float64_temperature(rng, device):
    x = minidl.tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True,
                      device=device)
    T = minidl.tensor(1.5, dtype=minidl.float64, requires_grad=True, device=device)
    y = softmax(x, 1, temperature=T)
    assert y.dtype == np.float32
    (y * minidl.tensor(rng.standard_normal((2, 3)).astype(np.float32),
                       device=device)).sum().backward()
    assert T.grad.dtype == np.float64 and T.grad.shape == ()


def test_temperature_gradient_by_hand(device):
    # softmax([0, a] / T) = [1 - s, s], s = sigmoid(a / T); d s / d T = -s (1 - s) a / T^2.
    a, T0 = 1.3, 0.8
    T = minidl.tensor(T0, dtype=minidl.float64, requires_grad=True, device=device)
    y = softmax(minidl.tensor([0.0, a], dtype=minidl.float64, device=device), 0, temperature=T)
    y[1].backward()
    s = 1 / (1 + np.exp(-a / T0))
    np.testing.assert_allclose(T.grad.item(), -s * (1 - s) * a / T0 ** 2, rtol=1e-12)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
def test_softmax_is_stable_for_large_logits(fn, device):
    x = np.array([[1000.0, 0.0, -1000.0], [1e4, 1e4, 1e4]])
    y = to_host(fn(minidl.tensor(x, device=device), 1))
    t = to_host((F.softmax if fn is softmax else F.log_softmax)(
        torch.tensor(x, device=torch_device(device)), 1))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn,t_fn", [(softmax, F.softmax), (log_softmax, F.log_softmax)])
@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4), (2, 3, 2, 2)])
def test_implicit_dim_follows_pytorch(rng, fn, t_fn, shape, device):
    x = rng.standard_normal(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns that the implicit dim is deprecated
        expected = t_fn(torch.tensor(x)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # minidl follows the rule silently
        got = to_host(fn(minidl.tensor(x, device=device)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_softmax_of_a_scalar_is_one(device):
    x = minidl.tensor(2.5, requires_grad=True, device=device)
    y = softmax(x, 0)
    assert y.shape == () and y.item() == 1.0
    y.backward()
    assert x.grad.item() == 0.0


def test_softmax_dtype_argument(rng, device):
    x = minidl.tensor(rng.standard_normal((2, 3)).astype(np.float32), device=device)
    assert softmax(x, 1, dtype=minidl.float64).dtype == np.float64


@pytest.mark.parametrize("fn,name", [(softmax, "softmax"), (log_softmax, "log_softmax")])
@pytest.mark.parametrize("bad", [0, 0.0, -1.5, float("nan")])
def test_temperature_must_be_positive(fn, name, bad):
    with pytest.raises(ValueError, match=f"{name}: temperature must be > 0, got"):
        fn(minidl.tensor([[1.0, 2.0]]), 1, temperature=bad)


def test_temperature_of_wrong_type_or_shape():
    x = minidl.tensor([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="softmax: temperature must be a positive number or "
                                        "a Tensor, got str"):
        softmax(x, 1, temperature="2")
    with pytest.raises(ValueError, match=r"softmax: temperature of shape \(2,\) does not "
                                         r"broadcast to the input's shape \(1, 3\)"):
        softmax(x, 1, temperature=minidl.tensor([1.0, 2.0]))


def test_softmax_dim_out_of_range():
    with pytest.raises(IndexError, match="softmax: dim 2 is out of range"):
        softmax(minidl.tensor([[1.0, 2.0]]), 2)


def test_temperature_alone_can_require_grad(rng, device):
    x = rng.standard_normal((2, 3))
    T = minidl.tensor(0.9, dtype=minidl.float64, requires_grad=True, device=device)
    tT = torch.tensor(0.9, dtype=torch.float64, requires_grad=True, device=torch_device(device))
    log_softmax(minidl.tensor(x, device=device), 1, temperature=T)[:, 1].sum().backward()
    F.log_softmax(torch.tensor(x, device=tT.device) / tT, 1)[:, 1].sum().backward()
    np.testing.assert_allclose(T.grad.item(), tT.grad.item(), rtol=1e-12)


# --- devices ----------------------------------------------------------------------------

def test_same_results_on_every_device(device, rng):
    """Each activation on ``device`` (the GPU through CuPy, when present) equals the CPU."""
    x = rng.standard_normal((3, 4)).astype(np.float32)
    fns = [relu, leaky_relu, tanh, sigmoid, gelu, lambda a: gelu(a, "tanh"),
           lambda a: softmax(a, 1), lambda a: log_softmax(a, 0, temperature=0.7)]
    for fn in fns:
        a = minidl.tensor(x, requires_grad=True)
        b = minidl.tensor(x, device=device, requires_grad=True)
        ya, yb = fn(a), fn(b)
        assert yb.device == device and yb.dtype == np.float32
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
        np.testing.assert_allclose(yb.cpu().numpy(), ya.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.grad.cpu().numpy(), a.grad.numpy(), rtol=1e-5, atol=1e-6)
    T = minidl.tensor(1.3, device=device, requires_grad=True)
    softmax(minidl.tensor(x, device=device), 1, temperature=T)[:, 0].sum().backward()
    assert T.grad.device == device

