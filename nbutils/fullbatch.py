"""Full-batch training of many small models at once, one model per training set.

A resampling experiment (the course's bias-variance decomposition, for instance) fits one
architecture to many re-drawn training sets. Each set is small enough for full-batch gradient
descent, so the K models are stacked with :class:`nbutils.stacking.StackedModels` and trained in
one loop: every step is one vmapped forward pass, one backward pass and one optimizer step for
all of them. Because the optimizers of :mod:`torch.optim` update each parameter element on its
own, model k takes the same steps as it would if trained alone (up to the last bits of the
batched matrix products).

    >>> from functools import partial
    >>> models = [make_model() for _ in range(100)]          # one initialization per set
    >>> stack, losses = fit_full_batch(
    ...     models, x, y,                                      # x: (B, d), y: (100, B, 1)
    ...     make_optimizer=partial(torch.optim.SGD, lr=0.05), epochs=400)
    >>> pred = stack(x_test, shared_input=True)              # (100, B_test, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nbutils.checks import check_int
from nbutils.stacking import StackedModels, stacked_loss

__all__ = ["fit_full_batch"]


def fit_full_batch(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
) -> tuple[StackedModels, torch.Tensor]:
    """Train K models of one architecture, model k by full-batch descent on ``(x, y[k])``.

    ``models``: K modules of identical structure (copied; the originals are not changed).
    ``x``: the inputs, ``(B, ...)`` shared by every model (a fixed design) or ``(K, B, ...)``,
    one batch per model. ``y``: the targets, ``(K, B, ...)``. ``make_optimizer``: called once
    with the stacked parameters, returns the optimizer (e.g.
    ``functools.partial(torch.optim.SGD, lr=0.05, weight_decay=1e-2)``). ``epochs``: the number
    of full-batch steps. ``loss_fn(out_k, y_k)`` must return a scalar (default: mean squared
    error).

    Returns ``(stack, losses)``: the trained :class:`StackedModels`, left in eval mode, and each
    model's training loss after the last step, evaluated in eval mode, shape ``(K,)``.
    """
    if not callable(make_optimizer):
        raise TypeError(f"make_optimizer must be callable, got {type(make_optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    epochs = check_int("epochs", epochs, 1)
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    stack = StackedModels(models)
    k = len(stack)
    if y.dim() < 2 or y.shape[0] != k:
        raise ValueError(f"y must have shape (K, B, ...) with K = {k} models, got {tuple(y.shape)}")
    shared = x.dim() == y.dim() - 1
    if not shared and (x.dim() < 2 or x.shape[0] != k):
        raise ValueError(
            f"x must have shape (B, ...) shared by all models or (K, B, ...) with K = {k}, "
            f"got {tuple(x.shape)} for y of shape {tuple(y.shape)}"
        )
    batch = x.shape[0] if shared else x.shape[1]
    if batch != y.shape[1]:
        raise ValueError(
            f"x and y must hold the same number of samples B, got {batch} and {y.shape[1]}"
        )
    optimizer = make_optimizer(stack.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "make_optimizer must return a torch.optim.Optimizer, got " + type(optimizer).__name__
        )

    def losses() -> torch.Tensor:
        out = stacked_loss(loss_fn, stack(x, shared_input=shared), y)
        if out.shape != (k,):
            raise ValueError(
                f"loss_fn must return a scalar per model, got shape {tuple(out.shape[1:])}"
            )
        return out

    stack.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        losses().sum().backward()
        optimizer.step()
    stack.eval()
    with torch.no_grad():
        final = losses()
    return stack, final
