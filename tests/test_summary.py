"""minidl.summary: the lecture's numbers (exactly), shape propagation against real forward
passes, and the behaviour of the tool itself.

Big models are built inside ``models.uninitialized()`` (no random draws) and summarised by
shape propagation only, so this file runs no large forward pass.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

import minidl
from minidl import models, nn
from minidl.summary import ModelSummary, register_layer_rule, summary


def build(fn, *args, **kwargs):
    with models.uninitialized():
        return fn(*args, **kwargs)


def quiet(model, input_size, **kwargs):
    return summary(model, input_size, verbose=False, **kwargs)


# ============================================================================= the lecture


def test_lenet_table():
    s = quiet(models.lenet5(), (1, 32, 32))
    rows = [(r.type, r.output_shape[1:], r.params) for r in s.layers]
    assert rows == [
        ("Conv2d", (6, 28, 28), 156),
        ("MaxPool2d", (6, 14, 14), 0),
        ("Conv2d", (16, 10, 10), 2_416),
        ("MaxPool2d", (16, 5, 5), 0),
        ("Linear", (120,), 48_120),
        ("Linear", (84,), 10_164),
        ("Linear", (10,), 850),
    ]
    assert s.total_params == 61_706 == s.trainable_params
    assert s.non_trainable_params == 0
    # MACs by hand: conv KH*KW*C per output, linear IN per output
    assert s["conv1"].macs == 6 * 28 * 28 * 25 and s["conv2"].macs == 16 * 10 * 10 * 150
    assert s.total_macs == 117_600 + 240_000 + 48_000 + 10_080 + 840


ALEXNET_TABLE = """
Conv2d-1 96,55,55 34,944
BatchNorm2d-2 96,55,55 192
ReLU-3 96,55,55 0
MaxPool2d-4 96,27,27 0
Conv2d-5 256,27,27 614,656
BatchNorm2d-6 256,27,27 512
ReLU-7 256,27,27 0
MaxPool2d-8 256,13,13 0
Conv2d-9 384,13,13 885,120
BatchNorm2d-10 384,13,13 768
ReLU-11 384,13,13 0
Conv2d-12 384,13,13 1,327,488
BatchNorm2d-13 384,13,13 768
ReLU-14 384,13,13 0
Conv2d-15 256,13,13 884,992
BatchNorm2d-16 256,13,13 512
ReLU-17 256,13,13 0
MaxPool2d-18 256,6,6 0
Dropout-19 9216 0
Linear-20 4096 37,752,832
ReLU-21 4096 0
Dropout-22 4096 0
Linear-23 4096 16,781,312
ReLU-24 4096 0
Linear-25 10 40,970
"""


def test_alexnet_table_every_row():
    """The lecture's torchsummary table of its AlexNet at (3, 224, 224), row by row."""
    s = quiet(build(models.alexnet, num_classes=10), (3, 224, 224))
    expected = []
    for line in ALEXNET_TABLE.strip().splitlines():
        name, shape, params = line.split()
        expected.append((name.split("-")[0], tuple(int(v) for v in shape.split(",")),
                         int(params.replace(",", ""))))
    got = [(r.type, r.output_shape[1:], r.params) for r in s.layers]
    assert got == expected
    assert s.total_params == 58_325_066
    text = str(s)
    assert "Input size: 0.57 MB" in text and "Params size: 222.49 MB" in text  # lecture's


def test_inception_versus_one_conv():
    s_inc = quiet(models.Inception(512, 128, 128, 256, 24, 64, 64), (512, 14, 14))
    s_conv = quiet(nn.Conv2d(512, 512, kernel_size=3, padding=1), (512, 14, 14))
    assert s_inc.total_params == 510_104
    assert s_conv.total_params == 2_359_808
    assert s_inc.rows[0].output_shape == s_conv.rows[0].output_shape == (1, 512, 14, 14)
    assert s_inc.total_macs < s_conv.total_macs / 4  # and four times cheaper, too


def test_lecture_inception_mispadded_fails_with_both_shapes():
    class LectureInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch1 = nn.Conv2d(512, 128, kernel_size=1)
            self.branch3 = nn.Sequential(nn.Conv2d(512, 24, kernel_size=1),
                                         nn.Conv2d(24, 64, kernel_size=5, padding=1))

        def forward(self, x):
            return minidl.cat([self.branch1(x), self.branch3(x)], 1)

    with pytest.raises(RuntimeError, match=r"\(1, 128, 14, 14\).*\(1, 64, 12, 12\)"):
        quiet(LectureInception(), (512, 14, 14))


@pytest.mark.parametrize("C, n_k, k, conv_m, dsc_m", [
    (512, 512, 3, 2.4, 0.3), (1028, 1028, 3, 9.5, 1.1), (1028, 1028, 5, 26.4, 1.1)])
def test_depthwise_separable_weight_table(C, n_k, k, conv_m, dsc_m):
    """The lecture's table: C x kH x kW x n_k weights against C x (kH x kW + n_k)."""
    with models.uninitialized():
        conv = nn.Conv2d(C, n_k, k, bias=False)
        dsc = models.DepthwiseSeparableConv2d(C, n_k, k, bias=False)
    s_conv, s_dsc = quiet(conv, (C, 8, 8)), quiet(dsc, (C, 8, 8))
    assert s_conv.total_params == C * k * k * n_k
    assert s_dsc.total_params == C * (k * k + n_k)
    assert round(s_conv.total_params / 1e6, 1) == conv_m
    assert round(s_dsc.total_params / 1e6, 1) == dsc_m
    assert s_conv.rows[0].output_shape == s_dsc.rows[0].output_shape
    assert [r.type for r in s_dsc.layers] == ["Conv2d", "Conv2d"]
    assert s_dsc["depthwise"].macs == C * k * k * (8 - k + 1) ** 2  # one kernel per channel


@pytest.mark.parametrize("name, params", [
    ("vgg11", 132_863_336), ("vgg13", 133_047_848), ("vgg16", 138_357_544),
    ("vgg19", 143_667_240), ("vgg11_bn", 132_868_840), ("vgg13_bn", 133_053_736),
    ("vgg16_bn", 138_365_992), ("vgg19_bn", 143_678_248)])
def test_vgg_params(name, params):
    s = quiet(build(getattr(models, name)), (3, 224, 224))
    assert s.total_params == params
    assert s.rows[0].output_shape == (1, 1000)


# lecture MACs (its "FLOPs" row) for the paper layout; torchvision's published GFLOPS
# (also multiply-adds) for its layout
RESNETS = [
    ("resnet18", 11_689_512, 1.8, 1_814_073_344),
    ("resnet34", 21_797_672, 3.6, 3_663_761_408),
    ("resnet50", 25_557_032, 3.8, 4_089_184_256),
    ("resnet101", 44_549_160, 7.6, 7_801_405_440),
    ("resnet152", 60_192_808, 11.3, 11_513_626_624),
]


@pytest.mark.parametrize("name, params, lecture_g, torchvision_macs", RESNETS)
def test_resnet_params_and_macs(name, params, lecture_g, torchvision_macs):
    paper = quiet(build(getattr(models, name), stride_in_1x1=True), (3, 224, 224))
    tv = quiet(build(getattr(models, name)), (3, 224, 224))
    assert paper.total_params == tv.total_params == params
    assert paper.total_macs == pytest.approx(lecture_g * 1e9, rel=0.05)
    assert tv.total_macs == torchvision_macs
    if name in ("resnet18", "resnet34"):  # BasicBlock: both layouts are one network
        assert paper.total_macs == tv.total_macs
    else:  # the paper's stride on the 1x1 conv is cheaper
        assert paper.total_macs < tv.total_macs
    assert paper.rows[0].output_shape == (1, 1000)


def test_resnet50_layouts_report_both():
    paper = quiet(build(models.resnet50, stride_in_1x1=True), (3, 224, 224))
    tv = quiet(build(models.resnet50), (3, 224, 224))
    assert paper.total_macs == 3_857_973_248   # 3.86 G: the lecture's 3.8
    assert round(tv.total_macs / 1e9, 1) == 4.1


def test_resnet152_summary_runs_no_kernel():
    """Shape propagation only (a fraction of a second; speed is measured, not asserted):
    the 155 convolutions are answered by their rules, no conv kernel runs; only the
    residual adds run for real, on the zero-stride placeholders (the add family's
    reference: NumPy's a + b)."""
    net = build(models.resnet152)
    with minidl.kernels.decisions() as log:
        s = quiet(net, (3, 224, 224))
    assert log and set(log) == {("add", "reference")}
    assert len([r for r in s.layers if r.type == "Conv2d"]) == 155


def test_other_models_numbers():
    v1 = quiet(build(models.mobilenet_v1), (3, 224, 224))
    assert v1.total_params == 4_231_976                       # the MobileNet paper's 4.2 M
    assert v1.total_macs == pytest.approx(569e6, rel=0.005)   # and its 569 M mult-adds
    v2 = quiet(build(models.mobilenet_v2), (3, 224, 224))
    assert v2.total_params == 3_504_872                       # torchvision's
    assert round(v2.total_macs / 1e9, 2) == 0.30              # torchvision's 0.30 GFLOPS
    tv_g = build(models.googlenet, branch3_kernel_size=3)     # torchvision's tensors
    assert quiet(tv_g, (3, 224, 224)).total_params == 13_004_888
    assert round(quiet(tv_g, (3, 224, 224)).total_macs / 1e9, 2) == 1.50
    no_aux = build(models.googlenet, aux_logits=False, branch3_kernel_size=3)
    assert quiet(no_aux, (3, 224, 224)).total_params == 6_624_904
    g = build(models.googlenet)                               # the paper's 5x5 branch
    ev, tr = quiet(g, (3, 224, 224)), quiet(g, (3, 224, 224), mode="train")
    assert ev.total_params == tr.total_params                 # every parameter counted
    assert tr.total_macs > ev.total_macs                      # the aux heads ran
    assert tr.rows[0].output_shape == [(1, 1000)] * 3
    assert ev["inception5b"].output_shape == (1, 1024, 7, 7)


def test_lecture_exercise_28x28():
    """The lecture's exercise: 28x28x1 float32 input, biases counted."""
    fc = quiet(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256)), (1, 28, 28))
    assert fc.total_params == 200_960
    assert fc.total_flops == 401_664                  # 2 * 784 * 256 + 256
    assert fc["1"].output_shape == (1, 256) and fc["1"].output_bytes == 1_024
    conv = quiet(nn.Conv2d(1, 256, kernel_size=3, stride=1, padding=0), (1, 28, 28))
    assert conv.total_params == 2_560
    assert conv.rows[0].output_shape == (1, 256, 26, 26)
    assert conv.rows[0].output_bytes == 692_224
    assert conv.total_flops == 3_288_064              # 2 * 9 * 173,056 + 173,056
    assert conv.total_macs == 1_557_504
    assert conv.rows[0].im2col_bytes == 9 * 26 * 26 * 4
    pool = quiet(nn.MaxPool2d(kernel_size=2, stride=2), (1, 28, 28))
    assert pool.total_params == 0 and pool.total_macs == 0
    assert pool.rows[0].output_shape == (1, 1, 14, 14)
    assert pool.rows[0].output_bytes == 784
    assert pool.total_flops == 14 * 14 * 3            # 3 comparisons per 2x2 window


# ============================================================================= propagation


def real_leaf_shapes(model, x):
    shapes, handles = [], []
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if not any(True for _ in m.children()):
            handles.append(m.register_forward_hook(
                lambda mod, args, out: shapes.append((names[id(mod)], out.shape))))
    with minidl.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


SMALL = [
    ("lenet5", lambda: models.lenet5(), (1, 32, 32), "eval"),
    ("alexnet", lambda: models.alexnet(width_mult=1 / 8), (3, 227, 227), "eval"),
    ("vgg11_bn", lambda: models.vgg11_bn(num_classes=10, width_mult=1 / 16,
                                         hidden_features=16), (3, 40, 40), "eval"),
    ("googlenet-train", lambda: models.googlenet(num_classes=10), (3, 40, 36), "train"),
    ("googlenet-eval", lambda: models.googlenet(num_classes=10), (3, 33, 33), "eval"),
    ("mobilenet_v1", lambda: models.mobilenet_v1(width_mult=0.25), (3, 36, 36), "eval"),
    ("mobilenet_v2", lambda: models.mobilenet_v2(width_mult=0.25), (3, 35, 35), "eval"),
    ("resnet18-small", lambda: models.resnet18(small_input=True, widths=(4, 8, 16, 32)),
     (3, 20, 20), "eval"),
    ("resnet50-paper", lambda: models.resnet50(stride_in_1x1=True, widths=(4, 8, 16, 32)),
     (3, 45, 45), "eval"),
]


@pytest.mark.parametrize("name, make, size, mode", SMALL, ids=[s[0] for s in SMALL])
def test_shapes_match_a_real_forward(name, make, size, mode):
    """Odd sizes on purpose: ceil-mode pools, stride-2 convs on odd maps, adaptive pools."""
    net = make()
    s = quiet(net, size, batch_size=2, mode=mode)
    net.train(mode == "train")
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    real = real_leaf_shapes(net, minidl.randn(2, *size))
    assert [(r.name, r.output_shape) for r in s.layers] == real


def test_summary_leaves_the_model_untouched():
    net = models.resnet18(num_classes=10, small_input=True, widths=(4, 8, 16, 32))
    net.layer1.train(False)  # mixed modes must come back as they were
    before = {n: m.training for n, m in net.named_modules()}
    x = minidl.randn(2, 3, 16, 16)
    with minidl.no_grad():
        net.eval()
        ref = net(x).numpy().copy()
    net.train()
    net.layer1.train(False)
    before = {n: m.training for n, m in net.named_modules()}
    state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    quiet(net, (3, 16, 16), mode="train")
    quiet(net, (3, 16, 16))
    assert {n: m.training for n, m in net.named_modules()} == before
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    for k, v in net.state_dict().items():  # no running statistic moved
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    net.eval()
    with minidl.no_grad():
        np.testing.assert_array_equal(net(x).numpy(), ref)


def test_errors_name_the_layer():
    with pytest.raises(RuntimeError, match=r"Conv2d\(3, 64.*expected input \(N, 3, H, W\), "
                                           r"got \(1, 1, 32, 32\)"):
        quiet(build(models.resnet18), (1, 32, 32))
    with pytest.raises(RuntimeError, match=r"Linear\(in_features=400.*got \(1, 256\)"):
        quiet(models.lenet5(), (1, 28, 28))       # LeNet wants 32x32
    with pytest.raises(TypeError, match="Module"):
        summary("not a model", (3, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        quiet(models.lenet5(), (1, 32, 32), mode="training")


def test_unknown_leaf_and_register_rule():
    class Scale(nn.Module):  # a leaf minidl's summary does not know
        def forward(self, x):
            return x * 2.0

    net = nn.Sequential(nn.Conv2d(1, 4, 3), Scale(), nn.Flatten())
    s = quiet(net, (1, 6, 6))
    assert s["1"].output_shape == (1, 4, 4, 4) and s["1"].flops is None
    assert s.uncounted == ["Scale"] and "?" in str(s) and "not counted: Scale" in str(s)
    assert s.total_flops == s["0"].flops   # the unknown layer is left out
    assert s["2"].output_shape == (1, 64)
    try:
        register_layer_rule(Scale, lambda m, x: (x.shape, 0, int(np.prod(x.shape)), 0))
        s = quiet(net, (1, 6, 6))
        assert s["1"].flops == 64 and not s.uncounted
    finally:
        from minidl.summary import _RULES
        _RULES.pop(Scale, None)


def test_subclass_with_own_forward_runs_for_real():
    class DoubleConv(nn.Conv2d):  # same parameters, different computation
        def forward(self, x):
            y = super().forward(x)
            return minidl.cat([y, y], 1)

    s = quiet(nn.Sequential(DoubleConv(1, 2, 3)), (1, 5, 5))
    assert s["0"].output_shape == (1, 4, 3, 3) and s["0"].flops is None


def test_totals_batch_size_and_inputs():
    net = models.lenet5()
    one, eight = quiet(net, (1, 32, 32)), quiet(net, (1, 32, 32), batch_size=8)
    assert eight.total_macs == 8 * one.total_macs and eight.total_flops == 8 * one.total_flops
    assert eight.activation_bytes == 8 * one.activation_bytes
    assert eight.total_params == one.total_params
    assert eight.rows[0].output_shape == (8, 10)
    whole = quiet(net, (8, 1, 32, 32), batch_size=None)
    assert whole.total_macs == eight.total_macs
    assert one.activation_bytes == sum(r.output_bytes for r in one.layers)
    assert one.input_bytes == 32 * 32 * 4
    assert one.params_bytes == 61_706 * 4
    # float64: bytes double, counts do not
    d = quiet(models.lenet5().double(), (1, 32, 32))
    assert d.activation_bytes == 2 * one.activation_bytes and d.total_macs == one.total_macs

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)
    s = quiet(Two(), [(3,), (5,)], batch_size=2)
    assert s.rows[0].output_shape == (2, 4) and s.total_macs == 2 * (12 + 20)


def test_conventions_and_frozen_params():
    conv = nn.Conv2d(3, 8, 3)
    nobias = nn.Conv2d(3, 8, 3, bias=False)
    a, b = quiet(conv, (3, 10, 10)), quiet(nobias, (3, 10, 10))
    assert a.total_flops == 2 * a.total_macs + 8 * 8 * 8   # + one add per output (bias)
    assert b.total_flops == 2 * b.total_macs
    net = models.lenet5()
    net.conv1.requires_grad_(False)
    s = quiet(net, (1, 32, 32))
    assert s.non_trainable_params == 156 and s.trainable_params == 61_550
    bn = quiet(nn.BatchNorm2d(3), (3, 4, 4))
    assert bn.total_params == 6 and bn.total_flops == 2 * 48   # buffers are not parameters
    text = str(a)
    assert "1 MAC = 2 FLOPs" in text and "bias" in text and "MACs" in text
    drop = nn.Sequential(nn.Dropout(0.5))
    assert quiet(drop, (10,)).total_flops == 0
    assert quiet(drop, (10,), mode="train").total_flops == 10


def test_model_table_example(capsys):
    """examples/model_table.py runs and prints the comparison rows."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "model_table.py"
    spec = importlib.util.spec_from_file_location("model_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--models", "lenet5", "alexnet", "resnet50", "resnet50-tv",
                     "--layers", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 61,706" in out            # the per-layer table
    assert "58,325,066" in out and "3.86 G" in out and "4.09 G" in out


def test_printing_depth_and_containers():
    net = build(models.resnet18)
    out = io.StringIO()
    s = summary(net, (3, 224, 224), depth=1, file=out)
    text = out.getvalue()
    assert isinstance(s, ModelSummary) and text == str(s) + "\n"
    assert "layer1 (Sequential)" in text and "layer1.0.conv1" not in text
    assert "Total params: 11,689,512" in text
    layer1 = s["layer1"]
    assert layer1.params == sum(p.numel() for p in net.layer1.parameters())
    assert layer1.macs == sum(r.macs for r in s.layers if r.name.startswith("layer1."))
    assert f"{layer1.macs:,}" in text  # the cut-off row shows its layers' totals
    full = str(quiet(net, (3, 224, 224)))
    assert "layer1.0.conv1 (Conv2d)" in full and "Largest im2col buffer" in full


def test_called_twice_counts_params_once():
    s = quiet(models.lenet5(), (1, 32, 32))
    pools = [r for r in s.layers if r.name == "max_pool"]
    assert len(pools) == 2
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    s = quiet(net, (4,))
    assert [r.params for r in s.layers] == [20, 0, 0] and s.total_params == 20
    assert s.total_macs == 32


def test_conv_transpose_macs_and_shape_match_a_real_forward():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1),
                        nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0),
                                           output_padding=(1, 2), groups=2))
    s = minidl.summary(net, (2, 7, 5), batch_size=3)
    row = s.rows[-1]
    y = net(minidl.randn(3, 2, 7, 5))
    assert tuple(row.output_shape) == y.shape
    assert row.macs == 3 * 4 * 7 * 5 * (6 // 2) * 3 * 2
    assert row.flops == 2 * row.macs + y.numel()
    assert not s.uncounted
