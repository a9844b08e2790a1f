"""Sliding-window geometry, computed once: argument normalisation, padding, the output size
of convolutions and poolings, and adaptive pooling windows.

Ops, kernels, ``nn`` layers and ``summary`` all use these; nothing else in minidl computes
an output size. This module imports nothing from minidl (it sits beside ``backend``).

Shape letters::

    H, W      input height and width             OH, OW   output height and width
    KH, KW    kernel height and width            SH, SW   strides
    PH0, PH1  padding above and below            PW0, PW1 padding left and right
    DH, DW    dilations (gaps between kernel taps: a dilated kernel spans D*(K-1)+1)

One axis of a convolution (L input positions, kernel K, stride S, dilation D, padding
P0 before and P1 after)::

    O = floor((L + P0 + P1 - D*(K - 1) - 1) / S) + 1

Pooling uses the same formula with P0 = P1 = P; with ``ceil_mode`` the division rounds
up, but a last window that would start in the right padding is dropped (PyTorch's rule).
"""
from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import numpy as np

__all__ = ["is_int", "pair", "pool_args", "conv_padding", "conv_output_size", "pool_output_size",
           "adaptive_windows", "adaptive_output_size", "ConvGeometry", "Window2d",
           "make_window"]


def is_int(v):
    """A Python or NumPy integer, not a bool."""
    # type(v) is int first: the abc check of numbers.Integral costs ~1 us, per argument of
    # every layer call
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def pair(value, name, op, *, minimum=None, allow_none=False):
    """``3 -> (3, 3)``, ``(3,) -> (3, 3)``, ``(3, 5) -> (3, 5)``, as Python ints.

    Anything else is a TypeError (not an int, not one or two of them) or a ValueError
    (below ``minimum``) that names the op and the argument (``conv2d: stride must be
    ...``), the classes PyTorch raises for these.

    minimum: the smallest value allowed (e.g. 1 for a stride); allow_none: ``None`` may
    stand for an element (adaptive pooling's output_size keeps that input dim).
    """
    if type(value) is int:                                # the common cases, checked first
        result = (value, value)
    elif type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int:
        result = value
    else:
        result = _pair_of_anything(value, name, op, allow_none)
    if minimum is not None and any(v is not None and v < minimum for v in result):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return result


def _pair_of_anything(value, name, op, allow_none):
    """``pair``'s conversion for anything but an int or a tuple of two ints."""
    ok = (lambda v: is_int(v) or (allow_none and v is None))
    if ok(value):
        result = (None, None) if value is None else (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2) and all(ok(v) for v in value):
        result = tuple(None if v is None else int(v) for v in value) * (3 - len(value))
    else:
        what = "an int or a pair of ints" + (" (or None)" if allow_none else "")
        raise TypeError(f"{op}: {name} must be {what}, got {value!r}")
    return result


def pool_args(kernel_size, stride, padding, dilation, op):
    """Pooling's arguments as PyTorch reads them: (kernel, stride, padding, dilation)
    pairs; ``stride`` None (or ``()``) means the kernel size. Errors name ``op``."""
    kernel = pair(kernel_size, "kernel_size", op, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel
    return (kernel, pair(stride, "stride", op, minimum=1),
            pair(padding, "padding", op, minimum=0), pair(dilation, "dilation", op, minimum=1))


def conv_padding(padding, kernel, stride, dilation, op="conv2d"):
    """Padding as ((PH0, PH1), (PW0, PW1)) following PyTorch's rules.

    padding: an int, an (PH, PW) pair, ``'valid'`` (none) or ``'same'`` (the output as
    large as the input: total D*(K-1) per axis, the odd pixel of an even kernel at the
    bottom/right as in PyTorch; stride 1 only). kernel, stride, dilation: pairs.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if tuple(stride) != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided "
                                 f"convolutions (stride={tuple(stride)}); use an explicit "
                                 f"padding")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"{op}: padding must be 'same', 'valid', an int or a pair of ints, "
                         f"got {padding!r}")
    ph, pw = pair(padding, "padding", op, minimum=0)
    return (ph, ph), (pw, pw)


def conv_output_size(L, K, S=1, P=(0, 0), D=1):
    """Output length of a convolution along one axis (formula in the module docstring).

    P: the padding, an int (both sides) or a (before, after) pair. May return a value
    < 1 when the dilated kernel does not fit the padded input: callers check.
    """
    p0, p1 = (P, P) if is_int(P) else P
    return (L + p0 + p1 - D * (K - 1) - 1) // S + 1


def conv_transpose_output_size(L, K, S=1, P=0, D=1, output_padding=0):
    """Output length of a transposed convolution along one axis (L input positions, kernel
    K, stride S, padding P each side, dilation D): the input length of the convolution it
    is the adjoint of, ``(L - 1) S - 2 P + D (K - 1) + output_padding + 1``."""
    return (L - 1) * S - 2 * P + D * (K - 1) + output_padding + 1


def pool_output_size(L, K, S, P, D=1, ceil_mode=False):
    """Output length of a pooling along one axis, PyTorch's rule (module docstring)."""
    span = L + 2 * P - D * (K - 1) - 1
    out = (span + (S - 1 if ceil_mode else 0)) // S + 1
    if ceil_mode and (out - 1) * S >= L + P:
        out -= 1
    return out


def adaptive_windows(L, O):
    """PyTorch's adaptive pooling windows along one axis: ``start[i] = floor(i*L/O)``,
    ``end[i] = ceil((i+1)*L/O)``, as int64 arrays of length O (they may overlap)."""
    i = np.arange(O, dtype=np.int64)
    return (i * L) // O, -((-(i + 1) * L) // O)


def adaptive_output_size(in_hw, output_size, op):
    """(OH, OW) of an adaptive pooling: ``output_size`` an int or a pair, ``None`` in a
    pair keeping that input dim."""
    oh, ow = pair(output_size, "output_size", op, allow_none=True)
    out = (in_hw[0] if oh is None else oh, in_hw[1] if ow is None else ow)
    if min(out) < 1:
        raise ValueError(f"{op}: output_size must be at least 1 in each dim, got {out} "
                         f"(from output_size={output_size!r})")
    return out


@functools.lru_cache(maxsize=256)
def valid_taps(in_hw, out_hw, kernel, stride, pad0, dilation):
    """Each output position's taps that fall inside the input: for output o = oh*OW + ow
    the taps ``start[o] .. start[o+1]``, each with its number ``k = kh*KW + kw`` (``tap_k``)
    and the input position ``ih*W + iw`` it reads (``tap_e``), in the window's row-major
    order (ih = oh*SH - PH0 + kh*DH, iw likewise). int32 arrays, read-only (cached per
    geometry: small-map kernels, which loop over the planes inside, take them per call).

    in_hw (H, W), out_hw (OH, OW), kernel (KH, KW), stride (SH, SW), pad0 (PH0, PW0: the
    padding above and left), dilation (DH, DW)."""
    (H, W), (OH, OW), (KH, KW) = in_hw, out_hw, kernel
    ih = (np.arange(OH) * stride[0] - pad0[0])[:, None] + np.arange(KH) * dilation[0]
    iw = (np.arange(OW) * stride[1] - pad0[1])[:, None] + np.arange(KW) * dilation[1]
    ih = np.broadcast_to(ih[:, None, :, None], (OH, OW, KH, KW))   # (oh, ow, kh, kw)
    iw = np.broadcast_to(iw[None, :, None, :], (OH, OW, KH, KW))
    inside = ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)).reshape(OH * OW, KH * KW)
    start = np.zeros(OH * OW + 1, dtype=np.int32)
    np.cumsum(inside.sum(axis=1), out=start[1:])
    o, k = np.nonzero(inside)                         # row-major: by output, then tap
    tables = (start, k.astype(np.int32),
              (ih * W + iw).reshape(OH * OW, KH * KW)[o, k].astype(np.int32))
    for t in tables:
        t.flags.writeable = False
    return tables


def _taps_inside(L, K, S, P0, D, O):
    """[k0, k1): the kernel offsets k (of K) whose input position o*S + k*D - P0 lies in
    [0, L) for at least one output o < O (one axis of ``ConvGeometry.cropped``)."""
    return max(0, -(-(P0 - (O - 1) * S) // D)), min(K, (L - 1 + P0) // D + 1)


class ConvGeometry(NamedTuple):
    """The geometry of one 2-D convolution, as the kernels take it.

    Built by ``ConvGeometry.of(x_shape, w_shape, stride, padding, dilation, groups)``;
    every field is a Python int. ``padding`` here is always explicit (top/bottom,
    left/right); ``'same'`` has been resolved by ``conv_padding``.
    """

    N: int
    C: int
    H: int
    W: int
    OC: int
    KH: int
    KW: int
    SH: int
    SW: int
    PH0: int
    PH1: int
    PW0: int
    PW1: int
    DH: int
    DW: int
    OH: int
    OW: int
    G: int = 1

    @classmethod
    def of(cls, x_shape, w_shape, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
           groups=1):
        """x_shape (N, C, H, W); w_shape (OC, C/G, KH, KW); stride, dilation pairs;
        padding ((PH0, PH1), (PW0, PW1))."""
        N, C, H, W = (int(v) for v in x_shape)
        OC, _, KH, KW = (int(v) for v in w_shape)
        (SH, SW), (DH, DW) = stride, dilation
        (PH0, PH1), (PW0, PW1) = padding
        OH = conv_output_size(H, KH, SH, (PH0, PH1), DH)
        OW = conv_output_size(W, KW, SW, (PW0, PW1), DW)
        return cls(N, C, H, W, OC, KH, KW, SH, SW, PH0, PH1, PW0, PW1, DH, DW, OH, OW,
                   int(groups))

    @property
    def stride(self):
        return self.SH, self.SW

    @property
    def dilation(self):
        return self.DH, self.DW

    @property
    def padding(self):
        """((PH0, PH1), (PW0, PW1))."""
        return (self.PH0, self.PH1), (self.PW0, self.PW1)

    @property
    def col_shape(self):
        """The unfolded input of im2col: (C, KH, KW, N, OH, OW)."""
        return self.C, self.KH, self.KW, self.N, self.OH, self.OW

    @property
    def out_shape(self):
        """(N, OC, OH, OW)."""
        return self.N, self.OC, self.OH, self.OW

    @property
    def reach(self):
        """(height, width) the dilated kernel spans: D*(K-1) + 1."""
        return self.DH * (self.KH - 1) + 1, self.DW * (self.KW - 1) + 1

    @property
    def padded_hw(self):
        """(H + PH0 + PH1, W + PW0 + PW1)."""
        return self.H + self.PH0 + self.PH1, self.W + self.PW0 + self.PW1

    @property
    def canvas_hw(self):
        """(HP, WP): the input with its top/left padding, extended at the bottom/right to
        every position a window touches (col2im adds into it, then crops the input out)."""
        return (max(self.PH0 + self.H, self.SH * (self.OH - 1) + self.reach[0]),
                max(self.PW0 + self.W, self.SW * (self.OW - 1) + self.reach[1]))

    def fits(self):
        """Whether the dilated kernel fits the padded input (OH, OW >= 1)."""
        return self.OH >= 1 and self.OW >= 1

    def taps(self):
        """``valid_taps`` of this convolution: each output's taps inside the input."""
        return valid_taps((self.H, self.W), (self.OH, self.OW), (self.KH, self.KW),
                          (self.SH, self.SW), (self.PH0, self.PW0), (self.DH, self.DW))

    def cropped(self):
        """The kernel cut down to the taps that read the input for at least one output,
        or None when there is nothing to cut.

        On small maps much of a kernel reads only padding: on a 1x1 map only the centre
        of a 3x3 kernel (padding 1) ever sees the input, on a 2x2 map the central 3x3 of
        a 5x5 one (padding 2). Those taps multiply zeros at every output, so the
        convolution by ``w[:, :, kh0:kh1, kw0:kw1]``, with the padding reduced by the
        rows and columns cut, has the same output. Returns ``(geo, (kh0, kh1, kw0,
        kw1))``: that convolution's geometry (same N, C, OC, H, W, OH, OW, strides and
        dilations) and the taps kept; None when every tap reads the input somewhere, or
        when the cut would need negative padding (a dilated tap past the padding)."""
        kh0, kh1 = _taps_inside(self.H, self.KH, self.SH, self.PH0, self.DH, self.OH)
        kw0, kw1 = _taps_inside(self.W, self.KW, self.SW, self.PW0, self.DW, self.OW)
        if (kh0, kh1, kw0, kw1) == (0, self.KH, 0, self.KW) or kh0 >= kh1 or kw0 >= kw1:
            return None
        pad = (self.PH0 - kh0 * self.DH, self.PH1 - (self.KH - kh1) * self.DH,
               self.PW0 - kw0 * self.DW, self.PW1 - (self.KW - kw1) * self.DW)
        if min(pad) < 0:
            return None
        geo = self._replace(KH=kh1 - kh0, KW=kw1 - kw0, PH0=pad[0], PH1=pad[1], PW0=pad[2],
                            PW1=pad[3])
        return geo, (kh0, kh1, kw0, kw1)


class Window2d(NamedTuple):
    """The geometry of a 2-D pooling: kernel, stride, padding (each side), dilation, input
    and output sizes. Built by ``make_window``."""

    KH: int
    KW: int
    SH: int
    SW: int
    PH: int
    PW: int
    DH: int
    DW: int
    H: int
    W: int
    OH: int
    OW: int

    @property
    def K(self):
        """KH * KW, the number of taps in one window."""
        return self.KH * self.KW

    def taps(self):
        """``valid_taps`` of this window: each output's taps inside the input."""
        return valid_taps((self.H, self.W), (self.OH, self.OW), (self.KH, self.KW),
                          (self.SH, self.SW), (self.PH, self.PW), (self.DH, self.DW))

    @property
    def reach(self):
        """(height, width) the dilated window spans: D*(K-1) + 1."""
        return self.DH * (self.KH - 1) + 1, self.DW * (self.KW - 1) + 1

    @property
    def padded_hw(self):
        """(HP, WP): the input plus padding, extended at the bottom/right when a ceil_mode
        window runs past the padded edge, so every tap of every window is inside."""
        HP = max(self.H + 2 * self.PH, (self.OH - 1) * self.SH + self.reach[0])
        WP = max(self.W + 2 * self.PW, (self.OW - 1) * self.SW + self.reach[1])
        return HP, WP

    def needs_padding(self):
        return self.padded_hw != (self.H, self.W)

    def tap_slices(self):
        """(k, kh, kw, (rows, cols)) for every tap: slices of the padded input that gather
        tap ``(kh, kw)`` of every window at once, an (..., OH, OW) strided view."""
        for kh in range(self.KH):
            r0 = kh * self.DH
            rows = slice(r0, r0 + (self.OH - 1) * self.SH + 1, self.SH)
            for kw in range(self.KW):
                c0 = kw * self.DW
                cols = slice(c0, c0 + (self.OW - 1) * self.SW + 1, self.SW)
                yield kh * self.KW + kw, kh, kw, (Ellipsis, rows, cols)

    def is_2x2_stride2(self):
        """The LeNet/VGG window: 2x2, stride 2, no padding, no dilation, no ceil overrun."""
        return (self.KH, self.KW, self.SH, self.SW, self.PH, self.PW, self.DH, self.DW) == \
            (2, 2, 2, 2, 0, 0, 1, 1) and 2 * self.OH <= self.H and 2 * self.OW <= self.W


def make_window(in_hw, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """A ``Window2d`` from (H, W) and (KH, KW), (SH, SW), (PH, PW), (DH, DW) pairs."""
    H, W = in_hw
    OH = pool_output_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    return Window2d(kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                    dilation[0], dilation[1], H, W, OH, OW)
