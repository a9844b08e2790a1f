"""minidl.gradcheck itself: it passes correct gradients and reports wrong ones precisely;
fast mode (one random direction per input) at realistic sizes; the backward checks (dtype,
shape and device of each gradient, determinism, zero upstream gives zero); the
GradcheckResult of raise_exception=False. Each check is shown failing on a planted bug."""
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
    result = minidl.gradcheck(WrongTranspose.apply, [x, w], raise_exception=False)
    assert not result and not result.ok


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


# ----------------------------------------------------------------------------- report=True


class WrongTopRow(Function):
    """y = 3x on an (N, C, H, W) tensor, whose backward forgets row 0 of channel 1."""

    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, gy):
        gx = 3 * gy
        gx[:, 1, 0, :] = 0.0
        return gx


def _grid(text, start_marker):
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if start_marker in ln)
    return ["".join(c for c in ln.split() if c in (".", "X")) for ln in lines[i + 2:i + 2 + 4]]


def test_report_draws_the_error_map_in_the_raised_message(rng):
    x = minidl.tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True)
    with pytest.raises(minidl.GradcheckError) as err:
        minidl.gradcheck(WrongTopRow.apply, [x], report=True)
    msg = str(err.value)
    assert "error maps (analytic vs numeric):" in msg
    assert "input 0 (2, 3, 4, 5)[0, 1] (4 x 5): '.' right, 'X' wrong, 5 of 20 wrong" in msg
    assert _grid(msg, "'.' right") == ["XXXXX", ".....", ".....", "....."]
    assert "wrong elements in 2 of 6 leading-index planes" in msg
    # without report=True, the message is as before: no map
    with pytest.raises(minidl.GradcheckError) as err:
        minidl.gradcheck(WrongTopRow.apply, [x])
    assert "error map" not in str(err.value)


def test_report_prints_when_not_raising(rng, capsys):
    x = minidl.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((4, 2)), requires_grad=True)
    assert not minidl.gradcheck(WrongTranspose.apply, [x, w], raise_exception=False,
                                report=True)
    out = capsys.readouterr().out
    assert "input 1 (4, 2) (4 x 2)" in out and "XX" in out.replace(" ", "")
    assert "input 0 (3, 4) (" not in out   # only failing inputs get a map
    assert minidl.gradcheck(lambda a: a * 2, [x], report=True) is True
    assert capsys.readouterr().out == ""


def test_error_map_layouts():
    from minidl.gradcheck import error_map, mismatch_mask
    bad = np.zeros((2, 3, 3, 4), dtype=bool)
    bad[1, 2, 0, 3] = bad[1, 2, 2, 0] = True
    text = error_map(bad, "dx", axes=("n", "c", "h", "w"))
    assert text.splitlines()[0] == "dx[n=1, c=2] (3 x 4): '.' right, 'X' wrong, 2 of 12 wrong"
    assert _grid(text, "'.' right")[:3] == ["...X", "....", "X..."]
    assert "wrong elements in 1 of 6 (n, c) planes" in text
    row = error_map(np.array([True, False, True]), "db", axes=("oc",))
    assert row.splitlines()[0].startswith("db (3):") and row.splitlines()[-1].split() == \
        ["X", ".", "X"]
    big = error_map(np.ones((30, 50), dtype=bool), "g", max_rows=5, max_cols=8)
    assert "cut to the first 5 rows and 8 columns of 30 x 50" in big
    assert error_map(np.array(True), "s") == "s: X (wrong)"
    m = mismatch_mask(np.array([1.0, np.nan, 2.0, np.inf]), np.array([1.0, np.nan, 3.0, 1.0]))
    assert m.tolist() == [False, False, True, True]


# ----------------------------------------------------------------------------- planted bugs


class ScaledWrong(Function):
    """y = x * w (elementwise) whose backward is off by 1% for w."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return gy * w, gy * x * 1.01


class TransposedWrong(Function):
    """y = x @ w for square matrices whose input gradient uses w instead of w^T: right
    when w is symmetric, and for any w the shapes agree, so only the values can tell."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        return gy @ w, x.T @ gy


class Noisy(Function):
    """y = 3x whose backward adds a little noise: right to 1e-12, but not reproducible."""

    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, gy):
        return 3 * gy + np.random.default_rng().standard_normal(gy.shape) * 1e-12


class IgnoresUpstream(Function):
    """y = x * c, whose backward returns c, whatever the upstream gradient."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.5

    @staticmethod
    def backward(ctx, gy):
        return np.full_like(gy, 2.5)


class Float32Gradient(Function):
    """y = 2x with the right gradient values, computed in float32 for a float64 input."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, gy):
        return (2 * gy).astype(np.float32)


class RowGradient(Function):
    """y = 2x for a 1-D x whose backward returns a (1, n) gradient: right values, wrong
    shape."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, gy):
        return (2 * gy).reshape(1, -1)


def _f64(rng, *shape):
    return minidl.tensor(rng.standard_normal(shape), requires_grad=True)


def test_fast_mode_passes_a_realistic_convolution(rng):
    """(8, 16, 32, 32) input, 16 -> 16 channels, 3x3, stride 2, padding 1, with bias:
    about 135 000 input elements, which the element-by-element mode would perturb one by
    one; fast mode needs two forward calls per input."""
    F = minidl.nn.functional
    x, w, b = _f64(rng, 8, 16, 32, 32), _f64(rng, 16, 16, 3, 3), _f64(rng, 16)
    conv = (lambda a, c, d: F.conv2d(a, c, d, stride=2, padding=1))
    result = minidl.gradcheck(conv, [x, w, b], fast_mode=True, raise_exception=False)
    assert result, result.message
    assert result.ok and result.failures == [] and result.problems == []
    assert 0 <= result.max_abs_error < 1e-5
    assert str(result).startswith("gradcheck passed")


@pytest.mark.parametrize("bug", [ScaledWrong, TransposedWrong])
def test_fast_mode_catches_a_wrong_gradient(bug, rng):
    x, w = _f64(rng, 5, 5), _f64(rng, 5, 5)
    with pytest.raises(minidl.GradcheckError) as err:
        minidl.gradcheck(bug.apply, [x, w], fast_mode=True)
    msg = str(err.value)
    assert "fast_mode" in msg and "random direction" in msg and "relative" in msg
    wrong = 1 if bug is ScaledWrong else 0
    assert f"input {wrong} (5, 5): analytic" in msg and f"input {1 - wrong} (5, 5)" not in msg
    result = minidl.gradcheck(bug.apply, [x, w], fast_mode=True, raise_exception=False)
    assert not result
    [(i, index, a, n, e)] = result.failures
    assert (i, index) == (wrong, None) and e == pytest.approx(abs(a - n))
    assert e > 1e-3 * abs(n) and result.max_abs_error >= e
    # the element-by-element mode agrees
    assert not minidl.gradcheck(bug.apply, [x, w], raise_exception=False)


def test_fast_mode_catches_a_wrong_gradient_at_a_realistic_size(rng):
    """A 1% error in one input of a 65 536-element product: the random projection moves."""
    x, w = _f64(rng, 8, 8, 32, 32), _f64(rng, 8, 8, 32, 32)
    result = minidl.gradcheck(ScaledWrong.apply, [x, w], fast_mode=True,
                              raise_exception=False)
    assert [f[0] for f in result.failures] == [1]


def test_non_deterministic_backward_fails(rng):
    x = _f64(rng, 4, 3)
    with pytest.raises(minidl.GradcheckError, match="backward is non-deterministic: two "
                       "backward passes with the same upstream gradient differ by up to "
                       r".* for input 0 \(nondet_tol=0.0\)"):
        minidl.gradcheck(Noisy.apply, [x])
    # PyTorch's nondet_tol: differences up to it are accepted
    assert minidl.gradcheck(Noisy.apply, [x], nondet_tol=1e-9)
    assert minidl.gradcheck(Noisy.apply, [x], nondet_tol=1e-9, fast_mode=True)


def test_zero_upstream_gradient_must_give_zero(rng):
    x = _f64(rng, 3, 4)
    with pytest.raises(minidl.GradcheckError,
                       match="a zero upstream gradient gave a nonzero gradient for input 0 "
                             r"\(12 of 12 elements, largest 2.500e\+00\)"):
        minidl.gradcheck(IgnoresUpstream.apply, [x])
    # its values are wrong too (the random upstream shows it), and both are reported
    result = minidl.gradcheck(IgnoresUpstream.apply, [x], raise_exception=False)
    assert len(result.problems) == 1 and result.failures


def test_gradient_dtype_is_checked_before_the_engine_casts_it(rng):
    """The engine casts a leaf's .grad to the leaf's dtype, so .grad looks right; gradcheck
    looks at what backward returned."""
    x = _f64(rng, 6)
    Float32Gradient.apply(x).sum().backward()
    assert x.grad.dtype == np.float64                      # the cast hides the bug here
    with pytest.raises(minidl.GradcheckError,
                       match=r"the gradient of input 0 has dtype float32, expected float64 "
                             r"\(the input's dtype\)"):
        minidl.gradcheck(Float32Gradient.apply, [x], atol=1e-4)
    # the dtype is the only problem: the values agree to float32 rounding
    result = minidl.gradcheck(Float32Gradient.apply, [x], atol=1e-4, raise_exception=False)
    assert result.failures == [] and len(result.problems) == 1


def test_gradient_dtype_names_the_input(rng):
    x, y = _f64(rng, 3), _f64(rng, 3)
    result = minidl.gradcheck(lambda a, b: a * 2 + Float32Gradient.apply(b), [x, y],
                              atol=1e-4, raise_exception=False)
    assert [p for p in result.problems if "dtype" in p] == [
        "the gradient of input 1 has dtype float32, expected float64 (the input's dtype)"]


def test_gradient_shape_is_checked(rng):
    x = _f64(rng, 5)
    result = minidl.gradcheck(RowGradient.apply, [x], raise_exception=False)
    assert result.problems == ["the gradient of input 0 has shape (1, 5), expected (5,) "
                               "(the input's shape)"]
    assert "has shape (1, 5)" in result.message


@pytest.mark.gpu
def test_gradient_device_is_checked(rng, cuda_device):
    class HostGradient(Function):
        """y = 2x on the GPU whose backward returns a NumPy (host) array."""

        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, gy):
            return minidl.backend.to_numpy(2 * gy)

    x = minidl.tensor(rng.standard_normal(4), requires_grad=True, device=cuda_device)
    result = minidl.gradcheck(HostGradient.apply, [x], raise_exception=False)
    assert any("the gradient of input 0 is on cpu, expected cuda" in p
               for p in result.problems), result.message


def test_result_object(rng):
    x, w = _f64(rng, 3, 4), _f64(rng, 4, 2)
    bad = minidl.gradcheck(WrongTranspose.apply, [x, w], raise_exception=False, max_report=3)
    assert not bad and bad.ok is False
    # its "+ 1e-3" makes a zero upstream gradient give 1e-3 everywhere: also reported
    assert bad.problems == ["a zero upstream gradient gave a nonzero gradient for input 1 "
                            "(8 of 8 elements, largest 1.000e-03): backward must multiply by "
                            "its upstream gradient"]
    assert len(bad.failures) == 3
    for i, j, a, n, e in bad.failures:
        assert i == 1 and len(j) == 2 and e == pytest.approx(abs(a - n))
    assert bad.max_abs_error == max(e for *_, e in bad.failures)
    assert str(bad) == bad.message and bad.message.startswith("gradcheck failed")
    assert "input 1 (4, 2) at (" in bad.message
    assert "ok=False" in repr(bad)
    good = minidl.gradcheck(lambda a, b: a @ b, [x, w], raise_exception=False)
    assert good and good.ok and good.failures == [] and good.max_abs_error < 1e-6
    assert minidl.gradcheck(lambda a, b: a @ b, [x, w]) is True   # raising mode: True


def test_inputs_grad_is_left_alone(rng):
    x = _f64(rng, 3)
    x.grad = minidl.tensor([1.0, 2.0, 3.0], dtype=minidl.float64)
    minidl.gradcheck(lambda a: a.exp(), [x])
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])


def test_two_outputs_and_an_input_used_twice(rng):
    x, w = _f64(rng, 3, 3), _f64(rng, 3, 3)
    assert minidl.gradcheck(lambda a, b: (a @ b, (a * a).sum(dim=0)), [x, w])
    assert minidl.gradcheck(lambda a, b: (a @ b, (a * a).sum(dim=0)), [x, w], fast_mode=True)
