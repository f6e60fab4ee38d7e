"""A small, explicit training loop that returns a history of losses (and accuracies)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
#: Either a DataLoader-like iterable of ``(x, y)`` batches, or one full batch ``(x, y)``.
Data = Iterable[Batch] | Batch


def _batches(data: Data, name: str) -> Iterable[Batch]:
    if isinstance(data, tuple):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise TypeError(f"{name} must be a DataLoader or a tuple (x, y) of tensors")
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"{name}: x and y must have the same length, got {len(data[0])} and {len(data[1])}"
            )
        return (data,)
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a DataLoader or a tuple (x, y), got {type(data).__name__}")
    return data


def evaluate(
    model: nn.Module, data: Data, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> dict[str, float]:
    """Mean loss (and accuracy, for integer class labels) over ``data``, in eval mode, no grad.

    The loss is averaged per sample, so batches of different sizes are weighted correctly.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    classify = None
    with torch.no_grad():
        for x, y in _batches(data, "data"):
            out = model(x)
            total += float(loss_fn(out, y)) * len(y)
            count += len(y)
            classify = not torch.is_floating_point(y)
            if classify:
                correct += int((out.argmax(dim=1) == y).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("data must contain at least one sample")
    result = {"loss": total / count}
    if classify:
        result["acc"] = correct / count
    return result


def train(
    model: nn.Module,
    train_data: Data,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    eval_data: Mapping[str, Data] | None = None,
    eval_every: int = 1,
    callback: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` passes over ``train_data`` and return its history.

    ``train_data`` is a DataLoader of ``(x, y)`` batches or one full batch ``(x, y)``.
    Every ``eval_every`` epochs (and after the last one) each set in ``eval_data`` (e.g.
    ``{"val": val_loader}``) is evaluated with :func:`evaluate`, and ``callback(epoch, model)``
    is called if given (e.g. to take snapshots).

    The history has the keys ``"epoch"``, ``"train_loss"`` (mean mini-batch loss over the
    epoch, in train mode) and ``"<name>_loss"`` / ``"<name>_acc"`` for each evaluated set.
    The model is left in train mode.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1, got {eval_every!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    eval_data = dict(eval_data or {})
    for name in eval_data:
        if name == "train" or not name.isidentifier():
            raise ValueError(f"eval_data keys must be identifiers other than 'train', got {name!r}")
    batches = _batches(train_data, "train_data")

    history: dict[str, list[float]] = {"epoch": [], "train_loss": []}
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        if epoch % eval_every and epoch != epochs:
            continue
        history["epoch"].append(epoch)
        history["train_loss"].append(total / count)
        for name, data in eval_data.items():
            for key, value in evaluate(model, data, loss_fn).items():
                history.setdefault(f"{name}_{key}", []).append(value)
        if callback is not None:
            callback(epoch, model)
        model.train()
    return history
