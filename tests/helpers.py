"""The one helper every op test uses: forward and backward against PyTorch, plus gradcheck.

``check_op(md_fn, torch_fn, arrays)`` runs the same function written with minidl and
with PyTorch on the same inputs, in float64 (tight: about 1e-10) and float32 (loose:
about 1e-4), backpropagates the same random upstream gradient through both, and
compares every output and every input gradient. In float64 it also runs minidl's own
``gradcheck`` (central differences), which needs no PyTorch at all.

``device`` ('cpu' or 'cuda', from the ``device`` fixture) is where minidl's inputs live.
On 'cuda' the PyTorch reference runs on CUDA too when this PyTorch build has it (GPU
against GPU), else on the CPU; either way everything is compared on the host
(``to_host``), and gradcheck perturbs the inputs where they live.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

import minidl
from minidl import backend

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}

GPU_SKIP_REASON = ("no CUDA GPU (or no CuPy) on this machine: GPU cases run with "
                   "`pytest -m gpu` on a GPU")


def gpu_skip_reason():
    """Why GPU cases cannot run here, or None when minidl sees a GPU."""
    return None if minidl.cuda.is_available() else GPU_SKIP_REASON


def torch_device(device):
    """Where PyTorch's reference runs for minidl's ``device``: the same CUDA device when
    minidl runs on a GPU and this PyTorch build sees one, else the CPU (a CPU-only
    PyTorch next to CuPy still gives the reference values, only from other kernels)."""
    device = minidl.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return str(device)
    return "cpu"


def to_host(x):
    """A NumPy array with the values of ``x`` (a minidl or PyTorch tensor, a NumPy or CuPy
    array), copied from the GPU when it lives there. ``Tensor.numpy()`` refuses GPU
    tensors and ``np.asarray`` refuses CuPy arrays, so every comparison goes through here."""
    if isinstance(x, torch.Tensor):
        # force=True: also a ZeroTensor (PyTorch's all-zero second derivative, e.g. of abs)
        return x.detach().cpu().numpy(force=True)
    if isinstance(x, minidl.Tensor):
        x = x.data
    return backend.to_numpy(x)


def torch_hardswish(x):
    """PyTorch's hardswish computed by its CPU kernel wherever ``x`` lives (gradients flow
    through the copies). Its CUDA kernel rounds the constant 1/6 to float32 even in float64
    (relative error 3e-8, seen with torch 2.11 on an H200), which the float64 comparisons
    (1e-10) would report as minidl's error; minidl's hardswish is exact on every device."""
    return torch.nn.functional.hardswish(x.cpu()).to(x.device)


class TorchHardswish(torch.nn.Module):
    """``torch.nn.Hardswish`` through ``torch_hardswish`` (its CPU kernel on any device);
    ``inplace`` is accepted for ``nn.Hardswish``'s signature and ignored."""

    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return torch_hardswish(x)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _make_inputs(arrays, dtype, grad, device="cpu"):
    md_in, t_in = [], []
    t_dev = torch_device(device)
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray):
            if a.dtype.kind == "f":
                a = a.astype(dtype)
            need = a.dtype.kind == "f" and (grad is None or i in grad)
            md_in.append(minidl.tensor(a, requires_grad=need, device=device))
            t_in.append(torch.tensor(a, requires_grad=need, device=t_dev))
        else:  # plain Python values (None, ints, tuples) pass through unchanged
            md_in.append(a)
            t_in.append(a)
    return md_in, t_in


def assert_close(actual, expected, dtype, what, tol=None):
    """``actual`` and ``expected`` (tensors or arrays, on any device) equal to the dtype's
    tolerance, compared on the host in float64."""
    tol = tol or TOL[dtype]
    actual = to_host(actual).astype(np.float64)
    expected = to_host(expected).astype(np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=f"{what} ({np.dtype(dtype).name})",
                               **tol)


def check_op(md_fn, torch_fn, arrays, grad=None, dtypes=(np.float64, np.float32),
             gradcheck=True, seed=0, tol=None, gradcheck_tol=None, device="cpu"):
    """Compare ``md_fn`` with ``torch_fn`` on ``arrays`` (NumPy arrays or Python values).

    grad: indices of the float inputs to differentiate (default: all float arrays).
    tol: optional {dtype: dict(rtol=, atol=)} overriding the defaults.
    device: where minidl's inputs (and the upstream gradients) live; every output must
    come back on it. Functions that build tensors of their own should put them on their
    input's device (``minidl.tensor(a, device=x.device)``, ``torch.tensor(a,
    device=x.device)``).
    """
    t_dev = torch_device(device)
    for dtype in dtypes:
        md_in, t_in = _make_inputs(arrays, dtype, grad, device)
        md_out = _as_tuple(md_fn(*md_in))
        t_out = _as_tuple(torch_fn(*t_in))
        assert len(md_out) == len(t_out), f"{len(md_out)} outputs vs PyTorch's {len(t_out)}"
        rng = np.random.default_rng(seed)
        md_loss, t_loss = None, None
        for k, (m, t) in enumerate(zip(md_out, t_out)):
            assert m.device == device, f"output {k} is on {m.device}, the inputs on {device}"
            t_np = to_host(t)
            assert_close(m, t_np, dtype, f"output {k}", tol and tol.get(dtype))
            if np.issubdtype(t_np.dtype, np.floating) and t.requires_grad:
                v = rng.standard_normal(t_np.shape).astype(dtype)
                mt = (m * minidl.tensor(v, device=device)).sum()
                tt = (t * torch.tensor(v, device=t_dev)).sum()
                md_loss = mt if md_loss is None else md_loss + mt
                t_loss = tt if t_loss is None else t_loss + tt
        if md_loss is None:
            continue
        md_loss.backward()
        t_loss.backward()
        for i, (m, t) in enumerate(zip(md_in, t_in)):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                assert m.grad is not None, f"input {i}: minidl computed no gradient"
                assert m.grad.device == device, f"grad of input {i} is on {m.grad.device}"
                expected = to_host(t.grad) if t.grad is not None else np.zeros(t.shape)
                assert_close(m.grad, expected, dtype, f"grad of input {i}",
                             tol and tol.get(dtype))
    if gradcheck:
        md_in, _ = _make_inputs(arrays, np.float64, grad, device)
        minidl.gradcheck(md_fn, md_in, **(gradcheck_tol or {}))


def check_double_backward(md_fn, torch_fn, arrays, grad=None, seed=0, tol=None,
                          gradgradcheck=True, gradgradcheck_tol=None, device="cpu"):
    """Second derivatives of ``md_fn`` against PyTorch's double backward, in float64.

    With random upstream gradients ``v`` (one per float output) and ``u`` (one per
    differentiated input), both frameworks compute the first derivatives
    ``g = d(v . f(x))/dx`` with ``create_graph=True``, then ``d(u . g)/d(x, v)``: the
    Hessian-vector part (through ``x``) and the backward's own linearity (through ``v``).
    First and second derivatives must agree to float64's tolerance (``tol`` overrides).
    With ``gradgradcheck`` minidl's ``gradgradcheck`` also compares them with central
    differences (``gradgradcheck_tol``: its atol/rtol/eps).
    Arguments as ``check_op``'s. Second derivatives that PyTorch leaves unconnected (a
    function linear in an input) must be zero (or None) in minidl.
    """
    dtype = np.float64
    tol = tol or TOL[dtype]
    t_dev = torch_device(device)
    md_in, t_in = _make_inputs(arrays, dtype, grad, device)
    md_x = [m for m in md_in if isinstance(m, minidl.Tensor) and m.requires_grad]
    t_x = [t for t in t_in if isinstance(t, torch.Tensor) and t.requires_grad]
    md_out = [o for o in _as_tuple(md_fn(*md_in))]
    t_out = [o for o in _as_tuple(torch_fn(*t_in))]
    rng = np.random.default_rng(seed)
    md_y, t_y, md_v, t_v = [], [], [], []
    for m, t in zip(md_out, t_out):
        if t.requires_grad and t.dtype.is_floating_point:
            v = rng.standard_normal(tuple(t.shape))
            md_y.append(m)
            t_y.append(t)
            md_v.append(minidl.tensor(v, requires_grad=True, device=device))
            t_v.append(torch.tensor(v, requires_grad=True, device=t_dev))
    md_g = minidl.autograd.grad(md_y, md_x, md_v, create_graph=True, allow_unused=True)
    t_g = torch.autograd.grad(t_y, t_x, t_v, create_graph=True, allow_unused=True)
    md_u, t_u = [], []
    md_second, t_second = None, None
    for i, (m, t) in enumerate(zip(md_g, t_g)):
        if t is None:
            assert m is None or np.all(to_host(m) == 0), f"first derivative {i}: PyTorch has none"
            continue
        assert_close(m, t, dtype, f"first derivative of input {i}", tol)
        u = rng.standard_normal(tuple(t.shape))
        if t.requires_grad:
            tt = (t * torch.tensor(u, device=t_dev)).sum()
            t_second = tt if t_second is None else t_second + tt
        if m is not None and m.requires_grad:
            mt = (m * minidl.tensor(u, device=device)).sum()
            md_second = mt if md_second is None else md_second + mt
    wrt_md, wrt_t = md_x + md_v, t_x + t_v
    if t_second is None:  # every first derivative is a constant: no second derivative
        assert md_second is None, "minidl's first derivatives depend on something; PyTorch's do not"
        return
    t_h = torch.autograd.grad(t_second, wrt_t, allow_unused=True)
    assert md_second is not None, "minidl's first derivatives are constants; PyTorch's are not"
    md_h = minidl.autograd.grad(md_second, wrt_md, allow_unused=True)
    names = [f"input {i}" for i in range(len(md_x))] + [f"upstream {k}" for k in range(len(md_v))]
    for name, m, t in zip(names, md_h, t_h):
        expected = np.zeros(m.shape if m is not None else ()) if t is None else to_host(t)
        if m is None:
            assert not np.any(expected), f"second derivative w.r.t. {name}: minidl has none"
            continue
        assert_close(m, expected, dtype, f"second derivative w.r.t. {name}", tol)
    if gradgradcheck:
        md_in, _ = _make_inputs(arrays, dtype, grad, device)
        minidl.gradgradcheck(md_fn, md_in, **(gradgradcheck_tol or {}))


def rand_away_from(rng, shape, avoid=(0.0,), margin=0.05, low=-2.0, high=2.0):
    """Uniform values in [low, high] kept at least ``margin`` from each point in ``avoid``
    (use it for inputs to ReLU, abs, clamp: finite differences fail at kinks)."""
    x = rng.uniform(low, high, shape)
    for a in avoid:
        near = np.abs(x - a) < margin
        x[near] = a + np.where(x[near] >= a, margin, -margin) * 2
    return x


def distinct(rng, shape, spacing=1e-2):
    """Values with no two closer than ``spacing`` (no ties for max/pooling tests)."""
    n = int(np.prod(shape))
    vals = (rng.permutation(n) - n / 2) * spacing + rng.uniform(0, spacing / 4, n)
    return vals.reshape(shape)


# ----------------------------------------------------------------------------- MPI

MPI_SCRIPTS = pathlib.Path(__file__).resolve().parent / "distributed_scripts"
MPI4PY_MISSING = 'mpi4py is not installed (pip install "minidl[distributed]")'


def run_mpiexec(*args, n=2, timeout=240):
    """``mpiexec -n n python ARGS...`` from the repository root with it on PYTHONPATH; the
    CompletedProcess, whatever its exit code. Skips (saying why) when mpi4py or mpiexec is
    missing. A job still running after ``timeout`` s (a hang; the limit is generous for a
    loaded machine, where every rank imports minidl and loads its kernels) is killed, all
    its processes, and the test fails."""
    import importlib.util
    import os
    import shutil
    import signal
    import subprocess
    import sys
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip(MPI4PY_MISSING)
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec is not on PATH (install an MPI library, e.g. the mpich wheel)")
    root = MPI_SCRIPTS.parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [mpiexec, "-n", str(n), sys.executable, *map(str, args)]
    # its own process group, so that a hung job is killed with every rank it started
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd[3:])} still ran after {timeout} s (a hang):\n"
                        f"{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_mpi_script(script, *args, n=2, timeout=240):
    """Run ``tests/distributed_scripts/<script>`` on n ranks (``run_mpiexec``) and fail the
    test, with both outputs, unless it exits 0."""
    proc = run_mpiexec(MPI_SCRIPTS / script, *args, n=n, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_rel_close(got, want, rel_tol, what=""):
    """Same dtype and shape, and max |got - want| at most ``rel_tol`` times max |want| (the
    error relative to the largest value: the fair measure for float32 kernels whose
    rounding differs from the reference's, e.g. Winograd's transforms)."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err <= rel_tol, f"{what}: error {err:.3g} of the largest value {scale:.3g}"


# ----------------------------------------------------------------------------- conv2d kernels

def run_conv_impl(impl, geo, x, w, b, gy, need=(True, True, True)):
    """[y, dx, dw, db] of ``Conv2dFunction`` on arrays with conv2d implementation ``impl``
    forced (None where ``need`` (x, w, b) asks for no gradient); asserts that conv2d ran
    ``impl`` and nothing else."""
    import minidl.kernels as K  # noqa: PLC0415
    from minidl.ops.conv import Conv2dFunction  # noqa: PLC0415
    X = minidl.tensor(x, requires_grad=need[0])
    Wt = minidl.tensor(w, requires_grad=need[1])
    B = None if b is None else minidl.tensor(b, requires_grad=need[2])
    with K.use_impl(impl, family="conv2d"), K.decisions() as log:
        y = Conv2dFunction.apply(X, Wt, B, geo=geo)
        if any(need):
            y.backward(minidl.tensor(gy))
    assert {i for f, i in log if f == "conv2d"} == {impl}
    grads = [t.grad.numpy() if t is not None and t.grad is not None else None
             for t in (X, Wt, B)]
    return [y.numpy()] + grads


def compare_conv_results(got, want, rel_tol, label):
    """``run_conv_impl`` results against the reference's: each within ``rel_tol`` of the
    largest reference value, and None exactly where the reference is None."""
    for name, g, r in zip(("y", "dx", "dw", "db"), got, want):
        if r is None:
            assert g is None, f"{label}: {name} computed but not asked for"
        else:
            assert_rel_close(g, r, rel_tol, f"{label}: {name}")


def conv2d_impls_agree(impl, x, w, gy, rel_tol, **conv2d_kwargs):
    """conv2d itself (no bias) with ``impl`` forced against the reference: y, dx and dw
    within ``rel_tol``; asserts each call ran the forced implementation only."""
    import minidl.kernels as K  # noqa: PLC0415
    from minidl.ops.conv import conv2d  # noqa: PLC0415
    results = {}
    for name in ("reference", impl):
        X, Wt = minidl.tensor(x, requires_grad=True), minidl.tensor(w, requires_grad=True)
        with K.use_impl(name, family="conv2d"), K.decisions() as log:
            y = conv2d(X, Wt, **conv2d_kwargs)
            y.backward(minidl.tensor(gy))
        assert {i for f, i in log if f == "conv2d"} == {name}
        results[name] = [y.numpy(), X.grad.numpy(), Wt.grad.numpy()]
    for what, g, r in zip(("y", "dx", "dw"), results[impl], results["reference"]):
        assert_rel_close(g, r, rel_tol, what)


# Special float values for kernels that must equal their reference bit for bit.
SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e-310, -1e-310,
            1.0, -1.0, 3.4e38, -3.4e38]


def float_bits(a):
    """The raw bits of a float array: equal bits is equality with NaN == NaN and
    -0.0 != +0.0."""
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def with_specials(rng, n, dtype):
    """n values, standard normal with every value of ``SPECIALS`` sprinkled in."""
    x = rng.standard_normal(n).astype(dtype)
    where = rng.choice(n, size=min(n, 40 * len(SPECIALS)), replace=False)
    x[where] = np.resize(np.array(SPECIALS, dtype=dtype), where.size)
    return x
