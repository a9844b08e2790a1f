"""The collectives on GPU tensors with backend 'nccl'; rank 0 writes "ok" to argv[1].

Run on GPUs (one per rank): ``mpiexec -n 2 python tests/distributed_scripts/nccl_collectives.py
OUT.txt``; on the CPU, against the NCCL stand-in of the fake CuPy:
``mpiexec -n 2 python tests/fake_cupy.py tests/distributed_scripts/nccl_collectives.py OUT``.
Any world size (the expected values follow from it).
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist


def expect_error(kind, pattern, call):
    try:
        call()
    except kind as e:
        assert pattern in str(e), (pattern, str(e))
    else:
        raise AssertionError(f"no {kind.__name__} for {pattern!r}")


def main(out):
    dist.init_process_group(backend="nccl")
    assert dist.get_backend() == "nccl"
    rank, size = dist.get_rank(), dist.get_world_size()
    dev = f"cuda:{rank % minidl.cuda.device_count()}"
    base = np.arange(6.0).reshape(2, 3)
    ranks = np.arange(size)

    t = minidl.tensor(base + rank, device=dev)
    assert dist.all_reduce(t) is t and t.device == dev
    np.testing.assert_array_equal(t.cpu().numpy(), size * base + ranks.sum())

    t = minidl.tensor(np.full(4, 10.0 * (rank + 1)), dtype=minidl.float32, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    np.testing.assert_allclose(t.cpu().numpy(), np.full(4, 10.0 * (ranks + 1).mean()))

    whole = minidl.tensor(np.zeros((3, 4)) + rank, device=dev)
    dist.all_reduce(whole[:, ::2])          # a strided view goes through a copy
    dist.all_reduce(whole[1])               # a contiguous view at an offset, in place
    got = whole.cpu().numpy()
    np.testing.assert_array_equal(got[[0, 2]][:, ::2], np.full((2, 2), ranks.sum()))
    np.testing.assert_array_equal(got[[0, 2]][:, 1::2], np.full((2, 2), rank))
    np.testing.assert_array_equal(got[1], [size * ranks.sum(), ranks.sum()] * 2)

    src = size - 1
    t = minidl.tensor(np.full(3, rank + 5, dtype=np.int64), device=dev)
    dist.broadcast(t, src=src)
    np.testing.assert_array_equal(t.cpu().numpy(), np.full(3, src + 5))

    mine = minidl.tensor(np.array([rank, rank * 10], dtype=np.int32), device=dev)
    parts = [minidl.zeros(2, dtype=minidl.int32, device=dev) for _ in range(size)]
    dist.all_gather(parts, mine)
    np.testing.assert_array_equal(np.stack([p.cpu().numpy() for p in parts]),
                                  np.stack([ranks, ranks * 10], axis=1))

    cpu = minidl.tensor([1.0])
    msg = "expected a CUDA tensor for backend 'nccl', got a CPU tensor; move it with .to("
    expect_error(RuntimeError, "all_reduce(): " + msg, lambda: dist.all_reduce(cpu))
    expect_error(RuntimeError, "broadcast(): " + msg, lambda: dist.broadcast(cpu))
    expect_error(RuntimeError, "all_gather(): " + msg,
                 lambda: dist.all_gather([cpu] * size, cpu))
    expect_error(RuntimeError, "all_gather(): " + msg,   # the list is checked as well
                 lambda: dist.all_gather([minidl.tensor([0.0])] * size,
                                         minidl.tensor([1.0], device=dev)))
    expect_error(TypeError, "all_reduce(): backend 'nccl' sends int8, ",
                 lambda: dist.all_reduce(minidl.tensor([True], device=dev)))
    if size > 1:  # the agreement check runs before NCCL does
        expect_error(ValueError, "all_reduce(): every rank must pass a tensor of the same "
                     "shape and dtype", lambda: dist.all_reduce(
                         minidl.zeros(rank + 1, device=dev)))

    dist.barrier()
    dist.destroy_process_group()
    assert not dist.is_initialized()
    if rank == 0:
        with open(out, "w") as f:
            f.write("ok")


if __name__ == "__main__":
    main(sys.argv[1])
