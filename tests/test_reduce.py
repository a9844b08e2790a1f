"""Reductions with dim/keepdim: PyTorch parity and gradcheck (inputs without ties)."""
import numpy as np
import pytest
import torch

import minidl
from helpers import check_op, distinct, to_host

DIMS = [None, 0, 1, -1, (0, 2), (1, -1)]


@pytest.mark.parametrize("dim,keepdim", [(d, k) for d in DIMS for k in (False, True)
                                         if d is not None or not k])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_sum_mean(name, dim, keepdim, rng, device):
    x = rng.standard_normal((2, 3, 4))
    kw = {} if dim is None else dict(dim=dim, keepdim=keepdim)
    check_op(lambda t: getattr(t, name)(**kw), lambda t: getattr(t, name)(**kw), [x],
             device=device)


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("dim", [None, 0, (1, 2), -1])
@pytest.mark.parametrize("name", ["var", "std"])
def test_var_std(name, dim, correction, rng, device):
    x = rng.standard_normal((3, 4, 5))
    check_op(lambda t: getattr(t, name)(dim=dim, correction=correction),
             lambda t: getattr(t, name)(dim=dim, correction=correction), [x], device=device)
    check_op(lambda t: getattr(t, name)(dim=dim, unbiased=False, keepdim=True),
             lambda t: getattr(t, name)(dim=dim, unbiased=False, keepdim=True), [x],
             device=device)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_dim(name, dim, keepdim, rng, device):
    x = distinct(rng, (3, 4, 5))
    check_op(lambda t: getattr(t, name)(dim=dim, keepdim=keepdim),
             lambda t: getattr(t, name)(dim=dim, keepdim=keepdim), [x], device=device)


@pytest.mark.parametrize("name", ["max", "min", "amax"])
def test_max_min_all(name, rng, device):
    check_op(lambda t: getattr(t, name)(), lambda t: getattr(t, name)(), [distinct(rng, (3, 4))],
             device=device)


def test_max_all_ties_share_gradient_like_pytorch(device):
    x = np.array([[1.0, 3.0], [3.0, 2.0]])
    check_op(lambda t: t.max(), lambda t: t.max(), [x], gradcheck=False, device=device)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_argmin(name, rng, device):
    x = distinct(rng, (3, 4, 5))
    for kw in ({}, dict(dim=1), dict(dim=-1, keepdim=True), dict(dim=0)):
        got = getattr(minidl.tensor(x, device=device), name)(**kw)
        want = getattr(torch.tensor(x), name)(**kw)
        assert got.dtype == np.int64
        assert got.device == device
        np.testing.assert_array_equal(to_host(got), want.numpy())


def test_max_dim_returns_named_values_indices(rng, device):
    x = minidl.tensor(distinct(rng, (3, 4)), device=device)
    out = x.max(dim=1)
    values, indices = out
    assert out.values is values and out.indices is indices
    np.testing.assert_array_equal(to_host(indices), to_host(x).argmax(1))


def test_dim_out_of_range_names_the_op():
    x = minidl.zeros(2, 3)
    with pytest.raises(IndexError, match="sum: dim 2 is out of range"):
        x.sum(dim=2)


def test_mean_of_integers_is_refused():
    with pytest.raises(TypeError, match="mean: expected a floating point"):
        minidl.tensor([1, 2]).mean()
