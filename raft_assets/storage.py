"""Parquet files of the assets, and the metadata that shows them in the Dagster UI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from raft_assets.ingestion.sources import SOURCE_NAME_PATTERN, is_valid_source_name


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write atomically: a reader never sees a half-written file, a crash leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    frame.write_parquet(partial)
    os.replace(partial, path)


def read_parquet(path: Path, asset: str) -> pl.DataFrame:
    if not path.is_file():
        raise dg.Failure(f"{path} does not exist: materialize {asset!r} for this partition first.")
    return pl.read_parquet(path)


def partition_file(data_dir: str | Path, stage: str, source: str, suffix: str = ".parquet") -> Path:
    """`<data_dir>/<stage>/<source><suffix>`: the file of one partition of a stage.

    `source` is usually a partition key, which anyone can add in the UI: a name that the sources file would
    refuse (`../x`, `a/b`, ...) never becomes a path, so no file outside `data_dir` is read or written.
    """
    if not is_valid_source_name(source):
        raise dg.Failure(
            f"Source name {source!r} is not a valid source name (pattern {SOURCE_NAME_PATTERN}): "
            "it is never used as a file name. Remove that partition of doc_sources."
        )
    return Path(data_dir) / stage / f"{source}{suffix}"


def read_all_partitions(
    data_dir: str | Path, stage: str, partition_keys: list[str], columns: list[str] | None = None
) -> pl.DataFrame:
    """One stage's rows over the given source partitions (those materialized; the others are absent)."""
    files = [partition_file(data_dir, stage, key) for key in partition_keys]
    existing = [path for path in files if path.is_file()]
    if not existing:
        raise dg.Failure(
            f"No {stage} file for any source ({', '.join(partition_keys) or 'no sources'}): materialize {stage!r} first."
        )
    return pl.concat([pl.read_parquet(path, columns=columns) for path in existing], how="vertical")


def most_common_errors(failed: pl.DataFrame, limit: int = 3, max_chars: int = 160) -> str:
    """The most frequent errors of the `error` column, with their counts: what a failure-rate check quotes.

    Errors are counted by their text up to a "; ", after which a row's error may give its own details
    ("no usable reply in 3 attempts; last: ...").
    """
    counts = (
        failed.filter(pl.col("error").is_not_null())
        .select(pl.col("error").str.split("; ").list.first())
        .group_by("error")
        .len()
        .sort(["len", "error"], descending=[True, False])
        .head(limit)
    )
    return "; ".join(
        f"{count} × {error if len(error) <= max_chars else error[: max_chars - 1] + '…'}"
        for error, count in counts.iter_rows()
    )


def column_schema(schema: Mapping[str, Any], descriptions: Mapping[str, str]) -> dg.TableSchema:
    """A table's columns with their polars types and what they mean, as the Dagster UI shows them."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype), description=descriptions.get(name)) for name, dtype in schema.items()]
    )


def file_link(path: Path) -> dict[str, Any]:
    """Where an asset's file or folder is: a copyable path, and its URI under Dagster's standard key."""
    resolved = path.resolve()
    return {"path": dg.MetadataValue.path(str(resolved)), "dagster/uri": resolved.as_uri()}


def table_metadata(frame: pl.DataFrame, path: Path, descriptions: Mapping[str, str]) -> dict[str, Any]:
    """Row count, column schema and the file, under Dagster's standard metadata keys."""
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": column_schema(frame.schema, descriptions),
        **file_link(path),
    }


def markdown_preview(frame: pl.DataFrame, rows: int = 5, max_chars: int = 80) -> dg.MarkdownMetadataValue:
    """The first rows as a markdown table, long strings cut to `max_chars`."""
    flat = frame.head(rows).with_columns(
        pl.col(pl.String).str.replace_all("\n", " ", literal=True).str.replace_all("|", "\\|", literal=True)
    )
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        fmt_str_lengths=max_chars,
        tbl_rows=rows,
        tbl_width_chars=10_000,
    ):
        return dg.MetadataValue.md(str(flat))
