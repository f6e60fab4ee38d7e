"""nbutils.timing: time ratios against scipy's t-interval on log ratios, the interleaved
measurements, the allocator settings, and every error message."""

import math
import platform
import time

import numpy as np
import pytest
from scipy import stats as st

from nbutils import timing

RNG = np.random.default_rng(0)


def test_time_ratio_is_the_exponentiated_t_interval_of_the_log_ratios():
    a = RNG.uniform(1.0, 2.0, size=9)
    b = RNG.uniform(0.5, 1.0, size=9)
    r = timing.time_ratio(a, b, level=0.9)
    logs = np.log(a / b)
    ci = st.ttest_1samp(logs, 0.0).confidence_interval(0.9)
    assert r.ratio == pytest.approx(math.exp(logs.mean()), rel=1e-12)
    assert (r.lo, r.hi) == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-10)
    assert r.n == 9 and r.level == 0.9
    # symmetric on the log scale: ratio is the geometric mean of the bounds
    assert r.ratio == pytest.approx(math.sqrt(r.lo * r.hi), rel=1e-12)


def test_time_ratio_is_invariant_to_the_unit_and_inverts():
    a, b = RNG.uniform(1, 3, size=5), RNG.uniform(1, 3, size=5)
    r, r_ms, inv = (
        timing.time_ratio(a, b),
        timing.time_ratio(1e3 * a, 1e3 * b),
        timing.time_ratio(b, a),
    )
    assert (r_ms.ratio, r_ms.lo, r_ms.hi) == pytest.approx((r.ratio, r.lo, r.hi), rel=1e-12)
    assert (inv.ratio, inv.lo, inv.hi) == pytest.approx(
        (1 / r.ratio, 1 / r.hi, 1 / r.lo), rel=1e-12
    )


def test_verdicts_follow_the_interval():
    slower = timing.time_ratio([2.0, 2.1, 1.9, 2.05], [1.0, 1.0, 1.0, 1.0])
    faster = timing.time_ratio([1.0, 1.0, 1.0, 1.0], [2.0, 2.1, 1.9, 2.05])
    noise = timing.time_ratio([1.0, 1.2, 0.8, 1.1], [1.05, 1.0, 1.0, 1.0])
    assert slower.above(1) and not slower.below(1) and not slower.covers(1)
    assert faster.below(1) and not faster.above(1) and not faster.covers(1)
    assert noise.covers(1) and not noise.above(1) and not noise.below(1)
    assert "above 1" in slower.verdict() and slower.verdict().startswith("resolved")
    assert "below 1" in faster.verdict() and faster.verdict().startswith("resolved")
    assert noise.verdict().startswith("within noise")
    assert str(slower).startswith(f"{slower.ratio:.2f} (95% interval")


@pytest.mark.parametrize(
    ("a", "b", "error", "message"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], ValueError, "same length"),
        ([1.0], [1.0], ValueError, "at least 2"),
        ([1.0, 0.0], [1.0, 1.0], ValueError, "a must hold run times > 0"),
        ([1.0, 1.0], [1.0, -1.0], ValueError, "b must hold run times > 0"),
        ([1.0, float("nan")], [1.0, 1.0], ValueError, "finite"),
        ([[1.0, 2.0]], [1.0, 2.0], ValueError, "1-D"),
        ("12", [1.0, 2.0], TypeError, "a must be a 1-D sequence"),
        ([1.0, 2.0], 3.0, TypeError, "b must be a 1-D sequence"),
    ],
)
def test_time_ratio_rejects_bad_input(a, b, error, message):
    with pytest.raises(error, match=message):
        timing.time_ratio(a, b)


@pytest.mark.parametrize(("level", "error"), [(1.0, ValueError), (0, ValueError), ("x", TypeError)])
def test_time_ratio_rejects_bad_level(level, error):
    with pytest.raises(error, match="level must be a float in"):
        timing.time_ratio([1.0, 2.0], [1.0, 2.0], level=level)


def test_interleaved_medians_shape_and_warmup():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
            return sum(range(50))

        return fn

    out = timing.interleaved_medians(
        {"a": make("a"), "b": make("b")}, rounds=3, min_run_time=0.001, warmup=4
    )
    assert set(out) == {"a", "b"}
    for values in out.values():
        assert values.shape == (3,) and (values > 0).all()
    assert calls["a"] > 4 and calls["b"] > 4


def test_a_slower_callable_is_resolved_slower_on_the_wall_clock():
    out = timing.interleaved_medians(
        {"sleep": lambda: time.sleep(0.002), "none": lambda: None},
        rounds=3,
        min_run_time=0.01,
        warmup=1,
    )
    assert timing.time_ratio(out["sleep"], out["none"]).above(1)
    assert np.median(out["sleep"]) >= 0.002


def test_the_cpu_clock_leaves_out_waiting():
    out = timing.interleaved_medians(
        {"sleep": lambda: time.sleep(0.001), "none": lambda: None},
        rounds=2,
        min_run_time=0.002,
        warmup=1,
        clock="cpu",
    )
    assert np.median(out["sleep"]) < 0.0005  # sleeping uses (almost) no CPU time


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"candidates": [lambda: None, lambda: None]}, TypeError, "candidates must be a mapping"),
        ({"candidates": {"a": lambda: None}}, ValueError, "at least 2 entries"),
        ({"candidates": {"a": lambda: None, "b": 3}}, TypeError, r"candidates\['b'\] must be"),
        ({"rounds": 1}, ValueError, "rounds must be an int >= 2"),
        ({"rounds": 0}, ValueError, "rounds must be an int >= 2"),
        ({"rounds": 2.0}, TypeError, "rounds must be an int >= 2"),
        ({"rounds": True}, TypeError, "rounds must be an int >= 2"),
        ({"min_run_time": 0.0}, ValueError, "min_run_time must be a number"),
        ({"min_run_time": float("inf")}, ValueError, "min_run_time must be a number"),
        ({"min_run_time": "0.1"}, TypeError, "min_run_time must be a number"),
        ({"warmup": -1}, ValueError, "warmup must be an int >= 0"),
        ({"warmup": 1.5}, TypeError, "warmup must be an int >= 0"),
        ({"clock": "gpu"}, ValueError, r"clock must be one of \['cpu', 'wall'\]"),
    ],
)
def test_interleaved_medians_rejects_bad_input(kwargs, error, message):
    args = {
        "candidates": {"a": lambda: None, "b": lambda: None},
        "rounds": 2,
        "min_run_time": 0.001,
        "warmup": 0,
    } | kwargs
    with pytest.raises(error, match=message):
        timing.interleaved_medians(**args)


def test_quiet_allocator(monkeypatch):
    for key, value in timing.ALLOCATOR_ENV.items():
        monkeypatch.setenv(key, value)
    assert timing.quiet_allocator() is True  # already in force: nothing to do
    for key in timing.ALLOCATOR_ENV:
        monkeypatch.delenv(key)
    applied = timing.quiet_allocator()
    assert isinstance(applied, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied


def test_quiet_allocator_without_a_c_library(monkeypatch):
    for key in timing.ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(timing.ctypes.util, "find_library", lambda name: None)
    assert timing.quiet_allocator() is False
