"""The readable NumPy references of the pooling family: the definitions the fast paths
(``pool_numba.py``, ``cuda_kernels``) are tested against. Shape letters, the tap numbering
and the output-size rule: ``kernels/pool.py``'s module docstring.

Written with the array API NumPy and CuPy share, so each runs on either device. A Python
loop runs over the K kernel taps only: each step handles one strided slice of the padded
input, ``win.tap_slices()``, for the whole batch and every channel at once (the Chainer
way). Never a loop over images or output pixels, never ``np.add.at``.

Every function here is one implementation of the family's interface
(``max_pool2d_forward(x, win)``, ``max_pool2d_backward(gy, arg, win)``,
``avg_pool2d_forward(x, win, divisor)``, ``avg_pool2d_backward(gy, win, divisor)``), or a
reference-only function the op calls directly (the split tie rule, PyTorch's indices, the
average divisor, adaptive pooling).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..geometry import adaptive_windows
from .threads import single_blas

__all__ = [
    "max_pool2d_forward", "max_pool2d_backward", "max_pool2d_backward_split",
    "max_pool2d_gather", "max_pool2d_gather_split", "max_pool2d_indices", "tap_dtype",
    "avg_pool2d_divisor", "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward", "adaptive_max_pool2d_gather",
]


# ----------------------------------------------------------------------------- helpers


def _pad(x, win, value):
    """x (N, C, H, W) placed into an (N, C, HP, WP) array filled with ``value``."""
    if not win.needs_padding():
        return x
    xp = get_array_module(x)
    HP, WP = win.padded_hw
    out = xp.full(x.shape[:-2] + (HP, WP), value, dtype=x.dtype)
    out[..., win.PH:win.PH + win.H, win.PW:win.PW + win.W] = x
    return out


def _crop(xpad, win):
    """The (N, C, H, W) input part of a padded (N, C, HP, WP) array (contiguous)."""
    if not win.needs_padding():
        return xpad
    xp = get_array_module(xpad)
    return xp.ascontiguousarray(xpad[..., win.PH:win.PH + win.H, win.PW:win.PW + win.W])


def _lowest(dtype):
    """The padding value of max pooling: -inf, or the smallest integer."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    if dtype.kind == "b":
        return False
    raise TypeError(f"max pooling: unsupported dtype {dtype}")


def tap_dtype(win):
    """The integer type of the tap numbers 0 .. K-1: uint8 while K <= 256, else int32."""
    return np.uint8 if win.K <= 256 else np.int32


def _axis_taps(xp, O, S, P, D, L, K):
    """For one axis: ``first`` (O,) the first tap of each window inside the input, and
    ``valid`` (K, O) whether tap k of window o is inside the input."""
    start = xp.arange(O) * S - P                       # (O,) input position of tap 0
    pos = start[None, :] + xp.arange(K)[:, None] * D   # (K, O)
    valid = (pos >= 0) & (pos < L)
    first = (xp.maximum(-start, 0) + D - 1) // D
    return first, valid


# ----------------------------------------------------------------------------- max pooling


def max_pool2d_forward(x, win):
    """Max over each window, and the tap that holds it.

    x: (N, C, H, W). Returns y (N, C, OH, OW) of x's dtype and arg (N, C, OH, OW), the tap
    number ``kh*KW + kw`` (uint8 when K <= 256) of the window's maximum.

    Ties and NaN follow PyTorch's CPU kernel: taps are scanned in row-major order and a
    tap replaces the running maximum when it is strictly greater, or NaN. So the FIRST of
    equal maxima wins, a NaN anywhere makes the output NaN (the last NaN's tap), and a
    window of -inf values points at its first tap inside the input (never at padding).
    """
    xp = get_array_module(x)
    xpad = _pad(x, win, _lowest(x.dtype))
    check_nan = x.dtype.kind == "f"
    tap_t = tap_dtype(win)
    first_h, _ = _axis_taps(xp, win.OH, win.SH, win.PH, win.DH, win.H, win.KH)
    first_w, _ = _axis_taps(xp, win.OW, win.SW, win.PW, win.DW, win.W, win.KW)
    # Where tap 0 lies in the padding, the running maximum starts at -inf (tap 0's value)
    # while arg starts at the window's first tap inside the input: a window whose inputs
    # are all -inf then points at that first input, as in PyTorch.
    first = (first_h[:, None] * win.KW + first_w[None, :]).astype(tap_t)
    y = arg = None
    for k, _kh, _kw, sl in win.tap_slices():
        v = xpad[sl]
        if y is None:
            y = v.copy()
            arg = xp.empty(y.shape, dtype=tap_t)
            arg[...] = first
            continue
        upd = v > y
        if check_nan:
            upd |= xp.isnan(v)
        xp.copyto(y, v, where=upd)
        xp.copyto(arg, xp.asarray(k, dtype=tap_t), where=upd)
    return y, arg


def max_pool2d_backward(gy, arg, win):
    """Route each window's gradient to the tap that held its maximum.

    gy, arg: (N, C, OH, OW). Returns gx (N, C, H, W): gx[tap] += gy for each window.
    Overlapping windows (stride < kernel) add up where they share the maximum.
    One strided slice per tap: within one tap the windows touch distinct positions.
    """
    xp = get_array_module(gy)
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for k, _kh, _kw, sl in win.tap_slices():
        gxpad[sl] += gy * (arg == k)
    return _crop(gxpad, win)


def _split_ties(x, y, win):
    """The tie='split' bookkeeping: ``is_max(kh, kw, sl)`` (N, C, OH, OW), whether tap
    (kh, kw) of each window is one of its maxima (never a padding tap; NaN maxima count
    NaN taps), and ``count`` (N, C, OH, OW), how many taps of each window are."""
    xp = get_array_module(x)
    xpad = _pad(x, win, _lowest(x.dtype))
    _, valid_h = _axis_taps(xp, win.OH, win.SH, win.PH, win.DH, win.H, win.KH)
    _, valid_w = _axis_taps(xp, win.OW, win.SW, win.PW, win.DW, win.W, win.KW)
    nan_y = xp.isnan(y) if y.dtype.kind == "f" else None
    if nan_y is not None and not bool(nan_y.any()):
        nan_y = None

    def is_max(kh, kw, sl):
        v = xpad[sl]
        eq = v == y
        if nan_y is not None:
            eq |= xp.isnan(v) & nan_y
        return eq & valid_h[kh][:, None] & valid_w[kw][None, :]

    count = xp.zeros(y.shape, dtype=x.dtype if x.dtype.kind == "f" else xp.float64)
    for _k, kh, kw, sl in win.tap_slices():
        count += is_max(kh, kw, sl)
    return is_max, count


def max_pool2d_backward_split(gy, x, y, win):
    """tie='split': share each window's gradient evenly among the taps equal to its max.

    gy, y: (N, C, OH, OW); x: (N, C, H, W). Returns gx (N, C, H, W). A window with m
    equal maxima gives gy/m to each; the total (sum of gx) equals the total of gy.
    Padding taps never count, even when the maximum is -inf. A NaN maximum is shared
    among the window's NaN taps. (Reference path only: ties are not the hot path.)
    """
    xp = get_array_module(gy)
    is_max, count = _split_ties(x, y, win)
    share = gy / count.astype(gy.dtype, copy=False)
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for _k, kh, kw, sl in win.tap_slices():
        gxpad[sl] += share * is_max(kh, kw, sl)
    return _crop(gxpad, win)


# The gathers below are the adjoints (transposes) of the max-pooling backwards, which are
# linear in gy: gy -> gx routes each window's gradient to fixed taps, so gx -> gy' reads
# those same taps back. A recorded backward (create_graph=True) differentiates a scatter
# with a gather and a gather with a scatter (``ops.pool.PoolScatterFunction``).


def max_pool2d_gather(gx, arg, win):
    """The adjoint of ``max_pool2d_backward``: gx (N, C, H, W) -> (N, C, OH, OW), each
    window's value of gx at the tap ``arg`` names (its maximum). Never a padding tap."""
    xp = get_array_module(gx)
    gxpad = _pad(gx, win, 0)
    out = xp.zeros(arg.shape, dtype=gx.dtype)
    for k, _kh, _kw, sl in win.tap_slices():
        out += gxpad[sl] * (arg == k)
    return out


def max_pool2d_gather_split(gx, x, y, win):
    """The adjoint of ``max_pool2d_backward_split``: gx (N, C, H, W) -> (N, C, OH, OW),
    each window's mean of gx over its m tied maxima (x, y: the forward's input and output)."""
    xp = get_array_module(gx)
    is_max, count = _split_ties(x, y, win)
    gxpad = _pad(gx, win, 0)
    total = xp.zeros(y.shape, dtype=gx.dtype)
    for _k, kh, kw, sl in win.tap_slices():
        total += gxpad[sl] * is_max(kh, kw, sl)
    return total / count.astype(gx.dtype, copy=False)


def max_pool2d_indices(arg, win):
    """PyTorch's ``return_indices``: the flat index ``ih*W + iw`` of each window's maximum
    within its (H, W) plane, int64 (N, C, OH, OW), from the tap numbers ``arg``."""
    xp = get_array_module(arg)
    k = arg.astype(xp.int64)
    kh, kw = k // win.KW, k % win.KW
    rows = (xp.arange(win.OH, dtype=xp.int64) * win.SH - win.PH)[:, None]
    cols = (xp.arange(win.OW, dtype=xp.int64) * win.SW - win.PW)[None, :]
    return (rows + kh * win.DH) * win.W + (cols + kw * win.DW)


# ----------------------------------------------------------------------------- avg pooling


def avg_pool2d_divisor(win, count_include_pad=True, divisor_override=None):
    """The (OH, OW) divisor of each window, PyTorch's rule.

    A window's extent is clipped to the padded input ``[-P, L + P)`` (a ceil_mode window
    can run past it); ``count_include_pad`` divides by that clipped extent, padding
    included; otherwise by the number of input taps only. ``divisor_override`` replaces
    both. The rule is separable: divisor = rows(oh) * cols(ow).
    """
    def axis(O, S, P, K, L):
        start = np.arange(O) * S - P
        end = np.minimum(start + K, L + P)
        with_pad = end - start
        inside = np.minimum(end, L) - np.maximum(start, 0)
        return with_pad, inside

    if divisor_override is not None:
        return np.full((win.OH, win.OW), divisor_override, dtype=np.int64)
    h_pad, h_in = axis(win.OH, win.SH, win.PH, win.KH, win.H)
    w_pad, w_in = axis(win.OW, win.SW, win.PW, win.KW, win.W)
    if count_include_pad:
        return h_pad[:, None] * w_pad[None, :]
    return h_in[:, None] * w_in[None, :]


def avg_pool2d_forward(x, win, divisor):
    """Sum over each window (zero padding) divided by ``divisor`` (OH, OW).

    x: (N, C, H, W) float. Returns y (N, C, OH, OW).
    """
    xp = get_array_module(x)
    xpad = _pad(x, win, 0)
    s = None
    for _k, _kh, _kw, sl in win.tap_slices():
        if s is None:
            s = xpad[sl].copy()
        else:
            s += xpad[sl]
    return s / xp.asarray(divisor, dtype=x.dtype)


def avg_pool2d_backward(gy, win, divisor):
    """Every tap of a window gets the window's gradient divided by its divisor.

    gy: (N, C, OH, OW). Returns gx (N, C, H, W); overlapping windows add up, and the
    share that falls on padding is dropped.
    """
    xp = get_array_module(gy)
    share = gy / xp.asarray(divisor, dtype=gy.dtype)
    HP, WP = win.padded_hw
    gxpad = xp.zeros(gy.shape[:-2] + (HP, WP), dtype=gy.dtype)
    for _k, _kh, _kw, sl in win.tap_slices():
        gxpad[sl] += share
    return _crop(gxpad, win)


# ----------------------------------------------------------------------------- adaptive
# The output size (OH, OW) is fixed; window i along an axis of length L spans
# [floor(i*L/O), ceil((i+1)*L/O)) (``geometry.adaptive_windows``): sizes vary, windows may
# overlap. Both poolings are separable: a rectangle's max is the max over rows of the max
# over columns, and its average is a row-averaging matrix times the plane times a
# column-averaging matrix.


def _avg_matrix(L, O, dtype):
    """(O, L) matrix whose row i averages the input positions start[i] .. end[i]-1."""
    start, end = adaptive_windows(L, O)
    pos = np.arange(L)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _global_average(x):
    """x (N, C, H, W) -> (N, C, 1, 1), the mean of each plane: each plane flattened times
    the averaging vector (1/HW, ..., 1/HW), the separable product below with OH = OW = 1.
    A product rather than ``x.mean``: NumPy's mean pays per plane, which on a head's
    planes of a few values is most of its time ((32, 512, 4, 4) float32: 328 -> 32 us).
    A 1x1 plane is its own mean; float16 keeps ``mean``, whose sums run in float32."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    if H * W == 1:
        return x.copy()
    if x.dtype.itemsize < 4:
        return x.mean(axis=(-2, -1), keepdims=True)
    v = xp.full((H * W, 1), 1 / (H * W), dtype=x.dtype)
    with single_blas(x.size):   # the threading policy (kernels/threads.py)
        return xp.matmul(x.reshape(N * C, H * W), v).reshape(N, C, 1, 1)


def _replication(L, O):
    """r when O = r L: every adaptive window along the axis is then one input position
    (window i reads position i // r), so the pool repeats each input r times; else 0."""
    return O // L if O % L == 0 else 0


def adaptive_avg_pool2d_forward(x, out_hw):
    """x (N, C, H, W) -> y (N, C, OH, OW): y = Ah @ x @ Aw^T per plane, Ah (OH, H) and
    Aw (OW, W) the averaging matrices of the adaptive windows (rows sum to 1). When OH and
    OW are multiples of H and W (GoogLeNet's aux heads on 32x32 images: 2x2 -> 4x4)
    each input is repeated instead: the same numbers without the products over planes of
    a few values ((32, 512, 2, 2) -> 4x4 float32, forward / backward: 0.57 / 0.85 ms as
    products, 0.22 / 0.38 repeated; GoogLeNet's training step 0.976x, A/B)."""
    xp = get_array_module(x)
    H, W = x.shape[-2:]
    OH, OW = out_hw
    if (OH, OW) == (1, 1):  # global average pooling (ResNet, GoogLeNet heads)
        return _global_average(x)
    rh, rw = _replication(H, OH), _replication(W, OW)
    if rh and rw:
        return xp.repeat(xp.repeat(x, rh, axis=-2), rw, axis=-1)
    Ah = xp.asarray(_avg_matrix(H, OH, x.dtype))
    Aw = xp.asarray(_avg_matrix(W, OW, x.dtype))
    with single_blas(x.size * max(OW, OH)):   # the threading policy (kernels/threads.py)
        t = (x.reshape(-1, W) @ Aw.T).reshape(x.shape[:-1] + (OW,))   # (N, C, H, OW)
        return xp.matmul(Ah, t)                                         # (N, C, OH, OW)


def adaptive_avg_pool2d_backward(gy, in_hw):
    """The transpose of the forward map: gx = Ah^T @ gy @ Aw per plane (each input
    position gets gy/size from every window containing it)."""
    xp = get_array_module(gy)
    H, W = in_hw
    OH, OW = gy.shape[-2:]
    if (OH, OW) == (1, 1):
        return xp.broadcast_to(gy / (H * W), gy.shape[:-2] + (H, W)).astype(gy.dtype)
    rh, rw = _replication(H, OH), _replication(W, OW)
    if rh and rw:           # each input's gradient: the sum over its rh x rw repeats
        gx = gy[..., 0::rh, 0::rw].copy()    # each input's first repeat; then the others
        for a in range(rh):  # (a reshape and .sum over the repeat axes: 9x slower)
            for b in range(rw):
                if a or b:
                    gx += gy[..., a::rh, b::rw]
        return gx
    Ah = xp.asarray(_avg_matrix(H, OH, gy.dtype))
    Aw = xp.asarray(_avg_matrix(W, OW, gy.dtype))
    with single_blas(gy.size * max(W, H)):    # the threading policy (kernels/threads.py)
        t = (gy.reshape(-1, OW) @ Aw).reshape(gy.shape[:-1] + (W,))    # (N, C, OH, W)
        return xp.ascontiguousarray(xp.matmul(Ah.T, t))                 # (N, C, H, W)


def _running_max_along(x, axis, start, end, xp):
    """Max of x over windows [start[i], end[i]) along ``axis`` (-1 or -2), and the input
    position of the first maximum (last NaN), scanning the window from its start."""
    sel = (lambda idx: x[..., idx]) if axis == -1 else (lambda idx: x[..., idx, :])
    start_x, end_x = xp.asarray(start), xp.asarray(end)
    pos_shape = (1, -1) if axis == -1 else (-1, 1)
    best = sel(start_x)                      # fancy indexing: a fresh array
    where = xp.empty(best.shape, dtype=xp.int64)
    where[...] = start_x.reshape(pos_shape)
    check_nan = x.dtype.kind == "f"
    for j in range(1, int((end - start).max())):
        pos = xp.minimum(start_x + j, end_x - 1)   # short windows repeat their last tap,
        v = sel(pos)                                 # which never wins a strict '>'
        upd = v > best
        if check_nan:
            upd |= xp.isnan(v)
        xp.copyto(best, v, where=upd)
        xp.copyto(where, xp.broadcast_to(pos.reshape(pos_shape), where.shape), where=upd)
    return best, where


def adaptive_max_pool2d_forward(x, out_hw):
    """x (N, C, H, W) -> y (N, C, OH, OW) and PyTorch's flat indices (int64, ih*W + iw).

    Separable: first the max over each column window of every row, (N, C, H, OW), then
    the max of those over each row window. Taking the first row that holds the maximum,
    and in it the first column, is exactly PyTorch's row-major first maximum (and for NaN,
    the last NaN in row-major order).
    """
    xp = get_array_module(x)
    H, W = x.shape[-2:]
    OH, OW = out_hw
    hs, he = adaptive_windows(H, OH)
    ws, we = adaptive_windows(W, OW)
    colmax, col = _running_max_along(x, -1, ws, we, xp)          # (N, C, H, OW)
    y, row = _running_max_along(colmax, -2, hs, he, xp)          # (N, C, OH, OW)
    col_at_row = xp.take_along_axis(col, row, axis=-2)
    return y, row * W + col_at_row


def adaptive_max_pool2d_backward(gy, indices, in_hw):
    """Scatter gy (N, C, OH, OW) to the flat indices of the maxima: gx (N, C, H, W).

    Adaptive windows may overlap (and repeat when OH > H), so one input position can
    receive several gradients; ``bincount`` adds them (a scatter-add without np.add.at).
    """
    xp = get_array_module(gy)
    H, W = in_hw
    lead = gy.shape[:-2]
    planes = int(np.prod(lead, dtype=np.int64))
    plane_ids = xp.arange(planes, dtype=xp.int64).reshape(lead + (1, 1))
    flat = (plane_ids * (H * W) + indices).ravel()
    gx = xp.bincount(flat, weights=gy.ravel().astype(xp.float64), minlength=planes * H * W)
    return gx.astype(gy.dtype).reshape(lead + (H, W))


def adaptive_max_pool2d_gather(gx, indices):
    """The adjoint of ``adaptive_max_pool2d_backward``: gx (N, C, H, W) -> (N, C, OH, OW),
    each window's value of gx at the flat index ``ih*W + iw`` of its maximum."""
    xp = get_array_module(gx)
    lead = gx.shape[:-2]
    planes = gx.reshape(lead + (-1,))                                   # (N, C, H*W)
    picked = xp.take_along_axis(planes, indices.reshape(lead + (-1,)), axis=-1)
    return picked.reshape(indices.shape)
