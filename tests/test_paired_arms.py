"""nbutils.paired_arms: full-batch training of a stack, and the table of paired results."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nbutils.paired_arms import paired_table, train_full_batch
from nbutils.stacking import StackedModels
from nbutils.stats import mean_ci, paired_diff


def small_mlp(seed: int, p: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    drop = nn.Dropout(p) if p > 0 else nn.Identity()
    return nn.Sequential(nn.Linear(1, 8), nn.ReLU(), drop, nn.Linear(8, 1)).double()


def data(k: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.linspace(-1, 1, n, dtype=torch.float64)[:, None]
    y = 1.5 * x + 0.5 * torch.randn(k, n, 1, generator=gen, dtype=torch.float64)
    return x, y


def run(stack, x, y, **kwargs):
    options = {
        "optimizer": torch.optim.SGD(stack.parameters(), lr=0.1, momentum=0.9),
        "loss_fn": F.mse_loss,
        "steps": 7,
        "eval_every": 3,
    }
    options.update(kwargs)
    return train_full_batch(stack, x, y, **options)


def test_stacked_full_batch_training_equals_separate_training():
    k, steps = 3, 7
    models = [small_mlp(s) for s in range(k)]
    separate = [copy.deepcopy(m) for m in models]
    x, y = data(k)
    x_grid = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    stack = StackedModels(models)
    hist = run(stack, x, y, eval_inputs={"grid": x_grid}, shared_input=True)

    assert hist["step"].tolist() == [3, 6, 7]
    assert hist["train_loss"].shape == (3, k)
    assert hist["grid"].shape == (3, k, 5, 1)
    assert stack.training
    for i, model in enumerate(separate):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y[i])
            loss.backward()
            opt.step()
            if step in (3, 6, 7):
                row = [3, 6, 7].index(step)
                torch.testing.assert_close(hist["train_loss"][row, i], loss.detach())
                with torch.no_grad():
                    torch.testing.assert_close(hist["grid"][row, i], model(x_grid))
    for mine, theirs in zip(stack.unstack(), separate, strict=True):
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b)


def test_per_model_inputs_and_eval_mode_outputs():
    # x of shape (K, B, 1); with Dropout the recorded outputs are the eval-mode ones.
    k = 2
    models = [small_mlp(s, p=0.5) for s in range(k)]
    x, y = data(k)
    xs = x.expand(k, -1, -1).clone()
    stack = StackedModels(models)
    hist = run(stack, xs, y, steps=4, eval_every=4, eval_inputs={"x": x})
    assert hist["step"].tolist() == [4]
    for i, model in enumerate(stack.unstack()):
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(hist["x"][0, i], model(x))
    assert stack.training, "the stack is left in train mode"


def test_dropout_masks_differ_between_models():
    # Two identical models on identical data: only their masks tell them apart.
    models = [small_mlp(0, p=0.5), small_mlp(0, p=0.5)]
    x, y = data(1)
    y2 = y.expand(2, -1, -1).clone()
    hist = run(StackedModels(models), x, y2, shared_input=True, steps=3, eval_every=1)
    assert not torch.equal(hist["train_loss"][:, 0], hist["train_loss"][:, 1])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"stack": "not a stack"}, TypeError, "stack must be an nbutils.StackedModels"),
        ({"x": [1.0]}, TypeError, "x and y must be torch.Tensor"),
        ({"optimizer": "sgd"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1, got 0"),
        ({"steps": 2.0}, TypeError, "steps must be an int >= 1, got 2.0"),
        ({"steps": True}, TypeError, "steps must be an int >= 1, got True"),
        ({"eval_every": 0}, ValueError, "eval_every must be an int >= 1, got 0"),
        ({"shared_input": 1}, TypeError, "shared_input must be True or False, got 1"),
        ({"y": torch.zeros(5, 6, 1)}, ValueError, r"y must have shape \(K, B, ...\) with K = 2"),
        ({"y": torch.zeros(2, 4, 1)}, ValueError, "the same number of samples per model"),
        ({"eval_inputs": [torch.zeros(3, 1)]}, TypeError, "eval_inputs must be a mapping"),
        ({"eval_inputs": {"step": torch.zeros(3, 1)}}, ValueError, "other than"),
        ({"eval_inputs": {"a b": torch.zeros(3, 1)}}, ValueError, "got 'a b'"),
        ({"eval_inputs": {"g": [0.0]}}, TypeError, r"eval_inputs\['g'\] must be a torch.Tensor"),
        ({"eval_inputs": {"g": torch.tensor(0.0)}}, ValueError, "got a 0-d tensor"),
    ],
)
def test_train_full_batch_rejects_bad_input(change, error, match):
    models = [small_mlp(s) for s in range(2)]
    stack = StackedModels(models)
    x, y = data(2)
    args = {
        "stack": stack,
        "x": x,
        "y": y,
        "optimizer": torch.optim.SGD(stack.parameters(), lr=0.1),
        "loss_fn": F.mse_loss,
        "steps": 2,
        "eval_every": 1,
        "shared_input": True,
    }
    args.update(change)
    positional = [args.pop(name) for name in ("stack", "x", "y")]
    with pytest.raises(error, match=match):
        train_full_batch(*positional, **args)


def test_paired_table_rows_match_the_statistics():
    a = torch.tensor([0.40, 0.42, 0.39, 0.45, 0.41], dtype=torch.float64)
    b = torch.tensor([0.35, 0.41, 0.37, 0.40, 0.36], dtype=torch.float64)
    table = paired_table({"test MSE": (a, b), "other": (b, a)}, ("none", "dropout"), digits=3)
    lines = table.splitlines()
    assert lines[0] == "| | none | dropout | dropout − none (paired) | t |"
    assert len(lines) == 4
    diff = paired_diff(b, a)
    assert lines[2] == (
        f"| test MSE | {mean_ci(a).format(3)} | {mean_ci(b).format(3)} "
        f"| {diff.format(3)} | {diff.t:+.1f} |"
    )
    assert lines[3].startswith("| other |") and f"{-diff.t:+.1f}" in lines[3]


@pytest.mark.parametrize(
    ("metrics", "labels", "digits", "error", "match"),
    [
        ([("m", ([1.0, 2.0], [1.0, 2.0]))], ("a", "b"), 3, TypeError, "metrics must be a mapping"),
        ({}, ("a", "b"), 3, ValueError, "at least one metric"),
        ({"m": ([1.0, 2.0], [1.0, 3.0])}, ("a",), 3, TypeError, "labels must be a tuple of two"),
        ({"m": ([1.0, 2.0], [1.0, 3.0])}, ("a", ""), 3, TypeError, "non-empty strings"),
        ({"m": ([1.0, 2.0], [1.0, 3.0])}, ("a", "b"), -1, ValueError, "digits must be an int"),
        ({"m": ([1.0, 2.0], [1.0, 3.0])}, ("a", "b"), 2.0, TypeError, "digits must be an int"),
        ({"m": [[1.0, 2.0], [1.0, 3.0]]}, ("a", "b"), 3, TypeError, r"metrics\['m'\] must be"),
        ({"m": ([1.0, 2.0], [1.0])}, ("a", "b"), 3, ValueError, "same length"),
    ],
)
def test_paired_table_rejects_bad_input(metrics, labels, digits, error, match):
    with pytest.raises(error, match=match):
        paired_table(metrics, labels, digits=digits)


def test_paired_table_names_the_metric_in_errors():
    with pytest.raises(ValueError, match=r"metrics\['m'\]: x needs at least 2 values"):
        paired_table({"m": ([1.0], [2.0])}, ("a", "b"))
    with pytest.raises(ValueError, match=r"level must be a float in \(0, 1\)"):
        paired_table({"m": ([1.0, 2.0], [2.0, 2.5])}, ("a", "b"), level=1.5)
