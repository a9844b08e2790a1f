"""The kernel registry (minidl/kernels/registry.py): the automatic choice, use_impl for one
family and for all, its undoing, fallbacks, errors, and the threading policy switch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import minidl.kernels as K
from minidl.kernels import registry, threads


@pytest.fixture
def toy():
    """A family of three implementations that say who they are."""
    fam = registry.Family("toy", "a test family", preference=("fast", "gpu"))
    fam.register("reference", lambda: SimpleNamespace(run=lambda a: "reference"))
    fam.register("fast", lambda: SimpleNamespace(run=lambda a: "fast"), device="cpu",
                 supports=lambda a, big=False: a.dtype == np.float32 and not big)
    fam.register("gpu", lambda: SimpleNamespace(run=lambda a: "gpu"), device="cuda")
    registry._FAMILIES["toy"] = fam
    yield fam
    del registry._FAMILIES["toy"]


def test_automatic_choice(toy):
    f32, f64 = np.zeros(2, np.float32), np.zeros(2, np.float64)
    assert toy.code(f32).run(f32) == "fast"
    assert toy.choose(f64).name == "reference"              # fast does not support f64
    assert toy.choose(f32, big=True).name == "reference"    # facts reach supports()
    assert K.which("toy", f32) == "fast"


def test_use_impl_per_family_and_for_all(toy):
    f32 = np.zeros(2, np.float32)
    with K.use_impl("reference", family="toy"):
        assert toy.choose(f32).name == "reference"
        assert K.forced() == {"toy": "reference"}
    assert toy.choose(f32).name == "fast"
    with K.use_impl("reference"):
        assert toy.choose(f32).name == "reference"
        assert K.which("tanh", f32) == "reference"          # every family
    assert K.forced() == {}


def test_use_impl_for_all_leaves_families_without_that_impl_alone(toy):
    f32 = np.zeros(2, np.float32)
    with K.use_impl("numba"):        # toy has no 'numba': its automatic choice stands
        assert toy.choose(f32).name == "fast"
        assert K.which("tanh", f32) == "numba"


def test_forced_impl_that_cannot_run_falls_back_to_reference(toy):
    f64 = np.zeros(2, np.float64)
    with K.use_impl("fast", family="toy"):
        assert toy.choose(f64).name == "reference"
        assert toy.choose(np.zeros(2, np.float32)).name == "fast"


def test_use_impl_without_with_stays_until_reset(toy):
    f32 = np.zeros(2, np.float32)
    try:
        K.use_impl("reference", family="toy")
        assert toy.choose(f32).name == "reference"
    finally:
        K.use_impl(None, family="toy")
    assert toy.choose(f32).name == "fast"


def test_family_specific_overrides_the_global_one(toy):
    f32 = np.zeros(2, np.float32)
    with K.use_impl("reference"), K.use_impl("fast", family="toy"):
        assert toy.choose(f32).name == "fast"


def test_unavailable_implementation_is_skipped_then_explained(toy):
    def broken():
        raise registry.ImplementationUnavailable("numba does not import (test)")
    toy.impls.pop("fast")
    toy.register("fast", broken, device="cpu")
    f32 = np.zeros(2, np.float32)
    assert toy.choose(f32).name == "reference"
    with pytest.raises(registry.ImplementationUnavailable, match="toy: the 'fast' "
                       "implementation is unavailable: numba does not import"):
        toy.impls["fast"].code


def test_pays_rules_the_automatic_choice_only(toy):
    f32 = np.zeros(2, np.float32)
    toy.impls["fast"].pays = lambda a, big=False: a.size > 1
    assert toy.choose(f32).name == "fast"
    assert toy.choose(np.zeros(1, np.float32)).name == "reference"   # runs, does not pay
    with K.use_impl("fast", family="toy"):                            # forced: can run
        assert toy.choose(np.zeros(1, np.float32)).name == "fast"


def test_errors_name_the_choices(toy):
    with pytest.raises(ValueError, match="use_impl: impl must be one of .*reference"):
        K.use_impl("fastest")
    with pytest.raises(ValueError, match="use_impl: unknown kernel family 'nope'"):
        K.use_impl("reference", family="nope")
    with pytest.raises(ValueError, match="use_impl: the toy family has no 'numba'"):
        K.use_impl("numba", family="toy")
    with pytest.raises(ValueError, match="which: unknown kernel family"):
        K.which("nope", np.zeros(1))
    with pytest.raises(ValueError, match="already has an implementation named 'fast'"):
        toy.register("fast", lambda: None)
    assert K.forced() == {}


def test_decisions_records_choices(toy):
    f32 = np.zeros(2, np.float32)
    with K.decisions() as log:
        toy.choose(f32)
        with K.use_impl("reference", family="toy"):
            toy.choose(f32)
    assert log == [("toy", "fast"), ("toy", "reference")]


def test_every_family_has_a_reference():
    fams = K.families()
    assert "tanh" in fams
    for name, fam in fams.items():
        assert "reference" in fam.impls, name
        assert fam.doc, name


def test_parallel_policy_switch():
    assert not threads.parallel() or threads.parallel(threads.PARALLEL_MIN_ELEMENTS)
    with threads.set_parallel(True):
        assert threads.parallel()
        assert threads.parallel(threads.PARALLEL_MIN_ELEMENTS)
        assert not threads.parallel(threads.PARALLEL_MIN_ELEMENTS - 1)
    with threads.set_parallel(False):
        assert not threads.parallel(10**9)


