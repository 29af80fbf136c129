"""What the Dagster UI shows of an asset's files: column schemas, links, row counts, previews, error summaries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

# Metadata keys that experiment_report reads from the per-recipe assets, to know whether their numbers compare.
CHUNKS_FINGERPRINT = "chunks_fingerprint"  # the chunks raft_dataset was built from, or eval_report's index served
EVAL_SET_VERSION = "eval_set_version"  # the data version of the eval set that eval_report answered


def failure_rate_result(
    failures: int, total: int, what: str, bound: float, failed: pl.DataFrame, empty_rate: float = 0.0
) -> dg.AssetCheckResult:
    """A stage's `failure_rate_within_bound` check: `failures` of `total` items (`what`) failed; it passes at most
    `bound`; the description quotes the most common errors of the `failed` rows. With no item the rate is
    `empty_rate`."""
    rate = failures / total if total else empty_rate
    common = f". Most common: {most_common_errors(failed)}." if failed.height else "."
    return dg.AssetCheckResult(
        check_name="failure_rate_within_bound",
        passed=rate <= bound,
        metadata={"failure_rate": rate, "max_failure_rate": bound},
        description=f"{failures} of {total} {what} failed ({rate:.1%}; the bound is {bound:.0%}){common}",
    )


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


def partition_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict[str, Any] | None:
    """The metadata values of the latest materialization of one partition of `key`; None before the first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}
