"""Rank 1 fails while rank 0 waits for it in a collective: the job must end, not hang.

Run: ``mpiexec -n 2 python tests/distributed_scripts/err_uncaught.py KIND`` with KIND
``error`` (a RuntimeError) or ``interrupt`` (a KeyboardInterrupt, as Ctrl-C on one rank).
The test expects a non-zero exit well within its timeout, and on stderr the rank's
message from minidl.distributed and the exception itself.
"""
import sys

import minidl
import minidl.distributed as dist


def main(kind):
    dist.init_process_group(backend="mpi")
    if dist.get_rank() == 1:
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("rank 1 failed on purpose")
    dist.all_reduce(minidl.tensor([1.0]))  # rank 0 waits here for rank 1, which is gone
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
