"""Argument normalisation and input validation shared by the layers.

Errors name the layer by its repr (``Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1))``),
say what was expected and what came.
"""
from __future__ import annotations

from ...autograd import Tensor


def pair(value, name="argument"):
    """``3 -> (3, 3)``; a tuple/list of two ints stays as a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value), int(value))


def check_tensor(module, x, name="input"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{module!r}: expected a minidl Tensor as {name}, got "
                        f"{type(x).__name__}; wrap arrays with minidl.tensor(...)")


def check_float(module, x, like=None):
    """A floating point Tensor input, of ``like``'s dtype when given (the weight)."""
    check_tensor(module, x)
    if x.dtype.kind not in "fc":
        raise TypeError(f"{module!r}: expected a floating point input, got dtype {x.dtype}; "
                        "convert it with x.float()")
    if like is not None and x.dtype != like.dtype:
        hint = {"float32": "x.float()", "float64": "x.double()"}.get(like.dtype.name,
                                                                      f"x.to({like.dtype})")
        raise TypeError(f"{module!r}: input dtype {x.dtype} does not match the layer's "
                        f"parameter dtype {like.dtype}; convert the input with {hint} "
                        "(or the layer with .to(dtype))")


def fmt_shape(dims):
    """``('N', 3, 'H', 'W') -> '(N, 3, H, W)'``."""
    return "(" + ", ".join(str(d) for d in dims) + ")"


def shape_error(module, expected, x, cls=RuntimeError):
    """The exception to raise for an input of the wrong shape (RuntimeError, as PyTorch's
    conv/linear; BatchNorm's rank errors are ValueError, as PyTorch's)."""
    return cls(f"{module!r}: expected input {expected}, got {x.shape}")
