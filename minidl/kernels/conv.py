"""The conv2d kernel family: the forward pass and the gradients of a 2-D convolution, and the
CPU memory policy around them. ``ops/conv.py`` holds the formulas; this module computes them.

Shape letters (``minidl/geometry.py``'s ``ConvGeometry`` holds them)::

    N   batch size            C   input channels         OC  output channels
    H, W    input size        KH, KW  kernel size        G   groups
    OH, OW  output size       Cg = C / G,  OCg = OC / G,  K = Cg * KH * KW (one window)
    L = N * OH * OW           (one column of the unfolded input per output position)

Entry points (every implementation has them, with the same arguments)::

    forward(x, w, b, geo, keep_for_backward)  -> y (N, OC, OH, OW), saved
    grad_output(gy, geo, products)            -> g: gy as the gradient kernels read it
    grad_weight(g, saved, geo, need_b)        -> gw (OC, Cg, KH, KW), gb (OC,) or None
    grad_input(g, w, geo)                     -> gx (N, C, H, W)
    grad_bias(g, geo)                         -> gb (OC,)  (when no weight gradient is wanted)
    weight_source(x, geo)                     -> saved, made from x without a forward

``saved`` is what the weight gradient needs, or None inside when ``keep_for_backward`` is
False; ``products`` says whether grad_weight or grad_input will run. ``weight_source`` is
for a weight gradient asked for on its own (``ops/conv.py``'s ``Conv2dWeightGradFunction``,
used by higher-order gradients), where no forward kept anything.

The ops get their entry points from ``conv2d_code``: where some taps of the kernel read
only padding at every output (small maps: a 3x3 kernel on a 1x1 map), the kernel is cut
down to the rest first (``ConvGeometry.cropped``) and the implementation chosen for that.

Implementations (``minidl.kernels.registry`` chooses, trying ``direct``, ``depthwise``,
``winograd``, ``blocked`` in that order and falling back to ``reference``; ``use_impl``
forces one):

* ``reference``: im2col -> GEMM -> col2im, the formulas of ``ops/conv.py``'s
  ``Conv2dFunction`` (the im2col calls go through the im2col family: numba or CUDA kernels
  where they apply). Any device, dtype and geometry.
* ``blocked`` (``conv_blocked.py``): the reference's three lines one block of images at a
  time, each block's ``col`` in cache, the blocks on ``minidl.get_num_threads()`` threads
  with one BLAS thread each: NumPy float32/float64, ungrouped, with a ``col`` of at least
  1 MiB (ResNet's layers).
* ``depthwise`` (``conv_depthwise.py``): direct numba loops for depthwise convolutions
  (groups == C == OC: MobileNet's), any kernel, stride, padding and dilation, the (n, c)
  planes or channels split over the threads; the reference makes one product per group.
* ``winograd`` (``conv_winograd.py``): Winograd F(4x4, 3x3) (4x fewer multiplications;
  outputs of at least 8x8) or F(2x2, 3x3) (2.25x fewer), for 3x3 stride-1 ungrouped
  convolutions of at least 16 channels in and out and 4x4 outputs (ResNet's 3x3 layers),
  blocks of images on threads as ``blocked``.
* ``direct`` (``conv_direct.py``): direct-convolution numba kernels, for small channel
  counts on the CPU: NumPy float32/float64, stride 1, dilation 1, groups 1, and (unless
  forced with ``use_impl('direct', family='conv2d')``) ``C*KH*KW <= DIRECT_MAX_K`` and
  ``OC <= DIRECT_MAX_OC``: LeNet's layers; or windows of at most ``DIRECT_SMALL_K`` values
  with ``OC <= DIRECT_SMALL_K_MAX_OC``: the 3-channel stems of ResNet and VGG; never 1x1
  windows. There im2col + GEMM spends its time copying KH*KW shifted copies of the input
  and in products too thin for BLAS.

Threads (``kernels/threads.py``): every matrix product here runs one BLAS thread per
calling thread (``threads.single_blas``); ``blocked`` and ``winograd`` use the cores by
running their products as single-threaded BLAS calls on numba's threads
(``blas.matmul``), beside their numba kernels.

CPU memory policy (the reference's and ``blocked``'s): ``col`` is KH*KW times the size of
x. Forward keeps it for the weight gradient only when it is at most ``KEEP_COL_BYTES``
(32 MiB: the LeNet layers, ResNet-18's stride-2 layers at batch 32, sparing backward one
im2col); larger ones are unfolded again in backward (KH*KW copies of every layer's input
would not fit in memory). A ``col`` that is not kept, and ``dL/dcol``, live in a reused
per-thread scratch buffer (``_Scratch``).
"""
from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np

from ..backend import get_array_module
from . import blas, memory, registry, threads
from .im2col import col2im, im2col

__all__ = ["CONV2D", "conv2d_code", "KEEP_COL_BYTES", "keep_col_bytes", "kept_col_limit",
           "release_scratch", "direct_can_run",
           "direct_pays", "DIRECT_MAX_K", "DIRECT_MAX_OC", "DIRECT_SMALL_K",
           "DIRECT_SMALL_K_MAX_OC"]


# ----------------------------------------------------------------------------- scratch

class _Scratch(threading.local):
    """Per-thread reusable buffers (one per dtype) for the unfolded matrices.

    ``col`` and its gradient live only inside one forward or backward call and are KH*KW
    times the size of the input. A fresh NumPy array that large comes straight from the
    kernel, and its page faults on first touch cost about as much as filling it, so the
    CPU path reuses one buffer, grown to the largest size seen. On the GPU, CuPy's memory
    pool already reuses blocks.
    """

    def __init__(self):
        self.buffers = {}


_SCRATCH = _Scratch()


def _scratch(xp, shape, dtype, slot=0):
    """An uninitialised C-contiguous array of ``shape``; on the CPU a view of this thread's
    scratch buffer number ``slot`` (a kernel needing two at once uses slots 0 and 1),
    valid until the next call (never let it escape the kernel)."""
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    n = math.prod(shape)
    key = (np.dtype(dtype), slot)
    buf = _SCRATCH.buffers.get(key)
    if buf is None or buf.size < n:
        _SCRATCH.buffers.pop(key, None)  # free the old buffer before allocating the new
        buf = _SCRATCH.buffers[key] = np.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


def _matmul(xp, a, b, out=None):
    """a @ b (one batch axis): NumPy's on numba's threads (``blas.matmul``, the threading
    policy), CuPy's on the GPU."""
    if xp is not np:
        return xp.matmul(a, b, out=out)
    if out is None:
        out = memory.empty(a.shape[:-1] + b.shape[-1:], dtype=np.result_type(a, b))
    return blas.matmul(a, b, out)


def release_scratch():
    """Free this thread's scratch buffers (they otherwise stay as large as the largest
    unfolded input seen)."""
    _SCRATCH.buffers.clear()


# Unfolded inputs up to this size are kept from forward for the weight gradient (sparing
# backward one im2col); larger ones are unfolded again in backward. Measured with the
# blocked implementation (fwd + bwd, F.conv2d at batch 32, unfold again -> keep, ms, in
# one process next to PyTorch): ResNet-18's 64->128 3x3 s2 at 32x32 (col 18.9 MB) 29.8 ->
# 29.0 and 27.8 -> 27.0, 128->256 at 16x16 (9.4 MB) 25.3 -> 24.5 and 28.5 -> 26.0, its
# 1x1 s2 64->128 6.6 -> 5.4 and 8.6 -> 7.5; the training step 623 -> 604 ms. At batch
# 128 a 75 MB col still gained 1 % (110 -> 108 ms): not worth its memory.
KEEP_COL_BYTES = 32 * 2**20


_KEEP_COL = threads.Setting(KEEP_COL_BYTES)


def keep_col_bytes(limit):
    """Keep ``col`` up to ``limit`` bytes instead of ``KEEP_COL_BYTES`` (0: always unfold
    again in backward; a huge value: always keep it); undone at the end of a ``with``
    block when used as one. Tests use it to run both paths on small inputs."""
    return _KEEP_COL.set(int(limit))


def kept_col_limit():
    """The largest ``col`` in bytes forward keeps now (``keep_col_bytes``)."""
    return _KEEP_COL.value


# ----------------------------------------------------------------------------- reference

def forward(x, w, b, geo, keep_for_backward=True):
    """y (N, OC, OH, OW) = conv2d(x, w) + b as im2col -> one GEMM per group; and ``saved``:
    ``('col', col)`` when the unfolded input is kept for the weight gradient (small),
    ``('x', x)`` when backward must unfold x again, ``('x', None)`` when no weight
    gradient is wanted (``keep_for_backward`` False).

        col = im2col(x)                      (C, KH, KW, N, OH, OW) -> (G, K, L)
        Y   = Wm @ col                       (G, OCg, L) == (OC, N, OH*OW)
        y   = Y.transpose(1, 0, 2) + b       (N, OC, OH*OW), one pass
    """
    xp = get_array_module(x, w)
    G, OC, N, OH, OW = geo.G, geo.OC, geo.N, geo.OH, geo.OW
    OCg, K, L = OC // G, (geo.C // G) * geo.KH * geo.KW, N * OH * OW
    keep_col = keep_for_backward and math.prod(geo.col_shape) * x.dtype.itemsize <= kept_col_limit()
    col = im2col(x, geo, out=None if keep_col else _scratch(xp, geo.col_shape, x.dtype))
    Y = _matmul(xp, w.reshape(G, OCg, K), col.reshape(G, K, L))   # (G, OCg, L)
    Yt = Y.reshape(OC, N, OH * OW).transpose(1, 0, 2)            # (N, OC, OH*OW), a view
    y = xp.empty((N, OC, OH * OW), dtype=Y.dtype)
    if b is not None:
        xp.add(Yt, b.reshape(OC, 1), out=y)                      # transpose and bias in one pass
    else:
        y[...] = Yt
    if keep_col:
        return y.reshape(N, OC, OH, OW), ("col", col)
    return y.reshape(N, OC, OH, OW), ("x", x if keep_for_backward else None)


def grad_output(gy, geo, products=True):
    """gy (N, OC, OH, OW) and, when ``products`` (a weight or input gradient will be
    computed), gY = dL/dY in the product's layout (G, OCg, L): one transposed copy, shared."""
    gY = None
    if products:
        xp = get_array_module(gy)
        gY = xp.ascontiguousarray(gy.reshape(geo.N, geo.OC, geo.OH * geo.OW).transpose(1, 0, 2))
        gY = gY.reshape(geo.G, geo.OC // geo.G, geo.N * geo.OH * geo.OW)
    return SimpleNamespace(gy=gy, gY=gY)


def grad_weight(g, saved, geo, need_b=True):
    """gw (OC, Cg, KH, KW) = gY @ col^T per group, and gb (OC,) = gY summed over L (None
    unless ``need_b``).

    Computed as (col @ gY^T)^T: the same product, but BLAS is faster with the long L axis
    as the inner dimension of the left operand (``benchmarks/RESULTS.md``).
    """
    xp = get_array_module(g.gY)
    G, OC = geo.G, geo.OC
    Cg, K, L = geo.C // G, (geo.C // G) * geo.KH * geo.KW, geo.N * geo.OH * geo.OW
    kind, kept = saved
    if kind == "col":
        col = kept
    else:                                                         # unfold again
        col = im2col(kept, geo, out=_scratch(xp, geo.col_shape, kept.dtype))
    gwT = _matmul(xp, col.reshape(G, K, L), g.gY.transpose(0, 2, 1))   # (G, K, OCg)
    gw = gwT.transpose(0, 2, 1).reshape(OC, Cg, geo.KH, geo.KW)         # small copy
    return gw, (grad_bias(g, geo) if need_b else None)


def grad_input(g, w, geo):
    """gx (N, C, H, W) = col2im(dcol), dcol = Wm^T @ gY (G, K, L), in the scratch buffer."""
    xp = get_array_module(g.gY)
    G, OC = geo.G, geo.OC
    K, L = (geo.C // G) * geo.KH * geo.KW, geo.N * geo.OH * geo.OW
    wm = w.reshape(G, OC // G, K)
    gcol = _matmul(xp, wm.transpose(0, 2, 1), g.gY, out=_scratch(xp, (G, K, L), g.gY.dtype))
    return col2im(gcol.reshape(geo.col_shape), geo)


def grad_bias(g, geo):
    """gb (OC,): the sum of dL/dy over (N, OH, OW), from gY when it was made."""
    if g.gY is not None:
        return g.gY.sum(axis=2).reshape(geo.OC)
    return plane_sums(g.gy)


def plane_sums(gy):
    """(C,): gy (N, C, H, W) summed over (N, H, W), a bias gradient (every implementation
    takes it from here). Each image's planes times a ones vector, then the images added:
    NumPy's sum over axes (0, 2, 3) pays per plane ((32, 512, 4, 4) float32: 314 -> 37
    us; (32, 64, 32, 32): 359 -> 121). float16 keeps that sum (its product would add in
    float16)."""
    if gy.dtype.kind != "f" or gy.dtype.itemsize < 4:
        return gy.sum(axis=(0, 2, 3))
    xp = get_array_module(gy)
    N, C, H, W = gy.shape
    ones = xp.ones(H * W, dtype=gy.dtype)
    with threads.single_blas(gy.size):   # the threading policy (kernels/threads.py)
        return (gy.reshape(N, C, H * W) @ ones).sum(axis=0)


def weight_source(x, geo):
    """``saved`` for ``grad_weight`` from x (N, C, H, W) alone: ``('x', x)``, unfolded by
    grad_weight into the scratch buffer (a one-off weight gradient keeps nothing)."""
    return "x", x


# ----------------------------------------------------------------------------- direct

# The direct kernels beat im2col + GEMM below these sizes (``benchmarks/RESULTS.md``:
# forward + backward, direct time / im2col time over a dozen shapes); above them the
# products have enough rows for BLAS.
DIRECT_MAX_K = 400          # C * KH * KW, the length of one window
DIRECT_MAX_OC = 32          # output channels
# Windows this short (3-channel 3x3 stems, 1-channel 5x5) leave im2col + GEMM a product of
# K rows, too thin for BLAS, up to many more output channels: ResNet-18's 3->64 stem,
# forward + weight gradient at batch 32, direct 3.1 ms against blocked 5.3 (PyTorch 3.1);
# 3->128 6.8 against 8.3; from K = 72 (8 channels) on the two tie, from K = 144 blocked wins.
DIRECT_SMALL_K = 32
DIRECT_SMALL_K_MAX_OC = 128
# Never for 1x1 windows: such a layer is one plain product per image (``conv_blocked``'s
# pointwise path reads x in place), where the direct kernels' batch-last transposes cost
# more than the product. MobileNet v2's projections at batch 32, eval / fwd + bwd, ms:
# 144->24 at 8x8 direct 0.49 / 1.32, blocked 0.09 / 0.38 (PyTorch 0.14 / 0.66); 192->32 at
# 4x4 0.32 / 0.75 against 0.12 / 0.33; GoogLeNet's 192->16 at 32x32 1.48 / 7.48 against
# 1.65 / 7.49 (a tie).


def direct_can_run(x, w, geo):
    """Whether the direct kernels can compute this convolution at all: NumPy arrays of one
    float dtype (float32/float64), stride 1, dilation 1, groups 1."""
    return (geo.G == 1 and geo.stride == (1, 1) and geo.dilation == (1, 1)
            and type(x) is np.ndarray and type(w) is np.ndarray
            and x.dtype in registry.FAST_DTYPES and w.dtype == x.dtype)


def direct_pays(geo):
    """Whether the direct kernels are faster than im2col + GEMM here: small channel counts,
    C*KH*KW <= DIRECT_MAX_K (400) and OC <= DIRECT_MAX_OC (32), or a window of at most
    DIRECT_SMALL_K (32) values and OC <= DIRECT_SMALL_K_MAX_OC (128), never for a 1x1
    window. With more output channels and longer windows the GEMM has enough rows for BLAS."""
    if geo.KH == geo.KW == 1:
        return False
    K = geo.C * geo.KH * geo.KW
    return ((K <= DIRECT_MAX_K and geo.OC <= DIRECT_MAX_OC)
            or (K <= DIRECT_SMALL_K and geo.OC <= DIRECT_SMALL_K_MAX_OC))


CONV2D = registry.family("conv2d", __doc__, preference=("direct", "depthwise", "winograd",
                                                           "blocked"))
CONV2D.register("reference", lambda: SimpleNamespace(
    forward=forward, grad_output=grad_output, grad_weight=grad_weight, grad_input=grad_input,
    grad_bias=grad_bias, weight_source=weight_source))
CONV2D.register("direct", registry.numba_module("minidl.kernels.conv_direct"), device="cpu",
                supports=lambda x, w, *, geo, **_: direct_can_run(x, w, geo),
                pays=lambda x, w, *, geo, **_: direct_pays(geo))

# The blocked implementation builds on this module's reference (hence imported last).
from . import conv_blocked  # noqa: E402

CONV2D.register("blocked", registry.numba_module("minidl.kernels.conv_blocked"), device="cpu",
                supports=lambda x, w, *, geo, **_: conv_blocked.blocked_can_run(x, w, geo),
                pays=lambda x, w, *, geo, **_: conv_blocked.blocked_pays(x, geo))

# Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 convolutions (conv_winograd.py:
# its kernels, and numba, are imported on first use).
from . import conv_winograd  # noqa: E402

CONV2D.register("winograd", registry.numba_module("minidl.kernels.conv_winograd"), device="cpu",
                supports=lambda x, w, *, geo, **_: conv_winograd.winograd_can_run(x, w, geo),
                pays=lambda x, w, *, geo, **_: conv_winograd.winograd_pays(geo))

# Direct loops for depthwise convolutions, groups == C == OC (conv_depthwise.py: its
# kernels, and numba, are imported on first use).
from . import conv_depthwise  # noqa: E402

CONV2D.register("depthwise", registry.numba_module("minidl.kernels.conv_depthwise"),
                device="cpu",
                supports=lambda x, w, *, geo, **_: conv_depthwise.depthwise_can_run(x, w, geo),
                pays=lambda x, w, *, geo, **_: conv_depthwise.depthwise_pays(geo))


# ----------------------------------------------------------------------------- cropped kernels

def conv2d_code(a, b, geo):
    """The entry points ``CONV2D.code(a, b, geo=geo)`` chooses (a, b: the arrays the choice
    looks at, x and w or x and gy), for the kernel cut down to the taps that read the
    input when some read only padding (``ConvGeometry.cropped``: a 3x3 kernel on a 1x1
    map becomes its centre, a 1x1 convolution; a 5x5 one on a 2x2 map with padding 2 its
    central 3x3). The implementation is chosen for the cropped geometry; the returned
    entry points take the full one, as every caller passes it (``_Cropped``). Under
    ``use_impl`` nothing is cropped: the forced implementation runs the geometry given
    (tests compare implementations on it, and the forced reference is the plain
    definition)."""
    cut = None if CONV2D.forced() is not None else geo.cropped()
    if cut is None:
        return CONV2D.code(a, b, geo=geo)
    geo_c, taps = cut
    return _Cropped(CONV2D.code(a, b, geo=geo_c), geo_c, taps)


class _Cropped:
    """An implementation's entry points, called with a convolution's geometry and weight,
    run on the cropped ones (``ConvGeometry.cropped``): the same output, input gradient
    and bias gradient, and the weight gradient with zeros at the taps cut (they only
    ever multiplied padding). Measured on GoogLeNet's 1x1 and 2x2 maps (batch 32,
    forward, float32): (192, 1, 1) 3x3 -> 384 0.89 -> 0.18 ms (a 1x1 convolution now),
    (24, 2, 2) 5x5 -> 64 0.26 -> 0.21 ms."""

    def __init__(self, code, geo, taps):
        self.code, self.geo = code, geo            # geo: the cropped geometry
        self.rows, self.cols = slice(taps[0], taps[1]), slice(taps[2], taps[3])

    def _w(self, w):
        """w[:, :, kh0:kh1, kw0:kw1], C-contiguous."""
        return get_array_module(w).ascontiguousarray(w[:, :, self.rows, self.cols])

    def forward(self, x, w, b, geo, keep_for_backward=True):
        return self.code.forward(x, self._w(w), b, self.geo, keep_for_backward)

    def grad_output(self, gy, geo, products=True):
        return self.code.grad_output(gy, self.geo, products)

    def grad_weight(self, g, saved, geo, need_b=True):
        gw, gb = self.code.grad_weight(g, saved, self.geo, need_b)
        full = get_array_module(gw).zeros((geo.OC, geo.C // geo.G, geo.KH, geo.KW),
                                          dtype=gw.dtype)
        full[:, :, self.rows, self.cols] = gw
        return full, gb

    def grad_input(self, g, w, geo):
        return self.code.grad_input(g, self._w(w), self.geo)

    def grad_bias(self, g, geo):
        return self.code.grad_bias(g, self.geo)

    def weight_source(self, x, geo):
        return self.code.weight_source(x, self.geo)
