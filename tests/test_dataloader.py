"""Dataset, TensorDataset, Subset, random_split and DataLoader: batching, drop_last,
shuffling (fresh each epoch, repeatable under a seed), collation, and the batched path."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl.data import (ConcatDataset, DataLoader, Dataset, Subset, TensorDataset,
                         default_collate, random_split)


class ItemOnly(Dataset):
    """A dataset without get_batch: the loader must call __getitem__ per index."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.calls = 0

    def __getitem__(self, i):
        self.calls += 1
        return self.x[i], int(self.y[i])

    def __len__(self):
        return len(self.y)


def data(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, np.arange(n, dtype=np.int64) % 4


def order_of(loader):
    """The sample order of one epoch (x[:, 0] / 3 is the sample index)."""
    return np.concatenate([(xb.numpy()[:, 0] // 3).astype(int) for xb, _ in loader]).tolist()


def test_batching_and_len():
    x, y = data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    assert len(loader) == 3 and loader.uses_batch_access
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    xb, yb = batches[0]
    assert isinstance(xb, minidl.Tensor) and xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y)


def test_drop_last():
    x, y = data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True)
    assert len(loader) == 2 and [b[0].shape[0] for b in loader] == [4, 4]
    assert len(DataLoader(TensorDataset(x, y), batch_size=5, drop_last=True)) == 2
    assert len(DataLoader(TensorDataset(x, y), batch_size=20, drop_last=True)) == 0
    assert len(DataLoader(TensorDataset(x, y), batch_size=20)) == 1


def test_shuffle_is_a_permutation_and_reshuffles_each_epoch():
    x, y = data(50)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    e1, e2 = order_of(loader), order_of(loader)
    assert sorted(e1) == list(range(50)) and sorted(e2) == list(range(50))
    assert e1 != list(range(50)) and e1 != e2
    assert order_of(DataLoader(TensorDataset(x, y), batch_size=8)) == list(range(50))


def test_manual_seed_makes_shuffling_repeatable():
    x, y = data(40)
    ds = TensorDataset(x, y)
    minidl.manual_seed(7)
    a = [order_of(DataLoader(ds, batch_size=6, shuffle=True)) for _ in range(2)]
    minidl.manual_seed(7)
    b = [order_of(DataLoader(ds, batch_size=6, shuffle=True)) for _ in range(2)]
    assert a == b and a[0] != a[1]
    minidl.manual_seed(8)
    assert order_of(DataLoader(ds, batch_size=6, shuffle=True)) != a[0]


def test_explicit_seed_and_generator():
    x, y = data(30)
    ds = TensorDataset(x, y)
    l1 = DataLoader(ds, batch_size=4, shuffle=True, seed=123)
    minidl.manual_seed(1)
    first = [order_of(l1), order_of(l1)]
    minidl.manual_seed(999)  # the loader's own seed does not depend on minidl's
    l2 = DataLoader(ds, batch_size=4, shuffle=True, seed=123)
    assert [order_of(l2), order_of(l2)] == first and first[0] != first[1]
    l3 = DataLoader(ds, batch_size=4, shuffle=True, generator=np.random.default_rng(123))
    assert order_of(l3) == first[0]
    with pytest.raises(ValueError, match="either seed or generator"):
        DataLoader(ds, seed=1, generator=np.random.default_rng(1))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)


def test_batched_and_per_item_paths_agree():
    x, y = data(23)
    fast = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, seed=4)
    slow_ds = ItemOnly(x, y)
    slow = DataLoader(slow_ds, batch_size=5, shuffle=True, seed=4)
    assert fast.uses_batch_access and not slow.uses_batch_access
    for (xf, yf), (xs, ys) in zip(fast, slow):
        np.testing.assert_array_equal(xf.numpy(), xs.numpy())
        np.testing.assert_array_equal(yf.numpy(), ys.numpy())
        assert xf.dtype == xs.dtype and yf.dtype == ys.dtype
    assert slow_ds.calls == 23


def test_collate_fn_and_default_collate():
    x, y = data(6)
    seen = []

    def collate(samples):
        seen.append(len(samples))
        return samples

    loader = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=collate)
    assert not loader.uses_batch_access
    batches = list(loader)
    assert seen == [4, 2] and isinstance(batches[0], list) and len(batches[0][0]) == 2

    samples = [{"img": np.ones((2, 2), np.uint8) * i, "label": i, "w": 0.5, "name": f"s{i}",
                "t": minidl.tensor([float(i)])} for i in range(3)]
    batch = default_collate(samples)
    assert batch["img"].shape == (3, 2, 2) and batch["img"].dtype == np.uint8
    assert batch["label"].dtype == np.int64 and batch["label"].tolist() == [0, 1, 2]
    assert batch["w"].dtype == np.float64 and batch["name"] == ["s0", "s1", "s2"]
    assert batch["t"].shape == (3, 1)
    pairs = default_collate([(np.zeros(2), True), (np.ones(2), False)])
    assert isinstance(pairs, tuple) and pairs[1].dtype == np.bool_
    assert default_collate([[1, 2], [3, 4]])[0].tolist() == [1, 3]


def test_tensor_dataset_with_tensors_and_errors():
    x = minidl.randn(5, 2)
    y = minidl.tensor(np.arange(5))
    ds = TensorDataset(x, y)
    xi, yi = ds[2]
    assert isinstance(xi, minidl.Tensor) and yi.item() == 2
    xb, yb = next(iter(DataLoader(ds, batch_size=5)))
    np.testing.assert_array_equal(xb.numpy(), x.numpy())
    with pytest.raises(ValueError, match="same first dimension"):
        TensorDataset(np.zeros(3), np.zeros(4))


def test_subset_and_random_split():
    x, y = data(20)
    ds = TensorDataset(x, y)
    sub = Subset(ds, [5, 1, 7])
    assert len(sub) == 3 and sub[0][1] == y[5]
    assert callable(sub.get_batch)
    xb, yb = next(iter(DataLoader(sub, batch_size=3)))
    np.testing.assert_array_equal(xb.numpy(), x[[5, 1, 7]])
    assert Subset(ItemOnly(x, y), [0, 1]).get_batch is None
    with pytest.raises(IndexError):
        Subset(ds, [25])

    a, b = random_split(ds, [15, 5], seed=0)
    assert len(a) == 15 and len(b) == 5
    assert sorted(a.indices.tolist() + b.indices.tolist()) == list(range(20))
    a2, _ = random_split(ds, [15, 5], seed=0)
    assert a2.indices.tolist() == a.indices.tolist()
    minidl.manual_seed(5)
    c, _ = random_split(ds, [15, 5])
    minidl.manual_seed(5)
    c2, _ = random_split(ds, [15, 5])
    assert c.indices.tolist() == c2.indices.tolist()
    parts = random_split(ds, [0.5, 0.3, 0.2], generator=np.random.default_rng(1))
    assert [len(p) for p in parts] == [10, 6, 4]
    parts = random_split(TensorDataset(np.zeros(7)), [0.5, 0.5], seed=1)
    assert [len(p) for p in parts] == [4, 3]
    with pytest.raises(ValueError, match="summing to the dataset's length 20"):
        random_split(ds, [10, 5])


def test_concat_dataset():
    x, y = data(4)
    cat = TensorDataset(x, y) + TensorDataset(x[:2], y[:2])
    assert isinstance(cat, ConcatDataset) and len(cat) == 6
    np.testing.assert_array_equal(cat[5][0], x[1])
    np.testing.assert_array_equal(cat[-1][0], x[1])
    assert len(list(DataLoader(cat, batch_size=4))) == 2
