"""What curation shows of a source: the histogram of its scores and its counts by verdict, status and reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from raft_assets.curation.rubric import NEAR_DUPLICATE, REASONS
from raft_assets.files import written_atomically


def plot_scores(scores: list[int], min_score: int, path: Path, title: str) -> Path:
    """Questions per score 1-10, kept scores in one colour, the others in another."""
    import matplotlib  # here, not at the top: a second to import, which the steps without plots need not pay

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    counts = Counter(scores)
    figure, axes = plt.subplots(figsize=(6, 3.5))
    values = range(1, 11)
    colours = ["#4c72b0" if value >= min_score else "#c44e52" for value in values]
    axes.bar(values, [counts.get(value, 0) for value in values], color=colours)
    axes.set_xticks(values)
    axes.set_xlabel(f"score (kept from {min_score}, near-duplicates aside)")
    axes.set_ylabel("questions")
    axes.set_title(title)
    figure.tight_layout()
    with written_atomically(path) as partial:
        figure.savefig(partial, dpi=100, format="png")
    plt.close(figure)
    return path


def score_table(scores: list[int], min_score: int, width: int = 40) -> str:
    """The histogram as a markdown table with text bars: readable wherever markdown is, unlike a local image."""
    counts = Counter(scores)
    most = max(counts.values(), default=0) or 1
    lines = ["| score | questions | |", "|---:|---:|---|"]
    for value in range(10, 0, -1):
        bar = "█" * round(width * counts.get(value, 0) / most)
        lines.append(f"| {value}{' (≥ min_score)' if value >= min_score else ''} | {counts.get(value, 0)} | {bar} |")
    return "\n".join(lines)


def reason_counts(table: pl.DataFrame) -> dict[str, int]:
    """How many questions have each reason code (the rater's comments aside)."""
    codes = set(REASONS) | {NEAR_DUPLICATE}
    counts = Counter(reason for reasons in table["reasons"] for reason in reasons if reason in codes)
    return dict(sorted(counts.items()))
