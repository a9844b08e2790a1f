"""Receptive fields in ``minidl.summary``: the recurrence on small layers (non-square,
dilated, padded, strided), through residual additions and Inception branches, and, for the
lecture's models, against an empirical field and the published values.

The empirical field: with every weight positive (1 / fan_in), BatchNorm in eval mode
with unit statistics, no dropout and a positive input, every activation is positive, so
every input pixel that one output unit depends on gets a nonzero gradient from it
(ReLU passes everything, nothing cancels). Max pooling would route the gradient only to
each window's maximum, so the check runs on a copy of the model where every MaxPool2d is
an AvgPool2d of the same kernel, stride, padding and ceil mode (same field). The rows
and columns of the input with a nonzero gradient, per axis, are compared with the
computed field around the centre output unit, clipped to the input.
"""
import math

import numpy as np
import pytest

import minidl
import minidl.kernels as K
from minidl import models, nn


def rf_summary(model, input_size):
    return minidl.summary(model, input_size, verbose=False)


# ----------------------------------------------------------------------------- the recurrence


def test_one_conv_non_square_dilated_padded():
    # height: k=5, s=1, p=2, d=1; width: k=3, s=2, p=0, d=2 (dilated reach 4)
    conv = nn.Conv2d(1, 2, (5, 3), stride=(1, 2), padding=(2, 0), dilation=(1, 2))
    row = rf_summary(nn.Sequential(conv), (1, 9, 11))["0"]
    assert row.receptive_field == (5, 5)
    assert row.rf_jump == (1, 2)
    assert row.rf_start == (0, 2)       # height: centred on pixel 0; width: taps 0, 2, 4


def test_chain_of_conv_and_pool_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1),
                        nn.AvgPool2d(3, stride=2, padding=1))
    s = rf_summary(net, (1, 32, 32))
    # 3 (jump 1), +1 -> 4 (jump 2), +2*2 -> 8 (jump 2), +2*2 -> 12 (jump 4)
    assert [r.receptive_field[0] for r in s.layers] == [3, 4, 8, 12]
    assert [r.rf_jump[0] for r in s.layers] == [1, 2, 2, 4]
    # starts: conv 1; pool 1 + 0.5 = 1.5; conv (1 - 1) * 2 -> 1.5; pool (1 - 1) * 2 -> 1.5
    assert [r.rf_start[0] for r in s.layers] == [1, 1.5, 1.5, 1.5]
    assert s.receptive_field == (12, 12)


def test_same_padding_string_uses_the_top_left_pad():
    # 'same' with an even kernel pads 1 before, 2 after (k=4): start = 0 + (1.5 - 1) = 0.5
    row = rf_summary(nn.Sequential(nn.Conv2d(1, 1, 4, padding="same")), (1, 8, 8))["0"]
    assert row.receptive_field == (4, 4) and row.rf_start == (0.5, 0.5)


def test_residual_takes_the_longer_path_and_branches_the_widest():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3, padding=1)
            self.b = nn.Conv2d(2, 2, 5, padding=2)
            self.short = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return minidl.cat([self.a(x), self.b(x)], 1)[:, :2] + self.short(x)

    s = rf_summary(Block(), (2, 16, 16))
    assert s[""].receptive_field == (5, 5)      # the 5x5 branch, not the 1x1 shortcut
    assert s.receptive_field == (5, 5)


def test_global_pool_sees_everything_and_is_not_the_model_field():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1, 2))
    s = rf_summary(net, (1, 10, 10))
    assert s["1"].receptive_field == (12, 12)   # 3 + (10 - 1) * 1: the conv's whole field
    assert s["2"].receptive_field is None and s["3"].receptive_field is None
    assert s.receptive_field == (3, 3)


def test_table_column():
    text = str(rf_summary(nn.Sequential(nn.Conv2d(1, 1, (5, 3), stride=(1, 2)),
                                        nn.Flatten()), (1, 9, 9)))
    assert "RF / jump" in text
    assert "5x3 / 1x2" in text
    assert "Receptive field: 5x3" in text


# ----------------------------------------------------------------------------- the models


def positive_copy(model):
    """``model`` with every weight 1 / fan_in, biases 0, BatchNorm with unit statistics,
    eval mode, every MaxPool2d swapped for an AvgPool2d of the same geometry and every
    ReLU6 for a ReLU (activations grow past 6 through the residual sums; same field)."""
    for module in list(model.modules()):
        children = list(module.named_children())
        if not any(isinstance(c, (nn.MaxPool2d, nn.ReLU6)) for _, c in children):
            continue
        # every child is assigned again, in order: assigning an existing child name moves
        # it to the end of minidl's module order (PyTorch keeps its place)
        for child_name, child in children:
            setattr(module, child_name, _field_twin(child))
    with minidl.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight.numel() // m.weight.shape[0]
                m.weight.data[...] = 1.0 / fan_in
                if m.bias is not None:
                    m.bias.data[...] = 0.0
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.data[...] = 0.0
                m.running_var.data[...] = 1.0
                if m.weight is not None:
                    m.weight.data[...] = 1.0
                    m.bias.data[...] = 0.0
    return model.eval()


def _field_twin(layer):
    """A layer with the same receptive field through which every input gets a gradient."""
    if isinstance(layer, nn.MaxPool2d):
        assert layer.dilation in (1, (1, 1))
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                            ceil_mode=layer.ceil_mode)
    if isinstance(layer, nn.ReLU6):
        return nn.ReLU()
    return layer


def empirical_extent(model, module_name, input_size):
    """Per axis, the first and last input row / column with a nonzero gradient from the
    centre unit of ``module_name``'s (last) output, summed over channels."""
    target = dict(model.named_modules())[module_name]
    seen = []
    handle = target.register_forward_hook(lambda m, args, out: seen.append(out))
    x = minidl.tensor(np.ones((1,) + tuple(input_size), dtype=np.float32),
                      requires_grad=True)
    # The field is read from exact zeros of the input gradient: conv2d's reference (im2col
    # + GEMM) keeps them exact; Winograd F(4x4)'s transforms (constants 1/6, 1/24) leave
    # rounding residue where the exact result is zero (GoogLeNet: up to 3e-17, while true
    # values at the field's edge go down to 3e-24: no threshold separates them).
    with K.use_impl("reference", family="conv2d"):
        model(x)
        handle.remove()
        y = seen[-1]
        y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    hit = np.abs(x.grad.numpy()[0]).sum(axis=0) > 0
    rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
    assert rows.size == rows[-1] - rows[0] + 1 and cols.size == cols[-1] - cols[0] + 1
    return (rows[0], rows[-1]), (cols[0], cols[-1]), y.shape[2:]


def computed_extent(row, out_hw, input_hw):
    """The computed field of the centre output unit, clipped to the input."""
    extents = []
    for size, jump, start, out, length in zip(row.receptive_field, row.rf_jump, row.rf_start,
                                              out_hw, input_hw):
        centre = start + (out // 2) * jump
        lo, hi = centre - (size - 1) / 2, centre + (size - 1) / 2
        extents.append((max(0, math.ceil(lo)), min(length - 1, math.floor(hi))))
    return tuple(extents)


# name, builder, input size (at least the field), module whose output is checked, the
# field: published (AlexNet 195, VGG-16 212, MobileNet v1 315, ResNet-50 483 in the paper's
# layout) or what this code computes and the empirical check confirms (the others)
MODELS = [
    ("lenet5", lambda: models.lenet5(), (1, 32, 32), "max_pool", 16),
    ("alexnet", lambda: models.alexnet(width_mult=1 / 16), (3, 227, 227), "conv5", 195),
    ("vgg16", lambda: models.vgg16(num_classes=10, width_mult=1 / 16), (3, 224, 224),
     "features", 212),
    ("googlenet", lambda: models.googlenet(num_classes=10, aux_logits=False),
     (3, 736, 736), "inception5b", 699),
    ("mobilenet_v1", lambda: models.mobilenet_v1(num_classes=10, width_mult=0.25),
     (3, 320, 320), "features", 315),
    ("mobilenet_v2", lambda: models.mobilenet_v2(num_classes=10, width_mult=0.25),
     (3, 512, 512), "features", 491),
    ("resnet18", lambda: models.resnet18(num_classes=10, widths=(4, 8, 16, 32)),
     (3, 448, 448), "layer4", 435),
    ("resnet50-torchvision", lambda: models.resnet50(num_classes=10, widths=(4, 8, 16, 32)),
     (3, 448, 448), "layer4", 427),
    ("resnet50-paper", lambda: models.resnet50(num_classes=10, widths=(4, 8, 16, 32),
                                               stride_in_1x1=True),
     (3, 512, 512), "layer4", 483),
]


@pytest.mark.parametrize("name, build, input_size, layer, published", MODELS,
                         ids=[m[0] for m in MODELS])
def test_model_field_is_the_empirical_one(name, build, input_size, layer, published):
    minidl.manual_seed(0)
    model = build()
    s = rf_summary(model, input_size)
    row = [r for r in s.rows if r.name == layer][-1]     # LeNet's max_pool runs twice
    assert s.receptive_field == row.receptive_field
    if published is not None:
        assert row.receptive_field == (published, published)
    rows, cols, out_hw = empirical_extent(positive_copy(model), layer, input_size)
    expected = computed_extent(row, out_hw, input_size[1:])
    assert (rows, cols) == expected
    # the input is large enough that the whole field fits: nothing was clipped
    assert tuple(hi - lo + 1 for lo, hi in expected) == row.receptive_field


def test_vgg16_published_conv5_3():
    s = rf_summary(models.vgg16(num_classes=10, width_mult=1 / 16), (3, 224, 224))
    conv5_3 = [r for r in s.layers if r.type == "Conv2d"][-1]
    assert conv5_3.receptive_field == (196, 196)
    assert s.receptive_field == (212, 212)      # after the last pooling


def test_resnet50_layouts_at_full_width():
    """The two ResNet-50 layouts minidl builds: the paper's (stride in the first 1x1)
    483, torchvision's (stride in the 3x3) 427, at the last convolution."""
    for stride_in_1x1, expected in ((True, 483), (False, 427)):
        s = rf_summary(models.resnet50(stride_in_1x1=stride_in_1x1), (3, 224, 224))
        last_conv = [r for r in s.layers if r.type == "Conv2d"][-1]
        assert last_conv.name == "layer4.2.conv3"
        assert last_conv.receptive_field == (expected, expected)
        assert s.receptive_field == (expected, expected)
