"""minidl.nn.SyncBatchNorm: batch statistics over every rank's batch.

In one process (no process group) the layer is BatchNorm, compared with PyTorch's
SyncBatchNorm (which on the CPU without a group is BatchNorm too). The synchronised
Function is checked in-process with stand-in groups: one rank (gradcheck, gradgradcheck)
and two threads playing two ranks (equal to one batch norm over the whole batch).
Under ``mpiexec`` (tests/distributed_scripts/syncbn_*.py; skipped, with the reason, when
mpi4py or mpiexec is missing) 2 ranks each holding part of the batch must give the rows,
gradients and running statistics of one process holding all of it, and DDP training with
converted layers the weights of single-process training with BatchNorm.
"""
from __future__ import annotations

import copy
import re
import threading

import numpy as np
import pytest
import torch

import minidl
import minidl.distributed  # noqa: F401 - plugs the collectives into nn.SyncBatchNorm
import minidl.nn.functional as F
from helpers import assert_close, run_mpi_script, to_host
from minidl import nn
from minidl.distributed.sync_batchnorm import _AllReduceSum, sync_batch_norm
from minidl.errors import ShapeError
from test_distributed import _load_script
from test_nn import check_layer

tnn = torch.nn


# ----------------------------------------------------------------------------- one process


SHAPES_KWARGS = [
    ((6, 4), {}),
    ((5, 3, 7), {"momentum": None}),
    ((4, 3, 5, 6), {"momentum": 0.3, "eps": 1e-3}),
    ((3, 2, 3, 4, 2), {}),                                    # (N, C, D, H, W)
    ((4, 3, 3, 3), {"affine": False}),
    ((4, 3, 3, 3), {"bias": False}),
    ((4, 3, 3, 3), {"track_running_stats": False}),
]


@pytest.mark.parametrize("shape,kwargs", SHAPES_KWARGS)
@pytest.mark.parametrize("train", [True, False])
def test_without_a_group_matches_pytorch(shape, kwargs, train, rng):
    """No process group: BatchNorm's forward, gradients and running statistics, as
    PyTorch's SyncBatchNorm (a BatchNorm on the CPU without a group), two batches."""
    C = shape[1]
    md, t = nn.SyncBatchNorm(C, **kwargs), tnn.SyncBatchNorm(C, **kwargs)
    with torch.no_grad():
        if t.weight is not None:
            t.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, C)))
        if t.bias is not None:
            t.bias.copy_(torch.tensor(rng.standard_normal(C)))
        if t.running_mean is not None:
            t.running_mean.copy_(torch.tensor(rng.standard_normal(C)))
            t.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, C)))
    check_layer(md, t, [rng.standard_normal(shape) * 2 + 1], train=train)
    x2 = rng.standard_normal(shape)
    assert_close(md(minidl.tensor(x2)), t(torch.tensor(x2)), np.float64, "second output")
    for k, v in t.state_dict().items():
        assert_close(md.state_dict()[k], v, np.float64, k)


def test_without_a_group_is_batchnorm_exactly(rng):
    """Same numbers as BatchNorm2d to the last bit: same path, nothing synchronised."""
    bn, sync = nn.BatchNorm2d(3).double(), nn.SyncBatchNorm(3).double()
    for step in range(3):
        x = rng.standard_normal((4, 3, 2, 5)) + step
        g = rng.standard_normal(x.shape)
        outs = []
        for layer in (bn, sync):
            xt = minidl.tensor(x, requires_grad=True)
            y = layer(xt)
            (y * minidl.tensor(g)).sum().backward()
            outs.append([y.detach().numpy(), xt.grad.numpy(), layer.weight.grad.numpy(),
                         layer.bias.grad.numpy()] + [b.numpy() for b in layer.buffers()])
            layer.zero_grad()
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)


class OneRank:
    """A stand-in group of one rank: gathering gives the array alone, the sum is itself."""

    @staticmethod
    def all_gather(array):
        return np.array(array)[None]

    @staticmethod
    def all_reduce(array):
        return np.array(array)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (3, 2, 2, 3), (2, 2, 2, 2, 3)])
def test_sync_function_one_rank_gradcheck(shape, rng, device):
    """The synchronised Function itself (a group of one): BatchNorm's values, and its
    first and second derivatives against central differences, float64."""
    C = shape[1]
    x = minidl.tensor(rng.standard_normal(shape) * 2 + 1, requires_grad=True, device=device)
    w = minidl.tensor(rng.uniform(0.5, 1.5, C), requires_grad=True, device=device)
    b = minidl.tensor(rng.standard_normal(C), requires_grad=True, device=device)
    rm, rv = (minidl.tensor(rng.standard_normal(C), device=device) for _ in range(2))
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = sync_batch_norm(x, rm, rv, w, b, 0.2, 1e-5, OneRank)
    ref = F.batch_norm(x, rm_ref, rv_ref, w, b, True, 0.2, 1e-5)
    for got, want, what in [(y, ref, "output"), (rm, rm_ref, "running_mean"),
                            (rv, rv_ref, "running_var")]:
        assert_close(got, want, np.float64, what)

    def fn(x, w, b):
        return sync_batch_norm(x, None, None, w, b, 0.1, 1e-5, OneRank)

    assert minidl.gradcheck(fn, (x, w, b))
    assert minidl.gradgradcheck(fn, (x, w, b))


class ThreadRanks:
    """``size`` threads playing ranks: each calls ``member(rank)``'s collectives, which
    meet at a barrier (with a limit, so that a failing thread cannot hang the others)."""

    def __init__(self, size):
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def member(self, rank):
        ranks = self

        class Member:
            @staticmethod
            def all_gather(array):
                ranks.slots[rank] = np.array(array)
                ranks.barrier.wait()
                out = np.stack(ranks.slots)
                ranks.barrier.wait()               # nobody overwrites a slot still read
                return out

            @staticmethod
            def all_reduce(array):
                return Member.all_gather(array).sum(axis=0)   # the same order everywhere

        return Member

    def run(self, fn):
        """[fn(rank, group) for every rank], each in its own thread; re-raises the first
        exception of any of them."""
        results, errors = [None] * len(self.slots), []

        def target(rank):
            try:
                results[rank] = fn(rank, self.member(rank))
            except BaseException as e:  # noqa: BLE001 - handed to the test's thread
                errors.append(e)
                self.barrier.abort()           # the others stop waiting
        threads = [threading.Thread(target=target, args=(r,)) for r in range(len(self.slots))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.mark.parametrize("shape,parts", [((7, 3), [[0, 2, 4, 6], [1, 3, 5]]),
                                         ((5, 2, 3, 2), [[0, 1], [2, 3, 4]]),
                                         ((4, 2, 3), [[], [0, 1, 2, 3]])])
def test_two_thread_ranks_equal_one_process_with_the_whole_batch(shape, parts, rng):
    """Two ranks (threads) with parts of the batch: their rows of y and of the input
    gradient, their weight/bias gradients summed, the running statistics, and the
    gradient of a gradient penalty (create_graph) equal one batch norm of the whole batch."""
    C = shape[1]
    X, G = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
    W, B = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)

    def step(idx, norm):
        """One training forward on rows ``idx``, then the backward of a gradient penalty."""
        x = minidl.tensor(X[idx], requires_grad=True)
        w, b = minidl.tensor(W, requires_grad=True), minidl.tensor(B, requires_grad=True)
        rm, rv = minidl.zeros(C, dtype=minidl.float64), minidl.ones(C, dtype=minidl.float64)
        y = norm(x, rm, rv, w, b)
        (gx,) = minidl.autograd.grad((y * minidl.tensor(G[idx])).sum(), [x],
                                     create_graph=True)
        (gx * gx).sum().backward()
        return (y.detach().numpy(), gx.detach().numpy(), x.grad.numpy(), w.grad.numpy(),
                rm.numpy(), rv.numpy())

    def rank(r, group):
        return step(parts[r], lambda x, rm, rv, w, b: sync_batch_norm(
            x, rm, rv, w, b, 0.1, 1e-5, group))

    per_rank = ThreadRanks(2).run(rank)
    y, gx, gpen, gw, rm, rv = step(list(range(shape[0])), lambda x, rm, rv, w, b: (
        F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)))
    for i, (what, want) in enumerate([("y", y), ("gx", gx), ("penalty's x.grad", gpen)]):
        got = np.empty_like(want)
        for r in range(2):
            got[parts[r]] = per_rank[r][i]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=what)
    np.testing.assert_allclose(per_rank[0][3] + per_rank[1][3], gw, rtol=0, atol=1e-10,
                               err_msg="penalty's weight.grad summed over the ranks")
    for r in range(2):
        np.testing.assert_allclose(per_rank[r][4], rm, rtol=0, atol=1e-12)
        np.testing.assert_allclose(per_rank[r][5], rv, rtol=0, atol=1e-12)


def test_two_thread_ranks_first_order_backward(rng):
    """The fast backward (no create_graph): rows of the input gradient and the parameter
    gradients summed over the ranks equal the whole batch's."""
    X, G = rng.standard_normal((6, 3, 4)) - 1, rng.standard_normal((6, 3, 4))
    W, B = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    parts = [[0, 1, 2, 3, 4], [5]]

    def run(idx, norm):
        x = minidl.tensor(X[idx], requires_grad=True)
        w, b = minidl.tensor(W, requires_grad=True), minidl.tensor(B, requires_grad=True)
        (norm(x, w, b) * minidl.tensor(G[idx])).sum().backward()
        return x.grad.numpy(), w.grad.numpy(), b.grad.numpy()

    per_rank = ThreadRanks(2).run(lambda r, group: run(parts[r], lambda x, w, b: (
        sync_batch_norm(x, None, None, w, b, 0.1, 1e-5, group))))
    gx, gw, gb = run(list(range(6)), lambda x, w, b: F.batch_norm(x, None, None, w, b, True))
    np.testing.assert_allclose(np.concatenate([per_rank[0][0], per_rank[1][0]]), gx,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(per_rank[0][1] + per_rank[1][1], gw, rtol=0, atol=1e-10)
    np.testing.assert_allclose(per_rank[0][2] + per_rank[1][2], gb, rtol=0, atol=1e-10)


def test_float32_statistics_stay_accurate_far_from_zero(rng):
    """float32 data of mean 1000 and std 1 on two ranks: the merged variance keeps float32
    accuracy (E[x^2] - E[x]^2 in float32 would lose it entirely), so the output has
    mean 0 and variance 1 and the running variance matches a float64 computation."""
    X = (1000 + rng.standard_normal((64, 2))).astype(np.float32)

    def rank(r, group):
        rv = minidl.zeros(2)
        y = sync_batch_norm(minidl.tensor(X[r::2]), None, rv, None, None, 1.0, 0.0, group)
        return y.numpy(), rv.numpy()

    per_rank = ThreadRanks(2).run(rank)
    y = np.concatenate([per_rank[0][0], per_rank[1][0]])
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=0), 1, atol=1e-4)
    exact = X.astype(np.float64).var(axis=0, ddof=1)
    np.testing.assert_allclose(per_rank[0][1], exact, rtol=1e-5)


def test_recorded_all_reduce_has_all_reduced_derivatives_of_every_order():
    """s = the sum over 2 ranks of x_r, L_r = c_r * sum(s^3), the objective their sum.
    First order (create_graph): g_r = dF/dx_r = 3 s^2 (c_0 + c_1) on both ranks; second:
    the gradient of P = sum_r sum(g_r^2) is 2 * 36 s^3 (c_0 + c_1)^2 on both: each order
    needs the backward of the one before to sum over the ranks too."""
    xs = [np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, -0.5])]
    c = [2.0, -0.5]

    def rank(r, group):
        x = minidl.tensor(xs[r], requires_grad=True)
        s = _AllReduceSum.apply(x, group=group)
        (g,) = minidl.autograd.grad(c[r] * (s ** 3).sum(), [x], create_graph=True)
        (g * g).sum().backward()
        return s.detach().numpy(), g.detach().numpy(), x.grad.numpy()

    s = xs[0] + xs[1]
    for got_s, got_g, got_pen in ThreadRanks(2).run(rank):
        np.testing.assert_allclose(got_s, s, rtol=1e-14)
        np.testing.assert_allclose(got_g, 3 * s ** 2 * sum(c), rtol=1e-14)
        np.testing.assert_allclose(got_pen, 2 * 36 * s ** 3 * sum(c) ** 2, rtol=1e-14)


def test_too_few_values_over_all_ranks_raises_on_every_rank():
    """One value per channel over both ranks: both raise (neither hangs waiting)."""
    parts = [np.zeros((1, 3)), np.zeros((0, 3))]

    def rank(r, group):
        try:
            sync_batch_norm(minidl.tensor(parts[r]), None, None, None, None, 0.1, 1e-5, group)
        except ShapeError as e:
            return str(e)
        return "no error"

    for message in ThreadRanks(2).run(rank):
        assert message.startswith("sync_batch_norm: expected more than 1 value per channel "
                                  "over all ranks when training, got 1")


# ----------------------------------------------------------------------------- conversion


class Net(nn.Module):
    """Batch norms at several depths, one of each kind, and an InstanceNorm (not one)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False)),
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, bias=False),
                          nn.InstanceNorm2d(4, affine=True))])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
                                  nn.BatchNorm1d(5, momentum=None, eps=1e-3,
                                                 track_running_stats=False))

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_convert_sync_batchnorm_replaces_every_batchnorm_keeping_its_state(rng):
    model = Net().double()
    model.stem[1].weight.requires_grad_(False)
    model.blocks[0][1].eval()
    for _ in range(2):                                     # running statistics move
        model(minidl.tensor(rng.standard_normal((4, 2, 3, 3))))
    before = copy.deepcopy(model)
    old = {name: m for name, m in model.named_modules()}
    old_params, old_buffers = dict(model.named_parameters()), dict(model.named_buffers())

    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    assert converted is model                              # converted in place, returned
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    assert kinds == {name: type(m).__name__.replace("BatchNorm1d", "SyncBatchNorm")
                     .replace("BatchNorm2d", "SyncBatchNorm") for name, m in old.items()}
    assert kinds["blocks.1.2"] == "InstanceNorm2d" and model.blocks[1][2] is old["blocks.1.2"]
    for name, m in model.named_modules():
        assert m.training == old[name].training, name
        if isinstance(m, nn.SyncBatchNorm):
            o = old[name]
            assert (m.eps, m.momentum, m.affine, m.track_running_stats) == \
                   (o.eps, o.momentum, o.affine, o.track_running_stats), name
    # the same Parameter and buffer objects: an optimiser made before still holds them
    assert all(p is old_params[k] for k, p in model.named_parameters())
    assert list(dict(model.named_parameters())) == list(old_params)
    assert all(b is old_buffers[k] for k, b in model.named_buffers())
    assert not model.stem[1].weight.requires_grad and model.stem[1].bias.requires_grad
    assert model.blocks[1][1].bias is None and model.blocks[0][1].weight is None
    assert list(model.state_dict()) == list(before.state_dict())
    # no process group: the converted model computes what the original did
    x = rng.standard_normal((4, 2, 3, 3))
    np.testing.assert_array_equal(model(minidl.tensor(x)).numpy(),
                                  before(minidl.tensor(x)).numpy())
    for k, v in before.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_convert_a_batchnorm_itself_returns_a_new_layer_and_leaves_others():
    bn = nn.BatchNorm1d(3).double().eval()
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(sync) is nn.SyncBatchNorm and sync is not bn and not sync.training
    assert sync.weight is bn.weight and sync.running_var is bn.running_var
    assert sync.weight.dtype == minidl.float64
    relu = nn.ReLU()
    assert nn.SyncBatchNorm.convert_sync_batchnorm(relu) is relu
    again = nn.SyncBatchNorm.convert_sync_batchnorm(sync)   # a new one, as in PyTorch
    assert type(again) is nn.SyncBatchNorm and again.weight is sync.weight


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(4,), (2, 3, 2, 2, 2, 2)])
def test_wrong_rank_names_the_layer_and_the_accepted_shapes(shape):
    x = minidl.zeros(*shape)
    with pytest.raises(ShapeError, match=(
            r"^SyncBatchNorm\(3, .*\): expected 2D or 3D or 4D or 5D input \(N, 3\), "
            r"\(N, 3, L\), \(N, 3, H, W\) or \(N, 3, D, H, W\), got " + re.escape(str(x.shape)))):
        nn.SyncBatchNorm(3)(x)


def test_wrong_channels_and_dtype_and_group_are_named():
    layer = nn.SyncBatchNorm(3)
    with pytest.raises(ShapeError, match=r"^SyncBatchNorm\(3, .*\): expected input .* with "
                                         r"3 channels, got \(2, 4, 5\)"):
        layer(minidl.zeros(2, 4, 5))
    with pytest.raises(TypeError, match=r"^SyncBatchNorm\(3, .*\): input dtype float64 does "
                                        r"not match the layer's parameter dtype float32"):
        layer(minidl.zeros(2, 3, dtype=minidl.float64))
    with pytest.raises(ValueError, match=r"SyncBatchNorm: expected process_group=None .*, "
                                         r"got 'group'"):
        nn.SyncBatchNorm(3, process_group="group")


def test_one_value_per_channel_without_a_group_is_an_error():
    with pytest.raises(ShapeError, match=r"^SyncBatchNorm\(3, .*\): expected more than 1 "
                                         r"value per channel when training"):
        nn.SyncBatchNorm(3)(minidl.zeros(1, 3))
    nn.SyncBatchNorm(3).eval()(minidl.zeros(1, 3))       # evaluation: running statistics


# ----------------------------------------------------------------------------- mpiexec


def _torch_reference(script, case, n):
    """PyTorch's SyncBatchNorm (a BatchNorm: no group here) on the whole batches, the
    same steps as the script's ``run_case`` on ``n`` ranks."""
    shape, _, kwargs = script.CASES[case]
    data = script.make_data(case)
    t = tnn.SyncBatchNorm(shape[1], **kwargs).double()
    with torch.no_grad():
        if t.weight is not None:
            t.weight.copy_(torch.tensor(data["weight"]))
        if t.bias is not None:
            t.bias.copy_(torch.tensor(data["bias"]))
    out = {}
    x = torch.tensor(data["x1"], requires_grad=True)
    y = t(x)
    (y * torch.tensor(data["G"])).sum().backward()
    out["y1"], out["gx1"] = y.detach().numpy(), x.grad.numpy()
    for name in ("weight", "bias"):
        p = getattr(t, name)
        if p is not None:
            out[f"g{name}1"] = p.grad.numpy().copy()
            p.grad = None
    x = torch.tensor(data["x2"], requires_grad=True)
    y = t(x)
    (gx,) = torch.autograd.grad((y * torch.tensor(data["G2"])).sum(), [x], create_graph=True)
    (gx * gx).sum().backward()
    out["y2"], out["gx2"], out["gpen"] = y.detach().numpy(), gx.detach().numpy(), x.grad.numpy()
    if t.weight is not None:
        out["gweight_pen"] = t.weight.grad.numpy()
    for k, v in t.state_dict().items():
        out[f"state.{k}"] = to_host(v)
    t.eval()
    out["y_eval"] = t(torch.tensor(data["x3"])).detach().numpy()
    if t.running_mean is None:   # evaluation communicates nothing: each rank normalises
        for r in range(n):       # with its own batch's statistics, as in PyTorch
            rows = script.shard(case, r, n)
            out["y_eval"][rows] = t(torch.tensor(data["x3"][rows])).detach().numpy()
    return out


@pytest.mark.parametrize("n", [2, 1])
def test_ranks_with_parts_of_the_batch_equal_one_process_with_all_of_it(tmp_path, n):
    """mpiexec -n 2: every row, gradient, summed parameter gradient and running statistic
    of SyncBatchNorm equals PyTorch's batch norm of the whole batch in one process
    (float64, 1e-10), including a rank with one row or none, and a second derivative.
    mpiexec -n 1: a group of one rank, where the layer is BatchNorm."""
    run_mpi_script("syncbn_layer.py", tmp_path, n=n)
    script = _load_script("syncbn_layer")
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(n)]
    for case in script.CASES:
        want = _torch_reference(script, case, n)
        assert {k.split("/", 1)[1] for k in ranks[0] if k.startswith(case + "/")} == set(want)
        for key, expected in want.items():
            if key.startswith(("y", "gx", "gpen")):            # rows, spread over the ranks
                got = np.empty_like(expected)
                for r in range(n):
                    got[script.shard(case, r, n)] = ranks[r][f"{case}/{key}"]
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10,
                                           err_msg=f"{case}: {key}")
            else:   # summed over the ranks, or the same on every rank
                for r in range(n):
                    np.testing.assert_allclose(ranks[r][f"{case}/{key}"], expected, rtol=0,
                                               atol=1e-10, err_msg=f"{case}: {key} rank {r}")
    if n == 2:
        for r in range(2):
            assert str(ranks[r]["too_few_values"]).startswith(
                "SyncBatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                "track_running_stats=True): expected more than 1 value per channel over all "
                "ranks when training, got 1")


def test_ddp_with_sync_batchnorm_equals_one_process_with_the_whole_batch(tmp_path):
    """2 ranks x batch 20, converted to SyncBatchNorm, DDP, SGD with momentum ==
    1 process x batch 40 with BatchNorm: weights and running statistics, on both ranks."""
    run_mpi_script("syncbn_ddp.py", tmp_path)
    script = _load_script("syncbn_ddp")
    single = script.train_single()
    start = script.make_model().state_dict()
    for r in range(2):
        with np.load(tmp_path / f"rank{r}.npz") as ddp:
            assert sorted(ddp.files) == sorted(single)
            for k, w in single.items():
                np.testing.assert_allclose(ddp[k], w, rtol=0, atol=1e-10, err_msg=f"{k} {r}")
    for k in single:
        if "running" in k or "weight" in k:
            assert np.abs(single[k] - start[k].numpy()).max() > 1e-3, k  # training moved it
