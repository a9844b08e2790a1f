"""``DataLoader``: batches of a dataset, shuffled from a seeded generator, as Tensors.

``DataLoader(dataset, batch_size=1, shuffle=False, drop_last=False, collate_fn=None,
seed=None, generator=None, sampler=None)`` yields batches in the dataset's field structure, stacked into
``minidl.Tensor`` s: ``for x, y in loader`` with ``x`` (B, ...) and ``y`` (B,).

The fast path: when the dataset offers ``get_batch(indices)`` (MNIST, TensorDataset, and
their Subsets do) and no ``collate_fn`` is given, a batch is one call that gathers the
samples and transforms them all at once; otherwise the loader calls ``dataset[i]`` for
every index and ``collate_fn`` (``default_collate``) stacks the samples.

Order: ``shuffle=True`` draws a new permutation at the start of every epoch (every
``iter(loader)``) from ``generator`` (a ``numpy.random.Generator``), or from a generator
made once from ``seed``, or by default from minidl's generator, so that
``minidl.manual_seed(s)`` gives the same order run after run. A ``sampler`` (any iterable
of indices with a length, e.g. ``minidl.distributed.DistributedSampler``) gives the order
instead, read afresh every epoch.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from .. import random as _random
from ..autograd import Tensor
from .dataset import has_batch_access

__all__ = ["DataLoader", "default_collate"]


def _stack_arrays(arrays):
    xp = backend.get_array_module(*arrays)
    return xp.stack(arrays)


def default_collate(batch):
    """Stack a list of samples into a batch, field by field, as PyTorch's default_collate:
    Tensors and arrays are stacked into a Tensor (new axis 0); ints become an int64
    Tensor, floats a float64 Tensor, bools a bool Tensor; tuples, lists and dicts are
    collated field by field; strings and anything else are returned as a list."""
    if not batch:
        raise ValueError("default_collate: empty batch")
    elem = batch[0]
    if isinstance(elem, Tensor):
        return Tensor(_stack_arrays([b.data for b in batch]))
    if isinstance(elem, np.ndarray) or backend.is_cupy_array(elem):
        if elem.dtype.kind == "O":
            raise TypeError("default_collate: cannot stack object arrays")
        return Tensor(_stack_arrays(list(batch)))
    if isinstance(elem, (bool, np.bool_)):
        return Tensor(np.asarray(batch, dtype=np.bool_))
    if isinstance(elem, np.generic):
        return Tensor(np.asarray(batch, dtype=elem.dtype))
    if isinstance(elem, numbers.Integral):
        return Tensor(np.asarray(batch, dtype=np.int64))
    if isinstance(elem, numbers.Real):
        return Tensor(np.asarray(batch, dtype=np.float64))
    if isinstance(elem, str):
        return list(batch)
    if isinstance(elem, dict):
        return {k: default_collate([b[k] for b in batch]) for k in elem}
    if isinstance(elem, (tuple, list)):
        size = len(elem)
        if any(len(b) != size for b in batch):
            raise RuntimeError("default_collate: every sample must have the same number of "
                               "fields")
        fields = [default_collate(list(f)) for f in zip(*batch)]
        return tuple(fields) if isinstance(elem, tuple) else fields
    return list(batch)


def _as_batch_field(field):
    """A field returned by ``get_batch`` as a Tensor."""
    if isinstance(field, Tensor):
        return field
    if isinstance(field, np.ndarray) or backend.is_cupy_array(field):
        return Tensor(field)
    return default_collate(list(field))


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    shuffle: a new random order every epoch; drop_last: skip a last, smaller batch;
    collate_fn: turns a list of samples into a batch (default: ``default_collate``);
    seed / generator: the source of the shuffling (default: minidl's seeded generator).
    sampler: the indices to visit, in order, instead of ``shuffle`` (PyTorch's rule: the two
    exclude each other).
    ``num_workers`` and ``pin_memory`` are accepted for PyTorch compatibility and ignored:
    batches are made in the main process (vectorised, which is what makes them fast).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False,
                 collate_fn=None, seed=None, generator=None, num_workers=0,
                 pin_memory=False, sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        if generator is not None and seed is not None:
            raise ValueError("DataLoader: pass either seed or generator, not both")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle "
                             "(the sampler decides the order; shuffle it there)")
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if isinstance(generator, numbers.Integral):
            seed, generator = generator, None
        self.seed = seed
        self.generator = np.random.default_rng(int(seed)) if seed is not None else generator

    @property
    def uses_batch_access(self):
        """Whether batches come from ``dataset.get_batch`` (the vectorised path)."""
        return self.collate_fn is None and has_batch_access(self.dataset)

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _order(self):
        if self.sampler is not None:
            return np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        g = self.generator if self.generator is not None else _random.generator()
        return g.permutation(n).astype(np.int64)

    def batches_of_indices(self):
        """This epoch's batches of dataset indices (draws the shuffle)."""
        order = self._order()
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        return [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __iter__(self):
        batch_access = self.uses_batch_access
        collate = self.collate_fn or default_collate
        for idx in self.batches_of_indices():
            if batch_access:
                fields = self.dataset.get_batch(idx)
                if isinstance(fields, (tuple, list)):
                    yield tuple(_as_batch_field(f) for f in fields)
                else:
                    yield _as_batch_field(fields)
            else:
                yield collate([self.dataset[int(i)] for i in idx])

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")
