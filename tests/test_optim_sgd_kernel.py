"""The ``sgd`` kernel family (minidl/kernels/optim.py): the one-pass numba update equals the
NumPy reference to the bit for every option, dtype, size and thread count; it never writes
the gradient; what it cannot run goes to the reference; and ``optim.SGD`` on float32
parameters follows ``torch.optim.SGD`` (float64 is tests/test_optim.py's)."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import minidl
import minidl.kernels as K
from minidl import nn, optim
from minidl.kernels.optim import sgd_step
from minidl.kernels.threads import PARALLEL_MIN_ELEMENTS, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba does not import")

# momentum 0 (dampening and nesterov then play no part) and 0.9 with dampening or Nesterov
OPTIONS = [dict(momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
           for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True],
                                                    [0.0, 5e-4], [False, True])
           if not (n and (m == 0 or d != 0)) and not (m == 0 and d != 0)]

# (elements, threads): serial builds, the largest size on one, and parallel builds cut
# unevenly (3 * PARALLEL_MIN_ELEMENTS + 7 elements on 2 and 3 threads)
SIZES = [(1, 1), (1000, 1), (PARALLEL_MIN_ELEMENTS - 1, 3), (PARALLEL_MIN_ELEMENTS, 2),
         (3 * PARALLEL_MIN_ELEMENTS + 7, 3), (3 * PARALLEL_MIN_ELEMENTS + 7, 1)]


def _steps(impl, p0, grads, options):
    """Run sgd_step with ``impl`` forced over ``grads`` from a copy of p0: (p, buf), and
    checks that every call took ``impl`` and left its gradient as it was."""
    p, buf = p0.copy(), None
    with K.use_impl(impl, family="sgd"), K.decisions() as log:
        for g in grads:
            before = g.copy()
            buf = sgd_step(p, g, buf, 0.05, **options)
            np.testing.assert_array_equal(g, before, err_msg=f"{impl} wrote the gradient")
    assert log == [("sgd", impl)] * len(grads)
    return p, buf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,threads", SIZES, ids=lambda v: str(v))
def test_numba_equals_reference_to_the_bit(dtype, size, threads, num_threads, rng):
    num_threads(threads)
    assert parallel(size) == (size >= PARALLEL_MIN_ELEMENTS)
    p0 = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]  # first + later
    for options in OPTIONS:
        p_ref, buf_ref = _steps("reference", p0, grads, options)
        p_nb, buf_nb = _steps("numba", p0, grads, options)
        assert p_nb.dtype == p_ref.dtype == dtype
        np.testing.assert_array_equal(p_nb, p_ref, err_msg=str(options))
        if options["momentum"] == 0:
            assert buf_nb is None and buf_ref is None
        else:
            assert buf_nb.dtype == dtype
            np.testing.assert_array_equal(buf_nb, buf_ref, err_msg=str(options))
        assert not np.array_equal(p_nb, p0)   # the update happened


def test_float32_arithmetic_stays_float32(rng):
    """float32 scalars: an update in float64 then rounded would differ from float32 steps
    in some elements (lr = 0.1 is not a float32 number)."""
    p0 = rng.standard_normal(4096).astype(np.float32)
    g = rng.standard_normal(4096).astype(np.float32)
    p = p0.copy()
    sgd_step(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False)
    np.testing.assert_array_equal(p, p0 - np.float32(0.1) * g)
    wide = (p0.astype(np.float64) - 0.1 * g.astype(np.float64)).astype(np.float32)
    assert not np.array_equal(wide, p)      # the test can tell the two apart


def test_layouts_the_kernel_cannot_write_go_to_the_reference(rng):
    f32 = rng.standard_normal((6, 8)).astype(np.float32)
    assert K.which("sgd", f32, f32.copy()) == "numba"
    assert K.which("sgd", f32, np.asfortranarray(f32)) == "numba"      # g is only read
    assert K.which("sgd", f32[:, ::2], f32[:, ::2].copy()) == "reference"   # p strided
    assert K.which("sgd", f32, f32.copy(), f32.copy().T.copy().T) == "reference"  # buf (F)
    assert K.which("sgd", f32, f32.astype(np.float64)) == "reference"  # mixed dtypes
    assert K.which("sgd", f32.astype(np.float16), f32.astype(np.float16)) == "reference"
    readonly = f32.copy()
    readonly.flags.writeable = False
    assert K.which("sgd", readonly, f32) == "reference"


def test_fortran_gradient_and_strided_parameter(rng):
    """A gradient in another layout (numba reads a contiguous copy) and a strided parameter
    (the reference updates it in place) give the reference's numbers."""
    base = rng.standard_normal((6, 16))
    g = np.asfortranarray(rng.standard_normal((6, 8)))
    options = dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                   maximize=False)
    p_ref, _ = _steps("reference", base[:, ::2].copy(), [g, g], options)
    p_nb, _ = _steps("numba", base[:, ::2].copy(), [g, g], options)
    np.testing.assert_array_equal(p_nb, p_ref)
    strided = base.copy()
    p = strided[:, ::2]
    buf = sgd_step(p, g, None, 0.05, **options)
    buf = sgd_step(p, g, buf, 0.05, **options)
    np.testing.assert_array_equal(strided[:, ::2], p_ref)       # written in place
    np.testing.assert_array_equal(strided[:, 1::2], base[:, 1::2])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in o.items()))
def test_sgd_float32_matches_torch(options, rng):
    """float32 parameters (one on the parallel build) against torch.optim.SGD's float32
    update for 4 steps, the momentum buffers kept float32 Tensors, gradients untouched."""
    shapes = [(3, 4), (7,), (2 * PARALLEL_MIN_ELEMENTS + 5,)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    md = [nn.Parameter(minidl.tensor(a)) for a in arrays]
    tp = [torch.nn.Parameter(torch.tensor(a)) for a in arrays]
    md_opt = optim.SGD(md, lr=0.05, **options)
    t_opt = torch.optim.SGD(tp, lr=0.05, **options)
    for step in range(4):
        for m, t in zip(md, tp):
            g = rng.standard_normal(m.shape).astype(np.float32)
            m.grad, t.grad = minidl.tensor(g), torch.tensor(g)
        versions = [m._version for m in md]
        md_opt.step()
        t_opt.step()
        for i, (m, t) in enumerate(zip(md, tp)):
            assert m.dtype == minidl.float32 and m._version > versions[i]
            # torch may fuse a multiply-add (a float32 rounding apart per step)
            np.testing.assert_allclose(m.numpy(), t.detach().numpy(), rtol=2e-6, atol=2e-6,
                                       err_msg=f"param {i} after step {step + 1}")
            np.testing.assert_array_equal(m.grad.numpy(), t.grad.numpy())
    for m, t in zip(md, tp):
        if options["momentum"] == 0:
            assert "momentum_buffer" not in md_opt.state[m]
            continue
        buf = md_opt.state[m]["momentum_buffer"]
        assert isinstance(buf, minidl.Tensor) and buf.dtype == minidl.float32
        np.testing.assert_allclose(buf.numpy(), t_opt.state[t]["momentum_buffer"].numpy(),
                                   rtol=2e-6, atol=2e-6)


def test_buffer_follows_the_parameter_dtype(rng):
    """After the parameter is cast (``Module.to``-like), the next step casts the momentum
    buffer to it and the numba kernel runs on the pair."""
    p = nn.Parameter(minidl.tensor(rng.standard_normal(10)))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = minidl.tensor(np.ones(10))
    opt.step()
    p.data = p.data.astype(np.float32)
    p.grad = minidl.tensor(np.ones(10, np.float32))
    with K.decisions() as log:
        opt.step()
    assert log == [("sgd", "numba")]
    assert opt.state[p]["momentum_buffer"].dtype == minidl.float32


def test_sgd_runs_without_numba():
    """minidl imports and SGD steps (on the reference) when numba cannot be imported."""
    code = (
        "import sys, numpy as np\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numba' or name.startswith('numba.'):\n"
        "            raise ImportError('numba blocked by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import minidl, minidl.kernels as K\n"
        "from minidl import nn, optim\n"
        "p = nn.Parameter(minidl.tensor(np.ones(4, np.float32)))\n"
        "opt = optim.SGD([p], lr=0.5, momentum=0.9)\n"
        "for _ in range(2):\n"
        "    p.grad = minidl.tensor(np.ones(4, np.float32))\n"
        "    opt.step()\n"
        "assert K.which('sgd', p.data, p.data) == 'reference'\n"
        "print(p.data.tolist())\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    # step 1: p = 1 - 0.5 = 0.5, buf = 1; step 2: buf = 1.9, p = 0.5 - 0.95 = -0.45
    np.testing.assert_allclose(json.loads(out.stdout), [-0.45] * 4, rtol=1e-6)
