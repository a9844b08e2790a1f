"""minidl.distributed's errors: a rank that fails ends the whole job, collectives that do
not match across the ranks raise on every rank, a tensor the backend cannot send is named.

The MPI cases run scripts from ``tests/distributed_scripts/`` under ``mpiexec -n 2`` and are
skipped, with the reason, when mpi4py or mpiexec is missing. Their timeout is what a hang
would hit: a job that does not end is killed and the test fails saying so.
"""
import json
import pathlib
import sys

import numpy as np
import pytest

import minidl
import minidl.distributed as dist
from helpers import MPI4PY_MISSING, run_mpiexec

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "distributed_scripts"


ABORT_MESSAGE = ("minidl.distributed: rank 1 of 2 raised an uncaught exception; aborting the "
                 "job (MPI_Abort) so the other ranks do not wait forever")


@pytest.mark.parametrize("kind,exception", [
    ("error", "RuntimeError: rank 1 failed on purpose"),
    ("interrupt", "KeyboardInterrupt"),
])
def test_an_uncaught_exception_on_one_rank_aborts_the_whole_job(kind, exception):
    """Rank 0 waits in all_reduce for rank 1, which raised: without the abort the job would
    wait forever (run_mpiexec's timeout)."""
    proc = run_mpiexec(SCRIPTS / "err_uncaught.py", kind)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert ABORT_MESSAGE in proc.stderr, proc.stderr
    assert exception in proc.stderr, proc.stderr
    # the rank's message comes first, then the traceback of the original exception
    assert proc.stderr.index(ABORT_MESSAGE) < proc.stderr.index(exception)


def _same_tensor(call, me, mine, other, theirs):
    return (f"{call}(): every rank must pass a tensor of the same shape and dtype, but this "
            f"rank ({me}) has {mine} and rank {other} has {theirs}")


def test_mismatched_collectives_raise_on_every_rank_naming_the_call(tmp_path):
    out = tmp_path / "messages"
    proc = run_mpiexec(SCRIPTS / "err_mismatch.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [json.loads((tmp_path / f"messages.r{r}.json").read_text()) for r in (0, 1)]
    f64 = "dtype float64"
    expected = [{
        "all_reduce shape": _same_tensor("all_reduce", 0, f"shape (2, 3) and {f64}",
                                         1, f"shape (3,) and {f64}"),
        "all_reduce dtype": _same_tensor("all_reduce", 0, f"shape (4,) and {f64}",
                                         1, "shape (4,) and dtype float32"),
        "all_reduce op": "all_reduce(): rank 1 passed op=ReduceOp.AVG and this rank (0) "
                         "op=ReduceOp.SUM; every rank must pass the same op",
        "broadcast shape": _same_tensor("broadcast", 0, f"shape (4,) and {f64}",
                                        1, f"shape (2, 2) and {f64}"),
        "broadcast src": "broadcast(): rank 1 passed src=1 and this rank (0) src=0; every "
                         "rank must pass the same src",
        "all_gather shape": _same_tensor("all_gather", 0, f"shape (1,) and {f64}",
                                         1, f"shape (2,) and {f64}"),
        "different calls": "all_reduce(): rank 1 called barrier() where this rank (0) called "
                           "all_reduce(); every rank must make the same collective calls in "
                           "the same order",
    }, {
        "all_reduce shape": _same_tensor("all_reduce", 1, f"shape (3,) and {f64}",
                                         0, f"shape (2, 3) and {f64}"),
        "all_reduce dtype": _same_tensor("all_reduce", 1, "shape (4,) and dtype float32",
                                         0, f"shape (4,) and {f64}"),
        "all_reduce op": "all_reduce(): rank 0 passed op=ReduceOp.SUM and this rank (1) "
                         "op=ReduceOp.AVG; every rank must pass the same op",
        "broadcast shape": _same_tensor("broadcast", 1, f"shape (2, 2) and {f64}",
                                        0, f"shape (4,) and {f64}"),
        "broadcast src": "broadcast(): rank 0 passed src=0 and this rank (1) src=1; every "
                         "rank must pass the same src",
        "all_gather shape": _same_tensor("all_gather", 1, f"shape (2,) and {f64}",
                                         0, f"shape (1,) and {f64}"),
        "different calls": "barrier(): rank 0 called all_reduce() where this rank (1) called "
                           "barrier(); every rank must make the same collective calls in the "
                           "same order",
    }]
    for rank in (0, 1):
        for case, message in expected[rank].items():
            assert got[rank][case] == message, (rank, case)
        assert got[rank]["same everywhere"] == "no error"
        assert got[rank]["sum after the errors"] == 3.0   # no collective was left half done
        assert got[rank]["hook installed"] and got[rank]["hook restored"]


@pytest.fixture
def one_rank_mpi():
    """The 'mpi' group of this process alone (MPI's singleton start, world size 1)."""
    pytest.importorskip("mpi4py", reason=MPI4PY_MISSING)
    dist.init_process_group(backend="mpi")
    yield
    dist.destroy_process_group()


def test_one_rank_keeps_the_excepthook_and_agrees_with_itself():
    """With one rank nobody waits for a dead partner: no abort hook (an interactive session
    keeps its prompt after an error); the collectives and their checks run as usual."""
    pytest.importorskip("mpi4py", reason=MPI4PY_MISSING)
    before = sys.excepthook
    dist.init_process_group(backend="mpi")
    try:
        assert sys.excepthook is before
        assert dist.get_backend() == "mpi" and dist.get_world_size() == 1
        t = minidl.tensor(np.arange(6.0).reshape(2, 3))
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        dist.broadcast(t)
        parts = [minidl.zeros(2, 3, dtype=minidl.float64)]
        dist.all_gather(parts, t)
        dist.barrier()
        np.testing.assert_array_equal(parts[0].numpy(), np.arange(6.0).reshape(2, 3))
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def test_get_backend_before_init_names_the_call():
    with pytest.raises(RuntimeError, match=r"get_backend\(\): the default process group has "
                                           r"not been initialized"):
        dist.get_backend()


def test_a_non_tensor_names_the_call(one_rank_mpi):
    with pytest.raises(TypeError, match=r"broadcast\(\): expected a minidl Tensor, got "
                                        r"ndarray"):
        dist.broadcast(np.zeros(3))


@pytest.mark.gpu
def test_a_gpu_tensor_with_backend_mpi_names_the_call(cuda_device, one_rank_mpi):
    """The MPI backend sends host memory; a GPU tensor is an error, not a hidden copy."""
    gpu = minidl.tensor([1.0, 2.0], device=cuda_device)
    msg = (r"expected a CPU tensor for backend 'mpi' \(mpi4py sends host memory\), got a "
           r"tensor on cuda:0; move it with .cpu\(\), or use "
           r"init_process_group\(backend='nccl'\) for GPU tensors")
    with pytest.raises(RuntimeError, match=r"all_reduce\(\): " + msg):
        dist.all_reduce(gpu)
    with pytest.raises(RuntimeError, match=r"broadcast\(\): " + msg):
        dist.broadcast(gpu)
    with pytest.raises(RuntimeError, match=r"all_gather\(\): " + msg):
        dist.all_gather([gpu], gpu)
