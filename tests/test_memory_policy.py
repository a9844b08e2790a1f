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


# ----------------------------------------------------------------------------- output buffers

@pytest.fixture
def buffers(monkeypatch):
    """A fresh, empty output-buffer cache, switched on, under the 'retain' policy
    (restored after)."""
    from minidl.kernels import memory
    monkeypatch.setattr(memory._State, "policy", "retain")
    monkeypatch.setattr(memory._Buffers, "enabled", True)
    monkeypatch.setattr(memory._Buffers, "by_key", {})
    monkeypatch.setattr(memory._Buffers, "handouts", 0)
    return memory


def test_a_free_output_is_handed_out_again(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    assert a.shape == (64, 32) and a.dtype == np.float32 and a.flags.c_contiguous
    first = id(a)
    b = buffers.empty((64, 32), np.float32)          # a is still in use: another one
    assert id(b) != first
    assert buffers.cached_bytes() == (2 * a.nbytes, 0)
    del a
    assert buffers.cached_bytes() == (b.nbytes, b.nbytes)
    c = buffers.empty((64, 32), np.float32)
    assert id(c) == first                             # the free one, not a new one
    assert id(buffers.empty((64, 32), np.float64)) != first   # another dtype: its own


def test_a_view_or_a_memoryview_keeps_an_output_in_use(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    a[:] = 7
    view, mem = a[3:5].reshape(-1), memoryview(a)
    first = id(a)
    del a
    b = buffers.empty((64, 32), np.float32)
    assert id(b) != first
    b[:] = 0
    assert (view == 7).all() and np.frombuffer(mem, np.float32)[0] == 7   # untouched
    del view, b
    assert id(buffers.empty((64, 32), np.float32)) != first               # mem still holds it
    del mem
    assert id(buffers.empty((64, 32), np.float32)) == first


def test_a_read_only_output_comes_back_writeable(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    a.flags.writeable = False
    del a
    assert buffers.empty((64, 32), np.float32).flags.writeable


def test_small_outputs_are_not_cached_and_the_count_per_shape_is_bounded(buffers,
                                                                          monkeypatch):
    import numpy as np
    small = [buffers.empty((3, 4), np.float32) for _ in range(3)]
    assert buffers.cached_bytes() == (0, 0) and len({id(s) for s in small}) == 3
    monkeypatch.setattr(buffers, "MAX_PER_KEY", 2)
    held = [buffers.empty((64, 32), np.float32) for _ in range(4)]   # 2 kept, 2 not
    assert buffers.cached_bytes() == (2 * held[0].nbytes, 0)


def test_stale_free_outputs_go_back_and_release_gives_back_every_free_one(buffers,
                                                                           monkeypatch):
    import numpy as np
    monkeypatch.setattr(buffers, "STALE_HANDOUTS", 3)
    keep = buffers.empty((64, 32), np.float32)
    buffers.empty((128, 32), np.float32)                     # free at once
    for _ in range(3):
        buffers.empty((64, 32), np.float64)                  # hits after the first
    assert buffers.cached_bytes()[1] == 128 * 32 * 4 + 64 * 32 * 8
    buffers.empty((256, 32), np.float32)                     # a miss: the stale one goes
    assert buffers.cached_bytes() == (keep.nbytes, 64 * 32 * 8 + 256 * 32 * 4)
    buffers.release_buffers()
    assert buffers.cached_bytes() == (keep.nbytes, 0)


def test_the_system_policy_uses_numpy_and_empties_the_cache(buffers):
    import numpy as np
    buffers.empty((64, 32), np.float32)
    assert buffers.cached_bytes()[1] > 0
    if buffers._glibc() is not None:
        try:
            assert minidl.set_memory_policy("system") == "system"
            assert buffers.cached_bytes() == (0, 0)
            buffers.empty((64, 32), np.float32)
            assert buffers.cached_bytes() == (0, 0)          # np.empty, nothing kept
        finally:
            minidl.set_memory_policy("retain")


def test_threads_never_share_an_output(buffers):
    """Eight Python threads taking and dropping outputs of one shape: no array is ever
    handed to two holders at once."""
    import threading
    import numpy as np
    errors = []

    def work(k):
        for _ in range(300):
            a = buffers.empty((64, 32), np.int64)
            a.fill(k)
            if not (a == k).all():
                errors.append(k)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_the_cache_is_off_unless_asked_for(buffers, monkeypatch):
    import numpy as np
    monkeypatch.setattr(buffers._Buffers, "enabled", False)
    a = buffers.empty((64, 32), np.float32)
    z = buffers.zeros((64, 32), np.float32)
    assert buffers.cached_bytes() == (0, 0) and not z.any()
    assert minidl.set_buffer_cache(True) is True
    a = buffers.empty((64, 32), np.float32)
    del a
    assert buffers.cached_bytes() == (0, 64 * 32 * 4)
    z = buffers.zeros((64, 32), np.float32)            # the free one, zeroed
    assert not z.any() and buffers.cached_bytes() == (64 * 32 * 4, 0)
    del z
    assert minidl.set_buffer_cache(False) is False      # free ones go back at once
    assert buffers.cached_bytes() == (0, 0)
    with pytest.raises(ValueError, match="set_buffer_cache: flag must be True or False, "
                                         "got None"):
        minidl.set_buffer_cache(None)
