"""The lecture's LeNet-5, minidl next to PyTorch (CPU), one process: a step, or an epoch.

    python benchmarks/bench_lenet.py [--threads 2] [--steps 30] [--batch-size 100]
    python benchmarks/bench_lenet.py --epoch [--repeats 3] [--limit 60000] [--rss]

One step = forward, cross-entropy, backward, SGD update on a (batch, 1, 32, 32) float32
batch, tanh and 2x2 max pooling as in the lecture. Both sides start from the same
weights and run interleaved blocks of steps; medians in ms per step and the ratio
minidl / PyTorch (below 1.0: minidl is faster). PyTorch is timed twice: as a user writes
it, and with the channels_last memory format (often faster on the CPU).

``--epoch``: the seed recipe's epoch as a user runs it, on real MNIST (minidl's cache, or
fetched once: ``minidl.data.MNIST``). minidl: ``MNIST(transform=Compose([ToTensor(),
Resize((32, 32))]))`` through a shuffling ``DataLoader`` (batch 100), the training loop
of ``examples/lenet_mnist.py`` (loss and top-1 kept per batch), then the evaluation of the
10,000 test images under ``no_grad``. PyTorch: a plain loop over the same images as
tensors (``TensorDataset`` + ``DataLoader``), each batch resized with
``F.interpolate(bilinear)``, the same model, loss and SGD; the same evaluation. Epochs
alternate between the two sides ``--repeats`` times after one untimed epoch each (numba's
compilation or cache load is ``bench_jit.py``'s business); printed: seconds per training
epoch and per evaluation (median, min-max) and their ratios. ``--rss`` then runs each
side's epoch alone in a child process and prints the peak resident memory of a process
that imports only that side's library (PyTorch's reads MNIST through ``minidl.data`` too).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import minidl
from proc_status import status_mb  # noqa: E402 - same folder

# torch and bench_ops (which imports torch) are imported where used: ``--child minidl``
# measures a process that never loads PyTorch.


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
    import torch
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


def minidl_epoch(batch, limit):
    """(train_epoch, evaluate) closures for minidl as the example runs them."""
    from minidl.data import DataLoader, MNIST, Subset
    from minidl.data.transforms import Compose, Resize, ToTensor
    transform = Compose([ToTensor(), Resize((32, 32))])
    train_set = MNIST(train=True, transform=transform)
    test_set = MNIST(train=False, transform=transform)
    if limit < len(train_set):
        train_set = Subset(train_set, np.arange(limit))
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=batch)
    net = lenet(minidl)
    opt = minidl.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = minidl.nn.CrossEntropyLoss()

    def train():
        net.train()
        losses, accs = [], []
        for x, y in train_loader:
            opt.zero_grad()
            out = net(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            losses.append(loss.data)
            accs.append((out.data.argmax(1) == y.data).mean())
        return float(np.mean(losses)), 100 * float(np.mean(accs))

    def evaluate():
        net.eval()
        correct = 0
        with minidl.no_grad():
            for x, y in test_loader:
                correct += int((net(x).data.argmax(1) == y.data).sum())
        return 100 * correct / len(test_set)
    return train, evaluate, (train_set, test_set)


def torch_epoch(batch, datasets):
    """The same for a plain PyTorch loop over the same images (uint8 -> float, resized per
    batch)."""
    import torch
    import torch.nn.functional as TF
    from torch.utils.data import DataLoader, TensorDataset

    def tensors(ds):                  # the same arrays, not copied unless a Subset
        base = getattr(ds, "dataset", ds)
        idx = getattr(ds, "indices", None)
        data, targets = np.asarray(base.data), np.asarray(base.targets)
        if idx is not None:
            data, targets = data[idx], targets[idx]
        return (torch.from_numpy(data).unsqueeze(1),
                torch.from_numpy(targets.astype(np.int64, copy=False)))
    train_loader = DataLoader(TensorDataset(*tensors(datasets[0])), batch_size=batch,
                              shuffle=True)
    test_loader = DataLoader(TensorDataset(*tensors(datasets[1])), batch_size=batch)
    net = lenet(torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def prep(x):
        return TF.interpolate(x.float() / 255, size=(32, 32), mode="bilinear",
                              align_corners=False)

    def train():
        net.train()
        losses, accs = [], []
        for x, y in train_loader:
            opt.zero_grad()
            out = net(prep(x))
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            accs.append((out.detach().argmax(1) == y).float().mean())
        return float(torch.stack(losses).mean()), 100 * float(torch.stack(accs).mean())

    def evaluate():
        net.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((net(prep(x)).argmax(1) == y).sum())
        return 100 * correct / len(datasets[1])
    return train, evaluate


def run_epochs(args):
    m_train, m_eval, datasets = minidl_epoch(args.batch_size, args.limit)
    t_train, t_eval = torch_epoch(args.batch_size, datasets)
    sides = {"minidl": (m_train, m_eval), "torch": (t_train, t_eval)}
    times = {k: {"train": [], "eval": []} for k in sides}
    for name, (train, evaluate) in sides.items():   # untimed: numba's JIT/cache, warm caches
        t0 = time.perf_counter()
        train()
        evaluate()
        print(f"  warm-up epoch {name:7s} {time.perf_counter() - t0:6.2f} s (not counted)",
              flush=True)
    for r in range(args.repeats):
        for name, (train, evaluate) in sides.items():
            t0 = time.perf_counter()
            loss, top1 = train()
            t1 = time.perf_counter()
            acc = evaluate()
            t2 = time.perf_counter()
            times[name]["train"].append(t1 - t0)
            times[name]["eval"].append(t2 - t1)
            print(f"  epoch {r + 1} {name:7s} train {t1 - t0:6.2f} s (loss {loss:.4f}, top-1 "
                  f"{top1:.2f}%)  eval {t2 - t1:5.2f} s (top-1 {acc:.2f}%)", flush=True)
    print(f"LeNet-5 seed recipe, {len(datasets[0])} training images, batch "
          f"{args.batch_size}; after one untimed epoch per side (numba's JIT: bench_jit.py)")
    for part in ("train", "eval"):
        med = {k: statistics.median(v[part]) for k, v in times.items()}
        spread = {k: f"{min(v[part]):.2f}-{max(v[part]):.2f}" for k, v in times.items()}
        print(f"  {part:5s}  minidl {med['minidl']:6.2f} s ({spread['minidl']})   torch "
              f"{med['torch']:6.2f} s ({spread['torch']})   ratio "
              f"{med['minidl'] / med['torch']:5.2f}")


def epoch_rss(args):
    """Peak resident memory (MB) of a whole process running one side's epoch (training
    and evaluation) alone (``--child``): only that side's library imported, as a user's
    script would; the PyTorch side reads the MNIST arrays through ``minidl.data`` too
    (importing minidl without numba: ~12 MB, counted on PyTorch's side)."""
    result = {}
    for lib in ("minidl", "torch"):
        cmd = [sys.executable, __file__, "--child", lib, "--limit", str(args.limit),
               "--batch-size", str(args.batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result[lib] = float(out.strip().splitlines()[-1])
    return result


def child(args):
    """Prints the process's peak RSS (MB, ``VmHWM``) after one side's epoch."""
    if args.threads:
        minidl.set_num_threads(args.threads)
    m_train, m_eval, datasets = minidl_epoch(args.batch_size, args.limit)
    if args.child == "minidl":
        train, evaluate = m_train, m_eval
    else:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        train, evaluate = torch_epoch(args.batch_size, datasets)
    train()
    evaluate()
    print(status_mb("VmHWM"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epoch", action="store_true",
                    help="time whole epochs on real MNIST instead of steps")
    ap.add_argument("--repeats", type=int, default=3, help="--epoch: epochs per side")
    ap.add_argument("--limit", type=int, default=60000, help="--epoch: training images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=30, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--rss", action="store_true",
                    help="--epoch: also each side's peak RSS, alone in a child process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch
    from bench_ops import blas_kernel, set_threads, thread_report  # same folder
    set_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, "
          f"torch {torch.__version__}, numpy {np.__version__}; BLAS: {blas_kernel()}")
    if args.epoch:
        run_epochs(args)
        if args.rss:
            rss = epoch_rss(args)
            print(f"  peak RSS of a process running one side's epoch alone: minidl "
                  f"{rss['minidl']:.0f} MB, torch {rss['torch']:.0f} MB, ratio "
                  f"{rss['minidl'] / rss['torch']:.2f}")
        print("threads used:", thread_report())
        return

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
