"""How sure a number of the evaluation is: bootstrap intervals over questions, paired tests between two systems
answering the same questions, and Cohen's kappa between two raters.

With 30 to 100 eval questions most differences between recipes are noise; these functions say which are not.
Every resampling is seeded, so a report written twice from the same answers is the same file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 0
SIGNIFICANCE = 0.05
_BLOCK_ELEMENTS = 2_000_000  # resampled values held at once: about 16 MB of indices, whatever the question count


@dataclass(frozen=True)
class Interval:
    """A mean over `n` questions with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """The mean of `second - first` over `n` paired questions, its bootstrap interval and two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    n: int

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired right/wrong verdicts: `first_only` questions only the first system got right,
    `second_only` only the second; the questions both got right or both wrong say nothing about the difference."""

    first_only: int
    second_only: int
    p_value: float

    @property
    def discordant(self) -> int:
        return self.first_only + self.second_only


@dataclass(frozen=True)
class Agreement:
    """Two raters on the same `n` items: how often they agree, Cohen's kappa (None when chance agreement is total:
    both raters gave one and the same label every time), and the count of each (first, second) label pair."""

    n: int
    agreed: int
    kappa: float | None
    counts: dict[tuple[Hashable, Hashable], int]

    @property
    def accuracy(self) -> float | None:
        return self.agreed / self.n if self.n else None


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The means of `resamples` resamples with replacement of `values`, drawn in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    n = len(values)
    block = max(1, _BLOCK_ELEMENTS // n)
    means = [
        values[rng.integers(0, n, size=(min(block, resamples - start), n))].mean(axis=1)
        for start in range(0, resamples, block)
    ]
    return np.concatenate(means)


def _as_array(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"a bootstrap needs a non-empty list of numbers, got {len(array)} values")
    return array


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> Interval:
    """The mean of `values` (one per question) with its percentile bootstrap interval."""
    array = _as_array(values)
    low, high = _percentiles(_bootstrap_means(array, resamples, seed), confidence)
    return Interval(float(array.mean()), low, high, len(array))


def paired_bootstrap(
    first: Sequence[float],
    second: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> PairedDifference:
    """The mean difference `second - first` over paired questions (the same questions, resampled together), its
    percentile interval, and the two-sided bootstrap p-value of "no difference": twice the smaller share of
    resampled differences on either side of 0 (with the usual +1 so that it is never 0)."""
    if len(first) != len(second):
        raise ValueError(f"paired values must have the same length: {len(first)} and {len(second)}")
    differences = _as_array(second) - _as_array(first)
    samples = _bootstrap_means(differences, resamples, seed)
    low, high = _percentiles(samples, confidence)
    below, above = (int((samples <= 0).sum()) + 1) / (resamples + 1), (int((samples >= 0).sum()) + 1) / (resamples + 1)
    return PairedDifference(float(differences.mean()), low, high, min(1.0, 2 * min(below, above)), len(differences))


def mcnemar_exact(first_only: int, second_only: int) -> McNemar:
    """McNemar's exact test: under "no difference" each discordant question is a fair coin flip, so the two-sided
    p-value is twice the binomial tail of the smaller count (at most 1)."""
    if first_only < 0 or second_only < 0:
        raise ValueError(f"discordant counts must be non-negative: {first_only}, {second_only}")
    n = first_only + second_only
    tail = sum(math.comb(n, i) for i in range(min(first_only, second_only) + 1)) / 2**n
    return McNemar(first_only, second_only, min(1.0, 2 * tail))


def mcnemar_paired(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """McNemar's exact test on two systems' right/wrong verdicts on the same questions, in the same order."""
    if len(first) != len(second):
        raise ValueError(f"paired verdicts must have the same length: {len(first)} and {len(second)}")
    first_only = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    second_only = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    return mcnemar_exact(first_only, second_only)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> Agreement:
    """Cohen's kappa of two raters' labels of the same items: (observed - chance agreement) / (1 - chance), the
    chance agreement from each rater's own label frequencies."""
    if len(first) != len(second):
        raise ValueError(f"two raters must label the same items: {len(first)} and {len(second)} labels")
    n = len(first)
    if not n:
        return Agreement(0, 0, None, {})
    counts = Counter(zip(first, second, strict=True))
    agreed = sum(count for (a, b), count in counts.items() if a == b)
    first_counts, second_counts = Counter(first), Counter(second)
    chance = sum(first_counts[label] * second_counts[label] for label in first_counts) / n**2
    kappa = None if chance == 1 else (agreed / n - chance) / (1 - chance)
    return Agreement(n, agreed, kappa, dict(counts))


def _signed(value: float) -> str:
    return f"{value:+.2f}" if round(value, 2) else "0.00"


def _p(value: float) -> str:
    return f"p = {value:.2g}" if value >= 0.001 else "p < 0.001"


def _test(difference: PairedDifference, mcnemar: McNemar | None) -> tuple[str, float]:
    """The paired test's description and p-value: McNemar's on right/wrong verdicts when given, else the bootstrap's."""
    if mcnemar is None:
        return f"bootstrap {_p(difference.p_value)}", difference.p_value
    return f"McNemar {_p(mcnemar.p_value)}, {mcnemar.second_only} vs {mcnemar.first_only} discordant", mcnemar.p_value


def verdict(difference: PairedDifference, mcnemar: McNemar | None = None, *, level: float = SIGNIFICANCE) -> str:
    """ "higher" or "lower" when both the interval of the difference and the paired test exclude "no difference",
    "within noise" when both include it, "borderline" when they disagree."""
    significant = (not difference.includes_zero, _test(difference, mcnemar)[1] < level)
    if all(significant):
        return "higher" if difference.difference > 0 else "lower"
    return "borderline" if any(significant) else "within noise"


def in_words(difference: PairedDifference, mcnemar: McNemar | None = None, *, level: float = SIGNIFICANCE) -> str:
    """The verdict on a paired difference `second - first` in a sentence, with the interval and the test (McNemar's
    counts: the second's wins vs the first's)."""
    interval = (
        f"the {CONFIDENCE:.0%} interval of the difference, {_signed(difference.low)} to {_signed(difference.high)}"
    )
    side = "includes" if difference.includes_zero else "excludes"
    found = verdict(difference, mcnemar, level=level)
    named = f"{found} ({_signed(difference.difference)})" if found in ("higher", "lower") else found
    return f"{named}: {interval}, {side} 0 ({_test(difference, mcnemar)[0]})"
