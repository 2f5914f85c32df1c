"""Statistics over seeds: mean, sample standard deviation, Student's t intervals, Welch's test, Pareto fronts.

Pure functions over plain numbers; Student's t from SciPy (fractional degrees of freedom, as Welch's test produces
them), checked against printed t-tables in tests/test_stats.py. SciPy is imported where a test or an interval is
computed (about 1 s): a report of single-seed runs needs none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional; inf is the normal)."""
    import scipy.stats

    if math.isinf(df):
        return float(2.0 * scipy.stats.norm.sf(abs(t)))
    return float(2.0 * scipy.stats.t.sf(abs(t), df))


def t_critical(df: float, level: float = LEVEL) -> float:
    """The t with P(|T| >= t) = 1 - level: the multiplier of the standard error in a two-sided interval."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    import scipy.stats

    q = 0.5 + level / 2.0
    return float(scipy.stats.norm.ppf(q) if math.isinf(df) else scipy.stats.t.ppf(q, df))


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
    if sample_sd(a) == 0.0 and sample_sd(b) == 0.0:
        return Difference(delta, 0.0, None, 0.0 if delta else 1.0, delta != 0.0)
    import scipy.stats

    test = scipy.stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(level)
    half = float(interval.high - interval.low) / 2.0
    return Difference(delta, half, float(test.df), float(test.pvalue), bool(interval.low > 0 or interval.high < 0))


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
    """The Pareto front of (cost, score, ...) points, each axis in its direction from bench.core.records.METRICS."""
    from bench.core.metrics import metric

    return pareto_front(points, metric(cost).better, metric(score).better)
