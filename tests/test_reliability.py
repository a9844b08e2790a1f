"""Nothing blows up: refusals that name the op, and memory peaks that stay near the data.

- conv2d / conv_transpose2d refuse an empty (0xK) kernel, as PyTorch does, instead of
  returning zeros; a padding or stride so large that no array could hold the result is
  refused by the op, by name, not by NumPy's anonymous "array is too big".
- ``minidl.randn`` draws float32 directly: its peak memory is about the tensor's size
  (it was three times that: a float64 draw, then its float32 copy). Peaks are measured in
  a child process (its VmHWM) against a baseline child that does the same imports.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minidl
import minidl.nn.functional as F
from minidl.errors import ShapeError

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- conv arguments


@pytest.mark.parametrize("kernel", [(0, 0), (0, 3), (3, 0)])
def test_conv2d_refuses_an_empty_kernel(kernel):
    x = minidl.randn(1, 1, 4, 4)
    with pytest.raises(ShapeError, match=r"^conv2d: expected a kernel of at least 1x1, got "
                                         rf"weight of shape \(2, 1, {kernel[0]}, {kernel[1]}\)"):
        F.conv2d(x, minidl.randn(2, 1, *kernel))


@pytest.mark.parametrize("kernel", [(0, 0), (2, 0)])
def test_conv_transpose2d_refuses_an_empty_kernel(kernel):
    x = minidl.randn(1, 1, 4, 4)
    with pytest.raises(ShapeError, match=r"^conv_transpose2d: expected a kernel of at least "
                                         r"1x1"):
        F.conv_transpose2d(x, minidl.randn(1, 2, *kernel))


def test_conv2d_huge_padding_is_refused_by_name():
    x = minidl.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"^conv2d: the padded input would have shape "
                                         r"\(1, 1, 4294967300, 4294967300\).*padding"):
        F.conv2d(x, minidl.randn(2, 1, 3, 3), padding=2 ** 31)


def test_conv_transpose2d_huge_stride_is_refused_by_name():
    x = minidl.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"^conv_transpose2d: the output would have shape "
                                         r".*stride"):
        F.conv_transpose2d(x, minidl.randn(1, 2, 3, 3), stride=2 ** 31)


def test_conv2d_out_of_memory_names_the_op(monkeypatch):
    """A geometry that fits the index type but not the memory: the MemoryError says which
    op and which shapes (NumPy's names only the array)."""
    from minidl.ops import conv as conv_ops

    def no_memory(*args, **kw):
        raise MemoryError("Unable to allocate 16.0 TiB for an array")

    monkeypatch.setattr(conv_ops.Conv2dFunction, "apply", no_memory)
    with pytest.raises(MemoryError, match=r"^conv2d: not enough memory for input "
                                          r"\(1, 1, 4, 4\), weight \(2, 1, 3, 3\), padding"):
        F.conv2d(minidl.randn(1, 1, 4, 4), minidl.randn(2, 1, 3, 3), padding=2 ** 20)


# ----------------------------------------------------------------------------- randn


def test_randn_same_seed_same_values():
    """The values are NumPy's float32 standard normal draws from the seeded generator."""
    minidl.manual_seed(5)
    a = minidl.randn(3, 4)
    minidl.manual_seed(5)
    b = minidl.randn((3, 4))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    want = np.random.default_rng(5).standard_normal((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(a.numpy(), want)
    assert minidl.randn(2, dtype=np.float64).dtype == np.float64
    assert minidl.randn(2, dtype=np.float16).dtype == np.float16


def test_randn_refuses_an_integer_dtype():
    with pytest.raises(TypeError, match=r"^randn: expected a floating point dtype, got int64"):
        minidl.randn(2, dtype=np.int64)


def _peak_kib(body):
    """The peak resident memory (KiB) of a child that imports minidl and runs ``body``.

    The child reads its own high-water mark, VmHWM in /proc/self/status: unlike
    ``ru_maxrss``, which Linux carries over from the parent across fork and exec (under
    pytest, with PyTorch loaded, the parent's size would hide the child's), it counts
    this process image only."""
    code = textwrap.dedent("""
        import numpy as np
        import minidl
        {body}
        with open("/proc/self/status") as fh:
            print(next(ln.split()[1] for ln in fh if ln.startswith("VmHWM:")))
    """).format(body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_randn_peak_memory_is_about_the_tensor_size():
    n = 2 ** 25                                   # 128 MiB of float32
    tensor_kib = n * 4 // 1024
    baseline = _peak_kib("minidl.manual_seed(0)")
    peak = _peak_kib(f"minidl.manual_seed(0); t = minidl.randn({n}); "
                     "assert t.dtype == np.float32")
    extra = peak - baseline
    # the tensor itself, plus a margin; the float64 draw made it 3x
    assert extra < 1.5 * tensor_kib, (extra, tensor_kib)
    assert extra > 0.9 * tensor_kib, (extra, tensor_kib)   # the measure sees the tensor
