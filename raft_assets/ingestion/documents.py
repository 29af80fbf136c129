"""Loading one source into the `documents` table."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from raft_assets.contracts.sources import LocalSource, SourceSpec
from raft_assets.contracts.tables import DOCUMENT_SCHEMA
from raft_assets.hashing import content_hash
from raft_assets.ingestion.loaded import LoadedDocument
from raft_assets.ingestion.local_files import load_folder
from raft_assets.ingestion.sitemap import load_sitemap


@dataclass(frozen=True)
class SourceLoad:
    documents: pl.DataFrame
    not_fetched: dict[str, int] = field(default_factory=dict)  # reason -> count of listed pages skipped


def load_source(spec: SourceSpec) -> SourceLoad:
    if isinstance(spec, LocalSource):
        return SourceLoad(documents_frame(spec.name, load_folder(spec)))
    load = load_sitemap(spec)
    return SourceLoad(
        documents_frame(spec.name, load.documents),
        not_fetched={"off_host": len(load.off_host), "over_max_pages": load.over_limit},
    )


def documents_frame(source: str, loaded: list[LoadedDocument]) -> pl.DataFrame:
    """One row per document, sorted by uri; `doc_id` hashes source and uri, so it is stable across runs."""
    rows = [
        (
            content_hash(source, doc.uri),
            source,
            doc.uri,
            doc.title,
            doc.text,
            None if doc.error else content_hash(doc.text),
            doc.error,
        )
        for doc in loaded
    ]
    return pl.DataFrame(rows, schema=DOCUMENT_SCHEMA, orient="row").sort("uri")
