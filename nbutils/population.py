"""Experiment plumbing for the chapter on BatchNorm's population statistics (EMA vs Precise BN).

* :func:`ema` and :func:`ema_noise_variance` run PyTorch's moving-average update, and the
  recursion for the variance it accumulates from independent batch statistics, offline over a
  recorded sequence of batch statistics.
* :func:`train_tracked` trains K networks at once (:class:`~nbutils.stacking.StackedModels`) and
  records, at every step, the batch statistics and the exact training-set statistics of the
  first BatchNorm layer's input, and at regular checkpoints the validation accuracy with the
  moving averages and with Precise BN (:func:`~nbutils.recalibration.precise_bn`).
* :func:`update_bn_variances` computes what ``torch.optim.swa_utils.update_bn`` stores as
  ``running_var`` (the plain mean of the per-batch unbiased variances) for many random
  partitions of a data set into batches, from per-image sums.
* :func:`precise_bn_errors` measures how far Precise BN from a subsample of ``n`` samples lies
  from Precise BN on the whole data set, layer by layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nbutils.checks import check_int, check_momentum, check_seeds
from nbutils.recalibration import bn_layers, precise_bn
from nbutils.stacking import StackedModels, stacked_loss

__all__ = [
    "ema",
    "ema_noise_variance",
    "precise_bn_errors",
    "train_tracked",
    "update_bn_variances",
]


def _check_steps(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (steps, ...), got {t!r:.60}")
    if t.dim() < 1 or len(t) == 0:
        raise ValueError(f"{name} must have shape (steps, ...) with steps >= 1, got {t.shape}")
    return t


def ema(stats: torch.Tensor, momentum: float, init: float | torch.Tensor = 0.0) -> torch.Tensor:
    """PyTorch's running-statistics update, offline: ``r_t = (1 - a) r_(t-1) + a s_t``.

    ``stats``: ``(steps, ...)``, the batch statistic fed at each step; ``momentum`` ``a`` in
    ``(0, 1]`` (PyTorch's convention: the weight of the *new* value); ``init``: ``r_0``, a number
    or a tensor broadcastable to ``stats[0]`` (BatchNorm starts its mean at 0, its variance at
    1). Returns ``(steps, ...)``: the running value after each step, in ``stats``' dtype.
    """
    stats = _check_steps("stats", stats)
    a = check_momentum(momentum)
    out = torch.empty_like(stats)
    r = torch.as_tensor(init, dtype=stats.dtype).expand_as(stats[0])
    for t in range(len(stats)):
        r = (1 - a) * r + a * stats[t]
        out[t] = r
    return out


def ema_noise_variance(batch_var: torch.Tensor, momentum: float) -> torch.Tensor:
    """Variance of the moving average of independent, zero-mean batch fluctuations.

    If the batch statistic at step ``t`` is its expectation plus a fluctuation of variance
    ``batch_var[t]``, independent of the earlier ones, the moving average (:func:`ema`, started
    from a fixed value) fluctuates with variance ``v_t = (1 - a)² v_(t-1) + a² batch_var[t]``,
    ``v_0 = 0``, i.e. ``Σ_j a² (1 - a)^(2(t - j)) batch_var[j]``. For a constant ``batch_var``
    this is the closed form ``batch_var · a (1 - (1 - a)^(2t)) / (2 - a)``. ``batch_var``:
    ``(steps, ...)``, non-negative; returns ``(steps, ...)``.
    """
    batch_var = _check_steps("batch_var", batch_var)
    a = check_momentum(momentum)
    if bool((batch_var < 0).any()):
        raise ValueError("batch_var must be >= 0")
    out = torch.empty_like(batch_var)
    v = torch.zeros_like(batch_var[0])
    for t in range(len(batch_var)):
        v = (1 - a) ** 2 * v + a**2 * batch_var[t]
        out[t] = v
    return out


def _first_layer(model: nn.Module) -> tuple[nn.Linear, nn.BatchNorm1d]:
    if (
        not isinstance(model, nn.Sequential)
        or len(model) < 2
        or not isinstance(model[0], nn.Linear)
        or not isinstance(model[1], nn.BatchNorm1d)
    ):
        raise ValueError(
            "make_model() must return an nn.Sequential that starts with nn.Linear followed by "
            f"nn.BatchNorm1d, got {type(model).__name__}"
        )
    return model[0], model[1]


def _population(x64: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    # Mean and biased variance over the N rows of x of the first layer's outputs x W^T + b,
    # for stacked weights w (K, C, D): mean (K, C), variance (K, C), in float64.
    xm = x64.mean(dim=0)
    cov = (x64 - xm).T @ (x64 - xm) / len(x64)  # (D, D)
    w = w.detach().double()
    mean = w @ xm
    if b is not None:
        mean = mean + b.detach().double()
    var = ((w @ cov) * w).sum(dim=2)
    return mean, var


def train_tracked(
    make_model: Callable[[], nn.Module],
    seeds: Sequence[int],
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    steps: int,
    eval_every: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
) -> dict[str, object]:
    """Train K networks with AdamW and record how their BN statistics track the truth.

    ``make_model()`` must return an ``nn.Sequential`` whose first two layers are ``nn.Linear``
    and ``nn.BatchNorm1d`` (its other BN layers are measured too). For each ``seed`` (ints >= 0):
    ``torch.manual_seed(seed)`` then ``make_model()`` draws the initial weights, and a
    ``torch.Generator`` seeded with ``seed`` draws every mini-batch: ``batch_size`` indices
    uniformly **with replacement** from the ``N`` rows of ``x`` (shape ``(N, D)``; labels ``y``
    ``(N,)``), so that successive batches are independent given the weights. The K networks
    are stacked and trained together by one ``torch.optim.AdamW(lr, weight_decay)`` on
    cross-entropy for ``steps`` steps.

    Returns a dict of tensors (float64 unless stated), with ``C`` the first BN layer's channels
    and ``L`` the number of BN layers:

    * ``"batch_mean"``, ``"batch_var"``: ``(steps, K, C)``, the first BN layer's batch mean and
      *unbiased* batch variance at each step (what BatchNorm feeds its moving averages);
    * ``"pop_mean"``, ``"pop_var"``: ``(steps + 1, K, C)``, the mean and (biased) variance of the
      first BN layer's input over all of ``x`` for the weights before step 1, 2, ... and after
      the last step (index ``t`` holds the weights that produce batch ``t``);
    * ``"checkpoints"``: list of step counts (every ``eval_every`` steps, and the last);
    * ``"acc_ema"``, ``"acc_precise"``: ``(E, K)`` float32, the accuracy on ``(x_val, y_val)``
      in eval mode at each checkpoint with the moving averages, and after
      :func:`~nbutils.recalibration.precise_bn` on all of ``x`` (one batch), same weights;
    * ``"var_ratio"``: ``(E, K, L)``, per BN layer the mean over channels of
      ``running_var / precise running_var``; ``"first_running_mean"``: ``(E, K, C)``, the first
      BN layer's ``running_mean`` at each checkpoint;
    * ``"models"``: the K trained networks (ordinary modules, eval mode, moving averages).
    """
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    seeds = check_seeds(seeds)
    for name, (xs, ys) in {"x, y": (x, y), "x_val, y_val": (x_val, y_val)}.items():
        if not isinstance(xs, torch.Tensor) or not isinstance(ys, torch.Tensor):
            raise TypeError(f"{name} must be torch.Tensor")
        if xs.dim() != 2 or ys.dim() != 1 or len(xs) != len(ys) or len(xs) < 2:
            raise ValueError(
                f"{name} must have shapes (N, D) and (N,) with the same N >= 2, got "
                f"{tuple(xs.shape)} and {tuple(ys.shape)}"
            )
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    check_int("batch_size", batch_size, 2)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not weight_decay >= 0
    ):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(make_model())
    linear, _ = _first_layer(models[0])
    layer_names = list(bn_layers(models[0]))
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    stack = StackedModels(models).train()
    params = stack.named_parameters()
    w_first, b_first = params["0.weight"], params.get("0.bias") if linear.bias is not None else None
    optimizer = torch.optim.AdamW(stack.parameters(), lr=lr, weight_decay=weight_decay)
    x64 = x.double()

    pop = [_population(x64, w_first, b_first)]
    batch_mean, batch_var, record = [], [], {k: [] for k in ("ema", "pre", "ratio", "rm")}
    checkpoints = []
    for step in range(1, steps + 1):
        idx = torch.stack([torch.randint(len(x), (batch_size,), generator=g) for g in gens])
        with torch.no_grad():
            h = x64[idx] @ w_first.detach().double().transpose(1, 2)  # (K, m, C)
            if b_first is not None:
                h = h + b_first.detach().double()[:, None, :]
        batch_mean.append(h.mean(dim=1))
        batch_var.append(h.var(dim=1, correction=1))
        loss = stacked_loss(F.cross_entropy, stack(x[idx]), y[idx]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pop.append(_population(x64, w_first, b_first))
        if step % eval_every == 0 or step == steps:
            checkpoints.append(step)
            _checkpoint(stack, x, x_val, y_val, layer_names, record)
    stack.train()
    return {
        "batch_mean": torch.stack(batch_mean),
        "batch_var": torch.stack(batch_var),
        "pop_mean": torch.stack([m for m, _ in pop]),
        "pop_var": torch.stack([v for _, v in pop]),
        "checkpoints": checkpoints,
        "acc_ema": torch.stack(record["ema"]),
        "acc_precise": torch.stack(record["pre"]),
        "var_ratio": torch.stack(record["ratio"]),
        "first_running_mean": torch.stack(record["rm"]),
        "models": [m.eval() for m in stack.unstack()],
    }


def _checkpoint(stack, x, x_val, y_val, layer_names, record) -> None:
    stack.eval()
    with torch.no_grad():
        record["ema"].append((stack(x_val, shared_input=True).argmax(-1) == y_val).float().mean(1))
    nets = stack.unstack()
    accs, ratios, means = [], [], []
    for net in nets:
        before = {n: bn.running_var.double().clone() for n, bn in bn_layers(net).items()}
        means.append(bn_layers(net)[layer_names[0]].running_mean.double().clone())
        precise_bn(net, [x])
        net.eval()
        with torch.no_grad():
            accs.append((net(x_val).argmax(-1) == y_val).float().mean())
        layers = bn_layers(net)
        ratios.append(
            torch.stack([(before[n] / layers[n].running_var.double()).mean() for n in layer_names])
        )
    record["pre"].append(torch.stack(accs))
    record["ratio"].append(torch.stack(ratios))
    record["rm"].append(torch.stack(means))
    stack.train()


def update_bn_variances(
    sums: torch.Tensor,
    sums_sq: torch.Tensor,
    positions: int,
    batch_size: int,
    shuffles: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """What ``swa_utils.update_bn`` stores as ``running_var``, for many random batchings.

    ``sums``, ``sums_sq``: ``(N, C)``, per image and channel the sum and the sum of squares of
    the ``positions`` values (pixels) that a BatchNorm2d layer pools for that channel. For each
    of ``shuffles`` random permutations (drawn from ``generator``), the images are cut into
    ``N // batch_size`` full batches of ``batch_size`` images (a short last batch is dropped),
    each batch's *unbiased* variance over its ``n = batch_size · positions`` values is computed
    from the sums, and the batches' variances are averaged with equal weights, which is what
    ``update_bn`` (``momentum=None``) stores. Returns ``(shuffles, C)`` float64.
    """
    for name, t in (("sums", sums), ("sums_sq", sums_sq)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a tensor of shape (N, C), got {t!r:.60}")
    if sums.shape != sums_sq.shape:
        raise ValueError(
            f"sums and sums_sq must have the same shape, got {tuple(sums.shape)} and "
            f"{tuple(sums_sq.shape)}"
        )
    check_int("positions", positions, 1)
    check_int("batch_size", batch_size, 1)
    check_int("shuffles", shuffles, 1)
    if batch_size > len(sums):
        raise ValueError(f"batch_size must be <= N = {len(sums)}, got {batch_size}")
    if batch_size * positions < 2:
        raise ValueError("a batch must hold at least 2 values per channel (batch_size * positions)")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    s1, s2 = sums.double(), sums_sq.double()
    n_batches, n = len(s1) // batch_size, batch_size * positions
    out = []
    for _ in range(shuffles):
        perm = torch.randperm(len(s1), generator=generator)[: n_batches * batch_size]
        b1 = s1[perm].reshape(n_batches, batch_size, -1).sum(dim=1)  # (batches, C)
        b2 = s2[perm].reshape(n_batches, batch_size, -1).sum(dim=1)
        out.append(((b2 - b1**2 / n) / (n - 1)).mean(dim=0))
    return torch.stack(out)


def precise_bn_errors(
    model: nn.Module,
    x: torch.Tensor,
    sizes: Sequence[int],
    repeats: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """How far Precise BN from ``n`` samples lies from Precise BN on all of ``x``.

    The reference: :func:`~nbutils.recalibration.precise_bn` on a copy of ``model`` with all of
    ``x`` (shape ``(N, ...)``) as one batch. Then, for each ``n`` in ``sizes`` (ints with
    ``2 <= n <= N``) and each of ``repeats`` random subsets (the first ``n`` rows of a random
    permutation from ``generator``), Precise BN on that subset as one batch. Per BN layer
    (order of :func:`~nbutils.recalibration.bn_layers`), with ``m, v`` the reference mean and
    variance and ``m', v'`` the subset's, over the channels ``c``:

    * ``"mean"``: ``(len(sizes), repeats, L)``, ``mean_c ((m'_c - m_c)² / v_c)``, the squared
      error of the mean in units of the channel's variance;
    * ``"var"``: the same shape, ``mean_c ((v'_c - v_c) / v_c)²``, the squared relative error
      of the variance.

    Both are float64; take the square root of their means for an RMS error. ``model`` itself
    is not changed.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) < 2:
        raise ValueError(f"x must be a tensor of shape (N, ...) with N >= 2, got {x!r:.60}")
    bn_layers(model)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"sizes must be a non-empty sequence of ints, got {sizes!r}")
    for n in sizes:
        check_int("every size", n, 2)
        if n > len(x):
            raise ValueError(f"every size must be <= N = {len(x)}, got {n}")
    check_int("repeats", repeats, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    def stats(rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        net = precise_bn(copy.deepcopy(model), [rows], unbiased=False)
        return [
            (bn.running_mean.double(), bn.running_var.double()) for bn in bn_layers(net).values()
        ]

    reference = stats(x)
    err_mean = torch.empty(len(sizes), repeats, len(reference), dtype=torch.float64)
    err_var = torch.empty_like(err_mean)
    for i, n in enumerate(sizes):
        for r in range(repeats):
            rows = x[torch.randperm(len(x), generator=generator)[:n]]
            for j, ((m, v), (m_ref, v_ref)) in enumerate(zip(stats(rows), reference, strict=True)):
                err_mean[i, r, j] = ((m - m_ref) ** 2 / v_ref).mean()
                err_var[i, r, j] = (((v - v_ref) / v_ref) ** 2).mean()
    return {"mean": err_mean, "var": err_var}
