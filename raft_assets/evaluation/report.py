"""The evaluation report: the comparison table, the questions where systems disagree, and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raft_assets.files import write_text_atomically

COLUMNS = [
    ("judge_accuracy", "judged correct"),
    ("precision_answered", "precision (answered)"),
    ("refusal_rate", "refusals"),
    ("exact_match", "EM"),
    ("f1", "F1"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rouge_l", "ROUGE-L"),
    ("citation_accuracy", "citations found"),
    ("seconds_per_answer", "s/answer"),
    ("cached", "from the cache"),
]

REPORT_MARKDOWN, REPORT_JSON = "eval_report.md", "eval_report.json"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    header = "| system | questions | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    rows = [
        f"| {system} | {summary['questions']} | " + " | ".join(_cell(summary.get(key)) for key, _ in COLUMNS) + " |"
        for system, summary in summaries.items()
    ]
    return "\n".join([header, rule, *rows])


def disagreements(answers: dict[str, list[dict[str, Any]]], limit: int = 10) -> list[dict[str, Any]]:
    """Questions on which the systems' verdicts differ (the judge's, else exact match), with every answer."""
    systems = list(answers)
    found = []
    for i, first in enumerate(answers[systems[0]]):
        verdicts = {system: answers[system][i]["correct"] for system in systems}
        if len(set(verdicts.values())) > 1:
            found.append(
                {
                    "question": first["question"],
                    "reference": first["reference"],
                    "answers": {system: (answers[system][i]["answer"], verdicts[system]) for system in systems},
                }
            )
    return found[:limit]


def markdown_report(summaries: dict[str, dict[str, Any]], disagreeing: list[dict[str, Any]], notes: list[str]) -> str:
    lines = ["# Evaluation report", "", *notes, "", "## Systems", "", comparison_table(summaries), ""]
    lines += ["## Questions where the systems disagree", ""]
    for item in disagreeing:
        lines += [f"**{item['question']}** (reference: {item['reference']})", ""]
        lines += [
            f"- `{system}` ({'correct' if ok else 'wrong'}): {answer}"
            for system, (answer, ok) in item["answers"].items()
        ]
        lines.append("")
    if not disagreeing:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def plot_scores(summaries: dict[str, dict[str, Any]], metric: str, path: Path, title: str) -> Path:
    import matplotlib  # here, not at the top: a second to import, which the steps without plots need not pay

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(summaries)
    values = [summaries[name].get(metric) or 0.0 for name in names]
    figure, axes = plt.subplots(figsize=(max(6, 0.8 * len(names)), 4))
    axes.bar(range(len(names)), values, color="#4c72b0")
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(folder: Path, summaries: dict, answers: dict, notes: list[str], headline: str) -> dict[str, Path]:
    disagreeing = disagreements(answers)
    markdown = markdown_report(summaries, disagreeing, notes)
    write_text_atomically(folder / REPORT_MARKDOWN, markdown)
    payload = {"notes": notes, "systems": summaries, "answers": answers, "disagreements": disagreeing}
    write_text_atomically(folder / REPORT_JSON, json.dumps(payload, ensure_ascii=False, indent=1))
    return {
        "markdown": folder / REPORT_MARKDOWN,
        "json": folder / REPORT_JSON,
        "scores_plot": plot_scores(summaries, headline, folder / "scores.png", f"{headline} by system"),
        "refusals_plot": plot_scores(summaries, "refusal_rate", folder / "refusals.png", "refusal rate by system"),
    }
