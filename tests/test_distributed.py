"""minidl.distributed: collectives and DDP under ``mpiexec -n 2``, the sampler in-process.

The MPI tests launch scripts from ``tests/distributed_scripts/`` (each rank is a process)
and are skipped, with the reason, when mpi4py or mpiexec is missing.
"""
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import minidl
import minidl.distributed as dist
from helpers import run_mpi_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "distributed_scripts"


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collectives_under_mpiexec(tmp_path):
    out = tmp_path / "ok.txt"
    run_mpi_script("collectives.py", out)
    assert out.read_text() == "ok"


def test_ddp_two_ranks_match_one_process_with_the_whole_batch(tmp_path):
    """2 ranks x batch 50 (DDP, different initial weights on rank 1) == 1 x batch 100."""
    out = tmp_path / "weights.npz"
    run_mpi_script("train_ddp.py", out)
    script = _load_script("train_ddp")
    single = script.train_single()
    start = script.make_model().state_dict()
    with np.load(out) as ddp:
        assert sorted(ddp.files) == sorted(single)
        for k, w in single.items():
            np.testing.assert_allclose(ddp[k], w, rtol=0, atol=1e-10, err_msg=k)
            assert np.abs(w - start[k].numpy()).max() > 1e-3  # training did move it


@pytest.mark.parametrize("call", [
    lambda: dist.get_rank(), lambda: dist.get_world_size(), lambda: dist.barrier(),
    lambda: dist.all_reduce(minidl.tensor([1.0])), lambda: dist.broadcast(minidl.tensor([1.0])),
    lambda: dist.all_gather([minidl.tensor([1.0])], minidl.tensor([1.0])),
    lambda: dist.DistributedDataParallel(minidl.nn.Linear(2, 2)),
    lambda: dist.DistributedSampler(range(4)),
])
def test_calls_before_init_name_the_call(call):
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"\w+\(\): the default process group has not "
                                           r"been initialized; call .*init_process_group"):
        call()


def test_queue_callback_outside_backward_is_an_error():
    with pytest.raises(RuntimeError, match="queue_callback: .*no backward pass is running"):
        minidl.autograd.queue_callback(lambda: None)


def test_queue_callback_runs_after_the_whole_backward_pass():
    seen = []

    class Probe(minidl.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, gy):
            minidl.autograd.queue_callback(lambda: seen.append(w.grad.numpy().copy()))
            return gy

    w = minidl.tensor([1.0, 2.0], requires_grad=True)
    (Probe.apply(w * 3.0) * w).sum().backward()  # w's grad has two contributions
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], [2 * 3.0 * 1.0, 2 * 3.0 * 2.0])


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (2, 3, False),
                                                   (12, 4, False), (12, 4, True), (7, 2, True)])
def test_sampler_matches_pytorch_without_shuffle(n, replicas, drop_last):
    torch_dist = pytest.importorskip("torch.utils.data.distributed")
    for rank in range(replicas):
        ours = dist.DistributedSampler(range(n), num_replicas=replicas, rank=rank,
                                       shuffle=False, drop_last=drop_last)
        theirs = torch_dist.DistributedSampler(range(n), num_replicas=replicas, rank=rank,
                                               shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs)
        assert len(ours) == len(theirs)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_cover_and_reshuffle_per_epoch(drop_last):
    n, replicas = 11, 3
    samplers = [dist.DistributedSampler(range(n), num_replicas=replicas, rank=r, seed=5,
                                        drop_last=drop_last) for r in range(replicas)]
    orders = []
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert all(len(sh) == len(samplers[0]) for sh in shards)
        flat = [i for sh in shards for i in sh]
        if drop_last:  # 11 -> 9 distinct samples, none twice
            assert len(flat) == 9 and len(set(flat)) == 9
        else:  # 11 -> 12: every sample, one of them twice
            assert len(flat) == 12 and set(flat) == set(range(n))
        orders.append(flat)
    assert orders[0] != orders[1]  # set_epoch reshuffles...
    samplers[0].set_epoch(0)
    assert list(samplers[0]) == list(dist.DistributedSampler(  # ...reproducibly
        range(n), num_replicas=replicas, rank=0, seed=5, drop_last=drop_last))


def test_sampler_rejects_a_bad_rank():
    with pytest.raises(ValueError, match=r"DistributedSampler: expected rank in \[0, 2\), "
                                         r"got 2"):
        dist.DistributedSampler(range(4), num_replicas=2, rank=2)


def test_init_process_group_rejects_other_backends():
    with pytest.raises(ValueError, match="init_process_group: expected backend='mpi'.*'nccl'"):
        dist.init_process_group(backend="gloo")


def test_missing_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "minidl\[distributed\]"'):
        dist.init_process_group(backend="mpi")
    assert not dist.is_initialized()


def test_dataloader_takes_a_distributed_sampler_as_pytorch():
    """DataLoader(sampler=...) visits the sampler's indices, afresh every epoch; it excludes
    shuffle=True, as PyTorch's does."""
    ds = minidl.data.TensorDataset(minidl.arange(10))
    sampler = dist.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    loader = minidl.data.DataLoader(ds, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    assert [b[0].tolist() for b in loader] == [[1, 3], [5, 7], [9]]
    shuffled = dist.DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=3)
    loader = minidl.data.DataLoader(ds, batch_size=5, sampler=shuffled)
    assert next(iter(loader))[0].tolist() == list(shuffled)
    shuffled.set_epoch(1)                              # the loader reads the new order
    assert next(iter(loader))[0].tolist() == list(shuffled)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        minidl.data.DataLoader(ds, sampler=sampler, shuffle=True)
