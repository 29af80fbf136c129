"""The per-source `curated_answers` asset: every answered question rated on the rubric, near-duplicates merged, a
keep/reject verdict that `raft_dataset` and `eval_set` read; and its two blocking checks, on the file written."""

from contextlib import AbstractAsyncContextManager, closing

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.contracts.tables import (
    CURATED_COLUMNS,
    CURATED_SCHEMA,
    KEEP,
    read_parquet,
    write_parquet,
)
from raft_assets.curation.heuristic import HeuristicCurator
from raft_assets.curation.report import plot_scores, reason_counts, score_table
from raft_assets.curation.rubric import curation_prompt, parse_rating
from raft_assets.curation.verdicts import Policy, batch, curate, to_rate
from raft_assets.defs.generation.assets import GenerationConfig, cot_answers, failure_rate_check, replier, run_requests
from raft_assets.defs.metadata import column_schema, failure_rate_result, markdown_preview, table_metadata
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.generation.progress import NOT_FAILED
from raft_assets.generation.tasks import run_batch
from raft_assets.hashing import content_hash
from raft_assets.llm.asking import Replier
from raft_assets.retrieval.embedding_cache import EmbeddingCache
from raft_assets.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL, Embedder

KEEP_RATE_CHECK = "keep_rate_at_least_floor"
LOWEST_RATED = 10  # examples shown in the metadata


class CurationConfig(GenerationConfig):
    min_score: int = Field(default=7, ge=1, le=10, description="Lowest score kept (synthetic-data-kit keeps 7+).")
    dedup_threshold: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Embedding cosine from which two questions of a source are near-duplicates; the best-rated stays.",
    )
    min_keep_rate: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Least share of rated questions kept that passes the check: below it, suspect the prompt or "
        "the endpoint rather than the documents.",
    )
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Embeds the questions for the near-duplicate test (the packaged model by default, offline).",
    )


def curation_backend(
    curator: LLMResource, llm: LLMResource, paths: ProjectPaths
) -> AbstractAsyncContextManager[Replier]:
    """The `curator` endpoint, else the `llm` one; the heuristic when neither is set. Each endpoint is asked with
    its own key only."""
    endpoint = curator if curator.configured else llm if llm.configured else None
    return replier(endpoint, HeuristicCurator, paths)


def keep_rate_result(table: pl.DataFrame, floor: float) -> dg.AssetCheckResult:
    """Passes when at least `floor` of the questions sent for rating were kept (none sent: nothing to judge)."""
    rated = table.filter(pl.col("status") != "skipped")
    kept = int((rated["verdict"] == KEEP).sum())
    rate = kept / rated.height if rated.height else 1.0
    return dg.AssetCheckResult(
        check_name=KEEP_RATE_CHECK,
        passed=rate >= floor,
        metadata={"keep_rate": rate, "min_keep_rate": floor},
        description=f"{kept} of {rated.height} questions kept ({rate:.1%}; the floor is {floor:.0%})"
        + ("." if rate >= floor else ": a broken prompt or endpoint is likelier than bad documents."),
    )


def check_results(table: pl.DataFrame, config: CurationConfig) -> list[dg.AssetCheckResult]:
    failed = table.filter(~pl.col("status").is_in(NOT_FAILED))
    attempted = int((table["status"] != "skipped").sum())
    return [
        keep_rate_result(table, config.min_keep_rate),
        failure_rate_result(failed.height, attempted, "ratings", config.max_failure_rate, failed),
    ]


def lowest_rated(table: pl.DataFrame, pending: pl.DataFrame) -> dg.MarkdownMetadataValue:
    rated = table.filter(pl.col("score").is_not_null()).join(
        pending.select("question_id", "question", "answer"), on="question_id"
    )
    shown = rated.sort(["score", "question_id"]).head(LOWEST_RATED).with_columns(pl.col("reasons").list.join("; "))
    return markdown_preview(shown.select("question", "answer", "score", "reasons"), rows=LOWEST_RATED, max_chars=120)


@dg.asset(
    partitions_def=doc_sources,
    group_name="curation",
    kinds={"openai", "parquet"},
    deps=[cot_answers],
    metadata={"dagster/column_schema": column_schema(CURATED_SCHEMA, CURATED_COLUMNS)},
    check_specs=[
        dg.AssetCheckSpec(
            KEEP_RATE_CHECK,
            asset="curated_answers",
            blocking=True,
            description="At least `min_keep_rate` of the rated questions are kept: fewer signals a broken prompt or "
            "endpoint rather than bad documents.",
        ),
        failure_rate_check("curated_answers"),
    ],
)
def curated_answers(
    context: dg.AssetExecutionContext,
    config: CurationConfig,
    paths: ProjectPaths,
    llm: LLMResource,
    curator: LLMResource,
) -> dg.MaterializeResult:
    """Every answered question rated 1-10 with its chunk and answer (grounded, correct and complete, self-contained
    and search-like, about the domain), near-duplicates within the source merged, and a keep/reject verdict."""
    source = context.partition_key
    answers = read_parquet(paths.stage_file("cot_answers", source), "cot_answers")
    asked = read_parquet(paths.stage_file("questions", source), "questions")
    chunk_frame = read_parquet(paths.stage_file("chunks", source), "chunks")
    pending = to_rate(answers, asked, dict(zip(chunk_frame["chunk_id"], chunk_frame["text"], strict=True)))

    outcomes, run_metadata = run_requests(
        context,
        config,
        curation_backend(curator, llm, paths),
        "curator",
        pending.height,
        lambda backend, progress: run_batch(
            backend, curation_prompt(), batch(pending), parse_rating, config.max_attempts, progress
        ),
    )
    policy = Policy(config.min_score, config.dedup_threshold)
    with closing(EmbeddingCache(paths.layout.embedding_cache_file)) as cache:
        embedder = Embedder(config.embedding_model, cache)
        table = curate(answers, pending, outcomes, run_metadata["curator"], policy, embedder.embed)

    path = paths.stage_file("curated_answers", source)
    write_parquet(table, path)
    written = read_parquet(path, "curated_answers")
    scores = written["score"].drop_nulls().to_list()
    histogram = plot_scores(
        scores,
        config.min_score,
        paths.layout.curation_histogram(source),
        f"curated_answers[{source}]: {run_metadata['curator']}",
    )
    counts = {
        **{f"verdict_{v}": n for v, n in sorted(written.group_by("verdict").len().iter_rows())},
        **{f"status_{s}": n for s, n in sorted(written.group_by("status").len().iter_rows())},
        **{f"reason_{r}": n for r, n in reason_counts(written).items()},
    }
    return dg.MaterializeResult(
        metadata={
            **table_metadata(written, path, CURATED_COLUMNS),
            **run_metadata,
            **counts,
            "min_score": config.min_score,
            "score_histogram": dg.MetadataValue.path(str(histogram.resolve())),
            "score_counts": dg.MetadataValue.md(score_table(scores, config.min_score)),
            "lowest_rated": lowest_rated(written, pending),
            "failures": markdown_preview(
                written.filter(~pl.col("status").is_in(NOT_FAILED)).select("status", "error"), rows=10, max_chars=200
            ),
        },
        data_version=dg.DataVersion(
            content_hash(*(f"{q}:{v}" for q, v in written.select("question_id", "verdict").iter_rows()))
        ),
        check_results=check_results(written, config),
    )
