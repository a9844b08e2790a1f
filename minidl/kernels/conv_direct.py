"""Direct convolution for small channel counts (CPU, numba): forward, input, weight and
bias gradients, without the unfolded ``col`` matrix.

The same convolution as ``minidl.ops.conv`` (cross-correlation; shape letters there and
in ``kernels/im2col.py``), restricted to what the kernels handle: stride 1, dilation 1,
groups 1, NumPy float32/float64 arrays. Padding is any (top, bottom), (left, right)::

    x  (N, C, H, W)    w (OC, C, KH, KW)    b (OC,)    y, gy (N, OC, OH, OW)
    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * xpad[n, c, i + kh, j + kw]

Why: at LeNet's sizes (1->6 and 6->16 channels, 5x5) im2col + GEMM spends its time
copying KH*KW = 25 shifted copies of the input and in matrix products far too thin for
BLAS (6 or 16 rows). A direct loop reads each input once per 4 output channels. Measured
on the 2-core Zen 4, one thread, float32, batch 100, conv2d forward + backward through
autograd: LeNet's conv1 (no input gradient) 3.3 -> 1.2 ms, conv2 4.0 -> 2.1 ms; forward
alone 1.24 -> 0.39 and 1.38 -> 0.68 ms. The kernels run at 30-40 G multiply-adds/s, near
the core's 16 float32 FMAs per cycle.

Taps
----
Each kernel sees the weights as a matrix ``wm = w.reshape(OC, K)``, ``K = C*KH*KW``, and
tap ``t = (c, kh, kw)`` as an offset ``off[t]`` into the (padded) source array, so that a
run of L outputs is a sum of K shifted runs of the source::

    y[o, p] = b[o] + sum_t wm[o, t] * src[base + off[t] + p]         p = 0 .. L-1
    gw[o, t] = sum over runs and p of gy[o, p] * src[base + off[t] + p]

Two layouts make those runs contiguous (``choose_layout`` picks one per shape):

* ``'planar'``: x as it comes, one image at a time. A run is a whole image plane read
  "wide": p = i*Wp + j over the padded width Wp, of which the columns j >= OW are garbage
  (not copied out; in the weight gradient gy is spread into a zeroed wide plane). Costs
  (Wp - OW) / OW extra work: 14% at LeNet's first layer (32 vs 28 columns), 40% at its
  second (14 vs 10), where the runs are also short.
* ``'batch_last'``: x transposed to (C, Hp, Wp, N), the batch innermost. A run is one
  output row for every image at once, OW*N long, with no garbage; the price is the
  transposes of x, y, gy and gx to and from NCHW (0.05-0.1 ms each at LeNet's conv2).
  LeNet's conv2 forward + backward: 2.1 ms batch-last, 4.4 planar; conv1 (no input
  gradient): 1.5 batch-last (its 28x28 output planes are slow to transpose), 0.8 planar.

Input gradient. ``gx[n, c, i, j] = sum_{o, kh, kw} w[o, c, kh, kw] gy[n, o, i + PH0 - kh,
j + PW0 - kw]`` (the forward's adjoint, written as a gather so that no two threads ever
add into the same gx element):

* planar: the forward kernel on gy zero-padded by (KH-1, KW-1) (less the forward's
  padding) with the flipped, transposed weights ``w[:, :, ::-1, ::-1]`` (C, OC, KH, KW).
  Simple, but the padding zeros cost work.
* batch-last: ``batchlast_grad_input`` takes the taps (kh, o) of one kw at a time, so that
  for one gx row the valid kh are a range and the valid columns one run: no padded copy
  of gy, no product with a padding zero (1.8x faster than the padded way at LeNet's conv2).

The bias gradient comes out of the weight-gradient kernel (the sum of gy).

Threads. The kernels follow minidl's numba policy (``minidl/kernels/__init__.py``): serial
unless MINIDL_NUMBA_PARALLEL=1. ``set_threads(n)`` (opt-in, default 1) instead cuts each
kernel call into n pieces (image ranges, output rows, tap blocks) run on n Python threads;
the kernels release the GIL, and idle workers sleep rather than spin, so another process
taking a core costs only that core's share. Measured on the idle 2-core Zen 4, LeNet's
layers forward + backward: conv1 0.81 -> 0.56 ms, conv2 2.06 -> 1.32 ms (numba's parallel
build: 0.83 -> 0.56 and 1.97 -> 1.22, but 16 and 24 ms as soon as another process wanted
a core); the whole training step 4.97 -> 4.11 ms. With the machine busy, 0.86 -> 0.95 and
2.33 -> 2.38 ms: no gain, no collapse.

Speed notes are in ``_conv_direct_nb.py`` (the numba kernels, imported on first use).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from . import NUMBA_PARALLEL

__all__ = ["use_direct", "applicable", "force_impl", "choose_layout", "conv2d_forward",
           "conv2d_backward", "set_threads", "numba_available", "DIRECT_MAX_K",
           "DIRECT_MAX_OC"]

# The direct kernels beat im2col + GEMM below these sizes (measured on the CPU: see
# ``applicable``). Above them the products are wide enough for BLAS.
DIRECT_MAX_K = 400          # C * KH * KW, the length of one window
DIRECT_MAX_OC = 32          # output channels

# batch_last when the output rows are shorter than this (see choose_layout)
BATCH_LAST_MAX_OW = 16

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_nb = None            # the compiled-kernels module once imported
_nb_error = None


def _kernels():
    global _nb, _nb_error
    if _nb is None and _nb_error is None:
        try:
            from . import _conv_direct_nb as mod  # noqa: PLC0415 - numba only when needed
            _nb = mod
        except ImportError as exc:
            _nb_error = exc
    if _nb is None:
        raise RuntimeError(f"conv_direct: needs numba ({_nb_error})")
    return _nb


def numba_available():
    try:
        _kernels()
    except RuntimeError:
        return False
    return True


def applicable(x, weight, stride, dilation, groups):
    """Whether ``conv2d(x, weight, ...)`` takes the direct kernels (``impl='auto'``).

    NumPy float32/float64 arrays of one dtype, stride 1, dilation 1, groups 1, and small
    channel counts: C*KH*KW <= DIRECT_MAX_K (400) and OC <= DIRECT_MAX_OC (32).

    Measured on the 2-core Zen 4, one thread, float32, conv2d forward + backward with all
    three gradients, direct time / im2col time (N, C->OC, HxW, kernel): LeNet's
    (100, 1->6, 32x32, 5x5) 0.42 and (100, 6->16, 14x14, 5x5) 0.56; (32, 3->16, 32x32, 3x3)
    0.56; (32, 8->16, 32x32, 5x5) 0.30; (32, 16->32, 16x16, 3x3) 0.87; (32, 16->32, 16x16,
    5x5, K = 400) 0.76; (32, 40->32, 16x16, 3x3, K = 360) 0.89; but (32, 16->48, 16x16, 3x3)
    1.06, (32, 32->64, 16x16, 3x3) 1.03 and (32, 64->64, 8x8, 3x3, K = 576) 1.09: with
    more output channels the GEMM has enough rows for BLAS. (32, 3->64, 32x32, 3x3) would
    still win (0.70); the rule keeps to the simple bound.
    """
    OC, Cg, KH, KW = weight.shape
    return (Cg * KH * KW <= DIRECT_MAX_K and OC <= DIRECT_MAX_OC
            and _supported(x, weight, stride, dilation, groups))


_default_impl = "auto"


@contextlib.contextmanager
def force_impl(impl):
    """``with force_impl('im2col'):`` makes every conv2d in the block take that path:
    'auto' (``applicable`` decides), 'im2col' (the reference, im2col + GEMM) or 'direct'
    (the direct kernels wherever they can run at all: any size, but still only NumPy
    float arrays with stride 1, dilation 1, groups 1). For tests and comparisons."""
    global _default_impl
    if impl not in ("auto", "im2col", "direct"):
        raise ValueError(f"force_impl: impl must be 'auto', 'im2col' or 'direct', got {impl!r}")
    previous, _default_impl = _default_impl, impl
    try:
        yield
    finally:
        _default_impl = previous


def _supported(x, weight, stride, dilation, groups):
    return (groups == 1 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and type(x) is np.ndarray and type(weight) is np.ndarray
            and x.dtype in _FLOATS and weight.dtype == x.dtype and numba_available())


def use_direct(x, weight, stride, dilation, groups):
    """Whether conv2d takes the direct kernels, following ``force_impl`` (default
    'auto': ``applicable``)."""
    if _default_impl == "im2col":
        return False
    if _default_impl == "direct":
        return _supported(x, weight, stride, dilation, groups)
    return applicable(x, weight, stride, dilation, groups)


def choose_layout(OW):
    """'batch_last' for output rows shorter than BATCH_LAST_MAX_OW (16), else 'planar'.

    The planar layout wastes (KW - 1) / OW of its work on garbage columns and runs short
    loops on small planes; the batch-last layout pays for transposing x, y, gy and gx.
    Measured (forward + backward, one thread, 15 shapes), batch-last / planar time by OW:
    5: 0.25, 8: 0.55-0.63, 10 (LeNet's conv2): 0.49, 12: 0.60; 16: 1.07-1.25, 20: 1.14,
    24: 1.44, 28 (LeNet's conv1): 1.1-1.2, 32: 1.6-2.2, 64: 1.48.
    """
    return "batch_last" if OW < BATCH_LAST_MAX_OW else "planar"


@functools.lru_cache(maxsize=64)
def _offsets(C, Hs, Ws, KH, KW, step):
    """off[t], t = (c, kh, kw) flattened: ((c*Hs + kh)*Ws + kw) * step, as intp."""
    c, kh, kw = np.meshgrid(np.arange(C), np.arange(KH), np.arange(KW), indexing="ij")
    off = (((c * Hs + kh) * Ws + kw) * step).reshape(-1).astype(np.intp)
    off.flags.writeable = False
    return off


def _chunks(N):
    """How many image chunks the planar kernels split the batch into (1 when serial)."""
    if not NUMBA_PARALLEL:
        return 1
    import numba  # noqa: PLC0415
    return max(1, min(N, numba.get_num_threads()))


# Python threads (opt-in, see set_threads and the module doc): the kernels release the
# GIL (nogil=True), so pieces of one call can run on several Python threads. Idle workers
# sleep on a lock instead of spinning like OpenMP's and OpenBLAS's threads.
THREADS = 1
_pool = None


def set_threads(n):
    """Run each direct-convolution kernel as ``n`` pieces on ``n`` threads (1: inline)."""
    global THREADS, _pool
    n = int(n)
    if n < 1:
        raise ValueError(f"conv_direct.set_threads: n must be >= 1, got {n}")
    if _pool is not None and n != THREADS:
        _pool.shutdown()
        _pool = None
    THREADS = n


def _ranges(n):
    """[0, n) as up to THREADS nearly equal, non-empty (start, stop) ranges."""
    k = max(1, min(THREADS, n))
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


def _run(fn, calls):
    """fn(*args) for every args in ``calls``: the first on this thread, the others on the
    worker threads; returns when all are done."""
    global _pool
    if len(calls) == 1:
        fn(*calls[0])
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
        _pool = ThreadPoolExecutor(max_workers=THREADS - 1, thread_name_prefix="conv_direct")
    futures = [_pool.submit(fn, *args) for args in calls[1:]]
    fn(*calls[0])
    for f in futures:
        f.result()


def _pad_planar(x, pads):
    (PH0, PH1), (PW0, PW1) = pads
    if PH0 or PH1 or PW0 or PW1:
        return np.pad(x, ((0, 0), (0, 0), (PH0, PH1), (PW0, PW1)))
    return np.ascontiguousarray(x)


def _to_batch_last(x, pads):
    """(N, C, H, W) -> zero-padded (C, H + PH0 + PH1, W + PW0 + PW1, N), one copy."""
    (PH0, PH1), (PW0, PW1) = pads
    N, C, H, W = x.shape
    xt = x.transpose(1, 2, 3, 0)
    if not (PH0 or PH1 or PW0 or PW1):
        return np.ascontiguousarray(xt)
    out = np.zeros((C, H + PH0 + PH1, W + PW0 + PW1, N), dtype=x.dtype)
    out[:, PH0:PH0 + H, PW0:PW0 + W] = xt
    return out


def _forward(src, wm, b, KH, KW, out_hw, layout):
    """The forward kernel on an already padded source (planar (N, C, Hs, Ws) or
    batch-last (C, Hs, Ws, N)); returns (N, OC, OH, OW) or (OC, OH, OW, N)."""
    nb = _kernels()
    OC = wm.shape[0]
    OH, OW = out_hw
    if layout == "planar":
        N, C, Hs, Ws = src.shape
        y = np.empty((N, OC, OH, OW), dtype=src.dtype)
        off = _offsets(C, Hs, Ws, KH, KW, 1)
        _run(nb.planar_forward, [(src[a:e], wm, b, y[a:e], off, _chunks(e - a))
                                 for a, e in _ranges(N)])
    else:
        C, Hs, Ws, N = src.shape
        y = np.empty((OC, OH, OW, N), dtype=src.dtype)
        off = _offsets(C, Hs, Ws, KH, KW, N)
        _run(nb.batchlast_forward, [(src, wm, b, y, off, a, e) for a, e in _ranges(OH)])
    return y


@functools.lru_cache(maxsize=64)
def _grad_input_offsets(OC, OH, OW, KH, KW, N):
    """off[t], t = (kw, kh, o) flattened: (o*OH - kh) * OW*N (see batchlast_grad_input)."""
    kw, kh, o = np.meshgrid(np.arange(KW), np.arange(KH), np.arange(OC), indexing="ij")
    off = ((o * OH - kh) * OW * N).reshape(-1).astype(np.intp)
    off.flags.writeable = False
    return off


def _batchlast_grad_input(gyT, w, pads, in_hw):
    """gx (N, C, H, W) from gyT (OC, OH, OW, N) (``batchlast_grad_input``: no padded gy,
    no product with a padding zero; 1.8x faster at LeNet's conv2 than the forward
    kernel on a zero-padded gy)."""
    OC, C, KH, KW = w.shape
    _, OH, OW, N = gyT.shape
    H, W = in_hw
    (PH0, _), (PW0, _) = pads
    wm = np.ascontiguousarray(w.transpose(1, 3, 2, 0)).reshape(C, KW * KH * OC)
    gxT = np.empty((C, H, W, N), dtype=gyT.dtype)
    off = _grad_input_offsets(OC, OH, OW, KH, KW, N)
    _run(_kernels().batchlast_grad_input, [(gyT, wm, gxT, off, KH, KW, PH0, PW0, a, e)
                                           for a, e in _ranges(H)])
    return np.ascontiguousarray(gxT.transpose(3, 0, 1, 2))


def conv2d_forward(x, w, b, pads, layout=None):
    """y (N, OC, OH, OW) and the saved source for ``conv2d_backward``.

    x (N, C, H, W), w (OC, C, KH, KW), b (OC,) or None, pads ((PH0, PH1), (PW0, PW1)).
    layout: None (``choose_layout``), 'planar' or 'batch_last'. Returns ``(y, saved)``,
    ``saved = (layout, src)`` with src the padded input in that layout.
    """
    OC, C, KH, KW = w.shape
    N, _, H, W = x.shape
    OH = H + pads[0][0] + pads[0][1] - KH + 1
    OW = W + pads[1][0] + pads[1][1] - KW + 1
    layout = layout or choose_layout(OW)
    wm = np.ascontiguousarray(w.reshape(OC, C * KH * KW))
    b = np.zeros(OC, dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    if layout == "planar":
        src = _pad_planar(x, pads)
        y = _forward(src, wm, b, KH, KW, (OH, OW), layout)
    elif layout == "batch_last":
        src = _to_batch_last(x, pads)
        y = _forward(src, wm, b, KH, KW, (OH, OW), layout).transpose(3, 0, 1, 2)
        y = np.ascontiguousarray(y)
    else:
        raise ValueError(f"conv_direct: layout must be 'planar' or 'batch_last', got {layout!r}")
    return y, (layout, src)


def conv2d_backward(saved, w, gy, pads, in_hw, need_x=True, need_w=True, need_b=True):
    """(gx, gw, gb) for y = conv2d_forward(x, w, b, pads); None where not needed.

    saved: what ``conv2d_forward`` returned (the padded source; only read for gw).
    gy (N, OC, OH, OW); in_hw: x's (H, W). gx (N, C, H, W), gw like w, gb (OC,).
    """
    layout, src = saved
    nb = _kernels()
    OC, C, KH, KW = w.shape
    N, _, OH, OW = gy.shape
    H, W = in_hw
    (PH0, _), (PW0, _) = pads
    zero = gy.dtype.type(0)
    gy = np.ascontiguousarray(gy)
    gx = gw = gb = None
    gyT = None
    if need_w:
        K = C * KH * KW
        if layout == "planar":            # partial sums per image chunk, added here
            ranges = _ranges(N)
            c = _chunks(N) if len(ranges) == 1 else 1
            gwp = np.empty((len(ranges) * c, OC, K), dtype=gy.dtype)
            gbp = np.empty((len(ranges) * c, OC), dtype=gy.dtype)
            off = _offsets(C, *src.shape[2:], KH, KW, 1)
            _run(nb.planar_grad_weight, [(src[a:e], gy[a:e], gwp[i * c:(i + 1) * c],
                                          gbp[i * c:(i + 1) * c], off, zero)
                                         for i, (a, e) in enumerate(ranges)])
            gwm, gb = (gwp[0], gbp[0]) if len(gwp) == 1 else (gwp.sum(0), gbp.sum(0))
        else:
            gyT = np.ascontiguousarray(gy.transpose(1, 2, 3, 0))
            gwm = np.empty((OC, K), dtype=gy.dtype)
            gb = np.empty(OC, dtype=gy.dtype)
            off = _offsets(C, *src.shape[1:3], KH, KW, N)
            _run(nb.batchlast_grad_weight, [(src, gyT, gwm, gb, off, zero, a, e)
                                            for a, e in _ranges((K + 3) // 4)])
        gw = gwm.reshape(OC, C, KH, KW)
    elif need_b:
        gb = gy.sum(axis=(0, 2, 3))
    if not need_b:
        gb = None
    if need_x and layout == "planar":
        # gx = conv(gy zero-padded so that gpad[i + KH-1 - PH0] = gy[i], w flipped, C <-> OC)
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(C, -1)
        top, left = KH - 1 - PH0, KW - 1 - PW0
        Hg, Wg = H + KH - 1, W + KW - 1
        # the part of gy that lands inside the (Hg, Wg) canvas (a large padding crops gy)
        i0, j0 = max(0, -top), max(0, -left)
        i1, j1 = min(OH, Hg - top), min(OW, Wg - left)
        gpad = np.zeros((N, OC, Hg, Wg), dtype=gy.dtype)
        gpad[:, :, top + i0:top + i1, left + j0:left + j1] = gy[:, :, i0:i1, j0:j1]
        gx = _forward(gpad, wf, np.zeros(C, dtype=gy.dtype), KH, KW, (H, W), layout)
    elif need_x:
        if gyT is None:
            gyT = np.ascontiguousarray(gy.transpose(1, 2, 3, 0))
        gx = _batchlast_grad_input(gyT, w, pads, (H, W))
    return gx, gw, gb

