"""Second derivatives (``create_graph=True``) of the tensor ops against PyTorch's double backward.

Every case runs ``check_double_backward``: first and second derivatives in float64 against
PyTorch (through the inputs and through the upstream gradient), then minidl's own
``gradgradcheck`` (central differences). Covered: the elementwise ops, the reductions,
the shape ops (indexing, setitem, fill, copy, cat, pad, clone), matmul and linear, casts,
and a small composite. Inputs stay away from kinks and ties (``rand_away_from``,
``distinct``), where finite differences are meaningless; sizes stay small because
gradgradcheck perturbs every element of the inputs and of the upstream gradients.
"""
import numpy as np
import pytest
import torch

import minidl
from helpers import TOL, check_double_backward, check_op, distinct, rand_away_from

# --- elementwise ----------------------------------------------------------------------

BROADCAST_PAIRS = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1, 3), (4, 1)), ((), (2, 3))]


@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_binary_arithmetic(name, sa, sb, rng, device):
    a = rng.standard_normal(sa)
    b = rng.uniform(0.5, 2.0, sb) * rng.choice([-1, 1], sb)  # away from 0 for div
    check_double_backward(getattr(minidl, name), getattr(torch, name), [a, b], device=device)


@pytest.mark.parametrize("sa,sb", [((2, 3), (2, 3)), ((2, 3), (3,)), ((3,), (2, 1))])
def test_pow_tensor_tensor(sa, sb, rng, device):
    a = rng.uniform(0.5, 2.0, sa)  # a positive base: log a is defined
    b = rng.uniform(-1.5, 2.5, sb)
    check_double_backward(lambda x, y: x ** y, lambda x, y: x ** y, [a, b], device=device)


@pytest.mark.parametrize("p", [2, 3, -1, 0.5, -1.5, 2.5])
def test_pow_scalar(p, rng, device):
    a = rng.uniform(0.5, 2.0, (2, 3))
    check_double_backward(lambda x: x ** p, lambda x: x ** p, [a], device=device)


@pytest.mark.parametrize("name", ["neg", "exp", "log", "sqrt"])
def test_unary(name, rng, device):
    x = rng.uniform(0.5, 2.0, (2, 3)) if name in ("log", "sqrt") else rng.standard_normal((2, 3))
    check_double_backward(getattr(minidl, name), getattr(torch, name), [x], device=device)


def test_abs(rng, device):
    # |x| alone has a zero second derivative, which PyTorch returns as a ZeroTensor that
    # the helpers cannot read; |x| * x has 2 sign(x), through abs's recorded backward.
    x = rand_away_from(rng, (2, 3), avoid=(0.0,), margin=0.1)  # abs has a kink at 0
    check_double_backward(lambda t: t.abs() * t, lambda t: t.abs() * t, [x], device=device)


@pytest.mark.parametrize("lo,hi", [(-0.5, None), (None, 0.5), (-0.5, 0.5)])
def test_clamp(lo, hi, rng, device):
    x = rand_away_from(rng, (3, 4), avoid=(-0.5, 0.5), margin=0.1)
    check_double_backward(lambda t: minidl.clamp(t, lo, hi), lambda t: torch.clamp(t, lo, hi),
                          [x], device=device)


@pytest.mark.parametrize("sa,sb", [((2, 3), (2, 3)), ((2, 3), (3,))])
@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum(name, sa, sb, rng, device):
    both = distinct(rng, (int(np.prod(sa)) + int(np.prod(sb)),), spacing=0.1)  # no ties
    a, b = both[:int(np.prod(sa))].reshape(sa), both[int(np.prod(sa)):].reshape(sb)
    check_double_backward(getattr(minidl, name), getattr(torch, name), [a, b], device=device)


@pytest.mark.parametrize("sc,sa,sb", [((2, 3), (2, 3), (2, 3)), ((2, 3), (3,), (2, 1))])
def test_where(sc, sa, sb, rng, device):
    cond = rng.random(sc) > 0.5
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    # multiplied by a and b so the second derivative is not zero everywhere
    check_double_backward(lambda c, x, y: minidl.where(c, x * x, y * x.sum()),
                          lambda c, x, y: torch.where(c, x * x, y * x.sum()),
                          [cond, a, b], device=device)


# --- reductions -----------------------------------------------------------------------

DIMS = [(None, False), (0, False), (1, True), (-1, False), ((0, 2), True), ((0, 2), False)]


@pytest.mark.parametrize("dim,keepdim", DIMS)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_sum_mean(name, dim, keepdim, rng, device):
    x = rng.standard_normal((2, 3, 2))
    kw = {} if dim is None else dict(dim=dim, keepdim=keepdim)
    # squared so the second derivative is not zero (both ops are linear)
    check_double_backward(lambda t: getattr(t * t, name)(**kw),
                          lambda t: getattr(t * t, name)(**kw), [x], device=device)


@pytest.mark.parametrize("dim,keepdim", DIMS)
@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("name", ["var", "std"])
def test_var_std(name, correction, dim, keepdim, rng, device):
    x = rng.standard_normal((2, 3, 2))
    kw = dict(dim=dim, keepdim=keepdim, correction=correction)
    check_double_backward(lambda t: getattr(t, name)(**kw), lambda t: getattr(t, name)(**kw),
                          [x], device=device)


def test_var_unbiased_keyword(rng, device):
    x = rng.standard_normal((3, 4))
    check_double_backward(lambda t: t.var(1, unbiased=False), lambda t: t.var(1, unbiased=False),
                          [x], device=device)


@pytest.mark.parametrize("name", ["max", "min", "amax"])
def test_max_min_all(name, rng, device):
    x = distinct(rng, (3, 4))
    check_double_backward(lambda t: getattr(t * t, name)(), lambda t: getattr(t * t, name)(),
                          [x], device=device)


def test_max_all_ties_share_gradient_like_pytorch(device):
    x = np.array([[1.0, 3.0], [3.0, 2.0]])
    # finite differences break the tie, so only the comparison with PyTorch
    check_double_backward(lambda t: (t * t).max(), lambda t: (t * t).max(), [x],
                          gradgradcheck=False, device=device)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_dim(name, dim, keepdim, rng, device):
    x = distinct(rng, (2, 3, 4))
    check_double_backward(lambda t: getattr(t * t, name)(dim=dim, keepdim=keepdim),
                          lambda t: getattr(t * t, name)(dim=dim, keepdim=keepdim),
                          [x], device=device)


def test_amax_dim(rng, device):
    x = distinct(rng, (3, 4))
    check_double_backward(lambda t: (t * t).amax(1), lambda t: (t * t).amax(1), [x],
                          device=device)


# --- shape ops ------------------------------------------------------------------------
# Every shape op is linear, so each case multiplies by an input once more: the second
# derivative then goes through the op's recorded backward (not only through its linearity
# in the upstream gradient).

SHAPE_OPS = {
    "reshape": lambda t: t.reshape(4, 3),
    "reshape_-1": lambda t: t.reshape(-1),
    "view": lambda t: t.view(3, 2, 2),
    "flatten": lambda t: t.flatten(),
    "squeeze_unsqueeze": lambda t: t.unsqueeze(1).unsqueeze(-1).squeeze(1),
    "permute": lambda t: t.reshape(2, 3, 2).permute(2, 0, 1),
    "transpose": lambda t: t.reshape(2, 3, 2).transpose(0, 2),
    "T": lambda t: t.T,
    "t": lambda t: t.t(),
    "expand": lambda t: t[:1].expand(2, 4, 3),
    "expand_-1": lambda t: t.reshape(3, 1, 4).expand(-1, 2, -1),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_op(name, rng, device):
    f = SHAPE_OPS[name]
    check_double_backward(lambda t: f(t) * f(t), lambda t: f(t) * f(t),
                          [rng.standard_normal((4, 3))], device=device)


KEYS = {
    "int": 1,
    "negative_int": -1,
    "slice": slice(1, 3),
    "step": (slice(None), slice(None, None, 2)),
    "none_ellipsis": (None, Ellipsis, 0),
    "int_slice": (2, slice(0, 2)),
    "int_array_repeats": np.array([0, 2, 0, 3]),
    "two_arrays": (np.array([0, 1, 1]), np.array([2, 0, 2])),
    "slice_array": (slice(None), np.array([1, 1, 0])),
    "bool_mask": np.array([True, False, True, True]),
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_getitem(name, rng, device):
    key = KEYS[name]

    def md_key():  # index arrays as tensors on the device, as a user writes them
        if isinstance(key, tuple):
            return tuple(minidl.tensor(k, device=device) if isinstance(k, np.ndarray) else k
                         for k in key)
        return minidl.tensor(key, device=device) if isinstance(key, np.ndarray) else key

    def t_key():
        if isinstance(key, tuple):
            return tuple(torch.tensor(k) if isinstance(k, np.ndarray) else k for k in key)
        return torch.tensor(key) if isinstance(key, np.ndarray) else key

    x = rng.standard_normal((4, 3))
    check_double_backward(lambda t: t[md_key()] * t[md_key()], lambda t: t[t_key()] * t[t_key()],
                          [x], device=device)


@pytest.mark.parametrize("name", ["int_slice", "int_array_repeats", "bool_mask"])
def test_getitem_third_order(name, rng, device):
    # getitem's recorded backward is IndexAddFunction (a scatter into zeros); differentiating
    # twice a function that contains it runs IndexAdd's own recorded backward (getitem)
    key = KEYS[name]
    md_key = minidl.tensor(key, device=device) if isinstance(key, np.ndarray) else key
    t_key = torch.tensor(key) if isinstance(key, np.ndarray) else key

    def first_derivative(grad_fn, k):
        def f(t, w):
            (g,) = grad_fn((t[k] ** 3 * w).sum(), t, create_graph=True)
            return g * t
        return f

    x = rng.standard_normal((4, 3))
    w = rng.standard_normal(np.zeros((4, 3))[key].shape)
    check_double_backward(first_derivative(minidl.autograd.grad, md_key),
                          first_derivative(torch.autograd.grad, t_key), [x, w],
                          device=device)


@pytest.mark.parametrize("key,v_shape", [((1,), (3,)), ((slice(0, 2),), (1, 3)),
                                         ((slice(None), 1), ()),
                                         ((np.array([0, 2]),), (2, 3))])
def test_setitem(key, v_shape, rng, device):
    x, v = rng.standard_normal((3, 3)), rng.standard_normal(v_shape)

    def md(t, w):
        y = t.clone()
        y[tuple(minidl.tensor(k, device=device) if isinstance(k, np.ndarray) else k
                for k in key)] = w * w
        return y * t

    def ref(t, w):
        y = t.clone()
        y[tuple(torch.tensor(k) if isinstance(k, np.ndarray) else k for k in key)] = w * w
        return y * t

    check_double_backward(md, ref, [x, v], device=device)


def test_fill(rng, device):
    def f(t):
        y = t.clone()
        y.fill_(1.5)
        return y * t * t
    check_double_backward(f, f, [rng.standard_normal((2, 3))], device=device)


def test_zero(rng, device):
    def f(t):
        y = (t * t).clone()
        y.zero_()
        return y + t * t
    check_double_backward(f, f, [rng.standard_normal((2, 3))], device=device)


@pytest.mark.parametrize("src_shape", [(2, 3), (3,), (1, 1)])
def test_copy(src_shape, rng, device):
    def f(t, s):
        y = t.clone()
        y.copy_(s * s)
        return y * t
    x, s = rng.standard_normal((2, 3)), rng.standard_normal(src_shape)
    check_double_backward(f, f, [x, s], device=device)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim, rng, device):
    shapes = {0: [(1, 3), (2, 3), (1, 3)], 1: [(2, 1), (2, 3), (2, 2)],
              -1: [(2, 1), (2, 2), (2, 1)]}[dim]
    arrays = [rng.standard_normal(s) for s in shapes]
    check_double_backward(lambda *ts: minidl.cat([t * t for t in ts], dim),
                          lambda *ts: torch.cat([t * t for t in ts], dim), arrays,
                          device=device)


def test_cat_one_input_without_grad(rng, device):
    arrays = [rng.standard_normal((2, 2)), rng.standard_normal((1, 2))]
    check_double_backward(lambda a, b: minidl.cat([a * a, b], 0),
                          lambda a, b: torch.cat([a * a, b], 0), arrays, grad=[0],
                          device=device)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_stack(dim, rng, device):
    arrays = [rng.standard_normal((2, 3)) for _ in range(2)]
    check_double_backward(lambda a, b: minidl.stack([a * b, b], dim),
                          lambda a, b: torch.stack([a * b, b], dim), arrays, device=device)


@pytest.mark.parametrize("widths,value", [((1, 2), 0.0), ((1, 0, 0, 2), 0.5),
                                          ((0, 1, 2, 1, 1, 0), -1.0)])
def test_pad(widths, value, rng, device):
    x = rng.standard_normal((2, 2, 3))
    check_double_backward(lambda t: minidl.nn.functional.pad(t * t, widths, value=value),
                          lambda t: torch.nn.functional.pad(t * t, widths, value=value),
                          [x], device=device)


# --- clone ------------------------------------------------------------------------------

def test_clone_first_order(rng, device):
    check_op(lambda t: t.clone() * 2, lambda t: t.clone() * 2, [rng.standard_normal((2, 3))],
             device=device)
    check_op(lambda t: minidl.clone(t, memory_format=None),
             lambda t: torch.clone(t, memory_format=torch.preserve_format),
             [rng.standard_normal((3,))], device=device)


def test_clone_double_backward(rng, device):
    check_double_backward(lambda t: t.clone() * t, lambda t: t.clone() * t,
                          [rng.standard_normal((2, 3))], device=device)


def test_clone_owns_its_memory_and_allows_in_place(device):
    x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True, device=device)
    y = x.clone()
    assert y.grad_fn is not None and y.data is not x.data
    y.mul_(2)  # refused on x itself (a leaf that requires grad), fine on its clone
    assert x.tolist() == [1.0, 2.0, 3.0] and y.tolist() == [2.0, 4.0, 6.0]
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]
    z = minidl.tensor([1.0], device=device)
    assert not z.clone().requires_grad  # outside a graph it is a plain copy


# --- matrix products ---------------------------------------------------------------------

MATMUL_SHAPES = [((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
                 ((2, 3, 4), (2, 4, 2)), ((2, 3, 4), (4, 2)), ((3, 4), (2, 4, 2)),
                 ((2, 1, 2, 3), (3, 3, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul(sa, sb, rng, device):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    check_double_backward(lambda x, y: x @ y, lambda x, y: x @ y, [a, b], device=device)


def test_matmul_one_operand_without_grad(rng, device):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    check_double_backward(lambda x, y: (x * x) @ y, lambda x, y: (x * x) @ y, [a, b], grad=[0],
                          device=device)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape", [(4,), (3, 4), (2, 3, 4)])
def test_linear(x_shape, bias, rng, device):
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((2, 4))]
    arrays.append(rng.standard_normal((2,)) if bias else None)
    check_double_backward(minidl.nn.functional.linear, torch.nn.functional.linear, arrays,
                          device=device)


# --- casts ------------------------------------------------------------------------------

def test_double_of_float64_is_identity(rng, device):
    x = minidl.tensor(rng.standard_normal(3), device=device)
    assert x.double() is x
    check_double_backward(lambda t: t.double() ** 3, lambda t: t.double() ** 3,
                          [rng.standard_normal((2, 3))], device=device)


def test_float32_float64_casts_differentiated_twice(rng, device):
    # float64 input -> float32 inside the graph -> float64 out: float32's precision
    def f(t):
        return (t.float() ** 3).double() * t
    x = rng.uniform(0.5, 1.5, (2, 3))
    check_double_backward(f, f, [x], tol=TOL[np.float32],
                          gradgradcheck_tol=dict(eps=1e-3, atol=1e-3, rtol=1e-2), device=device)


# --- composite --------------------------------------------------------------------------

def test_composite_matmul_exp_sum(rng, device):
    x, w = rng.standard_normal((3, 4)) * 0.5, rng.standard_normal((4, 2)) * 0.5
    check_double_backward(lambda a, b: (a @ b).exp().sum(dim=1),
                          lambda a, b: (a @ b).exp().sum(dim=1), [x, w], device=device)


def test_composite_matmul_tanh_sum(rng, device):
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    check_double_backward(lambda a, b: (a @ b).tanh().sum(dim=1),
                          lambda a, b: (a @ b).tanh().sum(dim=1), [x, w], device=device)


def test_composite_gradient_penalty(rng, device):
    # a WGAN-GP style penalty: the norm of d(critic)/d(input), minimised over the weights
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def penalty(md, a, b):
        out = (md.matmul(a, b) ** 2).mean(dim=1).sum()
        (g,) = (minidl.autograd.grad if md is minidl else torch.autograd.grad)(
            out, a, create_graph=True)
        return ((g * g).sum(dim=1) - 1.0) ** 2

    check_double_backward(lambda a, b: penalty(minidl, a, b), lambda a, b: penalty(torch, a, b),
                          [x, w], gradgradcheck=False, device=device)


def test_without_create_graph_the_raw_backward_gives_the_same_gradients(rng, device):
    # one graph through every op family here: the raw-array path (create_graph=False)
    # and the recorded one agree, and only the recorded one leaves a graph on .grad
    x_np, w_np = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))

    def loss(x, w):
        h = minidl.nn.functional.linear(x.clone()[:, 1:].expand(2, 3, 3).reshape(6, 3),
                                        w[:, :3]).permute(1, 0)
        h = minidl.cat([h, minidl.nn.functional.pad(h, (1, 0))], 1)
        return h.var(1).sum() + h.max(1).values.mean() + (h @ h.T).max()

    grads = []
    for create_graph in (False, True):
        x = minidl.tensor(x_np, requires_grad=True, device=device)
        w = minidl.tensor(w_np, requires_grad=True, device=device)
        loss(x, w).backward(create_graph=create_graph)
        assert (x.grad.grad_fn is not None) == create_graph
        grads.append((x.grad.tolist(), w.grad.tolist()))
    for raw, recorded in zip(*grads):
        np.testing.assert_allclose(raw, recorded, rtol=1e-12, atol=1e-12)


# --- coverage ---------------------------------------------------------------------------

def _all_functions():
    found, stack = [], list(minidl.Function.__subclasses__())
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return [c for c in found
            if c.__module__.startswith("minidl.ops.") or c.__module__ == "minidl.autograd"]


def test_functions_of_this_family_have_a_recorded_backward():
    mine = ("minidl.ops.elementwise", "minidl.ops.reduce", "minidl.ops.shape",
            "minidl.ops.linalg", "minidl.autograd")
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in _all_functions()
                     if c.__module__ in mine and c.differentiable_backward is None)
    assert not missing, f"no differentiable_backward: {missing}"


def test_every_function_has_a_recorded_backward():
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in _all_functions()
                     if c.differentiable_backward is None)
    assert not missing, f"{len(missing)} Functions have no differentiable_backward: {missing}"
