"""numba kernels of the conv2d family's ``winograd`` implementation with F(4x4, 3x3) tiles
(imported only when used). Read ``conv_winograd.py`` first (the tiles, transforms and
layouts), then ``conv_winograd_numba.py``: these are the same six kernels, with the same
arguments and the same passes, for 6x6 input tiles and 36 components (differences below:
the line buffers' layout, ``weight_adjoint``'s chunks)::

    input_transform     x  (N, C, H, W)    -> V  (36, C, T)   V = B^T d B per 6x6 tile d
    output_transform    M  (36, OC, T)     -> y  (N, OC, OH, OW)   y = A^T m A per tile, + b
    grad_transform      gy (N, OC, OH, OW) -> Z  (36, OC, T)  Z = A g A^T per 4x4 tile g
    input_scatter       dV (36, C, T)      -> gx (N, C, H, W) gx += B dv B^T per tile
    weight_transform    w  (P, 3, 3)       -> U  (36, P)      U = G w G^T,  P = OC * C
    weight_adjoint      dU (36, P)         -> gw (P, 3, 3)    gw = G^T dU G

V[6a + b] = (B^T d B)[a, b] (likewise U, M, Z, dV). T = (n1 - n0) * TH * TW, tile
t = t0 + (n - n0) * TH * TW + th * TW + tw; tile (th, tw) covers outputs
(4th .. 4th+3, 4tw .. 4tw+3) and padded-input rows 4th .. 4th+5, columns 4tw .. 4tw+5:
neighbouring tiles overlap by two rows (columns). ``t0`` as in ``conv_winograd_numba``.

Separable passes, as there: a pass per row of the image through a zero-edged line buffer
(the 6-point transform along the row, for every tile column), and a pass over the plane's
tiles as ONE flat loop (the 6-point transform down the columns), which LLVM vectorises.
For the flat loop, the per-row results are stored by row modulo 4: padded row 4r + e at
``e * LR + r * TW + tw``, so tile (th, tw)'s six rows 4th .. 4th+5 are rows e = 0 .. 3
at t and e = 0, 1 at t + TW. Along the row, the input transform and ``input_scatter``
go through a line buffer stored the same way, column 4j + e of the padded input at
``e * TW1 + j`` (TW1 = TW + 1), so that the loop over tile columns reads and writes
contiguous memory and vectorises (with the tiles' six overlapping columns read straight
from the row at stride 4, the input transform took twice F(2x2)'s time; with this layout
about the same, at (32, 64, 32, 32) on one thread; measured again now: 2x). y and gy,
whose tiles do not overlap, are written and read straight: four values at stride 4,
which LLVM vectorises as interleaved stores and loads (their line buffers had cost a
gather: output transform 0.27 -> 0.07-0.12 ms at (4, 64, 32, 32), 2.2 -> 0.6-0.8 at
(32, 128, 16, 16); gradient transform 0.22 -> 0.12-0.16, 1.04 -> 0.48-0.65).
``input_scatter`` sums the overlaps of neighbouring tiles (rows 4 and 5 of a tile land
on rows 0 and 1 of the tile below, likewise columns) before writing, so each entry of gx
is written once.
Row and column indices are non-negative: ``& 3`` and ``>> 2`` stand for ``% 4`` and
``// 4`` in the per-element loops (numba's ``%`` and ``//`` keep Python's rules for
negative numbers, at a cost).

The transforms, factored so that each takes few operations and only the constants 2, 4
and 8 (B^T d B and A^T m A; row by row, a 6-vector d or m)::

    B^T d: (d4 - d2) + 4 (d0 - d2),  (d3 + d4) - 4 (d1 + d2),  (d4 - d3) + 4 (d1 - d2),
           (d4 - d2) + 2 (d3 - d1),  (d4 - d2) - 2 (d3 - d1),  (d5 - d3) + 4 (d1 - d3)
    A^T m: with s = m1 + m2, d = m1 - m2, S = m3 + m4, D = m3 - m4:
           m0 + s + S,  d + 2 D,  s + 4 S,  d + 8 D + m5

and their adjoints (``grad_transform``: A g for a 4-vector g; ``input_scatter``: B u for
a 6-vector u, ``_bu``). The constants are made in the arrays' dtype inside each kernel
(``_consts``) and G's 1/4, 1/2, 1/6 come in as an argument of the arrays' dtype: float32
stays float32 (numba would make ``x * 2`` of a float32 x a float64).

Accuracy: see ``conv_winograd.py`` (float32 errors 6 to 17x F(2x2)'s, up to 1e-5 of the
largest value at ResNet-18's sizes).
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
_PLANES = 16


@njit_helper
def _consts(a):
    """(2, 4, 8) in a's dtype."""
    one = np.ones(1, dtype=a.dtype)[0]
    two = one + one
    four = two + two
    return two, four, four + four


@njit_helper
def _put6(D, o, step, j, v0, v1, v2, v3, v4, v5):
    """D[o + k * step + j] = v_k for k = 0 .. 5: a 6-point transform's results, each into
    its own row group of a work array."""
    D[_u(o + j)] = v0
    D[_u(o + step + j)] = v1
    D[_u(o + 2 * step + j)] = v2
    D[_u(o + 3 * step + j)] = v3
    D[_u(o + 4 * step + j)] = v4
    D[_u(o + 5 * step + j)] = v5


@njit_helper
def _bt(d0, d1, d2, d3, d4, d5, two, four):
    """B^T d for a 6-vector d (the input transform along one direction)."""
    e = d4 - d2
    f = two * (d3 - d1)
    return (e + four * (d0 - d2), (d3 + d4) - four * (d1 + d2), (d4 - d3) + four * (d1 - d2),
            e + f, e - f, (d5 - d3) + four * (d1 - d3))


@njit_helper
def _at(m0, m1, m2, m3, m4, m5, two, four, eight):
    """A^T m for a 6-vector m: 4 values (the output transform along one direction)."""
    s, d = m1 + m2, m1 - m2
    S, D = m3 + m4, m3 - m4
    return m0 + s + S, d + two * D, s + four * S, d + eight * D + m5


@njit_helper
def _a(g0, g1, g2, g3, two, four):
    """A g for a 4-vector g: 6 values (the adjoint of ``_at``)."""
    e, o = g0 + g2, g1 + g3
    E, O = g0 + four * g2, two * (g1 + four * g3)
    return g0, e + o, e - o, E + O, E - O, g3


@njit_helper
def _bu(u0, u1, u2, u3, u4, u5, two, four):
    """B u for a 6-vector u (the adjoint of ``_bt``): (4u0, -4(u1 - u2) - 2(u3 - u4) + 4u5,
    -5u0 - 4(u1 + u2) - (u3 + u4), (u1 - u2) + 2(u3 - u4) - 5u5, u0 + u1 + u2 + u3 + u4,
    u5)."""
    p, q = u1 + u2, u1 - u2
    s, r = u3 + u4, u3 - u4
    return (four * u0, four * (u5 - q) - two * r, -(four * (u0 + p) + (u0 + s)),
            (q - u5) + two * (r - two * u5), u0 + p + s, u5)


@jit
def input_transform(x, n0, n1, t0, P0, Q0, TH, TW, V):
    """V[k, c, t] = (B^T d B)[k // 6, k % 6] for the 6x6 tile d of image
    n0 + (t - t0) // (TH*TW), channel c: d = xpad[4th .. 4th+5, 4tw .. 4tw+5], xpad x with
    P0 rows above and Q0 columns left of it and zeros wherever the grid passes x.

    x: (N, C, H, W) C-contiguous; V: (36, C, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW).

    Pass 1, per row of x: the row copied into a zero-edged line of the padded width, then
    d B for every tile column: D[m, rr, tw] for padded row rr = 4r + e, stored at
    (4m + e) * LR + r * TW + tw (rows of no x stay zero). Pass 2, one flat loop over the
    plane's tiles per m: V = B^T (d B) with the tile's rows at t (e = 0 .. 3) and t + TW
    (e = 0, 1).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    T = V.shape[2]
    L = TH * TW                                    # tiles per plane
    LR = L + TW                                    # padded row groups 0 .. TH
    TW1 = TW + 1                                   # line columns per residue (4j + e)
    r0, r1 = max(0, -P0), min(H, 4 * TH + 2 - P0)  # rows of x inside the padded grid
    xf = x.reshape(-1)
    Vf = V.reshape(-1)
    K = C * T                                      # from V[k, c, t] to V[k + 1, c, t]
    two, four, _ = _consts(x)
    nq = (n1 - n0) * C
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        D = np.zeros(24 * LR, dtype=x.dtype)        # D[(4m + e) * LR + r * TW + tw]
        line = np.zeros(4 * TW1, dtype=x.dtype)     # padded column 4j + e at e * TW1 + j;
        #                                             its padding stays zero
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // C
            c = q - i * C
            src = ((n0 + i) * C + c) * H * W
            for r in range(r0, r1):
                rr = r + P0
                g = src + r * W
                for s in range(W):
                    pc = s + Q0
                    line[_u((pc & 3) * TW1 + (pc >> 2))] = xf[_u(g + s)]
                o = (rr % 4) * LR + rr // 4 * TW
                for tw in range(TW):               # d B for the row's 6 values 4tw .. 4tw+5
                    b0, b1, b2, b3, b4, b5 = _bt(line[_u(tw)], line[_u(TW1 + tw)],
                                                 line[_u(2 * TW1 + tw)], line[_u(3 * TW1 + tw)],
                                                 line[_u(tw + 1)], line[_u(TW1 + tw + 1)],
                                                 two, four)
                    D[_u(o + tw)] = b0
                    D[_u(o + 4 * LR + tw)] = b1
                    D[_u(o + 8 * LR + tw)] = b2
                    D[_u(o + 12 * LR + tw)] = b3
                    D[_u(o + 16 * LR + tw)] = b4
                    D[_u(o + 20 * LR + tw)] = b5
            for m in range(6):                     # B^T on the tile's 6 rows
                e0 = 4 * m * LR
                e1, e2, e3 = e0 + LR, e0 + 2 * LR, e0 + 3 * LR
                d = (m * C + c) * T + t0 + i * L
                for t in range(L):
                    v0, v1, v2, v3, v4, v5 = _bt(D[_u(e0 + t)], D[_u(e1 + t)], D[_u(e2 + t)],
                                                 D[_u(e3 + t)], D[_u(e0 + TW + t)],
                                                 D[_u(e1 + TW + t)], two, four)
                    Vf[_u(d + t)] = v0
                    Vf[_u(d + 6 * K + t)] = v1
                    Vf[_u(d + 12 * K + t)] = v2
                    Vf[_u(d + 18 * K + t)] = v3
                    Vf[_u(d + 24 * K + t)] = v4
                    Vf[_u(d + 30 * K + t)] = v5


@jit
def output_transform(M, n0, n1, t0, TH, TW, bias, has_bias, y):
    """y[n, o, 4th .. 4th+3, 4tw .. 4tw+3] = A^T m A (+ bias[o]) for m = M[:, o, t]
    reshaped 6x6, cropped to (OH, OW) (y's shape); only images n0 .. n1 are written.

    M: (36, OC, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW); bias: (OC,) (read when
    has_bias); y: (N, OC, OH, OW) C-contiguous.

    Pass 1, one flat loop over the plane's tiles per column m: A^T m's four rows,
    F[(4m + e) * L + t]. Pass 2, per row 4th + e of y: f A for every tile column, its four
    outputs (biased) stored straight into the row (LLVM vectorises the interleaved stores;
    a line buffer read back through a gather ran 1.5-4x slower), the last tile column cut
    at OW.
    """
    OC, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    T = M.shape[2]
    L = TH * TW                                    # tiles per plane
    Mf = M.reshape(-1)
    yf = y.reshape(-1)
    K = OC * T                                     # from M[k, o, t] to M[k + 1, o, t]
    zero = np.zeros(1, dtype=y.dtype)[0]           # the bias without one, in y's dtype
    two, four, eight = _consts(y)
    nq = (n1 - n0) * OC
    full = OW // 4                                 # tile columns with all 4 outputs in y
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        F = np.empty(24 * L, dtype=y.dtype)         # F[(4m + e) * L + t]
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // OC
            o = q - i * OC
            for m in range(6):
                s = (m * OC + o) * T + t0 + i * L
                e0 = 4 * m * L
                for t in range(L):
                    f0, f1, f2, f3 = _at(Mf[_u(s + t)], Mf[_u(s + 6 * K + t)],
                                         Mf[_u(s + 12 * K + t)], Mf[_u(s + 18 * K + t)],
                                         Mf[_u(s + 24 * K + t)], Mf[_u(s + 30 * K + t)],
                                         two, four, eight)
                    F[_u(e0 + t)] = f0
                    F[_u(e0 + L + t)] = f1
                    F[_u(e0 + 2 * L + t)] = f2
                    F[_u(e0 + 3 * L + t)] = f3
            beta = bias[o] if has_bias else zero
            dst = ((n0 + i) * OC + o) * OH * OW
            for r in range(OH):
                p = (r % 4) * L + r // 4 * TW
                g = dst + r * OW
                for tw in range(full):             # f A for the row's 6 values: 4 outputs
                    y0, y1, y2, y3 = _at(F[_u(p + tw)], F[_u(p + 4 * L + tw)],
                                         F[_u(p + 8 * L + tw)], F[_u(p + 12 * L + tw)],
                                         F[_u(p + 16 * L + tw)], F[_u(p + 20 * L + tw)],
                                         two, four, eight)
                    yf[_u(g + 4 * tw)] = y0 + beta
                    yf[_u(g + 4 * tw + 1)] = y1 + beta
                    yf[_u(g + 4 * tw + 2)] = y2 + beta
                    yf[_u(g + 4 * tw + 3)] = y3 + beta
                if full < TW:                      # the last tile column, cut at OW
                    y0, y1, y2, y3 = _at(F[_u(p + full)], F[_u(p + 4 * L + full)],
                                         F[_u(p + 8 * L + full)], F[_u(p + 12 * L + full)],
                                         F[_u(p + 16 * L + full)], F[_u(p + 20 * L + full)],
                                         two, four, eight)
                    g4 = g + 4 * full
                    yf[_u(g4)] = y0 + beta
                    if 4 * full + 1 < OW:
                        yf[_u(g4 + 1)] = y1 + beta
                    if 4 * full + 2 < OW:
                        yf[_u(g4 + 2)] = y2 + beta


@jit
def grad_transform(gy, n0, n1, t0, TH, TW, Z):
    """Z[k, o, t] = (A g A^T)[k // 6, k % 6] for the 4x4 tile g = gy[n, o, 4th .. 4th+3,
    4tw .. 4tw+3] (zeros past OH, OW): dL/dM, the adjoint of ``output_transform``.

    gy: (N, OC, OH, OW) C-contiguous; Z: (36, OC, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW).

    Pass 1, per row 4r + e of gy: g A^T for every tile column (4 values, read straight
    from the row, become 6), into D[(4m + e) * L + r * TW + tw]. Pass 2, one flat loop
    over the plane's tiles per m: A on the tile's four rows (e = 0 .. 3 at t).
    """
    OC, OH, OW = gy.shape[1], gy.shape[2], gy.shape[3]
    T = Z.shape[2]
    L = TH * TW                                    # tiles per plane
    gf = gy.reshape(-1)
    Zf = Z.reshape(-1)
    K = OC * T                                     # from Z[k, o, t] to Z[k + 1, o, t]
    two, four, _ = _consts(gy)
    zero = np.zeros(1, dtype=gy.dtype)[0]
    nq = (n1 - n0) * OC
    full = OW // 4                                 # tile columns with all 4 values in gy
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        D = np.zeros(24 * L, dtype=gy.dtype)        # rows past OH stay zero
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // OC
            o = q - i * OC
            src = ((n0 + i) * OC + o) * OH * OW
            for r in range(OH):
                g = src + r * OW
                p = (r % 4) * L + r // 4 * TW
                for tw in range(full):             # read straight from the row
                    s = g + 4 * tw
                    a0, a1, a2, a3, a4, a5 = _a(gf[_u(s)], gf[_u(s + 1)], gf[_u(s + 2)],
                                                gf[_u(s + 3)], two, four)
                    _put6(D, p, 4 * L, tw, a0, a1, a2, a3, a4, a5)
                if full < TW:                      # the last tile column, zeros past OW
                    s = g + 4 * full
                    g1 = gf[_u(s + 1)] if 4 * full + 1 < OW else zero
                    g2 = gf[_u(s + 2)] if 4 * full + 2 < OW else zero
                    a0, a1, a2, a3, a4, a5 = _a(gf[_u(s)], g1, g2, zero, two, four)
                    _put6(D, p, 4 * L, full, a0, a1, a2, a3, a4, a5)
            for m in range(6):                     # A on the tile's 4 rows
                e0 = 4 * m * L
                d = (m * OC + o) * T + t0 + i * L
                for t in range(L):
                    z0, z1, z2, z3, z4, z5 = _a(D[_u(e0 + t)], D[_u(e0 + L + t)],
                                                D[_u(e0 + 2 * L + t)], D[_u(e0 + 3 * L + t)],
                                                two, four)
                    Zf[_u(d + t)] = z0
                    Zf[_u(d + 6 * K + t)] = z1
                    Zf[_u(d + 12 * K + t)] = z2
                    Zf[_u(d + 18 * K + t)] = z3
                    Zf[_u(d + 24 * K + t)] = z4
                    Zf[_u(d + 30 * K + t)] = z5


@jit
def input_scatter(dV, n0, n1, t0, P0, Q0, TH, TW, gx):
    """gx[n, c] = the sum over tiles of B dv B^T (dv = dV[:, c, t] reshaped 6x6) added at
    the tile's place in the padded input, cropped to x: the adjoint of ``input_transform``
    (tiles overlap by two rows and columns). Every entry of gx[n0:n1] is written.

    dV: (36, C, T) C-contiguous (T >= t0 + (n1 - n0) * TH * TW); gx: (N, C, H, W) C-contiguous.

    Each padded-input entry is written once, the overlaps summed first: canvas row 4r + e
    gets row e of B dv from tile row r, plus, for e = 0 (1), row 4 (5) from tile row
    r - 1; likewise for columns. Pass 1, per column b of dv, flat loops over the plane's
    tiles: B u of each tile (rows 0 .. 3 into R, rows 4, 5 aside), then rows 4, 5 added
    to the tile below (t + TW): R[(4b + e) * LR + r * TW + tw] = row 4r + e of the
    overlapped B dv. Pass 2, per canvas row: B on its six values (b) of each tile column,
    into a line buffer, the overlaps added, then copied cropped to gx.
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    T = dV.shape[2]
    L = TH * TW                                    # tiles per plane
    LR = L + TW                                    # tile rows 0 .. TH (TH + 1 rows)
    TW1 = TW + 1                                   # tile columns 0 .. TW in the line
    dVf = dV.reshape(-1)
    gf = gx.reshape(-1)
    K = C * T                                      # from dV[k, c, t] to dV[k + 1, c, t]
    two, four, _ = _consts(gx)
    zero = np.zeros(1, dtype=gx.dtype)[0]
    nq = (n1 - n0) * C
    for chunk in prange((nq + _PLANES - 1) // _PLANES):
        # rows 4 TH + 2, 4 TH + 3 (e = 2, 3 of tile row TH) are past the canvas: not written
        R = np.empty(24 * LR, dtype=gx.dtype)
        X = np.empty(2 * L, dtype=gx.dtype)         # rows 4, 5 of B u of each tile
        line = np.empty(6 * TW1, dtype=gx.dtype)   # (B v)[f] of tile column j at f * TW1 + j
        for q in range(chunk * _PLANES, min(nq, (chunk + 1) * _PLANES)):
            i = q // C
            c = q - i * C
            for b in range(6):
                # column b of dv: u0 .. u5 = dV[b], dV[6 + b], ..., dV[30 + b]
                s0 = (b * C + c) * T + t0 + i * L
                s1, s2, s3, s4, s5 = s0 + 6 * K, s0 + 12 * K, s0 + 18 * K, s0 + 24 * K, s0 + 30 * K
                e0 = 4 * b * LR
                e1, e2, e3 = e0 + LR, e0 + 2 * LR, e0 + 3 * LR
                for t in range(L):                 # B u of every tile; rows 4, 5 aside
                    c0, c1, c2, c3, c4, c5 = _bu(dVf[_u(s0 + t)], dVf[_u(s1 + t)],
                                                 dVf[_u(s2 + t)], dVf[_u(s3 + t)],
                                                 dVf[_u(s4 + t)], dVf[_u(s5 + t)], two, four)
                    R[_u(e0 + t)] = c0
                    R[_u(e1 + t)] = c1
                    R[_u(e2 + t)] = c2
                    R[_u(e3 + t)] = c3
                    X[_u(t)] = c4
                    X[_u(L + t)] = c5
                for t in range(L, LR):             # canvas rows 4 TH, 4 TH + 1: below the tiles
                    R[_u(e0 + t)] = zero
                    R[_u(e1 + t)] = zero
                for t in range(TW, LR):            # rows 4, 5 of the tile above added
                    R[_u(e0 + t)] += X[_u(t - TW)]
                    R[_u(e1 + t)] += X[_u(L + t - TW)]
            dst = ((n0 + i) * C + c) * H * W
            # the grid covers x: 4 TH + 2 >= OH + 2 = H + PH0 + PH1 (conv_winograd)
            for r in range(H):
                rr = r + P0                        # canvas row
                o = (rr % 4) * LR + rr // 4 * TW
                q0, q1, q2 = o, o + 4 * LR, o + 8 * LR
                q3, q4, q5 = o + 12 * LR, o + 16 * LR, o + 20 * LR
                # same for columns: column 4j + f is (B v)[f] of tile column j, plus for
                # f = 0 (1), (B v)[4] ((B v)[5]) of tile column j - 1: all six stored
                # (contiguous in j), then the overlaps added, column 4j + f at f * TW1 + j
                for j in range(TW):
                    c0, c1, c2, c3, c4, c5 = _bu(R[_u(q0 + j)], R[_u(q1 + j)], R[_u(q2 + j)],
                                                 R[_u(q3 + j)], R[_u(q4 + j)], R[_u(q5 + j)],
                                                 two, four)
                    line[_u(j)] = c0
                    line[_u(TW1 + j)] = c1
                    line[_u(2 * TW1 + j)] = c2
                    line[_u(3 * TW1 + j)] = c3
                    line[_u(4 * TW1 + j)] = c4
                    line[_u(5 * TW1 + j)] = c5
                line[_u(TW)] = zero                # columns 4 TW, 4 TW + 1: no tile column TW
                line[_u(TW1 + TW)] = zero
                for j in range(TW):
                    line[_u(j + 1)] += line[_u(4 * TW1 + j)]
                    line[_u(TW1 + j + 1)] += line[_u(5 * TW1 + j)]
                g = dst + r * W
                for s in range(W):
                    pc = s + Q0
                    gf[_u(g + s)] = line[_u((pc & 3) * TW1 + (pc >> 2))]


@njit_helper
def _g(a, b, c, quarter, half, sixth):
    """G (a, b, c): (a/4, -(a + b + c)/6, -(a - b + c)/6, (a/4 + b/2 + c)/6,
    (a/4 - b/2 + c)/6, c)."""
    s = a + c
    h = a * quarter + c
    bh = b * half
    return a * quarter, -(s + b) * sixth, -(s - b) * sixth, (h + bh) * sixth, (h - bh) * sixth, c


@njit_helper
def _gt(u0, u1, u2, u3, u4, u5, quarter, half, sixth):
    """G^T u for a 6-vector u (the adjoint of ``_g``): (u0/4 + ((u3 + u4)/4 - (u1 + u2))/6,
    ((u2 - u1) + (u3 - u4)/2)/6, ((u3 + u4) - (u1 + u2))/6 + u5)."""
    p, s = u1 + u2, u3 + u4
    return (u0 * quarter + (s * quarter - p) * sixth, ((u2 - u1) + (u3 - u4) * half) * sixth,
            (s - p) * sixth + u5)


@jit
def weight_transform(w, consts, U, c0, c1):
    """U[6a + b, p] = (G w[p] G^T)[a, b] for the 3x3 kernels p of chunks c0..c1-1 (64
    kernels a chunk; w (P, 3, 3) C-contiguous, U (36, P) C-contiguous; consts: (1/4, 1/2,
    1/6) in w's dtype).

    Six passes over the kernels, pass a writing U's rows 6a .. 6a+5 from row a of G w
    (as ``conv_winograd_numba.weight_transform`` does, for the cache sets)."""
    quarter, half, sixth = consts[0], consts[1], consts[2]
    P = w.shape[0]
    p0 = c0 * 64
    p1 = min(P, c1 * 64)
    for a in range(6):
        for p in prange(p0, p1):
            # row a of G w: (G w)[a, j] = G[a] . w[:, j], for j = 0, 1, 2
            f0 = _g(w[p, 0, 0], w[p, 1, 0], w[p, 2, 0], quarter, half, sixth)[a]
            f1 = _g(w[p, 0, 1], w[p, 1, 1], w[p, 2, 1], quarter, half, sixth)[a]
            f2 = _g(w[p, 0, 2], w[p, 1, 2], w[p, 2, 2], quarter, half, sixth)[a]
            # (G w) G^T, row a: U[6a .. 6a+5] = G (row a of G w)
            g0, g1, g2, g3, g4, g5 = _g(f0, f1, f2, quarter, half, sixth)
            k = 6 * a
            U[k, p], U[k + 1, p], U[k + 2, p] = g0, g1, g2
            U[k + 3, p], U[k + 4, p], U[k + 5, p] = g3, g4, g5


@jit
def weight_adjoint(dU, consts, gw, p0, p1):
    """gw[p] = G^T dU[:, p] G for p in p0..p1-1 (dU (36, P) reshaped 6x6 per p, gw (P, 3, 3)
    C-contiguous; consts: (1/4, 1/2, 1/6) in dU's dtype): the adjoint of
    ``weight_transform``.

    By chunks of 64 kernels: G^T dU's columns as flat loops over the chunk's kernels
    (contiguous in dU, vectorised) into a small buffer, then its rows times G. Kernel by
    kernel, reading the 36 rows of dU (P elements apart, a power of two for ResNet's
    layers, so in the same cache sets) took 3x to 7x longer (512x512 kernels: 13 to 35 ms
    against 5 ms, on one core)."""
    quarter, half, sixth = consts[0], consts[1], consts[2]
    P = dU.shape[1]
    dUf = dU.reshape(-1)
    gf = gw.reshape(-1)
    for chunk in prange((p1 - p0 + 63) // 64):
        q0 = p0 + chunk * 64
        n = min(p1, q0 + 64) - q0
        F = np.empty(18 * 64, dtype=dU.dtype)      # F[(3c + i) * 64 + j] = (G^T dU[:, c])[i]
        for c in range(6):                         # G^T dU, column c, for kernel q0 + j
            s0 = c * P + q0
            for j in range(n):
                a0, a1, a2 = _gt(dUf[_u(s0 + j)], dUf[_u(s0 + 6 * P + j)],
                                 dUf[_u(s0 + 12 * P + j)], dUf[_u(s0 + 18 * P + j)],
                                 dUf[_u(s0 + 24 * P + j)], dUf[_u(s0 + 30 * P + j)],
                                 quarter, half, sixth)
                F[_u(3 * c * 64 + j)] = a0
                F[_u((3 * c + 1) * 64 + j)] = a1
                F[_u((3 * c + 2) * 64 + j)] = a2
        for i in range(3):                         # (G^T dU) G, row i: gw[p, i]
            for j in range(n):
                b0, b1, b2 = _gt(F[_u(i * 64 + j)], F[_u((3 + i) * 64 + j)],
                                 F[_u((6 + i) * 64 + j)], F[_u((9 + i) * 64 + j)],
                                 F[_u((12 + i) * 64 + j)], F[_u((15 + i) * 64 + j)],
                                 quarter, half, sixth)
                g = (q0 + j) * 9 + 3 * i
                gf[_u(g)] = b0
                gf[_u(g + 1)] = b1
                gf[_u(g + 2)] = b2
