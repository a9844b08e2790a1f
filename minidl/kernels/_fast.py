"""numba kernels behind ``im2col`` / ``col2im`` (imported only when used: numba stays optional
for everything outside ``minidl.kernels``).

Shapes as in ``im2col.py``: x (N, C, H, W), col (C, KH, KW, N, OH, OW). The padding
arguments are the top/left paddings PH0, PW0; bottom/right padding needs no argument
(positions past the input read as zero, and OH, OW come from ``col``'s shape).

Compilation: one specialisation per dtype (float32, float64) and kernel, C-contiguous
arrays only (the callers guarantee it), cached on disk (``cache=True``): about 5 s cold
for all four, well under a second for a later process.

Speed notes (measured on the 2-core EPYC dev machine, numbers in ms):

* Flat indexing with unsigned indices. Views made inside the loops (``col[c, kh, kw, n]``)
  and signed indices (numba adds a negative-index wraparound check to each access, which
  stops vectorisation) made the first version 5-10x slower than the NumPy reference;
  with flat ``uintp`` indices im2col runs at 0.2 (LeNet conv1, 2 MB) to 18 (ResNet
  64x56x56, 231 MB) against the reference's 0.5 to 44, and col2im at 0.3 to 18 against
  1.2 to 60.
* The inner loop over ``ow`` is split into the part that reads the input and the parts
  that fall into the padding: a branch-free copy LLVM vectorises.
* Serial by default. The loops are written with ``prange`` over the (channel, image)
  planes (each iteration writes its own rows of ``col``, or its own image plane in
  col2im: no atomics, deterministic), but compiled with ``parallel=False``. Alone, two
  threads gained little (these kernels are memory-bound: 7.8 vs 9.4 on ResNet
  256x28x28); next to the GEMMs they lost badly. OpenBLAS's worker thread spins for a
  while after every product, and numba's OpenMP threads after every kernel, so each
  library found one core taken by the other's spinning threads. conv2d forward+backward
  with two BLAS threads, serial -> parallel kernels: LeNet conv1 2.3 -> 4.3, conv2
  2.9 -> 5.5, ResNet 64x56x56 220 -> 240, 256x28x28 253 -> 269 (and worse, up to 4x,
  when another process wants a core). Serial kernels leave both cores to BLAS for the
  products, which is where the time goes.
  ``MINIDL_NUMBA_PARALLEL=1`` (read at import) compiles them parallel instead, for
  machines where that pays; those builds are not cached (numba's cache key ignores the
  ``parallel`` flag, so the two builds would overwrite each other).
* ``error_model='numpy'`` and ``fastmath=True`` drop checks that stop vectorisation.
"""
from __future__ import annotations

import numba
from numba import prange

_u = numba.types.uintp  # an unsigned index: numba then skips the negative-index wraparound check

# Serial by default, parallel prange loops with MINIDL_NUMBA_PARALLEL=1 (module docstring).
from . import NUMBA_PARALLEL as PARALLEL  # noqa: E402
_JIT = dict(parallel=PARALLEL, cache=not PARALLEL, fastmath=True, error_model="numpy",
            nogil=True)


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
    xf = x.reshape(-1)      # flat views: indexing them creates no array objects in the loops
    cf = col.reshape(-1)
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        src0 = (n * C + c) * H * W                       # start of plane x[n, c]
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = _valid_range(OH, SH, ih0, H)
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = _valid_range(OW, SW, iw0, W)
                dst0 = (((c * KH + kh) * KW + kw) * N + n) * OH * OW   # col[c, kh, kw, n]
                for i in range(dst0, dst0 + oh_lo * OW):
                    cf[_u(i)] = 0
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


@numba.njit(**_JIT)
def col2im_kernel(col, img, SH, SW, PH0, PW0, DH, DW):
    """img[n, c, ih, iw] = sum of col[c, kh, kw, n, oh, ow] over the windows that read (ih, iw)."""
    N, C, H, W = img.shape
    KH, KW, OH, OW = col.shape[1], col.shape[2], col.shape[4], col.shape[5]
    cf = col.reshape(-1)
    xf = img.reshape(-1)
    for t in prange(C * N):
        c = t // N
        n = t - c * N
        dst0 = (n * C + c) * H * W                       # start of plane img[n, c]
        for i in range(dst0, dst0 + H * W):
            xf[_u(i)] = 0
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = _valid_range(OH, SH, ih0, H)
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = _valid_range(OW, SW, iw0, W)
                src0 = (((c * KH + kh) * KW + kw) * N + n) * OH * OW   # col[c, kh, kw, n]
                for oh in range(oh_lo, oh_hi):
                    s = src0 + oh * OW
                    d = dst0 + (oh * SH + ih0) * W + iw0
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow)] += cf[_u(s + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow * SW)] += cf[_u(s + ow)]
