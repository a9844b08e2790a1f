"""``DistributedDataParallel``: the same model on every rank, gradients averaged in buckets
that are reduced while backward is still running (PyTorch's design, on MPI).

How it keeps the replicas equal:

1. at construction, the ranks check that they wrap the same model (one small all-gather of
   every parameter's shape and dtype), then rank 0's parameters and buffers are broadcast;
2. the parameters that require grad are grouped into *buckets*, in the reverse order of
   ``module.parameters()`` (the order their gradients tend to become final in backward):
   each bucket is one flat contiguous buffer of one dtype, up to ``bucket_cap_mb``;
3. ``forward`` passes each output through ``_GradSync``, an identity whose backward (the
   first node of the backward pass) arms the synchronisation for this pass and queues one
   final callback (``autograd.queue_callback``);
4. each parameter has a post-accumulate-grad hook: when the last parameter of the next
   bucket is final, its gradients are copied into the bucket and a non-blocking all-reduce
   (MPI ``Iallreduce``) starts, while backward goes on with the earlier layers;
5. the final callback starts the buckets still waiting (a parameter that got no gradient
   this pass takes part with zeros), waits for them all, divides by the world size and
   writes each average back into its parameter's ``.grad``.

So ``loss.backward(); opt.step()`` steps every replica with the same averaged gradient, and
N ranks with batch B each compute what one process computes with batch N*B (for a loss that
is a mean over the batch).

Why buckets, and why in index order: one all-reduce per parameter pays MPI's latency for
every bias vector; one for the whole model cannot start before backward ends. Buckets of a
few MB start early and are large enough to use the network well. MPI matches non-blocking
collectives by the order they are started in, so every rank starts bucket k only after
buckets 0..k-1, even when its gradients are final sooner: the ranks' launch sequences are
then always the same, whatever each rank's backward does.

Bucket shapes (P parameters, bucket k holds P_k of them)::

    bucket k buffer: (sum of numel over its P_k parameters,)   one dtype
    parameter i of the bucket: buffer[offset_i : offset_i + numel_i].reshape(shape_i)
"""
from __future__ import annotations

import contextlib
import numbers
import time

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled, queue_callback
from ..backend import get_array_module
from ..nn.module import Module
from .process_group import (_all_gather_object, _array, _comm, _start_all_reduce_sum, broadcast,
                            get_world_size)


class _GradSync(Function):
    """Identity on the forward; its backward (run before any parameter's gradient is final)
    arms the bucketed gradient average for this backward pass."""

    _view = True  # the output is the input's memory

    @staticmethod
    def forward(ctx, x, ddp):
        ctx.ddp = ddp
        return x.view()

    @staticmethod
    def backward(ctx, gy):
        ctx.ddp._queue_gradient_sync()
        return gy

    @staticmethod
    def differentiable_backward(ctx, gy):  # create_graph=True: the same, on Tensors
        ctx.ddp._queue_gradient_sync()
        return gy


def _map_tensors(fn, out):
    """Apply ``fn`` to every Tensor in ``out`` (a Tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, tuple) and hasattr(out, "_fields"):    # a namedtuple (GoogLeNet's)
        return type(out)(*(_map_tensors(fn, o) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(fn, o) for o in out)
    if isinstance(out, dict):
        return {k: _map_tensors(fn, v) for k, v in out.items()}
    return out


class _Bucket:
    """Parameters whose gradients are reduced together, in one flat buffer.

    params: the bucket's parameters (one dtype); slices: where each one's gradient lives in
    ``buffer``; waiting: ids of the parameters whose gradient is not final yet in this
    backward pass; work: the all-reduce in flight (None before launch).
    """

    __slots__ = ("params", "slices", "buffer", "waiting", "work")

    def __init__(self, params):
        self.params = params
        self.slices, start = [], 0
        for p in params:
            self.slices.append(slice(start, start + p.numel()))
            start += p.numel()
        xp = get_array_module(params[0].data)    # the parameters' device: NumPy or CuPy
        self.buffer = xp.zeros(start, dtype=params[0].dtype)
        self.waiting = set()
        self.work = None


def _assign_buckets(params, cap_bytes):
    """Lists of parameters, one per bucket: ``params`` taken in reverse, each added to the
    open bucket of its dtype while that stays within ``cap_bytes``, else starting a new
    one (so a parameter larger than the cap gets a bucket of its own). Bucket indices
    follow the order buckets are opened."""
    buckets, open_of, size = [], {}, []
    for p in reversed(params):
        k = open_of.get(p.dtype)
        if k is None or size[k] + p.data.nbytes > cap_bytes:
            k = open_of[p.dtype] = len(buckets)
            buckets.append([])
            size.append(0)
        buckets[k].append(p)
        size[k] += p.data.nbytes
    return buckets


def _describe(entry):
    name, shape, dtype, requires_grad = entry
    return f"'{name}' {shape} {dtype}" + ("" if requires_grad else " (requires_grad=False)")


def _first_difference(kind, mine, theirs, rank):
    """A sentence naming the first ``kind`` (parameter/buffer) where rank 0's list of
    (name, shape, dtype, requires_grad) differs from rank ``rank``'s, or None."""
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a[1:] != b[1:]:
            return (f"{kind} {i} is {_describe(a)} on rank 0 but {_describe(b)} on rank "
                    f"{rank}")
    if len(mine) != len(theirs):
        longer, r = (mine, 0) if len(mine) > len(theirs) else (theirs, rank)
        return (f"rank 0 has {len(mine)} {kind}s, rank {rank} has {len(theirs)} (the first "
                f"extra one, on rank {r}: {_describe(longer[min(len(mine), len(theirs))])})")
    return None


def _new_comm_stats(buckets):
    return {"buckets": len(buckets), "bucket_bytes": [b.buffer.nbytes for b in buckets],
            "syncs": 0, "launched": 0, "launched_in_backward": 0, "overlapped": 0,
            "copy_s": 0.0, "launch_s": 0.0, "progress_s": 0.0, "wait_s": 0.0}


class DistributedDataParallel(Module):
    """Wrap ``module`` so that its gradients are averaged across the ranks during backward.

    module: the model, the same on every rank (checked at construction: the same parameter
        shapes and dtypes in the same order, else a RuntimeError on every rank).
    device_ids, output_device: accepted for PyTorch compatibility and ignored: the model
        stays where it is (CPU parameters with backend 'mpi', this rank's GPU with 'nccl';
        the bucket buffers live on the same device).
    broadcast_buffers: also copy rank 0's buffers (BatchNorm running statistics) to every
        rank at construction. (PyTorch broadcasts them again before every forward; minidl
        does it once, so each rank's running statistics then follow its own batches.)
    bucket_cap_mb: the largest bucket, in MiB (PyTorch's 25 by default). Smaller buckets
        start sooner and more often; a parameter above the cap has a bucket of its own.
    find_unused_parameters: accepted for compatibility; minidl always copes with
        parameters that get no gradient in a pass (they take part with zeros, once backward
        has ended), so the flag changes nothing.
    gradient_as_bucket_view: leave each ``.grad`` as a view of its bucket after the
        average (no copy back). The gradients are still copied *into* the buckets:
        minidl's autograd accumulates ``.grad`` out of place, never into a given buffer.

    The wrapped module is ``ddp.module``; ``state_dict`` keys carry the ``module.`` prefix,
    as in PyTorch. ``ddp._comm_stats`` counts, since construction, for benchmarks:
    ``buckets`` and ``bucket_bytes`` (the layout), ``syncs`` (averaged backward passes),
    ``launched``, ``launched_in_backward`` (started from a gradient hook rather than at the
    end of backward) and ``overlapped`` (already in flight when the pass's last gradient
    became final: their communication overlapped gradient computation; a model in a single
    bucket has none), and seconds spent in ``copy_s``
    (gradients into and out of buckets), ``launch_s`` (starting all-reduces), ``progress_s``
    (polling them from the hooks so that MPI advances) and ``wait_s`` (waiting at the end).
    """

    def __init__(self, module, device_ids=None, output_device=None, broadcast_buffers=True,
                 bucket_cap_mb=25, find_unused_parameters=False, gradient_as_bucket_view=False):
        super().__init__()
        _comm("DistributedDataParallel()")
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got "
                            f"{type(module).__name__}")
        if (not isinstance(bucket_cap_mb, numbers.Real) or isinstance(bucket_cap_mb, bool)
                or not bucket_cap_mb > 0):
            raise ValueError(f"DistributedDataParallel: expected bucket_cap_mb a positive "
                             f"number of MiB, got {bucket_cap_mb!r}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = bucket_cap_mb
        self.find_unused_parameters = bool(find_unused_parameters)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self._check_same_model_on_every_rank()
        self._broadcast_state()

        params = [p for p in module.parameters() if p.requires_grad]
        self._buckets = [_Bucket(ps) for ps in
                         _assign_buckets(params, int(bucket_cap_mb * 1024 * 1024))]
        self._bucket_of = {id(p): k for k, b in enumerate(self._buckets) for p in b.params}
        self._world_size = get_world_size()
        self._sync_queued = False   # this pass's final callback is queued (pass is armed)
        self._sync_enabled = True   # False inside no_sync()
        self._next_launch = 0       # the lowest bucket index not launched in this pass
        self._in_flight_at_hook = 0  # buckets launched in this pass before the latest hook
        self._in_flight = []        # launched Works not yet seen complete (to poll)
        self._comm_stats = _new_comm_stats(self._buckets)
        self._hook_handles = [p.register_post_accumulate_grad_hook(self._on_gradient_ready)
                              for p in params]

    def _check_same_model_on_every_rank(self):
        """Raise on every rank if any rank's parameters (or broadcast buffers) differ from
        rank 0's: a mismatch would otherwise hang or mix up the collectives that follow."""
        def entries(named):
            return [(n, tuple(t.shape), str(t.dtype), t.requires_grad) for n, t in named]
        for n, p in self.module.named_parameters():
            _array(f"DistributedDataParallel(): parameter '{n}'", p)  # the backend's device
        mine = (entries(self.module.named_parameters()),
                entries(self.module.named_buffers()) if self.broadcast_buffers else [],
                self.bucket_cap_mb)
        every = _all_gather_object("DistributedDataParallel()", mine)
        for rank, theirs in enumerate(every[1:], start=1):
            problem = (_first_difference("parameter", every[0][0], theirs[0], rank)
                       or _first_difference("buffer", every[0][1], theirs[1], rank))
            if problem is None and every[0][2] != theirs[2]:
                problem = (f"bucket_cap_mb is {every[0][2]} on rank 0 but {theirs[2]} on "
                           f"rank {rank}")
            if problem is not None:
                raise RuntimeError(f"DistributedDataParallel: expected the same model on "
                                   f"every rank; {problem}. Build the model identically on "
                                   f"every rank (rank 0's weights are then copied to the "
                                   f"others)")

    def _broadcast_state(self):
        """Make every rank start from rank 0's parameters and buffers."""
        for p in self.module.parameters():
            broadcast(p, src=0)
        if self.broadcast_buffers:
            for b in self.module.buffers():
                broadcast(b, src=0)

    def forward(self, *inputs, **kwargs):
        out = self.module(*inputs, **kwargs)
        if not (is_grad_enabled() and self._sync_enabled):
            return out
        return _map_tensors(lambda t: _GradSync.apply(t, ddp=self) if t.requires_grad else t,
                            out)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward accumulates local gradients without averaging them (for
        gradient accumulation: the first backward after leaving averages the sum)."""
        old = self._sync_enabled
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = old

    # ------------------------------------------------------------------ during backward
    def _queue_gradient_sync(self):
        """Called from ``_GradSync.backward``: arm this pass (once), queue its final step."""
        if self._sync_queued:
            return
        self._sync_queued = True
        for b in self._buckets:
            b.waiting = {id(p) for p in b.params}
            b.work = None
        self._next_launch = 0
        self._in_flight_at_hook = 0
        self._in_flight = []
        queue_callback(self._finish_gradient_sync)

    def _on_gradient_ready(self, p):
        """Post-accumulate hook of every parameter: ``p.grad`` is final for this pass."""
        if not self._sync_queued:  # a pass that does not average (no_sync, plain module)
            return
        self._in_flight_at_hook = self._next_launch
        b = self._buckets[self._bucket_of[id(p)]]
        b.waiting.discard(id(p))
        if not b.waiting:
            self._launch_ready_buckets()
        if self._in_flight:  # MPICH advances a collective only inside MPI calls
            t0 = time.perf_counter()
            self._in_flight = [w for w in self._in_flight if not w.is_completed()]
            self._comm_stats["progress_s"] += time.perf_counter() - t0

    def _launch_ready_buckets(self):
        """Launch every bucket from the next unlaunched index on whose gradients are all
        final; stop at the first one still waiting (launch order = index order on all
        ranks)."""
        while (self._next_launch < len(self._buckets)
               and not self._buckets[self._next_launch].waiting):
            self._launch(self._buckets[self._next_launch])
            self._comm_stats["launched_in_backward"] += 1

    def _launch(self, b):
        """Copy the bucket's gradients (zeros for a parameter without one) into its buffer
        and start summing it across the ranks."""
        t0 = time.perf_counter()
        for p, s in zip(b.params, b.slices):
            if p.grad is None:
                b.buffer[s] = 0
            else:
                b.buffer[s] = p.grad.data.reshape(-1)
        t1 = time.perf_counter()
        b.work = _start_all_reduce_sum("DistributedDataParallel", b.buffer)
        self._in_flight.append(b.work)
        self._next_launch += 1
        stats = self._comm_stats
        stats["copy_s"] += t1 - t0
        stats["launch_s"] += time.perf_counter() - t1
        stats["launched"] += 1

    def _finish_gradient_sync(self):
        """The final callback of an armed pass: launch the buckets not launched yet (every
        rank makes the same calls, in the same order), wait for each, and replace every
        parameter's ``.grad`` by its mean over the ranks."""
        self._sync_queued = False
        stats = self._comm_stats
        while self._next_launch < len(self._buckets):
            self._launch(self._buckets[self._next_launch])
        for b in self._buckets:
            t0 = time.perf_counter()
            b.work.wait()
            t1 = time.perf_counter()
            b.buffer /= self._world_size
            self._write_back(b)
            stats["wait_s"] += t1 - t0
            stats["copy_s"] += time.perf_counter() - t1
            b.work = None
        self._in_flight = []
        stats["overlapped"] += self._in_flight_at_hook
        stats["syncs"] += 1

    def _write_back(self, b):
        """Each parameter's averaged gradient, from the bucket into its ``.grad``."""
        for p, s in zip(b.params, b.slices):
            mean = b.buffer[s].reshape(p.shape)
            if self.gradient_as_bucket_view:
                p.grad = Tensor(mean)            # a view: the next pass overwrites it
            elif p.grad is None:  # no gradient on this rank (unused): it gets the mean
                p.grad = Tensor(mean.copy())
            else:
                p.grad.data[...] = mean
                p.grad._bump_version()  # an in-place change: saved-value checks see it
