"""LinearLR, PolynomialLR, CosineAnnealingWarmRestarts, OneCycleLR, SequentialLR and
ReduceLROnPlateau against torch.optim.lr_scheduler: the learning rates (and OneCycleLR's
momentum or beta1) of every parameter group must equal PyTorch's after every one of a few
hundred steps, also when the run is stopped, saved with minidl.save, loaded into fresh
objects and continued."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import minidl
import minidl.optim as optim
from minidl import nn
from minidl.optim import lr_scheduler

STEPS = 300
LRS = (0.1, 0.03)          # two parameter groups with their own lr
TOL = dict(rtol=1e-12, atol=1e-15)


def _opt_pair(name="SGD", **kwargs):
    """The same optimiser over two one-parameter groups, in minidl and in torch."""
    kwargs = {"SGD": dict(momentum=0.9), "Adam": {}, "NAdam": {}}.get(name, {}) | kwargs
    md = getattr(optim, name)([{"params": [nn.Parameter(minidl.ones(1))], "lr": lr}
                               for lr in LRS], **kwargs)
    t = getattr(torch.optim, name)([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr}
                                    for lr in LRS], **kwargs)
    return md, t


def _momenta(opt):
    """Each group's momentum: SGD's ``momentum`` or an Adam-like optimiser's beta1."""
    return [g["betas"][0] if "betas" in g else g.get("momentum", 0.0) for g in opt.param_groups]


# Each case builds its scheduler with the same code for both libraries: L is minidl's or
# torch's lr_scheduler module.
CASES = {
    "LinearLR-defaults": ("SGD", lambda L, o: L.LinearLR(o)),
    "LinearLR-decay": ("SGD", lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                                     total_iters=200)),
    "LinearLR-warmup": ("SGD", lambda L, o: L.LinearLR(o, start_factor=0.01, total_iters=37)),
    "PolynomialLR-defaults": ("SGD", lambda L, o: L.PolynomialLR(o)),
    "PolynomialLR-power2": ("SGD", lambda L, o: L.PolynomialLR(o, total_iters=250, power=2.0)),
    "PolynomialLR-sqrt": ("SGD", lambda L, o: L.PolynomialLR(o, total_iters=300, power=0.5)),
    "CosineAnnealingWarmRestarts-T10": (
        "SGD", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10)),
    "CosineAnnealingWarmRestarts-mult2": (
        "SGD", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=2, eta_min=1e-3)),
    "OneCycleLR-cos-SGD": ("SGD", lambda L, o: L.OneCycleLR(o, max_lr=1.0, total_steps=STEPS)),
    "OneCycleLR-linear-Adam": ("Adam", lambda L, o: L.OneCycleLR(
        o, max_lr=[0.5, 0.2], epochs=10, steps_per_epoch=30, anneal_strategy="linear",
        pct_start=0.25, base_momentum=0.8, max_momentum=[0.9, 0.97])),
    "OneCycleLR-three-phase-NAdam": ("NAdam", lambda L, o: L.OneCycleLR(
        o, max_lr=0.3, total_steps=STEPS, three_phase=True, div_factor=10.0,
        final_div_factor=100.0)),
    "OneCycleLR-no-momentum": ("SGD", lambda L, o: L.OneCycleLR(
        o, max_lr=0.4, total_steps=STEPS + 20, cycle_momentum=False, pct_start=0.4)),
    "SequentialLR-warmup-cosine": ("SGD", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=20),
            L.CosineAnnealingLR(o, T_max=STEPS - 20, eta_min=1e-4)], milestones=[20])),
    "SequentialLR-three": ("Adam", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.5, end_factor=0.5, total_iters=10),
            L.ExponentialLR(o, gamma=0.99),
            L.CosineAnnealingWarmRestarts(o, T_0=25, T_mult=2)], milestones=[50, 120])),
    "SequentialLR-polynomial-step": ("SGD", lambda L, o: L.SequentialLR(
        o, [L.PolynomialLR(o, total_iters=40, power=0.5),
            L.StepLR(o, step_size=30, gamma=0.5)], milestones=[40])),
}


def _run(md_opt, t_opt, md_s, t_s, steps, trace):
    """``steps`` optimiser and scheduler steps on both sides; ``trace`` collects
    (minidl, torch) lrs and momenta after each."""
    for _ in range(steps):
        md_opt.step()
        t_opt.step()
        md_s.step()
        t_s.step()
        trace.append(((md_s.get_last_lr(), _momenta(md_opt)),
                      (t_s.get_last_lr(), _momenta(t_opt))))
        assert md_s.get_last_lr() == [g["lr"] for g in md_opt.param_groups]


def _assert_trace_equal(trace):
    md = np.array([[*lrs, *moms] for (lrs, moms), _ in trace])
    t = np.array([[*lrs, *moms] for _, (lrs, moms) in trace])
    mismatch = ~np.isclose(md, t, **TOL).all(axis=1)
    assert not mismatch.any(), (f"first difference after step {mismatch.argmax()}: "
                                f"{md[mismatch.argmax()]} vs {t[mismatch.argmax()]}")


def _steps_for(name):
    return STEPS + 20 if name == "OneCycleLR-no-momentum" else STEPS


@pytest.mark.parametrize("case", list(CASES))
def test_sequence_matches_torch(case):
    opt_name, build = CASES[case]
    md_opt, t_opt = _opt_pair(opt_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warnings about the call order
        md_s, t_s = build(lr_scheduler, md_opt), build(torch.optim.lr_scheduler, t_opt)
        trace = [((md_s.get_last_lr(), _momenta(md_opt)), (t_s.get_last_lr(), _momenta(t_opt)))]
        _run(md_opt, t_opt, md_s, t_s, _steps_for(case), trace)
    _assert_trace_equal(trace)
    lrs = np.array([lrs for (lrs, _), _ in trace])
    assert len(np.unique(lrs[:, 0])) > 3  # the schedule moved
    if "momentum" not in case and case.startswith("OneCycleLR"):
        assert len(np.unique([m for (_, m), _ in trace])) > 3  # so did the momentum


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_resume_through_save_load(case, tmp_path):
    """Stop after 120 steps, save optimiser and scheduler with minidl.save, build fresh ones
    (the scheduler first, as PyTorch recommends), load, continue: the sequence goes on as
    torch's uninterrupted one."""
    opt_name, build = CASES[case]
    md_opt, t_opt = _opt_pair(opt_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md_s, t_s = build(lr_scheduler, md_opt), build(torch.optim.lr_scheduler, t_opt)
        trace = []
        _run(md_opt, t_opt, md_s, t_s, 120, trace)
        sd = md_s.state_dict()
        assert "optimizer" not in sd
        minidl.save({"optimizer": md_opt.state_dict(), "scheduler": sd}, tmp_path / "s.ckpt")
        ckpt = minidl.load(tmp_path / "s.ckpt")
        new_opt, _ = _opt_pair(opt_name)
        new_s = build(lr_scheduler, new_opt)
        new_opt.load_state_dict(ckpt["optimizer"])
        new_s.load_state_dict(ckpt["scheduler"])
        assert new_s.get_last_lr() == md_s.get_last_lr()
        _run(new_opt, t_opt, new_s, t_s, _steps_for(case) - 120, trace)
    _assert_trace_equal(trace)


def test_one_cycle_shape_and_limits():
    """The lr peaks at max_lr at the end of the first phase, ends at initial_lr /
    final_div_factor, the momentum moves the opposite way, and one step too many fails."""
    md_opt, t_opt = _opt_pair("SGD")
    s = lr_scheduler.OneCycleLR(md_opt, max_lr=1.0, total_steps=100, pct_start=0.3)
    group = md_opt.param_groups[0]
    assert group["initial_lr"] == 1.0 / 25 and group["min_lr"] == 1.0 / 25 / 1e4
    assert s.get_last_lr()[0] == pytest.approx(0.04) and group["momentum"] == 0.95
    lrs, moms = [], []
    for _ in range(99):
        s.step()
        lrs.append(s.get_last_lr()[0])
        moms.append(group["momentum"])
    assert np.argmax(lrs) + 1 == 29 and max(lrs) == pytest.approx(1.0)
    assert np.argmin(moms) == np.argmax(lrs) and min(moms) == pytest.approx(0.85)
    assert lrs[-1] == pytest.approx(4e-6)
    s.step()  # step 100 (= total_steps) is still allowed, as in PyTorch
    with pytest.raises(ValueError, match="tried to step 101 times.*total steps is 100"):
        s.step()


def test_one_cycle_errors():
    md_opt, _ = _opt_pair("SGD")
    with pytest.raises(ValueError, match="either total_steps OR"):
        lr_scheduler.OneCycleLR(md_opt, max_lr=0.1, epochs=3)
    with pytest.raises(ValueError, match="positive integer total_steps, but got 0"):
        lr_scheduler.OneCycleLR(md_opt, max_lr=0.1, total_steps=0)
    with pytest.raises(ValueError, match="pct_start, but got 1"):
        lr_scheduler.OneCycleLR(md_opt, max_lr=0.1, total_steps=10, pct_start=1)
    with pytest.raises(ValueError, match="'cos' or 'linear', instead got cosine"):
        lr_scheduler.OneCycleLR(md_opt, max_lr=0.1, total_steps=10, anneal_strategy="cosine")
    with pytest.raises(ValueError, match="max_lr must have the same length.*has 3 values"):
        lr_scheduler.OneCycleLR(md_opt, max_lr=[0.1, 0.2, 0.3], total_steps=10)
    adagrad = optim.Adagrad([nn.Parameter(minidl.ones(1))])
    with pytest.raises(ValueError, match="momentum or beta1.*Adagrad"):
        lr_scheduler.OneCycleLR(adagrad, max_lr=0.1, total_steps=10)
    lr_scheduler.OneCycleLR(adagrad, max_lr=0.1, total_steps=10, cycle_momentum=False)


@pytest.mark.parametrize("T_mult", [1, 2, 3])
def test_warm_restarts_fractional_epochs_match_torch(T_mult):
    """``step(epoch + i / iters)`` once per batch, as PyTorch's docs show, then plain
    ``step()`` calls interleaved with a jump ``step(26)``; no deprecation warning."""
    md_opt, t_opt = _opt_pair()
    md_s = lr_scheduler.CosineAnnealingWarmRestarts(md_opt, T_0=3, T_mult=T_mult, eta_min=0.01)
    t_s = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(t_opt, T_0=3, T_mult=T_mult,
                                                               eta_min=0.01)
    iters, md_seq, t_seq = 15, [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # minidl must not warn
        for epoch in range(20):
            for i in range(iters):
                md_s.step(epoch + i / iters)
                md_seq.append(md_s.get_last_lr() + [md_s.T_cur, md_s.T_i, md_s.last_epoch])
        md_s.step(26)
        md_seq.append(md_s.get_last_lr())
        for _ in range(30):
            md_s.step()
            md_seq.append(md_s.get_last_lr() + [md_s.T_cur, md_s.T_i, md_s.last_epoch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(20):
            for i in range(iters):
                t_s.step(epoch + i / iters)
                t_seq.append(t_s.get_last_lr() + [t_s.T_cur, t_s.T_i, t_s.last_epoch])
        t_s.step(26)
        t_seq.append(t_s.get_last_lr())
        for _ in range(30):
            t_s.step()
            t_seq.append(t_s.get_last_lr() + [t_s.T_cur, t_s.T_i, t_s.last_epoch])
    assert len(md_seq) == 331
    for step, (m, t) in enumerate(zip(md_seq, t_seq)):
        np.testing.assert_allclose(m, t, rtol=1e-12, atol=1e-15, err_msg=f"call {step}")
    with pytest.raises(ValueError, match="non-negative epoch, but got -1"):
        md_s.step(-1)


def test_warm_restarts_restart_and_errors():
    md_opt, _ = _opt_pair()
    s = lr_scheduler.CosineAnnealingWarmRestarts(md_opt, T_0=4, T_mult=2)
    lrs = [s.get_last_lr()[0]]
    for _ in range(12):
        s.step()
        lrs.append(s.get_last_lr()[0])
    # restarts to the base lr after 4 epochs, then after 4 + 8
    assert [i for i, lr in enumerate(lrs) if lr == LRS[0]] == [0, 4, 12]
    for kwargs, message in [(dict(T_0=0), "positive integer T_0, but got 0"),
                            (dict(T_0=2.5), "positive integer T_0, but got 2.5"),
                            (dict(T_0=3, T_mult=0), "integer T_mult >= 1, but got 0"),
                            (dict(T_0=3, T_mult=1.5), "integer T_mult >= 1, but got 1.5"),
                            (dict(T_0=3, eta_min="0"), "float or int eta_min")]:
        with pytest.raises(ValueError, match=message):
            lr_scheduler.CosineAnnealingWarmRestarts(md_opt, **kwargs)


PLATEAU_CASES = [dict(),
                 dict(mode="min", factor=0.5, patience=3, threshold=0.01, cooldown=2),
                 dict(mode="min", factor=0.7, patience=2, threshold=0.05, threshold_mode="abs",
                      min_lr=[1e-3, 2e-3]),
                 dict(mode="max", factor=0.3, patience=4, threshold=1e-3, min_lr=1e-4),
                 dict(mode="max", factor=0.8, patience=0, threshold=0.02,
                      threshold_mode="abs", cooldown=5, eps=1e-3)]


def _metric(rng, step, mode):
    """A loss that falls with plateaus and noise (an accuracy that rises, for 'max')."""
    loss = 1.0 / (1 + step // 25) + 0.05 * rng.standard_normal() + 0.3 * (step % 40 > 30)
    return loss if mode == "min" else 1.0 - loss


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=lambda k: "-".join(map(str, k.values()))
                         or "defaults")
def test_reduce_on_plateau_matches_torch(kwargs, rng, tmp_path):
    md_opt, t_opt = _opt_pair()
    md_s = lr_scheduler.ReduceLROnPlateau(md_opt, **kwargs)
    t_s = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, **kwargs)
    mode = kwargs.get("mode", "min")
    counters = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")
    reductions = 0
    for step in range(STEPS):
        if step == 150:  # resume from a saved state_dict half-way
            minidl.save({"optimizer": md_opt.state_dict(), "scheduler": md_s.state_dict()},
                        tmp_path / "p.ckpt")
            ckpt = minidl.load(tmp_path / "p.ckpt")
            md_opt, _ = _opt_pair()
            md_s = lr_scheduler.ReduceLROnPlateau(md_opt, **kwargs)
            md_opt.load_state_dict(ckpt["optimizer"])
            md_s.load_state_dict(ckpt["scheduler"])
        metric = _metric(rng, step, mode)
        before = md_s.get_last_lr()
        # the metric may be a number or a one-element Tensor (minidl's or torch's)
        md_s.step(minidl.tensor(metric, dtype=minidl.float64) if step % 2 else metric)
        t_s.step(torch.tensor(metric, dtype=torch.float64) if step % 3 else metric)
        reductions += md_s.get_last_lr() != before
        assert md_s.get_last_lr() == t_s.get_last_lr(), f"step {step}"
        assert [g["lr"] for g in md_opt.param_groups] == md_s.get_last_lr()
        for name in counters:
            assert getattr(md_s, name) == getattr(t_s, name), (name, step)
    assert reductions >= 2


def test_reduce_on_plateau_errors_and_min_lr():
    md_opt, _ = _opt_pair()
    with pytest.raises(ValueError, match="factor should be < 1.0"):
        lr_scheduler.ReduceLROnPlateau(md_opt, factor=1.0)
    with pytest.raises(ValueError, match="expected 2 min_lrs, got 3"):
        lr_scheduler.ReduceLROnPlateau(md_opt, min_lr=[0, 0, 0])
    with pytest.raises(ValueError, match="mode 'minimum' is unknown"):
        lr_scheduler.ReduceLROnPlateau(md_opt, mode="minimum")
    with pytest.raises(ValueError, match="threshold mode 'relative' is unknown"):
        lr_scheduler.ReduceLROnPlateau(md_opt, threshold_mode="relative")
    with pytest.raises(TypeError, match="is not an Optimizer"):
        lr_scheduler.ReduceLROnPlateau(object())
    s = lr_scheduler.ReduceLROnPlateau(md_opt, patience=0, min_lr=0.02)
    for _ in range(5):
        s.step(1.0)
    assert s.get_last_lr() == [0.02, 0.02]  # floored at min_lr
    with pytest.raises(ValueError, match="one-element"):
        s.step(minidl.ones(3))
    md_opt.add_param_group({"params": [nn.Parameter(minidl.ones(1))], "lr": 0.5})
    s.step(1.0)  # one min_lr for all groups follows the new group
    assert s.get_last_lr()[2] == pytest.approx(0.05)
    listed = lr_scheduler.ReduceLROnPlateau(md_opt, patience=0, min_lr=[0, 0, 0])
    md_opt.add_param_group({"params": [nn.Parameter(minidl.ones(1))]})
    listed.step(1.0)
    with pytest.raises(RuntimeError, match="number of param groups"):
        listed.step(1.0)


def test_sequential_lr_errors():
    md_opt, _ = _opt_pair()
    other, _ = _opt_pair()
    warm = lr_scheduler.LinearLR(md_opt)
    with pytest.raises(ValueError, match="at least one scheduler"):
        lr_scheduler.SequentialLR(md_opt, [], [])
    with pytest.raises(ValueError, match="one more than the number of milestone points"):
        lr_scheduler.SequentialLR(md_opt, [warm], [3])
    with pytest.raises(ValueError, match="same optimizer.*StepLR at index 1"):
        lr_scheduler.SequentialLR(md_opt, [warm, lr_scheduler.StepLR(other, 3)], [3])
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        lr_scheduler.SequentialLR(md_opt, [warm, lr_scheduler.ReduceLROnPlateau(md_opt)], [3])
    with pytest.raises(TypeError, match="index 0 should have `optimizer`"):
        lr_scheduler.SequentialLR(md_opt, [object()], [])


@pytest.mark.parametrize("name,kwargs", [("LinearLR", dict(start_factor=0.2, total_iters=9)),
                                         ("PolynomialLR", dict(total_iters=12, power=1.5))])
def test_closed_form_matches_torch(name, kwargs):
    md_opt, t_opt = _opt_pair()
    md_s = getattr(lr_scheduler, name)(md_opt, **kwargs)
    t_s = getattr(torch.optim.lr_scheduler, name)(t_opt, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in (3, 7, 9, 25, 0, 4):
            md_s.step(epoch)
            t_s.step(epoch)
            np.testing.assert_allclose(md_s.get_last_lr(), t_s.get_last_lr(), rtol=1e-12)
    with pytest.warns(UserWarning, match="deprecated"):
        md_s.step(5)


def test_linear_and_polynomial_end_points():
    md_opt, _ = _opt_pair()
    s = lr_scheduler.LinearLR(md_opt, start_factor=0.25, end_factor=0.75, total_iters=4)
    seq = [s.get_last_lr()[0]]
    for _ in range(6):
        s.step()
        seq.append(s.get_last_lr()[0])
    np.testing.assert_allclose(seq, [0.1 * f for f in (0.25, 0.375, 0.5, 0.625, 0.75, 0.75,
                                                       0.75)], rtol=1e-12)
    for kwargs, message in [(dict(start_factor=0), "start_factor expected in \\(0, 1\\]"),
                            (dict(end_factor=1.5), "end_factor expected in \\[0, 1\\]")]:
        with pytest.raises(ValueError, match=message):
            lr_scheduler.LinearLR(md_opt, **kwargs)
    opt2, _ = _opt_pair()
    p = lr_scheduler.PolynomialLR(opt2, total_iters=4, power=2.0)
    seq = [p.get_last_lr()[0]]
    for _ in range(6):
        p.step()
        seq.append(p.get_last_lr()[0])
    np.testing.assert_allclose(seq, [0.1 * (1 - min(e, 4) / 4) ** 2 for e in range(7)],
                               rtol=1e-12, atol=1e-18)
    assert math.isclose(seq[3], 0.1 / 16)
