"""Statistics for the book's experiments: means, paired and unpaired differences, Monte Carlo z.

Every experiment in the book that compares methods over seeds or training sets reports a mean with
a *t-based* confidence interval (Student's t with n - 1 degrees of freedom, not "2 standard
errors", which is too narrow for the handful of seeds a CPU budget allows). The functions here are
thin wrappers around :mod:`scipy.stats` that return one small result object, print well, and
reject bad input with a clear message.

    >>> est = paired_diff([0.91, 0.93, 0.92, 0.95], [0.90, 0.91, 0.92, 0.93])
    >>> est.lo > 0   # the interval of the mean difference excludes zero: a resolved gain
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _st

from nbutils.checks import check_int

__all__ = [
    "Estimate",
    "mc_z",
    "mean_ci",
    "paired_diff",
    "t_quantile",
    "welch_diff",
]

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) with its standard error and a t-based interval.

    ``mean``: the estimate; ``se``: its standard error; ``df``: the degrees of freedom of the t
    distribution used (``n - 1`` for a mean or a paired difference, Welch's value for two
    independent samples); ``level``: the confidence level of ``[lo, hi]``; ``n``: the number of
    samples (pairs for a paired difference).
    """

    mean: float
    se: float
    df: float
    level: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the width of the interval: ``t_{df, (1 + level) / 2} * se``."""
        return (self.hi - self.lo) / 2

    @property
    def t(self) -> float:
        """The t statistic of the test of "the true mean is 0" (``inf`` when ``se == 0``)."""
        if self.se == 0:
            return math.copysign(math.inf, self.mean) if self.mean else 0.0
        return self.mean / self.se

    @property
    def p_value(self) -> float:
        """Two-sided p-value of the test of "the true mean is 0"."""
        if math.isinf(self.t):
            return 0.0
        return float(2 * _st.t.sf(abs(self.t), self.df))

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval ``[lo, hi]``."""
        return bool(value < self.lo or value > self.hi)

    def above(self, value: float = 0.0) -> bool:
        """True when the whole interval lies above ``value``: a resolved positive effect."""
        return bool(self.lo > value)

    def below(self, value: float = 0.0) -> bool:
        """True when the whole interval lies below ``value``: a resolved negative effect."""
        return bool(self.hi < value)

    def format(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        """``"mean ± half-width"`` with ``digits`` decimals, e.g. in points with ``scale=100``."""
        check_int("digits", digits, 0)
        m, h = self.mean * scale, self.half_width * scale
        return f"{m:.{digits}f}{unit} ± {h:.{digits}f}{unit}"

    def __str__(self) -> str:
        return (
            f"{self.mean:.4g} ± {self.half_width:.2g} "
            f"({100 * self.level:g}% t-interval, n = {self.n}, t = {self.t:.2f})"
        )


def _check_level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)):
        raise TypeError(f"level must be a float in (0, 1), got {level!r}")
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be a float in (0, 1), got {level}")
    return float(level)


def _as_1d(name: str, x: object, at_least: int = 2) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 1-D sequence of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) < at_least:
        raise ValueError(f"{name} needs at least {at_least} values, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers only (no NaN or inf)")
    return arr


def t_quantile(df: float, level: float = 0.95) -> float:
    """The two-sided critical value ``t_{df, (1 + level) / 2}`` of Student's t distribution."""
    level = _check_level(level)
    if isinstance(df, bool) or not isinstance(df, (int, float, np.integer, np.floating)):
        raise TypeError(f"df must be a number > 0, got {df!r}")
    if not df > 0:
        raise ValueError(f"df must be a number > 0, got {df}")
    return float(_st.t.ppf((1 + level) / 2, df))


def _estimate(mean: float, se: float, df: float, level: float, n: int) -> Estimate:
    half = t_quantile(df, level) * se
    return Estimate(float(mean), float(se), float(df), level, mean - half, mean + half, n)


def mean_ci(x: ArrayLike, level: float = 0.95) -> Estimate:
    """Mean of ``x`` (shape ``(n,)``, ``n >= 2``), t interval on ``n - 1`` degrees of freedom."""
    level = _check_level(level)
    arr = _as_1d("x", x)
    n = len(arr)
    se = arr.std(ddof=1) / math.sqrt(n)
    return _estimate(arr.mean(), se, n - 1, level, n)


def paired_diff(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> Estimate:
    """Mean of the paired differences ``a - b`` (e.g. two methods run on the same seeds).

    ``a`` and ``b`` have shape ``(n,)``; element ``i`` of each comes from the same seed or data
    set. Pairing removes the variation the two share, which is usually most of it.
    """
    level = _check_level(level)
    arr_a, arr_b = _as_1d("a", a), _as_1d("b", b)
    if len(arr_a) != len(arr_b):
        raise ValueError(
            f"a and b must have the same length (one pair per seed), got {len(arr_a)} and "
            f"{len(arr_b)}"
        )
    return mean_ci(arr_a - arr_b, level)


def welch_diff(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> Estimate:
    """Difference of the means ``mean(a) - mean(b)`` of two independent samples (Welch's t).

    Use it only when the samples are not paired; the degrees of freedom are the
    Welch-Satterthwaite value.
    """
    level = _check_level(level)
    arr_a, arr_b = _as_1d("a", a), _as_1d("b", b)
    va, vb = arr_a.var(ddof=1) / len(arr_a), arr_b.var(ddof=1) / len(arr_b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = float(len(arr_a) + len(arr_b) - 2)
    else:
        df = (va + vb) ** 2 / (va**2 / (len(arr_a) - 1) + vb**2 / (len(arr_b) - 1))
    return _estimate(arr_a.mean() - arr_b.mean(), se, df, level, len(arr_a) + len(arr_b))


def mc_z(estimate: float, expected: float, se: float) -> float:
    """How many standard errors a Monte Carlo ``estimate`` lies from the ``expected`` value.

    A Monte Carlo check then reads ``assert abs(mc_z(est, exact, se)) < 4``: with a correct
    formula it fails with probability about 6e-5 (normal approximation).
    """
    for name, value in (("estimate", estimate), ("expected", expected), ("se", se)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if not se > 0:
        raise ValueError(f"se must be > 0, got {se}")
    return (float(estimate) - float(expected)) / float(se)
