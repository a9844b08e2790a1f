"""numba kernels of the conv2d family's ``winograd`` implementation (imported only when
used). Read ``conv_winograd.py`` first: it defines the tiles, the transforms and the
layouts these kernels receive.

Four kernels, one per transform, each a loop over (image, channel) planes of a block of
images n0 .. n1 (``prange``: each iteration writes its own plane or its own columns of
the tile matrix, so results do not depend on the schedule), plus the 3x3 <-> 4x4 weight
transforms::

    input_transform     x  (N, C, H, W)    -> V  (16, C, T)   V = B^T d B per 4x4 tile d
    output_transform    M  (16, OC, T)     -> y  (N, OC, OH, OW)   y = A^T m A per tile, + b
    grad_transform      gy (N, OC, OH, OW) -> Z  (16, OC, T)  Z = A g A^T per 2x2 tile g
    input_scatter       dV (16, C, T)      -> gx (N, C, H, W) gx += B dv B^T per tile
    weight_transform    w  (P, 3, 3)       -> U  (16, P)      U = G w G^T,  P = OC * C
    weight_adjoint      dU (16, P)         -> gw (P, 3, 3)    gw = G^T dU G

T = (n1 - n0) * TH * TW, tile t = t0 + (n - n0) * TH * TW + th * TW + tw; tile (th, tw) covers
outputs (2th .. 2th+1, 2tw .. 2tw+1) and padded-input rows 2th .. 2th+3, columns
2tw .. 2tw+3. ``t0`` is the tile column of image n0: 0 when the tile matrix holds only
images n0 .. n1 (a block), n0 * TH * TW when it holds the whole batch and the call does
one range of its images (``conv_winograd``'s whole-batch mode, ranges on threads); the
tile matrix's T may then exceed (n1 - n0) * TH * TW.

How the loops are written, and why: a first version computed tile by tile, writing the
16 values of a tile to 16 rows of V through 3-D indices; its input and gradient
transforms took more time than the GEMMs. A second one ran each transform one row of
tiles at a time over a zero-filled copy of the plane (loops of TW, 2 to 16, iterations).
Now every transform is separable into a pass per row of the image (the column
transform: short loops over the tile columns, through a line buffer whose zero edges
are the padding) and a pass over the plane's tiles as ONE flat loop (the row transform:
tile (th, tw) and the tile below it are t and t + TW apart when the per-row results
are stored even and odd rows apart), which LLVM vectorises; ``input_scatter`` sums the
overlaps of neighbouring tiles before writing, so each entry of gx is written once.
Against the second version, per call at ResNet-18's shapes (batch 32, 64 to 512
channels, 32x32 to 4x4) on one thread: input_transform 1.4-2.1x, input_scatter 2.4-3.6x,
grad_transform 2.0-2.4x, output_transform 1.2-2x faster. Flat views and unsigned indices (``_u``) keep the loops
free of wraparound checks, as in ``im2col_numba.py``.

B and A hold only 0 and +-1: those transforms are additions, exact in any dtype. G's
1/2 comes in as ``half``, an argument of the arrays' dtype: float32 stays float32.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .threads import jit, njit_helper

__all__ = ["input_transform", "output_transform", "grad_transform", "input_scatter",
           "weight_transform", "weight_adjoint"]

_u = numba.types.uintp  # unsigned index: no negative-index wraparound check in the loops

# planes per prange iteration: the per-plane work arrays are allocated once per iteration
# (for 4x4 images, allocating them per plane cost as much as the transform)
_PLANES = 16


@jit
def input_transform(x, n0, n1, t0, P0, Q0, TH, TW, V):
    """V[k, c, t] = (B^T d B)[k // 4, k % 4] for the 4x4 tile d of image n0 + (t - t0) // (TH*TW),
    channel c: d = xpad[2th .. 2th+3, 2tw .. 2tw+3], xpad x with P0 rows above and Q0
    columns left of it and zeros wherever the grid passes x.

    x: (N, C, H, W) C-contiguous; V: (16, C, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW).

    Pass 1, per row of x: the row copied into a zero-edged line of the padded width, then
    d B for every tile column: D[m, rr, tw] for padded row rr, stored even and odd rows
    apart (rows of no x stay zero). Pass 2, one flat loop over the plane's tiles per m:
    tile (th, tw) has rows 2th .. 2th+3 = even and odd rows th and th + 1 of D, so
    V = B^T (d B) reads D at t and t + TW.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    T = V.shape[2]
    L = TH * TW                                    # tiles per plane
    LR = L + TW                                    # padded row pairs 0 .. TH
    WP = 2 * TW + 2
    r0, r1 = max(0, -P0), min(H, 2 * TH + 2 - P0)  # rows of x inside the padded grid
    xf = x.reshape(-1)
    Vf = V.reshape(-1)
    K = C * T                                      # from V[k, c, t] to V[k + 1, c, t]
    nq = (n1 - n0) * C
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        D = np.zeros(8 * LR, dtype=x.dtype)         # D[(2m + e) * LR + r * TW + tw], rr = 2r + e
        line = np.zeros(WP, dtype=x.dtype)          # its edges (padding) stay zero
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // C
            c = q - i * C
            src = ((n0 + i) * C + c) * H * W
            for r in range(r0, r1):
                rr = r + P0
                g = src + r * W
                for s in range(W):
                    line[_u(s + Q0)] = xf[_u(g + s)]
                o = (rr % 2) * LR + rr // 2 * TW
                for tw in range(TW):               # d B: f0 - f2, f1 + f2, f2 - f1, f1 - f3
                    f0, f1 = line[_u(2 * tw)], line[_u(2 * tw + 1)]
                    f2, f3 = line[_u(2 * tw + 2)], line[_u(2 * tw + 3)]
                    D[_u(o + tw)] = f0 - f2
                    D[_u(o + 2 * LR + tw)] = f1 + f2
                    D[_u(o + 4 * LR + tw)] = f2 - f1
                    D[_u(o + 6 * LR + tw)] = f1 - f3
            for m in range(4):                     # B^T on rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3
                e0 = 2 * m * LR
                e1 = e0 + LR
                d = (m * C + c) * T + t0 + i * L
                for t in range(L):
                    d0, d1 = D[_u(e0 + t)], D[_u(e1 + t)]
                    d2, d3 = D[_u(e0 + TW + t)], D[_u(e1 + TW + t)]
                    Vf[_u(d + t)] = d0 - d2
                    Vf[_u(d + 4 * K + t)] = d1 + d2
                    Vf[_u(d + 8 * K + t)] = d2 - d1
                    Vf[_u(d + 12 * K + t)] = d1 - d3


@jit
def output_transform(M, n0, n1, t0, TH, TW, bias, has_bias, y):
    """y[n, o, 2th .. 2th+1, 2tw .. 2tw+1] = A^T m A (+ bias[o]) for m = M[:, o, t]
    reshaped 4x4, cropped to (OH, OW) (y's shape); only images n0 .. n1 are written.

    M: (16, OC, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW); bias: (OC,) (read when has_bias);
    y: (N, OC, OH, OW) C-contiguous.

    Pass 1, one flat loop over the plane's tiles per column m: A^T m's two rows,
    F[m, e, t] (e = 0: m0 + m1 + m2 of the tile's column, e = 1: m1 - m2 - m3). Pass 2, per
    row of y: f A for every tile column into a line, copied cropped (and biased) to y.
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    T = M.shape[2]
    L = TH * TW                                    # tiles per plane
    Mf = M.reshape(-1)
    yf = y.reshape(-1)
    K = OC * T                                     # from M[k, o, t] to M[k + 1, o, t]
    zero = np.zeros(1, dtype=y.dtype)[0]           # the bias without one, in y's dtype
    nq = (n1 - n0) * OC
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        F = np.empty(8 * L, dtype=y.dtype)          # F[(2m + e) * L + t]
        line = np.empty(2 * TW, dtype=y.dtype)
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // OC
            o = q - i * OC
            for m in range(4):
                s = (m * OC + o) * T + t0 + i * L
                e0 = 2 * m * L
                for t in range(L):
                    m1, m2 = Mf[_u(s + 4 * K + t)], Mf[_u(s + 8 * K + t)]
                    F[_u(e0 + t)] = Mf[_u(s + t)] + m1 + m2
                    F[_u(e0 + L + t)] = m1 - m2 - Mf[_u(s + 12 * K + t)]
            beta = bias[o] if has_bias else zero
            dst = ((n0 + i) * OC + o) * OH * OW
            for r in range(OH):
                p = (r % 2) * L + r // 2 * TW
                for tw in range(TW):               # f A: f0 + f1 + f2, f1 - f2 - f3
                    f1, f2 = F[_u(p + 2 * L + tw)], F[_u(p + 4 * L + tw)]
                    line[_u(2 * tw)] = F[_u(p + tw)] + f1 + f2
                    line[_u(2 * tw + 1)] = f1 - f2 - F[_u(p + 6 * L + tw)]
                g = dst + r * OW
                for s in range(OW):
                    yf[_u(g + s)] = line[_u(s)] + beta


@jit
def grad_transform(gy, n0, n1, t0, TH, TW, Z):
    """Z[k, o, t] = (A g A^T)[k // 4, k % 4] for the 2x2 tile g = gy[n, o, 2th .. 2th+1,
    2tw .. 2tw+1] (zeros past OH, OW): dL/dM, the adjoint of ``output_transform``.

    gy: (N, OC, OH, OW) C-contiguous; Z: (16, OC, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW).

    Pass 1, per row of gy: g A^T for every tile column (a row's pair (a, b) becomes
    a, a + b, a - b, -b), into D[m, r, tw], even and odd rows apart. Pass 2, one flat loop
    over the plane's tiles per m: A on the tile's two rows, D's even and odd row at t.
    """
    OC, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    T = Z.shape[2]
    L = TH * TW                                    # tiles per plane
    gf = gy.reshape(-1)
    Zf = Z.reshape(-1)
    K = OC * T                                     # from Z[k, o, t] to Z[k + 1, o, t]
    nq = (n1 - n0) * OC
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        D = np.zeros(8 * L, dtype=gy.dtype)         # D[(2m + e) * L + r * TW + tw], row 2r + e
        line = np.zeros(2 * TW, dtype=gy.dtype)     # an odd OW's last column stays zero
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // OC
            o = q - i * OC
            src = ((n0 + i) * OC + o) * OH * OW
            for r in range(OH):
                g = src + r * OW
                for s in range(OW):
                    line[_u(s)] = gf[_u(g + s)]
                p = (r % 2) * L + r // 2 * TW
                for tw in range(TW):
                    a, b = line[_u(2 * tw)], line[_u(2 * tw + 1)]
                    D[_u(p + tw)] = a
                    D[_u(p + 2 * L + tw)] = a + b
                    D[_u(p + 4 * L + tw)] = a - b
                    D[_u(p + 6 * L + tw)] = -b
            for m in range(4):                     # A on rows: a, a + b, a - b, -b
                e0 = 2 * m * L
                e1 = e0 + L
                d = (m * OC + o) * T + t0 + i * L
                for t in range(L):
                    a, b = D[_u(e0 + t)], D[_u(e1 + t)]
                    Zf[_u(d + t)] = a
                    Zf[_u(d + 4 * K + t)] = a + b
                    Zf[_u(d + 8 * K + t)] = a - b
                    Zf[_u(d + 12 * K + t)] = -b


@jit
def input_scatter(dV, n0, n1, t0, P0, Q0, TH, TW, gx):
    """gx[n, c] = the sum over tiles of B dv B^T (dv = dV[:, c, t] reshaped 4x4) added at
    the tile's place in the padded input, cropped to x: the adjoint of ``input_transform``
    (tiles overlap by two rows and columns). Every entry of gx[n0:n1] is written.

    dV: (16, C, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW); gx: (N, C, H, W) C-contiguous.

    Each padded-input entry is written once, the overlaps summed first: canvas row 2r
    (2r + 1) gets row 0 (1) of B dv from tile row r and row 2 (3) from tile row r - 1,
    and likewise for columns. Pass 1, over the plane's tiles as one flat loop (t and
    t - TW: the tile above): R[e, b, r, tw] = row 2r + e of the overlapped B dv, column b.
    Pass 2, per canvas row: its columns from R's four columns (b) of each tile, into a
    line buffer, then copied cropped to gx.
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    T = dV.shape[2]
    L = TH * TW                                    # tiles per plane
    LR = L + TW                                    # tile rows 0 .. TH (TH + 1 rows)
    dVf = dV.reshape(-1)
    gf = gx.reshape(-1)
    K = C * T                                      # from dV[k, c, t] to dV[k + 1, c, t]
    nq = (n1 - n0) * C
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        R = np.empty(8 * LR, dtype=gx.dtype)        # R[(2b + e) * LR + r * TW + tw]
        line = np.empty(2 * TW + 2, dtype=gx.dtype)
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // C
            c = q - i * C
            for b in range(4):
                # column b of dv: u0 .. u3 = dV[b], dV[4 + b], dV[8 + b], dV[12 + b];
                # B u = (u0, u1 - u2 + u3, u1 + u2 - u0, -u3): rows 0, 1 of a tile go to
                # canvas rows 2r, 2r + 1, rows 2, 3 to 2r + 2, 2r + 3 (the next tile row's)
                s0 = (b * C + c) * T + t0 + i * L
                s1, s2, s3 = s0 + 4 * K, s0 + 8 * K, s0 + 12 * K
                e0 = 2 * b * LR
                e1 = e0 + LR
                for t in range(TW):                # tile row 0: nothing above
                    R[_u(e0 + t)] = dVf[_u(s0 + t)]
                    R[_u(e1 + t)] = dVf[_u(s1 + t)] - dVf[_u(s2 + t)] + dVf[_u(s3 + t)]
                for t in range(TW, L):
                    p = t - TW
                    R[_u(e0 + t)] = dVf[_u(s0 + t)] + dVf[_u(s1 + p)] + dVf[_u(s2 + p)] - dVf[_u(s0 + p)]
                    R[_u(e1 + t)] = (dVf[_u(s1 + t)] - dVf[_u(s2 + t)] + dVf[_u(s3 + t)]
                                     - dVf[_u(s3 + p)])
                for t in range(L, LR):             # canvas rows 2 TH, 2 TH + 1: below the tiles
                    p = t - TW
                    R[_u(e0 + t)] = dVf[_u(s1 + p)] + dVf[_u(s2 + p)] - dVf[_u(s0 + p)]
                    R[_u(e1 + t)] = -dVf[_u(s3 + p)]
            dst = ((n0 + i) * C + c) * H * W
            # the grid covers x: 2 TH + 2 >= OH + 2 = H + PH0 + PH1 (conv_winograd)
            for r in range(H):
                rr = r + P0                        # canvas row
                e = rr % 2
                o = rr // 2 * TW
                q0, q1 = (0 + e) * LR + o, (2 + e) * LR + o
                q2, q3 = (4 + e) * LR + o, (6 + e) * LR + o
                # same for columns: column 2j = Q0[j] + (Q1 + Q2 - Q0)[j - 1],
                # 2j + 1 = (Q1 - Q2 + Q3)[j] - Q3[j - 1]
                line[0] = R[_u(q0)]
                line[1] = R[_u(q1)] - R[_u(q2)] + R[_u(q3)]
                for j in range(1, TW):
                    p = j - 1
                    line[_u(2 * j)] = R[_u(q0 + j)] + R[_u(q1 + p)] + R[_u(q2 + p)] - R[_u(q0 + p)]
                    line[_u(2 * j + 1)] = (R[_u(q1 + j)] - R[_u(q2 + j)] + R[_u(q3 + j)]
                                           - R[_u(q3 + p)])
                p = TW - 1
                line[_u(2 * TW)] = R[_u(q1 + p)] + R[_u(q2 + p)] - R[_u(q0 + p)]
                line[_u(2 * TW + 1)] = -R[_u(q3 + p)]
                g = dst + r * W
                for s in range(W):
                    gf[_u(g + s)] = line[_u(s + Q0)]


@njit_helper
def _g(a, b, c, half):
    """G (a, b, c) = (a, (a + b + c) / 2, (a - b + c) / 2, c): G times a 3-vector."""
    return a, (a + b + c) * half, (a - b + c) * half, c


@njit_helper
def _gt(u0, u1, u2, u3, half):
    """G^T u = (u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3) for a 4-vector u."""
    return u0 + (u1 + u2) * half, (u1 - u2) * half, (u1 + u2) * half + u3


@jit
def weight_transform(w, half, U, c0, c1):
    """U[4a + b, p] = (G w[p] G^T)[a, b] for the 3x3 kernels p of chunks c0..c1-1 (64 kernels
    a chunk; w (P, 3, 3) C-contiguous, U (16, P) C-contiguous).

    Four passes over the kernels, pass a writing U's rows 4a .. 4a+3 from row a of G w:
    U's 16 rows lie P elements apart, a power of two for ResNet's layers, so a kernel's
    16 values stored at once hit the same cache sets; four rows at a time do not, and
    reading w four times costs less (512x512 kernels: 1.8 ms against 3.9 ms for one pass
    through a 16 x 64 buffer, on one core)."""
    P = w.shape[0]
    p0 = c0 * 64
    p1 = min(P, c1 * 64)
    for a in range(4):
        for p in prange(p0, p1):
            # row a of G w: (G w)[a, j] = G[a] . w[:, j]
            if a == 0:
                f0, f1, f2 = w[p, 0, 0], w[p, 0, 1], w[p, 0, 2]
            elif a == 1:
                f0 = (w[p, 0, 0] + w[p, 1, 0] + w[p, 2, 0]) * half
                f1 = (w[p, 0, 1] + w[p, 1, 1] + w[p, 2, 1]) * half
                f2 = (w[p, 0, 2] + w[p, 1, 2] + w[p, 2, 2]) * half
            elif a == 2:
                f0 = (w[p, 0, 0] - w[p, 1, 0] + w[p, 2, 0]) * half
                f1 = (w[p, 0, 1] - w[p, 1, 1] + w[p, 2, 1]) * half
                f2 = (w[p, 0, 2] - w[p, 1, 2] + w[p, 2, 2]) * half
            else:
                f0, f1, f2 = w[p, 2, 0], w[p, 2, 1], w[p, 2, 2]
            # (G w) G^T, row a: U[4a .. 4a+3] = G (row a of G w)
            U[4 * a, p], U[4 * a + 1, p], U[4 * a + 2, p], U[4 * a + 3, p] = _g(f0, f1, f2, half)


@jit
def weight_adjoint(dU, half, gw, p0, p1):
    """gw[p] = G^T dU[:, p] G for p in p0..p1-1 (dU (16, P) reshaped 4x4 per p, gw (P, 3, 3)
    C-contiguous): the adjoint of ``weight_transform``."""
    for p in prange(p0, p1):
        # G^T dU, column by column: f_j (3 values) = G^T dU[:, j]
        f00, f10, f20 = _gt(dU[0, p], dU[4, p], dU[8, p], dU[12, p], half)
        f01, f11, f21 = _gt(dU[1, p], dU[5, p], dU[9, p], dU[13, p], half)
        f02, f12, f22 = _gt(dU[2, p], dU[6, p], dU[10, p], dU[14, p], half)
        f03, f13, f23 = _gt(dU[3, p], dU[7, p], dU[11, p], dU[15, p], half)
        # (G^T dU) G, row by row: gw[p, r] = G^T (row r of G^T dU)
        gw[p, 0, 0], gw[p, 0, 1], gw[p, 0, 2] = _gt(f00, f01, f02, f03, half)
        gw[p, 1, 0], gw[p, 1, 1], gw[p, 1, 2] = _gt(f10, f11, f12, f13, half)
        gw[p, 2, 0], gw[p, 2, 1], gw[p, 2, 2] = _gt(f20, f21, f22, f23, half)
