"""numba kernels of the conv2d family's ``direct`` implementation (imported only when used).
Read ``conv_direct.py`` first: it defines the two layouts, the tap offsets and the shapes
these kernels receive.

Every kernel sees a convolution as ``K = C*KH*KW`` *taps*: tap ``t = (c, kh, kw)`` is a
weight column ``wm[:, t]`` (``wm = W.reshape(OC, K)``) and an offset ``off[t]`` into the
source array, so that one output row segment is

    acc[o, p] += sum_t wm[o, t] * src[base + off[t] + p]          p = 0 .. L-1

(a sum of shifted copies of the source), and one weight gradient entry is

    gw[o, t] += sum_p g[o, p] * src[base + off[t] + p]             (a dot product).

Two kinds of core do all the work: ``_axpy4`` / ``_axpy2`` / ``_axpy1`` (the first form,
for 4, 2 or 1 output channels, 4 taps at a time; ``_axpy_channels`` runs them over all
channels) and ``_dot4x4`` / ``_dot2x4`` / ``_dot1x4`` (the second, 4, 2 or 1 channels by 4
taps; ``_grad_weight_block`` picks one). The drivers below (``planar_*``, ``batchlast_*``)
only compute offsets and loop over images, parts and rows.

How the loops are written, and why (``benchmarks/RESULTS.md`` has the measurements):

* Register blocking. ``_axpy4`` reads 4 source runs once and updates 4 output runs with
  16 multiply-adds per element: the output runs stay in L1 and cost one load and one
  store per 4 taps instead of per tap (4 channels x 4 taps per pass beat 1 x 4 and 1 x 1
  clearly). ``_dot4x4`` keeps 16 independent sums, which LLVM turns into 16 vector
  accumulators: 8 loads per 16 multiply-adds. The forward then runs near the core's peak
  of float32 multiply-adds.
* float32 stays float32: sums start from ``zero`` (an argument in the arrays' dtype);
  ``gb[0] * 0`` is float64 in numba and turned the whole reduction into float64 (a much
  slower weight gradient). Unsigned flat indices (``_u``) and ``error_model='numpy'``
  keep the loops free of wraparound and division checks, ``fastmath=True`` lets LLVM
  reassociate the sums into vector accumulators.
* Threads: the loops over image chunks (planar) and batch parts (batch-last) are
  ``prange`` loops compiled through ``threads.jit``: serial, and cached on disk, unless
  the threading policy (``kernels/threads.py``) asks for the parallel build. Each
  iteration writes its own outputs (the weight gradients: one partial sum per chunk or
  part, added by the caller), so the results do not depend on the schedule.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .threads import jit, njit_helper

_u = numba.types.uintp  # unsigned index: no negative-index wraparound check in the loops


# ----------------------------------------------------------------------------- cores

@njit_helper
def _axpy4(acc, a, stride, src, base, off, wm, o, t0, t1, L):
    """acc[a + i*stride + p] += sum_t wm[o+i, t] * src[base + off[t] + p], i = 0..3, p < L,
    over the taps t0 <= t < t1."""
    a0 = a
    a1 = a0 + stride
    a2 = a1 + stride
    a3 = a2 + stride
    t = t0
    while t + 4 <= t1:
        sa = base + off[t]
        sb = base + off[t + 1]
        sc = base + off[t + 2]
        sd = base + off[t + 3]
        w0a, w0b, w0c, w0d = wm[o, t], wm[o, t + 1], wm[o, t + 2], wm[o, t + 3]
        w1a, w1b, w1c, w1d = wm[o + 1, t], wm[o + 1, t + 1], wm[o + 1, t + 2], wm[o + 1, t + 3]
        w2a, w2b, w2c, w2d = wm[o + 2, t], wm[o + 2, t + 1], wm[o + 2, t + 2], wm[o + 2, t + 3]
        w3a, w3b, w3c, w3d = wm[o + 3, t], wm[o + 3, t + 1], wm[o + 3, t + 2], wm[o + 3, t + 3]
        for p in range(L):
            xa = src[_u(sa + p)]
            xb = src[_u(sb + p)]
            xc = src[_u(sc + p)]
            xd = src[_u(sd + p)]
            acc[_u(a0 + p)] += w0a * xa + w0b * xb + w0c * xc + w0d * xd
            acc[_u(a1 + p)] += w1a * xa + w1b * xb + w1c * xc + w1d * xd
            acc[_u(a2 + p)] += w2a * xa + w2b * xb + w2c * xc + w2d * xd
            acc[_u(a3 + p)] += w3a * xa + w3b * xb + w3c * xc + w3d * xd
        t += 4
    while t < t1:                                  # the last taps, one at a time
        sa = base + off[t]
        w0a, w1a, w2a, w3a = wm[o, t], wm[o + 1, t], wm[o + 2, t], wm[o + 3, t]
        for p in range(L):
            xa = src[_u(sa + p)]
            acc[_u(a0 + p)] += w0a * xa
            acc[_u(a1 + p)] += w1a * xa
            acc[_u(a2 + p)] += w2a * xa
            acc[_u(a3 + p)] += w3a * xa
        t += 1


@njit_helper
def _axpy2(acc, a, stride, src, base, off, wm, o, t0, t1, L):
    """``_axpy4`` for 2 output channels."""
    a0 = a
    a1 = a0 + stride
    t = t0
    while t + 4 <= t1:
        sa = base + off[t]
        sb = base + off[t + 1]
        sc = base + off[t + 2]
        sd = base + off[t + 3]
        w0a, w0b, w0c, w0d = wm[o, t], wm[o, t + 1], wm[o, t + 2], wm[o, t + 3]
        w1a, w1b, w1c, w1d = wm[o + 1, t], wm[o + 1, t + 1], wm[o + 1, t + 2], wm[o + 1, t + 3]
        for p in range(L):
            xa = src[_u(sa + p)]
            xb = src[_u(sb + p)]
            xc = src[_u(sc + p)]
            xd = src[_u(sd + p)]
            acc[_u(a0 + p)] += w0a * xa + w0b * xb + w0c * xc + w0d * xd
            acc[_u(a1 + p)] += w1a * xa + w1b * xb + w1c * xc + w1d * xd
        t += 4
    while t < t1:
        sa = base + off[t]
        w0a, w1a = wm[o, t], wm[o + 1, t]
        for p in range(L):
            xa = src[_u(sa + p)]
            acc[_u(a0 + p)] += w0a * xa
            acc[_u(a1 + p)] += w1a * xa
        t += 1


@njit_helper
def _axpy1(acc, a, src, base, off, wm, o, t0, t1, L):
    """acc[a + p] += sum_t wm[o, t] * src[base + off[t] + p], p < L, t0 <= t < t1 (one
    output channel)."""
    t = t0
    while t + 4 <= t1:
        sa = base + off[t]
        sb = base + off[t + 1]
        sc = base + off[t + 2]
        sd = base + off[t + 3]
        wa, wb, wc, wd = wm[o, t], wm[o, t + 1], wm[o, t + 2], wm[o, t + 3]
        for p in range(L):
            acc[_u(a + p)] += (wa * src[_u(sa + p)] + wb * src[_u(sb + p)]
                               + wc * src[_u(sc + p)] + wd * src[_u(sd + p)])
        t += 4
    while t < t1:
        sa = base + off[t]
        wa = wm[o, t]
        for p in range(L):
            acc[_u(a + p)] += wa * src[_u(sa + p)]
        t += 1


@njit_helper
def _axpy_channels(acc, a, stride, src, base, off, wm, t0, t1, L):
    """``_axpy4`` over all rows of ``wm`` (the output channels): 4 at a time, then 2, 1."""
    OC = wm.shape[0]
    o = 0
    while o + 4 <= OC:
        _axpy4(acc, a + o * stride, stride, src, base, off, wm, o, t0, t1, L)
        o += 4
    if o + 2 <= OC:
        _axpy2(acc, a + o * stride, stride, src, base, off, wm, o, t0, t1, L)
        o += 2
    if o < OC:
        _axpy1(acc, a + o * stride, src, base, off, wm, o, t0, t1, L)


@njit_helper
def _dot4x4(g, a, stride, src, sa, sb, sc, sd, L, zero):
    """The 16 sums  sum_p g[a + i*stride + p] * src[s_j + p]  (i = 0..3, j = a..d, p < L)."""
    a0 = a
    a1 = a0 + stride
    a2 = a1 + stride
    a3 = a2 + stride
    s0a = s0b = s0c = s0d = zero
    s1a = s1b = s1c = s1d = zero
    s2a = s2b = s2c = s2d = zero
    s3a = s3b = s3c = s3d = zero
    for p in range(L):
        xa = src[_u(sa + p)]
        xb = src[_u(sb + p)]
        xc = src[_u(sc + p)]
        xd = src[_u(sd + p)]
        g0 = g[_u(a0 + p)]
        g1 = g[_u(a1 + p)]
        g2 = g[_u(a2 + p)]
        g3 = g[_u(a3 + p)]
        s0a += g0 * xa
        s0b += g0 * xb
        s0c += g0 * xc
        s0d += g0 * xd
        s1a += g1 * xa
        s1b += g1 * xb
        s1c += g1 * xc
        s1d += g1 * xd
        s2a += g2 * xa
        s2b += g2 * xb
        s2c += g2 * xc
        s2d += g2 * xd
        s3a += g3 * xa
        s3b += g3 * xb
        s3c += g3 * xc
        s3d += g3 * xd
    return (s0a, s0b, s0c, s0d, s1a, s1b, s1c, s1d,
            s2a, s2b, s2c, s2d, s3a, s3b, s3c, s3d)


@njit_helper
def _dot2x4(g, a, stride, src, sa, sb, sc, sd, L, zero):
    """``_dot4x4`` for 2 channels: 8 sums."""
    a1 = a + stride
    s0a = s0b = s0c = s0d = zero
    s1a = s1b = s1c = s1d = zero
    for p in range(L):
        xa = src[_u(sa + p)]
        xb = src[_u(sb + p)]
        xc = src[_u(sc + p)]
        xd = src[_u(sd + p)]
        g0 = g[_u(a + p)]
        g1 = g[_u(a1 + p)]
        s0a += g0 * xa
        s0b += g0 * xb
        s0c += g0 * xc
        s0d += g0 * xd
        s1a += g1 * xa
        s1b += g1 * xb
        s1c += g1 * xc
        s1d += g1 * xd
    return s0a, s0b, s0c, s0d, s1a, s1b, s1c, s1d


@njit_helper
def _dot1x4(g, a, src, sa, sb, sc, sd, L, zero):
    """The 4 sums  sum_p g[a + p] * src[s_j + p]  (j = a..d, p < L)."""
    s0 = s1 = s2 = s3 = zero
    for p in range(L):
        gv = g[_u(a + p)]
        s0 += gv * src[_u(sa + p)]
        s1 += gv * src[_u(sb + p)]
        s2 += gv * src[_u(sc + p)]
        s3 += gv * src[_u(sd + p)]
    return s0, s1, s2, s3


@njit_helper
def _add_dots(gw, o, t, s, channels):
    """gw[o + i, t + j] += s[4*i + j] for i < channels and the taps t + j < K."""
    K = gw.shape[1]
    for i in range(channels):
        for j in range(4):
            if t + j < K:
                gw[o + i, t + j] += s[4 * i + j]


@njit_helper
def _grad_weight_block(g, a, stride, src, base, off, gw, o, t, L, zero):
    """gw[o + i, t + j] += sum_p g[a + i*stride + p] * src[base + off[t + j] + p], p < L, for
    4 taps (fewer at the end of the K taps) and 4 channels, or the 2 or 1 left at the end of
    the OC channels. Returns the number of channels done."""
    OC, K = gw.shape
    sa = base + off[t]
    sb = base + off[min(t + 1, K - 1)]     # taps past K repeat the last one; _add_dots
    sc = base + off[min(t + 2, K - 1)]     # drops their sums
    sd = base + off[min(t + 3, K - 1)]
    if o + 4 <= OC:
        _add_dots(gw, o, t, _dot4x4(g, a, stride, src, sa, sb, sc, sd, L, zero), 4)
        return 4
    if o + 2 <= OC:
        _add_dots(gw, o, t, _dot2x4(g, a, stride, src, sa, sb, sc, sd, L, zero), 2)
        return 2
    _add_dots(gw, o, t, _dot1x4(g, a, src, sa, sb, sc, sd, L, zero), 1)
    return 1


# ----------------------------------------------------------------------------- planar
# x (N, C, H, W) as it comes (already padded); one image at a time. Outputs are computed
# "wide": p = oh*W + ow over an (OH, W) plane, p < P = (OH - 1)*W + OW (= OH*W - KW + 1),
# of which the columns ow >= OW are garbage (dropped when copied out) and cost
# (W - OW) / OW extra work.

@njit_helper
def _planar_forward_images(x, wm, b, y, off, n0, n1):
    N, C, H, W = x.shape
    OC, K = wm.shape
    OH, OW = y.shape[2], y.shape[3]
    P = (OH - 1) * W + OW                   # wide positions up to the last valid output
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    plane = OH * W
    acc = np.empty(OC * plane, dtype=y.dtype)
    for n in range(n0, n1):
        for o in range(OC):
            bo = b[o]
            for p in range(plane):
                acc[_u(o * plane + p)] = bo
        _axpy_channels(acc, 0, plane, xf, n * C * H * W, off, wm, 0, K, P)
        for o in range(OC):
            for oh in range(OH):
                d = ((n * OC + o) * OH + oh) * OW
                s = o * plane + oh * W
                for ow in range(OW):
                    yf[_u(d + ow)] = acc[_u(s + ow)]


@jit
def planar_forward(x, wm, b, y, off, chunks):
    """y (N, OC, OH, OW) = conv(x (N, C, H, W), wm (OC, K)) + b, images split in ``chunks``."""
    N = x.shape[0]
    for i in prange(chunks):
        _planar_forward_images(x, wm, b, y, off, i * N // chunks, (i + 1) * N // chunks)


@njit_helper
def _planar_grad_weight_images(x, gy, gw, gb, off, n0, n1, zero):
    N, C, H, W = x.shape
    OC, K = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    P = (OH - 1) * W + OW
    xf = x.reshape(-1)
    gyf = gy.reshape(-1)
    plane = OH * W
    g = np.zeros(OC * plane, dtype=gy.dtype)     # gy[n] in the wide layout, 0 past OW
    for n in range(n0, n1):
        for o in range(OC):
            a = (n * OC + o) * OH * OW             # the plane gy[n, o]
            s = zero
            for i in range(OH * OW):               # (a separate loop: faster than
                s += gyf[_u(a + i)]                # summing inside the copy below)
            gb[o] += s
            for oh in range(OH):
                src = a + oh * OW
                dst = o * plane + oh * W
                for ow in range(OW):
                    g[_u(dst + ow)] = gyf[_u(src + ow)]
        base = n * C * H * W
        o = 0
        while o < OC:
            for t in range(0, K, 4):
                done = _grad_weight_block(g, o * plane, plane, xf, base, off, gw, o, t, P, zero)
            o += done


@jit
def planar_grad_weight(x, gy, gw, gb, off, zero):
    """gw (chunks, OC, K) and gb (chunks, OC): partial weight and bias gradients, one per
    chunk of images (the caller sums them; ``chunks`` = 1 when serial)."""
    N = x.shape[0]
    chunks = gw.shape[0]
    for i in prange(chunks):
        gw[i] = 0
        gb[i] = 0
        _planar_grad_weight_images(x, gy, gw[i], gb[i], off, i * N // chunks,
                                   (i + 1) * N // chunks, zero)


# ----------------------------------------------------------------------------- batch-last
# ----------------------------------------------------------------------------- batch-last
# One part of the batch, xT (C, H, W, Ns): the images are the innermost axis, so a row
# segment (w .. w+OW-1, all images of the part) is contiguous, M = OW*Ns long, and the
# same for every tap: no wasted columns, long loops. The kernels take the parts as
# (S, C, H, W, Ns) arrays, part p holding images p*Ns .. p*Ns + Ns - 1 (the last part may
# hold fewer: its spare columns are zeros), and give each part to one prange iteration:
# each thread transposes, convolves and transposes back its own images, as the kernels
# before and after it (split by images) do.

@njit_helper
def _to_batch_last_part(x, xT, PH0, PW0):
    """xT[c, PH0 + i, PW0 + j, n] = x[n, c, i, j] for x (n, C, H, W), n <= Ns; xT's border
    (the padding) and spare columns are left as they are. Runs of n contiguous values
    written, the images read strided."""
    N, C, H, W = x.shape
    for c in range(C):
        for i in range(H):
            for j in range(W):
                dst = xT[c, PH0 + i, PW0 + j]
                for n in range(N):
                    dst[n] = x[n, c, i, j]


@njit_helper
def _from_batch_last_part(yT, y):
    """y[n, o, i, j] = yT[o, i, j, n] for y (n, OC, OH, OW), n <= yT's Ns: contiguous
    reads of n values, strided writes."""
    N, OC, OH, OW = y.shape
    for o in range(OC):
        for i in range(OH):
            for j in range(OW):
                src = yT[o, i, j]
                for n in range(N):
                    y[n, o, i, j] = src[n]


@njit_helper
def _forward_part(xT, wm, b, yT, off):
    """yT (OC, OH, OW, Ns) = conv(xT (C, H, W, Ns), wm (OC, K)) + b, one output row at a
    time: row oh is a run of M = OW*Ns outputs per channel reading xT at oh*W*Ns + off[t]."""
    C, H, W, N = xT.shape
    OC, K = wm.shape
    OH, OW = yT.shape[1], yT.shape[2]
    M = OW * N
    xf = xT.reshape(-1)
    yf = yT.reshape(-1)
    for oh in range(OH):
        for o in range(OC):
            bo = b[o]
            a = (o * OH + oh) * M
            for p in range(M):
                yf[_u(a + p)] = bo
        _axpy_channels(yf, oh * M, OH * M, xf, oh * W * N, off, wm, 0, K, M)


@njit_helper
def _grad_input_part(gyT, wm, gxT, off, KH, KW, PH0, PW0):
    """gxT (C, H, W, Ns) from gyT (OC, OH, OW, Ns): the forward's adjoint, as a gather.

        gx[c, i, j] = sum_{kw, kh, o} w[o, c, kh, kw] * gy[o, i + PH0 - kh, j + PW0 - kw]

    For one input row i and one kw, the valid kh form a range and the valid columns j a
    run, so each (i, kw) is one ``_axpy`` call over the taps (kh, o) of that range (wm
    (C, KW*KH*OC) ordered (kw, kh, o), off[t] = (o*OH - kh)*OW*Ns): gy needs no zero
    padding and no product falls outside it."""
    C, H, W, N = gxT.shape
    OC, OH, OW = gyT.shape[0], gyT.shape[1], gyT.shape[2]
    gf = gyT.reshape(-1)
    xf = gxT.reshape(-1)
    plane = H * W * N
    for i in range(H):
        for c in range(C):
            a = (c * H + i) * W * N
            for p in range(W * N):
                xf[_u(a + p)] = 0
        kh_lo = max(0, i + PH0 - OH + 1)        # gy row i + PH0 - kh < OH
        kh_hi = min(KH, i + PH0 + 1)            # gy row i + PH0 - kh >= 0
        if kh_lo >= kh_hi:
            continue
        for kw in range(KW):
            ow0 = max(0, PW0 - kw)              # gy columns whose j = ow + kw - PW0
            ow1 = min(OW, W + PW0 - kw)         # lands inside [0, W)
            if ow0 >= ow1:
                continue
            _axpy_channels(xf, (i * W + ow0 + kw - PW0) * N, plane, gf,
                           ((i + PH0) * OW + ow0) * N, off, wm,
                           (kw * KH + kh_lo) * OC, (kw * KH + kh_hi) * OC, (ow1 - ow0) * N)


@njit_helper
def _grad_weight_part(xT, gyT, gw, gb, off, zero):
    """gw (OC, K) and gb (OC,) from xT (C, H, W, Ns) and gyT (OC, OH, OW, Ns), 4 taps at a
    time."""
    C, H, W, N = xT.shape
    OC, K = gw.shape
    OH, OW = gyT.shape[1], gyT.shape[2]
    M = OW * N
    xf = xT.reshape(-1)
    gyf = gyT.reshape(-1)
    for o in range(OC):
        s = zero
        for i in range(o * OH * M, (o + 1) * OH * M):
            s += gyf[_u(i)]
        gb[o] = s
    for t in range(0, K, 4):
        for o in range(OC):
            for j in range(t, min(t + 4, K)):
                gw[o, j] = 0
        o = 0
        while o < OC:
            for oh in range(OH):
                done = _grad_weight_block(gyf, (o * OH + oh) * M, OH * M, xf, oh * W * N, off,
                                          gw, o, t, M, zero)
            o += done


@jit
def to_batch_last(x, xT, PH0, PW0):
    """x (N, C, H, W) into the parts xT (S, C, Hs, Ws, Ns), at (PH0, PW0) inside each
    part's (Hs, Ws) plane (the border and the spare columns are left as they are)."""
    N = x.shape[0]
    S, Ns = xT.shape[0], xT.shape[-1]
    for p in prange(S):
        _to_batch_last_part(x[p * Ns:min(N, (p + 1) * Ns)], xT[p], PH0, PW0)


@jit
def batchlast_forward(x, wm, b, xT, yT, y, off, PH0, PW0):
    """y (N, OC, OH, OW) = conv(x (N, C, H, W), wm (OC, K)) + b through the parts: each
    part's images into xT[p] (S, C, Hs, Ws, Ns, padding and spare columns already zero),
    convolved into yT[p] (S, OC, OH, OW, Ns), and back into y. xT is what the weight
    gradient reads later."""
    N = x.shape[0]
    S, Ns = xT.shape[0], xT.shape[-1]
    for p in prange(S):
        n0, n1 = p * Ns, min(N, (p + 1) * Ns)
        _to_batch_last_part(x[n0:n1], xT[p], PH0, PW0)
        _forward_part(xT[p], wm, b, yT[p], off)
        _from_batch_last_part(yT[p], y[n0:n1])


@jit
def batchlast_grad_input(gyT, wm, gxT, gx, off, KH, KW, PH0, PW0):
    """gx (N, C, H, W) from the parts gyT (S, OC, OH, OW, Ns): each part's input gradient
    into gxT[p] (S, C, H, W, Ns) and back into its images of gx."""
    N = gx.shape[0]
    S, Ns = gxT.shape[0], gxT.shape[-1]
    for p in prange(S):
        _grad_input_part(gyT[p], wm, gxT[p], off, KH, KW, PH0, PW0)
        _from_batch_last_part(gxT[p], gx[p * Ns:min(N, (p + 1) * Ns)])


@jit
def batchlast_grad_weight(xT, gyT, gw, gb, off, zero):
    """gw (S, OC, K) and gb (S, OC): each part's weight and bias gradient (the caller sums
    them) from the parts xT (S, C, Hs, Ws, Ns) and gyT (S, OC, OH, OW, Ns)."""
    for p in prange(xT.shape[0]):
        _grad_weight_part(xT[p], gyT[p], gw[p], gb[p], off, zero)
