"""``DistributedDataParallel``: the same model on every rank, gradients averaged.

How it keeps the replicas equal:

1. at construction, rank 0's parameters and buffers are broadcast to every rank;
2. ``forward`` runs the wrapped module and passes each output through ``_GradSync``, an
   identity whose backward queues one callback (``autograd.queue_callback``);
3. that callback runs when the backward pass has finished, when every ``.grad`` is final,
   and replaces each parameter's gradient by its mean over the ranks.

So ``loss.backward(); opt.step()`` steps every replica with the same averaged gradient, and
N ranks with batch B each compute what one process computes with batch N*B (for a loss that
is a mean over the batch). Not in this version: gradient buckets and overlapping the
all-reduce with the backward pass; each gradient is reduced on its own, after backward.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..autograd import Function, Tensor, is_grad_enabled, queue_callback
from ..nn.module import Module
from .process_group import ReduceOp, _comm, all_reduce, broadcast


class _GradSync(Function):
    """Identity on the forward; its backward asks for the gradient average at the end of
    the backward pass (the parameters' gradients are not final yet when it runs)."""

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
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(fn, o) for o in out)
    if isinstance(out, dict):
        return {k: _map_tensors(fn, v) for k, v in out.items()}
    return out


class DistributedDataParallel(Module):
    """Wrap ``module`` so that its gradients are averaged across the ranks after backward.

    ``device_ids``/``output_device`` are accepted for PyTorch compatibility and ignored
    (the MPI backend runs on the CPU). The wrapped module is ``ddp.module``; its
    ``state_dict`` keys carry the ``module.`` prefix, as in PyTorch.
    """

    def __init__(self, module, device_ids=None, output_device=None, broadcast_buffers=True):
        super().__init__()
        _comm("DistributedDataParallel()")
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got "
                            f"{type(module).__name__}")
        self.module = module
        self.broadcast_buffers = bool(broadcast_buffers)
        self.__dict__["_sync_queued"] = False
        self.__dict__["_sync_enabled"] = True
        self._broadcast_state()

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
        self.__dict__["_sync_enabled"] = False
        try:
            yield
        finally:
            self.__dict__["_sync_enabled"] = old

    def _queue_gradient_sync(self):
        """Called from ``_GradSync.backward``: one average per backward pass."""
        if not self._sync_queued:
            self.__dict__["_sync_queued"] = True
            queue_callback(self._average_gradients)

    def _average_gradients(self):
        """Replace every parameter's ``.grad`` by its mean over the ranks.

        A parameter without a gradient on this rank takes part with zeros: every rank must
        make the same all-reduce calls, in the same order, or MPI would hang.
        """
        self.__dict__["_sync_queued"] = False
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = Tensor(np.zeros(p.shape, dtype=p.dtype))
            all_reduce(p.grad, op=ReduceOp.AVG)
