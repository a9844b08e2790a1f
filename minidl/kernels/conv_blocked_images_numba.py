"""The im2col convolution's forward and backward with the images owned by threads: the
numba kernels of ``conv_blocked``'s by-images mode (imported only when used). Read
``conv_blocked.py`` and ``im2col.py`` first (the column layout), and
``conv_winograd_images_numba.py`` for why by images (no stage reads what another thread
wrote: on the dev VM the two vCPUs sometimes share no cache, and a thread then reads the
other's writes 2.7x slower).

    forward_images   x (N, C, H, W), Wm (OC, C*KH*KW)       -> y (N, OC, OH, OW)
    backward_images  x, gy (N, OC, OH, OW), Wm (OC, C*KH*KW) -> dWm partials (P, OC, C*KH*KW),
                                                               gx (N, C, H, W)

Each ``prange`` iteration is one part of the batch (one per thread): per block of its
images it unfolds them into its own ``col`` (the serial ``_im2col_kernel``) and runs one
single-threaded BLAS product for the block, Y = Wm @ col, y[n] = Y[:, n] (+ b). Backward
unfolds the block again into this thread's cache (no ``col`` kept from forward: forward
and backward this way beat the stage-split pass that keeps col, the measurements at
``conv_blocked.IMAGE_BLOCK_OUTPUTS``) and sums the part's own dWm += gY @ col^T, then
dcol = Wm^T @ gY in the same work array and gx = col2im(dcol) for the block's images.
One product per block, not per image: on maps of a few pixels each image's product is a
few columns wide and reads all of Wm (ResNet-18's 256 -> 512 3x3 s2 layer at 4x4
outputs, batch 128: 1.35x the stage-split pass's time with one product per image). A
block of one image reads and writes y[n] and gy[n] in place; larger blocks go through Y
(gY), the part's (OC, images x pixels) work array.
"""
from __future__ import annotations

from numba import prange

from .blas_numba import gemm
from .im2col_numba import _col2im_kernel, _im2col_kernel
from .threads import jit, njit_helper

__all__ = ["forward_images", "backward_images"]

_unfold, _fold = _im2col_kernel.serial, _col2im_kernel.serial


@jit
def forward_images(x, wm, bias, has_bias, y, SH, SW, PH0, PW0, DH, DW, bounds, cols, rows):
    """y[n] = Wm @ col[:, n] (+ bias) for every image, part p of the batch on prange
    iteration p.

    x: (N, C, H, W) C-contiguous; wm: (OC, C*KH*KW); bias: (OC,) (read when has_bias);
    y: (N, OC, OH, OW) C-contiguous; bounds: (P, J, 2) int64, part p's image blocks
    [n0, n1) (``conv_blocked.image_bounds``); cols: (P, C, KH, KW, B, OH, OW) and rows:
    (P, OC, B*OH*OW) work arrays, B at least the images of the largest block.
    """
    OC, L = y.shape[1], y.shape[2] * y.shape[3]
    for p in prange(bounds.shape[0]):
        for j in range(bounds.shape[1]):
            n0, n1 = bounds[p, j, 0], bounds[p, j, 1]
            if n1 <= n0:
                continue
            nb = n1 - n0
            col = _unfolded(x, n0, n1, cols[p], SH, SW, PH0, PW0, DH, DW)   # (K, nb*L)
            if nb == 1:                                           # straight into y[n0]
                yn = y[n0].reshape(OC, L)
                if has_bias:
                    for o in range(OC):
                        yn[o, :] = bias[o]
                gemm(wm, col, yn, 1.0 if has_bias else 0.0)
                continue
            Y = rows[p, :, :nb * L]
            gemm(wm, col, Y, 0.0)
            for i in range(nb):
                yn = y[n0 + i].reshape(OC, L)
                for o in range(OC):
                    b = bias[o] if has_bias else bias[0]          # bias (1,) zeros then
                    for e in range(L):
                        yn[o, e] = Y[o, i * L + e] + b


@njit_helper
def _unfolded(x, n0, n1, work, SH, SW, PH0, PW0, DH, DW):
    """col (C*KH*KW, nb*OH*OW) of images n0 .. n1, unfolded into the start of ``work``
    (C, KH, KW, B, OH, OW)."""
    C, KH, KW, OH, OW = work.shape[0], work.shape[1], work.shape[2], work.shape[4], work.shape[5]
    nb = n1 - n0
    col = work.reshape(-1)[:C * KH * KW * nb * OH * OW].reshape(C, KH, KW, nb, OH, OW)
    _unfold(x[n0:n1], col, SH, SW, PH0, PW0, DH, DW)
    return col.reshape(C * KH * KW, nb * OH * OW)


@jit
def backward_images(x, gy, wm, need_w, need_x, SH, SW, PH0, PW0, DH, DW, bounds, cols, rows,
                    dW, gx):
    """The gradients of ``forward_images``, part p of the batch on prange iteration p: per
    block of its images (gY (OC, nb*OH*OW) their gy side by side), with ``need_w`` col =
    im2col(x) and dW[p] = the sum over the part's blocks of gY @ col^T (zeros for a part
    without images), with ``need_x`` gx[n0:n1] = col2im(dcol), dcol = Wm^T @ gY (in col's
    work array).

    x: (N, C, H, W) C-contiguous (read when need_w); gy: (N, OC, OH, OW) C-contiguous;
    wm: (OC, C*KH*KW) (read when need_x); bounds, cols, rows as in ``forward_images``;
    dW: (P, OC, C*KH*KW) (written when need_w); gx: (N, C, H, W) C-contiguous (written
    when need_x).
    """
    OC, L = gy.shape[1], gy.shape[2] * gy.shape[3]
    for p in prange(bounds.shape[0]):
        first = True
        for j in range(bounds.shape[1]):
            n0, n1 = bounds[p, j, 0], bounds[p, j, 1]
            if n1 <= n0:
                continue
            nb = n1 - n0
            if nb == 1:                                           # gy[n0] in place
                _block_grads(x, gy[n0].reshape(OC, L), wm, need_w, need_x, n0, n1, first,
                             SH, SW, PH0, PW0, DH, DW, cols[p], dW[p], gx)
            else:
                gY = rows[p, :, :nb * L]
                for i in range(nb):
                    for o in range(OC):
                        src = gy[n0 + i, o].reshape(L)
                        for e in range(L):
                            gY[o, i * L + e] = src[e]
                _block_grads(x, gY, wm, need_w, need_x, n0, n1, first,
                             SH, SW, PH0, PW0, DH, DW, cols[p], dW[p], gx)
            first = False
        if need_w and first:
            dW[p, :, :] = 0.0


@njit_helper
def _block_grads(x, gY, wm, need_w, need_x, n0, n1, first, SH, SW, PH0, PW0, DH, DW, work,
                 dWp, gx):
    """dWp (+)= gY @ col^T (col = im2col of images n0 .. n1 in ``work``) with ``need_w``,
    gx[n0:n1] = col2im(Wm^T @ gY) with ``need_x``; gY (OC, nb*OH*OW)."""
    if need_w:
        col = _unfolded(x, n0, n1, work, SH, SW, PH0, PW0, DH, DW)
        gemm(gY, col.T, dWp, 0.0 if first else 1.0)
    if need_x:
        C, KH, KW, OH, OW = work.shape[0], work.shape[1], work.shape[2], work.shape[4], work.shape[5]
        nb = n1 - n0
        dcol = work.reshape(-1)[:C * KH * KW * nb * OH * OW].reshape(C, KH, KW, nb, OH, OW)
        gemm(wm.T, gY, dcol.reshape(C * KH * KW, nb * OH * OW), 0.0)
        _fold(dcol, gx[n0:n1], SH, SW, PH0, PW0, DH, DW)
