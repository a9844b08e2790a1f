"""The add kernel family (minidl/kernels/arith.py): the numba add equals NumPy's a + b bit
for bit (special values included), below and above the size from which it runs on
threads, on 1, 2 and 3 threads; the registry takes it only for what it can run; the add op
sends large same-shape adds to the family and keeps the others NumPy's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minidl
import minidl.kernels as K
from helpers import float_bits, with_specials
from minidl.kernels import arith, threads

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")
add_numba = arith.ADD.impls["numba"].code

SIZES = [1001, 7 * (threads.PARALLEL_MIN_ELEMENTS // 2 + 11)]     # multiples of 7: (-1, 7) arrays


def test_sizes_straddle_the_parallel_threshold():
    assert not threads.parallel(SIZES[0]) and threads.parallel(SIZES[1])


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_add_equals_numpy_bit_for_bit(dtype, size, n_threads, num_threads, rng):
    num_threads(n_threads)
    a, b = (with_specials(rng, size, dtype).reshape(-1, 7) for _ in range(2))
    out = add_numba.add(a, b)
    with np.errstate(all="ignore"):            # inf + -inf, 3.4e38 + 3.4e38 in the specials
        expected = a + b
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_array_equal(float_bits(out), float_bits(expected))


def test_registry_takes_numba_only_for_what_it_runs():
    f32 = np.zeros((4, 5), np.float32)
    assert K.which("add", f32, f32) == "numba"
    assert K.which("add", f32, f32.astype(np.float64)) == "reference"      # mixed dtypes
    assert K.which("add", f32, np.zeros((5,), np.float32)) == "reference"  # broadcasting
    assert K.which("add", f32.T, f32.T) == "reference"                     # not C-contiguous
    assert K.which("add", f32.astype(np.float16), f32.astype(np.float16)) == "reference"
    assert K.which("add", f32.astype(np.int64), f32.astype(np.int64)) == "reference"


@pytest.mark.parametrize("impl", ["numba", "reference"])
def test_add_op_routes_large_same_shape_adds_and_matches_pytorch(impl, use_impl, rng):
    """A residual connection's add: the family (forced implementation), forward and the
    gradients equal PyTorch's; small and broadcasting adds stay NumPy's, no family."""
    use_impl(impl, family="add")
    shape = (2, 8, 48, 48)                               # 36864 values: the family's size
    assert np.prod(shape) >= arith.ADD_MIN_ELEMENTS
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    A, B = minidl.tensor(a, requires_grad=True), minidl.tensor(b, requires_grad=True)
    gy = rng.standard_normal(shape).astype(np.float32)
    with K.decisions() as log:
        y = A + B
        y.backward(minidl.tensor(gy))
    assert [i for fam, i in log if fam == "add"] == [impl]
    TA, TB = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = TA + TB
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(A.grad.numpy(), TA.grad.numpy())
    np.testing.assert_array_equal(B.grad.numpy(), TB.grad.numpy())
    with K.decisions() as log:
        minidl.tensor(a[:1, :1]) + minidl.tensor(b[:1, :1])          # small
        minidl.tensor(a) + minidl.tensor(b[:1])                      # broadcasting
    assert not [i for fam, i in log if fam == "add"]
