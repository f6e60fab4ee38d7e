"""Plumbing for the chapter on today's normalizers: weight standardization side by side, a
sequence task generated in code, stacked training with per-model warm-up, gradient norms.

The normalizers themselves (RMSNorm, weight normalization's gradient, the transformer blocks)
are written out in the chapter. What lives here is what the chapter's experiments *use*:

- :func:`standardize_weight` and :class:`StandardizeRows`: weight standardization (Qiao et al.)
  of a convolution's filters, as a function and as a parametrization that can act on a subset
  of the filters of one wide convolution;
- :func:`ws_sweep`: BN, GN and WS+GN CNNs trained side by side on digits (built on
  :mod:`nbutils.batch_sweep`), paired by seed;
- :func:`reversal_task`: sequences of random tokens and their reversals;
- :func:`train_with_warmup`: K stacked models trained with Adam, each with its own warm-up
  length, the same batches for all;
- :func:`last_ffn_grad_norms`: per-layer gradient norms at initialization of stacked models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from nbutils.batch_sweep import SideBySide, accuracies, train_sgd
from nbutils.checks import check_int, check_seeds
from nbutils.stacking import StackedModels, stacked_loss

__all__ = [
    "StandardizeRows",
    "adam_step",
    "last_ffn_grad_norms",
    "reversal_task",
    "standardize_weight",
    "train_with_warmup",
    "ws_sweep",
]


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardization: each output unit's weights to mean 0 and variance 1.

    ``weight``: ``(out, *fan_in_shape)``, e.g. a Conv2d's ``(out, in, kh, kw)`` or a Linear's
    ``(out, in)``, with at least 2 dimensions. Row ``i`` (all weights of output unit ``i``)
    becomes ``(w_i - mean(w_i)) / sqrt(var(w_i) + eps)`` with the biased variance over the
    ``fan_in`` weights of the row. Returns a tensor of the shape of ``weight``.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have at least 2 dimensions (out, fan_in...), got {tuple(weight.shape)}"
        )
    eps = _check_eps(eps)
    rows = weight.reshape(weight.shape[0], -1)
    mean = rows.mean(dim=1, keepdim=True)
    var = rows.var(dim=1, keepdim=True, correction=0)
    return ((rows - mean) / torch.sqrt(var + eps)).reshape(weight.shape)


class StandardizeRows(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``) that standardizes chosen rows.

    ``mask``: bool tensor of shape ``(out,)``; rows where it is True go through
    :func:`standardize_weight`, the others are returned unchanged. ``mask=None``: all rows.
    """

    def __init__(self, mask: torch.Tensor | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        if mask is not None and (
            not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1
        ):
            raise TypeError(f"mask must be a 1-D bool tensor or None, got {mask!r}")
        self.eps = _check_eps(eps)
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        standardized = standardize_weight(weight, self.eps)
        if self.mask is None:
            return standardized
        if self.mask.shape[0] != weight.shape[0]:
            raise ValueError(
                f"mask has {self.mask.shape[0]} entries but weight has {weight.shape[0]} rows"
            )
        keep = self.mask.view(-1, *([1] * (weight.dim() - 1)))
        return torch.where(keep, standardized, weight)


def ws_sweep(
    models: Mapping[str, tuple[Callable[[int], nn.Sequential], bool]],
    seeds: Sequence[int],
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    batch: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
) -> dict[str, torch.Tensor]:
    """Train every model once per seed, side by side, some with weight-standardized convolutions.

    ``models`` maps a name to ``(make, ws)``: ``make(seed) -> nn.Sequential`` builds a CNN that
    :class:`nbutils.batch_sweep.SideBySide` accepts (it should seed its own initialization), and
    ``ws`` says whether that model's convolutions are weight-standardized
    (:class:`StandardizeRows` on its filters of every Conv2d). ``seeds``: distinct ints >= 0, the
    same for every model (pairing); ``data(seed)`` returns ``(x_train, y_train, x_test,
    y_test)`` as for :func:`nbutils.batch_sweep.sweep`. Training: :func:`train_sgd` (batches of
    ``batch``, ``epochs``, cosine schedule from ``lr``, SGD with ``momentum``).

    Returns ``{name: accuracies}``, float64 tensors of shape ``(len(seeds),)`` in seed order:
    held-out accuracy in evaluation mode (BN with its running statistics).
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict name -> (factory, ws), got {models!r}")
    for name, spec in models.items():
        if (
            not isinstance(spec, tuple)
            or len(spec) != 2
            or not callable(spec[0])
            or not isinstance(spec[1], bool)
        ):
            raise TypeError(f"models[{name!r}] must be a pair (factory, ws: bool), got {spec!r}")
    seeds = check_seeds(seeds)
    if not callable(data):
        raise TypeError(f"data must be callable (seed -> 4 tensors), got {type(data).__name__}")

    per_seed = {s: data(s) for s in seeds}
    copies = [(name, s) for name in models for s in seeds]
    net = SideBySide([models[name][0](s) for name, s in copies])
    flags = torch.tensor([models[name][1] for name, _ in copies])
    for layer in net.body:
        if isinstance(layer, nn.Conv2d) and bool(flags.any()):
            mask = flags.repeat_interleave(layer.out_channels // len(copies))
            parametrize.register_parametrization(layer, "weight", StandardizeRows(mask))
    run_seeds = [s for _, s in copies]
    x_train, y_train, x_test, y_test = (
        torch.stack([per_seed[s][i] for s in run_seeds]) for i in range(4)
    )
    train_sgd(
        net, x_train, y_train, batch=batch, epochs=epochs, lr=lr, seeds=run_seeds,
        momentum=momentum,
    )  # fmt: skip
    acc = accuracies(net, x_test, y_test).view(len(models), len(seeds))
    return {name: acc[i] for i, name in enumerate(models)}


def reversal_task(
    n: int, length: int, vocab: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``length`` tokens drawn uniformly from ``range(vocab)``, and targets.

    Returns ``(x, y)``, both int64 of shape ``(n, length)``, with ``y[i, t] = x[i, length-1-t]``:
    the task is to output the sequence reversed.
    """
    n = check_int("n", n, 1)
    length = check_int("length", length, 1)
    vocab = check_int("vocab", vocab, 2)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    x = torch.randint(0, vocab, (n, length), generator=generator)
    return x, x.flip(-1)


def _token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def adam_step(
    params: Sequence[torch.Tensor],
    state: list[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    lr: torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam step on stacked parameters with one learning rate per model.

    ``params``: tensors of shape ``(K, ...)`` with ``.grad`` set; ``state``: one pair of
    moment tensors (zeros at the start) per parameter, updated in place; ``step``: the step
    number, 1 for the first; ``lr``: shape ``(K,)``. Model k's update is exactly that of
    ``torch.optim.Adam(lr=lr[k], betas, eps)`` (tested).
    """
    step = check_int("step", step, 1)
    if not isinstance(lr, torch.Tensor) or lr.dim() != 1:
        raise TypeError(f"lr must be a 1-D tensor of learning rates, one per model, got {lr!r}")
    b1, b2 = betas
    with torch.no_grad():
        for p, (m, v) in zip(params, state, strict=True):
            if p.grad is None:
                raise ValueError("every parameter needs a .grad; call backward() first")
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**step)).sqrt().add_(eps)
            rate = (lr / (1 - b1**step)).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(rate * m / denom)


def train_with_warmup(
    models: Sequence[nn.Module],
    warmups: Sequence[int],
    *,
    lr: float,
    steps: int,
    batch: int,
    length: int,
    vocab: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Train K sequence models on :func:`reversal_task` with Adam and linear warm-up.

    ``models``: K modules of one architecture mapping ``(B, length)`` tokens to ``(B, length,
    vocab)`` logits; they are stacked (:class:`nbutils.StackedModels`), the originals are not
    changed. ``warmups``: K ints >= 0; model k's learning rate at step t = 1, 2, ... is
    ``lr * min(1, t / warmups[k])`` (constant ``lr`` for 0). Every step draws one batch of
    ``batch`` fresh sequences from ``generator``, the same for all models.

    Returns the training losses, shape ``(steps, K)`` (mean cross-entropy per token).
    """
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or not models:
        raise TypeError(f"models must be a non-empty list of nn.Module, got {models!r}")
    if isinstance(warmups, (str, bytes)) or not isinstance(warmups, Sequence):
        raise TypeError(f"warmups must be a list of ints, got {warmups!r}")
    if len(warmups) != len(models):
        raise ValueError(f"warmups must hold one int per model ({len(models)}), got {len(warmups)}")
    warm = torch.tensor([check_int("each warm-up", w, 0) for w in warmups], dtype=torch.float64)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    stack = StackedModels(list(models))
    params = stack.parameters()
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    losses = []
    for t in range(1, steps + 1):
        factor = torch.where(warm > 0, (t / warm.clamp(min=1)).clamp(max=1), 1.0)
        x, y = reversal_task(batch, length, vocab, generator)
        loss = stacked_loss(_token_loss, stack(x, shared_input=True), y, shared_target=True)
        for p in params:
            p.grad = None
        loss.sum().backward()
        adam_step(params, state, t, (lr * factor).to(params[0].dtype))
        losses.append(loss.detach())
    return torch.stack(losses)


def last_ffn_grad_norms(
    models: Sequence[nn.Module],
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """Frobenius norms of the loss gradient w.r.t. named parameters, for K models at once.

    ``models``: K modules of one architecture (stacked, not changed); ``names``: parameter
    names (e.g. ``"blocks.0.ff2.weight"``); ``x``: ``(B, length)`` tokens and ``y``: targets of
    the same shape, the same batch for every model; the loss is the mean cross-entropy per
    token. Returns a tensor of shape ``(len(names), K)``.
    """
    if isinstance(models, nn.Module) or not isinstance(models, Sequence) or not models:
        raise TypeError(f"models must be a non-empty list of nn.Module, got {models!r}")
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise TypeError(f"names must be a non-empty list of parameter names, got {names!r}")
    stack = StackedModels(list(models))
    params = stack.named_parameters()
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"names {missing} are not parameters of the models; have {list(params)}")
    loss = stacked_loss(_token_loss, stack(x, shared_input=True), y, shared_target=True)
    grads = torch.autograd.grad(loss.sum(), [params[n] for n in names])
    return torch.stack([g.flatten(1).norm(dim=1) for g in grads])
