"""The kernel registry: the one place where minidl picks an implementation of a kernel.

Every kernel family (im2col, conv2d, pooling, batch norm, tanh, cross-entropy, ...) has
one readable NumPy reference and, beside it, fast paths: numba kernels for the CPU, CUDA
kernels (CuPy) for the GPU, and for conv2d direct-convolution kernels. Each family is a
``Family`` here; each implementation registers with it under a name::

    reference   NumPy/CuPy whole-array code, the definition the others are tested against
                (written with the array API NumPy and CuPy share: runs on either device)
    numba       compiled CPU loops (NumPy arrays)
    cuda        CuPy ElementwiseKernels (GPU arrays)
    direct      conv2d only: direct-convolution numba kernels for small channel counts

How a call is decided (``Family.choose``)::

    1. an implementation forced with ``use_impl`` for this family, else for all families,
       if the family has it and it can run this call;
    2. otherwise the first implementation, in the family's order of preference, that is
       meant for the arrays' device ('cpu' or 'cuda'), that can run this call (its
       ``supports`` test: dtype, sizes, ...), that pays here (its ``pays`` test, e.g. the
       direct convolution only for small channel counts) and whose code loads;
    3. the reference, which runs everything.

A forced implementation that cannot run a call (numba on a GPU array, float16, a window
too large for the compiled kernel) leaves that call to the reference instead of failing;
``which(family, ...)`` and ``decisions()`` say what was taken, so a test can check it.

The public switch, for tests and for learners stepping through the reference::

    import minidl.kernels as K
    with K.use_impl("reference"):            # every family runs its NumPy reference
        ...
    with K.use_impl("numba", family="pool"): # one family
        ...
    K.use_impl("reference")                  # without ``with``: stays until reset
    K.use_impl(None)                         # back to automatic choice

numba is imported lazily, by the implementations that need it (``numba_module``), never
by importing minidl.
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np

from .. import backend

__all__ = ["Family", "family", "families", "use_impl", "forced", "which", "numba_available",
           "numba_module", "FAST_DTYPES", "REFERENCE", "ImplementationUnavailable"]

REFERENCE = "reference"
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class ImplementationUnavailable(RuntimeError):
    """An implementation's code could not be loaded (numba missing or broken)."""


# ----------------------------------------------------------------------------- numba

_numba = None          # the numba module once imported
_numba_error = None    # why importing it failed


def numba_available():
    """True when numba imports (it is imported on the first call, once)."""
    global _numba, _numba_error
    if _numba is None and _numba_error is None:
        try:
            import numba  # noqa: PLC0415 - deliberately lazy
            _numba = numba
        except Exception as exc:  # ImportError, or a broken LLVM install
            _numba_error = exc
    return _numba is not None


def numba_module(module_name):
    """A loader for a module of numba kernels (``'minidl.kernels.pool_numba'``): imported
    on its first use only, so that ``import minidl`` never imports numba."""

    def load():
        if not numba_available():
            raise ImplementationUnavailable(f"numba does not import ({_numba_error})")
        return importlib.import_module(module_name)

    load.__qualname__ = f"numba_module({module_name!r})"
    return load


# ----------------------------------------------------------------------------- families


def _device_of(arrays):
    """'cuda' when any array is a CuPy array, else 'cpu'."""
    if not backend.cupy_loaded():        # the common CPU case: no isinstance per array
        return "cpu"
    return "cuda" if any(backend.is_cupy_array(a) for a in arrays) else "cpu"


def floats_on(device):
    """A ``supports`` test: every array is float32/float64 and on ``device``."""
    want_cupy = device == "cuda"

    def supports(*arrays, **_facts):
        if not all(a.dtype.char in "fd" for a in arrays):   # float32 / float64
            return False
        if not backend.cupy_loaded():
            return not want_cupy
        return all(backend.is_cupy_array(a) == want_cupy for a in arrays)
    return supports


class Implementation:
    """One named implementation of a family: where its code comes from, which device it is
    meant for, and which calls it can run."""

    def __init__(self, family, name, load, device, supports, pays, doc):
        self.family = family
        self.name = name
        self._load = load
        self.device = device            # 'cpu', 'cuda' or None (any: the reference)
        self.supports = supports        # supports(*arrays, **facts) -> bool: can it run?
        self.pays = pays                # pays(*arrays, **facts) -> bool: automatic choice?
        self.doc = doc
        self._code = None
        self._error = None

    def loads(self):
        """True when the implementation's code can be loaded (loading it if needed)."""
        if self._code is None and self._error is None:
            try:
                self._code = self._load()
            except ImplementationUnavailable as exc:
                self._error = exc
        return self._code is not None

    @property
    def code(self):
        """The implementation's functions (a module or any namespace)."""
        if not self.loads():
            raise ImplementationUnavailable(
                f"{self.family.name}: the {self.name!r} implementation is unavailable: "
                f"{self._error}")
        return self._code

    def __repr__(self):
        return f"<{self.family.name}:{self.name}>"


class Family:
    """A kernel family: its implementations, in order of preference, and the choice.

    ``preference`` lists the implementation names the automatic choice tries, best first;
    the reference is always the last resort.
    """

    def __init__(self, name, doc, preference=("numba", "cuda")):
        self.name = name
        self.doc = doc
        self.preference = tuple(preference)
        self.impls = {}
        self._by_device = {}

    def register(self, name, load, *, device=None, supports=None, pays=None, doc=""):
        """Register implementation ``name``. load() returns its functions (a module, or a
        namespace); device: 'cpu', 'cuda' or None (any); supports(*arrays, **facts):
        whether it can run a call (default: float32/float64 arrays on ``device``);
        pays(*arrays, **facts): whether the automatic choice should take it for a call it
        can run (default: always). ``use_impl`` asks ``supports`` only."""
        if name in self.impls:
            raise ValueError(f"kernel registry: {self.name} already has an implementation "
                             f"named {name!r}")
        if supports is None:
            supports = floats_on(device) if device else (lambda *a, **k: True)
        self.impls[name] = Implementation(self, name, load, device, supports,
                                          pays or (lambda *a, **k: True), doc)
        self._by_device.clear()
        return self.impls[name]

    def forced(self):
        """The name of the implementation ``use_impl`` forces on this family now, or None."""
        if not _forced:
            return None
        name = _forced.get(self.name)
        if name is None and _forced.get(None) in self.impls:
            name = _forced[None]          # forced for all; a family without it is unaffected
        return name

    def choose(self, *arrays, **facts):
        """The ``Implementation`` that runs a call on ``arrays`` (the rule in the module
        docstring). ``facts`` are what else the implementations' ``supports`` tests need
        (sizes, strides, ...)."""
        name = self.forced()
        if name is not None:
            impl = self.impls[name]
            if not (impl.supports(*arrays, **facts) and impl.loads()):
                impl = self.impls[REFERENCE]
        else:
            impl = self.impls[REFERENCE]
            for candidate in self._automatic(_device_of(arrays)):
                if candidate.supports(*arrays, **facts) and candidate.pays(*arrays, **facts) \
                        and candidate.loads():
                    impl = candidate
                    break
        if _log is not None:
            _log.append((self.name, impl.name))
        return impl

    def _automatic(self, device):
        """The implementations meant for ``device``, in order of preference (cached: this
        runs on every kernel call)."""
        found = self._by_device.get(device)
        if found is None:
            found = self._by_device[device] = [
                self.impls[n] for n in self.preference
                if n in self.impls and self.impls[n].device == device]
        return found

    def code(self, *arrays, **facts):
        """The chosen implementation's functions: ``POOL.code(x).max_forward(x, win)``."""
        return self.choose(*arrays, **facts).code

    def __repr__(self):
        return f"<kernel family {self.name}: {', '.join(self.impls)}>"


_FAMILIES = {}


def family(name, doc, preference=("numba", "cuda")):
    """Create and register the family ``name`` (one per kernel module)."""
    if name in _FAMILIES:
        raise ValueError(f"kernel registry: a family named {name!r} exists already")
    _FAMILIES[name] = Family(name, doc, preference)
    return _FAMILIES[name]


def families():
    """{name: Family} for every registered family (the kernel modules are imported)."""
    from . import _load_all  # noqa: PLC0415 - the package imports every family module
    _load_all()
    return dict(_FAMILIES)


# ----------------------------------------------------------------------------- the switch

_forced = {}           # family name (or None: every family) -> forced implementation name
_log = None            # a list while ``decisions()`` records, else None


class use_impl:  # noqa: N801 - used like a function, as torch.set_grad_enabled
    """Force implementation ``impl`` for one family (``family='pool'``) or for every family
    that has one of that name (``family=None``). ``impl=None`` restores the automatic
    choice. Takes effect at once; used with ``with`` it is undone when the block ends.

    ``impl``: 'reference', 'numba', 'cuda', 'direct' (conv2d), or None.
    """

    def __init__(self, impl, family=None):
        known = {n for f in families().values() for n in f.impls}
        if impl is not None and impl not in known:
            raise ValueError(f"use_impl: impl must be one of {', '.join(sorted(known))} "
                             f"or None; got {impl!r}")
        if family is not None and family not in _FAMILIES:
            raise ValueError(f"use_impl: unknown kernel family {family!r}; the families "
                             f"are {', '.join(sorted(_FAMILIES))}")
        if family is not None and impl is not None and impl not in _FAMILIES[family].impls:
            raise ValueError(f"use_impl: the {family} family has no {impl!r} implementation "
                             f"(it has {', '.join(_FAMILIES[family].impls)})")
        self._key = family
        self._previous = dict(_forced)
        if family is None and impl is None:
            _forced.clear()
        elif impl is None:
            _forced.pop(family, None)
        else:
            _forced[family] = impl

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _forced.clear()
        _forced.update(self._previous)
        return False


def forced():
    """{family or None: impl} of what ``use_impl`` currently forces."""
    return dict(_forced)


def which(family_name, *arrays, **facts):
    """The name of the implementation ``family_name`` would run for these arrays now."""
    fam = families().get(family_name)
    if fam is None:
        raise ValueError(f"which: unknown kernel family {family_name!r}; the families are "
                         f"{', '.join(sorted(_FAMILIES))}")
    return fam.choose(*arrays, **facts).name


@contextlib.contextmanager
def decisions():
    """Record every choice made in the block: ``with decisions() as log:`` gives a list
    of (family, implementation) pairs, in call order."""
    global _log
    previous, _log = _log, []
    try:
        yield _log
    finally:
        _log = previous
