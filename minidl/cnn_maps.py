"""What a convolutional network looks at: feature maps, filters, saliency and occlusion.

Four pictures from the lecture on visualising CNNs, each one function::

    from minidl import viz

    maps = viz.feature_maps(net, x, "conv1")      # activations of conv1 for one image
    maps.array                                    # (C, H, W) NumPy array
    maps.save("conv1_maps.png")                   # one panel per channel, with a colour bar

    viz.filters(net.conv1).array                  # (OC, C, KH, KW): the kernels
    viz.saliency(net, x, target=3).array          # (H, W): max over channels of |d s_3 / d x|
    viz.occlusion(net, x, target=3).array         # (OH, OW): drop of s_3 under a grey patch

The one convention
------------------
Every function returns a result object (``FeatureMaps``, ``Filters``, ``Saliency``,
``Occlusion``) holding NumPy arrays on the host -- ``.array`` is the main one -- and draws
nothing until asked: ``.figure`` (a matplotlib Figure, drawn on first access and kept) or
``.save(path)`` (a PNG, written atomically with matplotlib's file-only Agg backend; the
figure is closed afterwards). So minidl imports and these functions compute without
matplotlib; only the pictures need it (``pip install minidl[examples]``).

Shapes: ``x`` is one image, (C, H, W) or (1, C, H, W), a Tensor or an array; the model maps
(N, C, H, W) to class scores (N, K). ``target`` is a class index in [0, K). Each function
puts the model in eval mode (batch norm uses its running statistics, dropout is off) and
gives it back in the mode it found it in.

Definitions
-----------
- feature maps: the output of ``layer`` (a module of the model, or its dotted name in
  ``model.named_modules()``) for the image, (C, H, W) for a convolution.
- filters: a Conv2d's weight (OC, C, KH, KW), drawn as an OC x C grid of kernels on one
  shared symmetric colour scale [-m, m], m = max |w| (so the colour bar reads for every
  kernel, and a negative weight never looks like a positive one).
- saliency (Simonyan et al., 2014): the gradient g = d s_target / d x (C, H, W) of the
  target's score (the logit, before softmax) and its map max_c |g[c]| (H, W).
- occlusion (Zeiler & Fergus, 2014): a patch of ``fill`` (default: the image's mean, a
  "grey" in the image's own units, normalised or not) slides over the image with a
  ``stride``; cell (i, j) of the map is s_target(x) - s_target(x occluded at
  (i * stride, j * stride)), positive where covering the image hurts the target. The map
  is (OH, OW) = ((H - PH) // SH + 1, (W - PW) // SW + 1): only positions where the patch
  lies wholly inside the image (no padding). All occluded copies are built at once and run
  as batches of ``batch_size`` images under ``no_grad``.
"""
from __future__ import annotations

import functools

import numpy as np

from .autograd import Tensor, grad, no_grad
from .backend import to_numpy
from .creation import tensor
from .geometry import pair
from .serialization import atomic_write

__all__ = ["FeatureMaps", "Filters", "Saliency", "Occlusion", "feature_maps", "filters",
           "saliency", "occlusion"]


# ----------------------------------------------------------------------------- the results


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only), imported on first use."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("minidl.viz pictures need matplotlib: pip install matplotlib "
                          "(or minidl[examples]); the arrays work without it") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class _Result:
    """A computed array and its picture. Subclasses set ``array`` and ``title`` and
    write ``draw(fig)``."""

    title = ""

    @functools.cached_property
    def figure(self):
        """The matplotlib Figure, drawn on first access."""
        fig = self.draw(_pyplot())
        fig.suptitle(self.title)
        return fig

    def save(self, path, dpi=110):
        """Write the picture as a PNG at ``path`` (atomically) and close the figure."""
        plt = _pyplot()
        fig = self.figure
        with atomic_write(path) as fh:
            fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        del self.figure          # a later access draws it afresh
        return path


def _grid(n, max_cols=8):
    """(rows, cols) of a grid of n panels at most ``max_cols`` wide."""
    cols = min(n, max_cols)
    return -(-n // cols), cols


class FeatureMaps(_Result):
    """array: the layer's output for the image, without the batch axis ((C, H, W) for a
    convolution, (F,) for a linear layer); layer: its name."""

    def __init__(self, array, layer):
        self.array, self.layer = array, layer
        self.title = f"feature maps of {layer}: {tuple(array.shape)}"

    def draw(self, plt):
        if self.array.ndim == 1:      # a vector: one bar per unit
            fig, ax = plt.subplots(figsize=(8, 3))
            ax.bar(np.arange(self.array.size), self.array)
            ax.set_xlabel("unit")
            ax.set_ylabel("activation")
            return fig
        maps = self.array.reshape(-1, *self.array.shape[-2:])    # (C, H, W)
        rows, cols = _grid(len(maps))
        fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1, 1.6 * rows + 0.6),
                                 squeeze=False, layout="constrained")
        # one colour scale for all channels, so panels compare (a dead channel looks dead)
        lo, hi = float(maps.min()), float(maps.max())
        for c, ax in enumerate(axes.flat):
            ax.axis("off")
            if c < len(maps):
                im = ax.imshow(maps[c], cmap="viridis", vmin=lo, vmax=hi)
                ax.set_title(f"channel {c}", fontsize=8)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="activation")
        return fig


class Filters(_Result):
    """array: a Conv2d's weight (OC, C, KH, KW) on the host, as trained (not rescaled)."""

    def __init__(self, array, name):
        self.array, self.name = array, name
        oc, c, kh, kw = array.shape
        self.title = f"filters of {name}: {oc} x {c} kernels of {kh}x{kw}"

    def draw(self, plt):
        oc, c = self.array.shape[:2]
        m = float(np.abs(self.array).max()) or 1.0       # shared symmetric scale [-m, m]
        # constrained layout: the colour bar gets its own room (a 1-column grid is narrow)
        fig, axes = plt.subplots(oc, c, figsize=(1.0 * c + 1.8, 1.0 * oc + 0.6),
                                 squeeze=False, layout="constrained")
        for o in range(oc):
            for i in range(c):
                ax = axes[o, i]
                im = ax.imshow(self.array[o, i], cmap="RdBu_r", vmin=-m, vmax=m)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_ylabel(f"out {o}", fontsize=7)
                if o == 0:
                    ax.set_title(f"in {i}", fontsize=7)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
        return fig


def _show_image(ax, image):
    """Draw one input image (C, H, W): grey for one channel, RGB (rescaled) for three."""
    if image.shape[0] == 3:
        lo, hi = image.min(), image.max()
        ax.imshow(np.transpose((image - lo) / ((hi - lo) or 1.0), (1, 2, 0)))
    else:
        ax.imshow(image.mean(axis=0), cmap="gray")
    ax.axis("off")


class Saliency(_Result):
    """array: (H, W) max over channels of |gradient|; gradient: (C, H, W) d s_target / d x;
    image: (C, H, W) the input; target, score: the class and its score s_target(x)."""

    def __init__(self, array, gradient, image, target, score):
        self.array, self.gradient, self.image = array, gradient, image
        self.target, self.score = target, score
        self.title = f"saliency of class {target} (score {score:.3g})"

    def draw(self, plt):
        fig, (ax_img, ax_map) = plt.subplots(1, 2, figsize=(7, 3.4))
        _show_image(ax_img, self.image)
        ax_img.set_title("input", fontsize=9)
        im = ax_map.imshow(self.array, cmap="hot")
        ax_map.set_title("max over channels of |d score / d x|", fontsize=9)
        ax_map.axis("off")
        fig.colorbar(im, ax=ax_map, shrink=0.85)
        return fig


class Occlusion(_Result):
    """array: (OH, OW) the score's drop per patch position; image: (C, H, W) the input;
    target, score: the class and its unoccluded score; patch, stride: (PH, PW), (SH, SW);
    fill: the patch's value."""

    def __init__(self, array, image, target, score, patch, stride, fill):
        self.array, self.image, self.target, self.score = array, image, target, score
        self.patch, self.stride, self.fill = patch, stride, fill
        self.title = (f"occlusion of class {target} (score {score:.3g}): "
                      f"{patch[0]}x{patch[1]} patch, stride {stride[0]}")

    def draw(self, plt):
        fig, (ax_img, ax_map) = plt.subplots(1, 2, figsize=(7, 3.4))
        _show_image(ax_img, self.image)
        ax_img.set_title("input", fontsize=9)
        # the map's cells are drawn over the patch centres, so it lines up with the input
        (ph, pw), (sh, sw) = self.patch, self.stride
        oh, ow = self.array.shape
        extent = (pw / 2 - sw / 2 - 0.5, pw / 2 + (ow - 0.5) * sw - 0.5,
                  ph / 2 + (oh - 0.5) * sh - 0.5, ph / 2 - sh / 2 - 0.5)
        m = float(np.abs(self.array).max()) or 1.0
        im = ax_map.imshow(self.array, cmap="RdBu_r", vmin=-m, vmax=m, extent=extent)
        ax_map.set_xlim(-0.5, self.image.shape[2] - 0.5)
        ax_map.set_ylim(self.image.shape[1] - 0.5, -0.5)
        ax_map.set_title("drop of the score when covered", fontsize=9)
        ax_map.axis("off")
        fig.colorbar(im, ax=ax_map, shrink=0.85)
        return fig


# ----------------------------------------------------------------------------- helpers


def _device_of(model):
    """The device of the model's first parameter (cpu for a model without any)."""
    for p in model.parameters():
        return p.device
    return "cpu"


def _one_image(x, op):
    """``x`` (C, H, W) or (1, C, H, W), Tensor or array -> a NumPy array (C, H, W)."""
    data = to_numpy(x.data) if isinstance(x, Tensor) else np.asarray(x)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise ValueError(f"{op}: expected one image x of shape (C, H, W) or (1, C, H, W), "
                         f"got {tuple(data.shape)}")
    return data


def _find_layer(model, layer, op):
    """(module, name): ``layer`` is a module of ``model`` or its dotted name."""
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in modules or layer == "":
            names = ", ".join(n for n in modules if n)
            raise ValueError(f"{op}: expected the name of a layer of the model, got "
                             f"{layer!r}; its layers are: {names}")
        return modules[layer], layer
    for name, module in modules.items():
        if module is layer:
            return module, name or type(layer).__name__
    raise ValueError(f"{op}: expected a layer of the model (a module or its name in "
                     f"model.named_modules()), got a {type(layer).__name__} that is not "
                     "one of its modules")


class _EvalMode:
    """``with _EvalMode(model):`` runs in eval mode and restores the mode found."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _check_target(target, num_classes, op):
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) \
            or not 0 <= target < num_classes:
        raise ValueError(f"{op}: expected target, a class index in [0, {num_classes}), "
                         f"got {target!r}")
    return int(target)


def _scores(model, images, device):
    """The model's scores (N, K) as a NumPy array, for images (N, C, H, W), no graph."""
    with no_grad():
        out = model(tensor(images, device=device))
    if out.ndim != 2:
        raise ValueError(f"expected the model to return class scores (N, K), got "
                         f"{tuple(out.shape)}")
    return to_numpy(out.data)


# ----------------------------------------------------------------------------- the four maps


def feature_maps(model, x, layer):
    """The activations of ``layer`` for the image ``x``: a ``FeatureMaps`` whose ``array``
    is the layer's output without the batch axis, (C, H, W) for a convolution.

    model: a Module; x: (C, H, W) or (1, C, H, W); layer: a module of ``model`` or its
    dotted name (``"conv1"``, ``"layer1.0.conv2"``). A forward hook catches the output;
    for a module called twice in one forward (LeNet's ``max_pool``), the first call's.
    """
    op = "feature_maps"
    module, name = _find_layer(model, layer, op)
    image = _one_image(x, op)
    caught = []

    def hook(mod, args, output):
        if not caught:
            caught.append(to_numpy(output.data))

    handle = module.register_forward_hook(hook)
    try:
        with _EvalMode(model), no_grad():
            model(tensor(image[None], device=_device_of(model)))
    finally:
        handle.remove()
    return FeatureMaps(caught[0][0], name)


def filters(layer):
    """A convolution's kernels: a ``Filters`` whose ``array`` is the weight (OC, C, KH, KW)
    on the host. ``layer``: a Conv2d (any module with a 4-d ``weight``)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        got = type(layer).__name__ if weight is None else f"weight {tuple(weight.shape)}"
        raise ValueError(f"filters: expected a convolution layer with a weight (OC, C, KH, "
                         f"KW), got {got}")
    return Filters(to_numpy(weight.data).copy(), type(layer).__name__)


def saliency(model, x, target):
    """|d score_target / d x|: a ``Saliency`` whose ``array`` (H, W) is the gradient's
    largest absolute value over the channels; ``gradient`` (C, H, W) is the raw gradient.

    The gradient comes from ``minidl.autograd.grad``, so no parameter's ``.grad`` changes.
    """
    op = "saliency"
    image = _one_image(x, op)
    xt = tensor(image[None], device=_device_of(model), requires_grad=True)
    with _EvalMode(model):
        scores = model(xt)                                   # (1, K)
        target = _check_target(target, scores.shape[1], op)
        score = scores[0, target]
        (g,) = grad(score, [xt])
    gradient = to_numpy(g.data)[0]                           # (C, H, W)
    return Saliency(np.abs(gradient).max(axis=0), gradient, image, target,
                    float(to_numpy(score.data)))


def occlusion_masks(height, width, patch, stride):
    """Where the patch lies at each position: a boolean array (OH, OW, H, W)."""
    (ph, pw), (sh, sw) = patch, stride
    oh, ow = (height - ph) // sh + 1, (width - pw) // sw + 1
    rows = np.arange(height)[None, :] - (np.arange(oh) * sh)[:, None]     # (OH, H)
    cols = np.arange(width)[None, :] - (np.arange(ow) * sw)[:, None]      # (OW, W)
    in_rows = (rows >= 0) & (rows < ph)
    in_cols = (cols >= 0) & (cols < pw)
    return in_rows[:, None, :, None] & in_cols[None, :, None, :]


def occlusion(model, x, target, patch=8, stride=4, fill=None, batch_size=64):
    """Zeiler & Fergus' occlusion map: an ``Occlusion`` whose ``array`` (OH, OW) holds
    s_target(x) - s_target(x with a patch of ``fill`` at (i * SH, j * SW)).

    patch, stride: an int or (PH, PW) / (SH, SW); fill: the patch's value (default: the
    mean of x); batch_size: occluded copies per forward pass (memory: batch_size * C * H *
    W numbers). OH = (H - PH) // SH + 1, OW = (W - PW) // SW + 1.
    """
    op = "occlusion"
    image = _one_image(x, op)
    c, h, w = image.shape
    patch = pair(patch, "patch", op, minimum=1)
    stride = pair(stride, "stride", op, minimum=1)
    if patch[0] > h or patch[1] > w:
        raise ValueError(f"occlusion: expected a patch no larger than the image ({h}, {w}), "
                         f"got {patch}")
    fill = float(image.mean()) if fill is None else float(fill)
    masks = occlusion_masks(h, w, patch, stride)             # (OH, OW, H, W)
    oh, ow = masks.shape[:2]
    masks = masks.reshape(oh * ow, 1, h, w)                  # one copy per position
    device = _device_of(model)
    with _EvalMode(model):
        base = _scores(model, image[None], device)[0]        # (K,)
        target = _check_target(target, base.shape[0], op)
        drops = []
        for start in range(0, len(masks), batch_size):
            copies = np.where(masks[start:start + batch_size], np.asarray(fill, image.dtype),
                              image[None])                   # (B, C, H, W)
            drops.append(base[target] - _scores(model, copies, device)[:, target])
    return Occlusion(np.concatenate(drops).reshape(oh, ow), image, target,
                     float(base[target]), patch, stride, fill)
