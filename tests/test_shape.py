"""Shape ops and indexing: PyTorch parity and gradcheck."""
import numpy as np
import pytest
import torch

import minidl
from helpers import check_op


def test_reshape_view_flatten(rng, device):
    x = rng.standard_normal((2, 3, 4))
    check_op(lambda t: t.reshape(4, -1), lambda t: t.reshape(4, -1), [x], device=device)
    check_op(lambda t: t.view((6, 4)), lambda t: t.view((6, 4)), [x], device=device)
    check_op(lambda t: t.flatten(1), lambda t: t.flatten(1), [x], device=device)
    check_op(lambda t: t.flatten(), lambda t: t.flatten(), [x], device=device)
    check_op(lambda t: minidl.flatten(t, 0, 1), lambda t: torch.flatten(t, 0, 1), [x],
             device=device)
    with pytest.raises(RuntimeError, match=r"reshape: shape \[5, -1\] is invalid for input of shape \(2, 3, 4\)"):
        minidl.tensor(x).reshape(5, -1)


def test_transpose_permute_T(rng, device):
    x = rng.standard_normal((2, 3, 4))
    check_op(lambda t: t.transpose(0, 2), lambda t: t.transpose(0, 2), [x], device=device)
    check_op(lambda t: t.permute(2, 0, 1), lambda t: t.permute(2, 0, 1), [x], device=device)
    check_op(lambda t: t.T, lambda t: t.permute(2, 1, 0), [x], device=device)
    check_op(lambda t: t.t(), lambda t: t.t(), [rng.standard_normal((3, 5))], device=device)


def test_squeeze_unsqueeze_expand(rng, device):
    x = rng.standard_normal((3, 1, 4, 1))
    check_op(lambda t: t.squeeze(), lambda t: t.squeeze(), [x], device=device)
    check_op(lambda t: t.squeeze(1), lambda t: t.squeeze(1), [x], device=device)
    check_op(lambda t: t.squeeze(0), lambda t: t.squeeze(0), [x], device=device)
    check_op(lambda t: t.unsqueeze(-1), lambda t: t.unsqueeze(-1), [x], device=device)
    check_op(lambda t: t.expand(2, 3, 5, 4, 2), lambda t: t.expand(2, 3, 5, 4, 2), [x],
             device=device)
    check_op(lambda t: t.expand(-1, 6, -1, 3), lambda t: t.expand(-1, 6, -1, 3), [x],
             device=device)
    with pytest.raises(RuntimeError, match="expand: the size of dim 0"):
        minidl.tensor(x).expand(4, 1, 4, 1)


@pytest.mark.parametrize("key", [
    1, -1, slice(1, 3), (slice(None), 2), (Ellipsis, 1), (None, 0, slice(None, None, 2)),
    (slice(None, None, -1),),
])
def test_basic_indexing(key, rng, device):
    x = rng.standard_normal((4, 3, 5))
    if key == (slice(None, None, -1),):  # PyTorch has no negative steps: flip instead
        check_op(lambda t: t[key], lambda t: t.flip(0), [x], device=device)
        return
    check_op(lambda t: t[key], lambda t: t[key], [x], device=device)


def test_advanced_indexing_accumulates_repeated_picks(rng, device):
    x = rng.standard_normal((5, 3))
    idx = np.array([0, 2, 2, 4, 0])
    check_op(lambda t: t[minidl.tensor(idx, device=t.device)],
             lambda t: t[torch.tensor(idx, device=t.device)], [x], device=device)
    check_op(lambda t: t[[1, 1, 3]], lambda t: t[[1, 1, 3]], [x], device=device)
    rows, cols = np.array([0, 1, 4]), np.array([2, 0, 2])
    check_op(lambda t: t[minidl.tensor(rows, device=t.device),
                         minidl.tensor(cols, device=t.device)],
             lambda t: t[torch.tensor(rows, device=t.device), torch.tensor(cols, device=t.device)],
             [x], device=device)
    mask = x > 0
    check_op(lambda t: t[minidl.tensor(mask, device=t.device)],
             lambda t: t[torch.tensor(mask, device=t.device)], [x], device=device)


def test_cat_stack(rng, device):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal((1, 3))
    check_op(lambda x, y, z: minidl.cat([x, y, z]), lambda x, y, z: torch.cat([x, y, z]),
             [a, b, c], device=device)
    p, q = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    check_op(lambda x, y: minidl.cat([x, y], dim=1), lambda x, y: torch.cat([x, y], dim=1),
             [p, q], device=device)
    check_op(lambda x, y: minidl.stack([x, y], 1), lambda x, y: torch.stack([x, y], 1), [p, q],
             device=device)
    check_op(lambda x, y: minidl.stack([x, y]), lambda x, y: torch.stack([x, y]), [p, q],
             device=device)


def test_cat_partial_grad_only_where_needed(rng, device):
    a = minidl.tensor(rng.standard_normal((2, 3)), requires_grad=True, device=device)
    b = minidl.tensor(rng.standard_normal((2, 3)), device=device)
    minidl.cat([a, b]).sum().backward()
    assert b.grad is None and a.grad.shape == (2, 3)


def test_cat_mismatch_names_both_shapes():
    a, b = minidl.zeros(2, 3), minidl.zeros(2, 4)
    with pytest.raises(RuntimeError, match=r"tensor 0 has shape \(2, 3\) and tensor 1 has shape \(2, 4\)"):
        minidl.cat([a, b], dim=0)
    with pytest.raises(RuntimeError, match=r"stack: .*\(2, 3\).*\(2, 4\)"):
        minidl.stack([a, b])
    with pytest.raises(TypeError, match="dtype"):
        minidl.cat([a, minidl.zeros(2, 3, dtype=minidl.float64)])


@pytest.mark.parametrize("pad", [(1, 2), (0, 1, 2, 0), (1, 1, 1, 1, 1, 1)])
def test_pad(pad, rng, device):
    x = rng.standard_normal((2, 3, 4))
    check_op(lambda t: minidl.pad(t, pad), lambda t: torch.nn.functional.pad(t, pad), [x],
             device=device)
    check_op(lambda t: minidl.pad(t, pad, value=-1.5),
             lambda t: torch.nn.functional.pad(t, pad, value=-1.5), [x], device=device)


def test_size_and_numel():
    x = minidl.zeros(2, 3, 5)
    assert x.size() == (2, 3, 5) and x.size(0) == 2 and x.size(-1) == 5
    assert x.numel() == 30 and x.dim() == 3 and len(x) == 2
