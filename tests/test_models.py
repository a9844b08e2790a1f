"""minidl.models: PyTorch parity per family, training steps, the ResNet-152 backward.

Parity: each family is written again here in plain PyTorch, by hand, with torchvision's
module names (torchvision is not a dependency), so ``state_dict`` keys must match exactly;
the weights are copied from PyTorch into minidl and both networks run in float64, in
training mode (batch statistics; dropout layers switched off, their masks come from
different generators) and in eval mode (running statistics). Outputs, every parameter
gradient (for a random upstream gradient) and the running statistics must agree to ~1e-9,
on each device (``device`` fixture; on the GPU against PyTorch on CUDA). Inputs are small
and widths reduced where the model has a width knob, to keep this fast.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

import minidl
import minidl.optim
from helpers import to_host, torch_device
from minidl import models, nn

# ============================================================================= PyTorch twins


class TLeNet(tnn.Module):  # the lecture's class, verbatim
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 6, kernel_size=5, stride=1, padding=0)
        self.conv2 = tnn.Conv2d(6, 16, kernel_size=5, stride=1, padding=0)
        self.fc1 = tnn.Linear(400, 120)
        self.fc2 = tnn.Linear(120, 84)
        self.fc3 = tnn.Linear(84, 10)
        self.max_pool = tnn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        out = torch.tanh(self.conv1(x))
        out = self.max_pool(out)
        out = torch.tanh(self.conv2(out))
        out = self.max_pool(out)
        out = out.reshape(out.size(0), -1)
        out = torch.tanh(self.fc1(out))
        out = torch.tanh(self.fc2(out))
        return self.fc3(out)


class TAlexNet(tnn.Module):  # the lecture's, with channel counts as arguments
    def __init__(self, num_classes=10, c=(96, 256, 384, 384, 256), hidden=4096):
        super().__init__()
        c1, c2, c3, c4, c5 = c

        def block(cin, cout, k, s, p, pool):
            layers = [tnn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p),
                      tnn.BatchNorm2d(cout), tnn.ReLU()]
            return tnn.Sequential(*layers, *([tnn.MaxPool2d(3, 2)] if pool else []))
        self.conv1 = block(3, c1, 11, 4, 2, True)
        self.conv2 = block(c1, c2, 5, 1, 2, True)
        self.conv3 = block(c2, c3, 3, 1, 1, False)
        self.conv4 = block(c3, c4, 3, 1, 1, False)
        self.conv5 = block(c4, c5, 3, 1, 1, True)
        self.fc1 = tnn.Sequential(tnn.Dropout(0.5), tnn.Linear(c5 * 36, hidden), tnn.ReLU())
        self.fc2 = tnn.Sequential(tnn.Dropout(0.5), tnn.Linear(hidden, hidden), tnn.ReLU())
        self.fc3 = tnn.Sequential(tnn.Linear(hidden, num_classes))

    def forward(self, x):
        out = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        out = out.reshape(out.size(0), -1)
        return self.fc3(self.fc2(self.fc1(out)))


class TVGG(tnn.Module):  # torchvision's VGG with the classifier sizes as arguments
    def __init__(self, cfg, batch_norm, num_classes, hidden, pool):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(tnn.Conv2d(cin, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(tnn.BatchNorm2d(v))
                layers.append(tnn.ReLU(inplace=True))
                cin = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = tnn.Sequential(
            tnn.Linear(cin * pool * pool, hidden), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(hidden, hidden), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TBasicConv2d(tnn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = tnn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F_relu(self.bn(self.conv(x)))


def F_relu(x):
    return TF.relu(x)


class TInception(tnn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, pp, k5=5):
        super().__init__()
        self.branch1 = TBasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = tnn.Sequential(TBasicConv2d(cin, r3, kernel_size=1),
                                      TBasicConv2d(r3, c3, kernel_size=3, padding=1))
        self.branch3 = tnn.Sequential(TBasicConv2d(cin, r5, kernel_size=1),
                                      TBasicConv2d(r5, c5, kernel_size=k5, padding=k5 // 2))
        self.branch4 = tnn.Sequential(tnn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                      TBasicConv2d(cin, pp, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                          self.branch4(x)], 1)


class TInceptionAux(tnn.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv = TBasicConv2d(cin, 128, kernel_size=1)
        self.fc1 = tnn.Linear(2048, 1024)
        self.fc2 = tnn.Linear(1024, num_classes)
        self.dropout = tnn.Dropout(p=0.7)

    def forward(self, x):
        x = torch.flatten(self.conv(TF.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(TF.relu(self.fc1(x))))


class TGoogLeNet(tnn.Module):
    def __init__(self, num_classes, k5=5):
        super().__init__()
        self.conv1 = TBasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = TBasicConv2d(64, 64, kernel_size=1)
        self.conv3 = TBasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = TInception(192, 64, 96, 128, 16, 32, 32, k5)
        self.inception3b = TInception(256, 128, 128, 192, 32, 96, 64, k5)
        self.maxpool3 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = TInception(480, 192, 96, 208, 16, 48, 64, k5)
        self.inception4b = TInception(512, 160, 112, 224, 24, 64, 64, k5)
        self.inception4c = TInception(512, 128, 128, 256, 24, 64, 64, k5)
        self.inception4d = TInception(512, 112, 144, 288, 32, 64, 64, k5)
        self.inception4e = TInception(528, 256, 160, 320, 32, 128, 128, k5)
        self.maxpool4 = tnn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = TInception(832, 256, 160, 320, 32, 128, 128, k5)
        self.inception5b = TInception(832, 384, 192, 384, 48, 128, 128, k5)
        self.aux1 = TInceptionAux(512, num_classes)
        self.aux2 = TInceptionAux(528, num_classes)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.dropout = tnn.Dropout(p=0.2)
        self.fc = tnn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return (x, aux2, aux1) if self.training else x


class TDSC(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.depthwise = tnn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = tnn.BatchNorm2d(cin)
        self.pointwise = tnn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.act = tnn.ReLU()

    def forward(self, x):
        return self.act(self.bn2(self.pointwise(self.act(self.bn1(self.depthwise(x))))))


def t_conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=tnn.ReLU):
    return tnn.Sequential(tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                     bias=False), tnn.BatchNorm2d(cout), act(inplace=True))


class TMobileNetV1(tnn.Module):
    def __init__(self, num_classes, width_mult):
        super().__init__()

        def w(c):
            return max(1, int(c * width_mult))
        layers, cin = [t_conv_bn_act(3, w(32), stride=2)], w(32)
        for c, s in models.MobileNetV1.cfg:
            layers.append(TDSC(cin, w(c), s))
            cin = w(c)
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(cin, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TInvertedResidual(tnn.Module):
    def __init__(self, inp, oup, stride, t):
        super().__init__()
        hidden = int(round(inp * t))
        self.use_res = stride == 1 and inp == oup
        layers = [t_conv_bn_act(inp, hidden, k=1, act=tnn.ReLU6)] if t != 1 else []
        layers += [t_conv_bn_act(hidden, hidden, stride=stride, groups=hidden, act=tnn.ReLU6),
                   tnn.Conv2d(hidden, oup, 1, 1, 0, bias=False), tnn.BatchNorm2d(oup)]
        self.conv = tnn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TMobileNetV2(tnn.Module):
    def __init__(self, num_classes, width_mult):
        super().__init__()
        from minidl.models.mobilenet import _make_divisible as md
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                   [6, 160, 3, 2], [6, 320, 1, 1]]
        cin, last = md(32 * width_mult, 8), md(1280 * max(1.0, width_mult), 8)
        feats = [t_conv_bn_act(3, cin, stride=2, act=tnn.ReLU6)]
        for t, c, n, s in setting:
            cout = md(c * width_mult, 8)
            for i in range(n):
                feats.append(TInvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(t_conv_bn_act(cin, last, k=1, act=tnn.ReLU6))
        self.features = tnn.Sequential(*feats)
        self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(last, num_classes))

    def forward(self, x):
        x = torch.flatten(TF.adaptive_avg_pool2d(self.features(x), (1, 1)), 1)
        return self.classifier(x)


class TBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=False):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, stride_in_1x1=False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, s1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, s3, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TResNet(tnn.Module):
    def __init__(self, block, layers, num_classes, widths=(64, 128, 256, 512),
                 small_input=False, stride_in_1x1=False):
        super().__init__()
        self.inplanes = widths[0]
        if small_input:
            self.conv1 = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        else:
            self.conv1 = tnn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(widths[0])
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.Identity() if small_input else tnn.MaxPool2d(3, 2, 1)
        for i, (w, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or self.inplanes != w * block.expansion:
                down = tnn.Sequential(tnn.Conv2d(self.inplanes, w * block.expansion, 1, stride,
                                                 bias=False), tnn.BatchNorm2d(w * block.expansion))
            blocks = [block(self.inplanes, w, stride, down, stride_in_1x1)]
            self.inplanes = w * block.expansion
            blocks += [block(self.inplanes, w, stride_in_1x1=stride_in_1x1)
                       for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(widths[3] * block.expansion, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ============================================================================= parity helper


def _set_mode(net, train, dropout_cls):
    net.train(train)
    for m in net.modules():
        if isinstance(m, dropout_cls):
            m.eval()  # masks come from different generators: keep dropout off


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _close(actual, expected, what, rtol=1e-9, floor=1e-12):
    """Equal to ``rtol``, relative to the array's largest entry (or to ``floor``: a
    gradient that is zero in exact arithmetic, like a conv bias before batch norm, is
    rounding noise of the size of the other gradients times 1e-16)."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol,
                               atol=rtol * max(scale, floor), err_msg=what)


def check_parity(md_net, t_net, x_shape, seed=0, device="cpu"):
    """Copy t_net's weights into md_net; compare outputs, gradients and running stats in
    float64, in training mode then in eval mode. md_net runs on ``device``, t_net on CUDA
    with it when this PyTorch has CUDA (``torch_device``); compared on the host."""
    t_dev = torch_device(device)
    t_net = t_net.double()
    md_net = md_net.double()
    t_state = t_net.state_dict()
    assert list(md_net.state_dict()) == list(t_state), "state_dict keys differ"
    md_net.load_state_dict({k: v.detach().numpy() for k, v in t_state.items()})
    md_net.to(device)
    t_net.to(t_dev)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    t_params = dict(t_net.named_parameters())
    for train in (True, False):
        _set_mode(t_net, train, tnn.Dropout)
        _set_mode(md_net, train, nn.Dropout)
        t_net.zero_grad()
        md_net.zero_grad()
        t_outs = _as_list(t_net(torch.tensor(x, device=t_dev)))
        md_outs = _as_list(md_net(minidl.tensor(x, device=device)))
        assert len(md_outs) == len(t_outs)
        t_loss, md_loss = 0, 0
        for i, (m, t) in enumerate(zip(md_outs, t_outs)):
            assert m.device == device, f"output {i} is on {m.device}"
            _close(to_host(m), to_host(t), f"output {i} (train={train})")
            v = rng.standard_normal(t.shape)
            t_loss = t_loss + (t * torch.tensor(v, device=t_dev)).sum()
            md_loss = md_loss + (m * minidl.tensor(v, device=device)).sum()
        t_loss.backward()
        md_loss.backward()
        largest = max(float(p.grad.abs().max()) for p in t_params.values()
                      if p.grad is not None)
        for name, p in md_net.named_parameters():
            tg = t_params[name].grad
            if tg is None:  # not used in this mode (GoogLeNet's auxiliary heads in eval)
                assert p.grad is None or not to_host(p.grad).any(), name
                continue
            assert p.grad is not None, f"{name}: no gradient (train={train})"
            _close(to_host(p.grad), to_host(tg), f"grad of {name} (train={train})",
                   floor=1e-4 * largest)
        md_state = md_net.state_dict()
        for k, v in t_net.state_dict().items():  # running statistics after the forward
            _close(to_host(md_state[k]), to_host(v), f"state {k} (train={train})",
                   floor=1e-6)


@pytest.fixture(autouse=True)
def _torch_seed():
    torch.manual_seed(0)  # the PyTorch twins' initial weights


def _build(fn, *args, **kwargs):
    """A minidl model whose weights will be overwritten: skip drawing them."""
    with models.uninitialized():
        return fn(*args, **kwargs)


# ============================================================================= parity tests


def test_lenet_parity(device):
    check_parity(_build(models.lenet5), TLeNet(), (4, 1, 32, 32), device=device)


def test_alexnet_parity(device):
    # the lecture's AlexNet at its 224x224 input, widths / 8 to keep it fast
    md = _build(models.alexnet, num_classes=10, width_mult=1 / 8)
    t = TAlexNet(10, c=(12, 32, 48, 48, 32), hidden=512)
    check_parity(md, t, (2, 3, 224, 224), device=device)


def test_vgg11_bn_parity(device):
    md = _build(models.vgg11_bn, num_classes=10, width_mult=1 / 16, hidden_features=32,
                pool_size=2)
    cfg = [v if v == "M" else v // 16 for v in models.vgg.cfgs["A"]]
    check_parity(md, TVGG(cfg, True, 10, 32, 2), (2, 3, 32, 32), device=device)


def test_googlenet_parity_with_aux_heads(device):
    md = _build(models.googlenet, num_classes=10)
    check_parity(md, TGoogLeNet(10), (2, 3, 32, 32), device=device)


def test_mobilenet_v1_parity(device):
    md = _build(models.mobilenet_v1, num_classes=10, width_mult=0.25)
    check_parity(md, TMobileNetV1(10, 0.25), (2, 3, 32, 32), device=device)


def test_mobilenet_v2_parity(device):
    md = _build(models.mobilenet_v2, num_classes=10, width_mult=0.25)
    check_parity(md, TMobileNetV2(10, 0.25), (2, 3, 32, 32), device=device)


def test_resnet18_parity(device):
    check_parity(_build(models.resnet18, num_classes=10),
                 TResNet(TBasicBlock, [2, 2, 2, 2], 10), (2, 3, 32, 32), device=device)


def test_resnet18_small_input_parity(device):
    widths = (8, 16, 32, 64)
    md = _build(models.resnet18, num_classes=10, small_input=True, widths=widths)
    t = TResNet(TBasicBlock, [2, 2, 2, 2], 10, widths=widths, small_input=True)
    check_parity(md, t, (2, 3, 16, 16), device=device)


@pytest.mark.parametrize("stride_in_1x1", [False, True], ids=["torchvision", "paper"])
def test_bottleneck_resnet50_parity(stride_in_1x1, device):
    widths = (8, 16, 32, 64)
    md = _build(models.resnet50, num_classes=10, widths=widths, stride_in_1x1=stride_in_1x1)
    t = TResNet(TBottleneck, [3, 4, 6, 3], 10, widths=widths, stride_in_1x1=stride_in_1x1)
    # 64x64: layer4 runs at 2x2, so its batch norms see more than two values per channel
    # (with two, the normalised outputs are ill-conditioned and float64 noise shows)
    check_parity(md, t, (2, 3, 64, 64), device=device)


# ============================================================================= model specifics


def test_state_dict_keys_follow_torchvision():
    """A few keys torchvision's own models have (written from its source)."""
    with models.uninitialized():
        r50 = models.resnet50()
        g = models.googlenet()
        v = models.vgg16_bn()
        m2 = models.mobilenet_v2()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
            "layer4.2.bn3.num_batches_tracked", "fc.bias"} <= set(r50.state_dict())
    assert {"conv1.conv.weight", "conv1.bn.running_var", "inception3a.branch1.conv.weight",
            "inception4e.branch4.1.bn.bias", "aux1.conv.conv.weight", "aux2.fc2.bias",
            "fc.weight"} <= set(g.state_dict())
    assert {"features.0.weight", "features.1.running_mean", "classifier.6.bias"} <= set(
        v.state_dict())
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
            "features.2.conv.3.running_var", "features.18.1.bias", "classifier.1.weight"} <= set(
        m2.state_dict())
    # torchvision's exact GoogLeNet tensors with its 3x3 "5x5" branch
    with models.uninitialized():
        tv = models.googlenet(branch3_kernel_size=3)
    assert tv.inception3a.branch3[1].conv.weight.shape == (32, 16, 3, 3)
    assert g.inception3a.branch3[1].conv.weight.shape == (32, 16, 5, 5)


def test_googlenet_outputs_and_loss():
    net = models.googlenet(num_classes=5, dropout=0.0, dropout_aux=0.0)
    x = minidl.randn(2, 3, 32, 32)
    y = minidl.tensor(np.array([1, 3]))
    out = net(x)
    assert isinstance(out, models.GoogLeNetOutputs)
    assert out.main is out.logits and out.aux1 is out.aux_logits1 and out.aux2 is out[1]
    assert [o.shape for o in out] == [(2, 5)] * 3
    parts = models.googlenet_loss(out, y, return_parts=True)
    F = nn.functional
    expected = (F.cross_entropy(out.logits, y).item()
                + 0.3 * F.cross_entropy(out.aux_logits1, y).item()
                + 0.3 * F.cross_entropy(out.aux_logits2, y).item())
    assert parts.total.item() == pytest.approx(expected, rel=1e-6)
    assert models.googlenet_loss(out, y).item() == pytest.approx(expected, rel=1e-6)
    parts.total.backward()
    assert net.aux1.fc2.weight.grad is not None and net.conv1.conv.weight.grad is not None
    net.eval()
    with minidl.no_grad():
        logits = net(x)
    assert isinstance(logits, minidl.Tensor) and logits.shape == (2, 5)
    assert models.googlenet_loss(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item())
    plain = models.googlenet(num_classes=5, aux_logits=False)
    assert plain.aux1 is None and isinstance(plain(x), minidl.Tensor)
    # transform_input: ImageNet-normalised input back to the (x - 0.5) / 0.5 scaling
    tr = _build(models.googlenet, num_classes=5, transform_input=True)
    xs = x.numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (xs * std[None, :, None, None] + mean[None, :, None, None] - 0.5) / 0.5
    np.testing.assert_allclose(tr._transform_input(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_lecture_inception_padding_error_names_both_shapes():
    """The lecture's block pads its 5x5 branch by 1: the branches no longer line up and
    cat says so, with both shapes; minidl's Inception pads by 2 and works."""
    class LectureInception(nn.Module):  # the lecture's code, `torch` -> minidl
        def __init__(self, in_channels, out_br1, red_br2, out_br2, red_br3, out_br3, out_br4):
            super().__init__()
            self.branch1 = nn.Conv2d(in_channels, out_br1, kernel_size=1)
            self.branch2 = nn.Sequential(
                nn.Conv2d(in_channels, red_br2, kernel_size=1),
                nn.Conv2d(red_br2, out_br2, kernel_size=3, padding=1))
            self.branch3 = nn.Sequential(
                nn.Conv2d(in_channels, red_br3, kernel_size=1),
                nn.Conv2d(red_br3, out_br3, kernel_size=5, padding=1))
            self.branch4 = nn.Sequential(
                nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                nn.Conv2d(in_channels, out_br4, kernel_size=1))

        def forward(self, x):
            return minidl.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                               self.branch4(x)], 1)

    args = (32, 8, 8, 16, 4, 8, 8)
    x = minidl.randn(1, 32, 7, 7)
    with pytest.raises(RuntimeError, match=r"\(1, 8, 7, 7\).*\(1, 8, 5, 5\)"):
        LectureInception(*args)(x)
    assert models.Inception(*args)(x).shape == (1, 40, 7, 7)
    with pytest.raises(ValueError, match="odd"):
        models.Inception(*args, branch3_kernel_size=4)


def test_depthwise_separable_conv():
    dsc = models.DepthwiseSeparableConv2d(6, 10, 3, stride=2, padding=1)
    assert dsc.depthwise.groups == 6 and dsc.depthwise.weight.shape == (6, 1, 3, 3)
    assert dsc.pointwise.weight.shape == (10, 6, 1, 1)
    assert dsc.bn1 is None and dsc.act is None and dsc.depthwise.bias is not None
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 9))
    out = dsc.double()(minidl.tensor(x))
    assert out.shape == (2, 10, 5, 5)
    # it equals the two convolutions written with PyTorch
    dw = TF.conv2d(torch.tensor(x), torch.tensor(dsc.depthwise.weight.numpy()),
                   torch.tensor(dsc.depthwise.bias.numpy()), stride=2, padding=1, groups=6)
    pw = TF.conv2d(dw, torch.tensor(dsc.pointwise.weight.numpy()),
                   torch.tensor(dsc.pointwise.bias.numpy()))
    np.testing.assert_allclose(out.numpy(), pw.numpy(), rtol=1e-10, atol=1e-12)
    with_bn = models.DepthwiseSeparableConv2d(6, 10, 3, padding=1, norm_layer=nn.BatchNorm2d,
                                              activation_layer=nn.ReLU)
    assert with_bn.depthwise.bias is None and isinstance(with_bn.bn2, nn.BatchNorm2d)
    assert list(with_bn.state_dict())[:3] == ["depthwise.weight", "bn1.weight", "bn1.bias"]


def test_resnet_options():
    r = _build(models.resnet50, stride_in_1x1=True)
    assert r.layer2[0].conv1.stride == (2, 2) and r.layer2[0].conv2.stride == (1, 1)
    r = _build(models.resnet50)
    assert r.layer2[0].conv1.stride == (1, 1) and r.layer2[0].conv2.stride == (2, 2)
    small = models.resnet18(num_classes=10, small_input=True, widths=(4, 8, 16, 32))
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert small(minidl.randn(2, 3, 32, 32)).shape == (2, 10)
    z = models.resnet18(zero_init_residual=True, widths=(4, 8, 16, 32))
    assert all(float(np.abs(b.bn2.weight.numpy()).max()) == 0.0
               for b in z.modules() if isinstance(b, models.BasicBlock))
    z = models.resnet50(zero_init_residual=True, widths=(4, 8, 16, 32))
    assert all(float(np.abs(b.bn3.weight.numpy()).max()) == 0.0
               for b in z.modules() if isinstance(b, models.Bottleneck))
    mnist = models.resnet18(num_classes=10, small_input=True, in_channels=1,
                            widths=(4, 8, 16, 32))
    assert mnist(minidl.randn(2, 1, 32, 32)).shape == (2, 10)


def test_lenet_activation_option():
    relu = models.lenet5(activation="relu")
    assert relu(minidl.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="activation"):
        models.lenet5(activation="swish")


def test_uninitialized_leaves_zeros_and_restores_init():
    with models.uninitialized():
        lin = nn.Linear(5, 3)
    assert not lin.weight.numpy().any()
    assert nn.Linear(5, 3).weight.numpy().any()


# ============================================================================= training


SMALL = {
    "lenet5": (lambda: models.lenet5(), (8, 1, 32, 32), 10),
    "alexnet": (lambda: models.alexnet(num_classes=10, dropout=0.0, width_mult=1 / 8),
                (4, 3, 224, 224), 10),
    "vgg11_bn": (lambda: models.vgg11_bn(num_classes=10, width_mult=1 / 16,
                                         hidden_features=32, dropout=0.0), (4, 3, 32, 32), 10),
    "googlenet": (lambda: models.googlenet(num_classes=10, dropout=0.0, dropout_aux=0.0),
                  (4, 3, 32, 32), 10),
    "mobilenet_v1": (lambda: models.mobilenet_v1(num_classes=10, width_mult=0.25,
                                                 dropout=0.0), (4, 3, 32, 32), 10),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10, width_mult=0.25,
                                                 dropout=0.0), (4, 3, 32, 32), 10),
    "resnet18": (lambda: models.resnet18(num_classes=10, small_input=True,
                                         widths=(8, 16, 32, 64)), (4, 3, 32, 32), 10),
    "resnet50": (lambda: models.resnet50(num_classes=10, widths=(8, 16, 32, 64)),
                 (4, 3, 32, 32), 10),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_sgd_steps_lower_the_loss(name):
    build, shape, classes = SMALL[name]
    minidl.manual_seed(0)   # the same initial weights whatever ran before (5 steps of a
    net = build()           # batch of 4 are noisy: an unlucky start can end higher)
    net.train()
    rng = np.random.default_rng(0)
    x = minidl.tensor(rng.standard_normal(shape).astype(np.float32))
    y = minidl.tensor(rng.integers(0, classes, shape[0]))
    opt = minidl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.numpy().copy() for k, v in net.named_parameters() if v.ndim > 1}
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = models.googlenet_loss(net(x), y)  # plain cross-entropy for plain logits
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            assert all(p.grad is not None for p in net.parameters())
            # every weight moved (a conv bias before batch norm has a zero gradient)
            changed = [k for k, v in net.named_parameters() if k in before and not
                       np.array_equal(v.numpy(), before[k])]
            assert len(changed) == len(before), "some weight did not move"
    assert all(np.isfinite(losses))
    # Batch norm over 4 images (1x1 maps in ResNet-50's last stage) makes the path noisy:
    # float32 rounding alone (im2col against Winograd) moves the fifth loss by +-50%. What
    # must hold is that the steps lower the loss below where it started.
    assert min(losses[1:]) < losses[0], losses


def test_resnet152_backward_without_recursion():
    """152 layers, ~1,000 graph nodes deep: the backward pass must be iterative."""
    net = models.resnet152(num_classes=10, small_input=True, widths=(4, 8, 16, 32))
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 155  # 151 + 4 shortcuts
    x = minidl.randn(1, 3, 16, 16)
    loss = net(x).sum()
    # the longest path from the loss to the input, counted without recursion
    depth, node = 0, loss.grad_fn
    while node is not None:
        depth += 1
        nxt = [e[0] for e in node._edges if e is not None and not isinstance(e[0],
                                                                             minidl.Tensor)]
        node = nxt[0] if nxt else None
    frame, stack = sys._getframe(), 0
    while frame is not None:
        stack, frame = stack + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack + 200)  # far below the graph depth
    try:
        assert depth > 400
        loss.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert net.conv1.weight.grad is not None
    assert np.isfinite(net.conv1.weight.grad.numpy()).all()
