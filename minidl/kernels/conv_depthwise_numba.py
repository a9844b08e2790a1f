"""numba kernels of the conv2d family's ``depthwise`` implementation (imported only when
used). Read ``conv_depthwise.py`` first: it defines the convolution and how the work is
split over threads.

Three kernels, each over a range of (image, channel) planes q = n * C + c (or of
channels for the weight gradient), a prange loop whose iterations each write only their
own planes: no races, results independent of the thread count::

    forward      x  (N, C, H, W), w (C, 1, KH, KW)  -> y  (N, C, OH, OW)   planes q0 .. q1
    grad_input   gy (N, C, OH, OW), w               -> gx (N, C, H, W)     planes q0 .. q1
    grad_weight  x, gy                              -> gw (C, 1, KH, KW)   channels c0 .. c1

and beside them ``forward_3x3`` (3x3 forwards from a padded copy of each plane) and the
channels-inner kernels for small maps (``*_across``, at the end).

How the loops are written, and why (as ``im2col_numba.py``): no padded copy of x; for
each kernel offset (kh, kw) the outputs whose window reads inside x form one rectangle
(``_valid_range`` per axis), and the loops run over that rectangle only, so the inner
loop over ``ow`` is branch-free (contiguous for stride 1: LLVM vectorises it). Flat
views and unsigned indices (``_u``) keep wraparound checks out of the loops. Each output
plane is at most a few KiB (MobileNet: 32x32 and smaller), so the KH*KW passes over it,
one per kernel offset, stay in L1.

``forward`` and ``grad_input`` are compiled as ``threads.jit(one_build=True)`` (the
parallel build, run on one numba thread): per call at MobileNet's shapes (batch 32) on
one thread, 0.90 -> 0.73 ms at 144 channels of 8x8, 0.70 -> 0.42 at 384 of 2x2, against
the serial build (numba outlines the prange body, which LLVM optimises better; as the
pooling kernels found). ``grad_weight`` keeps the serial build (slower at 8x8 otherwise).

The input gradient is the forward's adjoint written per plane: gx's plane is zeroed,
then each offset adds w * gy into the input positions it read. Inside one plane this is
serial, so it is exact and deterministic (no atomics).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .im2col_numba import _from_rows, _ranges, _to_rows, _valid_range
from .threads import jit, njit_helper

__all__ = ["forward", "grad_input", "grad_weight", "forward_3x3", "forward_across",
           "grad_input_across", "grad_weight_across"]

_u = numba.types.uintp  # unsigned index: no negative-index wraparound check in the loops


@jit(one_build=True)
def forward(x, w, bias, y, q0, q1, SH, SW, PH0, PW0, DH, DW):
    """y[n, c, oh, ow] = sum over (kh, kw) of w[c, 0, kh, kw] *
    x[n, c, oh*SH + kh*DH - PH0, ow*SW + kw*DW - PW0] (0 outside x) + bias[c]; only
    planes q = n*C + c in [q0, q1) are written.

    x: (N, C, H, W), w: (C, 1, KH, KW), bias: (C,) (zeros for a conv without bias),
    y: (N, C, OH, OW); all C-contiguous, one dtype."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    yf = y.reshape(-1)
    rh = _ranges(OH, SH, DH, PH0, KH, H)
    rw = _ranges(OW, SW, DW, PW0, KW, W)
    for q in prange(q0, q1):
        c = q % C
        src0 = q * H * W
        dst0 = q * OH * OW
        b0 = bias[c]
        for i in range(dst0, dst0 + OH * OW):
            yf[_u(i)] = b0
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = rh[kh, 0], rh[kh, 1]
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = rw[kw, 0], rw[kw, 1]
                wv = wf[_u((c * KH + kh) * KW + kw)]
                for oh in range(oh_lo, oh_hi):
                    d = dst0 + oh * OW
                    s = src0 + (oh * SH + ih0) * W + iw0   # x[n, c, ih, iw0]; iw0 may be < 0
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            yf[_u(d + ow)] += wv * xf[_u(s + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            yf[_u(d + ow)] += wv * xf[_u(s + ow * SW)]


@jit(one_build=True)
def grad_input(gy, w, gx, q0, q1, SH, SW, PH0, PW0, DH, DW):
    """gx[n, c, ih, iw] = sum of w[c, 0, kh, kw] * gy[n, c, oh, ow] over the (oh, ow, kh,
    kw) whose window position reads (ih, iw); only planes q in [q0, q1) are written.

    gy: (N, C, OH, OW), w: (C, 1, KH, KW), gx: (N, C, H, W); C-contiguous, one dtype."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = gy.shape[2], gy.shape[3]
    gf = gy.reshape(-1)
    wf = w.reshape(-1)
    xf = gx.reshape(-1)
    rh = _ranges(OH, SH, DH, PH0, KH, H)
    rw = _ranges(OW, SW, DW, PW0, KW, W)
    for q in prange(q0, q1):
        c = q % C
        dst0 = q * H * W
        src0 = q * OH * OW
        for i in range(dst0, dst0 + H * W):
            xf[_u(i)] = 0
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = rh[kh, 0], rh[kh, 1]
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = rw[kw, 0], rw[kw, 1]
                wv = wf[_u((c * KH + kh) * KW + kw)]
                for oh in range(oh_lo, oh_hi):
                    s = src0 + oh * OW
                    d = dst0 + (oh * SH + ih0) * W + iw0
                    if SW == 1:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow)] += wv * gf[_u(s + ow)]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            xf[_u(d + ow * SW)] += wv * gf[_u(s + ow)]


@jit
def grad_weight(x, gy, gw, zero, c0, c1, SH, SW, PH0, PW0, DH, DW):
    """gw[c, 0, kh, kw] = sum over (n, oh, ow) of gy[n, c, oh, ow] *
    x[n, c, oh*SH + kh*DH - PH0, ow*SW + kw*DW - PW0]; only channels c in [c0, c1) are
    written. Sums in the arrays' dtype, as the reference's product does (``zero``: a 0 of
    that dtype; gw is not read).

    Rows of at least 8 outputs: the products are summed per output column into ``acc``
    (OW long) over all rows and images, and ``acc`` summed once at the end: the inner
    loop is then an elementwise multiply-add (vectorised) instead of a reduction per
    short row (2.3 -> 1.5 ms at (32, 144, 8, 8), 1.7 -> 0.75 at (32, 32, 16, 16)). Shorter
    rows (MobileNet's 4x4 .. 1x1 layers) sum into one scalar, which stays in a register.

    x: (N, C, H, W), gy: (N, C, OH, OW), gw: (C, 1, KH, KW); C-contiguous, one dtype."""
    N, C, H, W = x.shape
    KH, KW = gw.shape[2], gw.shape[3]
    OH, OW = gy.shape[2], gy.shape[3]
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    wf = gw.reshape(-1)
    for c in prange(c0, c1):
        acc = np.empty(OW, dtype=x.dtype)
        for kh in range(KH):
            ih0 = kh * DH - PH0
            oh_lo, oh_hi = _valid_range(OH, SH, ih0, H)
            for kw in range(KW):
                iw0 = kw * DW - PW0
                ow_lo, ow_hi = _valid_range(OW, SW, iw0, W)
                if OW < 8:                      # short rows: a scalar sum (kept in a register)
                    total = zero
                    for n in range(N):
                        q = n * C + c
                        for oh in range(oh_lo, oh_hi):
                            s = q * OH * OW + oh * OW
                            d = q * H * W + (oh * SH + ih0) * W + iw0
                            for ow in range(ow_lo, ow_hi):
                                total += gf[_u(s + ow)] * xf[_u(d + ow * SW)]
                    wf[_u((c * KH + kh) * KW + kw)] = total
                    continue
                for ow in range(OW):
                    acc[_u(ow)] = zero
                for n in range(N):
                    q = n * C + c
                    for oh in range(oh_lo, oh_hi):
                        s = q * OH * OW + oh * OW
                        d = q * H * W + (oh * SH + ih0) * W + iw0
                        if SW == 1:
                            for ow in range(ow_lo, ow_hi):
                                acc[_u(ow)] += gf[_u(s + ow)] * xf[_u(d + ow)]
                        else:
                            for ow in range(ow_lo, ow_hi):
                                acc[_u(ow)] += gf[_u(s + ow)] * xf[_u(d + ow * SW)]
                total = zero
                for ow in range(ow_lo, ow_hi):
                    total += acc[_u(ow)]
                wf[_u((c * KH + kh) * KW + kw)] = total


# ----------------------------------------------------------------------------- 3x3, whole rows

@jit
def forward_3x3(x, w, bias, y, parts, SH, SW, PH0, PW0, DH, DW, HP, WQ):
    """``forward`` for 3x3 kernels at column stride 1 or 2, over ``parts`` contiguous
    ranges of planes (one per prange iteration), each output computed whole: y[q, oh, ow]
    = bias[c] + the nine products, summed in one expression (a register holds the sum,
    where ``forward`` adds each tap's products into y: nine loads and stores of every
    output).

    Each plane is first copied into a zero-bordered scratch plane ``xp``: HP rows of the
    padded plane (as far as outputs read it), each row split into SW phases of WQ values
    (padded column j at phase j % SW, position j // SW). Output ow's tap kw reads padded
    column ow*SW + kw*DW, i.e. phase (kw*DW) % SW at position ow + (kw*DW) // SW: every
    tap of a row of outputs is a contiguous slice of xp, whatever the stride, and needs
    no bounds check. The border is zeroed once per range (every plane overwrites the same
    interior).

    x: (N, C, H, W), w: (C, 1, 3, 3), bias: (C,), y: (N, C, OH, OW); C-contiguous, one
    dtype. HP = (OH-1)*SH + 2*DH + 1, WQ = ((OW-1)*SW + 2*DW) // SW + 1."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    P = N * C
    RW = SW * WQ                          # one scratch row: SW phases of WQ values
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    o0 = 0                                # where each tap column's slice starts in a row
    o1 = (DW % SW) * WQ + DW // SW
    o2 = ((2 * DW) % SW) * WQ + (2 * DW) // SW
    ih_hi = min(H, HP - PH0)              # the input rows and columns outputs read
    iw_hi = min(W, RW - PW0)
    a, h = PW0 % SW, PW0 // SW            # input column 0: phase a, position h
    for t in prange(parts):
        xp = np.zeros(HP * RW, dtype=x.dtype)
        for q in range(t * P // parts, (t + 1) * P // parts):
            c = q % C
            src0 = q * H * W
            for ih in range(ih_hi):
                r = (ih + PH0) * RW
                s = src0 + ih * W
                if SW == 1:
                    for iw in range(iw_hi):
                        xp[_u(r + PW0 + iw)] = xf[_u(s + iw)]
                else:                     # SW == 2: input columns 2m, 2m + 1 in one step
                    e = r + a * WQ + h
                    o = r + (1 - a) * WQ + h + a
                    for m in range(iw_hi // 2):
                        xp[_u(e + m)] = xf[_u(s + 2 * m)]
                        xp[_u(o + m)] = xf[_u(s + 2 * m + 1)]
                    if iw_hi % 2:
                        xp[_u(e + iw_hi // 2)] = xf[_u(s + iw_hi - 1)]
            k = c * 9
            w00, w01, w02 = wf[_u(k)], wf[_u(k + 1)], wf[_u(k + 2)]
            w10, w11, w12 = wf[_u(k + 3)], wf[_u(k + 4)], wf[_u(k + 5)]
            w20, w21, w22 = wf[_u(k + 6)], wf[_u(k + 7)], wf[_u(k + 8)]
            b0 = bias[c]
            dst0 = q * OH * OW
            for oh in range(OH):
                r0 = oh * SH * RW
                r1 = r0 + DH * RW
                r2 = r1 + DH * RW
                d = dst0 + oh * OW
                for j in range(OW):
                    yf[_u(d + j)] = (b0 + w00 * xp[_u(r0 + o0 + j)] + w01 * xp[_u(r0 + o1 + j)]
                                     + w02 * xp[_u(r0 + o2 + j)] + w10 * xp[_u(r1 + o0 + j)]
                                     + w11 * xp[_u(r1 + o1 + j)] + w12 * xp[_u(r1 + o2 + j)]
                                     + w20 * xp[_u(r2 + o0 + j)] + w21 * xp[_u(r2 + o1 + j)]
                                     + w22 * xp[_u(r2 + o2 + j)])


# ----------------------------------------------------------------------------- small maps

@njit_helper
def _forward_across(x, wt, bias, y, c0, c1, start, tap_k, tap_e):
    """``forward`` for channels c0 .. c1 of every image, with the channels as the inner
    loop: y[n, c, o] = bias[c] + sum over output o's taps (``geometry.valid_taps``: tap
    k reads input position e) of wt[k, c] * x[n, c, e].

    For small maps (MobileNet's 4x4 to 1x1: planes of a few values) the per-plane loops
    of ``forward`` are a few iterations each, and their set-up cost most of the time
    ((32, 384, 2, 2) 3x3: 1.2 ms). Here each image's block of channels is transposed to
    (H*W, C_b), every (output, tap) is one multiply-add loop over the channels, and the
    (OH*OW, C_b) result is transposed back.

    x: (N, C, H, W), wt: (KH*KW, C) (the weight, transposed), bias: (C,), y: (N, C, OH,
    OW); all C-contiguous, one dtype."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    HW, OHW, B = H * W, OH * OW, c1 - c0
    xf, yf, wf = x.reshape(-1), y.reshape(-1), wt.reshape(-1)
    xt = np.empty(HW * B, dtype=x.dtype)
    yt = np.empty(OHW * B, dtype=x.dtype)
    for n in range(N):
        _to_rows(xf, (n * C + c0) * HW, B, HW, xt)
        for o in range(OHW):
            d = o * B
            for b in range(B):
                yt[_u(d + b)] = bias[_u(c0 + b)]
            for i in range(start[o], start[o + 1]):
                s = tap_e[i] * B
                w0 = tap_k[i] * C + c0
                for b in range(B):
                    yt[_u(d + b)] += wf[_u(w0 + b)] * xt[_u(s + b)]
        _from_rows(yt, B, OHW, yf, (n * C + c0) * OHW)


@njit_helper
def _grad_input_across(gy, wt, gx, c0, c1, start, tap_k, tap_e):
    """``grad_input`` for channels c0 .. c1, channels inner: the adjoint of
    ``forward_across`` (each (output, tap) adds wt[k, c] * gy[n, c, o] into input
    position e). gy: (N, C, OH, OW), wt: (KH*KW, C), gx: (N, C, H, W)."""
    N, C, H, W = gx.shape
    OH, OW = gy.shape[2], gy.shape[3]
    HW, OHW, B = H * W, OH * OW, c1 - c0
    gf, xf, wf = gy.reshape(-1), gx.reshape(-1), wt.reshape(-1)
    gt = np.empty(OHW * B, dtype=gx.dtype)
    xt = np.empty(HW * B, dtype=gx.dtype)
    for n in range(N):
        _to_rows(gf, (n * C + c0) * OHW, B, OHW, gt)
        for i in range(HW * B):
            xt[_u(i)] = 0
        for o in range(OHW):
            s = o * B
            for i in range(start[o], start[o + 1]):
                d = tap_e[i] * B
                w0 = tap_k[i] * C + c0
                for b in range(B):
                    xt[_u(d + b)] += wf[_u(w0 + b)] * gt[_u(s + b)]
        _from_rows(xt, B, HW, xf, (n * C + c0) * HW)


@njit_helper
def _grad_weight_across(x, gy, gwt, c0, c1, start, tap_k, tap_e):
    """``grad_weight`` for channels c0 .. c1, channels inner: gwt[k, c] (the weight
    gradient transposed, (KH*KW, C); columns c0 .. c1 written) = the sum over images and
    outputs o of gy[n, c, o] * x[n, c, e] for each of o's taps (k, e); taps that read
    only padding stay 0. Summed image by image, output by output, whatever the channel
    range: the result does not depend on the thread count."""
    N, C, H, W = x.shape
    OH, OW = gy.shape[2], gy.shape[3]
    K = gwt.shape[0]
    HW, OHW, B = H * W, OH * OW, c1 - c0
    xf, gf = x.reshape(-1), gy.reshape(-1)
    xt = np.empty(HW * B, dtype=x.dtype)
    gt = np.empty(OHW * B, dtype=x.dtype)
    acc = np.zeros(K * B, dtype=x.dtype)
    for n in range(N):
        _to_rows(xf, (n * C + c0) * HW, B, HW, xt)
        _to_rows(gf, (n * C + c0) * OHW, B, OHW, gt)
        for o in range(OHW):
            s = o * B
            for i in range(start[o], start[o + 1]):
                d = tap_e[i] * B
                a = tap_k[i] * B
                for b in range(B):
                    acc[_u(a + b)] += gt[_u(s + b)] * xt[_u(d + b)]
    for k in range(K):
        for b in range(B):
            gwt[k, c0 + b] = acc[_u(k * B + b)]


@jit
def forward_across(x, wt, bias, y, parts, start, tap_k, tap_e):
    """``_forward_across`` over every channel, cut into ``parts`` contiguous ranges (one per
    prange iteration: each writes only its own channels)."""
    C = x.shape[1]
    for t in prange(parts):
        _forward_across(x, wt, bias, y, t * C // parts, (t + 1) * C // parts, start, tap_k, tap_e)


@jit
def grad_input_across(gy, wt, gx, parts, start, tap_k, tap_e):
    """``_grad_input_across`` over every channel, cut into ``parts`` contiguous ranges (one per
    prange iteration: each writes only its own channels)."""
    C = gx.shape[1]
    for t in prange(parts):
        _grad_input_across(gy, wt, gx, t * C // parts, (t + 1) * C // parts, start, tap_k, tap_e)


@jit
def grad_weight_across(x, gy, gwt, parts, start, tap_k, tap_e):
    """``_grad_weight_across`` over every channel, cut into ``parts`` contiguous ranges (one per
    prange iteration: each writes only its own channels)."""
    C = x.shape[1]
    for t in prange(parts):
        _grad_weight_across(x, gy, gwt, t * C // parts, (t + 1) * C // parts, start, tap_k, tap_e)
