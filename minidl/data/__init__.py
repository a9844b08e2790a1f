"""minidl.data: datasets, the DataLoader, image transforms, and the IDX/MNIST readers.

    from minidl.data import DataLoader, MNIST
    from minidl.data.transforms import Compose, ToTensor, Resize

    transform = Compose([ToTensor(), Resize((32, 32))])
    train_loader = DataLoader(MNIST(root="./cache", train=True, download=True,
                                    transform=transform), batch_size=100, shuffle=True)
    for x, y in train_loader:   # x (100, 1, 32, 32) float32 Tensor, y (100,) int64 Tensor
        ...

``DeviceDataLoader`` yields the same batches from a dataset held whole on a device (its
deterministic transforms applied once, the random ones per batch, there):
``DeviceDataLoader(dataset, batch_size=100, shuffle=True, device="cuda")``.

Errors about data files derive from ``DataError`` (``IDXError``, ``DatasetNotFoundError``,
``ChecksumError``, ``UnsafePickleError``, ``DownloadError``): catch it to print a message.
"""
from __future__ import annotations

from . import transforms
from .dataloader import DataLoader, default_collate
from .dataset import ConcatDataset, Dataset, Subset, TensorDataset, random_split
from .device_loader import DeviceDataLoader
from .idx import DataError, IDXError, read_idx, read_idx_images, read_idx_labels, write_idx
from .mnist import (MNIST, ChecksumError, DatasetNotFoundError, DownloadError, FashionMNIST,
                    UnsafePickleError, cache_dir)

__all__ = ["DataLoader", "DeviceDataLoader", "default_collate", "Dataset", "TensorDataset",
           "Subset", "ConcatDataset", "random_split", "MNIST", "FashionMNIST", "cache_dir",
           "transforms", "read_idx", "read_idx_images", "read_idx_labels", "write_idx",
           "DataError", "IDXError", "DatasetNotFoundError", "DownloadError", "ChecksumError",
           "UnsafePickleError"]
