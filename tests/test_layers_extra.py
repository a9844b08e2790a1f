"""Issue 15's layers against PyTorch: LayerNorm, GroupNorm, InstanceNorm1d/2d, SiLU,
Hardswish, ELU, PReLU, Dropout2d, Upsample / F.interpolate, ZeroPad2d, Unflatten, Conv1d,
MaxPool1d, Embedding, ParameterList, ParameterDict.

Three kinds of checks:
- the functional forms through ``check_op`` (forward/backward in float64 and float32 with a
  random upstream gradient, plus gradcheck) and one ``check_double_backward`` per new
  Function family;
- each layer with PyTorch's weights copied in (forward, input and parameter gradients);
- constructor surface: repr, state_dict keys, init, errors naming the layer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl
import minidl.nn.functional as F
from helpers import check_double_backward, check_op, rand_away_from, to_host, torch_hardswish
from minidl import nn
from minidl.errors import ShapeError

RNG = np.random.default_rng(15)


def randn(*shape):
    return RNG.standard_normal(shape)


# ----------------------------------------------------------------------------- functional

NORM_CASES = [
    ("layer_norm last dim", lambda x, w, b: F.layer_norm(x, (5,), w, b),
     lambda x, w, b: TF.layer_norm(x, (5,), w, b), [randn(3, 4, 5), randn(5), randn(5)]),
    ("layer_norm two dims", lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-3),
     lambda x, w, b: TF.layer_norm(x, (4, 5), w, b, eps=1e-3),
     [randn(3, 4, 5), randn(4, 5), randn(4, 5)]),
    ("layer_norm no affine", lambda x: F.layer_norm(x, [6]),
     lambda x: TF.layer_norm(x, [6]), [randn(2, 6)]),
    ("group_norm", lambda x, w, b: F.group_norm(x, 3, w, b),
     lambda x, w, b: TF.group_norm(x, 3, w, b), [randn(2, 6, 3, 4), randn(6), randn(6)]),
    ("group_norm 1 group 3-D", lambda x: F.group_norm(x, 1),
     lambda x: TF.group_norm(x, 1), [randn(2, 4, 5)]),
    ("instance_norm affine", lambda x, w, b: F.instance_norm(x, weight=w, bias=b),
     lambda x, w, b: TF.instance_norm(x, weight=w, bias=b),
     [randn(2, 3, 4, 5), randn(3), randn(3)]),
    ("instance_norm 1-D", lambda x: F.instance_norm(x), lambda x: TF.instance_norm(x),
     [randn(2, 3, 7)]),
]


@pytest.mark.parametrize("label, md_fn, t_fn, arrays", NORM_CASES, ids=[c[0] for c in NORM_CASES])
def test_norm_functions_match_pytorch(label, md_fn, t_fn, arrays, device):
    check_op(md_fn, t_fn, arrays, device=device)


def test_standardize_double_backward(device):
    # one family (StandardizeFunction) behind the three norms; the affine part is ordinary ops
    check_double_backward(lambda x, w, b: F.group_norm(x, 2, w, b),
                          lambda x, w, b: TF.group_norm(x, 2, w, b),
                          [randn(2, 4, 3), randn(4), randn(4)], device=device)
    check_double_backward(lambda x: F.layer_norm(x, (5,)), lambda x: TF.layer_norm(x, (5,)),
                          [randn(3, 5)], device=device)


def _away(shape, kinks, margin=0.1, low=-5.0, high=5.0):
    return rand_away_from(RNG, shape, avoid=kinks, margin=margin, low=low, high=high)


ACT_CASES = [
    ("silu", F.silu, TF.silu, (0.0,)),
    ("hardswish", F.hardswish, torch_hardswish, (-3.0, 3.0)),
    ("elu", F.elu, TF.elu, (0.0,)),
    ("elu alpha", lambda x: F.elu(x, alpha=0.3), lambda x: TF.elu(x, alpha=0.3), (0.0,)),
]


@pytest.mark.parametrize("label, md_fn, t_fn, kinks", ACT_CASES, ids=[c[0] for c in ACT_CASES])
def test_activations_match_pytorch(label, md_fn, t_fn, kinks, device):
    x = _away((4, 6), kinks)
    check_op(md_fn, t_fn, [x], device=device)
    check_double_backward(md_fn, t_fn, [_away((3, 4), kinks)], device=device)


def test_silu_is_stable_for_large_inputs():
    x = minidl.tensor(np.array([-1000.0, -50.0, 50.0, 1000.0], dtype=np.float32))
    y = F.silu(x).numpy()
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, TF.silu(torch.tensor(x.numpy())).numpy(), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_prelu_matches_pytorch(channels, device):
    x = _away((2, 3, 4), (0.0,), low=-2.0, high=2.0)
    w = RNG.uniform(0.05, 0.5, channels)
    check_op(F.prelu, TF.prelu, [x, w], device=device)
    check_double_backward(F.prelu, TF.prelu, [x[:, :, :2], w], device=device)


def test_prelu_refuses_a_weight_of_the_wrong_size():
    with pytest.raises(ShapeError, match=r"^prelu: expected weight of shape \(1,\) or \(3,\)"):
        F.prelu(minidl.randn(2, 3, 4), minidl.ones(2))


INTERP_CASES = [
    ("nearest size", dict(size=(8, 11))),
    ("nearest x2", dict(scale_factor=2)),
    ("nearest down", dict(size=(3, 4))),
    ("nearest 1/3", dict(scale_factor=1 / 3)),
    ("nearest non-integer", dict(scale_factor=(1.7, 0.6))),
    ("bilinear x2", dict(scale_factor=2, mode="bilinear")),
    ("bilinear size", dict(size=(8, 11), mode="bilinear", align_corners=False)),
    ("bilinear corners", dict(size=(8, 11), mode="bilinear", align_corners=True)),
    ("bilinear down", dict(size=(3, 2), mode="bilinear")),
    ("bilinear down corners", dict(size=(3, 2), mode="bilinear", align_corners=True)),
    ("bilinear recompute", dict(scale_factor=1.7, mode="bilinear",
                                recompute_scale_factor=True)),
    ("bilinear to 1x1 corners", dict(size=1, mode="bilinear", align_corners=True)),
]


@pytest.mark.parametrize("label, kw", INTERP_CASES, ids=[c[0] for c in INTERP_CASES])
def test_interpolate_2d_matches_pytorch(label, kw, device):
    check_op(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw),
             [randn(2, 3, 5, 7)], device=device)


@pytest.mark.parametrize("kw", [dict(size=13, mode="linear"),
                                dict(scale_factor=2.5, mode="linear", align_corners=True),
                                dict(size=4, mode="nearest"), dict(scale_factor=3)])
def test_interpolate_1d_matches_pytorch(kw, device):
    check_op(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw),
             [randn(2, 3, 6)], device=device)


def test_interpolate_double_backward(device):
    for kw in (dict(scale_factor=2, mode="bilinear"), dict(size=(5, 4))):
        check_double_backward(lambda x: F.interpolate(x, **kw) ** 2,
                              lambda x: TF.interpolate(x, **kw) ** 2,
                              [randn(1, 2, 3, 3)], device=device)


@pytest.mark.parametrize("call, cls, pattern", [
    (lambda x: F.interpolate(x), ValueError, "either size or scale_factor"),
    (lambda x: F.interpolate(x, size=4, scale_factor=2), ValueError, "either size"),
    (lambda x: F.interpolate(x, size=4, align_corners=True), ValueError, "align_corners"),
    (lambda x: F.interpolate(x[0], size=4, mode="bilinear"), ShapeError, "4-D"),
    (lambda x: F.interpolate(x, size=(4, 4, 4)), ValueError, "size must be"),
    (lambda x: F.interpolate(x, size=4, mode="bicubic"), NotImplementedError, "bicubic"),
])
def test_interpolate_errors(call, cls, pattern):
    with pytest.raises(cls, match=f"^interpolate: .*{pattern}"):
        call(minidl.randn(1, 2, 3, 3))


EMB_CASES = [
    ("plain", dict()),
    ("padding_idx", dict(padding_idx=2)),
    ("negative padding_idx", dict(padding_idx=-1)),
    ("scale_grad_by_freq", dict(scale_grad_by_freq=True, padding_idx=0)),
]


@pytest.mark.parametrize("label, kw", EMB_CASES, ids=[c[0] for c in EMB_CASES])
def test_embedding_matches_pytorch(label, kw, device):
    idx = np.array([[0, 2, 4, 2], [5, 5, 1, 0]])      # repeats: gradients must add up
    # padding_idx and scale_grad_by_freq change the gradient on purpose (it is no longer the
    # derivative), so central differences only check the plain lookup
    check_op(lambda w, i: F.embedding(i, w, **kw), lambda w, i: TF.embedding(i, w, **kw),
             [randn(6, 3), idx], device=device, gradcheck=not kw)


def test_embedding_double_backward(device):
    idx = np.array([[0, 2, 2], [3, 0, 1]])
    # squared so that the second derivative exists (the lookup itself is linear in weight)
    check_double_backward(lambda w, i: F.embedding(i, w, padding_idx=1) ** 2,
                          lambda w, i: TF.embedding(i, w, padding_idx=1) ** 2,
                          [randn(4, 3), idx], device=device, gradgradcheck=False)
    check_double_backward(lambda w, i: F.embedding(i, w) ** 2,
                          lambda w, i: TF.embedding(i, w) ** 2, [randn(4, 3), idx],
                          device=device)


def test_embedding_max_norm_renormalises_the_rows_read_like_pytorch():
    w = randn(6, 4) * 3
    idx = np.array([1, 3, 3])
    md_w, t_w = minidl.tensor(w.copy()), torch.tensor(w.copy())
    md_y = F.embedding(minidl.tensor(idx), md_w, max_norm=1.5, norm_type=3.0)
    t_y = TF.embedding(torch.tensor(idx), t_w, max_norm=1.5, norm_type=3.0)
    np.testing.assert_allclose(md_y.numpy(), t_y.numpy(), rtol=1e-12)
    np.testing.assert_allclose(md_w.numpy(), t_w.numpy(), rtol=1e-12)   # rows 1, 3 changed
    assert not np.allclose(md_w.numpy()[1], w[1])
    np.testing.assert_array_equal(md_w.numpy()[0], w[0])


def test_embedding_errors():
    w = minidl.randn(5, 3)
    with pytest.raises(IndexError, match=r"^embedding: index out of range"):
        F.embedding(minidl.tensor([0, 5]), w)
    with pytest.raises(TypeError, match=r"^embedding: expected an integer index"):
        F.embedding(minidl.tensor([0.0, 1.0]), w)
    with pytest.raises(IndexError, match=r"^Embedding\(5, 3\): index out of range"):
        nn.Embedding(5, 3)(minidl.tensor([7]))
    with pytest.raises(ValueError, match=r"^Embedding: padding_idx must be within"):
        nn.Embedding(5, 3, padding_idx=5)


CONV1D_CASES = [
    ("plain", dict()),
    ("stride padding dilation", dict(stride=2, padding=2, dilation=2)),
    ("tuples", dict(stride=(2,), padding=(1,))),
    ("groups", dict(groups=2)),
    ("same", dict(padding="same", dilation=2)),
]


@pytest.mark.parametrize("label, kw", CONV1D_CASES, ids=[c[0] for c in CONV1D_CASES])
def test_conv1d_matches_pytorch(label, kw, device):
    groups = kw.get("groups", 1)
    arrays = [randn(2, 4, 9), randn(6, 4 // groups, 3), randn(6)]
    check_op(lambda x, w, b: F.conv1d(x, w, b, **kw), lambda x, w, b: TF.conv1d(x, w, b, **kw),
             arrays, device=device)


def test_conv1d_unbatched_and_errors():
    x, w = randn(4, 9), randn(6, 4, 3)
    y = F.conv1d(minidl.tensor(x), minidl.tensor(w))
    np.testing.assert_allclose(y.numpy(), TF.conv1d(torch.tensor(x), torch.tensor(w)).numpy(),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match=r"^conv1d: expected a 3-D input"):
        F.conv1d(minidl.randn(1, 4, 9, 9), minidl.randn(6, 4, 3))
    with pytest.raises(ShapeError, match=r"^conv1d: "):
        F.conv1d(minidl.randn(1, 4, 2), minidl.randn(6, 4, 3))       # too small
    with pytest.raises(TypeError, match=r"^conv1d: stride must be"):
        F.conv1d(minidl.randn(1, 4, 9), minidl.randn(6, 4, 3), stride=(1, 2))


MAXPOOL1D_CASES = [
    ("plain", dict(kernel_size=2)),
    ("stride padding", dict(kernel_size=3, stride=2, padding=1)),
    ("dilation ceil", dict(kernel_size=2, stride=2, dilation=2, ceil_mode=True)),
]


@pytest.mark.parametrize("label, kw", MAXPOOL1D_CASES, ids=[c[0] for c in MAXPOOL1D_CASES])
def test_max_pool1d_matches_pytorch(label, kw, device):
    x = distinct_values((2, 3, 9))
    check_op(lambda x: F.max_pool1d(x, **kw), lambda x: TF.max_pool1d(x, **kw), [x],
             device=device)


def test_max_pool1d_indices_match_pytorch():
    x = distinct_values((2, 3, 9))
    md_y, md_i = F.max_pool1d(minidl.tensor(x), 3, 2, return_indices=True)
    t_y, t_i = TF.max_pool1d(torch.tensor(x), 3, 2, return_indices=True)
    np.testing.assert_array_equal(md_i.numpy(), t_i.numpy())
    np.testing.assert_array_equal(md_y.numpy(), t_y.numpy())


def distinct_values(shape):
    """A permutation of well-separated values: no ties in any pooling window."""
    return RNG.permutation(np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape) / 7


# ----------------------------------------------------------------------------- layers


def _copy_weights(md_layer, t_layer):
    md_layer.load_state_dict({k: to_host(v) for k, v in t_layer.state_dict().items()})


def _layer_parity(md_layer, t_layer, x, train=True, tol=1e-10):
    """Forward and backward (input and every parameter) of the two layers in float64, with
    PyTorch's weights copied in; the state_dict keys must be PyTorch's."""
    t_layer = t_layer.double()
    md_layer = md_layer.double()
    assert list(md_layer.state_dict()) == list(t_layer.state_dict())
    _copy_weights(md_layer, t_layer)
    md_layer.train(train)
    t_layer.train(train)
    md_x = minidl.tensor(x, requires_grad=x.dtype.kind == "f")
    t_x = torch.tensor(x, requires_grad=x.dtype.kind == "f")
    md_y, t_y = md_layer(md_x), t_layer(t_x)
    np.testing.assert_allclose(md_y.numpy(), t_y.detach().numpy(), rtol=tol, atol=tol)
    v = RNG.standard_normal(tuple(t_y.shape))
    (md_y * minidl.tensor(v)).sum().backward()
    (t_y * torch.tensor(v)).sum().backward()
    if x.dtype.kind == "f":
        np.testing.assert_allclose(md_x.grad.numpy(), t_x.grad.numpy(), rtol=tol, atol=tol)
    md_params = dict(md_layer.named_parameters())
    for name, p in t_layer.named_parameters():
        np.testing.assert_allclose(md_params[name].grad.numpy(), p.grad.numpy(), rtol=tol,
                                   atol=tol, err_msg=name)
    for name, b in t_layer.named_buffers():            # running statistics, if any
        np.testing.assert_allclose(dict(md_layer.named_buffers())[name].numpy(), b.numpy(),
                                   rtol=tol, atol=tol, err_msg=name)
    return md_layer, t_layer


def _randomise(t_layer):
    """Non-trivial parameters (PyTorch inits norms to 1/0, which hides mistakes)."""
    with torch.no_grad():
        for p in t_layer.parameters():
            p.copy_(torch.randn(p.shape))
    return t_layer


LAYER_CASES = [
    ("LayerNorm", lambda: nn.LayerNorm(5), lambda: torch.nn.LayerNorm(5), (2, 3, 5)),
    ("LayerNorm 2 dims no bias", lambda: nn.LayerNorm((3, 5), bias=False),
     lambda: torch.nn.LayerNorm((3, 5), bias=False), (2, 3, 5)),
    ("LayerNorm no affine", lambda: nn.LayerNorm(5, elementwise_affine=False),
     lambda: torch.nn.LayerNorm(5, elementwise_affine=False), (4, 5)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4), lambda: torch.nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    ("GroupNorm no affine", lambda: nn.GroupNorm(4, 4, affine=False),
     lambda: torch.nn.GroupNorm(4, 4, affine=False), (2, 4, 5)),
    ("InstanceNorm2d", lambda: nn.InstanceNorm2d(3), lambda: torch.nn.InstanceNorm2d(3),
     (2, 3, 4, 4)),
    ("InstanceNorm2d affine", lambda: nn.InstanceNorm2d(3, affine=True),
     lambda: torch.nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 4)),
    ("InstanceNorm2d unbatched", lambda: nn.InstanceNorm2d(3, affine=True),
     lambda: torch.nn.InstanceNorm2d(3, affine=True), (3, 4, 4)),
    ("InstanceNorm2d running", lambda: nn.InstanceNorm2d(3, affine=True,
                                                         track_running_stats=True),
     lambda: torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 4, 4)),
    ("InstanceNorm1d", lambda: nn.InstanceNorm1d(3, affine=True),
     lambda: torch.nn.InstanceNorm1d(3, affine=True), (2, 3, 6)),
    ("PReLU", lambda: nn.PReLU(), lambda: torch.nn.PReLU(), (2, 3, 4)),
    ("PReLU per channel", lambda: nn.PReLU(3, init=0.1), lambda: torch.nn.PReLU(3, init=0.1),
     (2, 3, 4)),
    ("SiLU", lambda: nn.SiLU(), lambda: torch.nn.SiLU(), (2, 3, 4)),
    ("Hardswish", lambda: nn.Hardswish(), lambda: torch.nn.Hardswish(), (2, 3, 4)),
    ("ELU", lambda: nn.ELU(0.7), lambda: torch.nn.ELU(0.7), (2, 3, 4)),
    ("Conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1),
     lambda: torch.nn.Conv1d(4, 6, 3, stride=2, padding=1), (2, 4, 11)),
    ("Conv1d groups no bias", lambda: nn.Conv1d(4, 8, 5, groups=4, bias=False, padding="same"),
     lambda: torch.nn.Conv1d(4, 8, 5, groups=4, bias=False, padding="same"), (2, 4, 11)),
    ("Upsample nearest", lambda: nn.Upsample(scale_factor=2),
     lambda: torch.nn.Upsample(scale_factor=2), (2, 3, 4, 5)),
    ("Upsample bilinear", lambda: nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
     lambda: torch.nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True), (2, 3, 4, 5)),
    ("ZeroPad2d", lambda: nn.ZeroPad2d((1, 2, 0, 3)), lambda: torch.nn.ZeroPad2d((1, 2, 0, 3)),
     (2, 3, 4, 5)),
    ("Unflatten", lambda: nn.Unflatten(1, (3, -1)), lambda: torch.nn.Unflatten(1, (3, -1)),
     (2, 12)),
]


@pytest.mark.parametrize("label, make_md, make_t, shape", LAYER_CASES,
                         ids=[c[0] for c in LAYER_CASES])
def test_layer_matches_pytorch_with_copied_weights(label, make_md, make_t, shape):
    x = rand_away_from(RNG, shape, avoid=(0.0, -3.0, 3.0), margin=0.05, low=-4, high=4)
    md, t = _layer_parity(make_md(), _randomise(make_t()), x)
    assert repr(md) == repr(t)


def test_instance_norm_running_statistics_then_eval_match_pytorch():
    t = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.3).double()
    md = nn.InstanceNorm2d(3, affine=True, track_running_stats=True, momentum=0.3).double()
    _copy_weights(md, t)
    for _ in range(3):
        x = randn(2, 3, 4, 4) * 2 + 1
        md(minidl.tensor(x))
        t(torch.tensor(x))
    np.testing.assert_allclose(md.running_mean.numpy(), t.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(md.running_var.numpy(), t.running_var.numpy(), rtol=1e-12)
    md.eval()
    t.eval()
    x = randn(2, 3, 4, 4)
    np.testing.assert_allclose(md(minidl.tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_embedding_layer_matches_pytorch():
    t = torch.nn.Embedding(7, 4, padding_idx=3).double()
    md = nn.Embedding(7, 4, padding_idx=3)
    idx = np.array([[0, 3, 6], [3, 1, 0]])
    _layer_parity(md, t, idx)
    assert np.all(nn.Embedding(7, 4, padding_idx=3).weight.numpy()[3] == 0)   # init
    assert repr(md) == repr(t) == "Embedding(7, 4, padding_idx=3)"
    pre = nn.Embedding.from_pretrained(minidl.ones(3, 2))
    assert pre.weight.requires_grad is False and pre.weight.shape == (3, 2)


def test_max_pool1d_layer_matches_pytorch():
    md, t = nn.MaxPool1d(3, stride=2, padding=1), torch.nn.MaxPool1d(3, stride=2, padding=1)
    x = distinct_values((2, 3, 9))
    _layer_parity(md, t, x)
    assert repr(md) == repr(t)


def test_dropout2d_layer_zeros_whole_channels_in_training_only():
    minidl.manual_seed(0)
    layer = nn.Dropout2d(0.5)
    assert repr(layer) == repr(torch.nn.Dropout2d(0.5))
    x = minidl.ones(8, 16, 3, 3)
    y = layer(x).numpy()
    per_channel = y.reshape(8, 16, 9)
    assert np.all((per_channel == 0).all(axis=2) | (per_channel == 2).all(axis=2))
    assert 0 < (per_channel[:, :, 0] == 0).mean() < 1
    layer.eval()
    assert layer(x) is x


CONSTRUCTED = [
    (lambda: nn.LayerNorm([4, 5], eps=1e-3), lambda: torch.nn.LayerNorm([4, 5], eps=1e-3)),
    (lambda: nn.GroupNorm(3, 6, affine=False), lambda: torch.nn.GroupNorm(3, 6, affine=False)),
    (lambda: nn.InstanceNorm2d(4), lambda: torch.nn.InstanceNorm2d(4)),
    (lambda: nn.InstanceNorm2d(4, momentum=None, track_running_stats=True),
     lambda: torch.nn.InstanceNorm2d(4, momentum=None, track_running_stats=True)),
    (lambda: nn.SiLU(inplace=True), lambda: torch.nn.SiLU(inplace=True)),
    (lambda: nn.ELU(alpha=0.5, inplace=True), lambda: torch.nn.ELU(alpha=0.5, inplace=True)),
    (lambda: nn.Upsample(scale_factor=(2, 3)), lambda: torch.nn.Upsample(scale_factor=(2, 3))),
    (lambda: nn.Upsample(size=4, mode="bilinear"), lambda: torch.nn.Upsample(size=4,
                                                                           mode="bilinear")),
    (lambda: nn.ZeroPad2d(2), lambda: torch.nn.ZeroPad2d(2)),
    (lambda: nn.Conv1d(3, 4, (3,), dilation=2, bias=False),
     lambda: torch.nn.Conv1d(3, 4, (3,), dilation=2, bias=False)),
    (lambda: nn.MaxPool1d(2), lambda: torch.nn.MaxPool1d(2)),
    (lambda: nn.Embedding(10, 3, max_norm=1.0, norm_type=3.0, scale_grad_by_freq=True),
     lambda: torch.nn.Embedding(10, 3, max_norm=1.0, norm_type=3.0, scale_grad_by_freq=True)),
]


@pytest.mark.parametrize("make_md, make_t", CONSTRUCTED)
def test_repr_state_dict_keys_and_shapes_match_pytorch(make_md, make_t):
    md, t = make_md(), make_t()
    assert repr(md) == repr(t)
    assert {k: tuple(v.shape) for k, v in md.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in t.state_dict().items()}


def test_default_inits_match_pytorch():
    assert np.all(nn.LayerNorm(4).weight.numpy() == 1) and np.all(nn.LayerNorm(4).bias.numpy() == 0)
    assert np.all(nn.GroupNorm(2, 4).weight.numpy() == 1)
    assert np.all(nn.PReLU(3).weight.numpy() == np.float32(0.25))
    conv = nn.Conv1d(4, 6, 3)
    bound = 1 / np.sqrt(4 * 3)
    assert np.abs(conv.weight.numpy()).max() <= bound and np.abs(conv.bias.numpy()).max() <= bound
    emb = nn.Embedding(1000, 8).weight.numpy()
    assert abs(emb.mean()) < 0.05 and abs(emb.std() - 1) < 0.05


@pytest.mark.parametrize("call, cls, prefix", [
    (lambda: nn.LayerNorm(5)(minidl.randn(2, 4)), ShapeError, r"LayerNorm\(\(5,\)"),
    (lambda: nn.GroupNorm(2, 4)(minidl.randn(2, 6, 3)), ShapeError, r"GroupNorm\(2, 4"),
    (lambda: nn.InstanceNorm2d(3, affine=True)(minidl.randn(2, 4, 3, 3)), ShapeError,
     r"InstanceNorm2d\(3"),
    (lambda: nn.InstanceNorm2d(3)(minidl.randn(2, 3)), ShapeError, r"InstanceNorm2d\(3"),
    (lambda: nn.Conv1d(3, 4, 3)(minidl.randn(2, 5, 9)), ShapeError, r"Conv1d\(3, 4"),
    (lambda: nn.Conv1d(3, 4, 3)(minidl.randn(2, 3, 9).double()), TypeError, r"Conv1d\(3, 4"),
    (lambda: nn.MaxPool1d(2)(minidl.randn(2, 3, 4, 4)), ShapeError, r"MaxPool1d\("),
    (lambda: nn.PReLU(3)(minidl.randn(2, 4, 5)), ShapeError, r"PReLU\(num_parameters=3\)"),
    (lambda: nn.Unflatten(1, (3, 5))(minidl.randn(2, 12)), ShapeError, r"Unflatten\(dim=1"),
    (lambda: nn.ZeroPad2d(1)(minidl.randn(2, 3)), ShapeError, r"ZeroPad2d\("),
    (lambda: nn.GroupNorm(4, 6), ValueError, "GroupNorm: "),
    (lambda: F.layer_norm(minidl.randn(2, 4), (5,)), ShapeError, "layer_norm: "),
    (lambda: F.group_norm(minidl.randn(2, 6, 3), 4), ShapeError, "group_norm: "),
    (lambda: F.instance_norm(minidl.randn(2, 3, 1)), ShapeError, "instance_norm: "),
    (lambda: F.layer_norm(minidl.tensor([[1, 2]]), (2,)), TypeError, "layer_norm: "),
])
def test_errors_name_the_layer_or_op(call, cls, prefix):
    with pytest.raises(cls, match="^" + prefix):
        call()


# ----------------------------------------------------------------------------- containers


def test_parameter_list_registers_like_pytorch():
    md = nn.ParameterList([nn.Parameter(minidl.ones(2)), minidl.zeros(2, 3)])
    md.append(nn.Parameter(minidl.ones(4)))
    t = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(2)), torch.zeros(2, 3)])
    t.append(torch.nn.Parameter(torch.ones(4)))
    assert list(md.state_dict()) == list(t.state_dict()) == ["0", "1", "2"]
    assert isinstance(md[1], nn.Parameter) and md[1].requires_grad
    assert len(md) == 3 and md[-1].shape == (4,)
    assert [p.shape for p in md.parameters()] == [(2,), (2, 3), (4,)]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scales = nn.ParameterList([nn.Parameter(minidl.ones(3)) for _ in range(2)])

        def forward(self, x):
            for s in self.scales:
                x = x * s
            return x

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["scales.0", "scales.1"]
    opt = minidl.optim.SGD(net.parameters(), lr=0.5)
    net(minidl.ones(3)).sum().backward()
    opt.step()
    np.testing.assert_allclose(net.scales[0].numpy(), 0.5)


def test_parameter_dict_registers_like_pytorch():
    md = nn.ParameterDict({"a": nn.Parameter(minidl.ones(2)), "b": minidl.zeros(3)})
    md["c"] = nn.Parameter(minidl.ones(1))
    t = torch.nn.ParameterDict({"a": torch.nn.Parameter(torch.ones(2)), "b": torch.zeros(3)})
    t["c"] = torch.nn.Parameter(torch.ones(1))
    assert list(md.state_dict()) == list(t.state_dict()) == ["a", "b", "c"]
    assert "b" in md and isinstance(md["b"], nn.Parameter)
    assert list(md.keys()) == ["a", "b", "c"] and len(md) == 3
    md.pop("a")
    assert list(md) == ["b", "c"] and len(list(md.parameters())) == 2


def test_summary_knows_the_new_activations_and_runs_the_other_layers():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.SiLU(), nn.PReLU(4), nn.ELU(), nn.Hardswish(),
                          nn.LayerNorm(6), nn.Unflatten(2, (2, 3)))
    info = minidl.summary(model, (3, 8), verbose=False)
    text = str(info)
    for name in ("SiLU", "PReLU", "ELU", "Hardswish", "LayerNorm", "Unflatten"):
        assert name in text
    assert tuple(model(minidl.randn(2, 3, 8)).shape) == (2, 4, 2, 3)
