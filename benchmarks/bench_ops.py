"""minidl next to PyTorch (CPU), one process, same thread count: forward+backward per op.

    python benchmarks/bench_ops.py [--threads 2] [--repeats 15] [--only conv]

For each case both sides run interleaved (minidl, torch, minidl, torch, ...) after a
warm-up that also absorbs numba's JIT; the table shows medians in milliseconds and the
ratio minidl / PyTorch (below 1.0: minidl is faster). Each timing is a block of calls
lasting at least ``BLOCK_MS`` (one call for the big cases, tens for cross-entropy):
a single call of a few tens of microseconds is below the timer's and the scheduler's noise. The thread counts each side really
used are printed first, since OpenBLAS, numba and PyTorch's OpenMP can fight over cores.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as TF

import minidl
import minidl.nn.functional as F


def conv_case(n, c, oc, h, w, k, stride=1, padding=0):
    def make(lib):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((oc, c, k, k)) * 0.1).astype(np.float32)
        b = rng.standard_normal(oc).astype(np.float32)
        if lib == "torch":
            xs = [torch.tensor(a, requires_grad=True) for a in (x, wt, b)]
            return xs, lambda: TF.conv2d(*xs, stride=stride, padding=padding)
        xs = [minidl.tensor(a, requires_grad=True) for a in (x, wt, b)]
        return xs, lambda: F.conv2d(*xs, stride=stride, padding=padding)
    return make


def pool_case(n, c, h, w, k, stride, padding=0):
    def make(lib):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        if lib == "torch":
            t = torch.tensor(x, requires_grad=True)
            return [t], lambda: TF.max_pool2d(t, k, stride, padding)
        t = minidl.tensor(x, requires_grad=True)
        return [t], lambda: F.max_pool2d(t, k, stride, padding)
    return make


def bn_case(n, c, h, w):
    def make(lib):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        if lib == "torch":
            xs = [torch.tensor(a, requires_grad=True) for a in (x, g, b)]
            rm, rv = torch.zeros(c), torch.ones(c)
            return xs, lambda: TF.batch_norm(xs[0], rm, rv, xs[1], xs[2], training=True)
        xs = [minidl.tensor(a, requires_grad=True) for a in (x, g, b)]
        rm, rv = minidl.zeros(c), minidl.ones(c)
        return xs, lambda: F.batch_norm(xs[0], rm, rv, xs[1], xs[2], training=True)
    return make


def linear_case(n, i, o):
    def make(lib):
        rng = np.random.default_rng(0)
        arrays = (rng.standard_normal((n, i)).astype(np.float32),
                  (rng.standard_normal((o, i)) * 0.05).astype(np.float32),
                  rng.standard_normal(o).astype(np.float32))
        if lib == "torch":
            xs = [torch.tensor(a, requires_grad=True) for a in arrays]
            return xs, lambda: TF.linear(*xs)
        xs = [minidl.tensor(a, requires_grad=True) for a in arrays]
        return xs, lambda: F.linear(*xs)
    return make


def matmul_case(shape_a, shape_b):
    """a @ b with leading (batch) dims, as attention's scores and mixing are."""
    def make(lib):
        rng = np.random.default_rng(0)
        arrays = (rng.standard_normal(shape_a).astype(np.float32),
                  rng.standard_normal(shape_b).astype(np.float32))
        t = torch.tensor if lib == "torch" else minidl.tensor
        xs = [t(a, requires_grad=True) for a in arrays]
        return xs, lambda: xs[0] @ xs[1]
    return make


def cross_entropy_case(n, classes):
    """Mean cross-entropy of (n, classes) logits; backward from a scalar upstream gradient."""
    def make(lib):
        rng = np.random.default_rng(0)
        logits = rng.standard_normal((n, classes)).astype(np.float32)
        target = rng.integers(0, classes, n)
        if lib == "torch":
            x, t = torch.tensor(logits, requires_grad=True), torch.tensor(target)
            return [x], lambda: TF.cross_entropy(x, t)
        x, t = minidl.tensor(logits, requires_grad=True), minidl.tensor(target)
        return [x], lambda: F.cross_entropy(x, t)
    return make


CASES = {
    "conv LeNet c1 (100,1,32,32) 1->6 5x5": conv_case(100, 1, 6, 32, 32, 5),
    "conv LeNet c2 (100,6,14,14) 6->16 5x5": conv_case(100, 6, 16, 14, 14, 5),
    "conv ResNet (32,64,56,56) 64->64 3x3 p1": conv_case(32, 64, 64, 56, 56, 3, 1, 1),
    "conv ResNet (32,256,28,28) 256->512 3x3 s2 p1": conv_case(32, 256, 512, 28, 28, 3, 2, 1),
    # ResNet-18 with the small-input stem (3x3, no max pool) on 3x32x32, batch 32: every
    # distinct convolution of benchmarks/bench_models.py's model, and its head.
    "conv R18s stem (32,3,32,32) 3->64 3x3 p1": conv_case(32, 3, 64, 32, 32, 3, 1, 1),
    "conv R18s (32,64,32,32) 64->64 3x3 p1": conv_case(32, 64, 64, 32, 32, 3, 1, 1),
    "conv R18s (32,64,32,32) 64->128 3x3 s2 p1": conv_case(32, 64, 128, 32, 32, 3, 2, 1),
    "conv R18s (32,64,32,32) 64->128 1x1 s2": conv_case(32, 64, 128, 32, 32, 1, 2, 0),
    "conv R18s (32,128,16,16) 128->128 3x3 p1": conv_case(32, 128, 128, 16, 16, 3, 1, 1),
    "conv R18s (32,128,16,16) 128->256 3x3 s2 p1": conv_case(32, 128, 256, 16, 16, 3, 2, 1),
    "conv R18s (32,128,16,16) 128->256 1x1 s2": conv_case(32, 128, 256, 16, 16, 1, 2, 0),
    "conv R18s (32,256,8,8) 256->256 3x3 p1": conv_case(32, 256, 256, 8, 8, 3, 1, 1),
    "conv R18s (32,256,8,8) 256->512 3x3 s2 p1": conv_case(32, 256, 512, 8, 8, 3, 2, 1),
    "conv R18s (32,256,8,8) 256->512 1x1 s2": conv_case(32, 256, 512, 8, 8, 1, 2, 0),
    "conv R18s (32,512,4,4) 512->512 3x3 p1": conv_case(32, 512, 512, 4, 4, 3, 1, 1),
    "batchnorm R18s (32,64,32,32) train": bn_case(32, 64, 32, 32),
    "linear R18s (32,512) 512->10": linear_case(32, 512, 10),
    "cross-entropy (32,10)": cross_entropy_case(32, 10),
    "cross-entropy (100,10)": cross_entropy_case(100, 10),
    "maxpool LeNet (100,6,28,28) 2x2/2": pool_case(100, 6, 28, 28, 2, 2),
    "maxpool LeNet (100,16,10,10) 2x2/2": pool_case(100, 16, 10, 10, 2, 2),
    "maxpool ResNet (32,64,112,112) 3x3/2 p1": pool_case(32, 64, 112, 112, 3, 2, 1),
    "maxpool GoogLeNet (32,192,8,8) 3x3/2": pool_case(32, 192, 8, 8, 3, 2),
    "maxpool GoogLeNet (32,256,4,4) 3x3/1 p1": pool_case(32, 256, 4, 4, 3, 1, 1),
    "maxpool GoogLeNet (32,512,2,2) 3x3/1 p1": pool_case(32, 512, 2, 2, 3, 1, 1),
    "batchnorm (32,64,56,56) train": bn_case(32, 64, 56, 56),
    "batchnorm (100,6,28,28) train": bn_case(100, 6, 28, 28),
    "batchnorm MobileNet (32,320,4,4) train": bn_case(32, 320, 4, 4),
    "matmul (64,128,64)@(64,64,128)": matmul_case((64, 128, 64), (64, 64, 128)),
    "matmul (8,4,128,64)@(8,4,64,128)": matmul_case((8, 4, 128, 64), (8, 4, 64, 128)),
}


def step(lib, inputs, fn, gy):
    for t in inputs:
        t.grad = None
    fn().backward(gy)


BLOCK_MS = 2.0


def time_case(make, repeats):
    runs = {}
    calls = 1
    for lib in ("minidl", "torch"):
        inputs, fn = make(lib)
        out = fn()
        shape = tuple(out.shape)
        g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        gy = torch.tensor(g) if lib == "torch" else minidl.tensor(g)
        runs[lib] = (inputs, fn, gy)
        for _ in range(2):  # warm-up (and numba JIT)
            step(lib, inputs, fn, gy)
        t0 = time.perf_counter()
        step(lib, inputs, fn, gy)
        once = max(time.perf_counter() - t0, 1e-7)
        calls = max(calls, int(np.ceil(BLOCK_MS / 1e3 / once)))   # one count for both sides
    times = {"minidl": [], "torch": []}
    for _ in range(repeats):
        for lib in ("minidl", "torch"):
            t0 = time.perf_counter()
            for _ in range(calls):
                step(lib, *runs[lib])
            times[lib].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def blas_kernel():
    """The BLAS library NumPy runs, its version and compute kernel (threadpoolctl), and a
    warning when the environment forces OpenBLAS's kernel (some machines here set
    OPENBLAS_CORETYPE for old OpenBLAS builds; a current NumPy then runs slower products:
    unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the benchmark command alone)."""
    import os
    from threadpoolctl import threadpool_info
    text = "; ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                     for i in threadpool_info() if i["user_api"] == "blas")
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        text += f" [kernel forced by OPENBLAS_CORETYPE={forced}]"
    return text + "; " + vector_code()


def vector_code():
    """The CPU each side compiles or dispatches for: numba's target CPU (its LLVM name)
    and PyTorch's CPU capability. ``benchmarks/avx2.sh`` restricts both (and OpenBLAS)
    to AVX2 on an AVX-512 machine."""
    import llvmlite.binding as llvm
    import numba
    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    return f"numba for {cpu}, torch {torch.backends.cpu.get_cpu_capability()}"


def thread_report():
    from minidl.kernels import threads as minidl_threads
    policy = ("1 BLAS thread per product, products and kernels on numba's "
              f"{minidl.get_num_threads()} threads" if minidl_threads._SINGLE_BLAS.value
              else "the BLAS library's threads")
    kernels = ("numba kernels parallel from "
               f"{minidl_threads.PARALLEL_MIN_ELEMENTS} elements" if minidl_threads.parallel()
               else "numba kernels serial")
    lines = [f"torch threads: {torch.get_num_threads()}", f"minidl: {policy}, {kernels}"]
    try:
        import numba
        lines.append(f"numba threads: {numba.get_num_threads()} (layer {numba.threading_layer()})"
                     if _numba_used() else f"numba threads: {numba.get_num_threads()}")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            lines.append(f"{info['internal_api']} ({info['prefix']}): {info['num_threads']} threads")
    except ImportError:
        lines.append("threadpoolctl not installed: BLAS thread count unknown")
    return "; ".join(lines)


def _numba_used():
    try:
        import numba
        numba.threading_layer()
        return True
    except Exception:
        return False


def set_threads(n):
    """Give both sides ``n`` threads: PyTorch's intra-op pool, numba, and the BLAS library."""
    if not n:
        return
    torch.set_num_threads(n)
    try:
        import numba
        numba.set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: all cores)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--only", default="", help="run only cases whose name contains this text")
    args = ap.parse_args()
    set_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, "
          f"torch {torch.__version__}, numpy {np.__version__}; BLAS: {blas_kernel()}")
    results = []
    for name, make in CASES.items():
        if args.only and args.only not in name:
            continue
        r = time_case(make, args.repeats)
        results.append((name, r))
        print(f"{name:48s} minidl {r['minidl']:9.3f} ms  torch {r['torch']:9.3f} ms  "
              f"ratio {r['minidl'] / r['torch']:6.2f}", flush=True)
    print("threads used:", thread_report())


if __name__ == "__main__":
    main()
