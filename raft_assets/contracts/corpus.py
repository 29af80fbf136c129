"""The corpus over every source: one row per distinct chunk text, with every document, source and URI holding it.

Each source's `chunks` file already merges repeats within the source; here the same text under several sources
(a site crawled, and also exported to a folder) becomes one chunk as well. Its canonical document is again the
smallest doc_id among its holders, whatever the order of the sources: the split, the RAFT records, the eval set
and retrieval all name that document, so a text belongs to exactly one split however many sources hold it.
"""

from __future__ import annotations

import polars as pl

from raft_assets.contracts.layout import Layout, MissingInput
from raft_assets.contracts.tables import read_all_partitions


def read_corpus(layout: Layout, sources: list[str]) -> pl.DataFrame:
    """Every distinct chunk of the given sources' `chunks` files, sorted by chunk_id.

    Columns: `chunk_id`, `text`; its canonical document's `doc_id`, `source`, `title` and `uri`; and every
    holder's: `doc_ids`, `sources`, `uris`. Raises MissingInput when no source has a `chunks` file (or one from before `doc_ids`); titles and
    URIs are empty where a source has no `documents` file.
    """
    occurrences = _chunks(layout, sources).rename({"doc_ids": "holder"}).explode("holder")
    documents = _documents(layout, sources).rename({"doc_id": "holder"})
    occurrences = occurrences.join(documents, on="holder", how="left").sort("holder")
    return (
        occurrences.group_by("chunk_id")
        .agg(
            pl.col("holder").first().alias("doc_id"),  # the smallest: the rows are sorted by holder
            pl.col("source").first(),
            pl.col("title").first().fill_null(""),
            pl.col("uri").first().fill_null(""),
            pl.col("text").first(),
            pl.col("holder").unique().sort().alias("doc_ids"),
            pl.col("source").unique().sort().alias("sources"),
            pl.col("uri").drop_nulls().unique().sort().alias("uris"),
        )
        .sort("chunk_id")
    )


def _chunks(layout: Layout, sources: list[str]) -> pl.DataFrame:
    try:
        return read_all_partitions(layout, "chunks", sources, ["chunk_id", "source", "text", "doc_ids"])
    except pl.exceptions.ColumnNotFoundError:
        raise MissingInput(
            "A chunks file was written by an earlier version, without `doc_ids`: materialize chunks again "
            "(it sends no LLM request: the chunk ids stay the same)."
        ) from None


def _documents(layout: Layout, sources: list[str]) -> pl.DataFrame:
    files = [path for path in (layout.stage_file("documents", s) for s in sources) if path.is_file()]
    if not files:
        return pl.DataFrame(schema={"doc_id": pl.String, "title": pl.String, "uri": pl.String})
    return pl.concat([pl.read_parquet(path, columns=["doc_id", "title", "uri"]) for path in files]).unique("doc_id")
