"""The statistics of the experiment report against values computed by hand or by scipy, and the bootstrap's
coverage on data whose mean is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from raft_assets.evaluation.statistics import (
    McNemar,
    PairedDifference,
    bootstrap_mean,
    cohen_kappa,
    in_words,
    mcnemar_exact,
    mcnemar_paired,
    paired_bootstrap,
    verdict,
)


def test_bootstrap_interval_of_two_values_spans_both():
    # Resampled means of [0, 1] are 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1.
    interval = bootstrap_mean([0.0, 1.0])
    assert (interval.mean, interval.low, interval.high, interval.n) == (0.5, 0.0, 1.0, 2)


def test_bootstrap_of_a_constant_has_no_width():
    interval = bootstrap_mean([0.3] * 7)
    assert (interval.low, interval.high) == pytest.approx((0.3, 0.3))


def test_bootstrap_is_seeded():
    values = [0.12, 0.97, 0.35, 0.61, 0.08, 0.77, 0.49, 0.23, 0.88, 0.54]
    assert bootstrap_mean(values, resamples=200, seed=1) == bootstrap_mean(values, resamples=200, seed=1)
    assert bootstrap_mean(values, resamples=200, seed=1) != bootstrap_mean(values, resamples=200, seed=2)


def test_bootstrap_needs_values():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials = 300
    covered = 0
    for trial in range(trials):
        sample = rng.binomial(1, 0.6, size=60).astype(float)
        interval = bootstrap_mean(sample, resamples=2000, seed=trial)
        covered += interval.low <= 0.6 <= interval.high
    # The percentile interval of a proportion from 60 draws covers a little under 95%; a broken one (too narrow,
    # off-centre) falls far below, an over-wide one reaches 100%.
    assert 0.88 <= covered / trials <= 0.985


def test_bootstrap_is_bounded_in_memory_for_many_questions():
    interval = bootstrap_mean(np.linspace(0, 1, 50_001), resamples=100)  # 5 million draws, in blocks
    assert interval.mean == pytest.approx(0.5) and interval.low < 0.5 < interval.high


def test_paired_bootstrap_of_equal_systems_is_zero_with_p_one():
    same = [0.2, 0.9, 0.4, 0.7]
    difference = paired_bootstrap(same, same)
    assert (difference.difference, difference.low, difference.high, difference.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_of_a_constant_gain_is_that_gain_with_the_smallest_p():
    first = [0.1, 0.5, 0.3]
    difference = paired_bootstrap(first, [value + 0.25 for value in first], resamples=999)
    assert difference.difference == pytest.approx(0.25)
    assert (difference.low, difference.high) == pytest.approx((0.25, 0.25))
    assert difference.p_value == pytest.approx(2 / 1000)  # (0 + 1) / (999 + 1), twice


def test_paired_bootstrap_p_value_matches_the_hand_computed_one():
    # Differences [1, 0, 0, 0]: a resample's mean is <= 0 exactly when it draws no 1, with chance (3/4)^4;
    # it is >= 0 always. Two-sided p = 2 * 0.3164 = 0.633.
    difference = paired_bootstrap([0, 0, 0, 0], [1, 0, 0, 0])
    assert difference.difference == 0.25
    assert difference.p_value == pytest.approx(2 * 0.75**4, abs=0.02)
    assert difference.low == 0.0 and difference.high == 0.75  # 4 ones of 4 draws: chance 1/256, under 2.5%


def test_paired_bootstrap_needs_pairs():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(1, 5).p_value == pytest.approx(2 * (1 + 6) / 64)  # 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert mcnemar_exact(0, 6).p_value == pytest.approx(2 / 64)
    assert mcnemar_exact(7, 5).p_value == pytest.approx(2 * 1586 / 4096)  # C(12, 0..5) sum to 1586
    assert mcnemar_exact(0, 0).p_value == 1.0 and mcnemar_exact(4, 4).p_value == 1.0
    assert mcnemar_exact(3, 9).p_value == mcnemar_exact(9, 3).p_value


def test_mcnemar_exact_agrees_with_scipy_on_a_textbook_table():
    # Agresti, Categorical Data Analysis: approval of the Prime Minister in two surveys, 150 and 86 discordant.
    assert mcnemar_exact(150, 86).p_value == pytest.approx(binomtest(86, 236, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_mcnemar_paired_counts_the_discordant_questions():
    first = [True, True, False, False, True, False]
    second = [True, False, True, True, True, True]
    test = mcnemar_paired(first, second)
    assert (test.first_only, test.second_only, test.discordant) == (1, 3, 4)
    assert test.p_value == pytest.approx(2 * (1 + 4) / 16)


def test_cohen_kappa_by_hand():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: observed 0.7, chance 0.5*0.6 + 0.5*0.4 = 0.5, kappa 0.4.
    first = [True] * 25 + [False] * 25
    second = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    agreement = cohen_kappa(first, second)
    assert agreement.kappa == pytest.approx(0.4)
    assert (agreement.n, agreement.agreed, agreement.accuracy) == (50, 35, 0.7)
    assert agreement.counts == {(True, True): 20, (True, False): 5, (False, True): 10, (False, False): 15}


def test_cohen_kappa_limits():
    assert cohen_kappa([True, False, True], [True, False, True]).kappa == 1.0
    assert cohen_kappa([True, False], [False, True]).kappa == pytest.approx(-1.0)
    assert cohen_kappa([True, True], [True, True]).kappa is None  # all chance: undefined, not 1 or 0
    assert cohen_kappa([], []).accuracy is None
    with pytest.raises(ValueError):
        cohen_kappa([True], [])


def test_in_words_within_noise_quotes_the_interval_and_the_test():
    difference = PairedDifference(0.02, -0.08, 0.12, 0.6, 40)
    words = in_words(difference, McNemar(5, 7, 0.61))
    assert words == (
        "within noise: the 95% interval of the difference, -0.08 to +0.12, includes 0 "
        "(McNemar p = 0.61, 7 vs 5 discordant)"
    )


def test_in_words_says_higher_lower_or_borderline():
    assert in_words(PairedDifference(0.3, 0.1, 0.5, 0.002, 40)).startswith("higher (+0.30): ")
    assert verdict(PairedDifference(-0.3, -0.5, -0.1, 0.0004, 40)) == "lower"
    assert "bootstrap p < 0.001" in in_words(PairedDifference(-0.3, -0.5, -0.1, 0.0004, 40))
    # The interval excludes 0 but McNemar's test does not reject: say so rather than pick one.
    assert verdict(PairedDifference(0.1, 0.01, 0.2, 0.03, 40), McNemar(2, 7, 0.18)) == "borderline"
    assert verdict(PairedDifference(0.1, -0.01, 0.2, 0.03, 40), McNemar(2, 7, 0.18)) == "within noise"
