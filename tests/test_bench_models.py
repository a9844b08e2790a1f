"""The benchmark scripts run: ``bench_models.py --quick``, ``profile_layers.py`` and
``bench_lenet.py --epoch --rss`` on tiny inputs (smoke tests: the scripts keep working as
the models and the API change; they time nothing that a test asserts)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv, **env):
    """``python argv...`` in benchmarks/ with the tree on PYTHONPATH (and ``env`` added);
    its completed process, after checking that it succeeded."""
    env = dict(os.environ, **env,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, *argv], cwd=os.path.join(ROOT, "benchmarks"),
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bench_models_quick_runs_and_prints_the_ratios():
    out = _run(["bench_models.py", "--quick", "--threads", "1"])
    lines = out.stdout.splitlines()
    assert any(line.startswith("  training step") and "ratio" in line for line in lines)
    assert any(line.startswith("  evaluation") and "ratio" in line for line in lines)
    assert "BLAS:" in lines[0] and "threads used:" in lines[-1]


def test_profile_layers_runs_and_sums_every_layer_call():
    """``benchmarks/profile_layers.py`` on ResNet-18 at batch 2: one row per layer kind,
    every call counted (14 3x3 stride-1, 3 3x3 stride-2 and 3 1x1 shortcut convolutions,
    20 batch norms), the layers' sum, the whole step and the rest; the same with
    ``--eval``."""
    for extra in ([], ["--eval"]):
        out = _run(["profile_layers.py", "--models", "resnet18", "--batch", "2",
                    "--repeats", "1", "--threads", "1", *extra])
        rows = {line[2:26].strip(): line[26:].split() for line in out.stdout.splitlines()
                if line.startswith("  ")}
        assert rows["conv 3x3 s1"][0] == "14" and rows["conv 3x3 s2"][0] == "3"
        assert rows["conv 1x1 s2"][0] == "3" and rows["batch norm"][0] == "20"
        assert {"layers alone", "whole step", "the rest (step - layers)"} <= set(rows)
        assert ("evaluation forward" in out.stdout) == bool(extra)
        assert "threads used:" in out.stdout.splitlines()[-1]


def test_bench_lenet_epoch_with_rss_runs(tmp_path):
    """``benchmarks/bench_lenet.py --epoch --rss`` on a small synthetic MNIST in minidl's
    cache: both sides' epoch times and ratios, then each side's peak RSS from a process of
    its own (the minidl one never imports PyTorch)."""
    from test_pytorch_scripts import synthetic_digits, write_idx  # noqa: PLC0415
    cache = tmp_path / "MNIST"
    cache.mkdir()
    for prefix, n, seed in (("train", 200, 0), ("t10k", 100, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(cache / f"{prefix}-images-idx3-ubyte", images)
        write_idx(cache / f"{prefix}-labels-idx1-ubyte", labels)
    out = _run(["bench_lenet.py", "--epoch", "--repeats", "1", "--limit", "200", "--rss",
                "--threads", "1"], MINIDL_DATA=str(tmp_path))
    lines = out.stdout.splitlines()
    assert any(line.startswith("  train  minidl") and "ratio" in line for line in lines)
    assert any(line.startswith("  eval   minidl") and "ratio" in line for line in lines)
    rss = [line for line in lines if "peak RSS of a process" in line]
    assert len(rss) == 1
    words = rss[0].split()
    minidl_mb, torch_mb = float(words[words.index("minidl") + 1]), \
        float(words[words.index("torch") + 1])
    assert minidl_mb > 50 and torch_mb > 50          # a Python process with its library
    child = _run(["-c", "import sys, runpy; sys.argv = ['bench_lenet.py', '--child', "
                  "'minidl', '--limit', '200', '--threads', '1']; runpy.run_path("
                  "'bench_lenet.py', run_name='__main__'); print('torch' in sys.modules)"],
                 MINIDL_DATA=str(tmp_path))
    assert child.stdout.split()[-1] == "False"
