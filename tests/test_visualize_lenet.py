"""examples/visualize_lenet.py, run as a user would (a subprocess), on synthetic digits.

Nothing is trained: the checkpoints are written here, in the example's format, from freshly
initialised models. Needs matplotlib (the ``examples`` extra).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import minidl
from minidl import models

pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = EXAMPLES / "visualize_lenet.py"
sys.path.insert(0, str(EXAMPLES))
import _common  # noqa: E402
import lenet_mnist  # noqa: E402

PER_DIGIT = ("conv1", "conv2", "saliency", "occlusion")


def run_script(*argv):
    root = str(Path(__file__).resolve().parent.parent)   # this minidl, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True,
                          text=True, env=env, timeout=300)


def write_checkpoint(path, model_name, model):
    """A checkpoint with the members visualize_lenet reads, in lenet_mnist's format."""
    minidl.save({"format": _common.CHECKPOINT_FORMAT, "model": model_name,
                 "recipe": "seed", "epoch": 1, "model_state": model.state_dict()}, path)
    return path


def png_size(path):
    """(width, height) from a PNG's header; fails for anything that is not a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def assert_clean_failure(proc, *words):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("visualize_lenet.py: error: "), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize("recipe", ["seed", "modern"])
def test_writes_every_picture(tmp_path, recipe):
    minidl.manual_seed(0)
    made = lenet_mnist.RECIPES[recipe](None)
    ckpt = write_checkpoint(tmp_path / "best.npz", made.model_name, made.build_model())
    proc = run_script("--checkpoint", str(ckpt), "--synthetic", "--digits", "2",
                      "--test-limit", "200", "--max-misclassified", "12")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "viz"
    expected = {"filters_conv1.png", "filters_conv2.png", "misclassified.png"} | {
        f"digit{i}_{kind}.png" for i in range(2) for kind in PER_DIGIT}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        width, height = png_size(out / name)
        assert 200 <= width <= 4000 and 150 <= height <= 4000, (name, width, height)
    assert "test top-1" in proc.stdout and f"Wrote {len(expected)} pictures" in proc.stdout


def test_a_bare_lenet_state_dict_is_accepted(tmp_path):
    minidl.save(models.lenet5().state_dict(), tmp_path / "weights.npz")
    proc = run_script("--checkpoint", str(tmp_path / "weights.npz"), "--synthetic",
                      "--digits", "1", "--test-limit", "50", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "digit0_occlusion.png").is_file()


def test_refuses_a_checkpoint_of_another_model(tmp_path):
    ckpt = write_checkpoint(tmp_path / "resnet.npz", "resnet18",
                            models.resnet18(num_classes=10))
    proc = run_script("--checkpoint", str(ckpt), "--synthetic")
    assert_clean_failure(proc, "'resnet18' model", "not LeNet-5", "lenet_mnist.py")
    assert not (tmp_path / "viz").exists()


def test_refuses_a_state_dict_of_another_model(tmp_path):
    minidl.save(models.resnet18(num_classes=10).state_dict(), tmp_path / "sd.npz")
    proc = run_script("--checkpoint", str(tmp_path / "sd.npz"), "--synthetic")
    assert_clean_failure(proc, "not a checkpoint of LeNet-5", "conv1.weight, bn1.weight")


def test_refuses_a_missing_file(tmp_path):
    proc = run_script("--checkpoint", str(tmp_path / "nothing.npz"), "--synthetic")
    assert_clean_failure(proc, "cannot read the checkpoint", "nothing.npz")


def test_help_explains_each_picture():
    proc = run_script("--help")
    assert proc.returncode == 0
    for words in ("filters_conv1.png", "digit<i>_conv1.png", "digit<i>_saliency.png",
                  "digit<i>_occlusion.png", "misclassified.png", "--synthetic",
                  "--data-dir", "--checkpoint"):
        assert words in proc.stdout, words
