"""The per-question rows of an `eval_report.json` (`report.write_report`), as the experiment report and the judge's
calibration read them: which system and setting a variant is, each answer's judge verdict, and the key that pairs
the same (question, answer) across systems, recipes and human reviews."""

from __future__ import annotations

import re
from typing import Any

from raft_assets.evaluation.metrics import extract_answer

# `run.answer_variant` names each variant `<system> no context` or `<system> RAG k=<k>`.
_VARIANT = re.compile(r"^(?P<system>.+?) (?P<setting>no context|RAG k=\d+)$")

PairKey = tuple[str, str]


def split_variant(variant: str) -> tuple[str, str]:
    """(`finetuned`, `RAG k=3`) for `finetuned RAG k=3`; a name of another shape is its own system and setting."""
    match = _VARIANT.match(variant)
    return (match["system"], match["setting"]) if match else (variant, variant)


def judge_verdicts(report: dict[str, Any], variant: str) -> list[bool | None]:
    """The judge's verdict on each answer of `variant`, None where it was not judged.

    A row's `judgement` is the verdict (None: the judge failed); a report without it (written before rows carried
    it) has the verdict in `correct` when the variant was judged. Without a judge, `correct` is exact match: no
    verdict."""
    rows = report["answers"][variant]
    if not report["systems"][variant].get("judged"):
        return [None] * len(rows)
    return [row.get("judgement", row["correct"]) for row in rows]


def pair_key(question: str, answer: str) -> PairKey:
    """A (question, final answer) pair, whitespace-insensitive: what the judge rates, and a person reviews, once."""
    return " ".join(question.split()), " ".join(extract_answer(answer).split())
