"""Tests of nbutils.monitor: recorded values against hand computations, hooks, errors."""

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbutils.monitor import METRICS, TrainingMonitor, plot_monitor

matplotlib.use("Agg")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2), nn.Tanh())


def data(n=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen), torch.randn(n, 2, generator=gen)


def test_default_layers_and_history_shape():
    model = net()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrainingMonitor(model, every=2) as mon:
        for _ in range(5):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            mon.step(opt)
    assert mon.layers == ["0", "1", "2", "3"]
    assert mon.steps == [0, 2, 4]
    assert all(len(mon.history[n][k]) == 3 for n in mon.layers for k in METRICS)
    assert mon.series("act_std").shape == (3, 4)
    assert not model[0]._forward_hooks  # hooks removed at the end of the block


def test_values_against_hand_computation():
    model = net()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w_before = [p.detach().clone() for p in model[0].parameters()]
    # by hand, with autograd on the intermediate activations
    h = model[0](x)
    h.retain_grad()
    r = torch.relu(h)
    out = torch.tanh(model[2](r))
    F.mse_loss(out, y).backward()
    want_out_grad = h.grad.norm().item()
    want_grad = torch.cat([p.grad.flatten() for p in model[0].parameters()]).norm().item()
    model.zero_grad()
    with TrainingMonitor(model) as mon:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(opt)
    rec = {k: v[0] for k, v in mon.history["0"].items()}
    hd = h.detach().double()
    assert rec["act_mean"] == pytest.approx(hd.mean().item(), rel=1e-6)
    assert rec["act_std"] == pytest.approx(hd.std(correction=0).item(), rel=1e-6)
    assert rec["dead"] == pytest.approx((hd <= 0).all(dim=0).double().mean().item())
    assert math.isnan(rec["saturated"])  # a Linear layer has no saturating region
    assert rec["out_grad_norm"] == pytest.approx(want_out_grad, rel=1e-5)
    assert rec["grad_norm"] == pytest.approx(want_grad, rel=1e-5)
    step = torch.cat(
        [(p - q).flatten() for p, q in zip(model[0].parameters(), w_before, strict=True)]
    )
    size = torch.cat([q.flatten() for q in w_before])
    assert rec["update_ratio"] == pytest.approx((step.norm() / size.norm()).item(), rel=1e-5)
    # ReLU: saturated = fraction of zeros; no own parameters
    relu = mon.history["1"]
    assert relu["saturated"][0] == pytest.approx((hd <= 0).double().mean().item())
    assert math.isnan(relu["grad_norm"][0]) and math.isnan(relu["update_ratio"][0])
    tanh_out = out.detach()
    assert mon.history["3"]["saturated"][0] == pytest.approx(
        (tanh_out.abs() > 0.99).double().mean().item()
    )


def test_dead_channels_value():
    model = nn.Sequential(nn.Conv2d(1, 3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.0, -1.0]).view(3, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    with TrainingMonitor(model) as mon:
        model(torch.rand(4, 1, 2, 2) + 0.1)
        mon.step()  # no optimizer: no update ratio
    assert mon.history["0"]["dead"] == [pytest.approx(2 / 3)]
    assert math.isnan(mon.history["0"]["update_ratio"][0])
    assert math.isnan(mon.history["0"]["grad_norm"][0])  # no backward ran


def test_eval_passes_and_skipped_steps_are_not_recorded():
    model = net()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrainingMonitor(model, every=3, layers=["0"]) as mon:
        for _ in range(3):
            model.train()
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            model.eval()
            model(x * 100)  # an evaluation pass in between must not count
            mon.step(opt)
    assert mon.layers == ["0"] and mon.steps == [0]
    assert mon.history["0"]["act_std"][0] == pytest.approx(
        net()[0](x).detach().double().std(correction=0).item(), rel=1e-6
    )


def test_plot_and_errors():
    model = net()
    x, y = data()
    with TrainingMonitor(model) as mon:
        with pytest.raises(ValueError, match="no step"):
            plot_monitor(mon)
        F.mse_loss(model(x), y).backward()
        mon.step()
    fig = plot_monitor(mon)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="metrics must be"):
        plot_monitor(mon, metrics=["nope"])
    with pytest.raises(ValueError, match="layers must be monitored"):
        plot_monitor(mon, layers=["9"])
    with pytest.raises(TypeError, match="mon must be"):
        plot_monitor(model)
    with pytest.raises(TypeError, match="model must be"):
        TrainingMonitor("model")
    with pytest.raises(ValueError, match="every must be"):
        TrainingMonitor(model, every=0)
    with pytest.raises(TypeError, match="every must be"):
        TrainingMonitor(model, every=1.0)
    with pytest.raises(ValueError, match="unknown"):
        TrainingMonitor(model, layers=["fc"])
    with pytest.raises(TypeError, match="layers must be"):
        TrainingMonitor(model, layers="0")
    with pytest.raises(ValueError, match="no layer to monitor"):
        TrainingMonitor(nn.Identity())
    with pytest.raises(TypeError, match="optimizer must be"):
        mon.step("sgd")
    with pytest.raises(ValueError, match="metric must be"):
        mon.series("nope")
