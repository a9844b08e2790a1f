"""minidl (CuPy) next to PyTorch eager on the same GPU, one process per TF32 mode.

    python benchmarks/bench_gpu.py                          # TF32 off, then on (a child each)
    python benchmarks/bench_gpu.py --tf32 off --json off.json
    python benchmarks/bench_gpu.py --merge off.json on.json # one Markdown table from both
    python benchmarks/bench_gpu.py --device cpu --quick     # tiny sizes on the CPU (a smoke test)

Workloads (float32, both sides from the same initial weights and the same data):
  LeNet-5 epoch   the lecture's seed recipe: 60,000 synthetic 1x32x32 images already on the
                  GPU, shuffled batches of 100, tanh LeNet-5 with 2x2 max pooling
                  (bench_lenet.lenet), cross-entropy, SGD lr 0.01, ``loss.item()`` every step
                  (as the recipe's loop, so both sides synchronise once per step); ms per epoch.
  ResNet-18 step  minidl.models.resnet18(small_input=True, num_classes=10) and the same
                  network in PyTorch (defined below, loaded with minidl's state_dict),
                  batch 128 of 3x32x32, cross-entropy, SGD (Nesterov momentum 0.9, lr 0.05,
                  weight decay 5e-4 on weights, as examples/resnet_mnist.py); ms per step.
  conv fwd+bwd    conv2d forward + backward (all inputs require grad, a random upstream
                  gradient) at bench_ops.py's two ResNet shapes; ms per call.

PyTorch runs as a user writes it: eager mode, NCHW, cudnn.benchmark left at its default (off).
Timing: wall clock between device synchronisations (``minidl.cuda.synchronize()`` and
``torch.cuda.synchronize()``), so Python and launch overhead count, as they do for a user.
Warm-up runs first and is reported apart (its first step includes CuPy's kernel compilation,
cached on disk after the first process, and cuDNN/cuBLAS start-up). Peak memory comes from a
separate, untimed step per side after ``reset_peak_memory_stats()``: minidl's
``minidl.cuda.max_memory_allocated()`` (CuPy's default pool, see minidl/cuda.py) and
``torch.cuda.max_memory_allocated()`` (PyTorch's caching allocator). Both include what stays
resident (weights, optimiser state, the LeNet data set: 60,000 x 4 KiB = 234 MiB); neither
counts workspaces a library allocates outside its pool (CuPy's cuBLAS handle's own).

TF32: ``--tf32 off`` sets torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
= False and CUPY_TF32=0; ``--tf32 on`` sets them True and CUPY_TF32=1. CuPy reads CUPY_TF32 once
per process (at its first float32 matrix product), so each mode runs in its own process:
``--tf32 both`` (the default) runs this script twice as a child process and merges the tables.

Ratios are minidl / PyTorch (below 1.0: minidl is faster); goals: LeNet epoch <= 1.0,
ResNet-18 step <= 1.5. A workload that fails prints its traceback, shows "error" in the table
and makes the exit status 1; the others still run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import minidl  # noqa: E402 - does not import CuPy; the first GPU call does

from bench_lenet import lenet  # noqa: E402 - same folder

MiB = 1024 * 1024

# bench_ops.py's ResNet conv cases: (N, C, H, W), out channels, kernel, stride, padding
CONV_SHAPES = [((32, 64, 56, 56), 64, 3, 1, 1), ((32, 256, 28, 28), 512, 3, 2, 1)]
CONV_SHAPES_QUICK = [((2, 8, 14, 14), 8, 3, 1, 1), ((2, 16, 14, 14), 32, 3, 2, 1)]

GOALS = {"lenet": 1.0, "resnet": 1.5}

TABLE_COLUMNS = ["TF32", "workload", "minidl ms", "PyTorch ms", "ratio", "goal",
                 "minidl peak MiB", "PyTorch peak MiB", "warm-up s minidl / PyTorch",
                 "first-step check"]


# ----------------------------------------------------------------------------- set-up

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu runs the same code on the CPU (with --quick: a smoke test)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few iterations")
    ap.add_argument("--tf32", choices=("off", "on", "both"), default="both")
    ap.add_argument("--only", default="", help="comma-separated: lenet, resnet, conv")
    ap.add_argument("--json", default=None, help="write the results here (one TF32 mode)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print one table from the --json files of earlier runs, and exit")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (--device cpu)")
    ap.add_argument("--lenet-images", type=int, default=None, help="default 60000 (quick 300)")
    ap.add_argument("--lenet-epochs", type=int, default=None,
                    help="timed epochs per side (default 2, 1 if an epoch looks slow; quick 1)")
    ap.add_argument("--max-epoch-s", type=float, default=40.0,
                    help="if a side's epoch would take longer, time this many seconds' worth "
                         "of steps and scale to the epoch (labelled 'est.')")
    ap.add_argument("--resnet-batch", type=int, default=None, help="default 128 (quick 2)")
    ap.add_argument("--resnet-steps", type=int, default=None, help="timed steps (default 10)")
    ap.add_argument("--conv-repeats", type=int, default=None, help="timed calls (default 10)")
    args = ap.parse_args(argv)
    q = args.quick
    args.lenet_images = args.lenet_images or (300 if q else 60000)
    args.lenet_warmup = 2 if q else 20
    args.resnet_batch = args.resnet_batch or (2 if q else 128)
    args.resnet_warmup = 1 if q else 3
    args.resnet_steps = args.resnet_steps or (1 if q else 10)
    args.conv_warmup = 1 if q else 2
    args.conv_repeats = args.conv_repeats or (2 if q else 10)
    args.conv_shapes = CONV_SHAPES_QUICK if q else CONV_SHAPES
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    return args


def set_tf32(enabled):
    """TF32 on both sides. CuPy reads CUPY_TF32 at its first float32 matrix product (and keeps
    it for the process), so main() calls this before minidl touches the GPU."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    # the legacy flags only: mixing them with the newer fp32_precision API makes PyTorch
    # raise when it reads them back
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_report(device):
    """What each side will really use, read back."""
    parts = [f"CUPY_TF32={os.environ.get('CUPY_TF32')}"]
    try:
        parts.append(f"torch matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
        parts.append(f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    except Exception as exc:  # a PyTorch that refuses to read the legacy flags back
        parts.append(f"torch flags unreadable ({exc})")
    if device == "cuda":
        try:
            import importlib
            minidl.backend.require_cupy()
            rl = importlib.import_module("cupy._core._routines_linalg")
            names = {getattr(rl, n): n[len("COMPUTE_TYPE_"):].lower()
                     for n in dir(rl) if n.startswith("COMPUTE_TYPE_")}
            ct = rl.get_compute_type(np.float32)
            parts.append(f"CuPy float32 compute type={names.get(ct, ct)}")
        except Exception as exc:  # internal CuPy API: informative only
            parts.append(f"CuPy compute type unknown ({type(exc).__name__})")
    return ", ".join(parts)


def _version(v):
    """CUDA's integer versions (13000) as '13.0'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def environment(device, tf32):
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "tf32": tf32,
           "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "minidl": f"{minidl.__version__} ({_commit()})",
           "device": device}
    if device == "cuda":
        cp = minidl.backend.require_cupy()
        rt = cp.cuda.runtime
        items = {
            "gpu": lambda: minidl.cuda.get_device_name(0),
            "gpu (torch)": lambda: torch.cuda.get_device_name(0),
            "capability": lambda: "%d.%d" % minidl.cuda.get_device_capability(0),
            "gpu memory GiB": lambda: round(rt.getDeviceProperties(0)["totalGlobalMem"] / 2**30, 1),
            "driver": _driver_version,
            "cuda driver API": lambda: _version(rt.driverGetVersion()),
            "cuda runtime (CuPy)": lambda: _version(rt.runtimeGetVersion()),
            "cuda (torch build)": lambda: torch.version.cuda,
            "cudnn (torch)": lambda: torch.backends.cudnn.version(),
            "cupy": lambda: cp.__version__,
        }
        for key, get in items.items():  # one unreadable item must not stop the benchmark
            try:
                env[key] = get()
            except Exception as exc:
                env[key] = f"? ({type(exc).__name__}: {exc})"
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["torch threads"] = torch.get_num_threads()
    env["tf32 flags"] = tf32_report(device)
    return env


def _commit():
    """The checkout's commit and whether files differ from it (no git: 'no git')."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", HERE, *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=20)
        head = run("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "no git"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" + local changes" if dirty else "")
    except Exception:
        return "no git"


def _driver_version():
    """The display driver's version (e.g. 580.65.06), from nvidia-smi."""
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    return smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "?"


class Bench:
    """The device both libraries run on, and how to wait for it, time and measure."""

    def __init__(self, device):
        self.device = device
        self.cuda = device == "cuda"
        self.tdev = torch.device("cuda:0" if self.cuda else "cpu")

    def sync(self):
        if self.cuda:
            minidl.cuda.synchronize()
            torch.cuda.synchronize()

    def clock(self):
        """Seconds, after everything queued so far has finished."""
        self.sync()
        return time.perf_counter()

    def free(self):
        gc.collect()
        if self.cuda:
            self.sync()
            minidl.cuda.empty_cache()
            torch.cuda.empty_cache()

    def peak(self, lib, fn):
        """(peak bytes, resident bytes before) of one untimed call of ``fn``; None on the CPU.

        minidl's counter wraps CuPy's allocator with a Python function; it is taken out again
        afterwards, so timings elsewhere run on CuPy's plain pool."""
        if not self.cuda:
            return None
        try:
            return self._peak(lib, fn)
        except Exception:  # a memory counter that fails must not cost the timings
            traceback.print_exc()
            return None

    def _peak(self, lib, fn):
        gc.collect()
        self.sync()
        if lib == "minidl":
            base = minidl.cuda.memory_allocated()
            minidl.cuda.reset_peak_memory_stats()
            try:
                fn()
                self.sync()
                peak = minidl.cuda.max_memory_allocated()
            finally:
                cp = minidl.backend.require_cupy()
                cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
        else:
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            self.sync()
            peak = torch.cuda.max_memory_allocated()
        return peak, base


def to_numpy_state(module):
    """minidl state_dict -> {name: NumPy array} (a copy, from any device)."""
    return {k: minidl.backend.to_numpy(v.data).copy() for k, v in module.state_dict().items()}


def load_into_torch(tmodule, state):
    tmodule.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})


def log_memory(log, mem):
    """One line: each side's peak and what was resident before the measured step."""
    if all(v is None for v in mem.values()):
        return
    log("  peak memory: " + ", ".join(
        f"{name} {v[0] / MiB:.0f} MiB (resident before the step {v[1] / MiB:.0f} MiB)"
        for name, v in mem.items() if v is not None))


def loss_check(lm, lt):
    diff = abs(lm - lt)
    return {"minidl": lm, "torch": lt, "absdiff": diff,
            "text": f"loss {lm:.5f} / {lt:.5f} (diff {diff:.1e})"}


# ----------------------------------------------------------------------------- workloads

def make_sgd(lib, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """SGD with weight decay on weights only (biases and norm parameters: none)."""
    params = list(model.parameters())
    if not weight_decay:
        return lib.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return lib.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}],
                         lr=lr, momentum=momentum, nesterov=nesterov)


def train_step(net, opt, loss_fn, x, y):
    """One step, written once for both libraries (same API); returns the loss as a float."""
    opt.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def bench_lenet(b, args, log):
    n, batch = args.lenet_images, 100
    steps_per_epoch = n // batch
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, n)
    minidl.manual_seed(0)
    mnet = lenet(minidl)
    tnet = lenet(torch)
    load_into_torch(tnet, to_numpy_state(mnet))
    mnet.to(b.device)
    tnet.to(b.tdev)
    sides = {
        "minidl": dict(net=mnet, X=minidl.tensor(x, device=b.device),
                       Y=minidl.tensor(y, device=b.device), lib=minidl),
        "torch": dict(net=tnet, X=torch.from_numpy(x).to(b.tdev),
                      Y=torch.from_numpy(y).to(b.tdev), lib=torch),
    }
    del x, y
    for s in sides.values():
        s["opt"] = s["lib"].optim.SGD(s["net"].parameters(), lr=0.01)
        s["loss_fn"] = s["lib"].nn.CrossEntropyLoss()

    def order(seed):
        perm = np.random.default_rng(seed).permutation(n)
        return {"minidl": minidl.tensor(perm, device=b.device),
                "torch": torch.from_numpy(perm).to(b.tdev)}

    def run(name, perm, start, count):
        s = sides[name]
        idx_all, losses = perm[name], []
        for i in range(start, start + count):
            idx = idx_all[i * batch:(i + 1) * batch]
            losses.append(train_step(s["net"], s["opt"], s["loss_fn"], s["X"][idx], s["Y"][idx]))
        return losses

    # warm-up: the first step alone (compilation, library start-up), then the rest
    warm = order(1)
    warmup = min(args.lenet_warmup, steps_per_epoch)
    first_loss, wu, per_step = {}, {}, {}
    for name in sides:
        t0 = b.clock()
        first_loss[name] = run(name, warm, 0, 1)[0]
        t1 = b.clock()
        run(name, warm, 1, warmup - 1)
        t2 = b.clock()
        wu[name] = t2 - t0
        per_step[name] = (t2 - t1) / max(1, warmup - 1)
        log(f"  {name:6s} warm-up: first step {1e3 * (t1 - t0):.0f} ms, {warmup} steps "
            f"{t2 - t0:.2f} s ({1e3 * per_step[name]:.2f} ms/step after the first)")
    check = loss_check(first_loss["minidl"], first_loss["torch"])
    log(f"  first step (same weights, same batch): {check['text']}")

    # timed epochs, interleaved (minidl, torch, minidl, torch)
    est_epoch = max(per_step.values()) * steps_per_epoch
    epochs = args.lenet_epochs or (1 if args.quick or est_epoch > 20 else 2)
    times = {name: [] for name in sides}
    estimated = {}
    for e in range(epochs):
        perm = order(100 + e)
        for name in sides:
            count = steps_per_epoch
            if per_step[name] * steps_per_epoch > args.max_epoch_s:
                count = max(10, min(steps_per_epoch, int(args.max_epoch_s / per_step[name])))
                estimated[name] = count
            t0 = b.clock()
            run(name, perm, 0, count)
            t1 = b.clock()
            times[name].append((t1 - t0) / count * steps_per_epoch * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}
    for name in sides:
        how = (f"estimated from {estimated[name]} of {steps_per_epoch} steps" if name in estimated
               else f"{len(times[name])} full epoch(s)")
        log(f"  {name:6s} epoch: {ms[name]:.0f} ms ({how}: "
            + ", ".join(f"{t:.0f}" for t in times[name]) + ")")

    # peak memory: one more step per side, untimed
    mem = {}
    for name in sides:
        mem[name] = b.peak(name, lambda name=name: run(name, warm, 0, 1))
    log_memory(log, mem)
    label = f"LeNet-5 epoch ({n} imgs, batch {batch})"
    if estimated:
        label += " est."
    return dict(key="lenet", workload=label, ms=ms, warmup_s=wu, mem=mem, check=check)


def torch_resnet18_small(num_classes=10):
    """minidl.models.resnet18(small_input=True) written in PyTorch with the same module names
    (torchvision's), so minidl's state_dict loads into it: 3x3/1 stem, no max pool."""
    tnn = torch.nn

    class BasicBlock(tnn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet18Small(tnn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.Identity()
            self.layer1 = self._make_layer(64, 1)
            self.layer2 = self._make_layer(128, 2)
            self.layer3 = self._make_layer(256, 2)
            self.layer4 = self._make_layer(512, 2)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512, num_classes)

        def _make_layer(self, planes, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = tnn.Sequential(
                    tnn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                    tnn.BatchNorm2d(planes))
            blocks = [BasicBlock(self.inplanes, planes, stride, downsample),
                      BasicBlock(planes, planes)]
            self.inplanes = planes
            return tnn.Sequential(*blocks)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18Small()


def bench_resnet(b, args, log):
    batch = args.resnet_batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    minidl.manual_seed(0)
    mnet = minidl.models.resnet18(small_input=True, num_classes=10)
    tnet = torch_resnet18_small(10)
    load_into_torch(tnet, to_numpy_state(mnet))
    mnet.to(b.device).train()
    tnet.to(b.tdev).train()
    sides = {
        "minidl": dict(net=mnet, lib=minidl, x=minidl.tensor(x, device=b.device),
                       y=minidl.tensor(y, device=b.device)),
        "torch": dict(net=tnet, lib=torch, x=torch.from_numpy(x).to(b.tdev),
                      y=torch.from_numpy(y).to(b.tdev)),
    }
    for s in sides.values():
        s["opt"] = make_sgd(s["lib"], s["net"], lr=0.05, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
        s["loss_fn"] = s["lib"].nn.CrossEntropyLoss()

    def step(name):
        s = sides[name]
        return train_step(s["net"], s["opt"], s["loss_fn"], s["x"], s["y"])

    first_loss, wu, per_step = {}, {}, {}
    for name in sides:
        t0 = b.clock()
        first_loss[name] = step(name)
        t1 = b.clock()
        for _ in range(args.resnet_warmup - 1):
            step(name)
        t2 = b.clock()
        wu[name] = t2 - t0
        per_step[name] = (t2 - t1) / max(1, args.resnet_warmup - 1) if args.resnet_warmup > 1 \
            else t1 - t0
        log(f"  {name:6s} warm-up: first step {1e3 * (t1 - t0):.0f} ms, "
            f"{args.resnet_warmup} steps {t2 - t0:.2f} s")
    check = loss_check(first_loss["minidl"], first_loss["torch"])
    log(f"  first step (same weights, same batch): {check['text']}")

    ms = {}
    for name in sides:
        n = args.resnet_steps
        if per_step[name] * n > 30:  # keep a slow side to about half a minute
            n = max(2, int(30 / per_step[name]))
        t0 = b.clock()
        for _ in range(n):
            step(name)
        ms[name] = (b.clock() - t0) / n * 1e3
        log(f"  {name:6s} step: {ms[name]:.2f} ms (mean of {n})")
    mem = {name: b.peak(name, lambda name=name: step(name)) for name in sides}
    log_memory(log, mem)
    return dict(key="resnet", workload=f"ResNet-18 small stem step (batch {batch}, 3x32x32)",
                ms=ms, warmup_s=wu, mem=mem, check=check)


def bench_conv(b, args, log, shape, oc, k, stride, padding):
    n, c, h, w = shape
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32),
              (rng.standard_normal((oc, c, k, k)) * 0.1).astype(np.float32),
              rng.standard_normal(oc).astype(np.float32)]
    mx = [minidl.tensor(a, device=b.device, requires_grad=True) for a in arrays]
    tx = [torch.tensor(a, device=b.tdev, requires_grad=True) for a in arrays]
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    g = rng.standard_normal((n, oc, oh, ow)).astype(np.float32)
    gy = {"minidl": minidl.tensor(g, device=b.device), "torch": torch.from_numpy(g).to(b.tdev)}
    mF = minidl.nn.functional
    tF = torch.nn.functional
    calls = {
        "minidl": (mx, lambda: mF.conv2d(*mx, stride=stride, padding=padding)),
        "torch": (tx, lambda: tF.conv2d(*tx, stride=stride, padding=padding)),
    }

    def call(name):
        inputs, fn = calls[name]
        for t in inputs:
            t.grad = None
        out = fn()
        out.backward(gy[name])
        return out

    wu, ms = {}, {}
    outs = {}
    for name in calls:
        t0 = b.clock()
        outs[name] = call(name)
        for _ in range(args.conv_warmup - 1):
            call(name)
        wu[name] = b.clock() - t0
    om = minidl.backend.to_numpy(outs["minidl"].data)
    ot = outs["torch"].detach().cpu().numpy()
    rel = float(np.abs(om - ot).max() / max(1e-12, float(np.abs(ot).max())))
    check = {"max_rel_diff": rel, "text": f"output max rel. diff {rel:.1e}"}
    del outs, om, ot
    for name in calls:  # interleaved calls, medians
        ms[name] = []
    for _ in range(args.conv_repeats):
        for name in calls:
            t0 = b.clock()
            call(name)
            ms[name].append((b.clock() - t0) * 1e3)
    ms = {name: statistics.median(v) for name, v in ms.items()}
    mem = {name: b.peak(name, lambda name=name: call(name)) for name in calls}
    log_memory(log, mem)
    label = (f"conv fwd+bwd ({n},{c},{h},{w}) {c}->{oc} {k}x{k}"
             + (f" s{stride}" if stride != 1 else "") + (f" p{padding}" if padding else ""))
    log(f"  minidl {ms['minidl']:.2f} ms, torch {ms['torch']:.2f} ms (medians of "
        f"{args.conv_repeats}); first call: {check['text']}")
    return dict(key="conv", workload=label, ms=ms, warmup_s=wu, mem=mem, check=check)


# ----------------------------------------------------------------------------- output

def fmt_row(r):
    mode = r["tf32"]
    if r.get("error"):
        return [mode, r["workload"], "error", "error", "", "", "", "", "", r["error"][:80]]
    ms = r["ms"]
    ratio = ms["minidl"] / ms["torch"]
    goal = GOALS.get(r["key"])
    goal_s = "" if goal is None else (f"<= {goal:.1f} " + ("met" if ratio <= goal else "not met"))
    mem = r.get("mem") or {}

    def mib(v):
        return "n/a" if not v else f"{v[0] / MiB:.0f}"
    wu = r["warmup_s"]
    return [mode, r["workload"], f"{ms['minidl']:.2f}", f"{ms['torch']:.2f}", f"{ratio:.2f}",
            goal_s, mib(mem.get("minidl")), mib(mem.get("torch")),
            f"{wu['minidl']:.2f} / {wu['torch']:.2f}", r["check"]["text"]]


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in fmt_row(r)) + " |")
    return "\n".join(lines)


def print_header(env):
    print("=" * 78)
    print(f"bench_gpu: minidl vs PyTorch eager, {env['date']}, TF32 {env['tf32']}")
    for k, v in env.items():
        if k not in ("date", "tf32"):
            print(f"  {k:22s} {v}")
    print("=" * 78, flush=True)


def merge(paths):
    """Print one table from several --json files; returns 1 if any is missing or failed."""
    rows, status = [], 0
    for p in paths:
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"merge: cannot read {p}: {exc}")
            status = 1
            continue
        for run in data.get("modes", [data]):  # a --tf32 both file holds one run per mode
            env = run["env"]
            print(f"{p}: TF32 {env['tf32']}, {env.get('gpu', env.get('cpu', '?'))}, "
                  f"driver {env.get('driver', '-')}, "
                  f"CUDA runtime {env.get('cuda runtime (CuPy)', '-')}, "
                  f"CuPy {env.get('cupy', '-')}, PyTorch {env['torch']}, NumPy {env['numpy']}, "
                  f"{env['date']}{'' if run.get('complete') else ' (INCOMPLETE)'}")
            rows += run["rows"]
            status |= int(any(r.get("error") for r in run["rows"]) or not run.get("complete"))
    print()
    print(markdown_table(rows))
    return status


def strip_options(argv, names):
    """``argv`` without the options ``names`` and their values (``--x v`` or ``--x=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def run_both(args, argv):
    """Each TF32 mode in its own child process (CuPy reads CUPY_TF32 once), then one table."""
    base = strip_options(sys.argv[1:] if argv is None else argv, ("--tf32", "--json"))
    status = 0
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on"):
            path = os.path.join(tmp, f"tf32_{mode}.json")
            env = dict(os.environ, CUPY_TF32="1" if mode == "on" else "0")
            rc = subprocess.call([sys.executable, os.path.abspath(__file__), *base,
                                  "--tf32", mode, "--json", path], env=env)
            status |= int(rc != 0)
            paths.append(path)
        print("\n## both TF32 modes")
        status |= merge(paths)
        if args.json:
            combined = {"modes": []}
            for p in paths:
                if os.path.exists(p):
                    with open(p) as f:
                        combined["modes"].append(json.load(f))
            with open(args.json, "w") as f:
                json.dump(combined, f, indent=1)
    return status


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge)
    if args.tf32 == "both":
        return run_both(args, argv)
    set_tf32(args.tf32 == "on")  # first: before any CuPy matrix product
    if args.device == "cuda" and not minidl.cuda.is_available():
        print("bench_gpu: no GPU for minidl (" + _why_no_gpu() + "); run with --device cpu "
              "--quick to check the script on the CPU")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: PyTorch sees no GPU (a CPU-only build?)")
        return 2
    if args.device == "cpu" and args.threads:
        from bench_ops import set_threads
        set_threads(args.threads)
    b = Bench(args.device)
    env = environment(args.device, args.tf32)
    print_header(env)

    workloads = []
    if not args.only or "conv" in args.only:
        for shape, oc, k, s, p in args.conv_shapes:
            workloads.append((f"conv {shape} {oc}",
                              lambda log, shape=shape, oc=oc, k=k, s=s, p=p:
                              bench_conv(b, args, log, shape, oc, k, s, p)))
    if not args.only or "lenet" in args.only:
        workloads.append(("LeNet-5 epoch", lambda log: bench_lenet(b, args, log)))
    if not args.only or "resnet" in args.only:
        workloads.append(("ResNet-18 step", lambda log: bench_resnet(b, args, log)))

    rows = []
    result = {"env": env, "rows": rows, "complete": False}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=float)

    def log(msg):
        print(f"[tf32 {args.tf32}] {msg}", flush=True)

    t_start = time.perf_counter()
    for name, fn in workloads:
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            row = fn(log)
        except Exception as exc:  # report, keep going with the next workload
            traceback.print_exc()
            row = dict(key="error", workload=name, error=f"{type(exc).__name__}: {exc}")
        row["tf32"] = args.tf32
        rows.append(row)
        if not row.get("error"):
            log(" | ".join(fmt_row(row)))
        log(f"{name} done in {time.perf_counter() - t0:.1f} s")
        try:
            b.free()
        except Exception:  # e.g. a sticky CUDA error from the failed workload
            traceback.print_exc()
        save()
    result["complete"] = True
    result["seconds"] = time.perf_counter() - t_start
    save()
    print(f"\n## TF32 {args.tf32}: {result['seconds']:.0f} s in all\n")
    print(markdown_table(rows), flush=True)
    return int(any(r.get("error") for r in rows))


def _why_no_gpu():
    try:
        minidl.backend.require_cupy()
    except RuntimeError as exc:
        return str(exc)
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
