"""The CUDA kernels of ``minidl/kernels/cuda_kernels.py`` against the NumPy references.

Two ways to run the same CUDA sources:

* on the CPU, everywhere: ``tests/cuda_emulator.py`` compiles each kernel's CUDA C++
  body as a C++ loop over ``i`` and runs it on NumPy arrays (``emulated`` fixture). The
  kernels' index arithmetic, bounds, tie and NaN rules and accumulation order are
  checked here on every machine, and whole ops (conv2d, pooling, batch norm, tanh,
  cross-entropy) run through them forward and backward against PyTorch and gradcheck;
* on a GPU (``pytest -m gpu``): the same comparisons with CuPy compiling the kernels.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl
import minidl.kernels as K
from cuda_emulator import CXX, EmulatedElementwiseKernel
from helpers import check_op, distinct
from minidl import backend, geometry
from minidl.kernels import batchnorm as KB
from minidl.kernels import batchnorm_reference as KBR
from minidl.geometry import ConvGeometry
from minidl.kernels import cuda_kernels as CK
from minidl.kernels import im2col as KI
from minidl.kernels import pool as KP
from minidl.kernels import pool_reference as KPR
from minidl.ops import loss as loss_ops

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}


@pytest.fixture
def emulated():
    """The CUDA kernels built by the C++ emulator for the duration of a test."""
    if CXX is None:
        pytest.skip("no C++ compiler (g++) to emulate the CUDA kernels on the CPU")
    with CK.use_kernel_class(EmulatedElementwiseKernel):
        yield


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def where(request):
    """Run the kernels in the C++ emulator on the CPU, or with CuPy on a GPU. Yields a
    function moving a NumPy array to where the kernels run."""
    if request.param == "emulated":
        request.getfixturevalue("emulated")
        yield lambda a: a
        return
    if not minidl.cuda.is_available():
        pytest.skip("no CUDA GPU (or no CuPy) on this machine: GPU cases run with "
                    "`pytest -m gpu` on a GPU")
    yield lambda a: backend.to_device(a, "cuda")


def host(a):
    return backend.to_numpy(a)


def close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(host(actual), expected, err_msg=what, **TOL[dtype])


# ----------------------------------------------------------------------------- im2col

CONV_GEOMETRIES = [  # (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), (DH, DW)
    ((2, 3, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 2, 9, 7), (5, 3), (2, 1), (2, 0), (1, 2)),
    ((1, 4, 10, 11), (3, 2), (3, 2), ((1, 2), (0, 1)), (2, 1)),   # asymmetric padding
    ((3, 1, 32, 32), (5, 5), (1, 1), (0, 0), (1, 1)),              # LeNet's first layer
    ((1, 2, 6, 6), (1, 1), (2, 2), (0, 0), (1, 1)),                # 1x1 stride 2 (ResNet)
]


def _geo(shape, k, s=(1, 1), p=(0, 0), d=(1, 1)):
    """The ConvGeometry of im2col on ``shape`` (one output channel: im2col ignores OC)."""
    pads = tuple(q if isinstance(q, tuple) else (q, q) for q in p)
    return ConvGeometry.of(shape, (1, shape[1], *k), s, pads, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d", CONV_GEOMETRIES)
def test_im2col_and_col2im_match_the_reference(where, rng, dtype, shape, k, s, p, d, use_impl):
    g = _geo(shape, k, s, p, d)
    x = rng.standard_normal(shape).astype(dtype)
    ref = KI.im2col_reference(x, g)
    use_impl("cuda", family="im2col")
    with K.decisions() as log:
        col = KI.im2col(where(x), g)
    assert log == [("im2col", "cuda")]
    assert col.shape == ref.shape and col.dtype == ref.dtype
    close(col, ref, dtype, "im2col")
    c = rng.standard_normal(ref.shape).astype(dtype)
    img_ref = KI.col2im_reference(c, g)
    img = KI.col2im(where(c), g)
    assert img.shape == shape
    close(img, img_ref, dtype, "col2im")


def test_im2col_fills_a_given_buffer(where, rng, use_impl):
    x = rng.standard_normal((2, 3, 6, 5))
    g = _geo(x.shape, (3, 3))
    out = where(np.full((3, 3, 3, 2, 4, 3), np.nan))
    use_impl("cuda", family="im2col")
    col = KI.im2col(where(x), g, out=out)
    assert col is out
    close(out, KI.im2col_reference(x, g), np.float64)


def test_col2im_is_deterministic(where, rng, use_impl):
    """Gather, no atomics: the same bits every run (overlapping 3x3 windows)."""
    g = _geo((2, 4, 8, 8), (3, 3), p=(1, 1))
    c = where(rng.standard_normal((4, 3, 3, 2, 8, 8)).astype(np.float32))
    use_impl("cuda", family="im2col")
    first = host(KI.col2im(c, g))
    for _ in range(3):
        assert np.array_equal(host(KI.col2im(c, g)), first)


# ----------------------------------------------------------------------------- pooling

POOL_WINDOWS = [  # (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
    ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 2, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 7, 5), (3, 2), (2, 1), (0, 0), (1, 1), False),
    ((2, 1, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),          # ResNet stem
    ((1, 2, 8, 7), (2, 3), (3, 2), (1, 1), (2, 1), False),
    ((1, 2, 5, 6), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 1, 5, 6), (3, 3), (2, 3), (0, 0), (1, 2), True),
    ((1, 1, 5, 5), (3, 3), (1, 1), (1, 1), (1, 1), False),          # overlapping
]


def _window(shape, k, s, p, d, ceil):
    return geometry.make_window(shape[-2:], k, s, p, d, ceil)


def pool_cuda():
    """The pool family's CUDA implementation (its functions, called directly)."""
    return KP.POOL.impls["cuda"].code


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOL_WINDOWS)
def test_max_pool_matches_the_reference(where, rng, dtype, shape, k, s, p, d, ceil):
    win = _window(shape, k, s, p, d, ceil)
    x = distinct(rng, shape).astype(dtype)
    y_ref, arg_ref = KPR.max_pool2d_forward(x, win)
    y, arg = pool_cuda().max_pool2d_forward(where(x), win)
    assert arg.dtype == arg_ref.dtype
    close(y, y_ref, dtype, "max")
    assert np.array_equal(host(arg), arg_ref), "argmax taps"
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    gx = pool_cuda().max_pool2d_backward(where(gy), arg, win)
    close(gx, KPR.max_pool2d_backward(gy, arg_ref, win), dtype, "max backward")


def test_max_pool_ties_nan_and_minus_inf_follow_the_reference(where):
    """First of equal maxima wins, the last NaN wins, an all -inf window points at its
    first input tap (never at padding): the reference's (PyTorch's) rules."""
    x = np.array([[[[1.0, 1.0, 0.0, np.nan],
                    [1.0, 0.5, np.nan, np.nan],
                    [-np.inf, -np.inf, 2.0, 3.0],
                    [-np.inf, -np.inf, 3.0, 3.0]]]])
    for k, s, p in [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 2), (1, 1), (1, 1))]:
        win = _window(x.shape, k, s, p, (1, 1), False)
        y_ref, arg_ref = KPR.max_pool2d_forward(x, win)
        y, arg = pool_cuda().max_pool2d_forward(where(x), win)
        np.testing.assert_array_equal(host(y), y_ref)
        np.testing.assert_array_equal(host(arg), arg_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p,d,ceil", [w for w in POOL_WINDOWS if w[4] == (1, 1)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_the_reference(where, rng, dtype, shape, k, s, p, d, ceil,
                                        count_include_pad):
    win = _window(shape, k, s, p, d, ceil)
    divisor = KPR.avg_pool2d_divisor(win, count_include_pad)
    x = rng.standard_normal(shape).astype(dtype)
    y_ref = KPR.avg_pool2d_forward(x, win, divisor)
    close(pool_cuda().avg_pool2d_forward(where(x), win, divisor), y_ref, dtype, "avg")
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    close(pool_cuda().avg_pool2d_backward(where(gy), win, divisor),
          KPR.avg_pool2d_backward(gy, win, divisor), dtype, "avg backward")


# ----------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 5), (3, 4, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_kernels_match_the_reference(where, rng, dtype, shape, affine):
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    mean, var = KBR.batch_stats(x)
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    bias = rng.standard_normal(C).astype(dtype) if affine else None
    dev = (lambda v: None if v is None else where(v))
    cuda = KB.BATCH_NORM.impls["cuda"].code
    y = cuda.normalize(where(x), dev(mean), dev(inv_std), dev(weight), dev(bias))
    close(y, KBR.normalize(x, mean, inv_std, weight, bias), dtype, "normalize")
    gbias, gweight = KBR.grad_sums(gy, x, mean, inv_std)
    for training in (True, False):
        gx = cuda.input_grad(where(gy), where(x), dev(mean), dev(inv_std), dev(weight),
                             dev(gbias), dev(gweight), training)
        ref = KBR.input_grad(gy, x, mean, inv_std, weight, gbias, gweight, training)
        close(gx, ref, dtype, f"input_grad training={training}")


# ----------------------------------------------------------------------------- tanh, loss

@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_backward_kernel(where, rng, dtype):
    gy = rng.standard_normal((3, 4, 5)).astype(dtype)
    y = np.tanh(rng.standard_normal((3, 4, 5))).astype(dtype)
    close(CK.tanh_backward(where(gy), where(y)), gy * (1 - y * y), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_backward_kernel(where, rng, dtype, reduction):
    N, C = 7, 5
    x = rng.standard_normal((N, C)).astype(dtype)
    target = rng.integers(0, C, N)
    target[2] = -100                                     # ignored
    logp = loss_ops.log_softmax_axis1(x)
    gy = np.asarray(rng.standard_normal(N if reduction == "none" else ()), dtype=dtype)
    denom = np.asarray((target != -100).sum(), dtype=dtype)
    G = loss_ops._upstream(gy, reduction, denom)
    A = loss_ops._weighted_targets(target, C, None, -100, 0.0, dtype)
    ref = (np.exp(logp) * A.sum(axis=1, keepdims=True) - A) * G
    gx = CK.cross_entropy_backward(where(logp), where(target), where(np.asarray(G)), -100)
    close(gx, ref, dtype)
    assert np.all(host(gx)[2] == 0)


# ----------------------------------------------------------------------------- whole ops
# The ops routed through the emulated CUDA kernels (``use_impl('cuda')`` for every family
# that has them, the im2col path for conv2d), forward and
# backward against PyTorch in float64/float32 and gradcheck, as the op tests do: this
# checks how the ops call the kernels. On a GPU the op tests themselves run on 'cuda'
# (their ``device`` parametrisation) and take these kernels by default.

@pytest.fixture
def cuda_paths(emulated):
    """Every kernel family on its CUDA path (im2col convolution, not the direct CPU one)."""
    with K.use_impl("cuda"), K.use_impl("reference", family="conv2d"):
        yield


def test_conv2d_through_the_cuda_kernels(cuda_paths, rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    check_op(lambda x, w, b: minidl.nn.functional.conv2d(x, w, b, **kw),
             lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_pooling_through_the_cuda_kernels(cuda_paths, rng, kw):
    x = distinct(rng, (2, 3, 7, 6))
    check_op(lambda t: minidl.nn.functional.max_pool2d(t, **kw),
             lambda t: F.max_pool2d(t, **kw), [x])
    check_op(lambda t: minidl.nn.functional.avg_pool2d(t, **kw),
             lambda t: F.avg_pool2d(t, **kw), [x])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_through_the_cuda_kernels(cuda_paths, rng, training):
    x = rng.standard_normal((4, 3, 5, 5))
    w, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    check_op(lambda x, w, b: minidl.nn.functional.batch_norm(
                 x, minidl.tensor(rm.astype(x.dtype)), minidl.tensor(rv.astype(x.dtype)), w, b,
                 training=training),
             lambda x, w, b: F.batch_norm(x, torch.tensor(rm, dtype=x.dtype),
                                          torch.tensor(rv, dtype=x.dtype), w, b,
                                          training=training), [x, w, b])


def test_tanh_and_cross_entropy_through_the_cuda_kernels(cuda_paths, rng):
    x = rng.standard_normal((6, 5))
    target = rng.integers(0, 5, 6)
    check_op(lambda t: minidl.tanh(t), torch.tanh, [x])
    for reduction in ("mean", "sum", "none"):
        check_op(lambda t, y: minidl.nn.functional.cross_entropy(t, y, reduction=reduction),
                 lambda t, y: F.cross_entropy(t, y, reduction=reduction), [x, target])


def test_the_kernels_are_not_used_for_numpy_arrays_outside_the_emulator(rng):
    """Without the emulator, NumPy arrays never take the CUDA path ('auto')."""
    x = rng.standard_normal((2, 2, 4, 4))
    assert not CK.available(x)
    assert K.which("pool", x) == "numba"
    assert K.which("im2col", x.astype(np.int64)) == "reference"
    assert K.which("im2col", x) == "numba"
