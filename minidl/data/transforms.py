"""Image transforms with torchvision's names, for one image or a whole batch at once.

What they take and give:

- ``ToTensor`` takes NumPy arrays of pixels (uint8 ``HW`` or ``HWC``, divided by 255; other
  dtypes are only converted, as torchvision does) and gives a float32 ``minidl.Tensor``
  ``CHW``.
- Every other transform takes a NumPy array (a CuPy array works too) or a ``minidl.Tensor``
  and gives back the same kind: ``CHW`` (or ``HW``) for one image, ``NCHW`` for a batch.
  Tensors are transformed as plain arrays: no autograd graph is recorded.

Batches. ``t(x)`` treats a 4-D input as a batch ``NCHW`` and anything smaller as one image.
``t.apply_batch(x)`` says explicitly that axis 0 is the batch: that is how datasets
transform a whole batch of raw images at once (``ToTensor().apply_batch`` maps uint8
``NHW``/``NHWC`` to float32 ``NCHW``, which ``ToTensor()(x)`` cannot tell from one
``HWC`` image). In a batch, random transforms draw their parameters independently for
every image, vectorised (one gather for all the crops of a batch, not a Python loop).
``supports_batch(t)`` says whether ``t`` can do this; ``Compose`` can when all its
transforms can; a plain function (or ``Lambda``) cannot unless declared ``batched=True``,
and then datasets fall back to transforming one image at a time.

Determinism. ``is_deterministic(t)`` says whether ``t`` gives an image the same result
every time, whatever batch it comes in (``ToTensor``, ``Normalize``, ``Resize``, ``Pad``,
``CenterCrop``; a ``Compose`` of such): ``DeviceDataLoader`` applies those once to a whole
dataset instead of to every batch of every epoch. Random transforms, ``Lambda`` and
transforms that do not say (``deterministic = True``) are taken to be random.

Randomness comes from minidl's seeded generator (``minidl.manual_seed``), or from the
``generator`` (a ``numpy.random.Generator``) given to the transform.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from .. import random as _random
from ..autograd import Tensor

__all__ = ["Transform", "Compose", "Lambda", "ToTensor", "Normalize", "Resize", "Pad",
           "CenterCrop", "RandomCrop", "RandomHorizontalFlip", "RandomAffine",
           "InterpolationMode", "supports_batch", "is_deterministic", "resize",
           "interpolation_matrix", "pad", "crop_batch", "affine"]


class InterpolationMode:
    """torchvision's names for the interpolation modes (plain strings work as well)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"


def supports_batch(transform):
    """Whether ``transform.apply_batch(batch)`` transforms a whole batch at once."""
    return bool(getattr(transform, "supports_batch", False)) and callable(
        getattr(transform, "apply_batch", None))


def is_deterministic(transform):
    """Whether ``transform`` maps an image to the same result every time, whatever batch it
    is in (so it may be applied once to a whole dataset). Unknown transforms: False."""
    return bool(getattr(transform, "deterministic", False))


def _unwrap(x):
    """(array, was_tensor)."""
    if isinstance(x, Tensor):
        return x.data, True
    if isinstance(x, np.ndarray) or backend.is_cupy_array(x):
        return x, False
    return np.asarray(x), False


def _wrap(arr, was_tensor):
    return Tensor(arr) if was_tensor else arr


def _gen(generator):
    return _random.generator() if generator is None else generator


def _image_size(size, what):
    """A transform's ``size`` argument as (h, w): an int (a square) or a sequence of one
    or two sizes, each made an int; a longer one is a ValueError naming ``what``, as in
    torchvision. (Not ``geometry.pair``: that one refuses non-int elements and raises
    TypeError for a wrong length, the rules of conv and pool arguments.)"""
    if isinstance(size, numbers.Integral):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"{what}: expected an int or a pair (h, w), got {size!r}")
    return size


def _interp_name(mode):
    name = getattr(mode, "value", mode)
    name = str(name).lower()
    if name not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation {mode!r} is not supported; use 'bilinear' or 'nearest'")
    return name


def _float_work(arr):
    """(array in a float dtype to compute with, function giving the result in arr's dtype)."""
    if arr.dtype.kind == "f":
        return arr, lambda y: y
    xp = backend.get_array_module(arr)
    dtype = arr.dtype
    if dtype == np.bool_:
        return arr.astype(np.float32), lambda y: y > 0.5
    info = np.iinfo(dtype)
    return arr.astype(np.float32), lambda y: xp.clip(xp.rint(y), info.min, info.max).astype(dtype)


class Transform:
    """Base class: subclasses define ``_single(arr)`` (one image, ``CHW`` or ``HW``) and
    ``_batch(arr)`` (``N...``); deterministic transforms that work on ``[..., H, W]`` only
    define ``_apply(arr)``. ``deterministic``: set it to True in a subclass whose result for
    an image depends on nothing else (no random draw, no other image of the batch)."""

    supports_batch = True
    deterministic = False

    def _apply(self, arr):  # pragma: no cover - subclasses override
        raise NotImplementedError

    def _single(self, arr):
        return self._apply(arr)

    def _batch(self, arr):
        return self._apply(arr)

    def __call__(self, x):
        arr, was_tensor = _unwrap(x)
        out = self._batch(arr) if arr.ndim == 4 else self._single(arr)
        return _wrap(out, was_tensor)

    def apply_batch(self, x):
        arr, was_tensor = _unwrap(x)
        if arr.ndim < 3:
            raise ValueError(f"{type(self).__name__}.apply_batch: expected a batch (N, C, H, W) "
                             f"or (N, H, W), got shape {tuple(arr.shape)}")
        return _wrap(self._batch(arr), was_tensor)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Compose:
    """Apply ``transforms`` in order: ``Compose([ToTensor(), Resize((32, 32))])``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def supports_batch(self):
        return all(supports_batch(t) for t in self.transforms)

    @property
    def deterministic(self):
        return all(is_deterministic(t) for t in self.transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def apply_batch(self, x):
        for t in self.transforms:
            if not supports_batch(t):
                raise TypeError(f"Compose.apply_batch: {t!r} cannot transform a batch at once")
            x = t.apply_batch(x)
        return x

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Lambda:
    """A user function as a transform. ``batched=True`` declares that ``fn`` also accepts a
    batch (axis 0), so datasets may call it once per batch."""

    def __init__(self, fn, batched=False):
        if not callable(fn):
            raise TypeError(f"Lambda: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.supports_batch = bool(batched)

    def __call__(self, x):
        return self.fn(x)

    def apply_batch(self, x):
        if not self.supports_batch:
            raise TypeError("Lambda.apply_batch: this Lambda was not declared batched=True")
        return self.fn(x)

    def __repr__(self):
        return f"Lambda({getattr(self.fn, '__name__', self.fn)!r})"


# ----------------------------------------------------------------------------- ToTensor


class ToTensor(Transform):
    """Pixels to a float32 ``minidl.Tensor``: ``HW`` -> ``1HW``, ``HWC`` -> ``CHW`` (and, as a
    batch, ``NHW`` -> ``N1HW``, ``NHWC`` -> ``NCHW``). uint8 pixels are divided by 255 so
    values lie in [0, 1]; other dtypes are only converted to float32 (as torchvision)."""

    deterministic = True

    @staticmethod
    def _to_float(arr):
        xp = backend.get_array_module(arr)
        if arr.dtype == np.uint8:
            return arr.astype(xp.float32) / xp.float32(255)
        return arr.astype(xp.float32, copy=False)

    def _single(self, arr):
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)
        else:
            raise ValueError(f"ToTensor: expected an image HW or HWC (or a batch NHWC), got "
                             f"shape {tuple(arr.shape)}")
        xp = backend.get_array_module(arr)
        return xp.ascontiguousarray(self._to_float(arr))

    def _batch(self, arr):
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4:
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"ToTensor: expected a batch NHW or NHWC, got shape "
                             f"{tuple(arr.shape)}")
        xp = backend.get_array_module(arr)
        return xp.ascontiguousarray(self._to_float(arr))

    def __call__(self, pic):
        arr, _ = _unwrap(pic)
        return Tensor(self._batch(arr) if arr.ndim == 4 else self._single(arr))

    def apply_batch(self, pics):
        arr, _ = _unwrap(pics)
        return Tensor(self._batch(arr))


# ----------------------------------------------------------------------------- Normalize


class Normalize(Transform):
    """``(x - mean[c]) / std[c]`` per channel (axis -3): ``CHW`` or ``NCHW`` floats."""

    deterministic = True

    def __init__(self, mean, std, inplace=False):
        self.mean = tuple(float(m) for m in np.atleast_1d(mean))
        self.std = tuple(float(s) for s in np.atleast_1d(std))
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: std contains a zero ({self.std}), which would divide "
                             "by zero")
        self.inplace = inplace

    def _apply(self, arr):
        if arr.ndim < 3:
            raise ValueError(f"Normalize: expected CHW or NCHW, got shape {tuple(arr.shape)}")
        if arr.dtype.kind != "f":
            raise TypeError(f"Normalize: expected a float image (use ToTensor first), got "
                            f"{arr.dtype}")
        c = arr.shape[-3]
        if len(self.mean) not in (1, c) or len(self.std) not in (1, c):
            raise ValueError(f"Normalize: {len(self.mean)} means and {len(self.std)} stds for "
                             f"an image with {c} channels")
        xp = backend.get_array_module(arr)
        mean = xp.asarray(self.mean, dtype=arr.dtype).reshape(-1, 1, 1)
        std = xp.asarray(self.std, dtype=arr.dtype).reshape(-1, 1, 1)
        if self.inplace:
            arr -= mean
            arr /= std
            return arr
        return (arr - mean) / std

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


# ----------------------------------------------------------------------------- Resize


def _linear_taps(n_in, n_out):
    """Bilinear taps along one axis, align_corners=False, no antialiasing, as PyTorch:
    ``src = (dst + 0.5) * n_in / n_out - 0.5`` clamped at 0, between pixels floor(src)
    and floor(src) + 1 (clamped to the last pixel). Returns (index, weight), each
    (n_out, 2)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = src - i0
    return np.stack([i0, i1], axis=1), np.stack([1.0 - lam1, lam1], axis=1)


def _antialias_taps(n_in, n_out):
    """Taps of PyTorch's antialiased bilinear downscaling: a triangle filter stretched by
    the scale, normalised per output pixel. (index, weight), each (n_out, K)."""
    scale = n_in / n_out
    support = scale  # bilinear: interp_size / 2 * scale
    rows = []
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        j = np.arange(xmin, xmax)
        tri = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / scale))
        total = tri.sum()
        rows.append((j, tri / total if total > 0 else tri))
    k = max(len(j) for j, _ in rows)
    index, weight = np.zeros((n_out, k), np.int64), np.zeros((n_out, k))
    for i, (j, wt) in enumerate(rows):
        index[i, :len(j)], weight[i, :len(j)] = j, wt
    return index, weight


def _nearest_taps(n_in, n_out):
    """PyTorch's 'nearest': src = floor(dst * n_in / n_out)."""
    src = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
    return src[:, None], np.ones((n_out, 1))


_MATRIX_CACHE = {}


def interpolation_matrix(n_in, n_out, mode="bilinear", antialias=True):
    """(n_out, n_in) float64 matrix ``M`` with ``out = M @ in`` along one axis."""
    key = (n_in, n_out, mode, bool(antialias and n_out < n_in and mode == "bilinear"))
    m = _MATRIX_CACHE.get(key)
    if m is None:
        if mode == "nearest":
            index, weight = _nearest_taps(n_in, n_out)
        elif key[3]:
            index, weight = _antialias_taps(n_in, n_out)
        else:
            index, weight = _linear_taps(n_in, n_out)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out)[:, None], index), weight)
        m.setflags(write=False)
        _MATRIX_CACHE[key] = m
    return m


def resize(x, size, interpolation="bilinear", antialias=True):
    """Resize the last two axes of ``x`` (``[..., H, W]``) to ``size`` = (h, w).

    Bilinear (align_corners=False) or nearest, as PyTorch's ``F.interpolate`` computes them;
    ``antialias`` only matters when shrinking with bilinear (as in torchvision). Separable:
    ``out = Mh @ img @ Mw.T`` with (h, H) and (w, W) interpolation matrices, for the whole
    batch as two stacked matrix products (one small product per image, which BLAS runs
    on one thread: a single large product would be split over threads, which is slower
    for such sizes when the cores are busy). Integer images are computed in float32,
    rounded and clipped.
    """
    arr, was_tensor = _unwrap(x)
    mode = _interp_name(interpolation)
    oh, ow = _image_size(size, "resize")
    if arr.ndim < 2:
        raise ValueError(f"resize: expected [..., H, W], got shape {tuple(arr.shape)}")
    h, w = arr.shape[-2:]
    if (oh, ow) == (h, w):
        return x
    if oh <= 0 or ow <= 0:
        raise ValueError(f"resize: the output size must be positive, got {(oh, ow)}")
    work, finish = _float_work(arr)
    xp = backend.get_array_module(work)
    mh = xp.asarray(interpolation_matrix(h, oh, mode, antialias), dtype=work.dtype)
    # contiguous: NumPy's matmul skips BLAS for a transposed (strided) operand
    mw_t = xp.ascontiguousarray(interpolation_matrix(w, ow, mode, antialias).T,
                                dtype=work.dtype)
    lead = work.shape[:-2]
    stack = work.reshape(-1, h, w)
    y = xp.matmul(mh, xp.matmul(stack, mw_t))   # (M, oh, ow): width first, then height
    return _wrap(finish(y.reshape(*lead, oh, ow)), was_tensor)


class Resize(Transform):
    """Resize to ``size``: a pair (h, w), or an int for the shorter side (keeping the aspect
    ratio, as torchvision; ``max_size`` caps the longer side). ``Resize((32, 32))`` on a
    float tensor gives what torchvision gives (bilinear, align_corners=False)."""

    deterministic = True

    def __init__(self, size, interpolation="bilinear", max_size=None, antialias=True):
        if isinstance(size, numbers.Integral):
            self.size = int(size)
        else:
            self.size = _image_size(size, "Resize")
        self.interpolation = _interp_name(interpolation)
        self.max_size = max_size
        self.antialias = antialias

    def output_size(self, h, w):
        if not isinstance(self.size, int):
            return self.size
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def _apply(self, arr):
        return resize(arr, self.output_size(*arr.shape[-2:]), self.interpolation,
                      self.antialias)

    def __repr__(self):
        return f"Resize(size={self.size}, interpolation={self.interpolation})"


# ----------------------------------------------------------------------------- Pad / crops


def _padding(padding):
    """(left, top, right, bottom) from an int, (lr, tb) or (l, t, r, b)."""
    if isinstance(padding, numbers.Integral):
        p = (int(padding),) * 4
    else:
        p = tuple(int(v) for v in padding)
        if len(p) == 1:
            p = p * 4
        elif len(p) == 2:
            p = (p[0], p[1], p[0], p[1])
        elif len(p) != 4:
            raise ValueError(f"Pad: padding must be an int or 1, 2 or 4 ints, got {padding!r}")
    if min(p) < 0:
        raise ValueError(f"Pad: padding must be non-negative, got {padding!r}")
    return p


# torchvision's names, which are also the array libraries' np.pad modes
_PAD_MODES = ("constant", "edge", "reflect", "symmetric")


def pad(x, padding, fill=0, padding_mode="constant"):
    """Pad the last two axes of ``x``: padding (left, top, right, bottom) as for ``Pad``."""
    arr, was_tensor = _unwrap(x)
    left, top, right, bottom = _padding(padding)
    if padding_mode not in _PAD_MODES:
        raise ValueError(f"Pad: padding_mode must be one of {sorted(_PAD_MODES)}, got "
                         f"{padding_mode!r}")
    xp = backend.get_array_module(arr)
    h, w = arr.shape[-2:]
    if padding_mode == "constant":
        out = xp.empty(arr.shape[:-2] + (h + top + bottom, w + left + right), dtype=arr.dtype)
        fill_arr = xp.asarray(fill, dtype=arr.dtype)
        out[...] = fill_arr.reshape(-1, 1, 1) if fill_arr.ndim else fill_arr
        out[..., top:top + h, left:left + w] = arr
    else:
        width = [(0, 0)] * (arr.ndim - 2) + [(top, bottom), (left, right)]
        out = xp.pad(arr, width, mode=padding_mode)
    return _wrap(out, was_tensor)


class Pad(Transform):
    """Pad the borders: ``padding`` an int (all sides), (left/right, top/bottom) or
    (left, top, right, bottom); ``fill`` for 'constant' mode (a number or one per channel);
    ``padding_mode`` 'constant', 'edge', 'reflect' or 'symmetric'."""

    deterministic = True

    def __init__(self, padding, fill=0, padding_mode="constant"):
        self.padding = _padding(padding)
        self.fill = fill
        self.padding_mode = padding_mode

    def _apply(self, arr):
        return pad(arr, self.padding, self.fill, self.padding_mode)

    def __repr__(self):
        return f"Pad(padding={self.padding}, fill={self.fill}, mode={self.padding_mode})"


class CenterCrop(Transform):
    """Crop the centre (h, w) (rounded as torchvision); smaller images are zero-padded."""

    deterministic = True

    def __init__(self, size):
        self.size = _image_size(size, "CenterCrop")

    def _apply(self, arr):
        th, tw = self.size
        h, w = arr.shape[-2:]
        if th > h or tw > w:
            ph, pw = max(th - h, 0), max(tw - w, 0)
            arr = pad(arr, (pw // 2, ph // 2, (pw + 1) // 2, (ph + 1) // 2))
            h, w = arr.shape[-2:]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return arr[..., top:top + th, left:left + tw]

    def __repr__(self):
        return f"CenterCrop(size={self.size})"


def crop_batch(x, top, left, height, width):
    """Crop image ``n`` of the batch ``x`` (``NCHW``) at (top[n], left[n]), size
    (height, width), all at once: one fancy-indexing gather from the sliding-window view
    of the batch (no copy but the result's)."""
    arr, was_tensor = _unwrap(x)
    xp = backend.get_array_module(arr)
    n = arr.shape[0]
    top = xp.asarray(top, dtype=xp.int64).reshape(n)
    left = xp.asarray(left, dtype=xp.int64).reshape(n)
    windows = _sliding_window_view(xp)
    if windows is not None:
        view = windows(arr, (height, width), axis=(-2, -1))   # (N, C, H-h+1, W-w+1, h, w)
        out = view[xp.arange(n), :, top, left]                 # (N, C, h, w)
    else:
        c = arr.shape[1]
        rows = top.reshape(n, 1, 1, 1) + xp.arange(height).reshape(1, 1, height, 1)
        cols = left.reshape(n, 1, 1, 1) + xp.arange(width).reshape(1, 1, 1, width)
        out = arr[xp.arange(n).reshape(n, 1, 1, 1), xp.arange(c).reshape(1, c, 1, 1), rows,
                  cols]
    return _wrap(out, was_tensor)


def _sliding_window_view(xp):
    tricks = getattr(getattr(xp, "lib", None), "stride_tricks", None)
    return getattr(tricks, "sliding_window_view", None)


class RandomCrop(Transform):
    """Crop a random (h, w) window, after optional padding (as torchvision's RandomCrop).
    In a batch every image gets its own offsets."""

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0,
                 padding_mode="constant", generator=None):
        self.size = _image_size(size, "RandomCrop")
        self.padding = None if padding is None else _padding(padding)
        self.pad_if_needed = pad_if_needed
        self.fill = fill
        self.padding_mode = padding_mode
        self.generator = generator

    def _prepare(self, arr):
        if self.padding is not None:
            arr = pad(arr, self.padding, self.fill, self.padding_mode)
        th, tw = self.size
        h, w = arr.shape[-2:]
        if self.pad_if_needed and (h < th or w < tw):
            ph, pw = max(th - h, 0), max(tw - w, 0)
            arr = pad(arr, (pw, ph, pw, ph), self.fill, self.padding_mode)
            h, w = arr.shape[-2:]
        if h < th or w < tw:
            raise ValueError(f"RandomCrop: crop size {(th, tw)} is larger than the (padded) "
                             f"image {(h, w)}")
        return arr

    def get_params(self, image_size):
        """(top, left) for one image of (padded) size (H, W)."""
        h, w = image_size
        g = _gen(self.generator)
        top = int(g.integers(0, h - self.size[0] + 1))
        left = int(g.integers(0, w - self.size[1] + 1))
        return top, left

    def get_batch_params(self, n, image_size):
        """(top, left) arrays of shape (n,) for a batch of (padded) size (H, W)."""
        h, w = image_size
        g = _gen(self.generator)
        top = g.integers(0, h - self.size[0] + 1, size=n)
        left = g.integers(0, w - self.size[1] + 1, size=n)
        return top, left

    def _single(self, arr):
        arr = self._prepare(arr)
        top, left = self.get_params(arr.shape[-2:])
        return arr[..., top:top + self.size[0], left:left + self.size[1]]

    def _batch(self, arr):
        if arr.ndim == 3:  # (N, H, W)
            return self._batch(arr[:, None])[:, 0]
        arr = self._prepare(arr)
        top, left = self.get_batch_params(arr.shape[0], arr.shape[-2:])
        return crop_batch(arr, top, left, *self.size)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p`` (per image in a batch)."""

    def __init__(self, p=0.5, generator=None):
        self.p = float(p)
        self.generator = generator

    def _single(self, arr):
        return arr[..., ::-1].copy() if _gen(self.generator).random() < self.p else arr

    def _batch(self, arr):
        xp = backend.get_array_module(arr)
        flip = xp.asarray(_gen(self.generator).random(arr.shape[0]) < self.p)
        flip = flip.reshape((-1,) + (1,) * (arr.ndim - 1))
        return xp.where(flip, arr[..., ::-1], arr)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


# ----------------------------------------------------------------------------- affine


def _inverse_affine_matrices(angle, tx, ty, scale, shear_x, shear_y):
    """(N, 2, 3) matrices mapping output pixel coordinates (relative to the image centre)
    to input ones, as torchvision's ``_get_inverse_affine_matrix`` (for tensors, which
    rotates by ``-angle``): so a positive angle turns the picture counter-clockwise."""
    rot = np.radians(-np.asarray(angle, dtype=np.float64))
    sx, sy = np.radians(shear_x), np.radians(shear_y)
    a = np.cos(rot - sy) / np.cos(sy)
    b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
    c = np.sin(rot - sy) / np.cos(sy)
    d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
    m = np.stack([d, -b, np.zeros_like(d), -c, a, np.zeros_like(d)], axis=-1)
    m = m / np.asarray(scale, dtype=np.float64)[..., None]
    m[..., 2] += m[..., 0] * -tx + m[..., 1] * -ty
    m[..., 5] += m[..., 3] * -tx + m[..., 4] * -ty
    return m.reshape(-1, 2, 3)


def affine(x, matrices, interpolation="nearest", fill=0):
    """Warp each image of the batch ``x`` (``NCHW``) by its inverse matrix (``(N, 2, 3)``,
    output -> input, coordinates relative to the image centre), sampling with 'nearest'
    or 'bilinear'; pixels from outside the image get ``fill``. All images at once: the
    source positions of every output pixel are computed together and gathered with one
    ``take`` per sampling tap."""
    arr, was_tensor = _unwrap(x)
    mode = _interp_name(interpolation)
    xp = backend.get_array_module(arr)
    work, finish = _float_work(arr)
    n, c, h, w = work.shape
    f = work.dtype
    itype = xp.int32 if work.size < 2 ** 31 else xp.int64
    m = xp.asarray(matrices, dtype=f).reshape(n, 2, 3, 1, 1)
    gx = (xp.arange(w, dtype=f) - f.type((w - 1) / 2.0)).reshape(1, w)
    gy = (xp.arange(h, dtype=f) - f.type((h - 1) / 2.0)).reshape(h, 1)

    def coordinate(row, centre):
        """input pixel coordinate (N, H, W) of every output pixel (few temporaries: this
        runs on every batch)."""
        out = xp.empty((n, h, w), dtype=f)
        xp.multiply(m[:, row, 0], gx, out=out)
        out += m[:, row, 1] * gy
        out += m[:, row, 2] + f.type(centre)
        return out

    px, py = coordinate(0, (w - 1) / 2.0), coordinate(1, (h - 1) / 2.0)
    flat = work.reshape(-1)
    plane_size = h * w
    planes = (xp.arange(n * c, dtype=itype) * plane_size).reshape(n, c, 1, 1)

    def gather(iy, ix):
        """(values (N, C, H, W) at the integer positions (N, H, W), clamped; where valid)."""
        valid = (ix.view(xp.uint32 if itype == xp.int32 else xp.uint64) < w) & \
                (iy.view(xp.uint32 if itype == xp.int32 else xp.uint64) < h)
        pos = xp.clip(iy, 0, h - 1)
        pos *= w
        pos += xp.clip(ix, 0, w - 1)
        return xp.take(flat, planes + pos[:, None]), valid[:, None]

    if mode == "nearest":
        xp.rint(px, out=px)
        xp.rint(py, out=py)
        out, valid = gather(py.astype(itype), px.astype(itype))
        xp.copyto(out, f.type(fill), where=~valid)
    else:
        x0, y0 = xp.floor(px), xp.floor(py)
        fx, fy = px, py
        fx -= x0                                  # fractional parts, in place
        fy -= y0
        x0, y0 = x0.astype(itype), y0.astype(itype)
        out = xp.zeros(work.shape, dtype=f)
        mask = xp.zeros((n, 1, h, w), dtype=f) if fill != 0 else None
        wx = (1 - fx, fx)
        wy = (1 - fy, fy)
        for dy in (0, 1):
            for dx in (0, 1):
                vals, valid = gather(y0 + dy if dy else y0, x0 + dx if dx else x0)
                weight = wy[dy] * wx[dx]
                weight = weight[:, None] * valid
                vals *= weight
                out += vals
                if mask is not None:
                    mask += weight
        if mask is not None:
            out += (1 - mask) * f.type(fill)
    return _wrap(finish(out), was_tensor)


def _range(value, name):
    if value is None:
        return None
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f"RandomAffine: {name} must be non-negative, got {value}")
        return (-float(value), float(value))
    value = tuple(float(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"RandomAffine: {name} must be a number or a pair, got {value!r}")
    return value


class RandomAffine(Transform):
    """A random rotation (``degrees``: d or (min, max)), translation (``translate`` = (a, b):
    up to a*W horizontally and b*H vertically, whole pixels as torchvision), scaling
    (``scale`` = (min, max)) and shear (``shear``: s, (min, max) along x, or (xmin, xmax,
    ymin, ymax)) about the image centre; torchvision's parameters and default 'nearest'
    sampling. Every image of a batch gets its own draw; all are warped in one gather."""

    def __init__(self, degrees, translate=None, scale=None, shear=None,
                 interpolation="nearest", fill=0, generator=None):
        self.degrees = _range(degrees, "degrees")
        if translate is not None:
            translate = tuple(float(t) for t in translate)
            if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
                raise ValueError(f"RandomAffine: translate must be two fractions in [0, 1], got "
                                 f"{translate!r}")
        self.translate = translate
        if scale is not None:
            scale = tuple(float(s) for s in scale)
            if len(scale) != 2 or min(scale) <= 0:
                raise ValueError(f"RandomAffine: scale must be a positive pair, got {scale!r}")
        self.scale = scale
        if shear is not None and not isinstance(shear, numbers.Number) and len(shear) == 4:
            shear = tuple(float(s) for s in shear)
            self.shear = (shear[:2], shear[2:])
        else:
            self.shear = (_range(shear, "shear"), None) if shear is not None else None
        self.interpolation = _interp_name(interpolation)
        self.fill = fill
        self.generator = generator

    def get_batch_params(self, n, image_size):
        """(N, 2, 3) inverse matrices for ``n`` images of size (H, W)."""
        h, w = image_size
        g = _gen(self.generator)
        angle = g.uniform(*self.degrees, size=n)
        tx = ty = np.zeros(n)
        if self.translate is not None:
            mx, my = self.translate[0] * w, self.translate[1] * h
            tx = np.round(g.uniform(-mx, mx, size=n))
            ty = np.round(g.uniform(-my, my, size=n))
        sc = g.uniform(*self.scale, size=n) if self.scale is not None else np.ones(n)
        shx = shy = np.zeros(n)
        if self.shear is not None:
            shx = g.uniform(*self.shear[0], size=n)
            if self.shear[1] is not None:
                shy = g.uniform(*self.shear[1], size=n)
        return _inverse_affine_matrices(angle, tx, ty, sc, shx, shy)

    def _single(self, arr):
        squeeze = arr.ndim == 2
        batch = arr[None, None] if squeeze else arr[None]
        out = self._batch(batch)
        return out[0, 0] if squeeze else out[0]

    def _batch(self, arr):
        if arr.ndim == 3:  # (N, H, W)
            return self._batch(arr[:, None])[:, 0]
        m = self.get_batch_params(arr.shape[0], arr.shape[-2:])
        return affine(arr, m, self.interpolation, self.fill)

    def __repr__(self):
        return (f"RandomAffine(degrees={self.degrees}, translate={self.translate}, "
                f"scale={self.scale}, shear={self.shear})")

