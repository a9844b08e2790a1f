"""minidl.explain for max_pool2d, avg_pool2d, batch_norm and softmax_cross_entropy: the
worked numbers equal autograd's, PyTorch's and independent loop references written here;
ties, divisors and dX's three terms are what the lessons say; the command line prints
them and refuses bad input and sizes too large to print with clear messages."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minidl.explain as ex
from minidl.explain.__main__ import main as cli_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ----------------------------------------------------------------------------- references

def loop_max_pool(x, dy, kernel, stride, padding, dilation, out_hw):
    """y, dX (tie='first') and dX (tie='split') by loops over the definition: padding is
    -inf, the first maximum is the first tap (row-major) strictly above the ones before;
    out_hw from PyTorch (its ceil_mode rule)."""
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel, stride, padding, dilation
    OH, OW = out_hw
    y = np.zeros((N, C, OH, OW))
    d_first, d_split = np.zeros_like(x), np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    best, where, vals = -np.inf, None, []
                    for kh in range(KH):
                        for kw in range(KW):
                            i, j = oh * SH - PH + kh * DH, ow * SW - PW + kw * DW
                            if 0 <= i < H and 0 <= j < W:
                                vals.append((i, j, x[n, c, i, j]))
                                if x[n, c, i, j] > best:
                                    best, where = x[n, c, i, j], (i, j)
                    y[n, c, oh, ow] = best
                    d_first[n, c, where[0], where[1]] += dy[n, c, oh, ow]
                    ties = [(i, j) for i, j, v in vals if v == best]
                    for i, j in ties:
                        d_split[n, c, i, j] += dy[n, c, oh, ow] / len(ties)
    return y, d_first, d_split


def loop_avg_pool(x, dy, kernel, stride, padding, divisor):
    """y and dX by loops, with the divisor (OH, OW) given (PyTorch's, found separately)."""
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    OH, OW = divisor.shape
    y, dX = np.zeros((N, C, OH, OW)), np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    for kh in range(KH):
                        for kw in range(KW):
                            i, j = oh * SH - PH + kh, ow * SW - PW + kw
                            if 0 <= i < H and 0 <= j < W:
                                y[n, c, oh, ow] += x[n, c, i, j] / divisor[oh, ow]
                                dX[n, c, i, j] += dy[n, c, oh, ow] / divisor[oh, ow]
    return y, dX


def torch_divisor(hw, kernel, stride, padding, ceil_mode, count_include_pad):
    """PyTorch's divisor of every window: (taps inside x) / (the average of ones)."""
    ones = torch.ones((1, 1) + tuple(hw), dtype=torch.float64)
    inside = TF.avg_pool2d(ones, kernel, stride, padding, ceil_mode, divisor_override=1)
    avg = TF.avg_pool2d(ones, kernel, stride, padding, ceil_mode, count_include_pad)
    return (inside / avg)[0, 0].numpy()


# ----------------------------------------------------------------------------- pooling

@st.composite
def pool_geometry(draw, dilated):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    reach = [dilation[a] * (kernel[a] - 1) + 1 for a in range(2)]
    H = draw(st.integers(max(1, reach[0] - 2 * padding[0]), 7))
    W = draw(st.integers(max(1, reach[1] - 2 * padding[1]), 7))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    return dict(x=(N, C, H, W), kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, ceil_mode=draw(st.booleans()), seed=draw(st.integers(0, 99)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_geometry(dilated=True), st.sampled_from(["first", "split"]))
def test_max_pool2d_equals_autograd_torch_and_a_loop(g, tie):
    args = (g["kernel"], g["stride"], g["padding"], g["dilation"], g["ceil_mode"])
    try:
        e = ex.max_pool2d(g["x"], *args, tie=tie, seed=g["seed"])
    except ValueError as err:          # a dilated window on padding only: minidl refuses it
        assume("covers only padding" not in str(err) and "too large" not in str(err))
        raise
    x, dy = e["x"], e["dy"]
    xt = t64(x, True)
    yt = TF.max_pool2d(xt, *args)
    y_loop, d_first, d_split = loop_max_pool(x, dy, *args[:4], yt.shape[2:])
    np.testing.assert_array_equal(e["y"], yt.detach().numpy())
    np.testing.assert_array_equal(e["y"], y_loop)
    np.testing.assert_allclose(e["dX"], d_first if tie == "first" else d_split, atol=1e-12)
    if tie == "first":
        # drawn values are distinct in each plane: no tie, PyTorch's gradient is the same
        assert all(len(set(x[n, c].ravel())) == x[n, c].size
                   for n in range(x.shape[0]) for c in range(x.shape[1]))
        yt.backward(t64(dy))
        np.testing.assert_array_equal(e["dX"], xt.grad.numpy())
        _, idx = TF.max_pool2d(t64(x), *args, return_indices=True)
        np.testing.assert_array_equal(e["indices"], idx.numpy())
        assert "ties" not in e.keys()
    else:
        assert set(np.unique(x)) <= {0.0, 1.0, 2.0}
        if not np.array_equal(d_first, d_split):          # some window tied
            assert "ties" in e.keys()
            np.testing.assert_allclose(e["dX_first"], d_first, atol=1e-12)
    # what every window sent is what dX holds
    for (n, c, i, j), terms in e.scatter.items():
        assert sum(v for _, _, v in terms) == pytest.approx(e["dX"][n, c, i, j], abs=1e-12)
    assert e.to_text().rstrip().endswith("checked against autograd: max |diff| = 0") or \
        e.max_abs_diff < 1e-12


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_geometry(dilated=False), st.booleans())
def test_avg_pool2d_divisors_and_numbers_equal_torch_and_a_loop(g, cip):
    args = (g["kernel"], g["stride"], g["padding"], g["ceil_mode"], cip)
    try:
        e = ex.avg_pool2d(g["x"], *args, seed=g["seed"])
    except ValueError as err:
        assume("too large" not in str(err))
        raise
    x, dy = e["x"], e["dy"]
    hw = g["x"][2:]
    d_true = torch_divisor(hw, *args[:4], True)
    d_false = torch_divisor(hw, *args[:4], False)
    np.testing.assert_allclose(e["divisor_with_pad"], d_true, rtol=1e-12)
    np.testing.assert_allclose(e["divisor_without_pad"], d_false, rtol=1e-12)
    np.testing.assert_array_equal(e["divisor"], d_true if cip else d_false)
    xt = t64(x, True)
    yt = TF.avg_pool2d(xt, *args)
    yt.backward(t64(dy))
    y_loop, dx_loop = loop_avg_pool(x, dy, *args[:3], e["divisor"])
    np.testing.assert_allclose(e["y"], yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(e["dX"], xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(e["y"], y_loop, atol=1e-12)
    np.testing.assert_allclose(e["dX"], dx_loop, atol=1e-12)
    np.testing.assert_allclose(e["share"], dy / e["divisor"], atol=0)


def test_max_pool2d_tie_split_lesson():
    x = np.array([[[[1., 3, 3, 0], [2, 3, 0, 0], [5, 1, 4, 4], [0, 5, 4, 4]]]])
    dy = np.array([[[[6., 4], [2, 8]]]])
    e = ex.max_pool2d(x, 2, tie="split", dy=dy)
    np.testing.assert_array_equal(e["dX"][0, 0], [[0, 3, 4, 0], [0, 3, 0, 0], [1, 0, 2, 2],
                                                  [0, 1, 2, 2]])
    np.testing.assert_array_equal(e["dX_first"][0, 0], [[0, 6, 4, 0], [0, 0, 0, 0],
                                                        [2, 0, 8, 0], [0, 0, 0, 0]])
    text = e.to_text()
    assert "y[0,0,0,0] = max(x[0,0,0,0]=1, x[0,0,0,1]=3, x[0,0,1,0]=2, x[0,0,1,1]=3) = 3 at " \
           "tap (0,1) = x[0,0,0,1]   (2 equal maxima, taps (0,1), (1,1))" in text
    assert "dY[0,0,1,1] = 8 -> 8/4 = 2 to each of x[0,0,2,2], x[0,0,2,3], x[0,0,3,2], " \
           "x[0,0,3,3]" in text
    assert "dX[0,0,0,2] = dY[0,0,0,1] = (4) = 4" in text
    assert "dX[0,0,1,1] = dY[0,0,0,0]/2 = (3) = 3" in text
    assert "equal maxima: tie='first' (PyTorch) against tie='split'" in text
    first = ex.max_pool2d(x, 2, dy=dy)
    assert "ties" in first.keys()            # the comparison is shown for tie='first' too
    np.testing.assert_array_equal(first["dX"], e["dX_first"])
    # drawn with tie='split': ties are made to happen, and said so
    drawn = ex.max_pool2d((1, 1, 4, 4), 2, tie="split")
    assert "so that windows tie" in drawn.to_text() and "ties" in drawn.keys()
    assert "distinct integers" in ex.max_pool2d((1, 1, 4, 4), 2).to_text()


def test_max_pool2d_padding_ceil_mode_and_float_values():
    e = ex.max_pool2d((1, 1, 5, 4), (2, 3), stride=(2, 1), padding=1, ceil_mode=True)
    text = e.to_text()
    assert "minus 1 because the last window would start at 6 >= L + P = 6" in text
    assert e["x_pad"][0, 0, 0, 0] == -np.inf and "-inf" in text and "pad" in text
    f = ex.max_pool2d((2, 3, 3), 2, stride=1, values="float", seed=3)   # unbatched shape
    assert f["x"].shape == (1, 2, 3, 3) and f.decimals == 3
    g = ex.max_pool2d(np.arange(16.).reshape(1, 4, 4), 3, stride=1, padding=1, dilation=2)
    np.testing.assert_array_equal(g["y"], TF.max_pool2d(t64(np.arange(16.).reshape(1, 1, 4, 4)),
                                                        3, 1, 1, 2).numpy())


def test_avg_pool2d_divisor_lesson():
    e = ex.avg_pool2d((1, 1, 5, 5), 3, stride=2, padding=1, ceil_mode=True,
                      count_include_pad=False)
    text = e.to_text()
    np.testing.assert_array_equal(e["divisor"], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    np.testing.assert_array_equal(e["divisor_with_pad"], 9 * np.ones((3, 3)))
    assert "d[0,0]: rows -1..1, columns -1..1: with padding 3*3 = 9; inside x 2*2 = 4" in text
    # ceil_mode: the last window runs past the padding and is cut there
    c = ex.avg_pool2d((1, 1, 4, 4), 3, stride=2, padding=1, ceil_mode=True)
    assert "cut at the end of the padding (ceil_mode)" in c.to_text()
    np.testing.assert_array_equal(c["divisor"], torch_divisor((4, 4), 3, 2, 1, True, True))
    inside = ex.avg_pool2d((1, 1, 4, 4), 2)
    assert "every window lies inside x: d = KH*KW = 4 everywhere" in inside.to_text()


def test_pool_errors_are_the_ops_own():
    with pytest.raises(ValueError, match="max_pool2d: padding must be at most half"):
        ex.max_pool2d((1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ValueError, match="max_pool2d: .*larger than the padded input"):
        ex.max_pool2d((1, 1, 2, 2), 3, padding=0)
    with pytest.raises(ValueError, match="tie must be 'first' or 'split'"):
        ex.max_pool2d((1, 1, 4, 4), 2, tie="all")
    with pytest.raises(ValueError, match="avg_pool2d: padding must be at most half"):
        ex.avg_pool2d((1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ValueError, match="dy must have the output's shape"):
        ex.avg_pool2d((1, 1, 4, 4), 2, dy=np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="values must be 'int' or 'float'"):
        ex.max_pool2d((1, 1, 4, 4), 2, values="half")


def test_pool_size_limits_and_summary():
    with pytest.raises(ValueError, match=r"too large to print: input height H = 40 \(at most "
                                         r"16\).*summary=True"):
        ex.max_pool2d((1, 1, 40, 8), 2)
    with pytest.raises(ValueError, match=r"windows N\*C\*OH\*OW = 128 \(at most 64\)"):
        ex.avg_pool2d((2, 4, 8, 8), 2)
    s = ex.max_pool2d((8, 64, 112, 112), 3, stride=2, padding=1, summary=True)
    text = s.to_text()
    assert "windows  (1605632x9)" in text and "dX  (8x64x112x112)" in text
    assert text.rstrip().endswith("nothing to check")
    assert "d  (56x56)" in ex.avg_pool2d((8, 64, 112, 112), 2, summary=True).to_text()


# ----------------------------------------------------------------------------- batch norm

def torch_bn(x, g, b, eps, dy):
    xt = t64(x, True)
    gt = None if g is None else t64(g, True)
    bt = None if b is None else t64(b, True)
    y = TF.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    y.backward(t64(dy))
    return (y.detach().numpy(), xt.grad.numpy(), None if g is None else gt.grad.numpy(),
            None if b is None else bt.grad.numpy())


def channels(a):
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


@pytest.mark.parametrize("shape,kw", [
    ((4, 3), {}),
    ((2, 3, 2, 2), {}),
    ((5, 1), dict(values="float", seed=4)),
    ((3, 2, 1, 4), dict(gamma=False, beta=False)),
    ((6, 2), dict(beta=False, eps=0.1)),
    ((2, 2, 3), dict(seed=9)),
])
def test_batch_norm_equals_torch_and_the_three_terms(shape, kw):
    e = ex.batch_norm(shape, **kw)
    x, dy, g, b = e["x"], e["dy"], e["gamma"], e["beta"]
    eps = kw.get("eps", 1e-5)
    y, dX, dg, db = torch_bn(x, g, b, eps, dy)
    np.testing.assert_allclose(e["y"], y, atol=1e-12)
    np.testing.assert_allclose(e["dX"], dX, atol=1e-12)
    if g is not None:
        np.testing.assert_allclose(e["dgamma"], dg, atol=1e-12)
    if b is not None:
        np.testing.assert_allclose(e["dbeta"], db, atol=1e-12)
    # each term by its own formula, from torch's statistics
    xt = t64(x)
    dims = [0] + list(range(2, x.ndim))
    mean = xt.mean(dim=dims).numpy()
    var = xt.var(dim=dims, unbiased=False).numpy()
    inv = 1 / np.sqrt(var + eps)
    xhat = (channels(x) - mean[:, None]) * inv[:, None]
    gamma = np.ones(x.shape[1]) if g is None else g
    dY = channels(dy)
    direct = (gamma * inv)[:, None] * dY
    via_mean = np.broadcast_to(-(gamma * inv)[:, None] * dY.mean(axis=1, keepdims=True),
                               dY.shape)
    via_var = -(gamma * inv)[:, None] * xhat * (dY * xhat).mean(axis=1, keepdims=True)
    for name, ref in (("mean", mean), ("var", var), ("inv_std", inv), ("xhat", xhat),
                      ("direct", direct), ("via_mean", via_mean), ("via_var", via_var)):
        np.testing.assert_allclose(e[name], ref, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(e["direct"] + e["via_mean"] + e["via_var"], channels(dX),
                               atol=1e-12)
    assert [s for s in e.keys() if s in ("direct", "via_mean", "via_var", "dX")] == \
        ["direct", "via_mean", "via_var", "dX"]
    assert ("dgamma" in e.keys()) == (g is not None) and ("dbeta" in e.keys()) == (b is not None)


def test_batch_norm_text_and_given_arrays():
    x = np.array([[1., 2], [3, 2], [5, 8], [7, 0]])
    e = ex.batch_norm(x, gamma=np.array([2., 1]), beta=np.array([0., 1]), dy=np.ones((4, 2)))
    text = e.to_text()
    assert "mean[0] = ((1) + (3) + (5) + (7)) / 4 = 16 / 4 = 4" in text
    assert "var[0] = ((9) + (1) + (1) + (9)) / 4 = 5" in text
    assert "inv_std[0] = 1 / sqrt(5 + 1e-05) = 0.4472" in text
    assert "dX, term 2: through the mean" in text and "dX, term 3: through the variance" in text
    assert "sum of dX over channel 0 = 0" in text
    np.testing.assert_allclose(e["dX"], 0, atol=1e-12)   # dY constant: no gradient reaches x
    # a drawn constant channel is drawn again
    drawn = [ex.batch_norm((2, 6), seed=s) for s in range(5)]
    assert all(np.all(d["var"] > 0) for d in drawn)
    assert any("constant channel(s) drawn again" in d.to_text() for d in drawn)
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        ex.batch_norm((1, 3))
    with pytest.raises(ValueError, match=r"expected weight of shape \(3,\)"):
        ex.batch_norm((4, 3), gamma=np.ones(2))
    with pytest.raises(ValueError, match=r"values per channel m = 50 \(at most 24\)"):
        ex.batch_norm((2, 2, 5, 5))
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        ex.batch_norm((4, 3), eps=-1)
    assert "x by channel  (64x16384)" in ex.batch_norm((16, 64, 32, 32), summary=True).to_text()


# ----------------------------------------------------------------------------- softmax-CE

@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("values,seed", [("int", 0), ("float", 5)])
def test_softmax_cross_entropy_equals_torch(eps, values, seed):
    e = ex.softmax_cross_entropy((4, 5), None, label_smoothing=eps, values=values, seed=seed,
                                 dy=2.5)
    z, t = e["logits"], e["target"]
    zt = t64(z, True)
    loss = TF.cross_entropy(zt, torch.tensor(t), label_smoothing=eps)
    (loss * 2.5).backward()
    assert float(e["loss"]) == pytest.approx(loss.item(), abs=1e-12)
    np.testing.assert_allclose(e["dlogits"], zt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(e["p"], torch.softmax(t64(z), 1).numpy(), atol=1e-12)
    np.testing.assert_allclose(e["logp"], torch.log_softmax(t64(z), 1).numpy(), atol=1e-12)
    q = np.full((4, 5), eps / 5) + (1 - eps) * np.eye(5)[t]
    np.testing.assert_allclose(e["q"], q, atol=1e-15)
    np.testing.assert_allclose(e["dlogits"], 2.5 * (e["p"] - q) / 4, atol=1e-15)


def test_softmax_cross_entropy_text_and_errors():
    e = ex.softmax_cross_entropy(np.array([[2., 1, 0], [0, 0, 0]]), [0, 2])
    text = e.to_text()
    assert "s[1] = 1 + 1 + 1 = 3" in text
    assert "loss[1] = -logp[1, t=2] = -(-1.0986) = 1.0986" in text
    assert "dZ[1, 2] = 1 * (0.3333 - 1) / 2 = -0.3333" in text
    assert "0.9250 at the target" in ex.softmax_cross_entropy((3, 4), [0, 2, 1],
                                                              label_smoothing=0.1).to_text()
    with pytest.raises(IndexError, match="target contains class 7"):
        ex.softmax_cross_entropy((3, 4), [0, 7, 1])
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        ex.softmax_cross_entropy((3, 4), [0, 1, 1], label_smoothing=2)
    with pytest.raises(ValueError, match=r"expected class-index target of shape \(3,\)"):
        ex.softmax_cross_entropy((3, 4), [0, 1])
    with pytest.raises(ValueError, match=r"too large to print: classes C = 20 \(at most 12\)"):
        ex.softmax_cross_entropy((3, 20), None)
    assert "z  (300x400)" in ex.softmax_cross_entropy((300, 400), None, summary=True).to_text()


# ----------------------------------------------------------------------------- command line

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minidl.explain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,expected", [
    (["max_pool2d", "--input", "1x1x4x4", "--kernel-size", "2", "--tie", "split"],
     lambda: ex.max_pool2d((1, 1, 4, 4), 2, tie="split")),
    (["avg_pool2d", "--input", "1x1x5x4", "--kernel-size", "3,2", "--stride", "2",
      "--padding", "1", "--ceil-mode", "--no-count-include-pad"],
     lambda: ex.avg_pool2d((1, 1, 5, 4), (3, 2), 2, 1, True, False)),
    (["batch_norm", "--input", "4x3", "--eps", "0.001"],
     lambda: ex.batch_norm((4, 3), eps=0.001)),
    (["softmax_cross_entropy", "--input", "3x4", "--target", "0,2,1", "--label-smoothing",
      "0.1"], lambda: ex.softmax_cross_entropy((3, 4), [0, 2, 1], label_smoothing=0.1)),
])
def test_cli_subcommands(args, expected):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected().to_text()
    assert "checked against autograd: max |diff| " in r.stdout.splitlines()[-1]


def test_cli_bad_input_in_a_subprocess():
    r = run_cli("softmax_cross_entropy", "--input", "3x4", "--target", "0,9,1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "softmax_cross_entropy: error: cross_entropy: target contains class 9" in r.stderr


def test_cli_in_process(capsys, tmp_path):
    cli_main(["max_pool2d", "--input", "1x2x3", "--kernel-size", "2", "--stride", "1",
              "--dilation", "1", "--step", "backward", "--format", "markdown"])
    out = capsys.readouterr().out
    assert "## explain max_pool2d" in out and "(forward)" not in out
    cli_main(["batch_norm", "--input", "2x2x2x2", "--no-affine", "--values", "float",
              "--seed", "3", "--format", "latex"])
    out = capsys.readouterr().out
    assert r"\begin{bmatrix}" in out and "dgamma" not in out
    cli_main(["avg_pool2d", "--input", "8x64x112x112", "--kernel-size", "2", "--summary"])
    assert "windows  (1605632x4)" in capsys.readouterr().out
    out_file = tmp_path / "ce.txt"
    cli_main(["softmax_cross_entropy", "--input", "2x3", "--out", str(out_file)])
    assert capsys.readouterr().out.strip() == f"wrote {out_file}"
    assert "target drawn with seed 0" in out_file.read_text()


@pytest.mark.parametrize("args,message", [
    (["max_pool2d", "--input", "1x4", "--kernel-size", "2"],
     "argument --input: expected N x C x H x W like 1x1x4x4, got '1x4'"),
    (["max_pool2d", "--input", "1x1x4x4", "--kernel-size", "2", "--padding", "2"],
     "max_pool2d: padding must be at most half the kernel size"),
    (["max_pool2d", "--input", "1x1x4x4", "--kernel-size", "2", "--tie", "both"],
     "argument --tie: invalid choice: 'both'"),
    (["avg_pool2d", "--input", "1x1x30x4", "--kernel-size", "2"],
     "too large to print: input height H = 30 (at most 16)"),
    (["avg_pool2d", "--input", "1x1x4x4", "--kernel-size", "2", "--dilation", "2"],
     "unrecognized arguments: --dilation 2"),
    (["batch_norm", "--input", "1x3"], "expected more than 1 value per channel"),
    (["batch_norm", "--input", "4x3", "--bias"], "unrecognized arguments: --bias"),
    (["softmax_cross_entropy", "--input", "3x4", "--target", "a,b"],
     "argument --target: expected class indices like 0,2,1, got 'a,b'"),
    (["softmax_cross_entropy", "--input", "3x4", "--target", "0,1"],
     "expected class-index target of shape (3,)"),
    (["softmax_cross_entropy", "--input", "3x4", "--label-smoothing", "1.5"],
     "label_smoothing must be in [0, 1], got 1.5"),
])
def test_cli_bad_input_messages(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
