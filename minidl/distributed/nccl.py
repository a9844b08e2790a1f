"""Backend 'nccl': the collectives on GPU tensors, through CuPy's NCCL bindings.

``init_process_group(backend='nccl')`` under ``mpiexec -n N``: MPI starts the processes and
gives each its rank and the world size; rank 0 makes NCCL's unique id
(``cupy.cuda.nccl.get_unique_id()``), MPI broadcasts it, and every rank joins the NCCL
communicator with it (``NcclCommunicator(world_size, uid, rank)``) on GPU
``rank % device_count``. NCCL wants one GPU per rank: on one machine start at most as many
ranks as it has GPUs, and create the tensors on that GPU
(``device=f"cuda:{rank % minidl.cuda.device_count()}"``).

The collectives are queued on the current CuPy stream, as minidl's own GPU work is, so
later work on the tensor waits for them without a ``synchronize``; the host goes on at once.
The checks of ``process_group._agree`` (same collective, same shape and dtype on every rank)
travel over MPI on the host before NCCL is called.

CuPy (and NCCL) are imported when the backend is built, never by ``import minidl``.
"""
from __future__ import annotations

import numpy as np

from ..backend import is_cupy_array, require_cupy


def is_nccl_available():
    """Whether CuPy imports, sees a GPU and has its NCCL bindings (``cupy.cuda.nccl``)."""
    try:
        require_cupy()
        from cupy.cuda import nccl
    except (RuntimeError, ImportError):
        return False
    return bool(getattr(nccl, "available", True))


class NCCLBackend:
    """This rank's NCCL communicator; the collectives on contiguous CuPy arrays."""

    name = "nccl"

    def __init__(self, comm):
        """``comm``: MPI's COMM_WORLD, for the ranks and to hand the unique id around."""
        call = "init_process_group(backend='nccl')"
        try:
            cp = require_cupy()
            from cupy.cuda import nccl
        except (RuntimeError, ImportError) as e:
            raise RuntimeError(f"{call} needs CuPy with its NCCL bindings and a GPU: {e}") from e
        if not getattr(nccl, "available", True):  # CuPy found no NCCL library
            raise RuntimeError(f"{call}: CuPy was built without NCCL or cannot load it "
                               f"(cupy.cuda.nccl.available is False); install NCCL, e.g. "
                               f"pip install nvidia-nccl-cu12")
        self.cp, self.nccl = cp, nccl
        rank, size = comm.Get_rank(), comm.Get_size()
        self.rank = rank
        self.device = rank % cp.cuda.runtime.getDeviceCount()
        cp.cuda.Device(self.device).use()
        uid = comm.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(size, uid, rank)
        self.types = {np.dtype(t): getattr(nccl, f"NCCL_{t.upper()}") for t in (
            "int8", "uint8", "int32", "uint32", "int64", "uint64",
            "float16", "float32", "float64")}

    def array(self, call, tensor):
        """The tensor's CuPy array, or an error naming ``call``: a CPU tensor, a tensor on
        another GPU than this rank's, a dtype NCCL has no type for."""
        data = tensor.data
        if not is_cupy_array(data):
            raise RuntimeError(f"{call}: expected a CUDA tensor for backend 'nccl', got a CPU "
                               f"tensor; move it with .to('cuda:{self.device}')")
        if data.device.id != self.device:
            raise RuntimeError(f"{call}: expected a tensor on cuda:{self.device} (rank "
                               f"{self.rank}'s GPU under backend 'nccl'), got one on "
                               f"cuda:{data.device.id}")
        if data.dtype not in self.types:
            raise TypeError(f"{call}: backend 'nccl' sends {', '.join(map(str, self.types))} "
                            f"tensors, got {data.dtype}")
        return data

    def _stream(self):
        return self.cp.cuda.get_current_stream().ptr

    def all_reduce_sum(self, buf):
        """``buf`` (contiguous) = its sum over the ranks, in place."""
        ptr = buf.data.ptr
        self.comm.allReduce(ptr, ptr, buf.size, self.types[buf.dtype], self.nccl.NCCL_SUM,
                            self._stream())

    def start_all_reduce_sum(self, buf):
        """``all_reduce_sum`` queued on the current stream (the host does not wait) and a
        request for it: ``Test()`` whether the GPU has done it, ``Wait()`` until it has."""
        self.all_reduce_sum(buf)
        event = self.cp.cuda.Event()
        event.record()
        return _EventRequest(event)

    def broadcast(self, buf, src):
        """``buf`` (contiguous) = rank ``src``'s ``buf``."""
        self.comm.bcast(buf.data.ptr, buf.size, self.types[buf.dtype], src, self._stream())

    def all_gather(self, buf, out):
        """``out[r]`` = rank ``r``'s ``buf``; ``out``: (world_size, *buf.shape), contiguous."""
        self.comm.allGather(buf.data.ptr, out.data.ptr, buf.size, self.types[buf.dtype],
                            self._stream())

    def close(self):
        """Free the communicator (after the work queued on it has finished)."""
        self.cp.cuda.get_current_stream().synchronize()
        self.comm.destroy()


class _EventRequest:
    """An MPI-request-like view of GPU work up to a recorded CUDA event."""

    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event

    def Test(self):  # noqa: N802 - MPI's names, so Work treats both backends alike
        return self.event.done

    def Wait(self):  # noqa: N802
        self.event.synchronize()
