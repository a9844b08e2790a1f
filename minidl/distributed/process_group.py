"""The process group and its collectives, on MPI through mpi4py (imported lazily, here only).

Every collective works in place on the NumPy array inside a minidl Tensor, so a learner sees
plainly what MPI does: ``all_reduce`` sums (or averages) the same tensor across all ranks,
``broadcast`` copies rank ``src``'s tensor to the others, ``all_gather`` collects every
rank's tensor into a list. Every rank must make the same calls in the same order, or the
program hangs: that is the contract of collective communication.
"""
from __future__ import annotations

import enum

import numpy as np

from ..autograd import Tensor

_INSTALL_HINT = 'pip install "minidl[distributed]"'


class ReduceOp(enum.Enum):
    """How ``all_reduce`` combines the ranks' tensors (``torch.distributed.ReduceOp``)."""
    SUM = "sum"
    AVG = "avg"


class _Group:
    """The one process group: the MPI communicator and the MPI module it came from."""
    comm = None
    mpi = None


def is_available():
    """Whether mpi4py can be imported (the MPI backend is usable)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def init_process_group(backend="mpi"):
    """Join the group of processes started by ``mpiexec`` (rank and size come from MPI)."""
    if backend != "mpi":
        raise ValueError(f"init_process_group: expected backend='mpi' (the only one so far), "
                         f"got {backend!r}")
    if _Group.comm is not None:
        raise RuntimeError("init_process_group: the default process group is already "
                           "initialized")
    try:
        from mpi4py import MPI  # lazy: minidl works without MPI installed
    except ImportError as e:
        raise ImportError(f"init_process_group(backend='mpi') needs mpi4py and an MPI "
                          f"library, which are not installed: {_INSTALL_HINT}") from e
    _Group.mpi = MPI
    _Group.comm = MPI.COMM_WORLD


def destroy_process_group():
    """Forget the process group (MPI itself is finalised when Python exits)."""
    _Group.comm = None
    _Group.mpi = None


def is_initialized():
    """Whether ``init_process_group`` has been called."""
    return _Group.comm is not None


def _comm(call):
    """The communicator, or a RuntimeError naming ``call`` when there is no group yet."""
    if _Group.comm is None:
        raise RuntimeError(f"{call}: the default process group has not been initialized; "
                           f"call minidl.distributed.init_process_group(backend='mpi') first")
    return _Group.comm


def get_rank():
    """This process's index in the group, ``0 .. world_size - 1``."""
    return _comm("get_rank()").Get_rank()


def get_world_size():
    """The number of processes in the group."""
    return _comm("get_world_size()").Get_size()


def barrier():
    """Wait until every rank has reached this call."""
    _comm("barrier()").Barrier()


def _cpu_array(call, tensor):
    """The tensor's NumPy array, checked: collectives here run on CPU tensors only."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{call}: expected a minidl Tensor, got {type(tensor).__name__}")
    if not isinstance(tensor.data, np.ndarray):
        raise RuntimeError(f"{call}: expected a CPU tensor (the MPI backend sends NumPy "
                           f"arrays), got a tensor on {tensor.device}; move it with .cpu()")
    return tensor.data


def _write_back(tensor, array, result):
    """Store ``result`` in the tensor's own memory (views stay views) and count the change."""
    if result is not array:
        array[...] = result
    tensor._bump_version()  # an in-place change, as for add_(): saved-value checks see it


def all_reduce(tensor, op=ReduceOp.SUM):
    """Replace ``tensor`` on every rank by the sum (``ReduceOp.SUM``) or the mean
    (``ReduceOp.AVG``) of its values across the ranks, in place."""
    comm = _comm("all_reduce()")
    array = _cpu_array("all_reduce()", tensor)
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise ValueError(f"all_reduce(): expected op ReduceOp.SUM or ReduceOp.AVG, got {op!r}")
    if op is ReduceOp.AVG and array.dtype.kind not in "fc":
        raise TypeError(f"all_reduce(op=ReduceOp.AVG): expected a floating tensor, got "
                        f"{array.dtype}")
    # MPI needs one contiguous buffer; a strided view is reduced through a copy.
    buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    comm.Allreduce(_Group.mpi.IN_PLACE, buf, op=_Group.mpi.SUM)
    if op is ReduceOp.AVG:
        buf /= comm.Get_size()
    _write_back(tensor, array, buf)
    return tensor


def broadcast(tensor, src=0):
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every other rank, in place."""
    comm = _comm("broadcast()")
    array = _cpu_array("broadcast()", tensor)
    size = comm.Get_size()
    if not 0 <= src < size:
        raise ValueError(f"broadcast(): expected src in [0, {size}), got {src}")
    buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    comm.Bcast(buf, root=src)
    _write_back(tensor, array, buf)
    return tensor


def all_gather(tensor_list, tensor):
    """Fill ``tensor_list[r]`` with rank ``r``'s ``tensor``, on every rank, in place.

    ``tensor_list`` holds ``world_size`` tensors of ``tensor``'s shape and dtype.
    """
    comm = _comm("all_gather()")
    array = _cpu_array("all_gather()", tensor)
    size = comm.Get_size()
    if len(tensor_list) != size:
        raise ValueError(f"all_gather(): expected tensor_list of world_size={size} tensors, "
                         f"got {len(tensor_list)}")
    for r, t in enumerate(tensor_list):
        out = _cpu_array("all_gather()", t)
        if out.shape != array.shape or out.dtype != array.dtype:
            raise ValueError(f"all_gather(): expected tensor_list[{r}] of shape "
                             f"{array.shape} and dtype {array.dtype} (the tensor's), got "
                             f"{out.shape} {out.dtype}")
    gathered = np.empty((size,) + array.shape, dtype=array.dtype)
    comm.Allgather(np.ascontiguousarray(array), gathered)
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
    """Start summing ``buf`` across the ranks, in place: a C-contiguous CPU NumPy array
    that nobody touches until the returned ``Work`` has been waited for (MPI Iallreduce)."""
    comm = _comm(call)
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError(f"{call}: expected a C-contiguous NumPy array to reduce in place, got "
                        f"{type(buf).__name__}")
    request = comm.Iallreduce(_Group.mpi.IN_PLACE, buf, op=_Group.mpi.SUM)
    return Work(request, buf)


def _all_gather_object(call, obj):
    """Every rank's ``obj`` (a small picklable value), in rank order, on every rank
    (``torch.distributed.all_gather_object``): used to check that the ranks agree."""
    return _comm(call).allgather(obj)
