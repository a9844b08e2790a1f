"""numba's compile cost, cold and warm: what the first LeNet step costs a user.

    python benchmarks/bench_jit.py [--repeats 2]

minidl's numba kernels compile on first use and are cached on disk (``cache=True``), so
the first process on a machine pays the compilation (cold) and later ones load the cache
(warm). Each measurement runs in a fresh child process with its own, initially empty,
``NUMBA_CACHE_DIR``: the first child is cold, the next ``--repeats`` children, on the same
directory, are warm. Printed per child: seconds to ``import minidl``, to the end of the
first LeNet-5 training step (batch 100, the lecture's tanh model: forward, cross-entropy,
backward, SGD), and of the second step (compiled code, for scale), and last the cold and
warm first-step times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
import minidl
t1 = time.perf_counter()
from minidl import models
import minidl.nn.functional as F
net = models.lenet5()
opt = minidl.optim.SGD(net.parameters(), lr=0.01)
rng = np.random.default_rng(0)
x = minidl.tensor(rng.random((100, 1, 32, 32), dtype=np.float32))
y = minidl.tensor(rng.integers(0, 10, 100))
def step():
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()
step()
t2 = time.perf_counter()
step()
t3 = time.perf_counter()
with minidl.no_grad():
    net.eval()
    net(x)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_step": t2 - t1, "second_step": t3 - t2,
                  "first_eval": t4 - t3}))
"""


def run_child(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="warm children after the cold one")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="minidl-jit-") as cache:
        for k in range(1 + args.repeats):
            kind = "cold" if k == 0 else "warm"
            t0 = time.perf_counter()
            r = run_child(cache)
            r["process"] = time.perf_counter() - t0
            rows.append((kind, r))
            print(f"{kind}: import {r['import']:.2f} s, first step {r['first_step']:.2f} s, "
                  f"second step {r['second_step'] * 1e3:.1f} ms, first eval "
                  f"{r['first_eval'] * 1e3:.1f} ms (the whole process {r['process']:.1f} s)",
                  flush=True)
    warm = [r["first_step"] for kind, r in rows if kind == "warm"]
    print(f"first LeNet step: cold {rows[0][1]['first_step']:.2f} s (compiling), warm "
          f"{statistics.median(warm):.2f} s (cache) ")


if __name__ == "__main__":
    main()
