"""Tensor functions of issue 15 against PyTorch: indexing (gather, scatter, scatter_add,
masked_fill), sorting (topk, sort, argsort), chunk/split, cumsum, norms, einsum, bmm, sin,
cos, lerp, isclose/allclose, where's other forms, one_hot, unique, bincount, nonzero,
from_numpy's shared memory.

Differentiable ops: forward and backward against PyTorch (``check_op``: float64 and
float32, a random upstream gradient, gradcheck) and second derivatives
(``check_double_backward``). Sorting uses distinct values (ties may be ordered otherwise);
norms keep their inputs away from 0 except where the subgradient at 0 is the point.
"""
import numpy as np
import pytest
import torch

import minidl
import minidl.nn.functional as F
from helpers import check_double_backward, check_op, distinct, to_host
from minidl.errors import ShapeError


def md_index(a, like):
    return minidl.tensor(a, device=like.device)


def t_index(a, like):
    return torch.tensor(a, device=like.device)


def assert_same(md, expected):
    """minidl's result equals PyTorch's exactly (values, dtype, shape)."""
    got = to_host(md)
    exp = to_host(expected)
    assert got.shape == exp.shape, f"shape {got.shape} != {exp.shape}"
    assert got.dtype == exp.dtype, f"dtype {got.dtype} != {exp.dtype}"
    np.testing.assert_array_equal(got, exp)


# --- gather / scatter / scatter_add --------------------------------------------------------

GATHER_CASES = [  # (input shape, dim, index shape): index may be smaller than the input
    ((3, 4), 0, (5, 4)), ((3, 4), 1, (3, 6)), ((3, 4), 1, (2, 2)), ((2, 3, 4), -1, (2, 3, 5)),
    ((2, 3, 4), 1, (1, 2, 3)), ((5,), 0, (7,)),
]


@pytest.mark.parametrize("shape,dim,ishape", GATHER_CASES)
def test_gather(shape, dim, ishape, rng, device):
    x = rng.standard_normal(shape)
    idx = rng.integers(0, shape[dim], ishape)  # repeats: their gradients add up
    check_op(lambda t: t.gather(dim, md_index(idx, t)),
             lambda t: t.gather(dim, t_index(idx, t)), [x], device=device)
    check_op(lambda t: minidl.gather(t, dim, md_index(idx, t)),
             lambda t: torch.gather(t, dim, t_index(idx, t)), [x], device=device)


def test_gather_double_backward(rng, device):
    x = rng.standard_normal((3, 4))
    idx = rng.integers(0, 4, (3, 5))
    check_double_backward(lambda t: t.gather(1, md_index(idx, t)) ** 2,
                          lambda t: t.gather(1, t_index(idx, t)) ** 2, [x], device=device)


def _distinct_index(rng, shape, dim, size):
    """An index that names each place along ``dim`` at most once per line (scatter's
    result is unspecified where two sources write one place)."""
    lines = np.moveaxis(np.zeros(shape, np.int64), dim, -1)
    for pos in np.ndindex(lines.shape[:-1]):
        lines[pos] = rng.permutation(size)[:lines.shape[-1]]
    return np.ascontiguousarray(np.moveaxis(lines, -1, dim))


SCATTER_CASES = [  # (input shape, dim, index shape, src shape)
    ((4, 3), 0, (2, 3), (2, 3)), ((3, 5), 1, (3, 4), (3, 4)), ((3, 5), 1, (2, 3), (3, 4)),
    ((2, 3, 4), 2, (2, 3, 2), (2, 3, 3)), ((2, 3, 4), 0, (2, 2, 4), (2, 2, 4)),
]


@pytest.mark.parametrize("shape,dim,ishape,sshape", SCATTER_CASES)
def test_scatter_src(shape, dim, ishape, sshape, rng, device):
    x, src = rng.standard_normal(shape), rng.standard_normal(sshape)
    idx = _distinct_index(rng, ishape, dim, shape[dim])
    corner = tuple(slice(0, n) for n in ishape)  # the part of src that index addresses
    # (PyTorch's own backward fails for a src larger than index, so its src is cut first)
    check_op(lambda t, s: t.scatter(dim, md_index(idx, t), s),
             lambda t, s: t.scatter(dim, t_index(idx, t), s[corner]), [x, src], device=device)


@pytest.mark.parametrize("shape,dim,ishape,sshape", SCATTER_CASES)
def test_scatter_add(shape, dim, ishape, sshape, rng, device):
    x, src = rng.standard_normal(shape), rng.standard_normal(sshape)
    idx = rng.integers(0, shape[dim], ishape)  # repeated places add up
    corner = tuple(slice(0, n) for n in ishape)  # as in test_scatter_src
    check_op(lambda t, s: t.scatter_add(dim, md_index(idx, t), s),
             lambda t, s: t.scatter_add(dim, t_index(idx, t), s[corner]), [x, src],
             device=device)
    check_op(lambda t, s: minidl.scatter(t, dim, md_index(idx, t), s, reduce="add"),
             lambda t, s: torch.scatter_add(t, dim, t_index(idx, t), s[corner]), [x, src],
             device=device)


def test_scatter_value(rng, device):
    x = rng.standard_normal((3, 5))
    idx = _distinct_index(rng, (3, 2), 1, 5)
    check_op(lambda t: t.scatter(1, md_index(idx, t), 0.5),
             lambda t: t.scatter(1, t_index(idx, t), 0.5), [x], device=device)
    check_op(lambda t: minidl.scatter(t, 1, md_index(idx, t), value=-2.0),
             lambda t: torch.scatter(t, 1, t_index(idx, t), value=-2.0), [x], device=device)


def test_scatter_double_backward(rng, device):
    x, src = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    idx = _distinct_index(rng, (3, 2), 1, 4)
    check_double_backward(lambda t, s: t.scatter(1, md_index(idx, t), s * s) * t,
                          lambda t, s: t.scatter(1, t_index(idx, t), s * s) * t,
                          [x, src], device=device)
    idx2 = rng.integers(0, 4, (3, 3))
    src2 = rng.standard_normal((3, 3))
    check_double_backward(lambda t, s: t.scatter_add(1, md_index(idx2, t), s * s) * t,
                          lambda t, s: t.scatter_add(1, t_index(idx2, t), s * s) * t,
                          [x, src2], device=device)


def test_scatter_in_place(rng, device):
    x = rng.standard_normal((3, 4))
    idx = _distinct_index(rng, (3, 2), 1, 4)
    src = rng.standard_normal((3, 2))
    mx, tx = minidl.tensor(x, device=device), torch.tensor(x)
    out = mx.scatter_(1, md_index(idx, mx), minidl.tensor(src, device=device))
    assert out is mx and mx._version == 1
    tx.scatter_(1, torch.tensor(idx), torch.tensor(src))
    assert_same(mx, tx)
    mx.scatter_add_(1, md_index(idx, mx), minidl.tensor(src, device=device))
    tx.scatter_add_(1, torch.tensor(idx), torch.tensor(src))
    assert_same(mx, tx)
    # in a graph: recorded, the gradient flows as through the out-of-place op
    check_op(lambda t, s: (t * 1).scatter_(1, md_index(idx, t), s),
             lambda t, s: (t * 1).scatter_(1, t_index(idx, t), s), [x, src], device=device)
    leaf = minidl.tensor(x, requires_grad=True, device=device)
    with pytest.raises(RuntimeError, match="scatter_: a leaf Variable"):
        leaf.scatter_(1, md_index(idx, leaf), 0.0)


def test_gather_scatter_errors():
    x = minidl.tensor(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="gather: expected index of dtype int64, got int32"):
        x.gather(1, minidl.tensor(np.zeros((3, 4), np.int32)))
    with pytest.raises(ShapeError, match=r"gather: index must have as many dims as the input "
                                         r"\(2\), got index of shape \(3,\)"):
        x.gather(1, minidl.tensor([0, 1, 2]))
    with pytest.raises(ShapeError, match=r"gather: index \(4, 2\) is larger than the input "
                                         r"\(3, 4\) in dim 0"):
        x.gather(1, minidl.tensor(np.zeros((4, 2), np.int64)))
    with pytest.raises(IndexError, match=r"gather: index 4 is out of bounds for dim 1 with "
                                         r"size 4"):
        x.gather(1, minidl.tensor([[4]]))
    with pytest.raises(IndexError, match="scatter: index -1 is out of bounds"):
        x.scatter(0, minidl.tensor([[-1]]), 1.0)
    with pytest.raises(ShapeError, match=r"scatter_add: index \(3, 3\) must be no larger than "
                                         r"src \(3, 2\)"):
        x.scatter_add(1, minidl.tensor(np.zeros((3, 3), np.int64)), minidl.zeros(3, 2,
                                                                                dtype=np.float64))
    with pytest.raises(TypeError, match="scatter: expected src of the input's dtype float64"):
        x.scatter(1, minidl.tensor([[0]]), minidl.zeros(1, 1))
    with pytest.raises(NotImplementedError, match="scatter: reduce='multiply'"):
        x.scatter(1, minidl.tensor([[0]]), 2.0, reduce="multiply")


# --- masked_fill -----------------------------------------------------------------------------

@pytest.mark.parametrize("mshape", [(3, 4), (4,), (3, 1), ()])
def test_masked_fill(mshape, rng, device):
    x = rng.standard_normal((3, 4))
    mask = rng.random(mshape) > 0.5
    check_op(lambda t: t.masked_fill(md_index(mask, t), -1.5),
             lambda t: t.masked_fill(t_index(mask, t), -1.5), [x], device=device)
    # a 0-d tensor value receives the gradient of the filled places
    check_op(lambda t, v: minidl.masked_fill(t, md_index(mask, t), v),
             lambda t, v: torch.masked_fill(t, t_index(mask, t), v), [x, np.array(0.7)],
             device=device)


def test_masked_fill_double_backward_and_in_place(rng, device):
    x = rng.standard_normal((3, 4))
    mask = rng.random((3, 4)) > 0.5
    check_double_backward(lambda t: (t * t).masked_fill(md_index(mask, t), 2.0),
                          lambda t: (t * t).masked_fill(t_index(mask, t), 2.0), [x],
                          device=device)
    check_op(lambda t: (t * 2).masked_fill_(md_index(mask, t), 0.0),
             lambda t: (t * 2).masked_fill_(t_index(mask, t), 0.0), [x], device=device)
    m = minidl.tensor(x, device=device)
    assert m.masked_fill_(md_index(mask, m), float("-inf")) is m
    assert_same(m, torch.tensor(x).masked_fill_(torch.tensor(mask), float("-inf")))
    ints = minidl.tensor(np.arange(4), device=device)
    assert_same(ints.masked_fill(md_index(np.array([True, False, True, False]), ints), 9),
                torch.arange(4).masked_fill(torch.tensor([True, False, True, False]), 9))


def test_masked_fill_errors():
    x = minidl.zeros(3, 4)
    with pytest.raises(TypeError, match="masked_fill: expected a boolean mask tensor, got int64"):
        x.masked_fill(minidl.tensor([1, 0, 1, 0]), 0.0)
    with pytest.raises(ShapeError, match=r"masked_fill: mask of shape \(2, 4\) cannot be "
                                         r"broadcast to the input's shape \(3, 4\)"):
        x.masked_fill(minidl.zeros(2, 4).bool(), 0.0)
    with pytest.raises(ShapeError, match="masked_fill: only a 0-dim value tensor"):
        x.masked_fill(minidl.zeros(3, 4).bool(), minidl.zeros(2))


# --- topk / sort / argsort ------------------------------------------------------------------

@pytest.mark.parametrize("k,dim,largest", [(2, -1, True), (3, 0, False), (1, 1, True),
                                           (4, 1, False), (0, 1, True)])
def test_topk(k, dim, largest, rng, device):
    x = distinct(rng, (4, 5, 3), spacing=0.1)
    check_op(lambda t: t.topk(k, dim, largest=largest),
             lambda t: t.topk(k, dim, largest=largest), [x], device=device)
    res = minidl.topk(minidl.tensor(x, device=device), k, dim=dim, largest=largest)
    exp = torch.topk(torch.tensor(x), k, dim=dim, largest=largest)
    assert res._fields == ("values", "indices")
    assert_same(res.indices, exp.indices)
    assert_same(res[0], exp[0])


@pytest.mark.parametrize("dim,descending", [(-1, False), (0, True), (1, False), (1, True)])
def test_sort_and_argsort(dim, descending, rng, device):
    x = distinct(rng, (4, 5, 3), spacing=0.1)
    check_op(lambda t: t.sort(dim, descending=descending),
             lambda t: t.sort(dim, descending=descending), [x], device=device)
    m = minidl.tensor(x, device=device)
    assert_same(m.argsort(dim, descending=descending),
                torch.tensor(x).argsort(dim, descending=descending))
    values, indices = minidl.sort(m, dim=dim, descending=descending)
    assert indices.dtype == np.int64 and values.shape == x.shape


def test_sort_is_stable_and_puts_nan_last():
    x = np.array([2.0, 1.0, 2.0, np.nan, 1.0, 3.0])
    for descending in (False, True):
        md = minidl.sort(minidl.tensor(x), descending=descending, stable=True)
        ref = torch.sort(torch.tensor(x), descending=descending, stable=True)
        np.testing.assert_array_equal(md.values.numpy(), ref.values.numpy())
        assert_same(md.indices, ref.indices)


def test_topk_sort_double_backward(rng, device):
    x = distinct(rng, (3, 4), spacing=0.1)
    check_double_backward(lambda t: t.topk(2, 1).values ** 2,
                          lambda t: t.topk(2, 1).values ** 2, [x], device=device)
    check_double_backward(lambda t: t.sort(0, descending=True).values ** 3,
                          lambda t: t.sort(0, descending=True).values ** 3, [x], device=device)


def test_topk_errors():
    x = minidl.zeros(3, 4)
    with pytest.raises(ValueError, match=r"topk: k \(5\) is out of range for dim 1 of size 4"):
        x.topk(5)
    with pytest.raises(IndexError, match="topk: dim 2 is out of range"):
        x.topk(1, dim=2)


# --- chunk / split ----------------------------------------------------------------------------

@pytest.mark.parametrize("chunks,dim", [(2, 0), (3, 1), (4, 1), (7, 1), (1, -1)])
def test_chunk(chunks, dim, rng, device):
    x = rng.standard_normal((5, 6))
    check_op(lambda t: t.chunk(chunks, dim), lambda t: t.chunk(chunks, dim), [x],
             device=device)
    assert len(minidl.chunk(minidl.tensor(x), chunks, dim)) == len(torch.chunk(
        torch.tensor(x), chunks, dim))


@pytest.mark.parametrize("sizes,dim", [(2, 0), (4, 1), ([1, 4, 1], 1), ([5], 0), (10, 1)])
def test_split(sizes, dim, rng, device):
    x = rng.standard_normal((5, 6))
    check_op(lambda t: t.split(sizes, dim), lambda t: t.split(sizes, dim), [x], device=device)
    check_op(lambda t: minidl.split(t, sizes, dim=dim), lambda t: torch.split(t, sizes, dim=dim),
             [x], device=device)


def test_chunk_split_errors_and_double_backward(rng, device):
    x = minidl.zeros(5, 6)
    with pytest.raises(ValueError, match=r"split: split sizes \[2, 2\] must be non-negative "
                                         r"and sum to the size of the dim \(5\)"):
        x.split([2, 2])
    with pytest.raises(ValueError, match="chunk: chunks must be a positive int, got 0"):
        x.chunk(0)
    a = rng.standard_normal((4, 3))
    check_double_backward(lambda t: t.chunk(2)[1] * t.chunk(2)[0],
                          lambda t: t.chunk(2)[1] * t.chunk(2)[0], [a], device=device)


# --- cumsum, sin, cos, lerp -------------------------------------------------------------------

@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum(dim, rng, device):
    x = rng.standard_normal((3, 4, 2))
    check_op(lambda t: t.cumsum(dim), lambda t: t.cumsum(dim), [x], device=device)
    check_op(lambda t: minidl.cumsum(t, dim=dim), lambda t: torch.cumsum(t, dim=dim), [x],
             device=device)
    check_double_backward(lambda t: t.cumsum(dim) ** 2, lambda t: t.cumsum(dim) ** 2,
                          [rng.standard_normal((2, 3, 2))], device=device)


def test_cumsum_dtypes(device):
    for a in (np.array([1, 2, 3], np.int32), np.array([True, False, True])):
        m = minidl.tensor(a, device=device).cumsum(0)
        assert_same(m, torch.tensor(a).cumsum(0))  # int64, PyTorch's promotion
    m = minidl.tensor(np.array([1, 2]), device=device).cumsum(0, dtype=minidl.float64)
    assert m.dtype == np.float64


@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos(name, rng, device):
    x = rng.uniform(-4, 4, (3, 4))
    check_op(getattr(minidl, name), getattr(torch, name), [x], device=device)
    check_op(lambda t: getattr(t, name)(), lambda t: getattr(t, name)(), [x], device=device)
    check_double_backward(getattr(minidl, name), getattr(torch, name), [x[:2]], device=device)
    with pytest.raises(TypeError, match=f"{name}: expected a floating point tensor"):
        getattr(minidl, name)(minidl.tensor([1, 2]))


@pytest.mark.parametrize("wshape", [None, (3, 4), (4,), ()])
def test_lerp(wshape, rng, device):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    if wshape is None:
        check_op(lambda x, y: x.lerp(y, 0.3), lambda x, y: x.lerp(y, 0.3), [a, b],
                 device=device)
        check_double_backward(lambda x, y: minidl.lerp(x * x, y, 0.3),
                              lambda x, y: torch.lerp(x * x, y, 0.3), [a, b], device=device)
        return
    w = rng.uniform(-0.5, 1.5, wshape)
    check_op(minidl.lerp, torch.lerp, [a, b, w], device=device)
    check_double_backward(minidl.lerp, torch.lerp, [a, b, w], device=device)


# --- norms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("p", ["fro", 2, 1, 3, 0.5, float("inf"), float("-inf")])
@pytest.mark.parametrize("dim,keepdim", [(None, False), (1, False), ((0, 2), True), (-1, True)])
def test_norm(p, dim, keepdim, rng, device):
    x = distinct(rng, (3, 4, 2), spacing=0.1)  # away from 0 and no ties for inf
    x = np.where(np.abs(x) < 0.05, 0.3, x)
    if p == "fro" and dim is not None and not isinstance(dim, tuple):
        dim = (dim,)
    check_op(lambda t: t.norm(p, dim, keepdim), lambda t: t.norm(p, dim, keepdim), [x],
             device=device)
    if p != "fro":
        check_op(lambda t: minidl.linalg.vector_norm(t, p, dim, keepdim),
                 lambda t: torch.linalg.vector_norm(t, p, dim, keepdim), [x], device=device)


@pytest.mark.parametrize("p", [2, 1, 3, float("inf")])
def test_vector_norm_double_backward(p, rng, device):
    x = distinct(rng, (2, 3), spacing=0.3)
    check_double_backward(lambda t: minidl.linalg.vector_norm(t, p, dim=1),
                          lambda t: torch.linalg.vector_norm(t, p, dim=1), [x], device=device)


def test_norm_at_zero_has_pytorchs_subgradient(device):
    for p in (2, 3, 1, float("inf")):
        m = minidl.zeros(2, 3, dtype=minidl.float64, device=device, requires_grad=True)
        t = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        minidl.linalg.vector_norm(m, p, dim=1).sum().backward()
        torch.linalg.vector_norm(t, p, dim=1).sum().backward()
        np.testing.assert_array_equal(to_host(m.grad), t.grad.numpy())
        assert not np.isnan(to_host(m.grad)).any()


def test_norm_ord_0_and_inf_ties(device):
    x = np.array([[0.0, 2.0, -2.0], [1.0, 0.0, 0.0]])
    check_op(lambda t: minidl.linalg.vector_norm(t, 0, dim=1),
             lambda t: torch.linalg.vector_norm(t, 0, dim=1), [x], device=device, gradcheck=False)
    check_op(lambda t: t.norm(float("inf"), 1), lambda t: t.norm(float("inf"), 1), [x],
             device=device, gradcheck=False)  # the tie at |2| shares its gradient evenly


@pytest.mark.parametrize("ord", ["fro", 1, -1, float("inf"), float("-inf")])
def test_matrix_norm(ord, rng, device):
    x = distinct(rng, (2, 3, 4), spacing=0.1)
    check_op(lambda t: minidl.linalg.matrix_norm(t, ord),
             lambda t: torch.linalg.matrix_norm(t, ord), [x], device=device)
    check_op(lambda t: minidl.linalg.norm(t[0], ord), lambda t: torch.linalg.norm(t[0], ord),
             [x], device=device)


def test_norm_errors():
    with pytest.raises(TypeError, match="linalg.vector_norm: expected a floating point tensor"):
        minidl.linalg.vector_norm(minidl.tensor([1, 2]))
    with pytest.raises(NotImplementedError, match="linalg.matrix_norm: ord='nuc'"):
        minidl.linalg.matrix_norm(minidl.zeros(2, 2), "nuc")
    with pytest.raises(ShapeError, match="linalg.matrix_norm: expected a tensor of at least 2"):
        minidl.linalg.matrix_norm(minidl.zeros(3))


# --- einsum / bmm ---------------------------------------------------------------------------

EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->i", [(3, 4)]),                       # j only in the operand: summed out
    ("i,j->ij", [(3,), (4,)]),                 # outer product
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ii->i", [(3, 3)]),                       # a diagonal
    ("ii", [(3, 3)]),                          # the trace (implicit output)
    ("iji->j", [(3, 2, 3)]),
    ("ij,jk", [(3, 4), (4, 2)]),               # implicit: 'ik'
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 2)]),  # '...' dims broadcast (1 vs 3)
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),     # bilinear, three operands
    ("b i j, b j -> b i", [(2, 3, 4), (2, 4)]),          # spaces are ignored
]


@pytest.mark.parametrize("eq,shapes", EINSUM_CASES, ids=[c[0] for c in EINSUM_CASES])
def test_einsum(eq, shapes, rng, device):
    arrays = [rng.standard_normal(s) for s in shapes]
    check_op(lambda *ts: minidl.einsum(eq, *ts), lambda *ts: torch.einsum(eq, *ts), arrays,
             device=device)


@pytest.mark.parametrize("eq,shapes", [EINSUM_CASES[0], EINSUM_CASES[7], EINSUM_CASES[12],
                                       EINSUM_CASES[13]])
def test_einsum_double_backward(eq, shapes, rng, device):
    arrays = [rng.standard_normal(s) for s in shapes]
    check_double_backward(lambda *ts: minidl.einsum(eq, *[t * t for t in ts]),
                          lambda *ts: torch.einsum(eq, *[t * t for t in ts]), arrays,
                          device=device)


def test_einsum_list_form_and_errors(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    got = minidl.einsum("ij,jk->ik", [minidl.tensor(a), minidl.tensor(b)])
    np.testing.assert_allclose(got.numpy(), a @ b, rtol=1e-12)
    x = minidl.zeros(2, 3)
    with pytest.raises(ValueError, match="einsum: the equation 'ij,jk->ik' names 2 operands, "
                                         "got 1 tensors"):
        minidl.einsum("ij,jk->ik", x)
    with pytest.raises(ShapeError, match=r"einsum: operand 0 has 2 dims \(2, 3\) but its "
                                         r"subscripts 'ijk' name 3"):
        minidl.einsum("ijk->i", x)
    with pytest.raises(ShapeError, match="einsum: subscript 'j' has size 3 in one operand and "
                                         "2 in operand 1"):
        minidl.einsum("ij,jk->ik", x, minidl.zeros(2, 2))
    with pytest.raises(ValueError, match="einsum: output subscript 'k' does not occur"):
        minidl.einsum("ij->k", x)
    with pytest.raises(TypeError, match="einsum: operands must share one dtype"):
        minidl.einsum("ij,jk", x, minidl.zeros(3, 2, dtype=minidl.float64))


def test_bmm(rng, device):
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    check_op(minidl.bmm, torch.bmm, [a, b], device=device)
    check_op(lambda x, y: x.bmm(y), lambda x, y: x.bmm(y), [a, b], device=device)
    check_double_backward(lambda x, y: minidl.bmm(x * x, y), lambda x, y: torch.bmm(x * x, y),
                          [a[:, :2, :3], b[:, :3, :2]], device=device)
    with pytest.raises(ShapeError, match=r"bmm: input must be a 3-D tensor \(B, N, M\), got "
                                         r"shape \(3, 4\)"):
        minidl.bmm(minidl.zeros(3, 4), minidl.zeros(2, 4, 5))
    with pytest.raises(ShapeError, match=r"bmm: expected mat2 of shape \(2, 4, P\) for input "
                                         r"\(2, 3, 4\), got \(3, 4, 5\)"):
        minidl.bmm(minidl.zeros(2, 3, 4), minidl.zeros(3, 4, 5))


# --- isclose / allclose -----------------------------------------------------------------------

def test_isclose_allclose(device):
    a = np.array([1.0, 1.0 + 1e-6, 1.0 + 1e-4, np.inf, np.nan, 0.0])
    b = np.array([1.0, 1.0, 1.0, np.inf, np.nan, 1e-9])
    for kw in ({}, {"equal_nan": True}, {"rtol": 1e-3}, {"atol": 0.0}):
        ma, mb = minidl.tensor(a, device=device), minidl.tensor(b, device=device)
        assert_same(minidl.isclose(ma, mb, **kw), torch.isclose(torch.tensor(a),
                                                                torch.tensor(b), **kw))
        assert_same(ma.isclose(mb, **kw), torch.tensor(a).isclose(torch.tensor(b), **kw))
        expected = torch.allclose(torch.tensor(a), torch.tensor(b), **kw)
        assert minidl.allclose(ma, mb, **kw) is expected
        assert ma[:2].allclose(mb[:2], **kw) is torch.allclose(torch.tensor(a[:2]),
                                                               torch.tensor(b[:2]), **kw)
    with pytest.raises(TypeError, match="isclose: expected other of the input's dtype"):
        minidl.isclose(minidl.zeros(2), minidl.zeros(2, dtype=minidl.float64))


# --- where, clone -------------------------------------------------------------------------------

def test_where_forms(rng, device):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    cond = rng.random((3, 4)) > 0.5
    check_op(lambda a, b: a.where(md_index(cond, a), b),
             lambda a, b: a.where(t_index(cond, a), b), [x, y], device=device)
    got = minidl.where(minidl.tensor(cond, device=device))
    exp = torch.where(torch.tensor(cond))
    assert isinstance(got, tuple) and len(got) == 2
    for g, e in zip(got, exp):
        assert_same(g, e)


def test_clone_is_a_copy_in_the_graph(rng, device):
    x = rng.standard_normal((2, 3))
    check_op(lambda t: t.clone() * 2, lambda t: t.clone() * 2, [x], device=device)
    m = minidl.tensor(x, device=device)
    c = m.clone()
    c[0, 0] = 100.0
    assert to_host(m)[0, 0] == x[0, 0]


# --- one_hot, unique, bincount, nonzero -------------------------------------------------------

def test_one_hot(device):
    idx = np.array([[0, 3], [2, 1]])
    for n in (-1, 5):
        got = F.one_hot(minidl.tensor(idx, device=device), n)
        assert_same(got, torch.nn.functional.one_hot(torch.tensor(idx), n))
    with pytest.raises(ValueError, match=r"one_hot: class values must be smaller than "
                                         r"num_classes \(3\), got 3"):
        F.one_hot(minidl.tensor(idx), 3)
    with pytest.raises(ValueError, match="one_hot: class values must be non-negative"):
        F.one_hot(minidl.tensor([-1, 0]))
    with pytest.raises(TypeError, match="one_hot: expected an int64 tensor"):
        F.one_hot(minidl.tensor([0.0, 1.0]))


@pytest.mark.parametrize("kw", [{}, {"return_inverse": True}, {"return_counts": True},
                                {"return_inverse": True, "return_counts": True},
                                {"dim": 0, "return_inverse": True, "return_counts": True},
                                {"dim": 1}])
def test_unique(kw, device):
    a = np.array([[3, 1, 3], [1, 2, 1], [3, 1, 3]])
    got = minidl.unique(minidl.tensor(a, device=device), **kw)
    exp = torch.unique(torch.tensor(a), **kw)
    got = got if isinstance(got, tuple) else (got,)
    exp = exp if isinstance(exp, tuple) else (exp,)
    assert len(got) == len(exp)
    for g, e in zip(got, exp):
        assert_same(g, e)
    if not kw:
        assert_same(minidl.tensor(a, device=device).unique(), torch.tensor(a).unique())


def test_bincount(device):
    a = np.array([1, 4, 1, 0, 4, 4])
    w32 = np.linspace(0.5, 3, 6).astype(np.float32)
    cases = [({}, {}), ({"minlength": 8}, {"minlength": 8}),
             ({"weights": w32}, {"weights": w32}),
             ({"weights": w32.astype(np.float64)}, {"weights": w32.astype(np.float64)}),
             ({"weights": np.arange(6)}, {"weights": np.arange(6)})]
    for md_kw, t_kw in cases:
        md_kw = {k: minidl.tensor(v, device=device) if isinstance(v, np.ndarray) else v
                 for k, v in md_kw.items()}
        t_kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in t_kw.items()}
        assert_same(minidl.tensor(a, device=device).bincount(**md_kw),
                    torch.tensor(a).bincount(**t_kw))
    empty = np.zeros(0, np.int64)
    assert_same(minidl.bincount(minidl.tensor(empty, device=device), minlength=3),
                torch.bincount(torch.tensor(empty), minlength=3))
    with pytest.raises(ValueError, match="bincount: input must be non-negative"):
        minidl.bincount(minidl.tensor([1, -1]))
    with pytest.raises(ShapeError, match="bincount: expected a 1-D integer tensor"):
        minidl.bincount(minidl.tensor([[1, 2]]))


def test_nonzero(device):
    a = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    m = minidl.tensor(a, device=device)
    assert_same(m.nonzero(), torch.tensor(a).nonzero())
    for g, e in zip(minidl.nonzero(m, as_tuple=True), torch.nonzero(torch.tensor(a),
                                                                    as_tuple=True)):
        assert_same(g, e)


# --- from_numpy ----------------------------------------------------------------------------------

def test_from_numpy_shares_memory():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = minidl.from_numpy(a)
    assert t.dtype == np.float64 and t.shape == (2, 3)
    a[0, 1] = 10.0                       # a write through the array shows in the tensor
    assert t[0, 1].item() == 10.0
    t[1, 2] = -5.0                       # and through the tensor in the array
    assert a[1, 2] == -5.0
    t.add_(1.0)
    assert a[0, 0] == 1.0
    assert np.shares_memory(t.numpy(), a)
    ints = np.array([1, 2], np.int32)
    assert minidl.from_numpy(ints).dtype == np.int32
    with pytest.raises(TypeError, match="from_numpy: expected a numpy.ndarray, got list"):
        minidl.from_numpy([1.0, 2.0])
    with pytest.raises(TypeError, match="from_numpy: arrays of dtype object"):
        minidl.from_numpy(np.array([None, 1]))


# --- the lecture's code runs unchanged --------------------------------------------------------

def test_everyday_code_runs_after_import_as_torch(rng):
    """A classification head's post-processing, as written for PyTorch, with minidl."""
    values = distinct(rng, (4, 6), spacing=0.1).astype(np.float32)
    for lib in (minidl, torch):
        logits = lib.tensor(values, requires_grad=True)
        target = lib.tensor([1, 0, 5, 2])
        probs = logits.softmax(dim=1)
        top_p, top_i = probs.topk(3, dim=1)
        picked = probs.gather(1, target.unsqueeze(1)).squeeze(1)
        onehot = lib.nn.functional.one_hot(target, num_classes=6).float()
        masked = logits.masked_fill(onehot.bool(), float("-inf"))
        loss = -(picked.log().sum()) + lib.linalg.vector_norm(top_p, dim=1).sum() + \
            masked.max(dim=1).values.sum() + lib.einsum("bc,bc->", probs, onehot)
        loss.backward()
        if lib is minidl:
            md_grad, md_idx = logits.grad.numpy(), top_i.numpy()
        else:
            np.testing.assert_allclose(md_grad, logits.grad.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(md_idx, top_i.numpy())
