"""conv2d: forward against a brute-force loop convolution, forward and gradients against
PyTorch (check_op: float64 tight, float32 loose, plus gradcheck), a hypothesis property test,
the conv2d family's implementations against each other, and every input error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
import minidl.kernels as K
import minidl.kernels.conv as conv_kernels
import minidl.nn as nn
from minidl import geometry
from minidl.errors import ShapeError
from minidl.kernels import conv_depthwise
from minidl.ops.conv import Conv2dFunction, conv2d
from helpers import check_op, to_host


# PyTorch warns that its own 'same' padding with even kernels copies the input; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# ----------------------------------------------------------------------------- brute force

def brute_conv2d(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                 groups=1):
    """The definition, one output element at a time (independent of im2col).

    x (N, C, H, W), w (OC, C/groups, KH, KW), b (OC,) or None;
    padding ((top, bottom), (left, right)).
    """
    (SH, SW), ((PT, PB), (PL, PR)), (DH, DW) = stride, padding, dilation
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OCg = OC // groups
    xpad = np.zeros((N, C, H + PT + PB, W + PL + PR), dtype=np.float64)
    xpad[:, :, PT:PT + H, PL:PL + W] = x
    OH = (H + PT + PB - DH * (KH - 1) - 1) // SH + 1
    OW = (W + PL + PR - DW * (KW - 1) - 1) // SW + 1
    y = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for oc in range(OC):
            g = oc // OCg
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else float(b[oc])
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                acc += (w[oc, c, kh, kw] *
                                        xpad[n, g * Cg + c, oh * SH + kh * DH, ow * SW + kw * DW])
                    y[n, oc, oh, ow] = acc
    return y


def _same_padding(KH, KW, DH, DW):
    """PyTorch's 'same': total d*(k-1), the odd pixel at the end."""
    th, tw = DH * (KH - 1), DW * (KW - 1)
    return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)


def _as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _brute_args(w_shape, kw):
    stride = _as_pair(kw.get("stride", 1))
    dilation = _as_pair(kw.get("dilation", 1))
    pad = kw.get("padding", 0)
    if pad == "same":
        padding = _same_padding(*w_shape[2:], *dilation)
    elif pad == "valid":
        padding = ((0, 0), (0, 0))
    else:
        ph, pw = _as_pair(pad)
        padding = ((ph, ph), (pw, pw))
    return dict(stride=stride, padding=padding, dilation=dilation, groups=kw.get("groups", 1))


# (x shape, w shape, bias, conv kwargs); tiny shapes: gradcheck costs 2 forwards per element
CASES = [
    ((2, 3, 6, 5), (4, 3, 3, 2), True, {}),                                  # non-square
    ((2, 2, 7, 6), (3, 2, 2, 3), False, dict(stride=(2, 3))),                # stride ∤ input
    ((2, 2, 5, 6), (3, 2, 3, 3), True, dict(padding=(1, 2))),
    ((2, 2, 7, 7), (2, 2, 3, 2), True, dict(dilation=(2, 3), padding=1)),
    ((2, 4, 6, 5), (6, 2, 3, 2), True, dict(groups=2, stride=2, padding=1)),  # groups=2
    ((2, 3, 6, 6), (3, 1, 3, 3), True, dict(groups=3, padding=1)),            # depthwise
    ((2, 2, 5, 6), (6, 1, 3, 2), False, dict(groups=2, stride=(1, 2))),       # depthwise x3
    ((2, 3, 5, 6), (2, 3, 3, 3), True, dict(padding="same")),                 # odd kernel
    ((2, 2, 5, 6), (3, 2, 2, 4), True, dict(padding="same")),                 # even: asym
    ((2, 2, 6, 5), (2, 2, 2, 3), False, dict(padding="same", dilation=(3, 2))),
    ((2, 2, 5, 6), (3, 2, 3, 2), True, dict(padding="valid")),
    ((2, 4, 4, 5), (3, 4, 1, 1), True, {}),                                  # 1x1
    ((2, 3, 4, 4), (2, 3, 1, 1), False, dict(stride=2)),                      # strided 1x1
    ((4, 6, 5), (4, 2, 3, 2), True, dict(groups=2, padding=(1, 0))),            # unbatched
    ((1, 2, 4, 4), (2, 2, 4, 4), True, {}),                                  # output 1x1
]


def keep_col(keep):
    """Run with the forward's unfolded input kept for backward (True) or unfolded again in
    backward (False): small tests would otherwise only ever take the first path."""
    return conv_kernels.keep_col_bytes(2**62 if keep else 0)


def _case_id(case):
    xs, ws, bias, kw = case
    return f"x{xs}-w{ws}-{'b' if bias else 'nob'}-{kw}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_brute_force(case, rng, device):
    xs, ws, bias, kw = case
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    y = conv2d(minidl.tensor(x, device=device), minidl.tensor(w, device=device),
               None if b is None else minidl.tensor(b, device=device), **kw)
    x4 = x[None] if x.ndim == 3 else x
    expected = brute_conv2d(x4, w, b, **_brute_args(ws, kw))
    if x.ndim == 3:
        expected = expected[0]
    assert y.shape == expected.shape and y.dtype == np.float64 and y.device == device
    np.testing.assert_allclose(to_host(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("keep", [True, False], ids=["keep-col", "unfold-again"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_against_torch(case, keep, rng, device):
    xs, ws, bias, kw = case
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)]
    if bias:
        arrays.append(rng.standard_normal(ws[0]))
    with keep_col(keep):
        check_op(lambda *a: conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), arrays,
                 device=device)


@pytest.mark.parametrize("grad", [(0,), (1,), (2,), (1, 2), (0, 2)])
def test_only_requested_gradients(grad, rng, device):
    """needs_input_grad: each subset of (input, weight, bias) gets exactly its gradients."""
    kw = dict(stride=2, padding=1, groups=2)
    arrays = [rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 2, 3, 2)),
              rng.standard_normal(4)]
    check_op(lambda *a: conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), arrays, grad=grad,
             gradcheck=False, device=device)


@pytest.mark.parametrize("impl", ["reference", "direct"])
def test_backward_skips_unneeded_work(impl, rng, use_impl):
    """With only the bias requiring grad, backward neither unfolds x nor folds back (no
    im2col-family call), and keeps neither x nor the weight."""
    use_impl(impl, family="conv2d")
    x = minidl.tensor(rng.standard_normal((2, 2, 5, 5)))
    w = minidl.tensor(rng.standard_normal((3, 2, 3, 3)))
    b = minidl.tensor(rng.standard_normal(3), requires_grad=True)
    if impl == "direct" and not K.numba_available():
        pytest.skip("numba is not installed")
    with K.decisions() as log:
        y = conv2d(x, w, b)
    assert log[0] == ("conv2d", impl)
    x_saved, weight, kept = y.grad_fn.saved_tensors
    assert x_saved is None and weight is None and kept[1] is None
    with K.decisions() as log:
        y.sum().backward()
    assert log == []
    np.testing.assert_allclose(b.grad.numpy(), np.full(3, 2 * 3 * 3))


def test_float32_and_no_grad(rng, device):
    x = minidl.tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), requires_grad=True,
                      device=device)
    w = minidl.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True,
                      device=device)
    with minidl.no_grad():
        y = conv2d(x, w, padding=1)
    assert y.dtype == np.float32 and y.shape == (2, 4, 8, 8)
    assert y.grad_fn is None and not y.requires_grad
    y = conv2d(x, w, padding=1)
    assert y.grad_fn is not None and y.grad_fn.name == "Conv2d"


def test_scratch_buffer_reuse(rng, use_impl):
    """Convolutions of different sizes share the scratch buffer; none of their results may
    live in it, and freeing it changes nothing."""
    use_impl("reference", family="conv2d")        # the scratch path, not direct
    big = [rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))]
    small = [rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 2, 2, 2))]
    md = [[minidl.tensor(a, requires_grad=True) for a in arrs] for arrs in (big, small)]
    with keep_col(False):                         # col in the scratch buffer too
        ys = [conv2d(*md[0], padding=1), conv2d(*md[1])]  # both forwards before any backward
        conv_kernels.release_scratch()
        (ys[0].sum() + ys[1].sum()).backward()
    buf = conv_kernels._SCRATCH.buffers[(np.dtype(np.float64), 0)]
    for arrs, tens, y, kw in zip((big, small), md, ys, (dict(padding=1), {})):
        tt = [torch.tensor(a, requires_grad=True) for a in arrs]
        ty = F.conv2d(*tt, **kw)
        ty.sum().backward()
        for out in [y] + [t.grad for t in tens]:
            assert not np.shares_memory(out.numpy(), buf)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        for m, t in zip(tens, tt):
            np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(rng, device):
    x = rng.standard_normal((5, 2, 3, 6))
    w = rng.standard_normal((3, 2, 4, 2))
    check_op(lambda x, w: conv2d(x.permute(2, 1, 0, 3), w.transpose(2, 3), padding=1),
             lambda x, w: F.conv2d(x.permute(2, 1, 0, 3), w.transpose(2, 3), padding=1),
             [x, w], gradcheck=False, device=device)


# ----------------------------------------------------------------------------- property test

@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    C = groups * draw(st.integers(1, 2))
    OC = groups * draw(st.integers(1, 3))
    N = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    DH, DW = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    same = draw(st.booleans()) and draw(st.booleans())  # 'same' a quarter of the time
    if same:
        SH = SW = 1
        padding = "same"
        PH = PW = 0
    else:
        SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        padding = (PH, PW)
    H = max(1, DH * (KH - 1) + 1 - 2 * PH) + draw(st.integers(0, 5))
    W = max(1, DW * (KW - 1) + 1 - 2 * PW) + draw(st.integers(0, 5))
    bias = draw(st.booleans())
    unbatched = draw(st.integers(0, 5)) == 0
    kw = dict(stride=(SH, SW), padding=padding, dilation=(DH, DW), groups=groups)
    xs = (C, H, W) if unbatched else (N, C, H, W)
    return xs, (OC, C // groups, KH, KW), bias, kw


# ``device`` is a function-scoped fixture, but only a constant string: sharing it between
# examples is safe.
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems(), keep=st.booleans(), seed=st.integers(0, 2**16))
def test_property_against_torch(problem, keep, seed, device):
    xs, ws, bias, kw = problem
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(xs), rng.standard_normal(ws)]
    if bias:
        arrays.append(rng.standard_normal(ws[0]))
    with keep_col(keep):
        check_op(lambda *a: conv2d(*a, **kw), lambda *a: F.conv2d(*a, **kw), arrays,
                 dtypes=(np.float64,), gradcheck=False, seed=seed, device=device)


# ----------------------------------------------------------------------------- devices

def test_device_matches_brute_force(device, rng):
    """The same op on each device (CuPy runs the reference im2col); compared on the host."""
    x, w, b = (rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2)),
               rng.standard_normal(6))
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    X = minidl.tensor(x, device=device, requires_grad=True)
    Wt = minidl.tensor(w, device=device, requires_grad=True)
    B = minidl.tensor(b, device=device, requires_grad=True)
    y = conv2d(X, Wt, B, **kw)
    assert y.device == minidl.device(device)
    np.testing.assert_allclose(y.cpu().numpy(), brute_conv2d(x, w, b, **_brute_args(w.shape, kw)),
                               rtol=1e-10, atol=1e-10)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    v = rng.standard_normal(y.shape)
    (y * minidl.tensor(v, device=device)).sum().backward()
    (F.conv2d(tx, tw, tb, **kw) * torch.tensor(v)).sum().backward()
    for m, t in ((X, tx), (Wt, tw), (B, tb)):
        np.testing.assert_allclose(m.grad.cpu().numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- errors

def _t(shape, dtype=np.float32):
    return minidl.tensor(np.zeros(shape, dtype=dtype))


def test_error_input_rank():
    with pytest.raises(ShapeError, match=r"conv2d: expected a 4-D input .* got input of "
                                           r"shape \(8, 28, 28, 1, 1\)"):
        conv2d(_t((8, 28, 28, 1, 1)), _t((16, 3, 5, 5)))
    with pytest.raises(ShapeError, match=r"got input of shape \(28, 28\)"):
        conv2d(_t((28, 28)), _t((16, 3, 5, 5)))
    with pytest.raises(ShapeError, match=r"expected a 4-D weight .* got weight of shape "
                                           r"\(16, 3, 5\)"):
        conv2d(_t((8, 3, 28, 28)), _t((16, 3, 5)))


def test_error_channel_mismatch():
    msg = (r"conv2d: expected input with 3 channels \(weight \(16, 3, 5, 5\), groups=1\), "
           r"got input of shape \(8, 1, 28, 28\)")
    with pytest.raises(ShapeError, match=msg):
        conv2d(_t((8, 1, 28, 28)), _t((16, 3, 5, 5)))
    with pytest.raises(ShapeError, match=r"expected input with 4 channels \(weight "
                                           r"\(6, 2, 3, 3\), groups=2\), got input of shape "
                                           r"\(2, 6, 5, 5\)"):
        conv2d(_t((2, 6, 5, 5)), _t((6, 2, 3, 3)), groups=2)
    with pytest.raises(ShapeError, match=r"expected input with 3 channels .* got input of "
                                           r"shape \(2, 5, 5\)"):
        conv2d(_t((2, 5, 5)), _t((4, 3, 3, 3)))  # unbatched


def test_error_bias_shape():
    with pytest.raises(ShapeError, match=r"expected bias of shape \(4,\) .* got bias of "
                                           r"shape \(3,\)"):
        conv2d(_t((1, 3, 5, 5)), _t((4, 3, 3, 3)), _t((3,)))


def test_error_dtypes():
    with pytest.raises(TypeError, match="conv2d: expected a floating point input, got dtype "
                                        "int64"):
        conv2d(minidl.tensor(np.zeros((1, 3, 5, 5), np.int64)), _t((4, 3, 3, 3)))
    with pytest.raises(TypeError, match="conv2d: input dtype float64 does not match weight "
                                        "dtype float32"):
        conv2d(_t((1, 3, 5, 5), np.float64), _t((4, 3, 3, 3)))
    with pytest.raises(TypeError, match="bias dtype float64 does not match input dtype float32"):
        conv2d(_t((1, 3, 5, 5)), _t((4, 3, 3, 3)), _t((4,), np.float64))
    with pytest.raises(TypeError, match="conv2d: input must be a Tensor, got ndarray"):
        conv2d(np.zeros((1, 3, 5, 5), np.float32), _t((4, 3, 3, 3)))


def test_error_groups():
    with pytest.raises(ValueError, match=r"in_channels \(input channels = 3\) must be "
                                         r"divisible by groups=2"):
        conv2d(_t((1, 3, 5, 5)), _t((4, 1, 3, 3)), groups=2)
    with pytest.raises(ValueError, match=r"out_channels \(weight.shape\[0\] = 5\) must be "
                                         r"divisible by groups=2"):
        conv2d(_t((1, 4, 5, 5)), _t((5, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="groups must be a positive int, got 0"):
        conv2d(_t((1, 4, 5, 5)), _t((4, 4, 3, 3)), groups=0)


def test_error_kernel_larger_than_input():
    with pytest.raises(ShapeError, match=r"conv2d: input \(1, 1, 4, 4\) is too small: its "
                                         r"padded height \(4\) is smaller than the \(dilated\) "
                                         r"kernel \(5\); kernel size \(5, 5\)"):
        conv2d(_t((1, 1, 4, 4)), _t((1, 1, 5, 5)), padding=(0, 1))
    with pytest.raises(ShapeError, match=r"conv2d: input \(1, 1, 6, 4\) is too small: its "
                                         r"padded width \(4\) is smaller than the \(dilated\) "
                                         r"kernel \(5\); kernel size \(3, 3\), dilation \(2, 2\)"):
        conv2d(_t((1, 1, 6, 4)), _t((1, 1, 3, 3)), dilation=2)


def test_error_stride_dilation_padding():
    x, w = _t((1, 1, 6, 6)), _t((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: stride must be >= 1, got \(0, 1\)"):
        conv2d(x, w, stride=(0, 1))
    with pytest.raises(ValueError, match=r"conv2d: dilation must be >= 1, got \(1, -1\)"):
        conv2d(x, w, dilation=(1, -1))
    with pytest.raises(ValueError, match="conv2d: padding must be >= 0, got -1"):
        conv2d(x, w, padding=-1)
    with pytest.raises(TypeError, match="conv2d: stride must be an int or a pair of ints, "
                                        r"got \(1, 2, 3\)"):
        conv2d(x, w, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="conv2d: dilation must be an int or a pair of ints, "
                                        "got 1.5"):
        conv2d(x, w, dilation=1.5)
    with pytest.raises(TypeError, match="conv2d: groups must be an int, got 1.0"):
        conv2d(x, w, groups=1.0)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid', an int or a pair"):
        conv2d(x, w, padding="full")


def test_checks_are_cached_per_call_signature_and_still_refuse_bad_calls():
    """A repeated call finds its geometry in the cache (the checks are a function of the
    shapes, dtypes and arguments); a call differing in any of them is checked afresh, a
    bool stride is refused even after stride=1 was cached, errors are never cached."""
    from minidl.ops import conv as conv_ops
    conv_ops._GEOMETRIES.clear()
    x, w = _t((1, 2, 6, 6)), _t((3, 2, 3, 3))
    y = conv2d(x, w, stride=1, padding=1)
    assert len(conv_ops._GEOMETRIES) == 1
    [(key, geo)] = conv_ops._GEOMETRIES.items()
    np.testing.assert_array_equal(conv2d(x, w, stride=1, padding=1).numpy(), y.numpy())
    assert conv_ops._GEOMETRIES == {key: geo}                       # found, not re-added
    with pytest.raises(TypeError, match="conv2d: stride must be an int"):
        conv2d(x, w, stride=True, padding=1)
    with pytest.raises(ShapeError, match="conv2d: expected input with 2 channels"):
        conv2d(_t((1, 3, 6, 6)), w, stride=1, padding=1)
    with pytest.raises(TypeError, match="conv2d: input dtype float64 does not match"):
        conv2d(minidl.tensor(x.numpy().astype(np.float64)), w, stride=1, padding=1)
    assert conv_ops._GEOMETRIES == {key: geo}                       # no error cached
    conv2d(x, w, stride=[1, 1], padding=1)                          # a list: not cached
    assert len(conv_ops._GEOMETRIES) == 1


def test_error_same_with_stride():
    with pytest.raises(ValueError, match=r"conv2d: padding='same' is not supported for strided "
                                         r"convolutions \(stride=\(2, 2\)\)"):
        conv2d(_t((1, 1, 6, 6)), _t((1, 1, 3, 3)), stride=2, padding="same")


def test_function_docstring_lists_shapes():
    doc = Conv2dFunction.__doc__
    for part in ("(N, C, H, W)", "(OC, Cg, KH, KW)", "(N, OC, OH, OW)", "col2im"):
        assert part in doc


def test_shape_errors_are_runtime_and_value_errors():
    """ShapeError: code catching PyTorch's RuntimeError (or a ValueError) keeps working."""
    with pytest.raises(RuntimeError):
        conv2d(_t((28, 28)), _t((16, 3, 5, 5)))
    with pytest.raises(ValueError):
        conv2d(_t((28, 28)), _t((16, 3, 5, 5)))


# ----------------------------------------------------------------------------- the layer's errors

LAYER = "Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))"


def test_layer_errors_start_with_its_repr():
    """Conv2d's own checks and those of F.conv2d, re-raised with the layer's repr in place
    of ``conv2d: ``, keeping the class."""
    conv = nn.Conv2d(3, 4, 3)
    assert repr(conv) == LAYER
    cases = [
        (_t((1, 3, 2, 5)), ShapeError, "input (1, 3, 2, 5) is too small: its padded height (2) "
                                       "is smaller than the (dilated) kernel (3)"),
        (_t((8, 1, 28, 28)), ShapeError, "expected input (N, 3, H, W), got (8, 1, 28, 28)"),
        (_t((8, 3, 28)), ShapeError, "expected input (N, 3, H, W), got (8, 3, 28)"),
        (_t((1, 3, 5, 5), np.float64), TypeError, "input dtype float64 does not match"),
        (np.zeros((1, 3, 5, 5), np.float32), TypeError, "expected a minidl Tensor"),
    ]
    for x, cls, text in cases:
        with pytest.raises(cls) as e:
            conv(x)
        assert type(e.value) is cls
        assert str(e.value).startswith(f"{LAYER}: "), str(e.value)
        assert text in str(e.value)
    conv.bias = minidl.nn.Parameter(_t((3,)))                  # a wrong bias: F.conv2d's check
    with pytest.raises(ShapeError) as e:
        conv(_t((1, 3, 5, 5)))
    assert str(e.value).startswith(f"{LAYER}: expected bias of shape (4,)")


@pytest.mark.parametrize("kwargs,cls,text", [
    (dict(groups=0), ValueError, "Conv2d: groups must be a positive integer, got 0"),
    (dict(groups=2), ValueError, "Conv2d: in_channels (3) must be divisible by groups (2)"),
    (dict(groups=1.5), TypeError, "Conv2d: groups must be an int, got 1.5"),
    (dict(stride=0), ValueError, "Conv2d: stride must be >= 1, got 0"),
    (dict(stride=(1, 2, 3)), TypeError, "Conv2d: stride must be an int or a pair of ints"),
    (dict(dilation=-1), ValueError, "Conv2d: dilation must be >= 1, got -1"),
    (dict(padding=-1), ValueError, "Conv2d: padding must be >= 0, got -1"),
    (dict(padding="full"), ValueError, "Conv2d: invalid padding string 'full'"),
    (dict(padding="same", stride=2), ValueError, "Conv2d: padding='same' is not supported "
                                                 "for strided convolutions"),
    (dict(padding_mode="mirror"), ValueError, "Conv2d: padding_mode must be one of"),
    (dict(padding_mode="reflect"), NotImplementedError, "Conv2d: padding_mode='reflect' is "
                                                        "not supported"),
])
def test_layer_constructor_errors(kwargs, cls, text):
    with pytest.raises(cls) as e:
        nn.Conv2d(3, 4, 3, **kwargs)
    assert type(e.value) is cls and str(e.value).startswith(text), str(e.value)


def test_layer_constructor_errors_more():
    with pytest.raises(ValueError, match=r"Conv2d: out_channels \(5\) must be divisible by "
                                         r"groups \(2\)"):
        nn.Conv2d(4, 5, 3, groups=2)
    with pytest.raises(ValueError, match="Conv2d: kernel_size must be >= 1"):
        nn.Conv2d(4, 5, 0)


def test_layer_has_no_dead_attributes():
    conv = nn.Conv2d(3, 4, (3, 2), padding="same")
    for name in ("output_padding", "transposed", "_explicit_padding"):
        assert not hasattr(conv, name)
    assert conv.kernel_size == (3, 2) and conv.padding == "same"
    assert nn.Conv2d(3, 4, 3, padding=(1,)).padding == (1, 1)


# ----------------------------------------------------------------------------- implementations

# Every way of computing a convolution: (conv2d implementation, im2col implementation)
PATHS = [("reference", "reference"), ("reference", "numba"), ("direct", None)]
IMPL_CASES = [
    ((3, 6, 14, 14), (16, 6, 5, 5), {}),                          # LeNet's conv2
    ((2, 3, 9, 13), (5, 3, 2, 4), dict(padding=(1, 2))),
    ((2, 3, 6, 7), (4, 3, 4, 2), dict(padding="same")),
    ((3, 8, 9), (5, 3, 3, 3), dict(padding=1)),                   # unbatched
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", range(len(IMPL_CASES)))
def test_implementations_agree(case, dtype, rng):
    """y, gx, gw, gb by the reference (im2col through its NumPy reference or its numba
    kernels) and by the direct kernels: the same to rounding, and the registry records
    that each path ran."""
    if not K.numba_available():
        pytest.skip("numba is not installed")
    xs, ws, kw = IMPL_CASES[case]
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    gy = None
    results = []
    for conv_impl, im2col_impl in PATHS:
        X, Wt, B = (minidl.tensor(a, requires_grad=True) for a in (x, w, b))
        with K.use_impl(conv_impl, family="conv2d"), K.decisions() as log:
            if im2col_impl:
                K.use_impl(im2col_impl, family="im2col")
            y = conv2d(X, Wt, B, **kw)
            gy = rng.standard_normal(y.shape).astype(dtype) if gy is None else gy
            (y * minidl.tensor(gy)).sum().backward()
        expected = {("conv2d", conv_impl)} | ({("im2col", im2col_impl)} if im2col_impl else set())
        assert set(log) == expected
        results.append([y.numpy(), X.grad.numpy(), Wt.grad.numpy(), B.grad.numpy()])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for other in results[1:]:
        for got, ref, name in zip(other, results[0], ("y", "gx", "gw", "gb")):
            assert got.dtype == dtype and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, err_msg=name, **tol)


def test_reference_im2col_and_numba_im2col_are_bit_identical(rng):
    """The conv2d reference through either im2col implementation: im2col is a copy, so y
    and gw are bit for bit the same."""
    if not K.numba_available():
        pytest.skip("numba is not installed")
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    kw = dict(groups=2, stride=2, padding=1)
    out = []
    for impl in ("reference", "numba"):
        X, Wt = minidl.tensor(x), minidl.tensor(w, requires_grad=True)
        with K.use_impl(impl, family="im2col"):
            y = conv2d(X, Wt, **kw)
            y.sum().backward()
        out.append((y.numpy(), Wt.grad.numpy()))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x_shape, k, stride, pad, want", [
    ((2, 4, 8, 8), 3, 1, 1, "forward_3x3"),       # 8x8 outputs: whole rows
    ((2, 4, 16, 16), 3, 2, 1, "forward_3x3"),     # 8x8 outputs at stride 2
    ((2, 4, 4, 4), 3, 1, 1, "forward_across"),    # 4x4 outputs: channels inner
    ((2, 4, 8, 8), 5, 1, 2, "forward_across"),    # 5x5: channels inner up to 8x8 outputs
    ((2, 4, 9, 9), 5, 1, 2, "forward"),           # 5x5 above that: per plane
])
def test_default_forward_kernel(x_shape, k, stride, pad, want, monkeypatch, rng):
    """Which kernel a depthwise forward takes with the default settings."""
    called = []
    real = conv_depthwise._kernels()

    class Spy:
        def __getattr__(self, name):
            called.append(name)
            return getattr(real, name)

    monkeypatch.setattr(conv_depthwise, "_kernels", Spy)
    C = x_shape[1]
    geo = geometry.ConvGeometry.of(x_shape, (C, 1, k, k), (stride, stride),
                                   ((pad, pad), (pad, pad)), (1, 1), C)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
    with conv_depthwise.rows_3x3_above(conv_depthwise.ROWS_3X3_ABOVE_OUTPUTS), \
            conv_depthwise.across_max_outputs(conv_depthwise.ACROSS_MAX_OUTPUTS):
        conv_depthwise.forward(x, w, None, geo)
    assert [c for c in called if c.startswith("forward")] == [want]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 3, 1, 1), (0, 3, 2, 2), (2, 4, 0, 3)])
def test_plane_sums_is_the_bias_gradient(shape, dtype, rng):
    """``plane_sums`` (every conv implementation's bias gradient): gy summed over (N, H, W)
    in gy's dtype, also for a strided gy and empty ones."""
    gy = rng.standard_normal(shape).astype(dtype)
    for a in (gy, np.ascontiguousarray(gy.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)):
        got = conv_kernels.plane_sums(a)
        assert got.dtype == dtype and got.shape == (shape[1],)
        want = a.astype(np.float64).sum(axis=(0, 2, 3))
        tol = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 1e-2}[dtype]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

