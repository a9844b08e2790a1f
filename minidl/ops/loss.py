"""Losses: cross_entropy, nll_loss, mse_loss, with PyTorch's arguments and semantics.

Shape letters::

    N    batch size
    C    number of classes
    *S   extra dims d1, d2, ... (possibly none): per-pixel classification has input
         (N, C, H, W) and target (N, H, W)

    input              (N, C, *S)  logits (cross_entropy) or log-probabilities (nll_loss)
    class-index target (N, *S)     integers in [0, C), or ignore_index to skip that element
    probability target (N, C, *S)  floats, a distribution over C per element (cross_entropy)
    weight             (C,)        optional per-class weights w
    output             (N, *S) for reduction='none', () for 'mean' and 'sum'

An unbatched input (C,) with target () (or (C,) of probabilities) is treated as N = 1.

The definition, per element i (one (n, *s) position), as in PyTorch. With
logp = log_softmax(input) along the class axis and label smoothing eps:

    class index y_i:   loss_i = (1 - eps) * (-w[y_i] logp[i, y_i])
                              +   eps / C * (-sum_c w[c] logp[i, c])       (0 if y_i ignored)
    probabilities t_i: loss_i = -sum_c w[c] q[i, c] logp[i, c],   q = (1 - eps) t + eps / C

Both are  loss_i = -sum_c A[i, c] logp[i, c]  for a "weighted target" A (N, C, *S):
A = w * ((1 - eps) onehot(y) + eps / C), zero rows for ignored elements, or A = w * q.

'sum' adds the loss_i; 'mean' divides that sum by
    D = sum of w[y_i] over the elements not ignored     (class-index targets: the weighted
                                                          count, also with label smoothing)
    D = N * prod(S)                                      (probability targets: the count)
so with class weights the mean is a weighted average, not sum / N.

Higher-order gradients (create_graph=True): each Function's ``differentiable_backward``
repeats its gradient formula with minidl ops on Tensors. What depends smoothly on the
inputs is recomputed from the input Tensors (softmax(x) from the logits, x - t for the
squared error): the forwards keep those inputs for that. Targets given as class indices,
class weights and the weighted-target matrix A are constants.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import backend
from ..autograd import Function, Tensor, is_grad_enabled
from ..errors import ShapeError
from ..kernels.loss import CROSS_ENTROPY, check_targets, log_softmax_axis1
from .activation import log_softmax, sigmoid, softmax
from .elementwise import abs as _abs, clamp, exp, log, where
from .shape import reshape
from .utils import check_broadcast, unbroadcast

_REDUCTIONS = ("none", "mean", "sum")


# --- shared pieces ----------------------------------------------------------------------

def _class_shape(ndim, C):
    """(1, C, 1, ...): a per-class vector (C,) reshaped to broadcast against (N, C, *S)."""
    return (1, C) + (1,) * (ndim - 2)


def _onehot(target, C, ignore_index, dtype):
    """(N, *S) class indices -> (N, C, *S) one-hot rows, all-zero rows where ignored."""
    xp = backend.get_array_module(target)
    t = xp.expand_dims(target, 1)                                   # (N, 1, *S)
    classes = xp.arange(C).reshape(_class_shape(t.ndim, C))         # (1, C, 1, ...)
    return ((t == classes) & (t != ignore_index)).astype(dtype)


def _class_index_losses(logp, target, weight, ignore_index, label_smoothing):
    """Per-element losses (N, *S) and the 'mean' denominator D (0-d) for class indices.

    The target's log-probability is picked (gathered), not multiplied with a one-hot row,
    so a -inf log-probability of another class does not turn the loss into nan.
    """
    xp = backend.get_array_module(logp)
    C = logp.shape[1]
    valid = target != ignore_index                                  # (N, *S)
    safe = xp.where(valid, target, 0)                               # any index in range
    picked = xp.take_along_axis(logp, xp.expand_dims(safe, 1), axis=1).squeeze(1)
    w_y = valid.astype(logp.dtype) if weight is None else weight[safe] * valid   # (N, *S)
    losses = -w_y * xp.where(valid, picked, xp.zeros((), logp.dtype))
    if label_smoothing:
        w_logp = logp if weight is None else logp * weight.reshape(_class_shape(logp.ndim, C))
        smooth = -w_logp.sum(axis=1) * valid                        # (N, *S)
        losses = (1 - label_smoothing) * losses + (label_smoothing / C) * smooth
    return losses, w_y.sum()


def _weighted_targets(target, C, weight, ignore_index, label_smoothing, dtype):
    """A (N, C, *S) for class indices: w * ((1 - eps) onehot + eps / C), zero where ignored."""
    onehot = _onehot(target, C, ignore_index, dtype)
    A = onehot
    if label_smoothing:
        valid = onehot.sum(axis=1, keepdims=True)                   # 1, or 0 where ignored
        A = (1 - label_smoothing) * onehot + (label_smoothing / C) * valid
    if weight is not None:
        A = A * weight.reshape(_class_shape(onehot.ndim, C))
    return A


def _reduce(losses, reduction, denom):
    """(N, *S) losses -> the output; 'mean' divides by ``denom`` (nan when it is 0, as
    in PyTorch when every target is ignored)."""
    xp = backend.get_array_module(losses)
    if reduction == "none":
        return losses
    total = xp.asarray(losses.sum())
    if reduction == "sum":
        return total
    if xp is np and denom != 0:   # no 0 / 0 to silence (the errstate costs more than this op)
        return total / denom
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 -> nan, silently
        return total / denom


def _mean_factors(denom):
    """(D', keep) for the mean's gradient G = gy / D' * keep: D' = D and keep = 1 when
    D > 0; D' = 1 and keep = 0 when D = 0.

    D = 0 when every class-index target is ignored (or has weight 0): the loss is 0 / 0 =
    nan, as in PyTorch, but a gradient gy / D would be inf and the zero rows of A would
    turn it into nan (0 * inf) everywhere -- one optimiser step would make every weight
    nan. PyTorch's gradient is 0 there (the ignored elements contribute nothing), and so
    is this one. D is an array on the device (a weighted count): no host round trip.
    A Python int D (probability targets: the element count) is returned as it is.
    """
    if isinstance(denom, int):
        return denom, 1
    xp = backend.get_array_module(denom)
    if xp is np and denom != 0:   # on the CPU the test is free: no arrays to build
        return denom, 1
    nonzero = denom != 0
    return xp.where(nonzero, denom, xp.ones((), denom.dtype)), nonzero.astype(denom.dtype)


def _upstream(gy, reduction, denom):
    """G = dL/dloss_i, shaped to broadcast against (N, C, *S)."""
    xp = backend.get_array_module(gy)
    if reduction == "none":
        return xp.expand_dims(gy, 1)        # (N, 1, *S)
    if reduction == "sum":
        return gy                            # (): every element gets gy
    safe_denom, keep = _mean_factors(denom)
    return gy / safe_denom * keep            # (): every element gets gy / D (0 if D = 0)


def _upstream_recorded(gy, reduction, denom):
    """``_upstream`` on Tensors (create_graph=True); ``denom`` a constant (Tensor or number)."""
    if reduction == "none":
        return gy.reshape(gy.shape[:1] + (1,) + gy.shape[1:])      # (N, 1, *S)
    if reduction == "sum":
        return gy
    safe_denom, keep = _mean_factors(denom.data if isinstance(denom, Tensor) else denom)
    if isinstance(denom, int):
        return gy / safe_denom
    return gy / Tensor(safe_denom) * Tensor(keep)     # constants: no gradient flows to D


# --- the Functions ----------------------------------------------------------------------

def _plain_case(x, weight, label_smoothing):
    """Whether cross-entropy runs through the kernel family: (N, C) logits, class-index
    targets, no class weights, no label smoothing."""
    return weight is None and not label_smoothing and x.ndim == 2


class CrossEntropyFunction(Function):
    """Fused log_softmax + negative log-likelihood with class-index targets.

    x: (N, C, *S) logits; target: (N, *S) ints; weight: (C,) or None -> output: (N, *S) or ().

    Backward, with p = softmax(x) = exp(logp), A the weighted targets (module docstring)
    and G_i = dL/dloss_i (gy, or gy / D for the mean)::

        d loss_i / d x[i, k] = -sum_c A[i, c] (delta_ck - p[i, k])
                             = p[i, k] * sum_c A[i, c] - A[i, k]
        gx = G * (p * sum_c(A) - A)                                     (N, C, *S)

    Without weights or smoothing, sum_c(A) = 1 and A = onehot(y): gx = G * (p - onehot(y)).
    For (N, C) logits that case runs through the cross-entropy kernel family
    (``kernels/loss.py``: one fused kernel on the GPU); the others use the line above.
    The weight and the target get no gradient (class indices are not differentiable, and
    PyTorch does not differentiate the weights either).
    """

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, reduction, label_smoothing):
        if _plain_case(x, weight, label_smoothing):
            # the plain case, one fused kernel on the CPU (the cross-entropy kernel family,
            # which also checks the targets' values)
            logp, losses, denom = CROSS_ENTROPY.code(x).cross_entropy_forward(
                x, target, ignore_index)
        else:
            if weight is not None:
                weight = weight.astype(x.dtype, copy=False)
            logp = log_softmax_axis1(x)
            losses, denom = _class_index_losses(logp, target, weight, ignore_index,
                                                label_smoothing)
        # x only for the recorded backward, which needs p = softmax(x) as a function of x
        ctx.save_for_backward(logp, target, weight, denom, x)
        ctx.params = (ignore_index, reduction, label_smoothing)
        return _reduce(losses, reduction, denom)

    @staticmethod
    def backward(ctx, gy):
        logp, target, weight, denom, _ = ctx.saved_tensors
        ignore_index, reduction, label_smoothing = ctx.params
        xp = backend.get_array_module(logp)
        G = _upstream(gy, reduction, denom)
        if weight is None and not label_smoothing and logp.ndim == 2:
            # A = onehot(y): gx = G * (p - onehot(y)), the cross-entropy kernel family's
            # case (one fused kernel on the GPU)
            gx = CROSS_ENTROPY.code(logp).cross_entropy_backward(logp, target, G, ignore_index)
            return gx, None, None
        A = _weighted_targets(target, logp.shape[1], weight, ignore_index, label_smoothing,
                              logp.dtype)                                  # (N, C, *S)
        gx = (xp.exp(logp) * A.sum(axis=1, keepdims=True) - A) * G        # (N, C, *S)
        return gx, None, None

    @staticmethod
    def differentiable_backward(ctx, gy):
        # gx = G * (p * sum_c(A) - A) with p = softmax(x) recomputed from the logits Tensor
        # (the saved logp is a constant here); A, its sum and the denominator are constants.
        _, target, weight, denom, x = ctx.saved_tensors
        ignore_index, reduction, label_smoothing = ctx.params
        A = _weighted_targets(target.data, x.shape[1], None if weight is None else weight.data,
                              ignore_index, label_smoothing, x.dtype)       # (N, C, *S)
        G = _upstream_recorded(gy, reduction, denom)
        gx = (softmax(x, dim=1) * Tensor(A.sum(axis=1, keepdims=True)) - Tensor(A)) * G
        return gx, None, None


class CrossEntropyProbsFunction(Function):
    """Fused log_softmax + cross-entropy with probability targets (soft labels).

    x: (N, C, *S) logits; t: (N, C, *S) probabilities; weight: (C,) or None
    -> output (N, *S) or ().  loss_i = -sum_c w_c q_ic logp_ic with q = (1 - eps) t + eps / C.

    Backward (G as in CrossEntropyFunction, A = w q)::

        gx = G * (p * sum_c(A) - A)                                    (N, C, *S)
        gt = G * -(1 - eps) * w * logp                                 (N, C, *S)
        gw = sum over N and *S of  G * -q * logp                       (C,)
    """

    @staticmethod
    def forward(ctx, x, t, weight, reduction, label_smoothing):
        C = x.shape[1]
        ctx.dtypes = (t.dtype, None if weight is None else weight.dtype)
        inputs = (x, t, weight)              # for the recorded backward (create_graph=True)
        t = t.astype(x.dtype, copy=False)
        q = t if not label_smoothing else (1 - label_smoothing) * t + label_smoothing / C
        w = None if weight is None else weight.astype(x.dtype, copy=False).reshape(
            _class_shape(x.ndim, C))
        logp = log_softmax_axis1(x)
        A = q if w is None else q * w
        losses = -(A * logp).sum(axis=1)                               # (N, *S)
        denom = losses.size                                            # N * prod(S)
        ctx.save_for_backward(logp, q, w, *inputs)
        ctx.params = (reduction, label_smoothing, denom)
        return _reduce(losses, reduction, denom)

    @staticmethod
    def backward(ctx, gy):
        logp, q, w, *_ = ctx.saved_tensors
        reduction, label_smoothing, denom = ctx.params
        xp = backend.get_array_module(logp)
        G = _upstream(gy, reduction, denom)
        A = q if w is None else q * w
        gx = gt = gw = None
        if ctx.needs_input_grad[0]:
            gx = (xp.exp(logp) * A.sum(axis=1, keepdims=True) - A) * G
        if ctx.needs_input_grad[1]:
            gt = -(1 - label_smoothing) * logp * G
            gt = (gt if w is None else gt * w).astype(ctx.dtypes[0], copy=False)
        if ctx.needs_input_grad[2]:
            axes = (0,) + tuple(range(2, logp.ndim))
            gw = (-(q * logp * G).sum(axis=axes)).astype(ctx.dtypes[1], copy=False)
        return gx, gt, gw

    @staticmethod
    def differentiable_backward(ctx, gy):
        # The same formulas, with logp, q and w recomputed from the input Tensors x, t and
        # weight (the saved arrays are constants here).
        *_, x, t, weight = ctx.saved_tensors
        reduction, label_smoothing, denom = ctx.params
        C = x.shape[1]
        logp = log_softmax(x, dim=1)                                   # (N, C, *S)
        t = t if t.dtype == x.dtype else t.to(x.dtype)
        q = t if not label_smoothing else (1 - label_smoothing) * t + label_smoothing / C
        w = None
        if weight is not None:
            w = (weight if weight.dtype == x.dtype else weight.to(x.dtype)).reshape(
                _class_shape(x.ndim, C))                               # (1, C, 1, ...)
        G = _upstream_recorded(gy, reduction, denom)
        A = q if w is None else q * w
        gx = gt = gw = None
        if ctx.needs_input_grad[0]:
            gx = (exp(logp) * A.sum(dim=1, keepdim=True) - A) * G
        if ctx.needs_input_grad[1]:
            gt = -(1 - label_smoothing) * logp * G
            gt = _as_dtype(gt if w is None else gt * w, ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            axes = (0,) + tuple(range(2, x.ndim))
            gw = _as_dtype(-(q * logp * G).sum(dim=axes), ctx.dtypes[1])
        return gx, gt, gw


class NLLLossFunction(Function):
    """Negative log-likelihood of log-probabilities: loss_i = -w[y_i] * input[i, y_i].

    logp: (N, C, *S) log-probabilities; target: (N, *S) ints; weight: (C,) or None
    -> output (N, *S) or ().

    Backward: the loss is linear in logp, d loss_i / d logp[i, c] = -A[i, c] with
    A = w * onehot(y) (zero rows where ignored)::

        gx = -G * A                                                    (N, C, *S)
    """

    @staticmethod
    def forward(ctx, logp, target, weight, ignore_index, reduction):
        if weight is not None:
            weight = weight.astype(logp.dtype, copy=False)
        losses, denom = _class_index_losses(logp, target, weight, ignore_index, 0.0)
        ctx.save_for_backward(target, weight, denom)
        ctx.params = (logp.shape[1], logp.dtype, ignore_index, reduction)
        return _reduce(losses, reduction, denom)

    @staticmethod
    def backward(ctx, gy):
        target, weight, denom = ctx.saved_tensors
        C, dtype, ignore_index, reduction = ctx.params
        A = _weighted_targets(target, C, weight, ignore_index, 0.0, dtype)
        return -_upstream(gy, reduction, denom) * A, None, None

    @staticmethod
    def differentiable_backward(ctx, gy):
        # linear in logp: the same line, with A (targets, weights) a constant
        target, weight, denom = ctx.saved_tensors
        C, dtype, ignore_index, reduction = ctx.params
        A = _weighted_targets(target.data, C, None if weight is None else weight.data,
                              ignore_index, 0.0, dtype)
        return -_upstream_recorded(gy, reduction, denom) * Tensor(A), None, None


class MSELossFunction(Function):
    """Mean squared error: loss = (x - t)^2, reduced.

    x, t: shapes that broadcast to (*); output (*) for 'none', () otherwise (n elements).

    Backward: d/dx (x - t)^2 = 2 (x - t), d/dt = -2 (x - t), times gy (divided by n for
    the mean), summed back to each input's shape when it was broadcast.
    """

    @staticmethod
    def forward(ctx, x, t, reduction):
        d = x - t
        ctx.save_for_backward(d, x, t)       # x, t: for the recorded backward's x - t
        ctx.meta = (x.shape, t.shape, reduction)
        sq = d * d
        return _reduce(sq, reduction, sq.size)

    @staticmethod
    def backward(ctx, gy):
        d, _, _ = ctx.saved_tensors
        x_shape, t_shape, reduction = ctx.meta
        g = 2 * d * (gy / d.size if reduction == "mean" else gy)
        gx = unbroadcast(g, x_shape) if ctx.needs_input_grad[0] else None
        gt = unbroadcast(-g, t_shape) if ctx.needs_input_grad[1] else None
        return gx, gt

    @staticmethod
    def differentiable_backward(ctx, gy):
        _, x, t = ctx.saved_tensors
        x_shape, t_shape, reduction = ctx.meta
        d = x - t                            # recomputed: the saved d is a constant here
        g = 2 * d * (gy / d.numel() if reduction == "mean" else gy)
        gx = unbroadcast(g, x_shape) if ctx.needs_input_grad[0] else None
        gt = unbroadcast(-g, t_shape) if ctx.needs_input_grad[1] else None
        return gx, gt


def _as_dtype(t, dtype):
    """Tensor ``t`` cast to ``dtype`` when it differs (recorded)."""
    return t if t.dtype == dtype else t.to(dtype)


# --- argument checks and the wrappers ---------------------------------------------------

def _check_reduction(reduction, name):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: unknown reduction {reduction!r} "
                         f"(expected 'none', 'mean' or 'sum')")


def _check_input(input, name, what):  # noqa: A002
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dtype.kind != "f":
        raise TypeError(f"{name}: expected floating point {what} (N, C) or (N, C, d1, ...), "
                        f"got dtype {input.dtype}")
    if input.ndim == 0:
        raise ShapeError(f"{name}: expected {what} (N, C) or (N, C, d1, ...) or (C,), "
                         f"got a 0-d tensor")


def _check_class_target(input, target, ignore_index, name, values=True):  # noqa: A002
    """Class-index target: shape (N, *S) for input (N, C, *S), and (``values``) values in
    range (the cross-entropy kernels check the values of their plain case themselves)."""
    shape = input.data.shape
    expected = shape[:1] + shape[2:]
    if target.data.shape != expected:
        raise ShapeError(f"{name}: expected class-index target of shape {expected} for "
                         f"input {input.shape}, got {target.shape}")
    if values:
        check_targets(target.data, shape[1], ignore_index, name)


def _check_weight(weight, input, name):  # noqa: A002
    if weight is None:
        return
    C = input.shape[1]
    if not isinstance(weight, Tensor) or weight.dtype.kind != "f":
        raise TypeError(f"{name}: expected weight to be a float Tensor of shape ({C},), got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.shape != (C,):
        raise ShapeError(f"{name}: expected weight of shape ({C},) (one per class), "
                         f"got {weight.shape}")


def _no_weight_grad(weight, name):
    if weight is not None and weight.requires_grad and is_grad_enabled():
        raise RuntimeError(f"{name}: the class weights cannot require grad with class-index "
                           "targets (the loss is not differentiated with respect to them, as "
                           "in PyTorch); pass weight.detach()")


def _batched(input, target):  # noqa: A002
    """Unbatched (C,) input -> (1, C), with target () -> (1,) or (C,) -> (1, C)."""
    if input.ndim != 1:
        return input, target, False
    return reshape(input, (1,) + input.shape), reshape(target, (1,) + target.shape), True


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",  # noqa: A002
                  label_smoothing=0.0):
    """Cross-entropy of logits ``input`` against class indices or class probabilities.

    input: (N, C) or (N, C, d1, ...) logits (or (C,) unbatched).
    target: (N,) / (N, d1, ...) integer class indices, or float probabilities of the
        input's shape. weight: (C,) class weights. ignore_index: class-index targets equal
        to it contribute nothing (not even to the mean's denominator). reduction: 'none',
        'mean' or 'sum'. label_smoothing: eps in [0, 1], mixing the target with uniform.
    The semantics, including the weighted mean, are PyTorch's (see the module docstring).
    """
    name = "cross_entropy"
    _check_input(input, name, "logits")
    _check_reduction(reduction, name)
    if type(label_smoothing) is not float and not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"{name}: label_smoothing must be a number in [0, 1], got "
                        f"{type(label_smoothing).__name__}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: expected target to be a Tensor, got {type(target).__name__}")
    probs = target.dtype.kind == "f"
    if not probs and target.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class indices or float probabilities as "
                        f"target, got dtype {target.dtype}")
    if probs and target.shape != input.shape:
        raise ShapeError(f"{name}: expected probability target of the same shape as input "
                         f"{input.shape}, got {target.shape}")
    x, t, unbatched = _batched(input, target)
    _check_weight(weight, x, name)
    if probs:
        out = CrossEntropyProbsFunction.apply(x, t, weight, reduction=reduction,
                                              label_smoothing=float(label_smoothing))
    else:
        # the plain case's kernels check the targets' values themselves
        _check_class_target(x, t, ignore_index, name,
                            values=not _plain_case(x.data, weight, label_smoothing))
        _no_weight_grad(weight, name)
        out = CrossEntropyFunction.apply(x, t, weight, ignore_index=int(ignore_index),
                                         reduction=reduction,
                                         label_smoothing=float(label_smoothing))
    return reshape(out, ()) if unbatched and reduction == "none" else out


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):  # noqa: A002
    """Negative log-likelihood: -weight[y] * input[i, y], for log-probabilities ``input``
    (N, C) or (N, C, d1, ...) (or (C,)) and integer targets (N,) / (N, d1, ...).
    Pair it with log_softmax; cross_entropy does both in one step."""
    name = "nll_loss"
    _check_input(input, name, "log-probabilities")
    _check_reduction(reduction, name)
    if not isinstance(target, Tensor) or target.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class indices as target, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    x, t, unbatched = _batched(input, target)
    _check_weight(weight, x, name)
    _check_class_target(x, t, ignore_index, name)
    _no_weight_grad(weight, name)
    out = NLLLossFunction.apply(x, t, weight, ignore_index=int(ignore_index),
                                reduction=reduction)
    return reshape(out, ()) if unbatched and reduction == "none" else out


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean squared error (input - target)^2, reduced ('none', 'mean' or 'sum').

    The shapes should match; like PyTorch, different shapes broadcast with a warning
    ((N, 1) against (N,) gives (N, N): usually a bug).
    """
    name = "mse_loss"
    _check_reduction(reduction, name)
    _check_float_pair(input, target, name)
    if input.shape != target.shape:
        check_broadcast(input.shape, target.shape, f"{name}: input of shape {input.shape} and "
                        f"target of shape {target.shape} do not broadcast")
        warnings.warn(f"{name}: target of shape {target.shape} differs from input of shape "
                      f"{input.shape}; they are broadcast, which is likely wrong",
                      UserWarning, stacklevel=2)
    return MSELossFunction.apply(input, target, reduction=reduction)


# --- binary cross-entropy, l1, smooth l1, kl divergence -----------------------------------
#
# Elementwise losses: input x, target t and the per-element loss l all have one shape (*)
# (x and t broadcast, with a warning, where PyTorch allows it); weight broadcasts to (*).
# Each is its per-element formula followed by the reduction: 'none' keeps l (*), 'sum'
# adds it up, 'mean' divides the sum by the number of elements (kl_div's 'batchmean' by
# the batch size N = x.shape[0]). Most are composites of existing differentiable ops
# (their gradients, and gradients of gradients, come from those ops); two formulas get a
# Function of their own, for numerical reasons: softplus (stable for large |x|) and
# binary_cross_entropy (finite gradients at x = 0 and x = 1, where log is -inf).


class SoftplusFunction(Function):
    """y = log(1 + exp(x)), computed as log1p(exp(-|x|)) + max(x, 0) (exp never
    overflows).    x, y, gy, gx: (*);    dy/dx = sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        xp = backend.get_array_module(x)
        ctx.save_for_backward(x)
        return xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(x, 0)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))                                  # sigmoid, stably
        return gy * xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

    @staticmethod
    def differentiable_backward(ctx, gy):
        (x,) = ctx.saved_tensors                                # the input Tensor
        return gy * sigmoid(x)


_BCE_LOG_MIN = -100.0   # PyTorch clamps log(x) and log(1 - x) here: a finite loss at 0 and 1
_BCE_EPS = 1e-12        # ... and the gradient's denominator x (1 - x) from below


class BinaryCrossEntropyFunction(Function):
    """l = -(t * log(x) + (1 - t) * log(1 - x)), each log clamped at -100.

    x (probabilities in [0, 1]), t, l, gy, gx, gt: (*)::

        gx = gy * (x - t) / max(x (1 - x), 1e-12)
        gt = gy * (log(1 - x) - log(x))                   (the clamped logs)

    The clamps are PyTorch's: a saturated sigmoid gives x = 1.0 exactly in float32, and the
    loss and its gradient stay finite there.
    """

    @staticmethod
    def forward(ctx, x, t):
        xp = backend.get_array_module(x)
        with np.errstate(divide="ignore"):                      # log(0) = -inf, then clamped
            log_x = xp.maximum(xp.log(x), _BCE_LOG_MIN)
            log_1mx = xp.maximum(xp.log(1 - x), _BCE_LOG_MIN)
        ctx.save_for_backward(x, t, log_x, log_1mx)
        return -(t * log_x + (1 - t) * log_1mx)

    @staticmethod
    def backward(ctx, gy):
        x, t, log_x, log_1mx = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = gy * (x - t) / xp.maximum(x * (1 - x), _BCE_EPS)
        if ctx.needs_input_grad[1]:
            gt = gy * (log_1mx - log_x)
        return gx, gt

    @staticmethod
    def differentiable_backward(ctx, gy):
        x, t, _, _ = ctx.saved_tensors                          # the input Tensors
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = gy * (x - t) / clamp(x * (1 - x), min=_BCE_EPS)
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore"):
                gt = gy * (clamp(log(1 - x), min=_BCE_LOG_MIN) - clamp(log(x), min=_BCE_LOG_MIN))
        return gx, gt


def _legacy_reduction(size_average, reduce, reduction):
    """PyTorch's mapping of the deprecated ``size_average``/``reduce`` flags."""
    if size_average is None and reduce is None:
        return reduction
    warnings.warn("size_average and reduce args will be deprecated, please use reduction "
                  "instead.", stacklevel=3)
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _reduce_elementwise(losses, reduction):
    """(*) losses -> 'none': (*), 'sum': (), 'mean': () (the sum / the number of elements)."""
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def _check_float_pair(input, target, name):  # noqa: A002
    """input and target: floating point Tensors of one dtype."""
    for what, a in (("input", input), ("target", target)):
        if not isinstance(a, Tensor) or a.dtype.kind != "f":
            raise TypeError(f"{name}: expected {what} to be a floating point Tensor, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
    if input.dtype != target.dtype:
        raise TypeError(f"{name}: input and target dtypes differ ({input.dtype} and "
                        f"{target.dtype}); convert one with .float() or .double()")


def _check_same_shape(input, target, name):  # noqa: A002
    """The binary cross-entropies want equal shapes (PyTorch's ValueError; ShapeError is one)."""
    if input.shape != target.shape:
        raise ShapeError(f"{name}: expected target of the input's shape {input.shape}, got "
                         f"target of shape {target.shape}")


def _check_broadcast_target(input, target, name):  # noqa: A002
    """Regression losses: different shapes broadcast with a warning, as mse_loss's."""
    if input.shape != target.shape:
        check_broadcast(input.shape, target.shape, f"{name}: input of shape {input.shape} and "
                        f"target of shape {target.shape} do not broadcast")
        warnings.warn(f"{name}: target of shape {target.shape} differs from input of shape "
                      f"{input.shape}; they are broadcast, which is likely wrong",
                      UserWarning, stacklevel=3)


def _check_elementwise_weight(weight, input, name, what="weight"):  # noqa: A002
    if weight is None:
        return
    if not isinstance(weight, Tensor) or weight.dtype.kind != "f":
        raise TypeError(f"{name}: expected {what} to be a floating point Tensor or None, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    check_broadcast(input.shape, weight.shape, f"{name}: {what} of shape {weight.shape} does "
                    f"not broadcast to the input's shape {input.shape}")


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,  # noqa: A002
                                     reduce=None, reduction="mean", pos_weight=None):
    """Sigmoid + binary cross-entropy in one stable formula, as
    ``F.binary_cross_entropy_with_logits``. input: logits x (*); target t (*) in [0, 1].

        l = (1 - t) * x + (1 + (pos_weight - 1) * t) * softplus(-x)        (*)

    which is -(pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))), since
    log(sigmoid(x)) = -softplus(-x) and log(1 - sigmoid(x)) = -x - softplus(-x).
    weight: broadcasts to (*), multiplies l; pos_weight: the positives' weight per class,
    broadcast along the last dim ((C,) for (N, C) logits): > 1 raises recall.
    """
    name = "binary_cross_entropy_with_logits"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, name)
    _check_float_pair(input, target, name)
    _check_same_shape(input, target, name)
    _check_elementwise_weight(weight, input, name)
    _check_elementwise_weight(pos_weight, input, name, "pos_weight")
    softplus_neg = SoftplusFunction.apply(-input)                           # (*)
    if pos_weight is None:
        losses = (1 - target) * input + softplus_neg
    else:
        losses = (1 - target) * input + (1 + (pos_weight - 1) * target) * softplus_neg
    if weight is not None:
        losses = losses * weight
    return _reduce_elementwise(losses, reduction)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,  # noqa: A002
                         reduction="mean"):
    """-(t log(x) + (1 - t) log(1 - x)) for probabilities x (*) in [0, 1] and targets t
    (*), as ``F.binary_cross_entropy`` (logs clamped at -100); weight broadcasts to (*).
    Prefer ``binary_cross_entropy_with_logits`` on logits: it is stabler."""
    name = "binary_cross_entropy"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, name)
    _check_float_pair(input, target, name)
    _check_same_shape(input, target, name)
    _check_elementwise_weight(weight, input, name)
    x = input.data
    if x.size and not bool(((x >= 0) & (x <= 1)).all()):
        raise RuntimeError(f"{name}: all elements of input should be between 0 and 1 (they "
                           "are probabilities; for logits use "
                           "binary_cross_entropy_with_logits)")
    losses = BinaryCrossEntropyFunction.apply(input, target)
    if weight is not None:
        losses = losses * weight
    return _reduce_elementwise(losses, reduction)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):  # noqa: A002
    """|input - target|, reduced, as ``F.l1_loss`` (gradient sign(x - t), 0 where equal)."""
    name = "l1_loss"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, name)
    _check_float_pair(input, target, name)
    _check_broadcast_target(input, target, name)
    return _reduce_elementwise(_abs(input - target), reduction)


def smooth_l1_loss(input, target, size_average=None, reduce=None,  # noqa: A002
                   reduction="mean", beta=1.0):
    """Huber-like loss, as ``F.smooth_l1_loss``; with d = input - target::

        l = 0.5 d^2 / beta    where |d| < beta     (quadratic near 0: smooth gradient)
            |d| - 0.5 beta    elsewhere            (linear: robust to outliers)

    beta = 0 is the l1 loss.
    """
    name = "smooth_l1_loss"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, name)
    _check_float_pair(input, target, name)
    if not isinstance(beta, numbers.Real) or beta < 0:
        raise ValueError(f"{name}: beta must be a number >= 0, got {beta!r}")
    _check_broadcast_target(input, target, name)
    d = input - target
    ad = _abs(d)
    if beta == 0:
        return _reduce_elementwise(ad, reduction)
    beta = float(beta)
    return _reduce_elementwise(where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta),
                               reduction)


_KL_REDUCTIONS = ("none", "batchmean", "sum", "mean")


def kl_div(input, target, size_average=None, reduce=None, reduction="mean",  # noqa: A002
           log_target=False):
    """KL divergence KL(target || model), as ``F.kl_div``: input holds log-probabilities
    log q; target holds probabilities p (or log p with ``log_target=True``)::

        l = p * (log p - log q)     (0 where p = 0: 0 log 0 = 0)        (*)

    reduction: 'batchmean' (sum / N, the mathematical KL per sample: use it), 'sum',
    'none', or 'mean' (sum / number of elements, PyTorch's default, with its warning).
    """
    name = "kl_div"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in _KL_REDUCTIONS:
        raise ValueError(f"{name}: unknown reduction {reduction!r} (expected one of "
                         f"{', '.join(repr(r) for r in _KL_REDUCTIONS)})")
    _check_float_pair(input, target, name)
    _check_broadcast_target(input, target, name)
    if reduction == "mean":
        warnings.warn(f"{name}: reduction='mean' divides the total loss by both the batch size "
                      "and the support size; 'batchmean' divides by the batch size only, "
                      "which is the KL divergence's definition", UserWarning, stacklevel=2)
    if log_target:
        losses = exp(target) * (target - input)
    else:
        positive = target > 0
        # where(p > 0, p, 1) inside the log keeps log(0) (and its infinite gradient) out
        safe = where(positive, target, 1.0)
        losses = where(positive, target * log(safe), 0.0) - target * input
    if reduction == "batchmean":
        batch = input.shape[0] if input.ndim else 1
        return losses.sum() / batch
    return _reduce_elementwise(losses, reduction)
