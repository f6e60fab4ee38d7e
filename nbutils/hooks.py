"""Forward hooks that record the statistics of what flows *into* chosen layers.

Used to measure, e.g., the activation scale per layer of a deep network, or the variance a
BatchNorm layer sees in training versus at test time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class InputStats:
    """Per-channel moments of a layer's input, pooled over every recorded call.

    The channel dimension is dim 1 (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ...); moments are
    taken over all other dimensions. Sums are kept in float64, so the pooled statistics are exact
    over all recorded elements however the batches were cut. ``batch_means`` and ``batch_vars``
    keep each call's own per-channel mean and (biased) variance.
    """

    count: int = 0
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None
    batch_means: list[torch.Tensor] = field(default_factory=list)
    batch_vars: list[torch.Tensor] = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"inputs must have a channel dimension (ndim >= 2), got {x.ndim}-D")
        x = x.detach().to(torch.float64).transpose(0, 1).flatten(1)  # (C, elements per channel)
        s, s2, n = x.sum(dim=1), (x * x).sum(dim=1), x.shape[1]
        self.total = s if self.total is None else self.total + s
        self.total_sq = s2 if self.total_sq is None else self.total_sq + s2
        self.count += n
        self.batch_means.append(x.mean(dim=1))
        self.batch_vars.append(x.var(dim=1, correction=0))

    def _need_data(self) -> None:
        if self.count == 0:
            raise ValueError("no input was recorded for this layer")

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean over every recorded element, shape ``(C,)``."""
        self._need_data()
        return self.total / self.count

    @property
    def var(self) -> torch.Tensor:
        """Per-channel (biased) variance over every recorded element, shape ``(C,)``."""
        self._need_data()
        return (self.total_sq / self.count - self.mean**2).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


@contextmanager
def record_inputs(
    model: nn.Module, types: type | tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)
) -> Iterator[dict[str, InputStats]]:
    """Record the inputs of every submodule of ``model`` that is an instance of ``types``.

    Yields a dict mapping each such submodule's name (as in ``model.named_modules()``) to an
    :class:`InputStats` that fills up as the model runs; the hooks are removed on exit::

        with nbutils.record_inputs(model, nn.BatchNorm1d) as stats:
            model(x)
        stats["2"].var   # per-channel input variance of layer "2"
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    classes = types if isinstance(types, tuple) else (types,)
    if not classes or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in classes):
        raise TypeError(f"types must be an nn.Module subclass or a tuple of them, got {types!r}")
    stats: dict[str, InputStats] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, classes):
            record = stats[name] = InputStats()
            handles.append(
                module.register_forward_hook(lambda _m, args, _out, r=record: r.update(args[0]))
            )
    if not stats:
        names = ", ".join(t.__name__ for t in classes)
        raise ValueError(f"model has no submodule of type {names}")
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
