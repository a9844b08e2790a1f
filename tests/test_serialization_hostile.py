"""minidl.serialization against hostile and unlucky files (issue 14).

``load`` must treat a checkpoint as untrusted: decompression bombs stay under 100 MB of
memory (measured in a subprocess), FIFOs and devices are refused without hanging, a crafted
manifest or member gives ``CheckpointError`` naming the file and the real cause, and only
numeric/bool arrays load. ``save`` keeps the target's mode, writes through symlinks,
cleans temporary files left by a killed save and refuses empty paths.

The bombs are built here with a small zip writer (``write_zip``) that can state any size,
checksum, flag or compression method, from one 512 MiB run of zeros deflated once (~510 KB).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from numpy.lib import format as npy_format

import minidl
from minidl import nn, serialization
from minidl.serialization import CheckpointError, atomic_write, load, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 2 ** 20
BOMB_BYTES = 512 * MiB
MEMORY_BOUND_KB = 100 * 1024  # peak memory over the interpreter's baseline
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="/proc/self/status, /dev/zero and FIFOs: Linux")


# ----------------------------------------------------------------------------- building files


@dataclasses.dataclass
class Entry:
    """One zip member as ``write_zip`` writes it: the stored bytes and what the zip
    directory claims about them (any of which a forger may choose)."""
    name: str
    data: bytes
    method: int = zipfile.ZIP_STORED
    file_size: int | None = None      # default: len(data) (honest for stored members)
    crc: int | None = None            # default: CRC-32 of data
    flags: int = 0
    compress_size: int | None = None  # default: len(data)


def write_zip(path, entries):
    """A zip archive of ``entries``, sizes as stated; a file size >= 4 GiB goes in a zip64
    extra field of the central directory (which is all zipfile reads sizes from)."""
    records = []
    with open(path, "wb") as fh:
        for e in entries:
            offset, name = fh.tell(), e.name.encode()
            csize = len(e.data) if e.compress_size is None else e.compress_size
            fsize = len(e.data) if e.file_size is None else e.file_size
            crc = zlib.crc32(e.data) if e.crc is None else e.crc
            fh.write(struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, e.flags, e.method, 0,
                                 0x21, crc, csize, min(fsize, 0xFFFFFFFF), len(name), 0))
            fh.write(name + e.data)
            records.append((name, e, crc, csize, fsize, offset))
        start = fh.tell()
        for name, e, crc, csize, fsize, offset in records:
            extra = struct.pack("<HHQ", 1, 8, fsize) if fsize >= 0xFFFFFFFF else b""
            fh.write(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, e.flags,
                                 e.method, 0, 0x21, crc, csize, min(fsize, 0xFFFFFFFF),
                                 len(name), len(extra), 0, 0, 0, 0, offset) + name + extra)
        size = fh.tell() - start
        fh.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records),
                             size, start, 0))


def npy_bytes(array):
    """The .npy file of ``array`` (object arrays pickled, as an attacker would)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_header(descr, shape, fortran_order=False):
    """A version 1.0 .npy header for any (even impossible) shape."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buf.getvalue()


def manifest_npy(root=None, text=None):
    """The ``__minidl__.npy`` member: the JSON manifest around ``root`` (or raw ``text``)."""
    if text is None:
        text = json.dumps({"format": "minidl-checkpoint", "version": 1, "root": root})
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    return npy_bytes(np.frombuffer(raw, dtype=np.uint8))


def tensor_node(key, **extra):
    return {"t": "tensor", "k": key, **extra}


def one_tensor_root(key="a0"):
    return {"t": "dict", "items": [["w", tensor_node(key)]]}


def write_checkpoint(path, root=None, members=None, manifest=None):
    """A crafted checkpoint: ``members`` maps a key to an array (or raw .npy bytes)."""
    entries = [Entry(f"{k}.npy", v if isinstance(v, bytes) else npy_bytes(v))
               for k, v in (members or {}).items()]
    entries.append(Entry("__minidl__.npy", manifest or manifest_npy(root)))
    write_zip(path, entries)
    return path


def expect_refusal(path, *fragments):
    """``load(path)`` raises CheckpointError naming the file, with every fragment in it."""
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"load: {str(path)!r}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="module")
def zeros_deflated():
    """512 MiB of zeros as a complete raw deflate stream (about 510 KB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    chunks = [packer.compress(zeros) for _ in range(BOMB_BYTES // MiB)]
    return b"".join(chunks) + packer.flush()


def deflated_bomb(name, prefix, zeros_deflated, **claims):
    """A deflated member: ``prefix`` then 512 MiB of zeros (a flushed deflate block
    followed by the zeros' own stream is one valid stream). ``claims`` forge the directory;
    by default it is honest but the CRC, which only a full read would check."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    claims.setdefault("file_size", len(prefix) + BOMB_BYTES)
    claims.setdefault("crc", 0)
    return Entry(name, head + zeros_deflated, zipfile.ZIP_DEFLATED, **claims)


# ----------------------------------------------------------------------------- decompression bombs


# The child reports VmHWM, the peak RSS of its own address space. Not ru_maxrss: Linux
# carries the parent's peak over into it across fork and exec, so under pytest (torch
# imported) every child would report the parent's hundreds of MB.
CHILD = textwrap.dedent("""
    import json, sys
    import minidl
    outcome = "loaded"
    try:
        minidl.load(sys.argv[1])
    except minidl.CheckpointError as exc:
        outcome = str(exc)
    except Exception as exc:  # a regression: still report the memory it took
        outcome = f"raw {type(exc).__name__}: {exc}"
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_kb": peak, "outcome": outcome}))
""")


def load_in_child(path):
    """``minidl.load(path)`` in a fresh interpreter: its peak RSS (KiB) and outcome."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def baseline_kb(tmp_path_factory):
    """Peak RSS of the same interpreter, same imports, loading a small valid checkpoint."""
    path = tmp_path_factory.mktemp("baseline") / "small.ckpt"
    save({"w": minidl.ones(10)}, path)
    result = load_in_child(path)
    assert result["outcome"] == "loaded"
    return result["peak_kb"]


def bomb_unreferenced(path, zeros):
    """The issue's case: a valid checkpoint plus a 512 MiB member the manifest never
    mentions (old load read every member)."""
    header = npy_header("<f8", (BOMB_BYTES // 8,))
    crc = zlib.crc32(header)
    for _ in range(BOMB_BYTES // MiB):  # a valid member: its CRC-32 is right
        crc = zlib.crc32(bytes(MiB), crc)
    write_zip(path, [Entry("a0.npy", npy_bytes(np.ones(3))),
                     deflated_bomb("bomb.npy", header, zeros, crc=crc),
                     Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])


def bomb_manifest(path, zeros):
    """The manifest itself is 512 MiB (honest sizes)."""
    header = npy_header("|u1", (BOMB_BYTES,))
    write_zip(path, [deflated_bomb("__minidl__.npy", header, zeros)])


def bomb_manifest_at_limit(path, zeros):
    """The largest manifest load accepts (one long JSON string), deflated to a few KB: its
    copies (inflated, decoded, parsed) must fit in the bound too."""
    text = '"' + "a" * (serialization.MAX_MANIFEST_BYTES - 2) + '"'
    data = manifest_npy(text=text)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    write_zip(path, [Entry("__minidl__.npy", packer.compress(data) + packer.flush(),
                           zipfile.ZIP_DEFLATED, file_size=len(data), crc=zlib.crc32(data))])


def bomb_header_length(path, zeros):
    """A referenced member whose .npy 2.0 header claims to be 4 GiB long; the zeros after
    it would all be read as 'header' by numpy's own reader."""
    prefix = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0)
    write_zip(path, [deflated_bomb("a0.npy", prefix, zeros),
                     Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])


def bomb_declared_2_40(path, zeros):
    """The header and the zip directory agree on 1 TiB of data, from 510 KB compressed."""
    header = npy_header("<f8", (2 ** 37,))
    write_zip(path, [deflated_bomb("a0.npy", header, zeros, file_size=len(header) + 2 ** 40),
                     Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])


def bomb_header_disagrees(path, zeros):
    """The header says 512 MiB of float64, the zip directory says 80 bytes (with the
    CRC-32 of those 80, so the sizes are what is caught)."""
    header = npy_header("<f8", (BOMB_BYTES // 8,))
    write_zip(path, [deflated_bomb("a0.npy", header, zeros, file_size=len(header) + 80,
                                   crc=zlib.crc32(header + bytes(80))),
                     Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])


@linux_only
@pytest.mark.parametrize("build, expected", [
    (bomb_unreferenced, "loaded"),
    (bomb_manifest, "'__minidl__.npy' declares"),
    (bomb_manifest_at_limit, "unknown manifest format"),
    (bomb_header_length, "-byte .npy header"),
    (bomb_declared_2_40, "more than deflate can produce"),
    (bomb_header_disagrees, "zip directory declares 80 bytes"),
], ids=lambda v: getattr(v, "__name__", None))
def test_decompression_bomb_stays_under_100_mb(tmp_path, zeros_deflated, baseline_kb,
                                               build, expected):
    path = tmp_path / "bomb.ckpt"
    build(path, zeros_deflated)
    assert path.stat().st_size < 2 * MiB  # a small file...
    result = load_in_child(path)
    growth_kb = result["peak_kb"] - baseline_kb
    # ...must not cost much memory, whether it loads or is refused
    assert growth_kb < MEMORY_BOUND_KB, (f"{build.__name__}: peak {growth_kb / 1024:.0f} MB "
                                         f"over the baseline; outcome: {result['outcome']}")
    if expected == "loaded":
        assert result["outcome"] == "loaded"
    else:
        assert result["outcome"].startswith(f"load: {str(path)!r}: ")
        assert expected in result["outcome"], result["outcome"]


def test_unreferenced_members_are_not_read(tmp_path):
    path = write_checkpoint(tmp_path / "c", one_tensor_root(),
                            {"a0": np.arange(3.0), "junk": b"not an npy file at all"})
    np.testing.assert_array_equal(load(path)["w"].numpy(), [0.0, 1.0, 2.0])


def test_member_inflating_past_its_declared_size_is_cut_and_refused(tmp_path, zeros_deflated):
    """zipfile stops at the declared size; the CRC (of the whole stream) then fails."""
    header = npy_header("<f8", (10,))
    write_zip(tmp_path / "c", [
        deflated_bomb("a0.npy", header, zeros_deflated, file_size=len(header) + 80, crc=1),
        Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])
    expect_refusal(tmp_path / "c", "member 'a0.npy' is damaged", "CRC")


# ----------------------------------------------------------------------------- members


def test_truncated_member_names_the_real_cause(tmp_path):
    data = npy_header("<f8", (100,)) + bytes(80)  # 80 of the 800 bytes the header promises
    path = write_checkpoint(tmp_path / "c", one_tensor_root(), {"a0": data})
    message = expect_refusal(path, "member 'a0.npy'", "800 bytes of data", "declares 80 bytes")
    assert "pickled" not in message


@pytest.mark.parametrize("shape, fragment", [
    ((2 ** 31, 2 ** 31), "describes shape (2147483648, 2147483648)"),
    ((-1, 5), "impossible shape (-1, 5)"),
    ((0, 2 ** 70), "impossible shape"),
    ((1,) * 65, "impossible shape"),
])
def test_absurd_shapes_are_refused(tmp_path, shape, fragment):
    data = npy_header("<f8", shape) + bytes(16)
    path = write_checkpoint(tmp_path / "c", one_tensor_root(), {"a0": data})
    message = expect_refusal(path, fragment)
    assert "pickled" not in message


def test_declared_2_40_bytes_is_a_checkpoint_error_not_memory_error(tmp_path):
    header = npy_header("<f8", (2 ** 37,))
    write_zip(tmp_path / "c", [Entry("a0.npy", header + bytes(64), file_size=len(header) + 2 ** 40),
                               Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])
    expect_refusal(tmp_path / "c", f"declares {len(header) + 2 ** 40:,} bytes",
                   "more than storing can produce")


@pytest.mark.parametrize("array, kind", [
    (np.array(["1e5", "2"]), "a string array"),
    (np.array([b"1e5"]), "a bytes array"),
    (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "a structured (void) array"),
    (np.array(["2020-01-01"], dtype="M8[D]"), "a datetime array"),
    (np.array([5], dtype="m8[s]"), "a timedelta array"),
])
def test_non_numeric_arrays_are_refused(tmp_path, array, kind):
    path = write_checkpoint(tmp_path / "c", one_tensor_root(), {"a0": array})
    expect_refusal(path, "member 'a0.npy' holds " + kind, "numeric and bool arrays only")
    with pytest.raises(TypeError, match=re.escape(kind) + ".*numeric and bool arrays only"):
        save({"x": array}, tmp_path / "other")  # and save never writes one
    assert not (tmp_path / "other").exists()


def test_string_weights_never_reach_load_state_dict(tmp_path):
    layer = nn.Linear(2, 1)
    root = {"t": "odict", "items": [["weight", tensor_node("a0")], ["bias", tensor_node("a1")]]}
    path = write_checkpoint(tmp_path / "c", root, {"a0": np.array([["1e5", "2"]]),
                                                   "a1": np.array(["0"])})
    before = layer.weight.numpy().copy()
    with pytest.raises(CheckpointError, match="string array"):
        layer.load_state_dict(load(path))
    np.testing.assert_array_equal(layer.weight.numpy(), before)


def test_object_member_still_reported_as_pickle(tmp_path):
    path = write_checkpoint(tmp_path / "c", one_tensor_root(),
                            {"a0": np.array([{"boom": 1}], dtype=object)})
    expect_refusal(path, "pickled Python objects")


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "int32", "int64", "float16",
                                   "float32", "float64", "complex64", "complex128"])
def test_numeric_and_bool_dtypes_round_trip(tmp_path, dtype):
    array = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
    save({"x": array}, tmp_path / "c")
    got = load(tmp_path / "c")["x"].numpy()
    assert got.dtype == array.dtype and got.shape == (2, 3)
    np.testing.assert_array_equal(got, array)


def test_big_endian_fortran_and_empty_arrays_load(tmp_path):
    """Files from other writers: byte-swapped, column-major, zero-size members."""
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    empty = np.zeros((0, 4), np.float32)
    root = {"t": "list", "items": [tensor_node("a0"), tensor_node("a1"), tensor_node("a2")]}
    path = write_checkpoint(tmp_path / "c", root, {"a0": big, "a1": fortran, "a2": empty})
    got = [t.numpy() for t in load(path)]
    assert got[0].dtype == np.float64 and got[0].dtype.isnative
    np.testing.assert_array_equal(got[0], big)
    np.testing.assert_array_equal(got[1], fortran)
    assert got[2].shape == (0, 4)


def test_compressed_npz_checkpoint_still_loads(tmp_path):
    """A checkpoint re-packed with deflate (np.savez_compressed) is honest: it loads."""
    manifest = {"format": "minidl-checkpoint", "version": 1, "root": one_tensor_root()}
    with open(tmp_path / "c", "wb") as fh:
        np.savez_compressed(fh, a0=np.zeros(100_000),
                            __minidl__=np.frombuffer(json.dumps(manifest).encode(), np.uint8))
    assert load(tmp_path / "c")["w"].shape == (100_000,)


def test_duplicate_member_names_are_refused(tmp_path):
    path = tmp_path / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate, then writes it
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a0.npy", npy_bytes(np.ones(2)))
            zf.writestr("a0.npy", npy_bytes(np.zeros(2)))
            zf.writestr("__minidl__.npy", manifest_npy(one_tensor_root()))
    expect_refusal(path, "two members named 'a0.npy'")


@pytest.mark.parametrize("claims, fragment", [
    ({"method": 12}, "compression method 12"),            # bzip2: unbounded ratio
    ({"method": 99}, "compression method 99"),            # zipfile: NotImplementedError
    ({"flags": 0x1}, "encrypted"),                        # zipfile: RuntimeError
    ({"compress_size": 10 ** 9}, "compressed bytes in a"),
    ({"file_size": 10 ** 6}, "more than storing can produce"),
])
def test_forged_zip_directory_entries_are_refused(tmp_path, claims, fragment):
    entry = Entry("a0.npy", npy_bytes(np.ones(2)), **claims)
    write_zip(tmp_path / "c", [entry, Entry("__minidl__.npy", manifest_npy(one_tensor_root()))])
    expect_refusal(tmp_path / "c", "member 'a0.npy'", fragment)


def test_damaged_bytes_in_a_member_fail_the_crc(tmp_path):
    save({"w": minidl.ones(1000)}, tmp_path / "c")
    data = bytearray((tmp_path / "c").read_bytes())
    at = data.index(b"\x00\x00\x80\x3f" * 4)  # inside the float32 ones
    data[at:at + 4] = b"\x00\x00\x80\x40"
    (tmp_path / "c").write_bytes(bytes(data))
    expect_refusal(tmp_path / "c", "is damaged", "CRC")


def test_not_a_zip_and_non_seekable_file_objects(tmp_path):
    (tmp_path / "notes").write_text("hello")
    expect_refusal(tmp_path / "notes", "not a minidl checkpoint")

    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False
    with pytest.raises(CheckpointError, match="not seekable"):
        load(Pipe())


# ----------------------------------------------------------------------------- the manifest


def nested_lists(depth):
    node = {"t": "v", "v": 1}
    for _ in range(depth):
        node = {"t": "list", "items": [node]}
    return node


FMT = {"format": "minidl-checkpoint"}
BAD_MANIFESTS = {
    "no root": ({**FMT, "version": 1}, "expected format, version and root"),
    "a list": ([1, 2], "unknown manifest format"),
    "version as text": ({**FMT, "version": "1", "root": None}, "not a format version"),
    "version as bool": ({**FMT, "version": True, "root": None}, "not a format version"),
    "root a number": ({**FMT, "version": 1, "root": 5}, "at root: expected an entry"),
    "unknown type": ({**FMT, "version": 1, "root": {"t": "pickle"}}, "expected an entry"),
    "type not text": ({**FMT, "version": 1, "root": {"t": ["dict"]}}, "expected an entry"),
    "dict without items": ({**FMT, "version": 1, "root": {"t": "dict"}}, "has the fields"),
    "extra field": ({**FMT, "version": 1, "root": {"t": "v", "v": 1, "x": 2}}, "has the fields"),
    "items not a list": ({**FMT, "version": 1, "root": {"t": "dict", "items": 5}},
                         "'items' must be a list"),
    "item not a pair": ({**FMT, "version": 1, "root": {"t": "dict", "items": [[1]]}},
                        "[key, entry] pairs"),
    "bool key": ({**FMT, "version": 1, "root": {"t": "dict", "items": [[True, {"t": "v",
                                                                               "v": 1}]]}},
                 "keys are strings or ints"),
    "duplicate key": ({**FMT, "version": 1, "root": {"t": "dict", "items": [
        ["a", {"t": "v", "v": 1}], ["a", {"t": "v", "v": 2}]]}}, "'a' appears twice"),
    "list items a dict": ({**FMT, "version": 1, "root": {"t": "list", "items": {"a": 1}}},
                          "'items' must be a list"),
    "value a list": ({**FMT, "version": 1, "root": {"t": "v", "v": [1]}}, "a value must be"),
    "object dtype": ({**FMT, "version": 1, "root": {"t": "dtype", "v": "object"}},
                     "numeric or bool dtype"),
    "subarray dtype": ({**FMT, "version": 1, "root": {"t": "dtype", "v": "(2,)f8"}},
                       "numeric or bool dtype"),
    "dtype a number": ({**FMT, "version": 1, "root": {"t": "dtype", "v": 5}},
                       "numeric or bool dtype"),
    "tensor without key": ({**FMT, "version": 1, "root": {"t": "tensor"}}, "has the fields"),
    "key a number": ({**FMT, "version": 1, "root": tensor_node(5)}, "array key"),
    "key the manifest": ({**FMT, "version": 1, "root": tensor_node("__minidl__")},
                         "array key"),
    "missing member": ({**FMT, "version": 1, "root": tensor_node("a9")},
                       "'a9.npy', which the archive does not hold"),
    "member twice": ({**FMT, "version": 1, "root": {"t": "list", "items": [
        tensor_node("a0"), tensor_node("a0")]}}, "referred to twice"),
    "requires_grad text": ({**FMT, "version": 1, "root": tensor_node("a0", requires_grad="y")},
                           "requires_grad"),
    "unknown device": ({**FMT, "version": 1, "root": tensor_node("a0", device="tpu:0")},
                       "device 'tpu:0'"),
    "device a number": ({**FMT, "version": 1, "root": tensor_node("a0", device=5)}, "device 5"),
    "negative shape": ({**FMT, "version": 1, "root": tensor_node("a0", shape=[-1])},
                       "non-negative ints"),
    "string dtype": ({**FMT, "version": 1, "root": tensor_node("a0", dtype="<U3")},
                     "numeric or bool dtype"),
    "dtype disagrees": ({**FMT, "version": 1, "root": tensor_node("a0", dtype="<f4")},
                        "holds dtype float64, but the manifest says float32"),
    "shape disagrees": ({**FMT, "version": 1, "root": tensor_node("a0", shape=[3, 1])},
                        "has shape (3,), but the manifest says (3, 1)"),
    "nested 150 deep": ({**FMT, "version": 1, "root": nested_lists(150)},
                        "nested more than 100"),
}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_crafted_manifest_gives_checkpoint_error(tmp_path, name):
    """Each once gave a raw KeyError/TypeError/AttributeError/RecursionError, or worse."""
    manifest, fragment = BAD_MANIFESTS[name]
    path = write_checkpoint(tmp_path / "c", members={"a0": np.zeros(3)},
                            manifest=manifest_npy(text=json.dumps(manifest)))
    expect_refusal(path, fragment)


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # json's own RecursionError
    (b"\xff\xfe{}", "not UTF-8"),
    ('{"format": "minidl-checkpoint", "version": ' + "9" * 5000 + "}", "corrupt manifest"),
    ("[" + "0," * 600_000 + "0]", "more than 500,000 values"),
    ("{not json", "corrupt manifest"),
])
def test_unparsable_manifest_gives_checkpoint_error(tmp_path, text, fragment):
    path = write_checkpoint(tmp_path / "c", manifest=manifest_npy(text=text))
    expect_refusal(path, fragment)


def test_manifest_must_be_bytes(tmp_path):
    path = write_checkpoint(tmp_path / "c", manifest=npy_bytes(np.zeros((2, 3))))
    expect_refusal(path, "corrupt manifest (a float64 array of shape (2, 3)")


def test_save_refuses_what_load_would_refuse(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested more than 100"):
        save({"loop": loop}, tmp_path / "c")
    with pytest.raises(ValueError, match=r"np\.array\(losses\)"):
        save({"losses": [0.5] * 300_000}, tmp_path / "c")
    with pytest.raises(TypeError, match="numeric and bool dtypes"):
        save({"dtype": np.dtype("U3")}, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    save({"losses": np.full(300_000, 0.5)}, tmp_path / "c")  # the fix the message gives
    assert load(tmp_path / "c")["losses"].shape == (300_000,)


# ----------------------------------------------------------------------------- not regular files


SPECIAL_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2 ** 30, 2 * 2 ** 30))  # a regression fails
    import minidl
    try:
        minidl.load(sys.argv[1])
    except minidl.CheckpointError as exc:
        print(exc)
""")


def load_special_file(path):
    """``load(path)`` in a subprocess that must finish within a few seconds."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        done = subprocess.run([sys.executable, "-c", SPECIAL_CHILD, str(path)],
                              capture_output=True, text=True, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"load({str(path)!r}) hung")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@linux_only
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    message = load_special_file(fifo)
    assert message.startswith(f"load: {str(fifo)!r}: is a FIFO"), message
    link = tmp_path / "link.ckpt"
    link.symlink_to(fifo)
    assert "is a FIFO" in load_special_file(link)


@linux_only
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_refused_not_read(tmp_path):
    message = load_special_file("/dev/zero")
    assert message.startswith("load: '/dev/zero': is a character device"), message


def test_directory_and_missing_file_keep_their_os_errors(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        load("")


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_resave_keeps_the_mode_of_the_file(tmp_path, mode):
    path = tmp_path / "c"
    save({"v": 1}, path)
    os.chmod(path, mode)
    save({"v": 2}, path)
    assert stat.S_IMODE(path.stat().st_mode) == mode and load(path)["v"] == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_new_file_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save({"v": 1}, tmp_path / "c")
        with atomic_write(tmp_path / "t", "w") as fh:  # text mode, as the tools use it
            fh.write("hello\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == mode
    assert (tmp_path / "t").read_text() == "hello\n"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_save_through_a_symlink_updates_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "epoch3.ckpt"
    save({"epoch": 3}, real)
    link = tmp_path / "latest.ckpt"
    link.symlink_to(os.path.join("runs", "epoch3.ckpt"))  # relative, in another directory
    save({"epoch": 4}, link)
    assert link.is_symlink() and load(real)["epoch"] == 4 and load(link)["epoch"] == 4
    assert sorted(os.listdir(tmp_path)) == ["latest.ckpt", "runs"]
    assert os.listdir(tmp_path / "runs") == ["epoch3.ckpt"]
    dangling = tmp_path / "next.ckpt"
    dangling.symlink_to("runs/epoch5.ckpt")
    save({"epoch": 5}, dangling)  # like open(): creates the link's target
    assert dangling.is_symlink() and load(tmp_path / "runs" / "epoch5.ckpt")["epoch"] == 5


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import minidl
    from minidl import serialization

    def dies_mid_write(fileobj, arrays, manifest):
        fileobj.write(b"PK" + bytes(100_000))
        fileobj.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    serialization._write_archive = dies_mid_write
    minidl.save({"w": minidl.ones(10)}, sys.argv[1])
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_temp_files_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    """Each killed save leaves its temporary file; the next save (killed or not) removes
    it, so repeated kills never pile up more than one."""
    path = tmp_path / "ckpt"
    save({"epoch": 0}, path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], env=env,
                                 stderr=subprocess.PIPE)
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err[-2000:]
        left = sorted(set(os.listdir(tmp_path)) - {"ckpt"})
        assert len(left) == 1 and re.fullmatch(rf"\.ckpt\.{child.pid}\.\w+\.minidl-tmp",
                                               left[0]), left
    assert load(path)["epoch"] == 0  # the killed saves did not touch the checkpoint
    save({"epoch": 1}, path)
    assert os.listdir(tmp_path) == ["ckpt"] and load(path)["epoch"] == 1


def test_only_stale_temp_files_of_the_same_target_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    dead = int(gone.stdout)
    keep = [f".ckpt.{os.getpid()}.abcd1234.minidl-tmp",   # a save running now (ours)
            f".other.{dead}.abcd1234.minidl-tmp",          # another target's
            f".ckpt.{dead}.abcd1234.tmp", "ckpt.bak",       # not our pattern
            f".ckpt.x.{dead}.abcd1234.minidl-tmp"]
    for name in keep + [f".ckpt.{dead}.abcd1234.minidl-tmp"]:
        (tmp_path / name).write_bytes(b"partial")
    save({"v": 1}, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["ckpt"])


def test_empty_path_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match="path is empty"):
        save({"v": 1}, "")
    with pytest.raises(ValueError, match="path is empty"):
        with atomic_write(""):
            pass
    assert os.listdir(tmp_path) == ["work"] and os.listdir(work) == []


def test_save_onto_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save({"v": 1}, tmp_path)
    assert os.listdir(tmp_path) == []


def test_new_checkpoints_record_dtype_and_shape(tmp_path):
    save({"w": minidl.ones(2, 3)}, tmp_path / "c")
    with np.load(tmp_path / "c", allow_pickle=False) as npz:
        node = json.loads(npz["__minidl__"].tobytes())["root"]["items"][0][1]
    assert node["dtype"] == "<f4" and node["shape"] == [2, 3]
    assert serialization.load(tmp_path / "c")["w"].shape == (2, 3)


def test_load_state_dict_refuses_string_arrays_from_anywhere():
    net = minidl.nn.Linear(2, 1)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    state["bias"] = np.array(["1e5"])
    with pytest.raises(TypeError, match="'bias' has dtype <U3; expected numbers"):
        net.load_state_dict(state)
