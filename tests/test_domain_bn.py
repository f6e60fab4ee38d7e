"""Tests of nbutils.domain_bn: K BN MLPs side by side, per-domain BN, Frozen BN helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.domain_bn import DomainMLP, accuracy, frozen_bn, keep_running_stats, train_domains


def _single(net: DomainMLP, k: int, domain: int = 0) -> nn.Sequential:
    """Copy k of ``net`` as an ordinary nn.Sequential (an independent implementation)."""
    h = net.hidden
    layers = []
    for j in range(2):
        lin = nn.Linear(net.weights[j].shape[1], h, bias=False)
        lin.weight.data = net.weights[j][k].detach().T.clone()
        wide = net.bns[j][domain]
        bn = nn.BatchNorm1d(h, momentum=wide.momentum)
        sl = slice(k * h, (k + 1) * h)
        bn.weight.data = wide.weight[sl].detach().clone()
        bn.bias.data = wide.bias[sl].detach().clone()
        bn.running_mean = wide.running_mean[sl].clone()
        bn.running_var = wide.running_var[sl].clone()
        layers += [lin, bn, nn.ReLU()]
    out = nn.Linear(h, net.weights[2].shape[2])
    out.weight.data = net.weights[2][k].detach().T.clone()
    out.bias.data = net.out_bias[k, 0].detach().clone()
    return nn.Sequential(*layers, out).double()


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 64, generator=g, dtype=torch.float64), torch.randint(10, (n,), generator=g)


def test_copies_equal_separate_networks_forward_and_backward():
    net = DomainMLP([3, 4, 5], hidden=8).double()
    singles = [_single(net, k) for k in range(3)]  # before any update
    x, y = _data()
    out = net(x)
    F.cross_entropy(out.flatten(0, 1), y.repeat(3), reduction="sum").backward()
    wide = net.bns[0][0]
    for k, single in enumerate(singles):
        ref = single(x)
        assert torch.allclose(out[k], ref, rtol=0, atol=1e-12)
        F.cross_entropy(ref, y, reduction="sum").backward()
        grad = single[0].weight.grad.T
        assert torch.allclose(net.weights[0].grad[k], grad, rtol=0, atol=1e-12)
        stats = wide.running_mean[k * 8 : (k + 1) * 8]
        assert torch.allclose(stats, single[1].running_mean, rtol=0, atol=1e-12)


def test_seeds_fix_the_initialization_and_domains_have_their_own_bn():
    a, b = DomainMLP([7, 8], hidden=4), DomainMLP([7, 9], hidden=4, domains=2)
    assert torch.equal(a.weights[0][0], b.weights[0][0])
    assert not torch.equal(a.weights[0][1], b.weights[0][1])
    x = torch.rand(6, 64)
    b(x, domain=1)
    assert torch.equal(b.bns[0][0].running_mean, torch.zeros(8))
    assert not torch.equal(b.bns[0][1].running_mean, torch.zeros(8))
    assert b(torch.rand(2, 6, 64)).shape == (2, 6, 10)


def test_accuracy_and_mode_restored():
    net = DomainMLP([0, 1], hidden=4).double()
    x, y = _data()
    acc = accuracy(net, x, y)
    assert acc.shape == (2,) and net.training
    net.eval()
    expected = (net(x).argmax(-1) == y).double().mean(1)
    assert torch.equal(accuracy(net, x, y), expected) and not net.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batches": "random"}, "batches must be 'mixed' or 'per-domain'"),
        ({"separate_bn": True}, "separate_bn=True needs"),
        ({"batch": 5}, "batch must be a multiple of the 2 domains"),
    ],
)
def test_train_domains_errors(kwargs, match):
    net = DomainMLP([0], hidden=4)
    x, y = _data()
    args = {"seeds": [0], "batch": 4, "epochs": 1, "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_domains(net, [(x.float(), y), (x.float(), y)], **args)


def test_domain_mlp_errors():
    with pytest.raises(ValueError, match="seeds must be a non-empty sequence"):
        DomainMLP([])
    with pytest.raises(ValueError, match="domains must be an int >= 1"):
        DomainMLP([0], domains=0)


@pytest.mark.parametrize("batches", ["mixed", "per-domain"])
def test_training_learns_and_separate_bn_routes_domains(batches):
    x, y = _data(n=40)
    x, data = x.float(), None
    data = [(x, y), (1 - x, y)]
    net = DomainMLP([0, 1], hidden=16, domains=2)
    before = copy.deepcopy(net.state_dict())
    separate = batches == "per-domain"
    train_domains(
        net, data, seeds=[0, 1], batch=8, epochs=2, lr=0.05, batches=batches, separate_bn=separate
    )
    moved = not torch.equal(net.bns[0][1].running_mean, before["bns.0.1.running_mean"])
    assert moved == separate  # BN set 1 only used with separate_bn
    assert not torch.equal(net.weights[0], before["weights.0"])


def test_frozen_bn_in_training_keeps_statistics_and_affine():
    x, y = _data(n=16)
    net = DomainMLP([0], hidden=8)
    net(x.float())  # non-trivial running statistics
    before = copy.deepcopy(net.state_dict())
    train_domains(net, [(x.float(), y)], seeds=[0], batch=4, epochs=1, lr=0.1, freeze_bn=True)
    for key, value in net.state_dict().items():
        if key.startswith("bns"):
            assert torch.equal(value, before[key]), key
    assert not torch.equal(net.weights[0], before["weights.0"])


def test_frozen_bn_and_its_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
    frozen = frozen_bn(model)
    assert len(frozen) == 2 and not model[1].training and model[0].training
    assert not model[1].weight.requires_grad and model[0].weight.requires_grad
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        frozen_bn("model")


def test_keep_running_stats_restores_even_on_error():
    bn = nn.BatchNorm1d(3)
    with keep_running_stats(bn):
        bn(torch.randn(8, 3) + 4)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    with pytest.raises(RuntimeError, match="boom"), keep_running_stats(bn):
        bn(torch.randn(8, 3) + 4)
        raise RuntimeError("boom")
    assert torch.equal(bn.running_var, torch.ones(3))
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"), keep_running_stats(3):
        pass
