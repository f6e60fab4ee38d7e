"""nbutils.training: the loop learns, records a history, restores modes, rejects bad input."""

import pytest
import torch
from torch import nn

import nbutils


def linear_problem(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    return x, x @ w


def test_full_batch_regression_converges_and_history_has_keys():
    torch.manual_seed(0)
    x, y = linear_problem()
    model = nn.Linear(3, 1)
    hist = nbutils.train(
        model,
        (x, y),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=nn.functional.mse_loss,
        epochs=200,
        eval_data={"val": (x, y)},
        eval_every=50,
    )
    assert hist["epoch"] == [50, 100, 150, 200]
    assert set(hist) == {"epoch", "train_loss", "val_loss"}
    assert hist["val_loss"][-1] < 1e-6 < hist["train_loss"][0]
    assert torch.allclose(model.weight.data.flatten(), torch.tensor([1.0, -2.0, 0.5]), atol=1e-3)


def test_train_loss_is_the_mean_over_samples_of_the_epoch():
    # lr = 0: the parameters never move, so the recorded train loss must equal the loss
    # evaluated over the whole set, however the batches are cut (64 = 30 + 30 + 4).
    x, y = linear_problem()
    model = nn.Linear(3, 1)
    loader = nbutils.make_loader(x, y, 30)
    hist = nbutils.train(
        model,
        loader,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_fn=nn.functional.mse_loss,
        epochs=1,
    )
    expected = nbutils.evaluate(model, (x, y), nn.functional.mse_loss)["loss"]
    assert hist["train_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_classification_accuracy_and_callback():
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    seen = []
    hist = nbutils.train(
        model,
        nbutils.make_loader(x, y, 20, shuffle=True),
        optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
        loss_fn=nn.functional.cross_entropy,
        epochs=20,
        eval_data={"test": (x, y)},
        eval_every=5,
        callback=lambda epoch, m: seen.append((epoch, m.training)),
    )
    assert hist["test_acc"][-1] > 0.95
    assert 0 <= min(hist["test_acc"]) and max(hist["test_acc"]) <= 1
    assert [e for e, _ in seen] == [5, 10, 15, 20]
    assert model.training


def test_evaluate_restores_mode_and_uses_eval_mode():
    model = nn.Sequential(nn.Dropout(0.5))
    x = torch.ones(1000, 1)
    model.train()
    out = nbutils.evaluate(model, (x, x), nn.functional.mse_loss)
    assert out["loss"] == 0.0  # Dropout is the identity in eval mode
    assert model.training
    model.eval()
    nbutils.evaluate(model, (x, x), nn.functional.mse_loss)
    assert not model.training


def test_bad_input_is_named():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = (torch.zeros(4, 1), torch.zeros(4, 1))
    mse = nn.functional.mse_loss
    with pytest.raises(ValueError, match="epochs must be an int >= 1, got 0"):
        nbutils.train(model, data, optimizer=opt, loss_fn=mse, epochs=0)
    with pytest.raises(ValueError, match="eval_every must be an int >= 1"):
        nbutils.train(model, data, optimizer=opt, loss_fn=mse, epochs=1, eval_every=0)
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        nbutils.train(model, data, optimizer="sgd", loss_fn=mse, epochs=1)
    with pytest.raises(ValueError, match="eval_data keys must be identifiers other than 'train'"):
        nbutils.train(model, data, optimizer=opt, loss_fn=mse, epochs=1, eval_data={"train": data})
    with pytest.raises(TypeError, match="train_data must be a DataLoader or a tuple"):
        nbutils.train(model, (data[0],), optimizer=opt, loss_fn=mse, epochs=1)
    with pytest.raises(ValueError, match="x and y must have the same length"):
        nbutils.train(model, (data[0], data[1][:3]), optimizer=opt, loss_fn=mse, epochs=1)
    with pytest.raises(TypeError, match="train_data must be a DataLoader or a tuple"):
        nbutils.train(model, 5, optimizer=opt, loss_fn=mse, epochs=1)
    with pytest.raises(ValueError, match="data must contain at least one sample"):
        nbutils.evaluate(model, [], mse)
