"""Paired tests over the same eval examples: McNemar's exact test against binomial sums worked out by hand, the
paired bootstrap against SciPy's t interval of the mean difference on a fixed table."""

from __future__ import annotations

import math

import pytest

from bench.analysis.paired import mcnemar, paired, paired_bootstrap


def by_hand(k: int, n: int) -> float:
    """Two-sided exact binomial p at 1/2: the probability of every split at most as likely as k of n."""
    probs = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-9)))


def table(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[float], list[float]]:
    """Per-example right (1) / wrong (0) of two runs from a 2x2 table."""
    a = [1.0] * both + [1.0] * a_only + [0.0] * b_only + [0.0] * neither
    b = [1.0] * both + [0.0] * a_only + [1.0] * b_only + [0.0] * neither
    return a, b


@pytest.mark.parametrize("cells, p", [
    ((20, 2, 7, 1), 92 / 512),  # 2 of 9 discordant: 2 * (1 + 9 + 36) / 2^9
    ((15, 10, 2, 3), 158 / 4096),  # 2 * (1 + 12 + 66) / 2^12: significant at 5%
    ((29, 0, 6, 5), 2 / 64),
    ((10, 5, 5, 10), 1.0),
])
def test_mcnemar_exact_p_equals_the_binomial_sum(cells, p):
    a, b = table(*cells)
    test = mcnemar(a, b)
    assert test.p == pytest.approx(p, rel=1e-12) == pytest.approx(by_hand(cells[1], cells[1] + cells[2]))
    assert (test.a_only, test.b_only, test.n) == (cells[1], cells[2], sum(cells))
    assert test.delta == pytest.approx((cells[1] - cells[2]) / sum(cells))
    assert test.supported is (p < 0.05)


def test_mcnemar_needs_discordant_examples_to_find_anything():
    a, b = table(28, 0, 0, 2)
    assert mcnemar(a, b).p == 1.0 and not mcnemar(a, b).supported
    # The quickstart's case: 30 of 30 against 29 of 30 is one example, no evidence at all.
    a, b = table(29, 1, 0, 0)
    assert mcnemar(a, b).p == 1.0 and not mcnemar(a, b).supported


def test_paired_bootstrap_agrees_with_the_t_interval_of_the_differences_on_a_large_fixed_table():
    import numpy as np
    import scipy.stats

    rng = np.random.default_rng(7)
    a = rng.uniform(0.3, 1.0, 400)
    b = np.clip(a - rng.normal(0.05, 0.2, 400), 0, 1)
    test = paired_bootstrap(list(a), list(b))
    d = a - b
    ref = scipy.stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert test.delta == pytest.approx(float(d.mean()))
    assert test.low == pytest.approx(ref.low, abs=0.004) and test.high == pytest.approx(ref.high, abs=0.004)
    assert test.supported and test.p is None
    assert paired_bootstrap(list(a), list(b)) == test  # a fixed random state: the same interval every time


def test_paired_bootstrap_sees_what_two_separate_intervals_miss():
    # b is slightly worse on every one of 30 examples whose F1 spreads widely: separate intervals overlap,
    # the paired differences are all -0.02.
    a = [0.1 + 0.03 * i for i in range(30)]
    b = [x - 0.02 for x in a]
    test = paired(a, b)
    assert test.method == "a paired bootstrap" and (test.low, test.high) == (pytest.approx(0.02), pytest.approx(0.02))
    assert test.supported
    noisy = paired([0.5, 0.7, 0.2, 0.9, 0.4, 0.6], [0.6, 0.5, 0.3, 0.8, 0.5, 0.5])
    assert noisy.low < 0 < noisy.high and not noisy.supported


def test_paired_picks_mcnemar_for_right_or_wrong_and_refuses_different_example_counts():
    assert paired(*table(5, 3, 1, 1)).method == "McNemar's exact test"
    assert paired([1.0, 0.5], [0.0, 1.0]).method == "a paired bootstrap"
    with pytest.raises(ValueError, match="same eval examples on both sides; got 2 and 3"):
        paired([1.0, 0.0], [1.0, 0.0, 1.0])
