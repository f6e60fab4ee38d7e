"""nbutils.stacking: K stacked models take exactly the steps of K separate models."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.stacking import StackedModels, stacked_loss


# No bias before BN: BN removes it, so its gradient is pure round-off, which Adam's
# normalization by sqrt(v) would blow up to steps of size lr and make the comparison meaningless.
def small_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 12, bias=False), nn.BatchNorm1d(12, momentum=0.3), nn.ReLU(), nn.Linear(12, 3)
    ).double()


def conv_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1),
    ],
    ids=["sgd-nesterov-wd", "adam-l2", "adamw"],
)
@pytest.mark.parametrize(("make", "shape"), [(small_bn_net, (16, 5)), (conv_bn_net, (8, 1, 6, 6))])
def test_stacked_training_equals_separate_training(make_opt, make, shape):
    k, steps = 3, 6
    models = [make(s) for s in range(k)]
    separate = [copy.deepcopy(m) for m in models]
    stack = StackedModels(models)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, k, *shape, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, 3, (steps, k, shape[0]), generator=gen)

    opt = make_opt(stack.parameters())
    for t in range(steps):
        opt.zero_grad()
        stacked_loss(F.cross_entropy, stack(xs[t]), ys[t]).sum().backward()
        opt.step()
    for i, m in enumerate(separate):
        opt_i = make_opt(m.parameters())
        for t in range(steps):
            opt_i.zero_grad()
            F.cross_entropy(m(xs[t, i]), ys[t, i]).backward()
            opt_i.step()

    for mine, ref in zip(stack.unstack(), separate, strict=True):
        for (name, a), b in zip(mine.state_dict().items(), ref.state_dict().values(), strict=True):
            if a.is_floating_point():
                assert (a - b).abs().max().item() < 1e-10, name
            else:
                assert torch.equal(a, b), name  # num_batches_tracked
    # eval mode uses the stacked running statistics, model by model
    stack.eval()
    for m in separate:
        m.eval()
    x = xs[0, 0]
    out = stack(x, shared_input=True)
    ref = torch.stack([m(x) for m in separate])
    assert (out - ref).abs().max().item() < 1e-10


def test_unchanged_originals_and_modes():
    models = [small_bn_net(s) for s in range(2)]
    before = copy.deepcopy(models[0].state_dict())
    stack = StackedModels(models)
    assert len(stack) == 2 and stack.training
    opt = torch.optim.SGD(stack.parameters(), lr=1.0)
    stacked_loss(F.cross_entropy, stack(torch.randn(2, 4, 5).double()), torch.zeros(2, 4).long())
    stacked_loss(
        F.cross_entropy,
        stack(torch.randn(4, 5).double(), shared_input=True),
        torch.zeros(4).long(),
        shared_target=True,
    ).sum().backward()
    opt.step()
    for name, value in models[0].state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not stack.eval().training and all(not m.training for m in stack.unstack())


def test_dropout_masks_differ_between_models():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(1, 100), nn.Dropout(0.5)) for _ in range(4)]
    for net in nets:
        nn.init.ones_(net[0].weight)
        nn.init.zeros_(net[0].bias)
    out = StackedModels(nets)(torch.ones(1), shared_input=True)
    assert out.shape == (4, 100) and set(out.unique().tolist()) == {0.0, 2.0}
    assert len({tuple(row.tolist()) for row in out}) == 4


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda: StackedModels(nn.Linear(2, 2)), TypeError, "models must be a list or tuple"),
        (lambda: StackedModels([]), ValueError, "at least one nn.Module"),
        (lambda: StackedModels([nn.ReLU()]), ValueError, "no parameters"),
        (lambda: StackedModels([nn.Linear(2, 2), "x"]), TypeError, r"models\[1\] must be"),
        (
            lambda: StackedModels([nn.Linear(2, 2), nn.Linear(2, 3)]),
            ValueError,
            r"models\[1\] does not have the architecture",
        ),
        (
            lambda: StackedModels([nn.Linear(2, 2)] * 2)(torch.ones(3, 4, 2)),
            ValueError,
            r"x must have shape \(K, B, ...\) with K = 2",
        ),
        (lambda: StackedModels([nn.Linear(2, 2)])([1.0]), TypeError, "x must be a torch.Tensor"),
        (lambda: StackedModels([nn.Linear(2, 2)]).train(1), TypeError, "mode must be True"),
        (
            lambda: stacked_loss(F.mse_loss, torch.ones(2, 3), torch.ones(3, 3)),
            ValueError,
            "target must have shape",
        ),
        (
            lambda: stacked_loss(F.mse_loss, torch.ones(2, 3), torch.ones(2), shared_target=True),
            ValueError,
            "with shared_target=True",
        ),
        (lambda: stacked_loss(None, torch.ones(2, 3), torch.ones(2, 3)), TypeError, "callable"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
