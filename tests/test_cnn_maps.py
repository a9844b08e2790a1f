"""minidl.viz's CNN pictures (minidl/cnn_maps.py): each array against an independent
reference.

- feature maps: the layer called directly on the image;
- filters: the weight itself;
- saliency: autograd's gradient taken directly (``x.grad`` after ``backward``), and central
  finite differences on a tiny float64 model;
- occlusion: a brute-force loop, one occluded copy and one forward pass per position.
The pictures are checked for a title, a colour bar and a valid PNG (needs matplotlib).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import models, nn, viz


def tiny_model(dtype=None):
    """(N, 2, 9, 7) -> (N, 4): a conv, ReLU-free (smooth, for finite differences), a
    nested block (dotted names), and a linear layer."""
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, kernel_size=3),
                          nn.Sequential(nn.Tanh(), nn.Conv2d(3, 2, kernel_size=(2, 3))),
                          nn.Flatten(), nn.Linear(2 * 6 * 3, 4))
    return model.double() if dtype == "float64" else model


def image(shape=(2, 9, 7), seed=1, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def scores(model, images):
    with minidl.no_grad():
        return model(minidl.tensor(images)).numpy()


# ----------------------------------------------------------------------------- feature maps


def test_feature_maps_equal_the_layer_output():
    net = models.lenet5()
    x = image((1, 32, 32))
    expected = net.conv1(minidl.tensor(x[None])).detach().numpy()[0]
    for layer in ("conv1", net.conv1):
        result = viz.feature_maps(net, x, layer)
        assert result.array.shape == (6, 28, 28) and result.layer == "conv1"
        np.testing.assert_allclose(result.array, expected, rtol=1e-6, atol=1e-6)
    batched = viz.feature_maps(net, minidl.tensor(x[None]), "conv1")  # (1, C, H, W) tensor
    np.testing.assert_allclose(batched.array, expected, rtol=1e-6, atol=1e-6)


def test_feature_maps_by_dotted_name_and_of_a_linear_layer():
    model = tiny_model()
    x = image()
    inner = viz.feature_maps(model, x, "1.1")
    first = model[0](minidl.tensor(x[None]))
    expected = model[1][1](first.tanh()).detach().numpy()[0]
    np.testing.assert_allclose(inner.array, expected, rtol=1e-5, atol=1e-6)
    assert viz.feature_maps(model, x, "3").array.shape == (4,)


def test_feature_maps_restore_the_training_mode():
    net = models.lenet5()
    net.train()
    viz.feature_maps(net, image((1, 32, 32)), "conv2")
    assert net.training and net.conv2.training
    net.eval()
    viz.saliency(net, image((1, 32, 32)), 0)
    assert not net.training


@pytest.mark.parametrize("call,words", [
    (lambda m: viz.feature_maps(m, image((1, 32, 32)), "conv9"),
     ["feature_maps", "'conv9'", "conv1, conv2"]),
    (lambda m: viz.feature_maps(m, image((1, 32, 32)), nn.Conv2d(1, 6, 5)),
     ["feature_maps", "not one of its modules"]),
    (lambda m: viz.feature_maps(m, image((2, 1, 32, 32)), "conv1"),
     ["feature_maps", "(C, H, W) or (1, C, H, W)", "(2, 1, 32, 32)"]),
    (lambda m: viz.filters(m.fc1), ["filters", "(OC, C, KH, KW)", "(120, 400)"]),
    (lambda m: viz.saliency(m, image((1, 32, 32)), 10), ["saliency", "[0, 10)", "10"]),
    (lambda m: viz.occlusion(m, image((1, 32, 32)), True), ["occlusion", "[0, 10)"]),
    (lambda m: viz.occlusion(m, image((1, 32, 32)), 0, patch=40), ["occlusion", "(32, 32)"]),
    (lambda m: viz.occlusion(m, image((1, 32, 32)), 0, stride=0), ["occlusion", "stride"]),
])
def test_errors_name_the_function_the_expected_and_the_received(call, words):
    with pytest.raises((ValueError, TypeError)) as info:
        call(models.lenet5())
    for word in words:
        assert word in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- filters


def test_filters_are_the_weight():
    net = models.lenet5()
    result = viz.filters(net.conv2)
    assert result.array.shape == (16, 6, 5, 5)
    np.testing.assert_array_equal(result.array, net.conv2.weight.detach().numpy())
    result.array[0] = 0                 # a copy: the layer keeps its weights
    assert np.abs(net.conv2.weight.detach().numpy()[0]).sum() > 0


# ----------------------------------------------------------------------------- saliency


def test_saliency_equals_autograds_gradient():
    net = models.lenet5()
    net.eval()
    x = image((1, 32, 32))
    xt = minidl.tensor(x[None], requires_grad=True)
    net(xt)[0, 7].backward()
    expected = xt.grad.numpy()[0]
    net.zero_grad(set_to_none=True)

    result = viz.saliency(net, x, 7)
    np.testing.assert_allclose(result.gradient, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(result.array, np.abs(expected).max(axis=0))
    assert result.target == 7 and result.array.shape == (32, 32)
    assert result.score == pytest.approx(float(scores(net, x[None])[0, 7]), rel=1e-5)
    assert all(p.grad is None for p in net.parameters())     # no .grad was touched


def test_saliency_matches_finite_differences():
    model = tiny_model("float64")
    x = image(dtype=np.float64)
    result = viz.saliency(model, x, 2)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (scores(model, up[None])[0, 2] - scores(model, down[None])[0, 2]) \
            / (2 * eps)
    np.testing.assert_allclose(result.gradient, numeric, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- occlusion


def brute_force_occlusion(model, x, target, patch, stride, fill):
    """One occluded copy, one forward pass per position: the definition, looped."""
    (ph, pw), (sh, sw) = patch, stride
    _, h, w = x.shape
    base = scores(model, x[None])[0, target]
    rows = range(0, h - ph + 1, sh)
    cols = range(0, w - pw + 1, sw)
    out = np.zeros((len(rows), len(cols)))
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            copy = x.copy()
            copy[:, top:top + ph, left:left + pw] = fill
            out[i, j] = base - scores(model, copy[None])[0, target]
    return out


@pytest.mark.parametrize("patch,stride,fill,batch_size", [
    (3, 2, None, 64),              # default fill: the image's mean
    ((4, 2), (3, 1), 0.5, 64),     # non-square patch and stride; stride not dividing
    ((2, 3), 2, -1.0, 4),          # several batches (the last one short)
    (1, 1, 0.0, 7),
])
def test_occlusion_equals_a_brute_force_loop(patch, stride, fill, batch_size):
    model = tiny_model()
    x = image()
    result = viz.occlusion(model, x, 1, patch=patch, stride=stride, fill=fill,
                           batch_size=batch_size)
    p = (patch, patch) if isinstance(patch, int) else patch
    s = (stride, stride) if isinstance(stride, int) else stride
    f = float(x.mean()) if fill is None else fill
    expected = brute_force_occlusion(model, x, 1, p, s, f)
    assert result.array.shape == ((9 - p[0]) // s[0] + 1, (7 - p[1]) // s[1] + 1)
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-5)
    assert result.fill == pytest.approx(f) and result.patch == p and result.stride == s
    assert result.score == pytest.approx(float(scores(model, x[None])[0, 1]), rel=1e-5)


def test_occlusion_of_lenet_runs_in_one_batch():
    """The issue wants a 32x32 LeNet map well under a second (measured, not asserted:
    about 20 ms on the 2-core dev machine); what makes it fast is testable: the 7x7
    occluded copies go through the model as one batch, not 49 calls."""
    net = models.lenet5()
    batches = []
    forward = net.forward

    def counting_forward(inp):
        batches.append(inp.shape[0])
        return forward(inp)

    net.forward = counting_forward
    result = viz.occlusion(net, image((1, 32, 32)), 3)
    assert result.array.shape == (7, 7)
    assert sorted(batches) == [1, 49], batches   # the unoccluded score, then one batch


# ----------------------------------------------------------------------------- pictures


def test_pictures_have_titles_colour_bars_and_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    net = models.lenet5()
    x = image((1, 32, 32))
    results = {"maps": viz.feature_maps(net, x, "conv1"), "fc": viz.feature_maps(net, x, "fc3"),
               "filters": viz.filters(net.conv2), "saliency": viz.saliency(net, x, 3),
               "occlusion": viz.occlusion(net, x, 3)}
    for name, result in results.items():
        fig = result.figure
        assert fig is result.figure                       # drawn once, kept
        assert fig.get_suptitle() == result.title and result.title
        if name != "fc":                                  # a bar chart needs no colour bar
            assert any(ax.get_label() == "<colorbar>" for ax in fig.axes), name
        path = result.save(tmp_path / f"{name}.png")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


def test_minidl_computes_without_matplotlib():
    """The arrays need no matplotlib; asking for a picture says what to install."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np, minidl\n"
        "from minidl import models, viz\n"
        "net = models.lenet5(); x = np.zeros((1, 32, 32), np.float32)\n"
        "r = viz.occlusion(net, x, 1); assert r.array.shape == (7, 7)\n"
        "try:\n"
        "    r.figure\n"
        "except ImportError as exc:\n"
        "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib" in proc.stdout and "arrays work without it" in proc.stdout
