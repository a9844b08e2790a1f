"""Shared fixtures: the ``device`` parametrisation (GPU cases skip, with the reason, when no
GPU is present; ``pytest -m gpu`` runs only them).

``MINIDL_FAKE_CUPY=1 pytest -m gpu`` runs the GPU cases on the CPU against
``tests/fake_cupy.py``, a NumPy-backed stand-in for CuPy with CuPy's host/device rules: a
pre-flight before a GPU run (see that module for what it catches and what it cannot)."""
from __future__ import annotations

import os
import sys

if os.environ.get("MINIDL_FAKE_CUPY") == "1":   # before anything imports cupy
    sys.path.insert(0, os.path.dirname(__file__))
    import fake_cupy
    fake_cupy.install()

import numpy as np
import pytest
from hypothesis import settings

import minidl
from helpers import gpu_skip_reason as _gpu_skip_reason

# Hypothesis, reproducibly: the property tests draw the same examples on every run and
# every machine (``derandomize``: the examples follow from each test's source), so a red CI
# run is red again on a laptop and a green run means the same cases passed. ``database=None``
# keeps no ``.hypothesis/`` directory of past failures: a failure found once must become an
# ``@example(...)`` on its test, where everyone runs it, rather than a local file. Loaded
# always (not only under ``CI``): the suite must not depend on where it runs. The test
# modules' own ``@settings(max_examples=..., deadline=...)`` refine this profile: it is the
# default when they are imported, after this file.
# (Hypothesis still caches the literals it reads from the source in ``.hypothesis/constants``:
# a pure cache, the same for the same source, and git-ignored.)
# ``MINIDL_HYPOTHESIS_PROFILE=explore`` draws fresh random examples instead, to hunt for
# new failures (then keep what it finds as ``@example``s).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("MINIDL_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """'cpu', then 'cuda' (marked ``gpu``): a test that takes this fixture runs once per
    device, and the GPU case skips with the reason when no GPU is present."""
    if request.param == "cuda":
        reason = _gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@pytest.fixture
def cuda_device():
    """'cuda' for tests that only make sense on a GPU; mark them ``@pytest.mark.gpu``."""
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    return "cuda"


@pytest.fixture
def use_impl():
    """``use_impl('reference')`` / ``use_impl('numba', family='pool')``: force kernel
    implementations (``minidl.kernels.use_impl``) for the rest of the test, undone after it.
    The one way tests choose an implementation (no test edits kernel module state)."""
    import minidl.kernels as K
    yield K.use_impl
    K.use_impl(None)


@pytest.fixture(autouse=True)
def _no_forced_impl_leaks():
    """Every test starts and ends with the automatic choice of kernel implementations."""
    import minidl.kernels as K
    assert K.forced() == {}, f"a kernel implementation stayed forced: {K.forced()}"
    yield
    leaked = K.forced()
    K.use_impl(None)
    assert leaked == {}, f"the test left a kernel implementation forced: {leaked}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    """PyTorch as the reference runs on one thread: on a 2-core machine its second thread
    fights numba's and OpenBLAS's and made small reference ops 25-250x slower."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _torch_ieee_float32():
    """PyTorch's cuDNN convolutions default to TF32 on Ampere and later GPUs (10-bit
    mantissa): as the float32 reference on CUDA they would miss minidl's CuPy results
    (full float32) by about 1e-3. Full float32, as on the CPU, for the whole session.
    Through the legacy ``allow_tf32`` flags on purpose: they can be read back to restore
    them, which raises once only some of the newer per-operator flags have been set."""
    import torch
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(autouse=True)
def _seed():
    minidl.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason with its count (``-ra`` would list every skipped test
    function: about 150 lines for the GPU cases alone on a CPU-only machine)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped, by reason")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{count:5d} skipped: {reason}")


@pytest.fixture
def num_threads():
    """``num_threads(n)``: minidl's thread count for the rest of the test
    (``minidl.set_num_threads``), restored after it."""
    import minidl
    old = minidl.get_num_threads()
    yield minidl.set_num_threads
    minidl.set_num_threads(old)
