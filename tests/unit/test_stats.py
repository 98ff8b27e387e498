"""gptlab.stats against independent references: printed t tables, closed forms, sampling."""

import math

import numpy as np
import pytest

from gptlab.stats import mean_std, t_cdf, t_quantile, verdict, welch_interval

# Two-sided 95% critical values t_{0.975, df} as printed in standard t tables
# (e.g. the NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.2).
TABLE_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    8: 2.306,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
    60: 2.000,
    100: 1.984,
}


@pytest.mark.parametrize("df,expected", sorted(TABLE_975.items()))
def test_quantile_matches_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)  # the table prints 3 decimals


def test_quantiles_of_other_levels_from_the_table():
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)  # the normal limit


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 100.0])
def test_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 and df = 4 have closed forms too.
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    x = t / math.sqrt(4 + t * t)
    assert t_cdf(t, 4) == pytest.approx(0.5 + 0.75 * x * (1 - x * x / 3), abs=1e-12)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_quantile_closed_forms(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


@pytest.mark.parametrize("df", [1.7, 2.5, 7.3])
def test_fractional_df_against_sampling(df):
    # Welch's degrees of freedom are fractional: numpy's t sampler is the reference (standard error of
    # the 0.975 sample quantile over 400k draws is below 0.02 for these df).
    draws = np.random.default_rng(0).standard_t(df, size=400_000)
    assert t_quantile(0.975, df) == pytest.approx(np.quantile(draws, 0.975), abs=0.06)
    assert t_quantile(0.8, df) == pytest.approx(np.quantile(draws, 0.8), abs=0.01)


def test_mean_std_is_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, np.std([1, 2, 3, 4], ddof=1)))
    assert math.isnan(mean_std([1.0])[1])


def test_welch_textbook_example():
    # Two samples by hand: means 2 and 3.5, variances 1 and 5/3; se^2 = 1/3 + 5/12 = 0.75;
    # Welch-Satterthwaite df = 0.75^2 / ((1/3)^2 / 2 + (5/12)^2 / 3) = 4.959...
    out = welch_interval([1, 2, 3], [2, 3, 4, 5])
    df = 0.75**2 / ((1 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)
    assert out["df"] == pytest.approx(df)
    assert out["difference"] == -1.5
    # t_{.975, 4.96} interpolated in 1/df between the table's df 5 (2.571) and df 4 (2.776): 2.578
    assert out["high"] - out["difference"] == pytest.approx(math.sqrt(0.75) * 2.578, abs=3e-3)


def test_welch_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, hits = 1500, 0
    for _ in range(trials):
        a, b = rng.normal(0.3, 1.0, 3), rng.normal(0.0, 3.0, 4)  # unequal variances and sizes
        out = welch_interval(a.tolist(), b.tolist())
        hits += out["low"] <= 0.3 <= out["high"]
    assert (
        0.93 <= hits / trials <= 0.975
    )  # binomial sd at 0.95 is 0.0056; Welch is slightly conservative


def test_verdicts():
    assert verdict(dict(low=-0.2, high=-0.1)) == "better"
    assert verdict(dict(low=0.1, high=0.2)) == "worse"
    assert verdict(dict(low=-0.1, high=0.2)).startswith("not distinguishable")
    assert verdict(None).startswith("not distinguishable")
    assert welch_interval([1.0], [1.0, 2.0]) is None
