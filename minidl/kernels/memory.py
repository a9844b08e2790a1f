"""The CPU memory policy: whether the C allocator keeps freed memory for the next step.

A training step allocates its activations and gradients afresh (NumPy arrays of up to
tens of MB) and frees them at the end of the step. glibc's malloc serves a request above
its mmap threshold with a fresh ``mmap`` and returns it to the system on ``free``, and
trims the top of its heap once more than its trim threshold lies free there; either way
the next step's arrays come as new pages, and the kernel faults every 4 KiB page in on
first touch (zeroing it) inside whatever minidl kernel writes it first. The thresholds
adapt (a freed mmapped block raises them to its size), but a step's working set is many
such blocks, so a training loop keeps handing memory back and faulting it in again.

Measured on the 2-core dev VM (benchmarks/RESULTS.md), the LeNet seed-recipe epoch run
on its own: 700,000-870,000 minor page faults per epoch (5 MB of fresh pages a step) and
3.9-4.8 s with glibc's adaptive thresholds; 12-31 faults and 3.0-3.7 s with the
``'retain'`` policy below.

Policies (``set_memory_policy``):

* ``'retain'`` (the default, applied when minidl is imported): blocks up to
  ``RETAIN_MMAP_THRESHOLD`` come from the heap, and up to ``RETAIN_TRIM_THRESHOLD`` of
  free memory stays at its top (glibc ``mallopt(M_MMAP_THRESHOLD)`` and
  ``mallopt(M_TRIM_THRESHOLD)``). Freed memory is reused by the next step instead of
  being faulted in again; the process's resident memory stays at its peak (which is what
  a training loop reaches every step anyway) instead of falling between steps.
* ``'system'``: glibc's initial thresholds (128 KiB each). glibc's own adaptation of the
  thresholds, which setting them switches off, does not come back, so this is slower than
  a process that never set them: every block above 128 KiB is mapped afresh (the LeNet
  step alone: 14 ms against 5-6 ms with ``'retain'``). It is there to hand memory back
  between phases of a long-lived process, not for training loops.

This is a process-wide setting of the C library: it applies to every allocation in the
process (NumPy's, PyTorch's, ...), not only minidl's. Elsewhere than glibc (macOS, musl)
both policies leave the allocator alone and ``get_memory_policy()`` says ``'system'``.
"""
from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["set_memory_policy", "get_memory_policy", "apply_default_policy", "POLICIES",
           "RETAIN_MMAP_THRESHOLD", "RETAIN_TRIM_THRESHOLD"]

POLICIES = ("retain", "system")
RETAIN_MMAP_THRESHOLD = 256 * 2**20
RETAIN_TRIM_THRESHOLD = 2**30
_SYSTEM_THRESHOLD = 128 * 2**10          # glibc's initial M_MMAP/M_TRIM_THRESHOLD

_M_TRIM_THRESHOLD = -1                   # glibc's malloc.h parameter numbers
_M_MMAP_THRESHOLD = -3


class _State:
    libc = None                          # ctypes handle of glibc, or False where absent
    policy = "system"


def _glibc():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if _State.libc is None:
        _State.libc = False
        try:
            import platform  # noqa: PLC0415
            if platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.mallopt.restype = ctypes.c_int
                _State.libc = libc
        except (OSError, AttributeError):
            _State.libc = False
    return _State.libc or None


def set_memory_policy(policy):
    """Set the CPU memory policy, ``'retain'`` or ``'system'`` (module docstring), for
    the whole process; returns the policy now in force (``'system'`` where the C library
    is not glibc)."""
    if policy not in POLICIES:
        raise ValueError(f"set_memory_policy: policy must be one of {POLICIES}, "
                         f"got {policy!r}")
    libc = _glibc()
    if libc is None:
        _State.policy = "system"
        return _State.policy
    mmap, trim = ((RETAIN_MMAP_THRESHOLD, RETAIN_TRIM_THRESHOLD) if policy == "retain"
                  else (_SYSTEM_THRESHOLD, _SYSTEM_THRESHOLD))
    if not (libc.mallopt(_M_MMAP_THRESHOLD, mmap) and libc.mallopt(_M_TRIM_THRESHOLD, trim)):
        raise RuntimeError(f"set_memory_policy({policy!r}): glibc's mallopt refused the "
                           f"thresholds (mmap {mmap}, trim {trim} bytes)")
    _State.policy = policy
    return policy


def get_memory_policy():
    """The CPU memory policy in force: ``'retain'`` or ``'system'``."""
    return _State.policy


def apply_default_policy():
    """``set_memory_policy('retain')`` as ``import minidl`` runs it: where glibc refuses,
    a warning and the allocator left alone, never an import that fails."""
    try:
        return set_memory_policy("retain")
    except RuntimeError as exc:
        import warnings  # noqa: PLC0415
        warnings.warn(f"minidl: {exc}; the memory policy stays 'system'", RuntimeWarning,
                      stacklevel=2)
        return get_memory_policy()
