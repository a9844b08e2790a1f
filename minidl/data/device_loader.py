"""``DeviceDataLoader``: a whole dataset held as arrays on one device, batches sliced there.

``DataLoader`` builds every batch on the host: it gathers the raw images, transforms them
and wraps them in Tensors, which training then copies to the device, batch after batch,
epoch after epoch. When the dataset fits in the device's memory (MNIST, transformed to
float32 32x32, is 245 MB), that work can be done once::

    loader = DeviceDataLoader(MNIST(train=True, transform=transform), batch_size=100,
                              shuffle=True, device="cuda")
    for x, y in loader:          # x, y: Tensors already on the GPU
        ...

At construction the loader

1. takes the dataset's raw arrays (``data`` / ``targets`` of MNIST-like datasets, the
   tensors of a ``TensorDataset``; a ``Subset`` of one picks its samples),
2. splits the dataset's transform into its deterministic head (``ToTensor``, ``Resize``,
   ``Pad``, ``Normalize``... up to the first transform that is not
   ``transforms.is_deterministic``) and the rest,
3. applies the head once to the whole dataset, ``chunk_size`` images at a time (the
   transforms are batched), on the host,
4. moves the results to ``device``, once.

Every epoch it then draws the order on the host (one permutation, exactly as
``DataLoader`` draws it), moves that index vector to the device, and for every batch
gathers the samples there (``array[indices]``: a copy, so in-place transforms cannot
touch the stored dataset) and applies the rest of the transform (``RandomCrop`` ...) to
the batch, on the device: the random transforms draw their parameters on the host from
the seeded generator (a few numbers per image) and work on the arrays through
``get_array_module``.

Same batches as ``DataLoader``: for the same dataset, batch size, ``shuffle``,
``drop_last`` and random state, the loader yields the same batches, in the same order,
with the same values (on the CPU, bit for bit): the permutation is drawn from the same
generator at the same moment (at the first batch of an epoch), the random transforms draw
the same numbers batch after batch, and the deterministic head gives an image the same
result in a chunk as in a batch. ``tests/test_device_loader.py`` checks it.

What it cannot hold: a dataset without arrays to take (one that only has
``__getitem__``), a ``target_transform``, or a transform whose head cannot take batches;
it raises ``TypeError`` saying so, and ``DataLoader`` remains the way to load those.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from .. import random as _random
from ..autograd import Tensor
from .dataset import Subset, TensorDataset
from .transforms import Compose, is_deterministic, supports_batch

__all__ = ["DeviceDataLoader", "split_transform"]


def _flatten(transform):
    """The transforms of ``transform`` in order, nested ``Compose`` s unpacked."""
    if transform is None:
        return []
    if isinstance(transform, Compose):
        return [t for inner in transform.transforms for t in _flatten(inner)]
    return [transform]


def split_transform(transform):
    """(head, rest): ``transform`` as the longest run of deterministic transforms at its
    start (``head``, applied once to a whole dataset) and the others (``rest``, applied to
    every batch). Each is a ``Compose``, or None when empty; ``rest(head(x))`` is
    ``transform(x)``."""
    parts = _flatten(transform)
    k = 0
    while k < len(parts) and is_deterministic(parts[k]):
        k += 1
    head, rest = parts[:k], parts[k:]
    return (Compose(head) if head else None), (Compose(rest) if rest else None)


def _raw_arrays(dataset):
    """(fields, transform): the dataset's samples as arrays, one per field, before its
    transform, and that transform (applied to field 0, the inputs)."""
    if isinstance(dataset, Subset):
        fields, transform = _raw_arrays(dataset.dataset)
        return [f[backend.to_device(dataset.indices, backend.device_of(f))] for f in fields], \
            transform
    if isinstance(dataset, TensorDataset):
        return [t.data if isinstance(t, Tensor) else t for t in dataset.tensors], None
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is None or targets is None or not hasattr(data, "shape") or \
            not hasattr(targets, "shape"):
        raise TypeError(f"DeviceDataLoader: cannot hold a {type(dataset).__name__} on a device: "
                        "expected a TensorDataset, a dataset with `data` and `targets` arrays "
                        "(MNIST, FashionMNIST), or a Subset of one; use DataLoader for it")
    if getattr(dataset, "target_transform", None) is not None:
        raise TypeError(f"DeviceDataLoader: {type(dataset).__name__} has a target_transform, "
                        "whose results cannot be held as one array; use DataLoader for it")
    if len(data) != len(targets):
        raise ValueError(f"DeviceDataLoader: {type(dataset).__name__} has {len(data)} inputs "
                         f"but {len(targets)} targets")
    return [data, targets], getattr(dataset, "transform", None)


def _apply_in_chunks(transform, arr, chunk_size):
    """``transform.apply_batch`` of all of ``arr``, ``chunk_size`` samples at a time (each
    chunk a copy: an in-place transform leaves ``arr`` alone)."""
    if not len(arr):                          # an empty dataset: no batch to transform
        return arr
    xp = backend.get_array_module(arr)
    out = []
    for start in range(0, len(arr), chunk_size):
        chunk = transform.apply_batch(xp.array(arr[start:start + chunk_size], copy=True))
        out.append(chunk.data if isinstance(chunk, Tensor) else chunk)
    return out[0] if len(out) == 1 else xp.concatenate(out)


class DeviceDataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``, held whole on ``device``.

    The arguments mean what they mean for ``DataLoader`` (shuffle: a new order every
    epoch; drop_last: skip a last, smaller batch; seed / generator: the source of the
    shuffling, by default minidl's seeded generator), and the batches are the same; the
    batches' Tensors live on ``device`` ('cpu', 'cuda', 'cuda:1', or a ``Device``).
    chunk_size: images transformed at once while the dataset is prepared.

    ``arrays``: the held arrays, one per field (inputs after the deterministic head of the
    transform, targets); ``transform``: the rest of it, applied to each batch (or None).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 generator=None, device="cpu", chunk_size=1024):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size <= 0:
            raise ValueError(f"DeviceDataLoader: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
                or chunk_size <= 0:
            raise ValueError(f"DeviceDataLoader: chunk_size must be a positive int, got "
                             f"{chunk_size!r}")
        if generator is not None and seed is not None:
            raise ValueError("DeviceDataLoader: pass either seed or generator, not both")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.device = backend.Device(device)
        if isinstance(generator, numbers.Integral):
            seed, generator = generator, None
        self.seed = seed
        self.generator = np.random.default_rng(int(seed)) if seed is not None else generator

        fields, transform = _raw_arrays(dataset)
        head, self.transform = split_transform(transform)
        for part in (head, self.transform):
            if part is not None and not supports_batch(part):
                bad = next(t for t in part.transforms if not supports_batch(t))
                raise TypeError(f"DeviceDataLoader: {bad!r} cannot transform a batch at once; "
                                "use DataLoader for this dataset")
        if head is not None:
            fields[0] = _apply_in_chunks(head, fields[0], int(chunk_size))
        self.arrays = tuple(backend.to_device(f, self.device) for f in fields)

    def __len__(self):
        n = len(self.arrays[0])
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _order(self):
        """This epoch's order of the samples, on the host (as ``DataLoader`` draws it)."""
        n = len(self.arrays[0])
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        g = self.generator if self.generator is not None else _random.generator()
        return g.permutation(n).astype(np.int64)

    def __iter__(self):
        order = backend.to_device(self._order(), self.device)   # one copy an epoch
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            inputs, *rest = (a[idx] for a in self.arrays)
            if self.transform is not None:
                inputs = self.transform.apply_batch(inputs)
            yield tuple(f if isinstance(f, Tensor) else Tensor(f) for f in (inputs, *rest))

    def __repr__(self):
        return (f"DeviceDataLoader({type(self.dataset).__name__} of {len(self.arrays[0])} on "
                f"{self.device}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")
