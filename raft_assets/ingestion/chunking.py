"""Splitting documents into chunks with the reference recipe's splitter and rules.

A chunk's identity is its text (`chunk_id` is its hash): a text that several documents of a source hold —
a page exported twice, a paragraph pasted into two pages — is one chunk, and `doc_ids` keeps every document
it came from. `doc_id` is the smallest of them, so the choice does not depend on the order of the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from langchain_text_splitters import RecursiveCharacterTextSplitter

from raft_assets.contracts.tables import CHUNK_SCHEMA
from raft_assets.hashing import content_hash

# The reference's separators: its page separator line, paragraphs, lines, words.
SEPARATORS = ["----------", "\n\n", "\n", " "]


@dataclass(frozen=True)
class ChunkingResult:
    chunks: pl.DataFrame
    dropped_short: int
    merged_duplicates: int  # occurrences of a text that another document (or place) already holds


def split_documents(documents: pl.DataFrame, chunk_size: int, chunk_overlap: int, min_chars: int) -> ChunkingResult:
    """Chunks of the documents without an error, in the order their texts first appear.

    Chunks of `min_chars` characters or fewer are dropped; every repeat of a text is merged into the one
    chunk of that text (its document added to `doc_ids`). `position` is the chunk's index in `doc_id`.
    """
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, separators=SEPARATORS, length_function=len
    )
    occurrences: list[tuple[str, str, str, int, str]] = []  # every kept chunk of every document, repeats included
    dropped_short = 0
    for doc in documents.filter(pl.col("error").is_null()).iter_rows(named=True):
        for position, text in enumerate(splitter.split_text(doc["text"])):
            if len(text) <= min_chars:
                dropped_short += 1
                continue
            occurrences.append((content_hash(text), doc["doc_id"], doc["source"], position, text))
    schema = {name: dtype for name, dtype in CHUNK_SCHEMA.items() if name != "doc_ids"}
    found = pl.DataFrame(occurrences, schema=schema, orient="row")
    first_holder = pl.col("doc_id", "source", "position").sort_by("doc_id", "position").first()
    frame = (
        found.group_by("chunk_id", maintain_order=True)
        .agg(first_holder, pl.col("text").first(), pl.col("doc_id").unique().sort().alias("doc_ids"))
        .select(list(CHUNK_SCHEMA))
    )
    return ChunkingResult(frame, dropped_short, found.height - frame.height)
