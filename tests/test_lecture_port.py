"""The lecture's PyTorch code, run with ``torch`` replaced by minidl.

The LeNet class, train_epoch / train_batch / compute_top1_acc / eval_batch / eval and the
AlexNet class are copied from the lecture text unchanged except for the imports
(``import minidl as torch; from minidl import nn``). The DataLoader is replaced by a list
of (x, y) batches of a tiny synthetic dataset, since minidl.data comes later.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import minidl
import minidl.nn
import minidl.optim

torch = minidl  # the lecture's `import torch`, pointing at minidl
from minidl import nn  # noqa: E402

# Globals the lecture's functions read.
device = ("cuda" if torch.cuda.is_available() else "cpu")
epoch = 0


@pytest.fixture(autouse=True)
def lecture_names(monkeypatch):
    """Top-level names the lecture uses that minidl/__init__.py may not export yet.

    Each is patched in only when missing, so once the package exports them this fixture
    does nothing; ``PATCHED`` records what it had to add (reported by the last test).
    """
    F = minidl.nn.functional
    for name in ("tanh", "softmax", "sigmoid", "relu", "log_softmax"):
        if not hasattr(minidl, name):
            monkeypatch.setattr(minidl, name, getattr(F, name), raising=False)
            PATCHED.add(name)
    try:
        minidl.mean(minidl.tensor([True, False]), dtype=minidl.float)
    except TypeError:
        original = minidl.mean

        def mean(input, dim=None, keepdim=False, *, dtype=None):  # noqa: A002
            if dtype is not None:
                input = input.to(dtype)
            return original(input, dim, keepdim)
        monkeypatch.setattr(minidl, "mean", mean)
        PATCHED.add("mean(..., dtype=)")
    for sub in ("nn", "optim"):  # imported above, so they are attributes of the package
        assert hasattr(minidl, sub)


PATCHED: set[str] = set()


# ----------------------------------------------------------------------------- lecture code
# (verbatim from the slides)

class LeNet(nn.Module):
    def __init__(self):
        super(LeNet, self).__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, stride=1, padding=0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, stride=1, padding=0)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        # Non-parametric
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        out = torch.tanh(self.conv1(x))
        out = self.max_pool(out)
        out = torch.tanh(self.conv2(out))
        out = self.max_pool(out)
        out = out.reshape(out.size(0), -1)
        out = torch.tanh(self.fc1(out))
        out = torch.tanh(self.fc2(out))
        out = self.fc3(out)
        return out


def train_epoch(dataloader, net, optimizer, loss_fn):
    epoch_loss = list()
    epoch_top1_acc = list()
    net.train()
    for x, y in dataloader:
        batch_loss, batch_top1_acc = train_batch(x, y, net, optimizer, loss_fn)
        epoch_loss.append(batch_loss)
        epoch_top1_acc.append(batch_top1_acc)
    current_loss = np.mean(epoch_loss)
    current_top1_acc = 100 * np.mean(epoch_top1_acc)
    print(f"Train epoch {epoch+1}: loss: {current_loss:.4f} ; top-1 accuracy: {current_top1_acc:.2f}%")


def train_batch(x, y, net, optimizer, loss_function):
    x, y = x.to(device), y.to(device)
    optimizer.zero_grad() # zero the gradient buffers
    output = net(x)
    loss = loss_function(output, y)
    loss.backward()
    optimizer.step()
    top1_acc = compute_top1_acc(output, y)
    return loss.item(), top1_acc.item()


def compute_top1_acc(prediction, ground_truth):
    # prediction (B, N), ground_truth (B)
    best_prediction = torch.argmax(prediction, dim=1)
    return torch.mean(best_prediction == ground_truth, dtype=torch.float)


def eval_batch(x, y, net):
    x, y = x.to(device), y.to(device)
    output = net(x)
    top1_acc = compute_top1_acc(output, y)
    return top1_acc.item()


def eval(dataloader, net):  # noqa: A001 - the lecture's name
    top1_acc = list()
    net.eval()
    with torch.no_grad():
        for x, y in dataloader:
            batch_top1_acc = eval_batch(x, y, net)
            top1_acc.append(batch_top1_acc)
    top1_acc = 100 * np.mean(top1_acc)
    print(f"Eval epoch {epoch+1}: top-1 accuracy: {top1_acc:.2f}%")


class AlexNet(nn.Module):
    def __init__(self, num_classes=10):
        super(AlexNet, self).__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2),
            nn.BatchNorm2d(96),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.conv2 = nn.Sequential(
            nn.Conv2d(96, 256, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.conv3 = nn.Sequential(
            nn.Conv2d(256, 384, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(384),
            nn.ReLU())
        self.conv4 = nn.Sequential(
            nn.Conv2d(384, 384, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(384),
            nn.ReLU())
        self.conv5 = nn.Sequential(
            nn.Conv2d(384, 256, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.fc1 = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(9216, 4096),
            nn.ReLU())
        self.fc2 = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU())
        self.fc3 = nn.Sequential(
            nn.Linear(4096, num_classes))

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out)
        out = self.conv3(out)
        out = self.conv4(out)
        out = self.conv5(out)
        out = out.reshape(out.size(0), -1)
        out = self.fc1(out)
        out = self.fc2(out)
        out = self.fc3(out)
        return out


# ----------------------------------------------------------------------------- tests


def synthetic_batches(n_batches, batch_size, seed):
    """Tiny 'digits': each class is a fixed random 32x32 pattern plus noise."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(0).standard_normal((10, 1, 32, 32))
    batches = []
    for _ in range(n_batches):
        y = rng.integers(0, 10, batch_size)
        x = templates[y] + 0.5 * rng.standard_normal((batch_size, 1, 32, 32))
        batches.append((torch.tensor(x.astype(np.float32)), torch.tensor(y)))
    return batches


def test_lenet_parameter_counts():
    net = LeNet()
    counts = [sum(p.numel() for p in m.parameters())
              for m in (net.conv1, net.conv2, net.fc1, net.fc2, net.fc3)]
    assert counts == [156, 2_416, 48_120, 10_164, 850]
    assert sum(p.numel() for p in net.parameters()) == 61_706


def test_model_analysis_snippet():
    net = LeNet()
    x = torch.randn(1, 1, 32, 32)
    o = net(x)  # (1, 10)
    hat_y = torch.softmax(o, dim=1)
    assert o.shape == (1, 10) and hat_y.shape == (1, 10)
    assert abs(hat_y.sum().item() - 1.0) < 1e-5


def test_lecture_training_loop_runs_and_learns(capsys):
    global epoch
    torch.manual_seed(0)
    num_epochs = 2
    learning_rate = 0.01
    train_loader = synthetic_batches(8, 25, seed=1)
    test_loader = synthetic_batches(2, 25, seed=2)

    net = LeNet().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()

    for epoch in range(num_epochs):
        train_epoch(train_loader, net, optimizer, loss_fn)
        eval(test_loader, net)

    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"Train epoch \d+: loss: ([0-9.]+)", out)]
    accs = [float(v) for v in re.findall(r"Eval epoch \d+: top-1 accuracy: ([0-9.]+)%", out)]
    assert len(losses) == 2 and len(accs) == 2, out
    assert losses[1] < losses[0], out
    assert "Train epoch 1:" in out and "Eval epoch 2:" in out
    assert not net.training  # eval() left it in evaluation mode


def test_alexnet_port():
    net = AlexNet()
    assert sum(p.numel() for p in net.parameters()) == 58_325_066
    assert sum(p.numel() for p in net.conv1[0].parameters()) == 34_944
    assert sum(p.numel() for p in net.fc1[1].parameters()) == 37_752_832
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 10)


def test_report_patched_names():
    """Runs last in this file: lists what the fixture had to add to ``minidl`` (empty once
    minidl/__init__.py exports the lecture's names)."""
    print("lecture names patched into minidl:", sorted(PATCHED) or "none")
