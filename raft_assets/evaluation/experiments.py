"""The experiment report: RAFT recipes side by side on the same eval questions, each number with its 95% bootstrap
interval, each recipe compared with `default` by paired tests, and the judge's calibration.

Input: each recipe's parsed `eval_report.json` (`report.write_report`) with the chunking fingerprints of the index it
was evaluated with and of the dataset it was trained on. A recipe whose two differ was trained on one chunking and
served another's chunks: it is listed apart and compared with nothing (the reference tutorial's lesson).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_assets.contracts.inline_images import inline_png
from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.evaluation.answers import judge_verdicts, split_variant
from raft_assets.evaluation.calibration import Calibration
from raft_assets.evaluation.metrics import exact_match, is_refusal, token_f1
from raft_assets.evaluation.statistics import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    McNemar,
    PairedDifference,
    bootstrap_mean,
    in_words,
    mcnemar_paired,
    paired_bootstrap,
    verdict,
)
from raft_assets.files import write_text_atomically, written_atomically

BASELINES = ("base", "reference")  # systems that no recipe changes: shown once, from the default recipe
REPORT_FILES = {"markdown": "experiment_report.md", "json": "experiment_report.json", "plot": "experiment_report.png"}
METRICS = {"judge_accuracy": "judged correct", "f1": "F1", "precision_answered": "precision (answered)"}


@dataclass(frozen=True)
class RecipeEvaluation:
    """One recipe's eval report, with the chunking fingerprints of its retrieval index and of its dataset, and the
    version of the eval set it answered."""

    recipe: str
    report: dict[str, Any]
    retrieval_fingerprint: str
    dataset_chunking_fingerprint: str
    eval_set_version: str | None = None

    @property
    def mismatch(self) -> str | None:
        """Why this recipe cannot be compared, or None."""
        if self.retrieval_fingerprint == self.dataset_chunking_fingerprint:
            return None
        return (
            f"its retrieval index was chunked differently from its dataset (index {self.retrieval_fingerprint[:12]}, "
            f"dataset {self.dataset_chunking_fingerprint[:12]}): the model was served chunks unlike those it was "
            "trained on. Rebuild the recipe's index with its chunking."
        )

    def not_comparable_with(self, default: RecipeEvaluation | None) -> str | None:
        """Why this recipe's numbers cannot be set against `default`'s, or None."""
        if self.mismatch or default is None or default is self:
            return self.mismatch
        if self.eval_set_version != default.eval_set_version:
            return (
                f"it answered another eval set than `{DEFAULT_RECIPE}` (version {str(self.eval_set_version)[:12]}, "
                f"default {str(default.eval_set_version)[:12]}): its answers are not paired with the default's. "
                "Materialize both eval reports again."
            )
        return None


@dataclass(frozen=True)
class Comparison:
    """A variant of a recipe against the same variant of `default`, on the questions both answered."""

    paired: int
    basis: str  # what "correct" means: the judge's verdict, or exact match without a judge on both sides
    correctness: PairedDifference | None  # None: no question with a verdict on both sides
    mcnemar: McNemar | None
    f1: PairedDifference

    def differences(self) -> dict[str, PairedDifference]:
        """The paired differences by metric name, correctness first."""
        correctness = {} if self.correctness is None else {self.basis: self.correctness}
        return {**correctness, "F1": self.f1}

    def test_of(self, name: str) -> McNemar | None:
        """McNemar's test for the correctness difference; None for F1 (its bootstrap p-value is the test)."""
        return self.mcnemar if name == self.basis else None

    def words(self) -> dict[str, str]:
        return {name: in_words(difference, self.test_of(name)) for name, difference in self.differences().items()}


@dataclass(frozen=True)
class Row:
    """One system variant of one recipe (the baselines: of `default`), with intervals and its comparison."""

    recipe: str
    variant: str
    questions: int
    metrics: dict[str, Interval | None]  # METRICS' keys; None: nothing to average (no judge, no answered question)
    comparison: Comparison | None = None

    @property
    def system(self) -> str:
        return split_variant(self.variant)[0]

    @property
    def setting(self) -> str:
        return split_variant(self.variant)[1]


@dataclass
class ExperimentTable:
    rows: list[Row] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # recipe -> why it is not compared
    notes: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return any(row.metrics["judge_accuracy"] is not None for row in self.rows)

    @property
    def headline(self) -> str:
        return "judge_accuracy" if self.judged else "f1"


def _mean_interval(values: list[float], seed: int) -> Interval | None:
    return bootstrap_mean(values, seed=seed) if values else None


def variant_metrics(report: Mapping[str, Any], variant: str, seed: int = SEED) -> dict[str, Interval | None]:
    """Judge accuracy (over judged answers), F1 (over all) and precision over judged answers that are not refusals,
    each per question as `metrics.aggregate` counts them, with bootstrap intervals."""
    rows = report["answers"][variant]
    verdicts = judge_verdicts(report, variant)
    answered = [v for row, v in zip(rows, verdicts, strict=True) if v is not None and not is_refusal(row["answer"])]
    return {
        "judge_accuracy": _mean_interval([float(v) for v in verdicts if v is not None], seed),
        "f1": _mean_interval([token_f1(row["answer"], row["reference"]) for row in rows], seed),
        "precision_answered": _mean_interval([float(v) for v in answered], seed),
    }


def _by_question(rows: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    """Row index by (question, occurrence): the pairing key of two recipes' answers to the same eval set."""
    seen: dict[str, int] = {}
    keys = {}
    for index, row in enumerate(rows):
        occurrence = seen[row["question"]] = seen.get(row["question"], -1) + 1
        keys[(row["question"], occurrence)] = index
    return keys


def _exact(row: Mapping[str, Any]) -> bool:
    return bool(exact_match(row["answer"], row["reference"]))


def compare(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any], variant: str, seed: int = SEED
) -> Comparison | None:
    """`variant` of the candidate recipe against the baseline recipe's, paired by question text (None: no question
    in common). Correctness is the judge's where both were judged, else exact match on both sides."""
    base_rows, rows = baseline["answers"][variant], candidate["answers"][variant]
    base_index, index = _by_question(base_rows), _by_question(rows)
    shared = [(base_index[key], index[key]) for key in base_index if key in index]
    if not shared:
        return None
    f1 = paired_bootstrap(
        [token_f1(base_rows[i]["answer"], base_rows[i]["reference"]) for i, _ in shared],
        [token_f1(rows[j]["answer"], rows[j]["reference"]) for _, j in shared],
        seed=seed,
    )
    base_verdicts, verdicts = judge_verdicts(baseline, variant), judge_verdicts(candidate, variant)
    if any(v is not None for v in base_verdicts) and any(v is not None for v in verdicts):
        basis = "judged correct"
        both = [(base_verdicts[i], verdicts[j]) for i, j in shared]
        pairs = [(a, b) for a, b in both if a is not None and b is not None]
    else:
        basis = "exact match"
        pairs = [(_exact(base_rows[i]), _exact(rows[j])) for i, j in shared]
    if not pairs:
        return Comparison(len(shared), basis, None, None, f1)
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    correctness = paired_bootstrap([float(a) for a in first], [float(b) for b in second], seed=seed)
    return Comparison(len(shared), basis, correctness, mcnemar_paired(first, second), f1)


def experiment_table(evaluations: list[RecipeEvaluation], seed: int = SEED) -> ExperimentTable:
    """Every recipe's variants (the baselines once, from `default`), each compared with `default`'s same variant."""
    table = ExperimentTable()
    by_recipe = {evaluation.recipe: evaluation for evaluation in evaluations}
    default = by_recipe.get(DEFAULT_RECIPE)
    if default is None:
        table.notes.append(f"No `{DEFAULT_RECIPE}` recipe evaluated: nothing to compare with.")
    elif default.mismatch:
        table.notes.append(f"`{DEFAULT_RECIPE}` is not comparable, so no recipe is compared: {default.mismatch}")
    for evaluation in evaluations:
        if reason := evaluation.not_comparable_with(default):
            table.excluded[evaluation.recipe] = reason
        for variant in evaluation.report["answers"]:
            if split_variant(variant)[0] in BASELINES and evaluation is not default:
                continue
            table.rows.append(_row(evaluation, variant, default, seed))
    return table


def _row(evaluation: RecipeEvaluation, variant: str, default: RecipeEvaluation | None, seed: int) -> Row:
    comparable = (
        default is not None
        and evaluation is not default
        and not default.mismatch
        and not evaluation.not_comparable_with(default)
        and split_variant(variant)[0] not in BASELINES
        and variant in default.report["answers"]
    )
    return Row(
        evaluation.recipe,
        variant,
        len(evaluation.report["answers"][variant]),
        variant_metrics(evaluation.report, variant, seed),
        compare(default.report, evaluation.report, variant, seed) if comparable else None,
    )


def _cell(interval: Interval | None) -> str:
    return "-" if interval is None else f"{interval.mean:.3f} [{interval.low:.2f}, {interval.high:.2f}]"


def _comparison_cell(row: Row) -> str:
    """The differences and their verdicts in short ("judged correct +0.12 within noise"); the sentences follow."""
    if row.comparison is None:
        return "-"
    comparison = row.comparison
    return "; ".join(
        f"{name} {difference.difference:+.2f} {verdict(difference, comparison.test_of(name))}"
        for name, difference in comparison.differences().items()
    )


def comparisons_markdown(table: ExperimentTable) -> list[str]:
    """Each comparison with default in words: the interval of the difference and the paired test."""
    lines = []
    for row in table.rows:
        if row.comparison is not None:
            lines.append(f"- `{row.recipe}` · {row.variant} ({row.comparison.paired} paired questions):")
            lines += [f"  - {name}: {words}" for name, words in row.comparison.words().items()]
    return lines or [f"None: no recipe besides `{DEFAULT_RECIPE}` can be compared."]


def table_markdown(table: ExperimentTable) -> str:
    """The rows compared with default, then the recipes listed apart with why."""
    header = "| recipe | system | questions | " + " | ".join(METRICS.values()) + f" | vs `{DEFAULT_RECIPE}` |"
    lines = [header, "|---|---|---:|" + "---:|" * len(METRICS) + "---|"]
    shown = [row for row in table.rows if row.recipe not in table.excluded]
    lines += [
        f"| {row.recipe} | {row.variant} | {row.questions} | "
        + " | ".join(_cell(row.metrics[key]) for key in METRICS)
        + f" | {_comparison_cell(row)} |"
        for row in shown
    ]
    apart = [row for row in table.rows if row.recipe in table.excluded]
    if apart:
        lines += ["", "Not compared:", ""]
        lines += [f"- `{recipe}`: {reason}" for recipe, reason in table.excluded.items()]
        lines += ["", header.removesuffix(f" vs `{DEFAULT_RECIPE}` |"), "|---|---|---:|" + "---:|" * len(METRICS)]
        lines += [
            f"| {row.recipe} | {row.variant} | {row.questions} | "
            + " | ".join(_cell(row.metrics[key]) for key in METRICS)
            + " |"
            for row in apart
        ]
    return "\n".join(lines)


def markdown_report(table: ExperimentTable, calibration: Calibration, verdicts_path: Path) -> str:
    intro = (
        f"Each number is a mean over the eval questions with its {CONFIDENCE:.0%} percentile bootstrap interval "
        f"({RESAMPLES:,} resamples, seed {SEED}). Each recipe is compared with `{DEFAULT_RECIPE}` on the same "
        "questions: McNemar's exact test on the verdicts (the recipe's wins vs the default's among the questions only "
        "one got right) and a paired bootstrap of the difference; with tens of questions most differences are noise."
    )
    lines = ["# Experiment report", "", intro, "", *table.notes, "", "## Recipes", "", table_markdown(table), ""]
    lines += [f"## Compared with `{DEFAULT_RECIPE}`", "", *comparisons_markdown(table), ""]
    lines += ["## The judge", "", *calibration.lines(verdicts_path), ""]
    return "\n".join(lines) + "\n"


def _interval_json(interval: Interval | None) -> dict[str, float] | None:
    return None if interval is None else vars(interval)


def _comparison_json(comparison: Comparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {
        "paired_questions": comparison.paired,
        "basis": comparison.basis,
        "correctness": None if comparison.correctness is None else vars(comparison.correctness),
        "mcnemar": None if comparison.mcnemar is None else vars(comparison.mcnemar),
        "f1": vars(comparison.f1),
        "words": comparison.words(),
    }


def report_json(table: ExperimentTable, calibration: Calibration) -> dict[str, Any]:
    return {
        "bootstrap": {"resamples": RESAMPLES, "confidence": CONFIDENCE, "seed": SEED},
        "notes": table.notes,
        "excluded": table.excluded,
        "rows": [
            {
                "recipe": row.recipe,
                "variant": row.variant,
                "questions": row.questions,
                **{key: _interval_json(row.metrics[key]) for key in METRICS},
                f"vs_{DEFAULT_RECIPE}": _comparison_json(row.comparison),
            }
            for row in table.rows
        ],
        "judge": calibration.as_json(),
    }


def plot(table: ExperimentTable, path: Path) -> Path:
    """The headline metric per setting (no context, RAG k=...), one bar per recipe's system and per baseline, with
    its interval as whiskers; recipes not comparable are left out. Small (6x3.5 in at 80 dpi): it is embedded in the
    UI's metadata."""
    import matplotlib  # here, not at the top: a second to import, which the steps without plots need not pay

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metric = table.headline
    rows = [row for row in table.rows if row.recipe not in table.excluded]
    settings = list(dict.fromkeys(row.setting for row in rows))
    series = list(dict.fromkeys(_series(row) for row in rows))
    width = 0.8 / max(1, len(series))
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for number, name in enumerate(series):
        shown = {row.setting: row.metrics[metric] for row in rows if _series(row) == name}
        xs = [settings.index(setting) + (number - (len(series) - 1) / 2) * width for setting in shown]
        means = [interval.mean if interval else 0.0 for interval in shown.values()]
        errors = [
            [interval.mean - interval.low if interval else 0.0 for interval in shown.values()],
            [interval.high - interval.mean if interval else 0.0 for interval in shown.values()],
        ]
        axes.bar(xs, means, width, yerr=errors, capsize=2, label=name)
    axes.set_xticks(range(len(settings)), settings, fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel(METRICS[metric], fontsize=8)
    axes.set_title(f"{METRICS[metric]} by recipe, {CONFIDENCE:.0%} intervals", fontsize=9)
    axes.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    figure.tight_layout()
    with written_atomically(path) as partial:
        figure.savefig(partial, dpi=80, format="png")
    plt.close(figure)
    return path


def _series(row: Row) -> str:
    """A bar's legend: the system and recipe; a baseline by its system alone (it is the same in every recipe)."""
    return row.system if row.system in BASELINES else f"{row.system} · {row.recipe}"


def write_experiment_report(
    folder: Path, table: ExperimentTable, calibration: Calibration, verdicts_path: Path
) -> dict[str, Path]:
    """`experiment_report.md`, `.json` and `.png` in `folder`; their paths by kind (REPORT_FILES' keys)."""
    paths = {kind: folder / name for kind, name in REPORT_FILES.items()}
    write_text_atomically(paths["markdown"], markdown_report(table, calibration, verdicts_path))
    payload = json.dumps(report_json(table, calibration), ensure_ascii=False, indent=1)
    write_text_atomically(paths["json"], payload)
    plot(table, paths["plot"])
    return paths


def metadata_markdown(table: ExperimentTable, calibration: Calibration, plot_path: Path) -> str:
    """What the asset's page shows: the plot inline, the table, the judge's warnings."""
    lines = [inline_png(plot_path, "experiment report"), "", table_markdown(table), ""]
    lines += [f"- {warning}" for warning in calibration.warnings()]
    return "\n".join(lines)
