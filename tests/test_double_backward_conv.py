"""Higher-order gradients of conv2d and conv_transpose2d: first and second derivatives
against PyTorch's double backward in float64 plus minidl.gradgradcheck
(``check_double_backward``), with each conv2d implementation forced (the im2col + GEMM
reference and the direct kernels), through chains (conv -> activation -> conv), to third
order, and checks that ``create_graph=False`` still runs the raw backward alone.

The three Functions of ``minidl/ops/conv.py`` (conv2d, its transpose, its weight
gradient) differentiate into one another, so every case here also runs the raw backward
of the ones a recorded backward is made of.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl
import minidl.kernels as K
import minidl.nn.functional as F
from minidl import geometry
from minidl.ops.conv import Conv2dFunction, Conv2dWeightGradFunction, conv2d
from helpers import check_double_backward

# (x shape, w shape, bias, kwargs, the direct kernels can run it); a few dozen elements
# each: gradgradcheck perturbs every input and upstream-gradient element
CONV_CASES = [
    ((2, 2, 4, 5), (3, 2, 2, 3), True, {}, True),
    ((2, 2, 4, 5), (3, 2, 3, 2), False, dict(padding=(1, 0)), True),
    ((1, 2, 5, 6), (2, 2, 2, 3), True, dict(stride=2), False),
    ((1, 2, 5, 5), (2, 2, 2, 2), True, dict(dilation=(2, 1), padding=(0, 1)), False),
    ((1, 4, 4, 4), (4, 2, 2, 3), True, dict(groups=2, stride=(1, 2), padding=1), False),
    ((2, 4, 4), (3, 2, 2, 2), True, dict(padding=(0, 1)), True),               # unbatched
]

# w (C_in, C_out/groups, KH, KW)
CONVT_CASES = [
    ((2, 3, 3, 3), (3, 2, 2, 3), True, {}, True),
    ((1, 2, 3, 3), (2, 3, 3, 2), True, dict(stride=(2, 3), padding=(1, 0),
                                           output_padding=(1, 2)), False),
    ((1, 2, 3, 3), (2, 2, 2, 3), False, dict(dilation=(2, 1), output_padding=(1, 0)), False),
    ((1, 4, 3, 3), (4, 1, 2, 2), True, dict(groups=2, stride=2, padding=(1, 0)), False),
    ((3, 3, 2), (3, 2, 2, 2), True, dict(padding=(0, 1)), True),               # unbatched
]


def _with_impls(cases):
    """Each case with the reference forced, and with the direct kernels where they run."""
    params = []
    for k, case in enumerate(cases):
        params.append(pytest.param(case, "reference", id=f"{k}-reference"))
        if case[4]:
            params.append(pytest.param(case, "direct", id=f"{k}-direct"))
    return params


def _arrays(case, rng, out_channels):
    xs, ws, bias, _, _ = case
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)]
    if bias:
        arrays.append(rng.standard_normal(out_channels))
    return arrays


def _force(use_impl, impl):
    if impl == "direct" and not K.numba_available():
        pytest.skip("numba is not installed")
    use_impl(impl, family="conv2d")


def _check_ran(log, impl):
    """Every conv2d-family call in ``log`` ran ``impl``."""
    ran = {name for family, name in log if family == "conv2d"}
    assert ran == {impl}, ran


@pytest.mark.parametrize("case,impl", _with_impls(CONV_CASES))
def test_conv2d(case, impl, rng, use_impl):
    _force(use_impl, impl)
    kw = case[3]
    with K.decisions() as log:
        check_double_backward(lambda *a: F.conv2d(*a, **kw), lambda *a: TF.conv2d(*a, **kw),
                              _arrays(case, rng, case[1][0]))
    _check_ran(log, impl)


@pytest.mark.parametrize("case,impl", _with_impls(CONVT_CASES))
def test_conv_transpose2d(case, impl, rng, use_impl):
    _force(use_impl, impl)
    kw = case[3]
    groups = kw.get("groups", 1)
    with K.decisions() as log:
        check_double_backward(lambda *a: F.conv_transpose2d(*a, **kw),
                              lambda *a: TF.conv_transpose2d(*a, **kw),
                              _arrays(case, rng, case[1][1] * groups))
    _check_ran(log, impl)


@pytest.mark.parametrize("grad", [(0,), (1,), (0, 2)])
def test_only_some_inputs(grad, rng):
    """Second derivatives when only some inputs require grad (needs_input_grad honoured
    by the recorded backward, and by the Functions it records)."""
    kw = dict(stride=(2, 1), padding=1, groups=2)
    arrays = [rng.standard_normal((1, 4, 4, 3)), rng.standard_normal((2, 2, 2, 2)),
              rng.standard_normal(2)]
    check_double_backward(lambda *a: F.conv2d(*a, **kw), lambda *a: TF.conv2d(*a, **kw),
                          arrays, grad=grad)
    check_double_backward(lambda *a: F.conv_transpose2d(*a, **kw),
                          lambda *a: TF.conv_transpose2d(*a, **kw),
                          [arrays[0], rng.standard_normal((4, 1, 2, 2)), arrays[2]], grad=grad)


def test_weight_gradient_function(rng):
    """Conv2dWeightGradFunction (x, g) -> dW on its own, against PyTorch's weight gradient
    of conv2d taken with create_graph (conv2d is linear in W, so it is wgrad(x, g))."""
    kw = dict(stride=(1, 2), padding=(1, 0), dilation=(1, 2), groups=2)
    xs, ws = (2, 4, 4, 5), (4, 2, 2, 2)
    geo = geometry.ConvGeometry.of(xs, ws, kw["stride"], ((1, 1), (0, 0)), kw["dilation"], 2)
    gs = geo.out_shape

    def torch_wgrad(x, g):
        w = torch.zeros(ws, dtype=x.dtype, requires_grad=True)
        return torch.autograd.grad(TF.conv2d(x, w, **kw), w, g, create_graph=True)[0]

    check_double_backward(lambda x, g: Conv2dWeightGradFunction.apply(x, g, geo=geo),
                          torch_wgrad, [rng.standard_normal(xs), rng.standard_normal(gs)])


def test_on_each_device(device, rng):
    """The same double backward where the tensors live (CuPy runs the reference)."""
    kw = dict(stride=(2, 1), padding=(1, 0), groups=2)
    arrays = [rng.standard_normal((1, 4, 4, 3)), rng.standard_normal((2, 2, 2, 2)),
              rng.standard_normal(2)]
    check_double_backward(lambda *a: F.conv2d(*a, **kw), lambda *a: TF.conv2d(*a, **kw),
                          arrays, device=device)
    kw = dict(kw, output_padding=(1, 0))
    arrays[1] = rng.standard_normal((4, 1, 2, 2))
    check_double_backward(lambda *a: F.conv_transpose2d(*a, **kw),
                          lambda *a: TF.conv_transpose2d(*a, **kw), arrays, device=device)


# ----------------------------------------------------------------------------- chains

def _square(t):
    return t * t


ACTIVATIONS = {
    "square": (_square, _square),
    "exp": (lambda t: t.exp(), torch.exp),
    "tanh": (lambda t: t.tanh(), torch.tanh),
}


@pytest.mark.parametrize("impl", ["reference", "direct"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_conv_activation_conv(act, impl, rng, use_impl):
    """conv -> activation -> conv, the whole chain differentiated twice: the activation's
    second derivative meets conv's recorded backward (weights, biases and the input)."""
    _force(use_impl, impl)
    md_act, t_act = ACTIVATIONS[act]

    def md_fn(x, w1, b1, w2, b2):
        return F.conv2d(md_act(F.conv2d(x, w1, b1, padding=1) * 0.5), w2, b2, stride=(1, 2))

    def t_fn(x, w1, b1, w2, b2):
        return TF.conv2d(t_act(TF.conv2d(x, w1, b1, padding=1) * 0.5), w2, b2, stride=(1, 2))

    arrays = [rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3)) * 0.5,
              rng.standard_normal(3), rng.standard_normal((2, 3, 2, 2)), rng.standard_normal(2)]
    check_double_backward(md_fn, t_fn, arrays)


def test_conv_transpose_chain(rng):
    """A decoder-like chain: conv_transpose2d -> square -> conv2d."""
    def md_fn(x, w1, w2):
        return F.conv2d(_square(F.conv_transpose2d(x, w1, stride=2, output_padding=1)), w2)

    def t_fn(x, w1, w2):
        return TF.conv2d(_square(TF.conv_transpose2d(x, w1, stride=2, output_padding=1)), w2)

    check_double_backward(md_fn, t_fn, [rng.standard_normal((1, 2, 2, 3)),
                                        rng.standard_normal((2, 2, 2, 2)),
                                        rng.standard_normal((2, 2, 3, 2))])


def test_third_order(rng):
    """Derivatives of any order: the third derivative of conv -> square -> conv, taken by
    differentiating the recorded second derivative, against PyTorch's."""
    x, w1, w2 = (rng.standard_normal(s) for s in [(1, 2, 4, 4), (2, 2, 2, 2), (2, 2, 2, 2)])
    us = [rng.standard_normal(s) for s in [(1, 2, 2, 2), (1, 2, 4, 4), (2, 2, 2, 2)]]

    def third(lib, conv, tensor):
        ins = [tensor(a, requires_grad=True) for a in (x, w1, w2)]
        y = conv(_square(conv(ins[0], ins[1], padding=1)), ins[2], stride=2)
        (g,) = lib.autograd.grad((y * tensor(us[0])).sum(), [ins[0]], create_graph=True)
        h = lib.autograd.grad((g * tensor(us[1])).sum(), [ins[1]], create_graph=True)[0]
        return lib.autograd.grad((h * tensor(us[2])).sum(), ins)

    got = third(minidl, F.conv2d, minidl.tensor)
    expected = third(torch, TF.conv2d, torch.tensor)
    for m, t in zip(got, expected):
        np.testing.assert_allclose(m.numpy(), t.numpy(), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- create_graph=False

@pytest.mark.parametrize("keep", [True, False], ids=["keep-col", "unfold-again"])
@pytest.mark.parametrize("impl", ["reference", "direct"])
def test_raw_backward_runs_alone(impl, keep, rng, use_impl, monkeypatch):
    """Without create_graph the raw-array backward runs and nothing is recorded: it works
    with the recorded backwards removed, leaves gradients outside any graph, and agrees
    with the recorded backward's values."""
    import minidl.kernels.conv as conv_kernels
    _force(use_impl, impl)
    arrays = [rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((4, 3, 3, 2)),
              rng.standard_normal(4)]
    gy = minidl.tensor(rng.standard_normal((2, 4, 5, 5)))

    def grads(create_graph):
        ts = [minidl.tensor(a, requires_grad=True) for a in arrays]
        with conv_kernels.keep_col_bytes(2**62 if keep else 0):
            y = conv2d(*ts, padding=(1, 0))
        x_saved, w_saved, _ = y.grad_fn.saved_tensors
        assert x_saved is ts[0].data and w_saved is ts[1].data  # for dW and dx
        return minidl.autograd.grad(y, ts, gy, create_graph=create_graph)

    recorded = grads(True)
    assert recorded[0].requires_grad and recorded[1].requires_grad  # dx(W), dW(x); db = sum gy
    with monkeypatch.context() as m:
        m.setattr(Conv2dFunction, "differentiable_backward", None)
        raw = grads(False)
        with pytest.raises(RuntimeError, match="Conv2d: this op has no higher-order"):
            grads(True)
    for r, g in zip(raw, recorded):
        assert not r.requires_grad and r.grad_fn is None
        np.testing.assert_allclose(r.numpy(), g.numpy(), rtol=1e-12, atol=1e-12)


def test_input_changed_in_place_is_refused(rng):
    """conv2d now saves its input itself (for the weight gradient): changing it in place
    before backward is caught by the version check, whether or not col was kept."""
    x = minidl.tensor(rng.standard_normal((1, 2, 4, 4)))
    w = minidl.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    y = conv2d(x, w)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()
