"""Data the course uses: a 1-D toy regression generated in code, and scikit-learn's digits.

Nothing here touches the network: ``load_digits`` ships inside scikit-learn.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

_DESIGNS = ("uniform", "grid")


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def make_toy_regression(
    n: int,
    *,
    slope: float = 1.5,
    noise_std: float = 0.5,
    x_range: tuple[float, float] = (-1.0, 1.0),
    design: str = "uniform",
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's 1-D toy problem: ``y = slope * x + noise``, noise ~ N(0, noise_std**2).

    ``design="uniform"`` draws x uniformly from ``x_range``; ``design="grid"`` places the n points
    evenly over it (a fixed design, useful when only the noise should vary between data sets).
    ``seed=None`` uses PyTorch's global generator (seeded by :func:`nbutils.setup`).

    Returns ``(x, y)``, both of shape ``(n, 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if design not in _DESIGNS:
        raise ValueError(f"design must be one of {', '.join(_DESIGNS)}; got {design!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    lo, hi = x_range
    if not lo < hi:
        raise ValueError(f"x_range must be (low, high) with low < high, got {x_range!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    gen = _generator(seed)
    if design == "grid":
        x = torch.linspace(lo, hi, n, dtype=dtype).unsqueeze(1)
    else:
        x = lo + (hi - lo) * torch.rand(n, 1, generator=gen, dtype=dtype)
    y = slope * x + noise_std * torch.randn(n, 1, generator=gen, dtype=dtype)
    return x, y


class Digits(NamedTuple):
    """The digits data as tensors, split into train/val/test.

    Images have shape ``(N, 1, 8, 8)`` with pixel values scaled to [0, 1]; labels have shape
    ``(N,)`` and dtype ``int64``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, ...], seed: int = 0
) -> list[torch.Tensor]:
    """Split indices ``0..len(labels)-1`` into parts with the given fractions, class by class.

    Each class is shuffled and cut at the same fractions, so every part keeps the class
    proportions (up to rounding). Returns one sorted index tensor per fraction.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if len(fractions) < 2 or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must be two or more numbers in (0, 1), got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    gen = _generator(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0, *fractions))
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cuts = np.round(bounds * len(idx)).astype(int)
        for k in range(len(fractions)):
            parts[k].append(idx[cuts[k] : cuts[k + 1]])
    return [torch.sort(torch.cat(p)).values for p in parts]


def load_digits_tensors(
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Digits:
    """scikit-learn's 1,797 8x8 digits as tensors, with a stratified train/val/test split."""
    from sklearn.datasets import load_digits

    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=dtype).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train, val, test = stratified_split(y, fractions, seed=seed)
    return Digits(x[train], y[train], x[val], y[val], x[test], y[test])


def make_loader(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over ``(x, y)``; shuffling uses its own seeded generator (reproducible)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    gen = _generator(seed) if shuffle else None
    return DataLoader(
        TensorDataset(x, y),
        batch_size=int(batch_size),
        shuffle=shuffle,
        drop_last=drop_last,
        generator=gen,
    )


def digits_loaders(
    batch_size: int = 64,
    *,
    eval_batch_size: int = 512,
    seed: int = 0,
    flatten: bool = False,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled), validation and test loaders over the stratified digits split.

    ``flatten=True`` gives inputs of shape ``(N, 64)`` for MLPs instead of ``(N, 1, 8, 8)``.
    """
    d = load_digits_tensors(seed=seed)
    xs = [d.x_train, d.x_val, d.x_test]
    if flatten:
        xs = [x.flatten(1) for x in xs]
    return (
        make_loader(xs[0], d.y_train, batch_size, shuffle=True, seed=seed),
        make_loader(xs[1], d.y_val, eval_batch_size),
        make_loader(xs[2], d.y_test, eval_batch_size),
    )
