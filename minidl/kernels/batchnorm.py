"""Batch normalisation kernels: per-channel statistics, the normalisation, and its gradients.

Raw arrays in, raw arrays out, no autograd (``minidl.ops.norm`` wraps these in a Function
and holds the formulas' derivation).

Shape letters used throughout::

    N    batch size
    C    channels: every statistic is per channel
    *S   the other dims (none, L, or H, W);  S = prod(*S) when flattened
    m    values per channel: m = N * S

    x, y, gy, gx                                   (N, C, *S)
    mean, var, inv_std, weight, bias, gbias, gweight  (C,), in x's dtype

The four steps, as the reference functions write them::

    batch_stats:  mean    = sum(x) / m,   var = sum((x - mean)^2) / m        (biased)
    normalize:    y       = weight * (x - mean) * inv_std + bias
    grad_sums:    gbias   = sum(gy),      gweight = sum(gy * xhat),  xhat = (x - mean) * inv_std
    input_grad:   gx      = weight * inv_std / m * (m * gy - gbias - xhat * gweight)   (training)
                  gx      = weight * inv_std * gy                                  (evaluation)

``xhat`` is never stored: the backward pass recomputes it from x, mean and inv_std
(x is alive anyway as the op's input), which saves one (N, C, *S) array per layer and
one pass over memory.

Two implementations behind one signature
----------------------------------------
* ``*_reference``: NumPy (or CuPy) whole-array expressions, exactly the formulas above.
  The definition the fast paths are tested against; used for CuPy arrays and dtypes
  other than float32/float64.
* ``*_numba``: compiled loops for NumPy float32/float64 arrays (made C-contiguous first).
  Viewed as (N, C, S), one pass over the data per step:

  - ``batch_stats``: per (n, c) plane, the plane's sum, then its centred sum of squares
    while the plane is still in L1/L2 (a two-pass within the plane, one pass over memory),
    merged into the channel's running (count, mean, M2) with Chan's formula. All sums
    in float64, also for float32 data: float32 results agree with PyTorch's to ~1e-7,
    float64 ones to ~1e-15, and no ``E[x^2] - E[x]^2`` cancellation.
  - ``normalize``: one fused write ``y = (x - mean) * a + bias``, a = weight * inv_std.
  - ``grad_sums``: sum(gy) and sum(gy * (x - mean)) in one pass over gy and x (float64
    sums); gweight = inv_std * the second.
  - ``input_grad``: one fused write ``gx = (gy - gbias/m) * a - (x - mean) * b`` with the
    per-channel constants a = weight * inv_std, b = a * inv_std * gweight / m.
    In evaluation mode ``gx = gy * a`` (the ``normalize`` kernel with mean 0 and bias 0).

  The kernels come in two layouts: "planes" for S > 1 (the loops run along a plane,
  the per-channel constants are hoisted out of them) and "rows" for S == 1, (N, C) input,
  where the inner loop runs along C (so it vectorises) with per-channel vectors.
  numba is imported on first use only; kernels compile lazily, one specialisation per
  kernel and dtype, cached on disk (``cache=True``): about 8 s cold for all sixteen,
  only those used are compiled.

Threads. The package's policy (``kernels/__init__.py``): serial unless
``MINIDL_NUMBA_PARALLEL=1``. The "planes" kernels are written with ``prange`` (over
channels for the sums, over (n, c) planes for the writes: each thread owns whole channels
or planes, so no atomics, and a channel's sums always run over n in order, so the results
do not depend on the thread count). By default they are compiled serial (``prange`` is
then ``range``), cached. With ``MINIDL_NUMBA_PARALLEL=1`` inputs of at least
``PARALLEL_MIN_ELEMENTS`` use a parallel build (compiled per process, not cached), like
``_fast.py``. A parallel build run on one thread costs 5-7 us more per call than the
serial one (the parfor launch and ``numba.set_num_threads``): 6% of the (100, 6, 28, 28)
step. Measured alone on the 2-core dev machine (Zen 4, 32 MB L3), (32, 64, 56, 56)
float32, ms serial -> 2 threads: statistics 1.7 -> 0.75, normalize 1.2 -> 0.8, grad
sums 3.0 -> 1.6, gx 2.2 -> 1.7. The kernels are bound by memory bandwidth (vectorised,
AVX-512); float64 sums cost little over float32 ones here.

On the GPU (``cuda_kernels``): ``normalize`` and ``input_grad`` are one fused CUDA
kernel each (the reference's expressions launch six); the per-channel sums are CuPy's
reductions of the reference.

The dispatchers (``batch_stats`` ...) take ``impl``: ``None`` (the module default, 'auto'
unless ``force_impl`` says otherwise), ``'auto'``, ``'numpy'``, ``'numba'`` or ``'cuda'``
(for the two fused steps; the sums then take the reference).
"""
from __future__ import annotations


import numpy as np

from . import NUMBA_PARALLEL, cuda_kernels
from ._dispatch import FAST_DTYPES, ImplSwitch, numba_available  # noqa: F401 - numba_available is public

__all__ = [
    "batch_stats", "normalize", "grad_sums", "input_grad",
    "batch_stats_reference", "normalize_reference", "grad_sums_reference",
    "input_grad_reference",
    "batch_stats_numba", "normalize_numba", "grad_sums_numba", "input_grad_numba",
    "numba_available", "force_impl", "PARALLEL_MIN_ELEMENTS",
]


# ----------------------------------------------------------------------------- reference


def _reduce_axes(x):
    """Every axis but the channel axis: (0, 2, 3, ...)."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    """A (C,) vector shaped (1, C, 1, ...) to broadcast against x (N, C, *S)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_stats_reference(x):
    """Per-channel mean and biased variance of x (N, C, *S): two (C,) arrays of x's dtype.

    mean = sum(x) / m,  var = sum((x - mean)^2) / m,  sums over N and *S (m values).
    """
    axes = _reduce_axes(x)
    mean = x.mean(axis=axes)
    centered = x - _per_channel(mean, x)
    var = (centered * centered).mean(axis=axes)
    return mean, var


def normalize_reference(x, mean, inv_std, weight=None, bias=None):
    """y = weight * xhat + bias with xhat = (x - mean) * inv_std, per channel.

    x: (N, C, *S); mean, inv_std, weight, bias: (C,) (weight, bias may be None).
    Returns y (N, C, *S).
    """
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)
    y = xhat
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y


def grad_sums_reference(gy, x, mean, inv_std):
    """The per-channel sums of the backward pass: gbias = sum(gy), gweight = sum(gy * xhat).

    gy, x: (N, C, *S); mean, inv_std: (C,). Returns two (C,) arrays (the gradients of
    bias and weight; training-mode backward needs both for gx as well).
    """
    axes = _reduce_axes(x)
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)
    return gy.sum(axis=axes), (gy * xhat).sum(axis=axes)


def input_grad_reference(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """gx (N, C, *S), the gradient of the input.

    training: gx = weight * inv_std / m * (m * gy - gbias - xhat * gweight), where gbias
        and gweight come from ``grad_sums`` (the batch statistics depend on x);
    evaluation: gx = weight * inv_std * gy (the statistics are constants; x, gbias and
        gweight are not used and may be None).
    weight None means 1.
    """
    scale = inv_std if weight is None else weight * inv_std
    if not training:
        return gy * _per_channel(scale, gy)
    m = x.size // x.shape[1]
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv_std, x)
    return _per_channel(scale / m, x) * (m * gy - _per_channel(gbias, x)
                                         - xhat * _per_channel(gweight, x))


# ----------------------------------------------------------------------------- numba kernels
# Plain Python functions, compiled by ``_kernel(name)`` on first use so that importing
# this module does not import numba. Arrays are C-contiguous: "planes" kernels take
# (N, C, S) arrays with S > 1, "rows" kernels (N, C) arrays. Sums are float64 (the
# accumulators start as 0.0); the per-channel constants of the write kernels come in
# x's dtype, so float32 data is computed in float32 vectors (a float64 constant would
# turn a float32 loop into float64 arithmetic).


def _nb_stats_planes(x, mean, var):
    """mean[c], var[c] (float64) over the planes x[:, c, :], merged with Chan's formula."""
    N, C, S = x.shape
    for c in _prange(C):
        count = 0.0
        mu = 0.0
        m2 = 0.0
        for n in range(N):
            row = x[n, c]
            s = 0.0
            for i in range(S):
                s += row[i]
            pmean = s / S
            q = 0.0
            for i in range(S):       # the plane is still in cache: a second pass is cheap
                d = row[i] - pmean
                q += d * d
            total = count + S
            delta = pmean - mu
            mu += delta * (S / total)
            m2 += q + delta * delta * (count * S / total)
            count = total
        mean[c] = mu
        var[c] = m2 / count


def _nb_stats_rows(x, mean, var):
    """mean[c], var[c] (float64) of x (N, C): a sum pass, then a centred-squares pass."""
    N, C = x.shape
    for c in range(C):
        mean[c] = 0.0
        var[c] = 0.0
    for n in range(N):
        row = x[n]
        for c in range(C):
            mean[c] += row[c]
    for c in range(C):
        mean[c] /= N
    for n in range(N):
        row = x[n]
        for c in range(C):
            d = row[c] - mean[c]
            var[c] += d * d
    for c in range(C):
        var[c] /= N


def _nb_grad_sums_planes(gy, x, mean, s_gy, s_gyx):
    """s_gy[c] = sum(gy), s_gyx[c] = sum(gy * (x - mean[c])), float64, over the planes of c."""
    N, C, S = x.shape
    for c in _prange(C):
        mu = mean[c]
        a = 0.0
        b = 0.0
        for n in range(N):
            g = gy[n, c]
            row = x[n, c]
            for i in range(S):
                a += g[i]
                b += g[i] * (row[i] - mu)
        s_gy[c] = a
        s_gyx[c] = b


def _nb_grad_sums_rows(gy, x, mean, s_gy, s_gyx):
    N, C = x.shape
    for c in range(C):
        s_gy[c] = 0.0
        s_gyx[c] = 0.0
    for n in range(N):
        g = gy[n]
        row = x[n]
        for c in range(C):
            s_gy[c] += g[c]
            s_gyx[c] += g[c] * (row[c] - mean[c])


def _nb_affine_planes(x, shift, scale, offset, out):
    """out = (x - shift[c]) * scale[c] + offset[c] on every plane x[n, c]."""
    N, C, S = x.shape
    for p in _prange(N * C):
        n = p // C
        c = p - n * C
        src = x[n, c]
        dst = out[n, c]
        sh = shift[c]
        sc = scale[c]
        of = offset[c]
        for i in range(S):
            dst[i] = (src[i] - sh) * sc + of


def _nb_affine_rows(x, shift, scale, offset, out):
    N, C = x.shape
    for n in range(N):
        src = x[n]
        dst = out[n]
        for c in range(C):
            dst[c] = (src[c] - shift[c]) * scale[c] + offset[c]


def _nb_input_grad_planes(gy, x, gshift, a, mean, b, out):
    """out = (gy - gshift[c]) * a[c] - (x - mean[c]) * b[c] on every plane."""
    N, C, S = x.shape
    for p in _prange(N * C):
        n = p // C
        c = p - n * C
        g = gy[n, c]
        src = x[n, c]
        dst = out[n, c]
        gs = gshift[c]
        ac = a[c]
        mu = mean[c]
        bc = b[c]
        for i in range(S):
            dst[i] = (g[i] - gs) * ac - (src[i] - mu) * bc


def _nb_input_grad_rows(gy, x, gshift, a, mean, b, out):
    N, C = x.shape
    for n in range(N):
        g = gy[n]
        src = x[n]
        dst = out[n]
        for c in range(C):
            dst[c] = (g[c] - gshift[c]) * a[c] - (src[c] - mean[c]) * b[c]


_prange = range       # replaced by numba.prange once numba is imported
_compiled = {}        # (kernel name, parallel) -> numba dispatcher
_numba_error = None   # why importing numba failed
_SERIAL = ("_nb_stats_rows", "_nb_grad_sums_rows", "_nb_affine_rows", "_nb_input_grad_rows")


def _kernel(name, parallel=False):
    """The compiled numba kernel ``name``, serial or parallel (compiled once per process,
    the serial build loaded from the disk cache; the parallel one is not cached: numba's
    cache key ignores the ``parallel`` flag, so the two builds would overwrite each other)."""
    global _prange, _numba_error
    fn = _compiled.get((name, parallel))
    if fn is None:
        if _numba_error is not None:
            raise RuntimeError(f"batch_norm: the numba fast path needs numba ({_numba_error})")
        try:
            import numba  # noqa: PLC0415 - deliberately lazy
        except Exception as exc:  # ImportError, or a broken LLVM install
            _numba_error = exc
            raise RuntimeError(f"batch_norm: the numba fast path needs numba ({exc})") from exc
        _prange = numba.prange
        fn = numba.njit(parallel=parallel, cache=not parallel, fastmath=True,
                        error_model="numpy", nogil=True)(globals()[name])
        _compiled[(name, parallel)] = fn
    return fn


# With MINIDL_NUMBA_PARALLEL=1, inputs of at least this many elements run the parallel
# build; smaller ones the serial build: waking the worker threads costs more than the
# work (tens of microseconds; up to a scheduler time slice, i.e. milliseconds, when
# another process wants the core).
PARALLEL_MIN_ELEMENTS = 1 << 16


def _run(name, n_elements, *args):
    """Call kernel ``name``: the parallel build only when the package's policy allows it
    and the input is big enough, the serial build otherwise."""
    parallel = NUMBA_PARALLEL and name not in _SERIAL and n_elements >= PARALLEL_MIN_ELEMENTS
    return _kernel(name, parallel)(*args)




def _layout(a):
    """(kind, view): a C-contiguous view (or copy) of a (N, C, *S) array as (N, C, S)
    planes, or as (N, C) rows when S == 1."""
    a = np.ascontiguousarray(a)
    N, C = a.shape[0], a.shape[1]
    S = a.size // (N * C) if N * C else 0
    if S == 1:
        return "rows", a.reshape(N, C)
    return "planes", a.reshape(N, C, S)


def _vec(v, dtype, C, fill=None):
    """A (C,) C-contiguous vector of ``dtype``: ``v`` converted, or ``fill`` when v is None."""
    if v is None:
        return np.full(C, fill, dtype=dtype)
    return np.ascontiguousarray(v, dtype=dtype).reshape(C)


def _check_fast(x, name):
    if not isinstance(x, np.ndarray) or x.dtype not in FAST_DTYPES:
        raise TypeError(f"{name}: expected a NumPy float32 or float64 array, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')}")


def batch_stats_numba(x):
    """Same as ``batch_stats_reference``, compiled (NumPy float32/float64)."""
    _check_fast(x, "batch_stats_numba")
    kind, xs = _layout(x)
    C = x.shape[1]
    mean = np.empty(C, np.float64)
    var = np.empty(C, np.float64)
    if xs.size == 0:   # no values: NaN, as NumPy's mean of nothing
        mean[:] = np.nan
        var[:] = np.nan
    else:
        _run(f"_nb_stats_{kind}", xs.size, xs, mean, var)
    return mean.astype(x.dtype), var.astype(x.dtype)


def normalize_numba(x, mean, inv_std, weight=None, bias=None):
    """Same as ``normalize_reference``, compiled: y = (x - mean) * a + bias with
    a = weight * inv_std, one fused pass."""
    _check_fast(x, "normalize_numba")
    kind, xs = _layout(x)
    C = x.shape[1]
    a = _vec(inv_std, np.float64, C)
    if weight is not None:
        a = a * _vec(weight, np.float64, C)
    out = np.empty(xs.shape, x.dtype)
    _run(f"_nb_affine_{kind}", xs.size, xs, _vec(mean, x.dtype, C), a.astype(x.dtype),
         _vec(bias, x.dtype, C, 0), out)
    return out.reshape(x.shape)


def grad_sums_numba(gy, x, mean, inv_std):
    """Same as ``grad_sums_reference``, compiled: one pass over gy and x, float64 sums."""
    _check_fast(x, "grad_sums_numba")
    kind, xs = _layout(x)
    _, gys = _layout(gy.astype(x.dtype, copy=False))
    C = x.shape[1]
    s_gy = np.empty(C, np.float64)
    s_gyx = np.empty(C, np.float64)
    _run(f"_nb_grad_sums_{kind}", xs.size, gys, xs, _vec(mean, x.dtype, C), s_gy, s_gyx)
    gweight = s_gyx * _vec(inv_std, np.float64, C)
    return s_gy.astype(x.dtype), gweight.astype(x.dtype)


def input_grad_numba(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """Same as ``input_grad_reference``, compiled: one fused pass writing gx."""
    _check_fast(gy, "input_grad_numba")
    dtype = gy.dtype
    kind, gys = _layout(gy)
    C = gy.shape[1]
    a = _vec(inv_std, np.float64, C)
    if weight is not None:
        a = a * _vec(weight, np.float64, C)
    out = np.empty(gys.shape, dtype)
    if not training:   # gx = gy * a: the affine kernel with shift 0 and offset 0
        zero = np.zeros(C, dtype)
        _run(f"_nb_affine_{kind}", gys.size, gys, zero, a.astype(dtype), zero, out)
        return out.reshape(gy.shape)
    _, xs = _layout(x.astype(dtype, copy=False))
    m = gys.size // C
    gshift = _vec(gbias, np.float64, C) / m
    b = a * _vec(inv_std, np.float64, C) * _vec(gweight, np.float64, C) / m
    _run(f"_nb_input_grad_{kind}", gys.size, gys, xs, gshift.astype(dtype), a.astype(dtype),
         _vec(mean, dtype, C), b.astype(dtype), out)
    return out.reshape(gy.shape)


# ----------------------------------------------------------------------------- dispatch

_switch = ImplSwitch("batch norm")
force_impl = _switch.force        # ``with force_impl('numpy'):`` runs the reference
_use_numba = _switch.use_numba


def batch_stats(x, impl=None):
    """(mean, var), the per-channel mean and biased variance of x (N, C, *S); see the
    reference (on the GPU the reference's reductions are CuPy's own kernels)."""
    if _use_numba(x, impl, "batch_stats"):
        return batch_stats_numba(x)
    return batch_stats_reference(x)


def normalize(x, mean, inv_std, weight=None, bias=None, impl=None):
    """y = weight * (x - mean) * inv_std + bias; see the reference."""
    which = _switch.choose(x, impl, "normalize")
    if which == "numba":
        return normalize_numba(x, mean, inv_std, weight, bias)
    if which == "cuda":
        return cuda_kernels.bn_normalize(x, mean, inv_std, weight, bias)
    return normalize_reference(x, mean, inv_std, weight, bias)


def grad_sums(gy, x, mean, inv_std, impl=None):
    """(gbias, gweight) = (sum(gy), sum(gy * xhat)) per channel; see the reference."""
    if _use_numba(x, impl, "grad_sums"):
        return grad_sums_numba(gy, x, mean, inv_std)
    return grad_sums_reference(gy, x, mean, inv_std)


def input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training, impl=None):
    """gx, the input's gradient (training or evaluation mode); see the reference."""
    which = _switch.choose(gy, impl, "input_grad")
    if which == "numba":
        return input_grad_numba(gy, x, mean, inv_std, weight, gbias, gweight, training)
    if which == "cuda":
        return cuda_kernels.bn_input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training)
    return input_grad_reference(gy, x, mean, inv_std, weight, gbias, gweight, training)
