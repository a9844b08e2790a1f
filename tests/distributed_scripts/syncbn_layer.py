"""SyncBatchNorm on 2 ranks, each with its part of every batch; each rank saves its results.

Run: ``mpiexec -n 2 python tests/distributed_scripts/syncbn_layer.py OUT_DIR``; rank r
writes ``OUT_DIR/rank{r}.npz`` (with ``-n 1`` the one rank holds every row: a group of one
rank, where SyncBatchNorm is BatchNorm). For every case of ``CASES`` (float64) it runs, on its rows
``shard(case, r)`` of the whole batches ``make_data(case)``:

1. a training step: y = layer(x), backward of sum(y * G) (a fixed upstream gradient, so
   the sum over the ranks is the whole batch's loss): y, x.grad, and the weight and bias
   gradients summed over the ranks;
2. a second training step, differentiated twice: gx = d sum(y * G2) / dx with
   create_graph=True, then backward of the gradient penalty sum(gx^2): y2, gx, x.grad and
   the weight gradient summed over the ranks;
3. the buffers, then an evaluation forward of a third batch.

With 2 ranks it also records the error message of ``too_few_values``.

The test (tests/test_sync_batchnorm.py) reassembles the rows and compares them with
PyTorch's layer on the whole batches in one process.
"""
import os
import sys

import numpy as np

import minidl
import minidl.distributed as dist
from minidl import nn

# name: (whole-batch shape, split, layer keywords). split "strided": rank r holds rows
# r::2; "uneven": rank 0 the first 2 rows, rank 1 the rest; "one": rank 0 holds 1 row (a
# single value per channel in 2D: too few for BatchNorm, enough together); "none": rank 0
# holds no row at all.
CASES = {
    "2d": ((9, 3), "strided", {}),
    "2d_one_row": ((5, 3), "one", {}),
    "2d_empty_rank": ((4, 3), "none", {}),
    "3d_momentum_none": ((6, 2, 5), "uneven", {"momentum": None}),
    "4d": ((4, 3, 3, 2), "strided", {"eps": 1e-3, "momentum": 0.3}),
    "5d": ((5, 2, 2, 3, 2), "strided", {}),
    "4d_no_affine": ((6, 2, 2, 3), "strided", {"affine": False}),
    "4d_no_bias": ((6, 2, 2, 3), "uneven", {"bias": False}),
    "3d_no_running_stats": ((4, 3, 4), "strided", {"track_running_stats": False}),
}


def shard(case, rank, world_size=2):
    """The row indices of the whole batch that ``rank`` holds (all of them when alone)."""
    (shape, split, _) = CASES[case]
    rows = np.arange(shape[0])
    if world_size == 1:
        return rows
    if split == "strided":
        return rows[rank::2]
    cut = {"uneven": 2, "one": 1, "none": 0}[split]
    return rows[:cut] if rank == 0 else rows[cut:]


def make_data(case):
    """Whole batches x1, x2, x3 (an offset mean: the statistics must be centred), the
    upstream gradients G, G2, and the layer's weight and bias, float64."""
    shape, _, _ = CASES[case]
    rng = np.random.default_rng(list(CASES).index(case))
    x1, x2, x3 = (rng.standard_normal(shape) * 2 + 3 for _ in range(3))
    G, G2 = rng.standard_normal(shape), rng.standard_normal(shape)
    C = shape[1]
    return dict(x1=x1, x2=x2, x3=x3, G=G, G2=G2, weight=rng.uniform(0.5, 1.5, C),
                bias=rng.standard_normal(C))


def _summed(grad, like):
    """A parameter gradient summed over the ranks (zeros where this rank got none)."""
    g = minidl.zeros(like.shape, dtype=like.dtype) if grad is None else grad.detach().clone()
    dist.all_reduce(g)
    return g.numpy()


def run_case(case):
    shape, _, kwargs = CASES[case]
    data = make_data(case)
    rows = shard(case, dist.get_rank(), dist.get_world_size())
    layer = nn.SyncBatchNorm(shape[1], **kwargs).double()
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    with minidl.no_grad():
        if layer.weight is not None:
            layer.weight.data[...] = data["weight"]
        if layer.bias is not None:
            layer.bias.data[...] = data["bias"]
    out = {}
    x = minidl.tensor(data["x1"][rows], requires_grad=True)
    y = layer(x)
    (y * minidl.tensor(data["G"][rows])).sum().backward()
    out["y1"], out["gx1"] = y.detach().numpy(), x.grad.numpy()
    for name, p in zip(("weight", "bias"), (layer.weight, layer.bias)):
        if p is not None:
            out[f"g{name}1"] = _summed(p.grad, p)
    for p in params:
        p.grad = None
    x = minidl.tensor(data["x2"][rows], requires_grad=True)
    y = layer(x)
    (gx,) = minidl.autograd.grad((y * minidl.tensor(data["G2"][rows])).sum(), [x],
                                 create_graph=True)
    (gx * gx).sum().backward()
    out["y2"], out["gx2"], out["gpen"] = y.detach().numpy(), gx.detach().numpy(), x.grad.numpy()
    if layer.weight is not None:
        out["gweight_pen"] = _summed(layer.weight.grad, layer.weight)
    for k, v in layer.state_dict().items():
        out[f"state.{k}"] = v.numpy()
    layer.eval()
    out["y_eval"] = layer(minidl.tensor(data["x3"][rows])).numpy()
    return out


def too_few_values():
    """The error when all ranks together hold one value per channel (rank 0 one row of
    (N, 3), rank 1 none): every rank raises, naming the layer, and none waits."""
    layer = nn.SyncBatchNorm(3).double()
    rows = 1 if dist.get_rank() == 0 else 0
    try:
        layer(minidl.zeros(rows, 3, dtype=minidl.float64))
    except ValueError as e:
        return str(e)
    return "no error"


def main(out_dir):
    dist.init_process_group(backend="mpi")
    results = {}
    for case in CASES:
        for k, v in run_case(case).items():
            results[f"{case}/{k}"] = v
    if dist.get_world_size() == 2:
        results["too_few_values"] = np.array(too_few_values())
    np.savez(os.path.join(out_dir, f"rank{dist.get_rank()}.npz"), **results)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
