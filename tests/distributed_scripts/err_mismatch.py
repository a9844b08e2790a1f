"""Each rank passes what the other does not: every rank must get a ValueError naming the
call (not a hang, not garbage), and the group must still work afterwards.

Run: ``mpiexec -n 2 python tests/distributed_scripts/err_mismatch.py OUT``; rank r writes
``{case: message}`` as JSON to ``OUT.r{r}.json`` for the test to check (``"no error"`` where
the call went through). Also records whether ``init_process_group`` installed its
excepthook and ``destroy_process_group`` put the previous one back.
"""
import json
import sys

import numpy as np

import minidl
import minidl.distributed as dist


def zeros(*shape, dtype=np.float64):
    return minidl.tensor(np.zeros(shape, dtype=dtype))


CASES = {  # case -> what rank r calls
    "all_reduce shape": lambda r: dist.all_reduce(zeros(2, 3) if r == 0 else zeros(3)),
    "all_reduce dtype": lambda r: dist.all_reduce(zeros(4, dtype=np.float64 if r == 0
                                                        else np.float32)),
    "all_reduce op": lambda r: dist.all_reduce(zeros(2), op=(dist.ReduceOp.SUM if r == 0
                                                             else dist.ReduceOp.AVG)),
    "broadcast shape": lambda r: dist.broadcast(zeros(4) if r == 0 else zeros(2, 2)),
    "broadcast src": lambda r: dist.broadcast(zeros(3), src=r),
    "all_gather shape": lambda r: dist.all_gather([zeros(r + 1), zeros(r + 1)], zeros(r + 1)),
    "different calls": lambda r: dist.all_reduce(zeros(2)) if r == 0 else dist.barrier(),
    "same everywhere": lambda r: dist.all_reduce(zeros(2, 3)),
}


def main(out):
    before = sys.excepthook
    dist.init_process_group(backend="mpi")
    rank = dist.get_rank()
    result = {"hook installed": sys.excepthook is not before}
    for case, call in CASES.items():
        try:
            call(rank)
            result[case] = "no error"
        except ValueError as e:
            result[case] = str(e)
    t = minidl.tensor([rank + 1.0])
    dist.all_reduce(t)  # the group still works: 1 + 2
    result["sum after the errors"] = t.item()
    dist.destroy_process_group()
    result["hook restored"] = sys.excepthook is before
    with open(f"{out}.r{rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
