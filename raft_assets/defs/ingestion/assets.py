"""The per-source ingestion assets: `documents` and `chunks`."""

import dataclasses

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.contracts.sources import LocalSource
from raft_assets.contracts.tables import (
    CHUNK_COLUMNS,
    CHUNK_SCHEMA,
    DOCUMENT_COLUMNS,
    DOCUMENT_SCHEMA,
    read_parquet,
    write_parquet,
)
from raft_assets.defs.launchpad import config_class
from raft_assets.defs.metadata import column_schema, failure_rate_result, markdown_preview, table_metadata
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import ProjectPaths
from raft_assets.hashing import content_hash
from raft_assets.ingestion.chunking import SEPARATORS, ChunkingOptions, split_documents
from raft_assets.ingestion.documents import load_source
from raft_assets.ingestion.local_files import folder_fingerprint

# Metadata of a local source's `documents` materialization: the folder as it was read (`folder_fingerprint`).
FILES_FINGERPRINT = "files_fingerprint"


class DocumentsConfig(dg.Config):
    max_failure_rate: float = Field(
        default=0.25, ge=0, le=1, description="Largest share of unreadable documents that still passes the check."
    )


ChunksConfig = config_class("ChunksConfig", ChunkingOptions)


def no_documents_reason(source: str, failed: pl.DataFrame) -> str:
    """Why a source has no document: the first errors, or that it lists nothing."""
    if failed.is_empty():
        return f"Source {source!r} has no document: its folder or sitemap lists nothing to read."
    examples = "; ".join(f"{row['uri']}: {row['error']}" for row in failed.head(2).iter_rows(named=True))
    more = f" (and {failed.height - 2} more)" if failed.height > 2 else ""
    return f"No document of source {source!r} could be loaded: {examples}{more}."


@dg.asset(
    partitions_def=doc_sources,
    group_name="ingestion",
    kinds={"python", "parquet"},
    metadata={"dagster/column_schema": column_schema(DOCUMENT_SCHEMA, DOCUMENT_COLUMNS)},
    check_specs=[
        dg.AssetCheckSpec(
            "has_documents", asset="documents", blocking=True, description="At least one document loaded."
        ),
        dg.AssetCheckSpec(
            "failure_rate_within_bound",
            asset="documents",
            blocking=True,
            description="The share of unreadable documents is at most `max_failure_rate`.",
        ),
    ],
)
def documents(context: dg.AssetExecutionContext, config: DocumentsConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """The text of every file or page of a source; one that cannot be read is a row with its `error`."""
    spec = paths.source(context.partition_key)
    fingerprint = folder_fingerprint(spec) if isinstance(spec, LocalSource) else None  # before reading: see sensors
    load = load_source(spec)
    frame = load.documents
    path = paths.stage_file("documents", spec.name)
    write_parquet(frame, path)

    failed = frame.filter(pl.col("error").is_not_null())
    loaded = frame.height - failed.height
    failure_rate = failed.height / frame.height if frame.height else 1.0
    context.log.info(f"{spec.name}: {loaded} documents loaded, {failed.height} failed")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(frame, path, DOCUMENT_COLUMNS),
            "kind": spec.kind,
            "html_extraction": spec.html_extraction,
            **({FILES_FINGERPRINT: fingerprint} if fingerprint else {}),
            "loaded": loaded,
            "failed": failed.height,
            "failure_rate": failure_rate,
            "characters": int(frame["text"].str.len_chars().sum()),
            **{f"not_fetched_{reason}": count for reason, count in load.not_fetched.items()},
            "preview": markdown_preview(frame.filter(pl.col("error").is_null()).select("title", "uri", "text")),
            "errors": markdown_preview(failed.select("uri", "error"), rows=20, max_chars=200),
        },
        data_version=dg.DataVersion(content_hash(*frame["doc_id"], *frame["content_hash"].fill_null(""))),
        check_results=[
            dg.AssetCheckResult(
                check_name="has_documents",
                passed=loaded > 0,
                metadata={"loaded": loaded},
                description=None if loaded else no_documents_reason(spec.name, failed),
            ),
            failure_rate_result(
                failed.height, frame.height, "documents", config.max_failure_rate, failed, empty_rate=1.0
            ),
        ],
    )


@dg.asset(
    partitions_def=doc_sources,
    group_name="ingestion",
    kinds={"python", "parquet"},
    deps=[documents],
    metadata={"dagster/column_schema": column_schema(CHUNK_SCHEMA, CHUNK_COLUMNS)},
)
def chunks(context: dg.AssetExecutionContext, config: ChunksConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """Documents split with `RecursiveCharacterTextSplitter`; short chunks dropped, repeated texts, boilerplate
    paragraphs and near-duplicate chunks kept once with every document that holds them."""
    try:
        options = ChunkingOptions(**config.model_dump())
    except ValueError as error:
        raise dg.Failure(str(error)) from None
    source = context.partition_key
    documents_frame = read_parquet(paths.stage_file("documents", source), "documents")
    result = split_documents(documents_frame, options)
    frame = result.chunks
    path = paths.stage_file("chunks", source)
    write_parquet(frame, path)

    lengths = frame["text"].str.len_chars()
    context.log.info(
        f"{source}: {frame.height} chunks from {frame['doc_id'].n_unique()} documents; "
        f"{result.boilerplate_paragraphs} boilerplate paragraphs and {result.merged_near_duplicates} near-duplicate "
        "chunks kept once"
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(frame, path, CHUNK_COLUMNS),
            "documents_chunked": frame["doc_id"].n_unique(),
            "dropped_short": result.dropped_short,
            "merged_duplicates": result.merged_duplicates,
            "boilerplate_paragraphs": result.boilerplate_paragraphs,
            "merged_near_duplicates": result.merged_near_duplicates,
            "chunks_in_several_documents": int((frame["doc_ids"].list.len() > 1).sum()),
            "mean_chunk_chars": float(lengths.mean() or 0.0),
            "max_chunk_chars": int(lengths.max() or 0),
            **dataclasses.asdict(options),  # every setting: a recipe with its own chunking starts from them
            "separators": repr(SEPARATORS),
            "preview": markdown_preview(frame.select("chunk_id", "position", "text")),
            "near_duplicate_examples": markdown_preview(result.examples(), rows=10),
        },
        data_version=dg.DataVersion(content_hash(*frame["chunk_id"])),
    )
