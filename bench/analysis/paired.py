"""Paired tests of two runs scored on the same eval examples: McNemar's exact test for right/wrong scores, a paired
bootstrap for graded ones (token F1, ROUGE-L); both from SciPy.

With one training seed per method, the only noise a comparison can be judged by is which eval examples were drawn;
a paired test uses that both runs answered the same examples, so it separates far closer scores than two
independent intervals over the examples would. It says nothing about training noise (the seed, the machine's
floating-point path): only runs over seeds measure that (bench.analysis.stats.welch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.analysis.stats import LEVEL

RESAMPLES = 5000  # paired bootstrap resamples: the interval's ends move by well under 0.01 of a score between seeds


@dataclass(frozen=True)
class Paired:
    """mean(a) - mean(b) over the same n examples, and whether it is more than the choice of examples explains."""

    delta: float
    p: float | None  # McNemar's exact two-sided p; None for the bootstrap, which gives an interval
    low: float | None  # the bootstrap's interval of the mean difference; None for McNemar
    high: float | None
    method: str  # "McNemar's exact test" or "a paired bootstrap"
    n: int
    a_only: int | None = None  # McNemar: examples a got right and b wrong
    b_only: int | None = None

    @property
    def supported(self) -> bool:
        """The difference is more than the eval examples' noise at the 5% level."""
        if self.p is not None:
            return self.p < 1 - LEVEL
        return self.low > 0 or self.high < 0


def proportions(values: Sequence[float]) -> bool:
    """Every value is 0 or 1: a right/wrong score such as exact match."""
    return all(v in (0.0, 1.0) for v in values)


def mcnemar(a: Sequence[float], b: Sequence[float]) -> Paired:
    """McNemar's exact test: of the examples exactly one run got right, is the split more uneven than a fair coin
    gives? The two-sided binomial test on the discordant pairs (scipy.stats.binomtest, p = 0.5)."""
    import scipy.stats

    a_only = sum(1 for x, y in zip(a, b) if x == 1.0 and y == 0.0)
    b_only = sum(1 for x, y in zip(a, b) if x == 0.0 and y == 1.0)
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(scipy.stats.binomtest(a_only, discordant, 0.5).pvalue)
    return Paired((a_only - b_only) / len(a), p, None, None, "McNemar's exact test", len(a), a_only, b_only)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """The percentile interval of mean(a - b) over examples resampled together (scipy.stats.bootstrap, paired=True,
    a fixed random state so a report reads the same every time it is written)."""
    import numpy as np
    import scipy.stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    delta = float(d.mean())
    if np.all(d == d[0]):  # no spread to resample: the difference is what it is on every example
        return Paired(delta, None, delta, delta, "a paired bootstrap", len(d))
    boot = scipy.stats.bootstrap((x, y), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True,
                                 confidence_level=level, n_resamples=RESAMPLES, method="percentile",
                                 random_state=np.random.default_rng(0))
    ci = boot.confidence_interval
    return Paired(delta, None, float(ci.low), float(ci.high), "a paired bootstrap", len(d))


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The test that fits the score: McNemar's for right/wrong values, a paired bootstrap otherwise. The two runs
    must have scored the same examples in the same order."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a paired test needs the same eval examples on both sides; got {len(a)} and {len(b)}")
    return mcnemar(a, b) if proportions(a) and proportions(b) else paired_bootstrap(a, b)


def describe(p: Paired) -> str:
    """The test's evidence in a few words: the discordant counts and p, or the interval of the difference."""
    if p.p is not None:
        return f"{p.a_only} vs {p.b_only} of {p.n} examples right for one run only, p = {p.p:.2g}"
    return f"difference {p.delta:+.3f}, 95% interval {p.low:+.3f} to {p.high:+.3f} over {p.n} examples"


def example_values(record, name: str) -> list[float] | None:
    """A record's per-example scores: stored beside its interval; in records from before they were stored, scored
    again from the stored predictions when every eval example's prediction was kept (eval.keep_predictions) and the
    rescored mean is the recorded one. None when neither is possible (or the score is not an offline metric)."""
    stored = record.intervals.get(name)
    if stored is None:
        return None
    if stored.values is not None:
        return list(stored.values)
    if len(record.predictions) != stored.n:
        return None
    from bench.core.scoring import SCORERS, per_example

    if name not in SCORERS:
        return None
    values = per_example([name], [p.prediction for p in record.predictions],
                         [p.reference for p in record.predictions], record.config.eval.extract)[name]
    recorded = record.metrics.get(name)
    return values if recorded is not None and abs(sum(values) / len(values) - recorded) < 1e-9 else None


def same_examples(a, b) -> bool:
    """Two records scored the same eval examples: the same data fingerprint where both have one, the same
    references where both kept every prediction."""
    fa, fb = (r.data.fingerprint if r.data else "" for r in (a, b))
    if fa and fb and fa != fb:
        return False
    ra, rb = ([p.reference for p in r.predictions] for r in (a, b))
    return not (ra and rb and len(ra) == len(rb) and ra != rb)
