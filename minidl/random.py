"""The random state behind init, dropout and shuffling: one seed makes a run repeatable.

``manual_seed(s)`` reseeds the default generator (NumPy's, used on the CPU) and, if CuPy
is already loaded, CuPy's generator on the GPU. It returns the default generator, a
``Generator``, so PyTorch's idioms run unchanged::

    g = minidl.manual_seed(0)            # g.initial_seed() == 0
    g = minidl.Generator().manual_seed(42)
    train, val = random_split(dataset, [0.9, 0.1], generator=g)

A ``Generator`` is ``torch.Generator``'s face (``manual_seed``, ``seed``,
``initial_seed``, ``get_state``/``set_state``) over a ``numpy.random.Generator``, whose
drawing methods it offers too (``permutation``, ``integers``, ``random``, ``uniform``,
``standard_normal``): it goes wherever minidl takes a NumPy generator (``DataLoader``,
``random_split``, the random transforms).
"""
from __future__ import annotations

import numpy as np

from . import backend


def _fresh_seed():
    """A non-deterministic 63-bit seed from the operating system's entropy."""
    return int(np.random.SeedSequence().entropy % (2 ** 63))


class Generator:
    """A seeded source of random numbers (``torch.Generator``'s methods).

    ``device`` is recorded for PyTorch compatibility; draws are made on the host (so a
    seed gives the same values on every device) and moved by the caller.
    """

    def __init__(self, device="cpu"):
        self.device = backend.Device(device)
        self.manual_seed(_fresh_seed())

    # --- torch.Generator's methods --------------------------------------------------------
    def manual_seed(self, seed):
        """Reseed with ``seed`` (an int); returns this generator, so
        ``Generator().manual_seed(42)`` can be passed on directly."""
        seed = int(seed)
        if seed < 0:  # PyTorch accepts negative seeds (taken modulo 2**64); so do we
            seed %= 2 ** 64
        self._seed = seed
        self.rng = np.random.default_rng(seed)
        return self

    def seed(self):
        """Reseed from the operating system's entropy; returns the new seed."""
        self.manual_seed(_fresh_seed())
        return self._seed

    def initial_seed(self):
        """The seed this generator was last seeded with."""
        return self._seed

    def get_state(self):
        """The state, a dict (NumPy's bit-generator state; PyTorch gives a byte tensor):
        ``set_state`` restores it, so a later draw repeats."""
        return {"seed": self._seed, "bit_generator": self.rng.bit_generator.state}

    def set_state(self, state):
        """Restore a state from ``get_state``; returns this generator."""
        self._seed = state["seed"]
        self.rng = np.random.default_rng(self._seed)
        self.rng.bit_generator.state = state["bit_generator"]
        return self

    # --- numpy.random.Generator's drawing methods (what minidl's code calls) ------------
    def permutation(self, x):
        return self.rng.permutation(x)

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)

    def random(self, *args, **kwargs):
        return self.rng.random(*args, **kwargs)

    def uniform(self, *args, **kwargs):
        return self.rng.uniform(*args, **kwargs)

    def standard_normal(self, *args, **kwargs):
        return self.rng.standard_normal(*args, **kwargs)

    def __repr__(self):
        return f"<minidl.Generator device={self.device} initial_seed={self._seed}>"


default_generator = Generator()


def manual_seed(seed):
    """Seed every random source minidl uses; returns the default ``Generator``."""
    default_generator.manual_seed(seed)
    if backend.cupy_loaded():
        backend.require_cupy().random.seed(default_generator.initial_seed())
    return default_generator


def seed():
    """Seed every random source from the operating system's entropy; returns the seed."""
    return manual_seed(_fresh_seed()).initial_seed()


def initial_seed():
    """The seed of the default generator."""
    return default_generator.initial_seed()


def generator():
    """The NumPy ``Generator`` minidl draws from on the CPU."""
    return default_generator.rng


def random_array(kind, shape, dtype, device=None, **kw):
    """Draw an array of ``shape`` on ``device`` from the seeded generator.

    kind: 'normal' (mean, std), 'uniform' (low, high) or 'bernoulli' (p).
    Values are drawn on the host and moved, so a seed gives the same values on every device.
    """
    g = default_generator.rng
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
