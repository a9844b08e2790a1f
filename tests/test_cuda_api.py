"""minidl.cuda: torch.cuda's names on CuPy.

Three layers of tests:
- in this process, on a machine without a GPU: what a CPU-only user sees;
- in a subprocess with a stand-in ``cupy`` package first on the path (broken, GPU-less, or
  a one-GPU simulation with a memory pool): the lazy import, the error messages and the
  peak-memory bookkeeping, the same on every machine;
- ``@pytest.mark.gpu`` cases against the real CuPy (``pytest -m gpu`` on a GPU machine).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minidl

ROOT = Path(__file__).resolve().parents[1]

RAISING = ["synchronize", "get_device_name", "get_device_capability", "current_device",
           "memory_allocated", "memory_reserved", "max_memory_allocated",
           "reset_peak_memory_stats", "empty_cache"]


# ----------------------------------------------------------------------------- CPU-only

def test_cuda_is_a_module_with_torch_names():
    import types
    assert isinstance(minidl.cuda, types.ModuleType)
    for name in ["is_available", "device_count", "manual_seed", "manual_seed_all", *RAISING]:
        assert callable(getattr(minidl.cuda, name)), name


def test_without_gpu_is_available_false_and_calls_say_what_is_missing():
    if minidl.cuda.is_available():
        pytest.skip("a GPU is present: this test checks what a CPU-only machine sees")
    assert minidl.cuda.is_available() is False
    assert minidl.cuda.device_count() == 0
    minidl.cuda.manual_seed(0)       # as torch.cuda.manual_seed: nothing to seed, no error
    minidl.cuda.manual_seed_all(0)
    for name in RAISING:
        with pytest.raises(RuntimeError, match="CuPy"):
            getattr(minidl.cuda, name)()


def test_cuda_module_reaches_cupy_only_through_the_backend():
    src = (ROOT / "minidl" / "cuda.py").read_text()
    assert "import cupy" not in src and "__import__" not in src


# ----------------------------------------------------------------------------- stand-in cupy

BROKEN = 'raise ImportError("stand-in cupy: built for a CUDA this machine lacks")\n'

NO_GPU = '''
class ndarray: pass
class _runtime:
    @staticmethod
    def getDeviceCount(): return 0
class cuda:
    runtime = _runtime
'''

ONE_GPU = '''
"""A one-GPU CuPy stand-in: device queries, a default memory pool, the allocator switch."""
__version__ = "0.0-standin"

class ndarray: pass

class _runtime:
    @staticmethod
    def getDeviceCount(): return 1
    @staticmethod
    def getDevice(): return 0
    @staticmethod
    def getDeviceProperties(i): return {"name": b"Stand-in GPU", "totalGlobalMem": 1 << 30}

class _Device:
    synced = []
    def __init__(self, i=None):
        self.id = 0 if i is None else i
        self.compute_capability = "90"
    def synchronize(self): _Device.synced.append(self.id)
    def __enter__(self): return self
    def __exit__(self, *exc): return False

class _Pointer:
    def __init__(self, pool, size):
        self.pool, self.size, self.device_id = pool, size, 0
    def __del__(self):
        self.pool.used -= self.size

class _Pool:
    """used: bytes of live pointers; total: bytes held (freed blocks stay cached)."""
    def __init__(self): self.used, self.total = 0, 0
    def malloc(self, size):
        size = -(-size // 512) * 512
        self.used += size
        self.total = max(self.total, self.used)
        return _Pointer(self, size)
    def used_bytes(self): return self.used
    def total_bytes(self): return self.total
    def free_all_blocks(self): self.total = self.used

_pool = _Pool()
_allocator = [_pool.malloc]

def get_default_memory_pool(): return _pool

class cuda:
    runtime = _runtime
    Device = _Device
    @staticmethod
    def get_allocator(): return _allocator[0]
    @staticmethod
    def set_allocator(f=None): _allocator[0] = f

def alloc(size):
    """What CuPy does for every new array: ask the current allocator."""
    return _allocator[0](size)

class random:
    seeds = []
    @staticmethod
    def seed(s): random.seeds.append(s)
'''


def run_with_cupy(tmp_path, cupy_source, script):
    """Run ``script`` in a fresh interpreter where ``import cupy`` finds ``cupy_source``."""
    pkg = tmp_path / "standin" / "cupy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(cupy_source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg.parent), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_import_minidl_does_not_import_cupy_even_when_it_imports(tmp_path):
    out = run_with_cupy(tmp_path, ONE_GPU, """
        import sys
        import minidl, minidl.nn, minidl.cuda
        minidl.zeros(2) + 1
        assert "cupy" not in sys.modules, "import minidl imported cupy"
        assert minidl.cuda.is_available()          # the first GPU question imports it
        assert "cupy" in sys.modules
        print("lazy ok")
    """)
    assert "lazy ok" in out


def test_broken_cupy_message_says_cupy_is_missing(tmp_path):
    out = run_with_cupy(tmp_path, BROKEN, """
        import minidl
        assert minidl.cuda.is_available() is False
        assert minidl.cuda.device_count() == 0
        minidl.cuda.manual_seed(1); minidl.cuda.manual_seed_all(1)
        for name in %r:
            try:
                getattr(minidl.cuda, name)()
            except RuntimeError as exc:
                msg = str(exc)
                assert "needs CuPy, which could not be imported" in msg, msg
                assert "stand-in cupy: built for a CUDA this machine lacks" in msg, msg
            else:
                raise AssertionError(name + " did not raise")
        print("broken ok")
    """ % RAISING)
    assert "broken ok" in out


def test_cupy_without_gpu_message_says_no_gpu(tmp_path):
    out = run_with_cupy(tmp_path, NO_GPU, """
        import minidl
        assert minidl.cuda.is_available() is False
        assert minidl.cuda.device_count() == 0
        minidl.cuda.manual_seed(1)
        for name in %r:
            try:
                getattr(minidl.cuda, name)()
            except RuntimeError as exc:
                assert "CuPy is installed but no CUDA GPU is visible" in str(exc), str(exc)
            else:
                raise AssertionError(name + " did not raise")
        print("no gpu ok")
    """ % RAISING)
    assert "no gpu ok" in out


def test_device_queries_and_device_arguments_on_a_simulated_gpu(tmp_path):
    out = run_with_cupy(tmp_path, ONE_GPU, """
        import minidl, cupy
        mc = minidl.cuda
        assert mc.is_available() and mc.device_count() == 1 and mc.current_device() == 0
        assert mc.get_device_name() == "Stand-in GPU"          # bytes from CuPy, str here
        assert mc.get_device_capability() == (9, 0)
        for dev in (None, 0, "cuda", "cuda:0", minidl.device("cuda")):
            mc.synchronize(dev)
        assert cupy.cuda.Device.synced == [0] * 5
        for bad, err in (("cpu", ValueError), ("cuda:1", ValueError), (3, ValueError),
                         ("tpu", ValueError)):
            try:
                mc.synchronize(bad)
            except err:
                pass
            else:
                raise AssertionError(f"synchronize({bad!r}) did not raise")
        mc.manual_seed(7); mc.manual_seed_all(8)
        assert cupy.random.seeds == [7, 8]
        print("queries ok")
    """)
    assert "queries ok" in out


def test_peak_memory_is_the_high_water_mark_of_used_bytes(tmp_path):
    out = run_with_cupy(tmp_path, ONE_GPU, """
        import minidl, cupy
        mc = minidl.cuda
        pool = cupy.get_default_memory_pool()
        resident = cupy.alloc(1000)                  # before tracking: 1024 bytes
        assert mc.memory_allocated() == 1024
        assert cupy.cuda.get_allocator() == pool.malloc    # nothing installed yet
        mc.reset_peak_memory_stats()                 # installs the tracker
        assert cupy.cuda.get_allocator() != pool.malloc
        assert mc.max_memory_allocated() == 1024
        a = cupy.alloc(4096)
        b = cupy.alloc(8192)
        assert mc.memory_allocated() == 1024 + 4096 + 8192
        del a, b
        assert mc.memory_allocated() == 1024
        assert mc.max_memory_allocated() == 1024 + 4096 + 8192
        assert mc.memory_reserved() == 1024 + 4096 + 8192    # freed blocks stay cached
        c = cupy.alloc(2048)
        assert mc.max_memory_allocated() == 1024 + 4096 + 8192   # below the old peak
        mc.reset_peak_memory_stats()
        assert mc.max_memory_allocated() == 1024 + 2048
        del c
        mc.empty_cache()
        assert mc.memory_reserved() == 1024
        assert mc.max_memory_allocated() == 1024 + 2048      # a reset, not a free, lowers it
        # someone restores the plain pool: the next call installs a tracker again
        cupy.cuda.set_allocator(pool.malloc)
        mc.reset_peak_memory_stats()
        d = cupy.alloc(512 * 10)
        assert mc.max_memory_allocated() == 1024 + 5120
        del d
        # another allocator: the counters would describe the wrong pool, so refuse
        cupy.cuda.set_allocator(lambda size: None)
        try:
            mc.max_memory_allocated()
        except RuntimeError as exc:
            assert "other than the default memory pool" in str(exc)
        else:
            raise AssertionError("no error with a foreign allocator")
        print("peak ok")
    """)
    assert "peak ok" in out


# ----------------------------------------------------------------------------- real GPU

@pytest.mark.gpu
def test_gpu_device_queries(cuda_device):
    mc = minidl.cuda
    assert mc.is_available() and mc.device_count() >= 1
    assert mc.current_device() == 0
    name = mc.get_device_name()
    assert isinstance(name, str) and name.strip()
    assert name == mc.get_device_name(0) == mc.get_device_name("cuda:0")
    major, minor = mc.get_device_capability()
    assert major >= 3 and 0 <= minor <= 9
    for dev in (None, 0, "cuda", "cuda:0", minidl.device("cuda")):
        mc.synchronize(dev)
    with pytest.raises(ValueError, match="expected a CUDA device"):
        mc.synchronize("cpu")
    with pytest.raises(ValueError, match="invalid device index"):
        mc.synchronize(mc.device_count())


@pytest.mark.gpu
def test_gpu_memory_counters_follow_allocations(cuda_device):
    import gc
    gc.collect()                                         # no stray arrays freed mid-test
    mc = minidl.cuda
    MiB = 1 << 20
    x = minidl.zeros(MiB, device=cuda_device)            # 4 MiB that stay
    mc.synchronize()
    before = mc.memory_allocated()
    assert before >= 4 * MiB
    mc.reset_peak_memory_stats()
    assert mc.max_memory_allocated() == before
    y = minidl.ones(4 * MiB, device=cuda_device)         # 16 MiB, then freed
    assert mc.memory_allocated() >= before + 16 * MiB
    del y
    assert mc.memory_allocated() < before + 16 * MiB
    peak = mc.max_memory_allocated()
    assert peak >= before + 16 * MiB
    assert mc.memory_reserved() >= peak                  # the freed block stays cached
    mc.reset_peak_memory_stats()
    assert mc.max_memory_allocated() == mc.memory_allocated()
    mc.empty_cache()
    assert mc.memory_reserved() >= mc.memory_allocated()
    del x


@pytest.mark.gpu
def test_gpu_peak_sees_an_ops_temporaries(cuda_device):
    mc = minidl.cuda
    a = minidl.randn(1024, 1024, device=cuda_device)
    (a @ a).sum().item()      # first: cuBLAS handle, kernel compilation, anything they keep
    mc.synchronize()
    mc.reset_peak_memory_stats()
    base = mc.memory_allocated()
    s = (a @ a).sum().item()                             # a 4 MiB product, freed at once
    assert np.isfinite(s)
    assert mc.max_memory_allocated() >= base + 4 * (1 << 20)
    assert mc.memory_allocated() <= base + (1 << 20)


@pytest.mark.gpu
def test_gpu_foreign_allocator_is_refused_then_restored(cuda_device):
    cp = minidl.backend.require_cupy()
    pool = cp.get_default_memory_pool()
    try:
        cp.cuda.set_allocator(None)                      # CuPy's raw cudaMalloc, no pool
        with pytest.raises(RuntimeError, match="other than the default memory pool"):
            minidl.cuda.max_memory_allocated()
    finally:
        cp.cuda.set_allocator(pool.malloc)
    minidl.cuda.reset_peak_memory_stats()                # installs a tracker again
    assert minidl.cuda.max_memory_allocated() >= minidl.cuda.memory_allocated()


@pytest.mark.gpu
def test_gpu_manual_seed_repeats_cupy_random(cuda_device):
    cp = minidl.backend.require_cupy()
    minidl.cuda.manual_seed(5)
    r1 = cp.random.rand(4).get()
    minidl.cuda.manual_seed(5)
    r2 = cp.random.rand(4).get()
    minidl.cuda.manual_seed_all(5)
    r3 = cp.random.rand(4).get()
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1, r3)
