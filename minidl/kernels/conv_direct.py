"""The ``direct`` implementation of the conv2d family (``kernels/conv.py``): forward, input,
weight and bias gradients computed by numba kernels (``conv_direct_numba.py``), without the
unfolded ``col`` matrix. Imported only when used (it imports numba).

The same convolution as the reference (cross-correlation; shape letters in
``kernels/conv.py`` and ``minidl/geometry.py``), restricted to what the kernels handle:
stride 1, dilation 1, groups 1, NumPy float32/float64 arrays (``conv.direct_can_run``).
Padding is any (top, bottom), (left, right)::

    x  (N, C, H, W)    w (OC, C, KH, KW)    b (OC,)    y, gy (N, OC, OH, OW)
    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * xpad[n, c, i + kh, j + kw]

Why: at LeNet's sizes (1->6 and 6->16 channels, 5x5) im2col + GEMM spends its time
copying KH*KW = 25 shifted copies of the input and in matrix products far too thin for
BLAS (6 or 16 rows). A direct loop reads each input once per 4 output channels
(``benchmarks/RESULTS.md`` has the measurements).

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
  (Wp - OW) / OW extra work: 14% at LeNet's first layer (32 vs 28 columns), 40% at its
  second (14 vs 10), where the runs are also short.
* ``'batch_last'``: x transposed to (C, Hp, Wp, N), the batch innermost. A run is one
  output row for every image at once, OW*N long, with no garbage; the price is the
  transposes of x, y, gy and gx to and from NCHW. With threads the batch is cut into one
  part per thread, (S, C, Hp, Wp, Ns) (``batch_parts``): each thread transposes,
  convolves and transposes back its own images, and the weight gradient adds one partial
  sum per part. Cut by rows instead (every thread reading every image), the transposes
  handed half of every array to the other core, which on the dev VM, in the stretches
  when the host places its two vCPUs apart, made the LeNet step 10 % slower (5.15 ->
  4.62 ms cut by parts; 2.98 -> 3.01 ms when they sit together; benchmarks/RESULTS.md).

Input gradient. ``gx[n, c, i, j] = sum_{o, kh, kw} w[o, c, kh, kw] gy[n, o, i + PH0 - kh,
j + PW0 - kw]`` (the forward's adjoint, written as a gather so that no two threads ever
add into the same gx element):

* planar: the forward kernel on gy zero-padded by (KH-1, KW-1) (less the forward's
  padding) with the flipped, transposed weights ``w[:, :, ::-1, ::-1]`` (C, OC, KH, KW).
  Simple, but the padding zeros cost work.
* batch-last: ``batchlast_grad_input`` takes the taps (kh, o) of one kw at a time, so that
  for one gx row the valid kh are a range and the valid columns one run: no padded copy
  of gy, no product with a padding zero.

The bias gradient comes out of the weight-gradient kernel (the sum of gy).

Threads (``kernels/threads.py``, the one policy): the kernels' ``prange`` loops (image
chunks, batch parts) run on numba's threads when the policy picks their parallel builds.
Both split the batch as every kernel before and after them does (first images to the
first thread), so that each thread reads what it wrote.

The family's entry points (the same names as the reference in ``kernels/conv.py``):
``forward``, ``grad_output``, ``grad_weight``, ``grad_input``, ``grad_bias``,
``weight_source``. Below them, ``conv2d_forward`` / ``conv2d_backward`` take an explicit
layout (the tests run both).
"""
from __future__ import annotations

import functools

import numpy as np

from . import conv_direct_numba as nb
from . import memory, threads
from .conv import plane_sums

__all__ = ["forward", "grad_output", "grad_weight", "grad_input", "grad_bias",
           "weight_source", "choose_layout", "conv2d_forward", "conv2d_backward",
           "BATCH_LAST_MAX_OW", "BATCH_LAST_MIN_N"]

# batch_last when the output rows are shorter than this and the batch at least that
# (see choose_layout)
BATCH_LAST_MAX_OW = 16
BATCH_LAST_MIN_N = 8


def choose_layout(geo):
    """'batch_last' for output rows shorter than BATCH_LAST_MAX_OW (16) in a batch of at
    least BATCH_LAST_MIN_N (8) images, else 'planar'.

    The planar layout wastes (KW - 1) / OW of its work on garbage columns and runs short
    loops on small planes; the batch-last layout pays for transposing x, y, gy and gx,
    and its rows (OW times the images of a part) are short in a small batch. Measured
    (``benchmarks/RESULTS.md``): over 15 shapes batch-last wins clearly below OW = 16 and
    loses above it; forward and backward of three layers with OW = 7 and 10, batch-last
    took 1.1-2.6x the planar time for 1-6 images and 0.63-1.0x from 8 on.
    """
    return ("batch_last" if geo.OW < BATCH_LAST_MAX_OW and geo.N >= BATCH_LAST_MIN_N
            else "planar")


@functools.lru_cache(maxsize=64)
def _offsets(C, Hs, Ws, KH, KW, step):
    """off[t], t = (c, kh, kw) flattened: ((c*Hs + kh)*Ws + kw) * step, as intp."""
    c, kh, kw = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    off = (((c * Hs + kh) * Ws + kw) * step).reshape(-1).astype(np.intp)
    off.flags.writeable = False
    return off


@functools.lru_cache(maxsize=64)
def _grad_input_offsets(OC, OH, OW, KH, KW, N):
    """off[t], t = (kw, kh, o) flattened: (o*OH - kh) * OW*N (see batchlast_grad_input)."""
    kw, kh, o = np.meshgrid(np.arange(KW), np.arange(KH), np.arange(OC), indexing="ij")
    off = ((o * OH - kh) * OW * N).reshape(-1).astype(np.intp)
    off.flags.writeable = False
    return off


# ----------------------------------------------------------------------------- layouts

def _pad_planar(x, geo):
    """x (N, C, H, W) zero-padded to (N, C, H + PH0 + PH1, W + PW0 + PW1), C-contiguous."""
    (PH0, PH1), (PW0, PW1) = geo.padding
    if PH0 or PH1 or PW0 or PW1:
        return np.pad(x, ((0, 0), (0, 0), (PH0, PH1), (PW0, PW1)))
    return np.ascontiguousarray(x)


def batch_parts(N, size):
    """(S, Ns): the batch of N cut into S parts of Ns images (the last may hold fewer), one
    per thread the policy gives a kernel over ``size`` elements (1 when it runs serial)."""
    Ns = -(-N // threads.pieces(size, N))
    return -(-N // Ns), Ns


def _to_batch_last(x, geo=None, parts=None):
    """(N, C, H, W) -> the parts (S, C, H + PH0 + PH1, W + PW0 + PW1, Ns), zero-padded by
    ``geo``'s padding (none without a ``geo``), spare columns of the last part zero. parts:
    (S, Ns), default ``batch_parts``. One copy (``nb.to_batch_last``)."""
    (PH0, PH1), (PW0, PW1) = geo.padding if geo is not None else ((0, 0), (0, 0))
    N, C, H, W = x.shape
    S, Ns = parts or batch_parts(N, x.size)
    out = _parts_array(N, S, Ns, (C, H + PH0 + PH1, W + PW0 + PW1), x.dtype,
                       PH0 or PH1 or PW0 or PW1)
    nb.to_batch_last(x, out, PH0, PW0, size=x.size)
    return out


def _parts_array(N, S, Ns, inner, dtype, padded):
    """An (S, *inner, Ns) array for the batch-last parts of N images, zero where the kernels
    must read zeros: everywhere when ``padded`` (the border), or when the last part has
    spare columns."""
    make = memory.zeros if padded or S * Ns > N else memory.empty
    return make((S,) + inner + (Ns,), dtype=dtype)


def _planar_forward(src, wm, b, KH, KW, out_hw):
    """The planar forward kernel on an already padded source (N, C, Hs, Ws): (N, OC, OH, OW)."""
    N, C, Hs, Ws = src.shape
    OH, OW = out_hw
    y = memory.empty((N, wm.shape[0], OH, OW), dtype=src.dtype)
    off = _offsets(C, Hs, Ws, KH, KW, 1)
    nb.planar_forward(src, wm, b, y, off, threads.pieces(y.size, N), size=y.size)
    return y


def _batch_last_forward(x, wm, b, geo):
    """y (N, OC, OH, OW) and xT, the padded input's batch-last parts, in one kernel call
    (``nb.batchlast_forward``: each part transposed, convolved and transposed back)."""
    N, C, OC = geo.N, geo.C, geo.OC
    (PH0, PH1), (PW0, PW1) = geo.padding
    Hs, Ws = geo.H + PH0 + PH1, geo.W + PW0 + PW1
    y = memory.empty((N, OC, geo.OH, geo.OW), dtype=x.dtype)
    S, Ns = batch_parts(N, y.size)
    xT = _parts_array(N, S, Ns, (C, Hs, Ws), x.dtype, PH0 or PH1 or PW0 or PW1)
    yT = memory.empty((S, OC, geo.OH, geo.OW, Ns), dtype=x.dtype)
    off = _offsets(C, Hs, Ws, geo.KH, geo.KW, Ns)
    nb.batchlast_forward(x, wm, b, xT, yT, y, off, PH0, PW0, size=y.size)
    return y, xT


def conv2d_forward(x, w, b, geo, layout=None):
    """y (N, OC, OH, OW) and ``saved = (layout, src)``, src the padded input in that layout
    (batch-last: its parts (S, C, Hs, Ws, Ns)).

    x (N, C, H, W), w (OC, C, KH, KW), b (OC,) or None, geo the ``ConvGeometry``.
    layout: None (``choose_layout``), 'planar' or 'batch_last'.
    """
    OC, C, KH, KW = w.shape
    layout = layout or choose_layout(geo)
    wm = np.ascontiguousarray(w.reshape(OC, C * KH * KW))
    b = np.zeros(OC, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    if layout == "planar":
        src = _pad_planar(x, geo)
        y = _planar_forward(src, wm, b, KH, KW, (geo.OH, geo.OW))
    elif layout == "batch_last":
        y, src = _batch_last_forward(x, wm, b, geo)
    else:
        raise ValueError(f"conv_direct: layout must be 'planar' or 'batch_last', got {layout!r}")
    return y, (layout, src)


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) and what ``grad_weight`` needs: ``(layout, src)``, the padded input
    in the layout the kernels chose; src is None when ``keep_for_backward`` is False (no
    weight gradient wanted)."""
    y, (layout, src) = conv2d_forward(x, w, b, geo)
    return y, (layout, src if keep_for_backward else None)


class GradOutput:
    """dL/dy for the gradient kernels: gy (N, OC, OH, OW), C-contiguous, and its batch-last
    parts (``gyT``), made on first use and shared by the weight and input gradients."""

    def __init__(self, gy, layout):
        self.gy = np.ascontiguousarray(gy)
        self.layout = layout
        self._gyT = None

    def gyT(self, parts=None):
        """gy's batch-last parts (S, OC, OH, OW, Ns), cut as ``parts`` = (S, Ns) asks (the
        weight gradient: as its saved input was), else as already made or by
        ``batch_parts``."""
        made = self._gyT
        if made is None or (parts is not None and (made.shape[0], made.shape[-1]) != parts):
            self._gyT = _to_batch_last(self.gy, parts=parts)
        return self._gyT


def grad_output(gy, geo, products=True, layout=None):
    """gy (N, OC, OH, OW) as the gradient kernels read it (``GradOutput``). products: unused
    here (the reference's transposed copy); layout: the forward's (default: the same rule)."""
    return GradOutput(gy, layout or choose_layout(geo))


def grad_weight(g, saved, geo, need_b=True):
    """(gw (OC, C, KH, KW), gb (OC,) or None): the weight gradient, and the bias gradient
    the same kernel sums on the way. saved: what ``forward`` returned for backward."""
    layout, src = saved
    OC, C, KH, KW, N = geo.OC, geo.C, geo.KH, geo.KW, geo.N
    K = C * KH * KW
    gy = g.gy
    zero = gy.dtype.type(0)
    if layout == "planar":                # partial sums per image chunk, added here
        c = threads.pieces(gy.size, N)
        gwp = memory.empty((c, OC, K), dtype=gy.dtype)
        gbp = memory.empty((c, OC), dtype=gy.dtype)
        off = _offsets(C, *src.shape[2:], KH, KW, 1)
        nb.planar_grad_weight(src, gy, gwp, gbp, off, zero, size=gy.size)
        gwm, gb = (gwp[0], gbp[0]) if len(gwp) == 1 else (gwp.sum(0), gbp.sum(0))
    else:                                 # one partial sum per part, added here
        S, Ns = src.shape[0], src.shape[-1]
        gwp = memory.empty((S, OC, K), dtype=gy.dtype)
        gbp = memory.empty((S, OC), dtype=gy.dtype)
        off = _offsets(C, *src.shape[2:4], KH, KW, Ns)
        nb.batchlast_grad_weight(src, g.gyT((S, Ns)), gwp, gbp, off, zero, size=gy.size)
        gwm, gb = (gwp[0], gbp[0]) if S == 1 else (gwp.sum(0), gbp.sum(0))
    return gwm.reshape(OC, C, KH, KW), (gb if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W): the forward's adjoint (module docstring), in g's layout."""
    OC, C, KH, KW = w.shape
    N, H, W, OH, OW = geo.N, geo.H, geo.W, geo.OH, geo.OW
    PH0, PW0 = geo.PH0, geo.PW0
    gy = g.gy
    if g.layout == "planar":
        # gx = conv(gy zero-padded so that gpad[i + KH-1 - PH0] = gy[i], w flipped, C <-> OC)
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(C, -1)
        top, left = KH - 1 - PH0, KW - 1 - PW0
        Hg, Wg = H + KH - 1, W + KW - 1
        # the part of gy that lands inside the (Hg, Wg) canvas (a large padding crops gy)
        i0, j0 = max(0, -top), max(0, -left)
        i1, j1 = min(OH, Hg - top), min(OW, Wg - left)
        gpad = memory.zeros((N, OC, Hg, Wg), dtype=gy.dtype)
        gpad[:, :, top + i0:top + i1, left + j0:left + j1] = gy[:, :, i0:i1, j0:j1]
        return _planar_forward(gpad, wf, np.zeros(C, dtype=gy.dtype), KH, KW, (H, W))
    # batch-last: no padded gy, no product with a padding zero (batchlast_grad_input)
    gyT = g.gyT()
    S, Ns = gyT.shape[0], gyT.shape[-1]
    wm = np.ascontiguousarray(w.transpose(1, 3, 2, 0)).reshape(C, KW * KH * OC)
    gxT = memory.empty((S, C, H, W, Ns), dtype=gy.dtype)
    gx = memory.empty((N, C, H, W), dtype=gy.dtype)
    off = _grad_input_offsets(OC, OH, OW, KH, KW, Ns)
    nb.batchlast_grad_input(gyT, wm, gxT, gx, off, KH, KW, PH0, PW0, size=gx.size)
    return gx


def grad_bias(g, geo):
    """gb (OC,): gy summed over (N, OH, OW), when no weight gradient computes it anyway."""
    return plane_sums(g.gy)


def weight_source(x, geo):
    """``saved`` for ``grad_weight`` from x (N, C, H, W) alone, without a forward: the
    padded input in the layout ``grad_output`` will pick (the same rule as forward)."""
    layout = choose_layout(geo)
    src = _pad_planar(x, geo) if layout == "planar" else _to_batch_last(x, geo)
    return layout, src


def conv2d_backward(saved, w, gy, geo, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) for ``y, saved = conv2d_forward(x, w, b, geo, layout)``; None where not
    needed. gy (N, OC, OH, OW); saved's src is read only for gw."""
    g = grad_output(gy, geo, layout=saved[0])
    gw, gb = grad_weight(g, saved, geo, need_b) if need_w else (None, None)
    gx = grad_input(g, w, geo) if need_x else None
    if need_b and not need_w:
        gb = grad_bias(g, geo)
    return gx, gw, gb
