"""Train a small float64 model with DistributedDataParallel; rank 0 saves the weights.

Run: ``mpiexec -n 2 python tests/distributed_scripts/train_ddp.py OUT.npz``. The test runs
``train_single`` in-process (batch 100) and expects the same weights as 2 ranks x batch 50.
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.optim import SGD

STEPS, N = 20, 100


def make_model():
    """Conv + tanh + Linear, float64; the seed is only rank 0's business under DDP."""
    minidl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3)).double()


def make_data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((N, 1, 6, 6)), rng.standard_normal((N, 3))


def train(model, x, y):
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(minidl.tensor(x)), minidl.tensor(y)).backward()
        opt.step()


def train_single():
    model = make_model()
    x, y = make_data()
    train(model, x, y)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def main(out):
    dist.init_process_group(backend="mpi")
    model = make_model()
    if dist.get_rank() != 0:  # a different start: DDP must broadcast rank 0's weights
        with minidl.no_grad():
            for p in model.parameters():
                p.data[...] = 7.0
    ddp = dist.DistributedDataParallel(model)
    x, y = make_data()
    shard = list(dist.DistributedSampler(range(N), shuffle=False))
    train(ddp, x[shard], y[shard])
    if dist.get_rank() == 0:
        np.savez(out, **{k: v.numpy() for k, v in model.state_dict().items()})
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
