"""The process group and its collectives; MPI (mpi4py) starts the ranks for both backends.

Every collective works in place on the array inside a minidl Tensor, so a learner sees
plainly what it does: ``all_reduce`` sums (or averages) the same tensor across all ranks,
``broadcast`` copies rank ``src``'s tensor to the others, ``all_gather`` collects every
rank's tensor into a list. Every rank must make the same calls in the same order, with
tensors of the same shape and dtype: that is the contract of collective communication.

Backends, one small object each, so that every collective is written once:

- ``'mpi'`` (``_MPIBackend``, below): CPU tensors; mpi4py sends the NumPy arrays' memory.
  A GPU tensor is refused with a clear error rather than copied through the host behind
  the caller's back (PyTorch's MPI backend needs a CUDA-aware MPI for GPU tensors; here the
  GPU path is ``'nccl'``).
- ``'nccl'`` (``nccl.NCCLBackend``): GPU tensors, through CuPy's NCCL bindings; MPI still
  starts the processes, gives the ranks and hands NCCL's unique id around.

Two safety nets, both on for every call (a teaching library prefers a clear error to a
hang):

- before the data moves, every rank tells every other which collective it is in, the
  argument that must match (``op``, ``src``) and its tensor's shape and dtype (one small
  MPI all-gather, ``_agree``); a mismatch raises the same ValueError on every rank instead
  of hanging or returning garbage. It costs one extra small collective per call.
- with more than one rank, ``init_process_group`` chains a ``sys.excepthook`` that, on an
  uncaught exception (and on KeyboardInterrupt), prints which rank failed, then the
  traceback (through the previous hook), and calls ``MPI.COMM_WORLD.Abort(1)``: the other
  ranks, waiting in a collective for the one that died, are ended too, and ``mpiexec``
  exits non-zero. ``destroy_process_group`` puts the previous hook back. Exceptions in
  other threads (``threading.excepthook``) are left alone: in Python they end only their
  thread, and the program may handle them (join it, read a result it failed to make).
  ``sys.exit(n)`` is no exception: a rank that exits while others wait leaves them
  waiting, as plain MPI does; raise instead, or run the script with
  ``python -m mpi4py script.py``, which aborts on that too.
"""
from __future__ import annotations

import enum
import sys
import time

import numpy as np

from ..autograd import Tensor
from ..backend import get_array_module

_INSTALL_HINT = 'pip install "minidl[distributed]"'
_BACKENDS = ("mpi", "nccl")


class ReduceOp(enum.Enum):
    """How ``all_reduce`` combines the ranks' tensors (``torch.distributed.ReduceOp``)."""
    SUM = "sum"
    AVG = "avg"


class _Group:
    """The one process group: the MPI communicator and module (both backends start from
    MPI), the backend object that moves the tensors, and the excepthook it replaced."""
    comm = None
    mpi = None
    backend = None
    previous_excepthook = None


def is_available():
    """Whether mpi4py can be imported (the MPI backend is usable)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def init_process_group(backend="mpi"):
    """Join the group of processes started by ``mpiexec`` (rank and size come from MPI).

    ``backend='mpi'``: collectives on CPU tensors. ``backend='nccl'``: on GPU tensors, each
    rank on GPU ``rank % device_count`` (one GPU per rank; NCCL refuses two ranks on one).
    From here on an uncaught exception on any rank aborts the whole job (module docstring).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"init_process_group: expected backend='mpi' (CPU tensors) or "
                         f"'nccl' (GPU tensors), got {backend!r}")
    if _Group.backend is not None:
        raise RuntimeError("init_process_group: the default process group is already "
                           "initialized")
    try:
        from mpi4py import MPI  # lazy: minidl works without MPI installed
    except ImportError as e:
        raise ImportError(f"init_process_group(backend={backend!r}) needs mpi4py and an MPI "
                          f"library (MPI starts the ranks for every backend), which are not "
                          f"installed: {_INSTALL_HINT}") from e
    _Group.mpi = MPI
    _Group.comm = MPI.COMM_WORLD
    # With one rank nobody can wait for a dead partner: no hook (an interactive session
    # keeps its prompt after an error). Installed before the backend is built: building
    # the NCCL one is itself collective (rank 0's unique id is broadcast), so a rank that
    # fails there must end the job too; the hook then stays until destroy_process_group.
    if _Group.comm.Get_size() > 1:
        _install_abort_hook()
    if backend == "nccl":
        from .nccl import NCCLBackend  # imports CuPy only when built
        _Group.backend = NCCLBackend(_Group.comm)
    else:
        _Group.backend = _MPIBackend(_Group.comm, MPI)


def destroy_process_group():
    """Forget the process group and put back the excepthook it replaced (MPI itself is
    finalised when Python exits)."""
    if _Group.backend is not None:
        _Group.backend.close()
    if sys.excepthook is _abort_on_uncaught_exception:  # not if the program set its own
        sys.excepthook = _Group.previous_excepthook
    _Group.comm = _Group.mpi = _Group.backend = _Group.previous_excepthook = None


def is_initialized():
    """Whether ``init_process_group`` has been called."""
    return _Group.backend is not None


def get_backend():
    """The backend's name, ``'mpi'`` or ``'nccl'``."""
    _comm("get_backend()")
    return _Group.backend.name


def _comm(call):
    """The MPI communicator, or a RuntimeError naming ``call`` when there is no group yet."""
    if _Group.backend is None:
        raise RuntimeError(f"{call}: the default process group has not been initialized; "
                           f"call minidl.distributed.init_process_group(backend='mpi') first")
    return _Group.comm


def get_rank():
    """This process's index in the group, ``0 .. world_size - 1``."""
    return _comm("get_rank()").Get_rank()


def get_world_size():
    """The number of processes in the group."""
    return _comm("get_world_size()").Get_size()


# ----------------------------------------------------------------------------- abort

def _install_abort_hook():
    if sys.excepthook is not _abort_on_uncaught_exception:
        _Group.previous_excepthook = sys.excepthook
        sys.excepthook = _abort_on_uncaught_exception


def _abort_on_uncaught_exception(exc_type, exc, tb):
    """``sys.excepthook`` while the group exists: say which rank failed, let the previous
    hook print the traceback, then end every rank of the job (``MPI_Abort``).

    Without it the failed rank exits and the others wait forever in their next collective
    for a partner that is gone. Called for KeyboardInterrupt too (Ctrl-C on one rank).
    """
    comm = _Group.comm
    previous = _Group.previous_excepthook or sys.__excepthook__
    if comm is None:  # reached through a hook that wrapped this one, after destroy
        previous(exc_type, exc, tb)
        return
    try:
        sys.stderr.write(f"minidl.distributed: rank {comm.Get_rank()} of {comm.Get_size()} "
                         f"raised an uncaught exception; aborting the job (MPI_Abort) so the "
                         f"other ranks do not wait forever\n")
        previous(exc_type, exc, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        # mpiexec forwards each rank's output through its own processes; MPI_Abort kills
        # them at once, which cut tracebacks short in tests. A moment lets them drain.
        time.sleep(0.5)
    finally:  # whatever the printing did, the job must end
        comm.Abort(1)


# ----------------------------------------------------------------------------- agreement

_CALLS = ("barrier()", "all_reduce()", "broadcast()", "all_gather()")
_MAX_DIMS = 64                  # NumPy 2 and CuPy arrays have at most 64 dimensions
_SIGNATURE = 4 + _MAX_DIMS      # call, option, dtype code, ndim, shape (zero-padded)


def _agree(call, array=None, option=None):
    """Check, on every rank at once, that all ranks are in the same collective ``call``
    with the same ``option`` (``(name, value)``, ``value`` a small int: the op's index, the
    src rank) and arrays of the same shape and dtype; raise the same ValueError on every
    rank otherwise. One MPI all-gather of ``_SIGNATURE`` int64 per rank. No rank leaves it
    before every rank has entered, so it is also the barrier.
    """
    comm = _Group.comm
    mine = np.zeros(_SIGNATURE, dtype=np.int64)
    mine[0] = _CALLS.index(call)
    mine[1] = 0 if option is None else option[1]
    if array is not None:
        mine[2] = ord(array.dtype.char)  # one character per NumPy/CuPy dtype
        mine[3] = array.ndim
        mine[4:4 + array.ndim] = array.shape
    everyone = np.empty((comm.Get_size(), _SIGNATURE), dtype=np.int64)
    comm.Allgather(mine, everyone)
    if everyone.tobytes() == mine.tobytes() * len(everyone):  # all alike: the cheap test
        return
    differ = np.flatnonzero((everyone != mine).any(axis=1))
    rank, me, other = int(differ[0]), comm.Get_rank(), everyone[differ[0]]
    if other[0] != mine[0]:
        raise ValueError(f"{call}: rank {rank} called {_CALLS[other[0]]} where this rank "
                         f"({me}) called {call}; every rank must make the same collective "
                         f"calls in the same order")
    if other[1] != mine[1]:
        name, value = option
        raise ValueError(f"{call}: rank {rank} passed {name}={_option_text(name, other[1])} "
                         f"and this rank ({me}) {name}={_option_text(name, value)}; every "
                         f"rank must pass the same {name}")

    def described(sig):
        return f"shape {tuple(int(d) for d in sig[4:4 + sig[3]])} and dtype {np.dtype(chr(sig[2]))}"
    raise ValueError(f"{call}: every rank must pass a tensor of the same shape and dtype, "
                     f"but this rank ({me}) has {described(mine)} and rank {rank} has "
                     f"{described(other)}")


def _option_text(name, value):
    return list(ReduceOp)[value] if name == "op" else str(int(value))


# ----------------------------------------------------------------------------- backends

def _check_tensor(call, tensor):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{call}: expected a minidl Tensor, got {type(tensor).__name__}")


def _cpu_array(call, tensor):
    """The tensor's NumPy array, checked: the MPI backend sends CPU tensors only."""
    _check_tensor(call, tensor)
    if not isinstance(tensor.data, np.ndarray):
        raise RuntimeError(f"{call}: expected a CPU tensor for backend 'mpi' (mpi4py sends "
                           f"host memory), got a tensor on {tensor.device}; move it with "
                           f".cpu(), or use init_process_group(backend='nccl') for GPU "
                           f"tensors")
    return tensor.data


class _MPIBackend:
    """Backend 'mpi': the collectives on NumPy arrays, through mpi4py's buffer calls."""

    name = "mpi"

    def __init__(self, comm, mpi):
        self.comm, self.mpi = comm, mpi

    def array(self, call, tensor):
        """The tensor's array, or an error naming ``call`` if this backend cannot send it."""
        return _cpu_array(call, tensor)

    def all_reduce_sum(self, buf):
        """``buf`` (contiguous) = its sum over the ranks, in place."""
        self.comm.Allreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)

    def start_all_reduce_sum(self, buf):
        """Start ``all_reduce_sum`` without waiting: an MPI request (``Test``, ``Wait``)."""
        if not isinstance(buf, np.ndarray):
            raise TypeError(f"backend 'mpi' reduces NumPy arrays, got {type(buf).__name__}")
        return self.comm.Iallreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)

    def broadcast(self, buf, src):
        """``buf`` (contiguous) = rank ``src``'s ``buf``."""
        self.comm.Bcast(buf, root=src)

    def all_gather(self, buf, out):
        """``out[r]`` = rank ``r``'s ``buf``; ``out``: (world_size, *buf.shape)."""
        self.comm.Allgather(buf, out)

    def close(self):
        pass


def _array(call, tensor):
    """The tensor's array, checked by the backend (CPU for 'mpi', this rank's GPU for
    'nccl')."""
    _check_tensor(call, tensor)
    return _Group.backend.array(call, tensor)


def _contiguous(array):
    """``array`` itself when the backends can send it as one buffer, else a C copy."""
    return array if array.flags.c_contiguous else get_array_module(array).ascontiguousarray(array)


def _write_back(tensor, array, result):
    """Store ``result`` in the tensor's own memory (views stay views) and count the change."""
    if result is not array:
        array[...] = result
    tensor._bump_version()  # an in-place change, as for add_(): saved-value checks see it


# ----------------------------------------------------------------------------- collectives

def barrier():
    """Wait until every rank has reached this call (and check that every rank is in a
    barrier, not in another collective)."""
    _comm("barrier()")
    _agree("barrier()")


def all_reduce(tensor, op=ReduceOp.SUM):
    """Replace ``tensor`` on every rank by the sum (``ReduceOp.SUM``) or the mean
    (``ReduceOp.AVG``) of its values across the ranks, in place."""
    comm = _comm("all_reduce()")
    array = _array("all_reduce()", tensor)
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise ValueError(f"all_reduce(): expected op ReduceOp.SUM or ReduceOp.AVG, got {op!r}")
    if op is ReduceOp.AVG and array.dtype.kind not in "fc":
        raise TypeError(f"all_reduce(op=ReduceOp.AVG): expected a floating tensor, got "
                        f"{array.dtype}")
    _agree("all_reduce()", array, ("op", list(ReduceOp).index(op)))
    # One contiguous buffer for the backend; a strided view is reduced through a copy.
    buf = _contiguous(array)
    _Group.backend.all_reduce_sum(buf)
    if op is ReduceOp.AVG:
        buf /= comm.Get_size()
    _write_back(tensor, array, buf)
    return tensor


def broadcast(tensor, src=0):
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every other rank, in place."""
    comm = _comm("broadcast()")
    array = _array("broadcast()", tensor)
    size = comm.Get_size()
    if not 0 <= src < size:
        raise ValueError(f"broadcast(): expected src in [0, {size}), got {src}")
    _agree("broadcast()", array, ("src", src))
    buf = _contiguous(array)
    _Group.backend.broadcast(buf, src)
    _write_back(tensor, array, buf)
    return tensor


def all_gather(tensor_list, tensor):
    """Fill ``tensor_list[r]`` with rank ``r``'s ``tensor``, on every rank, in place.

    ``tensor_list`` holds ``world_size`` tensors of ``tensor``'s shape and dtype.
    """
    comm = _comm("all_gather()")
    array = _array("all_gather()", tensor)
    size = comm.Get_size()
    if len(tensor_list) != size:
        raise ValueError(f"all_gather(): expected tensor_list of world_size={size} tensors, "
                         f"got {len(tensor_list)}")
    for r, t in enumerate(tensor_list):
        out = _array("all_gather()", t)
        if out.shape != array.shape or out.dtype != array.dtype:
            raise ValueError(f"all_gather(): expected tensor_list[{r}] of shape "
                             f"{array.shape} and dtype {array.dtype} (the tensor's), got "
                             f"{out.shape} {out.dtype}")
    _agree("all_gather()", array)
    xp = get_array_module(array)
    gathered = xp.empty((size,) + array.shape, dtype=array.dtype)
    _Group.backend.all_gather(_contiguous(array), gathered)
    for t, part in zip(tensor_list, gathered):
        _write_back(t, t.data, part)
    return tensor_list


# ----------------------------------------------------------------------------- in flight
# Non-blocking collectives, for DistributedDataParallel's gradient buckets: start a
# reduction now, go on computing, wait for it later. Every rank must start them in the same
# order (MPI matches non-blocking collectives by their order on the communicator). MPICH
# advances a collective only while the process is inside some MPI call, so whoever wants
# real overlap calls ``is_completed()`` now and then (it drives the progress engine).


class Work:
    """A collective in flight (``torch.distributed.Work``'s role).

    ``wait()`` blocks until it has completed, then runs ``then()`` once (e.g. dividing by
    the world size), and returns True; the result is in the buffer from then on.
    ``is_completed()`` asks MPI without blocking whether ``wait()`` would return at once.
    """

    __slots__ = ("_request", "_buf", "_then", "_done")

    def __init__(self, request, buf, then=None):
        self._request = request
        self._buf = buf        # MPI writes into it until completion: keep it alive
        self._then = then
        self._done = False

    def is_completed(self):
        return self._done or self._request.Test()

    def wait(self):
        if not self._done:
            self._request.Wait()
            self._done = True
            if self._then is not None:
                self._then()
        return True


def _start_all_reduce_sum(call, buf):
    """Start summing ``buf`` across the ranks, in place: a C-contiguous array of the
    backend's device (NumPy for 'mpi': MPI Iallreduce; CuPy for 'nccl': queued on the
    current stream) that nobody touches until the returned ``Work`` has been waited for."""
    _comm(call)
    if not buf.flags.c_contiguous:
        raise TypeError(f"{call}: expected a C-contiguous array to reduce in place")
    return Work(_Group.backend.start_all_reduce_sum(buf), buf)


def _all_gather_object(call, obj):
    """Every rank's ``obj`` (a small picklable value), in rank order, on every rank
    (``torch.distributed.all_gather_object``): used to check that the ranks agree."""
    return _comm(call).allgather(obj)
