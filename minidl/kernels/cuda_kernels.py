"""CuPy kernels: the GPU fast paths of the convolution, pooling, batch-norm, tanh and
cross-entropy families, behind the same signatures as their NumPy references.

Every kernel here is a CuPy ``ElementwiseKernel``: CUDA C++ run by one GPU thread per
OUTPUT element, ``i`` being that element's flat (C-order) index. Inputs marked ``raw``
are whole arrays the thread reads at indices it computes; the others are read (or
written) at ``i``. Every array is passed flattened (a 1-D C-contiguous view), so a flat
index means the same thing in every kernel. (CuPy reserves ``i``, ``n`` and names that
start with ``_``: the image index of a batch is ``b`` here.) Each family's readable definition stays the NumPy reference next to
its dispatcher (``kernels/im2col.py``, ``kernels/pool.py``, ``kernels/batchnorm.py``, ...),
and the kernels are tested against it.

Gather, never scatter. The backward passes of im2col and pooling add many window
entries into one input pixel. Written as a scatter (one thread per window entry, atomic
adds) the result depends on the order the atomics land in, so two runs differ in the
last bits. Here every backward kernel runs one thread per INPUT element, which finds the
windows that read it and sums their entries in a fixed order (kernel rows, then
columns): deterministic, no atomics, no zero-fill pass. A window ``o`` reads pixel
``h`` at tap ``k`` when ``h = o*S - P + k*D``; so for each tap, ``o = (h + P - k*D) / S``
when that divides exactly and lands in ``[0, O)``.

Fusion. A chain of CuPy array expressions launches one kernel per operator and writes a
temporary array each time; the kernels below fuse the chains that run every step:
batch norm's normalisation (``(x - mean) * a + b``) and its input gradient (one kernel
instead of six), tanh's gradient ``gy * (1 - y*y)`` (one instead of three), and
cross-entropy's gradient ``G * (softmax - onehot)`` (one instead of eight). GEMMs go to
cuBLAS through ``cupy.matmul`` (``kernels/im2col.py``'s callers), reductions to CuPy's.

CuPy itself is reached only through ``minidl.backend`` (imported there, lazily), and the
kernels are compiled on first use (CuPy caches the binaries on disk). ``use_kernel_class``
lets the test suite run these very CUDA sources on the CPU (``tests/cuda_emulator.py``
compiles them as C++ loops over ``i``), so their index arithmetic is checked against the
references on every machine; the GPU tests (``pytest -m gpu``) run them on the device.

The sources use a common subset of CUDA C++ and C++: ``long long`` for flat offsets
(arrays above 2**31 elements are fine), ``int`` for coordinates, ``isnan``/``exp`` on T.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend

__all__ = [
    "available", "use_kernel_class",
    "im2col", "col2im",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "bn_normalize", "bn_input_grad", "tanh_backward", "cross_entropy_backward",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# (in_params, out_params, operation) of each kernel, by name.
SOURCES = {}

# The geometry of a 2-D window op, passed to every conv/pooling kernel in this order.
_GEOMETRY = ("int32 H, int32 W, int32 KH, int32 KW, int32 OH, int32 OW, "
             "int32 SH, int32 SW, int32 PH, int32 PW, int32 DH, int32 DW")

# -- convolution: im2col / col2im (layout: kernels/im2col.py) -----------------------------

SOURCES["im2col"] = (
    "raw T x, int32 N, int32 C, " + _GEOMETRY,
    "T col",
    r"""
    // col (C, KH, KW, N, OH, OW)[i] = xpad[n, c, oh*SH + kh*DH, ow*SW + kw*DW]
    long long t = i;
    const int ow = t % OW; t /= OW;
    const int oh = t % OH; t /= OH;
    const int b = t % N;   t /= N;        // image b of the batch ('n' is reserved by CuPy)
    const int kw = t % KW; t /= KW;
    const int kh = t % KH;
    const long long c = t / KH;
    const int h = oh * SH - PH + kh * DH;     // row in the unpadded input
    const int w = ow * SW - PW + kw * DW;
    col = (h >= 0 && h < H && w >= 0 && w < W) ? x[((b * (long long)C + c) * H + h) * W + w]
                                               : (T)0;
    """)

SOURCES["col2im"] = (
    "raw T col, int32 N, int32 C, " + _GEOMETRY,
    "T img",
    r"""
    // img (N, C, H, W)[i] = sum of the col entries copied from pixel (b, c, h, w)
    long long t = i;
    const int w = t % W; t /= W;
    const int h = t % H; t /= H;
    const int c = t % C;
    const long long b = t / C;
    const long long plane = (long long)OH * OW;
    T acc = 0;
    for (int kh = 0; kh < KH; ++kh) {
        const int hs = h + PH - kh * DH;      // = oh * SH for the window reading h at tap kh
        if (hs < 0 || hs % SH != 0) continue;
        const int oh = hs / SH;
        if (oh >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int ws = w + PW - kw * DW;
            if (ws < 0 || ws % SW != 0) continue;
            const int ow = ws / SW;
            if (ow >= OW) continue;
            acc += col[(((c * KH + kh) * (long long)KW + kw) * N + b) * plane
                       + (long long)oh * OW + ow];
        }
    }
    img = acc;
    """)

# -- pooling (geometry and semantics: kernels/pool.py) -------------------------------------

SOURCES["max_pool2d_forward"] = (
    "raw T x, " + _GEOMETRY,
    "T y, U arg",
    r"""
    // One window: its maximum and the tap k = kh*KW + kw holding it. Padding taps never
    // win (they read -inf), so the scan starts at the window's first tap inside the
    // input; a later tap wins when strictly greater, or NaN (kernels/pool.py).
    long long t = i;
    const int ow = t % OW; t /= OW;
    const int oh = t % OH;
    const long long plane = t / OH;           // n * C + c
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const int fh = h0 < 0 ? (-h0 + DH - 1) / DH : 0;
    const int fw = w0 < 0 ? (-w0 + DW - 1) / DW : 0;
    const long long base = plane * H * W;
    T best = x[base + (long long)(h0 + fh * DH) * W + (w0 + fw * DW)];
    int best_k = fh * KW + fw;
    for (int kh = fh; kh < KH; ++kh) {
        const int h = h0 + kh * DH;
        if (h >= H) break;
        for (int kw = fw; kw < KW; ++kw) {
            const int w = w0 + kw * DW;
            if (w >= W) break;
            const T v = x[base + (long long)h * W + w];
            if (v > best || isnan(v)) { best = v; best_k = kh * KW + kw; }
        }
    }
    y = best;
    arg = best_k;
    """)

# The backward kernels share the search for the windows that read input pixel (h, w):
# WINDOWS_OF_PIXEL opens two loops that bind oh, ow, the tap (kh, kw) and j, the flat
# index of window (oh, ow) in (N, C, OH, OW); END_WINDOWS closes them.
_WINDOWS_OF_PIXEL = r"""
    long long t = i;
    const int w = t % W; t /= W;
    const int h = t % H;
    const long long plane = t / H;
    T acc = 0;
    for (int kh = 0; kh < KH; ++kh) {
        const int hs = h + PH - kh * DH;
        if (hs < 0 || hs % SH != 0) continue;
        const int oh = hs / SH;
        if (oh >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int ws = w + PW - kw * DW;
            if (ws < 0 || ws % SW != 0) continue;
            const int ow = ws / SW;
            if (ow >= OW) continue;
            const long long j = (plane * OH + oh) * OW + ow;
"""
_END_WINDOWS = r"""
        }
    }
"""

SOURCES["max_pool2d_backward"] = (
    "raw T gy, raw U arg, " + _GEOMETRY,
    "T gx",
    _WINDOWS_OF_PIXEL + r"""
            if (arg[j] == kh * KW + kw) acc += gy[j];   // this pixel was the window's max
    """ + _END_WINDOWS + r"""
    gx = acc;
    """)

SOURCES["avg_pool2d_forward"] = (
    "raw T x, raw T div, " + _GEOMETRY,
    "T y",
    r"""
    // Sum of the window's taps inside the input (padding adds 0), over its divisor.
    long long t = i;
    const int ow = t % OW; t /= OW;
    const int oh = t % OH;
    const long long plane = t / OH;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const long long base = plane * H * W;
    T acc = 0;
    for (int kh = 0; kh < KH; ++kh) {
        const int h = h0 + kh * DH;
        if (h < 0 || h >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
            const int w = w0 + kw * DW;
            if (w < 0 || w >= W) continue;
            acc += x[base + (long long)h * W + w];
        }
    }
    y = acc / div[oh * OW + ow];
    """)

SOURCES["avg_pool2d_backward"] = (
    "raw T gy, raw T div, " + _GEOMETRY,
    "T gx",
    _WINDOWS_OF_PIXEL + r"""
            acc += gy[j] / div[oh * OW + ow];    // every tap gets the window's share
    """ + _END_WINDOWS + r"""
    gx = acc;
    """)

# -- batch norm (formulas: kernels/batchnorm.py); x viewed as (N, C, S) ---------------------

SOURCES["bn_affine"] = (
    "T x, raw T shift, raw T scale, raw T offset, int64 S, int32 C",
    "T y",
    r"""
    // y = (x - shift[c]) * scale[c] + offset[c]: normalisation (shift = mean,
    // scale = weight * inv_std, offset = bias), and evaluation-mode gx (0, scale, 0).
    const int c = (i / S) % C;
    y = (x - shift[c]) * scale[c] + offset[c];
    """)

SOURCES["bn_input_grad"] = (
    "T gy, T x, raw T gshift, raw T a, raw T mean, raw T b, int64 S, int32 C",
    "T gx",
    r"""
    // training-mode gx = (gy - gbias/m) * a - (x - mean) * b,
    // a = weight * inv_std, b = a * inv_std * gweight / m
    const int c = (i / S) % C;
    gx = (gy - gshift[c]) * a[c] - (x - mean[c]) * b[c];
    """)

# -- activations and losses -----------------------------------------------------------------

SOURCES["tanh_backward"] = (
    "T gy, T y",
    "T gx",
    "gx = gy * ((T)1 - y * y);")

SOURCES["cross_entropy_backward"] = (
    "T logp, raw I target, raw T g, int32 C, int64 ignore_index, int32 per_row",
    "T gx",
    r"""
    // logp, gx: (N, C); target (N,) class indices; g: dL/dloss_n, (N,) or one value.
    // gx = g * (softmax - onehot(target)), a zero row where the target is ignored.
    const long long row = i / C;
    const long long k = i % C;
    const long long y = target[row];
    const T g_row = g[per_row ? row : 0];
    gx = (y == ignore_index) ? (T)0 : g_row * (exp(logp) - (k == y ? (T)1 : (T)0));
    """)


# ----------------------------------------------------------------------------- building

_kernel_class = None   # None: CuPy's ElementwiseKernel; a test may substitute an emulator
_built = {}


def _kernel(name):
    """The compiled ElementwiseKernel ``name`` (built on first use)."""
    k = _built.get(name)
    if k is None:
        cls = _kernel_class or backend.require_cupy().ElementwiseKernel
        in_params, out_params, operation = SOURCES[name]
        k = cls(in_params, out_params, operation, f"minidl_{name}")
        _built[name] = k
    return k


@contextlib.contextmanager
def use_kernel_class(cls):
    """Build the kernels with ``cls`` (same constructor and call as CuPy's
    ``ElementwiseKernel``) inside the block: the test suite's CPU emulator."""
    global _kernel_class
    previous, saved = _kernel_class, dict(_built)
    _kernel_class = cls
    _built.clear()
    try:
        yield
    finally:
        _kernel_class = previous
        _built.clear()
        _built.update(saved)


def available(*arrays):
    """True when every array is a float32/float64 CuPy array (or, under
    ``use_kernel_class``, any float32/float64 array): the CUDA path applies."""
    ok_type = (lambda a: True) if _kernel_class is not None else backend.is_cupy_array
    return all(ok_type(a) and a.dtype in FLOAT_DTYPES for a in arrays)


def _xp(a):
    return backend.get_array_module(a)


def _contig(a):
    return _xp(a).ascontiguousarray(a)


def _flat(a):
    """a as a 1-D C-contiguous array (a view when a is contiguous: outputs are written
    through it)."""
    return _contig(a).reshape(-1)


# ----------------------------------------------------------------------------- wrappers
# Same arguments and results as the references they stand in for. Outputs are allocated
# here and written through their flat views.

def _run(name, *args):
    """Launch kernel ``name``; array arguments are passed flattened (see the module doc)."""
    _kernel(name)(*(a if isinstance(a, (int, float, np.number)) else _flat(a) for a in args))


def im2col(x, geo, out=None):
    """x (N, C, H, W) -> col (C, KH, KW, N, OH, OW) for the ``ConvGeometry`` geo (the
    caller has checked the shapes and ``out``, a C-contiguous array to fill, or None)."""
    col = _xp(x).empty(geo.col_shape, dtype=x.dtype) if out is None else out
    _run("im2col", x, geo.N, geo.C, geo.H, geo.W, geo.KH, geo.KW, geo.OH, geo.OW,
         geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, col)
    return col


def col2im(col, geo, out=None):
    """col (C, KH, KW, N, OH, OW) -> img (N, C, H, W), the adjoint of ``im2col``, into
    ``out`` when given (checked by the caller: C-contiguous, col's dtype)."""
    img = _xp(col).empty((geo.N, geo.C, geo.H, geo.W), dtype=col.dtype) if out is None else out
    _run("col2im", col, geo.N, geo.C, geo.H, geo.W, geo.KH, geo.KW, geo.OH, geo.OW,
         geo.SH, geo.SW, geo.PH0, geo.PW0, geo.DH, geo.DW, img)
    return img


def _geometry(win):
    return (win.H, win.W, win.KH, win.KW, win.OH, win.OW, win.SH, win.SW, win.PH, win.PW,
            win.DH, win.DW)


def max_pool2d_forward(x, win, tap_dtype):
    """(y, arg) (N, C, OH, OW) for x (N, C, H, W); arg holds tap numbers in ``tap_dtype``."""
    xp = _xp(x)
    shape = x.shape[:-2] + (win.OH, win.OW)
    y = xp.empty(shape, dtype=x.dtype)
    arg = xp.empty(shape, dtype=tap_dtype)
    _run("max_pool2d_forward", x, *_geometry(win), y, arg)
    return y, arg


def max_pool2d_backward(gy, arg, win):
    """gx (N, C, H, W): each window's gradient at the tap ``arg`` names."""
    gx = _xp(gy).empty(gy.shape[:-2] + (win.H, win.W), dtype=gy.dtype)
    _run("max_pool2d_backward", gy, arg, *_geometry(win), gx)
    return gx


def _divisor(divisor, like):
    """The (OH, OW) divisor on like's device, in like's dtype."""
    return _xp(like).asarray(np.asarray(divisor, dtype=like.dtype))


def avg_pool2d_forward(x, win, divisor):
    """y (N, C, OH, OW): window sums over ``divisor`` (OH, OW)."""
    y = _xp(x).empty(x.shape[:-2] + (win.OH, win.OW), dtype=x.dtype)
    _run("avg_pool2d_forward", x, _divisor(divisor, x), *_geometry(win), y)
    return y


def avg_pool2d_backward(gy, win, divisor):
    """gx (N, C, H, W): every tap gets its window's gradient over the divisor."""
    gx = _xp(gy).empty(gy.shape[:-2] + (win.H, win.W), dtype=gy.dtype)
    _run("avg_pool2d_backward", gy, _divisor(divisor, gy), *_geometry(win), gx)
    return gx


def _per_channel(v, like, fill):
    """A (C,) vector in like's dtype on like's device (``fill`` where v is None)."""
    xp = _xp(like)
    C = like.shape[1]
    if v is None:
        return xp.full(C, fill, dtype=like.dtype)
    return xp.asarray(v).reshape(C).astype(like.dtype, copy=False)


def _plane_size(x):
    """S, the values per (n, c) of x (N, C, *S)."""
    return x.size // (x.shape[0] * x.shape[1]) if x.shape[0] * x.shape[1] else 1


def _affine(x, shift, scale, offset):
    """(x - shift) * scale + offset per channel, one kernel."""
    y = _xp(x).empty(x.shape, dtype=x.dtype)
    _run("bn_affine", x, shift, scale, offset, _plane_size(x), x.shape[1], y)
    return y


def bn_normalize(x, mean, inv_std, weight=None, bias=None):
    """y = (x - mean) * (weight * inv_std) + bias per channel; x (N, C, *S)."""
    scale = _per_channel(inv_std, x, 1)
    if weight is not None:
        scale = scale * _per_channel(weight, x, 1)
    return _affine(x, _per_channel(mean, x, 0), scale, _per_channel(bias, x, 0))


def bn_input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """gx (N, C, *S), the batch-norm input gradient (formulas: kernels/batchnorm.py)."""
    a = _per_channel(inv_std, gy, 1)
    if weight is not None:
        a = a * _per_channel(weight, gy, 1)
    if not training:           # gx = gy * a: the affine kernel with shift 0 and offset 0
        zero = _per_channel(None, gy, 0)
        return _affine(gy, zero, a, zero)
    m = gy.size // gy.shape[1]
    gshift = _per_channel(gbias, gy, 0) / m
    b = a * _per_channel(inv_std, gy, 1) * _per_channel(gweight, gy, 0) / m
    gx = _xp(gy).empty(gy.shape, dtype=gy.dtype)
    _run("bn_input_grad", gy, x.astype(gy.dtype, copy=False), gshift, a,
         _per_channel(mean, gy, 0), b, _plane_size(gy), gy.shape[1], gx)
    return gx


def tanh_backward(gy, y):
    """gy * (1 - y^2) in one kernel (same shapes)."""
    gx = _xp(gy).empty(gy.shape, dtype=gy.dtype)
    _run("tanh_backward", gy, y, gx)
    return gx


def cross_entropy_backward(logp, target, g, ignore_index):
    """gx (N, C) = g * (exp(logp) - onehot(target)), zero rows where target == ignore_index.

    logp: (N, C) log-probabilities; target: (N,) integer classes; g: dL/dloss_n, one value
    (reductions 'mean', with the 1/D folded in, and 'sum') or (N,) ('none').
    """
    N, C = logp.shape
    g = _xp(logp).asarray(g, dtype=logp.dtype).reshape(-1)
    gx = _xp(logp).empty(logp.shape, dtype=logp.dtype)
    _run("cross_entropy_backward", logp, target.astype(np.int64, copy=False), g, C,
         int(ignore_index), int(g.size > 1), gx)
    return gx
