"""Statistics over seeds: mean, sample standard deviation, Student's t intervals, Welch's test, Pareto fronts.

Pure functions over plain numbers, no SciPy: Student's t comes from the regularised incomplete beta function
(a continued fraction, as in Numerical Recipes 6.4), so it holds for the fractional degrees of freedom that Welch's
test produces, and is checked against printed t-tables in tests/test_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

LEVEL = 0.95  # confidence level of every interval and test in the reports

Better = Literal["lower", "higher"]


def mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("mean of no values")
    # Offset by the first value: seeds that all score 0.7 have mean 0.7 exactly and no spread, not 1e-16.
    return xs[0] + math.fsum(x - xs[0] for x in xs) / len(xs)


def sample_sd(xs: Sequence[float]) -> float | None:
    """Standard deviation with n - 1 in the denominator; None for fewer than two values (no spread to estimate)."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The fraction converges fast on this side of the mean of the beta distribution; use symmetry on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional; inf is the normal)."""
    if math.isinf(df):
        return 2.0 * (1.0 - NormalDist().cdf(abs(t)))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, level: float = LEVEL) -> float:
    """The t with P(|T| >= t) = 1 - level: the multiplier of the standard error in a two-sided interval."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(df):
        return NormalDist().inv_cdf(0.5 + level / 2.0)
    alpha = 1.0 - level
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection: p falls as t grows; 200 halvings reach float precision from any bracket
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: n values, their mean, sample standard deviation and the interval's half-width."""

    n: int
    mean: float
    sd: float | None  # None with one value
    half_width: float | None  # mean ± half_width is the 95% interval; None with one value

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def summarize(xs: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean and the Student's t interval of the mean: mean ± t(level, n - 1) · sd / √n."""
    n = len(xs)
    sd = sample_sd(xs)
    half = None if sd is None else t_critical(n - 1, level) * sd / math.sqrt(n)
    return Summary(n, mean(xs), sd, half)


@dataclass(frozen=True)
class Difference:
    """Welch's t-test of mean(a) - mean(b): the difference, its interval, and whether the interval excludes 0."""

    delta: float
    half_width: float | None  # the interval of the difference; None when either side has one value
    df: float | None
    p: float | None
    supported: bool | None  # None: one value on a side, nothing to judge the spread by


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """Is mean(a) - mean(b) more than the seeds' spread explains? Welch's t-test, unequal variances.

    Supported when the level-interval of the difference excludes zero (the same as p < 1 - level). Two sides that
    each repeat one value exactly (a score of 1.0 on every seed against 0.0 on every seed) have no spread: their
    difference is supported when it is not zero.
    """
    delta = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2:
        return Difference(delta, None, None, None, None)
    va, vb = sample_sd(a) ** 2 / len(a), sample_sd(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(delta, 0.0, None, 0.0 if delta else 1.0, delta != 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_critical(df, level) * se
    return Difference(delta, half, df, t_two_sided_p(delta / se, df), abs(delta) > half)


def pareto_front(points: Sequence[tuple], x_better: Better = "lower", y_better: Better = "higher") -> list[tuple]:
    """The points no other point beats: at least as good on both axes and strictly better on one.

    Points are tuples whose first two items are x and y (more items, such as a label, ride along). The front is
    returned sorted by x, best x first; identical points are all kept, since neither beats the other.
    """
    sx = 1 if x_better == "lower" else -1
    sy = 1 if y_better == "lower" else -1

    def dominates(a: tuple, b: tuple) -> bool:
        ax, ay, bx, by = sx * a[0], sy * a[1], sx * b[0], sy * b[1]
        return ax <= bx and ay <= by and (ax < bx or ay < by)

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (sx * p[0], sy * p[1]))


def metric_front(points: Sequence[tuple], cost: str, score: str) -> list[tuple]:
    """The Pareto front of (cost, score, ...) points, each axis in its direction from bench.records.METRICS."""
    from bench.records import metric

    return pareto_front(points, metric(cost).better, metric(score).better)
