"""The batch-norm kernel family (minidl/kernels/batchnorm.py): the numba fast paths against
the NumPy reference (float32 loose, float64 tight) on every layout the kernels distinguish,
through the registry (``use_impl``, with ``decisions()`` showing which implementation ran)
and through the whole op: outputs, gradients and running statistics."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
import minidl.kernels as K
from minidl.kernels import batchnorm as bn
from minidl.kernels import threads
from minidl.ops.norm import batch_norm

pytestmark = pytest.mark.skipif(not K.numba_available(), reason="numba is not installed")

# (N, C) -> "rows" kernels; everything else -> "planes" kernels (S = prod(*S) > 1),
# (7, 2, 1, 1) has S == 1 with four dims: rows again. The writes (normalize, input_grad)
# take planes shorter than SHORT_PLANE (32) as rows too: only (3, 4, 6, 7) writes planes.
SHAPES = [(6, 4), (64, 3), (5, 3, 7), (4, 3, 5, 6), (2, 3, 4, 5, 3), (7, 2, 1, 1), (3, 4, 6, 7)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = [np.float32, np.float64]


def _data(rng, shape, dtype, loc=1.0, scale=2.0):
    C = shape[1]
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    return x, gy, w, b


def _run(impl, step, *args):
    """``bn.<step>(*args)`` with ``impl`` forced for the batch_norm family, checking that
    ``impl`` is what ran."""
    with K.use_impl(impl, family="batch_norm"), K.decisions() as log:
        out = getattr(bn, step)(*args)
    assert log == [("batch_norm", impl)], f"{step}: ran {log}, not {impl}"
    return out


def _stats(x, impl):
    mean, var = _run(impl, "batch_stats", x)
    return mean, var, (1 / np.sqrt(var + 1e-5)).astype(x.dtype)


def _close(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=what, **TOL[dtype])


# --- each kernel, numba == reference, through the registry -----------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_kernel_matches_the_reference(rng, shape, dtype):
    x, gy, w, b = _data(rng, shape, dtype)
    mean, var, inv_std = _stats(x, "reference")
    for k, fast in enumerate(_stats(x, "numba")[:2]):
        _close(fast, (mean, var)[k], dtype, ("mean", "var")[k])
    for weight, bias in [(w, b), (None, None), (w, None)]:
        _close(_run("numba", "normalize", x, mean, inv_std, weight, bias),
               _run("reference", "normalize", x, mean, inv_std, weight, bias), dtype, "y")
    sums = _run("numba", "grad_sums", gy, x, mean, inv_std)
    sums_ref = _run("reference", "grad_sums", gy, x, mean, inv_std)
    _close(sums[0], sums_ref[0], dtype, "gbias")
    _close(sums[1], sums_ref[1], dtype, "gweight")
    for weight in (w, None):
        for training in (True, False):
            args = (gy, x, mean, inv_std, weight, *sums_ref, training)
            _close(_run("numba", "input_grad", *args), _run("reference", "input_grad", *args),
                   dtype, f"gx (training={training})")


def test_every_implementation_has_the_same_functions():
    names = ("batch_stats", "normalize", "grad_sums", "input_grad")
    for impl in bn.BATCH_NORM.impls.values():
        if impl.name == "cuda" and not impl.loads():
            continue
        for name in names:
            assert callable(getattr(impl.code, name)), f"{impl}: no {name}"


def test_float32_statistics_are_accurate_far_from_zero(rng):
    """float64 sums and a per-plane two-pass: no E[x^2] - E[x]^2 cancellation, even with
    a mean 1000 standard deviations away from zero."""
    x = (rng.standard_normal((8, 3, 16, 16)) + 1000).astype(np.float32)
    mean, var = _run("numba", "batch_stats", x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-6)


def test_float64_statistics_are_exact_to_rounding(rng):
    x = rng.standard_normal((16, 4, 33)) * 3 + 50
    mean, var = _run("numba", "batch_stats", x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous_inputs_give_the_same_result(rng, layout):
    base = rng.standard_normal((4, 5, 6, 3)).astype(np.float32)
    if layout == "transposed":     # a (4, 3, 6, 5) view with C not contiguous
        x = base.transpose(0, 3, 2, 1)
    else:                          # every other column
        x = base[:, :, :, ::2]
    gy = rng.standard_normal(x.shape).astype(np.float32)[..., ::-1]   # negative strides
    assert not x.flags.c_contiguous and not gy.flags.c_contiguous
    mean, var, inv_std = _stats(x, "reference")
    _close(_run("numba", "batch_stats", x)[1], var, np.float32, "var")
    _close(_run("numba", "normalize", x, mean, inv_std),
           _run("reference", "normalize", x, mean, inv_std), np.float32, "y")
    sums = _run("numba", "grad_sums", gy, x, mean, inv_std)
    ref = _run("reference", "grad_sums", gy, x, mean, inv_std)
    _close(sums[1], ref[1], np.float32, "gweight")
    args = (gy, x, mean, inv_std, None, *ref, True)
    _close(_run("numba", "input_grad", *args), _run("reference", "input_grad", *args),
           np.float32, "gx")


def _every_step(x, gy, w, b):
    """Every numba batch-norm step on one batch: mean, var, y, gbias, gweight, gx."""
    mean, var, inv_std = _stats(x, "numba")
    sums = _run("numba", "grad_sums", gy, x, mean, inv_std)
    return (mean, var, _run("numba", "normalize", x, mean, inv_std, w, b), *sums,
            _run("numba", "input_grad", gy, x, mean, inv_std, w, *sums, True))


def test_parallel_build_gives_bitwise_the_same_results(rng):
    """The parallel build (``threads.set_parallel(True)``) against the serial one
    (``set_parallel(False)``). Each thread owns whole channels (sums) or planes (writes),
    and a channel's sum always runs over n in order: the thread count cannot change a
    single bit."""
    numba = pytest.importorskip("numba")
    nb = bn.BATCH_NORM.impls["numba"].code          # the module batchnorm_numba
    x, gy, w, b = _data(rng, (8, 5, 33, 31), np.float32)
    short = _data(rng, (64, 40, 4, 4), np.float32)  # planes of 16: written as rows
    # rows cut into chunks of unequal size (7 and 9 rows over 2 threads), S == 16 and 1
    uneven = [_data(rng, (7, 300, 4, 4), np.float32), _data(rng, (9, 4000), np.float32)]
    with threads.set_parallel(False):
        assert threads.parallel(x.size) is False    # serial when forbidden ...
    with threads.set_parallel(True):
        assert threads.parallel(x.size) is True     # ... parallel at this size when allowed
        assert threads.parallel(short[0].size) is True

    def run():
        return (_every_step(x, gy, w, b) + _every_step(*short)
                + sum((_every_step(*u) for u in uneven), ()))

    with threads.set_parallel(False):
        serial = run()
    threads_before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        with threads.set_parallel(True):
            parallel = run()
    finally:
        numba.set_num_threads(threads_before)
    for kernel in (nb._stats_planes, nb._grad_sums_planes, nb._affine_planes,
                   nb._input_grad_planes, nb._affine_rows,
                   nb._input_grad_rows):       # the parallel builds did run
        assert kernel.parallel_build.signatures, f"{kernel.__name__}: parallel build unused"
    for a, p in zip(serial, parallel):
        np.testing.assert_array_equal(a, p)


def test_short_planes_written_as_rows_are_bitwise_the_planes_results(rng, monkeypatch):
    """The writes take planes shorter than SHORT_PLANE as (N, C*S) rows with repeated
    constants: the same arithmetic per element, so the same bits as the planes kernels."""
    nb = bn.BATCH_NORM.impls["numba"].code
    x, gy, w, b = _data(rng, (6, 5, 3, 4), np.float32)
    mean, var, inv_std = _stats(x, "reference")
    sums = _run("reference", "grad_sums", gy, x, mean, inv_std)

    def writes():
        return [nb.normalize(x, mean, inv_std, w, b),
                nb.input_grad(gy, x, mean, inv_std, w, *sums, True),
                nb.input_grad(gy, x, mean, inv_std, w, *sums, False)]

    assert x[0, 0].size < nb.SHORT_PLANE
    as_rows = writes()
    monkeypatch.setattr(nb, "SHORT_PLANE", 1)
    as_planes = writes()
    for r, p in zip(as_rows, as_planes):
        np.testing.assert_array_equal(r, p)


# --- the whole op, numba vs reference ---------------------------------------------------


def _op(x0, w0, b0, gy0, training, impl):
    """batch_norm forward + backward with ``impl`` forced; returns every array."""
    C = x0.shape[1]
    dtype = x0.dtype.type
    rm = minidl.tensor(np.linspace(-0.5, 0.5, C).astype(dtype))
    rv = minidl.tensor(np.linspace(0.5, 2.0, C).astype(dtype))
    x = minidl.tensor(x0, requires_grad=True)
    w = None if w0 is None else minidl.tensor(w0, requires_grad=True)
    b = None if b0 is None else minidl.tensor(b0, requires_grad=True)
    with K.use_impl(impl, family="batch_norm"), K.decisions() as log:
        outs = []
        for _ in range(2):   # two steps: the running statistics accumulate
            y = batch_norm(x, rm, rv, w, b, training=training, momentum=0.3)
            y.backward(minidl.tensor(gy0))
            outs.append(y.numpy())
        outs += [x.grad.numpy(), rm.numpy(), rv.numpy()]
        if w is not None:
            outs += [w.grad.numpy(), b.grad.numpy()]
    ran = {i for f, i in log if f == "batch_norm"}
    assert ran == {impl}, f"batch_norm ran {ran}, not {impl}"
    return outs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 7), (4, 3, 5, 6)])
def test_op_numba_equals_reference(rng, shape, training, affine, dtype):
    x, gy, w, b = _data(rng, shape, dtype)
    if not affine:
        w = b = None
    fast = _op(x, w, b, gy, training, "numba")
    ref = _op(x, w, b, gy, training, "reference")
    for k, (f, r) in enumerate(zip(fast, ref)):
        _close(f, r, dtype, f"array {k}")


def test_op_only_some_gradients(rng, use_impl):
    """Frozen affine parameters, or a frozen input: the op computes only what is asked."""
    x0, gy0, w0, b0 = _data(rng, (4, 3, 5), np.float64)
    for need in [(True, False, False), (False, True, True), (False, True, False)]:
        grads = {}
        for impl in ("numba", "reference"):
            x = minidl.tensor(x0, requires_grad=need[0])
            w = minidl.tensor(w0, requires_grad=need[1])
            b = minidl.tensor(b0, requires_grad=need[2])
            use_impl(impl, family="batch_norm")
            batch_norm(x, None, None, w, b, training=True).backward(minidl.tensor(gy0))
            grads[impl] = [None if t.grad is None else t.grad.numpy() for t in (x, w, b)]
        for f, r, n in zip(grads["numba"], grads["reference"], need):
            assert (f is not None) == n
            if n:
                _close(f, r, np.float64, "grad")


# --- the registry's choice --------------------------------------------------------------


def test_automatic_choice_takes_numba_for_numpy_floats_only():
    f16, f32, f64 = (np.ones((2, 3), d) for d in (np.float16, np.float32, np.float64))
    with K.decisions() as log:
        for x in (f32, f64, f16):
            bn.batch_stats(x)
        with K.use_impl("reference", family="batch_norm"):
            bn.batch_stats(f32)
    assert [impl for _, impl in log] == ["numba", "numba", "reference", "reference"]
    assert K.which("batch_norm", f32) == "numba"
    assert K.which("batch_norm", f16) == "reference"


def test_use_impl_reference_for_all_families_routes_batch_norm(rng, use_impl):
    x, gy, w, b = _data(rng, (4, 3, 5), np.float32)
    use_impl("reference")
    with K.decisions() as log:
        batch_norm(minidl.tensor(x, requires_grad=True), None, None, minidl.tensor(w),
                   minidl.tensor(b), training=True).backward(minidl.tensor(gy))
    assert log and all(impl == "reference" for fam, impl in log if fam == "batch_norm")
    assert ("batch_norm", "reference") in log


def test_float16_falls_back_to_the_reference(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float16)
    with K.use_impl("numba", family="batch_norm"), K.decisions() as log:   # cannot run f16
        y = batch_norm(minidl.tensor(x), None, None, training=True)
    assert {impl for _, impl in log} == {"reference"}
    with K.use_impl("reference", family="batch_norm"):
        y_ref = batch_norm(minidl.tensor(x), None, None, training=True)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.numpy(), y_ref.numpy())


def test_errors():
    with pytest.raises(ValueError, match=r"use_impl: impl must be one of .*; got 'gpu'"):
        K.use_impl("gpu", family="batch_norm")
    nb = bn.BATCH_NORM.impls["numba"].code     # called directly, past the registry
    with pytest.raises(TypeError, match="batch_norm: the numba batch_stats takes a NumPy "
                                        "float32 or float64 array, got ndarray float16"):
        nb.batch_stats(np.ones((2, 3), np.float16))
