"""Two arms of an experiment trained as stacks on the same data sets, and their paired summary.

A comparison such as "dropout versus no dropout" trains one small network per data set and per
arm. Both arms see the same data sets and start from the same weights, so the results are paired
by data set. :func:`train_full_batch` trains one arm, K models held in a
:class:`nbutils.stacking.StackedModels`, with full-batch steps and a history of eval-mode outputs;
:func:`paired_table` prints the means of a few metrics for both arms and their paired differences
with t-intervals (:mod:`nbutils.stats`).

    >>> stack = StackedModels([make_model() for _ in range(K)])
    >>> opt = torch.optim.SGD(stack.parameters(), lr=0.01)
    >>> hist = train_full_batch(stack, x, y, optimizer=opt, loss_fn=F.mse_loss, steps=1000,
    ...                         eval_every=50, eval_inputs={"grid": x_grid}, shared_input=True)
    >>> hist["grid"].shape   # (evaluations, K, len(x_grid), 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from nbutils.checks import check_int
from nbutils.stacking import StackedModels, stacked_loss
from nbutils.stats import mean_ci, paired_diff

__all__ = ["paired_table", "train_full_batch"]

_RESERVED = ("step", "train_loss")


def train_full_batch(
    stack: StackedModels,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    eval_every: int,
    eval_inputs: Mapping[str, torch.Tensor] | None = None,
    shared_input: bool = False,
) -> dict[str, torch.Tensor]:
    """Train K stacked models for ``steps`` full-batch steps, model k on targets ``y[k]``.

    ``x``: ``(K, B, ...)``, one input batch per model, or ``(B, ...)`` with ``shared_input=True``
    (e.g. a fixed design shared by all data sets); ``y``: ``(K, B, ...)``. ``optimizer`` holds
    ``stack.parameters()``. Each step is one train-mode forward pass (fresh Dropout masks per
    model), the sum of the K per-model losses, one backward pass and one optimizer step.

    Every ``eval_every`` steps and after the last one, the history records, without gradients:

    * ``"step"``: shape ``(E,)``, the number of steps taken so far;
    * ``"train_loss"``: ``(E, K)``, the train-mode loss of that step (before its update);
    * for each ``name`` in ``eval_inputs`` (inputs ``(N, ...)`` shared by all models): ``(E, K,
      N, ...)``, the eval-mode outputs (Dropout off, BatchNorm on running statistics).

    The stack is left in train mode.
    """
    if not isinstance(stack, StackedModels):
        raise TypeError(f"stack must be an nbutils.StackedModels, got {type(stack).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"x and y must be torch.Tensor, got {type(x).__name__} and {type(y).__name__}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    steps = check_int("steps", steps, 1)
    eval_every = check_int("eval_every", eval_every, 1)
    if not isinstance(shared_input, bool):
        raise TypeError(f"shared_input must be True or False, got {shared_input!r}")
    k = len(stack)
    if y.dim() < 2 or y.shape[0] != k:
        raise ValueError(f"y must have shape (K, B, ...) with K = {k} models, got {tuple(y.shape)}")
    batch = x.shape[0] if shared_input else (x.shape[1] if x.dim() >= 2 else None)
    if batch != y.shape[1]:
        raise ValueError(
            f"x and y must hold the same number of samples per model: x has shape "
            f"{tuple(x.shape)} (shared_input={shared_input}), y has shape {tuple(y.shape)}"
        )
    eval_inputs = {} if eval_inputs is None else eval_inputs
    if not isinstance(eval_inputs, Mapping):
        raise TypeError(
            f"eval_inputs must be a mapping of names to tensors, got {type(eval_inputs).__name__}"
        )
    for name, value in eval_inputs.items():
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
            raise ValueError(
                f"eval_inputs keys must be identifiers other than {_RESERVED}, got {name!r}"
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"eval_inputs[{name!r}] must be a torch.Tensor of shape (N, ...), got "
                f"{type(value).__name__}"
            )
        if value.dim() == 0:
            raise ValueError(f"eval_inputs[{name!r}] must have shape (N, ...), got a 0-d tensor")

    records: dict[str, list[torch.Tensor]] = {"train_loss": [], **{n: [] for n in eval_inputs}}
    taken: list[int] = []
    stack.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        losses = stacked_loss(loss_fn, stack(x, shared_input=shared_input), y)
        losses.sum().backward()
        optimizer.step()
        if step % eval_every and step != steps:
            continue
        taken.append(step)
        records["train_loss"].append(losses.detach().clone())
        stack.eval()
        with torch.no_grad():
            for name, inputs in eval_inputs.items():
                records[name].append(stack(inputs, shared_input=True))
        stack.train()
    history = {"step": torch.tensor(taken)}
    history.update({name: torch.stack(values) for name, values in records.items()})
    return history


ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def paired_table(
    metrics: Mapping[str, tuple[ArrayLike, ArrayLike]],
    labels: tuple[str, str],
    *,
    digits: int = 3,
    level: float = 0.95,
) -> str:
    """A Markdown table of paired results: one row per metric, arms A and B and B − A.

    ``metrics`` maps a metric's name to ``(a, b)``, two arrays of shape ``(n,)`` with one value
    per data set (element i of both from the same data set). ``labels`` names the arms A and B.
    Each cell is ``mean ± half-width`` of a t-interval at ``level`` (:func:`nbutils.stats.mean_ci`
    for the arms, :func:`nbutils.stats.paired_diff` for the difference), followed by the paired
    difference's t statistic.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping of names to (a, b) pairs, got {type(metrics).__name__}"
        )
    if not metrics:
        raise ValueError("metrics must hold at least one metric, got an empty mapping")
    if (
        not isinstance(labels, tuple)
        or len(labels) != 2
        or not all(isinstance(s, str) and s for s in labels)
    ):
        raise TypeError(f"labels must be a tuple of two non-empty strings, got {labels!r}")
    digits = check_int("digits", digits, 0)
    a_name, b_name = labels
    head = f"| | {a_name} | {b_name} | {b_name} − {a_name} (paired) | t |\n|---|---|---|---|---|\n"
    rows = []
    for name, pair in metrics.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"metrics[{name!r}] must be a tuple (a, b), got {type(pair).__name__}")
        a, b = pair
        if hasattr(a, "__len__") and hasattr(b, "__len__") and len(a) != len(b):
            raise ValueError(
                f"metrics[{name!r}]: a and b must have the same length (one value per data "
                f"set), got {len(a)} and {len(b)}"
            )
        try:
            est_a, est_b = mean_ci(a, level), mean_ci(b, level)
            diff = paired_diff(b, a, level)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"metrics[{name!r}]: {exc}") from None
        rows.append(
            f"| {name} | {est_a.format(digits)} | {est_b.format(digits)} "
            f"| {diff.format(digits)} | {diff.t:+.1f} |"
        )
    return head + "\n".join(rows)
