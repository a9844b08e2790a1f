"""Input validation shared by the layers (argument normalisation: ``minidl.geometry``).

Errors name the layer by its repr (``Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1))``),
say what was expected and what came.
"""
from __future__ import annotations

from ...autograd import Tensor
from ...errors import ShapeError


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


def shape_error(module, expected, x, cls=ShapeError):
    """The exception to raise for an input of the wrong shape (``ShapeError``: a
    RuntimeError as PyTorch's conv/linear raise, and a ValueError as its BatchNorm)."""
    return cls(f"{module!r}: expected input {expected}, got {x.shape}")


def as_layer_error(exc, module, op):
    """``exc``, raised by the functional ``op`` (``'conv2d'``) for a layer's call, as the
    same class of exception with the message starting with the layer's repr instead of
    ``op: `` (``Conv2d(3, 16, ...): input ... is too small ...``). Another message is
    returned unchanged."""
    prefix = f"{op}: "
    message = str(exc)
    if not message.startswith(prefix):
        return exc
    return type(exc)(f"{module!r}: {message[len(prefix):]}")
