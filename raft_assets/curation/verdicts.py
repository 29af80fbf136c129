"""From answered questions and their rating outcomes to the `curated_answers` table: one row per question.

Every row of `cot_answers` gets a row: an answered question is rated (status `ok`, or the kind of failure), one
whose answer failed is `skipped` with that reason. A question is kept when it was rated, scored at least
`min_score`, and no better-rated question of the source says the same (embedding cosine at least the threshold;
ties go to the smaller question_id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from raft_assets.contracts.tables import CURATED_SCHEMA, KEEP, REJECT
from raft_assets.curation.dedup import near_duplicates
from raft_assets.curation.rubric import NEAR_DUPLICATE, Rating, prompt_values, schema_problem
from raft_assets.llm.asking import Outcome

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised rows


@dataclass(frozen=True)
class Policy:
    min_score: int
    dedup_threshold: float


def to_rate(answers: pl.DataFrame, questions: pl.DataFrame, chunk_texts: dict[str, str]) -> pl.DataFrame:
    """The answered questions (status ok in `cot_answers`) with their question, chunk and answer, in answer order."""
    asked = questions.select("question_id", "question", "chunk_id").unique("question_id", keep="first")
    pending = answers.filter(pl.col("status") == "ok").select("question_id", "cot_answer", "answer")
    joined = pending.join(asked, on="question_id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("chunk_id").replace_strict(chunk_texts, default=None).alias("chunk"))


def batch(pending: pl.DataFrame) -> list[dict[str, Any]]:
    """The `curation` prompt's values for each question to rate."""
    return [prompt_values(row["question"], row["chunk"], row["cot_answer"]) for row in pending.iter_rows(named=True)]


def outcome_row(question_id: str, outcome: Outcome[Rating], model: str) -> dict[str, Any]:
    """A rated question's row before its verdict: its score and reasons, or why it has none."""
    if outcome.value is not None:
        rating = outcome.value
        reasons = [*rating.reasons, *([rating.comment] if rating.comment.strip() else [])]
        return row(question_id, rating.score, reasons, model, "ok", None)
    error = outcome.error
    if outcome.status == "parse_error":
        error = (
            f"no reply fitting the rating schema in {outcome.attempts} attempts; last: {schema_problem(outcome.text)}"
            f"; reply: {(outcome.text or '').strip()[:200]}"
        )
    return row(question_id, None, [], model, outcome.status, error)


def row(
    question_id: str, score: int | None, reasons: list[str], model: str | None, status: str, error: str | None
) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "score": score,
        "verdict": REJECT,
        "reasons": reasons,
        "judge_model": model,
        "status": status,
        "error": error,
    }


def curate(
    answers: pl.DataFrame,
    pending: pl.DataFrame,
    outcomes: list[Outcome[Rating]],
    model: str,
    policy: Policy,
    embed: Embed,
) -> pl.DataFrame:
    """The `curated_answers` table (CURATED_SCHEMA), in the order of `answers`."""
    rows = {
        question_id: outcome_row(question_id, outcome, model)
        for question_id, outcome in zip(pending["question_id"], outcomes, strict=True)
    }
    questions = dict(zip(pending["question_id"], pending["question"], strict=True))
    rated = sorted((r for r in rows.values() if r["status"] == "ok"), key=lambda r: (-r["score"], r["question_id"]))
    vectors = embed([questions[r["question_id"]] for r in rated])
    for index, kept in near_duplicates(vectors, policy.dedup_threshold).items():
        rated[index]["reasons"] = [
            NEAR_DUPLICATE,
            f"kept instead: {rated[kept]['question_id']}",
            *rated[index]["reasons"],
        ]
    for r in rated:
        if r["score"] >= policy.min_score and NEAR_DUPLICATE not in r["reasons"]:
            r["verdict"] = KEEP
    table = []
    for question_id, status, error in answers.select("question_id", "status", "error").iter_rows():
        if question_id in rows:
            table.append(rows[question_id])
        else:
            reason = f"no answer to rate: cot_answers has status {status!r}" + (f" ({error})" if error else "")
            table.append(row(question_id, None, [], None, "skipped", reason))
    return pl.DataFrame(table, schema=CURATED_SCHEMA)
