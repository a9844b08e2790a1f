"""Bucketed DistributedDataParallel and the autograd hook it stands on.

In-process: ``Tensor.register_post_accumulate_grad_hook`` (checked against PyTorch's
behaviour) and the bucket assignment. Under ``mpiexec -n 2`` (scripts
``tests/distributed_scripts/ddp_*.py``, skipped with the reason when mpi4py or mpiexec is
missing): 2 ranks x batch 50 == 1 process x batch 100 for several bucketings, overlap,
BatchNorm, ``no_sync``, unused parameters, mismatched models, the non-blocking all-reduce.
"""
import gc
import importlib.util
import pathlib

import numpy as np
import pytest
import torch

import minidl
import minidl.nn as nn
from minidl.autograd import Function
from minidl.distributed.ddp import _assign_buckets
from helpers import run_mpi_script

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "distributed_scripts"


# ----------------------------------------------------------------------------- the hook


def _recorder(log, name, lib=minidl):
    """A hook that logs (name, a copy of .grad or None, grad mode, .grad requires grad)."""
    def hook(t):
        g = t.grad
        log.append((name, None if g is None else g.detach().numpy().copy(),
                    lib.is_grad_enabled(), g is not None and g.requires_grad))
    return hook


def _pair(lib):
    a = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
    b = lib.tensor([3.0, -1.0], dtype=lib.float64, requires_grad=True)
    return a, b


@pytest.mark.parametrize("lib", [minidl, torch], ids=["minidl", "torch"])
def test_hook_fires_once_after_the_last_accumulation(lib):
    """``a`` feeds two nodes (a*b and the final product): the hook runs once, when .grad
    holds both contributions, in no_grad mode; again once per later pass."""
    a, b = _pair(lib)
    log = []
    a.register_post_accumulate_grad_hook(_recorder(log, "a", lib))
    b.register_post_accumulate_grad_hook(_recorder(log, "b", lib))
    ((a * b).exp() * a).sum().backward()
    an, bn = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    e = np.exp(an * bn)
    assert [entry[0] for entry in log] == ["a", "b"]
    np.testing.assert_allclose(log[0][1], e + an * bn * e)
    np.testing.assert_allclose(log[1][1], an * an * e)
    assert log[0][2] is False and log[0][3] is False
    ((a * b).exp() * a).sum().backward()         # a second pass: once more, accumulated
    assert [entry[0] for entry in log] == ["a", "b", "a", "b"]
    np.testing.assert_allclose(log[2][1], 2 * (e + an * bn * e))


class _NoGradForSecond(Function):
    """x * w whose backward gives x its gradient and w none."""

    @staticmethod
    def forward(ctx, x, w):
        return x * w

    @staticmethod
    def backward(ctx, gy):
        return gy, None


class _TorchNoGradForSecond(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        return x * w

    @staticmethod
    def backward(ctx, gy):
        return gy, None


@pytest.mark.parametrize("lib", [minidl, torch], ids=["minidl", "torch"])
def test_hook_waits_for_nodes_that_pass_no_gradient(lib):
    """``w`` reaches the loss through ``w * 3`` (a node no gradient flows through, which
    minidl skips) and through ``w * 2``: its hook fires once, with the gradient of the
    second path, whichever runs last; a leaf reached without any gradient still fires, with
    .grad None (PyTorch's rule)."""
    apply = (_NoGradForSecond if lib is minidl else _TorchNoGradForSecond).apply
    x, w = _pair(lib)
    v = lib.tensor([5.0], dtype=lib.float64, requires_grad=True)
    log = []
    for name, t in (("x", x), ("w", w), ("v", v)):
        t.register_post_accumulate_grad_hook(_recorder(log, name, lib))
    (apply(x, w * 3.0).sum() + (w * 2.0).sum() + apply(x, v * 1.0).sum()).backward()
    fired = {name: g for name, g, _, _ in log}
    assert sorted(entry[0] for entry in log) == ["v", "w", "x"]
    np.testing.assert_array_equal(fired["w"], [2.0, 2.0])
    np.testing.assert_array_equal(fired["x"], [2.0, 2.0])
    assert fired["v"] is None


def test_hooks_follow_the_graph_later_layers_first():
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(),
                          nn.Linear(4, 2))
    order = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda t, name=name: order.append(name))
    model(minidl.randn(5, 3)).sum().backward()
    assert sorted(order) == sorted(n for n, _ in model.named_parameters())  # once each
    layers = [int(name.split(".")[0]) for name in order]
    assert layers == sorted(layers, reverse=True)  # the last layer's gradients are final first


def test_hook_sees_the_grad_and_may_change_it():
    w = minidl.tensor([1.0, 2.0], requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", t.grad * 10.0))
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [20.0, 40.0])


def test_remove_stops_the_hook_and_forgets_the_leaf():
    w = minidl.tensor([1.0], requires_grad=True)
    calls = []
    h1 = w.register_post_accumulate_grad_hook(lambda t: calls.append(1))
    h2 = w.register_post_accumulate_grad_hook(lambda t: calls.append(2))
    (w * 2.0).sum().backward()
    assert calls == [1, 2]                       # registration order
    h1.remove()
    h1.remove()                                  # a second remove does nothing
    (w * 2.0).sum().backward()
    assert calls == [1, 2, 2]
    with h2:                                     # the handle is a context manager too
        pass
    (w * 2.0).sum().backward()
    assert calls == [1, 2, 2]
    # no hook left: backward takes its plain path again (the zero-cost guard is empty)
    assert id(w) not in minidl.autograd._hooked_leaves


def test_a_dropped_leaf_is_forgotten():
    w = minidl.tensor([1.0], requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda t: None)
    key = id(w)
    assert key in minidl.autograd._hooked_leaves
    del w
    gc.collect()
    assert key not in minidl.autograd._hooked_leaves


def test_hook_on_a_non_leaf_or_without_requires_grad_is_an_error():
    w = minidl.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"register_post_accumulate_grad_hook\(\): expected "
                                           r"a leaf tensor .* got the output of Mul"):
        (w * 2.0).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(RuntimeError, match=r"expected a tensor that requires grad"):
        minidl.tensor([1.0]).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(TypeError, match=r"expected a callable hook\(tensor\), got int"):
        w.register_post_accumulate_grad_hook(3)


@pytest.mark.parametrize("lib", [minidl, torch], ids=["minidl", "torch"])
def test_grad_never_fires_backward_inputs_fires_for_the_inputs_only(lib):
    a, b = _pair(lib)
    log = []
    a.register_post_accumulate_grad_hook(_recorder(log, "a", lib))
    b.register_post_accumulate_grad_hook(_recorder(log, "b", lib))
    lib.autograd.grad((a * b).sum(), [a, b])
    assert log == []
    (a * b).sum().backward(inputs=[b])
    assert [entry[0] for entry in log] == ["b"]
    np.testing.assert_array_equal(log[0][1], [1.0, 2.0])  # .grad written before the hook
    assert a.grad is None


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("lib", [minidl, torch], ids=["minidl", "torch"])
def test_hook_under_create_graph_records(lib):
    a, b = _pair(lib)
    log = []
    a.register_post_accumulate_grad_hook(_recorder(log, "a", lib))
    (a * a * b).sum().backward(create_graph=True)
    (name, g, grad_mode, grad_requires_grad), = log
    np.testing.assert_array_equal(g, [6.0, -4.0])
    assert grad_mode is True and grad_requires_grad is True
    a.grad.sum().backward()  # the recorded .grad can be differentiated: d(2ab)/da = 2b
    np.testing.assert_array_equal(a.grad.detach().numpy(), [6.0 + 6.0, -4.0 - 2.0])


@pytest.mark.parametrize("lib", [minidl, torch], ids=["minidl", "torch"])
def test_backward_on_the_leaf_itself_fires(lib):
    a, _ = _pair(lib)
    log = []
    a.register_post_accumulate_grad_hook(_recorder(log, "a", lib))
    a.backward(lib.tensor([1.0, 1.0], dtype=lib.float64))
    assert [entry[0] for entry in log] == ["a"]


def test_queue_callback_after_backward_inputs_sees_the_new_grad():
    """backward(inputs=...) writes .grad before the final callbacks (DDP's average) run."""
    seen = []

    class Probe(Function):
        @staticmethod
        def forward(ctx, x):
            return x.copy()

        @staticmethod
        def backward(ctx, gy):
            minidl.autograd.queue_callback(lambda: seen.append(w.grad.numpy().copy()))
            return gy

    w = minidl.tensor([1.0, 2.0], requires_grad=True)
    (Probe.apply(w) * 3.0).sum().backward(inputs=[w])
    np.testing.assert_array_equal(seen[0], [3.0, 3.0])


# ----------------------------------------------------------------------------- buckets


def test_buckets_take_parameters_in_reverse_up_to_the_cap_one_dtype_each():
    p = [minidl.nn.Parameter(minidl.zeros(n, dtype=dt)) for n, dt in
         [(10, np.float64), (2, np.float64), (3, np.float32), (30, np.float64),
          (4, np.float64)]]
    names = {id(t): i for i, t in enumerate(p)}

    def layout(cap):
        return [[names[id(t)] for t in b] for b in _assign_buckets(p, cap)]

    # 96 bytes: 4+30 doubles do not fit, 30 alone is above the cap (a bucket of its own),
    # 2+10 doubles fit exactly
    assert layout(96) == [[4], [3], [2], [1, 0]]
    assert layout(1) == [[4], [3], [2], [1], [0]]
    assert layout(25 * 2**20) == [[4, 3, 1, 0], [2]]  # float32 apart


# ----------------------------------------------------------------------------- under MPI


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """One ``mpiexec`` run of every bucketing of ddp_train.py: (npz data, script)."""
    out = tmp_path_factory.mktemp("ddp") / "plain.npz"
    run_mpi_script("ddp_train.py", out, "plain")
    with np.load(out) as f:
        return dict(f), _load_script("ddp_train")


def test_two_ranks_match_one_process_for_every_bucketing(plain_run):
    saved, script = plain_run
    single = script.train_single()
    start = dict(script.make_model().named_parameters())
    for config in script.CONFIGS:
        for k, w in single.items():
            np.testing.assert_allclose(saved[f"{config}/{k}"], w, rtol=0, atol=1e-10,
                                       err_msg=f"{config}: {k}")
            # bucket boundaries change nothing: with 2 ranks each element's sum is a + b
            np.testing.assert_array_equal(saved[f"{config}/{k}"], saved[f"tiny/{k}"],
                                          err_msg=f"{config} vs tiny: {k}")
            assert np.abs(w - start[k].numpy()).max() > 1e-3  # training did move it
    assert int(saved["tiny:buckets"]) == 8          # one per parameter
    assert int(saved["default:buckets"]) == 1       # the whole model under 25 MiB
    assert 1 < int(saved["between:buckets"]) < 8


def test_small_buckets_start_before_backward_ends(plain_run):
    saved, script = plain_run
    steps = script.STEPS
    assert int(saved["tiny:syncs"]) == steps
    assert int(saved["tiny:launched"]) == 8 * steps
    # every step, some buckets were in flight while the first layer's gradients were
    # still being computed
    assert int(saved["tiny:overlapped"]) >= steps
    assert int(saved["between:overlapped"]) >= steps
    # a single bucket waits for the last gradient: nothing to overlap
    assert int(saved["default:overlapped"]) == 0
    assert int(saved["default:launched_in_backward"]) == steps


def test_batchnorm_model_matches_averaged_half_batches(tmp_path):
    """Per-rank BatchNorm statistics (no SyncBatchNorm): the parameters equal one process
    averaging the gradients of the two half batches; the running statistics differ."""
    out = tmp_path / "bn.npz"
    run_mpi_script("ddp_train.py", out, "bn")
    script = _load_script("ddp_train")
    reference = script.train_bn_reference()
    with np.load(out) as saved:
        for k, w in reference.items():
            np.testing.assert_allclose(saved[k], w, rtol=0, atol=1e-10, err_msg=k)
        assert np.abs(saved["rank0/1.running_mean"] - saved["rank1/1.running_mean"]).max() \
            > 1e-3


@pytest.mark.parametrize("mode", ["work", "no_sync", "unused"])
def test_checks_each_rank_makes(mode, tmp_path):
    """work: the non-blocking all-reduce; no_sync: local sums, then the averaged sum;
    unused: a branch used on some ranks and steps only (no hang, zeros where unused)."""
    out = tmp_path / "ok.txt"
    run_mpi_script("ddp_checks.py", mode, out)
    assert out.read_text() == "ok"


def test_different_models_on_the_ranks_are_an_error_on_every_rank(tmp_path):
    out = tmp_path / "errors"
    run_mpi_script("ddp_checks.py", "mismatch", out)
    for rank in (0, 1):
        shape_error, count_error = pathlib.Path(f"{out}.rank{rank}").read_text().split("\n")
        assert shape_error == (
            "DistributedDataParallel: expected the same model on every rank; parameter 0 is "
            "'0.weight' (3, 4) float32 on rank 0 but '0.weight' (5, 4) float32 on rank 1. "
            "Build the model identically on every rank (rank 0's weights are then copied "
            "to the others)")
        assert count_error.startswith(
            "DistributedDataParallel: expected the same model on every rank; rank 0 has 2 "
            "parameters, rank 1 has 4 (the first extra one, on rank 1: '1.weight' (2, 3) "
            "float32)")
