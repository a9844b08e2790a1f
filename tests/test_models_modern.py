"""minidl.models' newer families: mobilenet_v3_small, efficientnet_b0, convnext_tiny.

As in test_models.py, each family is written again here in plain PyTorch, by hand, with
torchvision's module names (torchvision is not a dependency), and ``check_parity`` (from
test_models) copies the weights across and compares outputs, parameter gradients and
running statistics in float64, in training and in eval mode. Parity runs at reduced
widths on each device, and at the real widths and depths (10 classes, 32x32 or 64x64
inputs) on the CPU; the 1000-class models are checked for their parameter counts, their
``state_dict`` keys and shapes against the twins, and their summaries.
Stochastic depth is off in the parity runs (p = 0: its masks would come from different
generators); the layer has tests of its own below, as do Hardsigmoid and LayerNorm2d.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import minidl
import minidl.nn.functional as F
from helpers import (TorchHardswish, check_double_backward, check_op, rand_away_from,
                     to_host)
from minidl import models, nn
from minidl.models.efficientnet import _b0_setting
from test_models import _build, check_parity

# ============================================================================= PyTorch twins


def t_make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def t_conv_norm_act(cin, cout, k, stride=1, groups=1, norm=tnn.BatchNorm2d, act=None,
                    padding=None, bias=False):
    """torchvision's Conv2dNormActivation: Sequential 0 conv, 1 norm, 2 activation."""
    padding = (k - 1) // 2 if padding is None else padding
    layers = [tnn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)]
    if norm is not None:
        layers.append(norm(cout))
    if act is not None:
        layers.append(act(inplace=True))
    return tnn.Sequential(*layers)


class THardsigmoid(tnn.Module):
    """relu6(x + 3) / 6, exact in float64. PyTorch's own ``hardsigmoid`` backward on the
    CPU multiplies by 1/6 rounded to float32 (slope 0.1666666716...), 3e-8 off in
    float64, more than the parity tolerance; its value and kinks are these."""

    def forward(self, x):
        return TF.relu6(x + 3) / 6


class TSqueezeExcitation(tnn.Module):
    def __init__(self, cin, csq, act=tnn.ReLU, gate=tnn.Sigmoid):
        super().__init__()
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc1 = tnn.Conv2d(cin, csq, 1)
        self.fc2 = tnn.Conv2d(csq, cin, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class TStochasticDepth(tnn.Module):  # row mode; p = 0 in the parity runs
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype,
                           device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


# --- MobileNetV3-Small

V3_SMALL = [  # in, kernel, expanded, out, SE, hard swish, stride
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1), (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2), (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1)]


class TInvertedResidualV3(tnn.Module):
    def __init__(self, cin, k, cexp, cout, se, hs, stride, norm):
        super().__init__()
        act = TorchHardswish if hs else tnn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if cexp != cin:
            layers.append(t_conv_norm_act(cin, cexp, 1, norm=norm, act=act))
        layers.append(t_conv_norm_act(cexp, cexp, k, stride, groups=cexp, norm=norm, act=act))
        if se:
            layers.append(TSqueezeExcitation(cexp, t_make_divisible(cexp // 4),
                                             gate=THardsigmoid))
        layers.append(t_conv_norm_act(cexp, cout, 1, norm=norm))
        self.block = tnn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class TMobileNetV3Small(tnn.Module):
    def __init__(self, num_classes, width_mult):
        super().__init__()

        def w(c):
            return t_make_divisible(c * width_mult)
        norm = partial(tnn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers = [t_conv_norm_act(3, w(16), 3, 2, norm=norm, act=TorchHardswish)]
        for cin, k, cexp, cout, se, hs, s in V3_SMALL:
            layers.append(TInvertedResidualV3(w(cin), k, w(cexp), w(cout), se, hs, s, norm))
        last = 6 * w(96)
        layers.append(t_conv_norm_act(w(96), last, 1, norm=norm, act=TorchHardswish))
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.classifier = tnn.Sequential(tnn.Linear(last, w(1024)), TorchHardswish(inplace=True),
                                         tnn.Dropout(0.2, inplace=True),
                                         tnn.Linear(w(1024), num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- EfficientNet-B0

B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class TMBConv(tnn.Module):
    def __init__(self, t, k, stride, cin, cout, sd_prob):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        cexp = t_make_divisible(cin * t)
        layers = []
        if cexp != cin:
            layers.append(t_conv_norm_act(cin, cexp, 1, act=tnn.SiLU))
        layers.append(t_conv_norm_act(cexp, cexp, k, stride, groups=cexp, act=tnn.SiLU))
        layers.append(TSqueezeExcitation(cexp, max(1, cin // 4), act=tnn.SiLU))
        layers.append(t_conv_norm_act(cexp, cout, 1))
        self.block = tnn.Sequential(*layers)
        self.stochastic_depth = TStochasticDepth(sd_prob)

    def forward(self, x):
        y = self.block(x)
        return self.stochastic_depth(y) + x if self.use_res_connect else y


class TEfficientNetB0(tnn.Module):
    def __init__(self, num_classes, width_mult=1.0, depth_mult=1.0, sd_prob=0.0):
        super().__init__()

        def w(c):
            return t_make_divisible(c * width_mult)
        layers = [t_conv_norm_act(3, w(32), 3, 2, act=tnn.SiLU)]
        total = sum(int(math.ceil(n * depth_mult)) for *_, n in B0)
        i = 0
        for t, k, s, cin, cout, n in B0:
            stage = []
            for j in range(int(math.ceil(n * depth_mult))):
                stage.append(TMBConv(t, k, s if j == 0 else 1, w(cin) if j == 0 else w(cout),
                                     w(cout), sd_prob * i / total))
                i += 1
            layers.append(tnn.Sequential(*stage))
        layers.append(t_conv_norm_act(w(320), 4 * w(320), 1, act=tnn.SiLU))
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.classifier = tnn.Sequential(tnn.Dropout(0.2, inplace=True),
                                         tnn.Linear(4 * w(320), num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- ConvNeXt-T

class TLayerNorm2d(tnn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = TF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TPermute(tnn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class TCNBlock(tnn.Module):
    def __init__(self, dim, layer_scale, sd_prob):
        super().__init__()
        self.block = tnn.Sequential(
            tnn.Conv2d(dim, dim, 7, padding=3, groups=dim), TPermute([0, 2, 3, 1]),
            tnn.LayerNorm(dim, eps=1e-6), tnn.Linear(dim, 4 * dim), tnn.GELU(),
            tnn.Linear(4 * dim, dim), TPermute([0, 3, 1, 2]))
        self.layer_scale = tnn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = TStochasticDepth(sd_prob)

    def forward(self, x):
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class TConvNeXt(tnn.Module):
    def __init__(self, setting, num_classes, layer_scale=1e-6, sd_prob=0.0):
        super().__init__()
        norm = partial(TLayerNorm2d, eps=1e-6)
        layers = [t_conv_norm_act(3, setting[0][0], 4, 4, norm=norm, padding=0, bias=True)]
        total, i = sum(n for *_, n in setting), 0
        for cin, cout, n in setting:
            stage = []
            for _ in range(n):
                stage.append(TCNBlock(cin, layer_scale, sd_prob * i / (total - 1.0)))
                i += 1
            layers.append(tnn.Sequential(*stage))
            if cout is not None:
                layers.append(tnn.Sequential(norm(cin), tnn.Conv2d(cin, cout, 2, 2)))
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        last = setting[-1][1] or setting[-1][0]
        self.classifier = tnn.Sequential(norm(last), tnn.Flatten(1),
                                         tnn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


TINY = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]
SMALL_CONVNEXT = [(16, 32, 2), (32, 48, 2), (48, 64, 2), (64, None, 1)]  # for parity


def md_convnext(setting, **kwargs):
    return _build(models.ConvNeXt, [models.CNBlockConfig(*s) for s in setting], **kwargs)


@pytest.fixture(autouse=True)
def _torch_seed():
    torch.manual_seed(0)  # the PyTorch twins' initial weights


# ============================================================================= parity


def test_mobilenet_v3_small_parity(device):
    md = _build(models.mobilenet_v3_small, num_classes=10, width_mult=0.25)
    check_parity(md, TMobileNetV3Small(10, 0.25), (2, 3, 64, 64), device=device)


def test_efficientnet_b0_parity(device):
    # the B0 table at a quarter of the widths and half the depth (torchvision's knobs)
    md = _build(models.EfficientNet, _b0_setting(width_mult=0.25, depth_mult=0.5),
                dropout=0.2, stochastic_depth_prob=0.0, num_classes=10)
    check_parity(md, TEfficientNetB0(10, 0.25, 0.5), (2, 3, 32, 32), device=device)


def test_convnext_parity(device):
    # a large layer_scale, so that the blocks' branches matter to the output
    md = md_convnext(SMALL_CONVNEXT, num_classes=10, layer_scale=0.5)
    check_parity(md, TConvNeXt(SMALL_CONVNEXT, 10, layer_scale=0.5), (2, 3, 64, 64),
                 device=device)


FULL_WIDTH = {  # the real widths and depths, 10 classes, small inputs (2 to 4 s each)
    "mobilenet_v3_small": (lambda: _build(models.mobilenet_v3_small, num_classes=10),
                           lambda: TMobileNetV3Small(10, 1.0), (2, 3, 64, 64)),
    # 64x64, not 32x32: at 1x1 maps, batch statistics over 2 values make the gradients
    # ill-conditioned (1e-8 apart in float64 on both sides, no bug)
    "efficientnet_b0": (lambda: _build(models.efficientnet_b0, num_classes=10,
                                       stochastic_depth_prob=0.0),
                        lambda: TEfficientNetB0(10), (2, 3, 64, 64)),
    "convnext_tiny": (lambda: _build(models.convnext_tiny, num_classes=10,
                                     stochastic_depth_prob=0.0, layer_scale=0.5),
                      lambda: TConvNeXt(TINY, 10, layer_scale=0.5), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(FULL_WIDTH))
def test_full_width_parity(name):
    md, twin, shape = FULL_WIDTH[name]
    check_parity(md(), twin(), shape)


# ============================================================================= full size

FULL = {
    "mobilenet_v3_small": (2_542_856, lambda: TMobileNetV3Small(1000, 1.0)),
    "efficientnet_b0": (5_288_548, lambda: TEfficientNetB0(1000)),
    "convnext_tiny": (28_589_128, lambda: TConvNeXt(TINY, 1000, sd_prob=0.1)),
}
# torchvision's published GFLOPS (multiply-adds, 224x224) for the three
PUBLISHED_GMACS = {"mobilenet_v3_small": 0.06, "efficientnet_b0": 0.39, "convnext_tiny": 4.46}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_parameter_count_and_state_dict(name):
    count, twin = FULL[name]
    md = _build(getattr(models, name))
    assert sum(p.numel() for p in md.parameters()) == count
    t = twin()
    assert sum(p.numel() for p in t.parameters()) == count
    md_shapes = [(k, tuple(v.shape)) for k, v in md.state_dict().items()]
    t_shapes = [(k, tuple(v.shape)) for k, v in t.state_dict().items()]
    assert md_shapes == t_shapes


def test_torchvision_names():
    with models.uninitialized():
        keys = {n: set(getattr(models, n)().state_dict()) for n in FULL}
    assert {"features.1.block.1.fc1.weight", "features.1.block.1.fc2.bias",
            "features.4.block.0.1.running_var", "classifier.3.weight"} <= keys[
        "mobilenet_v3_small"]
    assert {"features.1.0.block.1.fc1.weight", "features.2.1.block.3.1.weight",
            "features.8.0.weight", "classifier.1.weight"} <= keys["efficientnet_b0"]
    assert {"features.0.1.weight", "features.1.0.layer_scale", "features.1.0.block.0.weight",
            "features.1.0.block.2.weight", "features.1.0.block.5.bias",
            "features.2.0.weight", "features.2.1.weight", "features.5.8.layer_scale", "features.7.2.layer_scale",
            "classifier.0.weight", "classifier.2.weight"} <= keys["convnext_tiny"]


@pytest.mark.parametrize("name", list(FULL))
def test_summary_counts_every_layer(name):
    md = _build(getattr(models, name))
    s = minidl.summary(md, (3, 224, 224), verbose=False)
    assert s.total_params == FULL[name][0]
    assert s.uncounted == []
    # within 6% of torchvision's published multiply-adds (given to 2 or 3 digits)
    assert s.total_macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], rel=0.06)
    assert s.total_flops > 2 * s.total_macs


def test_summary_macs_are_exact():
    """The totals themselves (conv and linear multiply-adds at 224x224, batch 1)."""
    macs = {n: minidl.summary(_build(getattr(models, n)), (3, 224, 224), verbose=False)
            .total_macs for n in FULL}
    assert macs == {"mobilenet_v3_small": 56_510_400, "efficientnet_b0": 385_814_752,
                    "convnext_tiny": 4_455_531_264}


def test_stochastic_depth_probabilities_rise_with_depth():
    eff = _build(models.efficientnet_b0)
    ps = [m.p for m in eff.modules() if isinstance(m, nn.StochasticDepth)]
    assert len(ps) == 16 and ps[0] == 0.0 and ps[-1] == pytest.approx(0.2 * 15 / 16)
    cnx = _build(models.convnext_tiny)
    ps = [m.p for m in cnx.modules() if isinstance(m, nn.StochasticDepth)]
    assert len(ps) == 18 and ps[0] == 0.0 and ps[-1] == pytest.approx(0.1)
    layer_scales = [to_host(m.layer_scale) for m in cnx.modules()
                    if isinstance(m, models.CNBlock)]
    assert all(np.all(s == np.float32(1e-6)) for s in layer_scales)


def test_models_train_on_float32():
    """A float32 step of each (small) model runs and gives finite gradients."""
    minidl.manual_seed(0)
    nets = [models.mobilenet_v3_small(num_classes=4, width_mult=0.25),
            models.EfficientNet(_b0_setting(0.25, 0.34), 0.2, num_classes=4),
            models.ConvNeXt([models.CNBlockConfig(*s) for s in SMALL_CONVNEXT],
                            stochastic_depth_prob=0.5, num_classes=4)]
    x = minidl.randn(2, 3, 32, 32)
    y = minidl.tensor(np.array([1, 3]))
    for net in nets:
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        assert loss.dtype == np.float32 and np.isfinite(loss.item())
        assert all(p.grad is not None and np.all(np.isfinite(to_host(p.grad)))
                   for p in net.parameters())


# ============================================================================= the layers

def test_hardsigmoid_matches_pytorch(device):
    rng = np.random.default_rng(0)
    x = rand_away_from(rng, (4, 6), avoid=(-3.0, 3.0), margin=0.1, low=-5.0, high=5.0)
    exact = lambda t: TF.relu6(t + 3) / 6  # noqa: E731 - see THardsigmoid
    check_op(F.hardsigmoid, exact, [x], device=device)
    check_double_backward(F.hardsigmoid, exact, [x[:3, :4]], device=device)
    # PyTorch's own: the same values, its float64 slope rounded to float32 (3e-8)
    check_op(F.hardsigmoid, TF.hardsigmoid, [x], device=device, gradcheck=False,
             tol={np.float64: dict(rtol=1e-7, atol=1e-12)})
    # the kinks: slope 0 at -3 and 3, as PyTorch's backward
    k = minidl.tensor(np.array([-3.0, 3.0]), requires_grad=True, device=device)
    F.hardsigmoid(k).sum().backward()
    assert to_host(k.grad).tolist() == [0.0, 0.0]
    assert repr(nn.Hardsigmoid()) == "Hardsigmoid()"


def test_layernorm2d_and_permute(device):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 5, 3, 4)), rng.standard_normal(5), rng.standard_normal(5)

    def md_fn(x, w, b):
        return F.layer_norm(x.permute(0, 2, 3, 1), (5,), w, b, 1e-6).permute(0, 3, 1, 2)

    def t_fn(x, w, b):
        return TF.layer_norm(x.permute(0, 2, 3, 1), (5,), w, b, 1e-6).permute(0, 3, 1, 2)
    check_op(md_fn, t_fn, [x, w, b], device=device)
    ln = nn.LayerNorm2d(5, eps=1e-6).double().to(device)
    ln.load_state_dict({"weight": w, "bias": b})
    out = ln(minidl.tensor(x, device=device))
    np.testing.assert_allclose(to_host(out), to_host(t_fn(*map(torch.tensor, (x, w, b)))),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(minidl.errors.ShapeError, match=r"LayerNorm2d.*expected input "
                       r"\(N, 5, H, W\), got \(2, 3, 4, 5\)"):
        ln(minidl.tensor(x.transpose(0, 2, 3, 1), device=device))
    p = nn.Permute([0, 2, 3, 1])
    assert p(minidl.zeros(2, 5, 3, 4)).shape == (2, 3, 4, 5)
    with pytest.raises(minidl.errors.ShapeError, match=r"Permute.*expected an input with 4"):
        p(minidl.zeros(2, 5))


def test_stochastic_depth_drops_whole_samples(device):
    minidl.manual_seed(3)
    sd = nn.StochasticDepth(0.5, "row")
    assert repr(sd) == "StochasticDepth(p=0.5, mode=row)"
    x = minidl.tensor(np.ones((64, 3, 2, 2)), requires_grad=True, device=device)
    y = sd(x)
    rows = to_host(y).reshape(64, -1)
    assert set(np.unique(rows)) == {0.0, 2.0}              # dropped, or kept and scaled
    assert np.all(rows == rows[:, :1])                      # one decision per sample
    assert 10 < (rows[:, 0] == 0).sum() < 54
    y.sum().backward()
    np.testing.assert_array_equal(to_host(x.grad), to_host(y))  # gx = gy * mask
    batch = to_host(nn.StochasticDepth(0.5, "batch")(x))
    assert len(np.unique(batch)) == 1                       # one decision for the batch
    sd.eval()
    assert sd(x) is x
    minidl.manual_seed(7)
    a = to_host(nn.StochasticDepth(0.3, "row")(x))
    minidl.manual_seed(7)
    np.testing.assert_array_equal(a, to_host(nn.StochasticDepth(0.3, "row")(x)))
    assert not to_host(F.stochastic_depth(x, 1.0, "row")).any()
    assert F.stochastic_depth(x, 0.0, "row") is x
    with pytest.raises(ValueError, match="mode must be 'row' or 'batch'"):
        F.stochastic_depth(x, 0.5, "rows")
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        nn.StochasticDepth(1.5, "row")


def test_summary_rules_of_the_new_layers():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.LayerNorm2d(8),
                        nn.Permute([0, 2, 3, 1]), nn.LayerNorm(8), nn.Permute([0, 3, 1, 2]),
                        nn.Hardsigmoid(), nn.StochasticDepth(0.2, "row"))
    s = minidl.summary(net, (3, 6, 6), verbose=False)
    assert s.uncounted == []
    n = 8 * 4 * 4
    flops = [r.flops for r in s.layers]
    assert flops[1:] == [7 * n, 7 * n, 0, 7 * n, 0, n, 0]   # StochasticDepth: 0 in eval
    assert s.layers[3].output_shape == (1, 4, 4, 8)
    train = minidl.summary(net, (3, 6, 6), mode="train", verbose=False)
    assert train.layers[-1].flops == n
