"""conv2d by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2015): the ``winograd``
implementation of the conv2d family (``kernels/conv.py``; shape letters there).

For 3x3 stride-1 convolutions (ResNet's) im2col + GEMM does 9 multiply-adds per output
and input channel pair and position. Winograd's algorithm computes each 2x2 block of
outputs from the 4x4 block of (padded) input under it with 16 products instead of 36::

    y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A        d (4, 4), w (3, 3), y_tile (2, 2)

          [1  0 -1  0]          [ 1    0    0 ]
    B^T = [0  1  1  0]      G = [1/2  1/2  1/2]     A^T = [1  1  1  0]
          [0 -1  1  0]          [1/2 -1/2  1/2]           [0  1 -1 -1]
          [0  1  0 -1]          [ 0    0    1 ]

((.) the elementwise product.) Summed over input channels, the 16 elementwise products
become 16 independent matrix products, 2.25x fewer multiply-adds than im2col's GEMM::

    tiles   TH = ceil(OH / 2), TW = ceil(OW / 2), T = N * TH * TW; tile (th, tw) covers
            outputs 2th .. 2th+1, 2tw .. 2tw+1 and padded-input rows/columns 2th .. 2th+3
    U = G w G^T             (16, OC, C)    per (oc, c), once per call (``weight_transform``)
    V = B^T d B             (16, C, T)     per input tile (numba: ``input_transform``)
    M = U @ V               (16, OC, T)    16 GEMMs (BLAS)
    y = A^T M A + b         (N, OC, OH, OW)  per tile (numba: ``output_transform``)

Partial tiles at the bottom/right edges read zeros past the padded input and their extra
outputs are dropped; padding is any (top, bottom), (left, right).

Backward: the adjoint of each line (exact, not an approximation; Z = dL/dM)::

    Z   = A gy_tile A^T     (16, OC, T)    gy's 2x2 tiles, zeros past OH, OW (``grad_transform``)
    dU  = Z @ V^T           (16, OC, C)    summed over tiles by the GEMM
    gw  = G^T dU G          (OC, C, 3, 3)  per (oc, c) (``weight_adjoint``)
    dV  = U^T @ Z           (16, C, T)
    gx  = sum of B dV B^T   (N, C, H, W)   tiles overlap by 2: added (``input_scatter``)
    gb  = gy summed over (N, OH, OW)

Memory and threads: as ``conv_blocked.py`` does, the batch is cut into blocks of images
(``conv_blocked.image_blocks``: blocks whose im2col ``col`` would be about
``conv_blocked.BLOCK_COL_BYTES``; V is 16 TH TW / (9 OH OW), about 0.44x, of that, but
at least ``WINOGRAD_MIN_TILES`` tiles: small images make larger blocks) and the blocks
are dealt out to ``minidl.get_num_threads()`` Python threads with one BLAS thread each.
A block's V, M, Z and dV live in that thread's scratch buffers (``conv._scratch``), in
cache. Forward keeps x for the weight gradient (V is about 4x the size of x, cheaper to
make again than to keep). Each thread sums its own dU blocks; the sums are added in
thread order: deterministic. Small maps (V and M of the whole batch at most
``WHOLE_BATCH_BYTES``: ResNet-18's 16x16 to 4x4 stages at batch 32) run as ONE block
instead (``whole_batch``): the transforms split by images over the threads, the 16 GEMMs
by component, no partial weight gradients, Z made once for both gradients.

Accuracy: the transforms of x and gy are additions, the weight transform halves, so
float64 results equal the reference to ~1e-15 of the largest value; float32 ones are
within about twice the float32 reference's own rounding error (a few 1e-7 of the
largest value at ResNet-18's sizes: the terms of B^T d B are up to 4x larger than d).

Used (``winograd_can_run``) for NumPy float32/float64 arrays, groups 1, stride 1,
dilation 1, 3x3 kernels; anything else goes to the other implementations.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import conv_blocked, registry, threads
from .conv import _scratch

__all__ = ["forward", "grad_output", "grad_weight", "grad_input", "grad_bias",
           "weight_source", "winograd_can_run", "winograd_pays", "WINOGRAD_MIN_CHANNELS",
           "WINOGRAD_MIN_SIZE", "WINOGRAD_MIN_TILES", "min_tiles", "weight_transform",
           "weight_transform_adjoint", "WHOLE_BATCH_BYTES", "whole_batch_bytes", "whole_batch"]

# The automatic choice (when the family's preference lists 'winograd') takes it only with
# at least this many input and output channels and this output height and width
# (``winograd_pays``).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_SIZE = 4

# A block holds at least this many tiles (whole images; fewer only where the batch is
# shared among the threads, ``conv_blocked.image_blocks``): the 16 GEMMs are
# (OC x C) @ (C x T_b), and the weight gradient adds a (16, OC, C) partial per block, as
# large as U, so short blocks (ResNet-18's 4x4 stage: 4 tiles per image) spent their time
# on that sum and on GEMMs too short to run at speed.
WINOGRAD_MIN_TILES = 256

_MIN_TILES = threads.Setting(WINOGRAD_MIN_TILES)


def min_tiles(n):
    """Blocks of at least ``n`` tiles instead of ``WINOGRAD_MIN_TILES`` (1: blocks as
    ``conv_blocked`` cuts them); undone at the end of a ``with`` block when used as one.
    Tests use it to run many blocks on small inputs."""
    return _MIN_TILES.set(max(1, int(n)))


def winograd_can_run(x, w, geo):
    """NumPy arrays of one float dtype (float32/float64), groups 1, stride 1, dilation 1,
    a 3x3 kernel, any padding."""
    return (geo.G == 1 and geo.KH == 3 and geo.KW == 3 and geo.stride == (1, 1)
            and geo.dilation == (1, 1) and geo.fits()
            and type(x) is np.ndarray and type(w) is np.ndarray
            and x.dtype in registry.FAST_DTYPES and w.dtype == x.dtype)


def winograd_pays(geo):
    """Whether Winograd should gain here: C and OC at least ``WINOGRAD_MIN_CHANNELS`` (the
    16 GEMMs wide enough) and an output of at least ``WINOGRAD_MIN_SIZE`` in each dim (a
    2x2 output is one tile per image, of which a third or more is padding). ResNet-18's
    4x4 stage (batch 32, 512 channels) pays since blocks hold at least
    ``WINOGRAD_MIN_TILES`` tiles: fwd+bwd 36 ms against blocked's 62 on one thread, 26
    against 38 on two."""
    return (geo.C >= WINOGRAD_MIN_CHANNELS and geo.OC >= WINOGRAD_MIN_CHANNELS
            and geo.OH >= WINOGRAD_MIN_SIZE and geo.OW >= WINOGRAD_MIN_SIZE)


def _kernels():
    """conv_winograd_numba, imported on first use: importing this module (the registry
    does, for ``winograd_can_run``) must not import numba."""
    from . import conv_winograd_numba  # noqa: PLC0415
    return conv_winograd_numba


def _tiles(geo):
    """(TH, TW): the tile grid, ceil(OH / 2) x ceil(OW / 2)."""
    return (geo.OH + 1) // 2, (geo.OW + 1) // 2


WEIGHT_SPLIT_KERNELS = 16384   # from this many 3x3 kernels the transforms use every thread


def _weight_threads(P):
    return threads.get_num_threads() if P >= WEIGHT_SPLIT_KERNELS else 1


def weight_transform(w):
    """U (16, OC, C) = G w G^T per (oc, c), w (OC, C, 3, 3); U[4a + b] = (G w G^T)[a, b].
    Large weights (ResNet's 256- and 512-channel layers) are split over the threads, in
    chunks of 64 kernels."""
    OC, C = w.shape[:2]
    P = OC * C
    U = np.empty((16, OC, C), dtype=w.dtype)
    w3, U2, half = np.ascontiguousarray(w).reshape(P, 3, 3), U.reshape(16, P), w.dtype.type(0.5)
    chunks = threads.split((P + 63) // 64, _weight_threads(P))
    threads.run_on_threads(len(chunks), lambda t: _kernels().weight_transform(
        w3, half, U2, *chunks[t], size=U.size))
    return U


def weight_transform_adjoint(dU):
    """gw (OC, C, 3, 3) = G^T dU G per (oc, c), dU (16, OC, C): the adjoint of
    ``weight_transform``, split over the threads like it."""
    OC, C = dU.shape[1:]
    P = OC * C
    gw = np.empty((OC, C, 3, 3), dtype=dU.dtype)
    dU2, gw3 = np.ascontiguousarray(dU).reshape(16, P), gw.reshape(P, 3, 3)
    half = dU.dtype.type(0.5)
    parts = threads.split(P, _weight_threads(P))
    threads.run_on_threads(len(parts), lambda t: _kernels().weight_adjoint(
        dU2, half, gw3, *parts[t], size=gw.size))
    return gw


def _for_blocks(geo, dtype, body):
    """``conv_blocked._for_blocks`` with blocks of at least ``min_tiles`` tiles."""
    TH, TW = _tiles(geo)
    min_images = -(-_MIN_TILES.value // (TH * TW))
    return conv_blocked._for_blocks(geo, dtype, body, min_images)


def _V_block(x, geo, n0, n1):
    """V (16, C, T_b) of images n0 .. n1, in this thread's scratch slot 0."""
    TH, TW = _tiles(geo)
    V = _scratch(np, (16, geo.C, (n1 - n0) * TH * TW), x.dtype, slot=0)
    _kernels().input_transform(x, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, V, size=V.size)
    return V


def _Z_block(gy, geo, n0, n1):
    """Z = dL/dM (16, OC, T_b) of images n0 .. n1, in this thread's scratch slot 1."""
    TH, TW = _tiles(geo)
    Z = _scratch(np, (16, geo.OC, (n1 - n0) * TH * TW), gy.dtype, slot=1)
    _kernels().grad_transform(gy, n0, n1, 0, TH, TW, Z, size=Z.size)
    return Z


# ----------------------------------------------------------------------------- whole batch

# Small maps (ResNet-18's 8x8 and 4x4 stages: 16 and 4 tiles per image) make short blocks:
# the GEMMs (OC x C) @ (C x T_b) run with a few dozen columns, and every block adds a
# (16, OC, C) partial weight gradient, as large as U. Up to this size of V and M the batch
# is ONE block: its transforms split by images over the threads (each writing its own
# tile columns), the 16 GEMMs split by the Winograd component (k) over the threads (each
# thread a whole (OC, C) product per k: no partial sums), and Z made once for both
# gradients. Measured, fwd + bwd at batch 32 (ms, blocks -> one block, median of 15 in
# one process): 128ch 16x16 (16 MiB) 35.7 -> 32.0, 256ch 8x8 34.7 -> 24.7, 512ch 4x4
# 45.8 -> 31.8; against it, 64ch 32x32 (32 MiB) 35.8 -> 39.6 and at batch 128 128ch
# 16x16 (64 MiB, U 1 MiB) 96 -> 109, while 256ch 8x8 (32 MiB, U 4 MiB) 96 -> 85: larger
# V and M run as one block when U is at least 1/8 of them, as in conv_blocked.
WHOLE_BATCH_BYTES = 16 * 2**20

_WHOLE_BATCH = threads.Setting(WHOLE_BATCH_BYTES)


def whole_batch_bytes(limit):
    """Run the batch as one block when its V and M are each at most ``limit`` bytes
    instead of ``WHOLE_BATCH_BYTES`` (0: never; a huge value: always); undone at the end
    of a ``with`` block when used as one. Tests use it to run both modes."""
    return _WHOLE_BATCH.set(max(0, int(limit)))


def whole_batch(geo, dtype):
    """Whether ``geo`` runs as one block: the tile matrices V (16, C, T) and M (16, OC, T)
    of the whole batch at most ``whole_batch_bytes`` each, or at most
    ``conv_blocked.WHOLE_PER_WEIGHT`` times U (16, OC, C) (the blocks' partial weight
    gradients, each as large as U, cost most there); never with ``whole_batch_bytes(0)``."""
    TH, TW = _tiles(geo)
    item = np.dtype(dtype).itemsize
    size = 16 * max(geo.C, geo.OC) * geo.N * TH * TW * item
    limit, U = _WHOLE_BATCH.value, 16 * geo.OC * geo.C * item
    return limit > 0 and (size <= limit or size <= conv_blocked.WHOLE_PER_WEIGHT * U)


def _on_images(geo, kernel):
    """``kernel(n0, n1, t0)`` for ranges of images on the threads (t0: n0's first tile)."""
    TH, TW = _tiles(geo)
    threads.run_on_ranges(geo.N, lambda n0, n1: kernel(n0, n1, n0 * TH * TW))


def _on_components(product):
    """``product(k0, k1)`` for ranges of the 16 Winograd components on the threads, each
    with one BLAS thread (the GEMMs of component k are independent of the others')."""
    threads.run_on_ranges(16, product, blas_single=True)


def _V_whole(x, geo):
    """V (16, C, T) of the whole batch, in the calling thread's scratch slot 0."""
    TH, TW = _tiles(geo)
    V = _scratch(np, (16, geo.C, geo.N * TH * TW), x.dtype, slot=0)
    _on_images(geo, lambda n0, n1, t0: _kernels().input_transform(
        x, n0, n1, t0, geo.PH0, geo.PW0, TH, TW, V, size=V.size))
    return V


def _Z_whole(gy, geo):
    """Z (16, OC, T) of the whole batch, in the calling thread's scratch slot 2 (slot 0 is
    V's, and Z outlives the weight gradient: ``grad_input`` reads it)."""
    TH, TW = _tiles(geo)
    Z = _scratch(np, (16, geo.OC, geo.N * TH * TW), gy.dtype, slot=2)
    _on_images(geo, lambda n0, n1, t0: _kernels().grad_transform(
        gy, n0, n1, t0, TH, TW, Z, size=Z.size))
    return Z


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) = A^T [U @ V] A + b, block by block (or as one block,
    ``whole_batch``); saved ``('x', x, U)`` (or ``('x', None, None)`` without
    ``keep_for_backward``): U, the transformed weight, spares the input gradient a second
    ``weight_transform`` (``grad_weight`` hands it on in g)."""
    x = np.ascontiguousarray(x)
    U = weight_transform(w)                                       # (16, OC, C)
    TH, TW = _tiles(geo)
    y = np.empty(geo.out_shape, dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)

    if whole_batch(geo, x.dtype):
        V = _V_whole(x, geo)                                      # (16, C, T)
        M = _scratch(np, (16, geo.OC, V.shape[2]), x.dtype, slot=1)
        _on_components(lambda k0, k1: np.matmul(U[k0:k1], V[k0:k1], out=M[k0:k1]))
        _on_images(geo, lambda n0, n1, t0: _kernels().output_transform(
            M, n0, n1, t0, TH, TW, bias, b is not None, y, size=M.size))
    else:
        def block(n0, n1):
            V = _V_block(x, geo, n0, n1)                          # (16, C, T_b)
            M = np.matmul(U, V, out=_scratch(np, (16, geo.OC, V.shape[2]), x.dtype, slot=1))
            _kernels().output_transform(M, n0, n1, 0, TH, TW, bias, b is not None, y,
                                        size=M.size)

        _for_blocks(geo, x.dtype, block)
    if not keep_for_backward:
        return y, ("x", None, None)
    return y, ("x", x, U)


def grad_output(gy, geo, products=True):
    """gy itself (C-contiguous): each block makes its own tiles Z (``_Z_block``)."""
    return SimpleNamespace(gy=np.ascontiguousarray(gy), gY=None)


def grad_weight(g, saved, geo, need_b=True):
    """gw (OC, C, 3, 3) = G^T [sum over blocks of Z_b @ V_b^T] G, and gb (OC,) when
    ``need_b``. ``saved``: forward's ``('x', x, U)`` (U is left in ``g`` for
    ``grad_input``: the same weight, unchanged since forward, or autograd's version check
    would have stopped the backward pass) or ``weight_source``'s ``('x', x)``. As one
    block (``whole_batch``), Z is left in g for ``grad_input`` too; in blocks, when the op
    says the input gradient follows (``g.need_x``) and U is at hand, each block makes its
    part of gx from its Z (left in g as ``g.gx``), so Z is made once per block."""
    x = saved[1]
    if len(saved) > 2 and saved[2] is not None:
        g.U = saved[2]

    if whole_batch(geo, x.dtype):
        V = _V_whole(x, geo)                                      # (16, C, T)
        g.Z = Z = _Z_whole(g.gy, geo)                             # (16, OC, T)
        dU = np.empty((16, geo.OC, geo.C), dtype=np.result_type(x, Z))
        _on_components(lambda k0, k1: np.matmul(Z[k0:k1], V[k0:k1].transpose(0, 2, 1),
                                                out=dU[k0:k1]))
    else:
        # When the input gradient follows (g.need_x, set by the op) and forward's U is
        # at hand, each block makes its part of dX from the same Z: Z once per block.
        U = getattr(g, "U", None)
        UT = U.transpose(0, 2, 1) if U is not None and getattr(g, "need_x", False) else None
        gx = None if UT is None else np.empty((geo.N, geo.C, geo.H, geo.W),
                                              dtype=np.result_type(g.gy, U))
        TH, TW = _tiles(geo)

        def block(n0, n1):
            V = _V_block(x, geo, n0, n1)                          # (16, C, T_b)
            Z = _Z_block(g.gy, geo, n0, n1)                       # (16, OC, T_b)
            part = np.matmul(Z, V.transpose(0, 2, 1))             # (16, OC, C)
            if gx is not None:                                    # V is done: dV in slot 0
                dV = np.matmul(UT, Z, out=_scratch(np, (16, geo.C, Z.shape[2]), gx.dtype, 0))
                _kernels().input_scatter(dV, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, gx,
                                         size=dV.size)
            return part

        per_thread = _for_blocks(geo, x.dtype, block)
        dU = None
        for results in per_thread:                                # fixed order: deterministic
            for part in results:
                dU = part if dU is None else dU + part
        g.gx = gx
    return weight_transform_adjoint(dU), (grad_bias(g, geo) if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W): per block, the tiles' B (U^T @ Z_b) B^T added back in place (U from
    forward when ``grad_weight`` left it in g, else transformed here; as one block, Z from
    ``grad_weight`` when it ran)."""
    if getattr(g, "gx", None) is not None:                        # made by grad_weight
        return g.gx
    U = getattr(g, "U", None)
    UT = (weight_transform(w) if U is None else U).transpose(0, 2, 1)   # (16, C, OC)
    gx = np.empty((geo.N, geo.C, geo.H, geo.W), dtype=np.result_type(g.gy, w))
    TH, TW = _tiles(geo)

    if whole_batch(geo, gx.dtype):
        Z = getattr(g, "Z", None)
        Z = _Z_whole(g.gy, geo) if Z is None else Z               # (16, OC, T)
        dV = _scratch(np, (16, geo.C, Z.shape[2]), gx.dtype, slot=0)
        _on_components(lambda k0, k1: np.matmul(UT[k0:k1], Z[k0:k1], out=dV[k0:k1]))
        _on_images(geo, lambda n0, n1, t0: _kernels().input_scatter(
            dV, n0, n1, t0, geo.PH0, geo.PW0, TH, TW, gx, size=dV.size))
        return gx

    def block(n0, n1):
        Z = _Z_block(g.gy, geo, n0, n1)                           # (16, OC, T_b)
        dV = np.matmul(UT, Z, out=_scratch(np, (16, geo.C, Z.shape[2]), gx.dtype, slot=0))
        _kernels().input_scatter(dV, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, gx, size=dV.size)

    _for_blocks(geo, gx.dtype, block)
    return gx


def grad_bias(g, geo):
    """gb (OC,): the sum of dL/dy over (N, OH, OW)."""
    return g.gy.sum(axis=(0, 2, 3))


def weight_source(x, geo):
    """``('x', x)``: grad_weight transforms it block by block."""
    return "x", np.ascontiguousarray(x)
