"""2-D convolution (cross-correlation, as in every deep learning library) and its transpose:
``conv2d``, ``conv_transpose2d``.

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

A transposed convolution maps (N, OC, OH, OW) back to (N, C, H, W): it is the adjoint of
the convolution from (N, C, H, W) to (N, OC, OH, OW) (that convolution's input gradient),
so ONE ``ConvGeometry``, the convolution's, describes both. In conv_transpose2d's own
words its input channels are C_in = OC, its output channels C_out = C, and its weight
(C_in, C_out/G, KH, KW) is the convolution's (OC, Cg, KH, KW). Its output size is the
convolution's input size (``output_padding`` picks one of the SH heights that convolve
to the same OH)::

    H = (OH - 1) SH - 2 PH + DH (KH - 1) + output_padding + 1          (likewise W)

The forward pass is im2col followed by one matrix product per group (see
``minidl/kernels/im2col.py`` for the column layout); the backward pass is two more
matrix products and a col2im. The Functions below are those formulas;
``minidl/kernels/conv.py`` computes them: it picks the implementation (the im2col + GEMM
reference, or direct-convolution numba kernels for small channel counts on the CPU, such
as LeNet's layers) and owns the CPU memory policy (what is kept for backward, reused
scratch buffers). ``minidl.kernels.use_impl('reference', family='conv2d')`` forces the
reference.

Three Functions, closed under differentiation: every gradient of each is one of the three
(all three are bilinear, so a gradient is the same kind of map with the upstream gradient
in place of one argument). Their recorded backwards (``create_graph=True``) call the
three again, so derivatives of any order work::

    conv(x, W)   = Y = Wm @ im2col(x)            Conv2dFunction           (x, W, b) -> y
    convT(g, W)  = col2im(Wm^T @ gY)             ConvTranspose2dFunction  (g, W, b) -> z
    wgrad(x, g)  = gY @ im2col(x)^T              Conv2dWeightGradFunction (x, g)    -> dW

    y = conv(x, W) + b:    dx = convT(gy, W)    dW = wgrad(x, gy)    db = sum gy
    z = convT(g, W) + b:   dg = conv(gz, W)     dW = wgrad(gz, g)    db = sum gz
    dW = wgrad(x, g):      dx = convT(g, v)     dg = conv(x, v)      (v = dL/d(dW))

(from <convT(g, W), u> = <g, conv(u, W)> and <wgrad(x, g), v> = <conv(x, v), g>, the
same geometry throughout).
"""
from __future__ import annotations

import math
import sys

from .. import geometry
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels.conv import conv2d_code, plane_sums


def _bias_dims(ndim):
    """The axes a bias gradient sums over: (0, 2, 3) of (N, C, H, W), (1, 2) unbatched."""
    return (0, 2, 3) if ndim == 4 else (1, 2)


# ----------------------------------------------------------------------------- Functions

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

    Recorded backward (``create_graph``): the same three lines as Functions of Tensors,
    dx = convT(gy, W), dW = wgrad(x, gy), db = gy.sum(...), so they can be differentiated
    again. That is why forward saves x and W themselves next to what the kernel keeps.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, geo):
        unbatched = x.ndim == 3
        x4 = x[None] if unbatched else x                         # (N, C, H, W)
        conv = conv2d_code(x4, weight, geo)                     # reference, direct, ...
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # col = im2col(x); Y = Wm @ col; y = Y^T + b             (N, OC, OH, OW)
        y, kept = conv.forward(x4, weight, bias, geo, keep_for_backward=need_w)
        # kept: what the kernel reads for dW (col, or x to unfold again, or the direct
        # kernels' padded x). x and W themselves: the recorded backward differentiates
        # through them (saving the input array costs nothing; it only outlives forward
        # where the kernel kept col instead).
        ctx.save_for_backward(x if need_w else None, weight if need_x else None, kept)
        ctx.geo, ctx.conv, ctx.unbatched = geo, conv, unbatched
        return y[0] if unbatched else y

    @staticmethod
    def backward(ctx, gy):
        _, weight, kept = ctx.saved_tensors
        geo, conv = ctx.geo, ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad
        gy = gy[None] if ctx.unbatched else gy                   # (N, OC, OH, OW)
        g = conv.grad_output(gy, geo, need_x or need_w)          # gY (G, OCg, L), shared
        g.need_x = need_x      # an implementation may make dX in dW's pass (winograd's blocks)
        gx = gw = gb = None
        if need_w:
            gw, gb = conv.grad_weight(g, kept, geo, need_b)      # dWm = gY @ col^T; db = sum gY
        if need_x:
            gx = conv.grad_input(g, weight, geo)                 # dX = col2im(Wm^T @ gY)
            gx = gx[0] if ctx.unbatched else gx                  # (N, C, H, W)
        if need_b and not need_w:
            gb = conv.grad_bias(g, geo)                          # db = sum of gy over N, OH, OW
        return gx, gw, gb

    @staticmethod
    def differentiable_backward(ctx, gy):
        x, weight, _ = ctx.saved_tensors                         # the input Tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        geo = ctx.geo
        gx = ConvTranspose2dFunction.apply(gy, weight, None, geo=geo) if need_x else None
        gw = Conv2dWeightGradFunction.apply(x, gy, geo=geo) if need_w else None
        gb = gy.sum(dim=_bias_dims(gy.ndim)) if need_b else None
        return gx, gw, gb


class ConvTranspose2dFunction(Function):
    """z = conv_transpose2d(g, W) + b: the adjoint of conv2d with respect to its input.

    ``geo`` is the geometry of the convolution from z's shape to g's (module docstring).
    Inputs and output::

        g     (N, OC, OH, OW)       or (OC, OH, OW) unbatched
        W     (OC, Cg, KH, KW)      PyTorch's (C_in, C_out/G, KH, KW) of a transposed conv
        b     (C,) or None
        z     (N, C, H, W)          or (C, H, W) unbatched

        z[n, g*Cg + c, i*SH + kh*DH - PH0, j*SW + kw*DW - PW0] += W[o, c, kh, kw] * g[n, o, i, j]
        for every o of group g = o // OCg and every (i, j, kh, kw) landing inside z; + b[c]

    Forward: conv2d's input gradient, with g as the upstream gradient::

        gY   = g transposed             (G, OCg, L)
        z    = col2im(Wm^T @ gY) + b    (N, C, H, W)

    Backward. z is linear in g and <convT(g, W), gz> = <g, conv(gz, W)>, so::

        dL/dg = conv2d(gz, W)           (N, OC, OH, OW), no bias
        dL/dW = wgrad(gz, g)            (OC, Cg, KH, KW): conv2d's weight gradient, gz in
                                        the place of its input, g of its upstream gradient
        dL/db = gz.sum over (N, H, W)   (C,)
    """

    @staticmethod
    def forward(ctx, g, weight, bias, geo):
        unbatched = g.ndim == 3
        g4 = g[None] if unbatched else g                         # (N, OC, OH, OW)
        conv = conv2d_code(g4, weight, geo)
        # z = col2im(Wm^T @ gY)                                  (N, C, H, W)
        z = conv.grad_input(conv.grad_output(g4, geo), weight, geo)
        if bias is not None:
            z += bias.reshape(-1, 1, 1)                          # z is the kernel's new array
        need_g, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(g if need_w else None, weight if need_g else None)
        ctx.geo, ctx.conv, ctx.unbatched = geo, conv, unbatched
        return z[0] if unbatched else z

    @staticmethod
    def backward(ctx, gz):
        g, weight = ctx.saved_tensors
        geo, conv = ctx.geo, ctx.conv
        need_g, need_w, need_b = ctx.needs_input_grad
        gz = gz[None] if ctx.unbatched else gz                   # (N, C, H, W)
        dg = dw = db = None
        if need_g:                                               # dg = conv2d(gz, W)
            dg, _ = conv.forward(gz, weight, None, geo, keep_for_backward=False)
            dg = dg[0] if ctx.unbatched else dg                  # (N, OC, OH, OW)
        if need_w:                                               # dW = wgrad(gz, g)
            g = g[None] if ctx.unbatched else g
            dw, _ = conv.grad_weight(conv.grad_output(g, geo), conv.weight_source(gz, geo),
                                     geo, need_b=False)
        if need_b:
            db = plane_sums(gz)                                  # (C,): gz summed
        return dg, dw, db

    @staticmethod
    def differentiable_backward(ctx, gz):
        g, weight = ctx.saved_tensors                            # the input Tensors
        need_g, need_w, need_b = ctx.needs_input_grad
        geo = ctx.geo
        dg = Conv2dFunction.apply(gz, weight, None, geo=geo) if need_g else None
        dw = Conv2dWeightGradFunction.apply(gz, g, geo=geo) if need_w else None
        db = gz.sum(dim=_bias_dims(gz.ndim)) if need_b else None
        return dg, dw, db


class Conv2dWeightGradFunction(Function):
    """dW = wgrad(x, g): conv2d's weight gradient as a function of the convolution's input
    x and upstream gradient g. Higher-order gradients need it as a Function of its own
    (conv2d's recorded backward calls it).

    Inputs and output::

        x     (N, C, H, W)          or (C, H, W) unbatched
        g     (N, OC, OH, OW)       or (OC, OH, OW) unbatched
        dW    (OC, Cg, KH, KW)

        dW[o, c, kh, kw] = sum_{n, i, j} g[n, o, i, j]
                                         * xpad[n, gr*Cg + c, i*SH + kh*DH, j*SW + kw*DW]
        (gr = o // OCg, the group of output channel o)

    Forward: dWm = gY @ col^T, col = im2col(x) (the kernels' ``grad_weight``).

    Backward, v = dL/d(dW) (OC, Cg, KH, KW). dW is bilinear in (x, g) and
    <wgrad(x, g), v> = <conv(x, v), g>, so::

        dL/dx = convT(g, v)             (N, C, H, W): conv2d's input gradient, weight v
        dL/dg = conv2d(x, v)            (N, OC, OH, OW): a convolution with weight v
    """

    @staticmethod
    def forward(ctx, x, g, geo):
        unbatched = x.ndim == 3
        x4, g4 = (x[None], g[None]) if unbatched else (x, g)     # (N, C, H, W), (N, OC, OH, OW)
        conv = conv2d_code(x4, g4, geo)                         # chosen by x's and g's arrays
        # dWm = gY @ col^T                                       (OC, Cg, KH, KW)
        dw, _ = conv.grad_weight(conv.grad_output(g4, geo), conv.weight_source(x4, geo), geo,
                                 need_b=False)
        need_x, need_g = ctx.needs_input_grad
        ctx.save_for_backward(x if need_g else None, g if need_x else None)
        ctx.geo, ctx.conv, ctx.unbatched = geo, conv, unbatched
        return dw

    @staticmethod
    def backward(ctx, gv):
        x, g = ctx.saved_tensors
        geo, conv = ctx.geo, ctx.conv
        need_x, need_g = ctx.needs_input_grad
        dx = dg = None
        if need_x:                                               # dx = convT(g, v)
            g = g[None] if ctx.unbatched else g
            dx = conv.grad_input(conv.grad_output(g, geo), gv, geo)
            dx = dx[0] if ctx.unbatched else dx                  # (N, C, H, W)
        if need_g:                                               # dg = conv2d(x, v)
            x = x[None] if ctx.unbatched else x
            dg, _ = conv.forward(x, gv, None, geo, keep_for_backward=False)
            dg = dg[0] if ctx.unbatched else dg                  # (N, OC, OH, OW)
        return dx, dg

    @staticmethod
    def differentiable_backward(ctx, gv):
        x, g = ctx.saved_tensors                                 # the input Tensors
        need_x, need_g = ctx.needs_input_grad
        geo = ctx.geo
        dx = ConvTranspose2dFunction.apply(g, gv, None, geo=geo) if need_x else None
        dg = Conv2dFunction.apply(x, gv, None, geo=geo) if need_g else None
        return dx, dg


# ----------------------------------------------------------------------------- wrappers

def _check_tensors(op, input, weight, bias):  # noqa: A002
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"{op}: bias must be a Tensor or None, got {type(bias).__name__}")


def _check_groups(op, groups):
    if not geometry.is_int(groups):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")


def _check_dtypes(op, input, weight, bias):  # noqa: A002
    if input.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating point input, got dtype {input.dtype}; "
                        f"convert it with .float()")
    if weight.dtype != input.dtype:
        raise TypeError(f"{op}: input dtype {input.dtype} does not match weight dtype "
                        f"{weight.dtype}; convert with .float() or .double()")
    if bias is not None and bias.dtype != input.dtype:
        raise TypeError(f"{op}: bias dtype {bias.dtype} does not match input dtype "
                        f"{input.dtype}")


def _check_kernel(op, weight, layout):
    """A kernel of at least 1x1: an empty one would give a silent all-zero (or bias-only)
    output where PyTorch refuses."""
    KH, KW = weight.shape[2:]
    if KH < 1 or KW < 1:
        raise ShapeError(f"{op}: expected a kernel of at least 1x1, got weight of shape "
                         f"{weight.shape} ({layout}: KH={KH}, KW={KW}); give the weight a "
                         f"positive kernel height and width")


# the most bytes one array can hold: NumPy's limit is its index type's maximum, which is
# Python's sys.maxsize (both are the platform's signed size type)
_MAX_ARRAY_BYTES = sys.maxsize


def _check_array_sizes(op, itemsize, arrays, hint):
    """Refuse, naming the op, a geometry whose arrays no machine could hold (NumPy would
    say "array is too big" without saying which op or argument caused it).

    arrays: {what: shape} of the arrays the op allocates; hint: a function returning how
    to fix it (formatted only when the error is raised: this runs on every call).
    """
    for what, shape in arrays.items():
        count = math.prod(shape)
        if count * itemsize > _MAX_ARRAY_BYTES:
            raise ValueError(f"{op}: the {what} would have shape {tuple(shape)} "
                             f"({count:.3g} elements of {itemsize} bytes), more than any "
                             f"array can hold; {hint()}")


def _apply_reporting_memory(op, function, *args, describe, **params):
    """``function.apply(...)``, with an out-of-memory error that names the op and the
    shapes (NumPy's MemoryError names only the array it failed to allocate); describe: a
    function returning them, formatted only when the error is raised."""
    try:
        return function.apply(*args, **params)
    except MemoryError as exc:
        raise MemoryError(f"{op}: not enough memory for {describe()} ({exc}); use a smaller "
                          f"batch, padding or image size") from None


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
    _check_tensors("conv2d", input, weight, bias)
    key = _geometry_key(input, weight, bias, stride, padding, dilation, groups)
    geo = _GEOMETRIES.get(key) if key is not None else None
    if geo is None:
        geo = _conv2d_geometry(input, weight, bias, stride, padding, dilation, groups)
        if key is not None:
            if len(_GEOMETRIES) >= _GEOMETRIES_MAX:
                _GEOMETRIES.clear()
            _GEOMETRIES[key] = geo
    return _apply_reporting_memory("conv2d", Conv2dFunction, input, weight, bias, geo=geo,
                                   describe=lambda: f"input {input.shape}, weight "
                                                    f"{weight.shape}, padding "
                                                    f"{geo.padding[0]}, {geo.padding[1]}")


# The checks and the geometry of a conv2d call depend only on the shapes and dtypes of its
# tensors and on its arguments: repeated layers find them here (they cost ~10 us a call,
# a 1x1 convolution at batch 1 ~40 us in all). Keyed only on plain ints, tuples of ints
# and strings (True == 1 must not find stride=1's entry: its checks refuse a bool).
_GEOMETRIES = {}
_GEOMETRIES_MAX = 1024


def _plain(v):
    t = type(v)
    return t is int or t is str or (t is tuple and all(type(e) is int for e in v))


def _geometry_key(input, weight, bias, stride, padding, dilation, groups):  # noqa: A002
    """The cache key of a conv2d call, or None for arguments the cache does not take."""
    if not (type(groups) is int and _plain(stride) and _plain(padding) and _plain(dilation)):
        return None
    x, w = input.data, weight.data
    b = None if bias is None else bias.data
    return (x.shape, w.shape, x.dtype, w.dtype, None if b is None else (b.shape, b.dtype),
            stride, padding, dilation, groups)


def _conv2d_geometry(input, weight, bias, stride, padding, dilation, groups):  # noqa: A002
    """conv2d's argument checks (every error it raises), and its ``ConvGeometry``."""
    # --- shapes
    if input.ndim not in (3, 4):
        raise ShapeError(f"conv2d: expected a 4-D input (N, C, H, W) or a 3-D unbatched "
                         f"input (C, H, W), got input of shape {input.shape}")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d: expected a 4-D weight (OC, C/groups, KH, KW), got weight "
                         f"of shape {weight.shape}")
    OC, Cg, KH, KW = weight.shape
    C = input.shape[-3]
    _check_kernel("conv2d", weight, "(OC, C/groups, KH, KW)")
    _check_groups("conv2d", groups)
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
    _check_dtypes("conv2d", input, weight, bias)

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
    _check_array_sizes("conv2d", input.dtype.itemsize,
                       {"padded input": (geo.N, geo.C) + tuple(geo.padded_hw),
                        "output": geo.out_shape},
                       lambda: f"padding {pads[0]}, {pads[1]} or stride {stride} is far too "
                               f"large for input {input.shape}")
    return geo


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0,  # noqa: A002
                     groups=1, dilation=1):
    """2-D transposed convolution ("deconvolution"), like ``torch.nn.functional.conv_transpose2d``.

    The adjoint of ``conv2d`` with respect to its input: each input pixel scatters
    ``weight`` times its value into the output, the windows ``stride`` apart (an
    upsampling by the stride). It is the input gradient of the convolution whose output
    has this input's shape.

    input: (N, C_in, H, W) or unbatched (C_in, H, W); weight: (C_in, C_out/groups, KH, KW);
    bias: (C_out,) or None. stride, dilation: int or pair, >= 1. padding: int or pair,
    >= 0, removed from each side of the output (the convolution's padding).
    output_padding: int or pair, extra rows/columns at the bottom/right of the output,
    each smaller than the stride or the dilation along its axis. Returns
    (N, C_out, OH, OW) (or (C_out, OH, OW)) with
    ``OH = (H - 1) SH - 2 PH + DH (KH - 1) + output_padding + 1`` (likewise OW).

    Errors as ``conv2d``'s (``minidl/errors.py``); every message starts with
    ``conv_transpose2d: ``.
    """
    op = "conv_transpose2d"
    _check_tensors(op, input, weight, bias)

    # --- shapes
    if input.ndim not in (3, 4):
        raise ShapeError(f"{op}: expected a 4-D input (N, C_in, H, W) or a 3-D unbatched "
                         f"input (C_in, H, W), got input of shape {input.shape}")
    if weight.ndim != 4:
        raise ShapeError(f"{op}: expected a 4-D weight (C_in, C_out/groups, KH, KW), got "
                         f"weight of shape {weight.shape}")
    C_in, OCg, KH, KW = weight.shape
    _check_kernel(op, weight, "(C_in, C_out/groups, KH, KW)")
    _check_groups(op, groups)
    if C_in % groups:
        raise ValueError(f"{op}: in_channels (weight.shape[0] = {C_in}) must be divisible by "
                         f"groups={groups}")
    if input.shape[-3] != C_in:
        raise ShapeError(f"{op}: expected input with {C_in} channels (weight "
                         f"{weight.shape}), got input of shape {input.shape}")
    C_out = OCg * groups
    if bias is not None and bias.shape != (C_out,):
        raise ShapeError(f"{op}: expected bias of shape ({C_out},) for weight {weight.shape} "
                         f"and groups={groups}, got bias of shape {bias.shape}")
    _check_dtypes(op, input, weight, bias)

    # --- geometry: that of the convolution from the output's shape to the input's
    stride = geometry.pair(stride, "stride", op, minimum=1)
    dilation = geometry.pair(dilation, "dilation", op, minimum=1)
    padding = geometry.pair(padding, "padding", op, minimum=0)
    output_padding = geometry.pair(output_padding, "output_padding", op, minimum=0)
    if any(p >= max(s, d) for p, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{op}: output_padding must be smaller than either stride or "
                         f"dilation along each axis, got output_padding={output_padding}, "
                         f"stride={stride}, dilation={dilation}")
    H, W = input.shape[-2:]
    out_hw = tuple(geometry.conv_transpose_output_size(L, K, S, P, D, OP) for L, K, S, P, D, OP in
                   zip((H, W), (KH, KW), stride, padding, dilation, output_padding))
    if min(out_hw) < 1:
        raise ShapeError(f"{op}: the output would be {out_hw}, too small, for input "
                         f"{input.shape}, kernel size {(KH, KW)}, stride {stride}, padding "
                         f"{padding}, dilation {dilation}, output_padding {output_padding}; "
                         f"use a smaller padding")
    N = input.shape[0] if input.ndim == 4 else 1
    (PH, PW) = padding
    geo = geometry.ConvGeometry.of((N, C_out) + out_hw, weight.shape, stride,
                                   ((PH, PH), (PW, PW)), dilation, int(groups))
    if (geo.OH, geo.OW) != (H, W):
        # output_padding >= stride (allowed below the dilation) adds rows that no window
        # reaches; the convolution keeps the first H x W windows, those of the input
        geo = geo._replace(OH=H, OW=W)
    _check_array_sizes(op, input.dtype.itemsize, {"output": (N, C_out) + out_hw},
                       lambda: f"stride {stride}, dilation {dilation} or output_padding "
                               f"{output_padding} is far too large for input {input.shape}")
    return _apply_reporting_memory(op, ConvTranspose2dFunction, input, weight, bias, geo=geo,
                                   describe=lambda: f"input {input.shape}, weight "
                                                    f"{weight.shape}, output "
                                                    f"{(N, C_out) + out_hw}")
