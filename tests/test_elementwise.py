"""Elementwise ops: PyTorch parity (float64 tight, float32 loose) and gradcheck, with broadcasting."""
import numpy as np
import pytest
import torch

import minidl
from helpers import check_op, rand_away_from

SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), ())]


@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcast(op, sa, sb, rng):
    a = rng.standard_normal(sa)
    b = rng.uniform(0.5, 2.0, sb) * rng.choice([-1, 1], sb)  # away from 0 for division
    f = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y,
         "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[op]
    check_op(f, f, [a, b])


def test_pow_tensor_and_scalar(rng):
    a = rng.uniform(0.5, 2.0, (3, 4))
    b = rng.standard_normal((4,))
    check_op(lambda x, y: x ** y, lambda x, y: x ** y, [a, b])
    check_op(lambda x: x ** 3, lambda x: x ** 3, [rng.standard_normal((2, 3))])
    check_op(lambda x: x ** -1.5, lambda x: x ** -1.5, [a])
    check_op(lambda x: 2.0 ** x, lambda x: 2.0 ** x, [a])


def test_reflected_scalars_keep_dtype(rng):
    x = minidl.tensor(rng.standard_normal(3).astype(np.float32))
    for y in (2 * x, x * 2.5, 1 - x, 3 / x, x ** 2, -x, x + np.float64(1)):
        assert y.dtype == np.float32
    check_op(lambda x: 1 - 2 * x / 3 + 0.5, lambda x: 1 - 2 * x / 3 + 0.5, [rng.standard_normal(4)])


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "abs", "neg"])
def test_unary(name, rng):
    x = rng.uniform(0.2, 2.0, (3, 5))
    if name in ("abs", "neg", "exp"):
        x = rand_away_from(rng, (3, 5))
    md = {"neg": lambda t: -t}.get(name, getattr(minidl, name, None))
    th = {"neg": lambda t: -t}.get(name, getattr(torch, name, None))
    check_op(md, th, [x])


def test_clamp(rng):
    x = rand_away_from(rng, (4, 5), avoid=(-0.5, 0.7))
    check_op(lambda t: minidl.clamp(t, -0.5, 0.7), lambda t: torch.clamp(t, -0.5, 0.7), [x])
    check_op(lambda t: t.clamp(min=0.1), lambda t: t.clamp(min=0.1), [x + 0.05])
    check_op(lambda t: t.clamp(max=0.1), lambda t: t.clamp(max=0.1), [x + 0.05])
    with pytest.raises(ValueError, match="at least one of min and max"):
        minidl.clamp(minidl.tensor(x))


def test_clamp_gradient_at_the_bound_matches_pytorch():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    check_op(lambda t: t.clamp(0.0, 1.0), lambda t: t.clamp(0.0, 1.0), [x], gradcheck=False)


def test_maximum_minimum(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    check_op(minidl.maximum, torch.maximum, [a, b])
    check_op(minidl.minimum, torch.minimum, [a, b])


def test_maximum_tie_splits_gradient_like_pytorch():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 5.0, 3.0])
    check_op(minidl.maximum, torch.maximum, [a, b], gradcheck=False)
    check_op(minidl.minimum, torch.minimum, [a, b], gradcheck=False)


def test_where(rng):
    c = rng.standard_normal((3, 4)) > 0
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((1, 4))
    check_op(lambda cc, x, y: minidl.where(cc, x, y), lambda cc, x, y: torch.where(cc, x, y),
             [c, a, b])
    x = minidl.tensor(a)
    with pytest.raises(TypeError, match="boolean"):
        minidl.where(x, x, x)


def test_comparisons_carry_no_grad(rng):
    a = minidl.tensor(rng.standard_normal((3,)), requires_grad=True)
    b = minidl.tensor(rng.standard_normal((3,)))
    for r in (a > b, a < b, a >= 0, a <= b, a == b, a != b):
        assert r.dtype == np.bool_ and not r.requires_grad
    np.testing.assert_array_equal((a > b).numpy(), a.numpy() > b.numpy())


def test_int_tensor_times_float_is_float32():
    x = minidl.tensor([1, 2, 3])
    assert x.dtype == np.int64
    assert (x * 0.5).dtype == np.float32
    assert (x * 2).dtype == np.int64
