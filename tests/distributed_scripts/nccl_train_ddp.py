"""``train_ddp.py`` on GPUs: DistributedDataParallel over backend 'nccl'; rank 0 saves the
weights to argv[1].

Run on GPUs (one per rank): ``mpiexec -n 2 python tests/distributed_scripts/nccl_train_ddp.py
OUT.npz``; on the CPU, against the fake CuPy:
``mpiexec -n 2 python tests/fake_cupy.py tests/distributed_scripts/nccl_train_ddp.py OUT.npz``.
The test expects ``train_ddp.train_single()`` (one CPU process, batch 100).
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn.functional as F
from minidl.optim import SGD
from train_ddp import N, STEPS, make_data, make_model


def train(model, x, y, device):
    """``train_ddp.train`` with the batch on ``device``."""
    x, y = minidl.tensor(x, device=device), minidl.tensor(y, device=device)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def main(out):
    dist.init_process_group(backend="nccl")
    rank = dist.get_rank()
    device = f"cuda:{rank % minidl.cuda.device_count()}"
    model = make_model().to(device)
    if rank != 0:  # a different start: DDP must broadcast rank 0's weights
        with minidl.no_grad():
            for p in model.parameters():
                p.data[...] = 7.0
    ddp = dist.DistributedDataParallel(model)
    x, y = make_data()
    shard = list(dist.DistributedSampler(range(N), shuffle=False))
    train(ddp, x[shard], y[shard], device)
    weights = {k: v.cpu().numpy() for k, v in model.state_dict().items()}
    if rank == 0:
        np.savez(out, **weights)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
