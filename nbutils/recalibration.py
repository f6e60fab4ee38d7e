"""Re-estimate BatchNorm's population statistics with Dropout (and everything else) switched off.

After training with Dropout (or any other train-only noise) in front of BatchNorm, the running
statistics describe the *noisy* training-time inputs, while at test time the layer sees the
noise-free ones (the "variance shift", chapter 8). :func:`recalibrate_bn` recomputes them
from data with the rest of the network in evaluation mode. ``torch.optim.swa_utils.update_bn``
is not a substitute: it puts the *whole* model in train mode, Dropout included.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nbutils.hooks import record_inputs

__all__ = ["recalibrate_bn"]


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


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[object],
    *,
    max_batches: int | None = None,
    unbiased: bool = True,
) -> nn.Module:
    """Replace every BatchNorm layer's running statistics by exact pooled statistics.

    Runs ``model`` over ``batches`` (a DataLoader or any iterable of input tensors, or of tuples
    or lists whose first element is the input, e.g. ``(x, y)``) under ``torch.no_grad()`` with
    **only** the BatchNorm layers in train mode: Dropout and every other module stay in eval
    mode. Each BatchNorm layer (``_BatchNorm`` subclasses with ``track_running_stats=True``:
    ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) records its inputs (channel dimension 1, so
    ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` ...); afterwards

    * ``running_mean`` (shape ``(C,)``) is the mean over **all** recorded elements of each
      channel (all samples, and all positions for spatial inputs), however unevenly the batches
      were cut; this is not an exponential moving average;
    * ``running_var`` (shape ``(C,)``) is the pooled variance over the same elements, i.e.
      ``E_B[σ²_B + μ_B²] − (E_B[μ_B])²`` with batches weighted by their element counts
      (computed from float64 sums). With ``unbiased=True`` (the default) it is multiplied by
      ``n / (n - 1)`` for ``n`` elements per channel, following PyTorch's convention that
      ``running_var`` holds an unbiased estimate (the train-mode update stores unbiased batch
      variances); ``unbiased=False`` stores the plain (biased) variance of the data seen.
      In eval mode BatchNorm divides by ``sqrt(running_var + eps)``; for the thousands of
      elements of a calibration set the two choices differ by a factor ``1 + 1/(n - 1)``;
    * ``num_batches_tracked`` is the number of batches used.

    While a BatchNorm layer recalibrates, the layers *after* it see inputs normalized with the
    current batch's statistics (as in training), not with the new population statistics, so use
    large batches (e.g. 256 or more) for a network with several BatchNorm layers in a row.

    ``max_batches`` (``None`` or an int >= 1) stops after that many batches. Every module's
    train/eval flag is restored afterwards (module by module, so mixed modes survive), and on
    an error the running statistics are left as they were. Returns ``model`` itself.

    Raises ``TypeError`` for a ``model`` that is not an ``nn.Module``, ``batches`` that is a
    tensor or not iterable, a batch of the wrong type, or a non-bool ``unbiased``;
    ``ValueError`` for a model without BatchNorm running statistics, an empty ``batches`` and
    a ``max_batches`` that is not ``None`` or an int >= 1.
    """
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

    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats
    }
    if not layers:
        raise ValueError(
            "model has no BatchNorm layer with running statistics (a _BatchNorm subclass with "
            "track_running_stats=True); there is nothing to recalibrate"
        )

    modes = {module: module.training for module in model.modules()}
    saved = {
        name: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
        for name, bn in layers.items()
    }
    try:
        model.eval()
        for bn in layers.values():
            bn.reset_running_stats()
            bn.train()
        used = 0
        with torch.no_grad(), record_inputs(model, _BatchNorm) as stats:
            for index, batch in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                model(_input_of(batch, index))
                used += 1
        if used == 0:
            raise ValueError("batches must yield at least one batch, got an empty iterable")
        with torch.no_grad():
            for name, bn in layers.items():
                record = stats[name]
                var = record.var
                if unbiased:
                    var = var * (record.count / (record.count - 1))
                bn.running_mean.copy_(record.mean.to(bn.running_mean.dtype))
                bn.running_var.copy_(var.to(bn.running_var.dtype))
                bn.num_batches_tracked.fill_(used)
    except BaseException:
        with torch.no_grad():
            for name, bn in layers.items():
                mean, var, tracked = saved[name]
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for module, training in modes.items():
            module.training = training
    return model
