"""examples/resnet_mnist.py and examples/googlenet_aux.py end to end, on tiny synthetic
data in temporary folders (their ``main(argv)`` in this process), plus ``--help``.

The synthetic test set is capped at 64 images here (the examples use 1,000): ResNet-18 and
GoogLeNet are costly on a CPU and the loop evaluates the test set twice.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import _common  # noqa: E402
import googlenet_aux  # noqa: E402
import resnet_mnist  # noqa: E402

TINY = ["--synthetic", "--limit", "16", "--batch-size", "8", "--epochs", "1", "--no-tsne",
        "--no-progress"]
OUTPUTS = ("metrics.json", "best.npz", "final.npz", "curves.png", "confusion.png")


@pytest.fixture
def small_synthetic(monkeypatch):
    real = _common.synthetic_digits
    monkeypatch.setattr(_common, "synthetic_digits",
                        lambda n, seed, size=28: real(min(n, 64), seed, size))


def check_outputs(out, metrics):
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert not (out / "tsne.png").exists()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["sizes"] == {"train": 16, "val": 0, "test": 64}
    assert len(on_disk["epochs"]) == len(metrics["epochs"]) == 1
    epoch = on_disk["epochs"][0]
    assert 0 <= epoch["eval_top1"] <= 100 and epoch["seconds"] > 0
    return on_disk


def test_resnet_mnist_end_to_end(tmp_path, small_synthetic, capsys):
    metrics = resnet_mnist.main([*TINY, "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "ResNet-18 (small stem)" in text
    assert "Train epoch 1: loss:" in text and "Eval epoch 1: top-1 accuracy:" in text
    assert "Time epoch 1:" in text
    on_disk = check_outputs(tmp_path, metrics)
    assert on_disk["model"] == "resnet18-small-stem-mnist"
    assert "loss_out" not in on_disk["epochs"][0]


def test_googlenet_aux_end_to_end(tmp_path, small_synthetic, capsys):
    metrics = googlenet_aux.main([*TINY, "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "GoogLeNet (aux. losses)" in text
    line = next(ln for ln in text.splitlines() if "loss_out:" in ln)
    assert line.startswith("Train epoch 1: ")
    for part in googlenet_aux.PARTS:
        assert f"{part}: " in line
    epoch = check_outputs(tmp_path, metrics)["epochs"][0]
    parts = [epoch[p] for p in googlenet_aux.PARTS]
    assert all(p > 0 for p in parts)
    # L = L_out + 0.3 L_aux1 + 0.3 L_aux2, batch by batch, so also for the means
    assert epoch["train_loss"] == pytest.approx(parts[0] + 0.3 * (parts[1] + parts[2]),
                                                rel=1e-4)


def test_googlenet_loss_parts_are_means_per_epoch():
    import minidl
    import numpy as np
    from minidl.models.googlenet import GoogLeNetOutputs
    loss = googlenet_aux.AuxLoss(0.5)
    target = minidl.as_tensor(np.array([0, 1]))
    logits = minidl.as_tensor(np.zeros((2, 3), np.float32))  # uniform: ln 3 each
    total = loss(GoogLeNetOutputs(logits, logits, logits), target)
    assert total.item() == pytest.approx(2 * np.log(3), rel=1e-5)
    assert googlenet_aux.main_logits(GoogLeNetOutputs(logits, None, None)) is logits
    means = loss.epoch_means()
    assert means == pytest.approx(dict.fromkeys(googlenet_aux.PARTS, np.log(3)), rel=1e-5)
    assert loss.batches == 0 and loss.epoch_means()["loss_out"] == 0.0


@pytest.mark.parametrize("script", ["resnet_mnist.py", "googlenet_aux.py"])
def test_help(script):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--limit", "--epochs", "--synthetic", "--no-progress"):
        assert option in proc.stdout
    if script == "googlenet_aux.py":
        assert "--aux-weight" in proc.stdout and "0.3 L_aux1" in proc.stdout
    # the quick demo evaluates a test subset, and the help says how long runs take
    assert "--test-limit 1000" in proc.stdout and "quick CPU demo" in proc.stdout
    assert "Run times on a CPU" in proc.stdout and "minutes" in proc.stdout


def test_test_limit_for_the_big_models(tmp_path, small_synthetic):
    metrics = resnet_mnist.main([*TINY, "--test-limit", "24", "--no-plots",
                                 "--out", str(tmp_path)])
    assert metrics["sizes"]["test"] == 24
    assert sum(map(sum, metrics["final"]["confusion"])) == 24
