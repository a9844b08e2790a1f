"""The random state behind init, dropout and shuffling: one seed makes a run repeatable.

``manual_seed(s)`` reseeds NumPy's generator used on the CPU and, if CuPy is already
loaded, CuPy's generator on the GPU.
"""
from __future__ import annotations

import numpy as np

from . import backend

_generator = np.random.default_rng()
_seed = None


def manual_seed(seed):
    """Seed every random source minidl uses; returns the seed."""
    global _generator, _seed
    _seed = int(seed)
    _generator = np.random.default_rng(_seed)
    if backend.cupy_loaded():
        backend.require_cupy().random.seed(_seed)
    return _seed


def initial_seed():
    return _seed


def generator():
    """The NumPy ``Generator`` minidl draws from on the CPU."""
    return _generator


def random_array(kind, shape, dtype, device=None, **kw):
    """Draw an array of ``shape`` on ``device`` from the seeded generator.

    kind: 'normal' (mean, std), 'uniform' (low, high) or 'bernoulli' (p).
    Values are drawn on the host and moved, so a seed gives the same values on every device.
    """
    g = _generator
    if kind == "normal":
        a = g.standard_normal(shape, dtype=np.float64) * kw.get("std", 1.0) + kw.get("mean", 0.0)
    elif kind == "uniform":
        a = g.uniform(kw.get("low", 0.0), kw.get("high", 1.0), shape)
    elif kind == "bernoulli":
        a = g.random(shape, dtype=np.float64) < kw["p"]
    else:
        raise ValueError(f"random_array: unknown kind {kind!r}")
    a = a.astype(dtype, copy=False)
    return a if device is None else backend.to_device(a, device)
