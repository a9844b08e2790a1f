"""minidl.nn.init: gains and fans equal PyTorch's formulas; each initialiser fills in place,
from the seeded generator, with the bounds / standard deviation PyTorch's formulas give."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import minidl
from minidl import nn
from minidl.nn import init


@pytest.mark.parametrize("nonlinearity,param", [
    ("linear", None), ("conv2d", None), ("conv_transpose2d", None), ("sigmoid", None),
    ("tanh", None), ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
    ("leaky_relu", math.sqrt(5)), ("selu", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    assert init.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(
        nonlinearity, param)


def test_calculate_gain_errors():
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="not a valid number"):
        init.calculate_gain("leaky_relu", "x")


@pytest.mark.parametrize("shape", [(3, 4), (8, 3, 5, 5), (6, 2, 3, 1), (4, 5, 7)])
def test_fans_match_torch(shape):
    assert init._calculate_fan_in_and_fan_out(minidl.zeros(*shape)) == \
        torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(*shape))


def test_fans_need_two_dims():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(minidl.zeros(5))


# Expected (kind, parameter) of each initialiser on a (OUT=64, IN=32, 3, 3) weight, written
# from PyTorch's documented formulas; fan_in = 32*9, fan_out = 64*9.
FAN_IN, FAN_OUT = 32 * 9, 64 * 9
CASES = [
    ("uniform_", dict(a=-0.3, b=0.7), ("uniform", -0.3, 0.7)),
    ("normal_", dict(mean=0.5, std=2.0), ("normal", 0.5, 2.0)),
    ("xavier_uniform_", dict(gain=2.0), ("uniform", -2.0 * math.sqrt(6 / (FAN_IN + FAN_OUT)),
                                         2.0 * math.sqrt(6 / (FAN_IN + FAN_OUT)))),
    ("xavier_normal_", dict(gain=1.5), ("normal", 0.0, 1.5 * math.sqrt(2 / (FAN_IN + FAN_OUT)))),
    ("kaiming_uniform_", {}, ("uniform", -math.sqrt(6 / (1 + 0.0) / FAN_IN),
                              math.sqrt(6 / FAN_IN))),
    ("kaiming_uniform_", dict(a=math.sqrt(5)), ("uniform", -1 / math.sqrt(FAN_IN),
                                                1 / math.sqrt(FAN_IN))),
    ("kaiming_uniform_", dict(mode="fan_out", nonlinearity="relu"),
     ("uniform", -math.sqrt(6 / FAN_OUT), math.sqrt(6 / FAN_OUT))),
    ("kaiming_normal_", dict(nonlinearity="relu"), ("normal", 0.0, math.sqrt(2 / FAN_IN))),
    ("kaiming_normal_", dict(a=0.1, mode="fan_out"),
     ("normal", 0.0, math.sqrt(2 / (1 + 0.01)) / math.sqrt(FAN_OUT))),
]


@pytest.mark.parametrize("name,kwargs,expected", CASES, ids=[c[0] for c in CASES])
def test_initialisers_statistics(name, kwargs, expected):
    w = nn.Parameter(minidl.zeros(64, 32, 3, 3, dtype=minidl.float64))
    out = getattr(init, name)(w, **kwargs)  # in place on a parameter, without no_grad
    assert out is w and w.requires_grad and w.grad_fn is None
    x = w.numpy().ravel()
    tw = torch.zeros(64, 32, 3, 3, dtype=torch.float64)
    getattr(torch.nn.init, name)(tw, **kwargs)
    tx = tw.numpy().ravel()
    n = x.size
    kind, p1, p2 = expected
    if kind == "uniform":
        lo, hi = p1, p2
        for v in (x, tx):  # both within the formula's bounds, and reaching them
            assert v.min() >= lo and v.max() <= hi
            assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
        mean, std = (lo + hi) / 2, (hi - lo) / math.sqrt(12)
    else:
        mean, std = p1, p2
    for v in (x, tx):
        assert abs(v.mean() - mean) < 5 * std / math.sqrt(n)
        assert abs(v.std() - std) < 0.03 * std


def test_initialisers_seeded_and_float32():
    minidl.manual_seed(11)
    a = init.kaiming_normal_(minidl.zeros(10, 10)).numpy().copy()
    minidl.manual_seed(11)
    b = init.kaiming_normal_(minidl.zeros(10, 10)).numpy().copy()
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


def test_constant_zeros_ones_eye():
    w = nn.Parameter(minidl.zeros(3, 4))
    assert np.all(init.constant_(w, 0.25).numpy() == 0.25)
    assert np.all(init.ones_(w).numpy() == 1)
    assert np.all(init.zeros_(w).numpy() == 0)
    np.testing.assert_array_equal(init.eye_(w).numpy(), np.eye(3, 4))
    with pytest.raises(ValueError):
        init.eye_(minidl.zeros(2, 2, 2))


def test_trunc_normal_bounds():
    w = init.trunc_normal_(minidl.zeros(2000, dtype=minidl.float64), std=1.0, a=-0.5, b=1.0)
    x = w.numpy()
    assert x.min() >= -0.5 and x.max() <= 1.0 and len(np.unique(x)) == x.size


def test_kaiming_errors():
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        init.kaiming_uniform_(minidl.zeros(3, 3), mode="fan_avg")
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_uniform_(minidl.zeros(0, 3))


def test_skip_random_fills_leaves_tensors_alone():
    w = minidl.zeros(4, 5)
    with init.skip_random_fills():
        init.kaiming_uniform_(w)
        init.normal_(w)
        init.trunc_normal_(w)
        init.constant_(w[0:0], 1.0)        # deterministic fills still run
    assert (w.numpy() == 0).all()
    init.normal_(w)                         # and random ones run again after the block
    assert (w.numpy() != 0).any()
