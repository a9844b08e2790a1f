"""``minidl.cuda``: the GPU as ``torch.cuda`` shows it (availability, devices, memory).

Every function here reaches CuPy through ``backend.require_cupy()``, so CuPy is imported
on the first call that needs a GPU and never by ``import minidl``. Without CuPy or without
a visible GPU, ``is_available()`` is False, ``device_count()`` is 0 and
``manual_seed``/``manual_seed_all`` do nothing (as in PyTorch, so seeding code runs
everywhere); every other function raises the RuntimeError of ``backend.require_cupy()``,
which says whether CuPy or the GPU is missing.

``device`` arguments take what ``torch.cuda`` takes: None (the current device), an index,
``'cuda'``, ``'cuda:1'`` or ``minidl.device('cuda:1')``.

Memory counters are those of CuPy's default memory pool (``cupy.get_default_memory_pool()``),
which every minidl GPU array comes from unless you install another CuPy allocator:

- ``memory_allocated()``: bytes held by live arrays (the pool's ``used_bytes()``), as
  ``torch.cuda.memory_allocated``. Sizes are the pool's chunk sizes (rounded up to 512
  bytes), as PyTorch's caching allocator counts its rounded blocks.
- ``memory_reserved()``: bytes the pool holds from the driver, live or cached
  (``total_bytes()``), as ``torch.cuda.memory_reserved``; ``empty_cache()`` hands the
  cached ones back (``free_all_blocks()``).
- ``max_memory_allocated()``: the most ``memory_allocated()`` has been since
  ``reset_peak_memory_stats()``. CuPy keeps no such counter, so minidl wraps the pool's
  ``malloc`` (``cupy.cuda.set_allocator``) with a function that reads ``used_bytes()``
  after every allocation and keeps the maximum. Usage only rises at an allocation, so this
  is the exact high-water mark of ``used_bytes()`` (not the pool's ``total_bytes()``, which
  also counts cached free blocks). The wrapper is installed by the first call of
  ``reset_peak_memory_stats()`` or ``max_memory_allocated()``; the peak counts from then
  (an earlier high-water mark is not known). It costs one Python call per allocation;
  benchmarks time their runs before they install it.
"""
from __future__ import annotations

from . import backend

__all__ = ["is_available", "device_count", "current_device", "synchronize", "get_device_name",
           "get_device_capability", "memory_allocated", "memory_reserved",
           "max_memory_allocated", "reset_peak_memory_stats", "empty_cache", "manual_seed",
           "manual_seed_all"]


def is_available():
    """True when CuPy imports and sees at least one GPU."""
    return backend.cuda_is_available()


def device_count():
    """The number of GPUs CuPy sees; 0 without CuPy or without a GPU (as PyTorch)."""
    if not backend.cuda_is_available():
        return 0
    return int(backend.require_cupy().cuda.runtime.getDeviceCount())


def current_device():
    """The index of the current GPU."""
    return int(backend.require_cupy().cuda.runtime.getDevice())


def _index(device):
    """The GPU index a ``device`` argument names (None: the current one). Checks CuPy first,
    so a CPU-only machine gets require_cupy's message."""
    cp = backend.require_cupy()
    if device is None:
        return int(cp.cuda.runtime.getDevice())
    if isinstance(device, int) and not isinstance(device, bool):
        index = device
    else:
        dev = backend.Device(device)
        if dev.type != "cuda":
            raise ValueError(f"minidl.cuda: expected a CUDA device, got {str(dev)!r}")
        index = dev.index or 0
    count = cp.cuda.runtime.getDeviceCount()
    if not 0 <= index < count:
        raise ValueError(f"minidl.cuda: invalid device index {index} "
                         f"({count} GPU{'s' if count != 1 else ''} visible)")
    return index


def synchronize(device=None):
    """Wait until every kernel queued on ``device`` has finished (cudaDeviceSynchronize)."""
    cp = backend.require_cupy()
    cp.cuda.Device(_index(device)).synchronize()


def get_device_name(device=None):
    """The GPU's name, e.g. ``'NVIDIA H100 80GB HBM3'``."""
    cp = backend.require_cupy()
    name = cp.cuda.runtime.getDeviceProperties(_index(device))["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def get_device_capability(device=None):
    """The compute capability as ``(major, minor)``, e.g. ``(9, 0)`` for an H100."""
    cp = backend.require_cupy()
    cc = str(cp.cuda.Device(_index(device)).compute_capability)  # '90', '100', ...
    return int(cc[:-1]), int(cc[-1])


# --------------------------------------------------------------------------- memory

class _PeakTracker:
    """The CuPy allocator minidl installs: the default pool's ``malloc``, then a look at
    ``used_bytes()`` to keep each device's high-water mark."""

    def __init__(self, pool):
        self.pool = pool
        self.peaks = {}  # device index -> bytes

    def malloc(self, size):
        mem = self.pool.malloc(size)
        used = self.pool.used_bytes()  # the current device's pool: the one just used
        dev = mem.device_id
        if used > self.peaks.get(dev, 0):
            self.peaks[dev] = used
        return mem


_tracker = None


def _pool(cp):
    return cp.get_default_memory_pool()


def _install_tracker(cp):
    """Install the peak-tracking allocator once; refuse if someone else's allocator is in
    place (the counters would then describe a pool the arrays do not come from)."""
    global _tracker
    pool = _pool(cp)
    current = cp.cuda.get_allocator()
    if _tracker is not None and _tracker.pool is pool and current == _tracker.malloc:
        return _tracker
    if getattr(current, "__self__", None) is not pool and current != pool.malloc:
        raise RuntimeError(
            "minidl.cuda: a CuPy allocator other than the default memory pool is installed "
            f"({current!r}); minidl's memory counters track cupy.get_default_memory_pool() "
            "only. Restore it with cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc).")
    _tracker = _PeakTracker(pool)
    cp.cuda.set_allocator(_tracker.malloc)
    return _tracker


def memory_allocated(device=None):
    """Bytes held by live GPU arrays on ``device`` (CuPy's default pool, ``used_bytes()``)."""
    cp = backend.require_cupy()
    with cp.cuda.Device(_index(device)):
        return int(_pool(cp).used_bytes())


def memory_reserved(device=None):
    """Bytes the default pool holds from the driver on ``device``, live or cached."""
    cp = backend.require_cupy()
    with cp.cuda.Device(_index(device)):
        return int(_pool(cp).total_bytes())


def max_memory_allocated(device=None):
    """The peak of ``memory_allocated(device)`` since ``reset_peak_memory_stats()`` (or since
    peak tracking began: the first call of either; see the module docstring)."""
    cp = backend.require_cupy()
    index = _index(device)
    tracker = _install_tracker(cp)
    with cp.cuda.Device(index):
        now = int(_pool(cp).used_bytes())
    return max(tracker.peaks.get(index, 0), now)


def reset_peak_memory_stats(device=None):
    """Start the peak of ``max_memory_allocated`` again from the current usage."""
    cp = backend.require_cupy()
    index = _index(device)
    tracker = _install_tracker(cp)
    with cp.cuda.Device(index):
        tracker.peaks[index] = int(_pool(cp).used_bytes())


def empty_cache():
    """Hand the default pool's cached (unused) blocks on the current device back to the driver."""
    cp = backend.require_cupy()
    _pool(cp).free_all_blocks()


# --------------------------------------------------------------------------- seeds

def manual_seed(seed):
    """Seed CuPy's generator on the current GPU; does nothing without one (as PyTorch).

    minidl itself draws every random number, for every device, from the host generator
    that ``minidl.manual_seed`` seeds (and that call also seeds CuPy's once it is loaded),
    so this matters only to code that calls ``cupy.random`` directly.
    """
    if backend.cuda_is_available():
        backend.require_cupy().random.seed(int(seed))


def manual_seed_all(seed):
    """``manual_seed`` on every GPU."""
    if not backend.cuda_is_available():
        return
    cp = backend.require_cupy()
    for i in range(cp.cuda.runtime.getDeviceCount()):
        with cp.cuda.Device(i):
            cp.random.seed(int(seed))
