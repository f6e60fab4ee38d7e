"""Many small networks trained as one: ``torch.func`` stacking and ``vmap`` over the model axis.

An experiment that compares methods over seeds trains many copies of one small architecture. On a
CPU, one at a time, most of the time goes into Python and kernel-launch overhead. Stacking the
copies' parameters along a new leading axis and mapping the forward pass over that axis with
:func:`torch.func.vmap` runs them all in one set of larger kernels.

Because every optimizer in :mod:`torch.optim` that the book uses (SGD with momentum, Nesterov,
weight decay; Adam; AdamW) updates each parameter element independently of the others, one
optimizer over the stacked parameters takes exactly the steps that K separate optimizers would.
BatchNorm's running statistics are stacked too and updated per model. Dropout draws a different
mask for every model (``randomness="different"``).

    >>> stack = StackedModels([make_mlp(...) for _ in range(8)])
    >>> opt = torch.optim.SGD(stack.parameters(), lr=0.1)
    >>> out = stack(x)                       # x: (8, B, ...) one batch per model, out: (8, B, ...)
    >>> per_model = stacked_loss(F.cross_entropy, out, y)   # shape (8,)
    >>> per_model.sum().backward(); opt.step()
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedModels", "stacked_loss"]


class StackedModels:
    """K models of one architecture, held as stacked tensors with a leading axis of size K.

    ``models``: a non-empty sequence of modules with identical structure (same parameter and
    buffer names and shapes). They are copied; the originals are left untouched.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if isinstance(models, nn.Module) or not isinstance(models, Sequence):
            raise TypeError(
                "models must be a list or tuple of nn.Module, got " + type(models).__name__
            )
        if len(models) == 0:
            raise ValueError("models must hold at least one nn.Module, got an empty sequence")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{i}] must be an nn.Module, got {type(m).__name__}")
        if not any(True for _ in models[0].parameters()):
            raise ValueError("models must have parameters to stack; models[0] has no parameters")
        shapes = _shapes(models[0])
        for i, m in enumerate(models[1:], start=1):
            if _shapes(m) != shapes:
                raise ValueError(
                    f"models[{i}] does not have the architecture of models[0] "
                    "(parameter and buffer names and shapes must agree)"
                )
        params, buffers = stack_module_state(list(models))
        self._params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self._buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self._base = copy.deepcopy(models[0]).to("meta")
        self._base.train(models[0].training)

    def __len__(self) -> int:
        return next(iter(self._params.values())).shape[0]

    @property
    def training(self) -> bool:
        return self._base.training

    def train(self, mode: bool = True) -> StackedModels:
        """Train mode for every model (BN uses batch statistics, Dropout drops)."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be True or False, got {mode!r}")
        self._base.train(mode)
        return self

    def eval(self) -> StackedModels:
        """Eval mode for every model (BN uses running statistics, Dropout is the identity)."""
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, each of shape ``(K, *shape)``: hand them to an optimizer."""
        return list(self._params.values())

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self._params)

    def buffers(self) -> dict[str, torch.Tensor]:
        """The stacked buffers (e.g. BN's running statistics), each of shape ``(K, *shape)``."""
        return dict(self._buffers)

    def __call__(self, x: torch.Tensor, *, shared_input: bool = False) -> torch.Tensor:
        """Run every model on its own input.

        ``x``: ``(K, B, ...)``, one batch per model, or ``(B, ...)`` with ``shared_input=True``
        (the same batch for all). Returns ``(K, B, ...)``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not shared_input and (x.dim() == 0 or x.shape[0] != len(self)):
            raise ValueError(
                f"x must have shape (K, B, ...) with K = {len(self)} models, got "
                f"{tuple(x.shape)}; pass shared_input=True to give every model the same batch"
            )

        def one(params, buffers, xi):
            return functional_call(self._base, (params, buffers), (xi,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(one, in_dims=in_dims, randomness="different")(self._params, self._buffers, x)

    def unstack(self) -> list[nn.Module]:
        """K ordinary modules holding the current parameters and buffers (copies)."""
        out = []
        for k in range(len(self)):
            model = copy.deepcopy(self._base).to_empty(device="cpu")
            state = {n: v[k].detach().clone() for n, v in (self._params | self._buffers).items()}
            model.load_state_dict(state)
            out.append(model.train(self.training))
        return out


def stacked_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    target: torch.Tensor,
    *,
    shared_target: bool = False,
) -> torch.Tensor:
    """Per-model losses, shape ``(K,)``: ``loss_fn(out[k], target[k])`` for each model k.

    ``out`` is ``(K, B, ...)``; ``target`` is ``(K, B, ...)``, or ``(B, ...)`` with
    ``shared_target=True`` when every model has the same targets. Summing the result and calling
    ``backward`` gives each model the gradient of its own loss.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(out, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("out and target must be torch.Tensor")
    if out.dim() < 2:
        raise ValueError(f"out must have shape (K, B, ...), got {tuple(out.shape)}")
    if not shared_target and target.shape[:2] != out.shape[:2]:
        raise ValueError(
            f"target must have shape (K, B, ...) = {tuple(out.shape[:2])} + ..., got "
            f"{tuple(target.shape)}; pass shared_target=True for one (B, ...) target for all"
        )
    if shared_target and target.shape[:1] != out.shape[1:2]:
        raise ValueError(
            f"with shared_target=True, target must have shape (B, ...) with B = {out.shape[1]}, "
            f"got {tuple(target.shape)}"
        )
    return vmap(loss_fn, in_dims=(0, None if shared_target else 0))(out, target)


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(n, tuple(t.shape)) for n, t in named]
