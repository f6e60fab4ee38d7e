"""Experiment plumbing for the chapter on Dropout in front of BatchNorm (the variance shift).

* :func:`train_stacked` trains K networks of one architecture at once
  (:class:`~nbutils.stacking.StackedModels`), each from its own seed: its own initial weights, its
  own order of the training data, its own Dropout masks.
* :func:`bn_eval_inputs` captures, with forward hooks, what every BatchNorm layer receives when
  the network runs in eval mode (Dropout off, population statistics in use).
* :func:`variance_ratios` turns those inputs into the quantity the chapter studies, per BN layer:
  the input variance (``torch.var``) divided by the layer's ``running_var``, averaged over the
  channels, with a standard error from the per-sample influence values.
* :func:`markdown_table` (from :mod:`nbutils.display`) formats a results table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.checks import check_int, check_seeds
from nbutils.display import markdown_table
from nbutils.recalibration import bn_layers as _bn_layers
from nbutils.stacking import StackedModels, stacked_loss

__all__ = ["bn_eval_inputs", "markdown_table", "train_stacked", "variance_ratios"]


def _check_xy(x: object, y: object) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"x and y must be torch.Tensor, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            "x must have shape (N, ...) and y shape (N,) with the same N >= 1, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def train_stacked(
    make_model: Callable[[], nn.Module],
    seeds: Sequence[int],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
) -> list[nn.Module]:
    """Train one network per seed with Adam on cross-entropy, all at once; return them in eval mode.

    For each ``seed`` in ``seeds`` (ints >= 0, one network each): ``torch.manual_seed(seed)``,
    then ``make_model()`` draws the initial weights; a ``torch.Generator`` seeded with the same
    ``seed`` shuffles the training data ``x`` (shape ``(N, ...)``), ``y`` (class labels, shape
    ``(N,)``) every epoch into mini-batches of ``batch_size`` (the last one shorter if
    ``batch_size`` does not divide ``N``). Two calls with the same seeds and a different
    ``make_model`` (e.g. with and without Dropout) therefore start from the same weights and
    see the same batches, which is what pairing by seed needs.

    The networks are stacked (:class:`~nbutils.stacking.StackedModels`) and trained by one
    ``torch.optim.Adam(lr=lr)``, which takes exactly the steps of one optimizer per network.
    Dropout (and any other train-mode randomness) draws different masks for every network from
    PyTorch's global generator, which is left where the last initialization put it. Returns a
    list of ordinary modules (copies), in eval mode, in the order of ``seeds``.
    """
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    seeds = check_seeds(seeds, distinct=False)
    _check_xy(x, y)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(make_model())
    orders = [torch.Generator().manual_seed(seed) for seed in seeds]
    stack = StackedModels(models).train()
    optimizer = torch.optim.Adam(stack.parameters(), lr=lr)
    for _ in range(epochs):
        perms = torch.stack([torch.randperm(len(x), generator=g) for g in orders])
        for idx in perms.split(batch_size, dim=1):  # idx: (K, B), one batch per network
            loss = stacked_loss(F.cross_entropy, stack(x[idx]), y[idx]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return [model.eval() for model in stack.unstack()]


def bn_eval_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inputs of every BatchNorm layer when ``model`` runs on ``x`` in eval mode.

    One forward pass over all of ``x`` (shape ``(N, ...)``) under ``torch.no_grad()`` with the
    whole model in eval mode (Dropout off, BN normalizing with its running statistics); forward
    hooks copy each BN layer's input. Returns ``{layer name: tensor of shape (N, C, ...)}`` in
    the order of ``model.named_modules()``. The model's own train/eval flags are restored.
    """
    layers = _bn_layers(model)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) < 2:
        raise ValueError(f"x must be a tensor of shape (N, ...) with N >= 2, got {x!r:.60}")
    captured: dict[str, torch.Tensor] = {}
    modes = {m: m.training for m in model.modules()}
    handles = [
        bn.register_forward_hook(
            lambda _m, args, _out, name=name: captured.__setitem__(name, args[0].detach())
        )
        for name, bn in layers.items()
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return {name: captured[name].clone() for name in layers}


def variance_ratios(model: nn.Module, x: torch.Tensor) -> list[tuple[float, float]]:
    """Per BatchNorm layer: (input variance on ``x`` in eval mode) / ``running_var``, and its s.e.

    For each BN layer (in the order of ``model.named_modules()``), with ``a`` its eval-mode
    input from :func:`bn_eval_inputs` reshaped to ``(n, C)`` (samples, and positions for
    spatial inputs, along the first axis) and ``r = running_var`` (shape ``(C,)``), returns
    ``(R, se)`` with

    * ``R = mean_c torch.var(a[:, c]) / r[c]`` (unbiased variance, float64): 1 when the stored
      statistics describe what the layer receives at test time;
    * ``se = std_i(phi_i) / sqrt(n)``, the standard error of ``R`` as an estimate of its
      population value, from the influence values ``phi_i = mean_c ((a_ic - m_c)^2 - v_c) / r_c``
      of the samples (this accounts for the correlation between channels; ``running_var`` is
      treated as fixed).
    """
    layers = _bn_layers(model)
    inputs = bn_eval_inputs(model, x)
    result = []
    for name, bn in layers.items():
        a = inputs[name].double().transpose(0, 1).flatten(1).T  # (n, C)
        r = bn.running_var.double()
        dev2 = (a - a.mean(dim=0)) ** 2
        ratio = (torch.var(a, dim=0) / r).mean().item()
        influence = ((dev2 - dev2.mean(dim=0)) / r).mean(dim=1)
        result.append((ratio, influence.std().item() / math.sqrt(len(a))))
    return result
