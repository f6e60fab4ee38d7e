"""nbutils.stats against scipy's own t-tests and intervals, and its error messages."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from nbutils import stats

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("n", [2, 3, 8, 40])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_matches_scipy(n, level):
    x = RNG.normal(1.0, 2.0, size=n)
    est = stats.mean_ci(x, level)
    ref = st.ttest_1samp(x, 0.0)
    ci = ref.confidence_interval(level)
    assert est.n == n and est.df == n - 1
    assert est.mean == pytest.approx(x.mean(), rel=1e-12)
    assert est.lo == pytest.approx(ci.low, rel=1e-10)
    assert est.hi == pytest.approx(ci.high, rel=1e-10)
    assert est.t == pytest.approx(ref.statistic, rel=1e-10)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-8)


def test_t_interval_is_wider_than_two_standard_errors_for_few_seeds():
    est = stats.mean_ci([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert est.half_width > 2 * est.se  # t_{7, 0.975} = 2.36
    assert est.half_width / est.se == pytest.approx(st.t.ppf(0.975, 7), rel=1e-12)


def test_paired_diff_matches_ttest_rel():
    a = RNG.normal(size=8)
    b = a + RNG.normal(0.3, 0.1, size=8)
    est = stats.paired_diff(a, b)
    ref = st.ttest_rel(a, b)
    assert est.t == pytest.approx(ref.statistic, rel=1e-10)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert (est.lo, est.hi) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert est.below(0) and not est.above(0) and est.excludes(0)


def test_welch_diff_matches_ttest_ind():
    a = RNG.normal(0.0, 1.0, size=6)
    b = RNG.normal(0.5, 3.0, size=11)
    est = stats.welch_diff(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert est.t == pytest.approx(ref.statistic, rel=1e-10)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert (est.lo, est.hi) == pytest.approx((ci.low, ci.high), rel=1e-8)


def test_tensors_are_accepted():
    x = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32)
    assert stats.mean_ci(x).mean == pytest.approx(7 / 3)


def test_coverage_of_the_interval_by_simulation():
    # 2000 intervals from n = 5 normal samples: about 95% must cover the true mean. The count
    # of covering intervals is Binomial(2000, 0.95), sd 9.7; accept within 4 sd.
    rng = np.random.default_rng(1)
    hits = sum(stats.mean_ci(rng.normal(3.0, 1.0, 5)).excludes(3.0) is False for _ in range(2000))
    assert abs(hits - 1900) < 4 * math.sqrt(2000 * 0.95 * 0.05)


def test_zero_spread_gives_infinite_t():
    est = stats.mean_ci([1.0, 1.0, 1.0])
    assert est.se == 0 and est.t == math.inf and est.p_value == 0.0
    assert est.above(0.5) and est.excludes(0.0)


def test_format_and_str():
    est = stats.mean_ci([0.01, 0.02, 0.03])
    assert est.format(2, scale=100) == "2.00 ± 2.48"
    assert "95% t-interval, n = 3" in str(est)


def test_mc_z():
    assert stats.mc_z(1.1, 1.0, 0.05) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda: stats.mean_ci([1.0]), ValueError, "x needs at least 2 values, got 1"),
        (lambda: stats.mean_ci([[1.0, 2.0]]), ValueError, "x must be 1-D"),
        (lambda: stats.mean_ci("abc"), TypeError, "x must be a 1-D sequence"),
        (lambda: stats.mean_ci(3.0), TypeError, "x must be a 1-D sequence"),
        (lambda: stats.mean_ci([1.0, float("nan")]), ValueError, "finite"),
        (lambda: stats.mean_ci([1.0, 2.0], level=95), ValueError, r"level must be .* \(0, 1\)"),
        (lambda: stats.mean_ci([1.0, 2.0], level="x"), TypeError, "level must be"),
        (lambda: stats.paired_diff([1, 2, 3], [1, 2]), ValueError, "same length"),
        (lambda: stats.welch_diff([1.0], [1.0, 2.0]), ValueError, "a needs at least 2"),
        (lambda: stats.t_quantile(0), ValueError, "df must be a number > 0"),
        (lambda: stats.mc_z(1.0, 1.0, 0.0), ValueError, "se must be > 0"),
        (lambda: stats.mc_z(1.0, float("inf"), 1.0), ValueError, "expected must be finite"),
        (lambda: stats.mc_z("1", 1.0, 1.0), TypeError, "estimate must be a real number"),
        (lambda: stats.mean_ci([1.0, 2.0]).format(-1), ValueError, "digits must be"),
    ],
)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()
