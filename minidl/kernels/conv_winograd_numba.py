"""numba kernels of the conv2d family's ``winograd`` implementation (imported only when
used). Read ``conv_winograd.py`` first: it defines the tiles, the transforms and the
layouts these kernels receive.

Four kernels, one per transform, each a loop over (image, channel) planes of a block of
images n0 .. n1 (``prange``: each iteration writes its own plane or its own columns of
the tile matrix, so results do not depend on the schedule)::

    input_transform     x  (N, C, H, W)    -> V  (16, C, T)   V = B^T d B per 4x4 tile d
    output_transform    M  (16, OC, T)     -> y  (N, OC, OH, OW)   y = A^T m A per tile, + b
    grad_transform      gy (N, OC, OH, OW) -> Z  (16, OC, T)  Z = A g A^T per 2x2 tile g
    input_scatter       dV (16, C, T)      -> gx (N, C, H, W) gx += B dv B^T per tile

T = (n1 - n0) * TH * TW, tile t = (n - n0) * TH * TW + th * TW + tw; tile (th, tw) covers
outputs (2th .. 2th+1, 2tw .. 2tw+1) and padded-input rows 2th .. 2th+3, columns
2tw .. 2tw+3. Each plane is first copied into a zero-filled local canvas of the tile
grid's size (padding and partial edge tiles become zeros there), so the tile loops have
no bounds checks; the separable transforms run in two passes (rows over the whole canvas
width, which vectorises, then columns per tile).

B, A contain only 0 and +-1: the transforms are additions, exact in any dtype (the 1/2 of
G is applied to the weights in NumPy). float32 stays float32 throughout.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .threads import jit

__all__ = ["input_transform", "output_transform", "grad_transform", "input_scatter"]


@jit
def input_transform(x, n0, n1, P0, Q0, TH, TW, V):
    """V[k, c, t] = (B^T d B)[k // 4, k % 4] for the 4x4 tile d of image n0 + t // (TH*TW),
    channel c: d = xpad[2th .. 2th+3, 2tw .. 2tw+3], xpad x with P0 rows above and Q0
    columns left of it and zeros wherever the grid passes x.

    x: (N, C, H, W) C-contiguous; V: (16, C, (n1 - n0) * TH * TW) C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    HP, WP = 2 * TH + 2, 2 * TW + 2
    r0, r1 = max(0, P0), min(HP, H + P0)          # canvas rows holding x
    s0, s1 = max(0, Q0), min(WP, W + Q0)
    nb = n1 - n0
    for q in prange(nb * C):
        i = q // C
        c = q - i * C
        canvas = np.zeros((HP, WP), dtype=x.dtype)
        for r in range(r0, r1):
            for s in range(s0, s1):
                canvas[r, s] = x[n0 + i, c, r - P0, s - Q0]
        e = np.empty((4, WP), dtype=x.dtype)
        tb = i * TH * TW
        for th in range(TH):
            r = 2 * th
            for s in range(WP):                   # e = B^T d for the tile row's 4 rows
                d0, d1, d2, d3 = canvas[r, s], canvas[r + 1, s], canvas[r + 2, s], canvas[r + 3, s]
                e[0, s] = d0 - d2
                e[1, s] = d1 + d2
                e[2, s] = d2 - d1
                e[3, s] = d1 - d3
            for tw in range(TW):                  # v = e B, tile by tile
                t = tb + th * TW + tw
                s = 2 * tw
                for a in range(4):
                    f0, f1, f2, f3 = e[a, s], e[a, s + 1], e[a, s + 2], e[a, s + 3]
                    V[4 * a + 0, c, t] = f0 - f2
                    V[4 * a + 1, c, t] = f1 + f2
                    V[4 * a + 2, c, t] = f2 - f1
                    V[4 * a + 3, c, t] = f1 - f3


@jit
def output_transform(M, n0, n1, TH, TW, bias, has_bias, y):
    """y[n, o, 2th .. 2th+1, 2tw .. 2tw+1] = A^T m A (+ bias[o]) for m = M[:, o, t]
    reshaped 4x4, cropped to (OH, OW) (y's shape); only images n0 .. n1 are written.

    M: (16, OC, (n1 - n0) * TH * TW); bias: (OC,) (read when has_bias); y: (N, OC, OH, OW).
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    nb = n1 - n0
    for q in prange(nb * OC):
        i = q // OC
        o = q - i * OC
        canvas = np.empty((2 * TH, 2 * TW), dtype=y.dtype)
        tb = i * TH * TW
        for th in range(TH):
            for tw in range(TW):
                t = tb + th * TW + tw
                # f = A^T m: two rows of 4
                g0 = M[0, o, t] + M[4, o, t] + M[8, o, t]
                g1 = M[1, o, t] + M[5, o, t] + M[9, o, t]
                g2 = M[2, o, t] + M[6, o, t] + M[10, o, t]
                g3 = M[3, o, t] + M[7, o, t] + M[11, o, t]
                h0 = M[4, o, t] - M[8, o, t] - M[12, o, t]
                h1 = M[5, o, t] - M[9, o, t] - M[13, o, t]
                h2 = M[6, o, t] - M[10, o, t] - M[14, o, t]
                h3 = M[7, o, t] - M[11, o, t] - M[15, o, t]
                r, s = 2 * th, 2 * tw              # y = f A
                canvas[r, s] = g0 + g1 + g2
                canvas[r, s + 1] = g1 - g2 - g3
                canvas[r + 1, s] = h0 + h1 + h2
                canvas[r + 1, s + 1] = h1 - h2 - h3
        beta = bias[o] if has_bias else canvas[0, 0] * 0
        for r in range(OH):
            for s in range(OW):
                y[n0 + i, o, r, s] = canvas[r, s] + beta


@jit
def grad_transform(gy, n0, n1, TH, TW, Z):
    """Z[k, o, t] = (A g A^T)[k // 4, k % 4] for the 2x2 tile g = gy[n, o, 2th .. 2th+1,
    2tw .. 2tw+1] (zeros past OH, OW): dL/dM, the adjoint of ``output_transform``.

    gy: (N, OC, OH, OW) C-contiguous; Z: (16, OC, (n1 - n0) * TH * TW).
    """
    OC, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    nb = n1 - n0
    for q in prange(nb * OC):
        i = q // OC
        o = q - i * OC
        canvas = np.zeros((2 * TH, 2 * TW), dtype=gy.dtype)
        for r in range(OH):
            for s in range(OW):
                canvas[r, s] = gy[n0 + i, o, r, s]
        tb = i * TH * TW
        for th in range(TH):
            for tw in range(TW):
                t = tb + th * TW + tw
                r, s = 2 * th, 2 * tw
                a0, a1 = canvas[r, s], canvas[r, s + 1]          # g row 0
                b0, b1 = canvas[r + 1, s], canvas[r + 1, s + 1]  # g row 1
                # rows of A g: g0, g0 + g1, g0 - g1, -g1 (each two columns)
                u0, u1 = a0, a1
                v0, v1 = a0 + b0, a1 + b1
                w0, w1 = a0 - b0, a1 - b1
                z0, z1 = -b0, -b1
                # columns: (A g) A^T, the same map on each row
                Z[0, o, t], Z[1, o, t], Z[2, o, t], Z[3, o, t] = u0, u0 + u1, u0 - u1, -u1
                Z[4, o, t], Z[5, o, t], Z[6, o, t], Z[7, o, t] = v0, v0 + v1, v0 - v1, -v1
                Z[8, o, t], Z[9, o, t], Z[10, o, t], Z[11, o, t] = w0, w0 + w1, w0 - w1, -w1
                Z[12, o, t], Z[13, o, t], Z[14, o, t], Z[15, o, t] = z0, z0 + z1, z0 - z1, -z1


@jit
def input_scatter(dV, n0, n1, P0, Q0, TH, TW, gx):
    """gx[n, c] = the sum over tiles of B dv B^T (dv = dV[:, c, t] reshaped 4x4) added at
    the tile's place in the padded input, cropped to x: the adjoint of ``input_transform``
    (tiles overlap by two rows and columns). Every entry of gx[n0:n1] is written.

    dV: (16, C, (n1 - n0) * TH * TW); gx: (N, C, H, W) C-contiguous.
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    HP, WP = 2 * TH + 2, 2 * TW + 2
    nb = n1 - n0
    for q in prange(nb * C):
        i = q // C
        c = q - i * C
        canvas = np.zeros((HP, WP), dtype=gx.dtype)
        p = np.empty((4, 4), dtype=gx.dtype)
        tb = i * TH * TW
        for th in range(TH):
            for tw in range(TW):
                t = tb + th * TW + tw
                # p = B dv: rows u0, u1 - u2 + u3, u1 + u2 - u0, -u3 (u_j = row j of dv)
                for b in range(4):
                    u0, u1, u2, u3 = dV[b, c, t], dV[4 + b, c, t], dV[8 + b, c, t], dV[12 + b, c, t]
                    p[0, b] = u0
                    p[1, b] = u1 - u2 + u3
                    p[2, b] = u1 + u2 - u0
                    p[3, b] = -u3
                r, s = 2 * th, 2 * tw               # p B^T: the same map on each row
                for a in range(4):
                    f0, f1, f2, f3 = p[a, 0], p[a, 1], p[a, 2], p[a, 3]
                    canvas[r + a, s] += f0
                    canvas[r + a, s + 1] += f1 - f2 + f3
                    canvas[r + a, s + 2] += f1 + f2 - f0
                    canvas[r + a, s + 3] -= f3
        for r in range(H):                           # the grid covers x (see conv_winograd)
            for s in range(W):
                gx[n0 + i, c, r, s] = canvas[r + P0, s + Q0]
