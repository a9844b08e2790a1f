"""im2col / col2im: unfold the sliding windows of a convolution into a matrix, and fold back.

Shape letters used throughout::

    N   batch size                 C   input channels
    H   input height               W   input width
    KH  kernel height              KW  kernel width
    SH  stride along H             SW  stride along W
    PH  zero padding along H       PW  zero padding along W
    DH  dilation along H           DW  dilation along W
    OH  output height              OW  output width

    OH = floor((H + 2 PH - DH (KH - 1) - 1) / SH) + 1         (and likewise OW)

With asymmetric padding ``PH = (PH0, PH1)`` (top, bottom) the ``2 PH`` above becomes
``PH0 + PH1``; PyTorch's ``padding='same'`` with an even kernel needs it.

The column layout
-----------------
``im2col(x)`` returns ``col`` of shape ``(C, KH, KW, N, OH, OW)``::

    col[c, kh, kw, n, oh, ow] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]

where ``xpad`` is ``x`` with PH zero rows above (PW zero columns to the left).
Reshaped to ``(C*KH*KW, N*OH*OW)`` (a view, no copy) each column holds one receptive
field and each row one (channel, kernel offset) pair, so a convolution is ONE matrix
product ``W.reshape(OC, C*KH*KW) @ col`` over the whole batch, and its weight gradient
is ``gy @ col.T`` without copying ``col``; only the (much smaller) output and its
gradient are transposed between (OC, N, OH, OW) and (N, OC, OH, OW). (Chainer and DeZero use ``(N, C, KH, KW, OH,
OW)``; that needs either a batched product per image or a transposed copy of ``col``
for the weight gradient.) With ``groups`` the leading ``C`` splits into
``(groups, C/groups)`` and each group is its own product.

``col2im`` is the adjoint (transpose) of ``im2col``: it adds every entry of ``col`` back
into the input pixel it was copied from, so that ``<im2col(x), c> == <x, col2im(c)>``.
That is exactly the input gradient of the unfolding.

Two implementations behind one signature
----------------------------------------
* ``im2col_reference`` / ``col2im_reference``: NumPy (or CuPy) with a Python loop over
  the KH*KW kernel offsets only; each step copies one strided slice of the padded input
  for the whole batch and all channels at once (the Chainer way). Readable, and the
  definition the fast path is tested against.
* ``im2col_numba`` / ``col2im_numba``: compiled loops over the (channel, image) planes,
  no padded copy of the input; 2.5x (im2col) to 3-6x (col2im) faster than the
  reference at LeNet and ResNet sizes. Used automatically for NumPy float32/float64
  arrays (``_fast.py`` holds the kernels and the speed notes, including why they run
  serially by default).
* On the GPU, ``cuda_kernels.im2col`` / ``col2im``: one CUDA thread per column entry,
  and a gather-style col2im, one thread per input pixel summing the entries copied
  from it (deterministic, no atomics; ``cuda_kernels.py``).

``im2col`` / ``col2im`` pick the implementation: ``impl='auto'`` (default) takes numba
for NumPy float arrays when numba imports, the CUDA kernels for CuPy float arrays, the
reference otherwise (other dtypes); ``impl='numpy'`` / ``'numba'`` / ``'cuda'`` force one,
and ``force_impl(impl)`` sets the default for a block.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import cuda_kernels
from ._dispatch import FAST_DTYPES as _FAST_DTYPES
from ._dispatch import ImplSwitch

__all__ = ["conv_output_size", "im2col", "col2im", "im2col_reference", "col2im_reference",
           "im2col_numba", "col2im_numba", "numba_available", "force_impl"]


def _pad_pair(p, name):
    """``p`` (int, or (before, after)) as a pair of non-negative ints."""
    if isinstance(p, (tuple, list)):
        if len(p) != 2:
            raise ValueError(f"im2col: {name} must be an int or a (before, after) pair, got {p!r}")
        before, after = int(p[0]), int(p[1])
    else:
        before = after = int(p)
    if before < 0 or after < 0:
        raise ValueError(f"im2col: {name} must be non-negative, got {p!r}")
    return before, after


def conv_output_size(size, k, s=1, p=0, d=1):
    """Output length of a convolution along one axis.

    size: input length (H or W); k: kernel length (KH or KW); s: stride (SH or SW);
    p: padding, an int (both sides) or a (before, after) pair; d: dilation (DH or DW).
    Returns ``floor((size + p_before + p_after - d*(k-1) - 1) / s) + 1`` (may be <= 0 when
    the dilated kernel does not fit in the padded input; callers validate).
    """
    p0, p1 = _pad_pair(p, "padding")
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _geometry(x_shape, KH, KW, SH, SW, PH, PW, DH, DW):
    N, C, H, W = x_shape
    PH0, PH1 = _pad_pair(PH, "PH")
    PW0, PW1 = _pad_pair(PW, "PW")
    if min(KH, KW, SH, SW, DH, DW) < 1:
        raise ValueError(f"im2col: kernel size, stride and dilation must be >= 1, got "
                         f"KH={KH}, KW={KW}, SH={SH}, SW={SW}, DH={DH}, DW={DW}")
    OH = conv_output_size(H, KH, SH, (PH0, PH1), DH)
    OW = conv_output_size(W, KW, SW, (PW0, PW1), DW)
    if OH < 1 or OW < 1:
        raise ValueError(f"im2col: the dilated kernel ({DH * (KH - 1) + 1}, {DW * (KW - 1) + 1}) "
                         f"does not fit in the padded input ({H + PH0 + PH1}, {W + PW0 + PW1})")
    return N, C, H, W, PH0, PH1, PW0, PW1, OH, OW


def _output(xp, out, shape, dtype):
    """``out`` checked against the expected shape and dtype, or a new array."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"im2col: out must be a C-contiguous {dtype} array of shape {shape}, "
                         f"got {out.dtype} {tuple(out.shape)}")
    return out


# ----------------------------------------------------------------------------- reference

def im2col_reference(x, KH, KW, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1, out=None):
    """Unfold ``x`` (N, C, H, W) into ``col`` (C, KH, KW, N, OH, OW). NumPy or CuPy.

    PH, PW: int (both sides) or (before, after) pair. out: optional C-contiguous array of
    shape (C, KH, KW, N, OH, OW) and x's dtype to write into (returned).

    Loops over the KH*KW kernel offsets; offset (kh, kw) reads the strided slice ``xpad[:, :, kh*DH : ... : SH, kw*DW : ... : SW]``
    of shape (N, C, OH, OW), which is written transposed to (C, N, OH, OW).
    """
    xp = get_array_module(x)
    N, C, H, W, PH0, PH1, PW0, PW1, OH, OW = _geometry(x.shape, KH, KW, SH, SW, PH, PW, DH, DW)
    if PH0 or PH1 or PW0 or PW1:
        x = xp.pad(x, ((0, 0), (0, 0), (PH0, PH1), (PW0, PW1)))
    col = _output(xp, out, (C, KH, KW, N, OH, OW), x.dtype)
    for kh in range(KH):
        h0 = kh * DH
        h1 = h0 + SH * (OH - 1) + 1          # one past the last row read
        for kw in range(KW):
            w0 = kw * DW
            w1 = w0 + SW * (OW - 1) + 1
            col[:, kh, kw] = x[:, :, h0:h1:SH, w0:w1:SW].transpose(1, 0, 2, 3)
    return col


def col2im_reference(col, H, W, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1):
    """Fold ``col`` (C, KH, KW, N, OH, OW) back into an image (N, C, H, W), adding overlaps.

    PH, PW: the padding ``im2col`` used (int or (before, after); only ``before`` matters
    here, OH and OW come from ``col``'s shape). The adjoint of ``im2col_reference``: the
    same strided slices, added into instead of read from, then the padding cropped away.
    """
    xp = get_array_module(col)
    C, KH, KW, N, OH, OW = col.shape
    PH0 = _pad_pair(PH, "PH")[0]
    PW0 = _pad_pair(PW, "PW")[0]
    # The padded canvas must hold the input and every position a window touches.
    Hp = max(PH0 + H, SH * (OH - 1) + DH * (KH - 1) + 1)
    Wp = max(PW0 + W, SW * (OW - 1) + DW * (KW - 1) + 1)
    img = xp.zeros((N, C, Hp, Wp), dtype=col.dtype)
    for kh in range(KH):
        h0 = kh * DH
        h1 = h0 + SH * (OH - 1) + 1
        for kw in range(KW):
            w0 = kw * DW
            w1 = w0 + SW * (OW - 1) + 1
            img[:, :, h0:h1:SH, w0:w1:SW] += col[:, kh, kw].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(img[:, :, PH0:PH0 + H, PW0:PW0 + W])


# ----------------------------------------------------------------------------- numba

_fast = None          # the compiled-kernels module once imported
_fast_error = None    # why importing numba failed


def _import_fast():
    global _fast, _fast_error
    if _fast is None and _fast_error is None:
        try:
            from . import _fast as mod  # noqa: PLC0415 - numba only when needed
            _fast = mod
        except ImportError as exc:
            _fast_error = exc
    return _fast


def numba_available():
    """True when the numba kernels can be used (numba imports)."""
    return _import_fast() is not None


def _require_fast():
    mod = _import_fast()
    if mod is None:
        raise RuntimeError(f"im2col: the numba fast path needs numba ({_fast_error})")
    return mod




def im2col_numba(x, KH, KW, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1, out=None):
    """Same as ``im2col_reference``, compiled with numba (NumPy float32/float64 arrays only)."""
    fast = _require_fast()
    N, C, H, W, PH0, PH1, PW0, PW1, OH, OW = _geometry(x.shape, KH, KW, SH, SW, PH, PW, DH, DW)
    if x.dtype not in _FAST_DTYPES:
        raise TypeError(f"im2col_numba: expected float32 or float64, got {x.dtype}")
    x = np.ascontiguousarray(x)
    col = _output(np, out, (C, KH, KW, N, OH, OW), x.dtype)
    fast.im2col_kernel(x, col, SH, SW, PH0, PW0, DH, DW)
    return col


def col2im_numba(col, H, W, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1):
    """Same as ``col2im_reference``, compiled with numba (NumPy float32/float64 arrays only)."""
    fast = _require_fast()
    if col.dtype not in _FAST_DTYPES:
        raise TypeError(f"col2im_numba: expected float32 or float64, got {col.dtype}")
    C, KH, KW, N, OH, OW = col.shape
    PH0 = _pad_pair(PH, "PH")[0]
    PW0 = _pad_pair(PW, "PW")[0]
    col = np.ascontiguousarray(col)
    img = np.empty((N, C, H, W), dtype=col.dtype)
    fast.col2im_kernel(col, img, SH, SW, PH0, PW0, DH, DW)
    return img


# ----------------------------------------------------------------------------- dispatch

_switch = ImplSwitch("im2col")
force_impl = _switch.force        # ``with force_impl('numpy'):`` runs the reference


def im2col(x, KH, KW, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1, impl=None, out=None):
    """Unfold ``x`` (N, C, H, W) into ``col`` (C, KH, KW, N, OH, OW).

    ``col[c, kh, kw, n, oh, ow] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]``.
    PH, PW: int (both sides) or (before, after). impl: None (the default, 'auto' unless
    ``force_impl`` says otherwise) | 'auto' | 'numpy' | 'numba' | 'cuda'.
    out: optional C-contiguous (C, KH, KW, N, OH, OW) array of x's dtype to fill (reusing
    a buffer spares the page faults of a fresh allocation: ~40% of im2col's time at
    ResNet sizes).
    """
    which = _switch.choose(x, impl, "im2col")
    if which == "numba":
        return im2col_numba(x, KH, KW, SH, SW, PH, PW, DH, DW, out=out)
    if which == "cuda":
        N, C, H, W, PH0, _, PW0, _, OH, OW = _geometry(x.shape, KH, KW, SH, SW, PH, PW, DH, DW)
        out = _output(get_array_module(x), out, (C, KH, KW, N, OH, OW), x.dtype)
        return cuda_kernels.im2col(x, KH, KW, SH, SW, PH0, PW0, OH, OW, DH, DW, out=out)
    return im2col_reference(x, KH, KW, SH, SW, PH, PW, DH, DW, out=out)


def col2im(col, H, W, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1, impl=None):
    """Fold ``col`` (C, KH, KW, N, OH, OW) into (N, C, H, W), summing overlapping windows.

    The adjoint of ``im2col`` with the same geometry. impl: as for ``im2col``.
    """
    which = _switch.choose(col, impl, "col2im")
    if which == "numba":
        return col2im_numba(col, H, W, SH, SW, PH, PW, DH, DW)
    if which == "cuda":
        return cuda_kernels.col2im(col, H, W, SH, SW, _pad_pair(PH, "PH")[0],
                                   _pad_pair(PW, "PW")[0], DH, DW)
    return col2im_reference(col, H, W, SH, SW, PH, PW, DH, DW)
