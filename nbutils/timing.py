"""Speed ratios with a confidence interval: paired, interleaved timings of two or more callables.

A speed claim in the book is a *ratio* of two run times measured side by side in one process,
never an absolute time compared across runs. On a shared machine one measurement of a ratio is
noisy, so :func:`interleaved_medians` measures every candidate once per *round*, in an order that
alternates from round to round, and :func:`time_ratio` turns the per-round ratios into a
geometric-mean ratio with a t-interval (on the log ratios, ``n - 1`` degrees of freedom, from
:func:`nbutils.stats.mean_ci`). A claim "A is faster than B" is then made only when the whole
interval lies on one side of 1; otherwise the difference is within noise.

    >>> r = time_ratio([2.0, 2.2, 1.9, 2.1], [1.0, 1.0, 1.0, 1.0])
    >>> r.above(1), round(r.ratio, 2)
    (True, 2.05)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils import benchmark

from nbutils.stats import _as_1d, _check_level, mean_ci

__all__ = [
    "ALLOCATOR_ENV",
    "TimeRatio",
    "interleaved_medians",
    "quiet_allocator",
    "time_ratio",
]

#: glibc allocator settings that keep small-tensor timings from flipping between a fast and a slow
#: mode per process: the environment variables a benchmark process starts with (the same as
#: benchmarks/notebook_times.py sets for the notebooks).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}

#: What a measurement reads: elapsed time, or the CPU time of this process (all its threads), which
#: leaves out the time the process waits for a core on a machine shared with other work.
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers of glibc's malloc.h


def quiet_allocator() -> bool:
    """Apply :data:`ALLOCATOR_ENV` to the running process with glibc's ``mallopt``.

    It has the same effect as starting the process with those environment variables, for a
    process (a notebook kernel) that was started without them. Returns True when the settings are
    in force (already set in the environment, or applied now), False where the C library is not
    glibc (then nothing is changed).
    """
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]))
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]))
    return bool(ok_mmap == 1 and ok_trim == 1)


def _check_positive(name: str, value: object, kind: type, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def interleaved_medians(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int,
    min_run_time: float = 0.05,
    warmup: int = 10,
    clock: str = "wall",
) -> dict[str, np.ndarray]:
    """Median seconds per call of each candidate, measured once per round.

    ``candidates`` maps a name to a callable without arguments (at least two). Every candidate is
    first called ``warmup`` times; then, in each of ``rounds`` rounds, each is measured with
    :meth:`torch.utils.benchmark.Timer.blocked_autorange` (``min_run_time`` seconds at least) and
    its median kept. The order of the candidates is reversed every other round, so that neither
    always runs first. Measurements use the current thread count, ``torch.get_num_threads()``.
    ``clock="wall"`` measures elapsed time; ``clock="cpu"`` the CPU time of the process (all its
    threads), which leaves out the time spent waiting for a core on a machine shared with other
    work: with one thread, the time the code takes on an idle core.

    Returns ``{name: array of shape (rounds,)}``: per-round medians in seconds, paired by round.
    """
    if not isinstance(candidates, Mapping):
        raise TypeError(
            f"candidates must be a mapping of names to callables, got {type(candidates).__name__}"
        )
    if len(candidates) < 2:
        raise ValueError(f"candidates needs at least 2 entries to compare, got {len(candidates)}")
    for name, fn in candidates.items():
        if not callable(fn):
            raise TypeError(f"candidates[{name!r}] must be callable, got {type(fn).__name__}")
    _check_positive("rounds", rounds, int, "an int >= 2")
    if rounds < 2:
        raise ValueError(f"rounds must be an int >= 2 (an interval needs two), got {rounds}")
    _check_positive("min_run_time", min_run_time, (int, float), "a number of seconds > 0")
    if isinstance(warmup, bool) or not isinstance(warmup, int):
        raise TypeError(f"warmup must be an int >= 0, got {warmup!r}")
    if warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup}")
    if clock not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {clock!r}")

    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    timers = {
        name: benchmark.Timer(
            stmt="fn()",
            globals={"fn": fn},
            timer=_CLOCKS[clock],
            num_threads=torch.get_num_threads(),
        )
        for name, fn in candidates.items()
    }
    names = list(timers)
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            medians[name].append(timers[name].blocked_autorange(min_run_time=min_run_time).median)
    return {name: np.asarray(values) for name, values in medians.items()}


@dataclass(frozen=True)
class TimeRatio:
    """The ratio of two run times, ``time(a) / time(b)``, with a t-interval.

    ``ratio`` is the geometric mean of the per-round ratios, ``[lo, hi]`` its ``level`` interval
    (a t-interval of the mean log ratio, exponentiated), ``n`` the number of rounds. A ratio
    above 1 means ``a`` took longer: ``b`` is ``ratio`` times as fast.
    """

    ratio: float
    lo: float
    hi: float
    level: float
    n: int

    def above(self, value: float = 1.0) -> bool:
        """True when the whole interval lies above ``value``: ``b`` resolved faster."""
        return bool(self.lo > value)

    def below(self, value: float = 1.0) -> bool:
        """True when the whole interval lies below ``value``: ``a`` resolved faster."""
        return bool(self.hi < value)

    def covers(self, value: float = 1.0) -> bool:
        """True when ``value`` lies inside the interval: no difference resolved."""
        return bool(self.lo <= value <= self.hi)

    def verdict(self) -> str:
        """A phrase that is true for this run: resolved (which way) or within noise."""
        if self.above(1.0):
            return "resolved, the whole interval lies above 1"
        if self.below(1.0):
            return "resolved, the whole interval lies below 1"
        return "within noise, the interval covers 1"

    def __str__(self) -> str:
        return (
            f"{self.ratio:.2f} ({100 * self.level:g}% interval {self.lo:.2f} to {self.hi:.2f}, "
            f"{self.n} rounds)"
        )


def time_ratio(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95
) -> TimeRatio:
    """Ratio of paired run times ``a / b`` (shape ``(n,)`` each, ``n >= 2``, seconds > 0).

    Element ``i`` of ``a`` and of ``b`` come from the same round of :func:`interleaved_medians`.
    The interval is the t-interval of the mean of ``log(a_i / b_i)`` on ``n - 1`` degrees of
    freedom, mapped back with ``exp``: a ratio interval that is symmetric on the log scale.
    """
    level = _check_level(level)
    arr_a, arr_b = _as_1d("a", a), _as_1d("b", b)
    if len(arr_a) != len(arr_b):
        raise ValueError(
            f"a and b must have the same length (one pair per round), got {len(arr_a)} and "
            f"{len(arr_b)}"
        )
    for name, arr in (("a", arr_a), ("b", arr_b)):
        if not (arr > 0).all():
            raise ValueError(f"{name} must hold run times > 0 only, got min {arr.min()!r}")
    est = mean_ci(np.log(arr_a) - np.log(arr_b), level)
    return TimeRatio(math.exp(est.mean), math.exp(est.lo), math.exp(est.hi), level, len(arr_a))
