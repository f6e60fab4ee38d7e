"""Tests of nbutils.sphere: angles between stacked tensors and tracked stacked training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nbutils.models import make_mlp
from nbutils.sphere import angle, stacked_accuracy, train_tracked
from nbutils.stacking import StackedModels


def data(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def nets(k=3, seed=0):
    torch.manual_seed(seed)
    return [make_mlp(5, [6], 3, norm="bn") for _ in range(k)]


def test_angle_against_arccos_and_tiny_angles():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    assert torch.allclose(angle(a, b), torch.arccos(cos), atol=1e-12)
    # a rotation by a known tiny angle in a plane, scaled: arccos would lose it
    theta = 1e-7
    u = torch.zeros(1, 4, dtype=torch.float64)
    u[0, 0] = 1.0
    v = torch.zeros(1, 4, dtype=torch.float64)
    v[0, 0], v[0, 1] = 3 * math.cos(theta), 3 * math.sin(theta)
    assert abs(angle(u.float(), v.float()).item() - theta) < 1e-12
    assert angle(a, a).abs().max() < 1e-7
    assert torch.allclose(angle(a, -a), torch.full((4,), math.pi, dtype=torch.float64))


def test_angle_errors():
    with pytest.raises(TypeError, match=r"a must be a torch.Tensor, got list"):
        angle([1.0, 2.0], torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"b must be a torch.Tensor"):
        angle(torch.ones(2, 2), None)
    with pytest.raises(ValueError, match=r"a must have shape \(K, \.\.\.\), got \(3,\)"):
        angle(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        angle(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="zero vector"):
        angle(torch.zeros(2, 3), torch.ones(2, 3))


def test_train_tracked_matches_separate_training():
    x, y = data()
    models = nets()
    stack = StackedModels(models)
    opt = torch.optim.SGD(stack.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(5)
    steps, batch = 7, 16  # two batches per epoch: a new order every 2 steps
    rec = train_tracked(
        stack, opt, x, y, steps=steps, batch_size=batch, generator=gen, track=["0.weight"]
    )
    # the same batches, drawn the same way, one model at a time
    gen = torch.Generator().manual_seed(5)
    orders = []
    for t in range(steps):
        if t % 2 == 0:
            order = torch.argsort(torch.rand(len(models), len(x), generator=gen), dim=1)
        orders.append(order[:, (t % 2) * batch : (t % 2 + 1) * batch])
    for k, model in enumerate(models):
        model.train()
        o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        for t in range(steps):
            w = model[0].weight.detach().clone()
            idx = orders[t][k]
            o.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            g = model[0].weight.grad
            assert abs(rec["0.weight"]["norm"][t, k].item() - w.norm().item()) < 1e-5
            assert abs(rec["0.weight"]["grad_norm"][t, k].item() - g.norm().item()) < 1e-5
            cos = (w * g).sum() / (w.norm() * g.norm())
            assert abs(rec["0.weight"]["cos"][t, k].item() - cos.item()) < 1e-4
            assert abs(rec["loss"]["loss"][t, k].item() - loss.item()) < 1e-5
            o.step()
            turned = angle(w.unsqueeze(0), model[0].weight.detach().unsqueeze(0)).item()
            assert abs(rec["0.weight"]["angle"][t, k].item() - turned) < 1e-5
        assert abs(rec["0.weight"]["norm"][steps, k].item() - model[0].weight.norm().item()) < 1e-5
    shapes = {key: tuple(v.shape) for key, v in rec["0.weight"].items()}
    assert shapes == {"norm": (8, 3), "grad_norm": (7, 3), "cos": (7, 3), "angle": (7, 3)}


def test_bn_weight_is_orthogonal_to_its_gradient_in_training():
    x, y = data(64)
    stack = StackedModels([m.double() for m in nets(2)])
    opt = torch.optim.SGD(stack.parameters(), lr=0.05)
    rec = train_tracked(
        stack,
        opt,
        x.double(),
        y,
        steps=5,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
        track=["0.weight", "3.weight"],
    )
    assert rec["0.weight"]["cos"].abs().max() < 1e-3  # feeds BN: orthogonal up to eps
    assert rec["3.weight"]["cos"].abs().max() > 1e-2  # output layer: not invariant


def test_stacked_accuracy():
    x, y = data()
    models = nets(2)
    stack = StackedModels(models).train()
    acc = stacked_accuracy(stack, x, y)
    assert stack.training  # mode restored
    for k, model in enumerate(models):
        model.eval()
        with torch.no_grad():
            expected = (model(x).argmax(1) == y).double().mean()
        assert abs(acc[k].item() - expected.item()) < 1e-12


def test_stacked_accuracy_errors():
    x, y = data()
    stack = StackedModels(nets(2))
    with pytest.raises(TypeError, match="stack must be a StackedModels, got Linear"):
        stacked_accuracy(nn.Linear(5, 3), x, y)
    with pytest.raises(TypeError, match=r"x and y must be torch.Tensor"):
        stacked_accuracy(stack, x.tolist(), y)
    with pytest.raises(ValueError, match=r"y shape \(N,\) with the same N"):
        stacked_accuracy(stack, x, y[:-1])


def test_train_tracked_errors():
    x, y = data()
    stack = StackedModels(nets(2))
    opt = torch.optim.SGD(stack.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    ok = dict(steps=2, batch_size=8, generator=gen, track=["0.weight"])

    def call(**change):
        args = {"stack": stack, "optimizer": opt, "x": x, "y": y, **ok, **change}
        return train_tracked(
            args.pop("stack"), args.pop("optimizer"), args.pop("x"), args.pop("y"), **args
        )

    with pytest.raises(TypeError, match="stack must be a StackedModels"):
        call(stack=nets(1)[0])
    with pytest.raises(TypeError, match=r"optimizer must be a torch.optim.Optimizer, got list"):
        call(optimizer=[opt])
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator, got int"):
        call(generator=0)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        call(steps=0)
    with pytest.raises(TypeError, match=r"batch_size must be an int >= 1, got 2.0"):
        call(batch_size=2.0)
    with pytest.raises(ValueError, match="batch_size must be <= N = 40, got 41"):
        call(batch_size=41)
    with pytest.raises(ValueError, match="x must have shape"):
        call(y=y[:10])
    with pytest.raises(TypeError, match="track must be a non-empty list"):
        call(track="0.weight")
    with pytest.raises(TypeError, match="track must be a non-empty list"):
        call(track=[])
    with pytest.raises(ValueError, match=r"track: '9.weight' is not a parameter"):
        call(track=["9.weight"])
