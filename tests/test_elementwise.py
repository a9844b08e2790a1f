"""Elementwise ops: PyTorch parity (float64 tight, float32 loose) and gradcheck, with broadcasting."""
import numpy as np
import pytest
import torch

import minidl
from helpers import check_op, rand_away_from, to_host

SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), ()),
               ((4, 3, 2, 5), (1, 3, 1, 1)),    # a per-channel bias: batch axis summed first
               ((1, 1, 2, 1), (4, 3, 2, 5))]


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcast(op, sa, sb, rng, device):
    a = rng.standard_normal(sa)
    b = rng.uniform(0.5, 2.0, sb) * rng.choice([-1, 1], sb)  # away from 0 for division
    f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
         "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    check_op(f, f, [a, b], device=device)


def test_pow_tensor_and_scalar(rng, device):
    a = rng.uniform(0.5, 2.0, (3, 4))
    b = rng.standard_normal((4,))
    check_op(lambda x, y: x ** y, lambda x, y: x ** y, [a, b], device=device)
    check_op(lambda x: x ** 3, lambda x: x ** 3, [rng.standard_normal((2, 3))], device=device)
    check_op(lambda x: x ** -1.5, lambda x: x ** -1.5, [a], device=device)
    check_op(lambda x: 2.0 ** x, lambda x: 2.0 ** x, [a], device=device)


def test_reflected_scalars_keep_dtype(rng, device):
    x = minidl.tensor(rng.standard_normal(3).astype(np.float32), device=device)
    for y in (2 * x, x * 2.5, 1 - x, 3 / x, x ** 2, -x, x + np.float64(1)):
        assert y.dtype == np.float32
    check_op(lambda x: 1 - 2 * x / 3 + 0.5, lambda x: 1 - 2 * x / 3 + 0.5, [rng.standard_normal(4)],
             device=device)


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "neg"])
def test_unary(name, rng, device):
    x = rng.uniform(0.2, 2.0, (3, 5))
    if name in ("abs", "neg", "exp"):
        x = rand_away_from(rng, (3, 5))
    md = {"neg": lambda t: -t}.get(name, getattr(minidl, name, None))
    th = {"neg": lambda t: -t}.get(name, getattr(torch, name, None))
    check_op(md, th, [x], device=device)


def test_clamp(rng, device):
    x = rand_away_from(rng, (4, 5), avoid=(-0.5, 0.7))
    check_op(lambda t: minidl.clamp(t, -0.5, 0.7), lambda t: torch.clamp(t, -0.5, 0.7), [x],
             device=device)
    check_op(lambda t: t.clamp(min=0.1), lambda t: t.clamp(min=0.1), [x + 0.05], device=device)
    check_op(lambda t: t.clamp(max=0.1), lambda t: t.clamp(max=0.1), [x + 0.05], device=device)
    with pytest.raises(ValueError, match="at least one of min and max"):
        minidl.clamp(minidl.tensor(x))


def test_clamp_gradient_at_the_bound_matches_pytorch(device):
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    check_op(lambda t: t.clamp(0.0, 1.0), lambda t: t.clamp(0.0, 1.0), [x], gradcheck=False,
             device=device)


def test_maximum_minimum(rng, device):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    check_op(minidl.maximum, torch.maximum, [a, b], device=device)
    check_op(minidl.minimum, torch.minimum, [a, b], device=device)


def test_maximum_tie_splits_gradient_like_pytorch(device):
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 5.0, 3.0])
    check_op(minidl.maximum, torch.maximum, [a, b], gradcheck=False, device=device)
    check_op(minidl.minimum, torch.minimum, [a, b], gradcheck=False, device=device)


def test_where(rng, device):
    c = rng.standard_normal((3, 4)) > 0
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((1, 4))
    check_op(lambda cc, x, y: minidl.where(cc, x, y), lambda cc, x, y: torch.where(cc, x, y),
             [c, a, b], device=device)
    x = minidl.tensor(a)
    with pytest.raises(TypeError, match="boolean"):
        minidl.where(x, x, x)


def test_comparisons_carry_no_grad(rng, device):
    a = minidl.tensor(rng.standard_normal((3,)), requires_grad=True, device=device)
    b = minidl.tensor(rng.standard_normal((3,)), device=device)
    for r in (a > b, a < b, a >= 0, a <= b, a == b, a != b):
        assert r.dtype == np.bool_ and not r.requires_grad
    np.testing.assert_array_equal(to_host(a > b), to_host(a) > to_host(b))


def test_int_tensor_times_float_is_float32(device):
    x = minidl.tensor([1, 2, 3], device=device)
    assert x.dtype == np.int64
    assert (x * 0.5).dtype == np.float32
    assert (x * 2).dtype == np.int64
