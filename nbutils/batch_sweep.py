"""Batch-size sweeps: many copies of a small CNN trained side by side as one grouped network.

A batch-size experiment trains the same small CNN many times: several normalizers, several
seeds, several batch sizes. At a batch of 2 images a CPU spends most of each step on overhead,
so training the copies one after another wastes most of the time. :class:`SideBySide` puts K
copies into one network: their convolutions become one convolution with ``groups=K``, their
normalization layers one wide layer per run of equal layers, and their classifiers one batched
matrix product. Copy k only ever sees its own channels, so the copies do not interact: each
normalizer's statistics are per channel, per channel and sample, or per group and sample, and
none of those sets crosses from one copy's channels into another's. Summing the copies' mean
losses gives each copy exactly the gradient it would get alone, and SGD updates every element
independently, so :func:`train_sgd` takes exactly the steps of K separate trainings (tested in
``tests/test_batch_sweep.py`` against separately trained models, to float64 round-off).

    >>> copies = [make_cnn(norm=n) for n in ("bn", "bn", "gn", "gn")]
    >>> net = SideBySide(copies)                 # one network, K = 4 copies
    >>> steps = train_sgd(net, x, y, batch=2, epochs=1, lr=0.01, seeds=[0, 1, 0, 1])
    >>> acc = accuracies(net, x_test, y_test)    # shape (4,)

:func:`error_ratio` compares two error rates over paired seeds as a ratio with a t-interval.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from nbutils.checks import check_int, check_seeds
from nbutils.recalibration import recalibrate_bn
from nbutils.stats import Estimate, _as_1d, _check_level, mean_ci, paired_diff

__all__ = [
    "Ratio",
    "SideBySide",
    "accuracies",
    "error_ratio",
    "fmt_accuracy",
    "sweep",
    "train_sgd",
]

#: Layers without parameters that act on each channel (or element) separately: one instance
#: serves all copies.
_SHARED = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)


def _config(layer: nn.Module) -> tuple:
    """The class and public attributes of a layer: layers with equal configs can be merged."""
    public = {k: v for k, v in vars(layer).items() if not k.startswith("_") and k != "training"}
    return (type(layer), tuple(sorted((k, repr(v)) for k, v in public.items())))


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors])


def _merge_norm(layers: list[nn.Module]) -> nn.Module:
    """One wide normalization layer equal to ``len(layers)`` equal layers side by side."""
    m, first = len(layers), layers[0]
    wide = copy.deepcopy(first)
    if isinstance(first, _NormBase):
        wide.num_features = m * first.num_features
    else:  # GroupNorm
        wide.num_groups = m * first.num_groups
        wide.num_channels = m * first.num_channels
    for name, _ in first.named_parameters(recurse=False):
        setattr(wide, name, nn.Parameter(_cat([getattr(lay, name) for lay in layers])))
    for name, buf in first.named_buffers(recurse=False):
        if buf is not None and buf.dim() == 1:  # running statistics, one value per channel
            setattr(wide, name, _cat([getattr(lay, name) for lay in layers]))
    return wide


class _Blocks(nn.Module):
    """Different normalization layers for consecutive blocks of channels."""

    def __init__(self, layers: list[nn.Module], widths: list[int]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(layers)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.split(self.widths, dim=1)
        return torch.cat([f(c) for f, c in zip(self.parts, chunks, strict=True)], dim=1)


class _CopyLinear(nn.Module):
    """K linear layers on features laid out copy by copy: ``(B, K * F)`` -> ``(B, K * out)``."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lay.weight.detach() for lay in layers]))
        bias = [lay.bias for lay in layers]
        self.bias = None if bias[0] is None else nn.Parameter(torch.stack(bias).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out, feat = self.weight.shape
        h = torch.einsum("bkf,kof->bko", x.reshape(x.shape[0], k, feat), self.weight)
        if self.bias is not None:
            h = h + self.bias
        return h.reshape(x.shape[0], k * out)


def _merge_position(index: int, layers: list[nn.Module]) -> nn.Module:
    kinds = {type(lay) for lay in layers}
    first = layers[0]
    same = len({(_config(lay), getattr(lay, "bias", None) is None) for lay in layers}) == 1
    if isinstance(first, nn.Conv2d):
        if kinds != {nn.Conv2d} or not same:
            raise ValueError(f"layer {index}: every copy needs the same Conv2d, got {layers!r}")
        if first.groups != 1 or first.padding_mode != "zeros":
            raise ValueError(f"layer {index}: only Conv2d with groups=1 and zero padding")
        k = len(layers)
        wide = nn.Conv2d(
            k * first.in_channels,
            k * first.out_channels,
            first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            dilation=first.dilation,
            groups=k,
            bias=first.bias is not None,
        ).to(first.weight.dtype)
        wide.weight = nn.Parameter(_cat([lay.weight for lay in layers]))
        if first.bias is not None:
            wide.bias = nn.Parameter(_cat([lay.bias for lay in layers]))
        return wide
    if isinstance(first, nn.Linear):
        if kinds != {nn.Linear} or not same:
            raise ValueError(f"layer {index}: every copy needs the same Linear, got {layers!r}")
        return _CopyLinear(layers)
    if all(isinstance(lay, (_NormBase, nn.GroupNorm)) for lay in layers):
        runs: list[list[nn.Module]] = []
        for lay in layers:
            if runs and _config(lay) == _config(runs[-1][0]):
                runs[-1].append(lay)
            else:
                runs.append([lay])
        merged = [_merge_norm(run) for run in runs]
        if len(merged) == 1:
            return merged[0]
        widths = [len(run) * _channels(run[0]) for run in runs]
        return _Blocks(merged, widths)
    if any(isinstance(lay, (_NormBase, nn.GroupNorm)) for lay in layers):
        names = ", ".join(sorted({type(lay).__name__ for lay in layers}))
        raise TypeError(
            f"layer {index}: a normalization layer cannot share its position with other kinds "
            f"of layers; got {names}"
        )
    if isinstance(first, _SHARED):
        if not same:
            raise ValueError(f"layer {index}: the copies' layers differ: {layers!r}")
        return copy.deepcopy(first)
    raise TypeError(
        f"layer {index}: cannot put {type(first).__name__} side by side; supported are Conv2d, "
        "Linear, BatchNorm/InstanceNorm (and subclasses), GroupNorm and "
        + ", ".join(c.__name__ for c in _SHARED)
    )


def _channels(layer: nn.Module) -> int:
    return layer.num_features if isinstance(layer, _NormBase) else layer.num_channels


class SideBySide(nn.Module):
    """K copies of one ``nn.Sequential`` CNN, run as one network whose copies never interact.

    ``models``: a non-empty list of ``nn.Sequential`` with the same layers position by position
    (Conv2d with ``groups=1``, Linear after a Flatten, BatchNorm/InstanceNorm layers and their
    subclasses, GroupNorm, and parameter-free ReLU, pooling, Flatten, Identity, Dropout). The
    normalization layer at one position may differ between copies (e.g. BN in some copies, GN
    in others); consecutive copies with equal layers (same class and public attributes) share
    one wide layer. The models are copied, not changed.

    ``net(x)``: ``x`` of shape ``(K, B, C, H, W)`` (one batch per copy) or ``(B, C, H, W)`` (the
    same batch for every copy); returns ``(K, B, classes)``.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if isinstance(models, nn.Module) or not isinstance(models, Sequence):
            raise TypeError(f"models must be a list of nn.Sequential, got {type(models).__name__}")
        if len(models) == 0:
            raise ValueError("models must hold at least one nn.Sequential, got an empty list")
        for i, model in enumerate(models):
            if not isinstance(model, nn.Sequential):
                raise TypeError(f"models[{i}] must be an nn.Sequential, got {type(model).__name__}")
            if len(model) != len(models[0]):
                raise ValueError(
                    f"models[{i}] has {len(model)} layers, models[0] has {len(models[0])}; "
                    "the copies must have the same layers"
                )
        if len(models[0]) == 0 or not isinstance(models[0][0], nn.Conv2d):
            raise ValueError("models must start with a Conv2d layer (they are CNNs)")
        self.copies = len(models)
        self.in_channels = models[0][0].in_channels
        self.body = nn.Sequential(
            *(_merge_position(i, [m[i] for m in models]) for i in range(len(models[0])))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        k, c = self.copies, self.in_channels
        if x.dim() == 4 and x.shape[1] == c:
            x = x.repeat(1, k, 1, 1)  # the same images for every copy
        elif x.dim() == 5 and x.shape[0] == k and x.shape[2] == c:
            x = x.transpose(0, 1).reshape(x.shape[1], k * c, *x.shape[3:])
        else:
            raise ValueError(
                f"x must have shape (B, {c}, H, W) or (K, B, {c}, H, W) with K = {k}, got "
                f"{tuple(x.shape)}"
            )
        out = self.body(x)
        return out.reshape(out.shape[0], k, -1).transpose(0, 1)


def _check_data(net: object, x: object, y: object) -> bool:
    """Validate (x, y); True when every copy has its own data (x of shape (K, N, C, H, W))."""
    if not isinstance(net, SideBySide):
        raise TypeError(f"net must be a SideBySide, got {type(net).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be torch.Tensor")
    k = net.copies
    shared = x.dim() == 4 and y.shape == x.shape[:1]
    own = x.dim() == 5 and x.shape[0] == k and y.shape == x.shape[:2]
    if not (shared or own) or torch.is_floating_point(y):
        raise ValueError(
            f"x and y must have shapes (N, C, H, W) and (N,), or (K, N, C, H, W) and (K, N) "
            f"with K = {k}, and y integer labels; got {tuple(x.shape)} and {tuple(y.shape)} "
            f"({y.dtype})"
        )
    return own


def train_sgd(
    net: SideBySide,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch: int,
    epochs: int,
    lr: float,
    seeds: Sequence[int],
    momentum: float = 0.9,
) -> int:
    """Train every copy of ``net`` with SGD on batches of ``batch`` images; returns the steps.

    ``x``: ``(N, C, H, W)`` training images and ``y``: ``(N,)`` labels, shared by all copies, or
    ``(K, N, C, H, W)`` and ``(K, N)``: a training set per copy. Each epoch each copy sees its
    images in its own random order, drawn from ``torch.Generator().manual_seed(seeds[k])``
    (copies with the same seed see the same batches), cut into ``N // batch`` batches of exactly
    ``batch`` images (the rest is dropped). The loss of a copy is its mean cross-entropy over its
    batch. The learning rate starts at ``lr`` and follows a cosine to zero over the
    ``T = epochs * (N // batch)`` steps, ``lr_t = lr (1 + cos(pi t / T)) / 2`` for step
    ``t = 0, ..., T - 1`` (the schedule of ``CosineAnnealingLR(T_max=T)``); SGD with
    ``momentum``.
    """
    own = _check_data(net, x, y)
    batch = check_int("batch", batch, 1)
    epochs = check_int("epochs", epochs, 1)
    n = x.shape[1] if own else x.shape[0]
    if batch > n:
        raise ValueError(f"batch must be at most the {n} training images, got {batch}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a list of ints, one per copy, got {type(seeds).__name__}")
    if len(seeds) != net.copies:
        raise ValueError(f"seeds must hold one int per copy ({net.copies}), got {len(seeds)}")
    seeds = [check_int("each seed", s, 0) for s in seeds]
    distinct = sorted(set(seeds))
    which = torch.tensor([distinct.index(s) for s in seeds])
    orders = [torch.Generator().manual_seed(s) for s in distinct]
    rows = torch.arange(net.copies)[:, None]

    steps = n // batch
    total = epochs * steps
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    net.train()
    for epoch in range(epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in orders])
        batches = perms[which, : steps * batch].view(net.copies, steps, batch)
        for t in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * (1 + math.cos(math.pi * (epoch * steps + t) / total)) / 2
            idx = batches[:, t]  # (K, batch)
            xb, yb = (x[rows, idx], y[rows, idx]) if own else (x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            out = net(xb)
            loss = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="sum")
            (loss / batch).backward()  # the sum over copies of each copy's mean loss
            opt.step()
    return total


def accuracies(net: SideBySide, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of each copy in evaluation mode, shape ``(K,)`` (float64).

    ``x``, ``y``: ``(N, C, H, W)`` and ``(N,)`` for all copies, or ``(K, N, C, H, W)`` and
    ``(K, N)``: a test set per copy. The network's train/eval mode is restored afterwards.
    """
    _check_data(net, x, y)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        correct = net(x).argmax(dim=-1) == y
    net.train(was_training)
    return correct.double().mean(dim=1)


def sweep(
    models: Mapping[str, Callable[[int], nn.Sequential]],
    seeds: Sequence[int],
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    batch: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    before_recalibration: Callable[[nn.Module], None] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Train every model of ``models`` once per seed, side by side, and measure its accuracy.

    ``models`` maps a name to a factory ``make(seed) -> nn.Sequential`` (it should seed its own
    initialization from ``seed``); ``seeds``: the seeds, the same for every model, so that runs
    with equal seeds can be compared pair by pair; ``data(seed)`` returns ``(x_train, y_train,
    x_test, y_test)`` for that seed, shapes ``(N, C, H, W)``, ``(N,)``, ``(M, C, H, W)``,
    ``(M,)`` (the same N and M for every seed). All ``len(models) * len(seeds)`` runs train as
    one :class:`SideBySide` network with :func:`train_sgd` (``batch``, ``epochs``, ``lr``,
    ``momentum``; a run's data order comes from its seed).

    Returns ``{name: {"acc": accuracies}}``, one float64 tensor of shape ``(len(seeds),)`` in
    seed order: test accuracy in evaluation mode. For models with BatchNorm layers also
    ``"acc_recal"``: the accuracy after :func:`nbutils.recalibrate_bn` replaced the running
    statistics by those of the run's whole training set (one batch);
    ``before_recalibration(net)``, if given, is called on the side-by-side network first.
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict name -> factory, got {models!r}")
    for name, make in models.items():
        if not callable(make):
            raise TypeError(f"models[{name!r}] must be callable (seed -> model), got {make!r}")
    seeds = check_seeds(seeds)
    if not callable(data):
        raise TypeError(f"data must be callable (seed -> 4 tensors), got {type(data).__name__}")
    if before_recalibration is not None and not callable(before_recalibration):
        raise TypeError(
            f"before_recalibration must be callable or None, got {before_recalibration!r}"
        )

    per_seed = {s: data(s) for s in seeds}
    shapes = {tuple(tuple(t.shape) for t in per_seed[s]) for s in seeds}
    if len(shapes) != 1:
        raise ValueError(
            f"data(seed) must give tensors of the same shapes for every seed, got {shapes}"
        )
    copies = [(name, s) for name in models for s in seeds]
    built = [models[name](s) for name, s in copies]
    has_bn = {name: False for name in models}
    for (name, _), model in zip(copies, built, strict=True):
        has_bn[name] |= any(isinstance(m, _BatchNorm) for m in model.modules())
    net = SideBySide(built)
    run_seeds = [s for _, s in copies]
    x_train, y_train, x_test, y_test = (
        torch.stack([per_seed[s][i] for s in run_seeds]) for i in range(4)
    )
    train_sgd(
        net,
        x_train,
        y_train,
        batch=batch,
        epochs=epochs,
        lr=lr,
        seeds=run_seeds,
        momentum=momentum,
    )
    shape = (len(models), len(seeds))
    acc = accuracies(net, x_test, y_test).view(shape)
    result = {name: {"acc": acc[i]} for i, name in enumerate(models)}
    if any(has_bn.values()):
        if before_recalibration is not None:
            before_recalibration(net)
        recalibrate_bn(net, [x_train])
        recal = accuracies(net, x_test, y_test).view(shape)
        for i, name in enumerate(models):
            if has_bn[name]:
                result[name]["acc_recal"] = recal[i]
    return result


def fmt_accuracy(acc: object, n_test: int) -> str:
    """``"98.1 ± 0.3 [0.5]"``: mean accuracy over runs in %, the half-width of its 95%
    t-interval, and in brackets the binomial standard error of one run's accuracy on
    ``n_test`` images, ``sqrt(p (1 - p) / n_test)`` at the mean ``p``.

    ``acc``: accuracies in [0, 1], shape ``(n,)`` with ``n >= 2``.
    """
    n_test = check_int("n_test", n_test, 1)
    est = mean_ci(acc)
    if not 0 <= est.mean <= 1:
        raise ValueError(f"acc must hold accuracies in [0, 1], got mean {est.mean}")
    se_one = math.sqrt(est.mean * (1 - est.mean) / n_test)
    return f"{100 * est.mean:.1f} ± {100 * est.half_width:.1f} [{100 * se_one:.1f}]"


@dataclass(frozen=True)
class Ratio:
    """A ratio of two error rates over paired seeds: geometric mean with a t-interval.

    ``value``: ``exp`` of the mean of the per-seed log ratios; ``[lo, hi]``: the t-interval of
    that mean, mapped back through ``exp``; ``log``: the :class:`~nbutils.stats.Estimate` of the
    mean log ratio (its ``t``, ``n``, ``df``, ``level``).
    """

    value: float
    lo: float
    hi: float
    log: Estimate

    def above(self, value: float = 1.0) -> bool:
        """True when the whole interval lies above ``value`` (e.g. 1: the error grew)."""
        return bool(self.lo > value)

    def below(self, value: float = 1.0) -> bool:
        """True when the whole interval lies below ``value`` (e.g. 1: the error fell)."""
        return bool(self.hi < value)

    def format(self, digits: int = 2) -> str:
        """``"1.57× (1.33 to 1.86)"``."""
        return f"{self.value:.{digits}f}× ({self.lo:.{digits}f} to {self.hi:.{digits}f})"

    def __str__(self) -> str:
        return f"{self.format()} ({100 * self.log.level:g}% t-interval, n = {self.log.n})"


def error_ratio(a: object, b: object, level: float = 0.95) -> Ratio:
    """How many times error ``a`` is error ``b``, over paired seeds (geometric mean of ratios).

    ``a`` and ``b``: error rates (or counts), shape ``(n,)``, all positive; element i of each
    comes from the same seed (split, initialization, data order). Errors scatter
    multiplicatively (a run with twice the error also scatters about twice as much), so the
    comparison is made on ``log(a_i / b_i)``: its mean gets a t-interval on ``n - 1`` degrees of
    freedom (:func:`nbutils.stats.mean_ci`), and ``exp`` maps the mean and the interval back to
    a ratio.
    """
    level = _check_level(level)
    arr_a, arr_b = _as_1d("a", a), _as_1d("b", b)
    for name, arr in (("a", arr_a), ("b", arr_b)):
        if not (arr > 0).all():
            raise ValueError(
                f"{name} must hold positive error rates (a run without errors has no ratio; "
                f"evaluate on more images), got minimum {arr.min()}"
            )
    est = paired_diff(np.log(arr_a), np.log(arr_b), level)  # checks the lengths
    return Ratio(math.exp(est.mean), math.exp(est.lo), math.exp(est.hi), est)
