"""numba kernels of the pooling family (``kernels/pool.py`` holds the design, the shape
letters and the registration; ``pool_reference.py`` the definitions these are tested
against): max and average pooling, forward and backward, for float32/float64 NumPy arrays.

    x, gx   (N, C, H, W), seen as C-contiguous (P, H, W) planes, P = N*C
    y, gy   (N, C, OH, OW), as (P, OH, OW)
    arg     (N, C, OH, OW) uint8 tap numbers k = kh*KW + kw (so K <= 256 here)

* Each ``prange`` iteration owns whole planes: the backward scatter needs no atomics and
  is deterministic, and no padded copy is made (the loops clip each window to the input).
* A dedicated kernel for the 2x2 stride-2 window without padding (LeNet, VGG, most CNNs).
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

from . import threads
from .im2col_numba import _ranges
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


@njit_helper(fastmath=False)
def _max_forward_plane(x, y, arg, KW, SH, SW, PH, PW, DH, DW, rows, cols, outs, neg_inf,
                       best, karg):
    """One (H, W) plane -> (OH, OW) maxima and their taps k = i*KW + j.

    Row by row of y, tap by tap: for tap (i, j) one pass along the output row over the
    outputs whose input column is inside (``outs[j]``: ``im2col_numba._ranges``), each
    keeping the larger value with a select and unsigned indices (no branch, no wraparound
    check; a window at a time, with signed 3-D indexing, (32, 192, 8, 8) 3x3/1 took 12 ms,
    now 5.7, PyTorch 5.3 on two threads). The taps come in the window's row-major
    order and only a strictly larger value (or a NaN) replaces the best, so the tap kept
    is the first maximum, or the last NaN, as a window-at-a-time scan keeps it
    (PyTorch's rule)."""
    OH, OW = y.shape
    for oh in range(OH):
        h0 = oh * SH - PH
        i0, i1 = rows[oh, 0], rows[oh, 1]
        for ow in range(OW):
            best[ow] = neg_inf
            karg[ow] = i0 * KW + cols[ow, 0]       # an all -inf window keeps its first tap
        for i in range(i0, i1):
            xr = x[h0 + i * DH]
            for j in range(KW):
                lo, hi = outs[j, 0], outs[j, 1]
                c0 = j * DW - PW
                kk = i * KW + j
                for ow in range(lo, hi):
                    v = xr[_u(ow * SW + c0)]
                    b = best[_u(ow)]
                    take = (v > b) | (v != v)
                    best[_u(ow)] = v if take else b
                    karg[_u(ow)] = kk if take else karg[_u(ow)]
        for ow in range(OW):
            y[oh, ow] = best[ow]
            arg[oh, ow] = karg[ow]


@njit_helper(fastmath=False)
def _max_forward_s1_plane(x, y, arg, KW, PH, PW, DH, DW, rows, cols, neg_inf, xpad, best,
                          karg):
    """Stride 1: one (H, W) plane -> (OH, OW) maxima and taps, through a canvas.

    The plane is copied into ``xpad``, the (Hp, Wp) canvas its windows span (-inf where
    the canvas lies outside the plane), row-major. On it every output (oh, ow) at
    q = oh*Wp + ow reads tap (i, j) at q + i*DH*Wp + j*DW: one loop over all the plane's
    outputs per tap (the columns ow >= OW in between are computed and dropped), instead
    of one short loop per output row and tap; on 8x8 planes the loop set-ups had been
    most of the time. -inf taps never replace the best (strict >), so padding changes
    nothing: the tap kept is the first maximum inside the plane, or the last NaN."""
    H, W = x.shape
    OH, OW = y.shape
    Wp = OW + (KW - 1) * DW
    Hp = xpad.shape[0] // Wp
    for cr in range(Hp):
        r = cr - PH
        d = cr * Wp
        for cc in range(Wp):
            xpad[_u(d + cc)] = neg_inf
        if 0 <= r < H:
            c0 = max(0, -PW)
            c1 = min(W, Wp - PW)
            for c in range(c0, c1):
                xpad[_u(d + c + PW)] = x[r, c]
    n = (OH - 1) * Wp + OW
    for oh in range(OH):
        k0 = rows[oh, 0] * KW
        for ow in range(OW):
            q = oh * Wp + ow
            best[_u(q)] = neg_inf
            karg[_u(q)] = k0 + cols[ow, 0]      # an all -inf window keeps its first tap
    for i in range((Hp - OH) // DH + 1):        # KH tap rows
        for j in range(KW):
            off = i * DH * Wp + j * DW
            kk = i * KW + j
            for q in range(n):
                v = xpad[_u(q + off)]
                b = best[_u(q)]
                take = (v > b) | (v != v)
                best[_u(q)] = v if take else b
                karg[_u(q)] = kk if take else karg[_u(q)]
    for oh in range(OH):
        for ow in range(OW):
            q = oh * Wp + ow
            y[oh, ow] = best[_u(q)]
            arg[oh, ow] = karg[_u(q)]


_PLANES = 16    # planes per prange iteration: the row buffers are made once per chunk


@jit(fastmath=False, one_build=True)
def _max_forward(x, y, arg, KH, KW, SH, SW, PH, PW, DH, DW):
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    rows = _tap_ranges(OH, KH, SH, PH, DH, H)
    cols = _tap_ranges(OW, KW, SW, PW, DW, W)
    outs = _ranges(OW, SW, DW, PW, KW, W)
    neg_inf = x.dtype.type(-np.inf)
    if SH == 1 and SW == 1:
        Hp, Wp = OH + (KH - 1) * DH, OW + (KW - 1) * DW
        for chunk in prange((P + _PLANES - 1) // _PLANES):
            xpad = np.empty(Hp * Wp, dtype=x.dtype)
            best = np.empty(OH * Wp, dtype=x.dtype)
            karg = np.empty(OH * Wp, dtype=np.int64)
            for p in range(chunk * _PLANES, min(P, (chunk + 1) * _PLANES)):
                _max_forward_s1_plane(x[p], y[p], arg[p], KW, PH, PW, DH, DW, rows, cols,
                                      neg_inf, xpad, best, karg)
        return
    for chunk in prange((P + _PLANES - 1) // _PLANES):
        best = np.empty(OW, dtype=x.dtype)
        karg = np.empty(OW, dtype=np.int64)
        for p in range(chunk * _PLANES, min(P, (chunk + 1) * _PLANES)):
            _max_forward_plane(x[p], y[p], arg[p], KW, SH, SW, PH, PW, DH, DW, rows, cols,
                               outs, neg_inf, best, karg)


@jit(fastmath=False)
def _max_backward(gy, arg, gx, KW, SH, SW, PH, PW, DH, DW):
    # flat views and unsigned indices: the 3-D signed indexing's wraparound checks cost
    # more than the scatter itself (as in the forward)
    P, OH, OW = gy.shape
    H, W = gx.shape[1], gx.shape[2]
    gf = gx.reshape(-1)
    gyf = gy.reshape(-1)
    af = arg.reshape(-1)
    for p in prange(P):
        base = p * H * W
        for i in range(base, base + H * W):
            gf[_u(i)] = 0
        q = p * OH * OW
        for oh in range(OH):
            for ow in range(OW):
                k = af[_u(q)]
                i = k // KW
                j = k - i * KW
                gf[_u(base + (oh * SH - PH + i * DH) * W + ow * SW - PW + j * DW)] += gyf[_u(q)]
                q += 1


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


# From this many input elements a call is split into ranges of planes, one per thread
# (``threads.run_on_threads``): ResNet's 3x3/2 pooling of (32, 64, 112, 112) ran on one
# core while PyTorch used two; LeNet's pools (under a million elements) stay whole.
SPLIT_MIN_ELEMENTS = 1 << 21


def _over_planes(kernel, arrays, args, size):
    """``kernel(*arrays, *args)`` where every array is (P, ., .) with planes independent:
    whole, or large calls as ranges of planes on the threads."""
    P = arrays[0].shape[0]
    n = min(P, threads.get_num_threads()) if size >= SPLIT_MIN_ELEMENTS else 1
    if n == 1:
        kernel(*arrays, *args, size=size)
        return
    bounds = [(t * P // n, (t + 1) * P // n) for t in range(n)]
    threads.run_on_threads(n, lambda t: kernel(
        *(a[bounds[t][0]:bounds[t][1]] for a in arrays), *args, size=size // n))


def max_pool2d_forward(x, win):
    """(y, arg) for x (N, C, H, W): ``pool_reference.max_pool2d_forward``, compiled
    (float32/float64, K <= 256: arg is uint8)."""
    lead = x.shape[:-2]
    xs = _planes(x)                                              # (P, H, W)
    y = np.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)  # (P, OH, OW)
    arg = np.empty(y.shape, dtype=np.uint8)
    if win.is_2x2_stride2():
        _over_planes(_max_forward_2x2, (xs, y, arg), (), xs.size)
    else:
        _over_planes(_max_forward, (xs, y, arg), (win.KH, win.KW, win.SH, win.SW, win.PH,
                                                  win.PW, win.DH, win.DW), xs.size)
    return y.reshape(lead + y.shape[1:]), arg.reshape(lead + y.shape[1:])


def max_pool2d_backward(gy, arg, win):
    """gx (N, C, H, W) from gy and uint8 arg (N, C, OH, OW):
    ``pool_reference.max_pool2d_backward``, compiled."""
    lead = gy.shape[:-2]
    gys, args = _planes(gy), _planes(arg)                          # (P, OH, OW)
    gx = np.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)   # (P, H, W)
    if win.is_2x2_stride2():
        _over_planes(_max_backward_2x2, (gys, args, gx), (gy.dtype.type(0),), gx.size)
    else:
        _over_planes(_max_backward, (gys, args, gx), (win.KW, win.SH, win.SW, win.PH, win.PW,
                                                      win.DH, win.DW), gx.size)
    return gx.reshape(lead + (win.H, win.W))


def avg_pool2d_forward(x, win, divisor):
    """y (N, C, OH, OW) for x (N, C, H, W) and divisor (OH, OW):
    ``pool_reference.avg_pool2d_forward``, compiled (multiplies by 1/divisor)."""
    lead = x.shape[:-2]
    xs = _planes(x)
    y = np.empty((xs.shape[0], win.OH, win.OW), dtype=x.dtype)
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
    gx = np.empty((gys.shape[0], win.H, win.W), dtype=gy.dtype)
    if win.is_2x2_stride2() and bool(np.all(divisor == 4)):
        _avg_backward_2x2(gys, gx, gy.dtype.type(0.25), size=gx.size)
        return gx.reshape(lead + (win.H, win.W))
    rdiv = (1.0 / np.asarray(divisor, dtype=np.float64)).astype(gy.dtype)
    _avg_backward(gys, gx, rdiv, win.KH, win.KW, win.SH, win.SW, win.PH, win.PW, size=gx.size)
    return gx.reshape(lead + (win.H, win.W))
