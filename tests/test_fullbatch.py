"""nbutils.fullbatch: K models trained at once equal K models trained one by one."""

import copy
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.fullbatch import fit_full_batch
from nbutils.stacking import StackedModels


def mlp(seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1)
    ).double()


def fit_alone(model, x, y, make_optimizer, epochs, loss_fn=F.mse_loss):
    optimizer = make_optimizer(model.parameters())
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model, float(loss_fn(model(x), y))


SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-2)
ADAMW = partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-1)


@pytest.mark.parametrize("make_optimizer", [SGD, ADAMW], ids=["sgd-momentum-wd", "adamw"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-x", "per-model-x"])
def test_stacked_fits_equal_separate_fits(make_optimizer, shared):
    k, b, epochs = 4, 7, 25
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    xs = x if shared else torch.randn(k, b, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(k, b, 1, generator=gen, dtype=torch.float64)
    models = [mlp(s) for s in range(k)]
    originals = [copy.deepcopy(m.state_dict()) for m in models]

    stack, losses = fit_full_batch(models, xs, y, make_optimizer=make_optimizer, epochs=epochs)
    assert losses.shape == (k,) and not stack.training
    for i, (m, fitted) in enumerate(zip(models, stack.unstack(), strict=True)):
        for name, value in m.state_dict().items():  # the originals are untouched
            assert torch.equal(value, originals[i][name])
        alone, loss = fit_alone(
            copy.deepcopy(m), x if shared else xs[i], y[i], make_optimizer, epochs
        )
        for (name, p), q in zip(alone.named_parameters(), fitted.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-10, msg=name)
        assert abs(losses[i].item() - loss) < 1e-10


def test_final_loss_is_taken_in_eval_mode():
    # With dropout, the returned loss is the loss of the deterministic (eval-mode) network.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 9, 1, generator=gen, dtype=torch.float64)
    stack, losses = fit_full_batch(
        [mlp(s, dropout=0.5) for s in range(3)], x, y, make_optimizer=SGD, epochs=5
    )
    for i, model in enumerate(stack.unstack()):
        with torch.no_grad():
            expected = F.mse_loss(model.eval()(x), y[i])
        assert abs(losses[i].item() - expected.item()) < 1e-12


def test_training_reduces_the_loss():
    gen = torch.Generator().manual_seed(3)
    x = torch.linspace(-1, 1, 10, dtype=torch.float64)[:, None].repeat(1, 2)
    y = 1.5 * x[None, :, :1] + 0.1 * torch.randn(5, 10, 1, generator=gen, dtype=torch.float64)
    models = [mlp(s) for s in range(5)]
    with torch.no_grad():
        before = torch.stack([F.mse_loss(m(x), y[i]) for i, m in enumerate(models)])
    _, after = fit_full_batch(models, x, y, make_optimizer=SGD, epochs=200)
    assert (after < 0.2 * before).all()


def test_custom_loss():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 6, 1, generator=gen, dtype=torch.float64)
    _, losses = fit_full_batch(
        [mlp(0), mlp(1)], x, y, make_optimizer=SGD, epochs=3, loss_fn=F.l1_loss
    )
    assert losses.shape == (2,) and (losses > 0).all()


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 6, 1, generator=gen, dtype=torch.float64)
    return [mlp(0), mlp(1)], x, y


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"make_optimizer": "sgd"}, TypeError, "make_optimizer must be callable"),
        ({"make_optimizer": lambda ps: ps}, TypeError, "must return a torch.optim.Optimizer"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
        ({"epochs": 0}, ValueError, r"epochs must be an int >= 1, got 0"),
        ({"epochs": 2.5}, TypeError, r"epochs must be an int >= 1, got 2.5"),
        ({"epochs": True}, TypeError, r"epochs must be an int >= 1, got True"),
        (
            {"loss_fn": partial(F.mse_loss, reduction="none")},
            ValueError,
            r"loss_fn must return a scalar per model, got shape \(6, 1\)",
        ),
    ],
)
def test_bad_arguments(data, kwargs, error, match):
    models, x, y = data
    args = {"make_optimizer": SGD, "epochs": 2} | kwargs
    with pytest.raises(error, match=match):
        fit_full_batch(models, x, y, **args)


@pytest.mark.parametrize(
    ("which", "value", "error", "match"),
    [
        ("x", [[1.0, 2.0]], TypeError, "x must be a torch.Tensor, got list"),
        ("y", 1.0, TypeError, "y must be a torch.Tensor, got float"),
        ("y", torch.zeros(3, 6, 1), ValueError, r"y must have shape \(K, B, \.\.\.\) with K = 2"),
        ("y", torch.zeros(2), ValueError, r"y must have shape \(K, B, \.\.\.\) with K = 2"),
        ("x", torch.zeros(6), ValueError, r"x must have shape \(B, \.\.\.\) shared"),
        ("x", torch.zeros(3, 6, 2), ValueError, r"\(K, B, \.\.\.\) with K = 2, got \(3, 6, 2\)"),
        ("x", torch.zeros(5, 2), ValueError, "the same number of samples B, got 5 and 6"),
        ("x", torch.zeros(2, 5, 2), ValueError, "the same number of samples B, got 5 and 6"),
    ],
)
def test_bad_data(data, which, value, error, match):
    models, x, y = data
    args = {"x": x, "y": y} | {which: value}
    with pytest.raises(error, match=match):
        fit_full_batch(models, args["x"], args["y"], make_optimizer=SGD, epochs=2)


@pytest.mark.parametrize(
    ("models", "error", "match"),
    [
        ([], ValueError, "at least one nn.Module"),
        (nn.Linear(2, 1), TypeError, "models must be a list or tuple"),
        ([nn.Linear(2, 1), nn.Linear(3, 1)], ValueError, "does not have the architecture"),
    ],
)
def test_bad_models(models, error, match):
    x, y = torch.zeros(4, 2), torch.zeros(2, 4, 1)
    with pytest.raises(error, match=match):
        fit_full_batch(models, x, y, make_optimizer=SGD, epochs=1)


def test_returns_a_stack():
    stack, _ = fit_full_batch(
        [mlp(0), mlp(1)],
        torch.zeros(3, 2, dtype=torch.float64),
        torch.zeros(2, 3, 1, dtype=torch.float64),
        make_optimizer=SGD,
        epochs=1,
    )
    assert isinstance(stack, StackedModels) and len(stack) == 2
