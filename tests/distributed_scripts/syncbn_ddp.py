"""Train a float64 model with SyncBatchNorm under DistributedDataParallel; each rank saves
its state.

Run: ``mpiexec -n 2 python tests/distributed_scripts/syncbn_ddp.py OUT_DIR`` (rank r writes
``OUT_DIR/rank{r}.npz``). The test runs ``train_single`` in-process: the same model with
plain BatchNorm, one process, batch 40; 2 ranks x batch 20 with the batch norms converted
by ``SyncBatchNorm.convert_sync_batchnorm`` must end with the same weights and running
statistics, on both ranks (with per-rank BatchNorm they would not: each rank would
normalise with its own half's statistics).
"""
import os
import sys

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.optim import SGD

STEPS, N = 8, 40


def make_model():
    """Conv + BatchNorm2d + tanh + Linear + BatchNorm1d + tanh + Linear, float64."""
    minidl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5), nn.Tanh(),
                         nn.Linear(5, 2)).double()


def make_data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((N, 1, 6, 6)) * 2 + 1, rng.standard_normal((N, 2))


def train(model, x, y):
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(minidl.tensor(x)), minidl.tensor(y)).backward()  # a batch mean
        opt.step()


def train_single():
    model = make_model()
    x, y = make_data()
    train(model, x, y)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def main(out_dir):
    dist.init_process_group(backend="mpi")
    model = nn.SyncBatchNorm.convert_sync_batchnorm(make_model())
    if dist.get_rank() != 0:  # a different start: DDP broadcasts rank 0's state
        with minidl.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                t.data[...] = 3
    ddp = dist.DistributedDataParallel(model)
    x, y = make_data()
    shard = list(dist.DistributedSampler(range(N), shuffle=False))   # rows r::2
    train(ddp, x[shard], y[shard])
    np.savez(os.path.join(out_dir, f"rank{dist.get_rank()}.npz"),
             **{k: v.numpy() for k, v in model.state_dict().items()})
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
