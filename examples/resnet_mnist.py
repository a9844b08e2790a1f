"""ResNet-18 with the small (CIFAR-style) stem on MNIST padded to 32x32.

    python examples/resnet_mnist.py                         # 5 epochs on all of MNIST
    python examples/resnet_mnist.py --limit 2000 --test-limit 1000 --batch-size 32 \
        --epochs 1 --no-tsne                                # a quick CPU demo
    python examples/resnet_mnist.py --synthetic --limit 64 --epochs 1 --no-tsne  # smoke run

Run times on a CPU (2 cores; on a busy machine several times longer): the quick demo takes
about 3 to 4 minutes and ends near 84 % test accuracy (measured: 3.5 min, 84.1 %, on two
cores shared with other work); the full run, 5 epochs of 60,000 images, takes hours (an
epoch of MNIST is about an hour): train it on a GPU (--device cuda). The quick demo uses
batches of 32, not 128: its 2,000 images then make 63 steps instead of 16, enough for
the batch-norm layers' running statistics (what eval mode uses, momentum 0.1) to follow
the trained weights; with 16 steps they still mix in their initial values and the test
accuracy stays near chance. --test-limit 1000 evaluates 1,000 test images instead of all
10,000 (evaluating took more than half of the demo's time).

The model is ``minidl.models.resnet18(num_classes=10, small_input=True, in_channels=1)``:
a 3x3/1 first convolution and no max pool (the ImageNet stem's 7x7/2 + 3x3/2 pool would
shrink a 32x32 digit to 8x8 before the first residual block), then the four stages of two
BasicBlocks (64, 128, 256, 512 channels; 32 -> 16 -> 8 -> 4 pixels), global average pool
and a linear layer. Inputs: MNIST padded by 2 pixels to 32x32, normalised; for training
also shifted at random by up to 2 pixels. SGD with Nesterov momentum 0.9, weight decay
5e-4 (not on biases and batch-norm parameters), lr 0.05 warmed up over the first epoch
(at most a fifth of the run) then annealed to 0 on a cosine, batches of 128.

Every epoch prints the training loss and top-1 accuracy, the test top-1 accuracy and the
epoch's time (training and evaluation); metrics.json records them (plus top-5) per epoch.
Outputs (in --out, default runs/resnet_mnist/): metrics.json, curves.png, confusion.png,
tsne.png (penultimate layer: the 512-d pooled features), best.npz, final.npz. The training
loop, checkpoints and plots are shared with the other examples (examples/_common.py).
ResNet-18 has 11.2 M parameters: on a CPU, an epoch of all 60,000 images takes a while;
--limit N trains on the first N images, --test-limit N evaluates the first N test images.
"""
from __future__ import annotations

import argparse
import sys

import minidl
from minidl import models
from minidl.data.transforms import Compose, Normalize, Pad, RandomCrop, ToTensor

import _common
from lenet_mnist import MNIST_MEAN, MNIST_STD, warmup_cosine

DEFAULTS = {"resnet18": {"epochs": 5, "batch_size": 128, "lr": 0.05}}


def build_model():
    return models.resnet18(num_classes=10, small_input=True, in_channels=1)


def padded_mnist_transforms():
    """(train, test) transforms: MNIST padded to 32x32, normalised; training images also
    shifted at random by up to 2 pixels. Shared with googlenet_aux.py."""
    normalize = Normalize((MNIST_MEAN,), (MNIST_STD,))
    train = Compose([ToTensor(), Pad(2), RandomCrop(32, padding=2), normalize])
    test = Compose([ToTensor(), Pad(2), normalize])
    return train, test


def nesterov_sgd_cosine(args):
    """(make_optimizer, make_scheduler): Nesterov SGD with weight decay 5e-4 on weights only
    (none on biases and batch-norm parameters), then a warm-up + cosine learning rate.
    Shared with googlenet_aux.py."""
    def make_optimizer(model):
        params = list(model.parameters())
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        return minidl.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, momentum=0.9, nesterov=True)

    def make_scheduler(optimizer, steps_per_epoch):
        total = args.epochs * steps_per_epoch   # warm-up: the first epoch, at most 1/5
        factor = warmup_cosine(total, max(1, min(steps_per_epoch, total // 5)))
        return minidl.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return make_optimizer, make_scheduler


def make_recipe(args):
    train_transform, test_transform = padded_mnist_transforms()
    make_optimizer, make_scheduler = nesterov_sgd_cosine(args)
    return _common.Recipe(
        name="resnet18", model_name="resnet18-small-stem-mnist", build_model=build_model,
        train_transform=train_transform, test_transform=test_transform,
        make_optimizer=make_optimizer, make_scheduler=make_scheduler, feature_layer="fc")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="resnet_mnist.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_training_args(parser, default_out="runs/resnet_mnist",
                              recipe_defaults=DEFAULTS)
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), train, write the outputs; returns the
    metrics dict (also written to metrics.json)."""
    args = build_parser().parse_args(argv)
    _common.fill_defaults(args, DEFAULTS["resnet18"])
    data = "synthetic digits" if args.synthetic else "MNIST 32x32"
    return _common.run(args, make_recipe(args), title=f"ResNet-18 (small stem) on {data}")


if __name__ == "__main__":
    sys.exit(_common.cli(main))
