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
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from ..serialization import atomic_write

__all__ = ["DataError", "IDXError", "read_idx", "read_idx_images", "read_idx_labels",
           "write_idx", "IMAGES_MAGIC", "LABELS_MAGIC"]

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


class DataError(Exception):
    """Base class of minidl.data's errors: a missing, corrupt or unsafe data file."""


class IDXError(DataError, ValueError):
    """An IDX file that cannot be read: the message names the file and says why."""


def _describe_magic(magic):
    kind = _KIND.get(magic)
    return f"{magic} (0x{magic:08X}{', ' + kind if kind else ''})"


def _read_bytes(path):
    """The file's bytes, decompressed if it is gzip'd."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise IDXError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw, False
    try:
        return gzip.decompress(raw), True
    except EOFError:
        raise IDXError(f"{path}: truncated gzip file (the compressed stream ends early; "
                       "download or copy it again)") from None
    except (OSError, zlib.error) as exc:
        raise IDXError(f"{path}: corrupt gzip file ({exc})") from None


def read_idx(path, magic=None):
    """Read the IDX file at ``path`` (raw or gzip'd) into a native-endian NumPy array.

    magic: the expected magic number (e.g. ``IMAGES_MAGIC``); ``None`` accepts any valid
    IDX header. Raises ``IDXError`` (naming ``path``) for a bad magic number, an unknown
    value type, a truncated file or trailing bytes.
    """
    path = os.fspath(path)
    buf, gzipped = _read_bytes(path)
    what = "decompressed file" if gzipped else "file"
    if len(buf) < 4:
        raise IDXError(f"{path}: truncated: the {what} has {len(buf)} bytes, fewer than the "
                       "4-byte IDX magic number")
    found = int.from_bytes(buf[:4], "big")
    if magic is not None and found != magic:
        raise IDXError(f"{path}: bad magic number {_describe_magic(found)}; expected "
                       f"{_describe_magic(magic)}")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _TYPES or buf[3] == 0:
        raise IDXError(f"{path}: bad magic number {_describe_magic(found)}: not an IDX file "
                       "(expected 0x0000 then a type byte 0x08-0x0E and a dimension count)")
    dtype, ndim = _TYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, the "
                       f"{what} has {len(buf)}")
    shape = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - header
    dims = " x ".join(map(str, shape))
    if have < expected:
        raise IDXError(f"{path}: truncated: the header announces {dims} values "
                       f"({expected} bytes after the header), the {what} has only {have}")
    if have > expected:
        raise IDXError(f"{path}: {have - expected} unexpected bytes after the {dims} values "
                       "the header announces (wrong or damaged file)")
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    # a writable, native-endian copy that owns its memory
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path, image_shape=None):
    """An (N, H, W) uint8 array from an IDX image file (magic 2051); ``image_shape`` (H, W),
    when given, is checked."""
    arr = read_idx(path, IMAGES_MAGIC)
    if image_shape is not None and arr.shape[1:] != tuple(image_shape):
        h, w = image_shape
        raise IDXError(f"{path}: wrong image dimensions {arr.shape[1]} x {arr.shape[2]}; "
                       f"expected {h} x {w}")
    return arr


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
