"""Matrix products: ``matmul`` (the ``@`` operator) and ``linear`` (a fully connected layer).

Shapes: M, K, P the matrix dims of ``(M, K) @ (K, P) -> (M, P)``, ``...`` leading
(batch) dims that broadcast; IN, OUT a linear layer's features. gy is dL/dy (like y).

Both gradients are products again, so the recorded backwards (``create_graph=True``)
are the same formulas on Tensors: each term is linear in gy and in the other operand.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function
from ..errors import ShapeError
from ..kernels import blas
from ..kernels.threads import single_blas
from .shape import squeeze, unsqueeze
from .utils import unbroadcast


def _multiply_adds(a, b):
    """The multiply-adds of a @ b, a (..., M, K), b (..., K, P) (leading dims broadcast)."""
    return max(math.prod(a.shape) * b.shape[-1], math.prod(b.shape) * a.shape[-2])


def _product(a, b):
    """a @ b for the ops below. A float32/float64 NumPy product with at least
    ``blas.GEMM_PARALLEL_MIN_FLOPS`` multiply-adds runs on numba's threads, one BLAS thread
    each (``kernels.blas.matmul``, the threading policy of ``kernels/threads.py``): called
    here under ``single_blas`` it would use one core of the machine ((32, 2048) @ (2048,
    1024): 2.5 -> 1.3 ms on 2 cores; (64, 128, 64) @ (64, 64, 128): 1.85 -> 0.88 ms). That
    takes two matrices, or a stack of them against a stack with the same leading dims or
    against one matrix (``_on_threads``). Everything else (leading dims that broadcast
    against each other, CuPy arrays, small products, Tensors in a recorded backward) is
    ``@`` on the calling thread."""
    macs = _multiply_adds(a, b)
    if (macs >= blas.GEMM_PARALLEL_MIN_FLOPS and type(a) is np.ndarray
            and type(b) is np.ndarray and a.dtype == b.dtype
            and a.dtype in (np.float32, np.float64)):
        y = _on_threads(a, b)
        if y is not None:
            return y
    with single_blas(macs):  # the threading policy (kernels/threads.py)
        return a @ b


def _on_threads(a, b):
    """a @ b by ``blas.matmul``, a (..., M, K), b (..., K, P), when their leading dims are
    equal or one has none; None when they broadcast against each other. A C-contiguous
    stack times one matrix is one product of (prod(...) * M, K) rows."""
    lead_a, lead_b = a.shape[:-2], b.shape[:-2]
    if lead_a and lead_b and lead_a != lead_b:
        return None
    M, K, P = a.shape[-2], a.shape[-1], b.shape[-1]
    if lead_a and not lead_b and a.flags.c_contiguous:
        rows = np.empty((a.size // K, P), a.dtype)
        return blas.matmul(a.reshape(-1, K), b, rows).reshape(lead_a + (M, P))
    lead = lead_a or lead_b
    out = np.empty(lead + (M, P), a.dtype)
    blas.matmul(a.reshape((-1, M, K)) if lead_a else a,
                b.reshape((-1, K, P)) if lead_b else b,
                out.reshape((-1, M, P)) if lead else out)
    return out


class MatMulFunction(Function):
    """``a @ b`` for a: (..., M, K), b: (..., K, P) -> (..., M, P); leading dims broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _product(a, b)

    @staticmethod
    def backward(ctx, gy):  # dL/da = gy b^T, dL/db = a^T gy
        a, b = ctx.saved_tensors
        ga = (unbroadcast(_product(gy, b.swapaxes(-1, -2)), a.shape) if ctx.needs_input_grad[0]
              else None)
        gb = (unbroadcast(_product(a.swapaxes(-1, -2), gy), b.shape) if ctx.needs_input_grad[1]
              else None)
        return ga, gb

    @staticmethod
    def differentiable_backward(ctx, gy):  # the same, with Tensor.transpose(dim0, dim1)
        a, b = ctx.saved_tensors
        ga = unbroadcast(gy @ b.transpose(-1, -2), a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(a.transpose(-1, -2) @ gy, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


def matmul(a, b):
    """Matrix product with NumPy's rules: 1-D operands are treated as a row/column vector."""
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError("matmul: both arguments need at least 1 dim; use * for scalars")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied "
                         f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: expected both operands to have the same dtype, got "
                        f"{a.dtype} and {b.dtype}")
    if a.ndim == 1:
        return squeeze(matmul(unsqueeze(a, 0), b), -2 if b.ndim > 1 else -1)
    if b.ndim == 1:
        return squeeze(matmul(a, unsqueeze(b, 1)), -1)
    return MatMulFunction.apply(a, b)


class LinearFunction(Function):
    """y = x W^T + b.

    x: (..., IN), weight: (OUT, IN), bias: (OUT,) or None -> y: (..., OUT).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        y = _product(x.reshape(-1, x.shape[-1]), weight.T)          # (M, OUT), M = prod(...)
        y = y.reshape(x.shape[:-1] + (weight.shape[0],))            # (..., OUT)
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g2 = gy.reshape(-1, gy.shape[-1])                           # (M, OUT)
        gx = _product(g2, weight).reshape(x.shape) if need_x else None          # (..., IN)
        gw = _product(g2.T, x.reshape(-1, x.shape[-1])) if need_w else None     # (OUT, IN)
        gb = g2.sum(0) if need_b else None                          # (OUT,)
        return gx, gw, gb

    # Every operation above (products, .T, .reshape, .sum(0)) reads the same on arrays and
    # on Tensors (``_product`` is ``@`` for them), so the recorded backward is this very
    # formula.
    differentiable_backward = backward


def linear(input, weight, bias=None):  # noqa: A002 - PyTorch's name
    """``input @ weight.T + bias``: input (..., in_features), weight (out_features, in_features)."""
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: expected input (..., {weight.shape[1]}) for weight of shape "
                         f"{weight.shape}, got {input.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"linear: expected bias of shape ({weight.shape[0]},) for weight of "
                         f"shape {weight.shape}, got {bias.shape}")
    if input.dtype != weight.dtype:
        raise TypeError(f"linear: input dtype {input.dtype} does not match weight dtype "
                        f"{weight.dtype}; convert with .float() or .double()")
    return LinearFunction.apply(input, weight, bias)
