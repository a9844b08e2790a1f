"""IDX files: the format of the MNIST (and Fashion-MNIST) distribution files.

An IDX file is a header followed by the array's values, big-endian, in C order::

    byte 0, 1   0x00 0x00
    byte 2      the value type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte 3      the number of dimensions, ndim
    then        ndim sizes, each a big-endian uint32
    then        prod(sizes) values

Read as one big-endian uint32, the first four bytes are the "magic number": 2051
(0x00000803) for MNIST's image files (uint8, 3 dimensions: N, 28, 28) and 2049 (0x00000801)
for its label files (uint8, 1 dimension: N).

``read_idx`` reads raw or gzip'd files (recognised by their content, not their name) and
checks the header, the magic number when one is expected, and that the file holds exactly
the bytes the header announces; every error is an ``IDXError`` naming the file and saying
what is wrong. ``write_idx`` writes one atomically (raw, or gzip'd for a ``.gz`` name).

A hostile file cannot make ``read_idx`` hang or exhaust memory: it opens regular files only
(a FIFO would block forever), reads the header first and then at most the bytes the header
announces plus one (so a 1 MB gzip file that inflates to 1 GiB after a small header costs a
few kilobytes, not gigabytes), and checks the announced size against the file's size before
reading any value (sizes are multiplied as Python integers, which cannot overflow).
"""
from __future__ import annotations

import gzip
import math
import os
import stat
import zlib

import numpy as np

from ..serialization import atomic_write

__all__ = ["DataError", "IDXError", "read_idx", "read_idx_images", "read_idx_labels",
           "write_idx", "open_regular_file", "IMAGES_MAGIC", "LABELS_MAGIC"]

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension

# IDX type byte -> NumPy dtype (big-endian as stored)
_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in _TYPES.items()}
_KIND = {IMAGES_MAGIC: "an IDX image file", LABELS_MAGIC: "an IDX label file"}
_GZIP_MAGIC = b"\x1f\x8b"

# Deflate cannot expand data by more than 1032:1 (one 258-byte match per ~2 bits), so a
# gzip file of C bytes inflates to at most _DEFLATE_MAX_RATIO * C bytes: a header that
# announces more is wrong, and we can say so before reading a single value.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20            # values are read 1 MiB at a time (no second full-size copy)
_TRAILING_PROBE = 1 << 16   # how many trailing bytes we count before saying "at least"

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


class DataError(Exception):
    """Base class of minidl.data's errors: a missing, corrupt or unsafe data file."""


class IDXError(DataError, ValueError):
    """An IDX file that cannot be read: the message names the file and says why."""


def _describe_magic(magic):
    kind = _KIND.get(magic)
    return f"{magic} (0x{magic:08X}{', ' + kind if kind else ''})"


# ----------------------------------------------------------------------------- opening


def open_regular_file(path, error=IDXError):
    """``path`` opened for binary reading, provided it is a regular file; else ``error``
    naming it.

    Why not ``open(path)``: opening a FIFO for reading blocks until some other process
    writes to it, i.e. forever. So the file is opened non-blocking (which never waits),
    checked with ``fstat`` (the file actually opened, not whatever the name points to a
    moment later), and only then switched back to ordinary blocking reads."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise error(f"{path}: expected a regular file, got {kind}; minidl reads data "
                        "from regular files only (copy the data into a file and pass its "
                        "path)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Source:
    """The file's content, decompressed on the fly when it is gzip'd, read in pieces.

    ``read(n)`` returns up to ``n`` bytes (fewer only at the end), turning gzip's own
    errors into ``IDXError`` naming the file. ``bound`` is the most bytes the content can
    hold: exact for a raw file, the deflate limit for a gzip'd one."""

    def __init__(self, fh, path):
        self.path = path
        size = os.fstat(fh.fileno()).st_size
        self.gzipped = fh.read(2) == _GZIP_MAGIC
        fh.seek(0)
        self.stream = gzip.GzipFile(fileobj=fh, mode="rb") if self.gzipped else fh
        self.what = "decompressed file" if self.gzipped else "file"
        self.bound = _DEFLATE_MAX_RATIO * size if self.gzipped else size
        self.exact = not self.gzipped

    def read(self, n):
        parts, left = [], n
        while left > 0:
            part = self._read_some(left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def readinto(self, view):
        """Fill the memoryview ``view`` as far as the content goes; the count filled."""
        done = 0
        while done < len(view):
            n = self._guard(self.stream.readinto, view[done:done + _CHUNK])
            if not n:
                break
            done += n
        return done

    def _read_some(self, n):
        return self._guard(self.stream.read, min(n, _CHUNK))

    def _guard(self, fn, arg):
        try:
            return fn(arg)
        except EOFError:
            raise IDXError(f"{self.path}: truncated gzip file (the compressed stream ends "
                           "early; download or copy it again)") from None
        except (OSError, zlib.error) as exc:
            if not self.gzipped:  # a raw file: the disk, not the format, failed
                raise IDXError(f"{self.path}: cannot read the file ({exc})") from None
            raise IDXError(f"{self.path}: corrupt gzip file ({exc})") from None


# ----------------------------------------------------------------------------- reading


def _read_header(src, magic):
    """(dtype, shape, header_bytes) from the start of ``src``, checked."""
    path, what = src.path, src.what
    head = src.read(4)
    if len(head) < 4:
        raise IDXError(f"{path}: truncated: the {what} has {len(head)} bytes, fewer than the "
                       "4-byte IDX magic number")
    found = int.from_bytes(head, "big")
    if magic is not None and found != magic:
        raise IDXError(f"{path}: bad magic number {_describe_magic(found)}; expected "
                       f"{_describe_magic(magic)}")
    if head[0] != 0 or head[1] != 0 or head[2] not in _TYPES or head[3] == 0:
        raise IDXError(f"{path}: bad magic number {_describe_magic(found)}: not an IDX file "
                       "(expected 0x0000 then a type byte 0x08-0x0E and a dimension count)")
    dtype, ndim = _TYPES[head[2]], head[3]
    header = 4 + 4 * ndim
    sizes = src.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IDXError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the "
                       f"{what} has {4 + len(sizes)}")
    shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
    return dtype, shape, header


def _read_values(src, dtype, shape, header):
    """The values the header announces, as an array of ``dtype`` and ``shape``; checks
    there is nothing after them (reading one probe's worth, never the whole rest)."""
    path, what = src.path, src.what
    dims = " x ".join(map(str, shape))
    count = math.prod(shape)          # a Python int: 65536**4 stays 2**64, it does not wrap
    expected = count * dtype.itemsize
    if header + expected > src.bound:
        # decided from the file's size alone, before allocating anything
        have = max(src.bound - header, 0)
        held = (f"the {what} has only {have}" if src.exact else
                f"a {src.bound // _DEFLATE_MAX_RATIO}-byte gzip file inflates to at most "
                f"{src.bound} bytes (deflate expands at most {_DEFLATE_MAX_RATIO}:1)")
        raise IDXError(f"{path}: truncated: the header announces {dims} values ({expected} "
                       f"bytes after the header), {held}")
    native = dtype.newbyteorder("=")
    arr = np.empty(shape, dtype=native)   # the result itself: filled in place, no copy
    have = src.readinto(memoryview(arr.reshape(-1)).cast("B"))
    if have < expected:
        raise IDXError(f"{path}: truncated: the header announces {dims} values "
                       f"({expected} bytes after the header), the {what} has only {have}")
    extra = len(src.read(_TRAILING_PROBE))
    if extra:
        many = f"at least {extra}" if extra == _TRAILING_PROBE else str(extra)
        if src.exact:  # a raw file's size says exactly how many
            many = str(src.bound - header - expected)
        raise IDXError(f"{path}: {many} unexpected bytes after the {dims} values the header "
                       "announces (wrong or damaged file)")
    if not dtype.isnative:
        arr.byteswap(inplace=True)          # IDX stores big-endian; this machine is not
    return arr


def _read_idx(path, magic=None, check_shape=None):
    """read_idx, with ``check_shape(shape)`` run on the header's shape before any value is
    read (so a file announcing the wrong dimensions is refused before it costs memory)."""
    path = os.fspath(path)
    with open_regular_file(path) as fh:
        src = _Source(fh, path)
        dtype, shape, header = _read_header(src, magic)
        if check_shape is not None:
            check_shape(shape)
        return _read_values(src, dtype, shape, header)


def read_idx(path, magic=None):
    """Read the IDX file at ``path`` (raw or gzip'd) into a native-endian NumPy array.

    magic: the expected magic number (e.g. ``IMAGES_MAGIC``); ``None`` accepts any valid
    IDX header. Raises ``IDXError`` (naming ``path``) for a path that is not a regular
    file, a bad magic number, an unknown value type, a truncated file or trailing bytes.
    """
    return _read_idx(path, magic)


def read_idx_images(path, image_shape=None):
    """An (N, H, W) uint8 array from an IDX image file (magic 2051); ``image_shape`` (H, W),
    when given, is checked."""
    def check(shape):
        if image_shape is not None and shape[1:] != tuple(image_shape):
            h, w = image_shape
            raise IDXError(f"{os.fspath(path)}: wrong image dimensions {shape[1]} x "
                           f"{shape[2]}; expected {h} x {w}")

    return _read_idx(path, IMAGES_MAGIC, check)


def read_idx_labels(path):
    """An (N,) int64 array from an IDX label file (magic 2049)."""
    return read_idx(path, LABELS_MAGIC).astype(np.int64)


def write_idx(path, array, compress=None):
    """Write ``array`` to ``path`` as an IDX file, atomically (a temporary file, fsync,
    ``os.replace``). compress: gzip it; by default, when the name ends in ``.gz``.
    The dtype must be one IDX knows (uint8, int8, int16, int32, float32, float64)."""
    path = os.fspath(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if native not in _CODES:
        raise TypeError(f"write_idx: IDX cannot store dtype {arr.dtype}; use one of "
                        "uint8, int8, int16, int32, float32, float64")
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"write_idx: IDX stores arrays of 1 to 255 dimensions, got {arr.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in arr.shape)
    payload = np.ascontiguousarray(arr, dtype=_TYPES[code]).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    with atomic_write(path) as fh:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            fh.write(header)
            fh.write(payload)
