"""``benchmarks/bench_distributed.py --quick`` runs under ``mpiexec -n 1`` and ``-n 2`` (a
smoke test: the script keeps working as DDP and its ``_comm_stats`` change; no timing is
asserted). Skipped, with the reason, when mpi4py or mpiexec is missing."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from bench_distributed import fit_alpha_beta, mpi_missing  # noqa: E402

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_fit_recovers_alpha_and_beta_of_the_ring_model():
    for p in (2, 4):
        alpha, beta = 3e-6, 0.5e-9
        sizes = [8, 4096, 1 << 20, 64 << 20]
        points = [(n, 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta) for n in sizes]
        a, b = fit_alpha_beta(points, p)
        assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)


def test_bench_distributed_quick_prints_the_tables():
    missing = mpi_missing()
    if missing:
        pytest.skip(missing)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "bench_distributed.py", "--quick"],
                         cwd=os.path.join(ROOT, "benchmarks"), env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "BLAS:" in lines[0]

    rows = {}
    for line in lines:
        cells = _cells(line)
        if line.startswith("| ") and len(cells) == 11 and cells[0] in ("lenet", "resnet18") \
                and "(" in cells[3]:
            rows[(cells[0], cells[1])] = cells
    expected = {(m, p) for m in ("lenet", "resnet18")
                for p in ("1 (no DDP)", "1 (DDP)", "2 (DDP)")}
    assert set(rows) == expected, lines
    for (model, procs), cells in rows.items():
        median, low, high = map(float, re.fullmatch(
            rf"({NUMBER}) \(({NUMBER})-({NUMBER})\)", cells[3]).groups())
        assert 0 < low <= median <= high
        assert float(cells[4]) > 0                        # images/s
        assert float(cells[5]) >= 0                       # comm exposed ms
        assert re.fullmatch(rf"{NUMBER}%", cells[6])      # comm share
        assert float(cells[9]) > 0 and re.fullmatch(rf"{NUMBER}%", cells[10])
        if procs == "1 (no DDP)":
            assert cells[7] == "-" and cells[8] == "-" and cells[9] == "1.00"
        else:
            assert float(cells[7]) >= 0                   # standalone all-reduce ms
        if procs == "2 (DDP)":
            assert re.fullmatch(rf"{NUMBER}%", cells[8])  # overlap, bounded to [0, 100]
            assert 0 <= float(cells[8][:-1]) <= 100

    fit = [line for line in lines if line.startswith("alpha = ")]
    assert len(fit) == 1, lines
    alpha, beta = re.match(rf"alpha = ({NUMBER}) us per message, beta = ({NUMBER}) ns/byte",
                           fit[0]).groups()
    assert float(alpha) >= 0 and float(beta) >= 0
    assert any("no spare core" in line for line in lines)
    assert sum(line.startswith("threads used (") for line in lines) == 2
