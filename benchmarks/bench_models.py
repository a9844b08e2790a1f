"""Whole models, minidl next to PyTorch (CPU), one process, equal thread counts.

    python benchmarks/bench_models.py [--threads N] [--models resnet18,googlenet,mobilenet_v2]
                                      [--resnet-batches 32,128] [--steps 3] [--repeats 5]
                                      [--quick] [--rss]

Per model: a training step (forward, cross-entropy, backward, SGD with momentum 0.9 and
weight decay 5e-4) and an evaluation forward (eval mode, no_grad), float32 on random
3x32x32 images, both sides from the same weights. Blocks of ``--steps`` steps alternate
between minidl and PyTorch ``--repeats`` times; printed: median ms per step, the spread
(min-max over blocks), and last the ratio minidl / PyTorch (below 1.0: minidl is faster).

- ResNet-18: ``minidl.models.resnet18(small_input=True)`` (3x3 stem, no max pool), batch
  32 and 128 (``--resnet-batches``).
- GoogLeNet with its two auxiliary heads (loss = main + 0.3 aux1 + 0.3 aux2), batch 32.
- MobileNet v2 (width 1.0), batch 32.

The PyTorch models are the hand-written twins of ``tests/test_models.py`` (the parity
tests check that their ``state_dict`` keys and outputs match minidl's). ``--rss`` also runs
each side's training loop alone in a child process and reports its peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

import minidl
from minidl import models

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from test_models import TBasicBlock, TGoogLeNet, TMobileNetV2, TResNet  # noqa: E402

from bench_ops import blas_kernel, set_threads, thread_report  # noqa: E402 - same folder
from proc_status import status_mb  # noqa: E402


# ----------------------------------------------------------------------------- models

def build(name, lib):
    """The model ``name`` for ``lib`` (minidl or torch), random weights, train mode."""
    if lib is minidl:
        return {"resnet18": lambda: models.resnet18(small_input=True, num_classes=10),
                "googlenet": lambda: models.googlenet(num_classes=10),
                "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=10)}[name]()
    return {"resnet18": lambda: TResNet(TBasicBlock, [2, 2, 2, 2], 10, small_input=True),
            "googlenet": lambda: TGoogLeNet(10),
            "mobilenet_v2": lambda: TMobileNetV2(10, 1.0)}[name]()


def loss_of(lib, out, y):
    """Cross-entropy; GoogLeNet's training output adds its auxiliary heads at 0.3 each."""
    F = lib.nn.functional
    if isinstance(out, tuple):
        main, aux2, aux1 = out[0], out[1], out[2]
        return F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux1, y) \
            + 0.3 * F.cross_entropy(aux2, y)
    return F.cross_entropy(out, y)


def make(name, lib, batch, weights=None, seed=0):
    """(train_step, eval_step) closures for ``name`` on ``lib``; weights: a dict of arrays."""
    net = build(name, lib)
    if weights is not None:
        net.load_state_dict({k: lib.tensor(v) for k, v in weights.items()})
    rng = np.random.default_rng(seed)
    x = lib.tensor(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = lib.tensor(rng.integers(0, 10, batch))
    decay, no_decay = [], []
    for pname, p in net.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)
    opt = lib.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                         {"params": no_decay, "weight_decay": 0.0}], lr=0.05, momentum=0.9)

    def train_step():
        net.train()
        opt.zero_grad()
        loss = loss_of(lib, net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def eval_step():
        net.eval()
        with lib.no_grad():
            return float(net(x).sum().item())

    return net, train_step, eval_step


# ----------------------------------------------------------------------------- timing

def interleaved(fns, steps, repeats):
    """ms per call of each fn in ``fns`` (name -> fn): blocks of ``steps`` calls,
    alternating, ``repeats`` blocks each."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times


def row(label, times):
    m, t = statistics.median(times["minidl"]), statistics.median(times["torch"])
    spread = lambda v: f"{min(v):.0f}-{max(v):.0f}"  # noqa: E731
    return (f"  {label:34s} minidl {m:8.1f} ms ({spread(times['minidl'])})   "
            f"torch {t:8.1f} ms ({spread(times['torch'])})   ratio {m / t:5.2f}")


def bench(name, batch, args):
    tnet, t_train, t_eval = make(name, torch, batch)
    weights = {k: v.detach().numpy().copy() for k, v in tnet.state_dict().items()}
    _, m_train, m_eval = make(name, minidl, batch, weights)
    t0 = time.perf_counter()
    m_train()
    first = time.perf_counter() - t0
    for fn in (m_train, t_train, m_eval, t_eval):  # warm-up
        fn()
    train = interleaved({"minidl": m_train, "torch": t_train}, args.steps, args.repeats)
    evals = interleaved({"minidl": m_eval, "torch": t_eval}, args.steps, args.repeats)
    print(f"{name}, batch {batch} (minidl's first step incl. compilation/cache: {first:.1f} s)")
    print(row("training step", train))
    print(row("evaluation (no_grad forward)", evals))
    if args.rss:
        for lib in ("minidl", "torch"):
            print(f"  peak RSS above the imports, {lib:6s} training alone: "
                  f"{child_rss(name, batch, lib, args):7.0f} MB")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- memory

def child_rss(name, batch, lib, args):
    """Peak resident memory (MB) a child process adds to its imports to build ``name`` on
    ``lib`` and run ``--steps`` training steps: each side alone, nothing of the other built."""
    cmd = [sys.executable, __file__, "--child", f"{name},{batch},{lib}",
           "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def child(spec, args):
    """Prints the peak RSS growth (MB) of the training loop over what the imports (both
    libraries, in both children) hold: the high-water mark is reset after the imports
    (``/proc/self/clear_refs``), whose own transient peak would otherwise hide it."""
    name, batch, lib = spec.split(",")
    lib = minidl if lib == "minidl" else torch
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_mb("VmRSS")
    _, train, _ = make(name, lib, int(batch))
    for _ in range(args.steps + 1):
        train()
    print(status_mb("VmHWM") - base)


# ----------------------------------------------------------------------------- environment

def cpu_description():
    """CPU model and the vector instruction set numba and OpenBLAS can use."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {isa}, {len(os.sched_getaffinity(0))} CPUs"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both sides (default: minidl.get_num_threads())")
    ap.add_argument("--models", default="resnet18,googlenet,mobilenet_v2")
    ap.add_argument("--resnet-batches", default="32,128")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    ap.add_argument("--quick", action="store_true",
                    help="one block of one step, ResNet-18 at batch 4 only (a smoke test)")
    ap.add_argument("--rss", action="store_true", help="also peak RSS of each side alone")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or minidl.get_num_threads()
    set_threads(threads)
    minidl.set_num_threads(threads)
    if args.child:
        return child(args.child, args)
    if args.quick:
        args.models, args.resnet_batches, args.steps, args.repeats = "resnet18", "4", 1, 1
    print(f"{cpu_description()}; {time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
          f"numpy {np.__version__}; BLAS: {blas_kernel()}")
    for name in args.models.split(","):
        batches = args.resnet_batches.split(",") if name == "resnet18" else ["32"]
        for batch in batches:
            bench(name, int(batch), args)
    print("threads used:", thread_report())


if __name__ == "__main__":
    main()
