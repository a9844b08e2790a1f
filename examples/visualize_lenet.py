"""What a trained LeNet-5 looks at: its filters, feature maps, saliency and occlusion maps.

    python examples/visualize_lenet.py --checkpoint runs/lenet_mnist/best.npz
    python examples/visualize_lenet.py --checkpoint runs/x/best.npz --synthetic --digits 2

Reads a checkpoint written by examples/lenet_mnist.py (either recipe; a checkpoint of
another model is refused) and writes PNGs into --out (default: a folder "viz" beside the
checkpoint), each with a title and, where values are drawn on a colour scale, a colour bar:

  filters_conv1.png, filters_conv2.png
      the kernels of each convolution, one small image per (output, input) channel pair,
      on one red-blue scale (red positive, blue negative weights).
  digit<i>_conv1.png, digit<i>_conv2.png
      the feature maps of test digit i: what each channel of the layer outputs for it
      (before the activation and pooling), all channels on one scale.
  digit<i>_saliency.png
      how strongly each pixel sways the true class's score: the largest absolute value
      over the channels of the score's gradient with respect to the image.
  digit<i>_occlusion.png
      how much the true class's score drops when an 8x8 grey patch (the image's mean)
      covers each place, sliding by 4 pixels (Zeiler and Fergus' occlusion experiment).
  misclassified.png
      the test digits the model gets wrong (the first --max-misclassified), each titled
      with its predicted and true label.

The test digits are the first --digits images of the test set (MNIST from --data-dir or
minidl's cache, or --synthetic digits, as in lenet_mnist.py), shown the checkpoint's
recipe's test transform. The pictures come from minidl.viz (feature_maps, filters,
saliency, occlusion).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import minidl
from minidl import viz
from minidl.data import DeviceDataLoader
from minidl.serialization import atomic_write

import _common
import lenet_mnist

CONV_LAYERS = ("conv1", "conv2")


def lenet_recipes():
    """{model name in a checkpoint: its lenet_mnist recipe}: the models this script draws.
    Only the recipes' model builders and test transforms are used (no training options)."""
    unused = argparse.Namespace(lr=None, epochs=None)
    recipes = (make(unused) for make in lenet_mnist.RECIPES.values())
    return {recipe.model_name: recipe for recipe in recipes}


def load_lenet(path):
    """(model in eval mode, recipe) from a checkpoint of lenet_mnist.py at ``path``; an
    ``ExampleError`` that says why for anything else."""
    recipes = lenet_recipes()
    names = " or ".join(repr(name) for name in recipes)
    try:
        ckpt = minidl.load(path, map_location="cpu")
    except (OSError, minidl.CheckpointError) as exc:
        raise _common.ExampleError(f"cannot read the checkpoint {path}: {exc}") from None
    if isinstance(ckpt, dict) and ckpt.get("format") == _common.CHECKPOINT_FORMAT:
        recipe = recipes.get(ckpt.get("model"))
        if recipe is None:
            raise _common.ExampleError(
                f"{path} holds a {ckpt.get('model')!r} model (recipe "
                f"{ckpt.get('recipe')!r}), not LeNet-5 ({names}): pass a best.npz or "
                "final.npz written by examples/lenet_mnist.py")
        state = ckpt.get("model_state")
    else:
        recipe, state = bare_state_dict(ckpt, recipes, path, names)
    model = recipe.build_model()
    try:
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _common.ExampleError(f"{path} does not fit LeNet-5 ({recipe.model_name}): "
                                   f"{first}") from None
    return model.eval(), recipe


def bare_state_dict(obj, recipes, path, names):
    """(recipe, state) for a bare ``model.state_dict()`` whose keys are exactly those of
    one LeNet-5 variant; an ``ExampleError`` otherwise."""
    if isinstance(obj, dict):
        for recipe in recipes.values():
            if set(obj) == set(recipe.build_model().state_dict()):
                return recipe, obj
        keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        what = f"a dict with keys {keys}"
    else:
        what = f"a {type(obj).__name__}"
    raise _common.ExampleError(f"{path} is not a checkpoint of LeNet-5 ({names}): it holds "
                               f"{what}; pass a best.npz or final.npz written by "
                               "examples/lenet_mnist.py")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="visualize_lenet.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="best.npz or final.npz written by examples/lenet_mnist.py")
    parser.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: "
                        "'viz' beside the checkpoint); existing pictures are replaced")
    parser.add_argument("--digits", type=_common.positive_int, default=4, metavar="N",
                        help="test digits to draw feature, saliency and occlusion maps "
                        "of (default: %(default)s)")
    parser.add_argument("--max-misclassified", type=_common.positive_int, default=32,
                        metavar="N", help="misclassified test digits to show (default: "
                        "%(default)s)")
    g = parser.add_argument_group("data (as in lenet_mnist.py)")
    g.add_argument("--data-dir", metavar="DIR", help="folder with your MNIST IDX files; "
                   "default: minidl's cache (MNIST is fetched once if missing)")
    g.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading MNIST when no local copy is found")
    g.add_argument("--synthetic", action="store_true",
                   help="use the synthetic MNIST-shaped digits of lenet_mnist.py --synthetic")
    g.add_argument("--test-limit", type=_common.positive_int, metavar="N",
                   help="look for misclassified digits among the first N test images only")
    return parser


def test_set(args, recipe):
    """The test set, through ``_common.load_data`` with no training options."""
    _common.fill_defaults(args, {"limit": None, "val_size": None, "early_stopping": None,
                                 "seed": 0})
    return _common.load_data(args, recipe).test


def label_digit(result, index, label):
    """Put the digit's index and true label in front of a picture's title."""
    result.title = f"test digit {index} (label {label}): {result.title}"
    return result


def draw_digit(model, image, label, index, out):
    """The feature maps, saliency and occlusion pictures of one test digit."""
    written = []
    for layer in CONV_LAYERS:
        maps = label_digit(viz.feature_maps(model, image, layer), index, label)
        written.append(maps.save(out / f"digit{index}_{layer}.png"))
    sal = label_digit(viz.saliency(model, image, label), index, label)
    written.append(sal.save(out / f"digit{index}_saliency.png"))
    occ = label_digit(viz.occlusion(model, image, label, patch=8, stride=4), index, label)
    written.append(occ.save(out / f"digit{index}_occlusion.png"))
    return written


def plot_misclassified(images, preds, targets, indices, path, title):
    """A grid of images (N, C, H, W), each titled 'predicted p, true t' (test index)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 1, 1.7 * rows + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center")
    else:
        lo, hi = float(images.min()), float(images.max())   # one scale for every digit
        for ax, img, p, t, i in zip(axes.flat, images, preds, targets, indices):
            im = ax.imshow(img.mean(axis=0), cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"#{i}: pred {p}, true {t}", fontsize=7)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="pixel value "
                     "(after the test transform)")
    fig.suptitle(title)
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def misclassified(model, test, limit):
    """(images, predicted, true, test indices) of the first ``limit`` misclassified test
    digits, and the test top-1 accuracy."""
    result = _common.evaluate(model, DeviceDataLoader(test, batch_size=500, device="cpu"),
                              "cpu")
    wrong = np.flatnonzero(result.pred != result.target)[:limit]
    images = [minidl.backend.to_numpy(test[int(i)][0].data) for i in wrong]
    images = np.stack(images) if images else np.zeros((0, 1, 1, 1))
    return images, result.pred[wrong], result.target[wrong], wrong, result.top1


def main(argv=None):
    """Parse ``argv``, load the checkpoint and data, write the PNGs; returns their paths."""
    args = build_parser().parse_args(argv)
    _common.require_packages(need_bars=False, need_plots=True, need_tsne=False)
    path = Path(args.checkpoint)
    model, recipe = load_lenet(path)
    test = test_set(args, recipe)
    out = Path(args.out) if args.out else path.parent / "viz"
    out.mkdir(parents=True, exist_ok=True)

    written = [viz.filters(getattr(model, layer)).save(out / f"filters_{layer}.png")
               for layer in CONV_LAYERS]
    for index in range(min(args.digits, len(test))):
        image, label = test[index]
        written += draw_digit(model, image, int(label), index, out)
    images, preds, targets, indices, top1 = misclassified(model, test, args.max_misclassified)
    n_wrong = round(len(test) * (100 - top1) / 100)
    title = (f"{recipe.model_name}: {n_wrong:,} of {len(test):,} test digits misclassified"
             f" (top-1 {top1:.2f}%); the first {len(images)}")
    written.append(plot_misclassified(images, preds, targets, indices,
                                      out / "misclassified.png", title))
    print(f"{recipe.model_name} from {path}: test top-1 {top1:.2f}%")
    print(f"Wrote {len(written)} pictures to {out}: "
          + ", ".join(Path(p).name for p in written))
    return written


if __name__ == "__main__":
    sys.exit(_common.cli(main))
