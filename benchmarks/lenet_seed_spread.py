"""How much the lecture's LeNet-5 run depends on its random seed, in minidl and in PyTorch.

    python benchmarks/lenet_seed_spread.py [--seeds 0-9] [--epochs 3] [--threads 2]

The lecture prints one run: 57.64, 84.61, 88.76, ... % test top-1 after epochs 1, 2, 3, ...
A run's curve depends on its seed (initial weights and batch order), so this script trains
the lecture's recipe (tanh LeNet-5, 2x2 max pooling, 32x32 inputs, plain SGD lr 0.01, batch
100, shuffled) once per seed in each framework, each with its *own* initialisation and
shuffling, on the same real MNIST images, and prints the spread of the test accuracy per
epoch next to the lecture's number. It is accuracy, not speed: the two frameworks run one
after the other, not interleaved.

Inputs are resized 28 -> 32 once with PyTorch's ``F.interpolate`` (bilinear,
align_corners=False), which is what torchvision's ``Resize((32, 32))`` does to tensors and
what ``minidl.data.transforms.Resize`` matches to 1e-5.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as TF

import minidl
from minidl.data import MNIST

from bench_lenet import lenet  # noqa: E402 - same folder
from bench_ops import set_threads, thread_report  # noqa: E402

LECTURE = [57.64, 84.61, 88.76, 91.27, 92.71, 93.82, 94.70, 95.44, 96.04, 96.50]


def resized(split):
    """(images (N, 1, 32, 32) float32 in [0, 1], labels (N,) int64) of an MNIST split."""
    ds = MNIST(train=split == "train")
    x = torch.from_numpy(ds.data).float().div_(255).unsqueeze(1)
    x = TF.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.numpy(), ds.targets.astype(np.int64)


def run(lib, seed, epochs, train, test, batch=100):
    """Test top-1 (%) after each epoch of the lecture's recipe, written in ``lib``."""
    lib.manual_seed(seed)
    net = lenet(lib)
    opt = lib.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = lib.nn.CrossEntropyLoss()
    (xtr, ytr), (xte, yte) = train, test
    order_rng = np.random.default_rng(seed) if lib is minidl else None
    accs = []
    for _ in range(epochs):
        net.train()
        # each framework shuffles with its own generator, as its DataLoader would
        perm = order_rng.permutation(len(xtr)) if lib is minidl else torch.randperm(len(xtr)).numpy()
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(net(lib.tensor(xtr[idx])), lib.tensor(ytr[idx]))
            loss.backward()
            opt.step()
        net.eval()
        correct = 0
        with lib.no_grad():
            for i in range(0, len(xte), 1000):
                pred = net(lib.tensor(xte[i:i + 1000])).argmax(dim=1).numpy()
                correct += int((pred == yte[i:i + 1000]).sum())
        accs.append(100.0 * correct / len(xte))
    return accs


def parse_seeds(text):
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-9", help="a seed or an inclusive range (default 0-9)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--libs", default="minidl,pytorch",
                    help="which frameworks to run, comma-separated (default: both)")
    args = ap.parse_args()
    set_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    train, test = resized("train"), resized("test")
    results = {}
    libs = {"minidl": minidl, "pytorch": torch}
    for name in args.libs.split(","):
        lib = libs[name]
        results[name] = []
        for seed in seeds:
            t0 = time.perf_counter()
            accs = run(lib, seed, args.epochs, train, test)
            results[name].append(accs)
            print(f"{name:8s} seed {seed:3d}: " + " ".join(f"{a:6.2f}" for a in accs)
                  + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\ntest top-1 (%) over {len(seeds)} seeds: mean +- sd [min, max]; "
          "'within 2' = seeds whose run is within 2 points of the lecture")
    for e in range(args.epochs):
        lecture = LECTURE[e] if e < len(LECTURE) else float("nan")
        cells = []
        for name in results:
            col = [accs[e] for accs in results[name]]
            sd = statistics.stdev(col) if len(col) > 1 else 0.0
            near = sum(abs(a - lecture) <= 2 for a in col)
            cells.append(f"{name} {statistics.mean(col):6.2f} +- {sd:4.2f} "
                         f"[{min(col):6.2f}, {max(col):6.2f}] within 2: {near}/{len(col)}")
        print(f"  epoch {e + 1:2d}  lecture {lecture:6.2f} | " + " | ".join(cells))
    print("threads used:", thread_report())


if __name__ == "__main__":
    main()
