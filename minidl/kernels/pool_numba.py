"""numba kernels of the pooling family (``kernels/pool.py`` holds the design, the shape
letters and the registration; ``pool_reference.py`` the definitions these are tested
against): max and average pooling, forward and backward, for float32/float64 NumPy arrays.

    x, gx   (N, C, H, W), seen as C-contiguous (P, H, W) planes, P = N*C
    y, gy   (N, C, OH, OW), as (P, OH, OW)
    arg     (N, C, OH, OW) uint8 tap numbers k = kh*KW + kw (so K <= 256 here)

* Each ``prange`` iteration owns whole planes: the backward scatter needs no atomics and
  is deterministic.
* A dedicated kernel for the 2x2 stride-2 window without padding (LeNet, VGG, most CNNs).
  Every other max window (any stride, padding, dilation, ceil_mode) runs through one of
  two general forward kernels: small outputs (up to ``ACROSS_MAX_OUTPUTS`` pixels) with
  the planes as the inner loop (``_max_forward_across``), larger ones through a canvas
  of stacked planes on which each tap is one flat loop (``_max_forward_group``).
  Its ``prange`` loop calls a serial per-plane function (``njit_helper``): written inline
  in the parallel loop body, the same loops ran several times slower per thread, because
  numba's parfor lowering kept LLVM from optimising them (benchmarks/RESULTS.md).
* Max pooling is compiled WITHOUT fastmath: fastmath assumes no NaN and no inf, which
  would break NaN propagation (``v != v``) and the all -inf windows. Average pooling uses
  it.
* Constants (zero, 1/4) are passed in the array's dtype: a float64 literal would turn a
  float32 loop into float64 arithmetic.

Compiled through ``threads.jit``: the serial build (cached on disk) runs unless the
thread policy (``kernels/threads.py``) asks for the parallel one. The 2x2 kernels are
``one_build`` kernels: their parallel build, run on one thread, beat a serial build of
the same loops (see ``threads.jit``).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import memory
from .im2col_numba import _to_rows
from .threads import jit, njit_helper

_u = numba.types.uintp  # an unsigned index: no negative-index wraparound check

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward"]


# ----------------------------------------------------------------------------- kernels


@njit_helper(fastmath=False)
def _max_forward_2x2_plane(x, y, arg):
    """One (H, W) plane -> (OH, OW) maxima and their taps 0..3, for the 2x2/2 window."""
    OH, OW = y.shape
    for oh in range(OH):
        r0 = x[2 * oh]
        r1 = x[2 * oh + 1]
        for ow in range(OW):
            c = 2 * ow
            best = r0[c]
            k = 0
            v = r0[c + 1]
            if v > best or v != v:
                best = v
                k = 1
            v = r1[c]
            if v > best or v != v:
                best = v
                k = 2
            v = r1[c + 1]
            if v > best or v != v:
                best = v
                k = 3
            y[oh, ow] = best
            arg[oh, ow] = k


@jit(fastmath=False, one_build=True)
def _max_forward_2x2(x, y, arg):
    for p in prange(x.shape[0]):
        _max_forward_2x2_plane(x[p], y[p], arg[p])


@njit_helper(fastmath=False)
def _max_backward_2x2_plane(gy, arg, gx, zero):
    """Write each window's gradient to its argmax tap and zero to the other three.

    Branch-free: zero all four taps, then store at the address the tap number gives
    (row 2*oh + k//2, column 2*ow + k%2). Four ``g if k == t else 0`` selects compile
    to branches that random data mispredicts, several times slower (benchmarks/RESULTS.md)."""
    OH, OW = gy.shape
    H, W = gx.shape
    for oh in range(OH):
        r0 = gx[2 * oh]
        r1 = gx[2 * oh + 1]
        for ow in range(OW):
            c = 2 * ow
            r0[c] = zero
            r0[c + 1] = zero
            r1[c] = zero
            r1[c + 1] = zero
            k = arg[oh, ow]
            gx[2 * oh + (k >> 1), c + (k & 1)] = gy[oh, ow]
        for iw in range(2 * OW, W):  # an odd last column is in no window
            r0[iw] = zero
            r1[iw] = zero
    for ih in range(2 * OH, H):      # nor is an odd last row
        for iw in range(W):
            gx[ih, iw] = zero


@jit(fastmath=False, one_build=True)
def _max_backward_2x2(gy, arg, gx, zero):
    for p in prange(gy.shape[0]):
        _max_backward_2x2_plane(gy[p], arg[p], gx[p], zero)


@njit_helper(fastmath=False)
def _tap_ranges(O, K, S, P, D, L):
    """(O, 2) int64: for each output row (column) o, the first and one-past-last tap whose
    input row (column) o*S - P + tap*D lies inside [0, L). Every window holds at least one
    tap (the op layer checks it)."""
    r = np.empty((O, 2), dtype=np.int64)
    for o in range(O):
        h0 = o * S - P
        r[o, 0] = 0 if h0 >= 0 else (-h0 + D - 1) // D
        r[o, 1] = min(K, (L - 1 - h0) // D + 1)
    return r


@numba.njit(inline="always")
def _keep_max(src, s, n, k, best, karg):
    """best[q], karg[q] = src[s + q], k where src[s + q] is larger than best[q] or NaN,
    for q < n: one tap of a max window over n positions, a select (no branch) each."""
    for q in range(n):
        v = src[_u(s + q)]
        b = best[_u(q)]
        take = (v > b) | (v != v)
        best[_u(q)] = v if take else b
        karg[_u(q)] = k if take else karg[_u(q)]


@njit_helper(fastmath=False)
def _max_forward_group(xf, g0, G, H, W, yf, af, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                       Hq, Wq, kinit, neg_inf, canvas, best, karg):
    """Planes g0 .. g0+G-1 of the flat x (P, H, W) -> their maxima and taps k = i*KW + j
    in the flat y, arg (P, OH, OW), through a canvas that makes every tap ONE flat loop.

    The canvas is the padded input (-inf outside the planes), cut into SH x SW phases
    by row and column remainder, each phase an (Hq, Wq) grid per plane, the G planes'
    grids stacked: canvas row r = SH*rq + a, column c = SW*cq + b lies in phase (a, b)
    at (rq, cq). Output (oh, ow) reads tap (i, j) at canvas (oh*SH + i*DH, ow*SW + j*DW),
    which is phase ((i*DH) % SH, (j*DW) % SW) at (oh + (i*DH)//SH, ow + (j*DW)//SW):
    in that phase, at a fixed offset from position q = (g*Hq + oh)*Wq + ow. So each
    tap is one loop over q for all G planes at once; the positions with ow >= OW or
    oh >= OH in between are computed and dropped. Small planes (GoogLeNet's 4x4 to
    1x1) had spent most of their time on per-plane and per-row loop set-ups, and
    strides 2 on short rows: (32, 832, 1, 1) 3x3/1 took 1.8 ms, (32, 480, 4, 4) 3x3/2
    1.8 ms (benchmarks/RESULTS.md).

    Each position keeps the larger value with a select (no branch); taps come in the
    window's row-major order and only a strictly larger value (or a NaN) replaces the
    best, so the tap kept is the first maximum, or the last NaN, as a window-at-a-time
    scan keeps it (PyTorch's rule). -inf canvas entries never replace the best, and
    ``kinit`` (the first tap inside the plane, per position) stays for an all -inf
    window."""
    PL = Hq * Wq
    span = G * PL                                   # one phase of the canvas
    for i in range(SH * SW * span):
        canvas[_u(i)] = neg_inf
    for g in range(G):
        src = (g0 + g) * H * W
        for r in range(H):
            cr = r + PH
            rq = cr // SH
            if rq >= Hq:                            # rows below the last window
                break
            a = cr - rq * SH
            for b in range(SW):
                # phase column cq holds input column cq*SW + b - PW
                lo = max(0, (PW - b + SW - 1) // SW)
                hi = min(Wq, (W - 1 + PW - b) // SW + 1)
                d = ((a * SW + b) * G + g) * PL + rq * Wq
                s = src + r * W + b - PW
                for cq in range(lo, hi):
                    canvas[_u(d + cq)] = xf[_u(s + cq * SW)]
    for g in range(G):
        o = g * PL
        for q in range(PL):
            best[_u(o + q)] = neg_inf
            karg[_u(o + q)] = kinit[_u(q)]
    n = ((G - 1) * Hq + OH - 1) * Wq + OW
    for i in range(KH):
        a = (i * DH) % SH
        for j in range(KW):
            b = (j * DW) % SW
            src = (a * SW + b) * span + (i * DH) // SH * Wq + (j * DW) // SW
            _keep_max(canvas, src, n, np.int32(i * KW + j), best, karg)
    for g in range(G):
        for oh in range(OH):
            s = (g * Hq + oh) * Wq
            d = ((g0 + g) * OH + oh) * OW
            for ow in range(OW):
                yf[_u(d + ow)] = best[_u(s + ow)]
                af[_u(d + ow)] = karg[_u(s + ow)]


@njit_helper(fastmath=False)
def _max_forward_across(xf, p0, p1, HW, yf, af, OHW, start, tap_k, tap_e, xt, best, karg):
    """Planes p0 .. p1 of the flat x (P, HW) -> maxima and taps in the flat y, arg
    (P, OHW), with the planes as the inner loop: for maps of a few pixels (GoogLeNet's
    4x4 to 1x1) a loop along a plane is a handful of iterations, a loop across planes
    hundreds. The block is transposed into xt (HW, p1 - p0); then for each output o
    every valid tap (its number ``tap_k[i]`` and input position ``tap_e[i]``, for i in
    ``start[o] .. start[o+1]``: ``geometry.valid_taps``) is one select loop over
    the planes, keeping a strictly larger value or a NaN: the first maximum, or the
    last NaN (PyTorch's rule); padding is simply not among the taps."""
    B = p1 - p0
    _to_rows(xf, p0 * HW, B, HW, xt)
    for o in range(OHW):
        i0 = start[o]
        e0 = tap_e[i0] * B
        k0 = tap_k[i0]
        for p in range(B):
            best[_u(p)] = xt[_u(e0 + p)]
            karg[_u(p)] = k0
        for i in range(i0 + 1, start[o + 1]):
            _keep_max(xt, tap_e[i] * B, B, tap_k[i], best, karg)
        d = p0 * OHW + o
        for p in range(B):
            yf[_u(d + p * OHW)] = best[_u(p)]
            af[_u(d + p * OHW)] = karg[_u(p)]


# outputs of up to this many pixels (8x8) are made with the planes as the inner loop
# (``_max_forward_across``), in blocks of about _ACROSS_ELEMENTS input values; larger
# ones through the canvas (``_max_forward_group``). Measured, 3x3 windows at batch 32:
# (64, 16, 16) stride 2 (7x7 out) 0.53 ms across against 0.69 canvas, (192, 8, 8)
# stride 1 0.79 against 1.02; (256, 16, 16) stride 1 4.6 against 3.5.
ACROSS_MAX_OUTPUTS = 64
_ACROSS_ELEMENTS = 1 << 13


@jit(fastmath=False, one_build=True)
def _max_forward_small(x, y, arg, start, tap_k, tap_e):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    B = max(8, _ACROSS_ELEMENTS // (H * W))
    xf, yf, af = x.reshape(-1), y.reshape(-1), arg.reshape(-1)
    for chunk in prange((P + B - 1) // B):
        p0 = chunk * B
        p1 = min(P, p0 + B)
        xt = np.empty(H * W * (p1 - p0), dtype=x.dtype)
        best = np.empty(p1 - p0, dtype=x.dtype)
        karg = np.empty(p1 - p0, dtype=np.int32)
        _max_forward_across(xf, p0, p1, H * W, yf, af, OH * OW, start, tap_k, tap_e, xt,
                            best, karg)


# canvas, best and karg of a group of planes together about this many elements (in L2)
_GROUP_ELEMENTS = 1 << 14


@jit(fastmath=False, one_build=True)
def _max_forward(x, y, arg, KH, KW, SH, SW, PH, PW, DH, DW):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    rows = _tap_ranges(OH, KH, SH, PH, DH, H)
    cols = _tap_ranges(OW, KW, SW, PW, DW, W)
    # the phase grids: canvas rows 0 .. (OH-1)*SH + (KH-1)*DH are read (likewise columns)
    Hq = ((OH - 1) * SH + (KH - 1) * DH) // SH + 1
    Wq = ((OW - 1) * SW + (KW - 1) * DW) // SW + 1
    PL = Hq * Wq
    kinit = np.zeros(PL, dtype=np.int32)
    for oh in range(OH):
        for ow in range(OW):
            kinit[oh * Wq + ow] = rows[oh, 0] * KW + cols[ow, 0]
    G = max(1, _GROUP_ELEMENTS // ((SH * SW + 2) * PL))
    neg_inf = x.dtype.type(-np.inf)
    xf, yf, af = x.reshape(-1), y.reshape(-1), arg.reshape(-1)
    for chunk in prange((P + G - 1) // G):
        g0 = chunk * G
        g = min(G, P - g0)
        canvas = np.empty(SH * SW * g * PL, dtype=x.dtype)
        best = np.empty(g * PL, dtype=x.dtype)
        karg = np.empty(g * PL, dtype=np.int32)
        _max_forward_group(xf, g0, g, H, W, yf, af, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                           Hq, Wq, kinit, neg_inf, canvas, best, karg)


@jit(fastmath=False)
def _max_backward(gy, arg, gx, KH, KW, SH, SW, PH, PW, DH, DW):
    # flat views, unsigned indices and a table of each (output, tap)'s input position:
    # the 3-D signed indexing's wraparound checks, and the tap number's division into
    # (i, j) per output, had cost more than the scatter itself
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    K = KH * KW
    OHW, HW = OH * OW, H * W
    offs = np.empty(OHW * K, dtype=np.int64)   # taps outside the plane: never named by arg
    for oh in range(OH):
        for ow in range(OW):
            for i in range(KH):
                for j in range(KW):
                    offs[(oh * OW + ow) * K + i * KW + j] = ((oh * SH - PH + i * DH) * W
                                                             + ow * SW - PW + j * DW)
    gf = gx.reshape(-1)
    gyf = gy.reshape(-1)
    af = arg.reshape(-1)
    for p in prange(P):
        base = p * HW
        for i in range(base, base + HW):
            gf[_u(i)] = 0
        q = p * OHW
        for o in range(OHW):
            gf[_u(base + offs[_u(o * K + af[_u(q + o)])])] += gyf[_u(q + o)]


@njit_helper(fastmath=True)
def _avg_forward_2x2_plane(x, y, quarter):
    OH, OW = y.shape
    for oh in range(OH):
        r0 = x[2 * oh]
        r1 = x[2 * oh + 1]
        out = y[oh]
        for ow in range(OW):
            c = 2 * ow
            out[ow] = (r0[c] + r0[c + 1] + r1[c] + r1[c + 1]) * quarter


@jit(fastmath=True, one_build=True)
def _avg_forward_2x2(x, y, quarter):
    for p in prange(x.shape[0]):
        _avg_forward_2x2_plane(x[p], y[p], quarter)


@njit_helper(fastmath=True)
def _avg_backward_2x2_plane(gy, gx, quarter):
    OH, OW = gy.shape
    H, W = gx.shape
    for oh in range(OH):
        r0 = gx[2 * oh]
        r1 = gx[2 * oh + 1]
        g = gy[oh]
        for ow in range(OW):
            q = g[ow] * quarter
            c = 2 * ow
            r0[c] = q
            r0[c + 1] = q
            r1[c] = q
            r1[c + 1] = q
        for iw in range(2 * OW, W):
            r0[iw] = 0
            r1[iw] = 0
    for ih in range(2 * OH, H):
        for iw in range(W):
            gx[ih, iw] = 0


@jit(fastmath=True, one_build=True)
def _avg_backward_2x2(gy, gx, quarter):
    for p in prange(gy.shape[0]):
        _avg_backward_2x2_plane(gy[p], gx[p], quarter)


@jit(fastmath=True)
def _avg_forward(x, y, rdiv, zero, KH, KW, SH, SW, PH, PW):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(OH):
            h0 = oh * SH - PH
            ha = max(h0, 0)
            hb = min(h0 + KH, H)
            for ow in range(OW):
                w0 = ow * SW - PW
                wa = max(w0, 0)
                wb = min(w0 + KW, W)
                s = zero  # x's dtype (a float32 sum for float32, as PyTorch)
                for ih in range(ha, hb):
                    for iw in range(wa, wb):
                        s += x[p, ih, iw]
                y[p, oh, ow] = s * rdiv[oh, ow]


@jit(fastmath=True)
def _avg_backward(gy, gx, rdiv, KH, KW, SH, SW, PH, PW):
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    for p in prange(P):
        for ih in range(H):
            for iw in range(W):
                gx[p, ih, iw] = 0
        for oh in range(OH):
            h0 = oh * SH - PH
            ha = max(h0, 0)
            hb = min(h0 + KH, H)
            for ow in range(OW):
                w0 = ow * SW - PW
                wa = max(w0, 0)
                wb = min(w0 + KW, W)
                g = gy[p, oh, ow] * rdiv[oh, ow]
                for ih in range(ha, hb):
                    for iw in range(wa, wb):
                        gx[p, ih, iw] += g


# ----------------------------------------------------------------------------- the interface


def _planes(a):
    """(N, C, H, W) -> C-contiguous (N*C, H, W) view (or copy)."""
    return np.ascontiguousarray(a).reshape((-1,) + a.shape[-2:])


def max_pool2d_forward(x, win):
    """(y, arg) for x (N, C, H, W): ``pool_reference.max_pool2d_forward``, compiled
    (float32/float64, K <= 256: arg is uint8)."""
    lead = x.shape[:-2]
    xs = _planes(x)                                              # (P, H, W)
    y = memory.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)  # (P, OH, OW)
    arg = memory.empty(y.shape, dtype=np.uint8)
    if win.is_2x2_stride2():
        _max_forward_2x2(xs, y, arg, size=xs.size)
    elif win.OH * win.OW <= ACROSS_MAX_OUTPUTS:
        _max_forward_small(xs, y, arg, *win.taps(), size=xs.size)
    else:
        _max_forward(xs, y, arg, win.KH, win.KW, win.SH, win.SW, win.PH, win.PW, win.DH,
                     win.DW, size=xs.size)
    return y.reshape(lead + y.shape[1:]), arg.reshape(lead + y.shape[1:])


def max_pool2d_backward(gy, arg, win):
    """gx (N, C, H, W) from gy and uint8 arg (N, C, OH, OW):
    ``pool_reference.max_pool2d_backward``, compiled."""
    lead = gy.shape[:-2]
    gys, args = _planes(gy), _planes(arg)                          # (P, OH, OW)
    gx = memory.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)   # (P, H, W)
    if win.is_2x2_stride2():
        _max_backward_2x2(gys, args, gx, gy.dtype.type(0), size=gx.size)
    else:
        _max_backward(gys, args, gx, win.KH, win.KW, win.SH, win.SW, win.PH, win.PW, win.DH,
                      win.DW, size=gx.size)
    return gx.reshape(lead + (win.H, win.W))


def avg_pool2d_forward(x, win, divisor):
    """y (N, C, OH, OW) for x (N, C, H, W) and divisor (OH, OW):
    ``pool_reference.avg_pool2d_forward``, compiled (multiplies by 1/divisor)."""
    lead = x.shape[:-2]
    xs = _planes(x)
    y = memory.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)
    if win.is_2x2_stride2() and bool(np.all(divisor == 4)):
        _avg_forward_2x2(xs, y, x.dtype.type(0.25), size=xs.size)
        return y.reshape(lead + y.shape[1:])
    rdiv = (1.0 / np.asarray(divisor, dtype=np.float64)).astype(x.dtype)   # (OH, OW)
    _avg_forward(xs, y, rdiv, x.dtype.type(0), win.KH, win.KW, win.SH, win.SW, win.PH, win.PW,
                 size=xs.size)
    return y.reshape(lead + y.shape[1:])


def avg_pool2d_backward(gy, win, divisor):
    """gx (N, C, H, W) from gy (N, C, OH, OW): ``pool_reference.avg_pool2d_backward``,
    compiled."""
    lead = gy.shape[:-2]
    gys = _planes(gy)
    gx = memory.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)
    if win.is_2x2_stride2() and bool(np.all(divisor == 4)):
        _avg_backward_2x2(gys, gx, gy.dtype.type(0.25), size=gx.size)
        return gx.reshape(lead + (win.H, win.W))
    rdiv = (1.0 / np.asarray(divisor, dtype=np.float64)).astype(gy.dtype)
    _avg_backward(gys, gx, rdiv, win.KH, win.KW, win.SH, win.SW, win.PH, win.PW, size=gx.size)
    return gx.reshape(lead + (win.H, win.W))
