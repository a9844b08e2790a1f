"""minidl.nn: the Module API (registration, names, state_dict, repr, modes, devices/dtypes,
containers, hooks, errors) and every layer's forward and backward against PyTorch, with
the weights copied from an identical torch layer."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

import minidl
import minidl.optim
from helpers import assert_close, distinct, rand_away_from, to_host, torch_device
from minidl import nn
from minidl.errors import ShapeError

tnn = torch.nn


# ----------------------------------------------------------------------------- helpers


def copy_weights(md_module, t_module):
    """Load ``t_module``'s state (parameters and buffers) into ``md_module`` (each value
    lands on the device of the minidl tensor it replaces)."""
    md_module.load_state_dict({k: to_host(v) for k, v in t_module.state_dict().items()})


def check_layer(md_layer, t_layer, arrays, dtype=np.float64, train=True, seed=0,
                compare_state=True, device="cpu"):
    """Forward + backward (random upstream gradient) of both layers on ``arrays``; compares
    outputs, input gradients, parameter gradients and (after the call) the buffers.

    device: where the minidl layer and its inputs go; the torch layer goes to CUDA with
    it when this PyTorch has CUDA (``torch_device``). Compared on the host."""
    t_dev = torch_device(device)
    md_layer.to(device, dtype)
    t_layer.to(t_dev, torch.float64 if dtype == np.float64 else torch.float32)
    copy_weights(md_layer, t_layer)
    md_layer.train(train)
    t_layer.train(train)
    md_in, t_in = [], []
    for a in arrays:
        if a.dtype.kind == "f":
            a = a.astype(dtype)
            md_in.append(minidl.tensor(a, requires_grad=True, device=device))
            t_in.append(torch.tensor(a, requires_grad=True, device=t_dev))
        else:
            md_in.append(minidl.tensor(a, device=device))
            t_in.append(torch.tensor(a, device=t_dev))
    md_out, t_out = md_layer(*md_in), t_layer(*t_in)
    assert md_out.device == device, f"output on {md_out.device}, the layer on {device}"
    assert_close(md_out, t_out, dtype, "output")
    v = np.random.default_rng(seed).standard_normal(t_out.shape).astype(dtype)
    (md_out * minidl.tensor(v, device=device)).sum().backward()
    (t_out * torch.tensor(v, device=t_dev)).sum().backward()
    for i, (m, t) in enumerate(zip(md_in, t_in)):
        if t.requires_grad:
            assert_close(m.grad, t.grad, dtype, f"grad of input {i}")
    t_params = dict(t_layer.named_parameters())
    for name, p in md_layer.named_parameters():
        assert_close(p.grad, t_params[name].grad, dtype, f"grad of {name}")
    if compare_state:
        t_state = t_layer.state_dict()
        for name, b in md_layer.state_dict().items():
            assert_close(b, t_state[name], dtype, f"state {name}")
    return md_out, t_out


def lenet_pair():
    """The lecture's LeNet, built with minidl and with torch."""
    def build(nn_):
        class LeNet(nn_.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn_.Conv2d(1, 6, kernel_size=5, stride=1, padding=0)
                self.conv2 = nn_.Conv2d(6, 16, kernel_size=5, stride=1, padding=0)
                self.fc1 = nn_.Linear(400, 120)
                self.fc2 = nn_.Linear(120, 84)
                self.fc3 = nn_.Linear(84, 10)
                self.max_pool = nn_.MaxPool2d(kernel_size=2, stride=2)
        return LeNet()
    return build(nn), build(tnn)


def mixed_pair():
    """A model touching every container and most layers, built with minidl and torch."""
    def build(nn_):
        class Net(nn_.Module):
            def __init__(self):
                super().__init__()
                self.features = nn_.Sequential(
                    nn_.Conv2d(3, 8, 3, padding=1, bias=False),
                    nn_.BatchNorm2d(8),
                    nn_.ReLU(inplace=True),
                    nn_.MaxPool2d(2),
                    nn_.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                               groups=2),
                    nn_.LeakyReLU(0.2),
                    nn_.AvgPool2d(2, stride=1),
                    nn_.AdaptiveAvgPool2d((2, 2)))
                self.heads = nn_.ModuleList([nn_.Linear(32, 5) for _ in range(3)]
                                            + [nn_.Linear(32, 6, bias=False)])
                self.extra = nn_.ModuleDict({"act": nn_.GELU(approximate="tanh"),
                                             "sm": nn_.Softmax(dim=1),
                                             "lsm": nn_.LogSoftmax(dim=-1)})
                self.bn1d = nn_.BatchNorm1d(32, momentum=None, affine=False)
                self.flat = nn_.Flatten()
                self.drop = nn_.Dropout(0.25)
                self.misc = nn_.Sequential(OrderedDict(
                    tanh=nn_.Tanh(), sig=nn_.Sigmoid(), ident=nn_.Identity(),
                    amax=nn_.AdaptiveMaxPool2d(1), same=nn_.Conv2d(2, 2, 4, padding="same")))
                self.loss = nn_.CrossEntropyLoss(label_smoothing=0.1)
                self.nll = nn_.NLLLoss()
                self.mse = nn_.MSELoss(reduction="sum")
        return Net()
    return build(nn), build(tnn)


# ----------------------------------------------------------------------------- Parameter


def test_parameter_basics():
    t = minidl.ones(2, 3)
    p = nn.Parameter(t)
    assert isinstance(p, minidl.Tensor) and p.requires_grad and p.is_leaf
    assert p.data is t.data  # shares the array, as torch.nn.Parameter shares storage
    assert not nn.Parameter(t, requires_grad=False).requires_grad
    assert repr(nn.Parameter(minidl.tensor([1.0, 2.0]))) == repr(
        tnn.Parameter(torch.tensor([1.0, 2.0])))
    q = copy.deepcopy(p)
    assert type(q) is nn.Parameter and q.requires_grad and q.data is not p.data


# ----------------------------------------------------------------------------- registration


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = nn.Parameter(minidl.ones(3))
        self.register_buffer("count", minidl.zeros(1))
        self.register_buffer("scratch", minidl.zeros(2), persistent=False)
        self.plain = 5

    def forward(self, x):
        return self.lin(x) * self.scale


def test_registration_and_names():
    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["scale", "lin.weight", "lin.bias"]
    assert [n for n, _ in b.named_buffers()] == ["count", "scratch"]
    assert list(b.state_dict()) == ["scale", "count", "lin.weight", "lin.bias"]
    assert [n for n, _ in b.named_children()] == ["lin"]
    assert [n for n, _ in b.named_modules()] == ["", "lin"]
    assert list(b.parameters(recurse=False)) == [b.scale]
    assert b.plain == 5 and "plain" not in b._parameters
    assert b.lin is b._modules["lin"] and b.count is b._buffers["count"]
    # reassigning: a parameter slot takes a Parameter or None, never a plain Tensor
    with pytest.raises(TypeError, match="cannot assign"):
        b.scale = minidl.ones(3)
    b.scale = None
    assert "scale" not in dict(b.named_parameters())
    b.count = minidl.ones(1)  # buffers may be replaced by tensors
    assert b.count.item() == 1.0
    with pytest.raises(TypeError):
        b.count = 3
    del b.lin
    assert "lin" not in b._modules and not hasattr(b, "lin")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        b.nothing  # noqa: B018
    with pytest.raises(KeyError, match="attribute 'plain' already exists"):
        b.register_buffer("plain", minidl.zeros(1))
    with pytest.raises(KeyError, match='contain'):
        b.register_parameter("a.b", None)
    with pytest.raises(AttributeError, match="before Module.__init__"):
        class Bad(nn.Module):
            def __init__(self):
                self.w = nn.Parameter(minidl.ones(1))
        Bad()


def test_shared_parameters_counted_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert len(list(seq.modules())) == 3  # seq, lin (once), relu
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_forward_missing_and_hooks():
    class NoForward(nn.Module):
        pass
    with pytest.raises(NotImplementedError, match="forward"):
        NoForward()(minidl.ones(1))
    lin = nn.Linear(2, 2)
    seen = []
    h1 = lin.register_forward_pre_hook(lambda m, args: seen.append(("pre", args[0].shape)))
    h2 = lin.register_forward_hook(lambda m, args, out: out * 0)
    out = lin(minidl.ones(3, 2))
    assert seen == [("pre", (3, 2))] and np.all(out.numpy() == 0)
    h1.remove()
    h2.remove()
    assert np.any(lin(minidl.ones(3, 2)).numpy() != 0) and len(seen) == 1


def test_intercept_calls_answers_in_place_of_forward():
    """nn.intercept_calls: the hook sees every module call (after the pre-hooks), may
    answer it, may return NotImplemented to run the real forward, and is gone afterwards."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = minidl.ones(4, 2)
    want = net(x).numpy().copy()
    seen = []

    def spy(module, args, kwargs):
        seen.append((type(module).__name__, args[0].shape))
        return NotImplemented

    with nn.intercept_calls(spy):
        out = net(x)
    np.testing.assert_array_equal(out.numpy(), want)  # every forward ran for real
    assert seen == [("Sequential", (4, 2)), ("Linear", (4, 2)), ("ReLU", (4, 3)),
                    ("Linear", (4, 3))]

    def answer_relu(module, args, kwargs):
        return minidl.zeros(*args[0].shape) if isinstance(module, nn.ReLU) else NotImplemented

    scaled = []
    net[1].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    net[1].register_forward_hook(lambda m, args, out: scaled.append(out.shape))
    with nn.intercept_calls(answer_relu):
        out = net(x)
    # the ReLU's answer is zeros, so the output is the last bias; the hooks still ran
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(net[2].bias.numpy(), (4, 1)))
    assert scaled == [(4, 3)]
    # an inner block replaces the outer one, which comes back after it
    with nn.intercept_calls(answer_relu):
        with nn.intercept_calls(spy):
            seen.clear()
            net(x)
        assert len(seen) == 4
        np.testing.assert_allclose(net(x).numpy(), np.broadcast_to(net[2].bias.numpy(), (4, 1)))
    # gone after the block, even when the block raised
    with pytest.raises(ZeroDivisionError):
        with nn.intercept_calls(lambda m, a, k: 1 / 0):
            net(x)
    assert net(x).shape == (4, 1) and np.any(net(x).numpy() != net[2].bias.numpy())
    with pytest.raises(TypeError, match="intercept_calls: fn must be callable"):
        with nn.intercept_calls(3):
            pass


def test_module_messages_name_the_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain = 1
    n = Net()
    with pytest.raises(KeyError, match=r"Net.register_buffer: attribute 'plain' already"):
        n.register_buffer("plain", None)
    with pytest.raises(KeyError, match=r"Net.add_module: module name can.*t contain"):
        n.add_module("a.b", nn.ReLU())
    with pytest.raises(TypeError, match=r"Net.register_parameter: parameter name should be"):
        n.register_parameter(3, None)
    with pytest.raises(TypeError, match=r"^Net.to: only floating point"):
        n.to(minidl.int64)
    with pytest.raises(ValueError, match=r"^Net.train: training mode"):
        n.train("yes")


# ----------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize("pair", [lenet_pair, mixed_pair])
def test_state_dict_keys_match_torch(pair):
    md, t = pair()
    assert list(md.state_dict().keys()) == list(t.state_dict().keys())
    assert [n for n, _ in md.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [n for n, _ in md.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert [n for n, _ in md.named_modules()] == [n for n, _ in t.named_modules()]
    for (k, a), (_, b) in zip(md.state_dict().items(), t.state_dict().items()):
        assert a.shape == tuple(b.shape), k
        assert a.dtype == b.numpy().dtype, k  # num_batches_tracked is int64 in both


def test_state_dict_prefix_and_keep_vars():
    b = Block()
    assert list(b.state_dict(prefix="net.")) == ["net.scale", "net.count", "net.lin.weight",
                                                "net.lin.bias"]
    kept = b.state_dict(keep_vars=True)
    assert kept["lin.weight"] is b.lin.weight and kept["count"] is b.count
    dest = OrderedDict(other=1)
    assert b.state_dict(destination=dest) is dest and list(dest)[:2] == ["other", "scale"]


def test_state_dict_shares_memory_and_load_roundtrip():
    a, b = mixed_pair()[0], mixed_pair()[0]
    sd = a.state_dict()
    assert sd["features.0.weight"].data is a.features[0].weight.data
    res = b.load_state_dict(sd)
    assert repr(res) == "<All keys matched successfully>"
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=k)
    # values are copied into the existing arrays, not aliased
    assert b.features[0].weight.data is not a.features[0].weight.data


def test_load_state_dict_errors():
    md, _ = lenet_pair()
    good = {k: v.numpy().copy() for k, v in md.state_dict().items()}
    before = md.fc1.weight.numpy().copy()

    bad = dict(good)
    del bad["fc1.bias"]
    bad["fc9.weight"] = np.zeros(3)
    with pytest.raises(RuntimeError) as e:
        md.load_state_dict(bad)
    msg = str(e.value)
    assert "Error(s) in loading state_dict for LeNet" in msg
    assert 'Missing key(s) in state_dict: "fc1.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "fc9.weight"' in msg

    bad = dict(good)
    bad["fc1.weight"] = np.zeros((120, 256))
    bad["conv1.weight"] = np.ones((6, 1, 5, 5))  # valid, but the load must not half-happen
    with pytest.raises(RuntimeError, match=r"size mismatch for fc1.weight: copying a param "
                       r"with shape \(120, 256\) from checkpoint, the shape in current model "
                       r"is \(120, 400\)"):
        md.load_state_dict(bad, strict=False)  # shape errors raise even when not strict
    np.testing.assert_array_equal(md.fc1.weight.numpy(), before)
    assert not np.all(md.conv1.weight.numpy() == 1)

    partial = {k: v for k, v in good.items() if k.startswith("fc")}
    partial["extra"] = np.zeros(1)
    res = md.load_state_dict(partial, strict=False)
    assert res.missing_keys == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert res.unexpected_keys == ["extra"]
    with pytest.raises(TypeError):
        md.load_state_dict({**good, "fc1.bias": "nope"})


def test_load_state_dict_casts_dtype():
    md = nn.BatchNorm2d(3)
    t = tnn.BatchNorm2d(3).double()
    t.train()
    t(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    copy_weights(md, t)
    assert md.running_mean.dtype == np.float32 and md.num_batches_tracked.dtype == np.int64
    assert md.num_batches_tracked.item() == 1
    np.testing.assert_allclose(md.running_var.numpy(), t.running_var.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- repr


@pytest.mark.parametrize("pair", [lenet_pair, mixed_pair])
def test_repr_matches_torch(pair):
    md, t = pair()
    assert repr(md) == repr(t)


def test_lecture_blocks_repr_and_param_counts():
    def inception(nn_):
        class Inception(nn_.Module):
            def __init__(self, in_channels, out_br1, red_br2, out_br2, red_br3, out_br3,
                         out_br4):
                super().__init__()
                self.branch1 = nn_.Conv2d(in_channels, out_br1, kernel_size=1)
                self.branch2 = nn_.Sequential(
                    nn_.Conv2d(in_channels, red_br2, kernel_size=1),
                    nn_.Conv2d(red_br2, out_br2, kernel_size=3, padding=1))
                self.branch3 = nn_.Sequential(
                    nn_.Conv2d(in_channels, red_br3, kernel_size=1),
                    nn_.Conv2d(red_br3, out_br3, kernel_size=5, padding=1))
                self.branch4 = nn_.Sequential(
                    nn_.MaxPool2d(kernel_size=3, stride=1, padding=1),
                    nn_.Conv2d(in_channels, out_br4, kernel_size=1))
        return Inception(512, 128, 128, 256, 24, 64, 64)
    md, t = inception(nn), inception(tnn)
    assert repr(md) == repr(t)
    assert sum(p.numel() for p in md.parameters()) == 510_104
    assert nn.Conv2d(512, 512, kernel_size=3).weight.numel() + 512 == 2_359_808
    # the lecture's AlexNet head sizes
    assert sum(p.numel() for p in nn.Conv2d(3, 96, kernel_size=11, stride=4,
                                            padding=2).parameters()) == 34_944
    assert sum(p.numel() for p in nn.BatchNorm2d(96).parameters()) == 192


def test_extra_repr_of_layers_match_torch():
    cases = [
        ("Linear", (3, 4), {"bias": False}),
        ("Conv2d", (3, 16, 3), {}),
        ("Conv2d", (4, 8, (3, 5)), dict(stride=2, padding=(1, 2), dilation=2, groups=4,
                                         bias=False)),
        ("Conv2d", (2, 2, 3), {"padding": "valid"}),
        ("Conv2d", (2, 2, 4), {"padding": "same", "dilation": 2}),
        ("MaxPool2d", (3,), dict(stride=2, padding=1, ceil_mode=True)),
        ("MaxPool2d", ((2, 3),), {}),
        ("AvgPool2d", (2,), {}),
        ("AvgPool2d", (3, 2, 1), {"count_include_pad": False}),
        ("AdaptiveAvgPool2d", ((5, 7),), {}),
        ("AdaptiveAvgPool2d", ((None, 7),), {}),
        ("AdaptiveMaxPool2d", (1,), {}),
        ("BatchNorm1d", (10,), dict(eps=1e-3, momentum=None, affine=False)),
        ("BatchNorm2d", (10,), {"track_running_stats": False}),
        ("BatchNorm2d", (10,), {"bias": False}),
        ("Dropout", (), {}),
        ("Dropout", (0.1,), {"inplace": True}),
        ("ReLU", (), {}),
        ("LeakyReLU", (), {}),
        ("LeakyReLU", (0.2, True), {}),
        ("Tanh", (), {}),
        ("Sigmoid", (), {}),
        ("GELU", (), {}),
        ("Softmax", (), {}),
        ("LogSoftmax", (1,), {}),
        ("Flatten", (0, 2), {}),
        ("Identity", (3,), {"foo": 1}),
        ("CrossEntropyLoss", (), {}),
        ("NLLLoss", (), {}),
        ("MSELoss", (), {}),
        ("Sequential", (), {}),
        ("ModuleList", (), {}),
    ]
    for name, args, kwargs in cases:
        md, t = getattr(nn, name)(*args, **kwargs), getattr(tnn, name)(*args, **kwargs)
        assert repr(md) == repr(t), name
    assert repr(nn.Softmax(dim=1, temperature=2.0)) == "Softmax(dim=1, temperature=2.0)"


def test_modulelist_repr_compresses_repeats():
    md = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)])
    t = tnn.ModuleList([tnn.Linear(2, 2), tnn.Linear(2, 2), tnn.ReLU(), tnn.Linear(2, 2)])
    assert repr(md) == repr(t)


# ----------------------------------------------------------------------------- containers


def test_sequential_api():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c]
    assert list(sub.state_dict()) == ["2.weight", "2.bias"]  # slices keep the names
    with pytest.raises(IndexError):
        seq[3]  # noqa: B018
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and "3" in seq._modules
    seq[3] = nn.Tanh()
    assert isinstance(seq[3], nn.Tanh)
    del seq[1]
    assert list(seq._modules) == ["0", "1", "2"] and seq[1] is c
    x = minidl.randn(5, 2)
    np.testing.assert_allclose(seq(x).numpy(), minidl.nn.functional.tanh(c(a(x))).numpy())
    named = nn.Sequential(OrderedDict([("conv", nn.Conv2d(1, 2, 3)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"] and named.conv is named[0]
    assert len(nn.Sequential(a) + nn.Sequential(b, c)) == 3
    seq.insert(0, nn.Identity())
    assert isinstance(seq[0], nn.Identity) and len(seq) == 4
    seq.extend([nn.ReLU()])
    assert len(seq) == 5


def test_modulelist_and_moduledict():
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(ml) == 3 and len(list(ml.parameters())) == 6
    ml.append(nn.ReLU())
    ml.extend([nn.Tanh()])
    ml += [nn.Sigmoid()]
    assert len(ml) == 6 and isinstance(ml[-1], nn.Sigmoid)
    assert isinstance(ml[1:3], nn.ModuleList) and len(ml[1:3]) == 2
    ml.insert(1, nn.Identity())
    assert isinstance(ml[1], nn.Identity) and len(ml) == 7
    del ml[0]
    assert list(ml._modules) == [str(i) for i in range(6)]
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.ReLU()
    md.update([("c", nn.Tanh())])
    assert list(md.keys()) == ["a", "b", "c"] and "b" in md and len(md) == 3
    assert list(md.state_dict()) == ["a.weight", "a.bias"]
    assert isinstance(md.pop("c"), nn.Tanh) and len(md) == 2


# ----------------------------------------------------------------------------- modes, grads


def test_train_eval_propagate():
    md, _ = mixed_pair()
    assert all(m.training for m in md.modules())
    assert md.eval() is md
    assert not any(m.training for m in md.modules())
    md.train()
    assert all(m.training for m in md.modules())
    md.features.train(False)
    assert not md.features[1].training and md.heads[0].training
    with pytest.raises(ValueError):
        md.train("yes")


def test_zero_grad_and_requires_grad_():
    lin = nn.Linear(3, 2)
    lin(minidl.randn(4, 3)).sum().backward()
    g = lin.weight.grad
    gcopy = g.numpy().copy()
    lin.zero_grad(set_to_none=False)
    assert np.all(lin.weight.grad.numpy() == 0) and lin.weight.grad.shape == (2, 3)
    np.testing.assert_array_equal(g.numpy(), gcopy)  # the old gradient was not zeroed in place
    lin.zero_grad()
    assert lin.weight.grad is None and lin.bias.grad is None
    lin.requires_grad_(False)
    assert not any(p.requires_grad for p in lin.parameters())
    out = lin(minidl.randn(2, 3))
    assert not out.requires_grad


def test_apply_children_first():
    order = []
    seq = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    seq.apply(lambda m: order.append(type(m).__name__))
    assert order == ["Linear", "ReLU", "Sequential", "Sequential"]

    def init_fn(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)
    seq.apply(init_fn)
    assert np.all(seq[0].weight.numpy() == 0.5)


def test_to_dtype_keeps_parameter_identity():
    md, _ = mixed_pair()
    params = list(md.parameters())
    bufs = list(md.buffers())
    opt = minidl.optim.SGD(md.parameters(), lr=0.1)
    lin = md.heads[0]
    lin(minidl.randn(2, 32)).sum().backward()
    assert md.double() is md
    assert all(a is b for a, b in zip(md.parameters(), params))
    assert all(a is b for a, b in zip(md.buffers(), bufs))
    assert all(p.dtype == np.float64 for p in md.parameters())
    assert lin.weight.grad.dtype == np.float64
    assert md.features[1].running_mean.dtype == np.float64
    assert md.features[1].num_batches_tracked.dtype == np.int64  # integers are not cast
    before = lin.weight.numpy().copy()
    opt.step()  # the optimiser still holds the (same) parameters
    assert not np.array_equal(before, lin.weight.numpy())
    md.to(minidl.float32)
    assert lin.weight.dtype == np.float32 and any(lin.weight is p for p in params)
    md.to("cpu")
    md.to(device="cpu", dtype=minidl.float64)
    assert lin.weight.dtype == np.float64
    md.float()
    with pytest.raises(TypeError, match="floating point"):
        md.to(minidl.int64)
    y = lin(minidl.randn(3, 32))
    assert y.dtype == np.float32


def test_module_to_device(device, rng):
    """Moving a model keeps the Parameter objects; it trains there and comes back."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8, 3))
    ref = copy.deepcopy(net)
    params = list(net.parameters())
    assert net.to(device) is net
    assert all(a is b for a, b in zip(net.parameters(), params))
    assert all(p.device == device for p in net.parameters())
    assert all(b.device == device for b in net.buffers())
    assert net[1].num_batches_tracked.dtype == np.int64
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    out = net(minidl.tensor(x).to(device))
    out.sum().backward()
    assert out.device == device and net[0].weight.grad.device == device
    ref_out = ref(minidl.tensor(x))
    np.testing.assert_allclose(out.cpu().numpy(), ref_out.numpy(), rtol=1e-5, atol=1e-6)
    back = copy.deepcopy(ref)
    back.load_state_dict(net.state_dict())  # device -> CPU copy inside load_state_dict
    net.cpu()
    assert all(p.device == "cpu" for p in net.parameters())
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_deepcopy_module():
    md, _ = lenet_pair()
    cp = copy.deepcopy(md)
    assert cp.fc1.weight is not md.fc1.weight and isinstance(cp.fc1.weight, nn.Parameter)
    np.testing.assert_array_equal(cp.fc1.weight.numpy(), md.fc1.weight.numpy())
    assert repr(cp) == repr(md)


def test_get_submodule():
    md, _ = mixed_pair()
    assert md.get_submodule("features.1") is md.features[1]
    assert md.get_submodule("") is md
    with pytest.raises(AttributeError):
        md.get_submodule("features.99")


# ----------------------------------------------------------------------------- input errors


def test_layer_input_errors():
    conv = nn.Conv2d(3, 16, 3)
    with pytest.raises(RuntimeError) as e:
        conv(minidl.randn(8, 1, 28, 28))
    assert str(e.value) == ("Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1)): expected input "
                            "(N, 3, H, W), got (8, 1, 28, 28)")
    with pytest.raises(RuntimeError, match=r"expected input \(N, 3, H, W\), got \(8, 3, 28\)"):
        conv(minidl.randn(8, 3, 28))
    with pytest.raises(RuntimeError, match="too small"):
        conv(minidl.randn(1, 3, 2, 5))
    with pytest.raises(TypeError, match=r"int64.*\.float\(\)"):
        conv(minidl.zeros(1, 3, 5, 5, dtype=minidl.int64))
    with pytest.raises(TypeError, match=r"float64 does not match .* float32.*x\.float\(\)"):
        conv(minidl.zeros(1, 3, 5, 5, dtype=minidl.float64))
    with pytest.raises(TypeError, match="minidl Tensor"):
        conv(np.zeros((1, 3, 5, 5), np.float32))

    lin = nn.Linear(400, 120)
    with pytest.raises(RuntimeError) as e:
        lin(minidl.randn(100, 256))
    assert str(e.value) == ("Linear(in_features=400, out_features=120, bias=True): expected "
                            "input (..., 400), got (100, 256)")
    with pytest.raises(TypeError, match=r"Linear\(in_features=400.*uint8.*\.float\(\)"):
        lin(minidl.zeros(2, 400, dtype=minidl.uint8))

    bn = nn.BatchNorm2d(16)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(16, .*\): expected 4D input "
                       r"\(N, 16, H, W\), got \(8, 16, 5\)"):
        bn(minidl.randn(8, 16, 5))
    with pytest.raises(ValueError, match=r"with 16 channels, got \(8, 3, 5, 5\)"):
        bn(minidl.randn(8, 3, 5, 5))
    bn1 = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"2D or 3D input \(N, 4\) or \(N, 4, L\)"):
        bn1(minidl.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn1(minidl.randn(1, 4))
    # the policy's class for a wrong shape (a ValueError, as PyTorch's batch norm raises)
    with pytest.raises(ShapeError, match=r"^BatchNorm1d\(4, "):
        bn1(minidl.randn(2, 4, 3, 3))
    assert bn1.input_ranks == (2, 3) and bn.expected_input_text() == "(N, 16, H, W)"
    bn1.eval()
    assert bn1(minidl.randn(1, 4)).shape == (1, 4)  # fine with running statistics

    with pytest.raises(RuntimeError, match=r"MaxPool2d\(.*\): expected input \(N, C, H, W\)"):
        nn.MaxPool2d(2)(minidl.randn(4, 4))
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(NotImplementedError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")


# ----------------------------------------------------------------------------- layers vs torch


@pytest.mark.parametrize("shape,bias", [((4, 5), True), ((2, 3, 5), True), ((5,), False)])
def test_linear_matches_torch(shape, bias, rng, device):
    check_layer(nn.Linear(5, 3, bias=bias), tnn.Linear(5, 3, bias=bias),
                [rng.standard_normal(shape)], device=device)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("args,kwargs,shape", [
    ((3, 4, 3), dict(stride=2, padding=1), (2, 3, 7, 6)),
    ((2, 4, (3, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (2, 2, 8, 7)),
    ((4, 6, 3), dict(groups=2, bias=False), (1, 4, 5, 5)),
    ((2, 3, 4), dict(padding="same"), (2, 2, 6, 5)),
    ((2, 3, (3, 2)), dict(padding="same", dilation=2), (1, 2, 7, 6)),
    ((2, 3, 3), dict(padding="valid"), (2, 2, 5, 4)),
    ((2, 3, 3), dict(padding=1), (2, 5, 4)),  # unbatched (C, H, W)
])
def test_conv2d_matches_torch(args, kwargs, shape, rng, device):
    check_layer(nn.Conv2d(*args, **kwargs), tnn.Conv2d(*args, **kwargs),
                [rng.standard_normal(shape)], device=device)


@pytest.mark.parametrize("name,args,kwargs,shape", [
    ("MaxPool2d", (2,), {}, (2, 3, 6, 6)),
    ("MaxPool2d", ((3, 2),), dict(stride=(2, 1), padding=1, ceil_mode=True), (1, 2, 7, 6)),
    ("MaxPool2d", (2,), dict(dilation=2), (2, 6, 7)),
    ("AvgPool2d", (2,), {}, (2, 3, 6, 6)),
    ("AvgPool2d", (3, 2, 1), dict(count_include_pad=False, ceil_mode=True), (1, 2, 7, 6)),
    ("AvgPool2d", (3, 2, 1), dict(divisor_override=4), (1, 2, 6, 6)),
    ("AdaptiveAvgPool2d", ((2, 3),), {}, (2, 3, 7, 8)),
    ("AdaptiveAvgPool2d", (1,), {}, (2, 3, 5, 5)),
    ("AdaptiveMaxPool2d", ((3, 2),), {}, (2, 2, 7, 5)),
])
def test_pooling_matches_torch(name, args, kwargs, shape, rng, device):
    check_layer(getattr(nn, name)(*args, **kwargs), getattr(tnn, name)(*args, **kwargs),
                [distinct(rng, shape)], device=device)


def test_maxpool_return_indices(rng, device):
    x = distinct(rng, (2, 3, 6, 6))
    md_v, md_i = nn.MaxPool2d(2, return_indices=True)(minidl.tensor(x, device=device))
    t_v, t_i = tnn.MaxPool2d(2, return_indices=True)(torch.tensor(x, device=torch_device(device)))
    np.testing.assert_array_equal(to_host(md_i), to_host(t_i))
    np.testing.assert_array_equal(to_host(md_v), to_host(t_v))


def _torch_batchnorm(cls, C, kwargs):
    """PyTorch's ``cls(C, **kwargs)``; ``bias=False`` (a keyword older PyTorch releases lack,
    2.11 among them) is built as the affine layer with its bias removed, which is what the
    keyword does: the tests run on any PyTorch version."""
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", True)
    t = getattr(tnn, cls)(C, **kwargs)
    if not bias:
        t.register_parameter("bias", None)
    return t


@pytest.mark.parametrize("cls,kwargs,shape", [
    ("BatchNorm2d", {}, (4, 3, 5, 6)),
    ("BatchNorm2d", dict(momentum=0.3, eps=1e-3), (3, 3, 2, 2)),
    ("BatchNorm2d", dict(affine=False), (4, 3, 3, 3)),
    ("BatchNorm2d", dict(track_running_stats=False), (4, 3, 3, 3)),
    ("BatchNorm2d", dict(bias=False), (4, 3, 3, 3)),
    ("BatchNorm1d", {}, (6, 4)),
    ("BatchNorm1d", {}, (5, 4, 3)),
])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_matches_torch(cls, kwargs, shape, train, rng, device):
    C = shape[1]
    md, t = getattr(nn, cls)(C, **kwargs), _torch_batchnorm(cls, C, kwargs)
    if kwargs.get("affine", True):  # non-trivial affine parameters and running statistics
        with torch.no_grad():
            t.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, C)))
            if t.bias is not None:
                t.bias.copy_(torch.tensor(rng.standard_normal(C)))
    if t.running_mean is not None:
        t.running_mean.copy_(torch.tensor(rng.standard_normal(C)))
        t.running_var.copy_(torch.tensor(rng.uniform(0.5, 2.0, C)))
    x = rng.standard_normal(shape) * 2 + 1
    check_layer(md, t, [x], train=train, device=device)   # both layers stay on the device
    # a second batch: running statistics keep following torch's
    x2 = rng.standard_normal(shape)
    md_out = md(minidl.tensor(x2, device=device))
    t_out = t(torch.tensor(x2, device=torch_device(device)))
    assert_close(md_out, t_out, np.float64, "second output")
    for k, v in t.state_dict().items():
        assert_close(md.state_dict()[k], v, np.float64, k)


def test_batchnorm_momentum_none_cumulative(rng, device):
    t_dev = torch_device(device)
    md = nn.BatchNorm2d(3, momentum=None).to(device, minidl.float64)
    t = tnn.BatchNorm2d(3, momentum=None).to(t_dev, torch.float64)
    for _ in range(4):
        x = rng.standard_normal((4, 3, 2, 2)) * 3 + 2
        md(minidl.tensor(x, device=device))
        t(torch.tensor(x, device=t_dev))
    assert md.num_batches_tracked.item() == 4
    for k, v in t.state_dict().items():
        assert_close(md.state_dict()[k], v, np.float64, k)


def test_batchnorm_float32(rng, device):
    x = rng.standard_normal((4, 3, 5, 5))
    check_layer(nn.BatchNorm2d(3), tnn.BatchNorm2d(3), [x], dtype=np.float32, device=device)


@pytest.mark.parametrize("name,args,kwargs", [
    ("ReLU", (), {}), ("ReLU", (), {"inplace": True}), ("LeakyReLU", (0.2,), {}),
    ("Tanh", (), {}), ("Sigmoid", (), {}), ("GELU", (), {}), ("GELU", ("tanh",), {}),
    ("Softmax", (1,), {}), ("LogSoftmax", (-1,), {}), ("Flatten", (), {}),
    ("Flatten", (0, 1), {}), ("Identity", (), {}), ("ReLU6", (), {}),
    ("ReLU6", (), {"inplace": True}),
])
def test_activation_and_shape_layers_match_torch(name, args, kwargs, rng, device):
    # away from the kinks (0 for the ReLUs, 6 for ReLU6), over a range that crosses 6
    x = rand_away_from(rng, (3, 4, 5), avoid=(0.0, 6.0), low=-8.0, high=8.0)
    t_kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}  # torch: no in-place on leaves
    check_layer(getattr(nn, name)(*args, **kwargs), getattr(tnn, name)(*args, **t_kwargs), [x],
                device=device)


def test_softmax_temperature(rng, device):
    x = rng.standard_normal((3, 5))
    md = nn.Softmax(dim=1, temperature=2.0)(minidl.tensor(x, device=device))
    np.testing.assert_allclose(to_host(md), torch.softmax(torch.tensor(x) / 2.0, 1).numpy(),
                               rtol=1e-12)
    md = nn.LogSoftmax(dim=1, temperature=0.5)(minidl.tensor(x, device=device))
    np.testing.assert_allclose(to_host(md), torch.log_softmax(torch.tensor(x) / 0.5, 1).numpy(),
                               rtol=1e-12)


def test_dropout_layer(device):
    drop = nn.Dropout(0.25)
    x = minidl.ones(200, 100, dtype=minidl.float64, requires_grad=True, device=device)
    y = drop(x)
    vals = to_host(y)
    assert set(np.unique(vals)) <= {0.0, 1 / 0.75}
    assert abs((vals == 0).mean() - 0.25) < 0.02
    y.sum().backward()
    np.testing.assert_array_equal(to_host(x.grad), vals)  # same mask, same scale
    drop.eval()
    assert drop(x) is x or np.array_equal(to_host(drop(x)), to_host(x))
    minidl.manual_seed(3)
    a = to_host(nn.Dropout(0.5)(minidl.ones(50, device=device)))
    minidl.manual_seed(3)
    b = to_host(nn.Dropout(0.5)(minidl.ones(50, device=device)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [{}, dict(reduction="sum"), dict(reduction="none"),
                                    dict(label_smoothing=0.2), dict(ignore_index=1),
                                    dict(weight="w")])
def test_cross_entropy_and_nll_layers(kwargs, rng, device):
    x = rng.standard_normal((6, 4))
    y = np.array([0, 1, 3, 2, 1, 0])
    w = rng.uniform(0.5, 2.0, 4)
    md_kw = {k: (minidl.tensor(w) if v == "w" else v) for k, v in kwargs.items()}
    t_kw = {k: (torch.tensor(w) if v == "w" else v) for k, v in kwargs.items()}
    # the class weights are buffers: check_layer moves them with the layers
    check_layer(nn.CrossEntropyLoss(**md_kw), tnn.CrossEntropyLoss(**t_kw), [x, y],
                device=device)
    if "label_smoothing" not in kwargs:
        lp = np.log(np.exp(x) / np.exp(x).sum(1, keepdims=True))
        check_layer(nn.NLLLoss(**md_kw), tnn.NLLLoss(**t_kw), [lp, y], device=device)
    if "weight" in kwargs:
        assert list(nn.CrossEntropyLoss(**md_kw).state_dict()) == ["weight"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_layer(reduction, rng, device):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    check_layer(nn.MSELoss(reduction=reduction), tnn.MSELoss(reduction=reduction), [a, b],
                device=device)
    with pytest.raises(ValueError):
        nn.MSELoss(reduction="avg")


def test_lenet_forward_backward_matches_torch(rng, device):
    md, t = lenet_pair()
    t_dev = torch_device(device)

    def fwd(net, F, x):
        out = F.tanh(net.conv1(x))
        out = net.max_pool(out)
        out = F.tanh(net.conv2(out))
        out = net.max_pool(out)
        out = out.reshape(out.shape[0], -1)
        out = F.tanh(net.fc1(out))
        out = F.tanh(net.fc2(out))
        return net.fc3(out)
    md.to(device, minidl.float64)
    t.to(t_dev, torch.float64)
    copy_weights(md, t)
    x = rng.standard_normal((3, 1, 32, 32))
    y = np.array([1, 7, 3])
    md_loss = nn.CrossEntropyLoss()(fwd(md, minidl.nn.functional, minidl.tensor(x, device=device)),
                                    minidl.tensor(y, device=device))
    t_loss = tnn.CrossEntropyLoss()(fwd(t, torch.nn.functional, torch.tensor(x, device=t_dev)),
                                    torch.tensor(y, device=t_dev))
    md_loss.backward()
    t_loss.backward()
    assert abs(md_loss.item() - t_loss.item()) < 1e-12
    t_params = dict(t.named_parameters())
    for name, p in md.named_parameters():
        assert_close(p.grad, t_params[name].grad, np.float64, name)


# ----------------------------------------------------------------------------- default init


@pytest.mark.parametrize("make", [lambda: nn.Linear(300, 200), lambda: nn.Conv2d(16, 32, 5),
                                  lambda: nn.Conv2d(8, 16, 3, groups=4)])
def test_default_init_bounds(make):
    layer = make()
    fan_in = layer.weight.numel() // layer.weight.shape[0]
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ...)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert abs(w.mean()) < 4 * bound / math.sqrt(3 * w.size)  # 4 standard errors
    assert np.abs(b).max() <= bound and len(np.unique(b)) == b.size


def test_default_init_is_seeded():
    minidl.manual_seed(7)
    a = nn.Conv2d(3, 4, 3).weight.numpy().copy()
    minidl.manual_seed(7)
    b = nn.Conv2d(3, 4, 3).weight.numpy().copy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.Conv2d(3, 4, 3).weight.numpy())


def test_batchnorm_default_init():
    bn = nn.BatchNorm2d(5)
    assert np.all(bn.weight.numpy() == 1) and np.all(bn.bias.numpy() == 0)
    assert np.all(bn.running_mean.numpy() == 0) and np.all(bn.running_var.numpy() == 1)
    assert bn.num_batches_tracked.item() == 0 and bn.num_batches_tracked.shape == ()
    bn.running_mean.data[...] = 3
    bn.reset_parameters()
    assert np.all(bn.running_mean.numpy() == 0)


def test_functional_namespace():
    F = nn.functional
    for name in ["linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                 "adaptive_max_pool2d", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "gelu",
                 "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss",
                 "batch_norm", "dropout", "pad"]:
        assert callable(getattr(F, name)), name
    x = minidl.tensor(np.arange(6.0).reshape(1, 1, 2, 3))
    assert F.pad(x, (1, 1, 0, 2)).shape == tuple(torch.nn.functional.pad(
        torch.zeros(1, 1, 2, 3), (1, 1, 0, 2)).shape)


def test_assigning_a_child_again_keeps_its_place_as_in_pytorch():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    setattr(seq, "1", nn.Tanh())
    assert [type(m).__name__ for m in seq] == ["Linear", "Tanh", "Linear"]
    lin = nn.Linear(2, 2)
    lin.weight = minidl.nn.Parameter(minidl.zeros(2, 2))
    assert list(dict(lin.named_parameters())) == ["weight", "bias"]
