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
    assert minidl.gradcheck(WrongTranspose.apply, [x, w], raise_exception=False,
                            report=True) is False
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
