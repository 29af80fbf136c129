"""The corpus over every source: one row per distinct chunk text, with every document, source and URI holding it.

Each source's `chunks` file already merges repeats within the source; here the same text under several sources
(a site crawled, and also exported to a folder) becomes one chunk as well. Its canonical document is again the
smallest doc_id among its holders, whatever the order of the sources: the split, the RAFT records, the eval set
and retrieval all name that document, so a text belongs to exactly one split however many sources hold it.

A recipe with its own chunking keeps its corpus in one file of these columns (`corpus_of`, written by its
`raft_dataset`), which `read_corpus` reads for its layout.
"""

from __future__ import annotations

import polars as pl

from raft_assets.contracts.layout import Layout, MissingInput
from raft_assets.contracts.tables import read_all_partitions


def read_corpus(layout: Layout, sources: list[str]) -> pl.DataFrame:
    """Every distinct chunk of the given sources' `chunks` files, sorted by chunk_id; for a layout with its own
    chunking, the chunks of its corpus file (`Layout.own_corpus_file`) that the given sources hold.

    Columns: `chunk_id`, `text`; its canonical document's `doc_id`, `source`, `title` and `uri`; and every
    holder's: `doc_ids`, `sources`, `uris`. Raises MissingInput when no source has a `chunks` file (or one from
    before `doc_ids`), or the recipe has no corpus file yet; titles and URIs are empty where a source has no
    `documents` file.
    """
    if layout.own_chunking:
        return _own_corpus(layout, sources)
    return corpus_of(_chunks(layout, sources), read_documents(layout, sources))


def corpus_of(chunks: pl.DataFrame, documents: pl.DataFrame) -> pl.DataFrame:
    """The corpus (columns of `read_corpus`) of `chunks` rows (`chunk_id`, `source`, `text`, `doc_ids`, of any
    sources) and the `documents` (`doc_id`, `title`, `uri`) that hold them."""
    occurrences = chunks.select("chunk_id", "source", "text", "doc_ids").rename({"doc_ids": "holder"})
    occurrences = occurrences.explode("holder").join(documents.rename({"doc_id": "holder"}), on="holder", how="left")
    return (
        occurrences.sort("holder")
        .group_by("chunk_id")
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


def _own_corpus(layout: Layout, sources: list[str]) -> pl.DataFrame:
    path = layout.own_corpus_file
    if not path.is_file():
        raise MissingInput(
            f"No corpus of recipe {layout.recipe!r} at {path}: materialize raft_dataset[{layout.recipe}]."
        )
    return pl.read_parquet(path).filter(pl.col("sources").list.eval(pl.element().is_in(sources)).list.any())


def _chunks(layout: Layout, sources: list[str]) -> pl.DataFrame:
    try:
        return read_all_partitions(layout, "chunks", sources, ["chunk_id", "source", "text", "doc_ids"])
    except pl.exceptions.ColumnNotFoundError:
        raise MissingInput(
            "A chunks file was written by an earlier version, without `doc_ids`: materialize chunks again "
            "(it sends no LLM request: the chunk ids stay the same)."
        ) from None


def read_documents(layout: Layout, sources: list[str]) -> pl.DataFrame:
    """`doc_id`, `title` and `uri` of the given sources' documents (none where a source has no `documents` file)."""
    files = [path for path in (layout.stage_file("documents", s) for s in sources) if path.is_file()]
    if not files:
        return pl.DataFrame(schema={"doc_id": pl.String, "title": pl.String, "uri": pl.String})
    return pl.concat([pl.read_parquet(path, columns=["doc_id", "title", "uri"]) for path in files]).unique("doc_id")
