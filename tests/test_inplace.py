"""In-place safety (issue 12, section 1): version counters, the saved-tensor check, the
in-place ops themselves (values against PyTorch), and ``__setitem__``'s gradients."""
import numpy as np
import pytest
import torch

import minidl
from minidl import nn

F64 = np.float64


def T(values, requires_grad=False):
    return minidl.tensor(np.asarray(values, F64), requires_grad=requires_grad)


def _version_error(match_op):
    return pytest.raises(RuntimeError, match=rf"^{match_op}: one of the tensors needed for its "
                                             r"gradient, of shape \(3,\), has been modified by "
                                             r"an in-place operation: it is at version 1, "
                                             r"expected version 0\. Hint")


# ------------------------------------------------------------------ the issue's examples

def test_issue_example_zero_of_saved_operand_raises():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    x = minidl.tensor([4., 5., 6.])
    y = (w * x).sum()
    x.zero_()
    with _version_error("Mul"):
        y.backward()


def test_issue_example_copy_under_no_grad_raises():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    y = (w * w).sum()
    with minidl.no_grad():
        w.copy_(minidl.zeros(3))
    with _version_error("Mul"):
        y.backward()


def test_fill_of_saved_operand_raises():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    x = minidl.tensor([4., 5., 6.])
    y = (w * x).sum()
    x.fill_(2.0)
    with _version_error("Mul"):
        y.backward()


@pytest.mark.parametrize("inside_no_grad", [False, True])
@pytest.mark.parametrize("op", ["zero_", "fill_"])
def test_change_of_tanh_output_raises(op, inside_no_grad):
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    h = w.tanh()
    y = h.sum()
    args = () if op == "zero_" else (0.5,)
    if inside_no_grad:
        with minidl.no_grad():
            getattr(h, op)(*args)
    else:
        getattr(h, op)(*args)
    with _version_error("Tanh"):
        y.backward()


def test_change_of_unsaved_tensor_is_fine():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    x = minidl.tensor([4., 5., 6.])
    y = (w + x).sum()          # add saves nothing
    x.zero_()
    y.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1, 1, 1])


def test_backward_before_the_change_is_fine_and_correct():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    x = minidl.tensor([4., 5., 6.])
    (w * x).sum().backward()
    x.zero_()
    np.testing.assert_array_equal(w.grad.numpy(), [4, 5, 6])


# ------------------------------------------------------------------ versions and views

def test_views_share_the_version_counter():
    x = minidl.zeros(2, 3)
    for make in (lambda t: t.view(-1), lambda t: t.reshape(3, 2), lambda t: t.transpose(0, 1),
                 lambda t: t.permute(1, 0), lambda t: t[0], lambda t: t[:, 1:],
                 lambda t: t.unsqueeze(0), lambda t: t.flatten(), lambda t: t.T,
                 lambda t: t.detach(), lambda t: t.unsqueeze(0).squeeze(0)):
        before = x._version
        v = make(x)
        assert v._version == before
        v.zero_()
        assert x._version == before + 1 and v._version == x._version
    x.view(-1).zero_()
    x.add_(1)
    assert x._version == v._version


def test_advanced_index_is_a_copy_with_its_own_version():
    x = minidl.zeros(4)
    c = x[minidl.tensor([0, 2])]
    c.zero_()
    assert x._version == 0


def test_view_change_is_caught_through_the_base():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    x = minidl.tensor([4., 5., 6.])
    y = (w * x).sum()
    x.view(3)[1:].mul_(2)
    with pytest.raises(RuntimeError, match="Mul: .*version 1, expected version 0"):
        y.backward()


# ------------------------------------------------------------------ the in-place ops

A = np.array([[1.5, -2.0, 0.25], [3.0, -0.5, 4.0]])
B = np.array([0.5, 2.0, -4.0])

CASES = [
    ("add_", (B,), {}), ("add_", (2.5,), {}), ("add_", (B,), {"alpha": -3.0}),
    ("sub_", (B,), {}), ("sub_", (1.0,), {"alpha": 2.0}),
    ("mul_", (B,), {}), ("mul_", (-2.0,), {}),
    ("div_", (B,), {}), ("div_", (4.0,), {}),
    ("clamp_", (), {"min": -1.0, "max": 2.0}), ("clamp_", (), {"min": 0.0}),
    ("clamp_", (), {"max": 0.0}),
    ("fill_", (7.0,), {}), ("zero_", (), {}), ("copy_", (B,), {}),
]


@pytest.mark.parametrize("name,args,kwargs", CASES)
def test_inplace_ops_match_torch_and_bump(name, args, kwargs):
    x = minidl.tensor(A.copy())
    alias = x
    out = getattr(x, name)(*[minidl.tensor(a) if isinstance(a, np.ndarray) else a
                             for a in args], **kwargs)
    ref = torch.tensor(A.copy())
    getattr(ref, name)(*[torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args],
                       **kwargs)
    assert out is x and x._version == 1
    np.testing.assert_allclose(alias.numpy(), ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name,args,check", [
    ("normal_", (2.0, 0.5), lambda a: abs(a.mean() - 2.0) < 0.1 and abs(a.std() - 0.5) < 0.1),
    ("uniform_", (-3.0, -1.0), lambda a: a.min() >= -3.0 and a.max() <= -1.0),
])
def test_random_fills(name, args, check):
    x = minidl.zeros(4000, dtype=minidl.float64)
    assert getattr(x, name)(*args) is x and x._version == 1
    assert check(x.numpy())


@pytest.mark.parametrize("op,torch_op", [("+=", "add"), ("-=", "sub"), ("*=", "mul"),
                                         ("/=", "div")])
def test_augmented_assignment_is_in_place(op, torch_op):
    a = minidl.tensor(A.copy())
    other_ref = a
    view = a.view(-1)
    b = minidl.tensor(B)
    exec(f"a {op} b")
    assert a is other_ref and a._version == 1 and view._version == 1
    expected = getattr(torch, torch_op)(torch.tensor(A), torch.tensor(B)).numpy()
    np.testing.assert_allclose(other_ref.numpy(), expected)
    np.testing.assert_allclose(view.numpy(), expected.reshape(-1))


def test_inplace_broadcast_to_larger_shape_is_refused():
    with pytest.raises(minidl.ShapeError if hasattr(minidl, "ShapeError") else ValueError,
                       match="^add_: "):
        minidl.zeros(3).add_(minidl.zeros(2, 3))


# ------------------------------------------------------------------ leaf refusal, no_grad

@pytest.mark.parametrize("call", [lambda w: w.add_(1), lambda w: w.zero_(),
                                  lambda w: w.fill_(2), lambda w: w.mul_(2),
                                  lambda w: w.copy_(minidl.zeros(3)),
                                  lambda w: w.normal_(), lambda w: w.clamp_(0, 1)])
def test_leaf_that_requires_grad_is_refused(call):
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"^[a-z_]+: a leaf Variable that requires grad is "
                                           r"being used in an in-place operation\."):
        call(w)
    assert w._version == 0
    with minidl.no_grad():
        call(w)
    assert w._version == 1


def test_leaf_refusal_for_setitem_and_iadd():
    w = minidl.tensor([1., 2., 3.], requires_grad=True)
    with pytest.raises(RuntimeError, match="^__setitem__: a leaf Variable"):
        w[0] = 5.0
    with pytest.raises(RuntimeError, match="^add_: a leaf Variable"):
        w += 1


# ------------------------------------------------------------------ optimisers, state dicts

@pytest.mark.parametrize("make", [lambda p: minidl.optim.SGD(p, lr=0.1),
                                  lambda p: minidl.optim.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: minidl.optim.Adam(p, lr=0.1),
                                  lambda p: minidl.optim.AdamW(p, lr=0.1)])
def test_optimiser_step_bumps_and_invalidates_an_older_graph(make):
    layer = nn.Linear(3, 1)
    opt = make(layer.parameters())
    x = minidl.randn(4, 3)
    layer(x).sum().backward()
    y = layer(x).sum()              # a graph recorded before the step saved the weight
    v = layer.weight._version
    opt.step()
    assert layer.weight._version == v + 1
    with pytest.raises(RuntimeError, match="has been modified by an in-place operation"):
        y.backward()


def test_load_state_dict_bumps_and_invalidates_an_older_graph():
    layer = nn.Linear(3, 2)
    x = minidl.randn(4, 3)
    y = layer(x).sum()
    v = layer.weight._version
    layer.load_state_dict(nn.Linear(3, 2).state_dict())
    assert layer.weight._version == v + 1
    with pytest.raises(RuntimeError, match="has been modified by an in-place operation"):
        y.backward()


def test_init_fills_bump_versions():
    w = nn.Linear(3, 2).weight
    v = w._version
    nn.init.constant_(w, 0.5)
    nn.init.normal_(w)
    nn.init.xavier_uniform_(w)
    assert w._version >= v + 3


# ------------------------------------------------------------------ differentiable in place

def _both(x_np, v_np, key_m, key_t, v_requires_grad=True):
    x = T(x_np, True)
    v = T(v_np, v_requires_grad)
    y = x * 2.0
    y[key_m] = v
    (y * T(np.arange(y.numel(), dtype=F64).reshape(y.shape))).sum().backward()
    xt = torch.tensor(x_np, requires_grad=True)
    vt = torch.tensor(v_np, requires_grad=v_requires_grad)
    yt = xt * 2.0
    yt[key_t] = vt
    (yt * torch.arange(yt.numel(), dtype=torch.float64).reshape(yt.shape)).sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy())
    if v_requires_grad:
        np.testing.assert_allclose(v.grad.numpy(), vt.grad.numpy())
    return y


X = np.arange(12, dtype=F64).reshape(3, 4) / 7


@pytest.mark.parametrize("key_m,key_t,v", [
    (0, 0, np.full(4, -1.0)),                                      # a row
    ((slice(None), slice(1, 3)), (slice(None), slice(1, 3)), np.array([[5.0, 6.0]])),  # bcast
    ((1, 2), (1, 2), np.array(9.0)),                               # an element, 0-d v
    (lambda: minidl.tensor([0, 2]), lambda: torch.tensor([0, 2]), np.ones((2, 4))),
    (lambda: (minidl.tensor([0, 2]), minidl.tensor([1, 3])),
     lambda: (torch.tensor([0, 2]), torch.tensor([1, 3])), np.array([3.0, 4.0])),
    (lambda: minidl.tensor(X > 0.8), lambda: torch.tensor(X > 0.8), np.array(-2.0)),
    ((Ellipsis, -1), (Ellipsis, -1), np.array([1.0, 2.0, 3.0])),
])
def test_setitem_values_and_gradients_match_torch(key_m, key_t, v):
    key_m = key_m() if callable(key_m) else key_m
    key_t = key_t() if callable(key_t) else key_t
    _both(X, v, key_m, key_t)


def test_setitem_with_a_plain_value_on_a_graph_tensor():
    y = _both(X, np.array(0.0), (slice(0, 2), 1), (slice(0, 2), 1), v_requires_grad=False)
    assert y._version == 1


def test_setitem_on_a_plain_tensor_with_a_value_that_requires_grad():
    v = T([1.0, 2.0], True)
    z = minidl.zeros(4, dtype=minidl.float64)
    z[1:3] = v
    (z * T([1.0, 2.0, 3.0, 4.0])).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), [2.0, 3.0])


def test_setitem_without_grad_writes_in_place():
    x = minidl.zeros(2, 3)
    alias = x.view(-1)
    x[:, 1] = minidl.tensor([1.0, 2.0])
    x[0] = 7
    np.testing.assert_array_equal(alias.numpy(), [7, 7, 7, 0, 2, 0])
    assert x._version == 2


@pytest.mark.parametrize("name,args", [("add_", (np.array([1.0, -2.0, 3.0]),)),
                                       ("sub_", (np.array([1.0, -2.0, 3.0]),)),
                                       ("mul_", (np.array([1.0, -2.0, 3.0]),)),
                                       ("div_", (np.array([1.0, -2.0, 3.0]),)),
                                       ("clamp_", (-0.5, 0.6)), ("fill_", (2.0,)),
                                       ("zero_", ()), ("copy_", (np.array([1.0, 2.0, 3.0]),))])
def test_inplace_ops_in_a_graph_are_differentiable_like_torch(name, args):
    x_np = np.array([[0.3, -0.7, 1.2], [0.9, 0.1, -1.5]])
    w = T(x_np, True)
    others = [T(a, True) if isinstance(a, np.ndarray) else a for a in args]
    y = w * 1.5
    getattr(y, name)(*others)
    (y * y).sum().backward()
    wt = torch.tensor(x_np, requires_grad=True)
    ot = [torch.tensor(a, requires_grad=True) if isinstance(a, np.ndarray) else a for a in args]
    yt = wt * 1.5
    getattr(yt, name)(*ot)
    (yt * yt).sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy())
    for o, t in zip(others, ot):
        if isinstance(o, minidl.Tensor):
            np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy())


def test_inplace_on_a_view_in_a_graph_is_refused_with_the_op_name():
    w = T([1.0, 2.0, 3.0], True)
    y = w * 2
    with pytest.raises(RuntimeError, match=r"^mul_: in-place change of a view"):
        y[1:].mul_(2)


def test_iadd_in_a_graph_and_the_other_reference():
    w = T([1.0, 2.0, 3.0], True)
    y = w * 2
    ref = y
    y += w
    assert ref is y
    y.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [3.0, 3.0, 3.0])
