"""``benchmarks/bench_models.py --quick`` runs (a smoke test: the script keeps working as
the models and the API change; it times nothing that a test asserts)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_models_quick_runs_and_prints_the_ratios():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "bench_models.py", "--quick", "--threads", "1"],
                         cwd=os.path.join(ROOT, "benchmarks"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("  training step") and "ratio" in line for line in lines)
    assert any(line.startswith("  evaluation") and "ratio" in line for line in lines)
    assert "BLAS:" in lines[0] and "threads used:" in lines[-1]
