"""Everyday PyTorch idioms after ``import minidl as torch``: ``torch.utils.data``'s path,
``f"{loss:.4f}"``, ``torch.Size``, the default dtype, ``inference_mode``,
``nn.utils.clip_grad_norm_`` & co., ``inplace=True`` activations, ``manual_seed``'s
generator and ``torch.backends``' flags. Each is compared with PyTorch itself where
PyTorch can say what is right."""
from __future__ import annotations

import contextlib
import math
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn as tnn

import minidl
import minidl.nn.functional as F
from helpers import check_double_backward, check_op, rand_away_from, to_host
from minidl import nn

TF = torch.nn.functional


# ----------------------------------------------------------------------------- utils.data


def test_utils_data_is_torch_utils_data_path_over_minidl_data():
    from minidl.utils.data import (ConcatDataset, DataLoader, Dataset, Subset, TensorDataset,
                                   default_collate, random_split)
    assert DataLoader is minidl.data.DataLoader and Dataset is minidl.data.Dataset
    assert TensorDataset is minidl.data.TensorDataset and Subset is minidl.data.Subset
    assert random_split is minidl.data.random_split
    assert ConcatDataset is minidl.data.ConcatDataset
    assert default_collate is minidl.data.default_collate
    assert minidl.utils.data.DataLoader is DataLoader  # attribute access, as torch.utils.data


def test_tensor_dataset_random_split_and_loader_through_the_torch_path():
    x = minidl.arange(20).reshape(10, 2)
    y = minidl.arange(10)
    ds = minidl.utils.data.TensorDataset(x, y)
    a, b = minidl.utils.data.random_split(ds, [7, 3],
                                          generator=minidl.Generator().manual_seed(42))
    a2, b2 = minidl.utils.data.random_split(ds, [7, 3],
                                            generator=minidl.Generator().manual_seed(42))
    assert (len(a), len(b)) == (7, 3)
    assert list(a.indices) == list(a2.indices)            # the same generator seed, same split
    assert sorted(list(a.indices) + list(b.indices)) == list(range(10))
    seen = []
    for xb, yb in minidl.utils.data.DataLoader(a, batch_size=4, shuffle=True,
                                               generator=minidl.Generator().manual_seed(0)):
        assert xb.shape[1:] == (2,)
        np.testing.assert_array_equal(xb.numpy()[:, 0], 2 * yb.numpy())
        seen += yb.tolist()
    assert sorted(seen) == sorted(int(i) for i in a.indices)


# ----------------------------------------------------------------------------- __format__


@pytest.mark.parametrize("spec", [".4f", ".2e", "8.3f", "", "g"])
def test_format_of_a_0d_tensor_is_its_number_as_in_pytorch(spec):
    value = 0.123456789
    assert format(minidl.tensor(value, dtype=minidl.float64), spec) == \
        format(torch.tensor(value, dtype=torch.float64), spec)
    loss = minidl.tensor([1.5, 2.25]).mean()                 # a loss: a 0-d result
    assert f"{loss:{spec}}" == format(1.875, spec)
    assert f"{minidl.tensor(7):{spec}}" == format(torch.tensor(7), spec)


def test_format_of_other_tensors_follows_pytorch():
    for shape in [(1,), (2, 3)]:
        md, th = minidl.ones(*shape), torch.ones(*shape)
        with pytest.raises(TypeError):
            format(th, ".4f")                                # PyTorch refuses a spec ...
        with pytest.raises(TypeError):
            format(md, ".4f")                                # ... and so does minidl
        assert f"{md}" == str(md)                            # an empty spec is str()


# ----------------------------------------------------------------------------- Size


def test_shape_and_size_are_a_size_tuple():
    x = minidl.zeros(2, 3, 4)
    s = x.shape
    assert isinstance(s, minidl.Size) and isinstance(s, tuple)
    assert s == (2, 3, 4) and (2, 3, 4) == s and s != (2, 3)
    assert x.size() == s and isinstance(x.size(), minidl.Size)
    assert x.size(1) == 3 and type(x.size(1)) is int
    assert s.numel() == 24 == torch.Size([2, 3, 4]).numel()
    assert minidl.tensor(1.0).shape.numel() == 1 == torch.Size([]).numel()
    assert isinstance(s[1:], minidl.Size) and s[1:] == (3, 4)
    assert type(s[0]) is int and s[-1] == 4
    assert isinstance(s + (5,), minidl.Size) and s + (5,) == (2, 3, 4, 5)
    with pytest.raises(TypeError):
        s + [5]
    assert repr(s) == "minidl.Size([2, 3, 4])"
    assert str(s) == "(2, 3, 4)"                             # error messages keep tuples
    assert hash(s) == hash((2, 3, 4)) and {s: 1}[(2, 3, 4)] == 1
    assert pickle.loads(pickle.dumps(s)) == s
    n, c, h = x.shape                                        # unpacking, as a tuple
    assert (n, c, h) == (2, 3, 4)
    assert minidl.zeros(x.shape).shape == s                  # a Size is a valid size
    assert minidl.zeros(*x.size()).shape == s


# ----------------------------------------------------------------------------- default dtype


@pytest.fixture
def default_float64():
    minidl.set_default_dtype(minidl.float64)
    torch.set_default_dtype(torch.float64)
    yield
    minidl.set_default_dtype(minidl.float32)
    torch.set_default_dtype(torch.float32)


def test_default_dtype_starts_float32():
    assert minidl.get_default_dtype() == minidl.float32 == np.float32
    assert minidl.tensor([1.0, 2.0]).dtype == np.float32
    assert minidl.nn.Linear(2, 3).weight.dtype == np.float32


def test_factories_layers_and_python_floats_follow_the_default_dtype(default_float64):
    assert minidl.get_default_dtype() == minidl.float64
    made = {
        "tensor([1.5])": (minidl.tensor([1.5]), torch.tensor([1.5])),
        "Tensor(2.0)": (minidl.Tensor(2.0), torch.tensor(2.0)),
        "zeros": (minidl.zeros(2), torch.zeros(2)), "ones": (minidl.ones(2), torch.ones(2)),
        "randn": (minidl.randn(2), torch.randn(2)), "rand": (minidl.rand(2), torch.rand(2)),
        "arange(0.5)": (minidl.arange(0.0, 2.0), torch.arange(0.0, 2.0)),
        "linspace": (minidl.linspace(0, 1, 3), torch.linspace(0, 1, 3)),
        "eye": (minidl.eye(2), torch.eye(2)),
        "int * 0.5": (minidl.arange(3) * 0.5, torch.arange(3) * 0.5),
        "Linear.weight": (nn.Linear(2, 3).weight, torch.nn.Linear(2, 3).weight),
        "Conv2d.bias": (nn.Conv2d(1, 2, 3).bias, torch.nn.Conv2d(1, 2, 3).bias),
        "BatchNorm2d.running_var": (nn.BatchNorm2d(2).running_var,
                                    torch.nn.BatchNorm2d(2).running_var),
        "Parameter()": (nn.Parameter(), torch.nn.Parameter()),
    }
    for what, (md, th) in made.items():
        assert md.dtype == np.float64 and th.dtype == torch.float64, what
    assert minidl.arange(3).dtype == np.int64                # integers stay integers
    assert minidl.zeros(2, dtype=minidl.float32).dtype == np.float32
    assert repr(minidl.tensor([1.5])) == "tensor([1.5])"     # the default: no dtype shown
    assert "dtype=minidl.float32" in repr(minidl.tensor([1.5], dtype=minidl.float32))


@pytest.mark.parametrize("bad", [np.int64, np.float16, "uint8", bool])
def test_set_default_dtype_refuses_non_float32_64(bad):
    with pytest.raises(TypeError, match="set_default_dtype"):
        minidl.set_default_dtype(bad)
    assert minidl.get_default_dtype() == np.float32


# ----------------------------------------------------------------------------- inference_mode


def test_inference_mode_context_records_nothing_and_restores():
    w = minidl.randn(3, requires_grad=True)
    with minidl.inference_mode():
        assert minidl.is_inference_mode_enabled() and not minidl.is_grad_enabled()
        y = (w * 2).sum()
        made = minidl.zeros(2)
    assert not y.requires_grad and y.grad_fn is None and not made.requires_grad
    assert minidl.is_grad_enabled() and not minidl.is_inference_mode_enabled()
    assert (w * 2).sum().requires_grad
    with pytest.raises(ValueError):
        with minidl.inference_mode():
            raise ValueError("inside")
    assert minidl.is_grad_enabled() and not minidl.is_inference_mode_enabled()


def test_inference_mode_false_turns_recording_back_on_as_in_pytorch():
    for lib in (minidl, torch):
        w = lib.ones(2, requires_grad=True)
        with lib.inference_mode():
            with lib.inference_mode(False):
                assert lib.is_grad_enabled()
                assert (w * 2).requires_grad
            assert not lib.is_grad_enabled()
        with lib.no_grad():
            with lib.inference_mode(mode=False):
                assert lib.is_grad_enabled()


def test_inference_mode_decorates_with_and_without_parentheses():
    w = minidl.randn(3, requires_grad=True)

    @minidl.inference_mode()
    def evaluate(x):
        return (w * x).sum()

    @minidl.inference_mode
    def bare(x):
        """docstring kept"""
        return (w * x).sum()

    for fn in (evaluate, bare):
        out = fn(minidl.ones(3))
        assert not out.requires_grad
        assert minidl.is_grad_enabled()
    assert bare.__doc__ == "docstring kept"

    @minidl.inference_mode()
    def gen():
        yield minidl.is_grad_enabled()
        yield minidl.is_grad_enabled()
    steps = []
    for flag in gen():
        steps.append((flag, minidl.is_grad_enabled()))   # caller's code: outside the mode
    assert steps == [(False, True), (False, True)]
    with pytest.raises(TypeError, match="inference_mode"):
        minidl.inference_mode("yes")


def test_inference_mode_is_per_thread():
    seen = {}

    def worker():
        seen["grad"] = minidl.is_grad_enabled()
        seen["inference"] = minidl.is_inference_mode_enabled()
    with minidl.inference_mode():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen == {"grad": True, "inference": False}


# ----------------------------------------------------------------------------- nn.utils


def _twin_params(rng, shapes, device="cpu", with_grad=(True,) * 8, dtype=np.float64):
    """The same parameters with the same .grad in minidl and PyTorch."""
    md, th = [], []
    for shape, has_grad in zip(shapes, with_grad):
        w, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
        p = nn.Parameter(minidl.tensor(w).to(device))
        q = torch.nn.Parameter(torch.tensor(w))
        if has_grad:
            p.grad = minidl.tensor(g).to(device)
            q.grad = torch.tensor(g)
        md.append(p)
        th.append(q)
    return md, th


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])             # clipped / left as they are
def test_clip_grad_norm_matches_pytorch(device, norm_type, max_norm):
    rng = np.random.default_rng(0)
    md, th = _twin_params(rng, [(3, 4), (4,), (2, 2, 2), (5,)], device,
                          with_grad=(True, True, True, False))
    total = nn.utils.clip_grad_norm_(md, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(th, max_norm, norm_type=norm_type)
    assert isinstance(total, minidl.Tensor) and total.shape == () and total.dtype == np.float64
    assert total.device == minidl.device(device)
    np.testing.assert_allclose(to_host(total), expected.numpy(), rtol=1e-12)
    for p, q in zip(md, th):
        if q.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(to_host(p.grad), q.grad.numpy(), rtol=1e-12, atol=1e-15)
    if max_norm == 0.5:   # the clipping did happen: the new total norm is max_norm
        new = nn.utils.clip_grad_norm_(md, 1e6, norm_type=norm_type)
        assert abs(new.item() - 0.5) < 1e-5


def test_clip_grad_norm_float32_a_single_tensor_and_no_grads():
    p = nn.Parameter(minidl.ones(4))
    p.grad = minidl.full((4,), 3.0)                           # norm 6
    total = nn.utils.clip_grad_norm_(p, max_norm=3.0)
    assert total.dtype == np.float32 and abs(total.item() - 6.0) < 1e-6
    np.testing.assert_allclose(p.grad.numpy(), 1.5 * np.ones(4), rtol=1e-5)
    assert p.grad._version == 1                               # changed in place
    nothing = nn.utils.clip_grad_norm_([nn.Parameter(minidl.ones(2))], 1.0)
    assert nothing.item() == 0.0 == torch.nn.utils.clip_grad_norm_(
        [torch.nn.Parameter(torch.ones(2))], 1.0).item()


def test_clip_grad_norm_non_finite():
    p = nn.Parameter(minidl.ones(2))
    p.grad = minidl.tensor([1.0, math.inf])
    with pytest.raises(RuntimeError, match="clip_grad_norm_.*not finite.*error_if_nonfinite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert p.grad.tolist() == [1.0, math.inf]                 # untouched when it refuses
    q = torch.nn.Parameter(torch.ones(2))
    q.grad = torch.tensor([1.0, math.inf])
    total = nn.utils.clip_grad_norm_([p], 1.0)                # the default: scale anyway
    expected = torch.nn.utils.clip_grad_norm_([q], 1.0)
    assert math.isinf(total.item()) and math.isinf(expected.item())
    np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


def test_clip_grad_value_matches_pytorch(device):
    rng = np.random.default_rng(1)
    md, th = _twin_params(rng, [(3, 4), (6,)], device)
    assert nn.utils.clip_grad_value_(md, 0.7) is None
    torch.nn.utils.clip_grad_value_(th, 0.7)
    for p, q in zip(md, th):
        np.testing.assert_array_equal(to_host(p.grad), q.grad.numpy())
    assert max(float(abs(p.grad).max()) for p in md) == pytest.approx(0.7)


def test_parameters_to_vector_and_back_match_pytorch(device):
    rng = np.random.default_rng(2)
    md, th = _twin_params(rng, [(3, 4), (4,), (2, 1, 2)], device)
    v = nn.utils.parameters_to_vector(md)
    u = torch.nn.utils.parameters_to_vector(th)
    assert v.shape == (20,)
    np.testing.assert_array_equal(to_host(v), u.detach().numpy())
    # differentiable: a loss of the vector reaches every parameter
    for p in md:
        p.grad = None
    (v * v).sum().backward()
    for p in md:
        np.testing.assert_allclose(to_host(p.grad), 2 * to_host(p), rtol=1e-12)
    new = rng.standard_normal(20)
    nn.utils.vector_to_parameters(minidl.tensor(new).to(device), md)
    torch.nn.utils.vector_to_parameters(torch.tensor(new), th)
    for p, q in zip(md, th):
        assert p.shape == q.shape and p.is_leaf and p.requires_grad
        np.testing.assert_array_equal(to_host(p), q.detach().numpy())
    with pytest.raises(ValueError, match="vector_to_parameters.*20"):
        nn.utils.vector_to_parameters(minidl.zeros(19).to(device), md)
    with pytest.raises(TypeError, match="vector_to_parameters"):
        nn.utils.vector_to_parameters(new, md)


# ----------------------------------------------------------------------------- inplace=True


INPLACE_ACTS = {
    "relu": (lambda x, inplace: F.relu(x, inplace=inplace),
             lambda x, inplace: TF.relu(x, inplace=inplace)),
    "leaky_relu": (lambda x, inplace: F.leaky_relu(x, 0.2, inplace=inplace),
                   lambda x, inplace: TF.leaky_relu(x, 0.2, inplace=inplace)),
    "relu6": (lambda x, inplace: F.relu6(x, inplace=inplace),
              lambda x, inplace: TF.relu6(x, inplace=inplace)),
}


@pytest.mark.parametrize("name", sorted(INPLACE_ACTS))
def test_inplace_activation_changes_the_input(device, name):
    md_fn, th_fn = INPLACE_ACTS[name]
    a = 4 * rand_away_from(np.random.default_rng(3), (3, 5), avoid=(0.0, 6.0))
    x = minidl.tensor(a).to(device)
    alias = x.reshape(15)                                    # a view sees the change
    v0 = x._version
    out = md_fn(x, True)
    t = torch.tensor(a)
    expected = th_fn(t, True)
    assert out is x and x._version == v0 + 1
    np.testing.assert_array_equal(to_host(x), expected.numpy())
    np.testing.assert_array_equal(to_host(alias), expected.numpy().reshape(15))
    y = minidl.tensor(a).to(device)
    assert md_fn(y, False) is not y and np.array_equal(to_host(y), a)  # out of place


@pytest.mark.parametrize("name", sorted(INPLACE_ACTS))
def test_inplace_activation_in_a_graph_matches_pytorch(device, name):
    md_fn, th_fn = INPLACE_ACTS[name]
    a = 2 * rand_away_from(np.random.default_rng(4), (2, 3, 4), avoid=(0.0, 3.0))
    # ``x * 2`` first: the in-place op must act on a non-leaf, as in a network
    check_op(lambda x: md_fn(x * 2, True), lambda x: th_fn(x * 2, True), [a], device=device)


def test_inplace_activation_double_backward():
    a = rand_away_from(np.random.default_rng(5), (3, 4), avoid=(0.0,), margin=0.1)
    check_double_backward(lambda x: F.leaky_relu(x.tanh() * x, 0.2, inplace=True),
                          lambda x: TF.leaky_relu(x.tanh() * x, 0.2, inplace=True), [a])


@pytest.mark.parametrize("name", sorted(INPLACE_ACTS))
def test_inplace_activation_refuses_a_leaf_that_requires_grad(name):
    md_fn, th_fn = INPLACE_ACTS[name]
    with pytest.raises(RuntimeError, match="leaf"):
        th_fn(torch.ones(3, requires_grad=True), True)
    w = minidl.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=rf"{name}\(inplace=True\): a leaf"):
        md_fn(w, True)
    with minidl.no_grad():                                   # allowed without recording
        md_fn(w, True)


INPLACE_MODULES = {"relu": (lambda: nn.ReLU(inplace=True), lambda: tnn.ReLU(inplace=True)),
                   "relu6": (lambda: nn.ReLU6(inplace=True), lambda: tnn.ReLU6(inplace=True)),
                   "leaky_relu": (lambda: nn.LeakyReLU(0.2, inplace=True),
                                  lambda: tnn.LeakyReLU(0.2, inplace=True))}


@pytest.mark.parametrize("name", sorted(INPLACE_MODULES))
def test_inplace_activation_modules_write_into_the_input_unless_recording(device, name):
    """``nn.ReLU(inplace=True)`` & co. write into their input, as PyTorch's, under no_grad
    and for an input that needs no gradient; a call recorded for backward computes out of
    place (the input keeps its values) with the same result and gradient as PyTorch's."""
    md_layer, th_layer = (make() for make in INPLACE_MODULES[name])
    a = 4 * rand_away_from(np.random.default_rng(6), (2, 3, 5), avoid=(0.0, 6.0))
    expected = th_layer(torch.tensor(a)).numpy()
    for context in (minidl.no_grad, contextlib.nullcontext):
        x = minidl.tensor(a).to(device)
        with context():
            out = md_layer(x)
        assert out is x
        np.testing.assert_array_equal(to_host(x), expected)
    x = minidl.tensor(a).to(device).requires_grad_()
    h = x * 1.0                                              # a non-leaf in a graph
    out = md_layer(h)
    assert out is not h and np.array_equal(to_host(h), a)
    t = torch.tensor(a, requires_grad=True)
    th_out = th_layer(t * 1.0)
    g = np.random.default_rng(7).standard_normal(a.shape)
    out.backward(minidl.tensor(g).to(device))
    th_out.backward(torch.tensor(g))
    np.testing.assert_allclose(to_host(out), th_out.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(to_host(x.grad), t.grad.numpy(), rtol=1e-12)


def test_inplace_activation_after_an_op_that_saved_its_output_refuses_backward():
    x = torch.ones(3, requires_grad=True)
    y = x.exp()                                              # exp keeps its output
    TF.relu(y, inplace=True)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()
    w = minidl.ones(3, requires_grad=True)
    z = w.exp()
    F.relu(z, inplace=True)
    with pytest.raises(RuntimeError, match="in-place"):
        z.sum().backward()


def test_relu_underscore_method():
    x = minidl.tensor([-1.0, 2.0])
    assert x.relu_() is x and x.tolist() == [0.0, 2.0]


# ----------------------------------------------------------------------------- manual_seed


def test_manual_seed_returns_the_default_generator():
    g = minidl.manual_seed(0)
    assert isinstance(g, minidl.Generator) and g is minidl.default_generator
    assert g.initial_seed() == 0 == minidl.initial_seed()
    a = minidl.randn(4).tolist()
    assert minidl.manual_seed(0).initial_seed() == 0
    assert minidl.randn(4).tolist() == a
    g.manual_seed(0)                                          # the generator's own method
    assert minidl.randn(4).tolist() == a
    s = g.seed()                                              # a fresh, non-fixed seed
    assert isinstance(s, int) and g.initial_seed() == s == minidl.initial_seed()
    assert minidl.seed() != s
    th = torch.manual_seed(0)                                 # PyTorch's shape of the idiom
    assert isinstance(th, torch.Generator) and th.initial_seed() == 0


def test_a_generator_object_seeds_splits_and_loaders():
    g = minidl.Generator()
    assert g.manual_seed(42) is g and g.initial_seed() == 42
    first = g.permutation(10).tolist()
    state = g.get_state()
    second = g.permutation(10).tolist()
    g.set_state(state)
    assert g.permutation(10).tolist() == second
    assert minidl.Generator().manual_seed(42).permutation(10).tolist() == first
    assert minidl.Generator().manual_seed(43).permutation(10).tolist() != first
    ds = minidl.utils.data.TensorDataset(minidl.arange(10))
    order = [int(b[0].item()) for b in minidl.utils.data.DataLoader(
        ds, batch_size=1, shuffle=True, generator=minidl.Generator().manual_seed(42))]
    assert order == first


# ----------------------------------------------------------------------------- backends


def test_backends_flags_are_accepted_without_warnings(recwarn):
    import minidl.backends
    b = minidl.backends
    assert b.cudnn.enabled is True and b.cudnn.benchmark is False
    b.cudnn.benchmark = True
    b.cudnn.deterministic = True
    b.cudnn.enabled = False
    b.cuda.matmul.allow_tf32 = True
    b.cudnn.allow_tf32 = False
    assert b.cudnn.benchmark is True and b.cuda.matmul.allow_tf32 is True
    assert b.mps.is_available() is False and b.mps.is_built() is False
    assert b.cudnn.is_available() is False
    assert "ignored" in repr(b.cudnn)
    b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.enabled = False, False, True
    b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = False, True
    x = minidl.ones(2) * 2                                    # nothing else changed
    assert x.tolist() == [2.0, 2.0]
    assert len(recwarn) == 0
