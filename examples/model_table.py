"""The lecture's comparison of architectures: parameters, multiply-adds, FLOPs and memory
of every model in ``minidl.models``, computed by ``minidl.summary`` (shape propagation,
no forward pass; the models are built without drawing their weights).

    python examples/model_table.py                      # every model, batch 1, float32
    python examples/model_table.py --models resnet50 vgg16 --batch-size 32
    python examples/model_table.py --layers resnet18    # also the per-layer table of one

Conventions (as ``minidl.summary``): MACs = multiply-accumulates of the conv and linear
layers (what the ResNet paper and the lecture call "FLOPs": 1.8 / 3.6 / 3.8 / 7.6 /
11.3 x 10^9); FLOPs = 2 per MAC + 1 per bias add + the other layers' elementwise work.
Activation memory = the bytes of every layer output, which a training step keeps for
its backward pass. The "lecture / paper" column gives the lecture's figure where it has
one (the MobileNet papers' otherwise).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minidl import models
from minidl.summary import summary

# name: (builder, kwargs, input size, the lecture's / paper's figure, note)
MODELS = {
    "lenet5": (models.lenet5, {}, (1, 32, 32), "61,706 params", "tanh, 32x32x1"),
    "alexnet": (models.alexnet, {"num_classes": 10}, (3, 224, 224), "58,325,066 params",
                "the lecture's, with BN, 10 classes"),
    "vgg11": (models.vgg11, {}, (3, 224, 224), "133 M params", ""),
    "vgg13": (models.vgg13, {}, (3, 224, 224), "133 M params", ""),
    "vgg16": (models.vgg16, {}, (3, 224, 224), "138 M params", ""),
    "vgg19": (models.vgg19, {}, (3, 224, 224), "144 M params", ""),
    "googlenet": (models.googlenet, {}, (3, 224, 224), "6.8 M params",
                  "eval: main head; + 2 aux heads' params"),
    "googlenet-noaux": (models.googlenet, {"aux_logits": False}, (3, 224, 224),
                        "6.8 M params", "without the auxiliary heads"),
    "mobilenet_v1": (models.mobilenet_v1, {}, (3, 224, 224), "4.2 M / 569 M MACs",
                     "depthwise separable"),
    "mobilenet_v2": (models.mobilenet_v2, {}, (3, 224, 224), "3.4 M / 300 M MACs",
                     "torchvision's"),
    "resnet18": (models.resnet18, {}, (3, 224, 224), "1.8 G MACs", ""),
    "resnet34": (models.resnet34, {}, (3, 224, 224), "3.6 G MACs", ""),
    "resnet50": (models.resnet50, {"stride_in_1x1": True}, (3, 224, 224), "3.8 G MACs",
                 "paper layout"),
    "resnet50-tv": (models.resnet50, {}, (3, 224, 224), "4.1 G MACs", "torchvision layout"),
    "resnet101": (models.resnet101, {"stride_in_1x1": True}, (3, 224, 224), "7.6 G MACs",
                  "paper layout"),
    "resnet101-tv": (models.resnet101, {}, (3, 224, 224), "", "torchvision layout"),
    "resnet152": (models.resnet152, {"stride_in_1x1": True}, (3, 224, 224), "11.3 G MACs",
                  "paper layout"),
    "resnet152-tv": (models.resnet152, {}, (3, 224, 224), "", "torchvision layout"),
}


def human(n, unit=""):
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n} {unit}".rstrip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="models: " + ", ".join(MODELS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        metavar="NAME", help="which models (default: all)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size (1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"],
                        help="activation dtype, for the byte counts (float32)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override the 224x224 input of the ImageNet models")
    parser.add_argument("--layers", nargs="*", default=[], choices=list(MODELS),
                        metavar="NAME", help="also print the per-layer summary of these")
    args = parser.parse_args(argv)

    header = ["model", "input", "params", "MACs", "FLOPs", "activations", "im2col max",
              "lecture / paper", "note"]
    rows = []
    t0 = time.perf_counter()
    for name in args.models:
        builder, kwargs, size, lecture, note = MODELS[name]
        if args.image_size and size[0] == 3:
            size = (3, args.image_size, args.image_size)
        with models.uninitialized():
            net = builder(**kwargs)
        s = summary(net, size, batch_size=args.batch_size, dtype=np.dtype(args.dtype),
                    verbose=False)
        rows.append([name, "x".join(map(str, size)), f"{s.total_params:,}",
                     human(s.total_macs), human(s.total_flops),
                     f"{s.activation_bytes / 2**20:,.1f} MB",
                     f"{s.im2col_max_bytes / 2**20:,.1f} MB", lecture, note])
        if name in args.layers:
            print(s)
            print()
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}

    def fmt(r):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    print(f"batch {args.batch_size}, {args.dtype}; MACs: multiply-adds of conv/linear layers; "
          "FLOPs: 2 per MAC + 1 per bias add + elementwise ops")
    print(fmt(header))
    print("-" * max(len(fmt(r)) for r in rows + [header]))
    for r in rows:
        print(fmt(r))
    print(f"({len(rows)} models summarised in {time.perf_counter() - t0:.1f} s, "
          "by shape propagation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
