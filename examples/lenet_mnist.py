"""Train the lecture's LeNet-5 (tanh, 2x2 max pooling, SGD lr 0.01, batch 100).

    python examples/lenet_mnist.py [--epochs 10] [--batch-size 100] [--lr 0.01] [--seed 0]

Until minidl.data lands (the MNIST issue), this trains on a synthetic stand-in for MNIST:
ten random 32x32 "prototype" images, one per class, each sample a prototype with noise
and a small random shift. The model, loss, optimiser and the printed lines are the
lecture's; only the data is synthetic.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minidl
from minidl import nn


class LeNet(nn.Module):
    """LeNet-5 as in the lecture: x (N, 1, 32, 32) -> logits (N, 10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, stride=1, padding=0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, stride=1, padding=0)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        out = self.max_pool(minidl.tanh(self.conv1(x)))   # (N, 6, 14, 14)
        out = self.max_pool(minidl.tanh(self.conv2(out)))  # (N, 16, 5, 5)
        out = out.reshape(out.size(0), -1)                 # (N, 400)
        out = minidl.tanh(self.fc1(out))
        out = minidl.tanh(self.fc2(out))
        return self.fc3(out)


def synthetic_digits(n, seed):
    """n images (n, 1, 32, 32) float32 in [0, 1] and labels (n,) int64 from 10 prototypes."""
    rng = np.random.default_rng(seed)
    protos = (np.random.default_rng(1234).random((10, 32, 32)) > 0.7).astype(np.float32)
    labels = rng.integers(0, 10, n)
    images = protos[labels]
    shifts = rng.integers(-2, 3, (n, 2))
    for s in np.unique(shifts, axis=0):  # a few vectorised rolls, not one per image
        sel = (shifts == s).all(1)
        images[sel] = np.roll(images[sel], tuple(s), axis=(1, 2))
    images = np.clip(images * 0.8 + rng.normal(0, 0.35, images.shape), 0, 1).astype(np.float32)
    return images[:, None], labels.astype(np.int64)


def batches(x, y, batch_size, shuffle, rng):
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield minidl.tensor(x[idx]), minidl.tensor(y[idx])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=6000, help="number of synthetic training images")
    args = ap.parse_args(argv)

    minidl.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, y_train = synthetic_digits(args.limit, args.seed)
    x_test, y_test = synthetic_digits(max(args.limit // 6, 100), args.seed + 1)
    print(f"synthetic data (minidl.data and real MNIST come with the MNIST issue): "
          f"{len(x_train)} train, {len(x_test)} test images")

    net = LeNet()
    optimizer = minidl.optim.SGD(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        net.train()
        losses, accs = [], []
        for x, y in batches(x_train, y_train, args.batch_size, True, rng):
            optimizer.zero_grad()
            out = net(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            accs.append((out.argmax(dim=1) == y).numpy().mean())
        print(f"Train epoch {epoch + 1}: loss: {np.mean(losses):.4f} ; "
              f"top-1 accuracy: {100 * np.mean(accs):.2f}%")
        net.eval()
        correct = 0
        with minidl.no_grad():
            for x, y in batches(x_test, y_test, args.batch_size, False, rng):
                correct += int((net(x).argmax(dim=1) == y).numpy().sum())
        acc = 100 * correct / len(x_test)
        history.append(acc)
        print(f"Eval epoch {epoch + 1}: top-1 accuracy: {acc:.2f}%  "
              f"({time.perf_counter() - t0:.1f} s)")
    return history


if __name__ == "__main__":
    main()
