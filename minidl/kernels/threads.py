"""The CPU threading policy of every numba kernel, and the one way kernels are compiled.

The policy, read once here and nowhere else:

* Parallel numba kernels (numba's OpenMP threads) for inputs of at least
  ``PARALLEL_MIN_ELEMENTS`` elements (below that, waking the workers costs more than the
  work), until the process first runs a ``run_on_threads`` section on several threads
  (the large convolutions, batch norm, ReLU on large inputs); from then on serial, and
  never inside a section. Two pools of threads on the same cores fight: numba's OpenMP
  workers spin for a while after each parallel kernel and took the core the next
  section's Python workers needed (ResNet-18, batch 32: training 1.03x -> 1.62x
  PyTorch's time with parallel kernels everywhere), while a model without sections
  (LeNet, whose layers all run on numba kernels) gains from them: its MNIST epoch 3.9 ->
  3.2 s. (Earlier, with BLAS on its own threads, OpenBLAS's spinning workers and numba's
  fought the same way: RESULTS.md.)
* ``MINIDL_NUMBA_PARALLEL=1`` / ``0`` in the environment, or ``set_parallel(True)`` /
  ``set_parallel(False)``, force parallel kernels on (still never inside a section) or
  off; ``set_parallel(None)``: the automatic policy above.
* ``set_python_threads(n)`` (opt-in, default 1) cuts the direct-convolution kernels into
  n pieces run on n Python threads; the kernels release the GIL and idle workers sleep
  instead of spinning.
* minidl's matrix products run NumPy's BLAS on the calling thread only (``single_blas``;
  ``set_single_blas(False)`` restores the library's own threads): OpenBLAS's workers spin
  after every multi-threaded product and took the core the next kernel needed. The large
  convolutions use the cores instead through ``run_on_threads``: blocks of images on
  ``get_num_threads()`` Python threads, one BLAS thread each (``conv_blocked.py``,
  ``conv_winograd.py``); the sleeping workers cost nothing when another process wants a
  core. (ResNet-18 step on the 2-core dev VM: 2.15x -> 1.36x PyTorch's time; RESULTS.md.)
* ``minidl.set_num_threads(n)`` / ``minidl.get_num_threads()`` (PyTorch's names): at most
  n threads for numba's parallel kernels and for the BLAS library NumPy calls (through
  ``threadpoolctl``); the count defaults to the physical cores this process may use.

Every numba kernel is built by ``jit``: a serial build and, for a kernel with a prange
loop, a parallel build compiled on first use when the policy asks for one; both cached on
disk (the parallel one under its own name, ``_renamed``: numba's cache key ignores the
``parallel`` flag). ``kernel(*args, size=n)`` takes the build the policy chooses for an
input of n elements.
"""
from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["Setting", "PARALLEL_MIN_ELEMENTS", "parallel", "set_parallel", "python_threads",
           "set_python_threads", "run_on_threads", "single_blas", "set_single_blas",
           "physical_cores", "get_num_threads",
           "set_num_threads", "jit", "njit_helper"]

class Setting:
    """A kernel setting that a call changes at once and, used with ``with``, undoes when the
    block ends (``set_parallel``, ``set_python_threads``, ``conv.keep_col_bytes``)."""

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
# True / False: parallel kernels allowed / forbidden; None: automatic (the policy above).
_PARALLEL = Setting({"1": True, "0": False}.get(os.environ.get("MINIDL_NUMBA_PARALLEL", "")))
_PYTHON_THREADS = Setting(1)

PARALLEL_MIN_ELEMENTS = 1 << 15


class _Section(threading.local):
    """How deep this thread is in ``run_on_threads`` jobs (workers: always inside)."""
    depth = 0


_SECTION = _Section()


class _Sections:
    """Whether this process has run a ``run_on_threads`` section on several threads."""
    used = False


def parallel(size=None):
    """Whether a kernel over ``size`` elements runs on numba's threads (policy above):
    never inside a ``run_on_threads`` section, whose jobs already share the cores, and in
    the automatic mode not once the process has run such sections.
    ``size=None``: whether parallel kernels are allowed at all."""
    allowed = _PARALLEL.value
    if allowed is None:
        allowed = not _Sections.used
    if not allowed or _SECTION.depth:
        return False
    return size is None or size >= PARALLEL_MIN_ELEMENTS


def set_parallel(flag):
    """Allow (True) or forbid (False) parallel numba kernels, or leave it to the automatic
    policy (None); undone at the end of a ``with`` block when used as one."""
    return _PARALLEL.set(None if flag is None else bool(flag))


def python_threads():
    """How many Python threads the direct-convolution kernels split each call over."""
    return _PYTHON_THREADS.value


def set_python_threads(n):
    """Run each direct-convolution kernel call as ``n`` pieces on ``n`` threads (1: inline);
    undone at the end of a ``with`` block when used as one."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_python_threads: n must be >= 1, got {n}")
    return _PYTHON_THREADS.set(n)


# ----------------------------------------------------------------------------- Python threads

class _Workers:
    """The worker threads of every Python-thread split (made on first use, remade when the
    count changes) and threadpoolctl's handle on NumPy's BLAS."""
    lock = threading.Lock()
    pool = None
    size = 0
    blas = None


_WORKER_PREFIX = "minidl-worker"


def _pool(n):
    with _Workers.lock:
        if _Workers.size != n:
            if _Workers.pool is not None:
                _Workers.pool.shutdown(wait=True)
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
            _Workers.pool = ThreadPoolExecutor(n, thread_name_prefix=_WORKER_PREFIX)
            _Workers.size = n
        return _Workers.pool


class _Blas:
    """threadpoolctl's controllers of NumPy's BLAS libraries (found on first use), and how
    deep the calling code is in ``single_blas`` blocks."""
    controllers = None
    depth = 0


# The policy: minidl's matrix products run BLAS on the calling thread only, and minidl
# spreads large products over its own threads (blocks of images, ``run_on_threads``).
# OpenBLAS's worker threads spin for a while after every multi-threaded product; on a
# 2-core machine that spinning took the core that minidl's next kernel or Python worker
# needed (RESULTS.md: ResNet-18 step, and PERFORMANCE.md's "threads fighting").
_SINGLE_BLAS = Setting(True)


def set_single_blas(flag):
    """True (default): minidl's matrix products use one BLAS thread per calling thread;
    False: NumPy's BLAS threads as configured. Undone at the end of a ``with`` block."""
    return _SINGLE_BLAS.set(bool(flag))


@contextlib.contextmanager
def single_blas():
    """A block in which NumPy's BLAS runs on the calling thread only (the policy above);
    nested blocks, and blocks inside a ``run_on_threads`` job, cost almost nothing."""
    if _Blas.depth or not _SINGLE_BLAS.value:
        yield
        return
    if _Blas.controllers is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - a core dependency
        _Blas.controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    saved = [c.get_num_threads() for c in _Blas.controllers]
    for c, n in zip(_Blas.controllers, saved):
        if n != 1:
            c.set_num_threads(1)
    _Blas.depth += 1
    try:
        yield
    finally:
        _Blas.depth -= 1
        for c, n in zip(_Blas.controllers, saved):
            if n != 1:
                c.set_num_threads(n)


def run_on_threads(n, job, blas_single=False):
    """Run ``job(t)`` for t = 0 .. n-1 and return the results in order: t = 0 on the calling
    thread, the others on the shared worker threads, which sleep (not spin) when idle.

    The kernels a job calls release the GIL, so the jobs run side by side. blas_single:
    ``single_blas`` around the jobs (jobs that call matrix products: each job is then one
    BLAS thread, and no BLAS worker spins against the jobs). An
    exception in any job is raised here once every job has finished. Called from inside a
    job, the jobs run inline (no pool inside the pool).
    """
    if n == 1 or _SECTION.depth:
        return [job(t) for t in range(n)]
    pool = _pool(n - 1)
    _Sections.used = True
    with (single_blas() if blas_single else contextlib.nullcontext()):
        futures = [pool.submit(_in_section, job, t) for t in range(1, n)]
        try:
            first = _in_section(job, 0)
        finally:
            errors = [f.exception() for f in futures]   # waits for every job
        for exc in errors:
            if exc is not None:
                raise exc
        return [first] + [f.result() for f in futures]


def _in_section(job, t):
    """job(t) with this thread marked as inside a section: its kernels stay serial."""
    _SECTION.depth += 1
    try:
        return job(t)
    finally:
        _SECTION.depth -= 1


def split(count, parts):
    """[0, count) as ``parts`` nearly equal ranges [(i0, i1), ...], in order."""
    return [(t * count // parts, (t + 1) * count // parts) for t in range(parts)]


def run_on_ranges(count, job, blas_single=False, parts=None):
    """``job(i0, i1)`` for ``count`` items cut into one range per thread (``parts``, or
    ``get_num_threads()``, at most ``count``), through ``run_on_threads``."""
    n = max(1, min(get_num_threads() if parts is None else parts, count))
    bounds = split(count, n)
    return run_on_threads(n, lambda t: job(*bounds[t]), blas_single=blas_single)


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


def njit_helper(fn=None, *, fastmath=True):
    """A numba function called from kernels (inlined by LLVM; compiled with its caller)."""
    import numba  # noqa: PLC0415 - only modules of numba kernels call this

    def wrap(f):
        return numba.njit(cache=True, **_options(fastmath))(f)
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
            self._parallel = numba.njit(parallel=True, cache=True, **_options(fastmath))(fn)
        else:
            self.serial = numba.njit(parallel=False, cache=True, **_options(fastmath))(fn)

    @property
    def parallel_build(self):
        if self._parallel is None:
            self._parallel = self._numba.njit(parallel=True, cache=True,
                                              **_options(self._fastmath))(_renamed(self.py_func))
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
