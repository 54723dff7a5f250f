"""analysis/welch.py, Welch's t-test over seeds, against scipy.stats (a dev-only reference); no model."""
import math

import pytest
from scipy import special, stats

from analysis.welch import incomplete_beta, t_cdf, t_quantile, welch_difference


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (1.0, 0.5, 0.9), (1.1, 0.5, 0.999), (2.5, 7.0, 0.2),
                                   (20.0, 0.5, 0.95), (0.7, 3.0, 1e-6)])
def test_incomplete_beta_equals_scipy(a, b, x):
    assert incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("df", [1.0, 2.0, 2.37, 4.0, 30.0, 1000.0])
def test_t_distribution_equals_scipy(df):
    for t in (-50.0, -3.0, -0.4, 0.0, 0.4, 2.0, 12.7):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-11, abs=1e-15)
    for q in (0.025, 0.5, 0.9, 0.975, 0.995):
        assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9, abs=1e-12)
    assert t_quantile(0.975, 2.0) == pytest.approx(4.302652729749464)  # the table value


@pytest.mark.parametrize("x,y", [
    ([0.649, 0.649, 0.655], [0.600, 0.600, 0.604]),  # a wide gap, tiny spread: p small
    ([0.335, 0.327, 0.330], [0.321, 0.305, 0.333]),  # overlapping seeds: p large
    ([0.36, 0.346], [0.352, 0.344, 0.350, 0.341]),  # unequal seed counts
    ([0.5, 0.5, 0.5], [0.4, 0.45, 0.43]),  # one side does not vary
])
def test_welch_equals_scipy(x, y):
    got = welch_difference(x, y)
    ref = stats.ttest_ind(x, y, equal_var=False)
    low, high = ref.confidence_interval(0.95)
    assert got.delta == pytest.approx(sum(x) / len(x) - sum(y) / len(y))
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.df == pytest.approx(ref.df, rel=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert (got.seeds_a, got.seeds_b) == (len(x), len(y))


def test_welch_needs_two_seeds_a_side_and_some_spread():
    assert welch_difference([0.6], [0.5, 0.4]) is None  # one seed: no variance to estimate
    assert welch_difference([0.6, 0.6], [0.5, 0.5]) is None  # neither varies: no interval
    assert welch_difference([0.6, 0.7], [0.5, 0.5]).p < 1
    with pytest.raises(ValueError):
        t_quantile(1.0, 3.0)
    assert not math.isnan(welch_difference([0.1, 0.9], [0.5, 0.5]).p)
