"""minidl.explain.check: a learner's hand-written backward is checked, and its mistakes named.

The reference solutions (``tests/exercise_solutions.py``) pass; each known mistake, planted
in a copy of them (``mistake=...``), fails and the report names exactly that mistake; bad
return values and exceptions give messages, never the checker's traceback; the stubs in
``exercises/`` report "not implemented yet" through the README's command.
"""
import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import exercise_solutions as S
from minidl.explain.check import EXERCISE_FUNCTIONS, OPS, check_backward, main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "tests" / "exercise_solutions.py"

REFERENCE = {
    "conv2d": S.conv_backward,
    "conv2d_forward": S.conv_forward,
    "max_pool2d": S.max_pool_backward,
    "batch_norm": S.batchnorm_backward,
    "batch_norm2d": S.spatial_batchnorm_backward,
    "softmax_cross_entropy": S.softmax_cross_entropy_backward,
}


def planted(op, mistake):
    """The reference solution of ``op`` with ``mistake`` planted, named like the exercise."""
    fn = functools.partial(REFERENCE[op], mistake=mistake)
    fn.__name__ = f"{REFERENCE[op].__name__}[{mistake}]"
    return fn


@functools.lru_cache(maxsize=None)
def report_for(op, mistake=None):
    return check_backward(planted(op, mistake), op=op)


# ----------------------------------------------------------------------------- right answers


@pytest.mark.parametrize("op", sorted(OPS))
def test_reference_solution_passes(op):
    report = report_for(op)
    assert report.ok, str(report)
    text = str(report)
    assert "CASES PASS" in text and "WRONG" not in text and "DIAGNOSIS" not in text
    assert report.diagnoses == []


def test_cases_describe_each_geometry():
    text = str(report_for("conv2d"))
    assert ("case 3: x (2, 2, 7, 6), w (3, 2, 3, 2), stride (2, 1), padding (1, 0) -> out "
            "(2, 3, 4, 5)") in text
    assert text.count("dx ok, dw ok, db ok") == 6
    cases = report_for("conv2d").cases
    strides = {str(c[1].split("stride ")[1].split(",")[0]) for c in cases}
    assert {"1", "2", "(2"} <= strides            # stride 1 and 2, int and pair
    assert "padding 0" in text and "padding 1" in text and "padding (2, 1)" in text
    assert "x (4, 3), gamma (3,)" in str(report_for("batch_norm"))
    assert "kernel_size (2, 3), stride (2, 1)" in str(report_for("max_pool2d"))


def test_a_function_that_changes_its_inputs_in_place_is_still_checked_fairly():
    def conv_backward(dout, x, w, b, stride, padding):
        grads = S.conv_backward(dout, x, w, b, stride, padding)
        dout[...] = 0.0
        x[...] = 0.0
        w[...] = 0.0
        return grads
    assert check_backward(conv_backward, op="conv2d").ok


# ----------------------------------------------------------------------------- planted mistakes


PLANTED = [
    # (op, mistake planted in the solution, the gradient it breaks, the diagnosis key)
    ("conv2d", "kernel_not_flipped", "dx", "kernel_not_flipped"),
    ("conv2d", "padding_not_cropped", "dx", "padding_not_cropped"),
    ("conv2d", "padding_crop_offset", "dx", "padding_crop_offset"),
    ("conv2d", "stride_ignored", "dx", "stride_ignored"),
    ("conv2d", "bias_wrong_axes", "db", "bias_wrong_axes"),
    ("conv2d", "bias_mean", "db", "bias_wrong_axes"),
    ("conv2d", "dw_first_image", "dw", "dw_not_summed_over_batch"),
    ("conv2d", "dw_last_image", "dw", "dw_not_summed_over_batch"),
    ("conv2d", "dw_mean", "dw", "dw_not_summed_over_batch"),
    ("conv2d", "border_clip", "dx", "border_only"),
    ("conv2d_forward", "kernel_flipped", "out", "kernel_flipped"),
    ("conv2d_forward", "bias_missing", "out", "bias_missing"),
    ("max_pool2d", "every_element", "dx", "pool_gradient_to_every_element"),
    ("max_pool2d", "split_evenly", "dx", "pool_gradient_split_evenly"),
    ("max_pool2d", "mask_without_dout", "dx", "pool_mask_without_dout"),
    ("max_pool2d", "overwrite", "dx", "pool_overlap_overwritten"),
    ("max_pool2d", "stride_ignored", "dx", "stride_ignored"),
    ("batch_norm", "missing_mean_terms", "dx", "bn_missing_mean_terms"),
    ("batch_norm", "dgamma_not_summed", "dgamma", "not_summed_over_batch"),
    ("batch_norm", "swapped", "dgamma", "dgamma_dbeta_swapped"),
    ("batch_norm2d", "missing_mean_terms", "dx", "bn_missing_mean_terms"),
    ("batch_norm2d", "dgamma_not_summed", "dgamma", "not_summed_over_batch"),
    ("softmax_cross_entropy", "not_divided", "dlogits", "ce_not_divided_by_n"),
    ("softmax_cross_entropy", "sign_flipped", "dlogits", "ce_sign_flipped"),
]


@pytest.mark.parametrize("op,mistake,grad,key", PLANTED,
                         ids=[f"{p[0]}-{p[1]}" for p in PLANTED])
def test_planted_mistake_fails_and_is_named(op, mistake, grad, key):
    report = report_for(op, mistake)
    text = str(report)
    assert not report.ok
    assert key in report.diagnosis_keys, text
    assert any(d.grad == grad and d.key == key for d in report.diagnoses)
    assert f"DIAGNOSIS ({key})" in text
    assert f"--- {grad}: wrong in case" in text
    assert "FAILED" in text and key in text.splitlines()[-1]


@pytest.mark.parametrize("op,mistake,grad,key", PLANTED,
                         ids=[f"{p[0]}-{p[1]}" for p in PLANTED])
def test_a_planted_mistake_gets_no_other_diagnosis(op, mistake, grad, key):
    """A diagnosis is a reproduced output: the other known mistakes must not claim it.
    (Swapping dgamma and dbeta breaks both, each named once.)"""
    report = report_for(op, mistake)
    assert report.diagnosis_keys == {key}, report.diagnoses


def test_kernel_flipped_twice_reads_as_not_flipped():
    report = report_for("conv2d", "flipped_twice")
    assert report.diagnosis_keys == {"kernel_not_flipped"}
    assert "flipped twice" in " ".join(str(report).split())


def test_only_the_broken_gradient_is_reported_wrong():
    report = report_for("conv2d", "dw_mean")
    text = str(report)
    assert "--- dw:" in text and "--- dx:" not in text and "--- db:" not in text
    assert text.count("dx ok, dw WRONG, db ok") == 6


def test_worst_elements_show_index_yours_and_expected():
    text = str(report_for("conv2d", "dw_first_image"))
    section = text.split("--- dw:")[1]
    assert "worst elements:" in section
    after = section.split("worst elements:")[1].splitlines()[1]
    assert after.strip().startswith("dw[") and ": yours " in after
    assert "expected " in after and "|diff|" in after


# ----------------------------------------------------------------------------- error maps


def _map_rows(text, grad):
    """The grid rows (cells only) of the error map of ``grad`` in a report."""
    section = text.split(f"--- {grad}:")[1]
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if "'.' right, 'X' wrong" in ln)
    rows = []
    for ln in lines[start + 2:]:
        cells = ln.split()
        if not cells or not set(cells[-1]) <= {".", "X"}:
            break
        rows.append("".join(c for c in cells if c in (".", "X")))
    return lines[start], rows


def test_error_map_shows_a_wrong_border():
    """Windows hanging over the top/left padding take the wrong kernel taps: only the
    border band is wrong, the interior right. First failing case: x 5x5, 3x3 kernel,
    padding 1, stride 1."""
    header, rows = _map_rows(str(report_for("conv2d", "border_clip")), "dx")
    assert header.strip().startswith("dx[n=0, c=0] (5 x 5)")
    assert rows == ["XXXXX",
                    "XXXXX",
                    "XX...",
                    "XX...",
                    "XX..."]


def test_error_map_of_stride_ignored_max_pool_is_over_the_input_plane():
    """Windows at (oh, ow) instead of (2*oh, 2*ow): the first failing case is x 4x4,
    kernel 2, stride 2 (which positions are wrong depends on where the maxima are)."""
    header, rows = _map_rows(str(report_for("max_pool2d", "stride_ignored")), "dx")
    assert "(4 x 4)" in header
    assert len(rows) == 4 and all(len(r) == 4 for r in rows) and "X" in "".join(rows)


def test_error_map_of_dw_is_over_the_kernel():
    header, rows = _map_rows(str(report_for("conv2d", "dw_mean")), "dw")
    assert header.strip().startswith("dw[oc=0, c=0] (3 x 3)")
    assert rows == ["XXX"] * 3


def test_error_map_of_a_vector_gradient_is_one_row():
    header, rows = _map_rows(str(report_for("batch_norm", "swapped")), "dbeta")
    assert header.strip().startswith("dbeta (3)")
    assert rows == ["XXX"]


# ----------------------------------------------------------------------------- bad returns


def test_wrong_shape_names_the_argument_and_the_expected_shape():
    def conv_backward(dout, x, w, b, stride, padding):
        dx, dw, db = S.conv_backward(dout, x, w, b, stride, padding)
        return dx, dw.transpose(0, 1, 3, 2), db
    report = check_backward(conv_backward, op="conv2d")
    text = str(report)
    assert not report.ok
    assert "dw has shape (3, 2, 2, 3), expected (3, 2, 3, 2) = w.shape" in text
    assert "dx ok, dw SHAPE, db ok" in text and "dx ok, dw WRONG, db ok" in text
    assert report.diagnosis_keys == {"kernel_transposed"}
    _, rows = _map_rows(text, "dw")     # square kernel: the diagonal survives a transpose
    assert rows == [".XX", "X.X", "XX."]


def test_padded_dx_says_so():
    text = str(report_for("conv2d", "padding_not_cropped"))
    assert "dx has shape (2, 3, 7, 7), expected (2, 3, 5, 5) = x.shape" in text
    assert "PADDED shape" in " ".join(text.split())


@pytest.mark.parametrize("returned,message", [
    (lambda g: None, "returned None, expected (dx, dw, db): is the `return` statement "
                     "missing?"),
    (lambda g: g[:2], "returned 2 values, expected 3: (dx, dw, db)"),
    (lambda g: g[0], "returned one ndarray, expected the 3 arrays (dx, dw, db)"),
    (lambda g: (g[0], None, g[2]), "dw is None, expected an array of shape"),
    (lambda g: (g[0], "dw", g[2]), "dw is a str, expected a NumPy array"),
])
def test_wrong_return_values_get_a_clear_message(returned, message):
    def conv_backward(dout, x, w, b, stride, padding):
        return returned(S.conv_backward(dout, x, w, b, stride, padding))
    report = check_backward(conv_backward, op="conv2d")
    assert not report.ok
    assert message in str(report)
    assert "Traceback" not in str(report)


def test_a_single_output_op_accepts_a_one_tuple_and_lists():
    def max_pool_backward(dout, x, kernel_size, stride):
        return (S.max_pool_backward(dout, x, kernel_size, stride).tolist(),)
    assert check_backward(max_pool_backward, op="max_pool2d").ok


def test_an_exception_shows_the_learners_traceback_not_the_checkers():
    def conv_backward(dout, x, w, b, stride, padding):
        SH, SW = stride                    # breaks when stride is an int
        return S.conv_backward(dout, x, w, b, stride, padding)
    report = check_backward(conv_backward, op="conv2d")
    text = str(report)
    assert not report.ok
    assert "raised TypeError: cannot unpack non-iterable int object" in text
    assert "Traceback" in report.exception and "SH, SW = stride" in report.exception
    assert "check.py" not in report.exception
    assert "case 3" in text and "dx ok, dw ok, db ok" in text  # pair-stride cases still run
    assert text.splitlines()[-1].endswith("your function raised an exception (above)")


def test_a_function_with_the_wrong_arguments_is_told_the_signature():
    def conv_backward(dout, x, w, b):
        return None
    text = str(check_backward(conv_backward, op="conv2d"))
    assert "could not call conv_backward as fn(dout, x, w, b, stride, padding)" in text
    assert "check.py" not in text


def test_not_implemented_is_reported_as_such():
    def batchnorm_backward(dout, x, gamma, beta, eps):
        raise NotImplementedError
    report = check_backward(batchnorm_backward, op="batch_norm")
    assert not report.ok and report.not_implemented
    assert "NOT IMPLEMENTED YET" in str(report)


def test_bad_op_or_function_raises_clearly():
    with pytest.raises(ValueError, match="op must be one of"):
        check_backward(S.conv_backward, op="conv3d")
    with pytest.raises(TypeError, match="must be a function"):
        check_backward("conv_backward", op="conv2d")


# ----------------------------------------------------------------------------- exercises, CLI


STUBS = sorted((ROOT / "exercises").glob("*.py"))


def test_there_are_four_exercises_listed_in_the_readme():
    names = [p.name for p in STUBS]
    assert names == ["batchnorm_backward.py", "conv_backward.py", "conv_forward.py",
                     "max_pool_backward.py"]
    readme = (ROOT / "exercises" / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme
    assert "python -m minidl.explain.check exercises/conv_backward.py" in readme


@pytest.mark.parametrize("stub", STUBS, ids=[p.stem for p in STUBS])
def test_each_stub_reports_not_implemented(stub, capsys):
    text = stub.read_text()
    assert f"python -m minidl.explain.check exercises/{stub.name}" in text
    assert stub.stem in EXERCISE_FUNCTIONS
    assert main([str(stub)]) == 1
    out = capsys.readouterr().out
    assert f"NOT IMPLEMENTED YET: {stub.stem} raises NotImplementedError" in out
    assert "Traceback" not in out


def _command(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "minidl.explain.check", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_readme_command_on_the_solutions_passes_and_on_a_stub_fails():
    done = _command(str(SOLUTIONS.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("CASES PASS") == len(EXERCISE_FUNCTIONS)
    stub = _command("exercises/conv_backward.py")
    assert stub.returncode == 1
    assert "NOT IMPLEMENTED YET" in stub.stdout and "Traceback" not in stub.stderr


def test_cli_one_function_by_name_and_errors(tmp_path, capsys):
    mine = tmp_path / "mine.py"
    mine.write_text("import numpy as np\n"
                    "def grad(logits, targets):\n"
                    "    return np.zeros_like(logits)\n")
    assert main([str(mine), "--function", "grad", "--op", "softmax_cross_entropy"]) == 1
    out = capsys.readouterr().out
    assert "dlogits is all zeros" in out
    assert main([str(mine)]) == 2
    assert "defines none of" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("def conv_backward(:\n")
    assert main([str(broken)]) == 2
    assert "could not import" in capsys.readouterr().err


def test_an_unknown_mistake_gets_maps_but_no_made_up_diagnosis():
    def conv_backward(dout, x, w, b, stride, padding):
        dx, dw, db = S.conv_backward(dout, x, w, b, stride, padding)
        return 1.5 * dx, dw, db
    report = check_backward(conv_backward, op="conv2d")
    text = str(report)
    assert not report.ok and report.diagnoses == []
    assert "dx[n=0, c=0] (5 x 5): '.' right, 'X' wrong" in text
    assert text.splitlines()[-1] == ("FAILED: 6 of 6 cases wrong; no known mistake reproduces "
                                     "your output: read the error maps")
