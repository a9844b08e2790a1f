"""``save(obj, path)`` / ``load(path, map_location=None)``: checkpoints without pickle.

The file is an ordinary NumPy ``.npz`` (zip) archive:

- one ``.npy`` member per array (``a0``, ``a1``, ...): numeric or bool arrays only, so
  loading a file can never run code;
- a member ``__minidl__`` holding a JSON manifest (UTF-8 bytes as a uint8 array) that
  records the structure: nested dicts (string or int keys), lists, tuples, numbers,
  strings, booleans, None, dtypes, and where each Tensor/array goes (with its dtype and
  shape, which ``load`` checks against the member).

``obj`` is typically a state_dict or a checkpoint dict such as
``{'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': 3}``.
GPU arrays are saved as host arrays (their device is recorded). ``load`` returns Tensors
(for Tensors and arrays alike) and rebuilds the containers.

**Writes are atomic.** The archive goes to a temporary file beside the target, is flushed
and fsync'ed, then renamed over the target with ``os.replace``: a crash or an error
mid-write leaves any previous file intact. The new file keeps the mode of the file it
replaces (a private 0600 checkpoint stays private); a symlink is written through (its
target is updated, the link stays); a temporary file left by a killed process is removed
by the next save of the same target.

**Reading is defensive.** A checkpoint may come from anywhere, so ``load`` treats the file
as hostile until checked: regular files only (a FIFO or ``/dev/zero`` is refused, not
read), the manifest's structure is validated before it is used, only the members the
manifest refers to are read, and each member's sizes (zip directory, ``.npy`` header,
manifest) must agree *before* anything is inflated, so a small file cannot make ``load``
allocate gigabytes. Every problem with the file's content raises ``CheckpointError``
(a ``ValueError``) whose message names the file and the cause:
``load: 'ckpt.pt': member 'a3.npy' ...``. Operating-system errors (no such file,
permission denied) stay ``OSError``s, as with ``open``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import secrets
import stat
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
from numpy.lib import format as npy_format

from . import backend
from .autograd import Tensor

__all__ = ["save", "load", "atomic_write", "CheckpointError"]

FORMAT = "minidl-checkpoint"
VERSION = 1
MANIFEST = "__minidl__"

# dtype kinds a checkpoint may hold: bool, signed/unsigned int, float, complex. Strings,
# bytes, structured records, datetimes and objects are refused on save and on load.
ARRAY_KINDS = "biufc"
MAX_DEPTH = 100                      # containers nested deeper than this are refused
MAX_MANIFEST_BYTES = 8 * 2 ** 20     # a state_dict of ~100,000 tensors fits
# JSON items ('[', '{' and ','): each becomes a Python object of up to ~70 bytes, so this
# bounds the memory json.loads may take however well the manifest compresses.
MAX_MANIFEST_ITEMS = 500_000
MAX_NPY_HEADER = 10_000              # numpy's own limit for loading .npy headers safely
MAX_NDIM = 64                        # numpy's limit on dimensions
DEFLATE_MAX_RATIO = 1032             # deflate cannot expand one byte into more than this
READ_CHUNK = 2 ** 20                 # members are inflated a MiB at a time
TEMP_SUFFIX = ".minidl-tmp"


class CheckpointError(ValueError):
    """A file ``load`` cannot read as a minidl checkpoint (not one, damaged, or hostile);
    the message names the file and the cause."""


def _error(label, cause):
    """The ``CheckpointError`` for the file ``label``: ``load: 'path': cause``."""
    return CheckpointError(f"load: {label}: {cause}")


_KIND_NAMES = {"O": "an object", "U": "a string", "S": "a bytes", "V": "a structured (void)",
               "M": "a datetime", "m": "a timedelta"}


def _kind_name(dtype):
    """``'a string'`` for ``<U3``...: how error messages name a refused dtype."""
    return _KIND_NAMES.get(dtype.kind, f"a {dtype.kind!r}-kind")


# ----------------------------------------------------------------------------- encoding


def _encode(obj, arrays, where, depth=0):
    """The JSON description of ``obj``; arrays are appended to ``arrays``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"save: {where} is nested more than {MAX_DEPTH} containers deep "
                         "(does a list or dict contain itself?); load would refuse the file")
    if isinstance(obj, Tensor) or isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        return _encode_array(obj, arrays, where)
    if obj is None or isinstance(obj, (bool, str)):
        return {"t": "v", "v": obj}
    if isinstance(obj, (int, np.integer)):
        return {"t": "v", "v": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"t": "v", "v": float(obj)}
    if isinstance(obj, np.bool_):
        return {"t": "v", "v": bool(obj)}
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        dtype = np.dtype(obj)
        if dtype.kind not in ARRAY_KINDS:
            raise TypeError(f"save: {where} is the dtype {dtype}; a checkpoint stores numeric "
                            "and bool dtypes only")
        return {"t": "dtype", "v": dtype.name}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(f"save: dict keys must be strings or ints; {where} has the key "
                                f"{k!r} of type {type(k).__name__}")
            k = k if isinstance(k, str) else int(k)
            items.append([k, _encode(v, arrays, f"{where}[{k!r}]", depth + 1)])
        return {"t": "odict" if isinstance(obj, OrderedDict) else "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        return {"t": "tuple" if isinstance(obj, tuple) else "list",
                "items": [_encode(v, arrays, f"{where}[{i}]", depth + 1)
                          for i, v in enumerate(obj)]}
    raise TypeError(f"save: cannot store {where} of type {type(obj).__name__}; minidl "
                    "checkpoints hold Tensors, arrays, numbers, strings, bools, None, dtypes "
                    "and dicts/lists/tuples of them")


def _encode_array(obj, arrays, where):
    """The manifest node of a Tensor or array; its host copy is appended to ``arrays``."""
    arr = obj.data if isinstance(obj, Tensor) else obj
    device = str(backend.device_of(arr))
    host = backend.to_numpy(arr)
    if host.dtype.kind not in ARRAY_KINDS:
        raise TypeError(f"save: {where} is {_kind_name(host.dtype)} array (dtype "
                        f"{host.dtype}), which a checkpoint cannot hold: minidl stores numeric "
                        "and bool arrays only (an object array would need pickle); convert it "
                        "or keep it outside the checkpoint")
    key = f"a{len(arrays)}"
    arrays[key] = host
    # dtype and shape let load check the member's header before reading any data
    node = {"t": "tensor" if isinstance(obj, Tensor) else "array", "k": key,
            "dtype": host.dtype.str, "shape": list(host.shape)}
    if device != "cpu":
        node["device"] = device
    if isinstance(obj, Tensor) and obj.requires_grad:
        node["requires_grad"] = True
    return node


def _manifest_items(text):
    """An upper bound on the number of values in the JSON ``text`` (each value but the
    first follows a ',' or opens a container), counted without parsing it."""
    return text.count(",") + text.count("[") + text.count("{")


def _decode(node, arrays, device_for):
    """The Python object of a validated manifest ``node`` (see ``_check_node``)."""
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
    items = [_decode(v, arrays, device_for) for v in node["items"]]  # list or tuple
    return tuple(items) if t == "tuple" else items


# ----------------------------------------------------------------------------- atomic writes


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


def _temp_prefix(target):
    """Temporary files of ``target`` are named ``.<name>.<pid>.<random>.minidl-tmp``;
    the name is cut to 200 characters so the temporary name stays a legal file name."""
    return "." + os.path.basename(target)[:200] + "."


def _process_is_running(pid):
    """Whether process ``pid`` exists on this machine (assumed so where we cannot tell)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) is not a harmless probe on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    except (OverflowError, ValueError, OSError):
        return False  # not a valid process id
    return True


def _remove_stale_temp_files(target):
    """Remove temporary files of ``target`` left by a killed save (their process is gone).

    Only files named with ``target``'s own pattern are touched, and only those whose writer
    no longer runs: a save in progress in another process keeps its file."""
    directory, prefix = os.path.dirname(target), _temp_prefix(target)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX))
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        if not _process_is_running(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _create_temp_file(target):
    """Create and open a new temporary file beside ``target``: ``(fd, path)``.

    Mode 0o666 goes through the umask, as with ``open()``; when ``target`` exists the file
    gets its mode instead, so replacing a 0600 file keeps it private."""
    directory, prefix = os.path.dirname(target), _temp_prefix(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}"
                                      f"{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file for {target!r}")
    try:
        target_mode = stat.S_IMODE(os.stat(target).st_mode) & 0o777  # no setuid & co
    except FileNotFoundError:
        return fd, tmp
    if hasattr(os, "fchmod"):  # not on Windows
        os.fchmod(fd, target_mode)
    return fd, tmp


def _resolve_target(path, who):
    """The file a write to ``path`` must replace: symlinks followed, directory checked."""
    if path == "":
        raise ValueError(f"{who}: the path is empty; give a file name such as 'model.ckpt'")
    target = os.path.realpath(path)  # write through a symlink: update its target, keep it
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{who}: directory {os.path.dirname(os.path.abspath(path))!r} "
                                "does not exist")
    if os.path.isdir(target):
        raise IsADirectoryError(f"{who}: {path!r} is a directory; give a file name inside it")
    return target


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as fh: fh.write(...)``: write ``path`` all or nothing.

    The data goes to a temporary file beside ``path``, which on success is flushed,
    fsync'ed and renamed over ``path`` with ``os.replace`` (then the directory is fsync'ed);
    on any error the temporary file is removed and a previous ``path`` is left intact.
    A symlink is written through; an existing file's mode is kept; temporary files of
    ``path`` left by a killed process are removed first. The directory must exist
    (``FileNotFoundError`` otherwise) and ``path`` must not be empty (``ValueError``)."""
    target = _resolve_target(os.fspath(path), "atomic_write")
    _remove_stale_temp_files(target)
    fd, tmp = _create_temp_file(target)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(target))


# ----------------------------------------------------------------------------- save


def save(obj, f):
    """Save ``obj`` (a state_dict, or nested dicts/lists of Tensors, arrays, numbers,
    strings) to the path ``f``, atomically (see ``atomic_write``). The path is used as
    given (no suffix added). ``f`` may also be a binary file object (e.g. ``io.BytesIO``),
    written directly."""
    if not hasattr(f, "write"):
        _resolve_target(os.fspath(f), "save")  # a bad path fails first, in save's name
    arrays = {}
    root = _encode(obj, arrays, "obj")
    text = json.dumps({"format": FORMAT, "version": VERSION, "root": root})
    if _manifest_items(text) > MAX_MANIFEST_ITEMS or len(text) > MAX_MANIFEST_BYTES:
        raise ValueError(f"save: obj has too many entries for a checkpoint's manifest (limits: "
                         f"{MAX_MANIFEST_ITEMS:,} values, {MAX_MANIFEST_BYTES:,} bytes), which "
                         "load would refuse; store long lists of numbers as one array, e.g. "
                         "np.array(losses)")
    manifest = text.encode("utf-8")
    if hasattr(f, "write"):
        _write_archive(f, arrays, manifest)
        return
    with atomic_write(f) as fh:
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
    ``f`` may also be a seekable binary file object positioned at the archive.

    Raises ``CheckpointError`` (a ``ValueError``) naming the file and the cause when the
    file is not a minidl checkpoint, is damaged, or is crafted to harm the reader."""
    if hasattr(f, "read"):
        name = getattr(f, "name", None)
        return _load(f, repr(name) if isinstance(name, str) else "<file object>",
                     map_location)
    path = os.fspath(f)
    with _open_regular_file(path) as fh:
        return _load(fh, repr(path), map_location)


def _open_regular_file(path):
    """Open ``path`` for reading if it is a regular file (symlinks followed).

    Opened non-blocking, so a FIFO with no writer cannot hang us, and checked on the open
    descriptor (``fstat``), so the file cannot be swapped between the check and the read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no such file: {path!r}") from None
    except IsADirectoryError:  # Windows says so at open
        raise IsADirectoryError(f"load: {path!r} is a directory, not a minidl checkpoint") \
            from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"load: {path!r} is a directory, not a minidl checkpoint")
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a character device" if stat.S_ISCHR(mode) else
                "a block device" if stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise _error(repr(path), f"is {kind}, not a checkpoint file; load reads regular files "
                                 "only (copy the data to a file first)")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _archive_size(fileobj):
    """The size in bytes of the seekable ``fileobj`` (its position is kept)."""
    here = fileobj.tell()
    size = fileobj.seek(0, os.SEEK_END)
    fileobj.seek(here)
    return size


def _load(source, label, map_location):
    """Read the checkpoint from the seekable binary file ``source``; ``label`` names it in
    error messages. The manifest is read and validated first; then only the members it
    refers to are read."""
    if hasattr(source, "seekable") and not source.seekable():
        raise _error(label, "the file object is not seekable (a zip archive is read from its "
                            "end); read it into io.BytesIO first")
    archive = _open_zip(source, label)
    with archive:
        members = _member_directory(archive, label)
        size = _archive_size(source)
        manifest = _read_manifest(archive, members, size, label)
        refs = {}
        _check_node(manifest["root"], "root", 0, refs, label)
        arrays = {}
        for key, node in refs.items():
            info = members.get(key + ".npy")
            if info is None:
                raise _error(label, f"the manifest refers to the array member '{key}.npy', "
                                    "which the archive does not hold (the file is damaged)")
            arrays[key] = _read_npy_member(archive, info, size, label, expect=node)
    return _decode(manifest["root"], arrays, _device_mapper(map_location))


def _open_zip(source, label):
    """``source`` opened as a zip archive; a ``CheckpointError`` if it is not one."""
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise _error(label, "not a minidl checkpoint (not an .npz/zip archive, or one cut short; "
                            "files written by torch.save or pickle cannot be read)") from None
    except (ValueError, struct.error, EOFError, OverflowError, OSError) as exc:
        raise _error(label, f"a damaged zip archive ({type(exc).__name__}: {exc})") from None


def _member_directory(archive, label):
    """``{member name: ZipInfo}``; two members of one name are refused (which one a reader
    sees would depend on the reader)."""
    members = {}
    for info in archive.infolist():
        if info.filename in members:
            raise _error(label, f"the archive holds two members named {info.filename!r}; "
                                "a checkpoint names each member once (the file was tampered "
                                "with or damaged)")
        members[info.filename] = info
    return members


# ----------------------------------------------------------------------------- members


_UNSAFE_FLAGS = 0x1 | 0x20 | 0x40  # encrypted, compressed patched data, strong encryption


def _check_zip_entry(info, archive_size, label):
    """Refuse a member whose zip directory entry cannot be honest, before inflating it.

    The declared uncompressed size is what we will allocate, so it must be believable:
    equal to the stored size, or at most what deflate can produce from the compressed
    bytes, which themselves must fit in the archive."""
    name = info.filename
    if info.flag_bits & _UNSAFE_FLAGS:
        raise _error(label, f"member {name!r} is encrypted or patched (zip flags "
                            f"{info.flag_bits:#x}); checkpoints hold plain members")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _error(label, f"member {name!r} uses zip compression method "
                            f"{info.compress_type}; a checkpoint's members are stored or "
                            "deflated (re-save the checkpoint with minidl.save)")
    if info.compress_size > archive_size:
        raise _error(label, f"member {name!r} declares {info.compress_size:,} compressed bytes "
                            f"in a {archive_size:,}-byte file (the file is cut short or "
                            "damaged)")
    if info.compress_type == zipfile.ZIP_STORED:
        method, believable = "storing", info.file_size == info.compress_size
    else:  # + 1 KiB: block headers of tiny members
        method = "deflate"
        believable = info.file_size <= DEFLATE_MAX_RATIO * info.compress_size + 1024
    if not believable:
        raise _error(label, f"member {name!r} declares {info.file_size:,} bytes from "
                            f"{info.compress_size:,} compressed bytes, more than {method} can "
                            "produce: the zip directory is damaged or forged")


def _read_exactly(stream, n, what):
    """``n`` bytes from ``stream``; ``EOFError`` naming ``what`` if it ends sooner."""
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"the {what} ends after {len(data)} of {n} bytes")
    return data


def _read_npy_header(stream, name, label):
    """``(shape, fortran_order, dtype, header_bytes)`` of the ``.npy`` data in ``stream``.

    The header's length field is checked before the header is read (a forged length of
    4 GiB would otherwise be read into memory); numpy parses the header itself."""
    version = npy_format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise _error(label, f"member {name!r} is .npy format version {version}; checkpoints "
                            "use versions 1.0 and 2.0")
    length_format = "<H" if version == (1, 0) else "<I"
    length_field = _read_exactly(stream, struct.calcsize(length_format), ".npy header")
    (header_length,) = struct.unpack(length_format, length_field)
    if header_length > MAX_NPY_HEADER:
        raise _error(label, f"member {name!r} has a {header_length:,}-byte .npy header; "
                            f"headers are at most {MAX_NPY_HEADER:,} bytes (damaged or forged)")
    header = _read_exactly(stream, header_length, ".npy header")
    reader = (npy_format.read_array_header_1_0 if version == (1, 0)
              else npy_format.read_array_header_2_0)
    shape, fortran_order, dtype = reader(io.BytesIO(length_field + header))
    used = npy_format.MAGIC_LEN + len(length_field) + header_length
    return shape, fortran_order, dtype, used


def _check_npy_header(name, shape, dtype, label):
    """Refuse a dtype other than numeric/bool and an impossible shape; the data size."""
    if dtype.kind == "O":
        raise _error(label, f"refusing to read member {name!r}: it holds pickled Python "
                            "objects (dtype object), which could run code when loaded")
    if dtype.kind not in ARRAY_KINDS or dtype.shape != ():
        raise _error(label, f"member {name!r} holds {_kind_name(dtype)} array (dtype "
                            f"{dtype}); a checkpoint holds numeric and bool arrays only")
    if len(shape) > MAX_NDIM or any(d < 0 or d > np.iinfo(np.intp).max for d in shape):
        raise _error(label, f"member {name!r} has the impossible shape {_short(shape)} "
                            f"(dimensions must be non-negative, at most {MAX_NDIM} of them)")
    return math.prod(shape) * dtype.itemsize  # Python ints: no overflow


def _check_expected(name, shape, dtype, node, label):
    """The member must be the array the manifest describes (when it does: files written
    before the manifest recorded dtype and shape are accepted)."""
    if "dtype" in node and np.dtype(node["dtype"]) != dtype:
        raise _error(label, f"member {name!r} holds dtype {dtype}, but the manifest says "
                            f"{np.dtype(node['dtype'])} (the file is damaged or tampered with)")
    if "shape" in node and tuple(node["shape"]) != tuple(shape):
        raise _error(label, f"member {name!r} has shape {tuple(shape)}, but the manifest says "
                            f"{tuple(node['shape'])} (the file is damaged or tampered with)")


def _read_data(stream, nbytes, name, label):
    """Exactly ``nbytes`` of array data from ``stream`` into a new uint8 buffer.

    Read a MiB at a time into the preallocated buffer (no second copy); reading on to
    the end makes zipfile compare the CRC-32 of everything inflated with the directory's."""
    buffer = np.empty(nbytes, dtype=np.uint8)
    view, done = memoryview(buffer), 0
    while done < nbytes:
        n = stream.readinto(view[done:done + READ_CHUNK])
        if not n:
            raise _error(label, f"member {name!r} ends after {done:,} of its {nbytes:,} bytes "
                                "of data (the file is cut short or damaged)")
        done += n
    if stream.read(1):
        raise _error(label, f"member {name!r} holds more data than its {nbytes:,} bytes "
                            "(the file is damaged or forged)")
    return buffer


def _read_npy_member(archive, info, archive_size, label, expect=None, max_bytes=None):
    """The array in the ``.npy`` member ``info``, read defensively.

    Every size is checked before data is inflated: the zip directory entry
    (``_check_zip_entry``), the header's dtype and shape, the data size they imply against
    the directory's declared size (and against ``max_bytes``), and against the manifest
    node ``expect``. Only then is the buffer allocated and filled."""
    name = info.filename
    _check_zip_entry(info, archive_size, label)
    if max_bytes is not None and info.file_size > max_bytes + MAX_NPY_HEADER + 64:
        raise _error(label, f"member {name!r} declares {info.file_size:,} bytes; it may hold "
                            f"at most {max_bytes:,} (damaged or forged)")
    try:
        with archive.open(info) as stream:
            shape, fortran_order, dtype, header_bytes = _read_npy_header(stream, name, label)
            nbytes = _check_npy_header(name, shape, dtype, label)
            if header_bytes + nbytes != info.file_size:
                raise _error(label, f"member {name!r}: its .npy header describes shape {shape} "
                                    f"of {dtype} ({nbytes:,} bytes of data), but the zip "
                                    f"directory declares {info.file_size - header_bytes:,} "
                                    "bytes (the file is cut short, damaged or forged)")
            if max_bytes is not None and nbytes > max_bytes:
                raise _error(label, f"member {name!r} holds {nbytes:,} bytes; it may hold at "
                                    f"most {max_bytes:,}")
            if expect is not None:
                _check_expected(name, shape, dtype, expect, label)
            buffer = _read_data(stream, nbytes, name, label)
        array = buffer.view(dtype).reshape(shape, order="F" if fortran_order else "C")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, struct.error, RuntimeError,
            NotImplementedError, OverflowError, SyntaxError, OSError) as exc:
        raise _error(label, f"member {name!r} is damaged ({type(exc).__name__}: {exc})") \
            from None
    if not dtype.isnative:  # e.g. written on a big-endian machine: swap in place
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


# ----------------------------------------------------------------------------- the manifest


def _read_manifest(archive, members, archive_size, label):
    """The parsed manifest: a dict whose format and version are checked (not yet its
    ``root``, see ``_check_node``)."""
    info = members.get(MANIFEST + ".npy")
    if info is None:
        raise _error(label, f"an .npz archive but not a minidl checkpoint (it has no "
                            f"'{MANIFEST}' manifest)")
    raw = _read_npy_member(archive, info, archive_size, label, max_bytes=MAX_MANIFEST_BYTES)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _error(label, f"corrupt manifest (a {raw.dtype} array of shape {raw.shape}, "
                            "not the bytes of a JSON text)")
    try:
        text = raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(label, f"corrupt manifest (not UTF-8: {exc})") from None
    if _manifest_items(text) > MAX_MANIFEST_ITEMS:
        raise _error(label, f"corrupt manifest (more than {MAX_MANIFEST_ITEMS:,} values)")
    try:
        manifest = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise _error(label, f"corrupt manifest ({exc})") from None
    except RecursionError:
        raise _error(label, "corrupt manifest (nested too deeply to parse)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _error(label, "not a minidl checkpoint (unknown manifest format)")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _error(label, f"corrupt manifest (version {version!r} is not a format version)")
    if version > VERSION:
        raise _error(label, f"written by a newer minidl (format version {version}, this one "
                            f"reads {VERSION}); upgrade minidl to load it")
    if set(manifest) != {"format", "version", "root"}:
        raise _error(label, f"corrupt manifest (entries {sorted(manifest)}, expected format, "
                            "version and root)")
    return manifest


# node type -> (required keys, optional keys)
_NODE_KEYS = {
    "tensor": ({"t", "k"}, {"device", "requires_grad", "dtype", "shape"}),
    "array": ({"t", "k"}, {"device", "requires_grad", "dtype", "shape"}),
    "v": ({"t", "v"}, set()),
    "dtype": ({"t", "v"}, set()),
    "dict": ({"t", "items"}, set()), "odict": ({"t", "items"}, set()),
    "list": ({"t", "items"}, set()), "tuple": ({"t", "items"}, set()),
}


def _malformed(label, where, what):
    return _error(label, f"corrupt manifest at {where}: {what} (the file is damaged or was "
                         "not written by minidl.save)")


def _check_node(node, where, depth, refs, label):
    """Validate the manifest ``node`` at ``where`` (e.g. ``root['model'][0]``) and what it
    contains, so ``_decode`` can trust it; array nodes are collected in ``refs``
    (member key -> node). Each member may be referred to once: ``save`` never shares one,
    and sharing would let a small member be expanded many times."""
    if depth > MAX_DEPTH:
        raise _malformed(label, where, f"nested more than {MAX_DEPTH} containers deep")
    if not isinstance(node, dict) or not isinstance(node.get("t"), str) \
            or node["t"] not in _NODE_KEYS:
        raise _malformed(label, where, f"expected an entry such as {{'t': 'dict', ...}}, got "
                                       f"{_short(node)}")
    required, optional = _NODE_KEYS[node["t"]]
    if not required <= node.keys() <= required | optional:
        raise _malformed(label, where, f"a {node['t']!r} entry has the fields {sorted(node)}, "
                                       f"expected {sorted(required)} and optionally "
                                       f"{sorted(optional)}")
    t = node["t"]
    if t in ("tensor", "array"):
        _check_array_node(node, where, refs, label)
    elif t == "v":
        if not (node["v"] is None or isinstance(node["v"], (bool, int, float, str))):
            raise _malformed(label, where, f"a value must be a number, string, bool or null, "
                                           f"got {_short(node['v'])}")
    elif t == "dtype":
        _check_dtype_name(node["v"], where, label, "a dtype entry")
    elif t in ("dict", "odict"):
        _check_dict_node(node, where, depth, refs, label)
    else:  # list, tuple
        if not isinstance(node["items"], list):
            raise _malformed(label, where, f"'items' must be a list, got {_short(node['items'])}")
        for i, item in enumerate(node["items"]):
            _check_node(item, f"{where}[{i}]", depth + 1, refs, label)


def _check_dict_node(node, where, depth, refs, label):
    """A dict node: ``items`` is a list of ``[key, node]`` pairs, keys str or int, unique."""
    items = node["items"]
    if not isinstance(items, list):
        raise _malformed(label, where, f"'items' must be a list, got {_short(items)}")
    seen = set()
    for pair in items:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _malformed(label, where, f"dict items are [key, entry] pairs, got "
                                           f"{_short(pair)}")
        key, value = pair
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise _malformed(label, where, f"dict keys are strings or ints, got {_short(key)}")
        if key in seen:
            raise _malformed(label, where, f"the key {key!r} appears twice")
        seen.add(key)
        _check_node(value, f"{where}[{key!r}]", depth + 1, refs, label)


def _check_array_node(node, where, refs, label):
    """A tensor/array node: its member key, device, requires_grad, dtype and shape."""
    key = node["k"]
    if not isinstance(key, str) or key == MANIFEST:
        raise _malformed(label, where, f"the array key must name an array member, got "
                                       f"{_short(key)}")
    if key in refs:
        raise _malformed(label, where, f"the array member '{key}.npy' is referred to twice")
    refs[key] = node
    if not isinstance(node.get("requires_grad", False), bool):
        raise _malformed(label, where, "requires_grad must be true or false")
    device = node.get("device", "cpu")
    try:
        if not isinstance(device, str):
            raise TypeError("not a string")
        backend.Device(device)
    except (TypeError, ValueError) as exc:
        raise _malformed(label, where, f"the device {_short(device)} is not one ({exc})") \
            from None
    if "dtype" in node:
        _check_dtype_name(node["dtype"], where, label, "an array's dtype")
    if "shape" in node:
        shape = node["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _malformed(label, where, f"the shape {_short(shape)} is not a list of "
                                           "non-negative ints")


def _check_dtype_name(name, where, label, what):
    """``name`` must name a numeric or bool dtype (``'float32'``, ``'<f4'``)."""
    try:
        dtype = np.dtype(name) if isinstance(name, str) else None
    except (TypeError, ValueError, SyntaxError, OverflowError):
        dtype = None
    if dtype is None or dtype.kind not in ARRAY_KINDS or dtype.shape != ():
        raise _malformed(label, where, f"{what} must name a numeric or bool dtype, got "
                                       f"{_short(name)}")


def _short(value, limit=60):
    """``repr(value)`` cut to ``limit`` characters, for error messages about hostile data."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
