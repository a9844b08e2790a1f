"""This process's memory figures from /proc/self/status, for the benchmarks' RSS columns
(no import of PyTorch or minidl: ``bench_lenet.py --child minidl`` must not load torch)."""
from __future__ import annotations


def status_mb(field):
    """A memory figure of this process in MB (``VmRSS``, ``VmHWM``: the peak since start
    or since ``/proc/self/clear_refs`` was written 5)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")
