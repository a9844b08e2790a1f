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
* Small outputs (up to ``GATHER_MAX_OUTPUTS`` pixels) unfold through a cached index
  table instead (``_im2col_gather``, ``_col2im_scatter``): one flat loop per (channel,
  kernel offset) over every image and output.
* ``error_model='numpy'`` and ``fastmath=True`` (``threads.jit``) drop checks that stop
  vectorisation.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from . import memory
from .threads import jit

__all__ = ["im2col", "col2im", "planes_swapped"]

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
def _swap_planes(src, dst, A, B, HW, bias):
    """dst (B, A, HW) = src (A, B, HW) (+ bias[a] when bias has A values; empty: an exact
    copy) for flat views, each plane one run of HW elements: the whole im2col of a 1x1
    kernel at stride 1 without padding (x (N, C, HW) -> col (C, N, HW)), its adjoint
    col2im (col -> x: nothing overlaps, nothing to add), and ``planes_swapped``. Each
    prange iteration writes its own b's planes."""
    for b in prange(B):
        for a in range(A):
            s = (a * B + b) * HW
            d = (b * A + a) * HW
            if bias.size:
                add = bias[a]
                for i in range(HW):
                    dst[_u(d + i)] = src[_u(s + i)] + add
            else:
                for i in range(HW):
                    dst[_u(d + i)] = src[_u(s + i)]


@jit
def planes_swapped(src, bias, dst):
    """dst (B, A, HW) = src (A, B, HW) + bias[a] (C-contiguous, one dtype; bias (A,), or
    empty for an exact copy): a product's (OC, N, OH*OW) result into the (N, OC, OH, OW)
    layout, bias added on the way, and back (gy -> gY)."""
    A, B, HW = src.shape
    _swap_planes(src.reshape(-1), dst.reshape(-1), A, B, HW, bias)


# Planes shorter than this are moved value by value across the planes in ``_to_rows`` /
# ``_from_rows`` (from 16 values on the two orders tie, from 64 on plane by plane wins).
_SHORT_ROWS = 8


@numba.njit(inline="always")
def _to_rows(src, s0, B, L, dst):
    """dst (L, B) = the B planes of L values from src[s0] on (a (B, L) block), flat: the
    small-map kernels' transpose of a block of planes (depthwise, max pooling), so that
    their inner loops run across the planes. Planes shorter than ``_SHORT_ROWS`` are read
    value by value across the planes (a loop over L of 1 or 4 iterations inside one over
    the planes ran 6x slower: 32 x (960, 1) 46 -> 7 us, (576, 4) 43 -> 26 us)."""
    if L < _SHORT_ROWS:
        for e in range(L):
            d = e * B
            for b in range(B):
                dst[_u(d + b)] = src[_u(s0 + b * L + e)]
        return
    for b in range(B):
        s = s0 + b * L
        for e in range(L):
            dst[_u(e * B + b)] = src[_u(s + e)]


@numba.njit(inline="always")
def _from_rows(src, B, L, dst, d0):
    """dst[d0 ..] (a (B, L) block, flat) = src (L, B) transposed: ``_to_rows``' inverse
    (the same two loop orders)."""
    if L < _SHORT_ROWS:
        for e in range(L):
            s = e * B
            for b in range(B):
                dst[_u(d0 + b * L + e)] = src[_u(s + b)]
        return
    for b in range(B):
        d = d0 + b * L
        for e in range(L):
            dst[_u(d + e)] = src[_u(e * B + b)]


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
        _swap_planes(xf, cf, N, C, H * W, xf[:0])        # 1x1, stride 1, no padding
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
        _swap_planes(cf, xf, C, N, H * W, cf[:0])        # 1x1, stride 1, no padding
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


# ----------------------------------------------------------------------------- small maps

@jit
def _im2col_gather(x, col, table):
    """col[c, k, i] = x.flat[c*H*W + table[k, i]], 0 where table[k, i] < 0: im2col as one
    flat loop per (channel, kernel offset) over every image and output (i = n*OH*OW + o).

    x: (N, C, H, W); col: (C, KH*KW, N*OH*OW); table: (KH*KW, N*OH*OW) int32 (``_table``);
    C-contiguous. Each (c, kernel offset, image) row of col is OH*OW long: on 8x8 to 1x1
    maps the per-row loops of ``_im2col_kernel`` ran a few iterations each, and their
    set-up cost most of the time."""
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    K, L = table.shape
    xf, cf, tf = x.reshape(-1), col.reshape(-1), table.reshape(-1)
    zero = np.zeros(1, dtype=col.dtype)[0]
    for c in prange(C):
        base = c * HW
        for k in range(K):
            d = (c * K + k) * L
            r = k * L
            for i in range(L):
                e = tf[_u(r + i)]
                v = xf[_u(base + max(e, 0))]
                cf[_u(d + i)] = v if e >= 0 else zero


@jit
def _col2im_scatter(col, img, table):
    """img[n, c] = the sum of col[c, k, i] over the (k, i) whose ``table`` entry is that
    input position: the adjoint of ``_im2col_gather`` (every entry of img written).

    col: (C, KH*KW, N*OH*OW); img: (N, C, H, W); table as ``_im2col_gather``'s."""
    N, C, HW = img.shape[0], img.shape[1], img.shape[2] * img.shape[3]
    K, L = table.shape
    cf, xf, tf = col.reshape(-1), img.reshape(-1), table.reshape(-1)
    for c in prange(C):                 # channel c's planes of every image: its own
        base = c * HW
        for n in range(N):
            p = n * C * HW + base
            for e in range(HW):
                xf[_u(p + e)] = 0
        for k in range(K):
            d = (c * K + k) * L
            r = k * L
            for i in range(L):
                e = tf[_u(r + i)]
                if e >= 0:
                    xf[_u(base + e)] += cf[_u(d + i)]


# Outputs of up to this many pixels (8x8) unfold through an index table
# (``_im2col_gather``). Measured at batch 32, float32, one thread (ms, im2col then col2im,
# per-row loops -> table): (160, 2, 2) 3x3 p1 0.81 -> 0.11, 0.49 -> 0.09; (256, 8, 8)
# 3x3 s2 (4x4 out) 2.26 -> 0.48, 0.91 -> 0.51; (128, 16, 16) 3x3 s2 (8x8 out) 1.73 ->
# 1.15, 1.50 -> 1.57; (64, 8, 8) 3x3 p1 0.87 -> 0.65, 0.56 -> 0.54; with 10x10 outputs
# the two were even in im2col and the table lost in col2im.
GATHER_MAX_OUTPUTS = 64


@functools.lru_cache(maxsize=128)
def _table(geo):
    """(KH*KW, N*OH*OW) int32: for kernel offset k = kh*KW + kw, image n and output o, the
    position n*C*H*W + ih*W + iw it reads in x (its channel's offset c*H*W added by the
    kernels), -1 where it reads padding (``geometry.valid_taps``). Read-only, cached."""
    K, OHW, CHW = geo.KH * geo.KW, geo.OH * geo.OW, geo.C * geo.H * geo.W
    start, tap_k, tap_e = geo.taps()
    e = np.full((K, OHW), -1, dtype=np.int64)
    e[tap_k, np.repeat(np.arange(OHW), np.diff(start))] = tap_e
    images = np.arange(geo.N, dtype=np.int64)[None, :, None] * CHW
    table = np.where(e[:, None, :] >= 0, e[:, None, :] + images, -1)
    table = table.reshape(K, geo.N * OHW).astype(np.int32)
    table.flags.writeable = False
    return table


def _gathers(geo):
    """Whether ``geo`` unfolds through the index table: small outputs, not the plain
    transpose of a 1x1 kernel at stride 1 without padding."""
    plain_1x1 = (geo.KH == geo.KW == geo.SH == geo.SW == 1 and geo.OH == geo.H
                 and geo.OW == geo.W)
    return (geo.OH * geo.OW <= GATHER_MAX_OUTPUTS and not plain_1x1
            and geo.N * geo.C * geo.H * geo.W < 2**31)            # int32 table entries


def im2col(x, geo, out=None):
    """x (N, C, H, W) -> col (C, KH, KW, N, OH, OW), into ``out`` when given (a checked,
    C-contiguous array of x's dtype: ``im2col.im2col`` checks it)."""
    x = np.ascontiguousarray(x)
    col = memory.empty(geo.col_shape, dtype=x.dtype) if out is None else out
    if _gathers(geo):
        table = _table(geo)
        _im2col_gather(x, col.reshape(geo.C, *table.shape), table, size=col.size)
        return col
    _im2col_kernel(x, col, geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, size=col.size)
    return col


def col2im(col, geo, out=None):
    """col (C, KH, KW, N, OH, OW) -> img (N, C, H, W), the adjoint of ``im2col``, into
    ``out`` when given (checked by ``im2col.col2im``); every entry is written."""
    col = np.ascontiguousarray(col)
    img = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=col.dtype) if out is None else out
    if _gathers(geo):
        table = _table(geo)
        _col2im_scatter(col.reshape(geo.C, *table.shape), img, table, size=col.size)
        return img
    _col2im_kernel(col, img, geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, size=col.size)
    return img
