"""Tracking scale-invariant weights in training: norms, gradients and angular updates.

A weight that feeds a normalization layer only matters through its direction. What an
optimizer does to it is then described by a few numbers per step: its norm ``‖w‖``, the norm of
the loss gradient ``‖g‖``, the cosine between the two, and the angle by which the step turns
``w``. :func:`train_tracked` trains a :class:`~nbutils.stacking.StackedModels` on mini-batches
and records them for chosen parameters, one value per model and step; :func:`angle` is the
angle between two stacked tensors; :func:`stacked_accuracy` scores every model of a stack.

    >>> rec = train_tracked(stack, opt, x, y, steps=500, batch_size=64,
    ...                     generator=gen, track=["0.weight"])
    >>> rec["0.weight"]["angle"].shape    # (steps, K), radians
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nbutils.checks import check_int
from nbutils.stacking import StackedModels, stacked_loss

__all__ = ["angle", "stacked_accuracy", "train_tracked"]


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between ``a[k]`` and ``b[k]`` (flattened), shape ``(K,)``.

    ``a`` and ``b`` have the same shape ``(K, ...)``. Computed as
    ``2 atan2(‖â - b̂‖, ‖â + b̂‖)`` with unit vectors ``â, b̂``, which stays accurate for tiny
    angles (``arccos`` of the cosine does not), in float64.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (K, ...), got {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    ua, ub = (t.detach().flatten(1).double() for t in (a, b))
    na, nb = ua.norm(dim=1, keepdim=True), ub.norm(dim=1, keepdim=True)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("the angle to a zero vector is undefined: a[k] or b[k] is all zeros")
    ua, ub = ua / na, ub / nb
    return 2 * torch.atan2((ua - ub).norm(dim=1), (ua + ub).norm(dim=1))


def _check_xy(x: object, y: object) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"x and y must be torch.Tensor, got {type(x).__name__} and {type(y).__name__}"
        )
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(
            "x must have shape (N, ...) and y shape (N,) with the same N, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def stacked_accuracy(stack: StackedModels, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of every model of ``stack`` on ``(x, y)`` in eval mode, shape ``(K,)``.

    ``x``: ``(N, ...)``, the same inputs for every model; ``y``: ``(N,)`` class labels. The stack
    is returned to the mode it was in.
    """
    if not isinstance(stack, StackedModels):
        raise TypeError(f"stack must be a StackedModels, got {type(stack).__name__}")
    _check_xy(x, y)
    mode = stack.training
    stack.eval()
    with torch.no_grad():
        pred = stack(x, shared_input=True).argmax(-1)  # (K, N)
    stack.train(mode)
    return (pred == y).double().mean(dim=1)


def train_tracked(
    stack: StackedModels,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    track: Sequence[str],
) -> dict[str, dict[str, torch.Tensor]]:
    """Train ``stack`` with cross-entropy for ``steps`` steps and record the tracked parameters.

    ``x``: ``(N, ...)`` inputs and ``y``: ``(N,)`` labels, shared by all K models; every model
    draws its own mini-batches of ``batch_size`` (a fresh random order of the N samples per
    epoch, from ``generator``, so two calls with equally seeded generators see the same batches).
    ``optimizer`` holds the stack's parameters (any parameter groups).

    Returns, for each name in ``track`` (a name of ``stack.named_parameters()``), a dict of
    float64 tensors: ``"norm"`` ``(steps + 1, K)`` (before every step and after the last),
    ``"grad_norm"`` and ``"cos"`` ``(steps, K)`` (the loss gradient, before the optimizer adds
    any decay, and its cosine with the parameter), ``"angle"`` ``(steps, K)`` (radians turned by
    each step); and under ``"loss"`` the key ``"loss"``: ``(steps, K)`` training losses.
    """
    if not isinstance(stack, StackedModels):
        raise TypeError(f"stack must be a StackedModels, got {type(stack).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    _check_xy(x, y)
    if batch_size > len(x):
        raise ValueError(f"batch_size must be <= N = {len(x)}, got {batch_size}")
    named = stack.named_parameters()
    if isinstance(track, (str, bytes)) or not isinstance(track, Sequence) or not track:
        raise TypeError(f"track must be a non-empty list of parameter names, got {track!r}")
    for name in track:
        if name not in named:
            raise ValueError(
                f"track: {name!r} is not a parameter of the stack; choose from {sorted(named)}"
            )
    k, n = len(stack), len(x)
    per_epoch = n // batch_size
    rec = {
        name: {
            "norm": torch.empty(steps + 1, k, dtype=torch.float64),
            "grad_norm": torch.empty(steps, k, dtype=torch.float64),
            "cos": torch.empty(steps, k, dtype=torch.float64),
            "angle": torch.empty(steps, k, dtype=torch.float64),
        }
        for name in track
    }
    losses = torch.empty(steps, k, dtype=torch.float64)
    stack.train()
    order = None
    for t in range(steps):
        if t % per_epoch == 0:
            order = torch.argsort(torch.rand(k, n, generator=generator), dim=1)
        idx = order[:, (t % per_epoch) * batch_size : (t % per_epoch + 1) * batch_size]
        optimizer.zero_grad()
        loss = stacked_loss(F.cross_entropy, stack(x[idx]), y[idx])
        loss.sum().backward()
        before = {}
        for name in track:
            w, g = named[name].detach().flatten(1).double(), named[name].grad.flatten(1).double()
            wn, gn = w.norm(dim=1), g.norm(dim=1)
            rec[name]["norm"][t] = wn
            rec[name]["grad_norm"][t] = gn
            rec[name]["cos"][t] = (w * g).sum(1) / (wn * gn)
            before[name] = named[name].detach().clone()
        optimizer.step()
        for name in track:
            rec[name]["angle"][t] = angle(before[name], named[name])
        losses[t] = loss.detach().double()
    for name in track:
        rec[name]["norm"][steps] = named[name].detach().flatten(1).double().norm(dim=1)
    rec["loss"] = {"loss": losses}
    return rec
