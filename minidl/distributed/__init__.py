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
in place on CPU (NumPy) tensors. This first version reduces each gradient on its own once
backward has finished: no bucketing, no overlap of communication with the backward pass.
"""
from __future__ import annotations

from .ddp import DistributedDataParallel
from .process_group import (ReduceOp, all_gather, all_reduce, barrier, broadcast,
                            destroy_process_group, get_rank, get_world_size,
                            init_process_group, is_available, is_initialized)
from .sampler import DistributedSampler
from . import sync_batchnorm  # noqa: F401 - plugs the collectives into nn.SyncBatchNorm

__all__ = ["init_process_group", "destroy_process_group", "is_available", "is_initialized",
           "get_rank", "get_world_size", "barrier", "all_reduce", "broadcast", "all_gather",
           "ReduceOp", "DistributedDataParallel", "DistributedSampler"]
