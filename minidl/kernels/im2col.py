"""The im2col kernel family: unfold the sliding windows of a convolution into a matrix, and
fold back.

Shape letters (``minidl/geometry.py`` computes them, once, as a ``ConvGeometry``)::

    N   batch size                 C   input channels
    H   input height               W   input width
    KH  kernel height              KW  kernel width
    SH  stride along H             SW  stride along W
    PH0, PH1  padding above/below  PW0, PW1  padding left/right
    DH  dilation along H           DW  dilation along W
    OH  output height              OW  output width

    OH = floor((H + PH0 + PH1 - DH (KH - 1) - 1) / SH) + 1         (and likewise OW)

The padding may differ above and below (PyTorch's ``padding='same'`` with an even kernel
needs it).

The column layout
-----------------
``im2col(x, geo)`` returns ``col`` of shape ``(C, KH, KW, N, OH, OW)``::

    col[c, kh, kw, n, oh, ow] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]

where ``xpad`` is ``x`` with PH0 zero rows above (PW0 zero columns to the left).
Reshaped to ``(C*KH*KW, N*OH*OW)`` (a view, no copy) each column holds one receptive
field and each row one (channel, kernel offset) pair, so a convolution is ONE matrix
product ``W.reshape(OC, C*KH*KW) @ col`` over the whole batch, and its weight gradient
is ``gy @ col.T`` without copying ``col``; only the (much smaller) output and its
gradient are transposed between (OC, N, OH, OW) and (N, OC, OH, OW). (Chainer and DeZero
use ``(N, C, KH, KW, OH, OW)``; that needs either a batched product per image or a
transposed copy of ``col`` for the weight gradient.) With ``groups`` the leading ``C``
splits into ``(groups, C/groups)`` and each group is its own product.

``col2im(col, geo)`` is the adjoint (transpose) of ``im2col``: it adds every entry of
``col`` back into the input pixel it was copied from, so that
``<im2col(x), c> == <x, col2im(c)>``. That is exactly the input gradient of the unfolding.

Implementations (``minidl.kernels.registry`` chooses; ``use_impl`` forces one)
-------------------------------------------------------------------------------
* ``reference``: NumPy (or CuPy) with a Python loop over the KH*KW kernel offsets only;
  each step copies one strided slice of the padded input for the whole batch and all
  channels at once (the Chainer way). Readable, runs any dtype on either device, and the
  definition the fast paths are tested against.
* ``numba`` (``im2col_numba.py``): compiled loops over the (channel, image) planes, no
  padded copy of the input; float32/float64 NumPy arrays.
* ``cuda`` (``cuda_kernels.im2col`` / ``col2im``): one CUDA thread per column entry, and
  a gather-style col2im, one thread per input pixel summing the entries copied from it
  (deterministic, no atomics); float32/float64 CuPy arrays.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..backend import get_array_module
from ..errors import ShapeError
from . import cuda_kernels, registry

__all__ = ["IM2COL", "im2col", "col2im", "im2col_reference", "col2im_reference"]


# ----------------------------------------------------------------------------- reference

def im2col_reference(x, geo, out=None):
    """Unfold ``x`` (N, C, H, W) into ``col`` (C, KH, KW, N, OH, OW). NumPy or CuPy.

    geo: the ``ConvGeometry``; out: a C-contiguous (C, KH, KW, N, OH, OW) array of x's
    dtype to write into (returned), or None.

    Loops over the KH*KW kernel offsets; offset (kh, kw) reads the strided slice
    ``xpad[:, :, kh*DH : ... : SH, kw*DW : ... : SW]`` of shape (N, C, OH, OW), which is
    written transposed to (C, N, OH, OW).
    """
    xp = get_array_module(x)
    KH, KW, SH, SW, DH, DW, OH, OW = geo.KH, geo.KW, geo.SH, geo.SW, geo.DH, geo.DW, geo.OH, geo.OW
    if geo.PH0 or geo.PH1 or geo.PW0 or geo.PW1:
        x = xp.pad(x, ((0, 0), (0, 0), (geo.PH0, geo.PH1), (geo.PW0, geo.PW1)))
    col = xp.empty(geo.col_shape, dtype=x.dtype) if out is None else out
    for kh in range(KH):
        h0 = kh * DH
        h1 = h0 + SH * (OH - 1) + 1          # one past the last row read
        for kw in range(KW):
            w0 = kw * DW
            w1 = w0 + SW * (OW - 1) + 1
            col[:, kh, kw] = x[:, :, h0:h1:SH, w0:w1:SW].transpose(1, 0, 2, 3)
    return col


def col2im_reference(col, geo, out=None):
    """Fold ``col`` (C, KH, KW, N, OH, OW) back into an image (N, C, H, W), adding overlaps;
    into ``out`` (N, C, H, W) when given.

    The adjoint of ``im2col_reference``: the same strided slices, added into instead of
    read from, then the padding cropped away (only the top/left padding matters here).
    """
    xp = get_array_module(col)
    C, KH, KW, N, OH, OW = geo.col_shape
    H, W, SH, SW, DH, DW, PH0, PW0 = geo.H, geo.W, geo.SH, geo.SW, geo.DH, geo.DW, geo.PH0, geo.PW0
    Hp, Wp = geo.canvas_hw        # the padded input and every position a window touches
    img = xp.zeros((N, C, Hp, Wp), dtype=col.dtype)
    for kh in range(KH):
        h0 = kh * DH
        h1 = h0 + SH * (OH - 1) + 1
        for kw in range(KW):
            w0 = kw * DW
            w1 = w0 + SW * (OW - 1) + 1
            img[:, :, h0:h1:SH, w0:w1:SW] += col[:, kh, kw].transpose(1, 0, 2, 3)
    if out is not None:
        out[...] = img[:, :, PH0:PH0 + H, PW0:PW0 + W]
        return out
    return xp.ascontiguousarray(img[:, :, PH0:PH0 + H, PW0:PW0 + W])


# ----------------------------------------------------------------------------- the family

IM2COL = registry.family("im2col", __doc__)
IM2COL.register("reference", lambda: SimpleNamespace(im2col=im2col_reference,
                                                     col2im=col2im_reference))
IM2COL.register("numba", registry.numba_module("minidl.kernels.im2col_numba"), device="cpu")
IM2COL.register("cuda", lambda: SimpleNamespace(im2col=cuda_kernels.im2col,
                                                col2im=cuda_kernels.col2im),
                device="cuda", supports=cuda_kernels.available)


def _check(name, a, shape, geo):
    if tuple(a.shape) != shape:
        raise ShapeError(f"{name}: expected an array of shape {shape} for {geo}, got "
                         f"{tuple(a.shape)}")
    if not geo.fits():
        raise ShapeError(f"{name}: the dilated kernel {geo.reach} does not fit in the padded "
                         f"input {geo.padded_hw}")


def im2col(x, geo, out=None):
    """Unfold ``x`` (N, C, H, W) into ``col`` (C, KH, KW, N, OH, OW) with the chosen
    implementation: ``col[c, kh, kw, n, oh, ow] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]``.

    geo: the ``ConvGeometry`` (``geometry.ConvGeometry.of``). out: optional C-contiguous
    (C, KH, KW, N, OH, OW) array of x's dtype to fill and return (reusing a buffer spares
    the page faults of a fresh allocation).
    """
    _check("im2col", x, (geo.N, geo.C, geo.H, geo.W), geo)
    if out is not None and (tuple(out.shape) != geo.col_shape or out.dtype != x.dtype
                            or not out.flags.c_contiguous):
        raise ValueError(f"im2col: out must be a C-contiguous {x.dtype} array of shape "
                         f"{geo.col_shape}, got {out.dtype} {tuple(out.shape)}")
    return IM2COL.code(x).im2col(x, geo, out=out)


def col2im(col, geo, out=None):
    """Fold ``col`` (C, KH, KW, N, OH, OW) into (N, C, H, W), summing overlapping windows:
    the adjoint of ``im2col`` with the same geometry. out: optional C-contiguous
    (N, C, H, W) array of col's dtype to overwrite and return (a block of a larger
    gradient, in ``conv_blocked.py``)."""
    _check("col2im", col, geo.col_shape, geo)
    shape = (geo.N, geo.C, geo.H, geo.W)
    if out is not None and (tuple(out.shape) != shape or out.dtype != col.dtype
                            or not out.flags.c_contiguous):
        raise ValueError(f"col2im: out must be a C-contiguous {col.dtype} array of shape "
                         f"{shape}, got {out.dtype} {tuple(out.shape)}")
    return IM2COL.code(col).col2im(col, geo, out=out)
