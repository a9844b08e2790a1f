"""Direct convolution for small channel counts (CPU, numba): forward, input, weight and
bias gradients, without the unfolded ``col`` matrix.

The same convolution as ``minidl.ops.conv`` (cross-correlation; shape letters there and
in ``kernels/im2col.py``), restricted to what the kernels handle: stride 1, dilation 1,
groups 1, NumPy float32/float64 arrays. Padding is any (top, bottom), (left, right)::

    x  (N, C, H, W)    w (OC, C, KH, KW)    b (OC,)    y, gy (N, OC, OH, OW)
    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * xpad[n, c, i + kh, j + kw]

Why: at LeNet's sizes (1->6 and 6->16 channels, 5x5) im2col + GEMM spends its time
copying KH*KW = 25 shifted copies of the input and in matrix products far too thin for
BLAS (6 or 16 rows). A direct loop reads each input once per 4 output channels.

Taps
----
Each kernel sees the weights as a matrix ``wm = w.reshape(OC, K)``, ``K = C*KH*KW``, and
tap ``t = (c, kh, kw)`` as an offset ``off[t]`` into the (padded) source array, so that a
run of L outputs is a sum of K shifted runs of the source::

    y[o, p] = b[o] + sum_t wm[o, t] * src[base + off[t] + p]         p = 0 .. L-1
    gw[o, t] = sum over runs and p of gy[o, p] * src[base + off[t] + p]

Two layouts make those runs contiguous (``choose_layout`` picks one per shape):

* ``'planar'``: x as it comes, one image at a time. A run is a whole image plane read
  "wide": p = i*Wp + j over the padded width Wp, of which the columns j >= OW are garbage
  (not copied out; in the weight gradient gy is spread into a zeroed wide plane). Costs
  (Wp - OW) / OW extra work: 14% at LeNet's first layer (32 vs 28 columns).
* ``'batch_last'``: x transposed to (C, Hp, Wp, N), the batch innermost. A run is one
  output row for every image at once, OW*N long, with no garbage; the price is the
  transposes of x and y (and gy, gx) to and from NCHW. Wins when rows are short: 1.9x at
  LeNet's second layer (10-column output rows from 14-column inputs) including the
  transposes, 2.3x slower at the first (its 28x28 output planes take long to transpose).

The input gradient is the forward kernel again, on gy zero-padded by (KH-1, KW-1) (less
the forward's padding) with the flipped, transposed weights ``w[:, :, ::-1, ::-1]``
(C, OC, KH, KW): gx[n, c, i, j] = sum_{o, kh, kw} w[o, c, kh, kw] gy[n, o, i + PH0 - kh,
j + PW0 - kw]. The bias gradient comes out of the weight-gradient kernel (the sum of gy).

Speed notes are in ``_conv_direct_nb.py`` (the numba kernels, imported on first use).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from . import NUMBA_PARALLEL

__all__ = ["use_direct", "applicable", "force_impl", "choose_layout", "conv2d_forward",
           "conv2d_backward", "numba_available", "DIRECT_MAX_K", "DIRECT_MAX_OC"]

# The direct kernels beat im2col + GEMM below these sizes (measured on the CPU: see
# ``applicable``). Above them the products are wide enough for BLAS.
DIRECT_MAX_K = 400          # C * KH * KW, the length of one window
DIRECT_MAX_OC = 32          # output channels

# batch_last when the output rows are shorter than this (see choose_layout)
BATCH_LAST_MAX_OW = 16

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_nb = None            # the compiled-kernels module once imported
_nb_error = None


def _kernels():
    global _nb, _nb_error
    if _nb is None and _nb_error is None:
        try:
            from . import _conv_direct_nb as mod  # noqa: PLC0415 - numba only when needed
            _nb = mod
        except ImportError as exc:
            _nb_error = exc
    if _nb is None:
        raise RuntimeError(f"conv_direct: needs numba ({_nb_error})")
    return _nb


def numba_available():
    try:
        _kernels()
    except RuntimeError:
        return False
    return True


def applicable(x, weight, stride, dilation, groups):
    """Whether ``conv2d(x, weight, ...)`` takes the direct kernels (``impl='auto'``).

    NumPy float32/float64 arrays of one dtype, stride 1, dilation 1, groups 1, and small
    channel counts: C*KH*KW <= DIRECT_MAX_K and OC <= DIRECT_MAX_OC. Measured on a 2-core
    Zen 4, forward + backward, one thread: LeNet's layers 3-5x faster than im2col + GEMM;
    at (32, 3->16, 32x32, 3x3) 2.4x, at (32, 16->32, 16x16, 3x3) 1.5x; at 64->64 channels
    3x3 (K = 576) GEMM wins.
    """
    OC, Cg, KH, KW = weight.shape
    return (Cg * KH * KW <= DIRECT_MAX_K and OC <= DIRECT_MAX_OC
            and _supported(x, weight, stride, dilation, groups))


_default_impl = "auto"


@contextlib.contextmanager
def force_impl(impl):
    """``with force_impl('im2col'):`` makes every conv2d in the block take that path:
    'auto' (``applicable`` decides), 'im2col' (the reference, im2col + GEMM) or 'direct'
    (the direct kernels wherever they can run at all: any size, but still only NumPy
    float arrays with stride 1, dilation 1, groups 1). For tests and comparisons."""
    global _default_impl
    if impl not in ("auto", "im2col", "direct"):
        raise ValueError(f"force_impl: impl must be 'auto', 'im2col' or 'direct', got {impl!r}")
    previous, _default_impl = _default_impl, impl
    try:
        yield
    finally:
        _default_impl = previous


def _supported(x, weight, stride, dilation, groups):
    return (groups == 1 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and type(x) is np.ndarray and type(weight) is np.ndarray
            and x.dtype in _FLOATS and weight.dtype == x.dtype and numba_available())


def use_direct(x, weight, stride, dilation, groups):
    """Whether conv2d takes the direct kernels, following ``force_impl`` (default
    'auto': ``applicable``)."""
    if _default_impl == "im2col":
        return False
    if _default_impl == "direct":
        return _supported(x, weight, stride, dilation, groups)
    return applicable(x, weight, stride, dilation, groups)


def choose_layout(OW):
    """'batch_last' for output rows shorter than BATCH_LAST_MAX_OW, else 'planar'.

    The planar layout wastes (KW - 1) / OW of its work on garbage columns and runs short
    loops on small planes; the batch-last layout pays for transposing x and y. Measured
    (forward + backward, LeNet): 28-column rows planar 2.3x faster, 10-column rows
    batch-last 1.9x faster.
    """
    return "batch_last" if OW < BATCH_LAST_MAX_OW else "planar"


@functools.lru_cache(maxsize=64)
def _offsets(C, Hs, Ws, KH, KW, step):
    """off[t], t = (c, kh, kw) flattened: ((c*Hs + kh)*Ws + kw) * step, as intp."""
    c, kh, kw = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    off = (((c * Hs + kh) * Ws + kw) * step).reshape(-1).astype(np.intp)
    off.flags.writeable = False
    return off


def _chunks(N):
    """How many image chunks the planar kernels split the batch into (1 when serial)."""
    if not NUMBA_PARALLEL:
        return 1
    import numba  # noqa: PLC0415
    return max(1, min(N, numba.get_num_threads()))


def _pad_planar(x, pads):
    (PH0, PH1), (PW0, PW1) = pads
    if PH0 or PH1 or PW0 or PW1:
        return np.pad(x, ((0, 0), (0, 0), (PH0, PH1), (PW0, PW1)))
    return np.ascontiguousarray(x)


def _to_batch_last(x, pads):
    """(N, C, H, W) -> zero-padded (C, H + PH0 + PH1, W + PW0 + PW1, N), one copy."""
    (PH0, PH1), (PW0, PW1) = pads
    N, C, H, W = x.shape
    xt = x.transpose(1, 2, 3, 0)
    if not (PH0 or PH1 or PW0 or PW1):
        return np.ascontiguousarray(xt)
    out = np.zeros((C, H + PH0 + PH1, W + PW0 + PW1, N), dtype=x.dtype)
    out[:, PH0:PH0 + H, PW0:PW0 + W] = xt
    return out


def _forward(src, wm, b, KH, KW, out_hw, layout):
    """The forward kernel on an already padded source (planar (N, C, Hs, Ws) or
    batch-last (C, Hs, Ws, N)); returns (N, OC, OH, OW) or (OC, OH, OW, N)."""
    nb = _kernels()
    OC = wm.shape[0]
    OH, OW = out_hw
    if layout == "planar":
        N, C, Hs, Ws = src.shape
        y = np.empty((N, OC, OH, OW), dtype=src.dtype)
        nb.planar_forward(src, wm, b, y, _offsets(C, Hs, Ws, KH, KW, 1), _chunks(N))
    else:
        C, Hs, Ws, N = src.shape
        y = np.empty((OC, OH, OW, N), dtype=src.dtype)
        nb.batchlast_forward(src, wm, b, y, _offsets(C, Hs, Ws, KH, KW, N))
    return y


def conv2d_forward(x, w, b, pads, layout=None):
    """y (N, OC, OH, OW) and the saved source for ``conv2d_backward``.

    x (N, C, H, W), w (OC, C, KH, KW), b (OC,) or None, pads ((PH0, PH1), (PW0, PW1)).
    layout: None (``choose_layout``), 'planar' or 'batch_last'. Returns ``(y, saved)``,
    ``saved = (layout, src)`` with src the padded input in that layout.
    """
    OC, C, KH, KW = w.shape
    N, _, H, W = x.shape
    OH = H + pads[0][0] + pads[0][1] - KH + 1
    OW = W + pads[1][0] + pads[1][1] - KW + 1
    layout = layout or choose_layout(OW)
    wm = np.ascontiguousarray(w.reshape(OC, C * KH * KW))
    b = np.zeros(OC, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    if layout == "planar":
        src = _pad_planar(x, pads)
        y = _forward(src, wm, b, KH, KW, (OH, OW), layout)
    elif layout == "batch_last":
        src = _to_batch_last(x, pads)
        y = _forward(src, wm, b, KH, KW, (OH, OW), layout).transpose(3, 0, 1, 2)
        y = np.ascontiguousarray(y)
    else:
        raise ValueError(f"conv_direct: layout must be 'planar' or 'batch_last', got {layout!r}")
    return y, (layout, src)


def conv2d_backward(saved, w, gy, pads, in_hw, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) for y = conv2d_forward(x, w, b, pads); None where not needed.

    saved: what ``conv2d_forward`` returned (the padded source; only read for gw).
    gy (N, OC, OH, OW); in_hw: x's (H, W). gx (N, C, H, W), gw like w, gb (OC,).
    """
    layout, src = saved
    nb = _kernels()
    OC, C, KH, KW = w.shape
    N, _, OH, OW = gy.shape
    H, W = in_hw
    (PH0, _), (PW0, _) = pads
    zero = gy.dtype.type(0)
    gy = np.ascontiguousarray(gy)
    gx = gw = gb = None
    gyT = None
    if need_w:
        K = C * KH * KW
        if layout == "planar":
            chunks = _chunks(N)
            gwp = np.empty((chunks, OC, K), dtype=gy.dtype)
            gbp = np.empty((chunks, OC), dtype=gy.dtype)
            nb.planar_grad_weight(src, gy, gwp, gbp, _offsets(C, *src.shape[2:], KH, KW, 1),
                                  zero)
            gwm, gb = (gwp[0], gbp[0]) if chunks == 1 else (gwp.sum(0), gbp.sum(0))
        else:
            gyT = np.ascontiguousarray(gy.transpose(1, 2, 3, 0))
            gwm = np.empty((OC, K), dtype=gy.dtype)
            gb = np.empty(OC, dtype=gy.dtype)
            nb.batchlast_grad_weight(src, gyT, gwm, gb,
                                     _offsets(C, *src.shape[1:3], KH, KW, N), zero)
        gw = gwm.reshape(OC, C, KH, KW)
    elif need_b:
        gb = gy.sum(axis=(0, 2, 3))
    if not need_b:
        gb = None
    if need_x:
        # gx = conv(gy zero-padded so that gpad[i + KH-1 - PH0] = gy[i], w flipped, C <-> OC)
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(C, -1)
        top, left = KH - 1 - PH0, KW - 1 - PW0
        Hg, Wg = H + KH - 1, W + KW - 1
        # the part of gy that lands inside the (Hg, Wg) canvas (a large padding crops gy)
        i0, j0 = max(0, -top), max(0, -left)
        i1, j1 = min(OH, Hg - top), min(OW, Wg - left)
        zeros = np.zeros(C, dtype=gy.dtype)
        if layout == "planar":
            gpad = np.zeros((N, OC, Hg, Wg), dtype=gy.dtype)
            gpad[:, :, top + i0:top + i1, left + j0:left + j1] = gy[:, :, i0:i1, j0:j1]
            gx = _forward(gpad, wf, zeros, KH, KW, (H, W), layout)
        else:
            gpad = np.zeros((OC, Hg, Wg, N), dtype=gy.dtype)
            g = gyT if gyT is not None else gy.transpose(1, 2, 3, 0)
            gpad[:, top + i0:top + i1, left + j0:left + j1] = g[:, i0:i1, j0:j1]
            gx = np.ascontiguousarray(
                _forward(gpad, wf, zeros, KH, KW, (H, W), layout).transpose(3, 0, 1, 2))
    return gx, gw, gb
