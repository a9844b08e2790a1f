"""Winograd's forward and backward with the images owned by threads: the numba kernels of
``conv_winograd``'s by-images mode (imported only when used). Read ``conv_winograd.py``
first (tiles, transforms, layouts), then ``conv_winograd_numba.py`` (the transforms
called here).

    forward_images    x (N, C, H, W), U (K, OC, C)          -> y (N, OC, OH, OW)
    backward_images   x, gy (N, OC, OH, OW), U^T (K, C, OC) -> dU partials (P, K, OC, C),
                                                               gx (N, C, H, W)

Each ``prange`` iteration is one part of the batch (one per thread) and runs its blocks
of images through the whole pass on its own, in its own work arrays: forward V = B^T d B
(``input_transform``), the K products M[k] = U[k] @ V[k] (single-threaded BLAS,
``blas_numba.gemm``), y = A^T M A + b (``output_transform``); backward Z = A g A^T
(``grad_transform``), the part's own dU += Z V^T, dV = U^T Z and gx = B dV B^T
(``input_scatter``). Why: with each stage split over the threads
instead (transforms by planes, products by component), every stage reads what the other
thread wrote. Where the two vCPUs share a cache that costs little; where they do not
(the 2-core dev VM, some of the time: reading 1 MB the other thread had just written
took 2.7x as long as reading one's own, RESULTS.md), ResNet-18's 64-channel 32x32 layer
ran at one thread's speed on two (16-18 ms against 7.3), while PyTorch's convolution,
which keeps each thread's data its own, kept its speed. Here a thread reads only x and U
and writes only its own images of y.

The transforms are the serial builds of the F(2x2) and F(4x4) kernels (``m`` picks them:
the same arguments for both), run on one image block at a time with t0 = 0: V and M hold
that block's tiles only (``bounds[p, j] = (n0, n1)``, empty where n1 <= n0).
"""
from __future__ import annotations

from numba import prange

from . import conv_winograd4_numba as _f4
from . import conv_winograd_numba as _f2
from .blas_numba import gemm
from .threads import jit, njit_helper

__all__ = ["forward_images", "backward_images"]

_input2, _output2 = _f2.input_transform.serial, _f2.output_transform.serial
_input4, _output4 = _f4.input_transform.serial, _f4.output_transform.serial
_grad2, _scatter2 = _f2.grad_transform.serial, _f2.input_scatter.serial
_grad4, _scatter4 = _f4.grad_transform.serial, _f4.input_scatter.serial


@njit_helper
def _input(m, x, n0, n1, P0, Q0, TH, TW, V):
    """V = B^T d B of images n0 .. n1 (tile size m)."""
    if m == 4:
        _input4(x, n0, n1, 0, P0, Q0, TH, TW, V)
    else:
        _input2(x, n0, n1, 0, P0, Q0, TH, TW, V)


@njit_helper
def _output(m, M, n0, n1, TH, TW, bias, has_bias, y):
    """y = A^T M A (+ bias) for images n0 .. n1."""
    if m == 4:
        _output4(M, n0, n1, 0, TH, TW, bias, has_bias, y)
    else:
        _output2(M, n0, n1, 0, TH, TW, bias, has_bias, y)


@njit_helper
def _grad(m, gy, n0, n1, TH, TW, Z):
    """Z = A g A^T of gy's tiles of images n0 .. n1."""
    if m == 4:
        _grad4(gy, n0, n1, 0, TH, TW, Z)
    else:
        _grad2(gy, n0, n1, 0, TH, TW, Z)


@njit_helper
def _scatter(m, dV, n0, n1, P0, Q0, TH, TW, gx):
    """gx = B dV B^T for images n0 .. n1."""
    if m == 4:
        _scatter4(dV, n0, n1, 0, P0, Q0, TH, TW, gx)
    else:
        _scatter2(dV, n0, n1, 0, P0, Q0, TH, TW, gx)


@jit
def forward_images(m, x, U, bias, has_bias, y, P0, Q0, TH, TW, bounds, V, M):
    """y = A^T [U @ (B^T d B)] A (+ bias) for every image, F(m x m, 3x3) tiles (m 2 or 4),
    part p of the batch on prange iteration p.

    x: (N, C, H, W) C-contiguous; U: (K, OC, C); bias: (OC,) (read when has_bias);
    y: (N, OC, OH, OW) C-contiguous; bounds: (P, J, 2) int64, part p's image blocks
    [n0, n1); V: (P, K, C, Tb), M: (P, K, OC, Tb) C-contiguous work arrays, Tb at least
    the tiles of the largest block ((n1 - n0) * TH * TW).
    """
    L = TH * TW
    for p in prange(bounds.shape[0]):
        Vp, Mp = V[p], M[p]
        for j in range(bounds.shape[1]):
            n0, n1 = bounds[p, j, 0], bounds[p, j, 1]
            if n1 <= n0:
                continue
            T = (n1 - n0) * L
            _input(m, x, n0, n1, P0, Q0, TH, TW, Vp)
            for k in range(U.shape[0]):
                gemm(U[k], Vp[k, :, :T], Mp[k, :, :T], 0.0)
            _output(m, Mp, n0, n1, TH, TW, bias, has_bias, y)


@jit
def backward_images(m, x, gy, UT, need_w, need_x, P0, Q0, TH, TW, bounds, V, Z, dU, gx):
    """The gradients of ``forward_images``, part p of the batch on prange iteration p: per
    block Z = A g A^T of gy's tiles, then with ``need_w`` dU[p] = the sum over the part's
    blocks of Z @ V^T (V = B^T d B of x's tiles; zeros for a part without images), with
    ``need_x`` gx = B (U^T @ Z) B^T for the block's images (dV in V's work array).

    x: (N, C, H, W) (read when need_w); gy: (N, OC, OH, OW); UT: (K, C, OC) (read when
    need_x, a transposed view of U is fine); bounds: (P, J, 2) as in ``forward_images``;
    V: (P, K, C, Tb), Z: (P, K, OC, Tb) work arrays; dU: (P, K, OC, C) (written when
    need_w); gx: (N, C, H, W) C-contiguous (written when need_x).
    """
    L = TH * TW
    for p in prange(bounds.shape[0]):
        Vp, Zp, dUp = V[p], Z[p], dU[p]
        first = True
        for j in range(bounds.shape[1]):
            n0, n1 = bounds[p, j, 0], bounds[p, j, 1]
            if n1 <= n0:
                continue
            T = (n1 - n0) * L
            _grad(m, gy, n0, n1, TH, TW, Zp)
            if need_w:
                _input(m, x, n0, n1, P0, Q0, TH, TW, Vp)
                for k in range(Zp.shape[0]):
                    gemm(Zp[k, :, :T], Vp[k, :, :T].T, dUp[k], 0.0 if first else 1.0)
                first = False
            if need_x:
                for k in range(Zp.shape[0]):
                    gemm(UT[k], Zp[k, :, :T], Vp[k, :, :T], 0.0)
                _scatter(m, Vp, n0, n1, P0, Q0, TH, TW, gx)
        if need_w and first:
            dUp[:] = 0.0
