"""Higher-order gradients, the engine's side: ``autograd.grad``, ``backward(create_graph=True,
inputs=...)``, ``differentiable_backward`` and ``saved_tensors`` as Tensors, ``gradgradcheck``.

Each op's double backward is tested with its family (tests/test_double_backward_*.py);
the uses (Hessian-vector products, a gradient penalty, Newton's method, MAML) in
tests/test_higher_order_uses.py.
"""
import numpy as np
import pytest
import torch

import minidl
from minidl import Function, autograd

# PyTorch warns that backward(create_graph=True) makes a parameter/gradient cycle; so does
# minidl's (x.grad's graph reaches x), which tests set .grad = None to break.
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")


def pair(values):
    """The same float64 leaf in minidl and in PyTorch."""
    a = np.asarray(values, dtype=np.float64)
    return (minidl.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True))


def close(m, t):
    np.testing.assert_allclose(np.asarray(m.data if isinstance(m, minidl.Tensor) else m),
                               t.detach().numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- autograd.grad


def test_grad_returns_gradients_without_touching_dot_grad():
    x, xt = pair([0.5, -1.0, 2.0])
    (g,) = autograd.grad((x ** 3).sum(), x)
    (gt,) = torch.autograd.grad((xt ** 3).sum(), xt)
    close(g, gt)
    assert x.grad is None
    assert g.grad_fn is None and not g.requires_grad  # create_graph=False: a plain tensor


def test_grad_several_outputs_and_inputs_with_grad_outputs():
    x, xt = pair([[0.5, -1.0], [2.0, 0.3]])
    w, wt = pair([1.5, -0.5])
    v1, v2 = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array(0.7)
    outs = [x * w, (x.exp() * w).sum()]
    outs_t = [xt * wt, (xt.exp() * wt).sum()]
    got = autograd.grad(outs, [x, w], [minidl.tensor(v1), minidl.tensor(v2)])
    want = torch.autograd.grad(outs_t, [xt, wt], [torch.tensor(v1), torch.tensor(v2)])
    for g, gt in zip(got, want):
        close(g, gt)


def test_grad_with_respect_to_a_non_leaf_tensor():
    x, xt = pair([0.5, -1.0, 2.0])
    h, ht = x.exp(), xt.exp()
    y, yt = (h * h * x).sum(), (ht * ht * xt).sum()
    close(autograd.grad(y, h, retain_graph=True)[0], torch.autograd.grad(yt, ht, retain_graph=True)[0])
    # the same input twice gets the same gradient twice
    a, b = autograd.grad(y, [x, x])
    at, bt = torch.autograd.grad(yt, [xt, xt])
    close(a, at)
    close(b, bt)


def test_grad_frees_the_graph_unless_retained():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    autograd.grad(y, x)
    with pytest.raises(RuntimeError, match="second time"):
        autograd.grad(y, x)
    y = (x.exp() * x).sum()
    g1 = autograd.grad(y, x, retain_graph=True)[0]
    g2 = autograd.grad(y, x)[0]
    np.testing.assert_array_equal(g1.numpy(), g2.numpy())


def test_grad_unused_input_raises_or_gives_none_or_zeros():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    z = minidl.tensor([3.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"input 1 \(shape \(1,\)\) was not used.*allow_unused"):
        autograd.grad((x * 2).sum(), [x, z])
    assert autograd.grad((x * 2).sum(), [x, z], allow_unused=True)[1] is None
    zero = autograd.grad((x * 2).sum(), [x, z], materialize_grads=True)[1]
    np.testing.assert_array_equal(zero.numpy(), [0.0])


def test_grad_error_messages_name_the_culprit():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    c = minidl.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"output 0 \(shape \(2,\)\) does not require grad"):
        autograd.grad(c * 2, x, minidl.ones(2))
    with pytest.raises(RuntimeError, match=r"input 1 \(shape \(2,\)\) does not require grad"):
        autograd.grad((x * c).sum(), [x, c])
    with pytest.raises(RuntimeError, match="2 grad_outputs for 1 outputs"):
        autograd.grad(x * 2, x, [minidl.ones(2), minidl.ones(2)])
    with pytest.raises(RuntimeError, match="one-element outputs"):
        autograd.grad(x * 2, x)


# ----------------------------------------------------------------------------- create_graph


def test_second_and_third_derivatives_match_pytorch():
    x, xt = pair([0.5, -1.0, 2.0])
    y, yt = (x ** 4 / (x * x + 1)).sum(), (xt ** 4 / (xt * xt + 1)).sum()
    (g,) = autograd.grad(y, x, create_graph=True)
    (gt,) = torch.autograd.grad(yt, xt, create_graph=True)
    close(g, gt)
    assert g.requires_grad and g.grad_fn is not None
    (h,) = autograd.grad(g.sum(), x, create_graph=True)
    (ht,) = torch.autograd.grad(gt.sum(), xt, create_graph=True)
    close(h, ht)
    (k,) = autograd.grad(h.sum(), x)
    (kt,) = torch.autograd.grad(ht.sum(), xt)
    close(k, kt)


def test_backward_create_graph_leaves_a_differentiable_grad():
    x, xt = pair([0.5, -1.0, 2.0])
    (x ** 3).sum().backward(create_graph=True)
    (xt ** 3).sum().backward(create_graph=True)
    close(x.grad, xt.grad)
    assert x.grad.grad_fn is not None          # 3 x^2, still in the graph
    penalty, penalty_t = (x.grad ** 2).sum(), (xt.grad ** 2).sum()
    x.grad, xt.grad = None, None
    penalty.backward()
    penalty_t.backward()
    close(x.grad, xt.grad)                      # d/dx sum (3x^2)^2 = 36 x^3


def test_backward_create_graph_accumulates_into_an_existing_grad():
    x, xt = pair([0.5, -1.0])
    for a in (x, xt):
        (a * a).sum().backward(create_graph=True)
        (a ** 3).sum().backward(create_graph=True)
    close(x.grad, xt.grad)
    (gx,) = autograd.grad(x.grad.sum(), x)
    (gt,) = torch.autograd.grad(xt.grad.sum(), xt)
    close(gx, gt)                               # 2 + 6x


def test_backward_inputs_accumulates_only_into_those():
    x, xt = pair([0.5, -1.0])
    w, wt = pair([2.0, 3.0])
    (x * w).sum().backward(inputs=[w])
    (xt * wt).sum().backward(inputs=[wt])
    assert x.grad is None and xt.grad is None
    close(w.grad, wt.grad)
    h = x * 2
    (h * w).sum().backward(inputs=h)             # a non-leaf input gets its .grad too
    np.testing.assert_array_equal(h.grad.numpy(), w.numpy())
    with pytest.raises(RuntimeError, match="inputs= was given but is empty"):
        (x * w).sum().backward(inputs=[])


def test_create_graph_retains_the_graph_by_default():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    autograd.grad(y, x, create_graph=True)
    autograd.grad(y, x)  # still there: retain_graph defaults to create_graph


def test_create_graph_under_no_grad_still_records_the_backward():
    x, xt = pair([0.5, 1.5])
    y, yt = (x ** 3).sum(), (xt ** 3).sum()
    with minidl.no_grad():
        (g,) = autograd.grad(y, x, create_graph=True)
    with torch.no_grad():
        (gt,) = torch.autograd.grad(yt, xt, create_graph=True)
    assert g.requires_grad == gt.requires_grad


# ----------------------------------------------------------------------------- custom Functions


class Cube(Function):
    """x ** 3 with its gradient written once, on arrays and on Tensors alike."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return gy * 3 * x * x

    differentiable_backward = backward


class CubeWrongSecond(Cube):
    """Right first derivative, wrong recorded one (x treated as a constant)."""

    @staticmethod
    def differentiable_backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return gy * minidl.tensor(3 * x.numpy() ** 2)


class CubeRawOnly(Cube):
    differentiable_backward = None


def test_custom_function_with_a_shared_formula_has_second_derivatives():
    x, xt = pair([0.5, -1.0, 2.0])
    (g,) = autograd.grad(Cube.apply(x).sum(), x, create_graph=True)
    (h,) = autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.numpy())
    assert minidl.gradgradcheck(Cube.apply, [x])


def test_gradgradcheck_catches_a_wrong_recorded_backward_that_gradcheck_passes():
    x = minidl.tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    assert minidl.gradcheck(CubeWrongSecond.apply, [x])
    with pytest.raises(minidl.GradcheckError, match="gradients of"):
        minidl.gradgradcheck(CubeWrongSecond.apply, [x])
    assert not minidl.gradgradcheck(CubeWrongSecond.apply, [x], raise_exception=False)


def test_a_function_without_recorded_backward_refuses_create_graph_by_name():
    x = minidl.tensor([0.5, 2.0], requires_grad=True)
    y = CubeRawOnly.apply(x).sum()
    with pytest.raises(RuntimeError, match="CubeRawOnly: this op has no higher-order gradient"):
        autograd.grad(y, x, create_graph=True)
    np.testing.assert_allclose(autograd.grad(y, x)[0].numpy(), 3 * x.numpy() ** 2)


class Probe(Function):
    """Saves its input, its output and a computed array; records what the recorded backward sees."""

    seen = None

    @staticmethod
    def forward(ctx, x):
        y = x * 2
        ctx.save_for_backward(x, y, x > 0)
        return y

    @staticmethod
    def backward(ctx, gy):
        return gy * 2

    @staticmethod
    def differentiable_backward(ctx, gy):
        Probe.seen = ctx.saved_tensors
        return gy * 2


def test_saved_tensors_are_tensors_in_a_recorded_backward():
    x = minidl.tensor([0.5, -1.0], requires_grad=True)
    y = Probe.apply(x)
    autograd.grad(y.sum(), x, create_graph=True)
    sx, sy, mask = Probe.seen
    assert sx is x                                   # the input itself
    assert sy.grad_fn is y.grad_fn and sy.requires_grad  # the output, attached to its node
    assert mask.grad_fn is None and not mask.requires_grad  # a computed constant
    Probe.seen = None
    autograd.grad(Probe.apply(x).sum(), x)
    assert Probe.seen is None                        # the raw backward ran


def test_in_place_change_is_caught_under_create_graph_too():
    x = minidl.tensor([0.5, -1.0], requires_grad=True)
    c = minidl.tensor([2.0, 3.0])
    y = (x * c).sum()
    c.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        autograd.grad(y, x, create_graph=True)


def test_gradgradcheck_fast_mode_at_a_realistic_size():
    x = minidl.tensor(np.random.default_rng(0).standard_normal((40, 30)), requires_grad=True)
    assert minidl.gradgradcheck(Cube.apply, [x], fast_mode=True)
    assert not minidl.gradgradcheck(CubeWrongSecond.apply, [x], fast_mode=True,
                                    raise_exception=False)
