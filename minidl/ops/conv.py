"""2-D convolution (cross-correlation, as in every deep learning library): ``conv2d``.

Shape letters::

    N   batch size            C   input channels         OC  output channels
    H   input height          W   input width            G   groups
    KH  kernel height         KW  kernel width           Cg = C / G,  OCg = OC / G
    SH  stride along H        SW  stride along W
    PH  padding along H       PW  padding along W        (top/left; bottom/right may differ
    DH  dilation along H      DW  dilation along W        by one for padding='same')
    OH  output height         OW  output width           K = Cg * KH * KW (one window)

    OH = floor((H + PH_top + PH_bottom - DH (KH - 1) - 1) / SH) + 1     (likewise OW)

The forward pass is im2col followed by one matrix product per group (see
``minidl/kernels/im2col.py`` for the column layout); the backward pass is two more
matrix products and a col2im. That is the reference, and the path for the GPU and for
large channel counts.

On the CPU, small channel counts (stride 1, dilation 1, groups 1, C*KH*KW <= 400,
OC <= 32: LeNet's layers) take direct-convolution numba kernels instead: forward +
backward 1.8x (LeNet's conv2) to 3.3x (8->16 channels, 5x5) faster than im2col + GEMM
(``minidl/kernels/conv_direct.py``: the kernels, the rule and its measurements;
``conv_direct.force_impl('im2col')`` forces the reference).
"""
from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..kernels import conv_direct
from ..kernels.im2col import col2im, im2col


# ----------------------------------------------------------------------------- scratch

class _Scratch(threading.local):
    """Per-thread reusable buffers (one per dtype) for the unfolded matrices.

    ``col`` and its gradient live only inside one forward or backward call and are
    KH*KW times the size of the input. A fresh NumPy array that large comes straight
    from the kernel, and its page faults on first touch cost as much as filling it
    (measured: ~40% of im2col and ~15% of the col-gradient product at ResNet sizes), so
    the CPU path reuses one buffer, grown to the largest size seen. On the GPU, CuPy's
    memory pool already reuses blocks.
    """

    def __init__(self):
        self.buffers = {}


_SCRATCH = _Scratch()


def _scratch(xp, shape, dtype):
    """An uninitialised C-contiguous array of ``shape``; on the CPU a view of the scratch
    buffer, valid until the next call (never let it escape the op)."""
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    n = math.prod(shape)
    buf = _SCRATCH.buffers.get(dtype)
    if buf is None or buf.size < n:
        _SCRATCH.buffers.pop(dtype, None)  # free the old buffer before allocating the new
        buf = _SCRATCH.buffers[dtype] = np.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


# Unfolded inputs up to this size are kept from forward for the weight gradient (sparing
# backward one im2col: ~20% of a LeNet layer's forward+backward); larger ones are unfolded
# again in backward (KH*KW copies of every layer's input would not fit in memory).
KEEP_COL_BYTES = 16 * 2**20


def release_scratch():
    """Free this thread's scratch buffers (they otherwise stay as large as the largest
    unfolded input seen)."""
    _SCRATCH.buffers.clear()


# ----------------------------------------------------------------------------- Function

class Conv2dFunction(Function):
    """y = conv2d(x, W) + b, computed as a matrix product on the unfolded input.

    Inputs and output::

        x     (N, C, H, W)          or (C, H, W) unbatched
        W     (OC, Cg, KH, KW)      Cg = C / G
        b     (OC,) or None
        y     (N, OC, OH, OW)       or (OC, OH, OW) unbatched

        y[n, o, i, j] = b[o] + sum_{c, kh, kw} W[o, c, kh, kw]
                                 * xpad[n, g*Cg + c, i*SH + kh*DH, j*SW + kw*DW]
        (g = o // OCg is the group of output channel o; xpad is x zero-padded)

    Forward (the reshapes are views, no copies; ``@`` is batched over the G groups)::

        col  = im2col(x)                   (C, KH, KW, N, OH, OW) -> (G, K, N*OH*OW)
        Wm   = W.reshape(G, OCg, K)
        Y    = Wm @ col                    (G, OCg, N*OH*OW) == (OC, N, OH, OW)
        y    = Y.transpose(1, 0, 2, 3) + b (N, OC, OH, OW), one contiguous copy

    Backward. The forward is linear in each of x, W, b, and ``Y = Wm @ col`` is a plain
    matrix product, so with ``gY = dL/dY`` (gy transposed to (G, OCg, N*OH*OW)):

        dL/dWm  = gY @ col^T              (G, OCg, K): each weight met every window it
                                          multiplied, summed over the batch and all OH*OW
                                          positions in one product (computed as
                                          (col @ gY^T)^T, which BLAS runs faster);
        dL/dcol = Wm^T @ gY               (G, K, N*OH*OW): each unfolded value fed OCg
                                          outputs of its group;
        dL/dx   = col2im(dL/dcol)         (N, C, H, W): im2col copied every input pixel
                                          into each window that covers it, so its adjoint
                                          adds those windows' gradients back together
                                          (zero-padding positions are dropped);
        dL/db   = gy.sum over (N, OH, OW) (OC,): the bias was added to every position.

    Only the gradients in ``ctx.needs_input_grad`` are computed. The weight gradient needs
    ``col``, which is KH*KW times the size of x: too much to hold for every layer of a
    deep net. So forward keeps it only when it is small (``KEEP_COL_BYTES``, 16 MiB: the
    LeNet layers), and otherwise backward unfolds x again (one im2col, ~7% of a ResNet
    layer's forward+backward). A ``col`` that is not kept, and ``dL/dcol``, live in a
    reused scratch buffer (see ``_Scratch``).

    Small channel counts on the CPU compute the same y, dL/dx, dL/dW, dL/db with the
    direct kernels of ``kernels/conv_direct.py`` instead (``conv_direct.use_direct``
    decides; the im2col formulas above stay the definition they are tested against).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        xp = backend.get_array_module(x, weight)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        N, C, H, W = x.shape
        OC, Cg, KH, KW = weight.shape
        G = groups
        OCg, K = OC // G, Cg * KH * KW
        (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
        geo = (SH, SW, PH, PW, DH, DW)

        OH = (H + sum(PH) - DH * (KH - 1) - 1) // SH + 1
        OW = (W + sum(PW) - DW * (KW - 1) - 1) // SW + 1
        L = N * OH * OW
        needs_x, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.geometry = (N, C, H, W, OC, G, KH, KW, OH, OW, geo)
        ctx.unbatched = unbatched
        ctx.direct = conv_direct.use_direct(x, weight, stride, dilation, groups)
        if ctx.direct:                    # small channel counts on the CPU (module doc)
            y, saved = conv_direct.conv2d_forward(x, weight, bias, padding)
            ctx.save_for_backward(saved if needs_w else (saved[0], None), weight)
            return y[0] if unbatched else y

        col_shape = (C, KH, KW, N, OH, OW)
        keep_col = needs_w and math.prod(col_shape) * x.dtype.itemsize <= KEEP_COL_BYTES
        col = im2col(x, KH, KW, *geo,                        # (C, KH, KW, N, OH, OW)
                     out=None if keep_col else _scratch(xp, col_shape, x.dtype))
        wm = weight.reshape(G, OCg, K)
        Y = xp.matmul(wm, col.reshape(G, K, L))              # (G, OCg, L) == (OC, N, OH*OW)
        Yt = Y.reshape(OC, N, OH * OW).transpose(1, 0, 2)    # (N, OC, OH*OW), a view
        y = xp.empty((N, OC, OH * OW), dtype=Y.dtype)
        if bias is not None:
            xp.add(Yt, bias.reshape(OC, 1), out=y)           # transpose and bias in one pass
        else:
            y[...] = Yt
        y = y.reshape(N, OC, OH, OW)

        if keep_col:
            ctx.save_for_backward(col, weight if needs_x else None)
        else:
            ctx.save_for_backward(x if needs_w else None, weight if needs_x else None)
        ctx.kept_col = keep_col
        return y[0] if unbatched else y

    @staticmethod
    def backward(ctx, gy):
        x_or_col, weight = ctx.saved_tensors
        N, C, H, W, OC, G, KH, KW, OH, OW, geo = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad
        xp = backend.get_array_module(gy)
        if ctx.unbatched:
            gy = gy[None]
        if ctx.direct:
            saved, weight = ctx.saved_tensors
            gx, gw, gb = conv_direct.conv2d_backward(saved, weight, gy, geo[2:4], (H, W),
                                                     need_x, need_w, need_b)
            return (gx[0] if ctx.unbatched and gx is not None else gx), gw, gb
        OCg = OC // G
        K = (C // G) * KH * KW
        L = N * OH * OW

        gx = gw = gb = None
        if need_x or need_w:
            # dL/dY in the product's layout: (N, OC, OH*OW) -> (OC, N, OH*OW), one copy.
            gY = xp.ascontiguousarray(gy.reshape(N, OC, OH * OW).transpose(1, 0, 2))
            gY = gY.reshape(G, OCg, L)
            if need_b:
                gb = gY.sum(axis=2).reshape(OC)                   # (OC,)
        elif need_b:
            gb = gy.sum(axis=(0, 2, 3))
        if need_w:
            if ctx.kept_col:
                col = x_or_col
            else:                                                 # unfold again
                col = im2col(x_or_col, KH, KW, *geo,
                             out=_scratch(xp, (C, KH, KW, N, OH, OW), x_or_col.dtype))
            # gW = gY @ col^T, computed as (col @ gY^T)^T: the same product, but BLAS is
            # faster with the long L axis as the inner dimension of the left operand
            # (measured 1.3-1.6x on the LeNet and ResNet shapes).
            gwT = xp.matmul(col.reshape(G, K, L), gY.transpose(0, 2, 1))   # (G, K, OCg)
            gw = gwT.transpose(0, 2, 1).reshape(OC, C // G, KH, KW)       # small copy
            del col
        if need_x:
            wm = weight.reshape(G, OCg, K)
            gcol = xp.matmul(wm.transpose(0, 2, 1), gY,                    # (G, K, L)
                             out=_scratch(xp, (G, K, L), gY.dtype))
            gx = col2im(gcol.reshape(C, KH, KW, N, OH, OW), H, W, *geo)   # (N, C, H, W)
            if ctx.unbatched:
                gx = gx[0]
        return gx, gw, gb


# ----------------------------------------------------------------------------- wrapper

def _pair(value, name):
    """An int or a pair of ints as a pair of Python ints; errors name the argument."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")


def _padding(padding, kernel, stride, dilation):
    """Padding as ((top, bottom), (left, right)) following PyTorch's rules."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"conv2d: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride}); use an explicit padding")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                # PyTorch puts the odd pixel of an even kernel at the end (bottom/right).
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"conv2d: padding must be 'same', 'valid', an int or a pair of ints, "
                         f"got {padding!r}")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"conv2d: padding must be non-negative, got {padding!r}")
    return (ph, ph), (pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """2-D convolution over a batch of images, like ``torch.nn.functional.conv2d``.

    input: (N, C, H, W) or unbatched (C, H, W); weight: (OC, C/groups, KH, KW);
    bias: (OC,) or None. stride, dilation: int or (SH, SW) / (DH, DW), all >= 1.
    padding: int, (PH, PW), 'valid' (no padding) or 'same' (output size = input size;
    stride 1 only; an even kernel gets its extra padding at the bottom/right, as PyTorch).
    groups: input and output channels split into ``groups`` independent convolutions
    (groups == C is a depthwise convolution). Returns (N, OC, OH, OW) (or (OC, OH, OW)).
    """
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"conv2d: {name} must be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"conv2d: bias must be a Tensor or None, got {type(bias).__name__}")

    # --- shapes
    if input.ndim not in (3, 4):
        raise RuntimeError(f"conv2d: expected a 4-D input (N, C, H, W) or a 3-D unbatched "
                           f"input (C, H, W), got input of shape {input.shape}")
    if weight.ndim != 4:
        raise RuntimeError(f"conv2d: expected a 4-D weight (OC, C/groups, KH, KW), got weight "
                           f"of shape {weight.shape}")
    OC, Cg, KH, KW = weight.shape
    C = input.shape[-3]
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if OC % groups:
        raise ValueError(f"conv2d: out_channels (weight.shape[0] = {OC}) must be divisible by "
                         f"groups={groups}")
    if C % groups:
        raise ValueError(f"conv2d: in_channels (input channels = {C}) must be divisible by "
                         f"groups={groups}")
    if Cg * groups != C:
        raise RuntimeError(f"conv2d: expected input with {Cg * groups} channels (weight "
                           f"{weight.shape}, groups={groups}), got input of shape {input.shape}")
    if bias is not None and bias.shape != (OC,):
        raise RuntimeError(f"conv2d: expected bias of shape ({OC},) for weight {weight.shape}, "
                           f"got bias of shape {bias.shape}")

    # --- dtypes
    if input.dtype.kind != "f":
        raise TypeError(f"conv2d: expected a floating point input, got dtype {input.dtype}; "
                        f"convert it with .float()")
    if weight.dtype != input.dtype:
        raise TypeError(f"conv2d: input dtype {input.dtype} does not match weight dtype "
                        f"{weight.dtype}; convert with .float() or .double()")
    if bias is not None and bias.dtype != input.dtype:
        raise TypeError(f"conv2d: bias dtype {bias.dtype} does not match input dtype "
                        f"{input.dtype}")

    # --- geometry
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"conv2d: dilation must be >= 1, got {dilation}")
    pads = _padding(padding, (KH, KW), stride, dilation)
    H, W = input.shape[-2:]
    padded = (H + sum(pads[0]), W + sum(pads[1]))
    dilated = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
    if dilated[0] > padded[0] or dilated[1] > padded[1]:
        raise RuntimeError(f"conv2d: kernel size {(KH, KW)} (dilated {dilated}) is larger than "
                           f"the padded input {padded} (input of shape {input.shape}, "
                           f"padding {pads[0]}, {pads[1]})")

    return Conv2dFunction.apply(input, weight, bias, stride=stride, padding=pads,
                                dilation=dilation, groups=int(groups))
