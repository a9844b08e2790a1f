"""numba kernels behind ``conv_direct`` (imported only when used). Read ``conv_direct.py`` first:
it defines the two layouts, the tap offsets and the shapes these kernels receive.

Every kernel sees a convolution as ``K = C*KH*KW`` *taps*: tap ``t = (c, kh, kw)`` is a
weight column ``wm[:, t]`` (``wm = W.reshape(OC, K)``) and an offset ``off[t]`` into the
source array, so that one output row segment is

    acc[o, p] += sum_t wm[o, t] * src[base + off[t] + p]          p = 0 .. L-1

(a sum of shifted copies of the source), and one weight gradient entry is

    gw[o, t] += sum_p g[o, p] * src[base + off[t] + p]             (a dot product).

Two cores do all the work: ``_axpy4`` / ``_axpy1`` (the first form, for 4 or 1 output
channels) and ``_dot4x4`` / ``_dot1x4`` (the second, 4 or 1 output channels by 4 taps).

Speed notes (2-core AMD EPYC Zen 4, one thread, float32, LeNet's shapes, in ms):

* Register blocking. ``_axpy4`` reads 4 source rows once and updates 4 output rows with
  16 multiply-adds per element: the output rows stay in L1 and each costs one load and
  one store per 4 taps instead of per tap. ``_dot4x4`` keeps 16 independent sums (LLVM
  turns each into a vector accumulator): 8 loads per 16 multiply-adds. One tap and one
  channel per pass ran 2-3x slower.
* float32 stays float32: sums start from ``zero`` (an argument in the arrays' dtype);
  ``gb[0] * 0`` is float64 in numba and turned the whole reduction into float64 (2.5x
  slower). Unsigned flat indices (``_u``) and ``error_model='numpy'`` keep the loops free
  of wraparound and division checks, ``fastmath=True`` lets LLVM vectorise the sums.
* Threads: the loops over images (planar) and over output rows / weight blocks
  (batch-last) are ``prange`` loops compiled with ``parallel=NUMBA_PARALLEL`` (see
  ``minidl/kernels/__init__.py``): serial, and cached, by default.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import NUMBA_PARALLEL as PARALLEL

_u = numba.types.uintp  # unsigned index: no negative-index wraparound check in the loops

_JIT = dict(parallel=PARALLEL, cache=not PARALLEL, fastmath=True, error_model="numpy",
            nogil=True)
_CORE = dict(cache=not PARALLEL, fastmath=True, error_model="numpy", nogil=True)


# ----------------------------------------------------------------------------- cores

@numba.njit(**_CORE)
def _axpy4(acc, a, stride, src, base, off, wm, o, K, L):
    """acc[a + i*stride + p] += sum_t wm[o+i, t] * src[base + off[t] + p], i = 0..3, p < L."""
    a0 = a
    a1 = a0 + stride
    a2 = a1 + stride
    a3 = a2 + stride
    t = 0
    while t + 4 <= K:
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
    while t < K:                                   # the last K % 4 taps, one at a time
        sa = base + off[t]
        w0a, w1a, w2a, w3a = wm[o, t], wm[o + 1, t], wm[o + 2, t], wm[o + 3, t]
        for p in range(L):
            xa = src[_u(sa + p)]
            acc[_u(a0 + p)] += w0a * xa
            acc[_u(a1 + p)] += w1a * xa
            acc[_u(a2 + p)] += w2a * xa
            acc[_u(a3 + p)] += w3a * xa
        t += 1


@numba.njit(**_CORE)
def _axpy1(acc, a, src, base, off, wm, o, K, L):
    """acc[a + p] += sum_t wm[o, t] * src[base + off[t] + p], p < L (one output channel)."""
    t = 0
    while t + 4 <= K:
        sa = base + off[t]
        sb = base + off[t + 1]
        sc = base + off[t + 2]
        sd = base + off[t + 3]
        wa, wb, wc, wd = wm[o, t], wm[o, t + 1], wm[o, t + 2], wm[o, t + 3]
        for p in range(L):
            acc[_u(a + p)] += (wa * src[_u(sa + p)] + wb * src[_u(sb + p)]
                               + wc * src[_u(sc + p)] + wd * src[_u(sd + p)])
        t += 4
    while t < K:
        sa = base + off[t]
        wa = wm[o, t]
        for p in range(L):
            acc[_u(a + p)] += wa * src[_u(sa + p)]
        t += 1


@numba.njit(**_CORE)
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


@numba.njit(**_CORE)
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


@numba.njit(**_CORE)
def _add_dots(gw, o, t, K, OC, s):
    """gw[o + i, t + j] += s[4*i + j] for the channels o + i < OC and taps t + j < K.

    ``s`` holds 4 (channel) x 4 (tap) sums; ``_dot1x4`` results come padded to 16."""
    for i in range(4):
        if o + i < OC:
            for j in range(4):
                if t + j < K:
                    gw[o + i, t + j] += s[4 * i + j]


# ----------------------------------------------------------------------------- planar
# x (N, C, H, W) as it comes; one image at a time. Output rows are computed "wide": for
# p < P = OH*W - KW + 1 the flat position p = oh*W + ow of a (OH, W) plane, of which the
# columns ow >= OW are garbage (dropped when copied out) and cost (W - OW) / OW extra work.

@numba.njit(**_CORE)
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
        base = n * C * H * W
        o = 0
        while o + 4 <= OC:
            _axpy4(acc, o * plane, plane, xf, base, off, wm, o, K, P)
            o += 4
        while o < OC:
            _axpy1(acc, o * plane, xf, base, off, wm, o, K, P)
            o += 1
        for o in range(OC):
            for oh in range(OH):
                d = ((n * OC + o) * OH + oh) * OW
                s = o * plane + oh * W
                for ow in range(OW):
                    yf[_u(d + ow)] = acc[_u(s + ow)]


@numba.njit(**_JIT)
def planar_forward(x, wm, b, y, off, chunks):
    """y (N, OC, OH, OW) = conv(x (N, C, H, W), wm (OC, K)) + b, images split in ``chunks``."""
    N = x.shape[0]
    for i in prange(chunks):
        _planar_forward_images(x, wm, b, y, off, i * N // chunks, (i + 1) * N // chunks)


@numba.njit(**_CORE)
def _planar_grad_weight_images(x, gy, gw, gb, off, n0, n1, zero):
    N, C, H, W = x.shape
    OC, K = gw.shape
    OH, OW = gy.shape[2], gy.shape[3]
    P = (OH - 1) * W + OW
    xf = x.reshape(-1)
    gyf = gy.reshape(-1)
    plane = OH * W
    g = np.zeros(OC * plane, dtype=gy.dtype)     # gy[n] in the wide layout, 0 past OW
    pad = np.zeros(16, dtype=gy.dtype)
    for n in range(n0, n1):
        for o in range(OC):
            s = zero
            for oh in range(OH):
                src = ((n * OC + o) * OH + oh) * OW
                dst = o * plane + oh * W
                for ow in range(OW):
                    v = gyf[_u(src + ow)]
                    g[_u(dst + ow)] = v
                    s += v
            gb[o] += s
        base = n * C * H * W
        o = 0
        while o < OC:
            for t in range(0, K, 4):
                sa = base + off[t]
                sb = base + off[min(t + 1, K - 1)]    # taps past K repeat the last one;
                sc = base + off[min(t + 2, K - 1)]    # _add_dots drops their sums
                sd = base + off[min(t + 3, K - 1)]
                if o + 4 <= OC:
                    s = _dot4x4(g, o * plane, plane, xf, sa, sb, sc, sd, P, zero)
                    _add_dots(gw, o, t, K, OC, s)
                else:
                    s0, s1, s2, s3 = _dot1x4(g, o * plane, xf, sa, sb, sc, sd, P, zero)
                    pad[0] = s0
                    pad[1] = s1
                    pad[2] = s2
                    pad[3] = s3
                    _add_dots(gw, o, t, K, o + 1, pad)
            o += 4 if o + 4 <= OC else 1


@numba.njit(**_JIT)
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
# xT (C, H, W, N): the batch is the innermost axis, so a row segment (w .. w+OW-1, all n)
# is contiguous, M = OW*N long, and the same for every tap: no wasted columns, long loops.

@numba.njit(**_JIT)
def batchlast_forward(xT, wm, b, yT, off):
    """yT (OC, OH, OW, N) = conv(xT (C, H, W, N), wm (OC, K)) + b."""
    C, H, W, N = xT.shape
    OC, K = wm.shape
    OH, OW = yT.shape[1], yT.shape[2]
    M = OW * N
    xf = xT.reshape(-1)
    yf = yT.reshape(-1)
    for oh in prange(OH):
        base = oh * W * N
        for o in range(OC):
            bo = b[o]
            a = (o * OH + oh) * M
            for p in range(M):
                yf[_u(a + p)] = bo
        o = 0
        while o + 4 <= OC:
            _axpy4(yf, (o * OH + oh) * M, OH * M, xf, base, off, wm, o, K, M)
            o += 4
        while o < OC:
            _axpy1(yf, (o * OH + oh) * M, xf, base, off, wm, o, K, M)
            o += 1


@numba.njit(**_JIT)
def batchlast_grad_weight(xT, gyT, gw, gb, off, zero):
    """gw (OC, K) and gb (OC,) from xT (C, H, W, N) and gyT (OC, OH, OW, N)."""
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
        for t in range(K):
            gw[o, t] = 0
    OB = (OC + 3) // 4                 # blocks of 4 channels (the last may be short)
    TB = (K + 3) // 4                  # blocks of 4 taps
    for blk in prange(OB * TB):
        o = (blk // TB) * 4
        t = (blk % TB) * 4
        sa = off[t]
        sb = off[min(t + 1, K - 1)]
        sc = off[min(t + 2, K - 1)]
        sd = off[min(t + 3, K - 1)]
        if o + 4 <= OC:
            for oh in range(OH):
                s = _dot4x4(gyf, (o * OH + oh) * M, OH * M, xf, oh * W * N + sa,
                            oh * W * N + sb, oh * W * N + sc, oh * W * N + sd, M, zero)
                _add_dots(gw, o, t, K, OC, s)
        else:
            for oo in range(o, OC):
                for oh in range(OH):
                    s0, s1, s2, s3 = _dot1x4(gyf, (oo * OH + oh) * M, xf, oh * W * N + sa,
                                             oh * W * N + sb, oh * W * N + sc,
                                             oh * W * N + sd, M, zero)
                    gw[oo, t] += s0
                    if t + 1 < K:
                        gw[oo, t + 1] += s1
                    if t + 2 < K:
                        gw[oo, t + 2] += s2
                    if t + 3 < K:
                        gw[oo, t + 3] += s3
