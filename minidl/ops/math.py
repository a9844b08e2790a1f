"""Math on tensors: sin, cos, cumsum, lerp, vector/matrix norms, einsum, bmm, isclose/allclose.

Shapes: x the input (any shape S), y the result, gy (like y) dL/dy, gx (like x) dL/dx.
Norms reduce over ``axes`` (y: S without them, or with size 1 under ``keepdim``).
einsum: one subscript letter per dim of each operand; ``...`` stands for the leading dims.
bmm: (B, N, M) @ (B, M, P) -> (B, N, P).

What is a new Function here and what is built from others:

- sin, cos: Functions (their derivatives are each other, so the recorded backward is the
  same formula on Tensors);
- cumsum: a Function whose backward is a cumsum from the other end (a "reverse" cumsum,
  the same Function with ``reverse=True``), so it can be recorded again;
- vector_norm: one Function for every order p != 0 (p = 2 needs its own care at 0, where
  sqrt has no derivative: PyTorch's subgradient there is 0, and minidl's too);
- einsum: a Function; the gradient for each operand is again an einsum, of gy with the
  other operands, written to that operand's subscripts;
- lerp, bmm, matrix_norm, isclose, allclose: built from existing ops (no new Function).
"""
from __future__ import annotations

import builtins
import string

import numpy as np

from .. import backend
from ..autograd import Function, Tensor
from ..errors import ShapeError
from ..kernels.threads import single_blas
from .elementwise import abs as _abs
from .elementwise import add, mul, sub
from .linalg import matmul
from .reduce import _expand_back
from .utils import as_tensor, normalize_dim


# --- sin, cos --------------------------------------------------------------------------

class SinFunction(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.get_array_module(x).sin(x)

    @staticmethod
    def backward(ctx, gy):  # d sin(x)/dx = cos(x)
        (x,) = ctx.saved_tensors
        return gy * backend.get_array_module(x).cos(x)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return gy * cos(x)


class CosFunction(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.get_array_module(x).cos(x)

    @staticmethod
    def backward(ctx, gy):  # d cos(x)/dx = -sin(x)
        (x,) = ctx.saved_tensors
        return -gy * backend.get_array_module(x).sin(x)

    @staticmethod
    def differentiable_backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return -gy * sin(x)


def _floating(name, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {x.dtype}")


def sin(input):  # noqa: A002 - PyTorch's name
    _floating("sin", input)
    return SinFunction.apply(input)


def cos(input):  # noqa: A002 - PyTorch's name
    _floating("cos", input)
    return CosFunction.apply(input)


# --- cumsum ------------------------------------------------------------------------------

def _cumsum(a, axis, reverse):
    """Running sums along ``axis``, from the start (``y_i = x_0 + ... + x_i``) or, reversed,
    from the end (``y_i = x_i + ... + x_last``)."""
    xp = backend.get_array_module(a)
    if not reverse:
        return xp.cumsum(a, axis=axis)
    return xp.flip(xp.cumsum(xp.flip(a, axis=axis), axis=axis), axis=axis)


class CumsumFunction(Function):
    """Running sums along ``axis``; x: (S) -> y: (S).

    x_j enters every y_i with i >= j, so gx_j = sum over i >= j of gy_i: a cumsum of gy
    from the other end. That is this Function with ``reverse`` flipped, so the recorded
    backward is an op too, whose own backward flips it back.
    """

    @staticmethod
    def forward(ctx, x, axis, reverse):
        ctx.meta = (axis, reverse)
        return _cumsum(x, axis, reverse)

    @staticmethod
    def backward(ctx, gy):
        axis, reverse = ctx.meta
        return _cumsum(gy, axis, not reverse)

    @staticmethod
    def differentiable_backward(ctx, gy):
        axis, reverse = ctx.meta
        return CumsumFunction.apply(gy, axis=axis, reverse=not reverse)


def cumsum(input, dim, *, dtype=None):  # noqa: A002 - PyTorch's names
    """Running sums along ``dim``: ``y[i] = x[0] + ... + x[i]``. Integer and bool inputs
    give int64 (PyTorch's rule); ``dtype`` casts the input first."""
    if dtype is not None:
        input = input.to(dtype)
    elif input.dtype.kind in "biu":
        input = input.to(np.int64)
    (d,) = normalize_dim(dim, input.ndim, "cumsum")
    if input.ndim == 0:
        return CumsumFunction.apply(input.reshape(1), axis=0, reverse=False).reshape(())
    return CumsumFunction.apply(input, axis=d, reverse=False)


# --- lerp --------------------------------------------------------------------------------

def lerp(input, end, weight):  # noqa: A002 - PyTorch's names
    """``input + weight * (end - input)``: from ``input`` (weight 0) to ``end`` (weight 1);
    ``weight`` a number or a tensor; all broadcast. Built from add/mul/sub, so its
    gradients (1 - weight, weight, end - input) and their recorded forms come with them."""
    if input.dtype != end.dtype:
        raise TypeError(f"lerp: expected end of the input's dtype {input.dtype}, got {end.dtype}")
    if isinstance(weight, Tensor) and weight.dtype != input.dtype:
        raise TypeError(f"lerp: expected weight of the input's dtype {input.dtype}, got "
                        f"{weight.dtype}")
    return add(input, mul(weight if isinstance(weight, Tensor) else as_tensor(weight, input),
                          sub(end, input)))


# --- norms -------------------------------------------------------------------------------

def _const(fn, t):
    """``fn`` applied to the raw values of ``t`` (an array, or a Tensor whose result is
    then a constant Tensor: a sign or a selection, whose derivative is 0 almost everywhere)."""
    if isinstance(t, Tensor):
        return Tensor(fn(t.data))
    return fn(t)


class VectorNormFunction(Function):
    """y = (sum over axes of |x|^p)^(1/p), for p = inf / -inf the max / min of |x|.
    x: (S) -> y: (S without axes, or size 1 there with keepdim). p = 0 is not here (a count:
    see ``vector_norm``).

    Gradients, with gyb and yb the upstream gradient and y broadcast back to x's shape:
      p = 2:      gx = gyb * x / yb            (0 where y = 0: x is 0 there, and yb is
                                                replaced by 1, PyTorch's subgradient)
      p = 1:      gx = gyb * sign(x)
      p = +-inf:  gx = gyb * sign(x) * [|x| = yb] / (how many reach it): ties share evenly
      other p:    gx = gyb * sign(x) * |x|^(p-1) / yb^(p-1)
    Each is written once, on operations arrays and Tensors share (``_const`` for the sign
    and the selection), so the same code is the recorded backward.
    """

    @staticmethod
    def forward(ctx, x, p, axes, keepdim):
        xp = backend.get_array_module(x)
        a = xp.abs(x)
        if p == 2:
            y = xp.sqrt((x * x).sum(axis=axes, keepdims=keepdim))
        elif p == 1:
            y = a.sum(axis=axes, keepdims=keepdim)
        elif p == float("inf"):
            y = a.max(axis=axes, keepdims=keepdim)
        elif p == float("-inf"):
            y = a.min(axis=axes, keepdims=keepdim)
        else:
            y = (a ** p).sum(axis=axes, keepdims=keepdim) ** (1.0 / p)
        ctx.save_for_backward(x, y)
        ctx.meta = (p, x.shape, axes, keepdim)
        return y.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, gy):
        x, y = ctx.saved_tensors
        p, shape, axes, keepdim = ctx.meta
        gyb = _expand_back(gy, shape, axes, keepdim)
        yb = _expand_back(y, shape, axes, keepdim)
        if p == 2:
            return gyb * x / (yb + (yb == 0))  # y = 0 only where x = 0: 0 / 1
        sign = _const(lambda a: backend.get_array_module(a).sign(a), x)
        if p == 1:
            return gyb * sign
        if p in (float("inf"), float("-inf")):
            def share(a):  # sign(x) * [|x| = y] / count, a constant
                xp = backend.get_array_module(a)
                yd = yb.data if isinstance(yb, Tensor) else yb
                hit = xp.abs(a) == yd
                return (xp.sign(a) * hit / hit.sum(axis=axes, keepdims=True)).astype(a.dtype)
            return gyb * _const(share, x)
        safe = yb + (yb == 0)
        return gyb * sign * abs(x) ** (p - 1) / safe ** (p - 1)

    differentiable_backward = backward


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):  # noqa: A002
    """The ``ord``-norm of ``x`` over ``dim`` (None: all elements, as one vector):
    ``(sum |x|^ord)^(1/ord)``; ``inf``/``-inf``: the largest/smallest ``|x|``; 0: the
    number of non-zeros. ``torch.linalg.vector_norm``'s signature."""
    name = "linalg.vector_norm"
    if dtype is not None:
        x = x.to(dtype)
    if not isinstance(x, Tensor) or x.dtype.kind != "f":
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a floating point tensor, got {got}")
    if isinstance(ord, bool) or not isinstance(ord, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: ord must be a number (or inf), got {ord!r}")
    axes = normalize_dim(dim, x.ndim, name)
    if x.ndim == 0:  # a single number: the norm of a one-element vector, 0-d again
        return vector_norm(x.reshape(1), ord, 0, False).reshape(())
    if ord == 0:  # a count: x * 0 keeps the result in the graph with gradient 0 (PyTorch's)
        count = (x != 0).to(x.dtype)
        return (count + x * 0).sum(dim=axes, keepdim=keepdim)
    if ord < 0 and ord != float("-inf"):
        raise ValueError(f"{name}: negative ord {ord} is not supported by minidl "
                         "(use ord >= 0, inf or -inf)")
    return VectorNormFunction.apply(x, p=float(ord), axes=axes, keepdim=keepdim)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None):  # noqa: N803, A002
    """Norm of the matrices in the two dims ``dim`` of ``A`` (..., M, N): ``'fro'`` (the
    2-norm of all entries), 1 / -1 (largest / smallest column sum of |A|), inf / -inf
    (largest / smallest row sum). 2, -2 and 'nuc' need singular values: not supported."""
    name = "linalg.matrix_norm"
    if dtype is not None:
        A = A.to(dtype)
    if A.ndim < 2:
        raise ShapeError(f"{name}: expected a tensor of at least 2 dims (..., M, N), got "
                         f"shape {A.shape}")
    rows, cols = normalize_dim(dim, A.ndim, name)
    if ord == "fro":
        return vector_norm(A, 2, (rows, cols), keepdim)
    if ord in ("nuc", 2, -2):
        raise NotImplementedError(f"{name}: ord={ord!r} needs singular values, which minidl "
                                  "does not compute; use 'fro', 1, -1, inf or -inf")
    if ord not in (1, -1, float("inf"), float("-inf")):
        raise ValueError(f"{name}: ord must be 'fro', 'nuc', 1, -1, 2, -2, inf or -inf, "
                         f"got {ord!r}")
    summed, picked = (rows, cols) if ord in (1, -1) else (cols, rows)
    sums = _abs(A).sum(dim=summed, keepdim=True)          # column (ord 1) or row sums
    extreme = sums.max(dim=picked, keepdim=True) if ord > 0 else sums.min(dim=picked,
                                                                            keepdim=True)
    y = extreme.values
    return y if keepdim else y.squeeze((rows, cols))


def norm(input, p="fro", dim=None, keepdim=False, dtype=None):  # noqa: A002 - PyTorch's names
    """``torch.norm`` / ``Tensor.norm``: ``p='fro'`` (or 2) the 2-norm of the elements over
    ``dim`` (all of them when None); a number p the p-norm (``vector_norm``). 'nuc' is not
    supported (it needs singular values)."""
    if p == "fro":
        p = 2
    elif p == "nuc":
        raise NotImplementedError("norm: p='nuc' needs singular values, which minidl does "
                                  "not compute")
    elif isinstance(p, str):
        raise ValueError(f"norm: p must be 'fro', 'nuc' or a number, got {p!r}")
    return vector_norm(input, p, dim, keepdim, dtype=dtype)


# --- einsum ------------------------------------------------------------------------------

class _EinsumSpec:
    """A parsed equation with ``...`` replaced by letters, and the size of every letter.

    subs: one string of letters per operand (one letter per dim); out: the output's
    letters; sizes: letter -> its size (the largest over the operands: a size-1 dim
    broadcasts, as in PyTorch); broadcast: whether any dim does broadcast.
    """

    def __init__(self, equation, shapes):
        eq = equation.replace(" ", "")
        lhs, arrow, rhs = eq.partition("->")
        terms = lhs.split(",")
        if len(terms) != len(shapes):
            raise ValueError(f"einsum: the equation {equation!r} names {len(terms)} operands, "
                             f"got {len(shapes)} tensors")
        used = set(c for c in eq if c.isalpha())
        bad = set(eq) - used - set(",.->")
        if bad or eq.replace("...", "").count(".") or "-" in eq.replace("->", ""):
            raise ValueError(f"einsum: the equation {equation!r} may hold only letters, ',', "
                             "'...' and one '->'")
        free = [c for c in string.ascii_letters if c not in used]
        ell = builtins.max([len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t]
                           or [0])
        ell_letters = "".join(free[:ell])
        subs = []
        for k, (t, s) in enumerate(zip(terms, shapes)):
            if "..." in t:
                n = len(s) - (len(t) - 3)
                if n < 0:
                    raise ShapeError(f"einsum: operand {k} has {len(s)} dims {s}, fewer than "
                                     f"the subscripts {t!r} name")
                t = t.replace("...", ell_letters[ell - n:])
            if len(t) != len(s):
                raise ShapeError(f"einsum: operand {k} has {len(s)} dims {s} but its "
                                 f"subscripts {t!r} name {len(t)}")
            subs.append(t)
        if arrow:
            out = rhs.replace("...", ell_letters)
            if "." in out:
                raise ValueError(f"einsum: bad output subscripts {rhs!r}")
        else:  # implicit output: '...' first, then the letters used once, alphabetically
            counts = {}
            for t in terms:
                for c in t.replace("...", ""):
                    counts[c] = counts.get(c, 0) + 1
            out = ell_letters + "".join(sorted(c for c, n in counts.items() if n == 1))
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: output subscripts {rhs!r} repeat a letter")
        sizes, self.broadcast = {}, False
        for k, (t, s) in enumerate(zip(subs, shapes)):
            for c, n in zip(t, s):
                m = sizes.get(c, n)
                if m != n and 1 not in (m, n):
                    raise ShapeError(f"einsum: subscript {c!r} has size {m} in one operand and "
                                     f"{n} in operand {k} {tuple(s)}")
                self.broadcast |= m != n
                sizes[c] = builtins.max(m, n)
        for c in out:
            if c not in sizes:
                raise ValueError(f"einsum: output subscript {c!r} does not occur in the inputs")
        self.subs, self.out, self.sizes = subs, out, sizes
        self.shapes = [tuple(s) for s in shapes]
        self.free = [c for c in free[ell:]]

    def equation(self):
        return ",".join(self.subs) + "->" + self.out

    def grad_plan(self, i):
        """How to get operand i's gradient as one einsum of gy with the other operands.

        Returns (terms, eyes, target, mid_shape): the einsum reads ``terms`` (gy's letters,
        then the other operands' letters, then one letter pair per identity matrix in
        ``eyes``) and writes ``target``; the result, reshaped to ``mid_shape`` (1 for the
        letters it lacks), broadcasts to operand i's shape.

        A letter repeated in operand i (a diagonal: ``'ii->i'``) gets a fresh letter for
        each repeat and an identity matrix linking the two: the gradient lands on the
        diagonal only. A letter only operand i has (summed in the forward) is absent from
        the einsum: the gradient is the same along it (the broadcast at the end); so is a
        size-1 dim of operand i that other operands broadcast against (summed here).
        """
        sub, shape = self.subs[i], self.shapes[i]
        fresh = iter(c for c in self.free if c not in sub)
        letters, eyes, seen = [], [], set()
        for c in sub:
            if c in seen:
                m = next(fresh)
                eyes.append((c, m, self.sizes[c]))
                letters.append(m)
            else:
                seen.add(c)
                letters.append(c)
        avail = set(self.out).union(*(set(s) for j, s in enumerate(self.subs) if j != i))
        avail |= {c for e in eyes for c in e[:2]}
        target = ""
        mid = []
        for c, n in zip(letters, shape):
            keep = c in avail and n == self.sizes.get(c, n)
            target += c if keep else ""
            mid.append(n if keep else 1)
        terms = [self.out] + [s for j, s in enumerate(self.subs) if j != i] + \
                [a + b for a, b, _ in eyes]
        return terms, eyes, target, tuple(mid)


def _einsum_arrays(equation, *arrays, broadcast):
    xp = backend.get_array_module(*arrays)
    if xp is np and not broadcast:  # NumPy contracts pairs through BLAS only when optimised
        with single_blas():         # the threading policy (kernels/threads.py)
            return np.einsum(equation, *arrays, optimize=True)
    return xp.einsum(equation, *arrays)


class EinsumFunction(Function):
    """y = einsum(equation, *operands), with ``spec`` the parsed equation (``_EinsumSpec``).

    dL/d(operand i) = einsum of gy with every other operand, written to operand i's
    letters: the forward is linear in each operand, so its gradient is the same sum of
    products with operand i left out (``grad_plan`` says how, diagonals and summed
    letters included). The recorded backward is that einsum on Tensors.
    """

    @staticmethod
    def forward(ctx, *operands, spec):
        ctx.save_for_backward(*operands)
        ctx.spec = spec
        return _einsum_arrays(spec.equation(), *operands, broadcast=spec.broadcast)

    @staticmethod
    def backward(ctx, gy):
        ops_ = ctx.saved_tensors
        xp = backend.get_array_module(gy)
        grads = []
        for i, need in enumerate(ctx.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            terms, eyes, target, mid = ctx.spec.grad_plan(i)
            arrays = [gy] + [o for j, o in enumerate(ops_) if j != i] + \
                     [xp.eye(n, dtype=gy.dtype) for _, _, n in eyes]
            g = _einsum_arrays(",".join(terms) + "->" + target, *arrays,
                               broadcast=ctx.spec.broadcast)
            grads.append(xp.broadcast_to(g.reshape(mid), ctx.spec.shapes[i]).astype(
                ops_[i].dtype, copy=False))
        return tuple(grads)

    @staticmethod
    def differentiable_backward(ctx, gy):
        ops_ = ctx.saved_tensors
        xp = backend.get_array_module(gy.data)
        grads = []
        for i, need in enumerate(ctx.needs_input_grad):
            if not need:
                grads.append(None)
                continue
            terms, eyes, target, mid = ctx.spec.grad_plan(i)
            tensors = [gy] + [o for j, o in enumerate(ops_) if j != i] + \
                      [Tensor(xp.eye(n, dtype=gy.dtype)) for _, _, n in eyes]
            shapes = [tuple(t.shape) for t in tensors]
            spec = _EinsumSpec(",".join(terms) + "->" + target, shapes)
            g = EinsumFunction.apply(*tensors, spec=spec)
            grads.append(g.reshape(mid).expand(ctx.spec.shapes[i]))
        return tuple(grads)


def einsum(equation, *operands):
    """Sums of products over the subscripts of ``equation`` (``torch.einsum``):
    ``einsum('ij,jk->ik', a, b)`` is ``a @ b``, ``'bij,bjk->bik'`` a batched product,
    ``'ii->i'`` a diagonal, ``'...ij->...ji'`` a transpose of the last two dims. Without
    ``->`` the output holds the letters used once, in alphabetical order. Operands may
    also come as one list (``einsum(eq, [a, b])``). Differentiable in every operand."""
    if not isinstance(equation, str):
        raise TypeError(f"einsum: the equation must be a string, got {type(equation).__name__}")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum: expected at least one operand")
    for k, o in enumerate(operands):
        if not isinstance(o, Tensor):
            raise TypeError(f"einsum: operand {k} must be a Tensor, got {type(o).__name__}")
        if o.dtype != operands[0].dtype:
            raise TypeError(f"einsum: operands must share one dtype, got {operands[0].dtype} "
                            f"(operand 0) and {o.dtype} (operand {k})")
    spec = _EinsumSpec(equation, [o.shape for o in operands])
    return EinsumFunction.apply(*operands, spec=spec)


# --- bmm ---------------------------------------------------------------------------------

def bmm(input, mat2):  # noqa: A002 - PyTorch's names
    """Batched matrix product without broadcasting: (B, N, M) @ (B, M, P) -> (B, N, P)."""
    for name, t in (("input", input), ("mat2", mat2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"bmm: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim != 3:
            raise ShapeError(f"bmm: {name} must be a 3-D tensor (B, N, M), got shape {t.shape}")
    b, n, m = input.shape
    if mat2.shape[:2] != (b, m):
        raise ShapeError(f"bmm: expected mat2 of shape ({b}, {m}, P) for input {input.shape}, "
                         f"got {mat2.shape}")
    if input.dtype != mat2.dtype:
        raise TypeError(f"bmm: expected both operands to have the same dtype, got "
                        f"{input.dtype} and {mat2.dtype}")
    return matmul(input, mat2)


# --- closeness (no gradient) -------------------------------------------------------------

def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):  # noqa: A002
    """Elementwise ``|input - other| <= atol + rtol * |other|`` (broadcast), a boolean
    tensor; infinities equal themselves; NaNs are equal only with ``equal_nan``."""
    other = as_tensor(other, input)
    if input.dtype != other.dtype:
        raise TypeError(f"isclose: expected other of the input's dtype {input.dtype}, got "
                        f"{other.dtype}")
    if input.device != other.device:
        raise RuntimeError(f"isclose: tensors on different devices ({input.device}, "
                           f"{other.device})")
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose: rtol and atol must be non-negative, got rtol={rtol}, "
                         f"atol={atol}")
    xp = backend.get_array_module(input.data)
    try:
        np.broadcast_shapes(input.shape, other.shape)
    except ValueError:
        raise ShapeError(f"isclose: shapes {input.shape} and {other.shape} do not broadcast") \
            from None
    return Tensor(xp.isclose(input.data, other.data, rtol=rtol, atol=atol, equal_nan=equal_nan))


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):  # noqa: A002
    """Whether every element is close (``isclose``): a Python bool."""
    return bool(isclose(input, other, rtol, atol, equal_nan).data.all())
