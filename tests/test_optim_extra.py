"""RMSprop, Adagrad, Adadelta, NAdam and RAdam against torch.optim: the same float64
parameters receive the same gradients for a few hundred steps, and every parameter (and
state buffer) must agree to 1e-12 after every step; a state_dict saved mid-way (through
minidl.save/minidl.load) continues identically. The comparison machinery (make_params,
run_both) is test_optim's."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import minidl
import minidl.optim as optim
from helpers import to_host
from minidl import nn
from test_optim import SHAPES, TOL, _case_id, make_params, run_both

STEPS = 300


@pytest.fixture
def torch_float64_scalars():
    """PyTorch keeps NAdam's ``mu_product`` (a running product of momentum factors) in a
    tensor of its *default* dtype, float32 unless changed; minidl keeps it a Python float.
    With float64 as torch's default both are exact products and agree to the last bit."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _grid(**options):
    """Every combination of the given option values, as kwargs dicts."""
    names = list(options)
    return [dict(zip(names, values)) for values in itertools.product(*options.values())]


# name -> (hyper-parameters of the run, option combinations, state buffers to compare)
CASES = {
    "RMSprop": (dict(lr=0.01, alpha=0.9, eps=1e-6),
                _grid(momentum=[0.0, 0.8], centered=[False, True], weight_decay=[0.0, 0.05],
                      maximize=[False, True])[::3] + [dict()],
                ("square_avg", "momentum_buffer", "grad_avg")),
    "Adagrad": (dict(lr=0.1),
                _grid(lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.05],
                      initial_accumulator_value=[0.0, 0.5], maximize=[False, True])[::3]
                + [dict()],
                ("sum",)),
    "Adadelta": (dict(rho=0.8, eps=1e-5),
                 _grid(lr=[1.0, 0.3], weight_decay=[0.0, 0.05], maximize=[False, True])
                 + [dict()],
                 ("square_avg", "acc_delta")),
    "NAdam": (dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
              _grid(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
                    momentum_decay=[4e-3, 0.1], maximize=[False, True])[::2] + [dict()],
              ("exp_avg", "exp_avg_sq")),
    "RAdam": (dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
              _grid(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
                    maximize=[False, True]) + [dict(betas=(0.9, 0.999))],
              ("exp_avg", "exp_avg_sq")),
}
# Settings under which the small model's training is not chaotic: there torch's own run
# from weights perturbed by 1e-15 stays within 1e-14 of the unperturbed one for 200 steps.
# (At larger rates RMSprop, NAdam and Adadelta reach an oscillating regime in which torch
# amplifies a 1e-15 perturbation of itself to 1e-6 or more, and so any 1-ulp difference
# in the forward pass; the long optimiser-only parity is test_matches_torch_every_step.)
MODEL_KWARGS = {"RMSprop": dict(lr=0.001), "Adagrad": dict(lr=0.1),
                "Adadelta": dict(lr=0.2, rho=0.8), "NAdam": dict(lr=0.003, betas=(0.8, 0.99)),
                "RAdam": dict(lr=0.01, betas=(0.8, 0.99))}
PARAMS = [(name, kwargs) for name, (_, combos, _) in CASES.items() for kwargs in combos]


def _pair(name, md_params, t_params, **kwargs):
    return getattr(optim, name)(md_params, **kwargs), getattr(torch.optim, name)(t_params,
                                                                               **kwargs)


def _assert_same_state(md_opt, t_opt, md_params, t_params, keys):
    for m, t in zip(md_params, t_params):
        md_state, t_state = md_opt.state[m], t_opt.state[t]
        assert set(md_state) == set(t_state)
        assert md_state["step"] == int(t_state["step"])
        for key in keys:
            if key in t_state:
                np.testing.assert_allclose(to_host(md_state[key]), to_host(t_state[key]),
                                           **TOL, err_msg=key)
        if "mu_product" in t_state:
            assert md_state["mu_product"] == pytest.approx(float(t_state["mu_product"]),
                                                           rel=1e-14)


@pytest.mark.parametrize("name,kwargs", PARAMS,
                         ids=[f"{n}-{_case_id(k) or 'defaults'}" for n, k in PARAMS])
def test_matches_torch_every_step(name, kwargs, rng, device, torch_float64_scalars):
    base, _, keys = CASES[name]
    md_p, t_p = make_params(rng, device=device)
    md_opt, t_opt = _pair(name, md_p, t_p, **{**base, **kwargs})
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=STEPS)
    _assert_same_state(md_opt, t_opt, md_p, t_p, keys)


@pytest.mark.parametrize("name", list(CASES))
def test_defaults_match_torch(name, rng):
    md_p, t_p = make_params(rng)
    md_opt, t_opt = _pair(name, md_p, t_p)
    for key, value in md_opt.defaults.items():
        assert t_opt.defaults[key] == value, (name, key)
    # every torch option but its implementation switches exists in minidl
    switches = {"foreach", "capturable", "differentiable", "fused"}
    assert set(t_opt.defaults) - switches == set(md_opt.defaults)


@pytest.mark.parametrize("name", list(CASES))
def test_param_groups_and_missing_grads(name, rng, device, torch_float64_scalars):
    """Per-group options, and parameters that miss their gradient on some steps (their
    state and step count stand still)."""
    base, _, keys = CASES[name]
    md_p, t_p = make_params(rng, SHAPES + [(4,)], device=device)

    def groups(ps):
        return [{"params": ps[:2]},
                {"params": [ps[2]], "lr": 0.05, "weight_decay": 0.02},
                {"params": ps[3], "eps": 1e-3}]
    md_opt, t_opt = _pair(name, groups(md_p), groups(t_p), **base)
    assert md_opt.param_groups[1]["lr"] == 0.05
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=60, skip=lambda step, i: (step + i) % 4 == 0)
    _assert_same_state(md_opt, t_opt, md_p, t_p, keys)


@pytest.mark.parametrize("name", list(CASES))
def test_small_model_training_matches_torch(name, rng, torch_float64_scalars):
    """A two-layer network on a fixed batch: the gradients come from the parameters
    themselves, so any difference in an update would feed back into the next gradient."""
    x, y = rng.standard_normal((16, 5)), rng.standard_normal((16, 2))
    w1, b1 = 0.5 * rng.standard_normal((8, 5)), 0.1 * rng.standard_normal(8)
    w2, b2 = 0.5 * rng.standard_normal((2, 8)), 0.1 * rng.standard_normal(2)
    md_net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    t_net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 2)).double()
    for net, tensor in ((md_net, minidl.tensor), (t_net, torch.tensor)):
        with (minidl.no_grad() if net is md_net else torch.no_grad()):
            for layer, w, b in ((net[0], w1, b1), (net[2], w2, b2)):
                layer.weight.copy_(tensor(w))
                layer.bias.copy_(tensor(b))
    md_opt, t_opt = _pair(name, list(md_net.parameters()), list(t_net.parameters()),
                         **MODEL_KWARGS[name])
    md_x, md_y, t_x, t_y = minidl.tensor(x), minidl.tensor(y), torch.tensor(x), torch.tensor(y)
    losses = []
    for step in range(200):
        md_opt.zero_grad()
        t_opt.zero_grad()
        md_loss = ((md_net(md_x) - md_y) ** 2).mean()
        t_loss = ((t_net(t_x) - t_y) ** 2).mean()
        md_loss.backward()
        t_loss.backward()
        md_opt.step()
        t_opt.step()
        losses.append(md_loss.item())
        for m, t in zip(md_net.parameters(), t_net.parameters()):
            np.testing.assert_allclose(to_host(m), to_host(t), rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} after step {step + 1}")
    assert losses[-1] < 0.5 * losses[0]  # it trained


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_save_load_resume(name, rng, tmp_path, torch_float64_scalars):
    """Stop mid-way, save the optimiser's state_dict and the parameters with minidl.save,
    load them into a fresh optimiser (built with other options) and continue: every step
    equals torch's uninterrupted run."""
    base, combos, keys = CASES[name]
    kwargs = {**base, **combos[-2]}
    md_p, t_p = make_params(rng)
    md_opt, t_opt = _pair(name, md_p, t_p, **kwargs)
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=100)
    sd = md_opt.state_dict()
    t_sd = t_opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2] and sd["param_groups"][0]["params"] == [0, 1, 2]
    assert set(sd["state"][0]) == set(t_sd["state"][0])
    assert set(sd["param_groups"][0]) <= set(t_sd["param_groups"][0])
    minidl.save({"optimizer": sd, "params": [p.detach() for p in md_p]}, tmp_path / "o.ckpt")
    del md_opt, sd
    ckpt = minidl.load(tmp_path / "o.ckpt")
    new_p = [nn.Parameter(t) for t in ckpt["params"]]
    new_opt = getattr(optim, name)(new_p, lr=123.0)
    new_opt.load_state_dict(ckpt["optimizer"])
    assert new_opt.param_groups[0]["lr"] == t_opt.param_groups[0]["lr"] != 123.0
    assert isinstance(new_opt.state[new_p[0]]["step"], int)
    run_both(new_opt, t_opt, new_p, t_p, rng, steps=100)
    _assert_same_state(new_opt, t_opt, new_p, t_p, keys)


@pytest.mark.parametrize("name", list(CASES))
def test_in_place_updates_bump_versions_and_keep_buffers(name, rng):
    """Parameters are updated in place (the same array, the version counter moves) and the
    state buffers are the same Tensors from step to step."""
    p = nn.Parameter(minidl.tensor(rng.standard_normal((3, 2))))
    opt = getattr(optim, name)([p], **CASES[name][0])
    array = p.data
    p.grad = minidl.tensor(rng.standard_normal((3, 2)))
    before = p._version
    opt.step()
    buffers = {k: v for k, v in opt.state[p].items() if isinstance(v, minidl.Tensor)}
    p.grad = minidl.tensor(rng.standard_normal((3, 2)))
    opt.step()
    assert p.data is array and p._version > before
    assert all(opt.state[p][k] is v for k, v in buffers.items()) and buffers


def test_adagrad_state_exists_before_the_first_step(rng):
    """As PyTorch's: ``sum`` is created (filled with initial_accumulator_value) at
    construction; a group added later gets it on its first step, from its own options."""
    md_p, t_p = make_params(rng)
    md_opt = optim.Adagrad(md_p[:2], initial_accumulator_value=0.25)
    t_opt = torch.optim.Adagrad(t_p[:2], initial_accumulator_value=0.25)
    sd, t_sd = md_opt.state_dict(), t_opt.state_dict()
    assert sorted(sd["state"]) == sorted(t_sd["state"]) == [0, 1]
    np.testing.assert_array_equal(to_host(sd["state"][1]["sum"]), 0.25)
    assert sd["state"][0]["step"] == 0
    md_opt.add_param_group({"params": md_p[2:]})
    t_opt.add_param_group({"params": t_p[2:]})
    assert md_p[2] not in md_opt.state
    run_both(md_opt, t_opt, md_p, t_p, rng, steps=20)


def test_errors_name_the_option():
    p = nn.Parameter(minidl.ones(2))
    cases = [(optim.RMSprop, dict(alpha=-0.1), "Invalid alpha value: -0.1"),
             (optim.RMSprop, dict(momentum=-1), "Invalid momentum value"),
             (optim.RMSprop, dict(lr=-1), "Invalid learning rate: -1"),
             (optim.Adagrad, dict(lr_decay=-1), "Invalid lr_decay value"),
             (optim.Adagrad, dict(initial_accumulator_value=-1),
              "Invalid initial_accumulator_value value"),
             (optim.Adagrad, dict(eps=-1), "Invalid epsilon value"),
             (optim.Adadelta, dict(rho=1.5), "Invalid rho value: 1.5"),
             (optim.Adadelta, dict(weight_decay=-1), "Invalid weight_decay value"),
             (optim.NAdam, dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
             (optim.NAdam, dict(momentum_decay=-1), "Invalid momentum_decay value"),
             (optim.RAdam, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1")]
    for cls, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            cls([p], **kwargs)
        # torch refuses the same arguments
        with pytest.raises(ValueError):
            getattr(torch.optim, cls.__name__)([torch.nn.Parameter(torch.ones(2))], **kwargs)
    p.grad = minidl.ones(3)
    with pytest.raises(RuntimeError, match="gradient of shape"):
        optim.RMSprop([p]).step()


def test_maximize_is_keyword_only():
    """PyTorch places implementation switches (foreach, capturable) before ``maximize`` in
    some of these signatures; minidl takes it by keyword only so that no positional call
    written for torch binds it to the wrong option."""
    p = nn.Parameter(minidl.ones(2))
    for cls in (optim.RMSprop, optim.Adagrad, optim.Adadelta, optim.NAdam, optim.RAdam):
        assert cls([p], maximize=True).defaults["maximize"] is True
    with pytest.raises(TypeError):
        optim.RMSprop([p], 0.01, 0.99, 1e-8, 0, 0, False, True)
