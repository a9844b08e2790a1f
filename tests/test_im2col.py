"""im2col / col2im: the NumPy reference against a brute-force loop, the numba fast path against
the reference (float32 and float64, many geometries), and col2im as the adjoint of im2col."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl.kernels.im2col  # noqa: F401 - the module, whose name the function shadows
from minidl.kernels.im2col import (col2im, col2im_numba, col2im_reference, conv_output_size,
                                   im2col, im2col_numba, im2col_reference, numba_available)

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

# (N, C, H, W), KH, KW, SH, SW, PH, PW, DH, DW; PH/PW may be (before, after) pairs.
GEOMETRIES = [
    ((2, 3, 7, 9), 3, 2, 2, 1, 1, 0, 1, 2),           # non-square everything
    ((1, 1, 5, 5), 2, 2, 1, 1, 0, 0, 1, 1),
    ((2, 2, 8, 6), 3, 3, 3, 2, (1, 2), (0, 1), 2, 1),  # asymmetric padding
    ((2, 3, 4, 4), 1, 1, 1, 1, 0, 0, 1, 1),           # 1x1
    ((3, 2, 6, 7), 2, 3, 1, 1, (0, 1), (1, 2), 1, 1),  # 'same'-style even kernel
    ((1, 2, 5, 5), 5, 5, 1, 1, 0, 0, 1, 1),           # kernel == input: OH = OW = 1
    ((2, 1, 3, 4), 3, 3, 1, 1, 2, 2, 1, 1),           # padding as large as the kernel
    ((2, 2, 9, 10), 3, 2, 4, 3, 1, 2, 2, 3),          # stride that does not divide
    ((1, 3, 4, 5), 2, 2, 5, 5, 0, 0, 1, 1),           # stride larger than the kernel
]


def brute_im2col(x, KH, KW, SH, SW, PH, PW, DH, DW):
    """One element at a time, straight from the definition (independent of the kernels)."""
    PH0, PH1 = PH if isinstance(PH, tuple) else (PH, PH)
    PW0, PW1 = PW if isinstance(PW, tuple) else (PW, PW)
    N, C, H, W = x.shape
    OH = (H + PH0 + PH1 - DH * (KH - 1) - 1) // SH + 1
    OW = (W + PW0 + PW1 - DW * (KW - 1) - 1) // SW + 1
    col = np.zeros((C, KH, KW, N, OH, OW), x.dtype)
    for c, kh, kw, n, oh, ow in np.ndindex(col.shape):
        ih = oh * SH + kh * DH - PH0
        iw = ow * SW + kw * DW - PW0
        if 0 <= ih < H and 0 <= iw < W:
            col[c, kh, kw, n, oh, ow] = x[n, c, ih, iw]
    return col


def _x(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_reference_matches_brute_force(geo, rng):
    shape, *params = geo
    x = _x(rng, shape, np.float64)
    np.testing.assert_array_equal(im2col_reference(x, *params), brute_im2col(x, *params))


@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_col2im_is_adjoint(geo, rng):
    """<im2col(x), c> == <x, col2im(c)> for both implementations."""
    shape, *params = geo
    H, W = shape[2:]
    x = _x(rng, shape, np.float64)
    impls = ["numpy"] + (["numba"] if numba_available() else [])
    for impl in impls:
        col = im2col(x, *params, impl=impl)
        c = rng.standard_normal(col.shape)
        back = col2im(c, H, W, *params[2:], impl=impl)
        assert back.shape == x.shape
        np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_numba_matches_reference(geo, dtype, rng):
    shape, *params = geo
    H, W = shape[2:]
    x = _x(rng, shape, dtype)
    col = im2col_numba(x, *params)
    assert col.dtype == dtype
    np.testing.assert_array_equal(col, im2col_reference(x, *params))  # a copy: exact
    c = _x(rng, col.shape, dtype)
    img = col2im_numba(c, H, W, *params[2:])
    assert img.dtype == dtype and img.flags.c_contiguous
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(img, col2im_reference(c, H, W, *params[2:]), rtol=tol, atol=tol)


@st.composite
def geometries(draw):
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    DH, DW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    PW = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    # H, W at least large enough for one window in the padded input
    H = max(1, DH * (KH - 1) + 1 - sum(PH)) + draw(st.integers(0, 6))
    W = max(1, DW * (KW - 1) + 1 - sum(PW)) + draw(st.integers(0, 6))
    return (N, C, H, W), KH, KW, SH, SW, PH, PW, DH, DW


@needs_numba
@settings(max_examples=150, deadline=None)
@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]))
def test_numba_matches_reference_property(geo, dtype):
    shape, *params = geo
    rng = np.random.default_rng(0)
    x = _x(rng, shape, dtype)
    col = im2col_numba(x, *params)
    np.testing.assert_array_equal(col, im2col_reference(x, *params))
    c = _x(rng, col.shape, dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(col2im_numba(c, *shape[2:], *params[2:]),
                               col2im_reference(c, *shape[2:], *params[2:]), rtol=tol, atol=tol)


@needs_numba
def test_numba_accepts_non_contiguous_input(rng):
    x = _x(rng, (3, 2, 6, 5), np.float32).transpose(1, 0, 2, 3)  # (2, 3, 6, 5), strided
    params = (3, 2, 2, 1, 1, 0, 1, 1)
    np.testing.assert_array_equal(im2col_numba(x, *params), im2col_reference(x, *params))
    col = im2col_reference(x, *params)
    c = _x(rng, col.shape[::-1], np.float32).T  # a non-contiguous col of the right shape
    np.testing.assert_allclose(col2im_numba(c, 6, 5, *params[2:]),
                               col2im_reference(c, 6, 5, *params[2:]), rtol=1e-6, atol=1e-6)


def test_auto_dispatch(rng):
    mod = minidl.kernels.im2col
    x32 = _x(rng, (1, 1, 4, 4), np.float32)
    choose = mod._switch.choose
    assert choose(x32, "auto", "im2col") == ("numba" if numba_available() else "numpy")
    assert choose(x32, "numpy", "im2col") == "numpy"
    assert choose(x32.astype(np.float16), "auto", "im2col") == "numpy"  # the reference
    col = im2col(x32.astype(np.float16), 2, 2)
    assert col.dtype == np.float16 and col.shape == (1, 2, 2, 1, 3, 3)
    with pytest.raises(ValueError, match="impl must be"):
        im2col(x32, 2, 2, impl="fortran")


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_out_argument(impl, rng):
    if impl == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    x = _x(rng, (2, 3, 5, 4), np.float32)
    params = (3, 2, 1, 2, 1, (0, 1), 1, 1)
    expected = im2col_reference(x, *params)
    out = np.full(expected.shape, np.nan, np.float32)
    assert im2col(x, *params, impl=impl, out=out) is out
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array of shape"):
        im2col(x, *params, impl=impl, out=np.empty(expected.shape, np.float64))
    with pytest.raises(ValueError, match="out must be"):
        im2col(x, *params, impl=impl, out=np.empty(expected.shape[::-1], np.float32).T)


def test_shapes_and_output_size():
    assert conv_output_size(32, 5) == 28
    assert conv_output_size(7, 3, s=2, p=1) == 4
    assert conv_output_size(7, 3, s=2, p=(1, 0)) == 3
    assert conv_output_size(10, 3, d=2) == 6
    x = np.zeros((2, 3, 7, 9), np.float32)
    assert im2col(x, 3, 2, 2, 1, 1, 0, 1, 2).shape == (3, 3, 2, 2, 4, 7)


def test_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        im2col(x, 5, 5)
    with pytest.raises(ValueError, match="does not fit"):
        im2col(x, 3, 3, DH=2, DW=2)
    with pytest.raises(ValueError, match=">= 1"):
        im2col(x, 2, 2, SH=0)
    with pytest.raises(ValueError, match="non-negative"):
        im2col(x, 2, 2, PH=-1)
