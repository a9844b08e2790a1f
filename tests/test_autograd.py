"""The backward pass: ordering, accumulation, graph freeing, grad modes, error messages."""
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import Function, Tensor


class CountingSquare(Function):
    """x ** 2 that counts its backward calls and records which inputs wanted a gradient."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, gy):
        CountingSquare.calls += 1
        (x,) = ctx.saved_tensors
        return 2 * x * gy


class NeedsRecorder(Function):
    seen = None

    @staticmethod
    def forward(ctx, a, b):
        NeedsRecorder.seen = ctx.needs_input_grad
        return a * b

    @staticmethod
    def backward(ctx, gy):
        return (gy if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None)


def test_grad_accumulates_across_backward_calls():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3 + 2, 3 + 4])


def test_diamond_graph_runs_each_node_once_after_all_consumers():
    CountingSquare.calls = 0
    x = minidl.tensor([1.5, -2.0], requires_grad=True)
    s = CountingSquare.apply(x)          # used by three consumers below
    y = (s * 2 + s.exp() - s / 3).sum()
    y.backward()
    assert CountingSquare.calls == 1
    s_val = x.numpy() ** 2
    expected = (2 + np.exp(s_val) - 1 / 3) * 2 * x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


def test_same_tensor_twice_as_input():
    x = minidl.tensor([3.0], requires_grad=True)
    (x * x + x).backward()
    np.testing.assert_allclose(x.grad.numpy(), [7.0])


def test_deep_chain_does_not_hit_recursion_limit():
    x = minidl.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5 * sys.getrecursionlimit()):
        y = y * 1.0 + 0.0
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_gradients_only_for_inputs_that_need_them():
    a = minidl.tensor([1.0, 2.0], requires_grad=True)
    b = minidl.tensor([3.0, 4.0])
    out = NeedsRecorder.apply(a, b)
    assert NeedsRecorder.seen == (True, False)
    out.sum().backward()
    assert b.grad is None
    with minidl.no_grad():
        NeedsRecorder.apply(a, b)
    assert NeedsRecorder.seen == (False, False)


def test_graph_is_freed_and_second_backward_explains():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    assert y.grad_fn._saved == ()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]), rtol=1e-6)


def test_retain_grad_on_intermediate():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    z = h * h
    z.sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.numpy())
    assert z.grad is None and not z.is_leaf and x.is_leaf


def test_backward_with_explicit_gradient():
    x = minidl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    y.backward(minidl.tensor([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 0.0, -6.0])


def test_backward_errors_are_explained():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="only for one-element outputs.*shape \\(2,\\)"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="gradient has shape \\(3,\\), expected"):
        (x * 2).backward(minidl.zeros(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        minidl.tensor([1.0]).backward()
    with pytest.raises(RuntimeError, match="only floating point tensors can require gradients"):
        minidl.tensor([1, 2], requires_grad=True)


def test_no_grad_and_enable_grad():
    x = minidl.tensor([1.0], requires_grad=True)
    with minidl.no_grad():
        y = x * 2
        with minidl.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad

    @minidl.no_grad()
    def f(t):
        return t * 2
    assert not f(x).requires_grad
    assert minidl.is_grad_enabled()


def test_detach_shares_data_and_leaves_graph():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2).detach()
    assert not y.requires_grad and y.is_leaf
    z = x.detach()
    assert z.data is x.data


def test_inplace_on_leaf_requires_no_grad():
    w = minidl.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        w.zero_()
    with minidl.no_grad():
        w.fill_(3.0)
        w.copy_(np.array([5.0, 6.0]))
    np.testing.assert_array_equal(w.numpy(), [5.0, 6.0])


def test_leaf_grads_are_not_aliased():
    x = minidl.tensor([1.0], requires_grad=True)
    y = minidl.tensor([2.0], requires_grad=True)
    (x + y).backward()
    x.grad.data *= 10  # a user scaling one gradient in place
    np.testing.assert_array_equal(y.grad.numpy(), [1.0])


def test_multi_output_function_with_unused_output():
    x = minidl.tensor([[3.0, 1.0], [0.5, 2.0]], requires_grad=True)
    values, indices = x.max(dim=1)
    values.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 0.0], [0.0, 1.0]])
    assert indices.dtype == np.int64 and not indices.requires_grad


def test_float32_stays_float32_through_backward():
    x = minidl.randn(3, 4, requires_grad=True)
    ((x * 0.5 + 1.0) ** 2 / 3.0).mean().backward()
    assert x.dtype == np.float32 and x.grad.dtype == np.float32


def test_cast_is_differentiable():
    x = minidl.tensor([1.0, 2.0], requires_grad=True)
    y = x.double() * 3
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])


def test_import_never_loads_cupy():
    code = "import sys, minidl; minidl.zeros(2) + 1; assert 'cupy' not in sys.modules, 'cupy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_request_without_gpu_says_what_is_missing():
    if minidl.cuda.is_available():
        pytest.skip("a GPU is present: this test checks the message on a CPU-only machine")
    with pytest.raises(RuntimeError, match="CuPy|GPU"):
        minidl.zeros(2).to("cuda")


def test_tensor_is_hashable_and_compares_elementwise():
    a = minidl.tensor([1.0, 2.0])
    assert len({a, a}) == 1
    assert isinstance(a == a, Tensor)


def test_mixing_devices_names_the_op_and_both_devices():
    class PretendGpuTensor(Tensor):  # stands in for a CuPy tensor on a CPU-only machine
        device = property(lambda self: minidl.device("cuda:0"))

    class PretendGpuArray(np.ndarray):  # ops compare devices only when some array is not
        pass                            # a plain NumPy one (those all live on the CPU)

    a = minidl.tensor([1.0, 2.0])
    b = PretendGpuTensor(np.array([3.0, 4.0], np.float32).view(PretendGpuArray))
    with pytest.raises(RuntimeError, match="Mul: expected all tensors on the same device, got cpu and cuda:0"):
        a * b


def test_leaf_grad_never_aliases_a_view_or_the_seed():
    x = minidl.tensor([[1.0, 2.0]], requires_grad=True)
    w = minidl.tensor([[3.0, 4.0]], requires_grad=True)
    (x.reshape(2) + w.reshape(2)).sum().backward()   # both grads come from one array
    x.grad.data *= 10
    np.testing.assert_array_equal(w.grad.numpy(), [[1.0, 1.0]])
    seed = minidl.tensor([[1.0, 1.0]])
    leaf = minidl.tensor([[0.0, 0.0]], requires_grad=True)
    leaf.backward(seed)
    leaf.grad.data += 1
    np.testing.assert_array_equal(seed.numpy(), [[1.0, 1.0]])
    b = minidl.tensor([1.0, 2.0], requires_grad=True)
    b.expand(3, 2).sum().backward()                  # a broadcast (read-only view) gradient
    b.grad.data += 1
    np.testing.assert_array_equal(b.grad.numpy(), [4.0, 4.0])
