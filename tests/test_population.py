"""nbutils.population against PyTorch's own layers and hand-written computations."""

import math

import pytest
import torch
from torch import nn
from torch.optim import swa_utils

from nbutils.population import (
    ema,
    ema_noise_variance,
    precise_bn_errors,
    train_tracked,
    update_bn_variances,
)
from nbutils.recalibration import precise_bn

F64 = torch.float64


@pytest.mark.parametrize("momentum", [0.01, 0.3, 1.0])
def test_ema_is_what_batchnorm_stores(momentum):
    gen = torch.Generator().manual_seed(0)
    batches = 2.0 + 3.0 * torch.randn(40, 8, 3, generator=gen, dtype=F64)  # (steps, m, C)
    bn = nn.BatchNorm1d(3, momentum=momentum, dtype=F64)
    stored_mean, stored_var = [], []
    for xb in batches:
        bn(xb)
        stored_mean.append(bn.running_mean.clone())
        stored_var.append(bn.running_var.clone())
    means, variances = batches.mean(dim=1), batches.var(dim=1, correction=1)
    assert torch.allclose(ema(means, momentum), torch.stack(stored_mean), atol=1e-12, rtol=0)
    offline_var = ema(variances, momentum, init=1.0)
    assert torch.allclose(offline_var, torch.stack(stored_var), atol=1e-12, rtol=0)


def test_ema_accepts_a_tensor_initial_value_and_keeps_the_dtype():
    stats = torch.ones(5, 2, dtype=torch.float32)
    out = ema(stats, 0.5, init=torch.tensor([0.0, 2.0]))
    assert out.dtype == torch.float32 and out.shape == (5, 2)
    assert torch.allclose(out[-1], torch.tensor([1 - 0.5**5, 1 + 0.5**5]))


@pytest.mark.parametrize("momentum", [0.05, 0.5])
def test_ema_noise_variance_closed_form_and_monte_carlo(momentum):
    steps, m, sigma2 = 30, 4, 2.5
    pred = ema_noise_variance(torch.full((steps,), sigma2 / m, dtype=F64), momentum)
    t = torch.arange(1, steps + 1, dtype=F64)
    closed = sigma2 / m * momentum * (1 - (1 - momentum) ** (2 * t)) / (2 - momentum)
    assert torch.allclose(pred, closed, rtol=1e-12, atol=0)
    # Monte Carlo: 20,000 independent chains of batch means of m normal values
    gen = torch.Generator().manual_seed(1)
    means = math.sqrt(sigma2) * torch.randn(steps, 20_000, m, generator=gen, dtype=F64).mean(2)
    final = ema(means, momentum)[-1]
    se = pred[-1].item() * math.sqrt(2 / (len(final) - 1))  # of a normal sample variance
    assert abs(final.var().item() - pred[-1].item()) < 4 * se


def test_ema_noise_variance_with_a_changing_variance_is_the_weighted_sum():
    v = torch.tensor([1.0, 4.0, 0.5, 2.0], dtype=F64)
    a = 0.2
    want = sum(a**2 * (1 - a) ** (2 * (3 - j)) * v[j] for j in range(4))
    assert abs(ema_noise_variance(v, a)[-1].item() - want.item()) < 1e-15


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ema([1.0, 2.0], 0.1), TypeError, "stats must be a torch.Tensor"),
        (lambda: ema(torch.zeros(0, 2), 0.1), ValueError, "steps >= 1"),
        (lambda: ema(torch.zeros(3), 0.0), ValueError, r"must be a number in \(0, 1\], got 0.0"),
        (lambda: ema(torch.zeros(3), 1.5), ValueError, "got 1.5"),
        (lambda: ema(torch.zeros(3), None), TypeError, "momentum must be a number"),
        (lambda: ema(torch.zeros(3), True), TypeError, "got True"),
        (lambda: ema_noise_variance(torch.tensor([-1.0]), 0.1), ValueError, "batch_var must be"),
        (lambda: ema_noise_variance(torch.zeros(()), 0.1), ValueError, "shape"),
        (lambda: ema_noise_variance("x", 0.1), TypeError, "batch_var must be a torch.Tensor"),
    ],
)
def test_ema_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def _images(n: int = 24, channels: int = 2, side: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    level = torch.randn(n, channels, 1, 1, generator=gen, dtype=F64)
    return 1.0 + level + 0.5 * torch.randn(n, channels, side, side, generator=gen, dtype=F64)


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_update_bn_variances_is_what_update_bn_stores(batch_size):
    x = _images()
    sums, sums_sq = x.sum(dim=(2, 3)), (x**2).sum(dim=(2, 3))
    got = update_bn_variances(sums, sums_sq, 9, batch_size, 3, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    for row in got:  # replay the same permutations through update_bn itself
        perm = torch.randperm(len(x), generator=gen)
        n_full = len(x) // batch_size * batch_size
        batches = [x[i] for i in perm[:n_full].split(batch_size)]
        bn = nn.BatchNorm2d(2, dtype=F64)
        swa_utils.update_bn(batches, bn)
        assert torch.allclose(row, bn.running_var, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sums": torch.zeros(4)}, ValueError, "sums must be a tensor of shape"),
        ({"sums_sq": torch.zeros(4, 3)}, ValueError, "same shape"),
        ({"positions": 0}, ValueError, "positions must be an int >= 1"),
        ({"batch_size": 5}, ValueError, "batch_size must be <= N = 4"),
        ({"batch_size": 1, "positions": 1}, ValueError, "at least 2 values"),
        ({"shuffles": 0}, ValueError, "shuffles must be"),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_update_bn_variances_errors(kwargs, error, message):
    args = {
        "sums": torch.zeros(4, 2),
        "sums_sq": torch.zeros(4, 2),
        "positions": 9,
        "batch_size": 2,
        "shuffles": 1,
        "generator": torch.Generator(),
    } | kwargs
    with pytest.raises(error, match=message):
        update_bn_variances(**args)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 6, bias=False),
        nn.BatchNorm1d(6, momentum=0.2),
        nn.ReLU(),
        nn.Linear(6, 4, bias=False),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Linear(4, 3),
    )


def _data(n: int = 60, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = 1.0 + torch.randn(n, 5, generator=gen)
    return x, (x[:, 0] > 1).long() + (x[:, 1] > 1).long()


def test_train_tracked_records_the_first_layer_exactly():
    x, y = _data()
    res = train_tracked(
        _mlp, [0, 1], x, y, x, y, steps=7, eval_every=3, batch_size=8, lr=0.01, weight_decay=0.1
    )
    assert res["checkpoints"] == [3, 6, 7]
    assert res["batch_mean"].shape == (7, 2, 6) and res["pop_mean"].shape == (8, 2, 6)
    assert res["acc_ema"].shape == (3, 2) and res["var_ratio"].shape == (3, 2, 2)
    # The offline average of the recorded batch means is the layer's own running_mean.
    offline = ema(res["batch_mean"], 0.2)[[2, 5, 6]]
    assert torch.allclose(offline, res["first_running_mean"], atol=1e-5, rtol=0)
    # The final population statistics are those of the returned networks' first layer.
    for k, net in enumerate(res["models"]):
        h = (x @ net[0].weight.T).double()
        assert torch.allclose(res["pop_mean"][-1, k], h.mean(0), atol=1e-5, rtol=0)
        assert torch.allclose(res["pop_var"][-1, k], h.var(0, correction=0), rtol=1e-4)
        assert not net.training


def test_train_tracked_precise_accuracy_is_that_of_precise_bn_on_the_returned_weights():
    x, y = _data()
    res = train_tracked(
        _mlp,
        [3],
        x,
        y,
        x[:20],
        y[:20],
        steps=4,
        eval_every=4,
        batch_size=8,
        lr=0.01,
        weight_decay=0.0,
    )
    net = res["models"][0]
    running = net[4].running_var.clone()
    precise_bn(net, [x])
    net.eval()
    with torch.no_grad():
        acc = (net(x[:20]).argmax(-1) == y[:20]).float().mean()
    assert torch.equal(res["acc_precise"][-1, 0], acc)
    ratio = (running.double() / net[4].running_var.double()).mean()
    assert torch.allclose(res["var_ratio"][-1, 0, 1], ratio, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"make_model": 3}, TypeError, "make_model must be callable"),
        ({"seeds": []}, ValueError, "seeds must be a sequence of at least 1 distinct ints"),
        ({"seeds": [-1]}, ValueError, "each of seeds must be an int >= 0"),
        ({"x": torch.zeros(10)}, ValueError, "x, y must have shapes"),
        ({"y_val": [0]}, TypeError, "x_val, y_val must be torch.Tensor"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"batch_size": 1}, ValueError, "batch_size must be an int >= 2"),
        ({"lr": 0.0}, ValueError, "lr must be a number > 0"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay must be a number >= 0"),
        ({"make_model": lambda: nn.Sequential(nn.Linear(5, 3))}, ValueError, "must return"),
    ],
)
def test_train_tracked_errors(kwargs, error, message):
    x, y = _data()
    args = {
        "make_model": _mlp,
        "seeds": [0],
        "x": x,
        "y": y,
        "x_val": x,
        "y_val": y,
        "steps": 2,
        "eval_every": 1,
        "batch_size": 4,
        "lr": 0.01,
        "weight_decay": 0.0,
    } | kwargs
    with pytest.raises(error, match=message):
        train_tracked(**args)


def test_precise_bn_errors_against_a_manual_subset():
    x, _ = _data(40)
    model = _mlp().double().eval()
    xd = x.double()
    res = precise_bn_errors(model, xd, [10, 40], 2, torch.Generator().manual_seed(5))
    assert res["mean"].shape == (2, 2, 2) and res["var"].shape == (2, 2, 2)
    # With all N rows the subset is the whole data set: no error at all.
    assert res["mean"][1].abs().max() < 1e-20 and res["var"][1].abs().max() < 1e-20
    # The first subset of size 10, replayed by hand on the first layer.
    gen = torch.Generator().manual_seed(5)
    rows = xd[torch.randperm(40, generator=gen)[:10]]
    with torch.no_grad():
        h_all, h_sub = xd @ model[0].weight.T, rows @ model[0].weight.T
    v = h_all.var(0, correction=0)
    want_mean = ((h_sub.mean(0) - h_all.mean(0)) ** 2 / v).mean()
    want_var = (((h_sub.var(0, correction=0) - v) / v) ** 2).mean()
    assert abs(res["mean"][0, 0, 0] - want_mean) < 1e-12
    assert abs(res["var"][0, 0, 0] - want_var) < 1e-12
    assert all(not torch.equal(a, b) for a, b in [(model[1].running_var, v.float())])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"x": torch.zeros(1, 5)}, ValueError, "x must be a tensor of shape"),
        ({"model": nn.Linear(5, 2)}, ValueError, "no BatchNorm layer"),
        ({"sizes": []}, ValueError, "sizes must be a non-empty"),
        ({"sizes": [1]}, ValueError, "every size must be an int >= 2"),
        ({"sizes": [50]}, ValueError, "every size must be <= N = 40"),
        ({"repeats": 0}, ValueError, "repeats must be"),
        ({"generator": None}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_precise_bn_errors_rejects_bad_input(kwargs, error, message):
    x, _ = _data(40)
    args = {
        "model": _mlp(),
        "x": x,
        "sizes": [10],
        "repeats": 1,
        "generator": torch.Generator(),
    } | kwargs
    with pytest.raises(error, match=message):
        precise_bn_errors(**args)
