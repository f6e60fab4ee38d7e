"""Learning-rate sweeps over many seeds: one architecture, plain SGD, all runs trained as one stack.

An experiment that asks "does this network train at learning rate η?" needs many seeds per rate
before its answer holds for any seed. :func:`sgd_sweep` trains one copy of a network for every
(learning rate, seed) pair at once with :class:`nbutils.stacking.StackedModels`, each copy with
its own learning rate (plain SGD: no momentum, no weight decay) and its own shuffling order, and
records what the chapters compare: the validation accuracy after every epoch, the final training
accuracy, and how much the input of the last layer moves from one epoch to the next.

    >>> sweep = sgd_sweep(lambda s: make_mlp(64, [64], 10), lrs=(0.1, 1.0), seeds=range(8),
    ...                   train=(x_tr, y_tr), val=(x_va, y_va), batch_size=64, epochs=5)
    >>> sweep.val_acc.shape            # (learning rates, seeds, epochs)
    torch.Size([2, 8, 5])

Runs that share a seed share their initialization (``build(seed)`` is called once per seed and
copied for every learning rate) and their shuffling order, so results can be paired by seed
across learning rates, and across two sweeps whose ``build`` functions draw the same weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from nbutils.checks import check_int, check_seeds
from nbutils.display import markdown_table
from nbutils.stacking import StackedModels, stacked_loss

__all__ = ["Sweep", "markdown_table", "sgd_sweep"]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Sweep:
    """The record of one :func:`sgd_sweep`; every tensor has the leading shape ``(L, S)``.

    ``L = len(lrs)`` learning rates, ``S = len(seeds)`` seeds, ``E`` epochs:

    * ``val_acc``: ``(L, S, E)`` validation accuracy after each epoch (eval mode);
    * ``train_acc``: ``(L, S)`` training accuracy after the last epoch (eval mode);
    * ``drift``: ``(L, S, E)`` relative change, over each epoch, of the per-feature mean ``μ``
      and standard deviation ``σ`` of the last layer's input on a fixed probe batch, seen in
      training mode: ``(‖μ_e − μ_{e−1}‖ + ‖σ_e − σ_{e−1}‖) / ‖σ_{e−1}‖`` (0 when ``σ_{e−1} = 0``);
    * ``dead``: ``(L, S)`` True where that input is identically zero after the last epoch (every
      unit feeding the last layer is off, so the network's output no longer depends on x).
    """

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    val_acc: torch.Tensor
    train_acc: torch.Tensor
    drift: torch.Tensor
    dead: torch.Tensor
    steps_per_epoch: int

    @property
    def epochs(self) -> int:
        return self.val_acc.shape[-1]

    @property
    def budget(self) -> int:
        """SGD steps per run: ``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch

    def index(self, lr: float) -> int:
        """Position of learning rate ``lr`` in ``lrs`` (the first axis of every tensor)."""
        for i, value in enumerate(self.lrs):
            if math.isclose(value, lr, rel_tol=1e-12):
                return i
        raise ValueError(f"lr must be one of the swept learning rates {self.lrs}, got {lr!r}")

    def steps_to(self, target: float) -> torch.Tensor:
        """SGD steps until the validation accuracy first reaches ``target``, shape ``(L, S)``.

        Accuracy is checked after every epoch, so the counts are multiples of
        ``steps_per_epoch``; a run that never reaches ``target`` gets ``inf``.
        """
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise TypeError(f"target must be an accuracy in (0, 1], got {target!r}")
        if not 0 < target <= 1:
            raise ValueError(f"target must be an accuracy in (0, 1], got {target}")
        reached = self.val_acc >= target
        first = reached.double().argmax(dim=-1) + 1  # epoch of the first hit (1-based)
        steps = first.double() * self.steps_per_epoch
        return torch.where(reached.any(dim=-1), steps, torch.full_like(steps, math.inf))


def _check_pair(name: str, data: object) -> Pair:
    if (
        not isinstance(data, tuple)
        or len(data) != 2
        or not all(isinstance(t, torch.Tensor) for t in data)
    ):
        raise TypeError(f"{name} must be a tuple (x, y) of tensors, got {type(data).__name__}")
    x, y = data
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"{name} must be (x, y) with x of shape (N, ...) and y of shape (N,), N >= 1; got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if torch.is_floating_point(y):
        raise ValueError(f"{name}: y must hold integer class labels, got dtype {y.dtype}")
    return x, y


def _check_lrs(lrs: object) -> tuple[float, ...]:
    if isinstance(lrs, (str, bytes)) or not isinstance(lrs, Iterable):
        raise TypeError(f"lrs must be a sequence of positive numbers, got {lrs!r}")
    values = tuple(lrs)
    if not values:
        raise ValueError("lrs must hold at least one learning rate, got an empty sequence")
    for lr in values:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"lrs must be a sequence of positive numbers, got {lr!r} in it")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"every learning rate must be a finite number > 0, got {lr}")
    if len(set(values)) != len(values):
        raise ValueError(f"lrs must not repeat a learning rate, got {values}")
    return tuple(float(lr) for lr in values)


def _build_all(build: Callable[[int], nn.Module], seeds: Sequence[int]) -> list[nn.Sequential]:
    if not callable(build):
        raise TypeError(f"build must be a callable seed -> nn.Sequential, got {build!r}")
    models = []
    for s in seeds:
        model = build(s)
        if not isinstance(model, nn.Sequential) or len(model) < 2:
            raise TypeError(
                "build(seed) must return an nn.Sequential of at least two modules (a body and "
                f"a last layer), got {type(model).__name__}"
            )
        if not any(True for _ in model[-1].parameters()):
            raise ValueError("the last module of build(seed) must have parameters (e.g. Linear)")
        models.append(model)
    return models


def _sgd_step(params: list[torch.Tensor], lrs: torch.Tensor) -> None:
    # Plain SGD with one learning rate per model: p_k <- p_k - lr_k * grad_k.
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.sub_(lrs.view(-1, *([1] * (p.dim() - 1))) * p.grad)
                p.grad = None


def _moments(body: StackedModels, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Per-feature mean and std, (K, C), of the body's output on the probe in training mode; the
    # BN running statistics this forward pass updates are put back afterwards.
    saved = {name: b.clone() for name, b in body.buffers().items()}
    with torch.no_grad():
        features = body(probe, shared_input=True).flatten(2)
    for name, b in body.buffers().items():
        b.copy_(saved[name])
    return features.mean(dim=1), features.std(dim=1, correction=0)


def _accuracy(body: StackedModels, head: StackedModels, x: torch.Tensor, y: torch.Tensor):
    body.eval()
    head.eval()
    with torch.no_grad():
        out = head(body(x, shared_input=True))
    body.train()
    head.train()
    return (out.argmax(dim=-1) == y).double().mean(dim=1)


def sgd_sweep(
    build: Callable[[int], nn.Module],
    *,
    lrs: Iterable[float],
    seeds: Iterable[int],
    train: Pair,
    val: Pair,
    batch_size: int,
    epochs: int,
    probe: torch.Tensor | None = None,
) -> Sweep:
    """Train ``build(seed)`` with plain SGD at every learning rate in ``lrs``, for every seed.

    * ``build(seed)``: an ``nn.Sequential`` classifier whose last module (e.g. a Linear layer) is
      the one whose input ``drift`` follows; it should draw its weights from ``seed``.
    * ``train``, ``val``: ``(x, y)`` with ``x`` of shape ``(N, ...)`` and integer labels ``(N,)``.
    * Each run draws a fresh permutation of the training set every epoch from its own
      ``torch.Generator().manual_seed(seed)`` and takes ``ceil(N / batch_size)`` steps of
      cross-entropy SGD per epoch along it (the last batch may be smaller).
    * ``probe``: the inputs on which the last layer's input is measured (default: the first 256
      training inputs).
    * Randomness inside the models (Dropout, noise layers) uses PyTorch's global generator, with
      a different draw for every run.

    Returns a :class:`Sweep` whose tensors have the leading shape ``(len(lrs), len(seeds))``.
    """
    lr_values = _check_lrs(lrs)
    seed_values = tuple(check_seeds(seeds, minimum=2))
    x_tr, y_tr = _check_pair("train", train)
    x_va, y_va = _check_pair("val", val)
    batch_size = check_int("batch_size", batch_size)
    epochs = check_int("epochs", epochs)
    if probe is None:
        probe = x_tr[:256]
    if not isinstance(probe, torch.Tensor) or probe.shape[1:] != x_tr.shape[1:] or not len(probe):
        raise ValueError(
            f"probe must be a tensor of inputs shaped like train's x {tuple(x_tr.shape[1:])}, "
            f"got {getattr(probe, 'shape', type(probe).__name__)}"
        )

    n_lr, n_seed, n = len(lr_values), len(seed_values), len(x_tr)
    base = _build_all(build, seed_values)
    models = [copy.deepcopy(m) for _ in lr_values for m in base]  # lr-major: k = i * S + j
    body = StackedModels([m[:-1] for m in models])
    head = StackedModels([m[-1:] for m in models])
    params = body.parameters() + head.parameters()
    lr_per_model = torch.tensor(lr_values, dtype=params[0].dtype).repeat_interleave(n_seed)
    gens = [torch.Generator().manual_seed(s) for s in seed_values]
    steps_per_epoch = math.ceil(n / batch_size)

    val_acc = torch.zeros(n_lr * n_seed, epochs, dtype=torch.float64)
    drift = torch.zeros(n_lr * n_seed, epochs, dtype=torch.float64)
    mean0, std0 = _moments(body, probe)
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).repeat(n_lr, 1)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]  # (K, B): each run's own batch
            out = head(body(x_tr[idx]))
            stacked_loss(F.cross_entropy, out, y_tr[idx]).sum().backward()
            _sgd_step(params, lr_per_model)
        mean1, std1 = _moments(body, probe)
        change = (mean1 - mean0).norm(dim=1) + (std1 - std0).norm(dim=1)
        scale = std0.norm(dim=1)
        drift[:, epoch] = torch.where(scale > 0, change / scale.clamp_min(1e-30), 0.0).double()
        mean0, std0 = mean1, std1
        val_acc[:, epoch] = _accuracy(body, head, x_va, y_va)

    dead = (mean0 == 0).all(dim=1) & (std0 == 0).all(dim=1)
    return Sweep(
        lrs=lr_values,
        seeds=seed_values,
        val_acc=val_acc.reshape(n_lr, n_seed, epochs),
        train_acc=_accuracy(body, head, x_tr, y_tr).reshape(n_lr, n_seed),
        drift=drift.reshape(n_lr, n_seed, epochs),
        dead=dead.reshape(n_lr, n_seed),
        steps_per_epoch=steps_per_epoch,
    )
