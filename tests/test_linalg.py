"""matmul and linear against PyTorch (1-D, 2-D, batched with broadcasting)."""
import pytest
import torch

import minidl
from helpers import check_op


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul(sa, sb, rng, device):
    check_op(lambda a, b: a @ b, lambda a, b: a @ b,
             [rng.standard_normal(sa), rng.standard_normal(sb)], device=device)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape, bias, rng, device):
    x, w, b = rng.standard_normal(shape), rng.standard_normal((3, 4)), rng.standard_normal(3)
    if bias:
        check_op(minidl.ops.linear, torch.nn.functional.linear, [x, w, b], device=device)
    else:
        check_op(lambda a, ww: minidl.ops.linear(a, ww), torch.nn.functional.linear, [x, w],
                 device=device)


def test_errors_name_the_shapes():
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) cannot be multiplied"):
        minidl.zeros(2, 3) @ minidl.zeros(4, 5)
    with pytest.raises(RuntimeError, match=r"linear: expected input \(\.\.\., 4\)"):
        minidl.ops.linear(minidl.zeros(2, 3), minidl.zeros(5, 4))
    with pytest.raises(TypeError, match="float64"):
        minidl.zeros(2, 3) @ minidl.zeros(3, 2, dtype=minidl.float64)
