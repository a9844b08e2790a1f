"""conv2d by Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray 2015):
the ``winograd`` implementation of the conv2d family (``kernels/conv.py``; shape letters
there).

For 3x3 stride-1 convolutions (ResNet's) im2col + GEMM does 9 multiply-adds per output
and input channel pair and position. Winograd's algorithm F(m x m, 3x3) computes each
m x m block of outputs from the alpha x alpha block (alpha = m + 2) of (padded) input
under it with alpha^2 products instead of 9 m^2::

    y_tile = A^T [ (G w G^T) (.) (B^T d B) ] A        d (alpha, alpha), w (3, 3), y_tile (m, m)

F(2x2, 3x3), alpha 4, 16 products for 36 (2.25x fewer)::

          [1  0 -1  0]          [ 1    0    0 ]
    B^T = [0  1  1  0]      G = [1/2  1/2  1/2]     A^T = [1  1  1  0]
          [0 -1  1  0]          [1/2 -1/2  1/2]           [0  1 -1 -1]
          [0  1  0 -1]          [ 0    0    1 ]

F(4x4, 3x3), alpha 6, 36 products for 144 (4x fewer; points 0, +-1, +-2, inf)::

          [4  0 -5  0  1  0]          [ 1/4    0     0  ]
          [0 -4 -4  1  1  0]          [-1/6  -1/6  -1/6 ]           [1  1  1  1  1  0]
    B^T = [0  4 -4 -1  1  0]      G = [-1/6   1/6  -1/6 ]     A^T = [0  1 -1  2 -2  0]
          [0 -2 -1  2  1  0]          [1/24  1/12  1/6  ]           [0  1  1  4  4  0]
          [0  2 -1 -2  1  0]          [1/24 -1/12  1/6  ]           [0  1 -1  8 -8  1]
          [0  4  0 -5  0  1]          [  0     0     1  ]

((.) the elementwise product.) Summed over input channels, the K = alpha^2 elementwise
products become K independent matrix products::

    tiles   TH = ceil(OH / m), TW = ceil(OW / m), T = N * TH * TW; tile (th, tw) covers
            outputs m th .. m th + m-1 (likewise columns) and padded-input rows/columns
            m th .. m th + alpha-1: neighbouring tiles overlap by 2
    U = G w G^T             (K, OC, C)     per (oc, c), once per call (``weight_transform``)
    V = B^T d B             (K, C, T)      per input tile (numba: ``input_transform``)
    M = U @ V               (K, OC, T)     K GEMMs (BLAS)
    y = A^T M A + b         (N, OC, OH, OW)  per tile (numba: ``output_transform``)

V[alpha a + b] = (B^T d B)[a, b], and likewise U, M, Z and dV. Partial tiles at the
bottom/right edges read zeros past the padded input and their extra outputs are dropped;
padding is any (top, bottom), (left, right).

Backward: the adjoint of each line (exact, not an approximation; Z = dL/dM)::

    Z   = A gy_tile A^T     (K, OC, T)     gy's m x m tiles, zeros past OH, OW (``grad_transform``)
    dU  = Z @ V^T           (K, OC, C)     summed over tiles by the GEMM
    gw  = G^T dU G          (OC, C, 3, 3)  per (oc, c) (``weight_adjoint``)
    dV  = U^T @ Z           (K, C, T)
    gx  = sum of B dV B^T   (N, C, H, W)   tiles overlap by 2: added (``input_scatter``)
    gb  = gy summed over (N, OH, OW)

One orchestration serves both: a ``_Scheme`` per tile size holds m, alpha, K and its numba
kernels (``conv_winograd_numba.py`` for F(2x2), ``conv_winograd4_numba.py`` for F(4x4):
the same kernels with the same arguments). The tile size is chosen per call
(``_tile_size``): F(4x4) when OH and OW are at least ``WINOGRAD4_MIN_SIZE``, else F(2x2),
or as forced by ``tile_size(m)``. Forward's U is reused by the backward only when it is
of the backward's tile size.

By images (``runs_by_images``, the usual case): the batch is cut into blocks of about
``IMAGE_BLOCK_TILES`` tiles (whole images), dealt out in order to the threads, and each
thread runs its blocks through the whole forward, or the whole backward, in its own work
arrays (``forward_images`` / ``backward_images`` in ``conv_winograd_images_numba.py``,
which says why: no stage reads what another thread wrote). y is the same bit for bit on
any number of threads; each thread sums its own blocks' part of dU and the threads'
sums are added in order.

Memory and threads otherwise (where U outweighs V, or when forced): as
``conv_blocked.py`` does, the batch is cut into blocks of images
(``conv_blocked.image_blocks``: blocks whose im2col ``col`` would be about
``conv_blocked.BLOCK_COL_BYTES``; V is K TH TW / (9 OH OW) of that, about 0.44x for
F(2x2) and 0.25x for F(4x4), but at least ``WINOGRAD_MIN_TILES`` tiles: small images
make larger blocks), run one after another, each stage on numba's threads: the
transforms' prange loops over planes, the K products dealt out by component
(``blas.matmul``, one BLAS thread each). A block's V, M, Z and dV live in scratch
buffers (``conv._scratch``), in cache. Forward keeps x for the weight gradient (V is
about 4x (F(2x2)) or 2.25x (F(4x4)) the size of x, cheaper to make again than to keep).
Each block's Z @ V^T is added into the one dU, block after block: deterministic.
Small maps (V and M of the whole batch at most ``WHOLE_BATCH_BYTES``: ResNet-18's 16x16
to 4x4 stages at batch 32) run as ONE block instead (``whole_batch``): Z made once for
both gradients.

Accuracy (largest error relative to the largest value of a float64 im2col reference, at
ResNet-18's sizes: batch 4, 64 channels 32x32, 128 16x16, 256 8x8, padding 1; y, dx,
dw). F(2x2): the transforms of x and gy are additions, the weight transform halves, so
float64 results are within ~1e-15; float32 ones 4e-7 to 8e-7, about the float32 im2col
reference's own 2e-7 to 7e-7 (the terms of B^T d B are up to 4x larger than d). F(4x4):
B^T and A^T have entries up to 5 and 8 (the terms of B^T d B up to 100x larger than d,
of A^T M A up to 19^2 times M's) and G has 1/6, 1/24, so rounding errors grow: float64
within ~3e-14, float32 y 7e-6 to 1.0e-5, dx 3e-6 to 6e-6, dw 4e-6 to 9e-6, 6 to 17x
F(2x2)'s: the price of its 4x fewer products (``tile_size(2)`` forces F(2x2) where
that matters).

Used (``winograd_can_run``) for NumPy float32/float64 arrays, groups 1, stride 1,
dilation 1, 3x3 kernels; anything else goes to the other implementations.
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import numpy as np

from . import conv_blocked, memory, registry, threads
from .blas import matmul
from .conv import _scratch, plane_sums

__all__ = ["forward", "grad_output", "grad_weight", "grad_input", "grad_bias",
           "weight_source", "winograd_can_run", "winograd_pays", "WINOGRAD_MIN_CHANNELS",
           "WINOGRAD_MIN_BATCH_TILES",
           "WINOGRAD_MIN_SIZE", "WINOGRAD_MIN_TILES", "min_tiles", "weight_transform",
           "weight_transform_adjoint", "WHOLE_BATCH_BYTES", "whole_batch_bytes", "whole_batch",
           "WINOGRAD4_MIN_SIZE", "tile_size", "IMAGE_BLOCK_TILES", "by_images",
           "runs_by_images"]

# The automatic choice (when the family's preference lists 'winograd') takes it only with
# at least this many input and output channels and this output height and width
# (``winograd_pays``).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_SIZE = 4
# ... and this many tiles in the whole batch: U is made on every call (K * OC * C values,
# more than the weight itself), and too few tiles do not pay for it. Measured on 2 threads,
# eval (fwd+bwd) time against the blocked im2col, by tiles of the batch: 4-16 tiles 1.3-3.4x
# (1.2-2.3x), 32 tiles 1.04-1.35x (0.73-0.94x), 64 and more 0.42-0.92x (0.43-0.77x), at
# ResNet-18's 64ch 32x32 to 512ch 4x4 layers with batches 1 to 16. ResNet-18's evaluation
# at batch 1: 36.6 -> 18.8 ms without Winograd (PyTorch 14.2).
WINOGRAD_MIN_BATCH_TILES = 64

# A block holds at least this many tiles (whole images, ``conv_blocked.image_blocks``):
# the K GEMMs are (OC x C) @ (C x T_b), and the weight gradient adds a (K, OC, C) product
# per block into dU, as large as U, so short blocks (ResNet-18's 4x4 stage: 4 F(2x2) tiles per image) spent
# their time on that sum and on GEMMs too short to run at speed. Counted in tiles for
# both tile sizes (the GEMMs' width; measured with F(2x2)).
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
    K GEMMs wide enough), an output of at least ``WINOGRAD_MIN_SIZE`` in each dim (a 2x2
    output is one tile per image, of which a third or more is padding) and at least
    ``WINOGRAD_MIN_BATCH_TILES`` tiles in the batch (U, K * OC * C values made on every
    call, must be shared by enough tiles). ResNet-18's 4x4 stage (batch 32, 512 channels)
    pays since blocks hold at least ``WINOGRAD_MIN_TILES`` tiles: fwd+bwd 36 ms against
    blocked's 62 on one thread, 26 against 38 on two."""
    TH, TW = _tiles(geo, _scheme(geo))
    return (geo.C >= WINOGRAD_MIN_CHANNELS and geo.OC >= WINOGRAD_MIN_CHANNELS
            and geo.OH >= WINOGRAD_MIN_SIZE and geo.OW >= WINOGRAD_MIN_SIZE
            and geo.N * TH * TW >= WINOGRAD_MIN_BATCH_TILES)


# ----------------------------------------------------------------------------- tile sizes

class _Scheme:
    """Winograd F(m x m, 3x3): m x m outputs per tile from alpha x alpha = (m + 2)^2 inputs,
    K = alpha^2 components (the GEMMs), the numba kernels of module ``module`` and the
    weight transform's constants (``weight_constants``)."""

    def __init__(self, m, module, constants):
        self.m, self.alpha = m, m + 2
        self.K = self.alpha ** 2
        self._module, self._constants = module, constants
        self._kernels = None

    def kernels(self):
        """The numba kernel module, imported on first use: importing this module (the
        registry does, for ``winograd_can_run``) must not import numba."""
        if self._kernels is None:
            self._kernels = importlib.import_module(f".{self._module}", __package__)
        return self._kernels

    def weight_constants(self, dtype):
        """G's constants in ``dtype`` (float32 kernels stay float32): F(2x2)'s 1/2 as a
        scalar, F(4x4)'s (1/4, 1/2, 1/6) as an array."""
        c = np.asarray(self._constants, dtype=dtype)
        return c[()] if c.ndim == 0 else c

    def __repr__(self):
        return f"F({self.m}x{self.m}, 3x3)"


_SCHEMES = {2: _Scheme(2, "conv_winograd_numba", 0.5),
            4: _Scheme(4, "conv_winograd4_numba", (0.25, 0.5, 1 / 6))}
_BY_COMPONENTS = {sc.K: sc for sc in _SCHEMES.values()}

# The automatic tile size (``_tile_size``): F(4x4) from this output height and width on,
# F(2x2) below (a 4x4 tile over a smaller map is mostly padding, and F(4x4)'s transforms
# of 8x8 planes, 2x2 tiles each, ran at 5-6 GB/s). Measured per layer at ResNet-18's 3x3
# shapes, F(2x2) against F(4x4), eval / fwd+bwd ms: batch 32, 64ch 32x32 11.0 / 33.7 vs
# 9.5 / 28.9, 128ch 16x16 7.1 / 23.6 vs 6.9 / 19.6, 256ch 8x8 6.2 / 20.1 vs 8.3 / 20.9;
# batch 128, 256ch 8x8 27.9 / 85.4 vs 33.4 / 81.8. ResNet-18 evaluation at batch 32 with
# 16 instead of 8: 1.37 -> 1.26x PyTorch, training even.
WINOGRAD4_MIN_SIZE = 16

_TILE_SIZE = threads.Setting(0)


def tile_size(m):
    """Force F(m x m, 3x3) tiles, m 2 or 4, instead of the automatic choice (0 or None:
    automatic, ``_tile_size``); undone at the end of a ``with`` block when used as one.
    Tests use it to run both tile sizes."""
    m = 0 if m is None else m
    if m not in (0, *_SCHEMES):
        raise ValueError(f"conv_winograd.tile_size: expected 2 or 4 (outputs per tile side) "
                         f"or 0/None (automatic), got {m!r}")
    return _TILE_SIZE.set(int(m))


def _tile_size(geo):
    """m of the F(m x m, 3x3) tiles for ``geo``: ``tile_size``'s when forced, else 4 when
    OH and OW are at least ``WINOGRAD4_MIN_SIZE``, else 2."""
    if _TILE_SIZE.value:
        return _TILE_SIZE.value
    return 4 if min(geo.OH, geo.OW) >= WINOGRAD4_MIN_SIZE else 2


def _scheme(geo):
    """The ``_Scheme`` of ``geo``'s tile size (``_tile_size``)."""
    return _SCHEMES[_tile_size(geo)]


def _tiles(geo, sc):
    """(TH, TW): the tile grid, ceil(OH / m) x ceil(OW / m)."""
    return -(-geo.OH // sc.m), -(-geo.OW // sc.m)


def weight_transform(w, m=2):
    """U (K, OC, C) = G w G^T per (oc, c), w (OC, C, 3, 3), for F(m x m, 3x3) tiles (m 2 or
    4: K = 16 or 36); U[alpha a + b] = (G w G^T)[a, b]. The kernel's prange runs over
    chunks of 64 kernels (numba's threads for large weights)."""
    sc = _SCHEMES[m]
    OC, C = w.shape[:2]
    P = OC * C
    U = memory.empty((sc.K, OC, C), dtype=w.dtype)
    w3, U2 = np.ascontiguousarray(w).reshape(P, 3, 3), U.reshape(sc.K, P)
    sc.kernels().weight_transform(w3, sc.weight_constants(w.dtype), U2, 0, (P + 63) // 64,
                                  size=U.size)
    return U


def weight_transform_adjoint(dU):
    """gw (OC, C, 3, 3) = G^T dU G per (oc, c), dU (K, OC, C) (K = 16: F(2x2), 36:
    F(4x4)): the adjoint of ``weight_transform``."""
    sc = _BY_COMPONENTS[dU.shape[0]]
    OC, C = dU.shape[1:]
    P = OC * C
    gw = memory.empty((OC, C, 3, 3), dtype=dU.dtype)
    dU2, gw3 = np.ascontiguousarray(dU).reshape(sc.K, P), gw.reshape(P, 3, 3)
    sc.kernels().weight_adjoint(dU2, sc.weight_constants(dU.dtype), gw3, 0, P, size=gw.size)
    return gw


def _for_blocks(geo, sc, dtype, body):
    """``conv_blocked._for_blocks`` with blocks of at least ``min_tiles`` tiles of ``sc``
    (tiles, not components: the GEMMs' width and the partial weight gradient's share of
    a block's work, (K, OC, C) against (K, OC, C) x T_b, do not depend on K)."""
    TH, TW = _tiles(geo, sc)
    min_images = -(-_MIN_TILES.value // (TH * TW))
    return conv_blocked._for_blocks(geo, dtype, body, min_images)


def _V_block(x, geo, sc, n0, n1):
    """V (K, C, T_b) of images n0 .. n1, in this thread's scratch slot 0."""
    TH, TW = _tiles(geo, sc)
    V = _scratch(np, (sc.K, geo.C, (n1 - n0) * TH * TW), x.dtype, slot=0)
    sc.kernels().input_transform(x, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, V, size=V.size)
    return V


def _Z_block(gy, geo, sc, n0, n1):
    """Z = dL/dM (K, OC, T_b) of images n0 .. n1, in this thread's scratch slot 1."""
    TH, TW = _tiles(geo, sc)
    Z = _scratch(np, (sc.K, geo.OC, (n1 - n0) * TH * TW), gy.dtype, slot=1)
    sc.kernels().grad_transform(gy, n0, n1, 0, TH, TW, Z, size=Z.size)
    return Z


# ----------------------------------------------------------------------------- whole batch

# (Measured when blocks ran on Python threads, each summing a partial dU.)
# Small maps (ResNet-18's 8x8 and 4x4 stages: 16 and 4 F(2x2) tiles per image) make short blocks:
# the GEMMs (OC x C) @ (C x T_b) run with a few dozen columns, and every block adds a
# (K, OC, C) partial weight gradient, as large as U. Up to this size of V and M the batch
# is ONE block: its transforms split by images over the threads (each writing its own
# tile columns), the K GEMMs split by the Winograd component (k) over the threads (each
# thread a whole (OC, C) product per k: no partial sums), and Z made once for both
# gradients. Measured with F(2x2), fwd + bwd at batch 32 (ms, blocks -> one block, median of 15 in
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
    """Whether ``geo`` runs as one block: the tile matrices V (K, C, T) and M (K, OC, T) of
    the whole batch (K, T of ``geo``'s tile size, ``_tile_size``) at most
    ``whole_batch_bytes`` each, or at most ``conv_blocked.WHOLE_PER_WEIGHT`` times U
    (K, OC, C) (the blocks' partial weight gradients, each as large as U, cost most
    there); never with ``whole_batch_bytes(0)``."""
    sc = _scheme(geo)
    TH, TW = _tiles(geo, sc)
    item = np.dtype(dtype).itemsize
    size = sc.K * max(geo.C, geo.OC) * geo.N * TH * TW * item
    limit, U = _WHOLE_BATCH.value, sc.K * geo.OC * geo.C * item
    return limit > 0 and (size <= limit or size <= conv_blocked.WHOLE_PER_WEIGHT * U)


def _V_whole(x, geo, sc):
    """V (K, C, T) of the whole batch, in the calling thread's scratch slot 0."""
    TH, TW = _tiles(geo, sc)
    V = _scratch(np, (sc.K, geo.C, geo.N * TH * TW), x.dtype, slot=0)
    sc.kernels().input_transform(x, 0, geo.N, 0, geo.PH0, geo.PW0, TH, TW, V, size=V.size)
    return V


# ----------------------------------------------------------------------------- by images

# By images, the batch is cut into blocks of about this many tiles (whole images; at
# least one). Measured on the 2-core dev VM, the forward by images against the
# stage-split one (blocks or whole batch), two threads, median of 40 paired rounds,
# blocks of 64 / 128 / 256 / 512 tiles: batch 32, 64ch 32x32 (F(4x4)) 0.70 / 0.73 / 0.83
# / 0.98, 128ch 16x16 0.94 / 1.04 / 1.15 / 1.23, 256ch 8x8 (F(2x2)) 0.91 / 0.99 / 1.08 /
# 1.15; batch 128, 64ch 32x32 0.78 / 0.81 / 0.94 / 1.17, 256ch 8x8 0.76 / 0.81 / 0.93 /
# 0.94. Small blocks keep a thread's V and M (1.2 MB each at 64 channels) in its own cache.
IMAGE_BLOCK_TILES = 64

_BY_IMAGES = threads.Setting(None)


def by_images(flag):
    """Force the passes by images on (True) or off (False: the stage-split passes), or
    leave it to ``runs_by_images`` (None); undone at the end of a ``with`` block when used
    as one. Tests use it to run every path."""
    if flag not in (None, True, False):
        raise ValueError(f"conv_winograd.by_images: expected True, False or None, got {flag!r}")
    return _BY_IMAGES.set(flag)


def runs_by_images(geo, dtype):
    """Whether forward and backward run by images (``forward_images``,
    ``backward_images``): as forced by ``by_images``, else unless U (K, OC, C) is more
    than half the size of the batch's V (K, C, T), i.e. 2 OC > T, or the image blocks do
    not deal out evenly to the threads (their count not a multiple of the threads and
    under 4 per thread). Where U outweighs V, every thread
    would read all of U while the stage-split products read a share each: ResNet-18's
    512-channel 4x4 stage at batch 32 (U 16 MB, V 4 MB) ran 1.08x slower by images, at
    batch 128 1.02-1.18x."""
    if _BY_IMAGES.value is not None:
        return _BY_IMAGES.value
    sc = _scheme(geo)
    TH, TW = _tiles(geo, sc)
    T = geo.N * TH * TW
    return 2 * geo.OC <= T and conv_blocked.deals_evenly(
        *conv_blocked.image_parts(geo.N, _images_per_block(TH, TW), sc.K * geo.C * T))


def _images_per_block(TH, TW):
    """Images per block by images: about ``IMAGE_BLOCK_TILES`` tiles, at least one
    image."""
    return max(1, IMAGE_BLOCK_TILES // (TH * TW))


def _image_plan(geo, TH, TW, size):
    """(bounds, Tb) of a pass by images over ``size`` elements: the image blocks dealt out
    to the threads (``conv_blocked.image_parts``, ``image_bounds``) and the tiles of
    the largest block (the work arrays' width)."""
    per_block = _images_per_block(TH, TW)
    _, parts = conv_blocked.image_parts(geo.N, per_block, size)
    return (conv_blocked.image_bounds(geo.N, per_block, parts),
            min(per_block, geo.N) * TH * TW)


def _forward_by_images(x, U, bias, has_bias, geo, sc, y):
    """y (N, OC, OH, OW) by ``forward_images``: blocks of about ``IMAGE_BLOCK_TILES``
    tiles dealt out to the threads (``threads.pieces``) in order; each part's V and M are
    its own slices of this thread's scratch slots 0 and 1."""
    TH, TW = _tiles(geo, sc)
    size = sc.K * geo.C * geo.N * TH * TW                       # V of the whole batch
    bounds, Tb = _image_plan(geo, TH, TW, size)
    parts = bounds.shape[0]
    V = _scratch(np, (parts, sc.K, geo.C, Tb), x.dtype, slot=0)
    M = _scratch(np, (parts, sc.K, geo.OC, Tb), x.dtype, slot=1)
    kernel = importlib.import_module(".conv_winograd_images_numba", __package__).forward_images
    with threads.single_blas():
        kernel(sc.m, x, U, bias, has_bias, y, geo.PH0, geo.PW0, TH, TW, bounds, V, M,
               size=size)


def _backward_by_images(x, gy, U, geo, sc, need_w, need_x):
    """(dU (K, OC, C), gx (N, C, H, W)) by ``backward_images``, each None where not asked
    for: the blocks and parts of ``_forward_by_images``; the parts' dU summed in part
    order (deterministic for a given number of threads). x is read for dU, U for gx."""
    TH, TW = _tiles(geo, sc)
    size = sc.K * max(geo.C, geo.OC) * geo.N * TH * TW          # V or Z of the whole batch
    bounds, Tb = _image_plan(geo, TH, TW, size)
    parts = bounds.shape[0]
    dtype = gy.dtype
    unused = np.empty((1, 1, 1, 1), dtype=dtype)                 # stands for arrays not read
    V = _scratch(np, (parts, sc.K, geo.C, Tb), dtype, slot=0)
    Z = _scratch(np, (parts, sc.K, geo.OC, Tb), dtype, slot=1)
    dU = memory.empty((parts, sc.K, geo.OC, geo.C) if need_w else (parts, 1, 1, 1), dtype=dtype)
    gx = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=dtype) if need_x else unused
    UT = (U if need_x else unused[0]).transpose(0, 2, 1)          # (K, C, OC)
    kernel = importlib.import_module(".conv_winograd_images_numba", __package__).backward_images
    with threads.single_blas():
        kernel(sc.m, x if need_w else unused, gy, UT, need_w, need_x, geo.PH0, geo.PW0, TH,
               TW, bounds, V, Z, dU, gx, size=size)
    return (dU.sum(axis=0) if need_w else None), (gx if need_x else None)


def _Z_whole(gy, geo, sc):
    """Z (K, OC, T) of the whole batch, in the calling thread's scratch slot 2 (slot 0 is
    V's, and Z outlives the weight gradient: ``grad_input`` reads it)."""
    TH, TW = _tiles(geo, sc)
    Z = _scratch(np, (sc.K, geo.OC, geo.N * TH * TW), gy.dtype, slot=2)
    sc.kernels().grad_transform(gy, 0, geo.N, 0, TH, TW, Z, size=Z.size)
    return Z


def _saved_U(g, sc):
    """Forward's U when ``grad_weight`` left it in g and it has ``sc``'s components (the
    tile size is chosen per call: a ``tile_size`` changed between forward and backward
    makes the backward transform the weight again), else None."""
    U = getattr(g, "U", None)
    return U if U is not None and U.shape[0] == sc.K else None


# ----------------------------------------------------------------------------- entry points

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) = A^T [U @ V] A + b by images (``runs_by_images``), else block by
    block (or as one block, ``whole_batch``), with ``geo``'s tile size (``_tile_size``);
    saved ``('x', x, U)`` (or ``('x', None, None)`` without ``keep_for_backward``): U
    (K, OC, C), the transformed weight, spares the input gradient a second
    ``weight_transform`` (``grad_weight`` hands it on in g)."""
    sc = _scheme(geo)
    x = np.ascontiguousarray(x)
    U = weight_transform(w, sc.m)                                 # (K, OC, C)
    TH, TW = _tiles(geo, sc)
    y = memory.empty(geo.out_shape, dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)

    if runs_by_images(geo, x.dtype):
        _forward_by_images(x, U, bias, b is not None, geo, sc, y)
    elif whole_batch(geo, x.dtype):
        V = _V_whole(x, geo, sc)                                  # (K, C, T)
        M = matmul(U, V, _scratch(np, (sc.K, geo.OC, V.shape[2]), x.dtype, slot=1))
        sc.kernels().output_transform(M, 0, geo.N, 0, TH, TW, bias, b is not None, y,
                                      size=M.size)
    else:
        def block(n0, n1):
            V = _V_block(x, geo, sc, n0, n1)                      # (K, C, T_b)
            M = matmul(U, V, _scratch(np, (sc.K, geo.OC, V.shape[2]), x.dtype, slot=1))
            sc.kernels().output_transform(M, n0, n1, 0, TH, TW, bias, b is not None, y,
                                          size=M.size)

        _for_blocks(geo, sc, x.dtype, block)
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
    would have stopped the backward pass) or ``weight_source``'s ``('x', x)``. By images
    (``runs_by_images``) and in blocks, when the op says the input gradient follows
    (``g.need_x``) and U is at hand, each block makes its part of gx from its Z (left in
    g as ``g.gx``), so Z is made once per block; by images each thread sums its own
    blocks' Z V^T, and the threads' sums are added in order. As one block
    (``whole_batch``), Z is left in g for ``grad_input``."""
    sc = _scheme(geo)
    x = saved[1]
    if len(saved) > 2 and saved[2] is not None:
        g.U = saved[2]

    if runs_by_images(geo, x.dtype):
        U = _saved_U(g, sc)
        need_x = U is not None and getattr(g, "need_x", False)
        dU, g.gx = _backward_by_images(x, g.gy, U, geo, sc, True, need_x)
    elif whole_batch(geo, x.dtype):
        V = _V_whole(x, geo, sc)                                  # (K, C, T)
        g.Z = Z = _Z_whole(g.gy, geo, sc)                         # (K, OC, T)
        dU = matmul(Z, V.transpose(0, 2, 1), memory.empty((sc.K, geo.OC, geo.C),
                                                          dtype=np.result_type(x, Z)))
    else:
        # When the input gradient follows (g.need_x, set by the op) and forward's U is
        # at hand, each block makes its part of dX from the same Z: Z once per block.
        U = _saved_U(g, sc)
        UT = U.transpose(0, 2, 1) if U is not None and getattr(g, "need_x", False) else None
        gx = None if UT is None else memory.empty((geo.N, geo.C, geo.H, geo.W),
                                                  dtype=np.result_type(g.gy, U))
        TH, TW = _tiles(geo, sc)

        dU = memory.empty((sc.K, geo.OC, geo.C), dtype=np.result_type(x, g.gy))

        def block(n0, n1):
            V = _V_block(x, geo, sc, n0, n1)                      # (K, C, T_b)
            Z = _Z_block(g.gy, geo, sc, n0, n1)                   # (K, OC, T_b)
            matmul(Z, V.transpose(0, 2, 1), dU, accumulate=n0 > 0)   # blocks summed in order
            if gx is not None:                                    # V is done: dV in slot 0
                dV = matmul(UT, Z, _scratch(np, (sc.K, geo.C, Z.shape[2]), gx.dtype, 0))
                sc.kernels().input_scatter(dV, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, gx,
                                           size=dV.size)

        _for_blocks(geo, sc, x.dtype, block)
        g.gx = gx
    return weight_transform_adjoint(dU), (grad_bias(g, geo) if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W): per block (by images: on the block's thread), the tiles'
    B (U^T @ Z_b) B^T added back in place (U from forward when ``grad_weight`` left it in
    g, else transformed here; as one block, Z from ``grad_weight`` when it ran)."""
    if getattr(g, "gx", None) is not None:                        # made by grad_weight
        return g.gx
    sc = _scheme(geo)
    U = _saved_U(g, sc)
    U = weight_transform(w, sc.m) if U is None else U
    if runs_by_images(geo, g.gy.dtype):
        return _backward_by_images(None, g.gy, U, geo, sc, False, True)[1]
    UT = U.transpose(0, 2, 1)                                      # (K, C, OC)
    gx = memory.empty((geo.N, geo.C, geo.H, geo.W), dtype=np.result_type(g.gy, w))
    TH, TW = _tiles(geo, sc)

    if whole_batch(geo, gx.dtype):
        Z = getattr(g, "Z", None)
        Z = _Z_whole(g.gy, geo, sc) if Z is None or Z.shape[0] != sc.K else Z  # (K, OC, T)
        dV = matmul(UT, Z, _scratch(np, (sc.K, geo.C, Z.shape[2]), gx.dtype, slot=0))
        sc.kernels().input_scatter(dV, 0, geo.N, 0, geo.PH0, geo.PW0, TH, TW, gx, size=dV.size)
        return gx

    def block(n0, n1):
        Z = _Z_block(g.gy, geo, sc, n0, n1)                       # (K, OC, T_b)
        dV = matmul(UT, Z, _scratch(np, (sc.K, geo.C, Z.shape[2]), gx.dtype, slot=0))
        sc.kernels().input_scatter(dV, n0, n1, 0, geo.PH0, geo.PW0, TH, TW, gx, size=dV.size)

    _for_blocks(geo, sc, gx.dtype, block)
    return gx


def grad_bias(g, geo):
    """gb (OC,): the sum of dL/dy over (N, OH, OW)."""
    return plane_sums(g.gy)


def weight_source(x, geo):
    """``('x', x)``: grad_weight transforms it block by block."""
    return "x", np.ascontiguousarray(x)
