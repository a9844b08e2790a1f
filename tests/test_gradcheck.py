"""minidl.gradcheck itself: it passes correct gradients and reports wrong ones precisely."""
import numpy as np
import pytest

import minidl
from minidl import Function


class WrongTranspose(Function):
    """y = x @ w with a deliberately transposed-and-wrong weight gradient."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return gy @ w.T, (x.T @ gy) * 1.001 + 1e-3  # wrong by a little everywhere


class SumHidesIt(Function):
    """Correct only when the upstream gradient is all ones: y = 2x, backward returns 2."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, gy):
        return np.full_like(gy, 2.0)


def test_passes_on_correct_gradients(rng):
    x = minidl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((4, 2)), requires_grad=True)
    assert minidl.gradcheck(lambda a, b: (a @ b).exp(), [x, w])


def test_reports_worst_elements_with_index_and_values(rng):
    x = minidl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((4, 2)), requires_grad=True)
    with pytest.raises(minidl.GradcheckError) as err:
        minidl.gradcheck(WrongTranspose.apply, [x, w])
    msg = str(err.value)
    assert "input 1 (4, 2) at (" in msg and "analytic" in msg and "numeric" in msg
    assert "input 0" not in msg  # the input gradient is right
    assert minidl.gradcheck(WrongTranspose.apply, [x, w], raise_exception=False) is False


def test_random_upstream_gradient_catches_what_a_sum_hides(rng):
    x = minidl.tensor(rng.standard_normal(5), requires_grad=True)
    SumHidesIt.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2.0)  # .sum() would call this correct
    with pytest.raises(minidl.GradcheckError):
        minidl.gradcheck(SumHidesIt.apply, [x])


def test_demands_float64():
    x = minidl.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        minidl.gradcheck(lambda t: t * 2, [x])
    with pytest.raises(ValueError, match="no input requires grad"):
        minidl.gradcheck(lambda t: t * 2, [minidl.randn(3, dtype=minidl.float64)])


def test_single_sample_unbiased_variance_gives_nan_gradient_like_pytorch():
    x = minidl.tensor([2.0], requires_grad=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        x.var().backward()
    assert np.isnan(x.grad.numpy()).all()
