"""The pooling kernel family: max and average pooling over windows, forward and backward;
adaptive pooling. Raw arrays in, raw arrays out, no autograd (``minidl.ops.pool`` wraps
these in Functions).

Shape letters used throughout::

    N   batch size                 C   channels (pooling treats every (n, c) plane alike)
    H   input height               W   input width
    KH  kernel height              KW  kernel width
    SH  stride along H             SW  stride along W
    PH  padding along H            PW  padding along W (each side)
    DH  dilation along H           DW  dilation along W
    OH  output height              OW  output width
    K   KH * KW, the number of taps in one window

The geometry of a call is one ``geometry.Window2d`` (``win``), made by
``geometry.make_window``. A window's taps: output pixel ``(oh, ow)`` reads the input at
rows ``oh*SH - PH + kh*DH`` (``kh = 0 .. KH-1``) and columns ``ow*SW - PW + kw*DW``.
Taps outside the input are padding: ``-inf`` for max pooling, ``0`` for average pooling.

Output size (PyTorch's rule, ``geometry.pool_output_size``; ``ceil_mode`` rounds up, but
the last window must still start inside the input or its left padding)::

    OH = floor((H + 2 PH - DH (KH - 1) - 1 + (SH - 1 if ceil_mode else 0)) / SH) + 1
    if ceil_mode and (OH - 1) * SH >= H + PH:  OH -= 1

The argmax of a max-pooling window is stored as the tap number ``k = kh*KW + kw``, a
small integer (uint8 while K <= 256, int32 above): 8x less memory than int64 indices,
and the backward pass scatters with the same strided slices the forward pass gathered
with. PyTorch's flat indices (``return_indices``) are computed from it on request.

The interface every implementation exposes (the op calls these; the registry picks)::

    max_pool2d_forward(x, win)              -> y, arg   x (N, C, H, W); y, arg (N, C, OH, OW)
    max_pool2d_backward(gy, arg, win)       -> gx       gy, arg (N, C, OH, OW)
    avg_pool2d_forward(x, win, divisor)     -> y        divisor (OH, OW)
    avg_pool2d_backward(gy, win, divisor)   -> gx

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one):

* ``reference`` (``pool_reference.py``): NumPy or CuPy, a Python loop over the K taps
  only, each step one strided slice of the padded input for the whole batch. The
  definition the others are tested against; it runs every call (any dtype, any K).
* ``numba`` (``pool_numba.py``): compiled loops over (n, c) planes, no padded copy, a
  dedicated 2x2 stride-2 kernel. For float32/float64 NumPy arrays; the forward max needs
  K <= 256 (its tap numbers are uint8), the backward max uint8 tap numbers.
* ``cuda`` (``cuda_kernels``): one CUDA thread per output window forward, and
  gather-style backward kernels, one thread per input pixel summing the gradients of the
  windows that read it (deterministic, no atomics). float32/float64 CuPy arrays.

Not dispatched (the reference runs on either device): the ``tie='split'`` backward
(``max_pool2d_backward_split``), PyTorch's flat indices (``max_pool2d_indices``), the
average-pooling divisors (``avg_pool2d_divisor``), the gathers that are the max-pooling
backwards' adjoints (``max_pool2d_gather``, ``max_pool2d_gather_split``,
``adaptive_max_pool2d_gather``: only recorded backwards, create_graph=True, use them) and
adaptive pooling, whose windows ``start = floor(i*H/OH)``, ``end = ceil((i+1)*H/OH)``
vary in size and may overlap.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import cuda_kernels, pool_reference, registry
from .pool_reference import (  # noqa: F401 - reference-only functions, part of the family's API
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    adaptive_max_pool2d_gather,
    avg_pool2d_divisor,
    max_pool2d_backward_split,
    max_pool2d_gather,
    max_pool2d_gather_split,
    max_pool2d_indices,
)

__all__ = [
    "POOL",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "max_pool2d_backward_split", "max_pool2d_indices", "avg_pool2d_divisor",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
    "max_pool2d_gather", "max_pool2d_gather_split", "adaptive_max_pool2d_gather",
]

# The numba kernels store the tap number of a maximum as a uint8.
NUMBA_MAX_TAPS = 256

_numpy_floats = registry.floats_on("cpu")


def _numba_supports(*arrays, taps=None, arg_dtype=None):
    """float32/float64 NumPy arrays; max forward: at most 256 taps; max backward: uint8
    tap numbers (what the forward made when K <= 256)."""
    return (_numpy_floats(*arrays)
            and (taps is None or taps <= NUMBA_MAX_TAPS)
            and (arg_dtype is None or np.dtype(arg_dtype) == np.uint8))


def _cuda_code():
    """The CUDA kernels under the family's names (the forward max is told its tap type)."""
    def max_pool2d_forward(x, win):
        return cuda_kernels.max_pool2d_forward(x, win, pool_reference.tap_dtype(win))

    return SimpleNamespace(max_pool2d_forward=max_pool2d_forward,
                           max_pool2d_backward=cuda_kernels.max_pool2d_backward,
                           avg_pool2d_forward=cuda_kernels.avg_pool2d_forward,
                           avg_pool2d_backward=cuda_kernels.avg_pool2d_backward)


POOL = registry.family("pool", __doc__, preference=("numba", "cuda"))
POOL.register("reference", lambda: pool_reference)
POOL.register("numba", registry.numba_module("minidl.kernels.pool_numba"), device="cpu",
              supports=_numba_supports)
POOL.register("cuda", _cuda_code, device="cuda",
              supports=lambda *arrays, **_facts: cuda_kernels.available(*arrays))


# ----------------------------------------------------------------------------- dispatch


def max_pool2d_forward(x, win):
    """Max over each window, and the tap that holds it: x (N, C, H, W) ->
    y (N, C, OH, OW) of x's dtype, arg (N, C, OH, OW) tap numbers (uint8 when K <= 256).
    Ties, NaN and -inf: ``pool_reference.max_pool2d_forward``."""
    return POOL.code(x, taps=win.K).max_pool2d_forward(x, win)


def max_pool2d_backward(gy, arg, win):
    """gx (N, C, H, W): each window's gradient gy (N, C, OH, OW) routed to the tap ``arg``
    names; overlapping windows add up."""
    return POOL.code(gy, arg_dtype=arg.dtype).max_pool2d_backward(gy, arg, win)


def avg_pool2d_forward(x, win, divisor):
    """y (N, C, OH, OW): the sum over each window of x (N, C, H, W), zero padding,
    divided by ``divisor`` (OH, OW) (``avg_pool2d_divisor``)."""
    return POOL.code(x).avg_pool2d_forward(x, win, divisor)


def avg_pool2d_backward(gy, win, divisor):
    """gx (N, C, H, W): every tap of window (oh, ow) gets gy[..., oh, ow] / divisor[oh, ow];
    overlapping windows add up, shares on padding are dropped."""
    return POOL.code(gy).avg_pool2d_backward(gy, win, divisor)
