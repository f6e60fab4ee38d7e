"""Batch normalization for small normalization batches: Ghost BN and Batch Renormalization.

:class:`GhostBatchNorm2d` normalizes a large batch in "ghost" batches of ``ghost_batch``
samples, each with its own statistics (Hoffer et al. 2017). :class:`BatchRenorm2d` corrects
the batch statistics towards the running ones with a clipped scale ``r`` and shift ``d`` that
are treated as constants by autograd (Ioffe 2017); :func:`renorm_limits` is its relaxation
schedule for the clipping bounds. Both are subclasses of ``nn.BatchNorm2d``, so tools that look
for BatchNorm layers (``nbutils.batch_sweep.SideBySide``, ``nbutils.recalibrate_bn``) find them.

    >>> gbn = GhostBatchNorm2d(16, ghost_batch=4)      # a batch of 32: 8 ghost batches
    >>> brn = BatchRenorm2d(16, r_max=3.0, d_max=5.0)  # clipping bounds of the paper
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nbutils.checks import check_int, check_momentum

__all__ = ["BatchRenorm2d", "GhostBatchNorm2d", "renorm_limits"]


def _check_number(name: str, value: object, lowest: float, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number {allowed}, got {value!r}")
    if value < lowest:
        raise ValueError(f"{name} must be a number {allowed}, got {value}")
    return float(value)


def _check_4d(x: object, channels: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must have shape (N, {channels}, H, W), got {tuple(x.shape)}")
    return x


class GhostBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, in training mode, normalizes ghost batches of ``ghost_batch`` samples.

    ``x``: ``(N, C, H, W)`` with ``N`` a multiple of ``ghost_batch``. In training mode sample
    ``n`` is normalized with the mean and biased variance of its ghost batch (samples
    ``g * ghost_batch`` to ``(g + 1) * ghost_batch - 1``, all positions), and the running
    statistics are updated once per ghost batch, in order, exactly as ``nn.BatchNorm2d`` would
    be updated by the ghost batches fed one after another (unbiased variance, ``momentum``).
    With ``ghost_batch = N`` it is ``nn.BatchNorm2d``. Evaluation mode is ``nn.BatchNorm2d``'s.
    The ghost batches are computed in one vectorized pass.
    """

    def __init__(
        self,
        num_features: int,
        ghost_batch: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
    ) -> None:
        num_features = check_int("num_features", num_features, 1)
        self.ghost_batch = check_int("ghost_batch", ghost_batch, 1)
        momentum = check_momentum(momentum)
        eps = _check_number("eps", eps, 0.0, ">= 0")
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x, self.num_features)
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.ghost_batch
        if n % g:
            raise ValueError(f"the batch of {n} samples must be a multiple of ghost_batch = {g}")
        view = x.reshape(n // g, g, c, h, w)
        mean = view.mean(dim=(1, 3, 4), keepdim=True)
        var = view.var(dim=(1, 3, 4), keepdim=True, correction=0)
        y = ((view - mean) / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        with torch.no_grad():  # one EMA step per ghost batch, in order
            count = g * h * w
            a, k = self.momentum, n // g
            decay = (1 - a) ** torch.arange(k - 1, -1, -1, dtype=x.dtype)
            batch_means = mean.reshape(k, c)
            batch_vars = var.reshape(k, c) * count / max(count - 1, 1)
            keep = (1 - a) ** k
            self.running_mean.mul_(keep).add_(a * (decay @ batch_means))
            self.running_var.mul_(keep).add_(a * (decay @ batch_vars))
            self.num_batches_tracked.add_(k)
        return y


def renorm_limits(
    step: int,
    *,
    r_max: float,
    d_max: float,
    plain_steps: int = 0,
    r_steps: int = 0,
    d_steps: int = 0,
) -> tuple[float, float]:
    """The clipping bounds ``(r_limit, d_limit)`` of Batch Renorm at training step ``step``.

    Steps ``0, ..., plain_steps - 1`` use ``(1, 0)``: plain batch normalization. Afterwards the
    bounds grow linearly, ``r_limit`` from 1 to ``r_max`` at step ``r_steps`` and ``d_limit``
    from 0 to ``d_max`` at step ``d_steps``, and stay there (Ioffe 2017 used ``plain_steps =
    5000``, ``r_steps = 40000`` with ``r_max = 3`` and ``d_steps = 25000`` with ``d_max = 5``).
    With all three step counts 0 (the default) the bounds are ``(r_max, d_max)`` at every step.
    ``r_steps`` and ``d_steps`` must be 0 or at least ``plain_steps``; infinite bounds are
    allowed (no clipping) when ``plain_steps`` equals the ramp's end.
    """
    step = check_int("step", step, 0)
    r_max = _check_number("r_max", r_max, 1.0, ">= 1 (inf allowed)")
    d_max = _check_number("d_max", d_max, 0.0, ">= 0 (inf allowed)")
    plain_steps = check_int("plain_steps", plain_steps, 0)
    limits = []
    for name, end, start_value, final in (
        ("r_steps", r_steps, 1.0, r_max),
        ("d_steps", d_steps, 0.0, d_max),
    ):
        end = check_int(name, end, 0)
        if end and end < plain_steps:
            raise ValueError(f"{name} must be 0 or >= plain_steps = {plain_steps}, got {end}")
        if step < plain_steps:
            limits.append(start_value)
        elif step >= end:
            limits.append(final)
        else:
            if math.isinf(final):
                raise ValueError(
                    f"an infinite bound cannot be ramped: {name} = {end} > plain_steps"
                )
            frac = (step - plain_steps) / (end - plain_steps)
            limits.append(start_value + frac * (final - start_value))
    return limits[0], limits[1]


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch Renormalization (Ioffe 2017, Algorithm 1) for ``(N, C, H, W)`` inputs.

    Training mode, per channel, with ``μ_B``, ``σ_B = sqrt(var_B + eps)`` (biased ``var_B``)
    over the batch and positions, and the running ``μ``, ``σ``:
    ``r = clip(σ_B / σ, 1 / r_lim, r_lim)``, ``d = clip((μ_B - μ) / σ, -d_lim, d_lim)``, both
    detached (no gradient flows through them); ``y = γ ((x - μ_B) / σ_B · r + d) + β``; then
    ``μ ← μ + momentum (μ_B - μ)`` and ``σ ← σ + momentum (σ_B - σ)``. Evaluation mode:
    ``y = γ (x - μ) / σ + β``. The bounds ``(r_lim, d_lim)`` come from :func:`renorm_limits`
    at step ``num_batches_tracked`` (the number of training batches seen so far).

    Storage: ``running_mean`` is ``μ``; ``running_var`` holds ``σ²`` (the paper averages the
    standard deviation ``σ``, including ``eps``, not the variance), so ``σ = sqrt(running_var)``.
    ``r_max = inf, d_max = inf``: no clipping; ``r_max = 1, d_max = 0``: the training output is
    batch normalization's.
    """

    def __init__(
        self,
        num_features: int,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        plain_steps: int = 0,
        r_steps: int = 0,
        d_steps: int = 0,
        eps: float = 1e-5,
        momentum: float = 0.01,
    ) -> None:
        num_features = check_int("num_features", num_features, 1)
        eps = _check_number("eps", eps, 0.0, ">= 0")
        momentum = check_momentum(momentum)
        self.r_max, self.d_max = r_max, d_max
        self.plain_steps, self.r_steps, self.d_steps = plain_steps, r_steps, d_steps
        renorm_limits(0, **self._schedule())  # validates the schedule
        super().__init__(num_features, eps=eps, momentum=momentum)

    def _schedule(self) -> dict[str, float]:
        return {
            "r_max": self.r_max,
            "d_max": self.d_max,
            "plain_steps": self.plain_steps,
            "r_steps": self.r_steps,
            "d_steps": self.d_steps,
        }

    def limits(self) -> tuple[float, float]:
        """The bounds ``(r_lim, d_lim)`` the next training batch will use."""
        return renorm_limits(int(self.num_batches_tracked), **self._schedule())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x, self.num_features)
        shape = (1, -1, 1, 1)
        mu, sigma = self.running_mean, torch.sqrt(self.running_var)
        if not self.training:
            y = (x - mu.view(shape)) / sigma.view(shape)
            return y * self.weight.view(shape) + self.bias.view(shape)
        r_lim, d_lim = self.limits()
        mean = x.mean(dim=(0, 2, 3))
        std = torch.sqrt(x.var(dim=(0, 2, 3), correction=0) + self.eps)
        r = (std.detach() / sigma).clamp(1 / r_lim, r_lim)
        d = ((mean.detach() - mu) / sigma).clamp(-d_lim, d_lim)
        x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape)
        y = (x_hat + d.view(shape)) * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            a = self.momentum
            self.running_mean.add_(a * (mean - mu))
            self.running_var.copy_((sigma + a * (std - sigma)) ** 2)
            self.num_batches_tracked.add_(1)
        return y
