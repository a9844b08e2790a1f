"""conv_transpose2d and nn.ConvTranspose2d: forward against a brute-force scatter loop,
forward and gradients against PyTorch (check_op: float64 tight, float32 loose, plus
gradcheck) over a grid where every axis differs, the conv2d family's implementations
against each other, the layer against torch.nn.ConvTranspose2d with copied weights, and
every input error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl
import minidl.kernels as K
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.errors import ShapeError
from minidl.ops.conv import ConvTranspose2dFunction, conv2d, conv_transpose2d
from helpers import check_op, to_host


# ----------------------------------------------------------------------------- brute force

def brute_conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                           dilation=(1, 1), groups=1):
    """The definition, one input pixel at a time: each scatters w times its value into the
    output (independent of col2im). x (N, C_in, H, W), w (C_in, C_out/groups, KH, KW)."""
    (SH, SW), (PH, PW), (OPH, OPW), (DH, DW) = stride, padding, output_padding, dilation
    N, C_in, H, W = x.shape
    _, OCg, KH, KW = w.shape
    Cg = C_in // groups
    OH = (H - 1) * SH - 2 * PH + DH * (KH - 1) + OPH + 1
    OW = (W - 1) * SW - 2 * PW + DW * (KW - 1) + OPW + 1
    y = np.zeros((N, OCg * groups, OH, OW))
    for n in range(N):
        for ci in range(C_in):
            g = ci // Cg
            for i in range(H):
                for j in range(W):
                    for co in range(OCg):
                        for kh in range(KH):
                            for kw in range(KW):
                                oh, ow = i * SH - PH + kh * DH, j * SW - PW + kw * DW
                                if 0 <= oh < OH and 0 <= ow < OW:
                                    y[n, g * OCg + co, oh, ow] += x[n, ci, i, j] * w[ci, co, kh, kw]
    if b is not None:
        y += b.reshape(-1, 1, 1)
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _brute_args(kw):
    return dict(stride=_pair(kw.get("stride", 1)), padding=_pair(kw.get("padding", 0)),
                output_padding=_pair(kw.get("output_padding", 0)),
                dilation=_pair(kw.get("dilation", 1)), groups=kw.get("groups", 1))


# (x shape, w shape (C_in, C_out/groups, KH, KW), bias, kwargs); every axis differs
CASES = [
    ((2, 3, 3, 4), (3, 2, 3, 2), True, {}),                                   # non-square
    ((2, 2, 3, 4), (2, 3, 3, 2), True,
     dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2))),
    ((2, 4, 3, 3), (4, 1, 2, 3), False,
     dict(groups=2, stride=(3, 2), padding=(0, 1), dilation=(2, 1), output_padding=(2, 0))),
    ((1, 2, 3, 3), (2, 2, 3, 2), True, dict(dilation=(2, 3), output_padding=(1, 2))),  # op < D
    ((4, 3, 4), (4, 1, 3, 2), True, dict(groups=2, stride=2, padding=1, output_padding=(1, 0))),
    ((2, 4, 3, 3), (4, 1, 3, 3), True, dict(groups=4, stride=2, padding=1, output_padding=1)),
    ((2, 2, 4, 5), (2, 3, 3, 3), False, dict(stride=(2, 1), padding=(2, 1))),
    ((1, 3, 3, 2), (3, 2, 1, 1), True, dict(stride=2, output_padding=1)),       # 1x1
    ((2, 2, 3, 3), (2, 2, 2, 2), True, dict(stride=(1, 2), padding=(0, 1), groups=2)),
]


def _case_id(case):
    xs, ws, bias, kw = case
    return f"x{xs}-w{ws}-{'b' if bias else 'nob'}-{kw}"


def _arrays(case, rng):
    xs, ws, bias, kw = case
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)]
    if bias:
        arrays.append(rng.standard_normal(ws[1] * kw.get("groups", 1)))
    return arrays


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_brute_force(case, rng, device):
    xs, ws, bias, kw = case
    arrays = _arrays(case, rng)
    y = conv_transpose2d(*(minidl.tensor(a, device=device) for a in arrays), **kw)
    x4 = arrays[0][None] if len(xs) == 3 else arrays[0]
    expected = brute_conv_transpose2d(x4, *arrays[1:], **_brute_args(kw))
    expected = expected[0] if len(xs) == 3 else expected
    assert y.shape == expected.shape and y.dtype == np.float64 and y.device == device
    np.testing.assert_allclose(to_host(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_against_torch(case, rng, device):
    kw = case[3]
    check_op(lambda *a: F.conv_transpose2d(*a, **kw), lambda *a: TF.conv_transpose2d(*a, **kw),
             _arrays(case, rng), device=device)


@pytest.mark.parametrize("grad", [(0,), (1,), (2,), (1, 2), (0, 2)])
def test_only_requested_gradients(grad, rng, device):
    kw = dict(stride=2, padding=1, groups=2, output_padding=(1, 0))
    arrays = [rng.standard_normal((2, 4, 3, 4)), rng.standard_normal((4, 2, 3, 2)),
              rng.standard_normal(4)]
    check_op(lambda *a: conv_transpose2d(*a, **kw), lambda *a: TF.conv_transpose2d(*a, **kw),
             arrays, grad=grad, gradcheck=False, device=device)


def test_is_the_input_gradient_of_conv2d(rng):
    """conv_transpose2d(g, W) is conv2d's input gradient for upstream gradient g, with the
    same weight: the adjoint, <conv2d(x, W), g> == <x, conv_transpose2d(g, W)>."""
    kw = dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2)
    x = minidl.tensor(rng.standard_normal((2, 4, 9, 11)), requires_grad=True)
    w = minidl.tensor(rng.standard_normal((6, 2, 3, 2)))
    y = conv2d(x, w, **kw)
    g = rng.standard_normal(y.shape)
    (y * minidl.tensor(g)).sum().backward()
    z = conv_transpose2d(minidl.tensor(g), w, output_padding=(0, 1), **kw)
    assert z.shape == x.shape
    np.testing.assert_allclose(z.numpy(), x.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_float32_and_no_grad(rng, device):
    x = minidl.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True,
                      device=device)
    w = minidl.tensor(rng.standard_normal((3, 5, 3, 3)).astype(np.float32), requires_grad=True,
                      device=device)
    with minidl.no_grad():
        y = conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert y.dtype == np.float32 and y.shape == (2, 5, 8, 8)
    assert y.grad_fn is None and not y.requires_grad
    y = conv_transpose2d(x, w)
    assert y.grad_fn is not None and y.grad_fn.name == "ConvTranspose2d"


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((4, 3, 2, 5))                   # permuted: (2, 3, 4, 5)
    w = rng.standard_normal((3, 2, 2, 4))                   # transposed: (3, 2, 4, 2)
    check_op(lambda x, w: conv_transpose2d(x.permute(2, 1, 0, 3), w.transpose(2, 3), stride=2),
             lambda x, w: TF.conv_transpose2d(x.permute(2, 1, 0, 3), w.transpose(2, 3), stride=2),
             [x, w], gradcheck=False)


# ----------------------------------------------------------------------------- implementations

# stride 1, dilation 1, groups 1: the direct kernels can run; the others only the reference
IMPL_CASES = [((2, 3, 5, 4), (3, 4, 3, 2), dict(padding=(1, 0))),
              ((3, 6, 5), (3, 2, 2, 3), {}),                                  # unbatched
              ((2, 4, 3, 3), (4, 3, 3, 3), dict(stride=2, output_padding=1))]


@pytest.mark.parametrize("case", range(len(IMPL_CASES)))
def test_implementations_agree(case, rng):
    """The reference (im2col through NumPy or numba) and the direct kernels give the same
    output and gradients; the registry records which ran."""
    if not K.numba_available():
        pytest.skip("numba is not installed")
    xs, ws, kw = IMPL_CASES[case]
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[1])]
    direct_runs = kw.get("stride", 1) == 1
    gz, results = None, []
    for conv_impl, im2col_impl in [("reference", "reference"), ("reference", "numba"),
                                   ("direct", None)]:
        ts = [minidl.tensor(a, requires_grad=True) for a in arrays]
        with K.use_impl(conv_impl, family="conv2d"), K.decisions() as log:
            if im2col_impl:
                K.use_impl(im2col_impl, family="im2col")
            z = conv_transpose2d(*ts, **kw)
            gz = rng.standard_normal(z.shape) if gz is None else gz
            (z * minidl.tensor(gz)).sum().backward()
        ran = conv_impl if direct_runs or conv_impl == "reference" else "reference"
        assert {d for d in log if d[0] == "conv2d"} == {("conv2d", ran)}
        results.append([z.numpy()] + [t.grad.numpy() for t in ts])
    for other in results[1:]:
        for got, ref, name in zip(other, results[0], ("z", "gx", "gw", "gb")):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12, err_msg=name)


# ----------------------------------------------------------------------------- the layer

LAYER_CASES = [
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
          output_padding=(1, 0), groups=2, dilation=(1, 2)), (2, 4, 3, 4)),
    (dict(in_channels=3, out_channels=2, kernel_size=3, bias=False), (2, 3, 4, 3)),
    (dict(in_channels=2, out_channels=3, kernel_size=2, stride=2), (2, 4, 5)),  # unbatched
]


@pytest.mark.parametrize("args,xs", LAYER_CASES)
def test_layer_against_torch(args, xs, rng, device):
    """Forward and backward of nn.ConvTranspose2d against torch.nn.ConvTranspose2d with
    the weights copied; parameter shapes and state_dict keys as PyTorch's."""
    md, t = nn.ConvTranspose2d(**args), torch.nn.ConvTranspose2d(**args).double()
    assert list(md.state_dict()) == list(t.state_dict())
    for (k, a), (_, b) in zip(md.state_dict().items(), t.state_dict().items()):
        assert tuple(a.shape) == tuple(b.shape), k
    md.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    md.to(device, minidl.float64)
    x = rng.standard_normal(xs)
    X, T = minidl.tensor(x, requires_grad=True, device=device), torch.tensor(x, requires_grad=True)
    y, ty = md(X), t(T)
    np.testing.assert_allclose(to_host(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    (y * minidl.tensor(g, device=device)).sum().backward()
    (ty * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(to_host(X.grad), T.grad.numpy(), rtol=1e-12, atol=1e-12)
    for name, p in md.named_parameters():
        np.testing.assert_allclose(to_host(p.grad), dict(t.named_parameters())[name].grad.numpy(),
                                   rtol=1e-12, atol=1e-12, err_msg=name)


def test_layer_output_size(rng):
    """forward(input, output_size) picks output_padding as PyTorch does (2 sizes or the
    whole shape)."""
    md = nn.ConvTranspose2d(2, 3, (3, 2), stride=(3, 2), padding=1)
    t = torch.nn.ConvTranspose2d(2, 3, (3, 2), stride=(3, 2), padding=1).double()
    md.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    md.to(minidl.float64)
    x = rng.standard_normal((2, 2, 4, 3))
    for size in [(10, 4), (12, 5), [11, 5], (2, 3, 12, 4)]:
        y = md(minidl.tensor(x), output_size=size)
        ty = t(torch.tensor(x), output_size=list(size))
        assert y.shape == tuple(ty.shape)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    y = md(minidl.tensor(x[0]), output_size=(3, 11, 5))                       # unbatched
    assert y.shape == (3, 11, 5)
    with pytest.raises(ValueError, match=r"requested an output size of \(13, 4\), but valid "
                                         r"sizes range from \(10, 4\) to \(12, 5\) \(for an "
                                         r"input of \(4, 3\)\)"):
        md(minidl.tensor(x), output_size=(13, 4))
    with pytest.raises(ValueError, match="output_size must be 2 or 4 ints, got"):
        md(minidl.tensor(x), output_size=(3, 10, 4))


def test_layer_init_and_repr():
    """PyTorch's default init: weight and bias uniform in +-1/sqrt(fan_in), where fan_in is
    weight.shape[1] * KH * KW = out_channels/groups * KH * KW for this layer."""
    minidl.manual_seed(0)
    layer = nn.ConvTranspose2d(8, 12, (3, 2), groups=2)
    assert layer.weight.shape == (8, 6, 3, 2) and layer.bias.shape == (12,)
    bound = 1 / math.sqrt(6 * 3 * 2)
    for p in (layer.weight, layer.bias):
        assert p.dtype == np.float32 and np.abs(p.numpy()).max() <= bound
    assert np.abs(layer.weight.numpy()).max() > 0.8 * bound             # spread over the range
    for args in [(8, 12, (3, 2)), (4, 6, 3)]:
        for kw in [dict(groups=2), dict(stride=2, padding=1, output_padding=1, dilation=2,
                                        bias=False), {}]:
            expected = repr(torch.nn.ConvTranspose2d(*args, **kw))
            assert repr(nn.ConvTranspose2d(*args, **kw)) == expected
    assert nn.ConvTranspose2d(3, 4, 3, dtype=minidl.float64).weight.dtype == np.float64


# ----------------------------------------------------------------------------- errors

def _t(shape, dtype=np.float32):
    return minidl.tensor(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("args,kwargs,cls,text", [
    ((_t((1, 3, 4, 4)), _t((3, 2, 3)),), {}, ShapeError,
     "conv_transpose2d: expected a 4-D weight (C_in, C_out/groups, KH, KW), got weight of "
     "shape (3, 2, 3)"),
    ((_t((3, 4)), _t((3, 2, 3, 3))), {}, ShapeError,
     "conv_transpose2d: expected a 4-D input (N, C_in, H, W) or a 3-D unbatched input "
     "(C_in, H, W), got input of shape (3, 4)"),
    ((_t((1, 2, 4, 4)), _t((3, 2, 3, 3))), {}, ShapeError,
     "conv_transpose2d: expected input with 3 channels (weight (3, 2, 3, 3)), got input of "
     "shape (1, 2, 4, 4)"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3)), _t((3,))), {}, ShapeError,
     "conv_transpose2d: expected bias of shape (2,) for weight (3, 2, 3, 3) and groups=1, "
     "got bias of shape (3,)"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(groups=2), ValueError,
     "conv_transpose2d: in_channels (weight.shape[0] = 3) must be divisible by groups=2"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(groups=0), ValueError,
     "conv_transpose2d: groups must be a positive int, got 0"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(output_padding=1), ValueError,
     "conv_transpose2d: output_padding must be smaller than either stride or dilation along "
     "each axis, got output_padding=(1, 1), stride=(1, 1), dilation=(1, 1)"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(stride=2, output_padding=(1, 2)), ValueError,
     "conv_transpose2d: output_padding must be smaller"),
    ((_t((1, 3, 2, 2)), _t((3, 2, 3, 3))), dict(padding=(1, 2)), ShapeError,
     "conv_transpose2d: the output would be (2, 0), too small, for input (1, 3, 2, 2)"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(padding="same"), TypeError,
     "conv_transpose2d: padding must be an int or a pair of ints, got 'same'"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(stride=0), ValueError,
     "conv_transpose2d: stride must be >= 1, got 0"),
    ((_t((1, 3, 4, 4)), _t((3, 2, 3, 3))), dict(output_padding=-1), ValueError,
     "conv_transpose2d: output_padding must be >= 0, got -1"),
    ((_t((1, 3, 4, 4), np.float64), _t((3, 2, 3, 3))), {}, TypeError,
     "conv_transpose2d: input dtype float64 does not match weight dtype float32"),
    ((np.zeros((1, 3, 4, 4)), _t((3, 2, 3, 3))), {}, TypeError,
     "conv_transpose2d: input must be a Tensor, got ndarray"),
])
def test_errors(args, kwargs, cls, text):
    with pytest.raises(cls) as e:
        conv_transpose2d(*args, **kwargs)
    assert type(e.value) is cls and str(e.value).startswith(text), str(e.value)


def test_errors_match_what_pytorch_refuses():
    """Each argument set refused above is refused by PyTorch too (output_padding against
    stride or dilation; a too-small output)."""
    x, w = torch.zeros(1, 3, 4, 4), torch.zeros(3, 2, 3, 3)
    for kw in [dict(output_padding=1), dict(stride=2, output_padding=(1, 2))]:
        with pytest.raises(RuntimeError):
            TF.conv_transpose2d(x, w, **kw)
    with pytest.raises(RuntimeError):
        TF.conv_transpose2d(torch.zeros(1, 3, 2, 2), w, padding=(1, 2))
    assert TF.conv_transpose2d(x, w, dilation=2, output_padding=1).shape == (1, 2, 9, 9)
    assert conv_transpose2d(_t((1, 3, 4, 4)), _t((3, 2, 3, 3)), dilation=2,
                            output_padding=1).shape == (1, 2, 9, 9)


LAYER = "ConvTranspose2d(4, 8, kernel_size=(3, 3), stride=(1, 1))"


def test_layer_errors_start_with_its_repr():
    layer = nn.ConvTranspose2d(4, 8, 3)
    assert repr(layer) == LAYER
    cases = [
        (_t((2, 3, 5, 5)), ShapeError, "expected input (N, 4, H, W), got (2, 3, 5, 5)"),
        (_t((4, 5)), ShapeError, "expected input (N, 4, H, W), got (4, 5)"),
        (_t((1, 4, 5, 5), np.float64), TypeError, "input dtype float64 does not match"),
        (np.zeros((1, 4, 5, 5), np.float32), TypeError, "expected a minidl Tensor"),
    ]
    for x, cls, text in cases:
        with pytest.raises(cls) as e:
            layer(x)
        assert type(e.value) is cls and str(e.value).startswith(f"{LAYER}: "), str(e.value)
        assert text in str(e.value)
    layer = nn.ConvTranspose2d(4, 8, 3, padding=3)                      # F's check, renamed
    with pytest.raises(ShapeError) as e:
        layer(_t((1, 4, 2, 2)))
    assert str(e.value).startswith(f"{layer!r}: the output would be (-2, -2), too small")


@pytest.mark.parametrize("kwargs,cls,text", [
    (dict(groups=0), ValueError, "ConvTranspose2d: groups must be a positive integer, got 0"),
    (dict(groups=3), ValueError, "ConvTranspose2d: in_channels (4) must be divisible by "
                                 "groups (3)"),
    (dict(groups=1.5), TypeError, "ConvTranspose2d: groups must be an int, got 1.5"),
    (dict(stride=0), ValueError, "ConvTranspose2d: stride must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "ConvTranspose2d: padding must be >= 0, got -1"),
    (dict(padding="same"), TypeError, "ConvTranspose2d: padding must be an int or a pair"),
    (dict(output_padding=(1, 2, 3)), TypeError, "ConvTranspose2d: output_padding must be an "
                                                "int or a pair of ints"),
    (dict(padding_mode="reflect"), ValueError, "ConvTranspose2d: only padding_mode='zeros' "
                                               "is supported"),
    (dict(padding_mode="mirror"), ValueError, "ConvTranspose2d: padding_mode must be one of"),
])
def test_layer_constructor_errors(kwargs, cls, text):
    with pytest.raises(cls) as e:
        nn.ConvTranspose2d(4, 6, 3, **kwargs)
    assert type(e.value) is cls and str(e.value).startswith(text), str(e.value)


def test_function_docstring_lists_shapes():
    doc = ConvTranspose2dFunction.__doc__
    for part in ("(N, OC, OH, OW)", "(OC, Cg, KH, KW)", "(N, C, H, W)", "col2im"):
        assert part in doc
