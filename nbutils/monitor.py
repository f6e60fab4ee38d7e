"""A training monitor: per-layer activation, gradient and update statistics over training.

Point it at any model to see where a network goes wrong (activations that blow up or die,
gradients that vanish, updates too large for the weights)::

    with TrainingMonitor(model, every=1) as mon:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            mon.step(optimizer)          # records, then calls optimizer.step() itself
    mon.history["fc1"]["act_std"]        # one float per recorded step
    plot_monitor(mon)                    # one panel per metric, one line per layer

``mon.step(optimizer)`` *replaces* ``optimizer.step()``: it reads the gradients, takes the
step, and measures the update. ``mon.step()`` without an optimizer records the activations and
gradients only (for a step taken elsewhere; ``update_ratio`` is then NaN). Recording happens on
steps ``0, every, 2 * every, ...`` (``mon.steps``), and only for forward passes in train mode
since the previous step (the last one counts); other steps cost only the hooks' call.

Monitored layers (``layers=None``): every module with parameters of its own (Linear, Conv, norm
layers, ...) and every activation module (ReLU, Tanh, ...), named as in ``named_modules()``. For
each, with the layer's output ``y`` of shape ``(N, C, ...)`` (channels on dim 1):

============== ==================================================================================
metric         definition (per recorded step)
============== ==================================================================================
act_mean       mean of ``y`` over all its elements
act_std        standard deviation of ``y`` (divisor: the number of elements)
dead           fraction of channels ``c`` with ``y[:, c] <= 0`` for every element of the batch
saturated      fraction of elements where the activation's derivative is (near) zero: ``y == 0``
               for ReLU/ReLU6, ``|y| > 1 - tol`` for Tanh, ``y < tol or y > 1 - tol`` for Sigmoid
               (``tol=0.01``); NaN for other layers
out_grad_norm  L2 norm of the gradient of the loss with respect to ``y`` (a backward hook)
grad_norm      L2 norm of the gradient of the layer's own parameters (NaN without parameters)
update_ratio   ``||θ_after - θ_before|| / ||θ_before||`` over the layer's own parameters, for the
               optimizer step taken by ``mon.step(optimizer)`` (NaN otherwise)
============== ==================================================================================

The hooks are removed when the ``with`` block ends (or by :meth:`TrainingMonitor.close`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["METRICS", "TrainingMonitor", "plot_monitor"]

METRICS = (
    "act_mean",
    "act_std",
    "dead",
    "saturated",
    "out_grad_norm",
    "grad_norm",
    "update_ratio",
)
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)
_TOL = 0.01


def _saturated(module: nn.Module, y: torch.Tensor) -> float:
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return (y == 0).double().mean().item()
    if isinstance(module, nn.Tanh):
        return (y.abs() > 1 - _TOL).double().mean().item()
    if isinstance(module, nn.Sigmoid):
        return ((y < _TOL) | (y > 1 - _TOL)).double().mean().item()
    return math.nan


def _dead(y: torch.Tensor) -> float:
    if y.dim() < 2:
        return math.nan
    per_channel = y.transpose(0, 1).reshape(y.shape[1], -1)  # (C, elements)
    return (per_channel <= 0).all(dim=1).double().mean().item()


class TrainingMonitor:
    """Forward and backward hooks that record per-layer statistics during training.

    ``model``: the ``nn.Module`` to watch. ``every``: record every ``every``-th step (int >= 1).
    ``layers``: None (see the module docstring) or a sequence of module names from
    ``model.named_modules()``. After training, ``history[layer][metric]`` is a list of floats,
    one per entry of ``steps``.
    """

    def __init__(
        self, model: nn.Module, every: int = 1, layers: Sequence[str] | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every must be an int >= 1, got {every!r}")
        if every < 1:
            raise ValueError(f"every must be an int >= 1, got {every}")
        named = dict(model.named_modules())
        if layers is None:
            chosen = [
                n
                for n, m in named.items()
                if n and (isinstance(m, _ACTIVATIONS) or any(True for _ in m.parameters(False)))
            ]
        else:
            if isinstance(layers, str) or not isinstance(layers, Sequence):
                raise TypeError(
                    f"layers must be None or a sequence of module names, got "
                    f"{type(layers).__name__}"
                )
            unknown = [n for n in layers if n not in named]
            if unknown:
                raise ValueError(
                    f"layers must name modules of model (see model.named_modules()); unknown: "
                    f"{unknown}"
                )
            chosen = list(layers)
        if not chosen:
            raise ValueError("model has no layer to monitor (no parameters, no activation)")
        self.model, self.every, self.layers = model, every, chosen
        self.modules = {n: named[n] for n in chosen}
        self.steps: list[int] = []
        self.history: dict[str, dict[str, list[float]]] = {
            n: {k: [] for k in METRICS} for n in chosen
        }
        self._step = 0
        self._latest: dict[str, dict[str, float]] = {}
        self._handles = [
            m.register_forward_hook(self._forward_hook(n)) for n, m in self.modules.items()
        ]

    # -- hooks -------------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """True when the current step is one that is recorded."""
        return self._step % self.every == 0

    def _forward_hook(self, name: str):
        def hook(module, args, out):
            if not (self.recording and module.training and isinstance(out, torch.Tensor)):
                return
            y = out.detach()
            stats = {
                "act_mean": y.double().mean().item(),
                "act_std": y.double().std(correction=0).item(),
                "dead": _dead(y),
                "saturated": _saturated(module, y),
                "out_grad_norm": math.nan,
            }
            self._latest[name] = stats
            if out.requires_grad:

                def grad_hook(g):
                    stats["out_grad_norm"] = g.detach().double().norm().item()

                out.register_hook(grad_hook)

        return hook

    # -- the step ------------------------------------------------------------------------------
    def _own(self, name: str) -> list[torch.Tensor]:
        return list(self.modules[name].parameters(recurse=False))

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Record this step (if it is one to record), then take ``optimizer.step()`` if given.

        Call it after ``loss.backward()``, where ``optimizer.step()`` would go.
        """
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if not self.recording:
            if optimizer is not None:
                optimizer.step()
            self._step += 1
            return
        before = {}
        grads = {}
        for n in self.layers:
            params = self._own(n)
            with_grad = [p.grad for p in params if p.grad is not None]
            grads[n] = (
                torch.cat([g.detach().double().flatten() for g in with_grad]).norm().item()
                if with_grad
                else math.nan
            )
            if optimizer is not None and params:
                before[n] = [p.detach().clone() for p in params]
        if optimizer is not None:
            optimizer.step()
        for n in self.layers:
            rec = self._latest.get(n, dict.fromkeys(METRICS[:5], math.nan))
            ratio = math.nan
            if n in before:
                old = torch.cat([p.double().flatten() for p in before[n]])
                new = torch.cat([p.detach().double().flatten() for p in self._own(n)])
                ratio = ((new - old).norm() / old.norm()).item() if old.norm() > 0 else math.nan
            for k, v in rec.items():
                self.history[n][k].append(v)
            self.history[n]["grad_norm"].append(grads[n])
            self.history[n]["update_ratio"].append(ratio)
        self.steps.append(self._step)
        self._latest = {}
        self._step += 1

    # -- context manager -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove the hooks (the history stays)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def series(self, metric: str) -> torch.Tensor:
        """``(recorded steps, layers)`` float64 tensor of one metric, layers in ``self.layers``."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        cols = [self.history[n][metric] for n in self.layers]
        return torch.tensor(cols, dtype=torch.float64).T.reshape(len(self.steps), len(cols))


def plot_monitor(
    mon: TrainingMonitor,
    metrics: Sequence[str] = ("act_std", "dead", "grad_norm", "update_ratio"),
    layers: Sequence[str] | None = None,
):
    """One panel per metric (log scale for norms, ratios, stds), one line per layer.

    Returns the matplotlib figure. Metrics with no value recorded (all NaN) stay empty.
    """
    import matplotlib.pyplot as plt

    if not isinstance(mon, TrainingMonitor):
        raise TypeError(f"mon must be a TrainingMonitor, got {type(mon).__name__}")
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty sequence of names from {list(METRICS)}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"metrics must be names from {list(METRICS)}, got {bad}")
    if not mon.steps:
        raise ValueError("mon has recorded no step yet: call mon.step() during training")
    shown = list(mon.layers if layers is None else layers)
    if any(n not in mon.history for n in shown):
        raise ValueError(f"layers must be monitored layers, from {mon.layers}")
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        for n in shown:
            values = torch.tensor(mon.history[n][metric], dtype=torch.float64)
            if torch.isnan(values).all():
                continue
            ax.plot(mon.steps, values, label=n)
        if metric in ("out_grad_norm", "grad_norm", "update_ratio", "act_std"):
            ax.set_yscale("log")
        ax.set(xlabel="step", title=metric)
    drawn = [ax for ax in axes[0] if ax.lines]
    if drawn:
        drawn[0].legend(fontsize=7, loc="best")
    return fig
