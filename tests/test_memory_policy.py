"""The CPU memory policy (minidl/kernels/memory.py): 'retain' by default on glibc, so a
loop that allocates and frees large arrays reuses its pages instead of faulting them in
again; 'system' gives them back. Process-wide settings: each case runs in a fresh
interpreter."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import minidl

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocates and frees forty 8 MB arrays, writing each, and prints the minor page faults.
_LOOP = """
import resource, sys
import numpy as np
import minidl
if sys.argv[1] != "default":
    minidl.set_memory_policy(sys.argv[1])
print(minidl.get_memory_policy())
a = np.ones(2**21, np.float32); del a                # the first one may fault in
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    a = np.empty(2**21, np.float32)
    a.fill(1.0)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(policy):
    out = subprocess.run([sys.executable, "-c", _LOOP, policy], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the memory policy changes glibc's malloc only; "
                                      "this C library is not glibc")
def test_retain_reuses_pages_and_system_gives_them_back():
    policy, retained = _faults("default")
    assert policy == "retain"
    # 40 arrays of 8 MB are 80,000 pages of 4 KiB: retained, about none of them faults
    assert retained < 2_000, retained
    policy, system = _faults("system")
    assert policy == "system"
    assert system > 10 * max(retained, 1_000), (system, retained)   # faulted in afresh
    assert _faults("retain")[0] == "retain"


def test_policy_names_are_checked():
    with pytest.raises(ValueError, match=r"set_memory_policy: policy must be one of "
                                         r"\('retain', 'system'\), got 'keep'"):
        minidl.set_memory_policy("keep")
    assert minidl.get_memory_policy() in ("retain", "system")
    assert minidl.set_memory_policy(minidl.get_memory_policy()) == minidl.get_memory_policy()


def test_a_refused_default_warns_instead_of_failing_the_import(monkeypatch):
    """Where glibc's mallopt refuses, ``import minidl`` warns and goes on ('system')."""
    from minidl.kernels import memory

    class Refusing:
        @staticmethod
        def mallopt(param, value):
            return 0

    monkeypatch.setattr(memory._State, "libc", Refusing)
    monkeypatch.setattr(memory._State, "policy", "system")
    with pytest.raises(RuntimeError, match=r"set_memory_policy\('retain'\): glibc's mallopt "
                                           r"refused the thresholds"):
        minidl.set_memory_policy("retain")
    with pytest.warns(RuntimeWarning, match="the memory policy stays 'system'"):
        assert memory.apply_default_policy() == "system"


# ----------------------------------------------------------------------------- output buffers

@pytest.fixture
def buffers(monkeypatch):
    """A fresh, empty output-buffer cache, switched on, under the 'retain' policy
    (restored after, and the 'auto' tuner's state)."""
    from minidl.kernels import memory
    monkeypatch.setattr(memory._State, "policy", "retain")
    monkeypatch.setattr(memory._Buffers, "enabled", True)
    monkeypatch.setattr(memory._Buffers, "by_key", {})
    monkeypatch.setattr(memory._Buffers, "handouts", 0)
    tuner = {k: getattr(memory._Tuner, k) for k in ("active", "setting", "plan", "running",
                                                    "times", "last_mark", "recent", "steps",
                                                    "last_trial", "decisions")}
    yield memory
    for k, v in tuner.items():          # set_buffer_cache in a test leaves 'auto'
        setattr(memory._Tuner, k, v)


def test_a_free_output_is_handed_out_again(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    assert a.shape == (64, 32) and a.dtype == np.float32 and a.flags.c_contiguous
    first = id(a)
    b = buffers.empty((64, 32), np.float32)          # a is still in use: another one
    assert id(b) != first
    assert buffers.cached_bytes() == (2 * a.nbytes, 0)
    del a
    assert buffers.cached_bytes() == (b.nbytes, b.nbytes)
    c = buffers.empty((64, 32), np.float32)
    assert id(c) == first                             # the free one, not a new one
    assert id(buffers.empty((64, 32), np.float64)) != first   # another dtype: its own


def test_a_view_or_a_memoryview_keeps_an_output_in_use(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    a[:] = 7
    view, mem = a[3:5].reshape(-1), memoryview(a)
    first = id(a)
    del a
    b = buffers.empty((64, 32), np.float32)
    assert id(b) != first
    b[:] = 0
    assert (view == 7).all() and np.frombuffer(mem, np.float32)[0] == 7   # untouched
    del view, b
    assert id(buffers.empty((64, 32), np.float32)) != first               # mem still holds it
    del mem
    assert id(buffers.empty((64, 32), np.float32)) == first


def test_a_read_only_output_comes_back_writeable(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    a.flags.writeable = False
    del a
    assert buffers.empty((64, 32), np.float32).flags.writeable


def test_small_outputs_are_not_cached_and_the_count_per_shape_is_bounded(buffers,
                                                                          monkeypatch):
    import numpy as np
    small = [buffers.empty((3, 4), np.float32) for _ in range(3)]
    assert buffers.cached_bytes() == (0, 0) and len({id(s) for s in small}) == 3
    monkeypatch.setattr(buffers, "MAX_PER_KEY", 2)
    held = [buffers.empty((64, 32), np.float32) for _ in range(4)]   # 2 kept, 2 not
    assert buffers.cached_bytes() == (2 * held[0].nbytes, 0)


def test_stale_free_outputs_go_back_and_release_gives_back_every_free_one(buffers,
                                                                           monkeypatch):
    import numpy as np
    monkeypatch.setattr(buffers, "STALE_HANDOUTS", 3)
    keep = buffers.empty((64, 32), np.float32)
    buffers.empty((128, 32), np.float32)                     # free at once
    for _ in range(3):
        buffers.empty((64, 32), np.float64)                  # hits after the first
    assert buffers.cached_bytes()[1] == 128 * 32 * 4 + 64 * 32 * 8
    buffers.empty((256, 32), np.float32)                     # a miss: the stale one goes
    assert buffers.cached_bytes() == (keep.nbytes, 64 * 32 * 8 + 256 * 32 * 4)
    buffers.release_buffers()
    assert buffers.cached_bytes() == (keep.nbytes, 0)


def test_the_system_policy_uses_numpy_and_empties_the_cache(buffers):
    import numpy as np
    buffers.empty((64, 32), np.float32)
    assert buffers.cached_bytes()[1] > 0
    if buffers._glibc() is not None:
        try:
            assert minidl.set_memory_policy("system") == "system"
            assert buffers.cached_bytes() == (0, 0)
            buffers.empty((64, 32), np.float32)
            assert buffers.cached_bytes() == (0, 0)          # np.empty, nothing kept
        finally:
            minidl.set_memory_policy("retain")


def test_threads_never_share_an_output(buffers):
    """Eight Python threads taking and dropping outputs of one shape: no array is ever
    handed to two holders at once."""
    import threading
    import numpy as np
    errors = []

    def work(k):
        for _ in range(300):
            a = buffers.empty((64, 32), np.int64)
            a.fill(k)
            if not (a == k).all():
                errors.append(k)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_auto_is_the_default_and_starts_with_the_cache_off():
    out = subprocess.run([sys.executable, "-c", "import minidl\n"
                          "from minidl.kernels import memory\n"
                          "print(memory._Tuner.active, memory._Buffers.enabled)"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["True", "False"]


def test_the_cache_on_and_off_by_hand(buffers, monkeypatch):
    import numpy as np
    monkeypatch.setattr(buffers._Buffers, "enabled", False)
    a = buffers.empty((64, 32), np.float32)
    z = buffers.zeros((64, 32), np.float32)
    assert buffers.cached_bytes() == (0, 0) and not z.any()
    assert minidl.set_buffer_cache(True) is True
    a = buffers.empty((64, 32), np.float32)
    del a
    assert buffers.cached_bytes() == (0, 64 * 32 * 4)
    z = buffers.zeros((64, 32), np.float32)            # the free one, zeroed
    assert not z.any() and buffers.cached_bytes() == (64 * 32 * 4, 0)
    del z
    assert minidl.set_buffer_cache(False) is False      # free ones go back at once
    assert buffers.cached_bytes() == (0, 0)
    with pytest.raises(ValueError, match="set_buffer_cache: flag must be True, False or "
                                         "'auto', got None"):
        minidl.set_buffer_cache(None)


# ----------------------------------------------------------------------------- 'auto'

@pytest.fixture
def tuner(buffers, monkeypatch):
    """The 'auto' tuner, active, with small trials: 3 steps before the first; 2 rounds of
    two blocks of 1 warm-up and 2 timed steps; the next after 5 steps and 10 s (doubling
    at most twice); steps up to 1000 s (the median of the last 2) have trials."""
    memory = buffers
    monkeypatch.setattr(memory._Buffers, "enabled", False)
    for name, value in (("FIRST_TRIAL", 3), ("ROUNDS", 2), ("WARM", 1), ("MEASURE", 2),
                        ("RETUNE_STEPS", 5), ("RETUNE_SECONDS", 10.0), ("MAX_BACKOFF", 2),
                        ("MAX_STEP_SECONDS", 1000.0), ("RECENT", 2)):
        monkeypatch.setattr(memory._Tuner, name, value)
    memory._Tuner.reset(True)
    yield memory
    memory._Tuner.reset(False)


def _run_steps(memory, n, cost, clock):
    """n training steps on a fake clock: each step marks, then takes cost(cache on) s.
    Returns the cache setting each step ran with."""
    ran = []
    for _ in range(n):
        memory._Tuner.mark(clock[0])
        on = memory._Buffers.enabled
        ran.append(on)
        clock[0] += cost(on)
    return ran


TRIAL = [False] * 3 + [True] * 6 + [False] * 3     # round 0: off, on; round 1: on, off


def _until_trials(memory, n, cost, clock):
    """Steps until n trials have ended; returns the settings they ran with."""
    ran = []
    while len(memory._Tuner.decisions) < n:
        ran += _run_steps(memory, 1, cost, clock)
    return ran


def test_auto_times_both_settings_and_switches_after_two_verdicts(tuner):
    clock = [0.0]
    ran = _run_steps(tuner, 15, lambda on: 1.0 if on else 1.5, clock)
    # 2 steps before the first trial, the trial; its verdict: on (1.0 s / 1.5 s), but
    # one verdict does not switch
    assert ran == [False] * 2 + TRIAL + [False]
    assert tuner._Tuner.decisions == [(pytest.approx(2 / 3), True)]
    assert not tuner._Tuner.setting and not tuner._Buffers.enabled
    ran = _until_trials(tuner, 2, lambda on: 1.0 if on else 1.5, clock)
    assert ran[-len(TRIAL) - 1:] == TRIAL + [True]          # the second trial agrees: on
    assert tuner._Tuner.setting and tuner._Buffers.enabled
    assert _run_steps(tuner, 3, lambda on: 1.0, clock) == [True] * 3


@pytest.mark.parametrize("on_cost, verdict", [(0.98, False), (1.0, False), (1.2, False),
                                              (0.96, True)])
def test_auto_needs_a_margin_to_call_for_the_cache(tuner, on_cost, verdict):
    clock = [0.0]
    _until_trials(tuner, 2, lambda on: on_cost if on else 1.0, clock)
    assert tuner._Tuner.decisions == [(pytest.approx(on_cost), verdict)] * 2  # MARGIN 3 %
    assert tuner._Buffers.enabled is verdict


def test_auto_leaves_warm_up_steps_out_and_cancels_a_drift(tuner):
    """The first step of each block (the cache filling, glibc's lists settling) is not
    timed; a machine slowing down steadily over the trial does not decide for the
    setting timed first."""
    clock, last, k = [0.0], [None], [0]

    def cost(on):
        first, last[0] = last[0] is not on, on
        k[0] += 1
        return 100.0 if first else 1.0 + 0.1 * k[0]       # the same cost, growing
    _run_steps(tuner, 15, cost, clock)
    (ratio, verdict), = tuner._Tuner.decisions
    assert not verdict and ratio == pytest.approx(1.0, abs=0.05)


def test_auto_one_contrary_trial_does_not_switch_and_two_do(tuner):
    clock = [0.0]
    faster = lambda on: 1.0 if on else 1.5                   # noqa: E731
    _until_trials(tuner, 2, faster, clock)                   # on
    _until_trials(tuner, 3, lambda on: 3.0 if on else 1.0, clock)
    assert tuner._Tuner.setting and tuner._Buffers.enabled   # one contrary verdict
    _until_trials(tuner, 4, faster, clock)
    assert tuner._Tuner.setting                              # back to agreeing
    _until_trials(tuner, 6, lambda on: 3.0 if on else 1.0, clock)
    assert not tuner._Tuner.setting and not tuner._Buffers.enabled
    assert [v for _, v in tuner._Tuner.decisions] == [True, True, False, True, False, False]


def test_auto_tries_again_after_steps_and_seconds(tuner):
    clock = [0.0]
    _run_steps(tuner, 15, lambda on: 1.0, clock)            # the first trial has ended
    assert len(tuner._Tuner.decisions) == 1
    # 1 s steps: the next trial waits for RETUNE_SECONDS (10 steps from the trial's
    # last mark), not RETUNE_STEPS (5)
    ran = _run_steps(tuner, 9, lambda on: 1.0, clock)
    assert ran == [False] * 9 and not tuner._Tuner.plan
    assert _run_steps(tuner, 12, lambda on: 1.0, clock) == TRIAL
    # 30 s steps: RETUNE_STEPS binds
    _run_steps(tuner, 1, lambda on: 30.0, clock)             # the decision's mark
    ran = _run_steps(tuner, 5, lambda on: 30.0, clock)
    assert ran == [False] * 4 + [False] and tuner._Tuner.plan


def test_auto_waits_longer_while_trials_agree(tuner):
    clock = [0.0]
    waits = []
    for n in range(1, 6):                                    # the cache always 2x slower
        _until_trials(tuner, n, lambda on: 2.0 if on else 1.0, clock)
        waits.append(tuner._Tuner.wait())
    assert waits == [10.0, 20.0, 40.0, 40.0, 40.0]           # MAX_BACKOFF = 2
    tuner._Tuner.decisions.append((0.5, True))               # a trial that said otherwise
    assert tuner._Tuner.wait() == 10.0


def test_auto_has_no_trials_for_long_steps_and_turns_the_cache_off(tuner, monkeypatch):
    monkeypatch.setattr(tuner._Tuner, "MAX_STEP_SECONDS", 2.0)
    clock = [0.0]
    ran = _run_steps(tuner, 40, lambda on: 3.0, clock)       # 3 s steps: never a trial
    assert ran == [False] * 40 and not tuner._Tuner.decisions
    _until_trials(tuner, 2, lambda on: 1.0 if on else 1.5, clock)   # short steps: on
    assert tuner._Buffers.enabled
    ran = _run_steps(tuner, 8, lambda on: 3.0, clock)
    # the median of the last 2 steps (the upper one) passes 2 s at the 2nd long step's
    # mark: off from then
    assert ran == [True] + [False] * 7 and not tuner._Tuner.setting


def test_outputs_in_use_when_the_cache_went_off_go_back_at_a_later_step(buffers):
    import numpy as np
    a = buffers.empty((64, 32), np.float32)
    buffers.empty((2, 2), np.float32)                     # too small: only noted
    buffers._switch_cache(False)
    assert buffers.cached_bytes() == (a.nbytes, 0)        # in use: kept by the cache
    del a
    assert buffers.cached_bytes() == (0, 64 * 32 * 4)
    buffers.mark_step()
    assert buffers.cached_bytes() == (0, 0) and not buffers._Buffers.by_key


def test_auto_counts_only_main_thread_steps_and_only_when_asked(tuner):
    import threading
    worker = threading.Thread(target=lambda: [tuner.mark_step() for _ in range(50)])
    worker.start()
    worker.join()
    assert tuner._Tuner.steps == 0 and tuner._Tuner.last_mark is None
    for _ in range(2):
        tuner.mark_step()
    assert tuner._Tuner.steps == 2
    assert minidl.set_buffer_cache(False) is False           # leaves 'auto'
    for _ in range(50):
        tuner.mark_step()
    assert tuner._Tuner.steps == 0 and not tuner._Buffers.enabled
    assert minidl.set_buffer_cache("auto") == "auto" and tuner._Tuner.active


def test_auto_training_gives_the_same_weights_as_without_the_cache(tuner, monkeypatch):
    """A small convolutional network trained with 'auto' switching the cache on and off
    every few steps (trials back to back) ends with exactly the weights of the same
    training with the cache off; the cache did hand outputs out again."""
    import numpy as np
    from minidl import nn
    monkeypatch.setattr(tuner._Tuner, "RETUNE_STEPS", 1)
    monkeypatch.setattr(tuner._Tuner, "RETUNE_SECONDS", 0.0)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((40, 8, 2, 12, 12)).astype(np.float32)
    ys = rng.integers(0, 5, (40, 8))

    def train():
        minidl.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 6, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(6 * 5 * 5, 5))
        opt = minidl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for x, y in zip(xs, ys):
            opt.zero_grad()
            nn.functional.cross_entropy(net(minidl.tensor(x)), minidl.tensor(y)).backward()
            opt.step()
        return [p.detach().numpy().copy() for p in net.parameters()]

    with_auto = train()
    assert len(tuner._Tuner.decisions) >= 2 and tuner._Buffers.handouts > 0
    minidl.set_buffer_cache(False)
    without = train()
    for a, b in zip(with_auto, without):
        np.testing.assert_array_equal(a, b)
