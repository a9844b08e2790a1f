"""The one helper every op test uses: forward and backward against PyTorch, plus gradcheck.

``check_op(md_fn, torch_fn, arrays)`` runs the same function written with minidl and
with PyTorch on the same inputs, in float64 (tight: about 1e-10) and float32 (loose:
about 1e-4), backpropagates the same random upstream gradient through both, and
compares every output and every input gradient. In float64 it also runs minidl's own
``gradcheck`` (central differences), which needs no PyTorch at all.
"""
from __future__ import annotations

import numpy as np
import torch

import minidl

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _make_inputs(arrays, dtype, grad):
    md_in, t_in = [], []
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray):
            if a.dtype.kind == "f":
                a = a.astype(dtype)
            need = a.dtype.kind == "f" and (grad is None or i in grad)
            md_in.append(minidl.tensor(a, requires_grad=need))
            t_in.append(torch.tensor(a, requires_grad=need))
        else:  # plain Python values (None, ints, tuples) pass through unchanged
            md_in.append(a)
            t_in.append(a)
    return md_in, t_in


def assert_close(actual, expected, dtype, what, tol=None):
    tol = tol or TOL[dtype]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=f"{what} ({np.dtype(dtype).name})",
                               **tol)


def check_op(md_fn, torch_fn, arrays, grad=None, dtypes=(np.float64, np.float32),
             gradcheck=True, seed=0, tol=None, gradcheck_tol=None):
    """Compare ``md_fn`` with ``torch_fn`` on ``arrays`` (NumPy arrays or Python values).

    grad: indices of the float inputs to differentiate (default: all float arrays).
    tol: optional {dtype: dict(rtol=, atol=)} overriding the defaults.
    """
    for dtype in dtypes:
        md_in, t_in = _make_inputs(arrays, dtype, grad)
        md_out = _as_tuple(md_fn(*md_in))
        t_out = _as_tuple(torch_fn(*t_in))
        assert len(md_out) == len(t_out), f"{len(md_out)} outputs vs PyTorch's {len(t_out)}"
        rng = np.random.default_rng(seed)
        md_loss, t_loss = None, None
        for k, (m, t) in enumerate(zip(md_out, t_out)):
            t_np = t.detach().numpy()
            assert_close(m.numpy(), t_np, dtype, f"output {k}", tol and tol.get(dtype))
            if np.issubdtype(t_np.dtype, np.floating) and t.requires_grad:
                v = rng.standard_normal(t_np.shape).astype(dtype)
                mt = (m * minidl.tensor(v)).sum()
                tt = (t * torch.tensor(v)).sum()
                md_loss = mt if md_loss is None else md_loss + mt
                t_loss = tt if t_loss is None else t_loss + tt
        if md_loss is None:
            continue
        md_loss.backward()
        t_loss.backward()
        for i, (m, t) in enumerate(zip(md_in, t_in)):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                assert m.grad is not None, f"input {i}: minidl computed no gradient"
                expected = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
                assert_close(m.grad.numpy(), expected, dtype, f"grad of input {i}",
                             tol and tol.get(dtype))
    if gradcheck:
        md_in, _ = _make_inputs(arrays, np.float64, grad)
        minidl.gradcheck(md_fn, md_in, **(gradcheck_tol or {}))


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
