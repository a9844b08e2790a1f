"""conv2d by blocks of images: im2col -> GEMM one block at a time, the blocks on threads.

The reference (``conv.py``) unfolds the whole batch at once. For ResNet-18's first stage
at batch 32 (64 channels, 32x32, 3x3) ``col`` is 576 x 32768 floats, 75 MB: im2col writes
it out to memory and the GEMM reads it back, and im2col/col2im (serial numba kernels)
run on one core while the other waits. Here the batch is cut into blocks of whole images
whose unfolded input is about ``BLOCK_COL_BYTES``, and each block goes through the same
three lines as the reference::

    col_b = im2col(x[n0:n1])              (C, KH, KW, nb, OH, OW), in this thread's scratch
    Y_b   = Wm @ col_b                    (G, OCg, nb*OH*OW), read while col_b is in cache
    y[n0:n1] = Y_b^T + b                  (nb, OC, OH*OW)

and in backward, per block, ``dWm += gY_b @ col_b^T`` (col_b unfolded again, in cache)
and ``dx[n0:n1] = col2im(Wm^T @ gY_b)``. With more than one thread
(``minidl.get_num_threads()``) the blocks are dealt out to that many Python threads, each
running its blocks with ONE BLAS thread: the numba kernels release the GIL, so im2col and
col2im now use every core, and no BLAS worker thread spins against a numba one. Each
thread sums its own weight-gradient blocks and the partial sums are added in thread
order: results are deterministic, equal to the reference up to float rounding (the
blocks add the weight gradient in another order).

Used for NumPy float32/float64 arrays whose whole ``col`` is at least
``BLOCKED_MIN_COL_BYTES`` (below it one product over the batch is as fast). Unlike the
reference it never keeps ``col`` from forward for the weight gradient.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import conv as reference
from . import registry, threads
from .conv import _scratch
from .im2col import col2im, im2col

__all__ = ["BLOCK_COL_BYTES", "BLOCKED_MIN_COL_BYTES", "block_col_bytes", "blocked_can_run",
           "blocked_pays", "image_blocks", "WHOLE_BATCH_BYTES", "WHOLE_PER_WEIGHT",
           "whole_batch_bytes", "whole_batch"]

BLOCK_COL_BYTES = 4 * 2**20        # the unfolded input of one block: fits in the caches
BLOCKED_MIN_COL_BYTES = 2**20      # smaller convolutions: one product over the batch

_BLOCK_COL = threads.Setting(BLOCK_COL_BYTES)


def block_col_bytes(limit):
    """Cut batches into blocks of about ``limit`` bytes of ``col`` instead of
    ``BLOCK_COL_BYTES`` (1: one image per block); undone at the end of a ``with`` block
    when used as one. Tests use it to run many blocks on small inputs."""
    return _BLOCK_COL.set(max(1, int(limit)))


def col_bytes(geo, dtype):
    """Bytes of the whole batch's ``col`` (C*KH*KW x N*OH*OW)."""
    return math.prod(geo.col_shape) * np.dtype(dtype).itemsize


def blocked_can_run(x, w, geo):
    """NumPy arrays of one float dtype (float32/float64); any stride, padding, dilation,
    groups."""
    return (type(x) is np.ndarray and type(w) is np.ndarray
            and x.dtype in registry.FAST_DTYPES and w.dtype == x.dtype)


def blocked_pays(x, geo):
    """Whether the batch's ``col`` is large enough (``BLOCKED_MIN_COL_BYTES``) for blocks
    and threads to beat one product over the batch, for an ungrouped convolution (grouped
    and depthwise ones, G products of a few rows each, measured slower by blocks:
    MobileNet v2's step, RESULTS.md)."""
    return geo.G == 1 and geo.N > 1 and col_bytes(geo, x.dtype) >= BLOCKED_MIN_COL_BYTES


def image_blocks(geo, dtype, n_threads, min_images=1):
    """[(n0, n1), ...]: the batch cut into blocks of about ``BLOCK_COL_BYTES`` of ``col``
    but at least ``min_images`` images, their count a multiple of ``n_threads`` (when the
    batch allows: that rounding may leave blocks under ``min_images``) so that every
    thread gets the same work, sizes differing by at most one image."""
    per_image = col_bytes(geo, dtype) // geo.N
    count = math.ceil(geo.N / max(1, _BLOCK_COL.value // per_image))
    count = max(1, min(count, geo.N // max(1, min_images)))
    count = min(geo.N, math.ceil(count / n_threads) * n_threads)
    base, extra = divmod(geo.N, count)
    bounds, n0 = [], 0
    for k in range(count):
        n1 = n0 + base + (k < extra)
        bounds.append((n0, n1))
        n0 = n1
    return bounds


# ----------------------------------------------------------------------------- threads

def _for_blocks(geo, dtype, body, min_images=1):
    """Call ``body(n0, n1)`` for every image block (``image_blocks``), the blocks dealt out
    round-robin to the threads; returns, per thread, the list of what its calls returned."""
    n_threads = max(1, min(threads.get_num_threads(), geo.N))
    blocks = image_blocks(geo, dtype, n_threads, min_images)
    n_threads = min(n_threads, len(blocks))
    return threads.run_on_threads(n_threads, lambda t: [body(n0, n1)
                                                        for n0, n1 in blocks[t::n_threads]],
                                  blas_single=True)


def _block_geo(geo, n0, n1):
    return geo._replace(N=n1 - n0)


def _gY_block(gy, geo, n0, n1):
    """dL/dY of images n0..n1 in the product's layout (G, OCg, nb*OH*OW): a transposed
    copy of gy[n0:n1] (nb, OC, OH, OW), in this thread's scratch slot 1."""
    nb, HW = n1 - n0, geo.OH * geo.OW
    gY = _scratch(np, (geo.OC, nb, HW), gy.dtype, slot=1)
    gY[...] = gy[n0:n1].reshape(nb, geo.OC, HW).transpose(1, 0, 2)
    return gY.reshape(geo.G, geo.OC // geo.G, nb * HW)


# ----------------------------------------------------------------------------- whole batch

# Small unfolded inputs (ResNet-18's stride-2 and 1x1 convolutions at 16x16 and 8x8, batch
# 32) make few blocks: with one block per thread, each thread's weight gradient is a
# partial (OC, K) as large as the weight, summed afterwards, and the product had half the
# rows it could. Up to this size of ``col`` the batch is ONE block: im2col and col2im
# split by channels over the threads, the products by rows (output channels for y and
# dW, rows of col for dcol), no partial sums, and gY transposed once for both gradients
# (``grad_output``).
# Measured (fwd + bwd, blocks -> one block, ms, 2 cores): batch 32, 128->256 3x3 s2 at
# 16x16 (col 9.4 MB) 28.6 -> 21.5, 256->512 3x3 s2 at 8x8 30.0 -> 17.5, 1x1 s2 layers
# 5-20 % faster; 64->128 3x3 s2 at 32x32 (col 18.9 MB, weight 0.3 MB) 28.9 -> 34.1;
# batch 128, 256->512 3x3 s2 (col 18.9 MB, weight 4.7 MB) 79 -> 66, 128->256 3x3 s2
# (col 37.7 MB, weight 1.2 MB) 71 -> 71. Hence a second limit: col up to
# ``WHOLE_PER_WEIGHT`` times the weight.
WHOLE_BATCH_BYTES = 16 * 2**20
WHOLE_PER_WEIGHT = 8

_WHOLE_BATCH = threads.Setting(WHOLE_BATCH_BYTES)


def whole_batch_bytes(limit):
    """Run the batch as one block when its ``col`` is at most ``limit`` bytes instead of
    ``WHOLE_BATCH_BYTES`` (0: never); undone at the end of a ``with`` block when used as
    one. Tests use it to run both modes."""
    return _WHOLE_BATCH.set(max(0, int(limit)))


def whole_batch(geo, dtype):
    """Whether ``geo`` runs as one block: an ungrouped convolution whose batch ``col`` is
    at most ``whole_batch_bytes``, or at most ``WHOLE_PER_WEIGHT`` times the weight (the
    blocks' partial weight gradients cost most there); never with ``whole_batch_bytes(0)``."""
    limit, col = _WHOLE_BATCH.value, col_bytes(geo, dtype)
    weight = geo.OC * geo.C * geo.KH * geo.KW * np.dtype(dtype).itemsize
    return geo.G == 1 and limit > 0 and (col <= limit or col <= WHOLE_PER_WEIGHT * weight)


def _col_whole(x, geo):
    """col (C*KH*KW, N*OH*OW) of the whole batch, in the calling thread's scratch slot 0:
    each thread unfolds a range of channels (its rows of col)."""
    col = _scratch(np, geo.col_shape, x.dtype)

    def unfold(c0, c1):
        im2col(np.ascontiguousarray(x[:, c0:c1]), geo._replace(C=c1 - c0), out=col[c0:c1])

    threads.run_on_ranges(geo.C, unfold)
    return col.reshape(geo.C * geo.KH * geo.KW, -1)


def _gY_whole(gy, geo):
    """dL/dY (OC, N*OH*OW): gy (N, OC, OH, OW) transposed, in the calling thread's scratch
    slot 2 (it lives from ``grad_output`` to the input gradient), ranges of channels on the
    threads."""
    N, OC, HW = geo.N, geo.OC, geo.OH * geo.OW
    gY = _scratch(np, (OC, N, HW), gy.dtype, slot=2)
    g3 = gy.reshape(N, OC, HW)

    def transpose(o0, o1):
        gY[o0:o1] = g3[:, o0:o1].transpose(1, 0, 2)

    threads.run_on_ranges(OC, transpose)
    return gY.reshape(OC, N * HW)


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) and ``saved`` as ``conv.forward``, block by block (or as one
    block, ``whole_batch``). ``col`` is never kept: the weight gradient unfolds each block
    again, in cache and on every thread, which cost less than one product over the whole
    batch on one BLAS thread."""
    G, OC, HW = geo.G, geo.OC, geo.OH * geo.OW
    K = (geo.C // G) * geo.KH * geo.KW
    wm = w.reshape(G, OC // G, K)
    x = np.ascontiguousarray(x)
    y = np.empty((geo.N, OC, HW), dtype=np.result_type(x, w))

    if whole_batch(geo, x.dtype):
        col = _col_whole(x, geo)                                  # (K, L)

        def rows(o0, o1):                                         # y[:, o0:o1] = Wm[o0:o1] @ col
            Y = np.matmul(wm[0, o0:o1], col)                      # (o1 - o0, L)
            Yt = Y.reshape(o1 - o0, geo.N, HW).transpose(1, 0, 2)
            if b is not None:
                np.add(Yt, b[o0:o1].reshape(-1, 1), out=y[:, o0:o1])
            else:
                y[:, o0:o1] = Yt

        threads.run_on_ranges(OC, rows, blas_single=True)
        return y.reshape(geo.N, OC, geo.OH, geo.OW), ("x", x if keep_for_backward else None)

    def block(n0, n1):
        gb = _block_geo(geo, n0, n1)
        col = im2col(x[n0:n1], gb, out=_scratch(np, gb.col_shape, x.dtype))
        Lb = (n1 - n0) * HW
        Y = np.matmul(wm, col.reshape(G, K, Lb), out=_scratch(np, (G, OC // G, Lb), y.dtype, 1))
        Yt = Y.reshape(OC, n1 - n0, HW).transpose(1, 0, 2)          # (nb, OC, OH*OW)
        if b is not None:
            np.add(Yt, b.reshape(OC, 1), out=y[n0:n1])
        else:
            y[n0:n1] = Yt

    _for_blocks(geo, x.dtype, block)
    return y.reshape(geo.N, OC, geo.OH, geo.OW), ("x", x if keep_for_backward else None)


def grad_output(gy, geo, products=True):
    """gy itself; as one block (``whole_batch``) also gY (OC, N*OH*OW), transposed once
    for both gradients (blocks transpose their own part, ``_gY_block``)."""
    gy = np.ascontiguousarray(gy)
    whole = products and whole_batch(geo, gy.dtype)
    return SimpleNamespace(gy=gy, gY=_gY_whole(gy, geo) if whole else None)


def grad_weight(g, saved, geo, need_b=True):
    """gw (OC, Cg, KH, KW) = sum over blocks of gY_b @ col_b^T, and gb (OC,) when
    ``need_b``; a kept ``col`` goes to the reference (one product)."""
    kind, kept = saved
    if kind == "col":
        return reference.grad_weight(reference.grad_output(g.gy, geo), saved, geo, need_b)
    G, OC = geo.G, geo.OC
    Cg = geo.C // G
    K = Cg * geo.KH * geo.KW
    x = np.ascontiguousarray(kept)
    if g.gY is not None:                                          # one block
        col = _col_whole(x, geo)                                  # (K, L)
        gw = np.empty((OC, K), dtype=np.result_type(x, g.gY))

        def rows(o0, o1):                                         # dW[o0:o1] = gY[o0:o1] @ col^T
            np.matmul(g.gY[o0:o1], col.T, out=gw[o0:o1])

        threads.run_on_ranges(OC, rows, blas_single=True)
        gb = g.gY.sum(axis=1) if need_b else None
        return gw.reshape(OC, Cg, geo.KH, geo.KW), gb

    def block(n0, n1):
        gb_geo = _block_geo(geo, n0, n1)
        col = im2col(x[n0:n1], gb_geo, out=_scratch(np, gb_geo.col_shape, x.dtype))
        gY = _gY_block(g.gy, geo, n0, n1)                         # (G, OCg, Lb)
        gwT = np.matmul(col.reshape(G, K, -1), gY.transpose(0, 2, 1))   # (G, K, OCg)
        return gwT, (gY.sum(axis=2) if need_b else None)         # (G, OCg)

    per_thread = _for_blocks(geo, x.dtype, block)
    gwT, gb = None, None
    for results in per_thread:                                    # fixed order: deterministic
        for part, bpart in results:
            gwT = part if gwT is None else gwT + part
            if need_b:
                gb = bpart if gb is None else gb + bpart
    gw = gwT.transpose(0, 2, 1).reshape(OC, Cg, geo.KH, geo.KW)
    return np.ascontiguousarray(gw), (gb.reshape(OC) if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W): per block, gx[n0:n1] = col2im(Wm^T @ gY_b)."""
    G, OC = geo.G, geo.OC
    K = (geo.C // G) * geo.KH * geo.KW
    wmT = w.reshape(G, OC // G, K).transpose(0, 2, 1)             # (G, K, OCg)
    gx = np.empty((geo.N, geo.C, geo.H, geo.W), dtype=np.result_type(g.gy, w))
    if g.gY is not None:                                          # one block
        KK = geo.KH * geo.KW
        gcol = _scratch(np, geo.col_shape, gx.dtype)              # (C, KH, KW, N, OH, OW)
        gcol2 = gcol.reshape(K, -1)

        def channels(c0, c1):     # dcol[c0:c1] = Wm^T[c0:c1] @ gY, folded into gx[:, c0:c1]
            np.matmul(wmT[0, c0 * KK:c1 * KK], g.gY, out=gcol2[c0 * KK:c1 * KK])
            part = col2im(gcol[c0:c1], geo._replace(C=c1 - c0))    # (N, c1 - c0, H, W)
            gx[:, c0:c1] = part

        threads.run_on_ranges(geo.C, channels, blas_single=True)
        return gx

    def block(n0, n1):
        gb = _block_geo(geo, n0, n1)
        gY = _gY_block(g.gy, geo, n0, n1)
        gcol = np.matmul(wmT, gY, out=_scratch(np, (G, K, gY.shape[2]), gx.dtype))
        col2im(gcol.reshape(gb.col_shape), gb, out=gx[n0:n1])

    _for_blocks(geo, gx.dtype, block)
    return gx


def grad_bias(g, geo):
    """gb (OC,): the sum of dL/dy over (N, OH, OW)."""
    return g.gy.sum(axis=(0, 2, 3))


def weight_source(x, geo):
    """``('x', x)``: grad_weight unfolds it block by block."""
    return "x", x
