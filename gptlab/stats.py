"""Small statistics for `gptlab compare`: mean and sample standard deviation over seeds, Student's t
distribution (scipy is not a dependency), and Welch's interval for a difference of two means.

The t distribution's CDF is F(t) = 1 - I_x(df/2, 1/2) / 2 for t > 0 with x = df / (df + t^2), where I
is the regularized incomplete beta function, evaluated by its continued fraction (modified Lentz);
quantiles invert F by bisection, which cannot fail to converge because F is monotone."""

from __future__ import annotations

import math
import statistics

_EPS = 1e-15
_TINY = 1e-300
_NORMAL_DF = 1e7  # above this many degrees of freedom the t distribution is the normal one to 1e-8


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1); the deviation is NaN for fewer than two values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), convergent for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 10_000):
        # The even step d_2m, then the odd step d_2m+1 of the fraction.
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            return result
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return (
        1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b
    )  # the symmetry I_x(a,b) = 1 - I_1-x(b,a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df may be fractional, as Welch's is)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if df > _NORMAL_DF:
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    if df > _NORMAL_DF:
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while (
        t_cdf(high, df) < p
    ):  # the quantile of df = 1 at p = 1 - 1e-12 is about 3e11: a few dozen doublings
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def welch_interval(sample: list[float], reference: list[float], level: float = 0.95) -> dict | None:
    """Welch's interval for mean(sample) - mean(reference): {difference, low, high, df, standard_error};
    None when either side has fewer than two values (no variance to estimate)."""
    if len(sample) < 2 or len(reference) < 2:
        return None
    mean_a, std_a = mean_std(sample)
    mean_b, std_b = mean_std(reference)
    part_a, part_b = std_a**2 / len(sample), std_b**2 / len(reference)
    difference, error = mean_a - mean_b, math.sqrt(part_a + part_b)
    if error == 0.0:  # identical values within each side: the difference is exact
        return dict(
            difference=difference, low=difference, high=difference, df=math.inf, standard_error=0.0
        )
    df = (part_a + part_b) ** 2 / (part_a**2 / (len(sample) - 1) + part_b**2 / (len(reference) - 1))
    half = t_quantile(0.5 + level / 2.0, df) * error
    return dict(
        difference=difference, low=difference - half, high=difference + half, df=df, standard_error=error
    )


def verdict(interval: dict | None, lower_is_better: bool = True) -> str:
    """better / worse when the interval excludes zero, else 'not distinguishable at these seeds'."""
    if interval is None:
        return "not distinguishable at these seeds (needs 2+ seeds on both sides)"
    if interval["high"] < 0 or interval["low"] > 0:
        below = interval["high"] < 0
        return "better" if below == lower_is_better else "worse"
    return "not distinguishable at these seeds"
