"""Losses against PyTorch: every combination of weight / ignore_index / label_smoothing /
reduction, class-index and probability targets, (N, C) and (N, C, d1, d2) inputs."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
import minidl.kernels as K
import minidl.ops.loss as loss_ops
from minidl.errors import ShapeError
from minidl.kernels.loss import CROSS_ENTROPY, log_softmax_axis1
from minidl.ops.loss import cross_entropy, mse_loss, nll_loss
from minidl.ops.norm import batch_norm
from tests.helpers import check_op, to_host

REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(5, 4), (2, 3, 2, 2)]          # (N, C) and (N, C, d1, d2)


def _class_targets(rng, shape, ignore_index):
    """Integer targets (N, *S) for input ``shape``, with some set to ``ignore_index``."""
    C = shape[1]
    t = rng.integers(0, C, shape[:1] + shape[2:])
    if ignore_index is not None:
        flat = t.reshape(-1)
        flat[[0, 3]] = ignore_index   # two elements ignored, the rest kept
    return t


def _weight(rng, C, use):
    return rng.uniform(0.5, 2.0, C) if use else None


# ignore_index: None -> the default (-100, absent from the targets); -1 present;
# 1 present (an ignore_index that is also a valid class index).
CE_CASES = list(itertools.product(SHAPES, [False, True], [None, -1, 1], [0.0, 0.2], REDUCTIONS))


@pytest.mark.parametrize("shape,use_weight,ignore,smoothing,reduction", CE_CASES)
def test_cross_entropy_class_indices(rng, shape, use_weight, ignore, smoothing, reduction,
                                     device):
    x = rng.standard_normal(shape) * 2
    t = _class_targets(rng, shape, ignore)
    w = _weight(rng, shape[1], use_weight)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    if ignore is not None:
        kw["ignore_index"] = ignore
    check_op(lambda x, t, w: cross_entropy(x, t, weight=w, **kw),
             lambda x, t, w: F.cross_entropy(x, t, weight=w, **kw),
             [x, t, w], grad=(0,), device=device)


PROB_CASES = list(itertools.product(SHAPES, [False, True], [0.0, 0.2], REDUCTIONS))


@pytest.mark.parametrize("shape,use_weight,smoothing,reduction", PROB_CASES)
def test_cross_entropy_probability_targets(rng, shape, use_weight, smoothing, reduction, device):
    """Gradients with respect to the logits, the target and the weight, all against PyTorch."""
    x = rng.standard_normal(shape) * 2
    t = rng.uniform(0.1, 1.0, shape)
    t /= t.sum(axis=1, keepdims=True)
    w = _weight(rng, shape[1], use_weight)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    check_op(lambda x, t, w: cross_entropy(x, t, weight=w, **kw),
             lambda x, t, w: F.cross_entropy(x, t, weight=w, **kw), [x, t, w], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", ["index", "probs"])
def test_cross_entropy_unbatched(rng, reduction, target, device):
    x = rng.standard_normal(5)
    t = np.array(3) if target == "index" else rng.dirichlet(np.ones(5))
    check_op(lambda x, t: cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
             lambda x, t: F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
             [x, t], grad=(0,), device=device)


def test_cross_entropy_one_hot_gradient_is_softmax_minus_onehot(rng, device):
    x = rng.standard_normal((4, 3))
    t = np.array([0, 2, 1, 2])
    m = minidl.tensor(x, requires_grad=True, device=device)
    cross_entropy(m, minidl.tensor(t, device=device), reduction="sum").backward()
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(to_host(m.grad), p - np.eye(3)[t], rtol=1e-12, atol=1e-15)


ALL_IGNORED_CASES = [(cross_entropy, F.cross_entropy, {}),
                     (cross_entropy, F.cross_entropy, {"label_smoothing": 0.2}),
                     (nll_loss, F.nll_loss, {})]


@pytest.mark.parametrize("fn,t_fn,kw", ALL_IGNORED_CASES)
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_target_ignored_nan_mean_zero_gradient_as_pytorch(rng, fn, t_fn, kw, use_weight,
                                                                 shape, device):
    """Every target ignored, reduction='mean': the loss is 0 / 0 = nan (as PyTorch's), but
    the gradient is PyTorch's: 0 everywhere, not nan -- an optimiser step must not turn
    every weight into nan. With class weights and label smoothing too."""
    x = rng.standard_normal(shape)
    t = np.full(shape[:1] + shape[2:], -100)
    w = rng.uniform(0.5, 2.0, shape[1]) if use_weight else None
    mx = minidl.tensor(x, requires_grad=True, device=device)
    md = fn(mx, minidl.tensor(t, device=device),
            weight=None if w is None else minidl.tensor(w, device=device), **kw)
    md.backward()
    tx = torch.tensor(x, requires_grad=True)
    tt = t_fn(tx, torch.tensor(t), weight=None if w is None else torch.tensor(w), **kw)
    tt.backward()
    assert np.isnan(md.item()) and np.isnan(tt.item())
    assert not tx.grad.isnan().any() and (tx.grad == 0).all()      # what PyTorch gives
    np.testing.assert_array_equal(to_host(mx.grad), tx.grad.numpy())


@pytest.mark.parametrize("fn,t_fn,kw", ALL_IGNORED_CASES)
def test_every_target_ignored_second_order_gradient_is_zero(rng, fn, t_fn, kw):
    """The recorded backward (create_graph=True) follows the same rule."""
    x = minidl.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    loss = fn(x, minidl.tensor(np.full(4, -100)), **kw)
    (gx,) = minidl.autograd.grad(loss, [x], create_graph=True)
    np.testing.assert_array_equal(gx.numpy(), np.zeros((4, 3)))


def test_sgd_step_on_an_all_ignored_batch_keeps_the_weights(rng):
    """The failure the zero gradient prevents: one step on a batch whose targets are all
    ignore_index used to make every weight nan (PyTorch leaves them unchanged)."""
    minidl.manual_seed(0)
    layer = minidl.nn.Linear(6, 4)
    before = [p.numpy().copy() for p in layer.parameters()]
    opt = minidl.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = minidl.tensor(rng.standard_normal((5, 6)).astype(np.float32))
    for smoothing in (0.0, 0.1):
        opt.zero_grad()
        cross_entropy(layer(x), minidl.tensor(np.full(5, -100)),
                      label_smoothing=smoothing).backward()
        opt.step()
    for p, b in zip(layer.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_cross_entropy_is_stable_for_large_logits(device):
    x = np.array([[1000.0, -1000.0, 0.0], [-5e4, 5e4, 0.0]])
    t = np.array([1, 0])
    md = to_host(cross_entropy(minidl.tensor(x, device=device), minidl.tensor(t, device=device),
                               reduction="none"))
    tt = F.cross_entropy(torch.tensor(x), torch.tensor(t), reduction="none").numpy()
    np.testing.assert_allclose(md, tt, rtol=1e-12)


@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy_float32_stays_float32(rng, probs, device):
    x = minidl.tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True,
                      device=device)
    t = (minidl.tensor(rng.dirichlet(np.ones(3), 4).astype(np.float32), device=device) if probs
         else minidl.tensor([0, 1, 2, 1], device=device))
    w = minidl.tensor(np.array([1.0, 2.0, 0.5], np.float32), device=device)
    loss = cross_entropy(x, t, weight=w, label_smoothing=0.1)
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32


# --- nll_loss ---------------------------------------------------------------------------

NLL_CASES = list(itertools.product(SHAPES, [False, True], [None, -1, 1], REDUCTIONS))


@pytest.mark.parametrize("shape,use_weight,ignore,reduction", NLL_CASES)
def test_nll_loss(rng, shape, use_weight, ignore, reduction, device):
    x = rng.standard_normal(shape)
    t = _class_targets(rng, shape, ignore)
    w = _weight(rng, shape[1], use_weight)
    kw = dict(reduction=reduction)
    if ignore is not None:
        kw["ignore_index"] = ignore
    check_op(lambda x, t, w: nll_loss(x, t, weight=w, **kw),
             lambda x, t, w: F.nll_loss(x, t, weight=w, **kw), [x, t, w], grad=(0,), device=device)


def test_nll_loss_of_log_softmax_equals_cross_entropy(rng, device):
    from minidl.ops.activation import log_softmax
    x = minidl.tensor(rng.standard_normal((4, 5)), device=device)
    t = minidl.tensor([4, 0, 2, 2], device=device)
    np.testing.assert_allclose(nll_loss(log_softmax(x, 1), t).item(),
                               cross_entropy(x, t).item(), rtol=1e-12)


def test_nll_loss_with_minus_infinity_elsewhere_is_finite(device):
    with np.errstate(divide="ignore"):
        x = np.log(np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]))  # log 0 = -inf, not picked
    t = np.array([0, 1])
    md = nll_loss(minidl.tensor(x, device=device), minidl.tensor(t, device=device)).item()
    np.testing.assert_allclose(md, F.nll_loss(torch.tensor(x), torch.tensor(t)).item())


# --- mse_loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 2)])
def test_mse_loss(rng, reduction, shape, device):
    check_op(lambda x, t: mse_loss(x, t, reduction),
             lambda x, t: F.mse_loss(x, t, reduction=reduction),
             [rng.standard_normal(shape), rng.standard_normal(shape)], device=device)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_broadcasts_with_a_warning_as_pytorch(rng, reduction, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both libraries warn; the values must still agree
        check_op(lambda x, t: mse_loss(x, t, reduction),
                 lambda x, t: F.mse_loss(x, t, reduction=reduction),
                 [rng.standard_normal((3, 1)), rng.standard_normal(3)], device=device)
    with pytest.warns(UserWarning, match=r"mse_loss: target of shape \(3,\) differs from "
                                         r"input of shape \(3, 1\)"):
        mse_loss(minidl.zeros(3, 1), minidl.zeros(3))


def test_mse_loss_float32_stays_float32(rng, device):
    x = minidl.tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True,
                      device=device)
    loss = mse_loss(x, minidl.zeros(4, device=device))
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32


# --- the cross-entropy kernel family ----------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore", [-100, 0, "all"])
def test_cross_entropy_family_reference_is_the_general_formula_bit_for_bit(rng, dtype,
                                                                           reduction, ignore):
    """kernels/loss.py's reference gives exactly the numbers of CrossEntropyFunction's
    general formula G * (p * sum_c(A) - A) with A = onehot (no weight, no smoothing):
    same bits, signed zeros and NaNs included (every target ignored: 'mean' divides by 0)."""
    N, C = 9, 6
    x = (rng.standard_normal((N, C)) * 4).astype(dtype)
    x[1, 2] = -np.inf                                   # p = 0 for one class
    ignore_index = -100 if ignore == "all" else ignore
    t = rng.integers(0, C, N)
    t[::3] = ignore_index
    if ignore == "all":
        t[:] = ignore_index
    logp = log_softmax_axis1(x)
    gy = np.asarray(rng.standard_normal(N if reduction == "none" else ()), dtype=dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        G = loss_ops._upstream(gy, reduction, np.asarray((t != ignore_index).sum(), dtype))
        A = loss_ops._weighted_targets(t, C, None, ignore_index, 0.0, dtype)
        general = (np.exp(logp) * A.sum(axis=1, keepdims=True) - A) * G
        gx = CROSS_ENTROPY.impls["reference"].code.cross_entropy_backward(
            logp, t, G, ignore_index)
    assert gx.dtype == general.dtype and gx.shape == general.shape
    np.testing.assert_array_equal(gx.view(np.uint8), general.view(np.uint8))


@pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore", [-100, 0, "all"])
def test_cross_entropy_family_numba_equals_reference(rng, dtype, reduction, ignore):
    """The numba kernels give the reference's logp, losses, count and gradient (float32
    to rounding, float64 tight), with a -inf logit, ignored rows, and every row ignored."""
    N, C = 13, 7
    x = (rng.standard_normal((N, C)) * 4).astype(dtype)
    x[1, 2] = -np.inf                                   # p = 0 for one class
    ignore_index = -100 if ignore == "all" else ignore
    t = rng.integers(0, C, N)
    t[::3] = ignore_index
    if ignore == "all":
        t[:] = ignore_index
    ref = CROSS_ENTROPY.impls["reference"].code
    fast = CROSS_ENTROPY.impls["numba"].code
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    want, got = ref.cross_entropy_forward(x, t, ignore_index), fast.cross_entropy_forward(
        x, t, ignore_index)
    for name, w, g in zip(("logp", "losses", "count"), want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, err_msg=name, **tol)
    gy = np.asarray(rng.standard_normal(N if reduction == "none" else ()), dtype=dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        G = loss_ops._upstream(gy, reduction, want[2])
        gw = ref.cross_entropy_backward(want[0], t, G, ignore_index)
        gg = fast.cross_entropy_backward(want[0], t, G, ignore_index)
    assert gg.dtype == gw.dtype and gg.shape == gw.shape
    np.testing.assert_allclose(gg, gw, **tol)


@pytest.mark.parametrize("case", ["plain", "weight", "smoothing", "4-d"])
def test_cross_entropy_backward_asks_the_family_for_the_plain_case_only(rng, case):
    shape = (2, 3, 2, 2) if case == "4-d" else (5, 3)
    x = minidl.tensor(rng.standard_normal(shape), requires_grad=True)
    t = minidl.tensor(_class_targets(rng, shape, -100))
    kw = dict(weight=minidl.tensor([1.0, 2.0, 0.5])) if case == "weight" else {}
    kw.update(label_smoothing=0.1 if case == "smoothing" else 0.0)
    with K.decisions() as log:
        cross_entropy(x, t, **kw).backward()
    asked = [impl for fam, impl in log if fam == "cross_entropy"]
    fast = "numba" if K.numba_available() else "reference"
    assert asked == ([fast, fast] if case == "plain" else [])     # forward, backward


def test_use_impl_reference_routes_batch_norm_and_cross_entropy(rng, device, use_impl):
    """A batch-norm layer into cross-entropy: automatically each family takes its fast path
    for the device (numba / CUDA kernels where they apply); ``use_impl('reference')`` sends
    both to the reference, with the same results to rounding."""
    x0 = rng.standard_normal((6, 4)).astype(np.float32)
    t = minidl.tensor(rng.integers(0, 4, 6), device=device)

    def step():
        x = minidl.tensor(x0, device=device, requires_grad=True)
        with K.decisions() as log:
            cross_entropy(batch_norm(x, None, None, training=True), t).backward()
        ran = {(fam, impl) for fam, impl in log if fam in ("batch_norm", "cross_entropy")}
        return to_host(x.grad), ran

    fast, ran_auto = step()
    if device == "cuda":
        assert ran_auto == {("batch_norm", "cuda"), ("cross_entropy", "cuda")}
    else:
        cpu_fast = "numba" if K.numba_available() else "reference"
        assert ran_auto == {("batch_norm", cpu_fast), ("cross_entropy", cpu_fast)}
    use_impl("reference")
    ref, ran_ref = step()
    assert ran_ref == {("batch_norm", "reference"), ("cross_entropy", "reference")}
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)


# --- errors -----------------------------------------------------------------------------

def _x(*shape, dtype=np.float32):
    return minidl.tensor(np.zeros(shape, dtype))


@pytest.mark.parametrize("impl", ["numba", "reference"])
def test_every_path_refuses_the_first_target_out_of_range(impl, use_impl):
    """The plain case's kernels check the targets themselves (the numba loop for free), the
    other cases before the op: the same error, naming the first bad class in order; an
    ignored negative target is no error."""
    if impl == "numba" and not K.numba_available():
        pytest.skip("numba is not installed")
    use_impl(impl, family="cross_entropy")
    message = (r"cross_entropy: target contains class {} but input has 10 classes "
               r"\(expected targets in \[0, 9\] or ignore_index=-1\)")
    t = minidl.tensor([0, -1, 11, -4, 1])
    for kw in ({}, {"weight": minidl.ones(10)}, {"label_smoothing": 0.1}):
        with pytest.raises(IndexError, match=message.format(11)):
            cross_entropy(_x(5, 10), t, ignore_index=-1, **kw)
        with pytest.raises(IndexError, match=message.format(-4)):
            cross_entropy(_x(2, 10), minidl.tensor([-1, -4]), ignore_index=-1, **kw)
        y = cross_entropy(_x(3, 10), minidl.tensor([0, -1, 9]), ignore_index=-1, **kw)
        assert np.isfinite(y.item())
    with K.decisions() as log:
        cross_entropy(_x(3, 10), minidl.tensor([0, -1, 9]), ignore_index=-1)
    assert ("cross_entropy", impl) in log


def test_error_class_out_of_range():
    t = minidl.tensor([0, 12, 3, 1])
    with pytest.raises(IndexError, match=r"cross_entropy: target contains class 12 but input "
                                         r"has 10 classes \(expected targets in \[0, 9\] or "
                                         r"ignore_index=-100\)"):
        cross_entropy(_x(4, 10), t)
    with pytest.raises(IndexError, match=r"nll_loss: target contains class -3 but input has 10 "
                                         r"classes \(expected targets in \[0, 9\] or "
                                         r"ignore_index=-1\)"):
        nll_loss(_x(4, 10), minidl.tensor([0, -1, -3, 1]), ignore_index=-1)


def test_error_integer_targets_of_wrong_shape():
    with pytest.raises(ShapeError, match=r"cross_entropy: expected class-index target of "
                                           r"shape \(4,\) for input \(4, 10\), got \(4, 3\)"):
        cross_entropy(_x(4, 10), minidl.zeros(4, 3, dtype=minidl.int64))
    with pytest.raises(ShapeError, match=r"expected class-index target of shape \(2, 5, 5\) "
                                           r"for input \(2, 3, 5, 5\), got \(2, 3, 5\)"):
        cross_entropy(_x(2, 3, 5, 5), minidl.zeros(2, 3, 5, dtype=minidl.int64))
    with pytest.raises(ShapeError, match=r"nll_loss: expected class-index target of shape"):
        nll_loss(_x(4, 10), minidl.zeros(5, dtype=minidl.int64))


def test_error_float_targets_of_wrong_shape():
    with pytest.raises(ShapeError, match=r"cross_entropy: expected probability target of the "
                                           r"same shape as input \(4, 10\), got \(4, 9\)"):
        cross_entropy(_x(4, 10), _x(4, 9))
    with pytest.raises(ShapeError, match=r"same shape as input \(4, 10\), got \(4,\)"):
        cross_entropy(_x(4, 10), _x(4))


def test_error_integer_logits():
    with pytest.raises(TypeError, match=r"cross_entropy: expected floating point logits "
                                        r"\(N, C\) or \(N, C, d1, \.\.\.\), got dtype int64"):
        cross_entropy(minidl.tensor([[1, 2], [3, 4]]), minidl.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"nll_loss: expected floating point log-probabilities"):
        nll_loss(minidl.tensor([[1, 2], [3, 4]]), minidl.tensor([0, 1]))


def test_error_weight_of_wrong_length():
    with pytest.raises(ShapeError, match=r"cross_entropy: expected weight of shape \(10,\) "
                                           r"\(one per class\), got \(9,\)"):
        cross_entropy(_x(4, 10), minidl.tensor([0, 1, 2, 3]), weight=_x(9))
    with pytest.raises(ShapeError, match=r"nll_loss: expected weight of shape \(10,\)"):
        nll_loss(_x(4, 10), minidl.tensor([0, 1, 2, 3]), weight=_x(10, 1))


@pytest.mark.parametrize("fn,args", [(cross_entropy, (_x(2, 3), minidl.tensor([0, 1]))),
                                     (nll_loss, (_x(2, 3), minidl.tensor([0, 1]))),
                                     (mse_loss, (_x(2), _x(2)))])
def test_error_unknown_reduction(fn, args):
    with pytest.raises(ValueError, match=rf"{fn.__name__}: unknown reduction 'avg' "
                                         r"\(expected 'none', 'mean' or 'sum'\)"):
        fn(*args, reduction="avg")


def test_error_bad_label_smoothing_and_target_dtypes():
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing must be in \[0, 1\], "
                                         r"got 1.5"):
        cross_entropy(_x(2, 3), minidl.tensor([0, 1]), label_smoothing=1.5)
    with pytest.raises(TypeError, match="cross_entropy: expected integer class indices or float "
                                        "probabilities as target, got dtype bool"):
        cross_entropy(_x(2, 3), minidl.tensor([True, False]))
    with pytest.raises(TypeError, match="nll_loss: expected integer class indices as target, "
                                        "got float32"):
        nll_loss(_x(2, 3), _x(2))
    with pytest.raises(TypeError, match="mse_loss: input and target dtypes differ"):
        mse_loss(_x(2), _x(2, dtype=np.float64))
    with pytest.raises(TypeError, match="mse_loss: expected target to be a floating point "
                                        "Tensor, got int64"):
        mse_loss(_x(2), minidl.tensor([1, 2]))
    with pytest.raises(TypeError, match="cross_entropy: label_smoothing must be a number in "
                                        r"\[0, 1\], got str"):
        cross_entropy(_x(2, 3), minidl.tensor([0, 1]), label_smoothing="0.1")
    with pytest.raises(TypeError, match=r"cross_entropy: expected weight to be a float Tensor "
                                        r"of shape \(3,\), got int64"):
        cross_entropy(_x(2, 3), minidl.tensor([0, 1]), weight=minidl.tensor([1, 2, 3]))


def test_error_shapes_are_shape_errors():
    """Shape mismatches raise ShapeError (a RuntimeError and a ValueError, minidl.errors)."""
    with pytest.raises(ShapeError, match=r"mse_loss: input of shape \(4, 3\) and target of "
                                         r"shape \(4, 2\) do not broadcast"):
        mse_loss(_x(4, 3), _x(4, 2))
    with pytest.raises(ShapeError, match=r"cross_entropy: expected logits \(N, C\) or "
                                         r"\(N, C, d1, \.\.\.\) or \(C,\), got a 0-d tensor"):
        cross_entropy(minidl.tensor(np.float32(1.0)), minidl.tensor(0))
    with pytest.raises(ShapeError, match=r"nll_loss: expected log-probabilities"):
        nll_loss(minidl.tensor(np.float32(1.0)), minidl.tensor(0))


def test_error_weight_requiring_grad_with_class_indices():
    w = minidl.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="cross_entropy: the class weights cannot require "
                                           "grad with class-index targets"):
        cross_entropy(_x(2, 3), minidl.tensor([0, 1]), weight=w)
    with minidl.no_grad():
        cross_entropy(_x(2, 3), minidl.tensor([0, 1]), weight=w)  # fine without a graph


# --- devices ----------------------------------------------------------------------------

def test_same_results_on_every_device(device, rng):
    """Each loss on ``device`` (the GPU through CuPy, when present) equals the CPU."""
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    t = np.array([[0, 2], [1, -1], [2, 2], [0, 1]])
    probs = rng.dirichlet(np.ones(3), (4, 2)).transpose(0, 2, 1).astype(np.float32)
    w = np.array([1.0, 2.0, 0.5], np.float32)
    cases = [
        (lambda x, d: cross_entropy(x, minidl.tensor(t, device=d),
                                    weight=minidl.tensor(w, device=d), ignore_index=-1,
                                    label_smoothing=0.1)),
        (lambda x, d: cross_entropy(x, minidl.tensor(probs, device=d), reduction="sum")),
        (lambda x, d: nll_loss(x, minidl.tensor(t, device=d), ignore_index=-1,
                               reduction="none")),
        (lambda x, d: mse_loss(x, minidl.tensor(probs, device=d))),
    ]
    for fn in cases:
        a = minidl.tensor(x, requires_grad=True)
        b = minidl.tensor(x, device=device, requires_grad=True)
        ya, yb = fn(a, "cpu"), fn(b, device)
        assert yb.device == device and yb.dtype == np.float32
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
        np.testing.assert_allclose(yb.cpu().numpy(), ya.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.grad.cpu().numpy(), a.grad.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError, match="cross_entropy: target contains class 3"):
        cross_entropy(minidl.tensor(x, device=device), minidl.tensor(t + 1, device=device))
