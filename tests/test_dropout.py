"""dropout and dropout2d: inverted scaling, the mean preserved, seeded repeatability,
evaluation is the identity, the gradient is the scaled mask."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from helpers import to_host
from minidl.ops.dropout import dropout, dropout2d


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_kept_values_are_scaled_and_the_rest_zeroed(rng, p, device):
    x = rng.uniform(1.0, 2.0, (50, 40))           # no zeros in the input
    y = to_host(dropout(minidl.tensor(x, device=device), p))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert 0 < kept.sum() < kept.size


@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_mean_and_drop_rate_are_preserved_statistically(p, device):
    n = 200_000
    y = to_host(dropout(minidl.ones(n, device=device), p))
    # Binomial: the fraction zeroed has std sqrt(p (1 - p) / n) < 0.0012; allow 5 sigma.
    assert abs((y == 0).mean() - p) < 0.006
    assert abs(y.mean() - 1.0) < 0.006 / (1 - p)


def test_same_seed_same_mask_different_seed_different_mask(device):
    x = minidl.ones(100, 10, device=device)
    minidl.manual_seed(7)
    a = to_host(dropout(x, 0.5))
    b = to_host(dropout(x, 0.5))
    minidl.manual_seed(7)
    c = to_host(dropout(x, 0.5))
    minidl.manual_seed(8)
    d = to_host(dropout(x, 0.5))
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b) and not np.array_equal(a, d)


@pytest.mark.parametrize("fn", [dropout, dropout2d])
def test_eval_mode_and_p_zero_return_the_input(rng, fn, device):
    x = minidl.tensor(rng.standard_normal((2, 3, 4, 4)), requires_grad=True, device=device)
    assert fn(x, 0.5, training=False) is x
    assert fn(x, 0.0) is x


@pytest.mark.parametrize("fn", [dropout, dropout2d])
def test_p_one_gives_zeros_and_zero_gradient(rng, fn, device):
    x = minidl.tensor(rng.standard_normal((2, 3, 2, 2)), requires_grad=True, device=device)
    y = fn(x, 1.0)
    np.testing.assert_array_equal(to_host(y), 0)
    y.sum().backward()
    np.testing.assert_array_equal(to_host(x.grad), 0)


def test_gradient_is_the_scaled_mask(rng, device):
    p = 0.4
    x = minidl.tensor(rng.uniform(1.0, 2.0, (6, 7)), requires_grad=True, device=device)
    y = dropout(x, p)
    g = rng.standard_normal((6, 7))
    y.backward(minidl.tensor(g, device=device))
    mask = to_host(y) / to_host(x)                 # 0 or 1 / (1 - p)
    assert set(np.round(np.unique(mask), 12)) <= {0.0, round(1 / (1 - p), 12)}
    np.testing.assert_allclose(to_host(x.grad), g * mask, rtol=1e-12)


@pytest.mark.parametrize("fn,shape", [(dropout, (3, 4)), (dropout2d, (2, 3, 2, 2))])
def test_gradcheck_with_a_fixed_seed(rng, fn, shape, device):
    def f(x):
        minidl.manual_seed(3)      # the same mask at every evaluation
        return fn(x, 0.3)
    minidl.gradcheck(f, [minidl.tensor(rng.standard_normal(shape), requires_grad=True,
                                       device=device)])


@pytest.mark.parametrize("fn", [dropout, dropout2d])
def test_float32_stays_float32(rng, fn, device):
    x = minidl.tensor(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), requires_grad=True,
                      device=device)
    y = fn(x, 0.3)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_dropout2d_zeroes_whole_channels(rng, device):
    p = 0.5
    x = rng.uniform(1.0, 2.0, (8, 6, 3, 4))
    y = to_host(dropout2d(minidl.tensor(x, device=device), p))
    per_channel = (y == 0).reshape(8, 6, -1)
    assert (per_channel.all(axis=2) | ~per_channel.any(axis=2)).all()   # all or nothing
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-12)
    assert 0 < per_channel.all(axis=2).sum() < 48


def test_dropout2d_on_3d_input_drops_along_the_last_dim_like_pytorch(rng, device):
    # (N, C, L), as PyTorch 2.x interprets a 3-D input: one draw per (n, c).
    y = to_host(dropout2d(minidl.tensor(rng.uniform(1, 2, (4, 5, 6)), device=device), 0.5))
    zero = (y == 0)
    assert (zero.all(axis=2) | ~zero.any(axis=2)).all()


def test_inplace_without_a_graph_overwrites_the_input(rng, device):
    x = minidl.tensor(rng.uniform(1, 2, (20, 20)), device=device)
    data = x.data
    y = dropout(x, 0.5, inplace=True)
    assert y is x and x.data is data and (to_host(x) == 0).any()


def test_inplace_with_a_graph_returns_a_new_tensor(rng, device):
    x0 = rng.uniform(1, 2, (20, 20))
    x = minidl.tensor(x0, requires_grad=True, device=device)
    h = x * 1.0
    y = dropout(h, 0.5, inplace=True)
    assert y is not h
    np.testing.assert_array_equal(to_host(h), x0)      # untouched: safe for the graph
    y.sum().backward()
    np.testing.assert_allclose(to_host(x.grad), to_host(y) / x0, rtol=1e-12)


@pytest.mark.parametrize("fn", [dropout, dropout2d])
@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5"])
def test_error_p_outside_zero_one(fn, p):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: p must be in \[0, 1\] \(the "
                                         r"probability of zeroing an element\), got"):
        fn(minidl.zeros(2, 3, 2, 2), p)


def test_error_dropout2d_shape_and_integer_input():
    with pytest.raises(RuntimeError, match=r"dropout2d: expected input \(N, C, H, W\) \(or "
                                           r"\(N, C, L\)\), got \(4, 5\)"):
        dropout2d(minidl.zeros(4, 5))
    with pytest.raises(TypeError, match="dropout: expected a floating point tensor, got dtype "
                                        "int64"):
        dropout(minidl.tensor([1, 2, 3]))


# --- devices ----------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [dropout, dropout2d])
def test_same_seed_gives_the_same_mask_on_every_device(device, rng, fn):
    """Masks are drawn on the host from the seeded generator and moved, so a seed gives
    the same mask on the GPU as on the CPU."""
    x = rng.uniform(1, 2, (4, 3, 2, 2)).astype(np.float32)
    results = []
    for d in ("cpu", device):
        minidl.manual_seed(11)
        xt = minidl.tensor(x, device=d, requires_grad=True)
        y = fn(xt, 0.5)
        assert y.device == d and y.dtype == np.float32
        y.sum().backward()
        results.append((y.cpu().numpy(), xt.grad.cpu().numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
