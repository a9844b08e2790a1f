"""DeviceDataLoader: the same batches as DataLoader (order and values, bit for bit on the
CPU) for the same seed, the transform split into a head applied once and a rest applied per
batch, its errors, and (``device``) batches living on the device."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl.data import (MNIST, DataLoader, Dataset, DeviceDataLoader, Subset, TensorDataset,
                         write_idx)
from minidl.data import transforms as T
from minidl.data.device_loader import split_transform


def assert_same_batches(a, b):
    """Two epochs of batches: same number, each field the same values, dtype and shape."""
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        assert isinstance(batch_a, tuple) and len(batch_a) == len(batch_b)
        for fa, fb in zip(batch_a, batch_b):
            assert isinstance(fa, minidl.Tensor)
            assert fa.dtype == fb.dtype and fa.shape == fb.shape
            np.testing.assert_array_equal(minidl.backend.to_numpy(fa.data), fb.numpy())


def pair(loader_kw, dataset, epochs=2, **device_kw):
    """(DeviceDataLoader epochs, DataLoader epochs), each from the same random state."""
    minidl.manual_seed(3)
    dev = DeviceDataLoader(dataset, **loader_kw, **device_kw)
    got = [list(dev) for _ in range(epochs)]
    state_dev = minidl.random.generator().bit_generator.state
    minidl.manual_seed(3)
    ref = DataLoader(dataset, **loader_kw)
    want = [list(ref) for _ in range(epochs)]
    # the loaders drew the same numbers: what is drawn next is the same too
    assert minidl.random.generator().bit_generator.state == state_dev
    return got, want


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
    """A small MNIST in IDX files: 130 random 28x28 digits."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 130), ("t10k", 40)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28),
                                                                      dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return root


LENET = T.Compose([T.ToTensor(), T.Resize((32, 32))])                       # the seed recipe
MODERN = T.Compose([T.ToTensor(), T.Pad(2), T.RandomCrop(32, padding=2),    # the modern one
                    T.Normalize((0.1307,), (0.3081,))])
AUGMENTED = T.Compose([T.ToTensor(), T.Resize((30, 30)), T.RandomHorizontalFlip(),
                       T.RandomAffine(10, translate=(0.1, 0.1)), T.CenterCrop(28)])


# ----------------------------------------------------------------------------- same batches


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size,drop_last", [(4, False), (4, True), (5, False), (23, True),
                                                  (30, False)])
def test_tensor_dataset_same_batches_as_dataloader(shuffle, batch_size, drop_last):
    x = np.random.default_rng(1).random((23, 3, 2)).astype(np.float32)
    y = np.arange(23, dtype=np.int64) % 7
    kw = dict(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
    got, want = pair(kw, TensorDataset(x, minidl.tensor(y)))
    for g, w in zip(got, want):
        assert_same_batches(g, w)
    assert len(DeviceDataLoader(TensorDataset(x, y), **kw)) == len(DataLoader(
        TensorDataset(x, y), **kw)) == len(got[0])
    if shuffle and batch_size < 23:
        assert [b[1].tolist() for b in got[0]] != [b[1].tolist() for b in got[1]]  # reshuffled


def test_one_field_and_explicit_seed_or_generator():
    x = np.arange(17, dtype=np.int64)
    ds = TensorDataset(x)
    dev = DeviceDataLoader(ds, batch_size=5, shuffle=True, seed=9)
    ref = DataLoader(ds, batch_size=5, shuffle=True, seed=9)
    for _ in range(2):                         # the loader's own generator, epoch after epoch
        assert_same_batches(dev, ref)
    assert_same_batches(DeviceDataLoader(ds, batch_size=5, shuffle=True,
                                         generator=np.random.default_rng(4)),
                        DataLoader(ds, batch_size=5, shuffle=True,
                                   generator=np.random.default_rng(4)))
    with pytest.raises(ValueError, match="either seed or generator"):
        DeviceDataLoader(ds, seed=1, generator=np.random.default_rng(1))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            DeviceDataLoader(ds, batch_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        DeviceDataLoader(ds, chunk_size=0)


@pytest.mark.parametrize("transform", [None, LENET, MODERN, AUGMENTED],
                         ids=["raw", "lenet", "modern", "augmented"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_mnist_and_subset_same_batches_as_dataloader(mnist_files, transform, shuffle):
    train = MNIST(mnist_files, train=True, transform=transform, download=False)
    kw = dict(batch_size=32, shuffle=shuffle)
    # chunk_size 7: the head is applied in chunks that the batches do not line up with
    for dataset in (train, Subset(train, np.arange(3, 120, 2))):
        got, want = pair(kw, dataset, chunk_size=7)
        for g, w in zip(got, want):
            assert_same_batches(g, w)


def test_the_head_is_applied_once_the_rest_per_batch(mnist_files):
    train = MNIST(mnist_files, train=True, transform=MODERN, download=False)
    loader = DeviceDataLoader(train, batch_size=50, chunk_size=40)
    images, targets = loader.arrays
    # ToTensor and Pad, applied once to all the images in chunks: as to the whole at once,
    # and as to any batch
    head = T.Compose([T.ToTensor(), T.Pad(2)])
    whole = head.apply_batch(train.data).numpy()
    assert images.dtype == np.float32 and images.shape == (130, 1, 32, 32)
    np.testing.assert_array_equal(images, whole)
    np.testing.assert_array_equal(images[10:27], head.apply_batch(train.data[10:27]).numpy())
    np.testing.assert_array_equal(targets, train.targets)
    assert [type(t) for t in loader.transform.transforms] == [T.RandomCrop, T.Normalize]
    # Resize, applied once in chunks of 7, equals Resize per batch
    lenet = DeviceDataLoader(MNIST(mnist_files, transform=LENET, download=False),
                             batch_size=10, chunk_size=7)
    assert lenet.transform is None
    np.testing.assert_array_equal(lenet.arrays[0][45:78],
                                  LENET.apply_batch(train.data[45:78]).numpy())


def test_split_transform():
    crop, norm = T.RandomCrop(4), T.Normalize(0.5, 0.5)
    fn = T.Lambda(lambda x: x, batched=True)
    head, rest = split_transform(T.Compose([T.ToTensor(), T.Compose([T.Pad(1), T.Resize(5)]),
                                            crop, norm]))
    assert [type(t) for t in head.transforms] == [T.ToTensor, T.Pad, T.Resize]
    assert rest.transforms == [crop, norm]   # after the first random one, all per batch
    assert split_transform(None) == (None, None)
    head, rest = split_transform(norm)
    assert head.transforms == [norm] and rest is None
    head, rest = split_transform(T.Compose([fn, norm]))   # a Lambda may be random
    assert head is None and rest.transforms == [fn, norm]
    for t in (T.ToTensor(), T.Normalize(0, 1), T.Resize(3), T.Pad(1), T.CenterCrop(2),
              T.Compose([T.Pad(1), T.CenterCrop(2)])):
        assert T.is_deterministic(t), t
    for t in (T.RandomCrop(2), T.RandomHorizontalFlip(), T.RandomAffine(3), fn, np.negative,
              T.Compose([T.Pad(1), T.RandomCrop(2)])):
        assert not T.is_deterministic(t), t


def test_in_place_transforms_leave_the_held_data_alone():
    x = np.random.default_rng(2).random((12, 1, 4, 4)).astype(np.float32)
    inplace = T.Normalize(0.5, 0.25, inplace=True)

    class Images(Dataset):
        def __init__(self, transform):
            self.data, self.targets, self.transform = x.copy(), np.arange(12), transform

    for transform in (inplace, T.Compose([T.RandomCrop(4), inplace])):
        ds = Images(transform)
        loader = DeviceDataLoader(ds, batch_size=5, shuffle=True)
        first = [b[0].numpy().copy() for b in loader]
        np.testing.assert_array_equal(ds.data, x)            # the dataset is untouched
        minidl.manual_seed(0)
        again = [b[0].numpy() for b in DeviceDataLoader(ds, batch_size=5)]
        np.testing.assert_allclose(np.concatenate(again), (x - 0.5) / 0.25, rtol=1e-6)
        assert len(first) == 3


def test_what_it_cannot_hold():
    class ItemOnly(Dataset):
        def __getitem__(self, i):
            return np.zeros(2), 0

        def __len__(self):
            return 3

    with pytest.raises(TypeError, match="cannot hold a ItemOnly.*use DataLoader"):
        DeviceDataLoader(ItemOnly())

    class WithTargetTransform(Dataset):
        data, targets = np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int64)
        transform, target_transform = None, str

    with pytest.raises(TypeError, match="target_transform"):
        DeviceDataLoader(WithTargetTransform())
    ds = WithTargetTransform()
    ds.target_transform = None
    ds.transform = T.Compose([T.ToTensor(), T.Lambda(np.negative)])    # not batched
    with pytest.raises(TypeError, match="cannot transform a batch"):
        DeviceDataLoader(ds)
    ds.transform = None
    assert repr(DeviceDataLoader(ds, batch_size=2)) == (
        "DeviceDataLoader(WithTargetTransform of 3 on cpu, batch_size=2, shuffle=False, "
        "drop_last=False)")


def test_empty_dataset():
    loader = DeviceDataLoader(TensorDataset(np.zeros((0, 2)), np.zeros(0)), batch_size=3,
                              shuffle=True)
    assert len(loader) == 0 and list(loader) == []


# ----------------------------------------------------------------------------- devices


def test_batches_live_on_the_device(device, mnist_files):
    """The same batches on every device (the random transforms run there); the data moved
    once, at construction."""
    train = MNIST(mnist_files, train=True, transform=MODERN, download=False)
    minidl.manual_seed(5)
    dev = DeviceDataLoader(train, batch_size=32, shuffle=True, device=device)
    assert all(minidl.backend.device_of(a) == minidl.device(device) for a in dev.arrays)
    got = list(dev)
    minidl.manual_seed(5)
    want = list(DataLoader(train, batch_size=32, shuffle=True))
    assert len(got) == len(want) == 5
    for (xg, yg), (xw, yw) in zip(got, want):
        assert xg.device == minidl.device(device) and yg.device == minidl.device(device)
        assert xg.dtype == np.float32 and yg.dtype == np.int64
        np.testing.assert_allclose(xg.cpu().numpy(), xw.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(yg.cpu().numpy(), yw.numpy())
