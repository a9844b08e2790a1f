"""Issue 15's losses against PyTorch: binary_cross_entropy_with_logits (pos_weight, weight),
binary_cross_entropy, l1_loss, smooth_l1_loss (beta), kl_div ('batchmean', log_target), and
their layers BCEWithLogitsLoss, BCELoss, L1Loss, SmoothL1Loss, KLDivLoss.

Every case goes through ``check_op`` (forward/backward in float64 and float32, random
upstream gradient, gradcheck); the two new Functions (softplus inside the logits loss, the
clamped binary cross-entropy) get a ``check_double_backward`` each.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl
import minidl.nn.functional as F
from helpers import check_double_backward, check_op
from minidl import nn
from minidl.errors import ShapeError

RNG = np.random.default_rng(151)
REDUCTIONS = ["mean", "sum", "none"]


def logits(*shape):
    return RNG.standard_normal(shape) * 3


def probs(*shape):
    return RNG.uniform(0.05, 0.95, shape)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_pytorch(reduction, device):
    x, t = logits(4, 3), RNG.uniform(0, 1, (4, 3))
    check_op(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction),
             lambda x, t: TF.binary_cross_entropy_with_logits(x, t, reduction=reduction),
             [x, t], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_weight_and_pos_weight_match_pytorch(reduction, device):
    x, t = logits(4, 3), RNG.uniform(0, 1, (4, 3))
    w, pw = RNG.uniform(0.5, 2, (4, 1)), RNG.uniform(0.5, 3, (3,))
    # PyTorch differentiates neither weight nor pos_weight: compare input and target
    check_op(lambda x, t, w, pw: F.binary_cross_entropy_with_logits(
                 x, t, w, reduction=reduction, pos_weight=pw),
             lambda x, t, w, pw: TF.binary_cross_entropy_with_logits(
                 x, t, w, reduction=reduction, pos_weight=pw),
             [x, t, w, pw], grad=[0, 1], device=device)


def test_bce_with_logits_is_stable_for_large_logits():
    x = minidl.tensor(np.array([-200.0, -30.0, 30.0, 200.0], dtype=np.float32),
                      requires_grad=True)
    t = minidl.tensor(np.array([1.0, 0.0, 1.0, 0.0], dtype=np.float32))
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    loss.sum().backward()
    np.testing.assert_allclose(loss.numpy(), [200.0, 0.0, 0.0, 200.0], atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), [-1.0, 0.0, 0.0, 1.0], atol=1e-6)


def test_softplus_and_bce_double_backward(device):
    x, t, pw = logits(3, 4), RNG.uniform(0, 1, (3, 4)), RNG.uniform(0.5, 3, (4,))
    check_double_backward(
        lambda x, t, pw: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
        lambda x, t, pw: TF.binary_cross_entropy_with_logits(x, t, pos_weight=pw),
        [x, t, pw], grad=[0, 1], device=device)
    check_double_backward(F.binary_cross_entropy, TF.binary_cross_entropy,
                          [probs(3, 4), RNG.uniform(0, 1, (3, 4))], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_pytorch(reduction, device):
    x, t, w = probs(4, 3), RNG.uniform(0, 1, (4, 3)), RNG.uniform(0.5, 2, (3,))
    check_op(lambda x, t: F.binary_cross_entropy(x, t, reduction=reduction),
             lambda x, t: TF.binary_cross_entropy(x, t, reduction=reduction),
             [x, t], device=device)
    check_op(lambda x, t, w: F.binary_cross_entropy(x, t, w, reduction=reduction),
             lambda x, t, w: TF.binary_cross_entropy(x, t, w, reduction=reduction),
             [x, t, w], grad=[0, 1], device=device)


def test_bce_at_saturated_probabilities_is_finite_like_pytorch():
    # a float32 sigmoid gives exactly 0 and 1: PyTorch clamps the logs and the gradient
    values, targets = [0.0, 1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.0, 1.0]
    md_x = minidl.tensor(np.array(values, dtype=np.float32), requires_grad=True)
    t_x = torch.tensor(values, requires_grad=True)
    md_l = F.binary_cross_entropy(md_x, minidl.tensor(np.array(targets, dtype=np.float32)),
                                  reduction="none")
    t_l = TF.binary_cross_entropy(t_x, torch.tensor(targets), reduction="none")
    md_l.sum().backward()
    t_l.sum().backward()
    np.testing.assert_allclose(md_l.numpy(), t_l.detach().numpy())
    np.testing.assert_allclose(md_x.grad.numpy(), t_x.grad.numpy(), rtol=1e-6)
    assert md_l.numpy()[2] == 100.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss_matches_pytorch(reduction, device):
    check_op(lambda x, t: F.l1_loss(x, t, reduction=reduction),
             lambda x, t: TF.l1_loss(x, t, reduction=reduction),
             [logits(4, 3), logits(4, 3)], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0, 0.0])
def test_smooth_l1_loss_matches_pytorch(reduction, beta, device):
    x, t = logits(5, 4), logits(5, 4)
    d = np.abs(x - t)
    x[np.abs(d - beta) < 0.05] += 0.2            # away from the seam |d| = beta
    check_op(lambda x, t: F.smooth_l1_loss(x, t, reduction=reduction, beta=beta),
             lambda x, t: TF.smooth_l1_loss(x, t, reduction=reduction, beta=beta),
             [x, t], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_pytorch(reduction, log_target, device):
    log_q = np.log(RNG.dirichlet(np.ones(5), 4))
    p = RNG.dirichlet(np.ones(5), 4)
    p[0, 1] = 0.0                                # 0 log 0 = 0, and a finite gradient
    target = np.log(p + 0.01) if log_target else p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # both warn about reduction='mean'
        # p = 0 is a kink of p log p (PyTorch's target gradient there is as arbitrary), so
        # without log_target only the input is differentiated
        check_op(lambda x, t: F.kl_div(x, t, reduction=reduction, log_target=log_target),
                 lambda x, t: TF.kl_div(x, t, reduction=reduction, log_target=log_target),
                 [log_q, target], grad=None if log_target else [0], device=device)


def test_kl_div_mean_warns_and_batchmean_is_the_kl_per_sample():
    log_q = minidl.tensor(np.log(np.full((2, 4), 0.25)))
    p = minidl.tensor(np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]]))
    with pytest.warns(UserWarning, match="^kl_div: reduction='mean'"):
        F.kl_div(log_q, p)
    expected = (np.log(4) + np.log(2)) / 2       # KL(p || uniform) of each row, averaged
    np.testing.assert_allclose(F.kl_div(log_q, p, reduction="batchmean").item(), expected)


@pytest.mark.parametrize("call, cls, prefix", [
    (lambda: F.binary_cross_entropy_with_logits(minidl.randn(3, 2), minidl.rand(3)),
     ShapeError, "binary_cross_entropy_with_logits: "),
    (lambda: F.binary_cross_entropy(minidl.rand(3), minidl.rand(3, 1)), ShapeError,
     "binary_cross_entropy: "),
    (lambda: F.binary_cross_entropy(minidl.randn(3) + 2, minidl.rand(3)), RuntimeError,
     "binary_cross_entropy: all elements of input should be between 0 and 1"),
    (lambda: F.binary_cross_entropy_with_logits(minidl.randn(3), minidl.rand(3),
                                                reduction="avg"), ValueError,
     "binary_cross_entropy_with_logits: unknown reduction"),
    (lambda: F.l1_loss(minidl.randn(3, 2), minidl.randn(3, 4)), ShapeError, "l1_loss: "),
    (lambda: F.l1_loss(minidl.randn(3), minidl.randn(3).double()), TypeError, "l1_loss: "),
    (lambda: F.smooth_l1_loss(minidl.randn(3), minidl.randn(3), beta=-1.0), ValueError,
     "smooth_l1_loss: beta"),
    (lambda: F.kl_div(minidl.randn(3), minidl.rand(3), reduction="avg"), ValueError,
     "kl_div: unknown reduction"),
])
def test_loss_errors_name_the_op(call, cls, prefix):
    with pytest.raises(cls, match="^" + prefix):
        call()


def test_l1_loss_broadcasts_with_a_warning_like_pytorch():
    with pytest.warns(UserWarning, match="^l1_loss: target of shape"):
        loss = F.l1_loss(minidl.ones(3, 1), minidl.zeros(3), reduction="sum")
    assert loss.item() == 9.0


def test_legacy_size_average_and_reduce_flags():
    x, t = minidl.randn(4), minidl.randn(4)
    with pytest.warns(UserWarning, match="size_average and reduce"):
        none = F.l1_loss(x, t, reduce=False)
    assert none.shape == (4,)
    with pytest.warns(UserWarning):
        total = F.smooth_l1_loss(x, t, size_average=False)
    np.testing.assert_allclose(total.item(), F.smooth_l1_loss(x, t, reduction="sum").item())


# ----------------------------------------------------------------------------- layers

LAYERS = [
    (lambda: nn.BCEWithLogitsLoss(), lambda: torch.nn.BCEWithLogitsLoss(), "logits"),
    (lambda: nn.BCEWithLogitsLoss(pos_weight=minidl.tensor([2.0, 0.5, 1.5]).double(),
                                  reduction="sum"),
     lambda: torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 0.5, 1.5]).double(),
                                        reduction="sum"), "logits"),
    (lambda: nn.BCELoss(weight=minidl.tensor([2.0, 0.5, 1.5]).double()),
     lambda: torch.nn.BCELoss(weight=torch.tensor([2.0, 0.5, 1.5]).double()), "probs"),
    (lambda: nn.L1Loss(reduction="none"), lambda: torch.nn.L1Loss(reduction="none"), "logits"),
    (lambda: nn.SmoothL1Loss(beta=0.5), lambda: torch.nn.SmoothL1Loss(beta=0.5), "logits"),
    (lambda: nn.KLDivLoss(reduction="batchmean", log_target=True),
     lambda: torch.nn.KLDivLoss(reduction="batchmean", log_target=True), "logits"),
]


@pytest.mark.parametrize("make_md, make_t, kind", LAYERS)
def test_loss_layers_match_pytorch(make_md, make_t, kind):
    md, t = make_md(), make_t()
    assert repr(md) == repr(t)
    assert list(md.state_dict()) == list(t.state_dict())
    x = probs(4, 3) if kind == "probs" else logits(4, 3)
    target = RNG.uniform(0, 1, (4, 3))
    md_x, t_x = minidl.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    md_l, t_l = md(md_x, minidl.tensor(target)), t(t_x, torch.tensor(target))
    np.testing.assert_allclose(md_l.numpy(), t_l.detach().numpy(), rtol=1e-10)
    v = RNG.standard_normal(tuple(t_l.shape))
    (md_l * minidl.tensor(v)).sum().backward()
    (t_l * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(md_x.grad.numpy(), t_x.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_loss_layer_arguments():
    assert nn.KLDivLoss(reduction="batchmean").reduction == "batchmean"
    with pytest.raises(ValueError, match="^KLDivLoss: "):
        nn.KLDivLoss(reduction="avg")
    with pytest.raises(ValueError, match="^SmoothL1Loss: "):
        nn.SmoothL1Loss(reduction="avg")
    with pytest.raises(TypeError, match=r"^BCELoss\(\): expected a minidl Tensor"):
        nn.BCELoss()(np.ones(3), minidl.ones(3))
