"""``DistributedSampler``: each rank's share of a dataset's indices, PyTorch's rules.

The indices (shuffled with ``seed + epoch`` when ``shuffle``) are made divisible by the
number of replicas, either by repeating the first ones (``drop_last=False``: every sample is
seen, a few twice) or by dropping the tail (``drop_last=True``); rank ``r`` then takes every
``num_replicas``-th index starting at ``r``. So the shards are disjoint (before padding),
equal in length, and together cover the dataset. Every rank must use the same ``seed`` and
call ``set_epoch(epoch)`` at the start of each epoch, or the shards would overlap.

The shuffle draws from NumPy's generator, not torch's ``randperm``: the rules are
PyTorch's, the permutation for a given seed is not.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .process_group import get_rank, get_world_size


class DistributedSampler:
    """Iterate over this rank's indices of ``dataset`` (one epoch's worth)."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        if num_replicas is None:
            num_replicas = get_world_size()
        if rank is None:
            rank = get_rank()
        if not isinstance(num_replicas, numbers.Integral) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: expected num_replicas a positive int, got "
                             f"{num_replicas!r}")
        if not isinstance(rank, numbers.Integral) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: expected rank in [0, {num_replicas}), got "
                             f"{rank!r}")
        self.dataset = dataset
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas != 0:
            # drop the tail so that every rank gets the same number of samples
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        """Use ``epoch`` for the next shuffle (call it every epoch, on every rank)."""
        self.epoch = int(epoch)

    def _all_indices(self):
        """Every rank's indices, before sharding: shuffled, then padded or cut."""
        n = len(self.dataset)
        if self.shuffle:  # the same seed on every rank: the same permutation everywhere
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            return order[:self.total_size]
        padding = self.total_size - n
        if padding > 0:  # repeat from the start (several times if the dataset is tiny)
            order = np.concatenate([order, np.resize(order, padding)])
        return order

    def __iter__(self):
        shard = self._all_indices()[self.rank:self.total_size:self.num_replicas]
        assert len(shard) == self.num_samples
        return iter(int(i) for i in shard)

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")
