"""conv2d by blocks of images: im2col -> matrix products one block at a time.

The reference (``conv.py``) unfolds the whole batch at once. For ResNet-18's first stage
at batch 32 (64 channels, 32x32, 3x3) ``col`` is 576 x 32768 floats, 75 MB: im2col writes
it out to memory and the GEMM reads it back. Here the batch is cut into blocks of whole
images whose unfolded input is about ``BLOCK_COL_BYTES`` (in cache), and each block goes
through the reference's lines with one product per image, which reads and writes the
(N, C, H, W) layouts in place (no transposed copies)::

    col_b = im2col(x[n0:n1])                    (C*KH*KW, nb, OH*OW), this thread's scratch
    y[n]  = Wm @ col_b[:, n] (+ b)              (OC, OH*OW) for each image n of the block
    dWm  += sum over n of gy[n] @ col_b[:, n]^T  (OC, C*KH*KW), col_b kept or unfolded again
    dx[n0:n1] = col2im(dcol_b),  dcol_b[:, n] = Wm^T @ gy[n]

(per group of a grouped convolution). Threads: im2col, col2im and the products
(``blas.matmul``: one BLAS thread per numba thread, the images' products dealt out)
all run on numba's threads, block after block; the weight gradient sums image after
image into one array: results are deterministic, equal to the reference up to float
rounding (another order of the sums). Most layers run by images instead
(``runs_by_images``): each thread unfolds its own blocks of images and runs their
products, in forward and again in backward (its own partial weight gradient, the parts'
summed in order; its images' dx), so that no stage reads what another thread wrote
(``conv_winograd_images_numba.py`` says why).

Runs any NumPy float32/float64 convolution (``blocked_can_run``); chosen for ungrouped
ones over more than one image (``blocked_pays``). Stage-split, like the reference,
forward keeps ``col`` for the weight gradient when the whole batch's is at most
``conv.keep_col_bytes`` (each block's own array instead of the scratch buffer); larger
ones are unfolded again, block by block, in backward. By images nothing but x is kept.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import conv as reference
from . import memory, registry, threads
from .conv import _scratch
from .blas import matmul
from .im2col import col2im, im2col

__all__ = ["BLOCK_COL_BYTES", "BLOCKED_MIN_COL_BYTES", "POINTWISE_MIN_OUTPUTS", "pointwise",
           "block_col_bytes", "blocked_can_run",
           "blocked_pays", "image_blocks", "WHOLE_BATCH_BYTES", "WHOLE_PER_WEIGHT",
           "whole_batch_bytes", "whole_batch", "image_parts", "deals_evenly", "image_bounds",
           "IMAGE_BLOCK_OUTPUTS",
           "by_images", "runs_by_images", "IMAGE_MIN_OUTPUTS", "single_pixel"]

BLOCK_COL_BYTES = 4 * 2**20        # the unfolded input of one block: fits in the caches
# Below this ``col`` size the reference runs instead. 0: the blocked code's whole-batch
# path (im2col, the product and the transpose back, all on numba's threads) beat the
# reference (the transpose and bias on one thread) even on small layers: MobileNet v2's
# 1x1 convolutions, evaluation 1.58 -> 1.40x PyTorch's time (the 1 MiB limit it had was
# measured when blocks ran on Python threads).
BLOCKED_MIN_COL_BYTES = 0

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
    """Whether blocks (or the whole-batch path) beat the reference: an ungrouped
    convolution (grouped and depthwise ones, G products of a few rows each, measured
    slower by blocks: MobileNet v2's step, RESULTS.md) of more than one image whose
    ``col`` has at least ``BLOCKED_MIN_COL_BYTES``."""
    return geo.G == 1 and geo.N > 1 and col_bytes(geo, x.dtype) >= BLOCKED_MIN_COL_BYTES


def image_blocks(geo, dtype, min_images=1):
    """[(n0, n1), ...]: the batch cut into blocks of about ``BLOCK_COL_BYTES`` of ``col``
    but at least ``min_images`` images, sizes differing by at most one image."""
    per_image = col_bytes(geo, dtype) // geo.N
    count = math.ceil(geo.N / max(1, _BLOCK_COL.value // per_image))
    count = max(1, min(count, geo.N // max(1, min_images)))
    base, extra = divmod(geo.N, count)
    bounds, n0 = [], 0
    for k in range(count):
        n1 = n0 + base + (k < extra)
        bounds.append((n0, n1))
        n0 = n1
    return bounds


def image_parts(N, per_block, size):
    """(blocks, parts) of a pass by images (here and in ``conv_winograd``): the batch's
    blocks of ``per_block`` images and the threads the policy gives a pass over ``size``
    elements for them (``threads.pieces``)."""
    blocks = -(-N // per_block)
    return blocks, threads.pieces(size, blocks)


def deals_evenly(blocks, parts):
    """Whether ``blocks`` image blocks deal out evenly enough to ``parts`` threads: a
    multiple of them, or at least 4 each (shares then differ by a quarter at most)."""
    return blocks % parts == 0 or blocks >= 4 * parts


def image_bounds(N, per_block, parts):
    """bounds (parts, J, 2) int64 for the passes by images (here and in
    ``conv_winograd``): the blocks [n0, n1) of ``per_block`` images (the batch cut from
    image 0, the last block shorter), dealt out in order, J or J - 1 to each part (an
    empty block n0 = n1 pads the shorter parts). The blocks do not depend on ``parts``:
    the forward is the same bit for bit on any number of threads."""
    blocks = [(n0, min(N, n0 + per_block)) for n0 in range(0, N, per_block)]
    cuts = [p * len(blocks) // parts for p in range(parts + 1)]
    bounds = np.zeros((parts, max(1, -(-len(blocks) // parts)), 2), dtype=np.int64)
    for p in range(parts):
        mine = blocks[cuts[p]:cuts[p + 1]]
        bounds[p, :len(mine)] = mine
    return bounds


def _for_blocks(geo, dtype, body, min_images=1):
    """``body(n0, n1)`` for every image block (``image_blocks``), in order."""
    for n0, n1 in image_blocks(geo, dtype, min_images):
        body(n0, n1)


def _block_geo(geo, n0, n1):
    return geo._replace(N=n1 - n0)


def _per_image(a, geo, nb):
    """a (G, K, nb, OH*OW) (``col`` of a block) as G stacks of nb matrices (nb, K, OH*OW):
    views, one per group, each image's matrix with a row stride of nb*OH*OW."""
    return a.reshape(geo.G, -1, nb, geo.OH * geo.OW).transpose(0, 2, 1, 3)


def _by_group(a, geo):
    """a (nb, OC, OH, OW) as G views (nb, OC/G, OH*OW), one per group."""
    return a.reshape(a.shape[0], geo.G, geo.OC // geo.G, geo.OH * geo.OW).transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------- whole batch

# Small unfolded inputs (ResNet-18's stride-2 and 1x1 convolutions at 16x16 and 8x8, batch
# 32) make few blocks of thin per-image products. Up to this size of ``col`` the batch is
# ONE block: one im2col, one product over the whole batch (its columns dealt out to the
# threads), gY transposed once for both gradients (``grad_output``).
# Measured when blocks ran on Python threads (each summing a partial weight gradient):
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


# ----------------------------------------------------------------------------- by images

# Forward and backward run by images (``conv_blocked_images_numba``: each thread unfolds
# its own blocks of about this many outputs per channel, whole images, and runs one
# product per block; backward unfolds the block again instead of keeping col). Measured
# (a prototype of the forward, batch 32, two threads, blocks of 1 / 2 / 4 images against
# the stage-split forward): (64, 32x32) -> 128 3x3 s2 0.79 / 0.81 / 0.88, (128, 16x16) ->
# 256 3x3 s2 0.93 / 0.91 / 0.94, (64, 32x32) -> 128 1x1 s2 0.62 / 0.60 / 0.63, (256, 28x28)
# -> 512 3x3 s2 0.93 / 0.97 / 0.99; (256, 8x8) -> 512 3x3 s2 1.25 / 1.24 / 1.24, where the
# weight is as large as the batch's col. Forward + backward against the stage-split pass
# with col kept (``conv.keep_col_bytes``), paired in one process: the first three 0.84-0.91
# / 0.95 / 0.79-0.90 at batch 32, 0.73-0.90 / 0.81-0.88 at batch 128, (256, 28x28) -> 512
# 0.86-0.93.
IMAGE_BLOCK_OUTPUTS = 128
# On small maps a block's unfold (per-row loops a few pixels long) costs more than the
# stage-split im2col, which unfolds the whole batch through an index table there
# (``im2col_numba.GATHER_MAX_OUTPUTS``): 3x3 stride-2 layers at 4x4 outputs, batch 128,
# lost by images, evaluation / training 1.10 / 1.13 (64 -> 128), 1.05 / 1.07 (128 ->
# 256), 1.02-1.06 / 1.04-1.09 (256 -> 512), whatever the weight's size, while at 8x8
# outputs (512 -> 64) they won, 0.92 / 0.89, and at 14x14 (256 -> 512, a 4.7 MB weight)
# 0.97 / 0.97. 1x1 kernels unfold cheaply and win at 4x4 too (256 -> 512 1x1 s2, 0.78-0.83
# / 0.97-0.99).
IMAGE_MIN_OUTPUTS = 64

_BY_IMAGES = threads.Setting(None)


def by_images(flag):
    """Force the passes by images on (True) or off (False), or leave it to
    ``runs_by_images`` (None); undone at the end of a ``with`` block when used as one."""
    if flag not in (None, True, False):
        raise ValueError(f"conv_blocked.by_images: expected True, False or None, got {flag!r}")
    return _BY_IMAGES.set(flag)


def runs_by_images(geo, dtype):
    """Whether forward and backward run by images: as forced by ``by_images``, else for
    an ungrouped convolution unless its weight (OC, K) outweighs half the batch's col
    (K, N*OH*OW), i.e. 2 OC > N OH OW (``conv_winograd``'s rule), or its kernel is larger
    than 1x1 and its maps have under ``IMAGE_MIN_OUTPUTS`` pixels, or its blocks do not
    deal out evenly to the threads (fewer than 4 per thread and not a multiple of them).
    1x1 stride-1 layers have their own per-image products (``pointwise``) and never come
    here."""
    if _BY_IMAGES.value is not None:
        return _BY_IMAGES.value and geo.G == 1
    outputs = geo.OH * geo.OW
    return (geo.G == 1 and not pointwise(geo, 1) and 2 * geo.OC <= geo.N * outputs
            and (outputs >= IMAGE_MIN_OUTPUTS or geo.KH * geo.KW == 1)
            and deals_evenly(*image_parts(geo.N, _images_per_block(geo),
                                          math.prod(geo.col_shape))))


def _images_per_block(geo):
    """Images per block by images: about ``IMAGE_BLOCK_OUTPUTS`` outputs, at least one."""
    return max(1, IMAGE_BLOCK_OUTPUTS // (geo.OH * geo.OW))


def _image_plan(geo, dtype):
    """(bounds, cols, rows, size) of a pass by images: blocks of about
    ``IMAGE_BLOCK_OUTPUTS`` outputs per channel dealt out to the threads in order
    (``image_bounds``), each part's col (C, KH, KW, B, OH, OW) and rows (OC, B*OH*OW) its
    own slices of this thread's scratch slots 0 and 1, and the batch's col size (the
    threading policy's measure of the work)."""
    per_block = _images_per_block(geo)
    size = math.prod(geo.col_shape)
    _, parts = image_parts(geo.N, per_block, size)
    bounds = image_bounds(geo.N, per_block, parts)
    B = min(per_block, geo.N)
    cols = _scratch(np, (parts, geo.C, geo.KH, geo.KW, B, geo.OH, geo.OW), dtype)
    rows = _scratch(np, (parts, geo.OC, B * geo.OH * geo.OW), dtype, slot=1)
    return bounds, cols, rows, size


def _forward_by_images(x, wm, b, geo, y):
    """y by ``forward_images`` (``_image_plan``'s blocks)."""
    bounds, cols, rows, size = _image_plan(geo, x.dtype)
    bias = np.zeros(1, dtype=y.dtype) if b is None else b.astype(y.dtype, copy=False)
    from .conv_blocked_images_numba import forward_images  # noqa: PLC0415 - numba on use
    with threads.single_blas():
        forward_images(x, wm, bias, b is not None, y, geo.SH, geo.SW, geo.PH0, geo.PW0,
                       geo.DH, geo.DW, bounds, cols, rows, size=size)


def _backward_by_images(x, gy, wm, geo, need_w, need_x):
    """(dWm (OC, K), gx (N, C, H, W)) by ``backward_images``, each None where not asked
    for: ``_image_plan``'s blocks, the parts' dWm summed in part order (deterministic for
    a given number of threads). x is read for dWm, wm (OC, K) for gx."""
    dtype = gy.dtype
    bounds, cols, rows, size = _image_plan(geo, dtype)
    parts, K = bounds.shape[0], geo.C * geo.KH * geo.KW
    unused = np.empty((1, 1, 1, 1), dtype=dtype)                 # stands for arrays not read
    dW = memory.empty((parts, geo.OC, K) if need_w else (parts, 1, 1), dtype=dtype)
    gx = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=dtype) if need_x else unused
    from .conv_blocked_images_numba import backward_images  # noqa: PLC0415 - numba on use
    with threads.single_blas():
        backward_images(x if need_w else unused, gy, wm if need_x else unused[0, 0], need_w,
                        need_x, geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, bounds,
                        cols, rows, dW, gx, size=size)
    return (dW.sum(axis=0) if need_w else None), (gx if need_x else None)


def _planes_swapped(src, bias, dst):
    """``im2col_numba.planes_swapped`` (imported on first use: importing this module, as
    the registry does, must not import numba)."""
    from .im2col_numba import planes_swapped  # noqa: PLC0415
    planes_swapped(src, bias, dst, size=dst.size)


def _col_whole(x, geo, kept=False):
    """col (C*KH*KW, N*OH*OW) of the whole batch, in the calling thread's scratch slot 0
    (``kept``: in an array of its own, for the weight gradient)."""
    col = im2col(x, geo, out=None if kept else _scratch(np, geo.col_shape, x.dtype))
    return col.reshape(geo.C * geo.KH * geo.KW, -1)


def _gY_whole(gy, geo):
    """dL/dY (OC, N*OH*OW): gy (N, OC, OH, OW) transposed, in the calling thread's scratch
    slot 2 (it lives from ``grad_output`` to the input gradient)."""
    N, OC, HW = geo.N, geo.OC, geo.OH * geo.OW
    gY = _scratch(np, (OC, N, HW), gy.dtype, slot=2)
    _planes_swapped(gy.reshape(N, OC, HW), np.empty(0, dtype=gy.dtype), gY)   # a copy
    return gY.reshape(OC, N * HW)


# ----------------------------------------------------------------------------- 1x1 layers

# A 1x1 convolution at stride 1 without padding (GoogLeNet's and MobileNet's pointwise
# layers) needs no im2col: each image's x[n] (C, H*W) is already the product's operand, so
#     y[n] = Wm @ x[n],   dWm = sum over n of gy[n] @ x[n]^T,   gx[n] = Wm^T @ gy[n]
# read and write the (N, C, H, W) arrays in place, no unfolded copy and no transposes.
# The gradients take them only for maps of at least this many pixels: on smaller ones
# (MobileNet's 4x4 and 2x2) the per-image products are a few columns wide and one product
# over the batch wins. The forward takes them on maps of any size: there the one product
# over the batch costs an unfolded copy of x and a transpose of its result, more than
# the thin products lose (evaluation at batch 32, A/B in one process: MobileNet v2 0.92x,
# GoogLeNet 0.90x; RESULTS.md).
POINTWISE_MIN_OUTPUTS = 64
POINTWISE_FORWARD_MIN_OUTPUTS = 1


def pointwise(geo, min_outputs=None):
    """Whether ``geo`` is a 1x1, stride-1, unpadded, ungrouped convolution on maps of at
    least ``min_outputs`` (default ``POINTWISE_MIN_OUTPUTS``) pixels (the per-image
    products above)."""
    if min_outputs is None:
        min_outputs = POINTWISE_MIN_OUTPUTS
    return (geo.KH == geo.KW == 1 and geo.SH == geo.SW == 1 and geo.G == 1
            and geo.PH0 == geo.PH1 == geo.PW0 == geo.PW1 == 0
            and geo.OH * geo.OW >= min_outputs)


def single_pixel(geo):
    """Whether ``geo`` is a 1x1, stride-1, unpadded, ungrouped convolution on 1x1 maps
    (MobileNet v2's last stage on 32x32 inputs): a linear layer over the batch,
    y (N, OC) = x (N, C) @ Wm^T, dWm = gy^T @ x, dx = gy @ Wm, one product each and
    nothing transposed. The per-image products are then single columns, each reading
    all of Wm: with AVX2 OpenBLAS (no small-matrix kernel) MobileNet v2's 1x1-map
    layers took 5.0 ms per evaluation against 1.7 as one product (AVX-512: 1.5 ms)."""
    return pointwise(geo, 1) and geo.OH * geo.OW == 1


def _rows(a):
    """(N, C, 1, 1) -> (N, C), a view."""
    return a.reshape(a.shape[0], a.shape[1])


def _images(a, geo):
    """(N, C, H, W) -> (N, C, H*W): the per-image matrices, a view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) and ``saved``, by images (``runs_by_images``), else block by
    block (or as one block, ``whole_batch``). ``saved``: ``('x', x)`` (``('x', None)``
    without ``keep_for_backward``) when the weight gradient unfolds x again, by images
    ``('x', x, Wm)`` (Wm (OC, K), for the input gradient in the same pass); stage-split,
    when the batch's ``col`` is at most ``conv.keep_col_bytes``, ``('col', col)`` (K, L)
    as one block or ``('cols', [(n0, n1, col_b), ...])`` in blocks (1x1 stride-1 layers
    read x itself and always keep x)."""
    G, OC, HW = geo.G, geo.OC, geo.OH * geo.OW
    K = (geo.C // G) * geo.KH * geo.KW
    wm = w.reshape(G, OC // G, K)
    x = np.ascontiguousarray(x)
    y = memory.empty((geo.N, OC, geo.OH, geo.OW), dtype=np.result_type(x, w))
    saved = ("x", x if keep_for_backward else None)
    keep = keep_for_backward and col_bytes(geo, x.dtype) <= reference.kept_col_limit()

    if pointwise(geo, POINTWISE_FORWARD_MIN_OUTPUTS):
        if b is not None:
            y[...] = b.reshape(OC, 1, 1)
        if single_pixel(geo):
            matmul(_rows(x), wm[0].T, _rows(y), accumulate=b is not None)
        else:
            matmul(wm[0], _images(x, geo), _images(y, geo), accumulate=b is not None)
        return y, saved

    if runs_by_images(geo, x.dtype):                              # x unfolded again in backward
        _forward_by_images(x, wm[0], b, geo, y)
        return y, (("x", x, wm[0]) if keep_for_backward else saved)

    if whole_batch(geo, x.dtype):
        col = _col_whole(x, geo, kept=keep)                       # (K, L)
        if keep:
            saved = ("col", col)
        Y = matmul(wm[0], col, _scratch(np, (OC, geo.N * HW), y.dtype, slot=1))
        bias = np.empty(0, dtype=y.dtype) if b is None else b.astype(y.dtype, copy=False)
        _planes_swapped(Y.reshape(OC, geo.N, HW), bias, y.reshape(geo.N, OC, HW))
        return y, saved

    kept = []

    def block(n0, n1):
        gb = _block_geo(geo, n0, n1)
        col = im2col(x[n0:n1], gb, out=None if keep else _scratch(np, gb.col_shape, x.dtype))
        if keep:
            kept.append((n0, n1, col))
        cols, ys = _per_image(col, geo, n1 - n0), _by_group(y[n0:n1], geo)
        if b is not None:
            ys[...] = b.reshape(G, 1, OC // G, 1)
        for g in range(G):
            matmul(wm[g], cols[g], ys[g], accumulate=b is not None)

    _for_blocks(geo, x.dtype, block)
    return y, (("cols", kept) if kept else saved)


def grad_output(gy, geo, products=True):
    """gy itself; as one block (``whole_batch``) also gY (OC, N*OH*OW), transposed once
    for both gradients (blocks read gy in place)."""
    gy = np.ascontiguousarray(gy)
    whole = (products and whole_batch(geo, gy.dtype) and not pointwise(geo)
             and not single_pixel(geo) and not runs_by_images(geo, gy.dtype))
    return SimpleNamespace(gy=gy, gY=_gY_whole(gy, geo) if whole else None)


def grad_weight(g, saved, geo, need_b=True):
    """gw (OC, Cg, KH, KW) = the sum over images of gy[n] @ col[:, n]^T, and gb (OC,) when
    ``need_b``, from forward's kept ``col`` (one product with gY) or blocks' ``cols``, or
    unfolding x again block by block. By images (``runs_by_images``), when the op says the
    input gradient follows (``g.need_x``) and forward kept Wm, each thread makes its
    images' dx from the same gy blocks (left in g as ``g.gx`` for ``grad_input``)."""
    kind, kept = saved[0], saved[1]
    if kind == "x" and not pointwise(geo) and runs_by_images(geo, g.gy.dtype):
        wm = saved[2] if len(saved) > 2 else None                # forward's, for gx
        need_x = wm is not None and getattr(g, "need_x", False)
        gw, g.gx = _backward_by_images(np.ascontiguousarray(kept), g.gy, wm, geo, True,
                                       need_x)
        return (gw.reshape(geo.OC, geo.C, geo.KH, geo.KW),
                grad_bias(g, geo) if need_b else None)
    if kind == "col" and g.gY is None:                            # gY not made: one product
        return reference.grad_weight(reference.grad_output(g.gy, geo), saved, geo, need_b)
    G, OC = geo.G, geo.OC
    Cg = geo.C // G
    K = Cg * geo.KH * geo.KW
    source = kept[0][2] if kind == "cols" else kept
    gw = memory.empty((G, OC // G, K), dtype=np.result_type(source, g.gy))
    gb = grad_bias(g, geo) if need_b else None
    if kind == "cols":                                            # forward's blocks
        for n0, n1, col in kept:
            _weight_grad_block(gw, col, g.gy, geo, n0, n1)
        return gw.reshape(OC, Cg, geo.KH, geo.KW), gb
    if kind == "x" and single_pixel(geo):
        matmul(_rows(g.gy).T, _rows(np.ascontiguousarray(kept)), gw[0])
        return gw.reshape(OC, Cg, 1, 1), gb
    if kind == "x" and pointwise(geo):
        x = np.ascontiguousarray(kept)
        matmul(_images(g.gy, geo), _images(x, geo).transpose(0, 2, 1), gw[0])
        return gw.reshape(OC, Cg, 1, 1), gb
    if g.gY is not None:                                          # one block
        col = kept if kind == "col" else _col_whole(np.ascontiguousarray(kept), geo)
        matmul(g.gY, col.T, gw[0])
        return gw.reshape(OC, Cg, geo.KH, geo.KW), gb
    x = np.ascontiguousarray(kept)

    def block(n0, n1):                                            # unfolded again
        gb_geo = _block_geo(geo, n0, n1)
        col = im2col(x[n0:n1], gb_geo, out=_scratch(np, gb_geo.col_shape, x.dtype))
        _weight_grad_block(gw, col, g.gy, geo, n0, n1)

    _for_blocks(geo, x.dtype, block)
    return gw.reshape(OC, Cg, geo.KH, geo.KW), gb


def _weight_grad_block(gw, col, gy, geo, n0, n1):
    """gw (G, OCg, K) = (or, after the first block, +=) the sum over images n0 .. n1 of
    gy[n] @ col_b[:, n]^T per group; col_b (G, K, nb, OH*OW) the block's unfolded input."""
    cols, gys = _per_image(col, geo, n1 - n0), _by_group(gy[n0:n1], geo)
    for k in range(geo.G):                   # (nb, OCg, HW) @ (nb, HW, K), summed over nb
        matmul(gys[k], cols[k].transpose(0, 2, 1), gw[k], accumulate=n0 > 0)


def grad_input(g, w, geo):
    """gx (N, C, H, W): per block, gx[n0:n1] = col2im(dcol_b), dcol_b[:, n] = Wm^T @ gy[n]
    (by images: on the block's thread, or already made in ``grad_weight``'s pass)."""
    G, OC = geo.G, geo.OC
    K = (geo.C // G) * geo.KH * geo.KW
    wmT = w.reshape(G, OC // G, K).transpose(0, 2, 1)             # (G, K, OCg)
    if getattr(g, "gx", None) is not None:                        # made by grad_weight
        return g.gx
    if not pointwise(geo) and g.gY is None and runs_by_images(geo, g.gy.dtype):
        return _backward_by_images(None, g.gy, w.reshape(OC, K), geo, False, True)[1]
    gx = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=np.result_type(g.gy, w))
    if single_pixel(geo):
        return matmul(_rows(g.gy), wmT[0].T, _rows(gx)).reshape(gx.shape)
    if pointwise(geo):
        return matmul(wmT[0], _images(g.gy, geo), _images(gx, geo)).reshape(gx.shape)
    if g.gY is not None:                                          # one block
        gcol = _scratch(np, geo.col_shape, gx.dtype)              # (C, KH, KW, N, OH, OW)
        matmul(wmT[0], g.gY, gcol.reshape(K, -1))
        return col2im(gcol, geo, out=gx)

    def block(n0, n1):
        gb = _block_geo(geo, n0, n1)
        gcol = _scratch(np, gb.col_shape, gx.dtype)
        gcols, gys = _per_image(gcol, geo, n1 - n0), _by_group(g.gy[n0:n1], geo)
        for k in range(G):
            matmul(wmT[k], gys[k], gcols[k])
        col2im(gcol, gb, out=gx[n0:n1])

    _for_blocks(geo, gx.dtype, block)
    return gx


def grad_bias(g, geo):
    """gb (OC,): the sum of dL/dy over (N, OH, OW) (over gY's rows when it was made)."""
    if g.gY is not None:
        return g.gY.sum(axis=1)
    return reference.plane_sums(g.gy)


def weight_source(x, geo):
    """``('x', x)``: grad_weight unfolds it block by block."""
    return "x", x
