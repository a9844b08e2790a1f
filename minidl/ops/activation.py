"""Activation functions: relu, leaky_relu, tanh, sigmoid, gelu, softmax, log_softmax.

Shapes: every function here maps an input ``x`` of any shape ``(*)`` to an output
``y`` of the same shape ``(*)``; the upstream gradient ``gy`` and the input gradient
``gx`` have that shape too. softmax and log_softmax normalise along one axis ``dim``
(for logits ``(N, C)`` that is ``dim=1``, the class axis).

Each backward is written with the forward's *output* where that is cheaper
(``tanh' = 1 - y^2``, ``sigmoid' = y (1 - y)``, ``softmax: gx = y (gy - sum(gy y))``),
so the input need not be kept.

Higher-order gradients (create_graph=True): each Function's ``differentiable_backward``
is its formula again on Tensors. The output ``y`` it uses is the output Tensor itself
(differentiating through it reaches x); masks are constants; anything else the forward
computed from x (GELU's tanh and normal CDF) is recomputed with recorded ops. For that,
softmax and log_softmax with a temperature Tensor also keep their input x (the recorded
gradient of T needs z = x / T as a function of x and T).

Dtypes: float32 stays float32. Python floats are "weak" scalars in NumPy 2 and CuPy
(``float32_array * 0.5`` is float32), so the constants below are plain Python floats;
never multiply by a NumPy float64 scalar or 0-d float64 array, which would upcast.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels.activation import RELU, TANH
from .elementwise import exp, where
from .utils import normalize_dim, unbroadcast


def _require_float(x, name):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {x.dtype}")


# --- relu and leaky_relu ---------------------------------------------------------------

class ReLUFunction(Function):
    """y = relu(x).    x, y, gy, gx: (*); mask: (*) bool

        y    = 0 where x < 0, else x          (NaN and -0.0 pass unchanged, as in PyTorch)
        mask = not (x <= 0)                   (where the gradient passes)
        gx   = gy where mask, else 0          (0 at the kink x = 0, as in PyTorch)

    Both run through the relu kernel family (``kernels/activation.py``: the reference is
    exactly these formulas; float32/float64 NumPy arrays take one-pass kernels). The mask
    is only made when a gradient will be asked for.
    """

    @staticmethod
    def forward(ctx, x):
        y, mask = RELU.code(x).relu_forward(x, mask=ctx.needs_input_grad[0])
        ctx.save_for_backward(mask)           # the boolean mask is all backward needs
        return y

    @staticmethod
    def backward(ctx, gy):
        (mask,) = ctx.saved_tensors
        return RELU.code(gy, mask).relu_backward(gy, mask)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (mask,) = ctx.saved_tensors            # a constant boolean Tensor
        return where(mask, gy, 0.0)


class LeakyReLUFunction(Function):
    """y = x where x > 0, else negative_slope * x.    x, y, gy, gx: (*)

    dy/dx = 1 where x > 0, else negative_slope (also at x = 0, as in PyTorch).
    """

    @staticmethod
    def forward(ctx, x, negative_slope):
        xp = backend.get_array_module(x)
        positive = x > 0
        ctx.save_for_backward(positive)
        ctx.negative_slope = negative_slope
        return xp.where(positive, x, x * negative_slope)

    @staticmethod
    def backward(ctx, gy):
        (positive,) = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        return xp.where(positive, gy, gy * ctx.negative_slope)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (positive,) = ctx.saved_tensors        # a constant boolean Tensor
        return where(positive, gy, gy * ctx.negative_slope)


def _inplace(input, name, out_of_place, in_place=None):  # noqa: A002
    """``inplace=True``: the result written into ``input`` (which is returned), tracked by
    its version counter like every in-place op; a leaf that requires grad is refused, as
    in PyTorch. The machinery lives with the other in-place ops, in tensor_methods (same
    layer; imported here, lazily, because tensor_methods imports the ops)."""
    from ..tensor_methods import apply_inplace
    return apply_inplace(input, name, out_of_place, in_place)


def relu(input, inplace=False):  # noqa: A002 - PyTorch's name
    """max(input, 0), elementwise. ``inplace=True`` writes the result into ``input``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"relu: expected a Tensor, got {type(input).__name__}")
    if inplace:
        return _inplace(input, "relu(inplace=True)", ReLUFunction.apply,
                        lambda a: RELU.code(a).relu_inplace(a))
    return ReLUFunction.apply(input)


def leaky_relu(input, negative_slope=0.01, inplace=False):  # noqa: A002
    """input where input > 0, else negative_slope * input. ``inplace=True`` writes the
    result into ``input``."""
    _require_float(input, "leaky_relu")
    slope = float(negative_slope)
    if inplace:
        return _inplace(input, "leaky_relu(inplace=True)",
                        lambda x: LeakyReLUFunction.apply(x, negative_slope=slope))
    return LeakyReLUFunction.apply(input, negative_slope=slope)


# --- tanh and sigmoid ------------------------------------------------------------------

class TanhFunction(Function):
    """y = tanh(x).    x, y, gy, gx: (*)

    dy/dx = 1 - tanh(x)^2 = 1 - y^2, so only y is kept::

        y  = tanh(x)
        gx = gy * (1 - y^2)

    Both lines run through the tanh kernel family (``kernels/activation.py``: the
    reference is exactly these formulas; float32 arrays take fast paths).
    """

    @staticmethod
    def forward(ctx, x):
        y = TANH.code(x).tanh_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return TANH.code(gy, y).tanh_backward(gy, y)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (y,) = ctx.saved_tensors               # the output Tensor: d/dx reaches x through it
        return gy * (1 - y * y)


class SigmoidFunction(Function):
    """y = 1 / (1 + exp(-x)).    x, y, gy, gx: (*)

    Numerically stable for large |x|: exp is only ever taken of -|x| <= 0, so it
    cannot overflow::

        x >= 0:  y = 1 / (1 + e),   e = exp(-x)
        x <  0:  y = e / (1 + e),   e = exp(x)      (the same value, rewritten)

    dy/dx = y (1 - y).
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))                        # in (0, 1]
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        return gy * y * (1 - y)

    differentiable_backward = backward         # y: the output Tensor there


def tanh(input):  # noqa: A002
    _require_float(input, "tanh")
    return TanhFunction.apply(input)


def sigmoid(input):  # noqa: A002
    """1 / (1 + exp(-input)), without overflow for large |input|."""
    _require_float(input, "sigmoid")
    return SigmoidFunction.apply(input)


# --- gelu ------------------------------------------------------------------------------
# GELU(x) = x * Phi(x), Phi the standard normal CDF, Phi(x) = (1 + erf(x / sqrt 2)) / 2.
# NumPy has no erf (SciPy does, but minidl does not depend on it), so _normal_cdf computes
# Phi from two classic expansions that need only exp, arithmetic and where, which NumPy
# and CuPy share. Both run on every element (vectorised) and `where` picks per element.

_SQRT_2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_ERF_SPLIT = 2.5        # |z| below: series for erf; above: continued fraction for erfc
_SERIES_TERMS = 45      # enough for |z| <= 2.5 to double precision (error < 2e-15)
_CF_DEPTH = 35          # enough for |z| >= 2.5 to double precision (rel. error < 1e-13)


def _normal_cdf(x):
    """Phi(x) = P(Z <= x) for a standard normal Z, elementwise, in x's dtype.

    With z = |x| / sqrt(2):

    * |z| < 2.5, a series with only positive terms (no cancellation)::

          erf(z) = 2/sqrt(pi) * exp(-z^2) * sum_n z (2 z^2)^n / (1 * 3 * 5 * ... * (2n + 1))

    * |z| >= 2.5, the continued fraction, evaluated from the bottom up::

          erfc(z) = exp(-z^2) / sqrt(pi) / (z + (1/2) / (z + (2/2) / (z + (3/2) / (z + ...))))

    then Phi(x) = (1 + erf(z)) / 2 for x >= 0 and erfc(z) / 2 for x < 0, so the tiny
    left tail is computed directly rather than as 1 - (almost 1).
    """
    xp = backend.get_array_module(x)
    z = xp.abs(x) / _SQRT_2
    # erf(z) for small z (z clipped so the large-z elements stay finite; `where` drops them).
    s = xp.minimum(z, _ERF_SPLIT)
    term, total = s, s
    for n in range(1, _SERIES_TERMS):
        term = term * (2 * s * s) / (2 * n + 1)
        total = total + term
    erfc_small = 1 - (2 / _SQRT_PI) * xp.exp(-s * s) * total
    # erfc(z) for large z.
    l = xp.maximum(z, _ERF_SPLIT)  # noqa: E741
    f = l
    for k in range(_CF_DEPTH, 0, -1):
        f = l + (k / 2) / f
    erfc_large = xp.exp(-l * l) / (_SQRT_PI * f)
    erfc_z = xp.where(z < _ERF_SPLIT, erfc_small, erfc_large)   # erfc(|x| / sqrt 2)
    return xp.where(x >= 0, 1 - erfc_z / 2, erfc_z / 2)


def _normal_pdf(x):
    """phi(x) = exp(-x^2 / 2) / sqrt(2 pi), on arrays or (recorded) Tensors."""
    e = exp(-x * x / 2) if isinstance(x, Tensor) else backend.get_array_module(x).exp(-x * x / 2)
    return _INV_SQRT_2PI * e


class NormalCDFFunction(Function):
    """Phi(x), the standard normal CDF (``_normal_cdf``), as a differentiable op: GELU's
    recorded backward needs Phi(x) as a function of x, since Phi' = phi.    x, y: (*)"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _normal_cdf(x)

    @staticmethod
    def backward(ctx, gy):                     # dPhi/dx = phi(x)
        (x,) = ctx.saved_tensors
        return gy * _normal_pdf(x)

    differentiable_backward = backward         # x: the input Tensor there, phi recorded


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


class GELUFunction(Function):
    """Gaussian error linear unit.    x, y, gy, gx: (*)

    approximate='none':  y = x Phi(x)
                         dy/dx = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    approximate='tanh':  y = x (1 + tanh(u)) / 2,     u = sqrt(2/pi) (x + 0.044715 x^3)
                         dy/dx = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2),
                         t = tanh(u)
    """

    @staticmethod
    def forward(ctx, x, approximate):
        xp = backend.get_array_module(x)
        ctx.approximate = approximate
        if approximate == "tanh":
            t = xp.tanh(_GELU_C * (x + _GELU_A * x * x * x))
            ctx.save_for_backward(x, t)
            return x * (1 + t) / 2
        cdf = _normal_cdf(x)
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, gy):
        xp = backend.get_array_module(gy)
        if ctx.approximate == "tanh":
            x, t = ctx.saved_tensors
            du = _GELU_C * (1 + 3 * _GELU_A * x * x)
            return gy * ((1 + t) / 2 + x * (1 - t * t) / 2 * du)
        x, cdf = ctx.saved_tensors
        pdf = _INV_SQRT_2PI * xp.exp(-x * x / 2)
        return gy * (cdf + x * pdf)

    @staticmethod
    def differentiable_backward(ctx, gy):
        # The saved t and cdf are constants here: both are recomputed from the input
        # Tensor x, so d/dx of this formula is GELU's second derivative.
        x, _ = ctx.saved_tensors
        if ctx.approximate == "tanh":
            t = tanh(_GELU_C * (x + _GELU_A * x * x * x))
            du = _GELU_C * (1 + 3 * _GELU_A * x * x)
            return gy * ((1 + t) / 2 + x * (1 - t * t) / 2 * du)
        return gy * (NormalCDFFunction.apply(x) + x * _normal_pdf(x))


def gelu(input, approximate="none"):  # noqa: A002
    """x * Phi(x) (exact, with the normal CDF) or its tanh approximation."""
    _require_float(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELUFunction.apply(input, approximate=approximate)


# --- softmax and log_softmax with temperature --------------------------------------------

class SoftmaxFunction(Function):
    """y = softmax(x / T) along ``axis``.

    x, y, gy, gx: (*); the temperature T is a Python number (``temperature``) or an array
    ``t`` that broadcasts to x's shape (usually 0-d: a learnable scalar); gt: t's shape.
    ``axis`` is None only for a 0-d x (then y = 1).

    Forward, stable: with z = x / T and m = max(z) along the axis (exp never overflows)::

        y = exp(z - m) / sum(exp(z - m))

    Backward (the Jacobian of softmax is diag(y) - y y^T)::

        gz = y * (gy - sum(gy * y))                  sums along the axis
        gx = gz / T                                  since z = x / T
        gT = sum over all elements of gz * (-x / T^2) = sum(-gz * z) / T
             (summed down to t's shape when t is not a scalar)
    """

    @staticmethod
    def forward(ctx, x, t, axis, temperature):
        z, T = _scale(ctx, x, t, temperature)
        xp = backend.get_array_module(x)
        e = xp.exp(z - z.max(axis=axis, keepdims=True))
        y = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y, z, T, _input_for_t(x, t))
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, gy):
        y, z, T, _ = ctx.saved_tensors
        gz = y * (gy - (gy * y).sum(axis=ctx.axis, keepdims=True))
        return _unscale(ctx, gz, z, T)

    @staticmethod
    def differentiable_backward(ctx, gy):
        y, _, T, x = ctx.saved_tensors         # y: the output Tensor, so gz is recorded in x
        gz = y * (gy - (gy * y).sum(dim=ctx.axis, keepdim=True))
        return _unscale_recorded(ctx, gz, T, x)


class LogSoftmaxFunction(Function):
    """y = log_softmax(x / T) along ``axis``; shapes as in ``SoftmaxFunction``.

    Forward, stable: z = x / T, s = z - max(z), y = s - log(sum(exp(s))).

    Backward: dy_i/dz_j = delta_ij - softmax(z)_j, so::

        gz = gy - softmax(z) * sum(gy)               softmax(z) = exp(y); sums along the axis
        gx = gz / T,    gT = sum(-gz * z) / T        (as for softmax)
    """

    @staticmethod
    def forward(ctx, x, t, axis, temperature):
        z, T = _scale(ctx, x, t, temperature)
        xp = backend.get_array_module(x)
        s = z - z.max(axis=axis, keepdims=True)
        y = s - xp.log(xp.exp(s).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y, z, T, _input_for_t(x, t))
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, gy):
        y, z, T, _ = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        gz = gy - xp.exp(y) * gy.sum(axis=ctx.axis, keepdims=True)
        return _unscale(ctx, gz, z, T)

    @staticmethod
    def differentiable_backward(ctx, gy):
        y, _, T, x = ctx.saved_tensors         # y: the output Tensor, exp(y) recorded in x
        gz = gy - exp(y) * gy.sum(dim=ctx.axis, keepdim=True)
        return _unscale_recorded(ctx, gz, T, x)


def _scale(ctx, x, t, temperature):
    """z = x / T, with T the array ``t`` (cast to x's dtype) or the Python number."""
    ctx.t_meta = None if t is None else (t.shape, t.dtype)
    T = temperature if t is None else t.astype(x.dtype, copy=False)
    if t is None and T == 1:
        return x, T                        # the plain softmax: no division, no copy
    return x / T, T


def _unscale(ctx, gz, z, T):
    """(gx, gt) from gz = dL/dz, where z = x / T."""
    gx = None
    if ctx.needs_input_grad[0]:
        gx = gz if (ctx.t_meta is None and T == 1) else gz / T
    gt = None
    if ctx.t_meta is not None and ctx.needs_input_grad[1]:
        shape, dtype = ctx.t_meta
        gt = unbroadcast(-gz * z / T, shape).astype(dtype, copy=False)
    return gx, gt


def _input_for_t(x, t):
    """The input, kept only with a temperature Tensor t: the recorded backward of gT needs
    z = x / T as a function of x and t (the saved z is a constant there)."""
    return None if t is None else x


def _unscale_recorded(ctx, gz, T, x):
    """``_unscale`` on Tensors (create_graph=True): gx = gz / T, gT = sum(-gz * z) / T with
    z = x / T recomputed, T the temperature Tensor (or a number, or 1: z is x itself)."""
    gx = None
    if ctx.needs_input_grad[0]:
        gx = gz if (ctx.t_meta is None and T == 1) else gz / T
    gt = None
    if ctx.t_meta is not None and ctx.needs_input_grad[1]:
        shape, dtype = ctx.t_meta
        gt = unbroadcast(-gz * (x / T) / T, shape)
        gt = gt if gt.dtype == dtype else gt.to(dtype)
    return gx, gt


def _softmax_dim(dim, ndim, name):
    """The axis to normalise. ``dim=None`` follows PyTorch's legacy rule silently:
    dim 0 for 0-, 1- and 3-dimensional inputs, else dim 1 (PyTorch also warns that
    the implicit choice is deprecated: pass ``dim`` explicitly)."""
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
    (axis,) = normalize_dim(dim, ndim, name)
    return None if ndim == 0 else axis


def _softmax_args(input, dim, temperature, dtype, name):  # noqa: A002
    if dtype is not None:
        input = input.to(dtype)
    _require_float(input, name)
    axis = _softmax_dim(dim, input.ndim, name)
    if isinstance(temperature, Tensor):
        _require_float(temperature, f"{name} temperature")
        try:
            out = np.broadcast_shapes(input.shape, temperature.shape)  # shapes only
        except ValueError:
            out = None
        if out != input.shape:
            raise ValueError(f"{name}: temperature of shape {temperature.shape} does not "
                             f"broadcast to the input's shape {input.shape}")
        return input, temperature, axis, 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name}: temperature must be a positive number or a Tensor, "
                        f"got {type(temperature).__name__}")
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    return input, None, axis, float(temperature)


def softmax(input, dim=None, temperature=1.0, *, dtype=None):  # noqa: A002
    """exp(x / T) / sum(exp(x / T)) along ``dim``.

    dim: the axis to normalise; pass it (``dim=1`` for (N, C) logits). When it is None,
        PyTorch's legacy rule applies without a warning: 0 for 0-, 1- and 3-dimensional
        input, else 1.
    temperature: minidl's addition, T in softmax(x / T): T > 1 flattens, T < 1 sharpens.
        A positive Python number, or a float Tensor broadcasting to the input (usually a
        scalar with requires_grad=True, which then learns: its gradient is exact).
    dtype: cast the input to this dtype first (as in PyTorch).
    """
    x, t, axis, temp = _softmax_args(input, dim, temperature, dtype, "softmax")
    return SoftmaxFunction.apply(x, t, axis=axis, temperature=temp)


def log_softmax(input, dim=None, temperature=1.0, *, dtype=None):  # noqa: A002
    """log(softmax(x / T)) along ``dim``, computed stably; arguments as in ``softmax``."""
    x, t, axis, temp = _softmax_args(input, dim, temperature, dtype, "log_softmax")
    return LogSoftmaxFunction.apply(x, t, axis=axis, temperature=temp)


# --- silu, hardswish, elu, prelu -----------------------------------------------------------


def _sigmoid_array(x):
    """sigmoid(x) on an array, stably (exp of -|x| only, as SigmoidFunction)."""
    xp = backend.get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

class SiLUFunction(Function):
    """y = x * sigmoid(x) (the "swish").    x, y, gy, gx: (*)

    With s = sigmoid(x) and s' = s (1 - s)::

        dy/dx = s + x s (1 - s) = s (1 + x (1 - s))
    """

    @staticmethod
    def forward(ctx, x):
        s = _sigmoid_array(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, gy):
        x, s = ctx.saved_tensors
        return gy * s * (1 + x * (1 - s))

    @staticmethod
    def differentiable_backward(ctx, gy):
        x, _ = ctx.saved_tensors                   # s is a constant: recompute it from x
        s = sigmoid(x)
        return gy * s * (1 + x * (1 - s))


def silu(input, inplace=False):  # noqa: A002
    """x * sigmoid(x), elementwise. ``inplace`` is accepted for PyTorch's signature;
    minidl computes out of place."""
    _require_float(input, "silu")
    return SiLUFunction.apply(input)


class HardswishFunction(Function):
    """y = x * relu6(x + 3) / 6 (MobileNetV3).    x, y, gy, gx: (*)

    Piecewise::

        x <= -3:      y = 0                dy/dx = 0       (PyTorch: 0 for x < -3)
        -3 < x < 3:   y = x (x + 3) / 6    dy/dx = x / 3 + 1/2
        x >= 3:       y = x                dy/dx = 1

    At the kinks PyTorch's backward uses x/3 + 1/2 for -3 <= x <= 3: so does this one.
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.get_array_module(x)
        middle = (x >= -3) & (x <= 3)              # the quadratic part, kinks included
        upper = x > 3
        ctx.save_for_backward(x, middle, upper)
        return x * xp.clip(x + 3, 0, 6) / 6

    @staticmethod
    def backward(ctx, gy):
        x, middle, upper = ctx.saved_tensors
        return gy * (middle * (x / 3 + 0.5) + upper)

    differentiable_backward = backward             # x: the input Tensor, masks constants


def hardswish(input, inplace=False):  # noqa: A002
    """x * relu6(x + 3) / 6, elementwise; ``inplace`` as in ``silu``."""
    _require_float(input, "hardswish")
    return HardswishFunction.apply(input)


class ELUFunction(Function):
    """y = x where x > 0, else alpha * (exp(x) - 1).    x, y, gy, gx: (*)

    dy/dx = 1 where x > 0, else alpha * exp(x) = y + alpha: only the output is needed.
    """

    @staticmethod
    def forward(ctx, x, alpha):
        xp = backend.get_array_module(x)
        positive = x > 0
        # expm1 is exact for small |x|; min(x, 0) keeps exp from overflowing where unused
        y = xp.where(positive, x, alpha * xp.expm1(xp.minimum(x, 0)))
        ctx.save_for_backward(y, positive)
        ctx.alpha = alpha
        return y

    @staticmethod
    def backward(ctx, gy):
        y, positive = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        return xp.where(positive, gy, gy * (y + ctx.alpha))

    @staticmethod
    def differentiable_backward(ctx, gy):
        y, positive = ctx.saved_tensors           # y: the output Tensor, recorded in x
        return where(positive, gy, gy * (y + ctx.alpha))


def elu(input, alpha=1.0, inplace=False):  # noqa: A002
    """x where x > 0, else alpha * (exp(x) - 1); ``inplace`` as in ``silu``."""
    _require_float(input, "elu")
    return ELUFunction.apply(input, alpha=float(alpha))


class PReLUFunction(Function):
    """y = x where x > 0, else w * x, with a learnt slope w per channel (or one for all).

    x, y, gy, gx: (N, C, *S) (or any shape when w has one element); w, gw: (C,) or (1,),
    broadcast as wb: (1, C, 1, ...) along the other dims (``_prelu_shape``)::

        gx = gy where x > 0, else w * gy
        gw = sum over every dim but the channel's of (gy * x where x <= 0, else 0)
    """

    @staticmethod
    def forward(ctx, x, w, wb_shape):
        xp = backend.get_array_module(x)
        positive = x > 0
        wb = w.reshape(wb_shape)
        ctx.save_for_backward(x, w, positive)
        ctx.wb_shape = wb_shape
        return xp.where(positive, x, wb * x)

    @staticmethod
    def backward(ctx, gy):
        x, w, positive = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        need_x, need_w = ctx.needs_input_grad
        gx = gw = None
        if need_x:
            gx = xp.where(positive, gy, w.reshape(ctx.wb_shape) * gy)
        if need_w:
            zero = xp.zeros((), gy.dtype)
            gw = unbroadcast(xp.where(positive, zero, gy * x), ctx.wb_shape).reshape(w.shape)
        return gx, gw

    @staticmethod
    def differentiable_backward(ctx, gy):
        x, w, positive = ctx.saved_tensors        # x, w: the input Tensors, the mask constant
        need_x, need_w = ctx.needs_input_grad
        gx = gw = None
        if need_x:
            gx = where(positive, gy, w.reshape(ctx.wb_shape) * gy)
        if need_w:
            gw = unbroadcast(where(positive, 0.0, gy * x), ctx.wb_shape).reshape(w.shape)
        return gx, gw


def _prelu_shape(x, w):
    """The shape w (C,) broadcasts as: (1, C, 1, ...) for an (N, C, *S) input; a
    one-element w applies everywhere (also the only choice below 2 dims: no channel dim)."""
    if w.numel() == 1:
        return (1,) * x.ndim
    return (1, w.shape[0]) + (1,) * (x.ndim - 2)


def prelu(input, weight):  # noqa: A002
    """x where x > 0, else weight * x; weight (C,) per channel (dim 1 of input) or (1,)
    shared, as ``F.prelu`` (an input of fewer than 2 dims has one channel)."""
    _require_float(input, "prelu")
    if not isinstance(weight, Tensor):
        raise TypeError(f"prelu: expected weight to be a Tensor, got {type(weight).__name__}")
    if weight.ndim > 1:
        raise ShapeError(f"prelu: expected weight of shape (C,) or (1,), got {weight.shape}")
    channels = input.shape[1] if input.ndim >= 2 else 1
    if weight.numel() not in (1, channels):
        raise ShapeError(f"prelu: expected weight of shape (1,) or ({channels},) (the "
                         f"input's channels, dim 1) for input {input.shape}, got "
                         f"{weight.shape}")
    if weight.dtype != input.dtype:
        raise TypeError(f"prelu: weight dtype {weight.dtype} does not match input dtype "
                        f"{input.dtype}")
    return PReLUFunction.apply(input, weight, wb_shape=_prelu_shape(input, weight))


class HardsigmoidFunction(Function):
    """y = relu6(x + 3) / 6 (MobileNetV3's squeeze-and-excitation gate).    x, y, gy, gx: (*)

    Piecewise linear, sigmoid's shape from cheap pieces::

        x <= -3:      y = 0                dy/dx = 0
        -3 < x < 3:   y = x / 6 + 1/2      dy/dx = 1/6
        x >= 3:       y = 1                dy/dx = 0

    At the kinks x = -3 and x = 3 the slope is taken as 0, as in PyTorch's backward.
    """

    @staticmethod
    def forward(ctx, x):
        xp = backend.get_array_module(x)
        ctx.save_for_backward((x > -3) & (x < 3))  # the sloped part, kinks excluded
        return xp.clip(x + 3, 0, 6) / 6

    @staticmethod
    def backward(ctx, gy):
        (inside,) = ctx.saved_tensors
        return gy * inside / 6                     # bool mask: gy's dtype is kept

    # gx is linear in gy with a constant mask (its derivative in x is 0 almost everywhere)
    differentiable_backward = backward


def hardsigmoid(input, inplace=False):  # noqa: A002
    """relu6(x + 3) / 6, elementwise; ``inplace`` as in ``silu``."""
    _require_float(input, "hardsigmoid")
    return HardsigmoidFunction.apply(input)
