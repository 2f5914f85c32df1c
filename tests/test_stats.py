"""Statistics over seeds against hand-computed values and printed t-tables."""

from __future__ import annotations

import math

import pytest

from bench.analysis.stats import mean, metric_front, sample_sd, summarize, t_critical, t_two_sided_p, welch

# Student's t, two-sided 95% (the 0.975 quantile), as printed in every statistics textbook's table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
           math.inf: 1.960}


@pytest.mark.parametrize("df", list(T_TABLE))
def test_t_critical_matches_the_printed_table(df):
    assert t_critical(df) == pytest.approx(T_TABLE[df], abs=5e-4)


def test_t_critical_at_other_levels_and_fractional_df():
    assert t_critical(10, level=0.99) == pytest.approx(3.169, abs=5e-4)
    assert t_critical(5, level=0.90) == pytest.approx(2.015, abs=5e-4)
    # Welch's test gives fractional df: the value falls between the table's neighbours, and p(t) inverts it.
    t = t_critical(4.07547)
    assert T_TABLE[5] < t < T_TABLE[4]
    assert t_two_sided_p(t, 4.07547) == pytest.approx(0.05, abs=1e-12)
    with pytest.raises(ValueError):
        t_critical(0)


def test_two_sided_p_values():
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.0734, abs=1e-4)  # printed tables: 0.07339
    assert t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2 exactly
    assert t_two_sided_p(1.959964, math.inf) == pytest.approx(0.05, abs=1e-6)


def test_mean_and_sample_sd():
    assert mean([1, 2, 3, 4]) == 2.5
    # Squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3.
    assert sample_sd([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))
    assert sample_sd([5.0]) is None
    with pytest.raises(ValueError):
        mean([])


def test_interval_of_three_seeds():
    s = summarize([0.9, 1.0, 0.95])
    # sd = sqrt((0.0025 + 0.0025 + 0) / 2) = 0.05; half-width = t(2) * 0.05 / sqrt(3) = 4.3027 * 0.028868.
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(0.95), pytest.approx(0.05))
    assert s.half_width == pytest.approx(0.124207, abs=1e-6)
    assert (s.low, s.high) == (pytest.approx(0.825793, abs=1e-6), pytest.approx(1.074207, abs=1e-6))


def test_interval_of_one_seed_and_of_identical_seeds():
    one = summarize([0.5])
    assert (one.n, one.mean, one.sd, one.half_width, one.low) == (1, 0.5, None, None, None)
    same = summarize([0.7, 0.7, 0.7])
    assert (same.mean, same.sd, same.half_width) == (0.7, 0.0, 0.0)  # exactly: no rounding noise posing as spread


def test_welch_equal_variances_not_supported():
    d = welch([0.9, 1.0, 0.95], [0.8, 0.9, 0.85])
    # se = sqrt(0.0025/3 + 0.0025/3) = 0.040825; df = 4; half-width = 2.7764 * 0.040825 = 0.11335 > 0.1.
    assert d.delta == pytest.approx(0.1)
    assert d.df == pytest.approx(4.0)
    assert d.half_width == pytest.approx(0.113348, abs=1e-6)
    assert d.p == pytest.approx(0.0705, abs=1e-4)  # t = 2.449 on 4 df
    assert d.supported is False


def test_welch_supported_difference():
    d = welch([0.9, 1.0, 0.95], [0.6, 0.7, 0.65])
    assert d.delta == pytest.approx(0.3) and d.supported is True and d.p < 0.05


def test_welch_unequal_variances_and_sizes():
    d = welch([1, 2, 3], [1, 3, 5, 7])
    # va = 1/3, vb = (20/3)/4 = 5/3; se^2 = 2; df = 4 / ((1/9)/2 + (25/9)/3) = 4.07547.
    assert d.delta == pytest.approx(-2.0)
    assert d.df == pytest.approx(4.07547, abs=1e-5)
    assert d.half_width == pytest.approx(t_critical(4.07547) * math.sqrt(2))
    assert d.supported is False  # |-2| < 2.75 * 1.414


def test_welch_without_spread_or_with_one_seed():
    assert welch([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]).supported is True
    tie = welch([0.7, 0.7, 0.7], [0.7, 0.7])
    assert (tie.delta, tie.supported) == (0.0, False)
    one = welch([1.0], [0.0, 0.0])
    assert (one.delta, one.half_width, one.supported) == (1.0, None, None)


def test_metric_front_takes_directions_from_the_metrics():
    # (cost, score, name): lower memory and higher exact match are better.
    pts = [(2.0, 0.9, "lora"), (3.0, 0.95, "full"), (2.5, 0.8, "ia3"), (1.0, 0.1, "prompt")]
    assert metric_front(pts, "peak_memory_bytes", "exact_match") == [
        (1.0, 0.1, "prompt"), (2.0, 0.9, "lora"), (3.0, 0.95, "full")]  # ia3 loses to lora on both
    # Eval loss: lower is better, so the front flips.
    assert metric_front(pts, "peak_memory_bytes", "eval_loss") == [(1.0, 0.1, "prompt")]
    # Throughput is a cost where higher is better.
    assert metric_front(pts, "train_tokens_per_second", "exact_match") == [(3.0, 0.95, "full")]
