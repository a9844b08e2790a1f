"""numba kernels of the im2col family (``kernels/im2col.py`` holds the reference, the
column layout and the registration): ``im2col`` and ``col2im`` for float32/float64 NumPy
arrays, compiled through ``threads.jit`` (imported only when used: numba stays optional).

Shapes as in ``im2col.py``: x (N, C, H, W), col (C, KH, KW, N, OH, OW), the geometry a
``ConvGeometry``. The kernels take only the top/left paddings PH0, PW0: bottom/right
padding needs no argument (positions past the input read as zero, and OH, OW come from
``col``'s shape).

Compilation: one specialisation per dtype (float32, float64) and kernel, C-contiguous
arrays only (the wrappers below guarantee it), cached on disk.

How the loops are written, and why (``benchmarks/RESULTS.md`` has the measurements):

* Flat indexing with unsigned indices. Views made inside the loops (``col[c, kh, kw, n]``)
  and signed indices (numba adds a negative-index wraparound check to each access, which
  stops vectorisation) made a first version several times slower than the NumPy
  reference.
* The inner loop over ``ow`` is split into the part that reads the input and the parts
  that fall into the padding: a branch-free copy LLVM vectorises. The valid ranges of
  every kernel offset are computed once per call (``_ranges``), and rows that follow
  each other in both arrays (kernels of width 1, stride 1, no column padding) are copied
  as one run: on small planes (4x4, 2x2) the per-plane integer divisions and loop set-ups
  had cost 10-25x the copy itself. A 1x1 kernel at stride 1 without padding is a plain
  transpose of (N, C) planes and takes its own loop (1x1 im2col of (32, 512, 2, 2):
  745 -> ~50 us).
* The loops over the (channel, image) planes are ``prange`` loops: each iteration writes
  its own rows of ``col`` (or its own image plane in col2im: no atomics, deterministic).
  They run serially unless the threading policy (``kernels/threads.py``) asks for the
  parallel build: these kernels are memory-bound, and next to the GEMMs parallel builds
  lost (OpenBLAS's and numba's spinning threads took each other's cores).
* ``error_model='numpy'`` and ``fastmath=True`` (``threads.jit``) drop checks that stop
  vectorisation.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .threads import jit

__all__ = ["im2col", "col2im"]

_u = numba.types.uintp  # an unsigned index: numba then skips the negative-index wraparound check


# inline='always' (numba's own inliner, not LLVM's): the caller's loops see the bounds.
@numba.njit(inline="always")
def _valid_range(O, S, offset, L):
    """First and one-past-last ``o`` in [0, O) with ``0 <= o*S + offset < L``."""
    lo = 0
    if offset < 0:
        lo = (-offset + S - 1) // S
    hi = 0
    if L - 1 - offset >= 0:
        hi = (L - 1 - offset) // S + 1
    if hi > O:
        hi = O
    if lo > hi:
        lo = hi
    return lo, hi


@numba.njit(inline="always")
def _ranges(O, S, D, P0, K, L):
    """(K, 2) int64: for each kernel offset k < K, the outputs o in [lo, hi) whose input
    position o*S + k*D - P0 lies in [0, L) (``_valid_range``). Made once per call (also by
    the depthwise and pooling kernels): computed per (channel, image) plane inside the
    loops, its integer divisions cost more than copying a small plane (ResNet's 4x4,
    GoogLeNet's 2x2)."""
    r = np.empty((K, 2), dtype=np.int64)
    for k in range(K):
        r[k, 0], r[k, 1] = _valid_range(O, S, k * D - P0, L)
    return r


@numba.njit(inline="always")
def _swap_planes(src, dst, A, B, HW):
    """dst (B, A, HW) = src (A, B, HW) for flat views, each plane one run of HW elements:
    the whole im2col of a 1x1 kernel at stride 1 without padding (x (N, C, HW) -> col
    (C, N, HW)), and its adjoint col2im (col -> x: nothing overlaps, nothing to add)."""
    for b in prange(B):
        for a in range(A):
            s = (a * B + b) * HW
            d = (b * A + a) * HW
            for i in range(HW):
                dst[_u(d + i)] = src[_u(s + i)]


@jit
def _im2col_kernel(x, col, SH, SW, PH0, PW0, DH, DW):
    """col[c, kh, kw, n, oh, ow] = x[n, c, oh*SH + kh*DH - PH0, ow*SW + kw*DW - PW0] (0 outside)."""
    N, C, H, W = x.shape
    KH, KW, OH, OW = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    xf = x.reshape(-1)      # flat views: indexing them creates no array objects in the loops
    cf = col.reshape(-1)
    rh = _ranges(OH, SH, DH, PH0, KH, H)
    rw = _ranges(OW, SW, DW, PW0, KW, W)
    if KH == 1 and KW == 1 and SH == 1 and SW == 1 and OH == H and OW == W:
        _swap_planes(xf, cf, N, C, H * W)                # 1x1, stride 1, no padding
        return
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        src0 = (n * C + c) * H * W                       # start of plane x[n, c]
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = rh[kh, 0], rh[kh, 1]
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = rw[kw, 0], rw[kw, 1]
                dst0 = (((c * KH + kh) * KW + kw) * N + n) * OH * OW   # col[c, kh, kw, n]
                for i in range(dst0, dst0 + oh_lo * OW):
                    cf[_u(i)] = 0
                if SW == 1 and SH == 1 and ow_lo == 0 and ow_hi == OW == W and iw0 == 0:
                    # whole rows, one after the other in x and in col (1x1 kernels, and
                    # any kernel of width 1 without column padding): one copy
                    s = src0 + (oh_lo + ih0) * W
                    d = dst0 + oh_lo * OW
                    for i in range((oh_hi - oh_lo) * OW):
                        cf[_u(d + i)] = xf[_u(s + i)]
                else:
                    for oh in range(oh_lo, oh_hi):
                        d = dst0 + oh * OW
                        s = src0 + (oh * SH + ih0) * W + iw0   # x[n, c, ih, iw0]; iw0 may be < 0
                        for ow in range(ow_lo):
                            cf[_u(d + ow)] = 0
                        if SW == 1:
                            for ow in range(ow_lo, ow_hi):
                                cf[_u(d + ow)] = xf[_u(s + ow)]
                        else:
                            for ow in range(ow_lo, ow_hi):
                                cf[_u(d + ow)] = xf[_u(s + ow * SW)]
                        for ow in range(ow_hi, OW):
                            cf[_u(d + ow)] = 0
                for i in range(dst0 + oh_hi * OW, dst0 + OH * OW):
                    cf[_u(i)] = 0


@jit
def _col2im_kernel(col, img, SH, SW, PH0, PW0, DH, DW):
    """img[n, c, ih, iw] = sum of col[c, kh, kw, n, oh, ow] over the windows that read (ih, iw)."""
    N, C, H, W = img.shape
    KH, KW, OH, OW = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    cf = col.reshape(-1)
    xf = img.reshape(-1)
    rh = _ranges(OH, SH, DH, PH0, KH, H)
    rw = _ranges(OW, SW, DW, PW0, KW, W)
    if KH == 1 and KW == 1 and SH == 1 and SW == 1 and OH == H and OW == W:
        _swap_planes(cf, xf, C, N, H * W)                # 1x1, stride 1, no padding
        return
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        dst0 = (n * C + c) * H * W                       # start of plane img[n, c]
        for i in range(dst0, dst0 + H * W):
            xf[_u(i)] = 0
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = rh[kh, 0], rh[kh, 1]
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = rw[kw, 0], rw[kw, 1]
                src0 = (((c * KH + kh) * KW + kw) * N + n) * OH * OW   # col[c, kh, kw, n]
                if SW == 1 and SH == 1 and ow_lo == 0 and ow_hi == OW == W and iw0 == 0:
                    s = src0 + oh_lo * OW                # whole rows: one pass (as im2col)
                    d = dst0 + (oh_lo + ih0) * W
                    for i in range((oh_hi - oh_lo) * OW):
                        xf[_u(d + i)] += cf[_u(s + i)]
                    continue
                for oh in range(oh_lo, oh_hi):
                    s = src0 + oh * OW
                    d = dst0 + (oh * SH + ih0) * W + iw0
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow)] += cf[_u(s + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow * SW)] += cf[_u(s + ow)]


def im2col(x, geo, out=None):
    """x (N, C, H, W) -> col (C, KH, KW, N, OH, OW), into ``out`` when given (a checked,
    C-contiguous array of x's dtype: ``im2col.im2col`` checks it)."""
    x = np.ascontiguousarray(x)
    col = np.empty(geo.col_shape, dtype=x.dtype) if out is None else out
    _im2col_kernel(x, col, geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, size=col.size)
    return col


def col2im(col, geo, out=None):
    """col (C, KH, KW, N, OH, OW) -> img (N, C, H, W), the adjoint of ``im2col``, into
    ``out`` when given (checked by ``im2col.col2im``); every entry is written."""
    col = np.ascontiguousarray(col)
    img = np.empty((geo.N, geo.C, geo.H, geo.W), dtype=col.dtype) if out is None else out
    _col2im_kernel(col, img, geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, size=col.size)
    return img
