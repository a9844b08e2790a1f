"""A stand-in ``cupy`` backed by NumPy: the GPU test cases, run on the CPU as a pre-flight.

A GPU is lent for one short run of ``pytest -m gpu``. Most ways a CPU-tested code base
fails on CuPy are silly and cheap to catch without a GPU: a NumPy call on a device array,
a host array mixed with a device array, ``np.asarray`` of a CuPy array (CuPy refuses it),
a missing host/device transfer, a Python number taken from a device array without
``.item()``, state created on the wrong device. This module imitates CuPy's rules for
those, on NumPy arrays, so that

    MINIDL_FAKE_CUPY=1 python -m pytest -m gpu

(``tests/conftest.py`` installs it as ``sys.modules['cupy']`` when the variable is set)
runs every GPU case on the CPU, where every such mistake raises as it would on the GPU.
Scripts: ``MINIDL_FAKE_CUPY=1 python examples/lenet_mnist.py --device cuda ...`` (the
examples' ``_common.py`` honours the variable too), or for any script
``python tests/fake_cupy.py SCRIPT [ARGS...]``.

How it works
------------
``ndarray`` is NOT a ``numpy.ndarray`` subclass (CuPy's is not either, and a subclass
would pass ``isinstance(x, np.ndarray)`` checks and be turned into host arrays silently by
``np.asarray``): it holds a NumPy array ``_a`` (the "device memory") and behaves like
``cupy.ndarray``:

- ``np.asarray(x)``, ``np.array(x)``, ``np.testing...(x)``, a device array inside a list
  given to NumPy, a device array as a NumPy index: ``TypeError: Implicit conversion to a
  NumPy array is not allowed...`` (``__array__`` raises, as CuPy's does);
- a NumPy ufunc or function on device arrays (``np.exp(x)``, ``np.sum(x)``) runs on the
  device and returns a device array (CuPy's ``__array_ufunc__``/``__array_function__``);
  one that CuPy lacks raises;
- a host ``numpy.ndarray`` (even 0-d) mixed with a device array in an operator, ufunc,
  CuPy function or ``ElementwiseKernel``: ``TypeError`` (CuPy: "Unsupported type");
  Python and NumPy scalars are fine. ``x[...] = host_array`` (basic indexing) raises
  ``ValueError`` as CuPy's ``fill`` does; host index arrays and advanced-index
  assignment from the host are allowed (CuPy copies them over);
- reductions and ``x[i]`` give 0-d device arrays, never NumPy scalars; ``float(x)``,
  ``int(x)``, ``bool(x)``, ``x.item()``, ``x.tolist()``, ``repr(x)`` work (they sync);
  ``x.get()``/``cupy.asnumpy(x)`` give a NumPy copy; there is no ``__index__`` (so
  ``range(x)``/``lst[x]`` raise, as on CuPy); ``x.device.id == 0``;
- only the ``ndarray`` methods CuPy has, with CuPy's keyword arguments (``x.sum(where=)``,
  ``x.max(initial=)``, ``x.sort(kind='quicksort')`` raise); only the module-level names
  CuPy 14 has (``CUPY_NAMES``), without the keywords NumPy has and CuPy lacks
  (``_MISSING_KEYWORDS``: ``cupy.sum(where=)``, ``cupy.zeros(device=)``,
  ``cupy.clip(min=)``, also through ``np.sum(x, where=)``); ufunc ``.reduce``/
  ``.accumulate`` only for add/multiply, ``.at`` only for the scatter ufuncs, ufunc
  keywords only out/dtype/casting;
- dtypes CuPy lacks (object, strings, datetimes, long double) raise ``ValueError``;
- ``cupy.asarray``/``array``/``zeros``/... take host data and COPY it to the device (a
  later write on either side does not show on the other); ``cupy.ascontiguousarray`` and
  the other functions take device arrays only;
- ``ElementwiseKernel`` compiles the CUDA source as C++ with ``tests/cuda_emulator.py``
  and runs it on the device arrays' memory (host arrays refused, as CuPy does);
- ``cupy.cuda``: one device (``FakeGPU``), ``Device`` context manager and
  ``synchronize``, ``runtime`` queries, a default ``MemoryPool`` that every new device
  buffer is allocated from through the current allocator (``set_allocator`` /
  ``get_allocator``; ``used_bytes`` falls when the last array on a buffer dies),
  ``Stream``/``Event``/``get_elapsed_time`` (wall clock); ``cupy.random`` draws on the
  host from its own seeded ``RandomState`` and copies to the device; ``cupy.linalg``;
- ``cupy.cuda.nccl``: ``get_unique_id``, the type and op constants and an
  ``NcclCommunicator`` whose collectives take ``x.data.ptr`` (a real address here, checked
  to lie in a live device array) and copy within the process for one rank, or move the
  data through mpi4py for ranks that are the processes of one ``mpiexec`` job
  (``mpiexec -n 2 python tests/fake_cupy.py SCRIPT``).

What it cannot catch
--------------------
- CuPy functions that exist but behave differently from NumPy's: the computation here is
  NumPy's (modes or argument types a CuPy function does not support, keywords of
  functions written in Cython, dtype rules of some reductions, out-of-bounds integer
  indices, which CuPy wraps around instead of raising, views that CuPy copies or the
  reverse, writes into ``broadcast_to`` views, which NumPy refuses and CuPy allows);
- the real compilation of the kernels by NVRTC (the emulator compiles them as C++ with
  g++: CUDA-only syntax or device-function names missing on the GPU are not seen),
  launch limits, 32-bit index overflow, races between threads;
- anything about performance, asynchrony (everything here is synchronous, so a missing
  ``synchronize`` before a timing goes unnoticed), streams, multi-GPU, memory limits;
  NCCL's own rules beyond its arguments (ranks of one job share the fake GPU, which real
  NCCL refuses; a collective missing on one rank makes the others wait in MPI here);
- numerics of the GPU libraries (cuBLAS/cuDNN reduction order, TF32 in PyTorch's CUDA
  reference: PyTorch runs on the CPU in this mode);
- PyTorch on CUDA as the reference: the tests' ``torch_device`` gives 'cpu' unless this
  PyTorch has CUDA, so a CPU tensor mixed with a CUDA tensor, ``.numpy()`` of a CUDA
  tensor, or an op PyTorch's CUDA build lacks in a test only fails on the GPU machine;
  ``benchmarks/bench_gpu.py`` needs PyTorch on CUDA and does not run here;
- the time of the GPU run: CuPy compiles (NVRTC, then a disk cache) a kernel for every
  ufunc, reduction and ElementwiseKernel per dtype signature on first use, a few hundred
  for ``pytest -m gpu``; the fake compiles none of them.
"""
from __future__ import annotations

import builtins
import ctypes
import os
import sys
import time
import types
import warnings
import weakref

import numpy as np

__version__ = "14.0.0+fake"

# The public names of ``cupy`` 14 (``cupy/__init__.py`` at v14.0.1, parsed): a name
# outside this list raises AttributeError here as it does on the GPU.
CUPY_NAMES = frozenset("""
AxisError ComplexWarning DataSource ElementwiseKernel Inf Infinity ModuleDeprecationWarning
NAN NINF NZERO NaN PINF PZERO RankWarning RawKernel RawModule ReductionKernel TooHardError
VisibleDeprecationWarning abs absolute acos acosh add all allclose alltrue amax amin angle
any append apply_along_axis apply_over_axes arange arccos arccosh arcsin arcsinh arctan
arctan2 arctanh argmax argmin argpartition argsort argwhere around array array2string
array_equal array_equiv array_repr array_split array_str asanyarray asarray
asarray_chkfinite ascontiguousarray asfarray asfortranarray asin asinh asnumpy astype atan
atan2 atanh atleast_1d atleast_2d atleast_3d average bartlett base_repr binary_repr bincount
bitwise_and bitwise_count bitwise_invert bitwise_left_shift bitwise_not bitwise_or
bitwise_right_shift bitwise_xor blackman bool bool_ broadcast broadcast_arrays
broadcast_shapes broadcast_to byte byte_bounds c_ can_cast cbrt cdouble ceil cfloat choose
clear_memo clip column_stack common_type complex128 complex64 complex_ complexfloating
compress concat concatenate conj conjugate convolve copy copysign copyto corrcoef correlate
cos cosh count_nonzero cov cross csingle cuda cumprod cumproduct cumsum deg2rad degrees
delete diag diag_indices diag_indices_from diagflat diagonal diff digitize
disable_experimental_feature_warning disp divide divmod dot double dsplit dstack dtype e
ediff1d einsum empty empty_like equal euler_gamma exceptions exp exp2 expand_dims expm1
extract eye fabs fft fill_diagonal find_common_type finfo fix flatiter flatnonzero flip
fliplr flipud float16 float32 float64 float_ float_power floating floor floor_divide fmax
fmin fmod format_float_positional format_float_scientific format_parser frexp fromDlpack
from_dlpack frombuffer fromfile fromfunction fromiter fromstring full full_like fuse gcd
generic genfromtxt get_array_module get_array_wrap get_default_memory_pool
get_default_pinned_memory_pool get_printoptions gradient greater greater_equal half hamming
hanning heaviside histogram histogram2d histogramdd hsplit hstack hypot i0 identity iinfo
imag in1d index_exp indices inexact inf infty inner int16 int32 int64 int8 int_ intc
integer interp intersect1d intp invert is_available isclose iscomplex iscomplexobj isfinite
isfortran isin isinf isnan isneginf isposinf isreal isrealobj isscalar issctype issubclass_
issubdtype issubsctype iterable ix_ kaiser kron lcm ldexp left_shift less less_equal
lexsort linalg linspace load loadtxt log log10 log1p log2 logaddexp logaddexp2 logical_and
logical_not logical_or logical_xor logspace long longlong mask_indices matmul max maximum
may_share_memory mean median memoize meshgrid mgrid min min_scalar_type minimum mintypecode
mod modf moveaxis msort multiply nan nan_to_num nanargmax nanargmin nancumprod nancumsum
nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar ndarray ndim ndindex negative
newaxis nextafter nonzero not_equal number obj2sctype ogrid ones ones_like outer packbits
pad partition percentile permute_dims pi piecewise place poly poly1d polyadd polyfit
polymul polynomial polysub polyval positive pow power printoptions prod product
promote_types ptp put put_along_axis putmask quantile r_ rad2deg radians random ravel
ravel_multi_index real real_if_close reciprocal remainder repeat require reshape resize
result_type right_shift rint roll rollaxis roots rot90 round round_ row_stack s_ safe_eval
save savetxt savez savez_compressed sctype2char searchsorted select set_printoptions
set_string_function setdiff1d setxor1d shape shares_memory short show_config sign signbit
signedinteger sin sinc single singlecomplex sinh size sometrue sort sort_complex split sqrt
square squeeze stack std subtract sum swapaxes take take_along_axis tan tanh tensordot
testing tile trace transpose trapezoid trapz tri tril tril_indices tril_indices_from
trim_zeros triu triu_indices triu_indices_from true_divide trunc typename ubyte ufunc uint
uint16 uint32 uint64 uint8 uintc uintp ulong ulonglong union1d unique unique_all
unique_counts unique_inverse unique_values unpackbits unravel_index unsignedinteger unwrap
ushort vander var vdot vectorize vsplit vstack where who zeros zeros_like
""".split())

# Module functions that take host data (lists, NumPy arrays) and give device arrays, as
# ``cupy.asarray`` does; every other function takes device arrays (or scalars) only.
_CREATION = frozenset("""
array asarray asanyarray empty zeros ones full arange linspace logspace eye identity tri
empty_like zeros_like ones_like full_like indices frombuffer fromfile fromfunction fromiter
fromstring loadtxt genfromtxt
""".split())

_FRESH = _CREATION - {"array", "asarray", "asanyarray", "frombuffer"}

# Keywords NumPy 2.4's function takes and CuPy 14's does not (the Python signatures under
# cupy/ at v14.0.1 against numpy's, keyword use only): ``cupy.sum(x, where=m)`` raises.
_MISSING_KEYWORDS = {
    "all": "where", "amax": "initial where", "amin": "initial where", "any": "where",
    "arange": "start_or_stop device", "argpartition": "kind order", "argsort": "order stable",
    "array": "object ndmax", "array_str": "a", "asanyarray": "device", "asarray": "device",
    "astype": "device", "broadcast_arrays": "subok", "broadcast_to": "subok",
    "clip": "min max", "concatenate": "arrays", "copy": "subok", "corrcoef": "x",
    "count_nonzero": "keepdims", "cov": "m", "delete": "obj", "ediff1d": "ary",
    "empty": "device", "empty_like": "device", "extract": "arr", "eye": "device", "flip": "m",
    "fliplr": "m", "flipud": "m", "full": "device", "full_like": "device", "histogram": "a",
    "indices": "sparse", "intersect1d": "ar1 ar2", "isin": "kind", "lexsort": "axis",
    "linspace": "device", "load": "fix_imports encoding max_header_size",
    "max": "initial where", "mean": "where", "min": "initial where",
    "nanmax": "initial where", "nanmean": "where", "nanmin": "initial where",
    "nanprod": "initial where", "nanstd": "where mean correction", "nansum": "initial where",
    "nanvar": "where mean correction", "ones": "device", "ones_like": "device",
    "partition": "kind order", "percentile": "weights", "prod": "initial where",
    "quantile": "weights", "reshape": "shape copy", "rot90": "m", "sort": "order stable",
    "stack": "arrays", "std": "where mean correction", "sum": "initial where", "take": "mode",
    "take_along_axis": "arr", "trim_zeros": "axis", "union1d": "ar1 ar2", "unique": "sorted",
    "unpackbits": "count", "unravel_index": "shape", "var": "where mean correction",
    "zeros": "device", "zeros_like": "device"
}

# ndarray methods of CuPy 14 and their parameters (``cupy/_core/core.pyx``); '*' takes
# any number of positional arguments (reshape(*shape), transpose(*axes)).
_METHODS = {
    "item": (), "tolist": (), "tobytes": ("order",), "tofile": ("fid", "sep", "format"),
    "dump": ("file",), "dumps": (),
    "astype": ("dtype", "order", "casting", "subok", "copy"), "copy": ("order",),
    "view": ("dtype",), "fill": ("value",), "reshape": ("*", "order"),
    "transpose": ("*",), "swapaxes": ("axis1", "axis2"), "flatten": ("order",),
    "ravel": ("order",), "squeeze": ("axis",), "take": ("indices", "axis", "out"),
    "put": ("indices", "values", "mode"), "repeat": ("repeats", "axis"),
    "choose": ("choices", "out", "mode"), "sort": ("axis", "kind"),
    "argsort": ("axis", "kind"), "partition": ("kth", "axis"), "argpartition": ("kth", "axis"),
    "searchsorted": ("v", "side", "sorter"), "nonzero": (),
    "compress": ("condition", "axis", "out"), "diagonal": ("offset", "axis1", "axis2"),
    "max": ("axis", "out", "keepdims"), "min": ("axis", "out", "keepdims"),
    "argmax": ("axis", "out", "dtype", "keepdims"), "argmin": ("axis", "out", "dtype", "keepdims"),
    "ptp": ("axis", "out", "keepdims"), "clip": ("min", "max", "out"),
    "round": ("decimals", "out"), "trace": ("offset", "axis1", "axis2", "dtype", "out"),
    "sum": ("axis", "dtype", "out", "keepdims"), "prod": ("axis", "dtype", "out", "keepdims"),
    "mean": ("axis", "dtype", "out", "keepdims"),
    "var": ("axis", "dtype", "out", "ddof", "keepdims"),
    "std": ("axis", "dtype", "out", "ddof", "keepdims"),
    "cumsum": ("axis", "dtype", "out"), "cumprod": ("axis", "dtype", "out"),
    "all": ("axis", "out", "keepdims"), "any": ("axis", "out", "keepdims"),
    "conj": (), "conjugate": (), "dot": ("b", "out"),
}
# methods whose index-like arguments may come from the host (CuPy copies them over)
_METHODS_HOST_ARGS = frozenset({"take", "put", "repeat", "compress", "searchsorted"})

_UNSUPPORTED_KINDS = "OSUVMm"   # object, bytes, str, void/structured, datetime, timedelta

_numpy_array = np.array         # host-side copies inside the fake


class _HostArrayError(TypeError):
    pass


def _unsupported_host(where, obj):
    return _HostArrayError(
        f"fake cupy: {where} got a host numpy.ndarray {obj.shape} {obj.dtype} where CuPy needs "
        "a cupy.ndarray or a scalar (real CuPy: Unsupported type <class 'numpy.ndarray'>); "
        "move it to the device first")


# ----------------------------------------------------------------------------- memory

class MemoryPointer:
    """What the allocator returns for one device buffer; freeing it returns the bytes."""

    def __init__(self, pool, size, device_id=0):
        self.pool, self.size, self.device_id, self.ptr = pool, size, device_id, 0

    @property
    def mem(self):
        return self

    def __del__(self):
        if self.pool is not None:
            self.pool._used -= self.size


class MemoryPool:
    """Counts bytes like CuPy's pool: sizes rounded up to 512; freed blocks stay cached
    (``total_bytes``) until ``free_all_blocks``."""

    def __init__(self, allocator=None):
        self._used = 0
        self._total = 0

    def malloc(self, size):
        size = -(-int(size) // 512) * 512
        self._used += size
        self._total = max(self._total, self._used)
        return MemoryPointer(self, size)

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._total

    def free_bytes(self):
        return self._total - self._used

    def free_all_blocks(self, stream=None):
        self._total = self._used

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


class PinnedMemoryPool:
    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


_default_pool = MemoryPool()
_default_pinned_pool = PinnedMemoryPool()


def _raw_malloc(size):
    """CuPy's allocator without a pool (``set_allocator(None)``): counted nowhere."""
    return MemoryPointer(None, int(size))


_allocator = [_default_pool.malloc]
_buffers = {}    # id(root numpy array) -> MemoryPointer of the device buffer it stands for


def _account(a):
    """Allocate ``a``'s buffer from the current allocator the first time a device array
    on it is made; the pointer dies with the buffer."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    key = id(root)
    if key in _buffers:
        return
    size = root.nbytes if root.flags.owndata else 0
    _buffers[key] = _allocator[0](size)
    weakref.finalize(root, _buffers.pop, key, None)


def get_default_memory_pool():
    return _default_pool


def get_default_pinned_memory_pool():
    return _default_pinned_pool


# ----------------------------------------------------------------------------- ndarray

def _unsupported_dtype(dtype):
    long_double = (dtype.kind == "f" and dtype.itemsize > 8) or \
        (dtype.kind == "c" and dtype.itemsize > 16)         # not on GPUs
    return dtype.kind in _UNSUPPORTED_KINDS or long_double


def _wrap(a):
    """A device array standing for the NumPy array ``a`` (no copy)."""
    if _unsupported_dtype(a.dtype):
        raise ValueError(f"fake cupy: Unsupported dtype {a.dtype} (CuPy has no such arrays)")
    _account(a)
    out = ndarray.__new__(ndarray)
    out._a = a
    return out


def _from_host(data, dtype=None, order="K"):
    """A device array with a copy of host data."""
    return _wrap(_numpy_array(data, dtype=dtype, copy=True, order=order))


_rebuild = _from_host   # pickling a device array stores its host copy


def _is_scalar(x):
    return isinstance(x, (builtins.bool, int, float, complex, np.generic))


def _unwrap(obj, where, host_ok, seen):
    """obj with every device array replaced by its NumPy array (recorded in ``seen`` so a
    result that IS an input comes back as that very device array); a host array raises
    unless ``host_ok``."""
    if isinstance(obj, ndarray):
        seen[id(obj._a)] = obj
        return obj._a
    if isinstance(obj, np.ndarray):
        if not host_ok:
            raise _unsupported_host(where, obj)
        return obj
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_unwrap(o, where, host_ok, seen) for o in obj)
    return obj


def _result(r, seen):
    """NumPy results as device arrays: arrays wrapped (an input comes back as itself),
    NumPy scalars as 0-d device arrays (CuPy's reductions return 0-d arrays)."""
    if isinstance(r, np.ndarray):
        same = seen.get(id(r))
        return same if same is not None else _wrap(r)
    if isinstance(r, np.generic):
        return _wrap(_numpy_array(r))
    if isinstance(r, tuple):
        items = [_result(x, seen) for x in r]
        return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
    if isinstance(r, list):
        return [_result(x, seen) for x in r]
    return r


def _call(fn, args, kwargs, where, host_ok=False):
    seen = {}
    args = _unwrap(args, where, host_ok, seen)
    kwargs = {k: _unwrap(v, where, host_ok, seen) for k, v in kwargs.items()}
    return _result(fn(*args, **kwargs), seen)


def _operand(x, where, comparison=False):
    if isinstance(x, ndarray):
        return x._a
    if _is_scalar(x):
        return x
    if isinstance(x, np.ndarray):
        if comparison and x.ndim == 0:   # CuPy's workaround for numpy/numpy#12142
            return x.item()
        raise _unsupported_host(where, x)
    raise TypeError(f"fake cupy: {where}: unsupported operand type {type(x).__name__} "
                    "(CuPy takes cupy.ndarray and scalars)")


_UFUNC_KWARGS = frozenset({"out", "dtype", "casting"})
_SCATTER_UFUNCS = frozenset({"add", "subtract", "maximum", "minimum", "bitwise_and",
                             "bitwise_or", "bitwise_xor"})
_COMPARISONS = frozenset({"greater", "greater_equal", "less", "less_equal", "equal",
                          "not_equal"})


def _apply_ufunc(uf, method, inputs, kwargs):
    """NumPy ufunc ``uf`` (or one of its methods) with CuPy's rules on the arguments."""
    name = uf.__name__
    where = f"cupy.{name}" + ("" if method == "__call__" else f".{method}")
    if name not in CUPY_NAMES:
        raise TypeError(f"fake cupy: CuPy has no ufunc {name!r}")
    if method in ("reduce", "accumulate") and name not in ("add", "multiply"):
        raise NotImplementedError(f"`cupy_{name}.{method}` is not supported yet (CuPy)")
    if method == "reduceat" and name != "add":
        raise NotImplementedError(f"`cupy_{name}.reduceat` is not supported yet (CuPy)")
    if method == "at":
        if name not in _SCATTER_UFUNCS:
            raise NotImplementedError(f"`cupy_{name}.at` is not supported yet (CuPy)")
        a, indices = inputs[0], inputs[1]
        if not isinstance(a, ndarray):
            raise TypeError(f"fake cupy: {where}: the target must be a cupy.ndarray")
        seen = {}
        idx = _unwrap(indices, where, True, seen)
        values = [_operand(v, where) for v in inputs[2:]]
        getattr(uf, "at")(a._a, idx, *values)
        return None
    if method == "__call__" and set(kwargs) - _UFUNC_KWARGS:
        raise TypeError(f"fake cupy: {where}: Wrong arguments "
                        f"{sorted(set(kwargs) - _UFUNC_KWARGS)} (CuPy ufuncs take out, dtype, casting)")
    ins = [_operand(x, where, name in _COMPARISONS) for x in inputs]
    out = kwargs.get("out")
    outs = ()
    if out is not None:
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            if o is not None and not isinstance(o, ndarray):
                raise TypeError(f"fake cupy: {where}: out= must be a cupy.ndarray, "
                                f"got {type(o).__name__}")
        kwargs = dict(kwargs, out=tuple(None if o is None else o._a for o in outs))
    r = getattr(uf, method)(*ins, **kwargs)
    if out is not None:
        return out
    return _result(r, {})


def _binop(uf, reflected=False):
    def op(self, other):
        if not (isinstance(other, (ndarray, np.ndarray)) or _is_scalar(other)):
            if getattr(other, "__array_ufunc__", 0) is None:     # e.g. minidl.Tensor
                return NotImplemented
            if getattr(other, "__array_priority__", 0) > ndarray.__array_priority__:
                return NotImplemented
        args = (other, self) if reflected else (self, other)
        return _apply_ufunc(uf, "__call__", args, {})
    return op


def _inplace(uf):
    def op(self, other):
        _apply_ufunc(uf, "__call__", (self, other), {"out": self})
        return self
    return op


class _Device:
    """``x.device`` / ``cupy.cuda.Device``: the one fake GPU."""

    compute_capability = "90"

    def __init__(self, device=None):
        if device is None:
            device = _current_device[0]
        self.id = int(getattr(device, "id", device))
        self._prev = []

    def _check(self):
        if not 0 <= self.id < _DEVICE_COUNT:
            raise _runtime.CUDARuntimeError(
                f"cudaErrorInvalidDevice: invalid device ordinal {self.id} (fake cupy: one GPU)")

    def __enter__(self):
        self._check()
        self._prev.append(_current_device[0])
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._prev.pop()
        return False

    def use(self):
        self._check()
        _current_device[0] = self.id

    def synchronize(self):
        self._check()

    @property
    def mem_info(self):
        total = _PROPERTIES["totalGlobalMem"]
        return total - _default_pool.total_bytes(), total

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, name):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]

    def __repr__(self):
        return (f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
                f"  OWNDATA : {self.owndata}")


class ndarray:
    """``cupy.ndarray`` on a NumPy array ``_a`` (see the module docstring for the rules)."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        a = np.empty(shape, dtype=dtype, order=order)
        if _unsupported_dtype(a.dtype):
            raise ValueError(f"Unsupported dtype {a.dtype}")
        _account(a)
        self._a = a

    # --- what CuPy refuses ------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs = dict(kwargs, out=out[0])
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        module = func.__module__ or "numpy"
        name = func.__name__
        if module.split(".")[0] != "numpy":
            return NotImplemented
        sub = [m for m in module.split(".")[1:] if not m.startswith("_")]
        if (not sub and name not in CUPY_NAMES) or \
                (sub and not hasattr(sys.modules[__name__], sub[0])):
            raise TypeError(f"fake cupy: numpy.{name} called on a cupy.ndarray, but CuPy has "
                            f"no cupy.{'.'.join(sub + [name])} (real CuPy: no implementation "
                            "found)")
        if not sub:
            _check_keywords(name, kwargs)
        return _call(func, args, kwargs, f"numpy.{name} (dispatched to cupy.{name})")

    # --- CuPy specifics -----------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A NumPy copy (device to host)."""
        if out is not None:
            out[...] = self._a
            return out
        return _numpy_array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy the host array ``arr`` into this array (host to device)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape/dtype mismatch in set()")
        self._a[...] = arr

    @property
    def device(self):
        return _Device(0)

    @property
    def data(self):
        """CuPy's MemoryPointer to the first element: ``ptr`` is its real address here
        (in the NumPy memory), which the ``cuda.nccl`` stand-in turns back into the array."""
        return _ElementPointer(self)

    def _root(self):
        root = self._a
        while isinstance(root.base, np.ndarray):
            root = root.base
        return root

    # --- attributes ---------------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: _wrap(self._a.T))
    mT = property(lambda self: _wrap(self._a.mT))

    @property
    def base(self):
        return None if self._a.base is None else _wrap(self._root())

    @property
    def real(self):
        return _wrap(self._a.real)

    @real.setter
    def real(self, value):
        self._a.real = _operand(value, "ndarray.real")

    @property
    def imag(self):
        return _wrap(self._a.imag)

    def __getattr__(self, name):
        if name == "_a" or name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}"
                                 + ("" if name == "_a" else " (fake cupy: CuPy 14 has none)"))
        params = _METHODS[name]
        method = getattr(self._a, name)
        where = f"cupy.ndarray.{name}"

        def call(*args, **kwargs):
            if "*" not in params and len(args) > len(params):
                raise TypeError(f"{where}() takes at most {len(params)} arguments "
                                f"({len(args)} given)")
            bad = set(kwargs) - set(params)
            if bad:
                raise TypeError(f"{where}() got unexpected keyword arguments {sorted(bad)} "
                                "(fake cupy: CuPy's signature)")
            if name == "view" and any(isinstance(a, type) and issubclass(a, np.ndarray)
                                      for a in (*args, *kwargs.values())):
                raise TypeError("fake cupy: x.view(numpy.ndarray) is no way to the host "
                                "(CuPy: not a dtype); use x.get()")
            if name in ("sort", "argsort"):
                kind = kwargs.get("kind", args[1] if len(args) > 1 else None)
                if kind is not None and kind != "stable":
                    raise ValueError("kind can only be None or 'stable'")
            seen = {id(self._a): self}
            args = _unwrap(args, where, name in _METHODS_HOST_ARGS, seen)
            kwargs = {k: _unwrap(v, where, name in _METHODS_HOST_ARGS, seen)
                      for k, v in kwargs.items()}
            r = method(*args, **kwargs)
            if name in ("item", "tolist", "tobytes", "dumps", "fill", "put", "sort",
                        "partition", "tofile", "dump"):
                return r
            return _result(r, seen)
        call.__name__ = name
        return call

    # --- conversions (CuPy allows these; they synchronise) -------------------------------
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        if self._a.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False",
                          DeprecationWarning, stacklevel=2)
            return False
        if self._a.size == 1:
            return builtins.bool(self._a.reshape(()).item())
        raise ValueError("The truth value of an array with more than one element is "
                         "ambiguous. Use a.any() or a.all()")

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a, spec)

    def __copy__(self):
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return _wrap(self._a.copy())

    def __reduce__(self):
        return (_rebuild, (self.get(),))

    # --- container ----------------------------------------------------------------------
    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    @staticmethod
    def _key(key):
        seen = {}
        key = _unwrap(key if isinstance(key, tuple) else (key,), "indexing", True, seen)
        advanced = any(isinstance(k, (np.ndarray, list)) for k in key)
        if not any(k is Ellipsis for k in key):
            key = key + (Ellipsis,)     # an array (0-d view) even for a full integer index
        return key, advanced

    def __getitem__(self, key):
        key, _ = self._key(key)
        return _wrap(self._a[key])

    def __setitem__(self, key, value):
        key, advanced = self._key(key)
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, np.ndarray):
            if not advanced and value.ndim != 0:
                raise ValueError(
                    "non-scalar numpy.ndarray cannot be used for fill (fake cupy: CuPy "
                    f"refuses x[...] = host_array {value.shape}; move it to the device first)")
        elif not _is_scalar(value) and not advanced:
            raise TypeError(f"fake cupy: x[...] = {type(value).__name__}: CuPy fills with "
                            "scalars or copies cupy arrays (real CuPy: Unsupported type)")
        self._a[key] = value

    # --- operators ----------------------------------------------------------------------
    __add__, __radd__, __iadd__ = _binop(np.add), _binop(np.add, True), _inplace(np.add)
    __sub__, __rsub__, __isub__ = (_binop(np.subtract), _binop(np.subtract, True),
                                   _inplace(np.subtract))
    __mul__, __rmul__, __imul__ = (_binop(np.multiply), _binop(np.multiply, True),
                                   _inplace(np.multiply))
    __matmul__, __rmatmul__ = _binop(np.matmul), _binop(np.matmul, True)
    __truediv__, __rtruediv__, __itruediv__ = (_binop(np.true_divide),
                                               _binop(np.true_divide, True),
                                               _inplace(np.true_divide))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (_binop(np.floor_divide),
                                                  _binop(np.floor_divide, True),
                                                  _inplace(np.floor_divide))
    __mod__, __rmod__, __imod__ = (_binop(np.remainder), _binop(np.remainder, True),
                                   _inplace(np.remainder))
    __divmod__, __rdivmod__ = _binop(np.divmod), _binop(np.divmod, True)
    __pow__, __rpow__, __ipow__ = _binop(np.power), _binop(np.power, True), _inplace(np.power)
    __lshift__, __rlshift__, __ilshift__ = (_binop(np.left_shift), _binop(np.left_shift, True),
                                            _inplace(np.left_shift))
    __rshift__, __rrshift__, __irshift__ = (_binop(np.right_shift),
                                            _binop(np.right_shift, True),
                                            _inplace(np.right_shift))
    __and__, __rand__, __iand__ = (_binop(np.bitwise_and), _binop(np.bitwise_and, True),
                                   _inplace(np.bitwise_and))
    __or__, __ror__, __ior__ = (_binop(np.bitwise_or), _binop(np.bitwise_or, True),
                                _inplace(np.bitwise_or))
    __xor__, __rxor__, __ixor__ = (_binop(np.bitwise_xor), _binop(np.bitwise_xor, True),
                                   _inplace(np.bitwise_xor))
    __lt__, __le__ = _binop(np.less), _binop(np.less_equal)
    __gt__, __ge__ = _binop(np.greater), _binop(np.greater_equal)

    def __eq__(self, other):
        if other is None:
            return _wrap(np.zeros(self.shape, dtype=np.bool_))
        return _binop(np.equal)(self, other)

    def __ne__(self, other):
        if other is None:
            return _wrap(np.ones(self.shape, dtype=np.bool_))
        return _binop(np.not_equal)(self, other)

    def __neg__(self):
        return _apply_ufunc(np.negative, "__call__", (self,), {})

    def __pos__(self):
        return _apply_ufunc(np.positive, "__call__", (self,), {})

    def __abs__(self):
        return _apply_ufunc(np.absolute, "__call__", (self,), {})

    def __invert__(self):
        return _apply_ufunc(np.invert, "__call__", (self,), {})


ndarray.__module__ = "cupy"
_rebuild.__module__ = "cupy"


# ----------------------------------------------------------------------------- functions

class ufunc:
    """``cupy.<ufunc>``: NumPy's ufunc under CuPy's argument rules."""

    def __init__(self, np_ufunc):
        self._uf = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def __call__(self, *args, **kwargs):
        return _apply_ufunc(self._uf, "__call__", args, kwargs)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return _apply_ufunc(self._uf, "reduce", (array,),
                            dict(axis=axis, dtype=dtype, out=out, keepdims=keepdims))

    def accumulate(self, array, axis=0, dtype=None, out=None):
        return _apply_ufunc(self._uf, "accumulate", (array,), dict(axis=axis, dtype=dtype, out=out))

    def reduceat(self, array, indices, axis=0, dtype=None, out=None):
        return _apply_ufunc(self._uf, "reduceat", (array, indices),
                            dict(axis=axis, dtype=dtype, out=out))

    def outer(self, A, B, **kwargs):
        return _apply_ufunc(self._uf, "outer", (A, B), kwargs)

    def at(self, a, indices, b=None):
        return _apply_ufunc(self._uf, "at", (a, indices) + (() if b is None else (b,)), {})

    def __repr__(self):
        return f"<ufunc 'cupy_{self.__name__}'>"


def _check_keywords(name, kwargs):
    bad = set(kwargs) & set(_MISSING_KEYWORDS.get(name, "").split())
    if bad:
        raise TypeError(f"fake cupy: cupy.{name}() got unexpected keyword arguments {sorted(bad)} "
                        "(NumPy has them, CuPy 14 does not)")
    if name in ("sort", "argsort") and kwargs.get("kind") not in (None, "stable"):
        raise ValueError("kind can only be None or 'stable'")


def _creation(np_func, name):
    def create(*args, **kwargs):
        _check_keywords(name, kwargs)
        seen = {}
        a = _unwrap(args, f"cupy.{name}", True, seen)
        k = {key: _unwrap(v, f"cupy.{name}", True, seen) for key, v in kwargs.items()}
        if name in ("asarray", "asanyarray"):
            k.pop("blocking", None)
        r = np_func(*a, **k)
        if isinstance(r, np.ndarray) and id(r) in seen:
            return seen[id(r)]               # asarray(device_array): the same array
        if name in _FRESH:
            return _wrap(r)                  # a new buffer already
        return _from_host(r)                 # host data: copied to the device
    create.__name__ = name
    return create


def _device_function(np_func, name):
    def fn(*args, **kwargs):
        _check_keywords(name, kwargs)
        return _call(np_func, args, kwargs, f"cupy.{name}")
    fn.__name__ = name
    return fn


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """A NumPy array from a device array (copied) or host data."""
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    for a in args:
        if isinstance(a, ndarray):
            return sys.modules[__name__]
    return np


def is_available():
    return True


def show_config():
    print("fake cupy (NumPy-backed stand-in, tests/fake_cupy.py)")


class ElementwiseKernel:
    """``cupy.ElementwiseKernel`` run by ``tests/cuda_emulator.py`` on the device arrays'
    NumPy memory (outputs must be passed; arrays 1-D and contiguous, as minidl passes)."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 preamble="", no_return=False, return_tuple=False, **kwargs):
        from cuda_emulator import EmulatedElementwiseKernel
        if not name.isidentifier():
            raise ValueError(f'Invalid kernel name: "{name}"')
        if preamble or kwargs:
            raise NotImplementedError("fake cupy: ElementwiseKernel preamble/options")
        self._emulated = EmulatedElementwiseKernel(in_params, out_params, operation, name)
        names = [p.name for p in self._emulated.inputs + self._emulated.outputs]
        if "i" in names:
            raise ValueError("Can not use 'i' as a parameter name")
        self.nin, self.nout = len(self._emulated.inputs), len(self._emulated.outputs)
        self.name = name
        self.no_return, self.return_tuple = no_return, return_tuple

    def __call__(self, *args, size=None, block_size=None, stream=None):
        if len(args) != self.nin + self.nout:
            raise NotImplementedError(
                f"fake cupy: {self.name}: pass the outputs ({self.nin} inputs + {self.nout} "
                f"outputs expected, got {len(args)} arguments)")
        raw = []
        for k, a in enumerate(args):
            if isinstance(a, ndarray):
                raw.append(a._a)
            elif isinstance(a, np.ndarray):
                raise _unsupported_host(f"ElementwiseKernel {self.name} argument {k}", a)
            elif _is_scalar(a):
                raw.append(a)
            else:
                raise TypeError(f"Unsupported type {type(a)}")
        outs = args[self.nin:]
        for o in outs:
            if not isinstance(o, ndarray):
                raise TypeError(f"fake cupy: {self.name}: outputs must be cupy arrays")
        if outs[0].size:
            self._emulated(*raw)
        if self.no_return:
            return None
        return outs[0] if self.nout == 1 and not self.return_tuple else tuple(outs)


class _NotEmulated:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"fake cupy: {type(self).__name__} is not emulated")


class RawKernel(_NotEmulated):
    pass


class RawModule(_NotEmulated):
    pass


class ReductionKernel(_NotEmulated):
    pass


_DEFINED = {"ndarray", "ufunc", "asnumpy", "get_array_module", "is_available", "show_config",
            "ElementwiseKernel", "RawKernel", "RawModule", "ReductionKernel",
            "get_default_memory_pool", "get_default_pinned_memory_pool"}
_cache = {}


def _lookup(np_namespace, name, qualname):
    """``cupy.<name>`` from NumPy's ``name``, wrapped by kind (cached)."""
    key = (qualname, name)
    if key in _cache:
        return _cache[key]
    try:
        obj = getattr(np_namespace, name)
    except AttributeError:
        raise AttributeError(f"module {qualname!r} has no attribute {name!r} "
                             "(fake cupy: not in NumPy either)") from None
    if isinstance(obj, np.ufunc):
        obj = ufunc(obj)
    elif isinstance(obj, type) or not callable(obj):
        pass                                    # dtypes, classes, constants
    elif name in _CREATION and qualname == "cupy":
        obj = _creation(obj, name)
    else:
        obj = _device_function(obj, f"{qualname[5:] + '.' if '.' in qualname else ''}{name}")
    _cache[key] = obj
    return obj


def __getattr__(name):
    if name.startswith("__") or name not in CUPY_NAMES:
        raise AttributeError(f"module 'cupy' has no attribute {name!r}")
    return _lookup(np, name, "cupy")


# ----------------------------------------------------------------------------- cupy.cuda

_DEVICE_COUNT = 1
_current_device = [0]
_PROPERTIES = {"name": b"FakeGPU (tests/fake_cupy.py, NumPy)", "totalGlobalMem": 80 << 30,
               "major": 9, "minor": 0, "multiProcessorCount": 132,
               "maxThreadsPerBlock": 1024, "warpSize": 32}


class _runtime(types.ModuleType):
    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount():
        return _DEVICE_COUNT

    @staticmethod
    def getDevice():
        return _current_device[0]

    @staticmethod
    def setDevice(i):
        _Device(i).use()

    @staticmethod
    def getDeviceProperties(i):
        _Device(i)._check()
        return dict(_PROPERTIES)

    @staticmethod
    def deviceSynchronize():
        pass

    @staticmethod
    def memGetInfo():
        return _Device().mem_info

    @staticmethod
    def runtimeGetVersion():
        return 12080

    @staticmethod
    def driverGetVersion():
        return 12080


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr = 0

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        pass


Stream.null = Stream(null=True)


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events (wall clock here)."""
    return (end_event.time - start_event.time) * 1e3


def _set_allocator(allocator=None):
    _allocator[0] = _raw_malloc if allocator is None else allocator


def _get_allocator():
    return _allocator[0]


def _make_cuda():
    cuda = types.ModuleType("cupy.cuda", "fake cupy.cuda")
    runtime = _runtime("cupy.cuda.runtime")
    cuda.runtime = runtime
    cuda.Device = _Device
    cuda.Stream, cuda.Event, cuda.get_elapsed_time = Stream, Event, get_elapsed_time
    cuda.get_current_stream = lambda device=None: Stream.null
    cuda.MemoryPool, cuda.PinnedMemoryPool, cuda.MemoryPointer = (MemoryPool, PinnedMemoryPool,
                                                                  MemoryPointer)
    cuda.set_allocator, cuda.get_allocator = _set_allocator, _get_allocator
    cuda.set_pinned_memory_allocator = lambda allocator=None: None
    cuda.alloc = lambda size: _allocator[0](size)
    cuda.get_device_id = lambda: _current_device[0]
    cuda.is_available = lambda: True
    cuda.CUDARuntimeError = _runtime.CUDARuntimeError
    return cuda


cuda = _make_cuda()


# ----------------------------------------------------------------------------- cupy.cuda.nccl

class _ElementPointer:
    """``x.data``: ``ptr`` (the address of x's first element), ``mem`` (the buffer's
    accounted MemoryPointer), ``device_id``. Taking it registers x's buffer, so that a
    pointer given to the NCCL stand-in can be checked to lie in device memory."""

    def __init__(self, array):
        root = array._root()
        self.ptr = array._a.__array_interface__["data"][0]
        self.mem = _buffers.get(id(root), MemoryPointer(None, 0))
        self.device_id = 0
        _pointed[id(root)] = root


_pointed = weakref.WeakValueDictionary()   # id(root NumPy array) -> root, while it lives


def _device_memory(ptr, count, datatype, where):
    """A NumPy view of ``count`` elements of NCCL type ``datatype`` at address ``ptr``,
    which must lie inside a live device buffer (a host pointer or a stale one raises, where
    real NCCL would fault or read garbage)."""
    if datatype not in _NCCL_TYPES:
        raise _NcclError(4, f"{where}: unknown datatype {datatype!r}")
    dtype = np.dtype(_NCCL_TYPES[datatype])
    nbytes = int(count) * dtype.itemsize
    for root in list(_pointed.values()):
        start = root.__array_interface__["data"][0]
        contiguous = root.flags.c_contiguous or root.flags.f_contiguous
        if contiguous and start <= ptr and ptr + nbytes <= start + root.nbytes:
            if (ptr - start) % dtype.alignment:
                raise _NcclError(4, f"{where}: pointer {ptr:#x} is misaligned for {dtype}")
            return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype)
    raise _NcclError(4, f"{where}: {nbytes} bytes at {ptr:#x} are not inside a device "
                          "array (fake cupy: pass x.data.ptr of a cupy.ndarray that is alive)")


_NCCL_TYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64,
               5: np.uint64, 6: np.float16, 7: np.float32, 8: np.float64}


class _NcclError(RuntimeError):
    def __init__(self, status, detail=""):
        self.status = status
        names = {1: "NCCL_ERROR_UNHANDLED_CUDA_ERROR", 3: "NCCL_ERROR_INTERNAL_ERROR",
                 4: "NCCL_ERROR_INVALID_ARGUMENT", 5: "NCCL_ERROR_INVALID_USAGE"}
        super().__init__(f"{names.get(status, status)}: {detail} (fake cupy)")


class _NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator(ndev, commId, rank)``: one rank of a communicator.

    With ``ndev == 1`` the collectives copy within the process. With more ranks, every
    rank is a process of one ``mpiexec`` job whose size is ``ndev``, and the data moves
    through mpi4py on the host memory the device pointers name. The ranks share the one
    fake GPU, which real NCCL refuses (one GPU per rank); unlike real NCCL, ranks that
    pass different unique ids get an error instead of waiting for each other forever.
    """

    def __init__(self, ndev, commId, rank):
        commId = tuple(commId)
        if len(commId) != 128:
            raise AssertionError("fake cupy: commId must be the 128 values of get_unique_id()")
        if not 0 <= rank < ndev:
            raise _NcclError(4, f"NcclCommunicator: rank {rank} outside [0, {ndev})")
        self._rank, self._size, self._mpi = int(rank), int(ndev), None
        if ndev > 1:
            from mpi4py import MPI
            if MPI.COMM_WORLD.Get_size() != ndev:
                raise _NcclError(5, f"NcclCommunicator: {ndev} ranks asked for, but the "
                                 f"MPI job has {MPI.COMM_WORLD.Get_size()} processes "
                                 "(the stand-in moves the data through MPI)")
            comm = MPI.COMM_WORLD.Split(0, rank)     # ordered by NCCL rank
            if any(other != commId for other in comm.allgather(commId)):
                raise _NcclError(5, "NcclCommunicator: the ranks passed different unique "
                                 "ids (real NCCL: they wait for each other forever)")
            self._mpi = (MPI, comm)
        self._open = True

    def _check(self, where, stream):
        if not self._open:
            raise _NcclError(5, f"{where} on a destroyed communicator")
        if not isinstance(stream, int):
            raise TypeError(f"fake cupy: {where}: stream must be an int (Stream.ptr), got "
                            f"{type(stream).__name__}")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self._check("allReduce", stream)
        if op not in (0, 1, 2, 3, 4):
            raise _NcclError(4, f"allReduce: unknown op {op!r}")
        send = _device_memory(sendbuf, count, datatype, "allReduce sendbuf")
        recv = _device_memory(recvbuf, count, datatype, "allReduce recvbuf")
        result = send.copy()
        if self._mpi is not None:
            MPI, comm = self._mpi
            mpi_op = [MPI.SUM, MPI.PROD, MPI.MAX, MPI.MIN, MPI.SUM][op]
            comm.Allreduce(MPI.IN_PLACE, result, op=mpi_op)
        if op == 4:                                 # NCCL_AVG
            result = (result / self._size).astype(result.dtype)
        recv[...] = result

    def bcast(self, buff, count, datatype, root, stream):
        self._check("bcast", stream)
        if not 0 <= root < self._size:
            raise _NcclError(4, f"bcast: root {root} outside [0, {self._size})")
        buf = _device_memory(buff, count, datatype, "bcast buff")
        if self._mpi is not None:
            data = buf.copy()
            self._mpi[1].Bcast(data, root=root)
            buf[...] = data

    def broadcast(self, sendbuff, recvbuff, count, datatype, root, stream):
        self._check("broadcast", stream)
        if not 0 <= root < self._size:
            raise _NcclError(4, f"broadcast: root {root} outside [0, {self._size})")
        recv = _device_memory(recvbuff, count, datatype, "broadcast recvbuff")
        data = recv.copy()
        if self._rank == root:
            data = _device_memory(sendbuff, count, datatype, "broadcast sendbuff").copy()
        if self._mpi is not None:
            self._mpi[1].Bcast(data, root=root)
        recv[...] = data

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self._check("allGather", stream)
        send = _device_memory(sendbuf, count, datatype, "allGather sendbuf").copy()
        recv = _device_memory(recvbuf, count * self._size, datatype, "allGather recvbuf")
        gathered = np.empty(recv.shape, recv.dtype)
        if self._mpi is not None:
            self._mpi[1].Allgather(send, gathered)
        else:
            gathered[...] = send
        recv[...] = gathered

    def rank_id(self):
        return self._rank

    def size(self):
        return self._size

    def device_id(self):
        return 0

    def destroy(self):
        self._open = False          # the MPI communicator is left to MPI_Finalize

    abort = destroy


def _make_nccl():
    nccl = types.ModuleType("cupy.cuda.nccl", "fake cupy.cuda.nccl (module docstring)")
    nccl.available = True
    nccl.NcclError, nccl.NcclCommunicator = _NcclError, _NcclCommunicator
    # signed chars, as CuPy returns ncclUniqueId's bytes
    nccl.get_unique_id = lambda: tuple(b - 256 if b > 127 else b for b in os.urandom(128))
    nccl.get_version = nccl.get_build_version = lambda: 22300
    for value, name in enumerate(["SUM", "PROD", "MAX", "MIN", "AVG"]):
        setattr(nccl, f"NCCL_{name}", value)
    for value, t in _NCCL_TYPES.items():
        setattr(nccl, f"NCCL_{np.dtype(t).name.upper()}", value)
    return nccl


_nccl = _make_nccl()
cuda.nccl = _nccl


# ----------------------------------------------------------------------------- submodules

class _RandomSource:
    """A NumPy RandomState/Generator whose draws land on the device."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        attr = getattr(self._source, name)
        if not callable(attr):
            return attr

        def draw(*args, **kwargs):
            seen = {}
            r = attr(*_unwrap(args, f"cupy.random.{name}", False, seen),
                     **{k: _unwrap(v, f"cupy.random.{name}", False, seen)
                        for k, v in kwargs.items()})
            if isinstance(r, (np.ndarray, np.generic)) and id(r) not in seen:
                return _from_host(r)
            return r
        return draw


class _RandomModule(types.ModuleType):
    """``cupy.random``: NumPy's legacy RandomState, seeded by ``seed``."""

    def __init__(self):
        super().__init__("cupy.random", "fake cupy.random")
        self._state = _RandomSource(np.random.RandomState())

    def seed(self, seed=None):
        self._state._source.seed(None if seed is None else int(seed) % 2**32)

    def RandomState(self, seed=None, method=None):
        return _RandomSource(np.random.RandomState(seed))

    def default_rng(self, seed=None):
        return _RandomSource(np.random.default_rng(seed))

    def get_random_state(self):
        return self._state

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._state, name)


class _Namespace(types.ModuleType):
    """``cupy.linalg``/``cupy.fft``: NumPy's functions on device arrays."""

    def __init__(self, qualname, np_namespace):
        super().__init__(qualname)
        self._np = np_namespace

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _lookup(self._np, name, self.__name__)


random = _RandomModule()
linalg = _Namespace("cupy.linalg", np.linalg)
fft = _Namespace("cupy.fft", np.fft)
lib = types.ModuleType("cupy.lib")
lib.stride_tricks = _Namespace("cupy.lib.stride_tricks", np.lib.stride_tricks)


# ----------------------------------------------------------------------------- install

def install():
    """Make ``import cupy`` (and ``cupy.cuda``, ``cupy.random``, ...) give this module.
    Call it before anything imports CuPy (``tests/conftest.py`` does, at import time)."""
    this = sys.modules[__name__]
    sys.modules["cupy"] = this
    sys.modules["cupy.cuda"] = cuda
    sys.modules["cupy.cuda.runtime"] = cuda.runtime
    sys.modules["cupy.cuda.nccl"] = cuda.nccl
    sys.modules["cupy.random"] = random
    sys.modules["cupy.linalg"] = linalg
    sys.modules["cupy.fft"] = fft
    sys.modules["cupy.lib"] = lib
    sys.modules["cupy.lib.stride_tricks"] = lib.stride_tricks
    return this


def _main(argv):
    """``python tests/fake_cupy.py SCRIPT [ARGS...]``: run a script with the fake installed
    (a GPU run of an example or benchmark, rehearsed on the CPU)."""
    import runpy
    if not argv:
        print("usage: python tests/fake_cupy.py SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    install()
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("fake_cupy", sys.modules[__name__])
    sys.exit(_main(sys.argv[1:]))
