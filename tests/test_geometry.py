"""minidl/geometry.py: argument normalisation, padding, output sizes and adaptive windows,
checked against PyTorch's own shapes and against brute-force definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl import geometry as G


def test_pair():
    assert G.pair(3, "stride", "conv2d") == (3, 3)
    assert G.pair((2, 5), "stride", "conv2d") == (2, 5)
    assert G.pair([np.int64(1), 2], "stride", "conv2d") == (1, 2)
    assert G.pair((None, 4), "output_size", "pool", allow_none=True) == (None, 4)
    assert G.pair((3,), "kernel_size", "max_pool2d") == (3, 3)
    for bad in ((1, 2, 3), 1.5, True, "2", (1, None), ()):
        with pytest.raises(TypeError, match=r"^conv2d: stride must be an int or a pair"):
            G.pair(bad, "stride", "conv2d")
    with pytest.raises(ValueError, match=r"^conv2d: stride must be >= 1, got \(1, 0\)"):
        G.pair((1, 0), "stride", "conv2d", minimum=1)


def test_conv_padding_same_valid_and_explicit():
    assert G.conv_padding("valid", (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    assert G.conv_padding(2, (3, 3), (1, 1), (1, 1)) == ((2, 2), (2, 2))
    assert G.conv_padding((1, 0), (3, 3), (2, 2), (1, 1)) == ((1, 1), (0, 0))
    # an even kernel puts the odd pixel at the bottom/right, as PyTorch
    assert G.conv_padding("same", (4, 3), (1, 1), (1, 2)) == ((1, 2), (2, 2))
    with pytest.raises(ValueError, match="conv2d: padding='same' is not supported for strided"):
        G.conv_padding("same", (3, 3), (2, 1), (1, 1))
    with pytest.raises(ValueError, match="conv2d: padding must be 'same', 'valid'"):
        G.conv_padding("full", (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="conv2d: padding must be >= 0"):
        G.conv_padding(-1, (3, 3), (1, 1), (1, 1))


@settings(max_examples=60, deadline=None)
@given(H=st.integers(1, 12), W=st.integers(1, 12), KH=st.integers(1, 4), KW=st.integers(1, 4),
       SH=st.integers(1, 3), SW=st.integers(1, 3), DH=st.integers(1, 2), DW=st.integers(1, 2),
       PH=st.integers(0, 2), PW=st.integers(0, 2))
def test_conv_output_size_matches_pytorch(H, W, KH, KW, SH, SW, DH, DW, PH, PW):
    geo = G.ConvGeometry.of((1, 2, H, W), (3, 2, KH, KW), (SH, SW), ((PH, PH), (PW, PW)),
                            (DH, DW))
    if not geo.fits():
        assert H + 2 * PH < geo.reach[0] or W + 2 * PW < geo.reach[1]
        return
    y = torch.nn.functional.conv2d(torch.zeros(1, 2, H, W), torch.zeros(3, 2, KH, KW),
                                   stride=(SH, SW), padding=(PH, PW), dilation=(DH, DW))
    assert geo.out_shape == tuple(y.shape)
    assert geo.col_shape == (2, KH, KW, 1, geo.OH, geo.OW)


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 14), K=st.integers(1, 4), S=st.integers(1, 4), D=st.integers(1, 2),
       P=st.integers(0, 2), ceil=st.booleans())
def test_pool_output_size_matches_pytorch(L, K, S, D, P, ceil):
    if P > K // 2 or D * (K - 1) + 1 > L + 2 * P:
        return                                   # PyTorch refuses these
    y = torch.nn.functional.max_pool2d(torch.zeros(1, 1, L, 3), (K, 1), (S, 1), (P, 0), (D, 1),
                                       ceil_mode=ceil)
    assert G.pool_output_size(L, K, S, P, D, ceil) == y.shape[2]
    win = G.make_window((L, 3), (K, 1), (S, 1), (P, 0), (D, 1), ceil)
    assert (win.OH, win.OW) == tuple(y.shape[2:])


@pytest.mark.parametrize("L,O", [(7, 3), (5, 5), (3, 7), (10, 4), (1, 1), (224, 7)])
def test_adaptive_windows_definition(L, O):
    start, end = G.adaptive_windows(L, O)
    for i in range(O):
        assert start[i] == math.floor(i * L / O)
        assert end[i] == math.ceil((i + 1) * L / O)
    assert start[0] == 0 and end[-1] == L


def test_adaptive_output_size():
    assert G.adaptive_output_size((7, 9), (None, 3), "adaptive_avg_pool2d") == (7, 3)
    assert G.adaptive_output_size((7, 9), 2, "adaptive_avg_pool2d") == (2, 2)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be at least 1"):
        G.adaptive_output_size((7, 9), (0, 3), "adaptive_avg_pool2d")


def test_window_taps_cover_every_window():
    win = G.make_window((7, 6), (3, 2), (2, 2), (1, 0), (1, 2), ceil_mode=True)
    assert win.K == 6
    HP, WP = win.padded_hw
    seen = np.zeros((win.OH, win.OW), dtype=int)
    for k, kh, kw, sl in win.tap_slices():
        assert k == kh * win.KW + kw
        view = np.zeros((HP, WP))[sl]
        assert view.shape == (win.OH, win.OW)
        seen += 1
    assert (seen == win.K).all()
    assert G.make_window((4, 4), (2, 2), (2, 2), (0, 0)).is_2x2_stride2()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(1, 2),
       st.integers(0, 2), st.integers(0, 2))
def test_valid_taps_lists_each_output_taps_inside_the_input(H, W, KH, KW, SH, SW, DH, DW,
                                                            PH, PW):
    """valid_taps against a plain loop over outputs and taps: the taps inside the input,
    in row-major order, their numbers and input positions; read-only and cached."""
    OH = G.conv_output_size(H, KH, SH, (PH, PH), DH)
    OW = G.conv_output_size(W, KW, SW, (PW, PW), DW)
    if OH < 1 or OW < 1:
        return
    args = ((H, W), (OH, OW), (KH, KW), (SH, SW), (PH, PW), (DH, DW))
    start, tap_k, tap_e = G.valid_taps(*args)
    want_start, want_k, want_e = [0], [], []
    for oh in range(OH):
        for ow in range(OW):
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * SH - PH + kh * DH, ow * SW - PW + kw * DW
                    if 0 <= ih < H and 0 <= iw < W:
                        want_k.append(kh * KW + kw)
                        want_e.append(ih * W + iw)
            want_start.append(len(want_k))
    assert start.tolist() == want_start
    assert tap_k.tolist() == want_k and tap_e.tolist() == want_e
    assert all(t.dtype == np.int32 and not t.flags.writeable for t in (start, tap_k, tap_e))
    assert G.valid_taps(*args)[0] is start


def test_conv_and_pool_geometries_give_their_valid_taps():
    """``ConvGeometry.taps`` and ``Window2d.taps``: valid_taps of their own fields."""
    conv = G.ConvGeometry.of((2, 3, 5, 4), (6, 3, 3, 2), (2, 1), ((1, 0), (1, 1)), (1, 2))
    want = G.valid_taps((5, 4), (conv.OH, conv.OW), (3, 2), (2, 1), (1, 1), (1, 2))
    assert all(np.array_equal(a, b) for a, b in zip(conv.taps(), want))
    win = G.make_window((5, 4), (3, 2), (2, 1), (1, 1), (1, 2), True)
    want = G.valid_taps((5, 4), (win.OH, win.OW), (3, 2), (2, 1), (1, 1), (1, 2))
    assert all(np.array_equal(a, b) for a, b in zip(win.taps(), want))
