"""End-to-end parity: a small CNN trained 20 steps in float64 with minidl and with PyTorch,
from the same weights on the same batch, gives the same losses, weights and running
statistics (to 1e-8)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minidl
import minidl.optim
from minidl import nn

STEPS = 20


def build(nn_):
    return nn_.Sequential(
        nn_.Conv2d(3, 6, kernel_size=3, padding=1),
        nn_.BatchNorm2d(6),
        nn_.ReLU(inplace=True),
        nn_.MaxPool2d(kernel_size=2, stride=2),
        nn_.Conv2d(6, 8, kernel_size=(3, 2), stride=(1, 2)),
        nn_.BatchNorm2d(8),
        nn_.ReLU(),
        nn_.Dropout(0.5),
        nn_.Flatten(),
        nn_.Linear(8 * 3 * 2, 16),
        nn_.Tanh(),
        nn_.Linear(16, 5))


def optimizer(module, params):
    if module is torch:
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return minidl.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.mark.parametrize("opt_name", ["SGD-nesterov", "AdamW"])
def test_cnn_training_matches_torch(opt_name):
    rng = np.random.default_rng(42)
    x = rng.standard_normal((8, 3, 10, 10))
    y = rng.integers(0, 5, size=8)

    t_net = build(torch.nn).double()
    md_net = build(nn).double()
    md_net.load_state_dict({k: v.numpy() for k, v in t_net.state_dict().items()})
    for net in (t_net, md_net):
        net.train()
        net[7].eval()  # the dropout layer is present but off
    if opt_name == "AdamW":
        t_opt = torch.optim.AdamW(t_net.parameters(), lr=0.01, weight_decay=0.05)
        md_opt = minidl.optim.AdamW(md_net.parameters(), lr=0.01, weight_decay=0.05)
    else:
        t_opt = optimizer(torch, t_net.parameters())
        md_opt = optimizer(minidl, md_net.parameters())
    t_loss_fn, md_loss_fn = torch.nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    t_x, t_y = torch.tensor(x), torch.tensor(y)
    md_x, md_y = minidl.tensor(x), minidl.tensor(y)

    t_losses, md_losses = [], []
    for _ in range(STEPS):
        t_opt.zero_grad()
        loss = t_loss_fn(t_net(t_x), t_y)
        loss.backward()
        t_opt.step()
        t_losses.append(loss.item())

        md_opt.zero_grad()
        loss = md_loss_fn(md_net(md_x), md_y)
        loss.backward()
        md_opt.step()
        md_losses.append(loss.item())

    np.testing.assert_allclose(md_losses, t_losses, rtol=1e-8, atol=1e-8)
    assert t_losses[-1] < 0.5 * t_losses[0]  # it did learn something
    t_state = t_net.state_dict()
    md_state = md_net.state_dict()
    assert list(md_state) == list(t_state)
    for k, v in t_state.items():
        np.testing.assert_allclose(md_state[k].numpy(), v.numpy(), rtol=1e-8, atol=1e-8,
                                   err_msg=k)
    assert md_state["1.num_batches_tracked"].item() == STEPS

    # evaluation mode (running statistics) agrees too
    t_net.eval()
    md_net.eval()
    with torch.no_grad(), minidl.no_grad():
        np.testing.assert_allclose(md_net(md_x).numpy(), t_net(t_x).numpy(), rtol=1e-8,
                                   atol=1e-8)
