"""An evaluation, from questions to scores: every system answers the eval set without context and with the top k
retrieved documents, the judge rates the answers, and each answer is scored (`metrics.py`).

What answers is given, not built here: each `System` opens its backend when its turn comes (a local checkpoint in
this process, or one served by vLLM for the duration), so one model at a time holds the GPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from raft_assets.contracts.prompts import Prompt
from raft_assets.contracts.tables import EXTRACTIVE_MODEL
from raft_assets.evaluation.metrics import (
    JUDGE_PROMPT,
    JUDGE_REORDERED_PROMPT,
    aggregate,
    extract_answer,
    parse_judgement,
    score_question,
)
from raft_assets.inference.answering import AnswerBackend, AnswerRequest
from raft_assets.llm.asking import ask
from raft_assets.llm.client import ChatClient, Endpoint
from raft_assets.llm.reply_cache import ReplyCache


@dataclass(frozen=True)
class System:
    """A model to evaluate: its name, how to open its answering backend, and its own variants (None: the evaluation's;
    a `raft-assets serve` endpoint retrieves its own top k documents, so it has one, `RAG k=<its k>`)."""

    name: str
    backend: Callable[[], AbstractContextManager[AnswerBackend]]
    variants: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class EvalItem:
    question: str
    reference: str
    documents: list[str]  # the retrieved documents, best first (as many as the largest k)
    generator: str | None  # the model that wrote the question (None: not recorded)


@dataclass
class Evaluation:
    """The answers of every system variant (`<system> no context`, `<system> RAG k=<k>`), scored."""

    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    documents_of: dict[str, int | None] = field(default_factory=dict)  # variant -> documents given (None: none)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    judged: bool = False

    @property
    def headline(self) -> str:
        return "judge_accuracy" if self.judged else "f1"

    @property
    def cached_answers(self) -> int:
        return sum(summary["cached"] for summary in self.summaries.values())


def evaluate(
    items: list[EvalItem],
    systems: list[System],
    variants: list[int | None],
    judge: Endpoint | None,
    cache: ReplyCache,
    judge_attempts: int,
    log: logging.Logger,
) -> Evaluation:
    """Answer with every system and variant, judge (when a judge is given) and score."""
    evaluation = Evaluation()
    for system in systems:
        with system.backend() as backend:
            for k in variants if system.variants is None else system.variants:
                answer_variant(evaluation, system.name, backend, items, k, log)
    verdicts = {}
    if judge is not None:
        verdicts = {
            variant: judge_rows(judge, cache, rows, judge_attempts) for variant, rows in evaluation.answers.items()
        }
        evaluation.judged = True
    for variant, rows in evaluation.answers.items():
        evaluation.summaries[variant] = summarize(
            rows, items, evaluation.documents_of[variant], verdicts.get(variant), judge
        )
    evaluation.notes = notes(items, evaluation, judge)
    return evaluation


def answer_variant(
    evaluation: Evaluation, name: str, backend: AnswerBackend, items: list[EvalItem], k: int | None, log: logging.Logger
) -> None:
    variant = f"{name} {'no context' if k is None else f'RAG k={k}'}"
    log.info(f"answering the eval set: {variant}")
    requests = [AnswerRequest(item.question, [] if k is None else item.documents[:k]) for item in items]
    replies = asyncio.run(backend.answer_all(requests))
    evaluation.answers[variant] = [
        {
            "question": item.question,
            "reference": item.reference,
            "answer": reply.text,
            "error": reply.error,
            "seconds": reply.seconds,
            "cached": reply.cached,
        }
        for item, reply in zip(items, replies, strict=True)
    ]
    evaluation.documents_of[variant] = k


def judge_rows(
    judge: Endpoint, cache: ReplyCache, rows: list[dict[str, Any]], attempts: int, reordered: bool = False
) -> list[bool | None]:
    """The judge's verdict on each row's final answer; `reordered`: asked with the two answers in the other order
    (`judge_reordered`), a new request, for the judge's self-consistency."""
    triples = [(row["question"], row["reference"], extract_answer(row["answer"])) for row in rows]
    prompt = JUDGE_REORDERED_PROMPT if reordered else JUDGE_PROMPT
    return asyncio.run(judge_all(judge, cache, triples, attempts, prompt))


async def judge_all(
    judge: Endpoint, cache: ReplyCache, items: list[tuple[str, str, str]], attempts: int, prompt: Prompt = JUDGE_PROMPT
):
    """The judge's verdict on each (question, reference, student answer): True, False, or None (it failed)."""
    async with ChatClient(judge, cache) as client:
        outcomes = await asyncio.gather(
            *(
                ask(
                    client,
                    prompt,
                    {"question": q, "reference_answer": r, "student_answer": s},
                    parse_judgement,
                    attempts,
                )
                for q, r, s in items
            )
        )
    return [outcome.value if outcome.status == "ok" else None for outcome in outcomes]


def summarize(
    rows: list[dict[str, Any]],
    items: list[EvalItem],
    k: int | None,
    verdicts: list[bool | None] | None,
    judge: Endpoint | None,
) -> dict[str, Any]:
    """One variant's scores; each row gets `correct` (the judge's verdict, or exact match without a judge)."""
    judged = verdicts or [None] * len(rows)
    scores = [
        score_question(
            row["answer"],
            row["reference"],
            item.documents[:k] if k else [],
            judgement=verdict,
            judge_failed=judge is not None and verdict is None,
        )
        for row, item, verdict in zip(rows, items, judged, strict=True)
    ]
    for row, score in zip(rows, scores, strict=True):
        row["correct"] = score.judgement if score.judgement is not None else bool(score.exact_match)
        row["judgement"] = score.judgement  # None: not judged, or the judge failed
    return {
        **aggregate(scores),
        "seconds_per_answer": seconds_per_answer(rows),
        "cached": sum(r["cached"] for r in rows),
    }


def seconds_per_answer(rows: list[dict[str, Any]]) -> float | None:
    """The mean time of the answers whose time is known (a cached answer's: the run's that computed it)."""
    known = [row["seconds"] for row in rows if row["seconds"] is not None]
    return sum(known) / len(known) if known else None


def notes(items: list[EvalItem], evaluation: Evaluation, judge: Endpoint | None) -> list[str]:
    """The report's header: who wrote the questions, where they and the contexts come from, the cache, the judge."""
    found = [
        stand_in_note([item.generator for item in items]),
        f"{len(items)} questions from the eval set; top-k retrieval with the `retrieval_index`.",
        cache_note(evaluation.answers),
        f"Judge: `{judge.model}` (YES/NO on matching the reference answer; failures are not scored)."
        if judge is not None
        else "Judge skipped: no judge endpoint is configured (set RAFT_JUDGE_BASE_URL).",
    ]
    return [note for note in found if note]


def stand_in_note(writers: list[str | None]) -> str | None:
    """What the report must say first when the extractive stand-in, not a model, wrote the eval questions."""
    by_stand_in = writers.count(EXTRACTIVE_MODEL)
    if not by_stand_in:
        return None
    share = f"All {len(writers)}" if by_stand_in == len(writers) else f"{by_stand_in} of the {len(writers)}"
    return (
        f"**Stand-in data:** {share} eval questions were written by the `{EXTRACTIVE_MODEL}` stand-in (no generator "
        "endpoint), not by a model: these numbers test the machinery, not a model."
    )


def cache_note(answers: dict[str, list[dict[str, Any]]]) -> str | None:
    """How many answers came from the reply cache, and what their times are."""
    rows = [row for variant_rows in answers.values() for row in variant_rows]
    cached = sum(row["cached"] for row in rows)
    if not cached:
        return None
    return (
        f"{cached} of {len(rows)} answers from the cache; seconds per answer are those of the run that computed them."
    )
