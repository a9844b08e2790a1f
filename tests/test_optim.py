"""minidl.optim against torch.optim: identical parameters receive identical gradients for N
steps, and every parameter (and state buffer) must agree to 1e-12 in float64. Schedulers'
learning-rate sequences must equal PyTorch's for 30 epochs."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

import minidl
import minidl.optim as optim
from helpers import to_host, torch_device
from minidl import nn
from minidl.optim import lr_scheduler

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 12


def _case_id(kwargs):
    return "-".join(f"{a}={b}" for a, b in kwargs.items())
TOL = dict(rtol=1e-12, atol=1e-12)


def make_params(rng, shapes=SHAPES, device="cpu"):
    """The same float64 values as minidl Parameters on ``device`` and torch Parameters (on
    CUDA with them when this PyTorch has CUDA)."""
    arrays = [rng.standard_normal(s) for s in shapes]
    md = [nn.Parameter(minidl.tensor(a, device=device)) for a in arrays]
    t = [torch.nn.Parameter(torch.tensor(a, device=torch_device(device))) for a in arrays]
    return md, t


def run_both(md_opt, t_opt, md_params, t_params, rng, steps=STEPS, skip=None):
    """Feed the same random gradients to both optimisers (each on its parameter's device);
    ``skip(step, i)`` leaves a parameter without a gradient on that step. Checks that
    gradients are never modified."""
    for step in range(steps):
        for i, (m, t) in enumerate(zip(md_params, t_params)):
            if skip is not None and skip(step, i):
                m.grad, t.grad = None, None
                continue
            g = rng.standard_normal(m.shape)
            m.grad = minidl.tensor(g, device=m.device)
            t.grad = torch.tensor(g, device=t.device)
        grads_before = [None if m.grad is None else to_host(m.grad).copy() for m in md_params]
        md_opt.step()
        t_opt.step()
        for i, (m, t) in enumerate(zip(md_params, t_params)):
            np.testing.assert_allclose(to_host(m), to_host(t), **TOL,
                                       err_msg=f"param {i} after step {step + 1}")
            if grads_before[i] is not None:  # the gradient array was not touched
                np.testing.assert_array_equal(to_host(m.grad), grads_before[i])


SGD_CASES = [dict(momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
             for m, d, wd, n, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [0.0, 0.01],
                                                      [False, True], [False, True])
             if not (n and (m == 0 or d != 0))]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=_case_id)
def test_sgd_matches_torch(kwargs, rng, device):
    md_p, t_p = make_params(rng, device=device)
    run_both(optim.SGD(md_p, lr=0.05, **kwargs), torch.optim.SGD(t_p, lr=0.05, **kwargs),
             md_p, t_p, rng)


def test_sgd_default_lr_and_momentum_buffer(rng, device):
    md_p, t_p = make_params(rng, device=device)
    md_opt, t_opt = optim.SGD(md_p, momentum=0.5), torch.optim.SGD(t_p, momentum=0.5)
    assert md_opt.defaults["lr"] == t_opt.defaults["lr"] == 1e-3
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=3)
    for m, t in zip(md_p, t_p):
        np.testing.assert_allclose(to_host(md_opt.state[m]["momentum_buffer"]),
                                   to_host(t_opt.state[t]["momentum_buffer"]), **TOL)


ADAM_CASES = [dict(weight_decay=wd, amsgrad=a, maximize=mx)
              for wd, a, mx in itertools.product([0.0, 0.1], [False, True], [False, True])]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=_case_id)
def test_adam_matches_torch(name, kwargs, rng, device):
    md_p, t_p = make_params(rng, device=device)
    md_opt = getattr(optim, name)(md_p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, **kwargs)
    t_opt = getattr(torch.optim, name)(t_p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, **kwargs)
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=20)
    for m, t in zip(md_p, t_p):
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if kwargs["amsgrad"] else ()):
            np.testing.assert_allclose(to_host(md_opt.state[m][key]),
                                       to_host(t_opt.state[t][key]), **TOL)
        assert md_opt.state[m]["step"] == int(t_opt.state[t]["step"])


def test_adam_defaults_match_torch(rng, device):
    md_p, t_p = make_params(rng, device=device)
    for name in ("Adam", "AdamW"):
        md, t = getattr(optim, name)(md_p), getattr(torch.optim, name)(t_p)
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert md.defaults[key] == t.defaults[key], (name, key)
    run_both(optim.AdamW(md_p), torch.optim.AdamW(t_p), md_p, t_p, rng, steps=5)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_param_groups_and_missing_grads(name, rng, device):
    md_p, t_p = make_params(rng, SHAPES + [(4,)], device=device)
    extra = dict(momentum=0.9, nesterov=True) if name == "SGD" else dict(betas=(0.5, 0.9))

    def groups(ps):
        return [{"params": ps[:2]},
                {"params": [ps[2]], "lr": 0.2, "weight_decay": 0.05},
                {"params": ps[3], "lr": 0.001}]  # a single tensor is accepted as a group
    md_opt = getattr(optim, name)(groups(md_p), lr=0.03, **extra)
    t_opt = getattr(torch.optim, name)(groups(t_p), lr=0.03, **extra)
    assert [g["lr"] for g in md_opt.param_groups] == [0.03, 0.2, 0.001]
    run_both(md_opt, t_opt, md_p, t_p, rng, skip=lambda step, i: (step + i) % 3 == 0)


def test_add_param_group(rng, device):
    md_p, t_p = make_params(rng, device=device)
    md_opt = optim.SGD(md_p[:2], lr=0.1, momentum=0.9)
    t_opt = torch.optim.SGD(t_p[:2], lr=0.1, momentum=0.9)
    md_opt.add_param_group({"params": md_p[2:], "lr": 0.01})
    t_opt.add_param_group({"params": t_p[2:], "lr": 0.01})
    assert md_opt.param_groups[1]["momentum"] == 0.9
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=4)
    with pytest.raises(ValueError, match="more than one parameter group"):
        md_opt.add_param_group({"params": [md_p[0]]})


def test_optimizer_errors():
    p = nn.Parameter(minidl.ones(2))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid beta"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD([{"params": {p}}], lr=0.1)
    with pytest.raises(ValueError, match="duplicate"):
        optim.SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)


def test_zero_grad_and_closure(rng):
    lin = nn.Linear(3, 2)
    opt = optim.SGD(lin.parameters(), lr=0.1)
    lin(minidl.randn(4, 3)).sum().backward()
    old = lin.weight.grad
    old_values = old.numpy().copy()
    opt.zero_grad(set_to_none=False)
    assert np.all(lin.weight.grad.numpy() == 0)
    np.testing.assert_array_equal(old.numpy(), old_values)  # replaced, not zeroed in place
    opt.zero_grad()
    assert lin.weight.grad is None

    def closure():
        opt.zero_grad()
        loss = (lin(minidl.ones(2, 3)) ** 2).sum()
        loss.backward()
        return loss
    with minidl.no_grad():
        loss = opt.step(closure)  # the closure runs with grad enabled
    assert loss.item() > 0 and lin.weight.grad is not None


def test_optimizer_repr():
    opt = optim.SGD([nn.Parameter(minidl.ones(1))], lr=0.1, momentum=0.9)
    assert repr(opt).startswith("SGD (\nParameter Group 0\n    dampening: 0\n    lr: 0.1\n")


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("Adam", dict(lr=0.01, amsgrad=True))])
def test_optimizer_state_dict_resume(name, kwargs, rng, tmp_path):
    """Stopping, saving, loading into a fresh optimiser and continuing equals not stopping."""
    from minidl.serialization import load, save
    md_p, t_p = make_params(rng)
    md_opt = getattr(optim, name)(md_p, **kwargs)
    t_opt = getattr(torch.optim, name)(t_p, **kwargs)
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=4)
    sd = md_opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2] and sd["param_groups"][0]["params"] == [0, 1, 2]
    t_sd = t_opt.state_dict()
    assert sorted(sd["state"][0]) == sorted(t_sd["state"][0])
    assert set(sd["param_groups"][0]) <= set(t_sd["param_groups"][0])
    save({"optimizer": sd, "params": [p.detach() for p in md_p]}, tmp_path / "opt.ckpt")
    ckpt = load(tmp_path / "opt.ckpt")
    new_p = [nn.Parameter(t) for t in ckpt["params"]]
    new_opt = getattr(optim, name)(new_p, lr=123.0)
    new_opt.load_state_dict(ckpt["optimizer"])
    assert new_opt.param_groups[0]["lr"] == kwargs["lr"]
    run_both(new_opt, t_opt, new_p, t_p, rng, steps=4)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        new_opt.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="doesn't match the size"):
        new_opt.load_state_dict({"state": {}, "param_groups": [{"params": [0], "lr": 1}]})


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_optimizer_after_module_to_double(name, rng):
    """Parameters cast in place by Module.to keep working with an existing optimiser, and
    its state buffers follow them."""
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9) if name == "SGD" else \
        optim.Adam(net.parameters(), lr=0.01, amsgrad=True)
    (net(minidl.randn(8, 4)) ** 2).mean().backward()
    opt.step()  # state buffers are float32 now
    net.double()
    x = minidl.tensor(rng.standard_normal((8, 4)))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (net(x) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.dtype == np.float64 for p in net.parameters())
    for state in opt.state.values():
        assert all(v.dtype == np.float64 for v in state.values() if isinstance(v, minidl.Tensor))


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True,
                                                      weight_decay=0.01)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("AdamW", dict(lr=0.01))])
def test_optimizer_on_device(name, kwargs, device, rng):
    """The same updates on the device as on the CPU (float64)."""
    cpu_p, _ = make_params(rng)
    dev_p = [nn.Parameter(minidl.tensor(p.numpy()).to(device)) for p in cpu_p]
    cpu_opt = getattr(optim, name)(cpu_p, **kwargs)
    dev_opt = getattr(optim, name)(dev_p, **kwargs)
    for _ in range(5):
        for c, d in zip(cpu_p, dev_p):
            g = rng.standard_normal(c.shape)
            c.grad = minidl.tensor(g)
            d.grad = minidl.tensor(g).to(device)
        cpu_opt.step()
        dev_opt.step()
    for c, d in zip(cpu_p, dev_p):
        assert d.device == device
        np.testing.assert_allclose(d.cpu().numpy(), c.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- schedulers


def _opt_pair():
    lrs = (0.1, 0.03)
    md = optim.SGD([{"params": [nn.Parameter(minidl.ones(1))], "lr": lr} for lr in lrs],
                   lr=1.0, momentum=0.9)
    t = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr}
                         for lr in lrs], lr=1.0, momentum=0.9)
    return md, t


SCHEDULERS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("MultiStepLR", dict(milestones=[5, 12, 12, 20], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=30)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e) ** 0.5)),
]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_scheduler_sequences_match_torch(name, kwargs):
    md_opt, t_opt = _opt_pair()
    md_s = getattr(lr_scheduler, name)(md_opt, **kwargs)
    t_s = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
    md_seq, t_seq = [md_s.get_last_lr()], [t_s.get_last_lr()]
    for _ in range(30):
        md_opt.step()
        t_opt.step()
        md_s.step()
        t_s.step()
        md_seq.append(md_s.get_last_lr())
        t_seq.append(t_s.get_last_lr())
    np.testing.assert_allclose(np.array(md_seq), np.array(t_seq), rtol=1e-12, atol=1e-15)
    assert [g["lr"] for g in md_opt.param_groups] == md_seq[-1]
    assert [g["initial_lr"] for g in md_opt.param_groups] == [0.1, 0.03]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS[:-1], ids=[s[0] for s in SCHEDULERS[:-1]])
def test_scheduler_closed_form_matches_torch(name, kwargs):
    md_opt, t_opt = _opt_pair()
    md_s = getattr(lr_scheduler, name)(md_opt, **kwargs)
    t_s = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in (3, 11, 25):
            md_s.step(epoch)
            t_s.step(epoch)
            np.testing.assert_allclose(md_s.get_last_lr(), t_s.get_last_lr(), rtol=1e-12)


def test_scheduler_state_dict_resume():
    md_opt, _ = _opt_pair()
    s = lr_scheduler.CosineAnnealingLR(md_opt, T_max=10)
    for _ in range(4):
        md_opt.step()
        s.step()
    sd = s.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == 4
    opt_sd = md_opt.state_dict()
    ref = [s.get_last_lr()]
    for _ in range(3):
        s.step()
        ref.append(s.get_last_lr())
    opt2, _ = _opt_pair()
    opt2.load_state_dict(opt_sd)
    s2 = lr_scheduler.CosineAnnealingLR(opt2, T_max=10, last_epoch=3)
    s2.load_state_dict(sd)
    got = [s2.get_last_lr()]
    for _ in range(3):
        s2.step()
        got.append(s2.get_last_lr())
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    with pytest.raises(TypeError, match="not an Optimizer"):
        lr_scheduler.StepLR(object(), 3)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(optim.SGD([nn.Parameter(minidl.ones(1))]), 3, last_epoch=5)


def test_cosine_reaches_eta_min():
    md_opt, _ = _opt_pair()
    s = lr_scheduler.CosineAnnealingLR(md_opt, T_max=8, eta_min=0.002)
    for _ in range(8):
        s.step()
    assert math.isclose(s.get_last_lr()[0], 0.002, rel_tol=1e-9)
