"""examples/lenet_mnist.py end to end, on small synthetic data in temporary folders.

Most runs call the example's ``main(argv)`` in this process (fast); the checks of exit
statuses and messages run it as a subprocess, as a user would. Needs the ``examples``
extra (tqdm, matplotlib, scikit-learn).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl
from minidl import models
from minidl.data import write_idx

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = EXAMPLES / "lenet_mnist.py"
sys.path.insert(0, str(EXAMPLES))
import _common  # noqa: E402
import lenet_mnist  # noqa: E402

# 300 synthetic training images in batches of 50: 6 steps an epoch
SMALL = ["--synthetic", "--limit", "300", "--batch-size", "50", "--no-progress"]
TIMES = ("seconds", "train_seconds")


def run(out, *extra, epochs=2):
    return lenet_mnist.main([*SMALL, "--epochs", str(epochs), "--out", str(out), *extra])


def numbers(metrics):
    """The metrics without the wall-clock times (which differ run to run)."""
    epochs = [{k: v for k, v in e.items() if k not in TIMES} for e in metrics["epochs"]]
    return epochs, metrics["best"], metrics["final"]


def run_script(*argv, env=None, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=120)


def assert_clean_failure(proc, *words):
    """Exit status 1, an ``error:`` line naming the problem, no traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("lenet_mnist.py: error: ")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def is_png(path):
    data = Path(path).read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The seed recipe, 2 epochs, every output (t-SNE of 60 test images)."""
    out = tmp_path_factory.mktemp("base")
    metrics = run(out, "--tsne-samples", "60")
    return out, metrics


# ----------------------------------------------------------------------------- outputs


def test_outputs_present_and_sane(base):
    out, metrics = base
    for name in _common.OUTPUT_FILES:
        assert (out / name).is_file(), name
    assert not list(out.glob(".*")), "temporary files left behind"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert numbers(on_disk) == numbers(json.loads(json.dumps(metrics)))
    assert on_disk["recipe"] == "seed" and on_disk["model"] == "lenet5"
    assert on_disk["sizes"] == {"train": 300, "val": 0, "test": 1000}
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    for e in on_disk["epochs"]:
        assert 0 < e["train_loss"] < 10 and np.isfinite(e["eval_loss"])
        for key in ("train_top1", "eval_top1", "eval_top5"):
            assert 0 <= e[key] <= 100
        assert e["eval_top5"] >= e["eval_top1"]
        assert e["seconds"] >= e["train_seconds"] > 0
        assert e["lr"] == 0.01 and e["val_loss"] is None
    assert on_disk["best"] == {"epoch": 2, "criterion": "train_loss",
                               "value": on_disk["epochs"][1]["train_loss"]}
    final = on_disk["final"]
    assert final["epoch"] == 2 and final["test_top1"] == on_disk["epochs"][1]["eval_top1"]
    cm = np.array(final["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert 100 * np.trace(cm) / 1000 == pytest.approx(final["test_top1"])


def test_pngs_are_images(base):
    import matplotlib.image as mpimg
    out, _ = base
    for name in ("curves.png", "confusion.png", "tsne.png"):
        assert is_png(out / name), name
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and min(img.shape[:2]) > 200 and img.std() > 0.01, name


def test_checkpoints_load_into_the_model(base):
    out, metrics = base
    for name in ("best.npz", "final.npz"):
        ckpt = minidl.load(out / name)
        assert ckpt["format"] == _common.CHECKPOINT_FORMAT
        assert (ckpt["model"], ckpt["recipe"], ckpt["epoch"]) == ("lenet5", "seed", 2)
        assert len(ckpt["history"]) == 2 and ckpt["best"]["epoch"] == 2
        net = models.lenet5()
        net.load_state_dict(ckpt["model_state"])   # strict: every key and shape fits
    # the weights reproduce the reported test accuracy
    net.eval()
    args = _common.fill_defaults(lenet_mnist.build_parser().parse_args(SMALL),
                                 lenet_mnist.DEFAULTS["seed"])
    test = _common.load_data(args, lenet_mnist.seed_recipe(args)).test
    loader = minidl.data.DataLoader(test, batch_size=100)
    ev = _common.evaluate(net, loader, "cpu")
    assert ev.top1 == pytest.approx(metrics["epochs"][1]["eval_top1"])


def test_lecture_lines_and_times(tmp_path, capsys):
    run(tmp_path, "--no-tsne", epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"Train epoch 1: loss: \d\.\d{4} ; top-1 accuracy: \d+\.\d\d%",
                        lines[1]), lines
    assert re.fullmatch(r"Eval epoch 1: top-1 accuracy: \d+\.\d\d%", lines[2]), lines
    assert re.fullmatch(r"Time epoch 1: \d+\.\d s \(train \d+\.\d s, eval \d+\.\d s\)",
                        lines[3]), lines


def test_progress_bar_on_stderr(capsys):
    minidl.manual_seed(0)
    x = np.random.default_rng(0).random((40, 1, 32, 32)).astype(np.float32)
    y = np.arange(40) % 10
    loader = minidl.data.DataLoader(minidl.data.TensorDataset(x, y), batch_size=10)
    args = lenet_mnist.build_parser().parse_args([])
    _common.fill_defaults(args, lenet_mnist.DEFAULTS["seed"])
    recipe = lenet_mnist.seed_recipe(args)
    net = recipe.build_model()
    loss, top1 = _common.train_epoch(net, loader, recipe.make_optimizer(net), recipe, "cpu",
                                     progress=True, desc="bar-test")
    captured = capsys.readouterr()
    assert "bar-test" in captured.err and "/4 " in captured.err and captured.out == ""
    assert np.isfinite(loss) and 0 <= top1 <= 100


# ----------------------------------------------------------------------------- determinism, resume


def test_same_seed_same_numbers(base, tmp_path):
    _, metrics = base
    again = run(tmp_path, "--no-tsne")
    assert numbers(again) == numbers(metrics)
    other = run(tmp_path / "other", "--no-tsne", "--seed", "1", epochs=1)
    assert other["epochs"][0]["train_loss"] != metrics["epochs"][0]["train_loss"]


def test_resume_continues_where_it_stopped(base, tmp_path):
    _, metrics = base
    run(tmp_path / "first", "--no-tsne", epochs=1)
    resumed = run(tmp_path / "second", "--no-tsne", "--resume",
                  str(tmp_path / "first" / "final.npz"), epochs=2)
    # epoch 1 comes from the checkpoint, epoch 2 is trained again: as in the 2-epoch run
    assert numbers(resumed) == numbers(metrics)
    assert minidl.load(tmp_path / "second" / "final.npz")["epoch"] == 2


def test_modern_recipe_and_its_resume(tmp_path):
    first = run(tmp_path / "a", "--recipe", "modern", "--no-tsne", epochs=2)
    assert first["model"] == "lenet5-bn-relu"
    lrs = [e["lr"] for e in first["epochs"]]
    assert lrs[0] < 0.1 and lrs[1] > lrs[0]          # warm-up over the first epoch
    ckpt = minidl.load(tmp_path / "a" / "final.npz")
    net = lenet_mnist.LeNet5BN()
    net.load_state_dict(ckpt["model_state"])
    assert "bn1.running_mean" in ckpt["model_state"]
    more = run(tmp_path / "b", "--recipe", "modern", "--no-tsne", "--resume",
               str(tmp_path / "a" / "final.npz"), epochs=3)
    assert [e["epoch"] for e in more["epochs"]] == [1, 2, 3]
    assert more["epochs"][:2] == first["epochs"]


def test_early_stopping_keeps_best_on_validation(tmp_path):
    # a learning rate this high improves, then diverges: the best epoch is early
    metrics = lenet_mnist.main(["--synthetic", "--limit", "400", "--batch-size", "20",
                                "--lr", "0.5", "--epochs", "6", "--early-stopping", "2",
                                "--no-tsne", "--no-progress", "--out", str(tmp_path)])
    hist = metrics["epochs"]
    val_losses = [e["val_loss"] for e in hist]
    best = metrics["best"]
    assert metrics["sizes"] == {"train": 360, "val": 40, "test": 1000}
    assert best["criterion"] == "val_loss"
    assert best["epoch"] == 1 + int(np.argmin(val_losses))
    assert metrics["stopped_early"] and len(hist) == best["epoch"] + 2 < 6
    # the kept weights are the best epoch's (not the last), and the report is theirs
    ckpt = minidl.load(tmp_path / "best.npz")
    assert ckpt["epoch"] == best["epoch"]
    assert minidl.load(tmp_path / "final.npz")["epoch"] == len(hist)
    assert metrics["final"]["epoch"] == best["epoch"]
    assert metrics["final"]["test_top1"] == hist[best["epoch"] - 1]["eval_top1"]


def test_local_idx_files(tmp_path):
    """--data-dir with IDX files (not --synthetic): the real loading path."""
    data = tmp_path / "data"
    data.mkdir()
    for prefix, n, seed in (("train", 200, 1), ("t10k", 100, 2)):
        imgs, labels = _common.synthetic_digits(n, seed)
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(data / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    metrics = lenet_mnist.main(["--data-dir", str(data), "--epochs", "1", "--no-tsne",
                                "--no-progress", "--no-download", "--out", str(tmp_path / "o")])
    assert metrics["sizes"] == {"train": 200, "val": 0, "test": 100}
    assert str(data) in metrics["data"]


# ----------------------------------------------------------------------------- failures


def test_no_plots_needs_neither_matplotlib_nor_tqdm(tmp_path, monkeypatch):
    """--no-plots --no-progress: metrics and checkpoints only, and it runs where matplotlib,
    scikit-learn and tqdm are not installed (a bare GPU server)."""
    for module in ("matplotlib", "sklearn", "tqdm"):
        monkeypatch.setitem(sys.modules, module, None)    # import raises ImportError
    run(tmp_path, "--no-plots", epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "final.npz",
                                                          "metrics.json"]
    with pytest.raises(_common.ExampleError, match="needs matplotlib, scikit-learn"):
        run(tmp_path / "plots", epochs=1)                # plots asked for: a clear refusal


def test_help():
    proc = run_script("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    for option in ("--recipe", "--epochs", "--batch-size", "--lr", "--seed", "--device",
                   "--data-dir", "--out", "--early-stopping", "--resume", "--limit",
                   "--synthetic", "--tsne-samples", "--no-tsne", "--no-progress"):
        assert option in proc.stdout


def test_missing_data_and_no_download(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # pip cannot reach any index: the download fails, and says so
    proc = run_script("--out", str(tmp_path / "o"),
                      env={"MINIDL_DATA": str(empty), "PIP_NO_INDEX": "1",
                           "PIP_FIND_LINKS": ""})
    assert_clean_failure(proc, "MNIST", "could not find", "Downloading it failed")
    assert "lenet_mnist.py: error: MNIST: could not find the training set" in proc.stderr


def test_no_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "cache"))
    status = _common.cli(lenet_mnist.main, ["--data-dir", str(tmp_path), "--no-download",
                                            "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.startswith("example: error: MNIST: could not find the training set")
    assert "did not try to download" in err


def test_corrupted_data_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    imgs, labels = _common.synthetic_digits(50, 0)
    for prefix in ("train", "t10k"):
        write_idx(data / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx(data / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    path = data / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])        # truncated
    status = _common.cli(lenet_mnist.main, ["--data-dir", str(data), "--no-download",
                                            "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.startswith("example: error: ") and "train-images-idx3-ubyte" in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_script("--synthetic", "--out", str(blocker / "runs"))
    assert_clean_failure(proc, "output folder", str(blocker / "runs"))
    assert len(proc.stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_model(base, tmp_path, capsys):
    out, _ = base
    proc = run_script("--recipe", "modern", "--synthetic", "--resume", str(out / "final.npz"),
                      "--out", str(tmp_path / "o"))
    assert_clean_failure(proc, "'lenet5'", "'lenet5-bn-relu'", "--recipe")
    assert len(proc.stderr.strip().splitlines()) == 1
    # a bare state_dict, and a file that is no checkpoint at all
    minidl.save(models.lenet5().state_dict(), tmp_path / "bare.npz")
    for bad, words in ((tmp_path / "bare.npz", "not a training checkpoint"),
                       (out / "metrics.json", "not a minidl checkpoint"),
                       (tmp_path / "missing.npz", "no such file")):
        status = _common.cli(lenet_mnist.main, [*SMALL, "--resume", str(bad),
                                                "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert status == 1 and words in err and "Traceback" not in err, err


# ------------------------------------------------------------------------- the loop on a device


def seed_recipe_and_loader(n=180, batch_size=4, shuffle=True):
    """The seed recipe, a fresh LeNet-5 and a DeviceDataLoader over n random 32x32 images."""
    args = _common.fill_defaults(lenet_mnist.build_parser().parse_args([]),
                                 lenet_mnist.DEFAULTS["seed"])
    recipe = lenet_mnist.seed_recipe(args)
    minidl.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    loader = minidl.data.DeviceDataLoader(minidl.data.TensorDataset(x, y),
                                          batch_size=batch_size, shuffle=shuffle)
    net = recipe.build_model()
    return recipe, net, loader


def reference_train_epoch(model, loader, optimizer, recipe):
    """The loop as it was, fetching the loss and the accuracy at every step."""
    model.train()
    losses, accs = [], []
    for x, y in loader:
        optimizer.zero_grad()
        output = model(x)
        loss = recipe.loss(output, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        top1 = minidl.metrics.topk_indices(recipe.logits(output), 1)[:, 0] == y.numpy()
        accs.append(top1.mean())
    return float(np.mean(losses)), float(100 * np.mean(accs))


def reference_evaluate(model, loader):
    model.eval()
    loss_sum, preds, hit1, hit5, n = 0.0, [], 0, 0, 0
    with minidl.no_grad():
        for x, y in loader:
            output = model(x)
            loss_sum += minidl.nn.functional.cross_entropy(output, y, reduction="sum").item()
            ranked = minidl.metrics.topk_indices(output, 5)
            hit1 += int((ranked[:, 0] == y.numpy()).sum())
            hit5 += int((ranked == y.numpy()[:, None]).any(axis=1).sum())
            preds.append(ranked[:, 0])
            n += len(y)
    return loss_sum / n, 100.0 * hit1 / n, 100.0 * hit5 / n, np.concatenate(preds)


def test_loop_keeps_the_lecture_definitions():
    """Fetching every 20 steps gives exactly (bit for bit) what fetching every step gave:
    the mean of the batch losses, the mean of the batch accuracies, and for evaluation the
    loss and the top-1 / top-5 over all samples."""
    results = []
    for train in (reference_train_epoch, None):
        recipe, net, loader = seed_recipe_and_loader(n=90, batch_size=4)
        opt = recipe.make_optimizer(net)
        if train is None:
            results.append(_common.train_epoch(net, loader, opt, recipe, "cpu"))
        else:
            results.append(train(net, loader, opt, recipe))
    assert results[0] == results[1]
    test_loader = minidl.data.DeviceDataLoader(loader.dataset, batch_size=7)
    loss, top1, top5, pred = reference_evaluate(net, test_loader)
    ev = _common.evaluate(net, test_loader, "cpu")
    assert (ev.loss, ev.top1, ev.top5) == (loss, top1, top5)
    np.testing.assert_array_equal(ev.pred, pred)
    np.testing.assert_array_equal(ev.target, loader.arrays[1])


def test_ranks_and_predictions_match_topk_indices():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (500, 10)).astype(np.float32)   # many ties
    scores[:3] = np.nan                                          # rows of NaN, and
    scores[3:50, rng.integers(0, 10, 47)] = np.nan               # NaNs among numbers
    target = rng.integers(0, 10, 500)
    ranked = minidl.metrics.topk_indices(scores, 10)
    want_rank = np.argmax(ranked == target[:, None], axis=1)
    np.testing.assert_array_equal(_common.target_ranks(scores, target), want_rank)
    np.testing.assert_array_equal(_common.predicted_classes(scores), ranked[:, 0])
    ints = rng.integers(-3, 3, (50, 7))
    np.testing.assert_array_equal(_common.target_ranks(ints, target[:50] % 7),
                                  np.argmax(minidl.metrics.topk_indices(ints, 7)
                                            == (target[:50] % 7)[:, None], axis=1))


def test_to_host_keeps_dtypes_and_shapes():
    arrays = (np.float32(1.5), np.array(2.25), np.arange(6).reshape(2, 3),
              np.array([True, False]), np.array([], np.float32))
    out = _common.to_host(*arrays)
    for got, want in zip(out, arrays):
        assert got.dtype == np.asarray(want).dtype and got.shape == np.shape(want)
        np.testing.assert_array_equal(got, want)


class HostSyncs:
    """Counts the ways minidl copies a value to the host: backend.to_numpy (Tensor.numpy
    on the GPU refuses; tolist, __array__ and repr use to_numpy) and Tensor.item (float(),
    int(), bool() of a Tensor use it). A bare float(array) on a raw array is not counted."""

    def __init__(self, monkeypatch):
        self.count = 0
        to_numpy, item = minidl.backend.to_numpy, minidl.Tensor.item

        def counted(fn):
            def wrapper(*args, **kw):
                self.count += 1
                return fn(*args, **kw)
            return wrapper

        monkeypatch.setattr(minidl.backend, "to_numpy", counted(to_numpy))
        monkeypatch.setattr(minidl.Tensor, "item", counted(item))


@pytest.mark.parametrize("log_every", [20, 7])
def test_host_syncs_once_per_logging_interval(monkeypatch, log_every):
    recipe, net, loader = seed_recipe_and_loader(n=180, batch_size=4)   # 45 steps
    opt = recipe.make_optimizer(net)
    syncs = HostSyncs(monkeypatch)
    for progress in (False, True):
        syncs.count = 0
        _common.train_epoch(net, loader, opt, recipe, "cpu", progress=progress,
                            log_every=log_every)
        assert syncs.count <= math.ceil(len(loader) / log_every) + 1, (progress, syncs.count)
    syncs.count = 0
    _common.evaluate(net, minidl.data.DeviceDataLoader(loader.dataset, batch_size=10), "cpu",
                     progress=True)
    assert syncs.count == 1          # 18 batches, one transfer at the end


def test_run_gives_the_numbers_of_the_host_loader(tmp_path, monkeypatch):
    """The example on DeviceDataLoader prints and records what it did on DataLoader (batches
    made and transformed on the host, every epoch): the seed recipe, and the modern one
    with its random crops."""
    for recipe in ("seed", "modern"):
        args = ["--recipe", recipe, "--no-tsne", "--val-size", "30"]
        on_device = run(tmp_path / f"{recipe}-device", *args)
        with monkeypatch.context() as m:
            m.setattr(_common, "DeviceDataLoader",
                      lambda dataset, device, **kw: minidl.data.DataLoader(dataset, **kw))
            on_host = run(tmp_path / f"{recipe}-host", *args)
        assert numbers(on_device) == numbers(on_host)


def test_example_runs_on_the_device(device, tmp_path, capsys):
    metrics = lenet_mnist.main([*SMALL, "--recipe", "modern", "--epochs", "1",
                                "--tsne-samples", "40", "--device", device,
                                "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"device {device}, seed 0" in out and "Eval epoch 1: top-1 accuracy:" in out
    assert metrics["device"] == device and len(metrics["epochs"]) == 1
    epoch = metrics["epochs"][0]
    assert np.isfinite(epoch["train_loss"]) and 0 <= epoch["eval_top1"] <= 100
    for name in _common.OUTPUT_FILES:
        assert (tmp_path / name).is_file(), name
    assert np.array(metrics["final"]["confusion"]).sum() == 1000


# ------------------------------------------------------------------ nothing lost, nothing hangs


def test_second_run_into_the_same_out_is_refused(tmp_path, capsys):
    """A finished run is never replaced silently: refused (naming --overwrite, another
    --out, --resume), replaced with --overwrite, continued in place with --resume."""
    out = tmp_path / "run"
    run(out, "--no-plots", epochs=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status = _common.cli(lenet_mnist.main, [*SMALL, "--epochs", "1", "--no-plots",
                                            "--seed", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert f"the output folder {out} already holds a run" in err
    for hint in ("--overwrite", "another --out", f"--resume {out / 'final.npz'}"):
        assert hint in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before      # untouched
    # continued in place: allowed, the same run grows
    more = run(out, "--no-plots", "--resume", str(out / "final.npz"), epochs=2)
    assert [e["epoch"] for e in more["epochs"]] == [1, 2]
    # replaced when asked: the old outputs go, even those the new run does not write
    (out / "tsne.png").write_bytes(b"old figure")
    replaced = run(out, "--no-plots", "--overwrite", "--seed", "3", epochs=1)
    assert [e["epoch"] for e in replaced["epochs"]] == [1] and replaced["seed"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "final.npz", "metrics.json"]


def tiny_idx_folder(folder, n_train=60, n_test=30):
    folder.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        imgs, labels = _common.synthetic_digits(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return folder


def test_wrong_data_dir_fails_and_names_the_folders(tmp_path, monkeypatch, capsys):
    """A missing or empty --data-dir is an error even when minidl's cache holds MNIST (it
    used to train on the cache silently); no empty --out folder is left behind."""
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "cache"))
    tiny_idx_folder(tmp_path / "cache" / "MNIST")                  # a cached "MNIST"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs" / "o"
    for data_dir, words in ((tmp_path / "missing", ["does not exist"]),
                            (empty, ["does not hold the training set of MNIST",
                                     f"  - {empty / 'MNIST' / 'raw'}", f"  - {empty}",
                                     str(tmp_path / "cache" / "MNIST")])):
        status = _common.cli(lenet_mnist.main, ["--data-dir", str(data_dir), "--no-progress",
                                                "--out", str(out)])
        err = capsys.readouterr().err
        assert status == 1 and "Traceback" not in err, err
        assert err.startswith(f"example: error: --data-dir {data_dir} ")
        for word in words:
            assert word in err, err
        assert not (tmp_path / "runs").exists()     # the failed start left no folder


def test_not_found_names_the_option_typed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "cache"))
    status = _common.cli(lenet_mnist.main, ["--no-download", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 1 and "could not find the training set" in err
    assert "--no-download, so minidl did not try to download it" in err
    assert "download=False" not in err and "download=True" not in err
    assert not (tmp_path / "o").exists()


def interrupt_at_epoch(monkeypatch, epoch):
    """Make ``train_epoch`` raise KeyboardInterrupt (Ctrl-C) when epoch ``epoch`` starts."""
    real = _common.train_epoch
    calls = []

    def train_epoch(*args, **kw):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(_common, "train_epoch", train_epoch)


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    interrupt_at_epoch(monkeypatch, 1)
    out = tmp_path / "o"
    status = _common.cli(lenet_mnist.main, [*SMALL, "--no-plots", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 130
    assert "interrupted; no epoch had finished, so nothing was saved" in err
    assert "final.npz" not in err and "--resume" not in err
    assert not out.exists()                      # nothing written: no folder either


def test_ctrl_c_later_names_the_saved_epoch(tmp_path, monkeypatch, capsys):
    interrupt_at_epoch(monkeypatch, 2)
    out = tmp_path / "o"
    status = _common.cli(lenet_mnist.main, [*SMALL, "--no-plots", "--epochs", "3",
                                            "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 130
    assert (f"the last finished epoch, 1, is saved in {out / 'final.npz'}: continue with "
            f"--resume {out / 'final.npz'}") in err
    assert minidl.load(out / "final.npz")["epoch"] == 1


def resume_error(tmp_path, capsys, checkpoint, *extra):
    status = _common.cli(lenet_mnist.main, [*SMALL, "--no-plots", "--epochs", "3",
                                            "--resume", str(checkpoint), *extra,
                                            "--out", str(tmp_path / "resumed")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err
    assert err.startswith(f"example: error: cannot resume from {checkpoint}: "), err
    assert not (tmp_path / "resumed").exists()
    return err


def test_resume_on_other_data_is_refused(tmp_path, monkeypatch, capsys):
    """The checkpoint records its data (sizes, fingerprints): real-MNIST-like IDX files
    into --synthetic, or another --limit, are refused instead of mixing two histories."""
    data = tiny_idx_folder(tmp_path / "data")
    run_dir = tmp_path / "idx-run"
    lenet_mnist.main(["--data-dir", str(data), "--epochs", "1", "--no-plots", "--no-progress",
                      "--batch-size", "20", "--out", str(run_dir)])
    ckpt = minidl.load(run_dir / "final.npz")
    assert ckpt["data"]["name"] == "MNIST" and ckpt["data"]["train"]["size"] == 60
    err = resume_error(tmp_path, capsys, run_dir / "final.npz")          # into --synthetic
    assert "it was trained on other data" in err and "checkpoint: MNIST: 60 train" in err
    assert "this run:   synthetic digits: 300 train" in err
    syn = tmp_path / "syn"
    run(syn, "--no-plots", epochs=1)
    err = resume_error(tmp_path, capsys, syn / "final.npz", "--limit", "200")
    assert "other data" in err
    # the same data again is fine, and the histories continue
    again = run(tmp_path / "ok", "--no-plots", "--resume", str(syn / "final.npz"), epochs=2)
    assert [e["epoch"] for e in again["epochs"]] == [1, 2]


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-epoch")
    run(out, "--no-plots", epochs=1)
    return minidl.load(out / "final.npz")


def _edited(ckpt, edit):
    ckpt = copy.deepcopy(ckpt)
    edit(ckpt)
    return ckpt


DAMAGED = {
    "missing member": (lambda c: c.pop("history"), "the checkpoint lacks history"),
    "bad history": (lambda c: c["history"][0].update(train_loss="0.5"),
                    "epoch 1 of its history has train_loss = '0.5', expected a number"),
    "short history": (lambda c: c.update(history=[]), "its history holds 0 records"),
    "bad best": (lambda c: c["best"].update(epoch=7), "its best epoch is"),
    "no best": (lambda c: c.update(best=None), "its best epoch is None"),
    "bad epoch": (lambda c: c.update(epoch="1"), "its epoch is '1', expected an integer"),
    "string lr": (lambda c: c["optimizer"]["param_groups"][0].update(lr="0.01"),
                  "optimizer['param_groups'][0]['lr'] is '0.01', expected a finite number"),
    "negative lr": (lambda c: c["optimizer"]["param_groups"][0].update(lr=-1.0),
                    "param group 0 has lr = -1.0, expected >= 0"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_resume_validates_everything_it_restores(one_epoch_checkpoint, tmp_path, capsys, case):
    edit, words = DAMAGED[case]
    path = tmp_path / "edited.npz"
    minidl.save(_edited(one_epoch_checkpoint, edit), path)
    err = resume_error(tmp_path, capsys, path)
    assert words in err, err
    assert len(err.strip().splitlines()) == 1


def test_test_limit_evaluates_the_first_n_test_images(tmp_path):
    metrics = run(tmp_path, "--no-tsne", "--test-limit", "120", epochs=1)
    assert metrics["sizes"]["test"] == 120
    assert np.array(metrics["final"]["confusion"]).sum() == 120
    ckpt = minidl.load(tmp_path / "final.npz")
    assert ckpt["data"]["test"]["size"] == 120


def test_plain_progress_lines_when_output_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    """Piped or logged output (here: captured) gets plain lines on stdout, as often as
    PROGRESS_SECONDS allows (0 here: after every batch); --no-progress none."""
    assert _common.progress_mode(False) == "lines"          # capsys: not a terminal
    assert _common.progress_mode(True) is None
    monkeypatch.setattr(_common, "PROGRESS_SECONDS", 0.0)
    lenet_mnist.main(["--synthetic", "--limit", "300", "--batch-size", "50", "--epochs", "1",
                      "--no-plots", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("  epoch 1/1: batch ")]
    assert [ln.split(",")[0] for ln in lines] == [f"  epoch 1/1: batch {i}/6"
                                                    for i in range(1, 6)]
    assert "  testing: batch 1/10" in out
    run(tmp_path / "b", "--no-plots", epochs=1)                  # SMALL has --no-progress
    assert "batch 1/" not in capsys.readouterr().out
