"""batch_norm against torch.nn.functional.batch_norm: train and eval, (N, C), (N, C, L),
(N, C, H, W), with and without affine parameters, running statistics over several steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
from minidl.errors import ShapeError
from minidl.ops.norm import batch_norm
from tests.helpers import check_op, to_host, torch_device

SHAPES = [(4, 3), (3, 2, 5), (2, 3, 3, 2)]   # (N, C), (N, C, L), (N, C, H, W)


def _affine(rng, C, affine):
    if not affine:
        return None, None
    return rng.uniform(0.5, 1.5, C), rng.standard_normal(C)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_train_mode_output_and_gradients(rng, shape, affine, device):
    """Output and gradients (input, weight, bias) against PyTorch, plus gradcheck."""
    x = rng.standard_normal(shape) * 2 + 1
    w, b = _affine(rng, shape[1], affine)
    check_op(lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
             [x, w, b], device=device)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_eval_mode_output_and_gradients(rng, shape, affine, device):
    C = shape[1]
    x = rng.standard_normal(shape)
    w, b = _affine(rng, C, affine)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)

    def md(x, w, b):
        return batch_norm(x, minidl.tensor(rm.astype(x.dtype), device=x.device),
                          minidl.tensor(rv.astype(x.dtype), device=x.device),
                          w, b, training=False)

    def ref(x, w, b):
        return F.batch_norm(x, torch.tensor(rm.astype(np.float64)).to(x.device, x.dtype),
                            torch.tensor(rv).to(x.device, x.dtype), w, b, training=False)

    check_op(md, ref, [x, w, b], device=device)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("shape", SHAPES)
def test_running_statistics_after_several_steps(rng, shape, momentum, dtype, device):
    """Three training steps (the running variance uses the unbiased estimate), then an
    evaluation step that uses them: all equal to PyTorch's."""
    C = shape[1]
    t_dev = torch_device(device)
    rm, rv = minidl.zeros(C, dtype=dtype, device=device), minidl.ones(C, dtype=dtype, device=device)
    trm = torch.zeros(C, dtype=torch.float32 if dtype == np.float32 else torch.float64,
                      device=t_dev)
    trv = torch.ones(C, dtype=trm.dtype, device=t_dev)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        y = batch_norm(minidl.tensor(x, device=device), rm, rv, training=True, momentum=momentum)
        ty = F.batch_norm(torch.tensor(x, device=t_dev), trm, trv, training=True,
                          momentum=momentum)
        np.testing.assert_allclose(to_host(y), to_host(ty), **tol)
        np.testing.assert_allclose(to_host(rm), to_host(trm), **tol)
        np.testing.assert_allclose(to_host(rv), to_host(trv), **tol)
    assert rm.dtype == dtype and rv.dtype == dtype
    x = rng.standard_normal(shape).astype(dtype)
    y = batch_norm(minidl.tensor(x, device=device), rm, rv, training=False)
    ty = F.batch_norm(torch.tensor(x, device=t_dev), trm, trv, training=False)
    np.testing.assert_allclose(to_host(y), to_host(ty), **tol)


def test_running_statistics_are_updated_in_place_and_not_in_eval(rng, device):
    rm, rv = minidl.zeros(3, device=device), minidl.ones(3, device=device)
    arrays = (rm.data, rv.data)
    x = minidl.tensor(rng.standard_normal((5, 3)).astype(np.float32), device=device)
    batch_norm(x, rm, rv, training=True)
    assert rm.data is arrays[0] and rv.data is arrays[1]           # the same arrays, changed
    assert not np.allclose(to_host(rm), 0)
    before = to_host(rm).copy(), to_host(rv).copy()
    batch_norm(x, rm, rv, training=False)
    np.testing.assert_array_equal(to_host(rm), before[0])
    np.testing.assert_array_equal(to_host(rv), before[1])
    with minidl.no_grad():  # training still updates statistics without a graph
        batch_norm(x, rm, rv, training=True)
    assert not np.array_equal(to_host(rm), before[0])


def test_closed_form_input_gradient_by_hand(rng, device):
    """The docstring's formula, written out in NumPy, equals the Function's gradient."""
    x = rng.standard_normal((6, 2))
    w = rng.uniform(0.5, 1.5, 2)
    g = rng.standard_normal((6, 2))
    mx = minidl.tensor(x, requires_grad=True, device=device)
    batch_norm(mx, None, None, minidl.tensor(w, device=device), None, training=True,
               eps=1e-5).backward(minidl.tensor(g, device=device))
    m = 6
    inv_std = 1 / np.sqrt(x.var(axis=0) + 1e-5)
    xhat = (x - x.mean(axis=0)) * inv_std
    gxhat = g * w
    dx = inv_std / m * (m * gxhat - gxhat.sum(0) - xhat * (gxhat * xhat).sum(0))
    np.testing.assert_allclose(to_host(mx.grad), dx, rtol=1e-12, atol=1e-12)


def test_batch_of_one_value_per_channel_is_allowed_when_spatial_dims_give_more(rng, device):
    x = rng.standard_normal((1, 2, 4))  # N = 1 but 4 values per channel
    check_op(lambda x: batch_norm(x, None, None, training=True),
             lambda x: F.batch_norm(x, None, None, training=True), [x], device=device)


def test_float32_stays_float32(rng, device):
    x = minidl.tensor(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), requires_grad=True,
                      device=device)
    w = minidl.ones(3, requires_grad=True, device=device)
    b = minidl.zeros(3, requires_grad=True, device=device)
    y = batch_norm(x, minidl.zeros(3, device=device), minidl.ones(3, device=device), w, b,
                   training=True)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


# --- errors -----------------------------------------------------------------------------

def test_error_one_value_per_channel_when_training():
    for shape in [(1, 3), (1, 3, 1, 1)]:
        with pytest.raises(ShapeError, match=r"batch_norm: expected more than 1 value per channel "
                                             r"when training, got input of shape \(1, 3"):
            batch_norm(minidl.zeros(*shape), None, None, training=True)
    batch_norm(minidl.zeros(1, 3), minidl.zeros(3), minidl.ones(3), training=False)  # eval: fine


def test_error_momentum_none_in_the_functional_form():
    with pytest.raises(ValueError, match=r"batch_norm: momentum=None \(a cumulative moving "
                                         r"average\) needs the number of batches seen"):
        batch_norm(minidl.zeros(4, 3), minidl.zeros(3), minidl.ones(3), training=True,
                   momentum=None)
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be a number in \[0, 1\], "
                                         r"got 1.5"):
        batch_norm(minidl.zeros(4, 3), None, None, training=True, momentum=1.5)
    with pytest.raises(TypeError, match=r"batch_norm: momentum must be a number in \[0, 1\], "
                                        r"got str '0.1'"):
        batch_norm(minidl.zeros(4, 3), None, None, training=True, momentum="0.1")


def test_error_eval_without_running_statistics():
    with pytest.raises(RuntimeError, match=r"batch_norm: running_mean and running_var must be "
                                           r"given in evaluation mode \(training=False\)"):
        batch_norm(minidl.zeros(4, 3), None, None, training=False)


def test_error_shapes_and_dtypes():
    x = minidl.zeros(4, 3, 5)
    with pytest.raises(ShapeError, match=r"batch_norm: expected running_mean of shape \(3,\) "
                                           r"for input \(4, 3, 5\) with 3 channels, got \(4,\)"):
        batch_norm(x, minidl.zeros(4), minidl.ones(3))
    with pytest.raises(ShapeError, match=r"batch_norm: expected weight of shape \(3,\)"):
        batch_norm(x, None, None, minidl.ones(5), training=True)
    with pytest.raises(ShapeError, match=r"batch_norm: expected bias of shape \(3,\)"):
        batch_norm(x, None, None, None, minidl.ones(3, 1), training=True)
    with pytest.raises(ShapeError, match=r"batch_norm: expected input \(N, C\), \(N, C, L\) "
                                           r"or \(N, C, H, W\), got \(3,\)"):
        batch_norm(minidl.zeros(3), None, None, training=True)
    with pytest.raises(TypeError, match="batch_norm: expected a floating point input, got "
                                        "dtype int64"):
        batch_norm(minidl.tensor([[1, 2], [3, 4]]), None, None, training=True)


# --- devices ----------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_same_results_on_every_device(device, rng, training):
    """batch_norm on ``device`` (the GPU through CuPy, when present) equals the CPU,
    running statistics included."""
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    w0, b0 = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    outs = []
    for d in ("cpu", device):
        xt = minidl.tensor(x, device=d, requires_grad=True)
        w = minidl.tensor(w0, device=d, requires_grad=True)
        b = minidl.tensor(b0, device=d, requires_grad=True)
        rm = minidl.tensor(np.full(3, 0.2, np.float32), device=d)
        rv = minidl.tensor(np.full(3, 1.5, np.float32), device=d)
        y = batch_norm(xt, rm, rv, w, b, training=training)
        assert y.device == d
        (y * y).sum().backward()
        outs.append([t.cpu().numpy() for t in (y, xt.grad, w.grad, b.grad, rm, rv)])
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_error_running_statistics_on_another_device(cuda_device):
    device = cuda_device
    with pytest.raises(RuntimeError, match="batch_norm: running_mean is on cpu but the input "
                                           "is on cuda:0"):
        batch_norm(minidl.zeros(4, 3, device=device), minidl.zeros(3), minidl.ones(3),
                   training=True)
