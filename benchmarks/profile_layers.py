"""Where a model's step goes, layer kind by layer kind, minidl next to PyTorch (CPU).

    python benchmarks/profile_layers.py [--models resnet18,googlenet,mobilenet_v2]
                                        [--batch 32] [--repeats 7] [--eval] [--threads N]

One forward pass of the model records every call of its leaf layers (convolutions, batch
norms, activations, pooling, linear, dropout) with the input's shape. Then each call is
replayed alone on both sides, the same layer (``bench_models``' twin models, the same
weights) on a random input of that shape: forward and backward with a random upstream
gradient (the input's gradient only where the model needs it), or with ``--eval`` the
forward in eval mode under no_grad; minidl and PyTorch alternate, median of
``--repeats``. The calls are summed by kind (a convolution by kernel, stride and
depthwise or not) and printed with the share of minidl's summed time and the ratio
minidl / PyTorch; last, the whole step of each side (``bench_models``), whose difference
from the layers' sum is what they do not show: the loss, the optimiser, residual adds,
concatenations, functional activations, autograd's own work.

A layer the PyTorch twin runs as a function instead (MobileNet v2's average pool) is
left out of the rows (its time is in the rest). An in-place activation is fed ``x * 1``
(computed before the clock starts, its backward timed with the layer's) on both sides:
PyTorch refuses an in-place op on a leaf that needs a gradient.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import minidl
from bench_models import build, interleaved, make  # noqa: E402 - same folder
from bench_ops import blas_kernel, set_threads, thread_report  # noqa: E402


def kind(module):
    """The row a layer call is summed into: 'conv 3x3 s2', 'conv 3x3 depthwise', ..."""
    name = type(module).__name__
    if name == "Conv2d":
        kh, kw = module.kernel_size
        sh = module.stride[0]
        depthwise = module.groups > 1 and module.groups == module.in_channels
        return f"conv {kh}x{kw} s{sh}" + (" depthwise" if depthwise else "")
    return {"BatchNorm2d": "batch norm", "ReLU": "relu", "ReLU6": "relu6",
            "MaxPool2d": "max pool", "AdaptiveAvgPool2d": "adaptive avg pool",
            "Linear": "linear", "Dropout": "dropout"}.get(name, name)


def leaf_calls(net, batch):
    """[(name, module, input shape, input needs its gradient), ...]: every call of a
    leaf layer in one training-mode forward of minidl's ``net`` on a random batch."""
    calls = []
    hooks = []
    for name, module in net.named_modules():
        if list(module.children()) or type(module).__name__ == "Identity":
            continue

        def hook(mod, inputs, output, _name=name):
            x = inputs[0]
            calls.append((_name, mod, tuple(x.shape), bool(x.requires_grad)))
        hooks.append(module.register_forward_hook(hook))
    x = minidl.tensor(np.random.default_rng(0).standard_normal((batch, 3, 32, 32))
                      .astype(np.float32))
    net.train()
    net(x)
    for h in hooks:
        h.remove()
    return calls


def replay(lib, module, shape, needs_grad, train, rng):
    """A closure running ``module`` once on a fresh random input of ``shape`` (forward +
    backward when ``train``, else the eval-mode forward under no_grad)."""
    x0 = rng.standard_normal(shape).astype(np.float32)
    g0 = None
    inplace = getattr(module, "inplace", False)
    if train:
        module.train()
        with lib.no_grad():
            g0 = lib.tensor(rng.standard_normal(tuple(module(lib.tensor(x0)).shape))
                            .astype(np.float32))
    else:
        module.eval()

    def run():
        if not train:
            with lib.no_grad():
                module(lib.tensor(x0))
            return
        leaf = lib.tensor(x0, requires_grad=needs_grad or inplace)
        x = leaf * 1 if inplace else leaf
        t0 = time.perf_counter()
        module(x).backward(g0)
        return time.perf_counter() - t0

    def timed():
        if train:
            return run() * 1e3
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3
    return timed


def profile(name, batch, args):
    tnet = build(name, torch)
    mnet = build(name, minidl)
    mnet.load_state_dict({k: minidl.tensor(v.detach().numpy().copy())
                          for k, v in tnet.state_dict().items()})
    tmodules = dict(tnet.named_modules())
    rng = np.random.default_rng(1)
    rows = {}
    train = not args.eval
    for lname, module, shape, needs_grad in leaf_calls(mnet, batch):
        if lname not in tmodules:                   # the twin calls a function instead
            continue
        fns = {"minidl": replay(minidl, module, shape, needs_grad, train, rng),
               "torch": replay(torch, tmodules[lname], shape, needs_grad, train, rng)}
        for fn in fns.values():
            fn()                                                  # warm-up
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for side, fn in fns.items():
                times[side].append(fn())
        row = rows.setdefault(kind(module), [0, 0.0, 0.0])
        row[0] += 1
        row[1] += statistics.median(times["minidl"])
        row[2] += statistics.median(times["torch"])

    _, t_train, t_eval = make(name, torch, batch)
    weights = {k: v.detach().numpy().copy() for k, v in tnet.state_dict().items()}
    _, m_train, m_eval = make(name, minidl, batch, weights)
    step = {"minidl": m_eval if args.eval else m_train,
            "torch": t_eval if args.eval else t_train}
    for fn in step.values():
        fn()
    whole = interleaved(step, 3, args.repeats)
    total_m = sum(r[1] for r in rows.values())
    total_t = sum(r[2] for r in rows.values())
    what = "evaluation forward" if args.eval else "training step (forward + backward)"
    print(f"{name}, batch {batch}, {what}, ms per step summed over the layers' calls")
    print(f"  {'layer kind':24s} {'calls':>5s} {'minidl':>9s} {'torch':>9s} {'share':>6s} "
          f"{'ratio':>6s}")
    for k, (n, m, t) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:24s} {n:5d} {m:9.2f} {t:9.2f} {m / total_m:6.1%} {m / t:6.2f}")
    print(f"  {'layers alone':24s} {'':5s} {total_m:9.2f} {total_t:9.2f} {'':6s} "
          f"{total_m / total_t:6.2f}")
    wm, wt = statistics.median(whole["minidl"]), statistics.median(whole["torch"])
    print(f"  {'whole step':24s} {'':5s} {wm:9.2f} {wt:9.2f} {'':6s} {wm / wt:6.2f}")
    print(f"  {'the rest (step - layers)':24s} {'':5s} {wm - total_m:9.2f} "
          f"{wt - total_t:9.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,googlenet,mobilenet_v2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--eval", action="store_true", help="the eval-mode forward instead")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both sides (default: minidl's default)")
    args = ap.parse_args()
    set_threads(args.threads)
    print(f"BLAS: {blas_kernel()}")
    for name in args.models.split(","):
        profile(name, args.batch, args)
    print(f"threads used: {thread_report()}")


if __name__ == "__main__":
    main()
