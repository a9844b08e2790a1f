"""The im2col convolution's forward with the images owned by threads: the numba kernel of
``conv_blocked``'s by-images mode (imported only when used). Read ``conv_blocked.py``
and ``im2col.py`` first (the column layout), and ``conv_winograd_images_numba.py`` for
why by images (no stage reads what another thread wrote: on the dev VM the two vCPUs
sometimes share no cache, and a thread then reads the other's writes 2.7x slower).

    forward_images   x (N, C, H, W), Wm (OC, C*KH*KW) -> y (N, OC, OH, OW)

Each ``prange`` iteration is one part of the batch (one per thread): per block of its
images it unfolds them into its own ``col`` (the serial ``_im2col_kernel``) and runs one
single-threaded BLAS product per image, y[n] = Wm @ col[:, n] (+ b).
"""
from __future__ import annotations

from numba import prange

from .blas_numba import gemm
from .im2col_numba import _im2col_kernel
from .threads import jit

__all__ = ["forward_images"]

_unfold = _im2col_kernel.serial


@jit
def forward_images(x, wm, bias, has_bias, y, SH, SW, PH0, PW0, DH, DW, bounds, cols):
    """y[n] = Wm @ col[:, n] (+ bias) for every image, part p of the batch on prange
    iteration p.

    x: (N, C, H, W) C-contiguous; wm: (OC, C*KH*KW); bias: (OC,) (read when has_bias);
    y: (N, OC, OH, OW) C-contiguous; bounds: (P, J, 2) int64, part p's image blocks
    [n0, n1) (``conv_blocked.image_bounds``); cols: (P, C, KH, KW, B, OH, OW) work
    arrays, B at least the images of the largest block.
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for p in prange(bounds.shape[0]):
        C, KH, KW, B = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
        flat = cols[p].reshape(-1)
        for j in range(bounds.shape[1]):
            n0, n1 = bounds[p, j, 0], bounds[p, j, 1]
            if n1 <= n0:
                continue
            nb = n1 - n0
            col = flat[:C * KH * KW * nb * OH * OW].reshape(C, KH, KW, nb, OH, OW)
            _unfold(x[n0:n1], col, SH, SW, PH0, PW0, DH, DW)
            per_image = col.reshape(C * KH * KW, nb, OH * OW)
            for i in range(nb):
                yn = y[n0 + i].reshape(OC, OH * OW)
                if has_bias:
                    for o in range(OC):
                        yn[o, :] = bias[o]
                gemm(wm, per_image[:, i, :], yn, 1.0 if has_bias else 0.0)
