"""The two generation tasks over a partition: questions for each chunk, a CoT answer for each question.

Each item is one async task; a reply that cannot be parsed is asked again (with a new seed and some
temperature, so it is a new request) up to `max_attempts` times. Every item ends as rows with a
status — ok, duplicate, parse_error, error, over_budget or skipped — never as a silently missing row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import polars as pl

from raft_assets.generation.parsing import final_answer, parse_questions, quotes_verified
from raft_assets.generation.progress import StageProgress
from raft_assets.generation.prompts import Prompt, documents_block, load_prompts
from raft_assets.hashing import content_hash
from raft_assets.resources.llm import ChatReply, Plan, RequestFailed, Usage

T = TypeVar("T")

QUESTION_SCHEMA = {
    "question_id": pl.String,
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "question": pl.String,
    "model": pl.String,
    "status": pl.String,
    "error": pl.String,
}
ANSWER_SCHEMA = {
    "question_id": pl.String,
    "cot_answer": pl.String,
    "answer": pl.String,
    "quotes_ok": pl.Boolean,
    "status": pl.String,
    "error": pl.String,
    "attempts": pl.Int32,
}
GENERATION_COLUMNS = {
    "question_id": "Hash of the chunk and the question.",
    "chunk_id": "The chunk the question is about (its oracle document).",
    "doc_id": "The document of that chunk.",
    "question": "The generated question; empty when generation failed.",
    "model": "The generator that wrote it (`extractive` without an endpoint).",
    "status": "`ok`, `duplicate`, `skipped` (the extractive stand-in had no sentence to quote), or the kind of failure.",
    "error": "The failure's (or the skip's) reason; empty when ok.",
    "cot_answer": "Reasoning that quotes the chunk (##begin_quote##...##end_quote##), ending with `<ANSWER>: ...`.",
    "answer": "The final answer, after `<ANSWER>:`.",
    "quotes_ok": "Every quote appears verbatim in the chunk.",
    "attempts": "Requests made for this answer (malformed replies are asked again).",
}


class Backend(Protocol):
    """What generates replies: the `llm` endpoint's ChatClient, or the extractive stand-in."""

    model: str
    usage: Usage

    def plan(self, prompt: Prompt, batch: list[dict[str, Any]]) -> Plan: ...

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply: ...


@dataclass(frozen=True)
class Outcome(Generic[T]):
    status: str
    value: T | None = None
    text: str | None = None  # the last reply
    error: str | None = None
    attempts: int = 0


def attempt_params(prompt: Prompt, attempt: int) -> dict[str, Any]:
    """The prompt's sampling parameters; a retry adds a seed and temperature so it is a new request."""
    if attempt == 0:
        return dict(prompt.params)
    return {**prompt.params, "temperature": max(float(prompt.params.get("temperature", 0.0)), 0.7), "seed": attempt}


async def ask(
    backend: Backend, prompt: Prompt, values: dict[str, Any], parse: Callable[[str], T | None], max_attempts: int
) -> Outcome[T]:
    text = None
    for attempt in range(max_attempts):
        try:
            reply = await backend.reply(prompt, values, attempt_params(prompt, attempt))
        except RequestFailed as failure:
            return Outcome(failure.status, text=text, error=str(failure), attempts=attempt + 1)
        text = reply.text
        value = parse(text)
        if value is not None:
            return Outcome("ok", value=value, text=text, attempts=attempt + 1)
    shown = (text or "").strip()[:200] or "(empty reply)"
    return Outcome(
        "parse_error",
        text=text,
        error=f"no usable reply in {max_attempts} attempts; last: {shown}",
        attempts=max_attempts,
    )


async def run_batch(
    backend: Backend,
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
    backend: Backend, chunks: pl.DataFrame, per_chunk: int, max_attempts: int, progress: StageProgress
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
    backend: Backend, questions: pl.DataFrame, chunk_texts: dict[str, str], max_attempts: int, progress: StageProgress
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
