"""The two generation tasks over a partition: questions for each chunk, a CoT answer for each question.

Each item is one async task; a reply that cannot be parsed is asked again (with a new seed and some
temperature, so it is a new request) up to `max_attempts` times. Every item ends as rows with a
status — ok, duplicate, parse_error, error, over_budget or skipped — never as a silently missing row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import polars as pl

from raft_assets.contracts.prompts import Prompt, load_prompts
from raft_assets.contracts.raft_format import documents_block, final_answer, quotes_verified
from raft_assets.contracts.tables import ANSWER_SCHEMA, QUESTION_SCHEMA
from raft_assets.generation.parsing import parse_questions
from raft_assets.generation.progress import StageProgress
from raft_assets.hashing import content_hash
from raft_assets.llm.asking import Outcome, Replier, ask

T = TypeVar("T")


async def run_batch(
    backend: Replier,
    prompt: Prompt,
    batch: list[dict[str, Any]],
    parse: Callable[[str], T | None],
    max_attempts: int,
    progress: StageProgress,
) -> list[Outcome[T]]:
    """Ask for every item of the batch concurrently; outcomes in batch order. Logs the plan first."""
    progress.log.info(f"{progress.stage}: {backend.plan(prompt, batch).describe()}")

    async def one(values: dict[str, Any]) -> Outcome[T]:
        outcome = await ask(backend, prompt, values, parse, max_attempts)
        progress.advance(outcome.status)
        return outcome

    async with progress:
        return await asyncio.gather(*(one(values) for values in batch))


async def generate_questions(
    backend: Replier, chunks: pl.DataFrame, per_chunk: int, max_attempts: int, progress: StageProgress
) -> pl.DataFrame:
    batch = [{"chunk": text, "num_questions": per_chunk} for text in chunks["text"]]
    parse = lambda reply: parse_questions(reply, per_chunk) or None  # noqa: E731
    outcomes = await run_batch(backend, load_prompts()["questions"], batch, parse, max_attempts, progress)
    rows = []
    seen: set[str] = set()
    for chunk_id, doc_id, outcome in zip(chunks["chunk_id"], chunks["doc_id"], outcomes, strict=True):
        if outcome.value is None:
            rows.append((content_hash(chunk_id), chunk_id, doc_id, None, backend.model, outcome.status, outcome.error))
            continue
        for question in outcome.value:
            status = "duplicate" if question in seen else "ok"
            seen.add(question)
            rows.append((content_hash(chunk_id, question), chunk_id, doc_id, question, backend.model, status, None))
    return pl.DataFrame(rows, schema=QUESTION_SCHEMA, orient="row")


async def generate_answers(
    backend: Replier, questions: pl.DataFrame, chunk_texts: dict[str, str], max_attempts: int, progress: StageProgress
) -> pl.DataFrame:
    pending = questions.filter(pl.col("status") == "ok")
    batch = [
        {"question": question, "documents": documents_block([chunk_texts[chunk_id]])}
        for question, chunk_id in zip(pending["question"], pending["chunk_id"], strict=True)
    ]
    outcomes = await run_batch(backend, load_prompts()["cot_answer"], batch, final_answer, max_attempts, progress)
    rows = [
        (
            question_id,
            outcome.text,
            outcome.value,
            bool(outcome.text) and quotes_verified(outcome.text, chunk_texts[chunk_id]),
            outcome.status,
            outcome.error,
            outcome.attempts,
        )
        for question_id, chunk_id, outcome in zip(pending["question_id"], pending["chunk_id"], outcomes, strict=True)
    ]
    return pl.DataFrame(rows, schema=ANSWER_SCHEMA, orient="row")
