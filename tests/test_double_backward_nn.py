"""Second derivatives of the network ops (pooling, batch norm, activations, losses,
dropout) against PyTorch's double backward in float64, and minidl's gradgradcheck.

Each case runs ``check_double_backward``: first derivatives recorded with
``create_graph=True`` and differentiated again, through the inputs (the Hessian part) and
through the upstream gradient (the backward's linearity). Inputs stay away from kinks and
ties (``rand_away_from``, ``distinct``) where the ops are not smooth; the tie cases check
what can be checked there (the recorded gradient equals the raw one, and its derivative
in the upstream gradient is the transpose). Shapes are small: gradgradcheck perturbs every
element of the inputs and of the upstream gradients.

Kernel families with several implementations (pool, batch_norm) run each one, chosen with
``minidl.kernels.use_impl`` and confirmed with ``decisions()``.
"""
import contextlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
import minidl.kernels as K
from helpers import check_double_backward, distinct, rand_away_from, to_host, torch_device
from minidl.ops.activation import gelu, leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from minidl.ops.dropout import dropout, dropout2d
from minidl.ops.loss import cross_entropy, mse_loss, nll_loss
from minidl.ops.norm import batch_norm
from minidl.ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@contextlib.contextmanager
def through(family, impl, device):
    """Run the block with ``family``'s kernels forced to 'reference' or the fast path
    ('fast': numba on the CPU, cuda on the GPU), checking that every dispatched call of
    the family took it."""
    name = impl if impl == "reference" else ("numba" if device == "cpu" else "cuda")
    if name == "numba" and not K.numba_available():
        pytest.skip("numba is not installed")
    with K.use_impl(name, family=family), K.decisions() as log:
        yield
    taken = {i for f, i in log if f == family}
    assert taken == {name}, f"{family} calls took {taken}, expected {name}"


IMPLS = ["reference", "fast"]


# ----------------------------------------------------------------------------- pooling

MAX_CASES = [
    ((1, 2, 5, 7), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 2))),
    ((2, 2, 4, 4), dict(kernel_size=2)),                                 # the 2x2/2 fast path
    ((1, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1)),            # overlapping windows
    ((2, 5, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),   # unbatched
]


def _ids(cases):
    return [f"{s}-{','.join(f'{k}={v}' for k, v in kw.items())}" for s, kw in cases]


@pytest.mark.parametrize("shape,kw", MAX_CASES, ids=_ids(MAX_CASES))
@pytest.mark.parametrize("tie", ["first", "split"])
@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool2d(shape, kw, tie, impl, rng, device):
    x = distinct(rng, shape)
    with through("pool", impl, device):
        check_double_backward(lambda t: max_pool2d(t, **kw, tie=tie),
                              lambda t: F.max_pool2d(t, **kw), [x], device=device)


@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool2d_return_indices(impl, rng, device):
    x = distinct(rng, (1, 2, 5, 6))
    kw = dict(kernel_size=3, stride=2, padding=1, return_indices=True)
    with through("pool", impl, device):
        check_double_backward(lambda t: max_pool2d(t, **kw), lambda t: F.max_pool2d(t, **kw),
                              [x], device=device)


@pytest.mark.parametrize("tie", ["first", "split"])
def test_max_pool2d_ties(tie, rng):
    """With ties the max is not differentiable, so no finite differences: the recorded
    gradient equals the raw one, is constant in x, and its derivative in the upstream
    gradient v is the transpose of v -> gx (<R^T u, w> = <u, R w> for any w)."""
    x = rng.integers(0, 3, (2, 2, 5, 6)).astype(np.float64)   # many equal maxima
    kw = dict(kernel_size=3, stride=2, padding=1)

    def pool(t):
        return max_pool2d(t, **kw, tie=tie)

    v = rng.standard_normal((2, 2, 3, 3))
    xm = minidl.tensor(x, requires_grad=True)
    vm = minidl.tensor(v, requires_grad=True)
    (g,) = minidl.autograd.grad(pool(xm), xm, vm, create_graph=True)
    (g_raw,) = minidl.autograd.grad(pool(xm), xm, minidl.tensor(v))
    np.testing.assert_array_equal(g.numpy(), g_raw.numpy())
    u = rng.standard_normal(x.shape)
    gx, gv = minidl.autograd.grad((g * minidl.tensor(u)).sum(), [xm, vm], allow_unused=True)
    assert gx is None or not np.any(gx.numpy())
    w = rng.standard_normal(v.shape)
    (rw,) = minidl.autograd.grad(pool(xm), xm, minidl.tensor(w))     # R w
    np.testing.assert_allclose(np.sum(gv.numpy() * w), np.sum(u * rw.numpy()), rtol=1e-12)
    if tie == "first":   # PyTorch also takes the first maximum: the same second derivatives
        check_double_backward(pool, lambda t: F.max_pool2d(t, **kw), [x], gradgradcheck=False)


AVG_CASES = [
    ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((2, 1, 5, 7), dict(kernel_size=(2, 3), stride=(2, 1), ceil_mode=True)),
    ((2, 1, 4, 4), dict(kernel_size=2, divisor_override=3)),
    ((2, 5, 5), dict(kernel_size=2, stride=1)),                          # unbatched
]


@pytest.mark.parametrize("shape,kw", AVG_CASES, ids=_ids(AVG_CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_avg_pool2d(shape, kw, impl, rng, device):
    x = rng.standard_normal(shape)
    with through("pool", impl, device):
        check_double_backward(lambda t: avg_pool2d(t, **kw), lambda t: F.avg_pool2d(t, **kw),
                              [x], device=device)


ADAPTIVE_CASES = [((1, 2, 5, 7), (3, 4)), ((2, 2, 3, 4), 1), ((1, 1, 3, 2), (5, 4)),
                  ((2, 5, 6), (2, 4)), ((1, 2, 2, 3), (4, 6))]


@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES, ids=[f"{s}->{o}" for s, o in ADAPTIVE_CASES])
def test_adaptive_avg_pool2d(shape, out, rng, device):
    x = rng.standard_normal(shape)
    check_double_backward(lambda t: adaptive_avg_pool2d(t, out),
                          lambda t: F.adaptive_avg_pool2d(t, out), [x], device=device)


@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES, ids=[f"{s}->{o}" for s, o in ADAPTIVE_CASES])
@pytest.mark.parametrize("return_indices", [False, True])
def test_adaptive_max_pool2d(shape, out, return_indices, rng, device):
    x = distinct(rng, shape)
    check_double_backward(lambda t: adaptive_max_pool2d(t, out, return_indices),
                          lambda t: F.adaptive_max_pool2d(t, out, return_indices), [x],
                          device=device)


# ----------------------------------------------------------------------------- batch norm

BN_SHAPES = [(4, 3), (3, 2, 4), (2, 3, 2, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("impl", IMPLS)
def test_batch_norm(shape, training, affine, impl, rng, device):
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    w, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)

    def md(x, w=None, b=None):
        stats = [None if s is None else minidl.tensor(s, device=device)
                 for s in (None if training else rm, None if training else rv)]
        return batch_norm(x, *stats, w, b, training=training, eps=1e-3)

    def pt(x, w=None, b=None):
        stats = [None if s is None else torch.tensor(s, device=x.device)
                 for s in (None if training else rm, None if training else rv)]
        return F.batch_norm(x, *stats, w, b, training=training, eps=1e-3)

    with through("batch_norm", impl, device):
        check_double_backward(md, pt, [x, w, b] if affine else [x], device=device)


@pytest.mark.parametrize("grad", [(0,), (1, 2), (0, 2)], ids=str)
def test_batch_norm_some_inputs(grad, rng):
    """needs_input_grad honoured: only some of x, weight, bias differentiated."""
    x = rng.standard_normal((3, 2, 2, 2))
    w, b = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    check_double_backward(lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
                          lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                          [x, w, b], grad=grad)


def test_batch_norm_running_stats_updated_once(rng):
    """The recorded backward does not touch the running statistics (the forward did)."""
    x = minidl.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    rm, rv = minidl.zeros(3, dtype=minidl.float64), minidl.ones(3, dtype=minidl.float64)
    y = batch_norm(x, rm, rv, training=True)
    before = rm.numpy().copy(), rv.numpy().copy()
    (g,) = minidl.autograd.grad(y, x, minidl.tensor(rng.standard_normal((4, 3))),
                                create_graph=True)
    minidl.autograd.grad((g * g).sum(), x)
    np.testing.assert_array_equal(rm.numpy(), before[0])
    np.testing.assert_array_equal(rv.numpy(), before[1])


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": (relu, torch.relu),
    "leaky_relu": (leaky_relu, F.leaky_relu),
    "leaky_relu_0.2": (lambda t: leaky_relu(t, 0.2), lambda t: F.leaky_relu(t, 0.2)),
    "tanh": (tanh, torch.tanh),
    "sigmoid": (sigmoid, torch.sigmoid),
    "gelu": (gelu, F.gelu),
    "gelu_tanh": (lambda t: gelu(t, "tanh"), lambda t: F.gelu(t, approximate="tanh")),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name, rng, device):
    md, pt = ACTIVATIONS[name]
    x = rand_away_from(rng, (3, 5), low=-4.0, high=4.0)   # GELU: both branches of Phi
    check_double_backward(md, pt, [x], device=device)


def test_tanh_fast_path_unchanged_by_recording(rng):
    """float32 tanh runs its fast kernel raw; create_graph=True gives the same gradient
    values (to float32 rounding) from the recorded formula."""
    x = minidl.tensor(rng.standard_normal(50).astype(np.float32), requires_grad=True)
    v = minidl.tensor(rng.standard_normal(50).astype(np.float32))
    (g_raw,) = minidl.autograd.grad(tanh(x), x, v)
    (g_rec,) = minidl.autograd.grad(tanh(x), x, v, create_graph=True)
    assert g_rec.requires_grad and g_rec.dtype == np.float32
    np.testing.assert_allclose(g_rec.numpy(), g_raw.numpy(), rtol=1e-5, atol=1e-6)


SOFTMAX_CASES = [((3, 4), 1), ((3, 4), 0), ((2, 3, 2), -1), ((2, 3, 2), 1), ((5,), 0)]


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES, ids=[f"{s}-dim{d}" for s, d in SOFTMAX_CASES])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax(shape, dim, log, rng, device):
    md, pt = (log_softmax, torch.log_softmax) if log else (softmax, torch.softmax)
    x = rng.standard_normal(shape)
    check_double_backward(lambda t: md(t, dim), lambda t: pt(t, dim), [x], device=device)


@pytest.mark.parametrize("tshape", [None, (), (1, 4)], ids=["number", "scalar", "(1,4)"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_temperature(tshape, log, rng, device):
    """minidl's temperature, a number or a learnable Tensor, against softmax(x / T)."""
    md, pt = (log_softmax, torch.log_softmax) if log else (softmax, torch.softmax)
    x = rng.standard_normal((3, 4))
    if tshape is None:
        check_double_backward(lambda t: md(t, 1, temperature=0.7),
                              lambda t: pt(t / 0.7, 1), [x], device=device)
        return
    T = rng.uniform(0.5, 2.0, tshape)
    check_double_backward(lambda t, T: md(t, 1, temperature=T), lambda t, T: pt(t / T, 1),
                          [x, T], device=device)


# ----------------------------------------------------------------------------- losses

REDUCTIONS = ["mean", "sum", "none"]
CE_OPTIONS = {
    "plain": {},
    "smoothing": dict(label_smoothing=0.2),
    "weight_ignore": dict(weight=True, ignore_index=1),
    "all": dict(weight=True, ignore_index=2, label_smoothing=0.1),
}


def _class_kwargs(opts, C, lib, device):
    """The keyword arguments of a CE_OPTIONS entry for minidl or torch (fixed weights)."""
    kw = dict(opts)
    if kw.pop("weight", False):
        w = np.random.default_rng(3).uniform(0.5, 2.0, C)
        kw["weight"] = (minidl.tensor(w, device=device) if lib is minidl
                        else torch.tensor(w, device=torch_device(device)))
    return kw


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("opts", list(CE_OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_class_indices(shape, opts, reduction, rng, device):
    C = shape[1]
    x = rng.standard_normal(shape)
    target = rng.integers(0, C, shape[:1] + shape[2:])
    md_kw = _class_kwargs(CE_OPTIONS[opts], C, minidl, device)
    pt_kw = _class_kwargs(CE_OPTIONS[opts], C, torch, device)
    check_double_backward(
        lambda t: cross_entropy(t, minidl.tensor(target, device=device), reduction=reduction,
                                **md_kw),
        lambda t: F.cross_entropy(t, torch.tensor(target, device=t.device),
                                  reduction=reduction, **pt_kw), [x], device=device)


def test_cross_entropy_unbatched(rng):
    x = rng.standard_normal(4)
    check_double_backward(lambda t: cross_entropy(t, minidl.tensor(np.array(2))),
                          lambda t: F.cross_entropy(t, torch.tensor(2)), [x])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(weighted, label_smoothing, reduction, rng, device):
    """Soft targets: derivatives through the logits, the target and the weights."""
    x = rng.standard_normal((3, 4))
    p = rng.dirichlet(np.ones(4), 3)
    arrays = [x, p] + ([rng.uniform(0.5, 2.0, 4)] if weighted else [None])
    check_double_backward(
        lambda t, p, w: cross_entropy(t, p, weight=w, reduction=reduction,
                                      label_smoothing=label_smoothing),
        lambda t, p, w: F.cross_entropy(t, p, weight=w, reduction=reduction,
                                        label_smoothing=label_smoothing), arrays, device=device)


def test_cross_entropy_probabilities_spatial(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    p = rng.dirichlet(np.ones(3), (2, 2, 2)).transpose(0, 3, 1, 2).copy()
    check_double_backward(lambda t, p: cross_entropy(t, p, reduction="none"),
                          lambda t, p: F.cross_entropy(t, p, reduction="none"), [x, p])


@pytest.mark.parametrize("opts", ["plain", "weight_ignore"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(opts, reduction, rng, device):
    x = rng.standard_normal((4, 3))
    target = np.array([0, 2, 1, 2])
    md_kw = _class_kwargs(CE_OPTIONS[opts], 3, minidl, device)
    pt_kw = _class_kwargs(CE_OPTIONS[opts], 3, torch, device)
    check_double_backward(
        lambda t: nll_loss(t, minidl.tensor(target, device=device), reduction=reduction, **md_kw),
        lambda t: F.nll_loss(t, torch.tensor(target, device=t.device), reduction=reduction,
                             **pt_kw), [x], device=device)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (1, 4))], ids=["same", "broadcast"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss(shapes, reduction, rng, device):
    x, t = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # the broadcast case warns (both)
        check_double_backward(lambda a, b: mse_loss(a, b, reduction=reduction),
                              lambda a, b: F.mse_loss(a, b, reduction=reduction), [x, t],
                              device=device)


# ----------------------------------------------------------------------------- dropout
# minidl's and PyTorch's generators differ, so no comparison at one seed: the analytic
# expectation instead (y = x * mask: d gx / dx = 0, d gx / d gy = mask), and gradgradcheck
# with the seed fixed inside the function so every evaluation draws the same mask.

DROPOUTS = {"dropout": (dropout, (4, 5)), "dropout2d": (dropout2d, (2, 3, 2, 2))}


@pytest.mark.parametrize("name", list(DROPOUTS))
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_dropout_double_backward(name, p, rng):
    fn, shape = DROPOUTS[name]

    def seeded(t):
        minidl.manual_seed(11)
        return fn(t, p)

    x = rand_away_from(rng, shape, avoid=(0.0,), margin=0.2)
    xm = minidl.tensor(x, requires_grad=True)
    y = seeded(xm)
    mask = y.numpy() / x                                          # 0 or 1 / (1 - p)
    v = minidl.tensor(rng.standard_normal(shape), requires_grad=True)
    (g,) = minidl.autograd.grad(y, xm, v, create_graph=True)
    np.testing.assert_allclose(g.numpy(), v.numpy() * mask, rtol=1e-12)
    u = rng.standard_normal(shape)
    gx, gv = minidl.autograd.grad((g * minidl.tensor(u)).sum(), [xm, v], allow_unused=True)
    assert gx is None or not np.any(gx.numpy())                   # zero second derivative
    np.testing.assert_allclose(gv.numpy(), u * mask, rtol=1e-12)  # linear in the upstream
    minidl.gradgradcheck(seeded, [minidl.tensor(x, requires_grad=True)])


# ----------------------------------------------------------------------------- no graph

def test_create_graph_false_leaves_nothing_recorded(rng):
    """Without create_graph the raw backwards run and the gradient carries no graph; with
    it, the recorded backwards give the same values."""
    x = rng.standard_normal((2, 3, 4, 4))
    target = minidl.tensor(rng.integers(0, 3, (2, 2, 2)))

    def net(t):
        return cross_entropy(max_pool2d(gelu(batch_norm(t, None, None, training=True)), 2),
                             target, label_smoothing=0.1)

    xm = minidl.tensor(x, requires_grad=True)
    (g,) = minidl.autograd.grad(net(xm), xm)
    assert not g.requires_grad and g.grad_fn is None
    (g2,) = minidl.autograd.grad(net(xm), xm, create_graph=True)
    assert g2.requires_grad
    np.testing.assert_allclose(to_host(g2), to_host(g), rtol=1e-10, atol=1e-12)
