"""Optimizer parameter groups: which parameters get weight decay and which do not.

A common recipe decays the weight matrices of a network but not its biases nor the gains and
shifts (``γ``, ``β``) of its normalization layers. :func:`decay_groups` builds the two parameter
groups that ``torch.optim`` takes; :func:`decay_split` returns the parameter names of each group,
to print or to test.

    >>> groups = decay_groups(model, 5e-4)          # no decay on biases and norm layers
    >>> opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    >>> decay_groups(model, 5e-4, exclude=("bias",))  # decay norm layers too, not biases

For :class:`nbutils.stacking.StackedModels`, pass one of the stacked models as ``model`` (it names
the parameters and their modules) and the stacked tensors as ``params``:
``decay_groups(template, 5e-4, params=stack.named_parameters())``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["NORM_TYPES", "decay_groups", "decay_split"]

# Modules whose parameters are the gains and shifts of a normalization (BatchNorm*d,
# SyncBatchNorm and InstanceNorm*d derive from _NormBase).
NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
_KEYWORDS = ("bias", "norm")


def _check_exclude(exclude: object) -> tuple[object, ...]:
    allowed = '"bias", "norm" or an nn.Module subclass'
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence):
        raise TypeError(
            f"exclude must be a tuple or list of {allowed}, got {exclude!r} "
            '(write ("bias",) for one item)'
        )
    for i, item in enumerate(exclude):
        if isinstance(item, str):
            if item not in _KEYWORDS:
                raise ValueError(f"exclude[{i}] must be {allowed}, got {item!r}")
        elif not (isinstance(item, type) and issubclass(item, nn.Module)):
            raise TypeError(f"exclude[{i}] must be {allowed}, got {item!r}")
    return tuple(exclude)


def decay_split(
    model: nn.Module, exclude: Sequence[object] = ("bias", "norm")
) -> tuple[list[str], list[str]]:
    """The names of ``model``'s parameters with and without decay: ``(decay, no_decay)``.

    ``exclude`` lists what gets no decay: ``"bias"`` (every parameter whose own name is
    ``bias``), ``"norm"`` (every parameter of a normalization module, :data:`NORM_TYPES`) and
    module classes (every parameter of a module of that class, e.g. ``nn.Embedding``). Names are
    those of ``model.named_parameters()``, in its order; a parameter shared by several modules
    appears once and gets no decay if any of its modules is excluded.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    items = _check_exclude(exclude)
    types = tuple(t for t in items if isinstance(t, type))
    if "norm" in items:
        types += NORM_TYPES
    excluded: set[int] = set()
    for module in model.modules():
        for local, p in module.named_parameters(recurse=False):
            if (local == "bias" and "bias" in items) or isinstance(module, types):
                excluded.add(id(p))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if id(p) in excluded else decay).append(name)
    return decay, no_decay


def decay_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    exclude: Sequence[object] = ("bias", "norm"),
    params: Mapping[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Parameter groups for ``torch.optim``: ``weight_decay`` on some parameters, 0 on the rest.

    Returns ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
    "weight_decay": 0.0}]``, leaving out a group that would be empty. What is excluded from
    decay is described in :func:`decay_split`. ``params`` (optional) maps ``model``'s parameter
    names to the tensors to optimize instead of its own, e.g. the stacked tensors of a
    ``StackedModels`` built from copies of ``model`` (shape ``(K, *shape)`` each); it must have
    exactly the names of ``model.named_parameters()``.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, Real):
        raise TypeError(f"weight_decay must be a real number >= 0, got {weight_decay!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    decay, no_decay = decay_split(model, exclude)
    if not decay and not no_decay:
        raise ValueError("model has no parameters to put in groups")
    own = dict(model.named_parameters())
    if params is None:
        tensors = own
    else:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a mapping of parameter names to tensors, got "
                f"{type(params).__name__}"
            )
        if set(params) != set(own):
            missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
            raise ValueError(
                "params must have the parameter names of model; "
                f"missing {missing}, unexpected {extra}"
            )
        for name, t in params.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"params[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        tensors = params
    groups = [
        {"params": [tensors[n] for n in names], "weight_decay": float(wd)}
        for names, wd in ((decay, weight_decay), (no_decay, 0.0))
        if names
    ]
    return groups
