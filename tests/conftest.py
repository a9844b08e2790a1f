"""Shared fixtures: the ``device`` parametrisation (GPU cases skip, with the reason, when no
GPU is present; ``pytest -m gpu`` runs only them)."""
from __future__ import annotations

import numpy as np
import pytest

import minidl


def _gpu_skip_reason():
    if minidl.cuda.is_available():
        return None
    return "no CUDA GPU (or no CuPy) on this machine: GPU cases run with `pytest -m gpu` on a GPU"


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
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


@pytest.fixture(autouse=True)
def _seed():
    minidl.manual_seed(0)
