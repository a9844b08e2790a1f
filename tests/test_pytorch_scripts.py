"""PyTorch scripts, run by minidl with their import lines changed and nothing else.

1. ``MNIST_SCRIPT``: the best-known PyTorch example, ``mnist/main.py`` of the
   pytorch/examples repository, rewritten here from its description (a CNN with Dropout,
   ``torch.flatten``, ``F.nll_loss``, Adadelta + StepLR, ``torch.backends.mps``,
   ``output.argmax(dim=1, keepdim=True)``, ``pred.eq(target.view_as(pred))``, torchvision's
   ``datasets.MNIST`` and ``transforms.Compose/ToTensor/Normalize``, argparse). Its import
   lines are minidl's (``import minidl as torch``, ``from minidl.vision import datasets,
   transforms``...); it runs on tiny synthetic MNIST IDX files, for a few steps, and its
   printed losses must fall.

2. ``PARITY_SCRIPT``: a training script written for PyTorch (data through
   ``torch.utils.data``, a small CNN with BatchNorm and GroupNorm, ``clip_grad_norm_``,
   OneCycleLR stepped every batch, f-string logging, top-k accuracy, a checkpoint saved,
   loaded and trained from), run twice from the same text, ``torch`` bound once to PyTorch and once to
   minidl. In float64 (``torch.set_default_dtype``), from the same initial weights,
   without dropout noise and without shuffling (the two libraries draw different random
   numbers), every number both runs log must agree to 1e-9.
"""
from __future__ import annotations

import re
import runpy
import sys

import numpy as np
import pytest
import torch

import minidl
from minidl.data import write_idx

# ----------------------------------------------------------------------------- 1. mnist/main.py

MNIST_IMPORTS = """\
import argparse
import minidl as torch
import minidl.nn as nn
import minidl.nn.functional as F
import minidl.optim as optim
from minidl.vision import datasets, transforms
from minidl.optim.lr_scheduler import StepLR
"""

# Below the imports: the example's text as PyTorch users know it, unchanged.
MNIST_SCRIPT = '''

class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
            if args.dry_run:
                break


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print('\\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\\n'.format(
        test_loss, correct, len(test_loader.dataset),
        100. * correct / len(test_loader.dataset)))


def main():
    # Training settings
    parser = argparse.ArgumentParser(description='PyTorch MNIST Example')
    parser.add_argument('--batch-size', type=int, default=64, metavar='N',
                        help='input batch size for training (default: 64)')
    parser.add_argument('--test-batch-size', type=int, default=1000, metavar='N',
                        help='input batch size for testing (default: 1000)')
    parser.add_argument('--epochs', type=int, default=14, metavar='N',
                        help='number of epochs to train (default: 14)')
    parser.add_argument('--lr', type=float, default=1.0, metavar='LR',
                        help='learning rate (default: 1.0)')
    parser.add_argument('--gamma', type=float, default=0.7, metavar='M',
                        help='Learning rate step gamma (default: 0.7)')
    parser.add_argument('--no-cuda', action='store_true', default=False,
                        help='disables CUDA training')
    parser.add_argument('--no-mps', action='store_true', default=False,
                        help='disables macOS GPU training')
    parser.add_argument('--dry-run', action='store_true', default=False,
                        help='quickly check a single pass')
    parser.add_argument('--seed', type=int, default=1, metavar='S',
                        help='random seed (default: 1)')
    parser.add_argument('--log-interval', type=int, default=10, metavar='N',
                        help='how many batches to wait before logging training status')
    parser.add_argument('--save-model', action='store_true', default=False,
                        help='For Saving the current Model')
    args = parser.parse_args()
    use_cuda = not args.no_cuda and torch.cuda.is_available()
    use_mps = not args.no_mps and torch.backends.mps.is_available()

    torch.manual_seed(args.seed)

    if use_cuda:
        device = torch.device("cuda")
    elif use_mps:
        device = torch.device("mps")
    else:
        device = torch.device("cpu")

    train_kwargs = {'batch_size': args.batch_size}
    test_kwargs = {'batch_size': args.test_batch_size}
    if use_cuda:
        cuda_kwargs = {'num_workers': 1,
                       'pin_memory': True,
                       'shuffle': True}
        train_kwargs.update(cuda_kwargs)
        test_kwargs.update(cuda_kwargs)

    transform=transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,))
        ])
    dataset1 = datasets.MNIST('../data', train=True, download=True,
                       transform=transform)
    dataset2 = datasets.MNIST('../data', train=False,
                       transform=transform)
    train_loader = torch.utils.data.DataLoader(dataset1,**train_kwargs)
    test_loader = torch.utils.data.DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)

    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        train(args, model, device, train_loader, optimizer, epoch)
        test(model, device, test_loader)
        scheduler.step()

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")


if __name__ == '__main__':
    main()
'''


def synthetic_digits(n, seed):
    """``n`` 28x28 uint8 "digits" a CNN can learn in a few steps: digit k is a bright
    6x6 square at one of ten places (row k // 5, column k % 5 of a grid), on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 2 + 12 * (k // 5), 1 + 5 * (k % 5)
        images[i, r:r + 6, c:c + 5] = 255
    return images, labels


def write_mnist(root, n_train=192, n_test=64):
    """torchvision's layout, ``root/MNIST/raw/``, with the four IDX files."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def run_script(path, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path)] + argv)
    runpy.run_path(str(path), run_name="__main__")
    return capsys.readouterr().out


def test_pytorch_examples_mnist_runs_with_only_its_imports_changed(tmp_path, monkeypatch,
                                                                  capsys):
    write_mnist(tmp_path / "data")
    work = tmp_path / "work"                      # the script reads '../data', as upstream
    work.mkdir()
    script = work / "main.py"
    script.write_text(MNIST_IMPORTS + MNIST_SCRIPT)
    monkeypatch.chdir(work)
    out = run_script(script, ["--epochs", "2", "--batch-size", "16", "--test-batch-size", "32",
                              "--log-interval", "1", "--save-model"], monkeypatch, capsys)
    losses = [float(v) for v in re.findall(r"Loss: ([0-9.]+)", out)]
    assert len(losses) == 2 * 12, out             # 192 / 16 = 12 batches an epoch, each logged
    assert all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:3]), losses
    tests = re.findall(r"Test set: Average loss: ([0-9.]+), Accuracy: (\d+)/64", out)
    assert len(tests) == 2, out
    assert float(tests[1][0]) < float(tests[0][0]) or int(tests[1][1]) >= 48, tests
    assert "Train Epoch: 2 [176/192 (92%)]" in out
    state = minidl.load(work / "mnist_cnn.pt")  # --save-model: a minidl checkpoint
    assert state["fc2.weight"].shape == (10, 128)


def test_mnist_script_differs_from_the_example_only_in_imports():
    """The PyTorch original's import lines, and nothing else, are what the test changed."""
    torch_imports = ("import argparse\nimport torch\nimport torch.nn as nn\n"
                     "import torch.nn.functional as F\nimport torch.optim as optim\n"
                     "from torchvision import datasets, transforms\n"
                     "from torch.optim.lr_scheduler import StepLR\n")
    ours = MNIST_IMPORTS.splitlines()
    theirs = torch_imports.splitlines()
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.replace("minidl.vision", "torchvision").replace("minidl as torch", "torch") \
            .replace("minidl.", "torch.") == b
    assert "minidl" not in MNIST_SCRIPT


# ----------------------------------------------------------------------------- 2. parity

PARITY_SCRIPT = '''
# A training script written for PyTorch. ``torch`` is bound by whoever runs it; INIT(name,
# shape) gives the initial weights, X/Y the data, WORKDIR a folder, log(...) a printer.
torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.deterministic = True
device = torch.device("cuda" if torch.cuda.is_available() and USE_CUDA else "cpu")

nn = torch.nn
F = torch.nn.functional
DataLoader = torch.utils.data.DataLoader
TensorDataset = torch.utils.data.TensorDataset
Subset = torch.utils.data.Subset


class SmallCNN(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.GroupNorm(4, 16)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(16 * 3 * 3, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x)), inplace=True))
        x = torch.flatten(x, 1)
        return self.fc(self.dropout(x))


def init_weights(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.tensor(INIT(name, tuple(p.shape))))


def evaluate(model, loader):
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            top2 = logits.topk(2, dim=1).indices
            correct += (top2 == y.view(-1, 1)).any(dim=1).sum().item()
            seen += x.size(0)
    return total_loss / seen, correct / seen


dataset = TensorDataset(torch.tensor(X), torch.tensor(Y))
train_set = Subset(dataset, range(0, 48))
val_set = Subset(dataset, range(48, len(dataset)))
train_loader = DataLoader(train_set, batch_size=12, shuffle=False)
val_loader = DataLoader(val_set, batch_size=16)

model = SmallCNN().to(device)
init_weights(model)
criterion = nn.CrossEntropyLoss(label_smoothing=0.05)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
epochs = 3
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, epochs=epochs,
                                                steps_per_epoch=len(train_loader))

log(f"params {sum(p.numel() for p in model.parameters())} shape {tuple(next(iter(train_loader))[0].shape)}")
for epoch in range(epochs):
    model.train()
    running = 0.0
    for step, (x, y) in enumerate(train_loader):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=2.0)
        optimizer.step()
        scheduler.step()
        running += loss.item() * x.size(0)
        log(f"epoch {epoch} step {step} loss {loss:.10f} grad_norm {grad_norm:.10f} "
            f"lr {scheduler.get_last_lr()[0]:.10f}")
    val_loss, val_acc = evaluate(model, val_loader)
    log(f"epoch {epoch} train_loss {running / len(train_set):.10f} "
        f"val_loss {val_loss:.10f} val_acc {val_acc:.4f} "
        f"bn1_mean {model.bn1.running_mean.sum().item():.10f}")

path = WORKDIR + "/checkpoint.pt"
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epochs}, path)

restored = SmallCNN().to(device)
ckpt = torch.load(path)
restored.load_state_dict(ckpt["model"])
opt2 = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
opt2.load_state_dict(ckpt["optimizer"])
for group in opt2.param_groups:        # the schedule ended at lr 0: fine-tune at a new one
    group["lr"] = 0.01
val_loss, val_acc = evaluate(restored, val_loader)
log(f"restored epoch {ckpt['epoch']} val_loss {val_loss:.10f} val_acc {val_acc:.4f}")

restored.train()                       # resume: one more step from the checkpoint
x, y = next(iter(train_loader))
opt2.zero_grad()
loss = criterion(restored(x.to(device)), y.to(device))
loss.backward()
opt2.step()
log(f"resumed loss {loss:.10f} conv1_sq {(restored.conv1.weight ** 2).sum().item():.10f} "
    f"momentum_groups {len(opt2.state_dict()['param_groups'])}")
'''


def parity_data(n=64, seed=0):
    """(N, 1, 12, 12) images of four classes (a bright quadrant) on noise, labels (N,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, 1, 12, 12))
    for i, k in enumerate(y):
        r, c = 6 * (k // 2), 6 * (k % 2)
        x[i, 0, r:r + 6, c:c + 6] += 0.6
    return x, y.astype(np.int64)


def init_values(name, shape):
    """The same initial weights for both libraries: a generator seeded by the name."""
    rng = np.random.default_rng(sum(map(ord, name)))
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    if name.endswith("bn1.weight") or name.endswith("bn2.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)


def run_parity(lib, workdir, use_cuda=False):
    lines = []
    x, y = parity_data()
    namespace = {"torch": lib, "INIT": init_values, "X": x, "Y": y, "WORKDIR": str(workdir),
                 "USE_CUDA": use_cuda, "log": lines.append}
    try:
        exec(compile(PARITY_SCRIPT, f"<parity script, torch={lib.__name__}>", "exec"),
             namespace)
    finally:
        lib.set_default_dtype(lib.float32)
    return lines


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def test_a_pytorch_training_script_logs_the_same_numbers_in_both_libraries(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "minidl").mkdir()
    expected = run_parity(torch, tmp_path / "torch")
    got = run_parity(minidl, tmp_path / "minidl")
    assert minidl.get_default_dtype() == minidl.float32           # restored
    assert len(got) == len(expected) == 1 + 3 * 4 + 3 + 2
    for line_md, line_th in zip(got, expected):
        words_md, words_th = NUMBER.sub("#", line_md), NUMBER.sub("#", line_th)
        assert words_md == words_th, (line_md, line_th)
        a = np.array(NUMBER.findall(line_md), dtype=float)
        b = np.array(NUMBER.findall(line_th), dtype=float)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{line_md}\n{line_th}")
    losses = [float(re.search(r"loss ([0-9.]+)", s).group(1)) for s in got if " step " in s]
    assert losses[-1] < 0.5 * losses[0]                            # it did learn
    assert (tmp_path / "minidl" / "checkpoint.pt").read_bytes()[:2] == b"PK"  # an .npz (zip)


@pytest.mark.gpu
def test_parity_script_on_the_gpu(tmp_path, cuda_device):
    """The same script on minidl's GPU: the CPU run's numbers (float64, 1e-7)."""
    cpu = run_parity(minidl, tmp_path)
    gpu = run_parity(minidl, tmp_path, use_cuda=True)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(np.array(NUMBER.findall(a), dtype=float),
                                   np.array(NUMBER.findall(b), dtype=float), rtol=1e-7,
                                   atol=1e-9, err_msg=f"{a}\n{b}")
