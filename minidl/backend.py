"""Array backends: the only module that knows about NumPy versus CuPy.

Everything above this module asks ``get_array_module(*arrays)`` for the array
namespace (``numpy`` or ``cupy``) and uses only the API the two share. CuPy is
imported lazily, on the first use of a GPU, so a CPU-only install never needs it.
"""
from __future__ import annotations

import numpy as np

_cupy = None          # the cupy module once imported
_cupy_error = None    # why importing it failed, for a clear message


def _import_cupy():
    """Import CuPy on first GPU use; remember the failure to explain it later."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: PLC0415 - deliberately lazy
            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = exc
    return _cupy


def cupy_loaded():
    """True once CuPy has been imported by minidl (it never is on a CPU-only run)."""
    return _cupy is not None


def cuda_is_available():
    """True when CuPy imports and sees at least one GPU."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


class Device:
    """A device: ``Device('cpu')``, ``Device('cuda')``, ``Device('cuda:1')``."""

    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        if isinstance(spec, Device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: unknown device type {kind!r} (expected 'cpu' or 'cuda')")
        if idx:
            index = int(idx)
        if kind == "cuda" and index is None:
            index = 0
        self.type, self.index = kind, index

    def __eq__(self, other):
        if other is self:               # every CPU array's device is the one CPU object
            return True
        if type(other) is not Device:
            try:
                other = Device(other)
            except (TypeError, ValueError):
                return NotImplemented
        return self.type == other.type and (self.index or 0) == (other.index or 0)

    def __hash__(self):
        return hash((self.type, self.index or 0))

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"


CPU = Device("cpu")


def is_cupy_array(a):
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def get_array_module(*arrays):
    """``numpy`` or ``cupy``: the namespace for these arrays (NumPy unless one lives on a GPU)."""
    for a in arrays:
        if is_cupy_array(a):
            return _cupy
    return np


def device_of(array):
    """The Device an array lives on."""
    if is_cupy_array(array):
        return Device("cuda", array.device.id)
    return CPU


def require_cupy():
    """The cupy module, or a RuntimeError saying whether CuPy or the GPU is missing."""
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(
            "minidl: device 'cuda' needs CuPy, which could not be imported "
            f"({type(_cupy_error).__name__}: {_cupy_error}). Install the 'gpu' extra "
            "(pip install 'minidl[gpu]') on a machine with an NVIDIA GPU.")
    if not cuda_is_available():
        raise RuntimeError("minidl: CuPy is installed but no CUDA GPU is visible to it.")
    return cp


def to_device(array, device):
    """Copy ``array`` to ``device`` (a no-op when it is already there)."""
    device = Device(device)
    if device.type == "cpu":
        if is_cupy_array(array):
            return array.get()
        return array
    cp = require_cupy()
    with cp.cuda.Device(device.index):
        return cp.asarray(array)


def to_numpy(array):
    """A NumPy array with the same values (copies from the GPU when needed)."""
    return array.get() if is_cupy_array(array) else np.asarray(array)
