"""The GPU pre-flight stays working: ``tests/fake_cupy.py`` (a NumPy-backed CuPy with CuPy's
host/device rules) refuses what CuPy refuses, and a handful of representative GPU cases run
on it in a subprocess (``MINIDL_FAKE_CUPY=1 pytest -m gpu``), as the whole GPU suite should
before a GPU is lent: ``MINIDL_FAKE_CUPY=1 python -m pytest -m gpu``.

The fake module is used here without being installed (``sys.modules['cupy']`` stays as it
is in this process); only the subprocesses install it.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fake_cupy as cp
from cuda_emulator import CXX

ROOT = Path(__file__).resolve().parents[1]

# One case or a few of each family: the CUDA kernels through cupy.ElementwiseKernel, a
# conv against the brute force, a whole model against PyTorch, loss, batch norm, an
# optimiser, the device data loader, checkpoints of device tensors, minidl.cuda.
REPRESENTATIVE = [
    "tests/test_cuda_kernels.py::test_col2im_is_deterministic",
    "tests/test_cuda_kernels.py::test_max_pool_ties_nan_and_minus_inf_follow_the_reference",
    "tests/test_cuda_kernels.py::test_cross_entropy_backward_kernel",
    "tests/test_conv.py::test_device_matches_brute_force",
    "tests/test_models.py::test_lenet_parity",
    "tests/test_loss.py::test_nll_loss_of_log_softmax_equals_cross_entropy",
    "tests/test_norm.py::test_same_results_on_every_device",
    "tests/test_optim.py::test_optimizer_on_device",
    "tests/test_device_loader.py::test_batches_live_on_the_device",
    "tests/test_serialization.py::test_device_tensors_saved_as_host_arrays",
    "tests/test_cuda_api.py",
]


def _run(args, timeout=120):
    env = dict(os.environ, MINIDL_FAKE_CUPY="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(CXX is None, reason="the fake's ElementwiseKernel needs a C++ compiler")
def test_representative_gpu_cases_pass_on_the_fake():
    proc = _run(["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                 *REPRESENTATIVE])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 15, out[-3000:]
    assert "skipped" not in out.splitlines()[-1], "GPU cases skipped: the fake was not used\n" + out


def test_runner_runs_a_script_with_the_fake(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import minidl
        assert minidl.cuda.is_available() and "FakeGPU" in minidl.cuda.get_device_name()
        x = minidl.randn(3, 4, device="cuda", requires_grad=True)
        (x * 2).sum().backward()
        assert x.grad.device == "cuda" and type(x.data).__module__ == "cupy"
        try:
            np.asarray(x.data)
        except TypeError as exc:
            assert "Implicit conversion" in str(exc)
        else:
            raise AssertionError("np.asarray of a device array did not raise")
        print("ran on the fake", sys.argv[1:])
    """))
    proc = _run(["tests/fake_cupy.py", str(script), "--flag"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran on the fake ['--flag']" in proc.stdout


# ----------------------------------------------------------------------------- the rules

def test_implicit_conversion_to_the_host_is_refused():
    x = cp.arange(6, dtype=np.float32).reshape(2, 3)
    msg = "Implicit conversion to a NumPy array is not allowed"
    for convert in (np.asarray, np.array, np.ascontiguousarray,
                    lambda a: np.testing.assert_allclose(a, 0), lambda a: np.array([a, a]),
                    lambda a: np.zeros(3)[a[0, 0].astype(np.int64)]):
        with pytest.raises(TypeError, match=msg):
            convert(x)
    assert not isinstance(x, np.ndarray) and isinstance(x, cp.ndarray)
    host = x.get()
    assert type(host) is np.ndarray and host.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert type(cp.asnumpy(x)) is np.ndarray and x.device.id == 0


def test_host_arrays_do_not_mix_with_device_arrays():
    x = cp.ones(3)
    h = np.ones(3)
    for mix in (lambda: x + h, lambda: h * x, lambda: cp.exp(h), lambda: x @ h,
                lambda: cp.concatenate([x, h]), lambda: cp.where(x > 0, h, 0),
                lambda: cp.ascontiguousarray(h), lambda: x + np.array(1.0)):
        with pytest.raises(TypeError):
            mix()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        x[...] = h
    x[np.array([0, 2])] = np.array([5.0, 6.0])       # advanced indices: CuPy copies over
    x[1] = np.float32(7)                             # scalars are fine
    assert x.tolist() == [5.0, 7.0, 6.0]
    assert (x + 1).tolist() == [6.0, 8.0, 7.0]
    assert (np.float32(2) * cp.ones(2, np.float32)).dtype == np.float32


def test_device_results_and_scalars_as_cupy_gives_them():
    x = cp.asarray(np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32))
    s = x.sum()
    assert isinstance(s, cp.ndarray) and s.shape == () and float(s) == 6.0
    assert isinstance(np.sum(x), cp.ndarray) and isinstance(np.exp(x), cp.ndarray)
    assert isinstance(x[0, 1], cp.ndarray) and int(x[0, 1]) == -2 and x[1, 1].item() == 4.0
    assert bool(x[0, 0] > 0) and len(x) == 2 and [r.shape for r in x] == [(2,), (2,)]
    with pytest.raises(TypeError):
        range(x[1, 1].astype(np.int64))              # no __index__, as in CuPy
    with pytest.raises(ValueError, match="ambiguous"):
        bool(x > 0)
    h = np.ones(2, np.float32)
    d = cp.asarray(h)
    h[0] = 5                                         # host and device are separate
    assert d.tolist() == [1.0, 1.0] and cp.asarray(d) is d


def test_only_what_cupy_14_has():
    x = cp.ones((2, 2))
    with pytest.raises(AttributeError):
        cp.not_a_cupy_function
    with pytest.raises(AttributeError):
        x.tostring()
    with pytest.raises(TypeError, match="where"):
        x.sum(where=x > 0)
    with pytest.raises(TypeError, match="where"):
        np.sum(x, where=True)
    with pytest.raises(TypeError, match="device"):
        cp.zeros(3, device="cuda")
    with pytest.raises(ValueError, match="stable"):
        x.sort(kind="quicksort")
    with pytest.raises(NotImplementedError):
        np.maximum.reduce(x)
    with pytest.raises(ValueError, match="Unsupported dtype"):
        cp.asarray(np.array(["a"]))
    cp.add.at(x, (np.array([0, 0]), np.array([1, 1])), 1.0)
    assert x.tolist() == [[1.0, 3.0], [1.0, 1.0]]


def test_memory_pool_counts_live_buffers():
    pool = cp.get_default_memory_pool()
    before = pool.used_bytes()
    a = cp.zeros(1000, dtype=np.float32)              # 4000 bytes -> 4096 in the pool
    view = a[10:20]
    assert pool.used_bytes() == before + 4096
    del a
    assert pool.used_bytes() == before + 4096         # the view keeps the buffer
    del view
    assert pool.used_bytes() == before


@pytest.mark.skipif(CXX is None, reason="the fake's ElementwiseKernel needs a C++ compiler")
def test_elementwise_kernel_runs_on_device_arrays_only():
    k = cp.ElementwiseKernel("T x, raw T y, int32 m", "T z", "z = x + y[i % m] * m;", "fake_test")
    x, y, z = cp.arange(4, dtype=np.float64), cp.asarray(np.array([10.0, 20.0])), cp.empty(4)
    assert k(x, y, 2, z) is z and z.tolist() == [20.0, 41.0, 22.0, 43.0]
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        k(x, np.array([10.0, 20.0]), 2, z)
