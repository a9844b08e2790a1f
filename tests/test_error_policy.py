"""The exception policy of minidl/errors.py, swept over the ops and layers: the same kind of
mistake raises the same class everywhere, and every message starts with the op or layer
that refused it.

    TypeError   not a Tensor, a wrong dtype, an argument of the wrong Python type
    ShapeError  a tensor of the wrong rank or shape (a RuntimeError and a ValueError)
    ValueError  a bad argument value
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import minidl
import minidl.nn.functional as F
from minidl import nn
from minidl.errors import ShapeError


def t(*shape, dtype=np.float32):
    return minidl.tensor(np.random.default_rng(0).random(shape).astype(dtype))


def ints(*shape):
    return minidl.tensor(np.ones(shape, dtype=np.int64))


# (label, call, expected class, expected message prefix)
SHAPE = [
    ("conv2d rank", lambda: F.conv2d(t(3, 4), t(2, 3, 3, 3)), "conv2d: "),
    ("conv2d channels", lambda: F.conv2d(t(1, 2, 8, 8), t(4, 3, 3, 3)), "conv2d: "),
    ("conv2d too small", lambda: F.conv2d(t(1, 3, 2, 2), t(4, 3, 3, 3)), "conv2d: "),
    ("conv2d bias", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), t(3)), "conv2d: "),
    ("max_pool2d rank", lambda: F.max_pool2d(t(3, 4), 2), "max_pool2d: "),
    ("avg_pool2d rank", lambda: F.avg_pool2d(t(3, 4), 2), "avg_pool2d: "),
    ("adaptive_avg_pool2d rank", lambda: F.adaptive_avg_pool2d(t(3, 4), 2),
     "adaptive_avg_pool2d: "),
    ("adaptive_max_pool2d rank", lambda: F.adaptive_max_pool2d(t(3, 4), 2),
     "adaptive_max_pool2d: "),
    ("batch_norm stats", lambda: F.batch_norm(t(2, 3, 4, 4), t(4), t(4)), "batch_norm: "),
    ("linear", lambda: F.linear(t(3, 4), t(5, 6)), "linear: "),
    ("linear bias", lambda: F.linear(t(3, 4), t(5, 4), t(3)), "linear: "),
    ("matmul", lambda: minidl.matmul(t(3, 4), t(5, 6)), "matmul: "),
    ("reshape", lambda: t(3, 4).reshape(5, 5), "reshape: "),
    ("cat", lambda: minidl.cat([t(3, 4), t(3, 5)]), "cat: "),
    ("stack", lambda: minidl.stack([t(3, 4), t(3, 5)]), "stack: "),
    ("expand", lambda: t(3, 4).expand(3, 5), "expand: "),
    ("add broadcast", lambda: t(3, 4) + t(3, 5), "add: "),
    ("mse_loss", lambda: F.mse_loss(t(3, 4), t(3, 5)), "mse_loss: "),
    ("cross_entropy target", lambda: F.cross_entropy(t(3, 4), minidl.tensor([1, 2])),
     "cross_entropy: "),
    ("nll_loss target", lambda: F.nll_loss(t(3, 4), minidl.tensor([1, 2])), "nll_loss: "),
    ("dropout2d rank", lambda: F.dropout2d(t(3, 4)), "dropout2d: "),
    ("Conv2d channels", lambda: nn.Conv2d(3, 4, 3)(t(1, 2, 8, 8)), "Conv2d(3, 4, "),
    ("Conv2d too small", lambda: nn.Conv2d(3, 4, 3)(t(1, 3, 2, 2)), "Conv2d(3, 4, "),
    ("Linear", lambda: nn.Linear(4, 5)(t(3, 6)), "Linear(in_features=4"),
    ("MaxPool2d rank", lambda: nn.MaxPool2d(2)(t(3, 4)), "MaxPool2d("),
    ("BatchNorm2d rank", lambda: nn.BatchNorm2d(3)(t(2, 3, 4)), "BatchNorm2d(3"),
    ("BatchNorm1d channels", lambda: nn.BatchNorm1d(3)(t(2, 4)), "BatchNorm1d(3"),
]

TYPE = [
    ("conv2d int input", lambda: F.conv2d(ints(1, 3, 8, 8), t(4, 3, 3, 3)), "conv2d: "),
    ("conv2d ndarray", lambda: F.conv2d(np.zeros((1, 3, 8, 8)), t(4, 3, 3, 3)), "conv2d: "),
    ("conv2d stride type", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), stride=1.5),
     "conv2d: "),
    ("conv2d dtype mix", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3, dtype=np.float64)),
     "conv2d: "),
    ("max_pool2d kernel type", lambda: F.max_pool2d(t(1, 1, 4, 4), 1.5), "max_pool2d: "),
    ("max_pool2d ndarray", lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 2), "max_pool2d: "),
    ("avg_pool2d int", lambda: F.avg_pool2d(ints(1, 1, 4, 4), 2), "avg_pool2d: "),
    ("batch_norm int", lambda: F.batch_norm(ints(2, 3), None, None, training=True),
     "batch_norm: "),
    ("linear dtype mix", lambda: F.linear(t(3, 4), t(5, 4, dtype=np.float64)), "linear: "),
    ("matmul dtype mix", lambda: minidl.matmul(t(3, 4), t(4, 2, dtype=np.float64)),
     "matmul: "),
    ("tanh int", lambda: minidl.tanh(ints(3)), "tanh: "),
    ("relu ndarray", lambda: F.relu(np.zeros(3)), "relu: "),
    ("dropout ndarray", lambda: F.dropout(np.zeros(3)), "dropout: "),
    ("Conv2d int input", lambda: nn.Conv2d(3, 4, 3)(ints(1, 3, 8, 8)), "Conv2d(3, 4, "),
    ("Linear int input", lambda: nn.Linear(4, 5)(ints(3, 4)), "Linear(in_features=4"),
    ("Flatten ndarray", lambda: nn.Flatten()(np.zeros(3)), "Flatten("),
]

VALUE = [
    ("conv2d stride 0", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), stride=0), "conv2d: "),
    ("conv2d padding -1", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), padding=-1),
     "conv2d: "),
    ("conv2d padding word", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), padding="full"),
     "conv2d: "),
    ("conv2d same strided", lambda: F.conv2d(t(1, 3, 8, 8), t(4, 3, 3, 3), stride=2,
                                             padding="same"), "conv2d: "),
    ("conv2d groups", lambda: F.conv2d(t(1, 4, 8, 8), t(6, 2, 3, 3), groups=4), "conv2d: "),
    ("max_pool2d padding", lambda: F.max_pool2d(t(1, 1, 8, 8), 2, padding=2), "max_pool2d: "),
    ("max_pool2d stride 0", lambda: F.max_pool2d(t(1, 1, 8, 8), 2, stride=0), "max_pool2d: "),
    ("adaptive output 0", lambda: F.adaptive_avg_pool2d(t(1, 1, 8, 8), 0),
     "adaptive_avg_pool2d: "),
    ("dropout p", lambda: F.dropout(t(3), p=1.5), "dropout: "),
    ("gelu approximate", lambda: F.gelu(t(3), approximate="fast"), "gelu: "),
    ("cross_entropy reduction", lambda: F.cross_entropy(t(3, 4), minidl.tensor([1, 2, 3]),
                                                        reduction="avg"), "cross_entropy: "),
    ("Conv2d groups", lambda: nn.Conv2d(3, 4, 3, groups=2), "Conv2d: "),
    ("Conv2d groups 0", lambda: nn.Conv2d(3, 4, 3, groups=0), "Conv2d: "),
    ("Conv2d padding word", lambda: nn.Conv2d(3, 4, 3, padding="full"), "Conv2d: "),
    ("Dropout p", lambda: nn.Dropout(2.0), "Dropout: "),
    ("CrossEntropyLoss reduction", lambda: nn.CrossEntropyLoss(reduction="avg"),
     "CrossEntropyLoss: "),
]


def _check(call, cls, prefix):
    with pytest.raises(Exception) as info:
        call()
    err = info.value
    assert type(err) is cls or (cls is ValueError and type(err) is ValueError), \
        f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert str(err).startswith(prefix), f"message does not start with {prefix!r}: {err}"
    return err


@pytest.mark.parametrize("label,call,prefix", SHAPE, ids=[c[0] for c in SHAPE])
def test_wrong_shapes_raise_shape_error(label, call, prefix):
    err = _check(call, ShapeError, prefix)
    # catchable as PyTorch raises it for conv/pool/linear (RuntimeError) and batch norm
    # (ValueError)
    assert isinstance(err, RuntimeError) and isinstance(err, ValueError)
    assert re.search(r"\(.*\)", str(err)), f"the message should show a shape: {err}"


@pytest.mark.parametrize("label,call,prefix", TYPE, ids=[c[0] for c in TYPE])
def test_wrong_types_and_dtypes_raise_type_error(label, call, prefix):
    _check(call, TypeError, prefix)


@pytest.mark.parametrize("label,call,prefix", VALUE, ids=[c[0] for c in VALUE])
def test_bad_argument_values_raise_value_error(label, call, prefix):
    _check(call, ValueError, prefix)


def test_shape_error_is_both_classes():
    assert issubclass(ShapeError, RuntimeError) and issubclass(ShapeError, ValueError)
    assert minidl.errors.ShapeError is ShapeError
