"""nbutils.lr_sweep: a stacked sweep records exactly what separately trained networks give."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.lr_sweep import Sweep, markdown_table, sgd_sweep


def tiny(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ).double()


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # learnable labels 0, 1, 2
    return x, y


TRAIN, VAL = data(40, 1), data(30, 2)
PROBE = TRAIN[0][:16]


def moments(model: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    # Training-mode input of the last layer on the probe, without touching BN buffers.
    body = copy.deepcopy(model[:-1]).train()
    with torch.no_grad():
        f = body(PROBE)
    return f.mean(dim=0), f.std(dim=0, correction=0)


def reference(lr: float, seed: int, epochs: int, batch_size: int):
    # One run trained on its own with torch.optim.SGD and the same shuffling.
    model = tiny(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    (x, y), n = TRAIN, len(TRAIN[1])
    accs, drifts = [], []
    mean0, std0 = moments(model)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        mean1, std1 = moments(model)
        drifts.append(((mean1 - mean0).norm() + (std1 - std0).norm()).item() / std0.norm().item())
        mean0, std0 = mean1, std1
        model.eval()
        with torch.no_grad():
            accs.append((model(VAL[0]).argmax(dim=1) == VAL[1]).double().mean().item())
            train_acc = (model(x).argmax(dim=1) == y).double().mean().item()
        model.train()
    return accs, drifts, train_acc


def test_sweep_equals_separate_runs():
    lrs, seeds, epochs, batch = (0.05, 0.5), (3, 7, 11), 3, 12
    sweep = sgd_sweep(
        tiny,
        lrs=lrs,
        seeds=seeds,
        train=TRAIN,
        val=VAL,
        batch_size=batch,
        epochs=epochs,
        probe=PROBE,
    )
    assert sweep.val_acc.shape == (2, 3, 3) and sweep.train_acc.shape == (2, 3)
    assert sweep.steps_per_epoch == 4 and sweep.budget == 12 and sweep.epochs == 3
    for i, lr in enumerate(lrs):
        for j, seed in enumerate(seeds):
            accs, drifts, train_acc = reference(lr, seed, epochs, batch)
            assert sweep.val_acc[i, j].tolist() == pytest.approx(accs, abs=1e-12)
            assert sweep.drift[i, j].tolist() == pytest.approx(drifts, rel=1e-9)
            assert sweep.train_acc[i, j].item() == pytest.approx(train_acc, abs=1e-12)
    assert not sweep.dead.any()
    assert sweep.index(0.5) == 1


def test_default_probe_is_the_first_256_training_inputs():
    x, y = data(300, 3)
    kw = {"lrs": (0.1,), "seeds": (0, 1), "val": VAL, "batch_size": 100, "epochs": 1}
    a = sgd_sweep(tiny, train=(x, y), **kw)
    b = sgd_sweep(tiny, train=(x, y), probe=x[:256], **kw)
    assert torch.equal(a.drift, b.drift) and torch.equal(a.val_acc, b.val_acc)


def test_dead_last_hidden_layer_is_flagged():
    def dead(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
        with torch.no_grad():  # every hidden unit is off for every input
            model[0].weight.zero_()
            model[0].bias.fill_(-1.0)
        return model

    sweep = sgd_sweep(dead, lrs=(0.1,), seeds=(0, 1), train=TRAIN, val=VAL, batch_size=8, epochs=2)
    assert sweep.dead.all() and (sweep.drift == 0).all()


def test_noise_inside_the_models_differs_between_runs():
    class Noise(nn.Module):
        def forward(self, x):
            return x + torch.rand(x.shape[1], dtype=x.dtype) if self.training else x

    def noisy(seed: int) -> nn.Sequential:
        torch.manual_seed(0)  # identical weights: only the noise can tell runs apart
        return nn.Sequential(nn.Linear(5, 6), Noise(), nn.Linear(6, 3)).double()

    sweep = sgd_sweep(
        noisy, lrs=(0.1,), seeds=(0, 1), train=TRAIN, val=VAL, batch_size=40, epochs=1
    )
    assert sweep.drift[0, 0, 0] != sweep.drift[0, 1, 0]


def test_steps_to_target():
    acc = torch.tensor([[[0.5, 0.92, 0.95], [0.5, 0.6, 0.7]]], dtype=torch.float64)
    sweep = Sweep((0.1,), (0, 1), acc, acc[..., -1], torch.zeros_like(acc), acc[..., 0] < 0, 17)
    steps = sweep.steps_to(0.9)
    assert steps[0, 0].item() == 34 and math.isinf(steps[0, 1].item())
    assert sweep.steps_to(0.5).tolist() == [[17.0, 17.0]]


def test_markdown_table():
    table = markdown_table(["a", "b|c"], [(1, "x|y"), [2.5, None]])
    assert table.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | x\\|y |", "| 2.5 | None |"]


def sweep_with(**changes):
    kw = {
        "lrs": (0.1,),
        "seeds": (0, 1),
        "train": TRAIN,
        "val": VAL,
        "batch_size": 8,
        "epochs": 1,
    }
    kw.update(changes)
    build = kw.pop("build", tiny)
    return sgd_sweep(build, **kw)


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda: sweep_with(lrs=0.1), TypeError, "lrs must be a sequence"),
        (lambda: sweep_with(lrs=()), ValueError, "at least one learning rate"),
        (lambda: sweep_with(lrs=("a",)), TypeError, "lrs must be a sequence of positive"),
        (lambda: sweep_with(lrs=(0.1, -1.0)), ValueError, "finite number > 0, got -1.0"),
        (lambda: sweep_with(lrs=(0.1, 0.1)), ValueError, "must not repeat"),
        (
            lambda: sweep_with(seeds=(0,)),
            ValueError,
            "seeds must be a sequence of at least 2 distinct ints >= 0, got \\[0\\]",
        ),
        (lambda: sweep_with(seeds=(0, 1.5)), TypeError, "each of seeds must be an int >= 0"),
        (lambda: sweep_with(seeds=(0, -1)), ValueError, "int >= 0, got -1"),
        (lambda: sweep_with(seeds=(2, 2)), ValueError, "got repeated seeds"),
        (
            lambda: sweep_with(seeds="01"),
            TypeError,
            "seeds must be a sequence of at least 2 distinct ints",
        ),
        (lambda: sweep_with(train=[TRAIN[0], TRAIN[1]]), TypeError, "train must be a tuple"),
        (lambda: sweep_with(val=(VAL[0], VAL[1][:3])), ValueError, "val must be"),
        (lambda: sweep_with(train=(TRAIN[0], TRAIN[1].double())), ValueError, "integer class"),
        (lambda: sweep_with(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
        (lambda: sweep_with(batch_size=True), TypeError, "batch_size must be an int"),
        (lambda: sweep_with(epochs=1.0), TypeError, "epochs must be an int"),
        (lambda: sweep_with(probe=TRAIN[0][:, :3]), ValueError, "probe must be a tensor"),
        (lambda: sweep_with(build=None), TypeError, "build must be a callable"),
        (lambda: sweep_with(build=lambda s: nn.Linear(5, 3)), TypeError, "nn.Sequential of at"),
        (
            lambda: sweep_with(build=lambda s: nn.Sequential(nn.Linear(5, 3), nn.ReLU())),
            ValueError,
            "last module of build",
        ),
        (
            lambda: Sweep((0.1,), (0, 1), *[torch.zeros(1, 2, 1)] * 4, 3).index(0.2),
            ValueError,
            r"lr must be one of the swept learning rates \(0.1,\), got 0.2",
        ),
        (
            lambda: Sweep((0.1,), (0, 1), *[torch.zeros(1, 2, 1)] * 4, 3).steps_to(1.5),
            ValueError,
            r"target must be an accuracy in \(0, 1\], got 1.5",
        ),
        (
            lambda: Sweep((0.1,), (0, 1), *[torch.zeros(1, 2, 1)] * 4, 3).steps_to("high"),
            TypeError,
            "target must be an accuracy",
        ),
        (lambda: markdown_table("ab", []), TypeError, "header must be a non-empty sequence"),
        (lambda: markdown_table(["a"], 3), TypeError, "rows must be an iterable"),
        (lambda: markdown_table(["a"], ["x"]), TypeError, r"rows\[0\] must be a sequence"),
        (lambda: markdown_table(["a", "b"], [(1,)]), ValueError, r"rows\[0\] has 1 values"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
