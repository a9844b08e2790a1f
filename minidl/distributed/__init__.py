"""minidl.distributed: data-parallel training over MPI (``torch.distributed``'s names).

Run one process per replica with ``mpiexec -n 2 python train.py``; in the script::

    import minidl.distributed as dist
    dist.init_process_group(backend="mpi")
    model = dist.DistributedDataParallel(model)        # rank 0's weights everywhere
    sampler = dist.DistributedSampler(train_set)        # this rank's shard of the indices
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                        # a new shuffle, the same on every rank
        for x, y in DataLoader(Subset(train_set, list(sampler)), batch_size=50):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()     # gradients averaged over the ranks
            opt.step()

Needs mpi4py and an MPI library: ``pip install "minidl[distributed]"``. Collectives work
in place: on CPU (NumPy) tensors with ``backend="mpi"``, on GPU (CuPy) tensors with
``backend="nccl"`` (CuPy's NCCL bindings; MPI still starts the ranks). Every collective
checks first that all ranks are in the same call with tensors of the same shape and dtype
(a ValueError on every rank, not a hang), and with more than one rank an uncaught exception
on any rank aborts the whole job (``MPI_Abort``) with a message naming the rank.
``DistributedDataParallel`` reduces the gradients in buckets (``bucket_cap_mb``, 25 MiB by
default, as PyTorch), each one started with a non-blocking all-reduce as soon as its
gradients are final, so communication overlaps the rest of the backward pass; ``no_sync()``
accumulates gradients locally in between. Batch-norm statistics are per rank by default (as
in PyTorch); ``minidl.nn.SyncBatchNorm.convert_sync_batchnorm(model)`` computes them over
every rank's batch instead (``sync_batchnorm.py``).
"""
from __future__ import annotations

from .ddp import DistributedDataParallel
from .nccl import is_nccl_available
from .process_group import (ReduceOp, all_gather, all_reduce, barrier, broadcast,
                            destroy_process_group, get_backend, get_rank, get_world_size,
                            init_process_group, is_available, is_initialized)
from .sampler import DistributedSampler
from . import sync_batchnorm  # noqa: F401 - plugs the collectives into nn.SyncBatchNorm

__all__ = ["init_process_group", "destroy_process_group", "is_available", "is_initialized",
           "is_nccl_available", "get_backend", "get_rank", "get_world_size", "barrier",
           "all_reduce", "broadcast", "all_gather", "ReduceOp", "DistributedDataParallel",
           "DistributedSampler"]
