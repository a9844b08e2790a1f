"""Backend 'nccl': the collectives on GPU tensors through CuPy's NCCL bindings.

Three layers, as for minidl.cuda:
- on every machine, the NCCL code path under ``mpiexec -n 2`` against the NCCL stand-in of
  ``tests/fake_cupy.py`` (``python tests/fake_cupy.py SCRIPT`` installs the fake in each
  rank; the stand-in moves the data through mpi4py), and the stand-in's own rules;
- ``@pytest.mark.gpu``, in this process with one rank: the real CuPy and NCCL on a GPU, or
  the fake under ``MINIDL_FAKE_CUPY=1 pytest -m gpu``;
- ``@pytest.mark.gpu``, two ranks on two real GPUs (NCCL wants one GPU per rank).
"""
import importlib.util
import sys

import numpy as np
import pytest

import fake_cupy
import minidl
import minidl.distributed as dist
from helpers import MPI4PY_MISSING, run_mpiexec
from test_distributed_errors import ROOT, SCRIPTS

FAKE = ROOT / "tests" / "fake_cupy.py"


def _load_script(name):
    sys.path.insert(0, str(SCRIPTS))   # nccl_train_ddp imports train_ddp
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def _assert_same_weights(out):
    single = _load_script("train_ddp").train_single()
    with np.load(out) as ddp:
        assert sorted(ddp.files) == sorted(single)
        for k, w in single.items():
            np.testing.assert_allclose(ddp[k], w, rtol=0, atol=1e-10, err_msg=k)


# ----------------------------------------------------------------------------- the fake, 2 ranks

def test_nccl_collectives_two_ranks_on_the_fake_cupy(tmp_path):
    out = tmp_path / "ok.txt"
    proc = run_mpiexec(FAKE, SCRIPTS / "nccl_collectives.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text() == "ok"


def test_ddp_over_nccl_two_ranks_on_the_fake_cupy_matches_one_process(tmp_path):
    """2 ranks x batch 50 on the (fake) GPU, rank 1 starting from other weights == one
    CPU process with batch 100 (``train_ddp.train_single``)."""
    out = tmp_path / "weights.npz"
    proc = run_mpiexec(FAKE, SCRIPTS / "nccl_train_ddp.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_weights(out)


def test_nccl_without_cupy_says_what_is_missing():
    if minidl.cuda.is_available():
        pytest.skip("a GPU is present: this test checks what a CPU-only machine sees")
    pytest.importorskip("mpi4py", reason=MPI4PY_MISSING)
    try:
        with pytest.raises(RuntimeError, match=r"init_process_group\(backend='nccl'\) needs "
                                               r"CuPy with its NCCL bindings and a GPU: .*CuPy"):
            dist.init_process_group(backend="nccl")
        assert not dist.is_initialized()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the stand-in

def test_the_nccl_stand_in_takes_device_pointers_only():
    """World size 1: the collectives copy; ``x.data.ptr`` of a view points at its first
    element; a host pointer, or a count past the buffer, is refused."""
    nccl = fake_cupy.cuda.nccl
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    x = fake_cupy.arange(6, dtype=np.float32)
    y = fake_cupy.zeros(6, dtype=np.float32)
    comm.allReduce(x.data.ptr, y.data.ptr, 6, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    comm.allGather(x[3:].data.ptr, y.data.ptr, 3, nccl.NCCL_FLOAT32, 0)
    assert y.tolist() == [3, 4, 5, 3, 4, 5]
    host = np.zeros(6, dtype=np.float32)
    with pytest.raises(nccl.NcclError, match="are not inside a device array"):
        comm.allReduce(host.ctypes.data, y.data.ptr, 6, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    with pytest.raises(nccl.NcclError, match="are not inside a device array"):
        comm.bcast(x.data.ptr, 7, nccl.NCCL_FLOAT32, 0, 0)
    comm.destroy()
    with pytest.raises(nccl.NcclError, match="destroyed communicator"):
        comm.bcast(x.data.ptr, 6, nccl.NCCL_FLOAT32, 0, 0)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_nccl_one_rank_in_process(cuda_device, tmp_path):
    """The collectives script with one rank, in this process: real NCCL on a GPU, or the
    stand-in under MINIDL_FAKE_CUPY=1."""
    pytest.importorskip("mpi4py", reason=MPI4PY_MISSING)
    out = tmp_path / "ok.txt"
    try:
        _load_script("nccl_collectives").main(out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert out.read_text() == "ok"


@pytest.mark.gpu
def test_nccl_two_ranks_on_two_gpus(cuda_device, tmp_path):
    import cupy
    if cupy is fake_cupy or cupy.__version__.endswith("+fake"):
        pytest.skip("the fake CuPy: two ranks run in test_nccl_collectives_two_ranks_on_the_"
                    "fake_cupy")
    if minidl.cuda.device_count() < 2:
        pytest.skip(f"NCCL wants one GPU per rank; this machine has "
                    f"{minidl.cuda.device_count()}")
    out = tmp_path / "ok.txt"
    proc = run_mpiexec(SCRIPTS / "nccl_collectives.py", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text() == "ok"
    weights = tmp_path / "weights.npz"
    proc = run_mpiexec(SCRIPTS / "nccl_train_ddp.py", weights)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_weights(weights)
