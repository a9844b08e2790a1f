"""examples/lenet_mnist.py --distributed: two ranks under ``mpiexec -n 2``, and one alone.

Every run is a subprocess (MPI is initialised once per process, and never in pytest's own),
on synthetic digits in temporary folders, skipped with the reason when mpi4py or mpiexec is
missing. A run that hangs (ranks that disagree on when to stop) fails at the time limit.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from helpers import MPI4PY_MISSING, run_mpiexec
from minidl import models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPT = EXAMPLES / "lenet_mnist.py"
sys.path.insert(0, str(EXAMPLES))
import lenet_mnist  # noqa: E402

# 600 images, global batches of 20 (10 a rank): 30 steps an epoch; lr 0.3 moves the weights
# far from their start in 2 epochs, so "the same weights" means the same training
FAST = ["--synthetic", "--limit", "600", "--batch-size", "20", "--lr", "0.3", "--no-tsne",
        "--no-plots", "--no-progress"]
TIMEOUT = 180     # seconds: the machine is shared and loaded
TIMES = ("seconds", "train_seconds")


def example(*args, ranks=2):
    """Run ``lenet_mnist.py --distributed args`` on ``ranks`` processes under mpiexec
    (``helpers.run_mpiexec``; ranks=None: alone, without mpiexec); the CompletedProcess."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip(MPI4PY_MISSING)
    if ranks is not None:
        return run_mpiexec(SCRIPT, "--distributed", *args, n=ranks, timeout=TIMEOUT)
    command = [sys.executable, str(SCRIPT), "--distributed", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def succeeded(proc):
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def numbers(metrics):
    """The epochs' records without the wall-clock times."""
    return [{k: v for k, v in e.items() if k not in TIMES} for e in metrics["epochs"]]


def weights(path):
    return {k: v.numpy() for k, v in minidl.load(path)["model_state"].items()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """2 epochs on 2 ranks: (the process, its output folder)."""
    out = tmp_path_factory.mktemp("two-ranks")
    return succeeded(example(*FAST, "--epochs", 2, "--out", out)), out


def test_rank_0_alone_prints_and_writes(two_ranks):
    proc, out = two_ranks
    lines = proc.stdout.splitlines()
    header = [ln for ln in lines if ln.startswith("LeNet-5 on synthetic digits")]
    assert len(header) == 1 and header[0].endswith(
        "--distributed: 2 processes, 10 images each per batch of 20"), lines
    for epoch in (1, 2):
        for kind in ("Train", "Eval", "Time"):
            assert sum(ln.startswith(f"{kind} epoch {epoch}:") for ln in lines) == 1, lines
    assert sum(ln.startswith("Wrote ") for ln in lines) == 1, lines
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "final.npz", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["args"]["distributed"] is True
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["final"]["test_top1"] > 50       # it learned (chance is 10 %)


def test_two_ranks_train_what_one_process_trains(two_ranks, tmp_path):
    """Rank r takes every 2nd index of the sampler's shuffle, so each step's two halves
    together are the batch that one process with the same sampler (world size 1) takes:
    with the gradients averaged, the same step, up to float rounding."""
    _, out = two_ranks
    alone = succeeded(example(*FAST, "--epochs", 2, "--out", tmp_path, ranks=None))
    assert "--distributed: 1 process (only one: start several with mpiexec -n N), 20 " \
           "images each per batch of 20" in alone.stdout
    start = models.lenet5().state_dict()
    ours, theirs = weights(out / "final.npz"), weights(tmp_path / "final.npz")
    assert sorted(ours) == sorted(start)                    # the plain model's keys
    for key, w in theirs.items():
        np.testing.assert_allclose(ours[key], w, rtol=0, atol=1e-5, err_msg=key)
        assert np.abs(w - start[key].numpy()).max() > 1e-2, key    # training moved it
    two = json.loads((out / "metrics.json").read_text())
    one = json.loads((tmp_path / "metrics.json").read_text())
    for a, b in zip(numbers(two), numbers(one)):
        assert a == pytest.approx(b, rel=1e-4, abs=0.11)  # accuracies: 1 test image in 1000


def test_resume_continues_across_modes(two_ranks, tmp_path):
    """A 2-rank run resumed from its epoch-1 checkpoint prints what the 2-epoch run did;
    its checkpoint resumes in a single process, and a single process's on 2 ranks."""
    _, out = two_ranks
    uninterrupted = json.loads((out / "metrics.json").read_text())
    succeeded(example(*FAST, "--epochs", 1, "--out", tmp_path / "a"))
    resumed = succeeded(example(*FAST, "--epochs", 2, "--out", tmp_path / "b", "--resume",
                                tmp_path / "a" / "final.npz"))
    assert resumed.stdout.count("Resumed from") == 1
    assert "Train epoch 1:" not in resumed.stdout and "Train epoch 2:" in resumed.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert numbers(metrics) == numbers(uninterrupted)
    # distributed -> single process, in this process
    single = lenet_mnist.main([*FAST, "--epochs", "3", "--out", str(tmp_path / "c"), "--resume",
                               str(tmp_path / "b" / "final.npz")])
    assert [e["epoch"] for e in single["epochs"]] == [1, 2, 3]
    assert numbers(single)[:2] == numbers(uninterrupted)
    # single process -> distributed
    lenet_mnist.main([*FAST, "--epochs", "1", "--out", str(tmp_path / "d")])
    succeeded(example(*FAST, "--epochs", 2, "--out", tmp_path / "e", "--resume",
                      tmp_path / "d" / "final.npz"))
    first = json.loads((tmp_path / "d" / "metrics.json").read_text())
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert numbers(metrics)[:1] == numbers(first)


def test_every_rank_stops_early_at_the_same_epoch(tmp_path):
    """A learning rate this high diverges: the validation loss stops improving and rank 0
    decides to stop; a rank that went on (or stopped sooner) would leave the other waiting
    in a collective, and the run would hang instead of exiting."""
    proc = succeeded(example("--synthetic", "--limit", 400, "--batch-size", 20, "--lr", 1.0,
                             "--epochs", 6, "--early-stopping", 1, "--no-tsne", "--no-plots",
                             "--no-progress", "--out", tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped_early"]
    assert len(metrics["epochs"]) == metrics["best"]["epoch"] + 1 < 6
    assert proc.stdout.count("Early stopping:") == 1


@pytest.mark.parametrize("case", ["missing checkpoint", "out holds a run", "odd batch"])
def test_a_refusal_stops_every_rank_with_one_message(case, tmp_path):
    """Rank 0 checks (or fails first) and the others learn it: all exit with status 1,
    and the user reads one message, not one per rank (nor a hang)."""
    new = tmp_path / "new"
    if case == "missing checkpoint":
        args = ["--resume", tmp_path / "nowhere.npz", "--out", new]
        expected = f"cannot resume from {tmp_path / 'nowhere.npz'}: "
    elif case == "out holds a run":
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "metrics.json").write_text("{}")
        args = ["--out", tmp_path / "old"]
        expected = f"the output folder {tmp_path / 'old'} already holds a run"
    else:
        args = ["--batch-size", 25, "--out", new]
        expected = ("--distributed: --batch-size 25 is the batch of all 2 processes "
                    "together: it must be divisible by 2")
    proc = example(*FAST, "--epochs", 2, *args)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, proc.stderr                       # rank 0's message alone
    assert errors[0].startswith(f"lenet_mnist.py: error: {expected}"), proc.stderr
    assert "Train epoch" not in proc.stdout
    assert not (tmp_path / "new").exists()                    # nothing left behind


def test_models_that_return_a_namedtuple(tmp_path):
    """GoogLeNet's training output is a namedtuple: the wrapped model gives it back, and
    its gradients flow (one process, without mpiexec)."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip('mpi4py is not installed (pip install "minidl[distributed]")')
    code = """if True:
        import sys; sys.path.insert(0, sys.argv[1])
        import collections, minidl, _common
        from minidl import nn
        Out = collections.namedtuple("Out", ["main", "aux"])
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3, 2)
            def forward(self, x):
                y = self.fc(x)
                return Out(y, 2 * y)
        model = Two()
        net = _common.Ranks(True).wrap(model)
        out = net(minidl.ones(4, 3))
        assert type(out) is Out, type(out)
        (out.main.sum() + out.aux.sum()).backward()
        assert float(model.fc.bias.grad.numpy().sum()) == 24.0, model.fc.bias.grad
        print("ok")
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_unexpected_error_on_one_rank_ends_them_all():
    """A bug that raises on rank 1 while rank 0 waits in a collective: the traceback is
    printed and the MPI job aborted (minidl.distributed's excepthook), instead of leaving
    rank 0 waiting for ever."""
    code = """if True:
        import sys; sys.path.insert(0, sys.argv[1])
        import minidl.distributed as dist, _common
        def main(argv):
            ranks = _common.Ranks(True)
            if ranks.rank == 1:
                raise ZeroDivisionError("a bug on rank 1")
            dist.barrier()                    # rank 1 never comes
        sys.exit(_common.cli(main, []))
    """
    proc = run_mpiexec("-c", code, EXAMPLES, n=2, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "ZeroDivisionError: a bug on rank 1" in proc.stderr, proc.stderr
