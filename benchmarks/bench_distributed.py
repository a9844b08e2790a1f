"""Data-parallel training with ``DistributedDataParallel``: 1 process against 2 (MPI, CPU).

    python benchmarks/bench_distributed.py [--models lenet,resnet18] [--steps N]
                                           [--warmup 3] [--bucket-cap-mb 25] [--quick]

The script launches itself twice, under ``mpiexec -n 1`` and ``mpiexec -n 2``; every rank
runs with one thread (``minidl.set_num_threads(1)``, and one-thread BLAS/OpenMP pools).
Weak scaling, as DDP benchmarks usually are: every rank trains on its own batch of the same
size, so 2 processes do twice the work per step of 1.

- LeNet-5 (``minidl.models.lenet5()``), 1x32x32, batch 100 per rank.
- ResNet-18 with the small-input stem (``minidl.models.resnet18(small_input=True,
  num_classes=10)``), 3x32x32, batch 32 per rank.

Random float32 images and labels, cross-entropy, SGD (lr 0.01, momentum 0.9). After
``--warmup`` untimed steps, each of ``--steps`` steps (by default 200 for LeNet, 20 for
ResNet-18) is timed in parts: forward (with the loss), backward (which includes DDP's
gradient hooks, the all-reduces they start, and the wait for the last ones at its end),
optimizer step. The communication parts come from ``ddp._comm_stats`` (differences per
step). With 1 process the model runs both plainly (the baseline of the speedup) and wrapped
in DDP (its bookkeeping cost; the all-reduce of a single rank is a no-op).

Printed terms:

- ms/step: median over the timed steps (the slower rank's time, step by step), min-max.
- images/s: processes x batch per rank / median step time.
- speedup: images/s over 1 process without DDP; efficiency: speedup / processes.
- comm exposed: per step, the time spent inside MPI calls instead of computing: waiting at
  the end of backward, starting all-reduces, and polling them from the hooks (``wait_s +
  launch_s + progress_s``), taken on the rank that reached the end of backward last (the
  smaller of the two): the rank that arrives first also waits for the other one to finish
  computing, which is imbalance (shown apart, as the difference of the two waits), not
  communication. Copying gradients into and out of the buckets is shown apart (``copy``).
- standalone all-reduce: the same gradient buckets all-reduced with nothing else running
  (started back to back, then waited for), median of repeats.
- overlap: the share of that standalone communication hidden behind backward,
  ``1 - comm exposed / standalone all-reduce``, bounded to [0, 1] (only with 2 processes).
- alpha, beta: fitted to blocking all-reduce times over sizes 8 B .. 64 MiB with the ring
  all-reduce model ``T(n, p) = 2(p-1) alpha + 2(p-1)/p n beta`` (relative least squares).
- last, the scaling estimate of ``docs/distributed.md``: that model with nominal links
  (``LINKS``) and this run's 1-process compute times, for p = 2 ... 64.

On a 2-core machine the 2 ranks take both cores, so nothing is left for MPI's progress or
for anything else on the machine, and the two ranks share the memory bandwidth: the
2-process step is slower than the 1-process step even where the all-reduce is cheap.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (title, one sample's shape, batch per rank, batch per rank with --quick, timed
# steps by default: a LeNet step is ~100x shorter, so it gets more of them)
MODELS = {
    "lenet": ("LeNet-5", (1, 32, 32), 100, 8, 200),
    "resnet18": ("ResNet-18 small stem", (3, 32, 32), 32, 2, 20),
}


def build(name):
    import minidl.models as models
    if name == "lenet":
        return models.lenet5()
    return models.resnet18(small_input=True, num_classes=10)


# ----------------------------------------------------------------------------- child (a rank)

STAT_KEYS = ("copy_s", "launch_s", "progress_s", "wait_s")
COUNT_KEYS = ("launched", "launched_in_backward", "overlapped")


def train_timed(name, use_ddp, batch, steps, args):
    """Per-step timings (seconds) of ``steps`` training steps of ``name`` on this rank,
    after ``--warmup`` steps; ``use_ddp``: wrapped in DistributedDataParallel."""
    import minidl
    import minidl.distributed as dist
    import minidl.nn.functional as F

    minidl.manual_seed(0)
    model = build(name)
    if use_ddp:
        model = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb)
    opt = minidl.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(dist.get_rank())  # each rank its own batch
    x = minidl.tensor(rng.standard_normal((batch,) + MODELS[name][1]).astype(np.float32))
    y = minidl.tensor(rng.integers(0, 10, batch))
    stats = model._comm_stats if use_ddp else None

    rec = {k: [] for k in ("step", "forward", "backward", "optimizer") + STAT_KEYS}
    counts_before = None
    for i in range(args.warmup + steps):
        if i == args.warmup:
            dist.barrier()  # the ranks start the timed steps together
            counts_before = {k: stats[k] for k in COUNT_KEYS} if stats else None
        before = {k: stats[k] for k in STAT_KEYS} if stats else None
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i < args.warmup:
            continue
        for k, v in (("step", t3 - t0), ("forward", t1 - t0), ("backward", t2 - t1),
                     ("optimizer", t3 - t2)):
            rec[k].append(v)
        for k in STAT_KEYS:
            rec[k].append(stats[k] - before[k] if stats else 0.0)
    counts = ({k: stats[k] - counts_before[k] for k in COUNT_KEYS} if stats
              else dict.fromkeys(COUNT_KEYS, 0))
    layout = stats["bucket_bytes"] if stats else None
    return rec, counts, layout


def standalone_all_reduce(bucket_bytes, repeats):
    """Median seconds to all-reduce float32 buffers of ``bucket_bytes`` (DDP's buckets of
    one step), started back to back and then waited for, with nothing else running."""
    import minidl.distributed as dist
    from minidl.distributed.process_group import _start_all_reduce_sum

    bufs = [np.zeros(n // 4, dtype=np.float32) for n in bucket_bytes]
    times = []
    for i in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        works = [_start_all_reduce_sum("bench_distributed", b) for b in bufs]
        for w in works:
            w.wait()
        if i:  # the first one is a warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sweep_all_reduce(sizes):
    """[(bytes, median seconds of one blocking Allreduce)] on MPI.COMM_WORLD (the group's
    communicator): blocks of back-to-back calls after a barrier, as OSU's benchmarks do."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = []
    for n in sizes:
        buf = np.zeros(max(n // 4, 1), dtype=np.float32)
        reps = max(5, min(1000, int(2e8 / n)))  # ~0.05-0.5 s of calls per block
        for _ in range(2):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        blocks = []
        for _ in range(3):
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            blocks.append((time.perf_counter() - t0) / reps)
        out.append((buf.nbytes, statistics.median(blocks)))
    return out


def fit_alpha_beta(points, p):
    """(alpha s, beta s/byte) of ``T = 2(p-1) alpha + 2(p-1)/p n beta`` fitted to
    ``points`` [(n bytes, T s)] by least squares on the relative error (so the small sizes,
    which set alpha, weigh as much as the large ones, which set beta)."""
    n = np.array([q[0] for q in points], dtype=float)
    t = np.array([q[1] for q in points], dtype=float)
    a = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (c0, c1), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return max(c0, 0.0) / (2 * (p - 1)), max(c1, 0.0) * p / (2 * (p - 1))


def child(out_path, args):
    import minidl
    import minidl.distributed as dist
    from mpi4py import MPI

    dist.init_process_group(backend="mpi")
    minidl.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"world": world, "runs": []}
    for name in args.models.split(","):
        batch = MODELS[name][3] if args.quick else MODELS[name][2]
        steps = args.steps or MODELS[name][4]
        variants = [False, True] if world == 1 else [True]
        for use_ddp in variants:
            rec, counts, layout = train_timed(name, use_ddp, batch, steps, args)
            every = MPI.COMM_WORLD.gather(rec, root=0)
            run = {"model": name, "batch": batch, "ddp": use_ddp, "counts": counts,
                   "bucket_bytes": layout, "steps": steps}
            if rank == 0:
                # step by step: the slower rank's time (the step ends for both only then);
                # the parts: the mean over the ranks
                run["step"] = [max(r["step"][i] for r in every) for i in range(steps)]
                for k in ("forward", "backward", "optimizer") + STAT_KEYS:
                    run[k] = [statistics.fmean(r[k][i] for r in every)
                              for i in range(steps)]
                # The rank that reaches the end of backward first also waits for the other
                # one to finish computing; the last to arrive waits only for what is left of
                # the communication. So the step's exposed communication is the smaller of
                # the ranks' times in MPI, and the difference of the waits is imbalance.
                run["exposed_s"] = [min(r["wait_s"][i] + r["launch_s"][i] + r["progress_s"][i]
                                        for r in every) for i in range(steps)]
                run["imbalance_s"] = [max(r["wait_s"][i] for r in every)
                                      - min(r["wait_s"][i] for r in every)
                                      for i in range(steps)]
            if use_ddp:
                run["standalone_s"] = standalone_all_reduce(
                    layout, 3 if args.quick else (10 if name == "resnet18" else 50))
            result["runs"].append(run)
    if world > 1:
        sizes = ([8, 4096, 1 << 18, 1 << 21] if args.quick
                 else [8 << (3 * k) for k in range(8)] + [64 << 20])  # 8 B .. 16 MiB, 64 MiB
        points = sweep_all_reduce(sizes)
        result["sweep"] = points
        result["alpha_s"], result["beta_s_per_byte"] = fit_alpha_beta(points, world)
    if rank == 0:
        sys.path.insert(0, HERE)
        from bench_ops import thread_report  # here: the threads a rank really used
        result["threads"] = thread_report()
        result["mpi"] = " ".join(MPI.Get_library_version().splitlines()[0].split())
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- driver

def mpi_missing():
    """Why the benchmark cannot run here (a sentence), or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "minidl[distributed]")'
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (install an MPI library, e.g. the mpich wheel)"
    return None


def launch(n, args, tmp):
    """Run the child under ``mpiexec -n n``; its results (rank 0's JSON)."""
    out = os.path.join(tmp, f"n{n}.json")
    cmd = [shutil.which("mpiexec"), "-n", str(n), sys.executable, os.path.abspath(__file__),
           "--child", out, "--models", args.models, "--warmup", str(args.warmup),
           "--bucket-cap-mb", str(args.bucket_cap_mb)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.quick:
        cmd.append("--quick")
    # One thread per rank from the start: a BLAS or OpenMP pool started with a thread per
    # core would make 2 ranks x 2 threads fight over 2 cores even before set_num_threads.
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench_distributed: mpiexec -n {n} failed (exit "
                         f"{proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def ms(seconds):
    return seconds * 1e3


def mib(sizes):
    """Bucket sizes in MiB: '18.54 + 24.09'."""
    return " + ".join(f"{b / 2**20:.2f}" for b in sizes)


def summarise(run, world):
    """The table's numbers for one run (ms, images/s, shares)."""
    step = [ms(s) for s in run["step"]]
    med = statistics.median(step)
    exposed = statistics.median(ms(v) for v in run["exposed_s"])
    row = {"median": med, "min": min(step), "max": max(step),
           "images_s": world * run["batch"] / (med / 1e3), "exposed": exposed}
    for k in ("forward", "backward", "optimizer", "wait_s", "copy_s", "imbalance_s"):
        row[k] = statistics.median(ms(v) for v in run[k])
    row["launch_progress"] = statistics.median(
        ms(la + pr) for la, pr in zip(run["launch_s"], run["progress_s"]))
    if run["ddp"]:
        row["standalone"] = ms(run["standalone_s"])
        row["overlap"] = (min(1.0, max(0.0, 1.0 - exposed / row["standalone"]))
                          if world > 1 and row["standalone"] > 0 else None)
    return row


def report(results, args):
    """Print the tables (markdown, ready for benchmarks/RESULTS.md)."""
    base, rows = {}, []
    for res in results:
        world = res["world"]
        for run in res["runs"]:
            r = summarise(run, world)
            if world == 1 and not run["ddp"]:
                base[run["model"]] = r["images_s"]
            rows.append((run, world, r))
    print("\n| model | processes | batch/rank | ms/step median (min-max) | images/s | "
          "comm exposed ms/step | comm share | standalone all-reduce ms | overlap | "
          "speedup | efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run, world, r in rows:
        label = f"{world} (DDP)" if run["ddp"] else f"{world} (no DDP)"
        speedup = r["images_s"] / base[run["model"]]
        standalone = f"{r['standalone']:.2f}" if run["ddp"] else "-"
        overlap = "-" if not run["ddp"] or r["overlap"] is None else f"{r['overlap']:.0%}"
        print(f"| {run['model']} | {label} | {run['batch']} | {r['median']:.1f} "
              f"({r['min']:.1f}-{r['max']:.1f}) | {r['images_s']:.0f} | {r['exposed']:.2f} | "
              f"{r['exposed'] / r['median']:.1%} | {standalone} | {overlap} | "
              f"{speedup:.2f} | {speedup / world:.0%} |")
    print("\nWhere the step goes (ms, medians over the steps of the mean over the ranks; "
          "backward includes the hooks, the all-reduces and the final wait; imbalance: the "
          "difference of the ranks' waits):\n")
    print("| model | processes | forward | backward | of which wait | imbalance | copy "
          "into/out of buckets | launch + poll | optimizer | buckets (MiB) | launched in "
          "backward / step | overlapped / step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run, world, r in rows:
        label = f"{world} (DDP)" if run["ddp"] else f"{world} (no DDP)"
        c, steps = run["counts"], run["steps"]
        layout = (f"{len(run['bucket_bytes'])} ({mib(run['bucket_bytes'])})" if run["ddp"]
                  else "-")
        per = (lambda k: f"{c[k] / steps:.1f}") if run["ddp"] else (lambda k: "-")  # noqa: E731
        print(f"| {run['model']} | {label} | {r['forward']:.1f} | {r['backward']:.1f} | "
              f"{r['wait_s']:.2f} | {r['imbalance_s']:.2f} | {r['copy_s']:.2f} | "
              f"{r['launch_progress']:.2f} | "
              f"{r['optimizer']:.1f} | {layout} | {per('launched_in_backward')} | "
              f"{per('overlapped')} |")
    for res in results:
        if "sweep" not in res:
            continue
        p = res["world"]
        alpha, beta = res["alpha_s"], res["beta_s_per_byte"]
        print(f"\nBlocking all-reduce, {p} processes (fit of T = 2(p-1) alpha + 2(p-1)/p "
              f"n beta):\n")
        print("| bytes | measured us | fitted us |")
        print("|---|---|---|")
        for n, t in res["sweep"]:
            fit = ring_all_reduce_s(n, p, alpha, beta)
            print(f"| {n} | {t * 1e6:.1f} | {fit * 1e6:.1f} |")
        bw = f"{1e-9 / beta:.2f} GB/s" if beta > 0 else "unbounded (beta fitted as 0)"
        print(f"\nalpha = {alpha * 1e6:.2f} us per message, beta = {beta * 1e9:.4f} ns/byte "
              f"(1/beta = {bw}) [{res['mpi']}]")
    print("\noverlap = 1 - comm exposed / standalone all-reduce, bounded to [0, 1]: the share "
          "of the step's communication hidden behind backward (comm exposed = wait at the end "
          "of backward + starting the all-reduces + polling them from the hooks, on the rank "
          "that reached the end of backward last).")
    print("Note: 2 ranks on a 2-core machine leave no spare core: the ranks also compete "
          "for memory bandwidth (and with any other load), so the 2-process step is slower "
          "than the 1-process step even where communication is cheap.")
    for res in results:
        print(f"threads used ({res['world']} process{'es' if res['world'] > 1 else ''}, "
              f"rank 0): {res['threads']}")
    return rows


# ----------------------------------------------------------------------------- the estimate
# An alpha-beta model of ring all-reduce (docs/distributed.md explains it): every bucket is
# one all-reduce of 2(p-1) steps, each paying the latency alpha and moving n/p bytes at
# beta seconds per byte.

# name -> (description, alpha s, beta s/byte, the largest p it applies to or None)
LINKS = {
    "10gbe": ("10 GbE, TCP (alpha 50 us, 1.25 GB/s)", 50e-6, 1 / 1.25e9, None),
    "ib": ("100 Gb InfiniBand (alpha 2 us, 12 GB/s)", 2e-6, 1 / 12e9, None),
    "nvlink": ("NVLink + NCCL, one node (alpha 5 us, 100 GB/s)", 5e-6, 1 / 100e9, 8),
}
SCALE_P = (2, 4, 8, 16, 64)
# Assumed GPU step times (not measured here): a V100-class GPU in float32; a current GPU
# with mixed precision is 3-4x faster, which makes communication weigh 3-4x more.
GPU_STEP_S = {"lenet": 1e-3,      # LeNet-5, batch 100: ~100 kernel launches, launch-bound
              "resnet50": 0.1}    # ResNet-50 224x224, batch 64: ~640 images/s
GPU_BACKWARD_SHARE = 2 / 3        # backward ~ twice the forward's work
NODE_CORES = 16                   # "a 16-core node": compute / 16 (ideal, an upper bound)


def ring_all_reduce_s(nbytes, p, alpha, beta, messages=1):
    """Seconds to all-reduce ``nbytes`` over ``p`` ranks in ``messages`` all-reduces (ring):
    ``messages * 2(p-1) alpha + 2(p-1)/p nbytes beta``; 0 for one rank."""
    if p == 1:
        return 0.0
    return messages * 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def predicted_step_s(compute, backward, buckets, p, alpha, beta, overlap):
    """A step of ``compute`` seconds (``backward`` of them in backward) whose gradients are
    all-reduced in ``buckets`` (bytes, in launch order). Without overlap: compute + all
    the communication. With overlap, the best the bucketed design can do: every bucket but
    the last one (launched when backward ends) hides behind backward, so
    compute + max(the last bucket's all-reduce, all of it - backward)."""
    total = ring_all_reduce_s(sum(buckets), p, alpha, beta, len(buckets))
    if not overlap:
        return compute + total
    last = ring_all_reduce_s(buckets[-1], p, alpha, beta)
    return compute + max(last, total - backward)


def model_facts(bucket_cap_mb):
    """name -> (parameters, gradient bytes, bucket bytes in launch order, MACs per image)
    of LeNet-5 (1x32x32), ResNet-18 small stem (3x32x32) and ResNet-50 (3x224x224), float32,
    buckets as DistributedDataParallel assigns them for ``bucket_cap_mb``."""
    import minidl.models as models
    from minidl import summary
    from minidl.distributed.ddp import _assign_buckets

    facts = {}
    for name, model, shape in (("lenet", build("lenet"), (1, 32, 32)),
                               ("resnet18", build("resnet18"), (3, 32, 32)),
                               ("resnet50", models.resnet50(), (3, 224, 224))):
        params = [p for p in model.parameters() if p.requires_grad]
        buckets = [sum(p.data.nbytes for p in b) for b in
                   _assign_buckets(params, int(bucket_cap_mb * 1024 * 1024))]
        macs = summary(model, shape, verbose=False).total_macs
        facts[name] = (sum(p.numel() for p in params), sum(buckets), buckets, macs)
    return facts


def estimate(rows, results, args):
    """Print the scaling estimate: measured CPU compute (1 process, no DDP), assumed GPU
    compute, the links of LINKS; and the fitted model against the measured all-reduce."""
    facts = model_facts(args.bucket_cap_mb)
    print("\nGradients all-reduced per step (float32, bucket_cap_mb "
          f"{args.bucket_cap_mb:g}):\n")
    print("| model | input | parameters | gradient MB | buckets (MiB) | MACs per image |")
    print("|---|---|---|---|---|---|")
    titles = {"lenet": "LeNet-5", "resnet18": "ResNet-18 small stem",
              "resnet50": "ResNet-50 (224x224)"}
    shapes = {"lenet": "1x32x32", "resnet18": "3x32x32", "resnet50": "3x224x224"}
    for name, (n, nbytes, buckets, macs) in facts.items():
        print(f"| {titles[name]} | {shapes[name]} | {n:,} | {nbytes / 1e6:.2f} | "
              f"{mib(buckets)} | {macs / 1e9:.4f} G |")

    fitted = next((r for r in results if "sweep" in r), None)
    if fitted is not None:
        p, alpha, beta = fitted["world"], fitted["alpha_s"], fitted["beta_s_per_byte"]
        for run, world, r in rows:
            if run["ddp"] and world == p:
                b = run["bucket_bytes"]
                print(f"check, {run['model']}: the fit predicts "
                      f"{ms(ring_all_reduce_s(sum(b), p, alpha, beta, len(b))):.2f} ms for its "
                      f"buckets at p={p}; measured standalone: {r['standalone']:.2f} ms")

    base = {run["model"]: r for run, world, r in rows if world == 1 and not run["ddp"]}
    work = []  # (label, model, compute s, backward s, link names)
    cpu_links = ("10gbe", "ib")
    for name, r in base.items():
        compute, back = r["median"] / 1e3, r["backward"] / 1e3
        batch = next(run["batch"] for run, _, _ in rows if run["model"] == name)
        work.append((f"{titles[name]}, batch {batch}, 1 core (measured)", name, compute, back,
                     cpu_links))
        if name == "resnet18":
            work.append((f"{titles[name]}, batch {batch}, {NODE_CORES}-core node (measured / "
                         f"{NODE_CORES})", name, compute / NODE_CORES, back / NODE_CORES,
                         cpu_links))
            ratio = facts["resnet50"][3] / facts["resnet18"][3]
            work.append((f"{titles['resnet50']}, batch {batch}, 1 core (ResNet-18 x MACs "
                         f"ratio {ratio:.2f})", "resnet50", compute * ratio, back * ratio,
                         cpu_links))
            work.append((f"{titles['resnet50']}, batch {batch}, {NODE_CORES}-core node (the "
                         f"same / {NODE_CORES})", "resnet50", compute * ratio / NODE_CORES,
                         back * ratio / NODE_CORES, cpu_links))
    gpu_links = ("nvlink", "ib", "10gbe")
    for name, batch in (("lenet", 100), ("resnet50", 64)):
        t = GPU_STEP_S[name]
        work.append((f"{titles[name]}, batch {batch}, GPU (assumed "
                     f"{t * 1e3:g} ms)", name, t, t * GPU_BACKWARD_SHARE, gpu_links))

    print("\nScaling estimate, weak scaling (the batch per rank fixed): per cell the "
          "all-reduce time per step, then the efficiency (1-rank step / p-rank step) without "
          "overlap / with the bucketed overlap at best:\n")
    print("| workload | compute ms | link | " + " | ".join(f"p={p}" for p in SCALE_P) + " |")
    print("|---|---|---|" + "---|" * len(SCALE_P))
    for label, name, compute, back, links in work:
        buckets = facts[name][2]
        for link in links:
            desc, alpha, beta, pmax = LINKS[link]
            cells = []
            for p in SCALE_P:
                if pmax is not None and p > pmax:
                    cells.append("-")
                    continue
                comm = ring_all_reduce_s(sum(buckets), p, alpha, beta, len(buckets))
                serial = compute / predicted_step_s(compute, back, buckets, p, alpha, beta,
                                                    False)
                over = compute / predicted_step_s(compute, back, buckets, p, alpha, beta,
                                                  True)
                cells.append(f"{ms(comm):.3g} ms: {serial:.0%} / {over:.0%}")
            print(f"| {label} | {ms(compute):.4g} | {desc} | " + " | ".join(cells) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet,resnet18",
                    help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per run (default: 200 for LeNet, 20 for ResNet-18)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0,
                    help="DistributedDataParallel's bucket_cap_mb (MiB)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny batches, 2 steps, a short all-reduce sweep (a smoke test)")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds allowed for each mpiexec run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {unknown}; expected names from {list(MODELS)}")
    if args.quick:
        args.steps, args.warmup = 2, 1
    if args.child:
        return child(args.child, args)
    missing = mpi_missing()
    if missing:
        raise SystemExit(f"bench_distributed: cannot run: {missing}")
    sys.path.insert(0, HERE)
    from bench_models import cpu_description
    from bench_ops import blas_kernel
    load = os.getloadavg()
    print(f"{cpu_description()}; {time.strftime('%Y-%m-%d')}; numpy {np.__version__}; "
          f"BLAS: {blas_kernel()}")
    print(f"load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min); "
          f"{args.steps or 'default'} timed steps after {args.warmup} warm-up, bucket_cap_mb "
          f"{args.bucket_cap_mb:g}, 1 thread per rank", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [launch(n, args, tmp) for n in (1, 2)]
    rows = report(results, args)
    estimate(rows, results, args)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)")


if __name__ == "__main__":
    main()
