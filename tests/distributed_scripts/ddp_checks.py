"""Checks of bucketed DistributedDataParallel that each rank verifies for itself.

Run: ``mpiexec -n 2 python tests/distributed_scripts/ddp_checks.py MODE OUT``; modes:

work: the non-blocking all-reduce (``_start_all_reduce_sum``) and ``_all_gather_object``;
    rank 0 writes "ok" to OUT.
no_sync: two backward passes inside ``no_sync()`` keep local sums, the third averages the
    sum of all three over the ranks; rank 0 writes "ok".
unused: a branch that each rank uses on different steps (on some, neither does): no hang,
    and each step's gradients equal the average of the per-rank gradients (zeros where a
    rank had none); rank 0 writes "ok".
mismatch: rank 1 wraps a different model; every rank writes the error it got to
    OUT.rank<r> (one line per case).
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.distributed.process_group import _all_gather_object, _start_all_reduce_sum


def check_work():
    rank = dist.get_rank()
    a = np.arange(5.0) * (rank + 1)
    b = np.full((2, 3), float(rank), dtype=np.float32)
    wa, wb = _start_all_reduce_sum("test", a), _start_all_reduce_sum("test", b)
    assert wb.wait() is True and wa.wait() is True
    assert wa.is_completed() and wb.is_completed()
    np.testing.assert_array_equal(a, np.arange(5.0) * 3)
    np.testing.assert_array_equal(b, np.ones((2, 3), dtype=np.float32))
    try:
        _start_all_reduce_sum("test", np.zeros((3, 4))[:, ::2])
    except TypeError as e:
        assert "test: expected a C-contiguous array" in str(e), e
    else:
        raise AssertionError("a strided buffer was accepted")
    assert _all_gather_object("test", (rank, "x" * rank)) == [(0, ""), (1, "x")]


class Net(nn.Module):
    """Linear -> (+ extra branch, when asked) -> tanh -> Linear, float64."""

    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(4, 6)
        self.extra = nn.Linear(4, 6)
        self.lin2 = nn.Linear(6, 2)

    def forward(self, x, use_extra=True):
        h = self.lin1(x)
        if use_extra:
            h = h + self.extra(x)
        return self.lin2(h.tanh())


def make_net():
    minidl.manual_seed(3)
    return Net().double()


def batch(rank, step):
    rng = np.random.default_rng(100 * step + rank)
    return minidl.tensor(rng.standard_normal((5, 4))), minidl.tensor(rng.standard_normal((5, 2)))


def local_grads(model, rank, steps, use_extra=lambda rank, step: True):
    """The gradient sum of ``steps`` on a plain copy of ``model``: {name: array}, zeros
    for a parameter with no gradient."""
    ref = make_net()
    ref.load_state_dict(model.state_dict())
    for step in steps:
        x, y = batch(rank, step)
        F.mse_loss(ref(x, use_extra(rank, step)), y).backward()
    return {k: np.zeros(p.shape) if p.grad is None else p.grad.numpy()
            for k, p in ref.named_parameters()}


def assert_grads(model, expected, what):
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), expected[k], rtol=0, atol=1e-12,
                                   err_msg=f"{what}: {k}")


def check_no_sync():
    rank = dist.get_rank()
    model = make_net()
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1e-6)
    with ddp.no_sync():
        for step in (0, 1):
            x, y = batch(rank, step)
            F.mse_loss(ddp(x), y).backward()
    assert_grads(model, local_grads(model, rank, (0, 1)), "inside no_sync (local sum)")
    assert ddp._comm_stats["launched"] == 0
    x, y = batch(rank, 2)
    F.mse_loss(ddp(x), y).backward()
    sums = [local_grads(model, r, (0, 1, 2)) for r in range(2)]
    assert_grads(model, {k: (sums[0][k] + sums[1][k]) / 2 for k in sums[0]},
                 "first synced backward (averaged sum)")
    assert ddp._comm_stats["syncs"] == 1


def check_unused():
    rank = dist.get_rank()
    model = make_net()
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1e-6)
    opt = minidl.optim.SGD(model.parameters(), lr=0.1)

    def use_extra(rank, step):  # steps 0-5 use it on: both, rank 1, rank 0, rank 1,
        # both, neither
        return (step % 2 == 0) if rank == 0 else (step % 3 != 2)

    for step in range(6):
        opt.zero_grad()
        expected = [local_grads(model, r, (step,), use_extra) for r in range(2)]
        x, y = batch(rank, step)
        F.mse_loss(ddp(x, use_extra(rank, step)), y).backward()
        assert_grads(model, {k: (expected[0][k] + expected[1][k]) / 2 for k in expected[0]},
                     f"step {step}")
        opt.step()
    assert ddp._comm_stats["syncs"] == 6


def check_mismatch(out):
    rank = dist.get_rank()
    cases = [  # (rank 0's model, rank 1's model)
        (lambda: nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)),
         lambda: nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))),
        (lambda: nn.Sequential(nn.Linear(4, 3)),
         lambda: nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))),
    ]
    lines = []
    for make0, make1 in cases:
        try:
            dist.DistributedDataParallel(make0() if rank == 0 else make1())
        except RuntimeError as e:
            lines.append(str(e))
        else:
            lines.append("no error")
    with open(f"{out}.rank{rank}", "w") as f:
        f.write("\n".join(lines))


def main(mode, out):
    dist.init_process_group(backend="mpi")
    assert dist.get_world_size() == 2
    if mode == "mismatch":
        check_mismatch(out)
    else:
        {"work": check_work, "no_sync": check_no_sync, "unused": check_unused}[mode]()
        dist.barrier()
        if dist.get_rank() == 0:
            with open(out, "w") as f:
                f.write("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
