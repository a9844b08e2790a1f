"""The lecture's LeNet-5 training step, minidl next to PyTorch (CPU), one process.

    python benchmarks/bench_lenet.py [--threads 2] [--steps 30] [--batch-size 100]

One step = forward, cross-entropy, backward, SGD update on a (batch, 1, 32, 32) float32
batch, tanh and 2x2 max pooling as in the lecture. Both sides start from the same
weights and run interleaved blocks of steps; medians in ms per step and the ratio
minidl / PyTorch (below 1.0: minidl is faster). PyTorch is timed twice: as a user writes
it, and with the channels_last memory format (often faster on the CPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import minidl

from bench_ops import set_threads, thread_report  # noqa: E402 - same folder


def lenet(lib):
    nn = lib.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
            self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
            self.fc1 = nn.Linear(400, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)
            self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)

        def forward(self, x):
            out = self.max_pool(lib.tanh(self.conv1(x)))
            out = self.max_pool(lib.tanh(self.conv2(out)))
            out = out.reshape(out.size(0), -1)
            out = lib.tanh(self.fc1(out))
            out = lib.tanh(self.fc2(out))
            return self.fc3(out)

    return LeNet()


def make(lib, batch, weights, channels_last=False):
    net = lenet(lib)
    if weights is not None:
        net.load_state_dict({k: lib.tensor(v) for k, v in weights.items()})
    rng = np.random.default_rng(0)
    x = lib.tensor(rng.random((batch, 1, 32, 32), dtype=np.float32))
    y = lib.tensor(rng.integers(0, 10, batch))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = lib.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = lib.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return net, step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    set_threads(args.threads)

    tnet, tstep = make(torch, args.batch_size, None)
    weights = {k: v.detach().numpy().copy() for k, v in tnet.state_dict().items()}
    _, mstep = make(minidl, args.batch_size, weights)
    _, cstep = make(torch, args.batch_size, None, channels_last=True)
    steps = {"minidl": mstep, "torch": tstep, "torch channels_last": cstep}

    t0 = time.perf_counter()
    mstep()
    first = time.perf_counter() - t0
    for s in steps.values():
        for _ in range(3):
            s()
    times = {k: [] for k in steps}
    for _ in range(args.blocks):
        for name, s in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"LeNet-5 training step, batch {args.batch_size}, float32 "
          f"(minidl's first step incl. JIT/cache load: {first * 1e3:.0f} ms)")
    for name, ms in med.items():
        print(f"  {name:22s} {ms:8.2f} ms/step   minidl/this = {med['minidl'] / ms:5.2f}")
    print("threads used:", thread_report())


if __name__ == "__main__":
    main()
