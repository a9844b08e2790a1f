"""A fixed geometry grid, every axis different, through every kernel implementation.

Each case makes the two spatial axes differ in everything at once: input size (H != W),
kernel (KH != KW), stride (SH != SW, strides that do not divide the input), padding
(PH != PW, and padding together with dilation), dilation (DH != DW). A bug that swaps the
axes, or uses one axis's number for the other, changes the result here, where the
square-ish cases of ``test_conv.py`` and ``test_pool.py`` can hide it.

Every case runs through every implementation of its kernel family (``conv2d``, ``im2col``,
``pool`` in ``minidl.kernels.registry``) whose own ``supports`` test accepts it; the
parametrisation asks the registry at collection time, so an implementation appears in a
case exactly when the registry would run it there, and nothing is skipped silently. A case
it does not support is simply not generated (the direct convolution runs stride 1,
dilation 1, groups 1 only). Inside the test, ``decisions()`` checks that the forced
implementation really ran: a forced one that cannot run falls back to the reference
without a word. Implementations whose code does not load here (numba not installed) or
that need a GPU skip with the reason.

Forward and backward are compared with PyTorch in float64 (``check_op``, tolerance 1e-10);
max pooling inputs are distinct values, so no window has a tie.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
import minidl.kernels as K
from helpers import check_op, distinct, gpu_skip_reason, to_host, torch_device
from minidl import geometry
from minidl.kernels.im2col import col2im, im2col
from minidl.ops.conv import conv2d
from minidl.ops.pool import avg_pool2d, max_pool2d

F64 = (np.float64,)

# ----------------------------------------------------------------------------- the grid

# (x shape (N, C, H, W), weight shape (OC, C/G, KH, KW), conv2d keywords)
CONV_CASES = [
    ((2, 4, 9, 7), (6, 4, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1))),
    ((2, 4, 9, 7), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                                      groups=2)),
    ((1, 3, 8, 11), (4, 3, 2, 3), dict(stride=(1, 3), padding=(2, 0), dilation=(1, 2))),
    ((1, 6, 10, 9), (6, 2, 2, 3), dict(stride=(3, 2), padding=(0, 1), dilation=(1, 3),
                                       groups=3)),
    # stride 1, dilation 1, groups 1: the direct kernels run these
    ((2, 3, 7, 10), (5, 3, 3, 2), dict(padding=(2, 1))),
    ((1, 2, 6, 9), (3, 2, 4, 3), dict(padding="same")),    # even KH: PH0=1 != PH1=2
    # 3x3 stride 1: Winograd (F(4x4, 3x3) here: 9x10 outputs) runs this too (partial tiles)
    ((2, 3, 7, 10), (4, 3, 3, 3), dict(padding=(2, 1))),
    # groups == C == OC: the depthwise kernels run this
    ((2, 5, 9, 8), (5, 1, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                      groups=5)),
]

# (x shape, max_pool2d keywords)
MAX_CASES = [
    ((2, 3, 9, 8), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 2))),
    ((1, 2, 10, 7), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), dilation=(1, 2),
                         ceil_mode=True)),
    ((2, 2, 7, 11), dict(kernel_size=(2, 4), stride=(3, 2), padding=(0, 2), dilation=(3, 1),
                         ceil_mode=True)),
    ((3, 8, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 3))),
]

# (x shape, avg_pool2d keywords): PyTorch's avg_pool2d has no dilation
AVG_CASES = [
    ((2, 3, 9, 8), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ((2, 3, 9, 8), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1),
                        count_include_pad=False)),
    ((1, 2, 10, 7), dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True,
                         count_include_pad=False)),
    ((2, 2, 7, 11), dict(kernel_size=(4, 2), stride=(3, 2), padding=(2, 1), ceil_mode=True)),
    ((1, 1, 8, 5), dict(kernel_size=(3, 2), stride=(3, 1), padding=(0, 1),
                        divisor_override=5)),
]


def _ids(shape, kw):
    return f"{shape}-" + ",".join(f"{k}={v}" for k, v in kw.items())


# ----------------------------------------------------------------------------- choosing


def _conv_geo(x_shape, w_shape, kw):
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    stride, dilation = pair(kw.get("stride", 1)), pair(kw.get("dilation", 1))
    pads = geometry.conv_padding(kw.get("padding", 0), w_shape[2:], stride, dilation)
    return geometry.ConvGeometry.of(x_shape, w_shape, stride, pads, dilation,
                                    kw.get("groups", 1))


def _pool_window(x_shape, kw):
    kernel, stride, padding, dilation = geometry.pool_args(
        kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
        "grid")
    return geometry.make_window(x_shape[-2:], kernel, stride, padding, dilation,
                                kw.get("ceil_mode", False))


def _marks(impl):
    """A GPU implementation runs on the GPU only (marked ``gpu``, skipped with the reason
    without one); an implementation whose code does not load here skips with the reason."""
    if impl.device == "cuda":
        return [pytest.mark.gpu]
    if not impl.loads():
        return [pytest.mark.skip(reason=f"{impl.family.name} {impl.name!r} does not load "
                                        f"here: {impl._error}")]
    return []


def _impls(family, sample, **facts):
    """(impl name, device) of every implementation of ``family`` that supports a call on
    ``sample`` (float64 arrays of the case's shapes) with ``facts``. The GPU
    implementations are asked about the same call on the GPU: their ``supports`` tests look
    at the arrays' type and dtype only (``cuda_kernels.available``), which the test then
    makes true."""
    fam = K.families()[family]
    found = []
    for impl in fam.impls.values():
        ok = True if impl.device == "cuda" else impl.supports(*sample, **facts)
        if ok:
            found.append((impl.name, impl.device or "cpu", _marks(impl)))
    return found


def _conv_params():
    params = []
    for xs, ws, kw in CONV_CASES:
        x, w = np.zeros(xs), np.zeros(ws)
        geo = _conv_geo(xs, ws, kw)
        for name, device, marks in _impls("conv2d", (x, w), geo=geo):
            # the reference conv (any device) unfolds through the im2col family: through
            # each of its implementations, on that implementation's device
            im2cols = _impls("im2col", (x,)) if name == "reference" else [(None, device, [])]
            for im2col_name, device, im_marks in im2cols:
                params.append(pytest.param(
                    xs, ws, kw, name, im2col_name, device, marks=marks + im_marks,
                    id=f"{name}+{im2col_name or '-'}-{device}-{_ids((xs, ws), kw)}"))
    return params


def _pool_params(cases, max_pool):
    params = []
    for xs, kw in cases:
        win = _pool_window(xs, kw)
        facts = dict(taps=win.K) if max_pool else {}
        for name, device, marks in _impls("pool", (np.zeros(xs),), **facts):
            params.append(pytest.param(xs, kw, name, device, marks=marks,
                                       id=f"{name}-{device}-{_ids(xs, kw)}"))
    return params


def _im2col_params():
    params = []
    for xs, ws, kw in CONV_CASES:
        if kw.get("padding") == "same":       # F.unfold pads both sides alike
            continue
        for name, device, marks in _impls("im2col", (np.zeros(xs),)):
            params.append(pytest.param(xs, ws, kw, name, device, marks=marks,
                                       id=f"{name}-{device}-{_ids((xs, ws), kw)}"))
    return params


class _Through:
    """Force ``{family: impl}`` for the block, record the registry's decisions, and check
    afterwards that every call of those families took the forced implementation and that
    each family was called at least once."""

    def __init__(self, device, **impls):
        if device == "cuda" and gpu_skip_reason():
            pytest.skip(gpu_skip_reason())
        self.impls = {f: i for f, i in impls.items() if i is not None}

    def __enter__(self):
        self._forced = [K.use_impl(i, family=f) for f, i in self.impls.items()]
        self._log = K.decisions()
        self.log = self._log.__enter__()

    def __exit__(self, *exc):
        self._log.__exit__(*exc)
        for forced in reversed(self._forced):
            forced.__exit__(*exc)
        if exc[0] is None:
            for family, impl in self.impls.items():
                taken = [i for f, i in self.log if f == family]
                assert taken and set(taken) == {impl}, \
                    f"{family} calls took {taken}, expected only {impl!r}"
        return False


# ----------------------------------------------------------------------------- tests


@pytest.mark.filterwarnings("ignore:Using padding='same'")   # PyTorch's, about its speed
@pytest.mark.parametrize("x_shape,w_shape,kw,impl,im2col_impl,device", _conv_params())
def test_conv2d_grid(x_shape, w_shape, kw, impl, im2col_impl, device, rng):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    with _Through(device, conv2d=impl, im2col=im2col_impl):
        check_op(lambda a, c, d: conv2d(a, c, d, **kw), lambda a, c, d: F.conv2d(a, c, d, **kw),
                 [x, w, b], dtypes=F64, gradcheck=False, device=device)


@pytest.mark.parametrize("x_shape,kw,impl,device", _pool_params(MAX_CASES, max_pool=True))
def test_max_pool2d_grid(x_shape, kw, impl, device, rng):
    x = distinct(rng, x_shape)         # no ties: one maximum per window
    with _Through(device, pool=impl):
        check_op(lambda t: max_pool2d(t, **kw), lambda t: F.max_pool2d(t, **kw), [x],
                 dtypes=F64, gradcheck=False, device=device)


@pytest.mark.parametrize("x_shape,kw,impl,device", _pool_params(AVG_CASES, max_pool=False))
def test_avg_pool2d_grid(x_shape, kw, impl, device, rng):
    x = rng.standard_normal(x_shape)
    with _Through(device, pool=impl):
        check_op(lambda t: avg_pool2d(t, **kw), lambda t: F.avg_pool2d(t, **kw), [x],
                 dtypes=F64, gradcheck=False, device=device)


@pytest.mark.parametrize("x_shape,w_shape,kw,impl,device", _im2col_params())
def test_im2col_and_col2im_grid(x_shape, w_shape, kw, impl, device, rng):
    """im2col against ``F.unfold`` and col2im against ``F.fold`` (its adjoint), the
    (C, KH, KW, N, OH, OW) layout brought to PyTorch's (N, C*KH*KW, OH*OW)."""
    geo = _conv_geo(x_shape, w_shape, kw)
    N, C, KH, KW, OH, OW = geo.N, geo.C, geo.KH, geo.KW, geo.OH, geo.OW
    torch_kw = dict(kernel_size=(KH, KW), dilation=kw.get("dilation", 1),
                    padding=kw.get("padding", 0), stride=kw.get("stride", 1))
    through = _Through(device, im2col=impl)               # skips first when no GPU
    x = rng.standard_normal(x_shape)
    c = rng.standard_normal(geo.col_shape)
    xp_x = minidl.tensor(x, device=device).data           # NumPy or CuPy
    xp_c = minidl.tensor(c, device=device).data
    with through:
        col = to_host(im2col(xp_x, geo))
        img = to_host(col2im(xp_c, geo))
    tdev = torch_device(device)
    as_torch = (lambda a: a.transpose(3, 0, 1, 2, 4, 5).reshape(N, C * KH * KW, OH * OW))
    expected_col = F.unfold(torch.tensor(x, device=tdev), **torch_kw)
    expected_img = F.fold(torch.tensor(as_torch(c), device=tdev), output_size=x_shape[2:],
                          **torch_kw)
    np.testing.assert_array_equal(as_torch(col), to_host(expected_col))  # a copy: exact
    np.testing.assert_allclose(img, to_host(expected_img), rtol=1e-12, atol=1e-12)


def test_the_grid_reaches_every_cpu_implementation():
    """The parametrisation is not empty where it matters: on the CPU every implementation
    of the three families is in the grid at least once (the direct convolution through
    the stride-1 cases, numba pooling through every pooling case)."""
    seen = {("conv2d", p.values[3]) for p in _conv_params()}
    seen |= {("im2col", p.values[4]) for p in _conv_params() if p.values[4]}
    seen |= {("im2col", p.values[3]) for p in _im2col_params()}
    seen |= {("pool", p.values[2]) for p in _pool_params(MAX_CASES, True)}
    seen |= {("pool", p.values[2]) for p in _pool_params(AVG_CASES, False)}
    for family in ("conv2d", "im2col", "pool"):
        for impl in K.families()[family].impls.values():
            if impl.device != "cuda":
                assert (family, impl.name) in seen, f"{family} {impl.name!r} is in no case"
