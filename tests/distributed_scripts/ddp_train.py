"""Train float64 models with bucketed DistributedDataParallel; rank 0 saves the results.

Run: ``mpiexec -n 2 python tests/distributed_scripts/ddp_train.py OUT.npz plain|bn``.

plain: a model without BatchNorm, trained once per bucketing in ``CONFIGS``; the test
    expects each to match ``train_single`` (one process, batch 100) and each other.
bn: a model with BatchNorm (per-rank batch statistics, as PyTorch's DDP without
    SyncBatchNorm); the test expects the parameters of ``train_bn_reference`` (one process
    averaging the two half-batch gradients), and rank 1's running statistics saved too.
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.optim import SGD

STEPS, N = 20, 100
# name -> DistributedDataParallel keywords. 1e-6 MiB (1 byte): every parameter in a bucket
# of its own; 25 MiB (the default): the whole model in one; 0.001 MiB (1048 bytes): some.
CONFIGS = {"tiny": dict(bucket_cap_mb=1e-6), "default": dict(),
           "between": dict(bucket_cap_mb=0.001),
           "tiny_view": dict(bucket_cap_mb=1e-6, gradient_as_bucket_view=True)}


def make_model():
    """Two convolutions and two linear layers (8 parameters), float64."""
    minidl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 8), nn.Tanh(),
                         nn.Linear(8, 3)).double()


def make_bn_model():
    minidl.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double()


def make_data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((N, 1, 6, 6)), rng.standard_normal((N, 3))


def shards():
    """Each rank's sample indices (what DistributedSampler gives rank 0 and rank 1)."""
    return [list(dist.DistributedSampler(range(N), num_replicas=2, rank=r, shuffle=False))
            for r in range(2)]


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
    return {k: v.numpy() for k, v in model.named_parameters()}


def train_bn_reference():
    """What 2 ranks compute, in one process: per step, the mean of the gradients of the
    two half batches, each normalised with its own batch statistics."""
    model = make_bn_model()
    x, y = make_data()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        for shard in shards():
            F.mse_loss(model(minidl.tensor(x[shard])), minidl.tensor(y[shard])).backward()
        for p in model.parameters():
            p.grad = p.grad * 0.5
        opt.step()
    return {k: v.numpy() for k, v in model.named_parameters()}


def perturb_unless_rank0(model):
    """A different start on rank 1: DistributedDataParallel must broadcast rank 0's."""
    if dist.get_rank() != 0:
        with minidl.no_grad():
            for p in model.parameters():
                p.data[...] = 7.0


def run_plain():
    x, y = make_data()
    shard = shards()[dist.get_rank()]
    saved = {}
    for name, kwargs in CONFIGS.items():
        model = make_model()
        perturb_unless_rank0(model)
        ddp = dist.DistributedDataParallel(model, **kwargs)
        train(ddp, x[shard], y[shard])
        for k, v in model.named_parameters():
            saved[f"{name}/{k}"] = v.numpy().copy()
        for k in ("buckets", "syncs", "launched", "launched_in_backward", "overlapped"):
            saved[f"{name}:{k}"] = np.array(ddp._comm_stats[k])
    return saved


def run_bn():
    x, y = make_data()
    shard = shards()[dist.get_rank()]
    model = make_bn_model()
    perturb_unless_rank0(model)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1e-6)
    train(ddp, x[shard], y[shard])
    saved = {k: v.numpy().copy() for k, v in model.named_parameters()}
    for k, b in model.named_buffers():  # every rank's running statistics, to rank 0
        parts = [minidl.zeros_like(b) for _ in range(2)]
        dist.all_gather(parts, b)
        for r, part in enumerate(parts):
            saved[f"rank{r}/{k}"] = part.numpy()
    for k, p in model.named_parameters():  # the replicas' parameters are identical
        parts = [minidl.zeros_like(p) for _ in range(2)]
        dist.all_gather(parts, p.detach())
        np.testing.assert_array_equal(parts[0].numpy(), parts[1].numpy(), err_msg=k)
    return saved


def main(out, mode):
    dist.init_process_group(backend="mpi")
    saved = run_plain() if mode == "plain" else run_bn()
    if dist.get_rank() == 0:
        np.savez(out, **saved)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
