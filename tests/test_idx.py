"""minidl.data.idx: IDX files raw and gzip'd, round trips, and every way a file can be wrong."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from minidl.data import idx
from minidl.data.idx import (IMAGES_MAGIC, LABELS_MAGIC, IDXError, read_idx, read_idx_images,
                             read_idx_labels, write_idx)


def images(n=5, h=28, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_roundtrip_every_type(tmp_path, dtype, gz):
    a = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    assert back.flags.writeable and back.flags.owndata
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == gz
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_mnist_magic_numbers_and_layout(tmp_path):
    imgs, labels = images(3), np.array([7, 0, 9], dtype=np.uint8)
    write_idx(tmp_path / "i", imgs)
    write_idx(tmp_path / "l", labels)
    raw_i = (tmp_path / "i").read_bytes()
    raw_l = (tmp_path / "l").read_bytes()
    assert int.from_bytes(raw_i[:4], "big") == IMAGES_MAGIC == 2051
    assert int.from_bytes(raw_l[:4], "big") == LABELS_MAGIC == 2049
    assert [int.from_bytes(raw_i[4 + 4 * k:8 + 4 * k], "big") for k in range(3)] == [3, 28, 28]
    assert raw_i[16:] == imgs.tobytes() and raw_l[8:] == labels.tobytes()
    got = read_idx_labels(tmp_path / "l")
    assert got.dtype == np.int64 and got.tolist() == [7, 0, 9]
    np.testing.assert_array_equal(read_idx_images(tmp_path / "i", (28, 28)), imgs)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    imgs = images(2)
    write_idx(tmp_path / "plain-name", imgs, compress=True)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "plain-name"), imgs)
    write_idx(tmp_path / "x.gz", imgs, compress=False)
    np.testing.assert_array_equal(read_idx_images(tmp_path / "x.gz"), imgs)


def test_big_endian_values(tmp_path):
    a = np.array([1, 256, -2], dtype=np.int32)
    write_idx(tmp_path / "a", a)
    assert (tmp_path / "a").read_bytes()[8:] == a.astype(">i4").tobytes()
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)


# ----------------------------------------------------------------------------- broken files


def test_bad_magic_labels_read_as_images(tmp_path):
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(IDXError) as err:
        read_idx_images(tmp_path / "train-labels-idx1-ubyte")
    msg = str(err.value)
    assert "train-labels-idx1-ubyte" in msg and "bad magic number 2049" in msg
    assert "label file" in msg and "expected 2051" in msg


def test_bad_magic_not_idx_at_all(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte: bad magic number"):
        read_idx_images(p)
    with pytest.raises(IDXError, match="not an IDX file"):
        read_idx(p)


def test_truncated_data(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    write_idx(p, images(4))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(IDXError) as err:
        read_idx_images(p)
    msg = str(err.value)
    assert str(p) in msg and "truncated" in msg and "4 x 28 x 28" in msg
    assert "3136 bytes after the header" in msg and "only 3036" in msg


def test_truncated_header(tmp_path):
    p = tmp_path / "img"
    write_idx(p, images(4))
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(IDXError, match=r"img: truncated header: 3 dimensions need 16 bytes"):
        read_idx_images(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(IDXError, match="truncated"):
        read_idx(p)


def test_trailing_bytes(tmp_path):
    p = tmp_path / "lab"
    write_idx(p, np.arange(5, dtype=np.uint8))
    p.write_bytes(p.read_bytes() + b"junk")
    with pytest.raises(IDXError, match=r"lab: 4 unexpected bytes after the 5 values"):
        read_idx_labels(p)


def test_truncated_and_corrupt_gzip(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(p, images(20))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: truncated gzip file"):
        read_idx_images(p)
    p.write_bytes(data[:10] + bytes(len(data) - 10))
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: corrupt gzip file"):
        read_idx_images(p)


def test_truncated_inside_gzip(tmp_path):
    p = tmp_path / "x.gz"
    write_idx(tmp_path / "raw", images(3))
    body = (tmp_path / "raw").read_bytes()[:-5]
    p.write_bytes(gzip.compress(body))
    with pytest.raises(IDXError, match=r"x.gz: truncated: .*the decompressed file has only"):
        read_idx_images(p)


def test_wrong_image_dimensions(tmp_path):
    p = tmp_path / "small"
    write_idx(p, images(2, 20, 21))
    with pytest.raises(IDXError, match=r"small: wrong image dimensions 20 x 21; expected 28 x 28"):
        read_idx_images(p, (28, 28))
    assert read_idx_images(p).shape == (2, 20, 21)


def test_wrong_number_of_dimensions_is_a_bad_magic(tmp_path):
    p = tmp_path / "twod"
    write_idx(p, np.zeros((3, 4), np.uint8))  # magic 0x00000802
    with pytest.raises(IDXError, match="bad magic number 2050"):
        read_idx_images(p)


def test_missing_file(tmp_path):
    with pytest.raises(IDXError, match="nope: cannot read the file"):
        read_idx(tmp_path / "nope")


def test_write_rejects_unknown_dtype(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    assert os.listdir(tmp_path) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "labels"
    write_idx(p, np.arange(3, dtype=np.uint8))
    before = p.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_idx(p, np.arange(10, dtype=np.uint8))
    monkeypatch.undo()
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["labels"]


def test_idx_error_is_a_data_error_and_value_error():
    assert issubclass(IDXError, idx.DataError) and issubclass(IDXError, ValueError)
