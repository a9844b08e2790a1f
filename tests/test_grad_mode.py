"""Grad mode against PyTorch: ``no_grad``, ``enable_grad`` and ``set_grad_enabled`` nested,
with exceptions, as decorators (plain, recursive, generators), ``set_grad_enabled`` as a
plain call and as a context manager, and thread-locality.

Each scenario is written once, for a library ``lib`` (``torch`` or ``minidl``), and
returns what it observed (``is_grad_enabled()`` at each point, ``requires_grad`` of results);
the test runs it in both and demands the same observations, and also checks them against
the values written out, so that a scenario that observes nothing cannot pass.
"""
from __future__ import annotations

import threading

import pytest
import torch

import minidl

LIBS = {"torch": torch, "minidl": minidl}


def both(scenario):
    """Run ``scenario(lib)`` with torch and with minidl; the two observations must agree.
    Returns minidl's (the caller also compares it with the expected values)."""
    expected = scenario(torch)
    got = scenario(minidl)
    assert got == expected, f"minidl observed {got}, PyTorch {expected}"
    assert torch.is_grad_enabled() and minidl.is_grad_enabled(), "scenario leaked grad mode"
    return got


def _leaf(lib):
    return lib.tensor([1.0, 2.0], requires_grad=True)


# ----------------------------------------------------------------------------- nesting


def test_nested_blocks_restore_the_mode_after_each():
    def scenario(lib):
        seen = [lib.is_grad_enabled()]
        with lib.no_grad():
            seen.append(lib.is_grad_enabled())
            with lib.enable_grad():
                seen.append(lib.is_grad_enabled())
                with lib.set_grad_enabled(False):
                    seen.append(lib.is_grad_enabled())
                    with lib.no_grad():
                        seen.append(lib.is_grad_enabled())
                    seen.append(lib.is_grad_enabled())
                seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())
            with lib.set_grad_enabled(True):
                seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())
        seen.append(lib.is_grad_enabled())
        return seen

    assert both(scenario) == [True, False, True, False, False, False, True, False, True,
                              False, True]


@pytest.mark.parametrize("inner", ["no_grad", "enable_grad", "set_grad_enabled"])
def test_an_exception_in_a_block_restores_the_mode(inner):
    def scenario(lib):
        seen = []
        blocks = {"no_grad": lib.no_grad, "enable_grad": lib.enable_grad,
                  "set_grad_enabled": lambda: lib.set_grad_enabled(False)}
        with lib.no_grad():
            with lib.enable_grad():
                try:
                    with blocks[inner]():
                        seen.append(lib.is_grad_enabled())
                        raise KeyError("inside")
                except KeyError:
                    seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())
        seen.append(lib.is_grad_enabled())
        return seen

    got = both(scenario)
    assert got[1:] == [True, False, True]
    assert got[0] == (inner == "enable_grad")


def test_results_record_only_where_grad_is_enabled():
    def scenario(lib):
        x = _leaf(lib)
        out = []
        with lib.no_grad():
            out.append((x * 2).requires_grad)
            with lib.enable_grad():
                out.append((x * 2).requires_grad)
            with lib.set_grad_enabled(True):
                y = x * 2
                out += [y.requires_grad, y.grad_fn is not None]
        out.append((x * 2).requires_grad)
        return out

    assert both(scenario) == [False, True, True, True, True]


# ----------------------------------------------------------------------------- set_grad_enabled


def test_set_grad_enabled_as_a_plain_call_sets_the_mode_at_once():
    def scenario(lib):
        x = _leaf(lib)
        try:
            lib.set_grad_enabled(False)
            seen = [lib.is_grad_enabled(), (x * 2).requires_grad]
            lib.set_grad_enabled(True)
            seen += [lib.is_grad_enabled(), (x * 2).requires_grad]
            with lib.no_grad():
                lib.set_grad_enabled(True)          # a plain call inside a block...
                seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())      # ...is undone by the block's exit
            lib.set_grad_enabled(False)
            with lib.enable_grad():
                seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())      # back to the plain call's False
        finally:
            lib.set_grad_enabled(True)
        return seen

    assert both(scenario) == [False, False, True, True, True, True, True, False]


def test_set_grad_enabled_as_a_context_manager_restores_the_previous_mode():
    def scenario(lib):
        seen = []
        with lib.set_grad_enabled(False):
            seen.append(lib.is_grad_enabled())
            with lib.set_grad_enabled(True):
                seen.append(lib.is_grad_enabled())
            seen.append(lib.is_grad_enabled())
        seen.append(lib.is_grad_enabled())
        with lib.set_grad_enabled(True):            # True inside True: nothing to restore
            seen.append(lib.is_grad_enabled())
        seen.append(lib.is_grad_enabled())
        return seen

    assert both(scenario) == [False, True, False, True, True, True]


def test_set_grad_enabled_wants_a_bool():
    with pytest.raises(TypeError, match=r"set_grad_enabled\(\): mode must be a bool, got int"):
        minidl.set_grad_enabled(1)
    with pytest.raises(TypeError):
        torch.set_grad_enabled(1)
    assert minidl.is_grad_enabled()


# ----------------------------------------------------------------------------- decorators


def test_the_three_decorators():
    def scenario(lib):
        x = _leaf(lib)

        @lib.no_grad()
        def off(t):
            return lib.is_grad_enabled(), (t * 2).requires_grad

        @lib.enable_grad()
        def on(t):
            return lib.is_grad_enabled(), (t * 2).requires_grad

        @lib.set_grad_enabled(False)
        def set_off(t):
            return lib.is_grad_enabled(), (t * 2).requires_grad

        seen = [lib.is_grad_enabled()]          # decorating changed nothing out here
        seen += [off(x), lib.is_grad_enabled(), set_off(x), lib.is_grad_enabled()]
        with lib.no_grad():
            seen += [on(x), lib.is_grad_enabled(), set_off(x), lib.is_grad_enabled()]
        return seen

    assert both(scenario) == [True, (False, False), True, (False, False), True,
                              (True, True), False, (False, False), False]


@pytest.mark.parametrize("decorator", ["no_grad", "enable_grad", "set_grad_enabled"])
def test_a_decorated_function_that_raises_restores_the_mode(decorator):
    def scenario(lib):
        make = {"no_grad": lib.no_grad, "enable_grad": lib.enable_grad,
                "set_grad_enabled": lambda: lib.set_grad_enabled(False)}[decorator]

        @make()
        def boom():
            raise ValueError(lib.is_grad_enabled())

        seen = []
        for outer in (True, False):
            with lib.set_grad_enabled(outer):
                try:
                    boom()
                except ValueError as err:
                    seen.append(err.args[0])
                seen.append(lib.is_grad_enabled())
        return seen

    got = both(scenario)
    assert got[1::2] == [True, False]


def test_a_recursive_decorated_function_restores_the_mode():
    """One decorating object, entered once per call: with a single remembered previous
    mode, the inner call would overwrite it and leave grad off after the outer call."""
    def scenario(lib):
        x = _leaf(lib)

        @lib.no_grad()
        def depth(n):
            return [lib.is_grad_enabled()] + (depth(n - 1) if n else [(x * 2).requires_grad])

        @lib.set_grad_enabled(False)
        def depth_set(n):
            return [lib.is_grad_enabled()] + (depth_set(n - 1) if n else [])

        seen = depth(2) + [lib.is_grad_enabled()] + depth_set(2) + [lib.is_grad_enabled()]
        return seen

    assert both(scenario) == [False, False, False, False, True, False, False, False, True]


def test_a_decorated_generator_runs_its_steps_in_the_mode():
    """Inside the generator's body: the decorator's mode; in the caller between steps:
    the caller's mode (PyTorch's rule for generator functions)."""
    def scenario(lib):
        x = _leaf(lib)

        @lib.no_grad()
        def steps():
            received = yield lib.is_grad_enabled(), (x * 2).requires_grad
            yield received, lib.is_grad_enabled()
            return "done"

        gen = steps()
        seen = [next(gen), lib.is_grad_enabled(), gen.send("hello"), lib.is_grad_enabled()]
        try:
            next(gen)
        except StopIteration as stop:
            seen.append(stop.value)
        with lib.no_grad():                     # a caller in no_grad: still off inside
            seen.append(next(iter(steps())))
        return seen

    assert both(scenario) == [(False, False), True, ("hello", False), True, "done",
                              (False, False)]


def test_a_decorated_generator_passes_throw_and_close_in():
    def scenario(lib):
        log = []

        @lib.enable_grad()
        def steps():
            try:
                yield 1
            except KeyError:
                log.append(("caught", lib.is_grad_enabled()))
                yield 2
            finally:
                log.append(("finally", lib.is_grad_enabled()))

        with lib.no_grad():
            gen = steps()
            log.append(next(gen))
            log.append(gen.throw(KeyError("k")))
            gen.close()
            log.append(lib.is_grad_enabled())
        return log

    assert both(scenario) == [1, ("caught", True), 2, ("finally", True), False]


# ----------------------------------------------------------------------------- threads


def test_grad_mode_is_per_thread():
    """A worker inside ``no_grad`` while the main thread records, and the main thread
    inside ``no_grad`` while a new worker starts: the Barrier makes each pair of steps
    overlap in time, so a process-wide flag would be seen by the other thread."""
    def scenario(lib):
        x = _leaf(lib)
        barrier = threading.Barrier(2, timeout=10)
        seen = {}

        def worker_in_no_grad():
            with lib.no_grad():
                barrier.wait()      # 1: the worker is inside no_grad...
                barrier.wait()      # 2: ...until the main thread has looked
                seen["worker inside"] = (lib.is_grad_enabled(), (x * 2).requires_grad)

        t = threading.Thread(target=worker_in_no_grad)
        t.start()
        barrier.wait()              # 1
        seen["main while worker in no_grad"] = (lib.is_grad_enabled(), (x * 2).requires_grad)
        barrier.wait()              # 2
        t.join()

        started = threading.Event()

        def new_worker():
            seen["new thread"] = (lib.is_grad_enabled(), (x * 2).requires_grad)
            lib.set_grad_enabled(False)         # a plain call stays in this thread
            started.set()

        with lib.no_grad():
            t = threading.Thread(target=new_worker)
            t.start()
            assert started.wait(10)
            t.join()
            seen["main in no_grad"] = lib.is_grad_enabled()
        seen["main after"] = lib.is_grad_enabled()
        return seen

    assert both(scenario) == {
        "worker inside": (False, False),
        "main while worker in no_grad": (True, True),
        "new thread": (True, True),
        "main in no_grad": False,
        "main after": True,
    }


def test_one_decorated_function_in_two_threads_at_once():
    """The decorated function runs in two threads at the same time (one inside
    ``no_grad`` and one not, when they call it): each gets its own mode back."""
    def scenario(lib):
        barrier = threading.Barrier(2, timeout=10)

        @lib.no_grad()
        def meet():
            barrier.wait()          # both threads are inside the decorated function
            return lib.is_grad_enabled()

        seen = {}

        def run(name, outer):
            with lib.set_grad_enabled(outer):
                seen[name] = (meet(), lib.is_grad_enabled())

        threads = [threading.Thread(target=run, args=(n, o))
                   for n, o in (("a", True), ("b", False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return seen

    assert both(scenario) == {"a": (False, True), "b": (False, False)}
