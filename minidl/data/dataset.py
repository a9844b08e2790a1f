"""Datasets: ``Dataset``, ``TensorDataset``, ``Subset``, ``ConcatDataset``, ``random_split``.

A dataset maps an index to a sample (``dataset[i]``, usually a tuple ``(input, target)``)
and knows its length. A dataset that holds its data in memory may also offer
``get_batch(indices)``: the batch of those samples, one already-stacked array (or Tensor)
per field, e.g. ``(images (B, ...), targets (B,))``. ``DataLoader`` uses it when present,
so a batch costs one gather instead of ``B`` Python calls.
"""
from __future__ import annotations

import bisect
import math
import numbers

import numpy as np

from .. import random as _random
from ..autograd import Tensor

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split",
           "has_batch_access"]


def has_batch_access(dataset):
    """Whether ``dataset.get_batch(indices)`` gives whole batches."""
    return callable(getattr(dataset, "get_batch", None))


class Dataset:
    """Base class: subclasses define ``__getitem__`` and ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} does not define __getitem__")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} does not define __len__")

    def __add__(self, other):
        return ConcatDataset([self, other])


def _index_field(field, idx):
    if isinstance(field, Tensor):
        return Tensor(field.data[idx])
    return field[idx]


class TensorDataset(Dataset):
    """Samples ``(t[i] for t in tensors)`` from Tensors or arrays with the same first
    dimension; ``get_batch`` gathers a whole batch from each at once."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: expected at least one tensor")
        n = len(tensors[0])
        for k, t in enumerate(tensors):
            if len(t) != n:
                raise ValueError(f"TensorDataset: all tensors must have the same first "
                                 f"dimension; tensor 0 has {n}, tensor {k} has {len(t)}")
        self.tensors = tuple(t if isinstance(t, Tensor) else np.asarray(t) for t in tensors)

    def __getitem__(self, index):
        return tuple(_index_field(t, index) for t in self.tensors)

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        return tuple(_index_field(t, idx) for t in self.tensors)

    def __len__(self):
        return len(self.tensors[0])


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(dataset)
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"Subset: indices must lie in [0, {n}) for a dataset of {n} "
                             "samples")

    def __getitem__(self, index):
        if isinstance(index, (list, np.ndarray)):
            return [self.dataset[int(i)] for i in self.indices[index]]
        return self.dataset[int(self.indices[index])]

    def __len__(self):
        return len(self.indices)

    @property
    def get_batch(self):
        """Batch access exactly when the underlying dataset has it (else None)."""
        return self._get_batch if has_batch_access(self.dataset) else None

    def _get_batch(self, indices):
        return self.dataset.get_batch(self.indices[np.asarray(indices, dtype=np.int64)])


class ConcatDataset(Dataset):
    """The datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: expected at least one dataset")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]))

    def __len__(self):
        return int(self.cumulative_sizes[-1]) if self.cumulative_sizes else 0

    def __getitem__(self, index):
        if index < 0:
            if -index > len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            index += len(self)
        d = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[d - 1] if d > 0 else 0
        return self.datasets[d][index - start]


def _generator_from(generator=None, seed=None):
    """A numpy Generator: the one given, a fresh one from ``seed``, else minidl's."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if isinstance(generator, numbers.Integral):
        return np.random.default_rng(int(generator))
    if generator is not None:
        return generator
    if seed is not None:
        return np.random.default_rng(int(seed))
    return _random.generator()


def random_split(dataset, lengths, generator=None, seed=None):
    """Split ``dataset`` into non-overlapping ``Subset`` s of the given ``lengths`` (ints
    summing to ``len(dataset)``, or fractions summing to 1, the remainder going one by
    one to the first subsets as in PyTorch), in a random order drawn from ``generator``
    (a ``numpy.random.Generator``), a ``seed``, or minidl's seeded generator."""
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) and 0 <= x <= 1 for x in lengths) and \
            math.isclose(sum(lengths), 1.0, abs_tol=1e-9):
        counts = [int(math.floor(n * frac)) for frac in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if any(int(x) != x or x < 0 for x in lengths) or sum(lengths) != n:
        raise ValueError(f"random_split: the lengths {lengths} must be non-negative ints "
                         f"summing to the dataset's length {n} (or fractions summing to 1)")
    perm = _generator_from(generator, seed).permutation(n)
    out, start = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[start:start + int(length)]))
        start += int(length)
    return out
