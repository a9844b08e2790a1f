"""What higher-order gradients are for, each against PyTorch in float64: a Hessian-vector
product (an MLP and a small CNN), a WGAN-GP gradient penalty trained for a few steps,
Newton's method, and one MAML inner step with its outer gradient.

Written once with a module argument ``m`` (``minidl`` or ``torch``) where the two APIs
agree, so the test reads as the PyTorch code it ports.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl
import minidl.nn.functional as MF
from minidl import autograd, nn

TOL = dict(rtol=1e-9, atol=1e-10)

API = {  # (module, functional, autograd.grad, tensor factory)
    "minidl": (minidl, MF, autograd.grad, lambda a, **kw: minidl.tensor(a, **kw)),
    "torch": (torch, TF, torch.autograd.grad, lambda a, **kw: torch.tensor(a, **kw)),
}


def host(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


def assert_same(md, tt, what):
    for i, (a, b) in enumerate(zip(md, tt)):
        np.testing.assert_allclose(host(a), host(b), err_msg=f"{what} {i}", **TOL)


def params_from(rng, shapes):
    return [rng.standard_normal(s) * 0.5 for s in shapes]


# ----------------------------------------------------------------------------- Hessian-vector product


def mlp_loss(api, params, x, y):
    m, F, _, T = API[api]
    w1, b1, w2, b2 = params
    h = F.tanh(F.linear(T(x), w1, b1))
    return F.cross_entropy(F.linear(h, w2, b2), T(y))


def cnn_loss(api, params, x, y):
    m, F, _, T = API[api]
    w1, b1, w2, b2 = params
    h = F.max_pool2d(F.tanh(F.conv2d(T(x), w1, b1, padding=1)), 2)
    return F.cross_entropy(F.linear(h.reshape(h.shape[0], -1), w2, b2), T(y))


def hvp(api, loss_fn, arrays, v, x, y):
    """H v for the loss's Hessian H with respect to the parameters: the gradient of g . v."""
    m, F, grad, T = API[api]
    params = [T(a, requires_grad=True) for a in arrays]
    gs = grad(loss_fn(api, params, x, y), params, create_graph=True)
    gv = sum((g * T(u)).sum() for g, u in zip(gs, v))
    return grad(gv, params), gs


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_hessian_vector_product_matches_pytorch_and_finite_differences(model):
    rng = np.random.default_rng(0)
    if model == "mlp":
        loss_fn = mlp_loss
        shapes = [(6, 4), (6,), (3, 6), (3,)]
        x = rng.standard_normal((5, 4))
    else:
        loss_fn = cnn_loss
        shapes = [(3, 2, 3, 3), (3,), (4, 3 * 3 * 3), (4,)]
        x = rng.standard_normal((2, 2, 6, 6))
    y = rng.integers(0, shapes[-1][0], size=x.shape[0])
    arrays = params_from(rng, shapes)
    v = [rng.standard_normal(s) for s in shapes]
    md_hv, _ = hvp("minidl", loss_fn, arrays, v, x, y)
    t_hv, _ = hvp("torch", loss_fn, arrays, v, x, y)
    assert_same(md_hv, t_hv, "Hv")

    # H v = (g(p + e v) - g(p - e v)) / 2e, from first derivatives alone
    eps = 1e-6

    def first(shift):
        ps = [minidl.tensor(a + shift * u, requires_grad=True) for a, u in zip(arrays, v)]
        return autograd.grad(loss_fn("minidl", ps, x, y), ps)

    for k, (hv, gp, gm) in enumerate(zip(md_hv, first(eps), first(-eps))):
        np.testing.assert_allclose(hv.numpy(), (gp.numpy() - gm.numpy()) / (2 * eps),
                                   rtol=1e-5, atol=1e-7, err_msg=f"Hv {k} vs differences")


# ----------------------------------------------------------------------------- WGAN-GP


def critic(nn_):
    return nn_.Sequential(
        nn_.Conv2d(1, 4, kernel_size=3, padding=1),
        nn_.LeakyReLU(0.2),
        nn_.AvgPool2d(2),
        nn_.Conv2d(4, 3, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1)),
        nn_.Tanh(),
        nn_.Flatten(),
        nn_.Linear(3 * 1 * 2, 1))


def wgan_gp_steps(api, net, opt, real, fake, alphas, lam=10.0):
    """Train the critic for len(alphas) steps: D(fake) - D(real) + lam (|grad_x D(x_hat)| - 1)^2."""
    m, F, grad, T = API[api]
    losses = []
    for alpha in alphas:
        a = T(alpha)
        x_hat = (a * T(real) + (1 - a) * T(fake)).detach().requires_grad_(True)
        (g,) = grad(net(x_hat).sum(), x_hat, create_graph=True)
        norms = (g * g).sum(dim=(1, 2, 3)).sqrt()
        penalty = ((norms - 1) ** 2).mean()
        loss = net(T(fake)).mean() - net(T(real)).mean() + lam * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_wgan_gp_critic_training_matches_pytorch():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((4, 1, 4, 6))
    fake = rng.standard_normal((4, 1, 4, 6)) * 0.5
    alphas = [rng.uniform(size=(4, 1, 1, 1)) for _ in range(3)]
    t_net = critic(torch.nn).double()
    md_net = critic(nn).double()
    md_net.load_state_dict({k: v.numpy() for k, v in t_net.state_dict().items()})
    t_opt = torch.optim.SGD(t_net.parameters(), lr=0.02, momentum=0.9)
    md_opt = minidl.optim.SGD(md_net.parameters(), lr=0.02, momentum=0.9)
    md_losses = wgan_gp_steps("minidl", md_net, md_opt, real, fake, alphas)
    t_losses = wgan_gp_steps("torch", t_net, t_opt, real, fake, alphas)
    np.testing.assert_allclose(md_losses, t_losses, **TOL)
    t_state = t_net.state_dict()
    for k, v in md_net.state_dict().items():
        np.testing.assert_allclose(host(v), t_state[k].numpy(), err_msg=k, **TOL)
    assert len(set(np.round(md_losses, 6))) == 3  # the critic really moved


# ----------------------------------------------------------------------------- Newton's method


def rosenbrock(p):
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def newton(api, start, steps):
    """p <- p - H^-1 g, H built row by row as the gradient of g . e_i."""
    m, F, grad, T = API[api]
    p = T(np.array(start), requires_grad=True)
    path = [np.array(start)]
    for _ in range(steps):
        (g,) = grad(rosenbrock(p), p, create_graph=True)
        rows = [host(grad(g, p, T(np.eye(2)[i]), retain_graph=True)[0]) for i in range(2)]
        step = np.linalg.solve(np.array(rows), host(g))
        p = T(host(p) - step, requires_grad=True)
        path.append(host(p).copy())
    return np.array(path)


def test_newtons_method_matches_pytorch_and_converges():
    md_path = newton("minidl", [-1.2, 1.0], 7)
    t_path = newton("torch", [-1.2, 1.0], 7)
    np.testing.assert_allclose(md_path, t_path, **TOL)
    np.testing.assert_allclose(md_path[-1], [1.0, 1.0], atol=1e-10)


# ----------------------------------------------------------------------------- MAML


def regressor(api, params, x):
    m, F, _, T = API[api]
    w1, b1, w2, b2 = params
    return F.linear(F.tanh(F.linear(x, w1, b1)), w2, b2)


def maml_outer_gradient(api, arrays, support, query, inner_lr=0.1):
    """One inner SGD step on the support set, kept in the graph (create_graph), then the
    query loss of the adapted weights differentiated back to the original ones."""
    m, F, grad, T = API[api]
    params = [T(a, requires_grad=True) for a in arrays]
    (xs, ys), (xq, yq) = [(T(a), T(b)) for a, b in (support, query)]
    inner = F.mse_loss(regressor(api, params, xs), ys)
    gs = grad(inner, params, create_graph=True)
    adapted = [p - inner_lr * g for p, g in zip(params, gs)]
    outer = F.mse_loss(regressor(api, adapted, xq), yq)
    outer.backward()
    return outer.item(), [p.grad for p in params]


def test_maml_inner_step_and_outer_gradient_match_pytorch():
    rng = np.random.default_rng(2)
    arrays = params_from(rng, [(5, 2), (5,), (1, 5), (1,)])
    support = (rng.standard_normal((6, 2)), rng.standard_normal((6, 1)))
    query = (rng.standard_normal((4, 2)), rng.standard_normal((4, 1)))
    md_loss, md_grads = maml_outer_gradient("minidl", arrays, support, query)
    t_loss, t_grads = maml_outer_gradient("torch", arrays, support, query)
    np.testing.assert_allclose(md_loss, t_loss, **TOL)
    assert_same(md_grads, t_grads, "outer gradient")
    # the second-order term matters: first-order MAML (gradients detached) differs
    params = [minidl.tensor(a, requires_grad=True) for a in arrays]
    xs, ys = (minidl.tensor(a) for a in support)
    gs = autograd.grad(MF.mse_loss(regressor("minidl", params, xs), ys), params)
    adapted = [p - 0.1 * g for p, g in zip(params, gs)]
    MF.mse_loss(regressor("minidl", adapted, minidl.tensor(query[0])),
                minidl.tensor(query[1])).backward()
    assert not np.allclose(params[0].grad.numpy(), md_grads[0].numpy(), rtol=1e-6)
