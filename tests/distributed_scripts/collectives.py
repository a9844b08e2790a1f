"""Check the collectives' values on every rank; rank 0 writes "ok" to the file in argv[1].

Run: ``mpiexec -n 2 python tests/distributed_scripts/collectives.py OUT.txt``.
"""
import sys

import numpy as np

import minidl
import minidl.distributed as dist


def main(out):
    dist.init_process_group(backend="mpi")
    assert dist.is_initialized()
    rank, size = dist.get_rank(), dist.get_world_size()
    assert size == 2, size

    t = minidl.tensor(np.arange(6.0).reshape(2, 3) + rank)
    dist.all_reduce(t)  # SUM by default
    np.testing.assert_array_equal(t.numpy(), 2 * np.arange(6.0).reshape(2, 3) + 1)

    t = minidl.tensor(np.full(4, 10.0 * (rank + 1)))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    np.testing.assert_array_equal(t.numpy(), np.full(4, 15.0))

    base = minidl.tensor(np.zeros((3, 4)) + rank)  # a strided view goes through a copy
    dist.all_reduce(base[:, ::2])
    np.testing.assert_array_equal(base.numpy()[:, ::2], np.ones((3, 2)))
    np.testing.assert_array_equal(base.numpy()[:, 1::2], np.full((3, 2), float(rank)))

    t = minidl.tensor(np.full(3, float(rank + 5)))
    dist.broadcast(t, src=1)
    np.testing.assert_array_equal(t.numpy(), np.full(3, 6.0))

    mine = minidl.tensor(np.array([rank, rank * 10], dtype=np.int64))
    parts = [minidl.tensor(np.zeros(2, dtype=np.int64)) for _ in range(size)]
    dist.all_gather(parts, mine)
    np.testing.assert_array_equal(np.stack([p.numpy() for p in parts]), [[0, 0], [1, 10]])

    dist.barrier()
    if rank == 0:
        with open(out, "w") as f:
            f.write("ok")


if __name__ == "__main__":
    main(sys.argv[1])
