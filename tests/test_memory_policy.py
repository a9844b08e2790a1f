"""The CPU memory policy (minidl/kernels/memory.py): 'retain' by default on glibc, so a
loop that allocates and frees large arrays reuses its pages instead of faulting them in
again; 'system' gives them back. Process-wide settings: each case runs in a fresh
interpreter."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import minidl

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocates and frees forty 8 MB arrays, writing each, and prints the minor page faults.
_LOOP = """
import resource, sys
import numpy as np
import minidl
if sys.argv[1] != "default":
    minidl.set_memory_policy(sys.argv[1])
print(minidl.get_memory_policy())
a = np.ones(2**21, np.float32); del a                # the first one may fault in
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = np.empty(2**21, np.float32)
    a.fill(1.0)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(policy):
    out = subprocess.run([sys.executable, "-c", _LOOP, policy], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the memory policy changes glibc's malloc only; "
                                      "this C library is not glibc")
def test_retain_reuses_pages_and_system_gives_them_back():
    policy, retained = _faults("default")
    assert policy == "retain"
    # 40 arrays of 8 MB are 80,000 pages of 4 KiB: retained, about none of them faults
    assert retained < 2_000, retained
    policy, system = _faults("system")
    assert policy == "system"
    assert system > 10 * max(retained, 1_000), (system, retained)   # faulted in afresh
    assert _faults("retain")[0] == "retain"


def test_policy_names_are_checked():
    with pytest.raises(ValueError, match=r"set_memory_policy: policy must be one of "
                                         r"\('retain', 'system'\), got 'keep'"):
        minidl.set_memory_policy("keep")
    assert minidl.get_memory_policy() in ("retain", "system")
    assert minidl.set_memory_policy(minidl.get_memory_policy()) == minidl.get_memory_policy()


def test_a_refused_default_warns_instead_of_failing_the_import(monkeypatch):
    """Where glibc's mallopt refuses, ``import minidl`` warns and goes on ('system')."""
    from minidl.kernels import memory

    class Refusing:
        @staticmethod
        def mallopt(param, value):
            return 0

    monkeypatch.setattr(memory._State, "libc", Refusing)
    monkeypatch.setattr(memory._State, "policy", "system")
    with pytest.raises(RuntimeError, match=r"set_memory_policy\('retain'\): glibc's mallopt "
                                           r"refused the thresholds"):
        minidl.set_memory_policy("retain")
    with pytest.warns(RuntimeWarning, match="the memory policy stays 'system'"):
        assert memory.apply_default_policy() == "system"
