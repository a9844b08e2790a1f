"""The CPU memory policy: whether the C allocator keeps freed memory for the next step.

A training step allocates its activations and gradients afresh (NumPy arrays of up to
tens of MB) and frees them at the end of the step. glibc's malloc serves a request above
its mmap threshold with a fresh ``mmap`` and returns it to the system on ``free``, and
trims the top of its heap once more than its trim threshold lies free there; either way
the next step's arrays come as new pages, and the kernel faults every 4 KiB page in on
first touch (zeroing it) inside whatever minidl kernel writes it first. The thresholds
adapt (a freed mmapped block raises them to its size), but a step's working set is many
such blocks, so a training loop keeps handing memory back and faulting it in again.

Measured on the 2-core dev VM (benchmarks/RESULTS.md), the LeNet seed-recipe epoch run
on its own: 700,000-870,000 minor page faults per epoch (5 MB of fresh pages a step) and
3.9-4.8 s with glibc's adaptive thresholds; 12-31 faults and 3.0-3.7 s with the
``'retain'`` policy below.

Policies (``set_memory_policy``):

* ``'retain'`` (the default, applied when minidl is imported): blocks up to
  ``RETAIN_MMAP_THRESHOLD`` come from the heap, and up to ``RETAIN_TRIM_THRESHOLD`` of
  free memory stays at its top (glibc ``mallopt(M_MMAP_THRESHOLD)`` and
  ``mallopt(M_TRIM_THRESHOLD)``). Freed memory is reused by the next step instead of
  being faulted in again; the process's resident memory stays at its peak (which is what
  a training loop reaches every step anyway) instead of falling between steps.
* ``'system'``: glibc's initial thresholds (128 KiB each). glibc's own adaptation of the
  thresholds, which setting them switches off, does not come back, so this is slower than
  a process that never set them: every block above 128 KiB is mapped afresh (the LeNet
  step alone: 14 ms against 5-6 ms with ``'retain'``). It is there to hand memory back
  between phases of a long-lived process, not for training loops.

This is a process-wide setting of the C library: it applies to every allocation in the
process (NumPy's, PyTorch's, ...), not only minidl's. Elsewhere than glibc (macOS, musl)
both policies leave the allocator alone and ``get_memory_policy()`` says ``'system'``.

Kernel output buffers (``empty``) and ``set_buffer_cache``
----------------------------------------------------------
The CPU kernels take their output arrays from ``empty``. With the buffer cache on (and
the ``'retain'`` policy) it serves them from a cache of the arrays earlier kernel
outputs left free: an array that nothing references any more is handed out again as the
next output of its shape and dtype. A training step allocates the same shapes in the same
order every step, so each kernel gets back the array it wrote a step before, split
between the threads as it split it then. Memory that glibc hands out again has no such
order: a fresh output often lies where the other thread last wrote.

Whether that pays depends on where the threads run. Measured on the dev VM, whose two
vCPUs the host places in two ways, changing every few seconds to minutes
(benchmarks/RESULTS.md): in one the LeNet step took 4.7 ms with NumPy's memory and 3.7
ms with the cache (0.80; the epoch 0.90); in the other (the usual one) 3.0 and 3.1-3.3
ms (1.03-1.10: glibc's block freed last is still in the core's L2, the cached one a step
old). No cheap probe of the machine told the two apart, so by default (``'auto'``,
``_Tuner``) the training loop itself decides: now and then a few steps run with the
cache off and on in turn, and the faster setting stays. ``set_buffer_cache(True)`` or
``False`` fixes it.

The cache holds what a step holds at its peak; arrays left free for ``STALE_HANDOUTS``
hand-outs go back to the allocator at the next miss, and all free ones when the cache is
switched off, by ``release_buffers()`` or by ``set_memory_policy('system')``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time

import numpy as np

__all__ = ["set_memory_policy", "get_memory_policy", "apply_default_policy", "POLICIES",
           "RETAIN_MMAP_THRESHOLD", "RETAIN_TRIM_THRESHOLD", "empty", "zeros", "release_buffers",
           "cached_bytes", "set_buffer_cache", "mark_step"]

POLICIES = ("retain", "system")
RETAIN_MMAP_THRESHOLD = 256 * 2**20
RETAIN_TRIM_THRESHOLD = 2**30
_SYSTEM_THRESHOLD = 128 * 2**10          # glibc's initial M_MMAP/M_TRIM_THRESHOLD

_M_TRIM_THRESHOLD = -1                   # glibc's malloc.h parameter numbers
_M_MMAP_THRESHOLD = -3


class _State:
    libc = None                          # ctypes handle of glibc, or False where absent
    policy = "system"


def _glibc():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if _State.libc is None:
        _State.libc = False
        try:
            import platform  # noqa: PLC0415
            if platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.mallopt.restype = ctypes.c_int
                _State.libc = libc
        except (OSError, AttributeError):
            _State.libc = False
    return _State.libc or None


def set_memory_policy(policy):
    """Set the CPU memory policy, ``'retain'`` or ``'system'`` (module docstring), for
    the whole process; returns the policy now in force (``'system'`` where the C library
    is not glibc)."""
    if policy not in POLICIES:
        raise ValueError(f"set_memory_policy: policy must be one of {POLICIES}, "
                         f"got {policy!r}")
    libc = _glibc()
    if libc is None:
        _State.policy = "system"
        return _State.policy
    mmap, trim = ((RETAIN_MMAP_THRESHOLD, RETAIN_TRIM_THRESHOLD) if policy == "retain"
                  else (_SYSTEM_THRESHOLD, _SYSTEM_THRESHOLD))
    if not (libc.mallopt(_M_MMAP_THRESHOLD, mmap) and libc.mallopt(_M_TRIM_THRESHOLD, trim)):
        raise RuntimeError(f"set_memory_policy({policy!r}): glibc's mallopt refused the "
                           f"thresholds (mmap {mmap}, trim {trim} bytes)")
    _State.policy = policy
    if policy == "system":
        release_buffers()
    return policy


def get_memory_policy():
    """The CPU memory policy in force: ``'retain'`` or ``'system'``."""
    return _State.policy


def apply_default_policy():
    """``set_memory_policy('retain')`` as ``import minidl`` runs it: where glibc refuses,
    a warning and the allocator left alone, never an import that fails."""
    try:
        return set_memory_policy("retain")
    except RuntimeError as exc:
        import warnings  # noqa: PLC0415
        warnings.warn(f"minidl: {exc}; the memory policy stays 'system'", RuntimeWarning,
                      stacklevel=2)
        return get_memory_policy()


# ----------------------------------------------------------------------------- output buffers

CACHE_MIN_BYTES = 4096        # smaller outputs come from NumPy (malloc's small bins)
MAX_PER_KEY = 64              # arrays kept per (shape, dtype): bounds the scan for a free one
STALE_HANDOUTS = 20_000       # a free array not handed out for this many calls goes back


class _Buffers:
    """The cache: for each (shape, dtype) as ``empty`` was called with, entries ``[array,
    last]``: an array handed out before and the hand-out count when it last was (None for
    the keys too small to cache). An array is free when only its entry references it."""
    enabled = False
    lock = threading.Lock()
    by_key = {}
    handouts = 0
    free_refs = None          # sys.getrefcount of an array only its entry references

    @classmethod
    def calibrate(cls):
        """The reference count ``take`` sees for an array nothing else holds (CPython
        versions count the call's own references differently)."""
        entry = [np.empty(1, np.uint8), 0]
        cls.free_refs = sys.getrefcount(entry[0])

    @classmethod
    def take(cls, key):
        """A free array of ``key`` = (shape, dtype), or a new one (kept unless MAX_PER_KEY
        of that key are kept already)."""
        entries = cls.by_key.get(key, ())
        if entries is None:
            return np.empty(*key)
        cls.handouts += 1
        for entry in entries:
            if sys.getrefcount(entry[0]) == cls.free_refs:
                entry[1] = cls.handouts
                array = entry[0]
                if not array.flags.writeable:    # as np.empty's, whatever its last user did
                    array.flags.writeable = True
                return array
        array = np.empty(*key)
        if array.nbytes < CACHE_MIN_BYTES:
            cls.by_key[key] = None
            return array
        cls.drop_stale()
        entries = cls.by_key.setdefault(key, [])
        if len(entries) < MAX_PER_KEY:
            entries.append([array, cls.handouts])
        return array

    @classmethod
    def drop_stale(cls, everything=False):
        """Give back the free arrays not handed out for STALE_HANDOUTS calls (all free ones
        with ``everything``)."""
        for key, entries in list(cls.by_key.items()):
            if entries is None:               # a key too small to cache: forgotten too
                if everything:
                    del cls.by_key[key]
                continue
            kept = [e for e in entries
                    if sys.getrefcount(e[0]) != cls.free_refs
                    or (not everything and cls.handouts - e[1] <= STALE_HANDOUTS)]
            if kept:
                cls.by_key[key] = kept
            else:
                del cls.by_key[key]


_Buffers.calibrate()


def _switch_cache(flag):
    if flag != _Buffers.enabled:
        _Buffers.enabled = flag
        if not flag:
            release_buffers()


def set_buffer_cache(flag):
    """Cache kernel outputs (True), not (False), or let the training loop's own step times
    decide (``'auto'``, the default; module docstring); only under the ``'retain'``
    policy. Returns the setting."""
    if flag not in (True, False, "auto"):
        raise ValueError(f"set_buffer_cache: flag must be True, False or 'auto', "
                         f"got {flag!r}")
    _Tuner.reset(flag == "auto")
    _Buffers.enabled = flag is True
    if flag is not True:          # also the arrays that were in use at an earlier switch
        release_buffers()
    return flag


# ----------------------------------------------------------------------------- 'auto'

class _Tuner:
    """``set_buffer_cache('auto')``: an A/B trial inside the training loop. Every backward
    pass run from the main thread marks a step (``mark_step``); the time from one mark to
    the next is what a step costs the user, whatever the model. After ``FIRST_TRIAL``
    steps, and later once ``RETUNE_STEPS`` steps and ``RETUNE_SECONDS`` have passed (the
    host may have moved the threads meanwhile; the wait doubles for each earlier trial
    in a row with the same verdict, up to ``MAX_BACKOFF`` times), the next steps run as a
    trial: ``ROUNDS`` rounds of two blocks, the cache off in one and on in the other (off
    first in the even rounds, on first in the odd ones, so that a drift of the machine's
    speed over the trial cancels), each block ``WARM`` untimed steps (the cache filling,
    or glibc's free lists settling) and ``MEASURE`` timed ones. Each round gives the
    ratio of its blocks' median steps, on / off; the trial's verdict is "on" if the
    median of those ratios is below ``1 - MARGIN``. The setting changes when two trials
    in a row give the verdict against it (one trial, 24 timed steps, can be swayed by a
    few slow steps; the states of the machine that matter last seconds to minutes). A
    trial costs its steps in the slower setting (benchmarks/RESULTS.md).

    Only loops whose recent steps (the median of the last ``RECENT``) take at most
    ``MAX_STEP_SECONDS`` have trials; longer ones run with the cache off. Their steps
    (ResNet-18, GoogLeNet, MobileNet v2: 60-1500 ms) spend most of their time in
    arithmetic, not in memory handed between threads: in the usual state the cache made
    them 2-9 % slower (LeNet's 3 ms step 3-10 %), a trial's 16 steps in the slower
    setting cost seconds, and the cache holds memory NumPy's own allocations cannot use
    (ResNet-18's peak RSS: 577 MB without it, 666 with it, 773 with trials switching it
    on and off)."""
    FIRST_TRIAL = 20
    RETUNE_STEPS = 100
    RETUNE_SECONDS = 2.0
    MAX_BACKOFF = 4        # the wait doubles while trials agree: 2, 4, ... 32 s
    ROUNDS = 4
    WARM = 1
    MEASURE = 3
    MARGIN = 0.03
    MAX_STEP_SECONDS = 0.05
    RECENT = 5

    active = False
    setting = False        # the cache's setting between trials
    plan = []              # (cache on, block or None when untimed) of the trial steps to run
    running = None         # that of the trial step running now, or None
    times = {}             # block -> step times; blocks 2r and 2r + 1 make round r
    last_mark = None       # perf_counter at the previous mark
    recent = []            # the last RECENT step times outside trials
    steps = 0              # steps since the last trial ended
    last_trial = 0.0       # perf_counter when it ended
    decisions = []         # (median ratio on / off, verdict: on) of each trial, latest last

    @classmethod
    def reset(cls, active):
        cls.active, cls.setting = active, False
        cls.plan, cls.running, cls.times = [], None, {}
        cls.last_mark, cls.steps, cls.last_trial, cls.decisions = None, 0, 0.0, []
        cls.recent = []

    @classmethod
    def trial_plan(cls):
        """The trial's steps: (cache on, block) for timed ones, (cache on, None) warm-ups."""
        plan = []
        for r in range(cls.ROUNDS):
            for k, on in enumerate((False, True) if r % 2 == 0 else (True, False)):
                plan += [(on, None)] * cls.WARM + [(on, 2 * r + k)] * cls.MEASURE
        return plan

    @classmethod
    def mark(cls, now):
        """A step ended at ``now`` (perf_counter): time it, and begin, go on with or end a
        trial."""
        if cls.running is not None:
            on, block = cls.running
            if block is not None and cls.last_mark is not None:
                cls.times.setdefault(block, []).append(now - cls.last_mark)
            cls.running = None
        elif cls.last_mark is not None:
            cls.recent = cls.recent[1 - cls.RECENT:] + [now - cls.last_mark]
        cls.last_mark = now
        if not cls.plan:
            if cls.times:
                cls.decide(now)
                return
            cls.steps += 1
            if len(cls.recent) < cls.RECENT:
                return
            # the median without NumPy (np.median costs 10 us, a small op's time)
            if sorted(cls.recent)[cls.RECENT // 2] > cls.MAX_STEP_SECONDS:
                cls.setting = False           # long steps: no trials, the cache off
                _switch_cache(False)
                return
            if not cls.due(now):
                return
            cls.plan = cls.trial_plan()
        cls.running = cls.plan.pop(0)
        _switch_cache(cls.running[0])

    @classmethod
    def due(cls, now):
        """Whether a trial begins at this mark."""
        if not cls.decisions:
            return cls.steps >= cls.FIRST_TRIAL
        return cls.steps >= cls.RETUNE_STEPS and now - cls.last_trial >= cls.wait()

    @classmethod
    def wait(cls):
        """Seconds from a trial to the next: ``RETUNE_SECONDS``, doubled for each earlier
        trial in a row with the latest one's verdict (up to ``MAX_BACKOFF`` times)."""
        same = 0
        for _, verdict in reversed(cls.decisions[:-1]):
            if verdict != cls.decisions[-1][1] or same == cls.MAX_BACKOFF:
                break
            same += 1
        return cls.RETUNE_SECONDS * 2 ** same

    @classmethod
    def decide(cls, now):
        """End a trial: its verdict, and the setting from now on."""
        ratios = []
        for r in range(cls.ROUNDS):
            off, on = (cls.times.get(2 * r + k) for k in ((0, 1) if r % 2 == 0 else (1, 0)))
            if off and on:
                ratios.append(float(np.median(on) / np.median(off)))
        ratio = float(np.median(ratios)) if ratios else 1.0
        verdict = ratio < 1 - cls.MARGIN
        if cls.decisions and cls.decisions[-1][1] == verdict:
            cls.setting = verdict
        cls.decisions = cls.decisions[-99:] + [(ratio, verdict)]
        cls.times = {}
        cls.steps, cls.last_trial = 0, now
        _switch_cache(cls.setting)


_Tuner.reset(True)            # 'auto' is the default


def mark_step():
    """A training step ends here (the backward pass calls it): feeds ``'auto'``, and with
    the cache off gives back the cached arrays that were still in use when it went off."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _Tuner.active:
        _Tuner.mark(time.perf_counter())
    if not _Buffers.enabled and _Buffers.by_key:
        release_buffers()


def empty(shape, dtype):
    """An uninitialised C-contiguous NumPy array of ``shape`` (a tuple) and ``dtype`` for a
    CPU kernel's output or scratch: with the buffer cache on (``set_buffer_cache``) and
    the ``'retain'`` policy, an array of that shape and dtype that earlier outputs left
    free; else ``np.empty``."""
    if not _Buffers.enabled or _State.policy != "retain":
        return np.empty(shape, dtype)
    with _Buffers.lock:
        return _Buffers.take((shape, dtype))


def zeros(shape, dtype):
    """``empty(shape, dtype)`` filled with zeros."""
    if not _Buffers.enabled or _State.policy != "retain":
        return np.zeros(shape, dtype)
    out = empty(shape, dtype)
    out.fill(0)
    return out


def release_buffers():
    """Give every cached output array that nothing uses any more back to the allocator."""
    with _Buffers.lock:
        _Buffers.drop_stale(everything=True)


def cached_bytes():
    """(in use, free): bytes of the cached output arrays that are still referenced, and
    of those free for the next outputs."""
    used = free = 0
    with _Buffers.lock:
        for entries in _Buffers.by_key.values():
            for entry in entries or ():
                if sys.getrefcount(entry[0]) == _Buffers.free_refs:
                    free += entry[0].nbytes
                else:
                    used += entry[0].nbytes
    return used, free
