"""``Tensor.retain_grad`` against PyTorch: a non-leaf's ``.grad`` after one backward, its
accumulation over two (``retain_graph=True``), several consumers, an output of a
two-output node, no gradient reaching it; a no-op on leaves; an error on a tensor that
does not require grad; and the retained ``.grad`` as a tensor of its own (no memory shared
with the caller's gradient or with a leaf's ``.grad``).

Each scenario is written once for a library ``lib`` (``torch`` or ``minidl``) on the same
float64 NumPy inputs and returns NumPy arrays; the test compares the two.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minidl


def _np(t):
    if t is None:
        return None
    return t.detach().numpy().copy() if isinstance(t, torch.Tensor) else t.numpy().copy()


def _leaf(lib, a):
    return lib.tensor(a, requires_grad=True)


def both(scenario, rng):
    """Run ``scenario(lib, arrays)`` with torch and minidl on the same arrays; every
    returned array (or None) must agree to float64 rounding. Returns minidl's."""
    arrays = dict(x=rng.standard_normal((3, 4)), w=rng.standard_normal((4, 2)),
                  v=rng.standard_normal((3, 2)), u=rng.standard_normal((3, 4)))
    expected = scenario(torch, arrays)
    got = scenario(minidl, arrays)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"result {k}: minidl has a gradient, PyTorch None"
        else:
            assert g is not None, f"result {k}: minidl has no gradient, PyTorch has one"
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"result {k}")
    return got


def test_retained_grad_of_a_non_leaf(rng):
    def scenario(lib, a):
        x, w = _leaf(lib, a["x"]), _leaf(lib, a["w"])
        y = (x @ w).tanh()
        y.retain_grad()
        (y * lib.tensor(a["v"])).sum().backward()
        return [_np(y.grad), _np(x.grad), np.array(y.retains_grad)]

    got = both(scenario, rng)
    assert got[2] and np.abs(got[0]).sum() > 0


@pytest.mark.parametrize("root", ["scalar loss", "y itself"])
def test_two_backwards_accumulate_into_the_retained_grad(root, rng):
    """Twice through the same graph (``retain_graph=True`` the first time): ``y.grad`` is
    the sum of both, exactly twice the single gradient, like a leaf's."""
    def scenario(lib, a):
        x, w = _leaf(lib, a["x"]), _leaf(lib, a["w"])
        y = (x @ w).exp()
        y.retain_grad()
        if root == "scalar loss":
            loss = (y * y * lib.tensor(a["v"])).sum()
            loss.backward(retain_graph=True)
            once = _np(y.grad)
            loss.backward()
        else:
            y.backward(lib.tensor(a["v"]), retain_graph=True)
            once = _np(y.grad)
            y.backward(lib.tensor(a["v"]))
        return [once, _np(y.grad), _np(x.grad)]

    once, twice, _ = both(scenario, rng)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-14)


def test_retained_grad_sums_every_consumer(rng):
    def scenario(lib, a):
        x = _leaf(lib, a["x"])
        y = x.tanh()
        y.retain_grad()
        z = (y * y).sum() + (y * lib.tensor(a["u"])).sum() + y.exp().mean()
        z.backward()
        return [_np(y.grad), _np(x.grad)]

    both(scenario, rng)


def test_retain_grad_on_one_output_of_a_two_output_node(rng):
    def scenario(lib, a):
        x = _leaf(lib, a["x"])
        values, _ = lib.max(x * 3, dim=1)
        values.retain_grad()
        (values * lib.tensor(a["v"][:, 0])).sum().backward()
        return [_np(values.grad), _np(x.grad)]

    both(scenario, rng)


def test_no_gradient_reaching_the_tensor_leaves_grad_none(rng):
    def scenario(lib, a):
        x, w = _leaf(lib, a["x"]), _leaf(lib, a["w"])
        y = x * 2
        y.retain_grad()
        unused = y.exp()                # in the graph of y only, not of the loss
        unused.retain_grad()
        (w * 3).sum().backward()
        return [_np(y.grad), _np(unused.grad), _np(w.grad)]

    got = both(scenario, rng)
    assert got[0] is None and got[1] is None


def test_retain_grad_on_a_leaf_changes_nothing(rng):
    def scenario(lib, a):
        x = _leaf(lib, a["x"])
        same = x.retain_grad()
        (x * lib.tensor(a["u"])).sum().backward()
        return [_np(x.grad), np.array(x.retains_grad), np.array(same is None or same is x)]

    got = both(scenario, rng)
    assert not got[1]          # a leaf keeps its grad anyway: retains_grad stays False
    assert got[2]              # returns None (PyTorch) or the tensor, nothing else


def test_retain_grad_twice_is_the_same_as_once(rng):
    def scenario(lib, a):
        x = _leaf(lib, a["x"])
        y = x.exp()
        y.retain_grad()
        y.retain_grad()
        (y * lib.tensor(a["u"])).sum().backward()
        return [_np(y.grad)]

    both(scenario, rng)


def test_retain_grad_without_requires_grad_raises():
    with pytest.raises(RuntimeError, match="retain_grad"):
        torch.ones(2).retain_grad()
    with pytest.raises(RuntimeError, match=r"retain_grad\(\): this tensor does not require grad"):
        minidl.ones(2).retain_grad()
    x = minidl.ones(2, requires_grad=True)
    with minidl.no_grad():
        y = x * 2                       # made in no_grad: no graph, no grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.retain_grad()


# ----------------------------------------------------------------------------- aliasing


def test_retained_grad_is_not_the_callers_gradient(rng):
    """Changing the gradient passed to ``backward`` afterwards must not change ``y.grad``
    (PyTorch gives the retained grad its own memory)."""
    v = rng.standard_normal(3)
    for lib in (torch, minidl):
        x = _leaf(lib, np.arange(3.0))
        y = x * 2
        y.retain_grad()
        g = lib.tensor(v.copy())
        y.backward(g)
        with lib.no_grad():
            g.mul_(0)
        np.testing.assert_array_equal(_np(y.grad), v, err_msg=lib.__name__)


def test_retained_grad_does_not_share_memory_with_a_leaf_grad(rng):
    """``y = x + 0`` hands its upstream gradient on unchanged: y.grad and x.grad must
    still be two tensors (an in-place change of one, e.g. gradient clipping, must not
    change the other)."""
    v = rng.standard_normal(3)
    for lib in (torch, minidl):
        x = _leaf(lib, np.arange(3.0))
        y = x + 0.0
        y.retain_grad()
        (y * lib.tensor(v)).sum().backward()
        with lib.no_grad():
            x.grad.mul_(0)
        np.testing.assert_array_equal(_np(y.grad), v, err_msg=lib.__name__)
