"""GoogLeNet (Inception v1) trained with its two auxiliary classifiers, on MNIST.

    python examples/googlenet_aux.py --limit 2000 --test-limit 1000 --batch-size 32 \
        --lr 0.02 --epochs 2 --no-tsne                        # a quick CPU demo
    python examples/googlenet_aux.py --aux-weight 0            # the main head alone
    python examples/googlenet_aux.py --synthetic --limit 64 --epochs 1 --no-tsne  # smoke run

Run times on a CPU (2 cores; on a busy machine several times longer): the quick demo takes
about 3 minutes and ends near 65 % test accuracy (measured: 3.2 min, 65.7 %, on two cores
shared with other work); the full run (3 epochs of 60,000 images) takes hours: train it
on a GPU (--device cuda). The quick demo uses batches of 32 (126 steps, enough for the
batch-norm running statistics that eval mode uses to settle) and a lower peak learning
rate, 0.02 (0.05 in so few steps left the main head near chance: 17 %); --test-limit 1000
evaluates 1,000 of the 10,000 test images.

The model is ``minidl.models.googlenet(num_classes=10, in_channels=1)``: the paper's
network (5x5 third branches, batch norm after every convolution as in torchvision) with
both auxiliary heads, after inception4a ("aux1") and inception4d ("aux2"). In training
mode it returns the three heads' scores, and the loss is the lecture's

    L = L_out + 0.3 L_aux1 + 0.3 L_aux2        (minidl.models.googlenet_loss)

(--aux-weight changes the 0.3). Each epoch prints the mean of L (the "loss" of the usual
"Train epoch" line) and, on a second line, the means of its three parts: loss_out,
loss_aux1, loss_aux2; metrics.json records them per epoch. In eval mode the network
returns the main head's scores alone: the accuracies are the main head's.

Inputs: MNIST padded to 32x32 and normalised (training images also shifted at random by
up to 2 pixels). GoogLeNet accepts 32x32: its five stride-2 stages take it to 16, 8, 4,
2, then 1 pixel before the global average pool, and the auxiliary heads pool their 2x2
maps adaptively to 4x4. SGD with Nesterov momentum 0.9, weight decay 5e-4 (not on biases
and batch-norm parameters), lr 0.05 warmed up over the first epoch (at most a fifth of
the run) then annealed on a cosine, batches of 64. The network has 10.3 M parameters (6.0 M
without its auxiliary heads) and no width option, so a CPU epoch of all of MNIST is slow:
use --limit N (and --test-limit N) for a demo.

Outputs (in --out, default runs/googlenet_aux/): metrics.json, curves.png, confusion.png,
tsne.png (the 1024-d features before the main fc), best.npz, final.npz. The training loop,
checkpoints and plots are shared with the other examples (examples/_common.py).
"""
from __future__ import annotations

import argparse
import sys

from minidl import models
from minidl.models.googlenet import GoogLeNetOutputs

import _common
from resnet_mnist import nesterov_sgd_cosine, padded_mnist_transforms

DEFAULTS = {"googlenet": {"epochs": 3, "batch_size": 64, "lr": 0.05}}
PARTS = ("loss_out", "loss_aux1", "loss_aux2")


def build_model():
    return models.googlenet(num_classes=10, in_channels=1)


def main_logits(output):
    """The main head's scores, from the training output (or plain eval-mode logits)."""
    return output.logits if isinstance(output, GoogLeNetOutputs) else output


class AuxLoss:
    """``googlenet_loss`` that also keeps the per-batch values of its three parts; the
    recipe's ``epoch_metrics`` (``epoch_means``) returns their means and starts afresh."""

    def __init__(self, aux_weight):
        self.aux_weight = aux_weight
        self.sums = dict.fromkeys(PARTS, 0.0)
        self.batches = 0

    def __call__(self, output, target):
        parts = models.googlenet_loss(output, target, aux_weight=self.aux_weight,
                                      return_parts=True)
        for name, value in zip(PARTS, (parts.main, parts.aux1, parts.aux2)):
            if value is not None:
                self.sums[name] += value.item()
        self.batches += 1
        return parts.total

    def epoch_means(self):
        n = max(self.batches, 1)
        means = {name: total / n for name, total in self.sums.items()}
        self.sums = dict.fromkeys(PARTS, 0.0)
        self.batches = 0
        return means


def make_recipe(args):
    train_transform, test_transform = padded_mnist_transforms()
    make_optimizer, make_scheduler = nesterov_sgd_cosine(args)
    loss = AuxLoss(args.aux_weight)

    return _common.Recipe(
        name="googlenet-aux", model_name="googlenet-mnist", build_model=build_model,
        train_transform=train_transform, test_transform=test_transform,
        make_optimizer=make_optimizer, make_scheduler=make_scheduler, loss=loss,
        logits=main_logits, feature_layer="fc", epoch_metrics=loss.epoch_means)


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="googlenet_aux.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aux-weight", type=non_negative_float, default=0.3,
                        help="weight of each auxiliary loss in L (default: %(default)s)")
    _common.add_training_args(parser, default_out="runs/googlenet_aux",
                              recipe_defaults=DEFAULTS)
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), train, write the outputs; returns the
    metrics dict (also written to metrics.json)."""
    args = build_parser().parse_args(argv)
    _common.fill_defaults(args, DEFAULTS["googlenet"])
    data = "synthetic digits" if args.synthetic else "MNIST 32x32"
    return _common.run(args, make_recipe(args), title=f"GoogLeNet (aux. losses) on {data}")


if __name__ == "__main__":
    sys.exit(_common.cli(main))
