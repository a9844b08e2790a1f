"""Array-level kernels the ops call (raw NumPy/CuPy arrays in, arrays out, no autograd).

One family a module group: the readable NumPy reference and the registration of its
implementations in ``<family>.py``, the numba kernels in ``<family>_numba.py`` (imported
only when used), the CUDA kernels in ``cuda_kernels.py``. ``registry.py`` is the one place
where an implementation is chosen, ``threads.py`` the one CPU threading policy.

    import minidl.kernels as K
    K.families()                    # {'im2col': ..., 'pool': ..., ...}
    with K.use_impl("reference"):   # every family runs its NumPy reference in the block
        ...
    K.which("tanh", x)              # the implementation a call on x would take now
"""
from __future__ import annotations

import importlib

from .registry import decisions, families, forced, numba_available, use_impl, which

__all__ = ["use_impl", "which", "families", "forced", "decisions", "numba_available"]

# The modules that register a family (imported by ``families()`` / ``use_impl``; the ops
# import the ones they use anyway).
FAMILY_MODULES = ("activation", "arith", "batchnorm", "conv", "im2col", "loss", "optim",
                  "pool")


def _load_all():
    for name in FAMILY_MODULES:
        importlib.import_module(f"{__name__}.{name}")

