"""Precise BN: re-estimate BatchNorm's population statistics for the current, frozen weights.

During training BatchNorm keeps an exponential moving average (EMA) of its batch statistics.
That average mixes statistics of older weights and is noisy, and when Dropout (or any other
train-only noise) sits in front of a BN layer it describes the *noisy* training-time inputs (the
"variance shift"). :func:`precise_bn` recomputes the statistics from data, with the weights
frozen, Dropout and every other module in evaluation mode and only the BN layers in train mode,
by pooling every batch's count, mean and variance exactly. ``recalibrate_bn`` is the same
function under the name the variance-shift chapter uses. ``torch.optim.swa_utils.update_bn`` is
not a substitute: it puts the *whole* model in train mode, Dropout included, and averages the
per-batch unbiased variances with equal weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["bn_layers", "pool_batch_moments", "precise_bn", "recalibrate_bn"]


def bn_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, by name.

    Returns ``{name: module}`` (names as in ``model.named_modules()``, in that order) for every
    ``_BatchNorm`` subclass (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) with
    ``track_running_stats=True``. Raises ``TypeError`` for a ``model`` that is not an
    ``nn.Module`` and ``ValueError`` when there is no such layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
    }
    if not layers:
        raise ValueError(
            "model has no BatchNorm layer with running statistics (a _BatchNorm subclass with "
            "track_running_stats=True); there is nothing to estimate"
        )
    return layers


def pool_batch_moments(
    counts: Sequence[int] | torch.Tensor,
    means: torch.Tensor,
    variances: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the union of batches, from each batch's count, mean and variance.

    ``counts``: ``(B,)`` the number ``n_b >= 1`` of values each batch holds (per channel);
    ``means``, ``variances``: ``(B, C)`` each batch's per-channel mean ``μ_b`` and *biased*
    variance ``σ²_b`` (divisor ``n_b``). With weights ``w_b = n_b / Σ n_b``, returns ``(C,)``
    tensors (float64)

    * ``mean = Σ_b w_b μ_b`` and
    * ``var = Σ_b w_b (σ²_b + μ_b²) − mean²``, i.e. ``E[σ²_B + μ_B²] − E[μ_B]²`` with batches
      weighted by their counts:

    exactly the mean and the biased variance of all ``Σ n_b`` values together, however unevenly
    the batches were cut. (The mean of the batch variances alone misses the spread of the batch
    means; equal weights over-count a short batch.)
    """
    if not isinstance(means, torch.Tensor) or not isinstance(variances, torch.Tensor):
        raise TypeError(
            f"means and variances must be torch.Tensor, got {type(means).__name__} and "
            f"{type(variances).__name__}"
        )
    counts = torch.as_tensor(counts)
    if counts.dim() == 1 and len(counts) == 0:
        raise ValueError("counts must hold at least one batch, each >= 1, got []")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool or counts.dim() != 1:
        raise TypeError(f"counts must be a 1-D sequence of ints, got {counts!r:.80}")
    if bool((counts < 1).any()):
        raise ValueError(f"counts must hold at least one batch, each >= 1, got {counts.tolist()}")
    shape = (len(counts), *means.shape[1:])
    if means.dim() != 2 or means.shape != variances.shape or tuple(means.shape) != shape:
        raise ValueError(
            f"means and variances must both have shape (B, C) with B = {len(counts)} batches, got "
            f"{tuple(means.shape)} and {tuple(variances.shape)}"
        )
    if bool((variances < 0).any()):
        raise ValueError("variances must be >= 0 (biased per-batch variances)")
    w = (counts.double() / counts.sum().double())[:, None]  # (B, 1)
    mean = (w * means.double()).sum(dim=0)
    second = (w * (variances.double() + means.double() ** 2)).sum(dim=0)
    return mean, (second - mean**2).clamp_min(0.0)


def _input_of(batch: object, index: int) -> torch.Tensor:
    """The model input of one batch: the batch itself if it is a tensor, else its first item."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"batch {index} must be a tensor or a tuple/list whose first element is a tensor "
        f"(e.g. (x, y) from a DataLoader), got {type(batch).__name__}"
    )


def _check_arguments(model: object, batches: object, max_batches: object, unbiased: object):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batches, torch.Tensor):
        raise TypeError(
            "batches must be an iterable of batches (e.g. a DataLoader), got a single tensor; "
            "pass [x] for one batch"
        )
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of batches (e.g. a DataLoader), got "
            f"{type(batches).__name__}"
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be None or an int >= 1, got {max_batches!r}")
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be True or False, got {unbiased!r}")


def precise_bn(
    model: nn.Module,
    batches: Iterable[object],
    *,
    max_batches: int | None = None,
    unbiased: bool = True,
) -> nn.Module:
    """Precise BN: replace every BatchNorm layer's running statistics by exact pooled ones.

    Runs ``model`` over ``batches`` (a DataLoader or any iterable of input tensors, or of tuples
    or lists whose first element is the input, e.g. ``(x, y)``), streaming: one batch at a time,
    under ``torch.no_grad()`` (the weights stay frozen) with **only** the BatchNorm layers in
    train mode, so Dropout and every other module stay in eval mode. A forward hook on each BN
    layer (see :func:`bn_layers`; channel dimension 1, so ``(N, C)``, ``(N, C, L)``,
    ``(N, C, H, W)`` ...) keeps, per batch, the count ``n_b`` of values per channel (samples
    times positions) and the per-channel mean and biased variance of its input, in float64.
    Afterwards, with :func:`pool_batch_moments`,

    * ``running_mean`` (shape ``(C,)``) is the mean over **all** values seen, however unevenly
      the batches were cut (batches weighted by their counts; not a moving average);
    * ``running_var`` (shape ``(C,)``) is the pooled variance ``E[σ²_B + μ_B²] − E[μ_B]²`` over
      the same values. With ``unbiased=True`` (the default) it is multiplied by ``n / (n - 1)``
      for ``n`` values per channel, following PyTorch's convention that ``running_var`` holds
      an unbiased estimate; ``unbiased=False`` stores the plain (biased) variance of the data.
      For the thousands of values of a calibration set the two differ by ``1 + 1/(n - 1)``;
    * ``num_batches_tracked`` is the number of batches used.

    Fed the whole data set, the stored statistics are those of the whole data set (up to
    float64 round-off). What is stored per layer and batch is two length-``C`` vectors, never
    the activations. While a BN layer is estimated, the layers *after* it see inputs normalized
    with the current batch's statistics (as in training), not with the new population
    statistics, so use large batches (e.g. 256 or more) for a network with several BN layers
    in a row.

    ``max_batches`` (``None`` or an int >= 1) stops after that many batches. Every module's
    train/eval flag is restored afterwards (module by module, so mixed modes survive), and on
    an error the running statistics are left as they were. Returns ``model`` itself.

    Raises ``TypeError`` for a ``model`` that is not an ``nn.Module``, ``batches`` that is a
    tensor or not iterable, a batch of the wrong type, or a non-bool ``unbiased``;
    ``ValueError`` for a model without BatchNorm running statistics, an empty ``batches`` and
    a ``max_batches`` that is not ``None`` or an int >= 1.
    """
    _check_arguments(model, batches, max_batches, unbiased)
    layers = bn_layers(model)
    seen: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {n: [] for n in layers}

    def record(name: str, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).transpose(0, 1).flatten(1)  # (C, n_b)
        seen[name].append((x.shape[1], x.mean(dim=1), x.var(dim=1, correction=0)))

    modes = {module: module.training for module in model.modules()}
    saved = {name: [b.clone() for b in bn.buffers()] for name, bn in layers.items()}
    handles = [
        bn.register_forward_hook(lambda _m, args, _out, n=name: record(n, args[0]))
        for name, bn in layers.items()
    ]
    try:
        model.eval()
        for bn in layers.values():
            bn.train()
        used = 0
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                model(_input_of(batch, index))
                used += 1
        if used == 0:
            raise ValueError("batches must yield at least one batch, got an empty iterable")
        unused = [name for name, records in seen.items() if not records]
        if unused:
            raise ValueError(f"BatchNorm layers {unused} received no input in any batch")
        with torch.no_grad():
            for name, bn in layers.items():
                counts, means, variances = zip(*seen[name], strict=True)
                mean, var = pool_batch_moments(counts, torch.stack(means), torch.stack(variances))
                n = sum(counts)
                if unbiased:
                    var = var * (n / (n - 1)) if n > 1 else var
                bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
                bn.running_var.copy_(var.to(bn.running_var.dtype))
                bn.num_batches_tracked.fill_(used)
    except BaseException:
        with torch.no_grad():
            for name, bn in layers.items():
                for buffer, old in zip(bn.buffers(), saved[name], strict=True):
                    buffer.copy_(old)
        raise
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return model


recalibrate_bn = precise_bn  # the same function, under the name the variance-shift chapter uses
