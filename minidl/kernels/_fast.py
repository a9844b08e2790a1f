"""numba kernels behind ``im2col`` / ``col2im`` (imported only when used: numba stays optional
for everything outside ``minidl.kernels``).

Shapes as in ``im2col.py``: x (N, C, H, W), col (C, KH, KW, N, OH, OW). The padding
arguments are the top/left paddings PH0, PW0; bottom/right padding needs no argument
(positions past the input read as zero, and OH, OW come from ``col``'s shape).

Compilation: one specialisation per dtype (float32, float64) and kernel, C-contiguous
arrays only (the callers guarantee it), cached on disk (``cache=True``) so a later
process loads them in well under a second.

Speed notes (measured on a 2-core EPYC, see the conv benchmark):
* the loops run over the (channel, image) planes in ``prange``; every thread writes its
  own rows of ``col`` (im2col) or its own image plane (col2im), so no atomics and the
  result is deterministic;
* the inner loop over ``ow`` is split into the part that reads the input and the parts
  that fall into the padding, so the copy has no branch and index arithmetic never goes
  negative (both would stop LLVM from vectorising);
* ``error_model='numpy'`` and ``fastmath=True`` drop the checks that stop vectorisation.
"""
from __future__ import annotations

import numba
from numba import prange

_JIT = dict(parallel=True, cache=True, fastmath=True, error_model="numpy", nogil=True)


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


@numba.njit(**_JIT)
def im2col_kernel(x, col, SH, SW, PH0, PW0, DH, DW):
    """col[c, kh, kw, n, oh, ow] = x[n, c, oh*SH + kh*DH - PH0, ow*SW + kw*DW - PW0] (0 outside)."""
    N, C, H, W = x.shape
    KH, KW, OH, OW = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = _valid_range(OH, SH, ih0, H)
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = _valid_range(OW, SW, iw0, W)
                dst = col[c, kh, kw, n]
                for oh in range(oh_lo):
                    for ow in range(OW):
                        dst[oh, ow] = 0
                for oh in range(oh_lo, oh_hi):
                    src = x[n, c, oh * SH + ih0]
                    row = dst[oh]
                    for ow in range(ow_lo):
                        row[ow] = 0
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            row[ow] = src[ow + iw0]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            row[ow] = src[ow * SW + iw0]
                    for ow in range(ow_hi, OW):
                        row[ow] = 0
                for oh in range(oh_hi, OH):
                    for ow in range(OW):
                        dst[oh, ow] = 0


@numba.njit(**_JIT)
def col2im_kernel(col, img, SH, SW, PH0, PW0, DH, DW):
    """img[n, c, ih, iw] = sum of col[c, kh, kw, n, oh, ow] over the windows that read (ih, iw)."""
    N, C, H, W = img.shape
    KH, KW, OH, OW = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        plane = img[n, c]
        for ih in range(H):
            for iw in range(W):
                plane[ih, iw] = 0
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = _valid_range(OH, SH, ih0, H)
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = _valid_range(OW, SW, iw0, W)
                src = col[c, kh, kw, n]
                for oh in range(oh_lo, oh_hi):
                    row = plane[oh * SH + ih0]
                    s = src[oh]
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            row[ow + iw0] += s[ow]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            row[ow * SW + iw0] += s[ow]
