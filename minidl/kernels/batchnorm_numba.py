"""numba kernels of the batch-norm family (``kernels/batchnorm.py`` holds the formulas and
the registration, ``batchnorm_reference.py`` the definition these are tested against).

    x, y, gy, gx                                       (N, C, *S), NumPy float32/float64
    mean, var, inv_std, weight, bias, gbias, gweight   (C,)
    m = N * S, the values per channel

Each step is one pass over the data, on the arrays made C-contiguous and viewed in one
of two layouts:

* "planes", (N, C, S) with S > 1: the loops run along one (n, c) plane, the per-channel
  constants are hoisted out of them;
* "rows", (N, C) (S == 1): the inner loop runs along C, so it vectorises, with
  per-channel vectors. The write kernels also take short planes (S < ``SHORT_PLANE``)
  as (N, C*S) rows, with each per-channel vector repeated S times (by each thread, for
  the rows it writes).

What each step computes:

* ``batch_stats``: per (n, c) plane, the plane's sum, then its centred sum of squares
  while the plane is still in L1/L2 (a two-pass within the plane, one pass over memory),
  merged into the channel's running (count, mean, M2) with Chan's formula. All sums in
  float64, also for float32 data: float32 results agree with PyTorch's to ~1e-7, float64
  ones to ~1e-15, and there is no ``E[x^2] - E[x]^2`` cancellation.
* ``normalize``: one fused write ``y = (x - mean) * a + bias``, a = weight * inv_std.
* ``grad_sums``: sum(gy) and sum(gy * (x - mean)) in one pass over gy and x (float64
  sums); gweight = inv_std * the second.
* ``input_grad``: one fused write ``gx = (gy - gbias/m) * a - (x - mean) * b`` with the
  per-channel constants a = weight * inv_std, b = a * inv_std * gweight / m. In
  evaluation mode ``gx = gy * a`` (the ``normalize`` kernel with mean 0 and bias 0).

The per-channel constants of the write kernels come in x's dtype, so float32 data is
computed in float32 vectors (a float64 constant would turn a float32 loop into float64
arithmetic); the sums are float64 (their accumulators start as 0.0).

Threads (the policy is ``kernels/threads.py``'s). The "planes" kernels loop over a range
of channels for the sums, of (n, c) planes for the writes (a ``prange``: numba's threads
where the policy runs it parallel). Each thread owns whole channels or planes, so there
are no atomics, and a channel's sums always run over n in order: the results do not
depend on the thread count. The "rows" sums have no parallel loop (a channel's sum runs
down the batch) and always run their serial build; the "rows" writes split the rows.
The kernels are bound by memory bandwidth (vectorised), so float64 sums cost little over
float32 ones; a parallel build run on one thread costs a little more per call than the
serial one (the parfor launch), which is why the policy keeps small inputs serial.
Each kernel compiles on first use, one specialisation per dtype, cached on disk: the
first run in a fresh environment takes seconds, later processes load the cache.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .registry import FAST_DTYPES
from . import memory, threads
from .threads import jit, njit_helper

__all__ = ["batch_stats", "normalize", "grad_sums", "input_grad"]


# ----------------------------------------------------------------------------- kernels


@jit
def _stats_planes(x, mean, var, c0, c1):
    """mean[c], var[c] (float64) over the planes x[:, c, :], merged with Chan's formula,
    for the channels c0 .. c1."""
    N, C, S = x.shape
    for c in prange(c0, c1):
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


@jit
def _stats_rows(x, mean, var):
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


@jit
def _grad_sums_planes(gy, x, mean, s_gy, s_gyx, c0, c1):
    """s_gy[c] = sum(gy), s_gyx[c] = sum(gy * (x - mean[c])), float64, over the planes of c,
    for the channels c0 .. c1."""
    N, C, S = x.shape
    for c in prange(c0, c1):
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


@jit
def _grad_sums_rows(gy, x, mean, s_gy, s_gyx):
    """The same sums for (N, C) rows."""
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


@jit
def _affine_planes(x, shift, scale, offset, out, p0, p1):
    """out = (x - shift[c]) * scale[c] + offset[c] on the planes p = n * C + c in p0 .. p1."""
    N, C, S = x.shape
    for p in prange(p0, p1):
        n = p // C
        c = p - n * C
        src = x[n, c]
        dst = out[n, c]
        sh = shift[c]
        sc = scale[c]
        of = offset[c]
        for i in range(S):
            dst[i] = (src[i] - sh) * sc + of


@njit_helper
def _repeated(v, S):
    """v (C,) with each value repeated S times, (C*S,) (value c*S + i is v[c]); v itself
    when S == 1."""
    if S == 1:
        return v
    out = np.empty(v.shape[0] * S, v.dtype)
    for c in range(v.shape[0]):
        for i in range(S):
            out[c * S + i] = v[c]
    return out


@njit_helper
def _row_bounds(k, chunks, N):
    """Rows n0 .. n1 of chunk k when N rows are cut into ``chunks`` near-equal chunks."""
    return k * N // chunks, (k + 1) * N // chunks


@jit
def _affine_rows(x, shift, scale, offset, S, out, chunks):
    """The same affine map on (N, C*S) rows (S values per channel: short planes, or S == 1
    for (N, C) input): the rows cut into ``chunks`` chunks, each chunk's thread expanding
    the (C,) constants to (C*S,) rows of its own first."""
    N, CS = x.shape
    for k in prange(chunks):
        sh = _repeated(shift, S)
        sc = _repeated(scale, S)
        of = _repeated(offset, S)
        n0, n1 = _row_bounds(k, chunks, N)
        for n in range(n0, n1):
            src = x[n]
            dst = out[n]
            for j in range(CS):
                dst[j] = (src[j] - sh[j]) * sc[j] + of[j]


@jit
def _input_grad_planes(gy, x, gshift, a, mean, b, out, p0, p1):
    """out = (gy - gshift[c]) * a[c] - (x - mean[c]) * b[c] on the planes p0 .. p1."""
    N, C, S = x.shape
    for p in prange(p0, p1):
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


@jit
def _input_grad_rows(gy, x, gshift, a, mean, b, S, out, chunks):
    """The same gx on (N, C*S) rows, the constants expanded per chunk (``_affine_rows``)."""
    N, CS = x.shape
    for k in prange(chunks):
        gs = _repeated(gshift, S)
        ar = _repeated(a, S)
        mu = _repeated(mean, S)
        br = _repeated(b, S)
        n0, n1 = _row_bounds(k, chunks, N)
        for n in range(n0, n1):
            g = gy[n]
            src = x[n]
            dst = out[n]
            for j in range(CS):
                dst[j] = (g[j] - gs[j]) * ar[j] - (src[j] - mu[j]) * br[j]


# (kernel over planes, kernel over rows, what the planes kernel's range counts) of each
# step; the sums' rows kernels have no parallel loop (a channel's sum runs down the batch),
# so they always run their serial build; the writes' rows kernels split the rows.
_STATS = (_stats_planes, _stats_rows, "channels")
_GRAD_SUMS = (_grad_sums_planes, _grad_sums_rows, "channels")
_AFFINE = (_affine_planes, _affine_rows, "planes")
_INPUT_GRAD = (_input_grad_planes, _input_grad_rows, "planes")

# The write kernels run planes shorter than this as rows: a plane of a few values is too
# short a loop to vectorise, and each one pays the loop's set-up. (N, C, S) is viewed as
# (N, C*S) rows, each per-channel constant repeated S times (value c*S + i of a row
# belongs to channel c): the same arithmetic, element by element. Each thread expands the
# constants into rows of its own (``_affine_rows``): expanded once by the calling thread,
# the other core read them out of the first one's cache on every call, which cost more
# than the arithmetic ((32, 512, 4, 4) float32: 48-84 us against 32 with the rows hot;
# normalize / training input gradient, expanded by the caller -> per thread: 65 -> 46 /
# 85 -> 70 us, (32, 192, 4, 4) 27 -> 21 / 43 -> 34). Measured earlier (us, planes ->
# rows, normalize): (32, 576, 2, 2) 68 -> 14, (32, 192, 4, 4) 19.8 -> 14.4; from 8x8
# planes on the rows lose, reading the expanded constants (C*S long) beside the data:
# (32, 96, 8, 8) 14.7 -> 22.5.
SHORT_PLANE = 32


def _launch(kernels, view, *args):
    """Run the planes kernel of ``kernels`` on a (N, C, S) ``view``, the rows kernel on a
    (N, C) one (each the build the thread policy picks for its size)."""
    planes, rows, unit = kernels
    if view.ndim == 2:
        rows(view, *args, size=view.size)
        return
    N, C = view.shape[:2]
    count = C if unit == "channels" else N * C
    planes(view, *args, 0, count, size=view.size)


def _write(kernels, arrays, vectors, out):
    """Run a write kernel on ``arrays`` (views of one layout, ``_layout``), the per-channel
    ``vectors`` (C,) and ``out`` (reshaped to that layout); planes shorter than
    ``SHORT_PLANE``, and (N, C) rows, by the rows kernel (S values per channel)."""
    planes, rows, _ = kernels
    a = arrays[0]
    N, C = a.shape[:2]
    if a.ndim == 3 and a.shape[2] >= SHORT_PLANE:
        planes(*arrays, *vectors, out.reshape(a.shape), 0, N * C, size=a.size)
        return
    S = a.shape[2] if a.ndim == 3 else 1
    arrays = [b.reshape(N, C * S) for b in arrays]
    rows(*arrays, *vectors, S, out.reshape(N, C * S), threads.pieces(a.size, N),
         size=a.size)


# ----------------------------------------------------------------------------- wrappers
# Same arguments and results as the reference functions.


def _layout(a):
    """A C-contiguous view (or copy) of a (N, C, *S) array as (N, C, S) planes, or as
    (N, C) rows when S == 1."""
    a = np.ascontiguousarray(a)
    N, C = a.shape[0], a.shape[1]
    S = a.size // (N * C) if N * C else 0
    return a.reshape(N, C) if S == 1 else a.reshape(N, C, S)


def _vec(v, dtype, C, fill=None):
    """A (C,) C-contiguous vector of ``dtype``: ``v`` converted, or ``fill`` when v is None."""
    if v is None:
        return np.full(C, fill, dtype=dtype)
    return np.ascontiguousarray(v, dtype=dtype).reshape(C)


def _check(x, name):
    """The kernels are compiled for NumPy float32/float64 arrays only (the registry sends
    everything else to the reference; this catches a direct call)."""
    if not isinstance(x, np.ndarray) or x.dtype not in FAST_DTYPES:
        raise TypeError(f"batch_norm: the numba {name} takes a NumPy float32 or float64 "
                        f"array, got {type(x).__name__} {getattr(x, 'dtype', '')}")


def batch_stats(x):
    """(mean, var) per channel of x (N, C, *S), float64 sums, returned in x's dtype."""
    _check(x, "batch_stats")
    xs = _layout(x)
    C = x.shape[1]
    mean = np.empty(C, np.float64)
    var = np.empty(C, np.float64)
    if xs.size == 0:   # no values: NaN, as NumPy's mean of nothing
        mean[:] = np.nan
        var[:] = np.nan
    else:
        _launch(_STATS, xs, mean, var)
    return mean.astype(x.dtype), var.astype(x.dtype)


def normalize(x, mean, inv_std, weight=None, bias=None):
    """y = (x - mean) * a + bias with a = weight * inv_std, one fused pass."""
    _check(x, "normalize")
    xs = _layout(x)
    C = x.shape[1]
    a = _vec(inv_std, np.float64, C)
    if weight is not None:
        a = a * _vec(weight, np.float64, C)
    out = memory.empty(x.shape, x.dtype)   # owns its data: autograd need not copy a view
    _write(_AFFINE, [xs], [_vec(mean, x.dtype, C), a.astype(x.dtype), _vec(bias, x.dtype, C, 0)],
           out)
    return out


def grad_sums(gy, x, mean, inv_std):
    """(gbias, gweight) = (sum(gy), inv_std * sum(gy * (x - mean))): one pass over gy and
    x, float64 sums."""
    _check(x, "grad_sums")
    xs = _layout(x)
    gys = _layout(gy.astype(x.dtype, copy=False))
    C = x.shape[1]
    s_gy = np.empty(C, np.float64)
    s_gyx = np.empty(C, np.float64)
    _launch(_GRAD_SUMS, gys, xs, _vec(mean, x.dtype, C), s_gy, s_gyx)
    gweight = s_gyx * _vec(inv_std, np.float64, C)
    return s_gy.astype(x.dtype), gweight.astype(x.dtype)


def input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training):
    """gx = (gy - gbias/m) * a - (x - mean) * b (training) or gy * a (evaluation), one
    fused pass; a = weight * inv_std, b = a * inv_std * gweight / m."""
    _check(gy, "input_grad")
    dtype = gy.dtype
    gys = _layout(gy)
    C = gy.shape[1]
    a = _vec(inv_std, np.float64, C)
    if weight is not None:
        a = a * _vec(weight, np.float64, C)
    out = memory.empty(gy.shape, dtype)    # owns its data: autograd need not copy a view
    if not training:   # gx = gy * a: the affine kernel with shift 0 and offset 0
        zero = np.zeros(C, dtype)
        _write(_AFFINE, [gys], [zero, a.astype(dtype), zero], out)
        return out
    xs = _layout(x.astype(dtype, copy=False))
    m = gys.size // C
    gshift = _vec(gbias, np.float64, C) / m
    b = a * _vec(inv_std, np.float64, C) * _vec(gweight, np.float64, C) / m
    _write(_INPUT_GRAD, [gys, xs],
           [gshift.astype(dtype), a.astype(dtype), _vec(mean, dtype, C), b.astype(dtype)], out)
    return out
