"""2-D convolution (cross-correlation, as in every deep learning library): ``conv2d``.

Shape letters::

    N   batch size            C   input channels         OC  output channels
    H   input height          W   input width            G   groups
    KH  kernel height         KW  kernel width           Cg = C / G,  OCg = OC / G
    SH  stride along H        SW  stride along W
    PH0, PH1  padding above and below                    K = Cg * KH * KW (one window)
    PW0, PW1  padding left and right                     L = N * OH * OW
    DH  dilation along H      DW  dilation along W
    OH  output height         OW  output width

    OH = floor((H + PH0 + PH1 - DH (KH - 1) - 1) / SH) + 1     (likewise OW)

The forward pass is im2col followed by one matrix product per group (see
``minidl/kernels/im2col.py`` for the column layout); the backward pass is two more
matrix products and a col2im. ``Conv2dFunction`` below is those formulas;
``minidl/kernels/conv.py`` computes them: it picks the implementation (the im2col + GEMM
reference, or direct-convolution numba kernels for small channel counts on the CPU, such
as LeNet's layers) and owns the CPU memory policy (what is kept for backward, reused
scratch buffers). ``minidl.kernels.use_impl('reference', family='conv2d')`` forces the
reference.
"""
from __future__ import annotations

from .. import geometry
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels.conv import CONV2D


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

        col  = im2col(x)                   (C, KH, KW, N, OH, OW) -> (G, K, L)
        Wm   = W.reshape(G, OCg, K)
        Y    = Wm @ col                    (G, OCg, L) == (OC, N, OH, OW)
        y    = Y.transpose(1, 0, 2, 3) + b (N, OC, OH, OW), one contiguous copy

    Backward. The forward is linear in each of x, W, b, and ``Y = Wm @ col`` is a plain
    matrix product, so with ``gY = dL/dY`` (gy transposed to (G, OCg, L)):

        dL/dWm  = gY @ col^T              (G, OCg, K): each weight met every window it
                                          multiplied, summed over the batch and all OH*OW
                                          positions in one product;
        dL/dcol = Wm^T @ gY               (G, K, L): each unfolded value fed OCg
                                          outputs of its group;
        dL/dx   = col2im(dL/dcol)         (N, C, H, W): im2col copied every input pixel
                                          into each window that covers it, so its adjoint
                                          adds those windows' gradients back together
                                          (zero-padding positions are dropped);
        dL/db   = gy.sum over (N, OH, OW) (OC,): the bias was added to every position.

    Only the gradients in ``ctx.needs_input_grad`` are computed. ``kernels/conv.py``
    computes each line: with im2col + GEMM (the reference, the definition), or with the
    direct kernels for small channel counts on the CPU; it also decides what forward
    keeps for the weight gradient (``col`` when small, else x, unfolded again).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, geo):
        unbatched = x.ndim == 3
        x = x[None] if unbatched else x                          # (N, C, H, W)
        conv = CONV2D.code(x, weight, geo=geo)                   # reference or direct
        needs_x, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # col = im2col(x); Y = Wm @ col; y = Y^T + b             (N, OC, OH, OW)
        y, saved = conv.forward(x, weight, bias, geo, keep_for_backward=needs_w)
        ctx.save_for_backward(saved, weight if needs_x else None)
        ctx.geo, ctx.conv, ctx.unbatched = geo, conv, unbatched
        return y[0] if unbatched else y

    @staticmethod
    def backward(ctx, gy):
        saved, weight = ctx.saved_tensors
        geo, conv = ctx.geo, ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad
        gy = gy[None] if ctx.unbatched else gy                   # (N, OC, OH, OW)
        g = conv.grad_output(gy, geo, need_x or need_w)          # gY (G, OCg, L), shared
        gx = gw = gb = None
        if need_w:
            gw, gb = conv.grad_weight(g, saved, geo, need_b)     # dWm = gY @ col^T; db = sum gY
        if need_x:
            gx = conv.grad_input(g, weight, geo)                 # dX = col2im(Wm^T @ gY)
            gx = gx[0] if ctx.unbatched else gx                  # (N, C, H, W)
        if need_b and not need_w:
            gb = conv.grad_bias(g, geo)                          # db = sum of gy over N, OH, OW
        return gx, gw, gb


# ----------------------------------------------------------------------------- wrapper

def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """2-D convolution over a batch of images, like ``torch.nn.functional.conv2d``.

    input: (N, C, H, W) or unbatched (C, H, W); weight: (OC, C/groups, KH, KW);
    bias: (OC,) or None. stride, dilation: int or (SH, SW) / (DH, DW), all >= 1.
    padding: int, (PH, PW), 'valid' (no padding) or 'same' (output size = input size;
    stride 1 only; an even kernel gets its extra padding at the bottom/right, as PyTorch).
    groups: input and output channels split into ``groups`` independent convolutions
    (groups == C is a depthwise convolution). Returns (N, OC, OH, OW) (or (OC, OH, OW)).

    Errors follow ``minidl/errors.py``: TypeError for a non-Tensor, a wrong dtype or a
    wrong argument type; ShapeError for wrong shapes or an input smaller than the kernel;
    ValueError for bad argument values. Every message starts with ``conv2d: ``.
    """
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"conv2d: {name} must be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"conv2d: bias must be a Tensor or None, got {type(bias).__name__}")

    # --- shapes
    if input.ndim not in (3, 4):
        raise ShapeError(f"conv2d: expected a 4-D input (N, C, H, W) or a 3-D unbatched "
                         f"input (C, H, W), got input of shape {input.shape}")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d: expected a 4-D weight (OC, C/groups, KH, KW), got weight "
                         f"of shape {weight.shape}")
    OC, Cg, KH, KW = weight.shape
    C = input.shape[-3]
    if not geometry.is_int(groups):
        raise TypeError(f"conv2d: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if OC % groups:
        raise ValueError(f"conv2d: out_channels (weight.shape[0] = {OC}) must be divisible by "
                         f"groups={groups}")
    if C % groups:
        raise ValueError(f"conv2d: in_channels (input channels = {C}) must be divisible by "
                         f"groups={groups}")
    if Cg * groups != C:
        raise ShapeError(f"conv2d: expected input with {Cg * groups} channels (weight "
                         f"{weight.shape}, groups={groups}), got input of shape {input.shape}")
    if bias is not None and bias.shape != (OC,):
        raise ShapeError(f"conv2d: expected bias of shape ({OC},) for weight {weight.shape}, "
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
    stride = geometry.pair(stride, "stride", "conv2d", minimum=1)
    dilation = geometry.pair(dilation, "dilation", "conv2d", minimum=1)
    pads = geometry.conv_padding(padding, (KH, KW), stride, dilation, op="conv2d")
    x_shape = input.shape if input.ndim == 4 else (1,) + tuple(input.shape)
    geo = geometry.ConvGeometry.of(x_shape, weight.shape, stride, pads, dilation, int(groups))
    for axis, size, reach in zip(("height", "width"), geo.padded_hw, geo.reach):
        if size < reach:
            raise ShapeError(f"conv2d: input {input.shape} is too small: its padded {axis} "
                             f"({size}) is smaller than the (dilated) kernel ({reach}); "
                             f"kernel size {(KH, KW)}, dilation {dilation}, padding "
                             f"{pads[0]}, {pads[1]}")

    return Conv2dFunction.apply(input, weight, bias, geo=geo)
