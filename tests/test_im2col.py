"""im2col / col2im: the NumPy reference against a brute-force loop, the numba fast path against
the reference (float32 and float64, many geometries), col2im as the adjoint of im2col, and
the registry's choice of implementation."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl.kernels as K
from minidl.errors import ShapeError
from minidl.geometry import ConvGeometry
from minidl.kernels.im2col import IM2COL, col2im, col2im_reference, im2col, im2col_reference

needs_numba = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")


def im2col_numba(x, geo, out=None):
    return IM2COL.impls["numba"].code.im2col(x, geo, out=out)


def col2im_numba(col, geo):
    return IM2COL.impls["numba"].code.col2im(col, geo)


def geometry(shape, KH, KW, SH=1, SW=1, PH=0, PW=0, DH=1, DW=1):
    """The ConvGeometry of unfolding an input of ``shape`` (PH/PW: int or (before, after))."""
    pads = tuple(p if isinstance(p, tuple) else (p, p) for p in (PH, PW))
    return ConvGeometry.of(shape, (1, shape[1], KH, KW), (SH, SW), pads, (DH, DW))

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
    ((3, 4, 2, 2), 1, 1, 1, 1, 0, 0, 1, 1),           # 1x1 on 2x2 planes: the transpose loop
    ((2, 3, 6, 5), 3, 1, 1, 1, (1, 2), 0, 2, 1),      # width-1 kernel: whole rows in one run
    ((2, 3, 5, 5), 1, 1, 2, 2, 0, 0, 1, 1),           # 1x1 stride 2 (ResNet's shortcut)
    ((2, 2, 3, 4), 1, 1, 1, 1, 1, (0, 1), 1, 1),      # 1x1 with padding: not a transpose
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
    np.testing.assert_array_equal(im2col_reference(x, geometry(shape, *params)),
                                  brute_im2col(x, *params))


@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_col2im_is_adjoint(geo, rng):
    """<im2col(x), c> == <x, col2im(c)> for both implementations."""
    shape, *params = geo
    g = geometry(shape, *params)
    x = _x(rng, shape, np.float64)
    impls = ["reference"] + (["numba"] if K.numba_available() else [])
    for impl in impls:
        with K.use_impl(impl, family="im2col"), K.decisions() as log:
            col = im2col(x, g)
            c = rng.standard_normal(col.shape)
            back = col2im(c, g)
        assert log == [("im2col", impl)] * 2
        assert back.shape == x.shape
        np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-12)


@contextlib.contextmanager
def _gather_up_to(outputs):
    """The numba kernels' index-table path (``im2col_numba._im2col_gather``) for outputs of
    up to ``outputs`` pixels instead of ``GATHER_MAX_OUTPUTS`` (0: never; huge: always)."""
    from minidl.kernels import im2col_numba as KN  # noqa: PLC0415 - numba only here
    saved = KN.GATHER_MAX_OUTPUTS
    KN.GATHER_MAX_OUTPUTS = outputs
    try:
        yield
    finally:
        KN.GATHER_MAX_OUTPUTS = saved


PATHS = {"row loops": 0, "index table": 10**9}


@needs_numba
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
def test_numba_matches_reference(geo, dtype, path, rng):
    shape, *params = geo
    g = geometry(shape, *params)
    x = _x(rng, shape, dtype)
    with _gather_up_to(PATHS[path]):
        col = im2col_numba(x, g)
        assert col.dtype == dtype
        np.testing.assert_array_equal(col, im2col_reference(x, g))  # a copy: exact
        c = _x(rng, col.shape, dtype)
        img = col2im_numba(c, g)
    assert img.dtype == dtype and img.flags.c_contiguous
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(img, col2im_reference(c, g), rtol=tol, atol=tol)


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
@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       path=st.sampled_from(list(PATHS)))
def test_numba_matches_reference_property(geo, dtype, path):
    shape, *params = geo
    g = geometry(shape, *params)
    rng = np.random.default_rng(0)
    x = _x(rng, shape, dtype)
    with _gather_up_to(PATHS[path]):
        col = im2col_numba(x, g)
        np.testing.assert_array_equal(col, im2col_reference(x, g))
        c = _x(rng, col.shape, dtype)
        back = col2im_numba(c, g)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(back, col2im_reference(c, g), rtol=tol, atol=tol)


@needs_numba
def test_numba_accepts_non_contiguous_input(rng):
    x = _x(rng, (3, 2, 6, 5), np.float32).transpose(1, 0, 2, 3)  # (2, 3, 6, 5), strided
    g = geometry(x.shape, 3, 2, 2, 1, 1, 0, 1, 1)
    np.testing.assert_array_equal(im2col_numba(x, g), im2col_reference(x, g))
    col = im2col_reference(x, g)
    c = _x(rng, col.shape[::-1], np.float32).T  # a non-contiguous col of the right shape
    np.testing.assert_allclose(col2im_numba(c, g), col2im_reference(c, g), rtol=1e-6, atol=1e-6)


def test_registry_choice(rng, use_impl):
    """numba for float32/float64 NumPy arrays, the reference for anything else (float16
    here), and ``use_impl`` forcing the reference."""
    x32 = _x(rng, (1, 1, 4, 4), np.float32)
    fast = "numba" if K.numba_available() else "reference"
    assert K.which("im2col", x32) == fast
    assert K.which("im2col", x32.astype(np.float64)) == fast
    assert K.which("im2col", x32.astype(np.float16)) == "reference"
    g = geometry(x32.shape, 2, 2)
    with K.decisions() as log:
        col = im2col(x32.astype(np.float16), g)
    assert log == [("im2col", "reference")]
    assert col.dtype == np.float16 and col.shape == (1, 2, 2, 1, 3, 3)
    use_impl("reference", family="im2col")
    assert K.which("im2col", x32) == "reference"
    use_impl("reference")
    assert K.which("im2col", x32) == "reference"


@pytest.mark.parametrize("impl", ["reference", "numba"])
def test_out_argument(impl, rng, use_impl):
    if impl == "numba" and not K.numba_available():
        pytest.skip("numba is not installed")
    use_impl(impl, family="im2col")
    x = _x(rng, (2, 3, 5, 4), np.float32)
    g = geometry(x.shape, 3, 2, 1, 2, 1, (0, 1), 1, 1)
    expected = im2col_reference(x, g)
    out = np.full(expected.shape, np.nan, np.float32)
    with K.decisions() as log:
        assert im2col(x, g, out=out) is out
    assert log == [("im2col", impl)]
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 array of shape"):
        im2col(x, g, out=np.empty(expected.shape, np.float64))
    with pytest.raises(ValueError, match="out must be"):
        im2col(x, g, out=np.empty(expected.shape[::-1], np.float32).T)


def test_shapes():
    x = np.zeros((2, 3, 7, 9), np.float32)
    g = geometry(x.shape, 3, 2, 2, 1, 1, 0, 1, 2)
    assert (g.OH, g.OW) == (4, 7)
    assert im2col(x, g).shape == g.col_shape == (3, 3, 2, 2, 4, 7)


def test_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ShapeError, match="im2col: the dilated kernel .* does not fit"):
        im2col(x, geometry(x.shape, 5, 5))
    with pytest.raises(ShapeError, match="does not fit"):
        im2col(x, geometry(x.shape, 3, 3, DH=2, DW=2))
    with pytest.raises(ShapeError, match=r"im2col: expected an array of shape \(1, 1, 5, 5\)"):
        im2col(x, geometry((1, 1, 5, 5), 2, 2))
    col = im2col(x, geometry(x.shape, 2, 2))
    with pytest.raises(ShapeError, match="col2im: expected an array of shape"):
        col2im(col, geometry(x.shape, 3, 3))
