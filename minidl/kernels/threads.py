"""The CPU threading policy of every numba kernel, and the one way kernels are compiled.

The policy, read once here and nowhere else:

* One pool of threads: numba's (OpenMP) threads run every kernel over at least
  ``PARALLEL_MIN_ELEMENTS`` elements (below that, waking the workers costs more than the
  work), and the matrix products of the convolutions too: ``blas_numba`` calls NumPy's
  BLAS from numba kernels, one BLAS thread per numba thread. Two pools on the same cores
  fight: earlier, the large convolutions ran on Python threads beside numba's, and
  numba's spinning OpenMP workers took the core a Python worker needed (ResNet-18 step,
  batch 32: 1.03x -> 1.62x PyTorch's time with parallel kernels everywhere); OpenBLAS's
  own spinning workers did the same to numba's (RESULTS.md). And a hand-off to a Python
  worker cost 70-330 us here (a futex wake and the GIL) where numba's workers take a
  parallel region in 2-5 us.
* ``MINIDL_NUMBA_PARALLEL=0`` in the environment, or ``set_parallel(False)``, runs every
  kernel on the calling thread (``set_parallel(True)``: allowed; ``None``: the default).
* minidl's matrix products run NumPy's BLAS on the calling thread only (``single_blas``;
  ``set_single_blas(False)`` restores the library's own threads): the cores are used by
  running several single-threaded products side by side on numba's threads.
* ``minidl.set_num_threads(n)`` / ``minidl.get_num_threads()`` (PyTorch's names): at most
  n threads for numba's parallel kernels and for the BLAS library NumPy calls (through
  ``threadpoolctl``); the count defaults to the physical cores this process may use.

Every numba kernel is built by ``jit``: a serial build and, for a kernel with a prange
loop, a parallel build compiled on first use when the policy asks for one; both cached on
disk (the parallel one under its own name, ``_renamed``: numba's cache key ignores the
``parallel`` flag). ``kernel(*args, size=n)`` takes the build the policy chooses for an
input of n elements. Cache files compiled from other kernel sources than the ones in use
are deleted before the first kernel loads (``_check_cache_dir``: numba itself would load
a kernel whose helper, in another module, has changed since).
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["Setting", "PARALLEL_MIN_ELEMENTS", "parallel", "pieces", "set_parallel", "single_blas",
           "set_single_blas", "physical_cores", "get_num_threads", "set_num_threads", "jit",
           "njit_helper", "KERNEL_DIGEST_FILE", "kernel_sources", "kernel_sources_digest"]

class Setting:
    """A kernel setting that a call changes at once and, used with ``with``, undoes when the
    block ends (``set_parallel``, ``conv.keep_col_bytes``)."""

    def __init__(self, value):
        self.value = value

    def set(self, value):
        return _Restore(self, value)


class _Restore:
    def __init__(self, setting, value):
        self._setting, self._previous = setting, setting.value
        setting.value = value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._setting.value = self._previous
        return False


# Read once, here: the only place minidl looks at the environment for threads.
# True / False: parallel kernels allowed / forbidden.
_PARALLEL_DEFAULT = os.environ.get("MINIDL_NUMBA_PARALLEL", "") != "0"
_PARALLEL = Setting(_PARALLEL_DEFAULT)

PARALLEL_MIN_ELEMENTS = 1 << 15


def parallel(size=None):
    """Whether a kernel over ``size`` elements runs on numba's threads (policy above):
    parallel kernels allowed and at least ``PARALLEL_MIN_ELEMENTS`` elements.
    ``size=None``: whether parallel kernels are allowed at all."""
    if not _PARALLEL.value:
        return False
    return size is None or size >= PARALLEL_MIN_ELEMENTS


def pieces(size, count=None):
    """How many pieces a kernel whose prange runs over ranges (of images, channels) cuts
    a call over ``size`` elements into: one per thread (``get_num_threads()``, at most
    ``count``) when the policy runs it parallel, else 1."""
    if not parallel(size):
        return 1
    n = get_num_threads()
    return n if count is None else max(1, min(n, count))


def set_parallel(flag):
    """Allow (True) or forbid (False) parallel numba kernels, or go back to the default
    (None: allowed unless ``MINIDL_NUMBA_PARALLEL=0``); undone at the end of a ``with``
    block when used as one."""
    return _PARALLEL.set(_PARALLEL_DEFAULT if flag is None else bool(flag))


# ----------------------------------------------------------------------------- BLAS

class _Blas:
    """threadpoolctl's controllers of NumPy's BLAS libraries (found on first use), and how
    deep the calling code is in ``single_blas`` blocks."""
    controllers = None
    depth = 0


# The policy: minidl's matrix products run BLAS on the calling thread only, and minidl
# spreads large products over numba's threads (``blas_numba``).
# OpenBLAS's worker threads spin for a while after every multi-threaded product; on a
# 2-core machine that spinning took the core that minidl's next kernel or Python worker
# needed (RESULTS.md: ResNet-18 step, and PERFORMANCE.md's "threads fighting").
_SINGLE_BLAS = Setting(True)


def set_single_blas(flag):
    """True (default): minidl's matrix products use one BLAS thread per calling thread;
    False: NumPy's BLAS threads as configured. Undone at the end of a ``with`` block."""
    return _SINGLE_BLAS.set(bool(flag))


# Products of fewer multiply-adds run on the calling thread in OpenBLAS whatever its thread
# count (its GEMM_MULTITHREAD_THRESHOLD: M*N*K < 4 * 65536): ``single_blas`` skips them, its
# get-and-set of the thread count through threadpoolctl cost ~5 us a product (a 1x1 conv
# at batch 1: 55 us, of which ~6 in that dance). Another BLAS threading such a product
# would cost speed, not correctness.
BLAS_ONE_THREAD_BELOW = 1 << 18


def single_blas(multiply_adds=None):
    """A block (``with single_blas(n):``) in which NumPy's BLAS runs on the calling thread
    only (the policy above); nested blocks cost almost nothing, and so do blocks for
    products of fewer than ``BLAS_ONE_THREAD_BELOW`` ``multiply_adds`` (None: unknown, a
    large product): they get a shared block that does nothing (the generator of a
    ``contextlib.contextmanager`` alone cost ~1 us a product)."""
    if _Blas.depth or not _SINGLE_BLAS.value or (
            multiply_adds is not None and multiply_adds < BLAS_ONE_THREAD_BELOW):
        return _NOTHING
    return _SingleBlas()


_NOTHING = contextlib.nullcontext()


class _SingleBlas:
    """The block of ``single_blas`` that sets the BLAS libraries to one thread, and back."""

    def __enter__(self):
        if _Blas.controllers is None:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - a core dependency
            _Blas.controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        self.saved = [c.get_num_threads() for c in _Blas.controllers]
        for c, n in zip(_Blas.controllers, self.saved):
            if n != 1:
                c.set_num_threads(1)
        _Blas.depth += 1
        return self

    def __exit__(self, *exc):
        _Blas.depth -= 1
        for c, n in zip(_Blas.controllers, self.saved):
            if n != 1:
                c.set_num_threads(n)
        return False


# ----------------------------------------------------------------------------- thread count

_NUM_THREADS = Setting(None)  # None: never set, physical_cores()


_CORES = {}  # affinity mask -> physical cores (sysfs is read once per mask)


def physical_cores():
    """The physical cores this process may run on (PyTorch's default thread count): the CPUs
    of its affinity mask, hyperthread siblings counted once (Linux ``sysfs`` topology), or
    the logical CPU count where that is not readable. A second hyperthread of a busy core
    adds little to a vectorised kernel and makes the two threads wait for each other.
    Cached per affinity mask: kernels ask on every call, and reading sysfs cost ~40 µs."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    key = frozenset(cpus)
    n = _CORES.get(key)
    if n is None:
        n = _CORES[key] = _count_physical(cpus)
    return n


def _count_physical(cpus):
    cores = set()
    for cpu in cpus:
        try:
            topo = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(topo + "physical_package_id") as f1, open(topo + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def get_num_threads():
    """The most threads minidl's CPU work uses (``set_num_threads``; default the physical
    cores)."""
    n = _NUM_THREADS.value
    return physical_cores() if n is None else n


def set_num_threads(n):
    """Use at most ``n`` threads: numba's parallel kernels (where the policy above lets them
    run in parallel at all) and the BLAS library of NumPy's matrix products. PyTorch's
    ``torch.set_num_threads``; applies to the calling thread's numba kernels and to BLAS
    process-wide (a PyTorch in the same process keeps its own setting)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    import numba  # noqa: PLC0415 - the thread count is numba's and BLAS's business only
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(limits=n, user_api="blas")
    _NUM_THREADS.value = n


# ----------------------------------------------------------------------------- compiling

def _options(fastmath):
    # error_model='numpy' drops the division checks that stop vectorisation; nogil lets
    # the Python-thread split run kernels side by side.
    return dict(fastmath=fastmath, error_model="numpy", nogil=True)


# ----------------------------------------------------------------------------- disk cache
# numba keys a function's cache by its own source file's time stamp only. A kernel that
# calls a helper from another module (the depthwise and pooling kernels use im2col_numba's
# ``_to_rows``) carries the helper's compiled code in its own cache entry, so after an edit
# of the helper that entry is stale and still loaded: the old code runs, silently. The
# cache directory therefore holds a digest of every kernel module's source
# (``KERNEL_DIGEST_FILE``); where it differs from the sources in use, minidl's cache files
# there are deleted before anything is compiled or loaded, and the digest rewritten.

KERNEL_DIGEST_FILE = "minidl-kernels.sha256"
_CHECKED_DIRS = set()


def kernel_sources():
    """The files whose source numba compiles into minidl's kernels: every
    ``kernels/*_numba.py`` and this module, sorted."""
    import glob  # noqa: PLC0415

    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(glob.glob(os.path.join(here, "*_numba.py"))) + [os.path.abspath(__file__)]


def kernel_sources_digest(sources=None):
    """sha256 of the kernel sources (``sources``, default ``kernel_sources()``), names and
    contents."""
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    for path in kernel_sources() if sources is None else sources:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _check_cache_dir(dispatcher):
    """Once per process and cache directory (that of ``dispatcher``, a numba function
    compiled with cache=True): delete minidl's kernel cache files there when they were
    compiled from other sources (the digest above), then record the current digest."""
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "_cache_path", None)     # numba's cache directory for it
    if path is None or path in _CHECKED_DIRS:
        return
    _CHECKED_DIRS.add(path)
    sources = kernel_sources()
    digest = kernel_sources_digest(sources)
    stamp = os.path.join(path, KERNEL_DIGEST_FILE)
    try:
        with open(stamp) as f:
            if f.read().strip() == digest:
                return
    except OSError:
        pass
    modules = {os.path.splitext(os.path.basename(p))[0] for p in sources}
    try:
        os.makedirs(path, exist_ok=True)
        names = os.listdir(path)
    except OSError:
        return                                     # no usable directory: numba copes
    for name in names:
        if name.endswith((".nbi", ".nbc")) and name.split(".", 1)[0] in modules:
            with contextlib.suppress(OSError):     # another process may have removed it
                os.remove(os.path.join(path, name))
    tmp = f"{stamp}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, stamp)                     # atomic: never a half-written digest
    except OSError:                                # a read-only cache: numba copes too
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _cached_njit(fn, **options):
    """``numba.njit(cache=True, **options)(fn)``, its cache directory checked first."""
    import numba  # noqa: PLC0415

    dispatcher = numba.njit(cache=True, **options)(fn)
    _check_cache_dir(dispatcher)
    return dispatcher


def njit_helper(fn=None, *, fastmath=True):
    """A numba function called from kernels (inlined by LLVM; compiled with its caller)."""
    def wrap(f):
        return _cached_njit(f, **_options(fastmath))
    return wrap(fn) if fn is not None else wrap


def _renamed(fn):
    """A copy of ``fn`` under the qualified name ``<name>__parallel``: numba names its cache
    files after the function and keys them by signature only, not by the ``parallel``
    flag, so the parallel build of a function needs a name of its own to be cached
    beside the serial one (else each process compiled it again: ~1-3 s per kernel)."""
    import types  # noqa: PLC0415

    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "__parallel"
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class Kernel:
    """A numba kernel: a serial build (cached) and a parallel build (on demand), or with
    ``one_build`` only the parallel build (cached), run on one numba thread unless the
    policy asks for more."""

    def __init__(self, fn, fastmath, one_build=False):
        import numba  # noqa: PLC0415

        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.py_func = fn
        self._numba = numba
        self._fastmath = fastmath
        self.serial = None
        self._parallel = None
        # Only a prange loop has anything to run in parallel: without one, numba's parallel
        # build would warn (NumbaPerformanceWarning) and run the serial loops anyway.
        self.has_prange = "prange" in fn.__code__.co_names
        if one_build:
            self._parallel = _cached_njit(fn, parallel=True, **_options(fastmath))
        else:
            self.serial = _cached_njit(fn, parallel=False, **_options(fastmath))

    @property
    def parallel_build(self):
        if self._parallel is None:
            self._parallel = _cached_njit(_renamed(self.py_func), parallel=True,
                                          **_options(self._fastmath))
        return self._parallel

    def __call__(self, *args, size=None):
        """Run on the build the policy picks for ``size`` elements (None: serial unless
        parallel kernels are allowed at all)."""
        if self.has_prange and parallel(size):
            return self.parallel_build(*args)
        if self.serial is not None:
            return self.serial(*args)
        threads = self._numba.get_num_threads()   # thread-local in numba
        if threads == 1:
            return self._parallel(*args)
        self._numba.set_num_threads(1)
        try:
            return self._parallel(*args)
        finally:
            self._numba.set_num_threads(threads)


def jit(fn=None, *, fastmath=True, one_build=False):
    """Compile ``fn`` (written with ``numba.prange`` for its parallel loop) as a ``Kernel``.

    fastmath: True, False (max pooling: NaN and inf must keep their meaning) or a set of
    LLVM flags. one_build: compile only the parallel build and run it on one thread by
    default. For a ``prange`` loop that calls a per-plane helper this ran faster than the
    serial build, even on one thread (numba outlines a parfor body into its own function,
    which LLVM optimised better; benchmarks/RESULTS.md); elsewhere the serial build wins
    by the parfor launch cost.
    """
    def wrap(f):
        return Kernel(f, fastmath, one_build)
    return wrap(fn) if fn is not None else wrap
