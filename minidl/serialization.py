"""``save(obj, path)`` / ``load(path, map_location=None)``: checkpoints without pickle.

The file is an ordinary NumPy ``.npz`` (zip) archive:

- one ``.npy`` member per array (``a0``, ``a1``, ...), read back with ``allow_pickle=False``,
  so loading a file can never run code;
- a member ``__minidl__`` holding a JSON manifest (UTF-8 bytes as a uint8 array) that
  records the structure: nested dicts (string or int keys), lists, tuples, numbers,
  strings, booleans, None, dtypes, and where each Tensor/array goes.

``obj`` is typically a state_dict or a checkpoint dict such as
``{'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': 3}``.
GPU arrays are saved as host arrays (their device is recorded). ``load`` returns Tensors
(for Tensors and arrays alike) and rebuilds the containers.

Writes are atomic: the archive goes to a temporary file in the target's directory, is
flushed and fsync'ed, then renamed over the target with ``os.replace``; a crash or an
error mid-write leaves any previous file intact (and the temporary file is removed).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

from . import backend
from .autograd import Tensor

__all__ = ["save", "load", "atomic_write", "CheckpointError"]

FORMAT = "minidl-checkpoint"
VERSION = 1
MANIFEST = "__minidl__"


class CheckpointError(ValueError):
    """A file ``load`` cannot read as a minidl checkpoint (not one, damaged, or hostile);
    the message names the file and the cause."""


# ----------------------------------------------------------------------------- encoding


def _encode(obj, arrays, where):
    """The JSON description of ``obj``; arrays are appended to ``arrays``."""
    if isinstance(obj, Tensor) or isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        arr = obj.data if isinstance(obj, Tensor) else obj
        device = str(backend.device_of(arr))
        host = backend.to_numpy(arr)
        if host.dtype.kind == "O":
            raise TypeError(f"save: {where} is an object array, which cannot be stored "
                            "without pickle")
        key = f"a{len(arrays)}"
        arrays[key] = host
        node = {"t": "tensor" if isinstance(obj, Tensor) else "array", "k": key}
        if device != "cpu":
            node["device"] = device
        if isinstance(obj, Tensor) and obj.requires_grad:
            node["requires_grad"] = True
        return node
    if obj is None or isinstance(obj, (bool, str)):
        return {"t": "v", "v": obj}
    if isinstance(obj, (int, np.integer)):
        return {"t": "v", "v": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"t": "v", "v": float(obj)}
    if isinstance(obj, np.bool_):
        return {"t": "v", "v": bool(obj)}
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return {"t": "dtype", "v": np.dtype(obj).name}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(f"save: dict keys must be strings or ints; {where} has the key "
                                f"{k!r} of type {type(k).__name__}")
            k = k if isinstance(k, str) else int(k)
            items.append([k, _encode(v, arrays, f"{where}[{k!r}]")])
        return {"t": "odict" if isinstance(obj, OrderedDict) else "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        return {"t": "tuple" if isinstance(obj, tuple) else "list",
                "items": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    raise TypeError(f"save: cannot store {where} of type {type(obj).__name__}; minidl "
                    "checkpoints hold Tensors, arrays, numbers, strings, bools, None, dtypes "
                    "and dicts/lists/tuples of them")


def _decode(node, arrays, device_for):
    t = node["t"]
    if t in ("tensor", "array"):
        arr = arrays[node["k"]]
        device = device_for(node.get("device", "cpu"))
        if device.type != "cpu":
            arr = backend.to_device(arr, device)
        return Tensor(arr, requires_grad=node.get("requires_grad", False))
    if t == "v":
        return node["v"]
    if t == "dtype":
        return np.dtype(node["v"])
    if t in ("dict", "odict"):
        cls = OrderedDict if t == "odict" else dict
        return cls((k, _decode(v, arrays, device_for)) for k, v in node["items"])
    if t in ("list", "tuple"):
        items = [_decode(v, arrays, device_for) for v in node["items"]]
        return tuple(items) if t == "tuple" else items
    raise ValueError(f"load: unknown entry type {t!r} in the manifest (a newer minidl file?)")


# ----------------------------------------------------------------------------- save


def _write_archive(fileobj, arrays, manifest_bytes):
    """Write the .npz archive (uncompressed, like ``np.savez``) to an open binary file."""
    payload = dict(arrays)
    payload[MANIFEST] = np.frombuffer(manifest_bytes, dtype=np.uint8)
    np.savez(fileobj, **payload)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (e.g. Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _chmod_like_open(fd):
    """Give a mkstemp file (mode 0600) the permissions ``open()`` would: 0666 less umask."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
    except (AttributeError, OSError):  # no fchmod on Windows
        pass


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as fh: fh.write(...)``: write ``path`` all or nothing.

    The data goes to a temporary file in ``path``'s directory, which on success is flushed,
    fsync'ed and renamed over ``path`` with ``os.replace`` (then the directory is fsync'ed);
    on any error the temporary file is removed and a previous ``path`` is left intact.
    The directory must exist (``FileNotFoundError`` otherwise)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        _chmod_like_open(fd)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def save(obj, f):
    """Save ``obj`` (a state_dict, or nested dicts/lists of Tensors, arrays, numbers,
    strings) to the path ``f``, atomically. The path is used as given (no suffix added).
    ``f`` may also be a binary file object (e.g. ``io.BytesIO``), written directly."""
    arrays = {}
    root = _encode(obj, arrays, "obj")
    manifest = json.dumps({"format": FORMAT, "version": VERSION, "root": root}).encode("utf-8")
    if hasattr(f, "write"):
        _write_archive(f, arrays, manifest)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: directory {directory!r} does not exist")
    with atomic_write(path) as fh:
        _write_archive(fh, arrays, manifest)


# ----------------------------------------------------------------------------- load


def _device_mapper(map_location):
    """A function from a saved device string to the Device to load onto."""
    if map_location is None:
        def device_for(saved):
            dev = backend.Device(saved)
            if dev.type == "cuda" and not backend.cuda_is_available():
                raise RuntimeError(
                    f"load: this checkpoint holds tensors saved on {saved}, but no CUDA GPU "
                    "is available here; pass map_location='cpu' to load them on the CPU")
            return dev
        return device_for
    if isinstance(map_location, dict):
        mapping = {str(backend.Device(k)): backend.Device(v) for k, v in map_location.items()}
        return lambda saved: mapping.get(str(backend.Device(saved)), backend.Device(saved))
    if callable(map_location) and not isinstance(map_location, (str, backend.Device)):
        return lambda saved: backend.Device(map_location(saved))
    target = backend.Device(map_location)
    return lambda saved: target


def load(f, map_location=None, weights_only=True):
    """Load what ``save`` wrote. Tensors and arrays come back as Tensors, on their saved
    device unless ``map_location`` says otherwise (``'cpu'``, ``'cuda:0'``, a dict
    ``{'cuda:0': 'cpu'}`` or a function of the saved device string). ``weights_only`` is
    accepted for PyTorch compatibility: minidl files never contain pickled objects.
    ``f`` may also be a binary file object positioned at the archive."""
    if hasattr(f, "read"):
        return _load(f, "<file object>", map_location)
    path = os.fspath(f)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load: {path!r} is a directory, not a minidl checkpoint")
    return _load(path, repr(path), map_location)


def _load(source, label, map_location):
    """Read the archive at ``source`` (a path or a binary file object); ``label`` names it
    in error messages."""
    start = source.tell() if hasattr(source, "tell") else None
    if not zipfile.is_zipfile(source):
        raise ValueError(f"load: {label} is not a minidl checkpoint (not an .npz/zip archive; "
                         "files written by torch.save or pickle cannot be read)")
    if start is not None:
        source.seek(start)
    arrays = {}
    try:
        with np.load(source, allow_pickle=False) as npz:
            if MANIFEST not in npz.files:
                raise ValueError(f"load: {label} is an .npz archive but not a minidl "
                                 f"checkpoint (it has no '{MANIFEST}' manifest)")
            for member in npz.files:
                try:
                    arrays[member] = npz[member]
                except ValueError as exc:
                    raise ValueError(f"load: refusing to read member {member!r} of {label}: "
                                     f"it holds pickled Python objects ({exc})") from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"load: {label} is a damaged archive ({exc})") from None
    try:
        manifest = json.loads(arrays.pop(MANIFEST).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"load: {label} has a corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"load: {label} is not a minidl checkpoint (unknown manifest format)")
    if manifest.get("version", 0) > VERSION:
        raise ValueError(f"load: {label} was written by a newer minidl (format version "
                         f"{manifest['version']}, this one reads {VERSION})")
    return _decode(manifest["root"], arrays, _device_mapper(map_location))
