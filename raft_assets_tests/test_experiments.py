"""The experiment report on a small fixed example whose numbers are computed by hand: three recipes' eval reports
(one served chunks unlike its training's), intervals, paired tests, the files and the UI's inline plot."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from raft_assets.contracts.inline_images import inline_png
from raft_assets.evaluation.calibration import calibrate, judged_answers
from raft_assets.evaluation.experiments import (
    RecipeEvaluation,
    experiment_table,
    metadata_markdown,
    write_experiment_report,
)
from raft_assets.evaluation.metrics import aggregate, score_question
from raft_assets.evaluation.report import write_report
from raft_assets.evaluation.statistics import bootstrap_mean, mcnemar_exact

QUESTIONS = [f"What is the setting number {i}?" for i in range(10)]
REFERENCES = [f"<ANSWER>: setting {i} is blue" for i in range(10)]
DEFAULT = [True] * 5 + [False] * 5  # judged correct, per question
P1 = [True] * 8 + [False] * 2  # right on 3 more, wrong on none that default got right
REFUSED = 9  # default's answer to the last question is a refusal


def answer(i: int, correct: bool, refused: bool = False) -> str:
    if refused:
        return "<ANSWER>: I don't know"
    return REFERENCES[i] if correct else "<ANSWER>: nothing relevant here"


def eval_report(variants: dict[str, list[dict]], judged: bool = True) -> dict:
    """An eval_report.json as `report.write_report` writes it: the systems' summaries and each variant's rows."""
    return {
        "notes": [],
        "systems": {
            name: {"questions": len(rows), "judged": len(rows) if judged else 0} for name, rows in variants.items()
        },
        "answers": variants,
    }


def rows(verdicts: list[bool], refused: int | None = None) -> list[dict]:
    return [
        {
            "question": QUESTIONS[i],
            "reference": REFERENCES[i],
            "answer": answer(i, ok, i == refused),
            "correct": ok,
        }
        for i, ok in enumerate(verdicts)
    ]


def read_back(tmp_path: Path, name: str, report: dict) -> dict:
    path = tmp_path / name / "eval_report.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report), encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def evaluations(tmp_path) -> list[RecipeEvaluation]:
    default = eval_report({"finetuned RAG k=3": rows(DEFAULT, REFUSED), "base RAG k=3": rows([False] * 10)})
    # p1's rows in reverse order: pairs are made by question, not by position.
    p1 = eval_report({"finetuned RAG k=3": rows(P1)[::-1], "base RAG k=3": rows([True] * 10)})
    chunky = eval_report({"finetuned RAG k=3": rows([True] * 10)})
    return [
        RecipeEvaluation("default", read_back(tmp_path, "default", default), "chunks-a", "chunks-a"),
        RecipeEvaluation("p1", read_back(tmp_path, "p1", p1), "chunks-a", "chunks-a"),
        RecipeEvaluation("chunky", read_back(tmp_path, "chunky", chunky), "chunks-b", "chunks-a"),
    ]


def test_rows_have_the_hand_computed_means_and_their_bootstrap_intervals(evaluations):
    table = experiment_table(evaluations)
    by_key = {(row.recipe, row.variant): row for row in table.rows}
    # The baseline once, from default; every recipe's fine-tuned model.
    assert list(by_key) == [
        ("default", "finetuned RAG k=3"),
        ("default", "base RAG k=3"),
        ("p1", "finetuned RAG k=3"),
        ("chunky", "finetuned RAG k=3"),
    ]
    default = by_key[("default", "finetuned RAG k=3")].metrics
    assert default["judge_accuracy"].mean == 0.5
    assert default["f1"].mean == 0.5  # the 5 right answers are the reference (F1 1), the others share no token
    assert default["precision_answered"].mean == pytest.approx(5 / 9)  # the refusal is not an answer
    assert default["precision_answered"].n == 9
    assert default["judge_accuracy"] == bootstrap_mean([float(ok) for ok in DEFAULT])
    assert default["judge_accuracy"].low < 0.5 < default["judge_accuracy"].high
    assert by_key[("p1", "finetuned RAG k=3")].metrics["judge_accuracy"].mean == 0.8


def test_each_recipe_is_compared_with_default_on_the_same_questions(evaluations):
    table = experiment_table(evaluations)
    comparison = next(row.comparison for row in table.rows if row.recipe == "p1")
    assert comparison.paired == 10 and comparison.basis == "judged correct"
    # Discordant: default alone right on none, p1 alone right on questions 5, 6, 7: p = 2 * (1/2)^3.
    assert (comparison.mcnemar.first_only, comparison.mcnemar.second_only) == (0, 3)
    assert comparison.mcnemar.p_value == pytest.approx(0.25) == mcnemar_exact(0, 3).p_value
    assert comparison.correctness.difference == pytest.approx(0.3)
    assert comparison.f1.difference == pytest.approx(0.3)
    words = comparison.words()
    assert words["judged correct"].startswith("within noise: the 95% interval of the difference, ")
    assert words["judged correct"].endswith("includes 0 (McNemar p = 0.25, 3 vs 0 discordant)")
    # Default itself, the baseline and the mismatched recipe are compared with nothing.
    assert [row.recipe for row in table.rows if row.comparison is not None] == ["p1"]


def test_a_recipe_served_other_chunks_is_listed_apart_with_the_reason(evaluations, tmp_path):
    table = experiment_table(evaluations)
    assert list(table.excluded) == ["chunky"]
    assert "chunked differently from its dataset" in table.excluded["chunky"]
    calibration = calibrate({}, judged_answers(evaluation.report for evaluation in evaluations))
    paths = write_experiment_report(tmp_path / "reports", table, calibration, tmp_path / "verdicts.jsonl")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    compared, apart = markdown.split("Not compared:")
    assert "| chunky |" not in compared and "| chunky | finetuned RAG k=3 | 10 | 1.000" in apart
    assert "`chunky`: its retrieval index was chunked differently" in apart


def test_when_default_is_mismatched_nothing_is_compared(evaluations):
    default = evaluations[0]
    broken = RecipeEvaluation("default", default.report, "chunks-b", "chunks-a")
    table = experiment_table([broken, *evaluations[1:]])
    assert all(row.comparison is None for row in table.rows)
    assert table.notes[0].startswith("`default` is not comparable, so no recipe is compared")


def test_without_a_judge_recipes_are_compared_by_exact_match(tmp_path):
    default = eval_report({"finetuned no context": rows(DEFAULT)}, judged=False)
    other = eval_report({"finetuned no context": rows([not ok for ok in DEFAULT])}, judged=False)
    table = experiment_table(
        [RecipeEvaluation("default", default, "c", "c"), RecipeEvaluation("flipped", other, "c", "c")]
    )
    assert table.headline == "f1"
    row = table.rows[1]
    assert row.metrics["judge_accuracy"] is None and row.metrics["precision_answered"] is None
    assert row.comparison.basis == "exact match"
    assert (row.comparison.mcnemar.first_only, row.comparison.mcnemar.second_only) == (5, 5)
    assert row.comparison.mcnemar.p_value == 1.0


def test_answers_to_other_questions_are_not_compared():
    default = eval_report({"finetuned no context": rows(DEFAULT)})
    other = eval_report({"finetuned no context": rows(P1)})
    for row in other["answers"]["finetuned no context"]:
        row["question"] += " (reworded)"
    table = experiment_table([RecipeEvaluation("default", default, "c", "c"), RecipeEvaluation("new", other, "c", "c")])
    assert table.rows[1].comparison is None and table.rows[1].metrics["judge_accuracy"].mean == 0.8


def test_a_failed_judgement_is_left_out_not_counted_as_exact_match():
    failed = rows(DEFAULT)
    failed[0] |= {"judgement": None}  # the judge failed; `correct` fell back to exact match (True)
    report = eval_report({"finetuned no context": failed})
    table = experiment_table([RecipeEvaluation("default", report, "c", "c")])
    assert table.rows[0].metrics["judge_accuracy"].mean == pytest.approx(4 / 9)


def test_the_files_and_the_inline_plot(evaluations, tmp_path):
    table = experiment_table(evaluations)
    calibration = calibrate({}, {})
    paths = write_experiment_report(tmp_path / "reports", table, calibration, tmp_path / "verdicts.jsonl")
    payload = json.loads(paths["json"].read_text(encoding="utf-8"))
    p1 = next(row for row in payload["rows"] if row["recipe"] == "p1")
    assert p1["judge_accuracy"]["mean"] == 0.8 and p1["vs_default"]["mcnemar"]["second_only"] == 3
    assert payload["excluded"] == {"chunky": table.excluded["chunky"]} and payload["judge"]["human_verdicts"] == 0
    png = paths["plot"].read_bytes()
    assert png.startswith(b"\x89PNG")
    markdown = metadata_markdown(table, calibration, paths["plot"])
    embedded = re.search(r"!\[experiment report\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    assert len(markdown.encode()) < 100_000


def test_an_oversized_png_is_named_not_inlined(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + bytes(2000))
    assert inline_png(path, "loss", max_bytes=1000).startswith("*loss: 2 KB, too large to show inline")
    assert inline_png(path, "loss", max_bytes=5000).startswith("![loss](data:image/png;base64,")


def test_reads_what_the_eval_report_writer_writes(tmp_path):
    """The real `write_report`, its summaries from `metrics.aggregate`, read back as a recipe."""
    answers = {"finetuned RAG k=3": rows(DEFAULT, REFUSED)}
    scores = [
        score_question(row["answer"], row["reference"], judgement=row["correct"])
        for row in answers["finetuned RAG k=3"]
    ]
    files = write_report(tmp_path, {"finetuned RAG k=3": aggregate(scores)}, answers, [], "judge_accuracy")
    report = json.loads(files["json"].read_text(encoding="utf-8"))
    [row] = experiment_table([RecipeEvaluation("default", report, "c", "c")]).rows
    summary = report["systems"]["finetuned RAG k=3"]
    assert row.metrics["judge_accuracy"].mean == summary["judge_accuracy"]
    assert row.metrics["f1"].mean == pytest.approx(summary["f1"])
    assert row.metrics["precision_answered"].mean == pytest.approx(summary["precision_answered"])
