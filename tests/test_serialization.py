"""minidl.serialization: round trips, atomic writes, no pickle, clear errors."""
from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

import minidl
import minidl.optim
from minidl import nn, serialization
from minidl.serialization import CheckpointError, load, save


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def test_roundtrip_nested_checkpoint(tmp_path):
    net = small_net()
    net(minidl.randn(2, 1, 6, 6))  # running stats and num_batches_tracked move
    opt = minidl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(minidl.randn(2, 1, 6, 6)).sum().backward()
    opt.step()
    ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "name": "lenet ü", "best": 0.25, "flags": [True, False, None], "betas": (0.9, 0.99),
            "array": np.arange(6, dtype=np.int32).reshape(2, 3), "empty": {}, "nan": float("nan"),
            "dtype": minidl.float64, "bool_arr": np.array([True, False]),
            "big": 2 ** 40, "np_scalar": np.float32(1.5)}
    path = tmp_path / "ckpt.pt"
    save(ckpt, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # the path as given, no temporary file left
    got = load(path)
    assert isinstance(got["model"], OrderedDict) and list(got["model"]) == list(ckpt["model"])
    for k, v in ckpt["model"].items():
        assert isinstance(got["model"][k], minidl.Tensor)
        assert got["model"][k].dtype == v.dtype and got["model"][k].shape == v.shape
        np.testing.assert_array_equal(got["model"][k].numpy(), v.numpy())
    assert got["model"]["1.num_batches_tracked"].item() == 2
    assert got["epoch"] == 3 and isinstance(got["epoch"], int)
    assert got["name"] == "lenet ü" and got["best"] == 0.25 and got["big"] == 2 ** 40
    assert got["flags"] == [True, False, None] and got["betas"] == (0.9, 0.99)
    assert isinstance(got["array"], minidl.Tensor) and got["array"].dtype == np.int32
    np.testing.assert_array_equal(got["array"].numpy(), ckpt["array"])
    assert got["empty"] == {} and np.isnan(got["nan"]) and got["dtype"] == np.float64
    assert got["bool_arr"].dtype == np.bool_ and got["np_scalar"] == 1.5
    # int keys of the optimiser state survive
    assert sorted(got["optimizer"]["state"]) == sorted(ckpt["optimizer"]["state"])
    assert all(isinstance(k, int) for k in got["optimizer"]["state"])


def test_model_roundtrip_gives_same_outputs(tmp_path):
    net = small_net()
    net(minidl.randn(4, 1, 6, 6))
    net.eval()
    x = minidl.randn(2, 1, 6, 6)
    save(net.state_dict(), tmp_path / "m.npz")
    other = small_net().eval()
    other.load_state_dict(load(tmp_path / "m.npz"))
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())


def test_overwrite_and_path_types(tmp_path):
    p = tmp_path / "a.ckpt"
    save({"v": 1}, p)
    save({"v": 2}, str(p))
    assert load(str(p))["v"] == 2 and sorted(os.listdir(tmp_path)) == ["a.ckpt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save({"v": 1}, tmp_path / "missing_dir" / "x.ckpt")


def test_file_objects():
    buf = io.BytesIO()
    save({"w": minidl.ones(2), "step": 5}, buf)
    buf.seek(0)
    got = load(buf)
    assert got["step"] == 5 and np.all(got["w"].numpy() == 1)
    with pytest.raises(CheckpointError, match="not a minidl checkpoint"):
        load(io.BytesIO(b"junk"))


def test_requires_grad_and_map_location(tmp_path):
    p = nn.Parameter(minidl.ones(3))
    save({"p": p, "t": minidl.zeros(2)}, tmp_path / "x")
    got = load(tmp_path / "x", map_location="cpu")
    assert got["p"].requires_grad and not got["t"].requires_grad
    assert got["p"].device == "cpu"
    got = load(tmp_path / "x", map_location={"cuda:0": "cpu"})
    assert got["p"].device == "cpu"


def test_device_tensors_saved_as_host_arrays(tmp_path, device):
    t = minidl.tensor(np.arange(6.0).reshape(2, 3)).to(device)
    save({"t": t, "n": nn.Linear(2, 2).to(device).state_dict()}, tmp_path / "d")
    with np.load(tmp_path / "d", allow_pickle=False) as npz:  # plain host arrays inside
        assert all(isinstance(npz[k], np.ndarray) for k in npz.files)
    got = load(tmp_path / "d", map_location="cpu")
    assert got["t"].device == "cpu" and got["n"]["weight"].device == "cpu"
    np.testing.assert_array_equal(got["t"].numpy(), np.arange(6.0).reshape(2, 3))
    if device != "cpu":
        assert load(tmp_path / "d")["t"].device == device  # default: the saved device


# ----------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "ckpt"
    save({"w": minidl.ones(1000), "epoch": 1}, path)
    before = path.read_bytes()

    def crashing_write(fileobj, arrays, manifest):
        fileobj.write(b"PK\x03\x04 half an archive")  # a partial write, then the crash
        fileobj.flush()
        raise exc
    monkeypatch.setattr(serialization, "_write_archive", crashing_write)
    with pytest.raises(type(exc)):
        save({"w": minidl.zeros(1000), "epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt"]  # the temporary file was removed
    monkeypatch.undo()
    got = load(path)
    assert got["epoch"] == 1 and np.all(got["w"].numpy() == 1)


def test_crash_in_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    save({"epoch": 1}, path)

    def failing_replace(src, dst):
        raise OSError("rename failed")
    monkeypatch.setattr(serialization.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load(path)["epoch"] == 1 and os.listdir(tmp_path) == ["ckpt"]


def test_unsupported_object_fails_before_writing(tmp_path):
    path = tmp_path / "ckpt"
    save({"epoch": 1}, path)
    with pytest.raises(TypeError, match=r"obj\['model'\]\['fn'\] of type function"):
        save({"model": {"fn": lambda: 0}}, path)
    with pytest.raises(TypeError, match="dict keys"):
        save({(1, 2): 3}, path)
    with pytest.raises(TypeError, match="object array"):
        save({"a": np.array([object()])}, path)
    assert load(path)["epoch"] == 1 and os.listdir(tmp_path) == ["ckpt"]


# ----------------------------------------------------------------------------- no pickle


def _write_npz(path, members):
    with open(path, "wb") as fh:
        np.savez(fh, **members)


def test_pickled_member_is_refused(tmp_path):
    manifest = {"format": "minidl-checkpoint", "version": 1,
                "root": {"t": "dict", "items": [["x", {"t": "array", "k": "a0"}]]}}
    path = tmp_path / "evil.npz"
    _write_npz(path, {"a0": np.array([{"boom": 1}], dtype=object),
                      "__minidl__": np.frombuffer(json.dumps(manifest).encode(), np.uint8)})
    with pytest.raises(CheckpointError, match="pickled"):
        load(path)


def test_not_a_minidl_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "nope.ckpt")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a minidl checkpoint"):
        load(text)
    plain = tmp_path / "plain.npz"
    _write_npz(plain, {"x": np.arange(3)})
    with pytest.raises(CheckpointError, match="no '__minidl__' manifest"):
        load(plain)
    torch_file = tmp_path / "torch.pt"
    torch.save({"w": torch.ones(2)}, torch_file)  # a zip too, but not ours
    with pytest.raises(CheckpointError, match="not a minidl checkpoint"):
        load(torch_file)
    bad_manifest = tmp_path / "bad.npz"
    _write_npz(bad_manifest, {"__minidl__": np.frombuffer(b"{not json", np.uint8)})
    with pytest.raises(CheckpointError, match="corrupt manifest"):
        load(bad_manifest)
    newer = tmp_path / "newer.npz"
    _write_npz(newer, {"__minidl__": np.frombuffer(json.dumps(
        {"format": "minidl-checkpoint", "version": 99, "root": {"t": "v", "v": 1}}).encode(),
        np.uint8)})
    with pytest.raises(CheckpointError, match="newer minidl"):
        load(newer)
    truncated = tmp_path / "trunc"
    save({"w": minidl.ones(100)}, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    named = re.escape(f"load: {str(truncated)!r}: ")
    with pytest.raises(CheckpointError, match=named + ".*cut short"):
        load(truncated)


def test_archive_is_plain_npz(tmp_path):
    """Other tools can read the arrays: it is a standard .npz with a JSON manifest."""
    save({"w": minidl.tensor([1.0, 2.0])}, tmp_path / "c")
    assert zipfile.is_zipfile(tmp_path / "c")
    with np.load(tmp_path / "c", allow_pickle=False) as npz:
        manifest = json.loads(npz["__minidl__"].tobytes())
        key = manifest["root"]["items"][0][1]["k"]
        np.testing.assert_array_equal(npz[key], [1.0, 2.0])
