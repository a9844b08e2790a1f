"""Tensor factories: ``tensor``, ``zeros``, ``ones``, ``full``, ``randn``, ``rand``, ``arange``,
and their ``*_like`` forms. ``dtype`` defaults to the default dtype (float32 unless
``set_default_dtype`` changed it; int64 for integer data)."""
from __future__ import annotations

import numpy as np

from . import backend, random
from .autograd import Tensor, _as_array, get_default_dtype


def _shape(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(size[0])
    return tuple(size)


def _finish(array, device, requires_grad):
    if device is not None:
        array = backend.to_device(array, device)
    return Tensor(array, requires_grad=requires_grad)


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of ``data`` (a list, number, NumPy array or Tensor)."""
    arr = _as_array(data, dtype)
    xp = backend.get_array_module(arr)
    arr = xp.array(arr, copy=True)
    return _finish(arr, device, requires_grad)


def as_tensor(data, dtype=None, device=None):
    """Like ``tensor`` but shares memory with a NumPy array when no conversion is needed."""
    if isinstance(data, Tensor) and dtype is None and device is None:
        return data
    return _finish(_as_array(data, dtype), device, False)


def from_numpy(ndarray):
    """A CPU tensor that *shares memory* with the NumPy array ``ndarray``, as in PyTorch: a
    write through either one is seen by the other, and the dtype is the array's own
    (float64 stays float64). ``tensor(a)`` copies instead. Only numeric and bool arrays."""
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(ndarray).__name__}")
    if ndarray.dtype.kind not in "biufc":
        raise TypeError(f"from_numpy: arrays of dtype {ndarray.dtype} cannot become a tensor "
                        "(expected a numeric or bool dtype)")
    return Tensor(ndarray)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _finish(np.zeros(_shape(size), dtype or get_default_dtype()), device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _finish(np.ones(_shape(size), dtype or get_default_dtype()), device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    return _finish(np.full(tuple(size), fill_value, dtype or get_default_dtype()), device,
                   requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    return zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from minidl's seeded generator (``minidl.manual_seed``).

    float32 and float64 are drawn directly in their dtype (NumPy's ``standard_normal``
    takes a dtype): drawing float64 and converting would hold a float64 array and its
    float32 copy at once, three times the tensor's size at the peak. Other float dtypes
    (float16) are drawn in float32 and converted."""
    dtype = np.dtype(dtype or get_default_dtype())
    if dtype.kind != "f":
        raise TypeError(f"randn: expected a floating point dtype, got {dtype}; draw floats "
                        f"and convert them, or use randint for integers")
    draw = dtype if dtype in (np.float32, np.float64) else np.float32
    a = random.generator().standard_normal(_shape(size), dtype=draw)
    return _finish(a.astype(dtype, copy=False), device, requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False):
    """Uniform samples in [0, 1) from minidl's seeded generator."""
    a = random.random_array("uniform", _shape(size), dtype or get_default_dtype())
    return _finish(a, device, requires_grad)


def randint(low, high=None, size=(), dtype=None, device=None):
    if high is None:
        low, high = 0, low
    a = random.generator().integers(low, high, size=tuple(size)).astype(dtype or np.int64)
    return _finish(a, device, False)


def randperm(n, device=None):
    return _finish(random.generator().permutation(n).astype(np.int64), device, False)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """Evenly spaced values in [start, end); int64 for integer arguments, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if ints else get_default_dtype()
    return _finish(np.arange(start, end, step, dtype=dtype), device, requires_grad)


def linspace(start, end, steps, dtype=None, device=None):
    return _finish(np.linspace(start, end, steps, dtype=dtype or get_default_dtype()), device,
                   False)


def eye(n, m=None, dtype=None, device=None):
    return _finish(np.eye(n, m, dtype=dtype or get_default_dtype()), device, False)


def _like(factory):
    def like(input, dtype=None, device=None, requires_grad=False):  # noqa: A002
        return factory(input.shape, dtype=dtype or input.dtype,
                       device=device if device is not None else input.device,
                       requires_grad=requires_grad)
    like.__name__ = factory.__name__ + "_like"
    like.__doc__ = f"``{factory.__name__}`` with the shape, dtype and device of ``input``."
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
randn_like = _like(randn)
rand_like = _like(rand)
empty_like = _like(empty)


def full_like(input, fill_value, dtype=None, device=None, requires_grad=False):  # noqa: A002
    return full(input.shape, fill_value, dtype=dtype or input.dtype,
                device=device if device is not None else input.device, requires_grad=requires_grad)
