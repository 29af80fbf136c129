"""The per-source generation assets: `questions` (N per chunk) and `cot_answers` (one per question)."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.contracts.tables import (
    ANSWER_SCHEMA,
    GENERATION_COLUMNS,
    QUESTION_SCHEMA,
    read_parquet,
    write_parquet,
)
from raft_assets.defs.ingestion.assets import chunks
from raft_assets.defs.metadata import column_schema, failure_rate_result, markdown_preview, table_metadata
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.generation.extractive import ExtractiveBackend
from raft_assets.generation.progress import NOT_FAILED, StageProgress
from raft_assets.generation.tasks import generate_answers, generate_questions
from raft_assets.hashing import content_hash
from raft_assets.llm.asking import Replier
from raft_assets.llm.batch import BatchError, BatchFirst
from raft_assets.llm.client import ChatClient, EndpointUnusable
from raft_assets.llm.reply_cache import ReplyCache

T = TypeVar("T")


class GenerationConfig(dg.Config):
    max_attempts: int = Field(default=3, ge=1, description="Tries for a reply that cannot be parsed.")
    max_failure_rate: float = Field(default=0.1, ge=0, le=1, description="Largest share of failed items that passes.")
    progress_interval_s: float = Field(default=10.0, gt=0, description="Seconds between progress lines in the log.")


class QuestionsConfig(GenerationConfig):
    questions_per_chunk: int = Field(default=5, gt=0)


def failure_rate_check(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        "failure_rate_within_bound",
        asset=asset,
        blocking=True,
        description="The share of items whose request or reply failed is at most `max_failure_rate`.",
    )


@asynccontextmanager
async def replier(
    endpoint: LLMResource | None, stand_in: Callable[[], Replier], paths: ProjectPaths
) -> AsyncIterator[Replier]:
    """The endpoint's client with the on-disk reply cache (through its Batch API first in `mode: batch`), or the
    stand-in when there is no endpoint."""
    if endpoint is None:
        yield stand_in()
        return
    cache = ReplyCache(paths.layout.reply_cache_file)
    try:
        async with endpoint.client(cache) as client:
            yield batch_first(client, endpoint, paths) if endpoint.mode == "batch" else client
    finally:
        cache.close()


def batch_first(client: ChatClient, endpoint: LLMResource, paths: ProjectPaths) -> BatchFirst:
    """The client in batch mode, its batch ids kept in the state file of the asset partition being materialized."""
    context = dg.AssetExecutionContext.get()
    state_file = paths.layout.llm_batch_file(context.asset_key.path[-1], context.partition_key)
    return BatchFirst(client, state_file, endpoint.batch_poll_interval_s, context.log)


def generation_backend(llm: LLMResource, paths: ProjectPaths) -> AbstractAsyncContextManager[Replier]:
    """The `llm` endpoint, or the extractive generator when none is set."""
    return replier(llm if llm.configured else None, ExtractiveBackend, paths)


def run_requests(
    context: dg.AssetExecutionContext,
    config: GenerationConfig,
    backend: AbstractAsyncContextManager[Replier],
    role: str,
    total: int,
    work: Callable[[Replier, StageProgress], Awaitable[T]],
) -> tuple[T, dict]:
    """Run one stage's requests (`total` items) in an event loop; return the work's result and the metadata of the
    run: the model under `role` ("generator", "curator"), the stand-in's note when one ran, time, usage."""
    stage = f"{context.asset_key.to_user_string()}[{context.partition_key}]"

    async def run() -> tuple[T, dict]:
        async with backend as replier:
            if replier.stand_in:
                context.log.warning(f"{stage}: {replier.stand_in}")
            usage = replier.usage
            progress = StageProgress(
                stage,
                total,
                context.log,
                config.progress_interval_s,
                lambda: usage.prompt_tokens + usage.completion_tokens,
                usage.concurrency_line,
            )
            started = time.monotonic()
            result = await work(replier, progress)
            seconds = time.monotonic() - started
            return result, {
                role: replier.model,
                **({"stand_in": replier.stand_in} if replier.stand_in else {}),
                "seconds": round(seconds, 2),
                "items_per_second": round(total / seconds, 2) if seconds else 0.0,
                **usage.metadata(),
                **(replier.report.metadata() if isinstance(replier, BatchFirst) else {}),
            }

    try:
        return asyncio.run(run())
    except EndpointUnusable as error:
        raise dg.Failure(f"{stage}: the {role} endpoint cannot be used: {error}. Nothing was sent.") from None
    except BatchError as error:
        raise dg.Failure(f"{stage}: {error}") from None


def generation_result(
    frame: pl.DataFrame,
    path: Path,
    failures: tuple[int, int, str],
    config: GenerationConfig,
    run_metadata: dict,
    preview_columns: list[str],
) -> dg.MaterializeResult:
    """The table written, its metadata, and the failure-rate check of (failed, total, what) items."""
    write_parquet(frame, path)
    statuses = dict(frame.group_by("status").len().iter_rows())
    failed = frame.filter(~pl.col("status").is_in(NOT_FAILED))
    return dg.MaterializeResult(
        metadata={
            **table_metadata(frame, path, GENERATION_COLUMNS),
            **run_metadata,
            **{f"status_{status}": count for status, count in sorted(statuses.items())},
            "failure_rate": failures[0] / failures[1] if failures[1] else 0.0,
            "preview": markdown_preview(frame.filter(pl.col("status") == "ok").select(preview_columns)),
            "failures": markdown_preview(failed.select("status", "error"), rows=10, max_chars=200),
            "skipped": markdown_preview(
                frame.filter(pl.col("status") == "skipped").select("status", "error"), rows=10, max_chars=200
            ),
        },
        data_version=dg.DataVersion(content_hash(*frame["question_id"], *frame["status"])),
        check_results=[failure_rate_result(*failures, config.max_failure_rate, failed)],
    )


@dg.asset(
    partitions_def=doc_sources,
    group_name="generation",
    kinds={"openai", "parquet"},
    deps=[chunks],
    metadata={"dagster/column_schema": column_schema(QUESTION_SCHEMA, GENERATION_COLUMNS)},
    check_specs=[failure_rate_check("questions")],
)
def questions(
    context: dg.AssetExecutionContext, config: QuestionsConfig, paths: ProjectPaths, llm: LLMResource
) -> dg.MaterializeResult:
    """`questions_per_chunk` search-style questions for every chunk, from the `llm` model."""
    source = context.partition_key
    chunk_frame = read_parquet(paths.stage_file("chunks", source), "chunks")
    frame, run_metadata = run_requests(
        context,
        config,
        generation_backend(llm, paths),
        "generator",
        chunk_frame.height,
        lambda backend, progress: generate_questions(
            backend, chunk_frame, config.questions_per_chunk, config.max_attempts, progress
        ),
    )
    failed_chunks = frame.filter(~pl.col("status").is_in(NOT_FAILED))["chunk_id"].n_unique()
    return generation_result(
        frame,
        paths.stage_file("questions", source),
        (failed_chunks, chunk_frame.height, "chunks"),
        config,
        run_metadata,
        ["question", "chunk_id"],
    )


@dg.asset(
    partitions_def=doc_sources,
    group_name="generation",
    kinds={"openai", "parquet"},
    deps=[questions],
    metadata={"dagster/column_schema": column_schema(ANSWER_SCHEMA, GENERATION_COLUMNS)},
    check_specs=[failure_rate_check("cot_answers")],
)
def cot_answers(
    context: dg.AssetExecutionContext, config: GenerationConfig, paths: ProjectPaths, llm: LLMResource
) -> dg.MaterializeResult:
    """A chain-of-thought answer for every question, quoting its chunk; quotes checked against the chunk."""
    source = context.partition_key
    question_frame = read_parquet(paths.stage_file("questions", source), "questions")
    chunk_frame = read_parquet(paths.stage_file("chunks", source), "chunks")
    chunk_texts = dict(zip(chunk_frame["chunk_id"], chunk_frame["text"], strict=True))
    pending = int((question_frame["status"] == "ok").sum())
    frame, run_metadata = run_requests(
        context,
        config,
        generation_backend(llm, paths),
        "generator",
        pending,
        lambda backend, progress: generate_answers(backend, question_frame, chunk_texts, config.max_attempts, progress),
    )
    failed = int((~frame["status"].is_in(NOT_FAILED)).sum())
    run_metadata["quotes_ok"] = int(frame["quotes_ok"].sum())
    return generation_result(
        frame,
        paths.stage_file("cot_answers", source),
        (failed, frame.height, "answers"),
        config,
        run_metadata,
        ["answer", "quotes_ok"],
    )
