"""minidl.explain: the worked numbers equal autograd's and an independent brute-force loop
convolution; the labels name the right entries; the renderers and the command line print
what a learner needs; sizes too large to print are refused with a clear message."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minidl
import minidl.explain as ex
import minidl.nn.functional as F
from minidl.explain.__main__ import main as cli_main
from minidl.explain.core import fmt_number

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXAMPLE = dict(x=(1, 2, 5, 4), w=(3, 2, 3, 3), stride=2, padding=1)


# ----------------------------------------------------------------------------- references

def loop_conv(x, w, b, dy, stride, pads, dilation, groups):
    """y, dX, dW, db by brute-force loops over the definition
    y[n,o,i,j] = b[o] + sum_{c,kh,kw} w[o,c,kh,kw] x[n, g*Cg+c, i*SH+kh*DH-PH0, j*SW+kw*DW-PW0]
    (terms outside x are the zero padding), independent of im2col."""
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    (SH, SW), (DH, DW), ((PH0, PH1), (PW0, PW1)) = stride, dilation, pads
    OH = (H + PH0 + PH1 - DH * (KH - 1) - 1) // SH + 1
    OW = (W + PW0 + PW1 - DW * (KW - 1) - 1) // SW + 1
    OCg = OC // groups
    y = np.zeros((N, OC, OH, OW))
    dX, dW = np.zeros_like(x), np.zeros_like(w)
    for n in range(N):
        for o in range(OC):
            g = o // OCg
            for i in range(OH):
                for j in range(OW):
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                p, q = i * SH + kh * DH - PH0, j * SW + kw * DW - PW0
                                if 0 <= p < H and 0 <= q < W:
                                    xc = g * Cg + c
                                    y[n, o, i, j] += w[o, c, kh, kw] * x[n, xc, p, q]
                                    dW[o, c, kh, kw] += dy[n, o, i, j] * x[n, xc, p, q]
                                    dX[n, xc, p, q] += dy[n, o, i, j] * w[o, c, kh, kw]
    if b is not None:
        y += b[None, :, None, None]
    return y, dX, dW, dy.sum(axis=(0, 2, 3))


def parse(label):
    return tuple(int(v) for v in label.strip("()").split(","))


def check_labels(e):
    """Row label r of every im2col matrix is its (c, kh, kw), column label k its (n, oh, ow):
    checked against the definition col[(c,kh,kw),(n,oh,ow)] = xpad[n, c, oh*SH+kh*DH, ...]."""
    geo, xpad = e.geometry, e["x_pad"]
    mats = e.step("col").matrices
    assert len(mats) == geo.G
    Cg = geo.C // geo.G
    for g, m in enumerate(mats):
        assert len(m.rows) == Cg * geo.KH * geo.KW and len(m.cols) == geo.N * geo.OH * geo.OW
        for r, rl in enumerate(m.rows):
            c, kh, kw = parse(rl)
            assert c // Cg == g and (c % Cg, kh, kw) == np.unravel_index(r, (Cg, geo.KH, geo.KW))
            for k, cl in enumerate(m.cols):
                n, oh, ow = parse(cl)
                assert (n, oh, ow) == np.unravel_index(k, (geo.N, geo.OH, geo.OW))
                assert m.values[r, k] == xpad[n, c, oh * geo.SH + kh * geo.DH,
                                              ow * geo.SW + kw * geo.DW]


# ----------------------------------------------------------------------------- geometries

@st.composite
def geometries(draw):
    G = draw(st.integers(1, 2))
    Cg = draw(st.integers(1, 3 // G))
    OCg = draw(st.integers(1, 2))
    N = draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    return dict(x=(N, G * Cg, H, W), w=(G * OCg, Cg, KH, KW), stride=stride,
                padding=padding, dilation=dilation, groups=G,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 1000)))


def fits(g):
    (N, C, H, W), (OC, Cg, KH, KW) = g["x"], g["w"]
    OH = (H + 2 * g["padding"][0] - g["dilation"][0] * (KH - 1) - 1) // g["stride"][0] + 1
    OW = (W + 2 * g["padding"][1] - g["dilation"][1] * (KW - 1) - 1) // g["stride"][1] + 1
    return OH >= 1 and OW >= 1 and N * OH * OW <= ex.conv.LIMITS["L"]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(geometries())
def test_conv2d_steps_equal_autograd_and_a_loop_convolution(g):
    assume(fits(g))
    e = ex.conv2d(g["x"], g["w"], True if g["bias"] else None, stride=g["stride"],
                  padding=g["padding"], dilation=g["dilation"], groups=g["groups"],
                  seed=g["seed"])
    x, w, b, dy = e["x"], e["w"], e["b"], e["dy"]
    assert np.array_equal(x, np.round(x)) and np.abs(x).max() <= 3 and np.abs(w).max() <= 2
    pads = ((g["padding"][0],) * 2, (g["padding"][1],) * 2)
    y, dX, dW, db = loop_conv(x, w, b, dy, g["stride"], pads, g["dilation"], g["groups"])
    # integers in float64: every step is exact
    assert np.array_equal(e["y"], y)
    assert np.array_equal(e["dW"], dW)
    assert np.array_equal(e["dX"], dX)
    assert np.array_equal(e["dX_flip"], dX)              # the flipped-kernel view agrees
    if b is not None:
        assert np.array_equal(e["db"], db)
    assert e.max_abs_diff == 0
    # the GEMM steps are the matrix products they claim
    for gi in range(g["groups"]):
        assert np.array_equal(e["Y"][gi], e["Wm"][gi] @ e["col"][gi])
        assert np.array_equal(e["dcol"][gi], e["Wm"][gi].T @ e["dY"][gi])
    # the scatter list adds up to dX, cell by cell
    for (n, c, i, j), terms in e.scatter.items():
        assert sum(v for *_, v in terms) == dX[n, c, i, j]
    check_labels(e)
    assert str(e).rstrip().endswith("checked against autograd: max |diff| = 0")


def test_conv2d_float_values_and_given_arrays():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 2, 2, 3)), \
        rng.standard_normal(4)
    args = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    y0 = F.conv2d(minidl.tensor(x), minidl.tensor(w), minidl.tensor(b), **args).numpy()
    dy = rng.standard_normal(y0.shape)
    e = ex.conv2d(minidl.tensor(x), w, b, dy=dy, **args)        # a Tensor is accepted too
    assert np.array_equal(e["dy"], dy) and e.decimals == 3
    pads = ((1, 1), (0, 0))
    y, dX, dW, db = loop_conv(x, w, b, dy, (2, 1), pads, (1, 2), 2)
    for name, ref in (("y", y), ("dX", dX), ("dW", dW), ("db", db), ("dX_flip", dX)):
        np.testing.assert_allclose(e[name], ref, rtol=1e-12, atol=1e-12)
    assert e.max_abs_diff < 1e-12
    check_labels(e)
    text = e.to_text()
    assert "checked against autograd: max |diff| " in text.splitlines()[-1]
    assert "(group 1)" in text and "(2,0,0)" in e.step("col").matrices[1].rows[0]
    f = ex.conv2d((1, 1, 4, 4), (1, 1, 2, 2), values="float", seed=3)
    assert f.decimals == 3 and not np.array_equal(f["x"], np.round(f["x"]))


def test_padding_same_and_unbatched():
    e = ex.conv2d((1, 2, 5, 4), (2, 2, 2, 3), padding="same")
    assert e["y"].shape == (1, 2, 5, 4)
    assert e.geometry.padding == ((0, 1), (1, 1))               # the odd pixel at the bottom
    assert "padding='same'" in e.header[1]
    e3 = ex.conv2d(np.ones((1, 3, 3)), np.ones((1, 1, 2, 2)))
    assert e3["y"].shape == (1, 1, 2, 2) and np.all(e3["y"] == 4)


# ----------------------------------------------------------------------------- the example

def example():
    return ex.conv2d(EXAMPLE["x"], EXAMPLE["w"], True, stride=2, padding=1)


def test_issue_example_labels_and_steps():
    e = example()
    assert e.keys() == ["inputs", "x_pad", "col", "Wm", "Y", "y", "dY", "dW", "db", "dcol",
                        "col2im", "flip_dy", "flip_w", "flip_dx"]
    col = e.step("col").matrices[0]
    assert col.shape == (18, 6) and col.row_title == "(c,kh,kw)" and col.col_title == "(n,oh,ow)"
    assert col.rows[:4] == ["(0,0,0)", "(0,0,1)", "(0,0,2)", "(0,1,0)"]
    assert col.rows[9] == "(1,0,0)" and col.cols == ["(0,0,0)", "(0,0,1)", "(0,1,0)",
                                                     "(0,1,1)", "(0,2,0)", "(0,2,1)"]
    # column (0,1,0) is the window at padded rows 2..4, columns 0..2
    assert np.array_equal(col.values[:9, 2], e["x_pad"][0, 0, 2:5, 0:3].ravel())
    assert e["x_pad"].shape == (1, 2, 7, 6) and e["y"].shape == (1, 3, 3, 2)
    assert e["dy_dilated"].shape == (1, 3, 5, 3) and e["dy_padded"].shape == (1, 3, 9, 7)
    assert np.array_equal(e["w_rot"][1, 0], e["w"][1, 0][::-1, ::-1])
    check_labels(e)


def test_issue_example_text_markdown_latex():
    e = example()
    text = e.to_text()
    lines = text.rstrip().splitlines()
    assert lines[0] == "== explain conv2d =="
    assert lines[-1] == "checked against autograd: max |diff| = 0"
    for piece in ["im2col", "= xpad[n, c, oh*2 + kh*1, ow*2 + kw*1]",
                  "rows (c,kh,kw), columns (n,oh,ow)", "Y = Wm . col", "dW = dY . col^T",
                  "dcol = Wm^T . dY", "col2im", "rotated by 180 degrees",
                  "floor((5 + 1 + 1 - 1*2 - 1) / 2) + 1 = 3", "y (N, OC, OH, OW) = (1, 3, 3, 2)",
                  "max |dX (flipped kernel) - dX (col2im)| = 0"]:
        assert piece in text, piece
    # the scatter: the centre pixel of a stride-2 overlap gets four dcol entries
    cell = next(line for line in lines if line.strip().startswith("dX[0,0,1,1] ="))
    assert cell.count("dcol[") == 4
    # every dcol entry copied from x (not from the padding) is listed exactly once
    assert sum(len(t) for t in e.scatter.values()) == sum(
        _inside(e, r, k) for r in range(18) for k in range(6))
    assert str(e) == text
    fwd, bwd = e.to_text(step="forward"), e.to_text(step="backward")
    assert "xpad[n=0, c=0]" in fwd and "dcol" not in fwd
    assert "dcol" in bwd and "xpad[n=0, c=0]" not in bwd
    assert fwd.rstrip().endswith("max |diff| = 0") and bwd.rstrip().endswith("max |diff| = 0")
    md = e.to_markdown()
    assert "| (c,kh,kw) \\ (n,oh,ow) | (0,0,0) | (0,0,1) |" in md
    assert "### 3. im2col" in md and md.rstrip().endswith("*checked against autograd: "
                                                          "max |diff| = 0*")
    tex = e.to_latex()
    assert tex.count(r"\begin{bmatrix}") == tex.count(r"\end{bmatrix}") > 10
    assert r"(c,kh,kw): (0,0,0), (0,0,1)" in tex and r"\paragraph{3. im2col" in tex
    html = e._repr_html_()
    assert "<table" in html and "(0,2,1)" in html
    with pytest.raises(ValueError, match="step must be one of"):
        e.to_text(step="sideways")


def _inside(e, r, k):
    """Whether im2col entry (r, k) of the example was copied from x (not from padding)."""
    geo = e.geometry
    c, kh, kw = np.unravel_index(r, (geo.C, geo.KH, geo.KW))
    n, oh, ow = np.unravel_index(k, (geo.N, geo.OH, geo.OW))
    i, j = oh * geo.SH + kh * geo.DH - geo.PH0, ow * geo.SW + kw * geo.DW - geo.PW0
    return 0 <= i < geo.H and 0 <= j < geo.W


def test_non_square_stride_example():
    e = ex.conv2d(EXAMPLE["x"], EXAMPLE["w"], True, stride=(2, 1), padding=(1, 0))
    geo = e.geometry
    assert (geo.SH, geo.SW, geo.PH0, geo.PW0, geo.OH, geo.OW) == (2, 1, 1, 0, 3, 2)
    text = e.to_text()
    assert "xpad[n, c, oh*2 + kh*1, ow*1 + kw*1]" in text
    assert "SH-1 = 1 zero rows and SW-1 = 0 zero columns" in text
    assert "(H, PH0, PH1, DH, KH, SH) = (5, 1, 1, 1, 3, 2)" in text
    assert "(W, PW0, PW1, DW, KW, SW) = (4, 0, 0, 1, 3, 1)" in text
    assert text.rstrip().endswith("checked against autograd: max |diff| = 0")
    check_labels(e)


def test_text_wraps_wide_matrices_and_numbers_print_cleanly():
    e = ex.conv2d((1, 6, 3, 3), (2, 6, 3, 3), padding=1)       # Wm is 2 x 54
    block = e.to_text(width=80).split("-- 4.")[1].split("-- 5.")[0]
    assert "columns 0.." in block and all(len(line) <= 80 for line in block.splitlines()
                                          if line.startswith("    "))
    assert fmt_number(-0.0, 0) == "0" and fmt_number(-0.0001, 3) == "0.000"
    assert fmt_number(3.0, 0) == "3" and fmt_number(-0.25, 3) == "-0.250"


# ----------------------------------------------------------------------------- errors, sizes

def test_too_large_to_print_and_summary():
    with pytest.raises(ValueError, match=r"too large to print: output height OH = 14 "
                                         r"\(at most 12\).*summary=True"):
        ex.conv2d((1, 1, 16, 16), (1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"input channels C = 64 \(at most 6\)"):
        ex.conv2d((8, 64, 56, 56), (128, 64, 3, 3))
    with pytest.raises(ValueError, match=r"im2col columns L = N\*OH\*OW = 100"):
        ex.conv2d((4, 1, 5, 5), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="too large to print"):
        ex.linear((13, 2), (2, 2))
    s = ex.conv2d((64, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1, summary=True)
    text = s.to_text()
    assert "col  (576x50176)" in text and "dX  (64x64x56x56)" in text
    assert text.rstrip().endswith("nothing to check") and s.max_abs_diff is None
    assert s.keys() == example().keys()[:8] + ["dcol", "col2im", "flip_dy", "flip_w",
                                                "flip_dx"]
    assert "\\in \\mathbb{R}^{576\\times50176}" in s.to_latex()


@pytest.mark.parametrize("xs,ws,kw", [
    ((1, 2, 3, 3), (1, 2, 5, 5), {}),                       # kernel larger than the input
    ((1, 2, 5, 5), (1, 3, 3, 3), {}),                       # channels do not match
    ((1, 2, 5, 5), (2, 2, 3, 3), dict(stride=0)),           # bad stride
    ((1, 2, 5, 5), (2, 2, 3, 3), dict(stride=2, padding="same")),
    ((1, 2, 5, 5), (3, 1, 3, 3), dict(groups=2)),            # OC not divisible
])
def test_impossible_geometry_gets_conv2ds_own_error(xs, ws, kw):
    with pytest.raises(Exception) as theirs:
        F.conv2d(minidl.zeros(xs, dtype=minidl.float64), minidl.zeros(ws, dtype=minidl.float64),
                 **kw)
    for summary in (False, True):
        with pytest.raises(type(theirs.value)) as ours:
            ex.conv2d(xs, ws, **kw, summary=summary)
        assert str(ours.value) == str(theirs.value)
        assert str(ours.value).startswith("conv2d: ")


def test_given_dy_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(1, 1, 2, 2\)"):
        ex.conv2d((1, 1, 3, 3), (1, 1, 2, 2), dy=np.ones((1, 1, 3, 3)))


# ----------------------------------------------------------------------------- linear, chain

def test_linear_against_torch():
    e = ex.linear((2, 3), (4, 3), b=True, seed=5)
    x, w, b, dy = (torch.tensor(e[k], requires_grad=True) for k in ("x", "w", "b", "dy"))
    y = torch.nn.functional.linear(x, w, b)
    y.backward(dy)
    assert np.array_equal(e["y"], y.detach().numpy())
    assert np.array_equal(e["dX"], x.grad.numpy()) and np.array_equal(e["dW"], w.grad.numpy())
    assert np.array_equal(e["db"], b.grad.numpy())
    text = e.to_text()
    assert "dX = dY . W" in text and "dW = dY^T . x" in text and "rows n, columns i" in text
    assert text.rstrip().endswith("max |diff| = 0")
    assert e.keys() == ["inputs", "y", "dY", "dX", "dW", "db"]
    assert "db" not in ex.linear((2, 3), (4, 3)).keys()
    assert ex.linear((2, 3), (4, 3), summary=True).max_abs_diff is None
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 3\)"):
        ex.linear((2, 2), (4, 3))


def torch_chain(e, pool):
    x, w, dp = (torch.tensor(e[k], requires_grad=True) for k in ("x", "w", "dp"))
    b = None if e["b"] is None else torch.tensor(e["b"], requires_grad=True)
    geo = e.geometry
    y = torch.nn.functional.conv2d(x, w, b, stride=geo.stride, dilation=geo.dilation,
                                   padding=(geo.PH0, geo.PW0), groups=geo.G)
    p = torch.nn.functional.max_pool2d(torch.relu(y), pool)
    p.backward(dp)
    return p.detach().numpy(), x.grad.numpy(), w.grad.numpy(), \
        None if b is None else b.grad.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_against_torch_without_ties_or_zeros(seed):
    e = ex.chain((2, 2, 6, 5), (3, 2, 3, 2), b=True, padding=(1, 0), pool=2, seed=seed)
    p, dX, dW, db = torch_chain(e, 2)
    assert np.array_equal(e["p"], p) and np.array_equal(e["dX"], dX)
    assert np.array_equal(e["dW"], dW) and np.array_equal(e["db"], db)
    y = e["y"]
    assert not np.any(y == 0)                                  # no ReLU kink
    z = np.maximum(y, 0)
    for n in range(2):
        for o in range(3):
            for i in range(y.shape[2] // 2):
                for j in range(y.shape[3] // 2):
                    win = z[n, o, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    assert win.max() == 0 or (win == win.max()).sum() == 1
    # the chain rule: dY = (dP to the argmax) * [y > 0]
    assert np.array_equal(e["dY_conv"], e["dZ"] * (y > 0))
    keys = e.keys()
    assert keys.index("conv.y") < keys.index("relu") < keys.index("pool") < keys.index("dP") \
        < keys.index("pool_back") < keys.index("relu_back") < keys.index("conv.dW")
    text = e.to_text()
    assert " goes to dZ[" in text and "[y > 0][n=0, o=0]" in text
    assert text.rstrip().endswith("max |diff| = 0")


def test_chain_float_and_summary():
    e = ex.chain((1, 1, 5, 5), (2, 1, 2, 2), values="float", seed=4, pool=(2, 1))
    p, dX, dW, _ = torch_chain(e, (2, 1))
    np.testing.assert_allclose(e["p"], p, rtol=1e-12)
    np.testing.assert_allclose(e["dX"], dX, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(e["dW"], dW, rtol=1e-12, atol=1e-12)
    s = ex.chain((8, 3, 32, 32), (16, 3, 5, 5), summary=True)
    assert "p  (8x16x14x14)" in s.to_text()


# ----------------------------------------------------------------------------- the package

def test_check_backward_is_plugged_in_lazily():
    assert callable(ex.check_backward) and "check_backward" in ex.__all__


# ----------------------------------------------------------------------------- command line

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "minidl.explain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_issue_example_and_out_file(tmp_path):
    r = run_cli("conv2d", "--input", "1x2x5x4", "--kernel", "3x2x3x3", "--stride", "2",
                "--padding", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == example().to_text()
    out = tmp_path / "conv.md"
    r = run_cli("conv2d", "--input", "1x2x5x4", "--kernel", "3x2x3x3", "--stride", "2,1",
                "--padding", "1,0", "--format", "markdown", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}"
    assert out.read_text().rstrip().endswith("*checked against autograd: max |diff| = 0*")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.md"]   # no temp file left
    r = run_cli("linear", "--input", "2x3", "--weight", "4x3", "--out",
                str(tmp_path / "missing" / "x.txt"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_cli_in_process(capsys):
    assert cli_main(["linear", "--input", "2x3", "--weight", "4x3", "--no-bias"]) == 0
    out = capsys.readouterr().out
    assert "== explain linear ==" in out and "db" not in out.split("--")[-1]
    cli_main(["chain", "--input", "1x1x6x6", "--kernel", "2x1x3x3", "--pool", "2",
              "--step", "backward", "--format", "latex"])
    out = capsys.readouterr().out
    assert r"\begin{bmatrix}" in out and "pool" in out
    cli_main(["conv2d", "--input", "1x2x5x4", "--kernel", "2x1x2x2", "--groups", "2",
              "--padding", "same", "--values", "float", "--seed", "7"])
    assert "(group 1)" in capsys.readouterr().out
    cli_main(["conv2d", "--input", "4x64x56x56", "--kernel", "64x64x3x3", "--padding", "1", "--summary"])
    assert "col  (576x12544)" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["conv2d", "--input", "1x2", "--kernel", "3x2x3x3"],
     "argument --input: expected N x C x H x W like 1x2x5x4, got '1x2'"),
    (["conv2d", "--input", "1x2x5x4", "--kernel", "3by2"],
     "argument --kernel: expected OC x C/G x KH x KW like 3x2x3x3, got '3by2'"),
    (["conv2d", "--input", "1x2x5x4", "--kernel", "3x2x3x3", "--stride", "2,1,1"],
     "argument --stride: expected an int or a pair like 2,1, got '2,1,1'"),
    (["linear", "--input", "2x3x4", "--weight", "4x3"],
     "argument --input: expected N x IN like 2x3, got '2x3x4'"),
    (["conv2d", "--input", "1x2x3x3", "--kernel", "3x2x5x5"],
     "conv2d: input (1, 2, 3, 3) is too small"),
    (["conv2d", "--input", "1x1x20x20", "--kernel", "1x1x3x3"],
     "too large to print: input height H = 20 (at most 16)"),
])
def test_cli_bad_input_messages(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_cli_help_explains_the_shape_syntax():
    r = run_cli("conv2d", "--help")
    assert r.returncode == 0
    assert "N x C x H x W   like 1x2x5x4" in r.stdout and "--summary" in r.stdout


def test_check_line_hides_float64_rounding():
    """A difference of a few ulps is float64 rounding, whose last bits differ between
    machines: the check line says so instead of printing it (docs stay reproducible)."""
    e = minidl.explain.conv2d((1, 1, 3, 3), (1, 1, 2, 2))
    e.max_abs_diff = 2.2e-16
    assert e.check_line.endswith("max |diff| < 1e-12 (float64 rounding)")
    e.max_abs_diff = 0.0
    assert e.check_line.endswith("max |diff| = 0")


def test_cli_receptive_field_growth(capsys):
    """``receptive-field --model resnet18`` prints the field layer by layer, ending at 435."""
    assert cli_main(["receptive-field", "--model", "resnet18"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    assert conv1.split()[-3:] == ["7", "2", "0"]                 # size, jump, start
    assert any(line.split()[:1] == ["layer4"] and line.split()[-3:] == ["435", "32", "0"]
               for line in lines)
    assert lines[-1].endswith(": 435")
