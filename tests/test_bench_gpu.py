"""benchmarks/bench_gpu.py's logic, run on the CPU with tiny sizes (the GPU run has one go)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def run_script(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "off.json"
    proc = run_script("--device", "cpu", "--quick", "--tf32", "off", "--threads", "1",
                      "--json", str(path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout, path


WORKLOADS = ["conv fwd+bwd (2,8,14,14) 8->8 3x3 p1",
             "conv fwd+bwd (2,16,14,14) 16->32 3x3 s2 p1",
             "LeNet-5 epoch (300 imgs, batch 100)",
             "ResNet-18 small stem step (batch 2, 3x32x32)"]


def test_quick_cpu_run_prints_header_and_table(quick_run):
    out, _ = quick_run
    assert "bench_gpu: minidl vs PyTorch eager" in out and "TF32 off" in out
    for key in ("numpy", "torch", "minidl", "tf32 flags"):
        assert f"\n  {key} " in out, key
    assert "CUPY_TF32=0" in out and "cudnn.allow_tf32=False" in out
    assert "| TF32 | workload | minidl ms | PyTorch ms | ratio | goal |" in out
    rows = [line for line in out.splitlines() if line.startswith("| off | ")]
    assert len(rows) == len(WORKLOADS)
    for row, name in zip(rows, WORKLOADS):
        assert row.startswith(f"| off | {name} | "), row
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 10, cells
        float(cells[2]), float(cells[3]), float(cells[4])   # ms, ms, ratio are numbers
    assert "<= 1.0" in rows[2] and "<= 1.5" in rows[3]          # the goals
    assert "warm-up: first step" in out                         # reported apart


def test_quick_cpu_run_json_both_sides_agree_at_the_first_step(quick_run):
    _, path = quick_run
    data = json.loads(path.read_text())
    assert data["complete"] and data["env"]["tf32"] == "off"
    assert [r["workload"] for r in data["rows"]] == WORKLOADS
    for r in data["rows"]:
        assert not r.get("error")
        assert r["ms"]["minidl"] > 0 and r["ms"]["torch"] > 0
        assert r["mem"] == {"minidl": None, "torch": None}     # no memory counters on the CPU
        if r["key"] == "conv":
            assert r["check"]["max_rel_diff"] < 1e-4
        else:  # same initial weights, same batch: the same loss
            assert r["check"]["absdiff"] < 1e-4, r["check"]


def test_merge_prints_one_table_from_json_files(quick_run, tmp_path):
    _, path = quick_run
    on = json.loads(path.read_text())
    on["env"]["tf32"] = "on"
    for r in on["rows"]:
        r["tf32"] = "on"
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"modes": [json.loads(path.read_text()), on]}))
    proc = run_script("--merge", str(path), str(both))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| o")]
    assert [line.split(" | ")[0] for line in rows] == ["| off"] * 8 + ["| on"] * 4
    missing = run_script("--merge", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stdout


def test_both_mode_passes_the_other_options_to_each_child():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--device", "cpu", "--tf32", "both", "--quick", "--json=x.json", "--only", "lenet"]
    assert mod.strip_options(argv, ("--tf32", "--json")) == ["--device", "cpu", "--quick",
                                                              "--only", "lenet"]
    args = mod.parse_args(["--quick"])
    assert args.lenet_images == 300 and args.resnet_batch == 2
    full = mod.parse_args([])
    assert full.lenet_images == 60000 and full.resnet_batch == 128 and full.tf32 == "both"
    assert full.conv_shapes == mod.CONV_SHAPES


def test_table_formats_gpu_memory_errors_and_goals():
    """The GPU-only cells (peak memory) and an error row, without a GPU."""
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    MiB = 1 << 20
    row = {"key": "resnet", "workload": "ResNet-18 step", "tf32": "on",
           "ms": {"minidl": 30.0, "torch": 20.0}, "warmup_s": {"minidl": 9.5, "torch": 1.25},
           "mem": {"minidl": [3000 * MiB, 100 * MiB], "torch": [1500 * MiB, 90 * MiB]},
           "check": {"text": "loss 2.3 / 2.3 (diff 1e-6)"}}
    bad = {"key": "error", "workload": "LeNet-5 epoch", "tf32": "on",
           "error": "RuntimeError: CUDA error | detail"}
    cells = mod.fmt_row(json.loads(json.dumps(row)))  # as read back from --json
    assert cells[:8] == ["on", "ResNet-18 step", "30.00", "20.00", "1.50", "<= 1.5 met",
                         "3000", "1500"]
    assert cells[8] == "9.50 / 1.25"
    table = mod.markdown_table([row, bad]).splitlines()
    assert len(table) == 4 and table[3].startswith("| on | LeNet-5 epoch | error | error |")
    assert "CUDA error \\| detail" in table[3]                  # a pipe cannot break the row
    lines = []
    mod.log_memory(lines.append, {"minidl": (3000 * MiB, 100 * MiB), "torch": None})
    assert lines == ["  peak memory: minidl 3000 MiB (resident before the step 100 MiB)"]
