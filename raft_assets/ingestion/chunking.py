"""Splitting documents into chunks with the reference recipe's splitter and rules."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from langchain_text_splitters import RecursiveCharacterTextSplitter

from raft_assets.hashing import content_hash

# The reference's separators: its page separator line, paragraphs, lines, words.
SEPARATORS = ["----------", "\n\n", "\n", " "]

CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "source": pl.String,
    "position": pl.Int32,
    "text": pl.String,
}
CHUNK_COLUMNS = {
    "chunk_id": "Hash of the chunk's text.",
    "doc_id": "The document it was cut from.",
    "source": "The source (partition) of that document.",
    "position": "Its place among the document's chunks, from 0.",
    "text": "The chunk: the oracle document of its questions.",
}


@dataclass(frozen=True)
class ChunkingResult:
    chunks: pl.DataFrame
    dropped_short: int
    dropped_duplicate: int


def split_documents(documents: pl.DataFrame, chunk_size: int, chunk_overlap: int, min_chars: int) -> ChunkingResult:
    """Chunks of the documents without an error, in document order.

    Chunks of `min_chars` characters or fewer are dropped, and so is every repeat of a chunk's
    exact text; `chunk_id` is the hash of the text, `position` the chunk's index in its document.
    """
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, separators=SEPARATORS, length_function=len
    )
    rows: list[tuple[str, str, str, int, str]] = []
    seen: set[str] = set()
    dropped_short = dropped_duplicate = 0
    for doc in documents.filter(pl.col("error").is_null()).iter_rows(named=True):
        for position, text in enumerate(splitter.split_text(doc["text"])):
            if len(text) <= min_chars:
                dropped_short += 1
                continue
            chunk_id = content_hash(text)
            if chunk_id in seen:
                dropped_duplicate += 1
                continue
            seen.add(chunk_id)
            rows.append((chunk_id, doc["doc_id"], doc["source"], position, text))
    frame = pl.DataFrame(rows, schema=CHUNK_SCHEMA, orient="row")
    return ChunkingResult(frame, dropped_short, dropped_duplicate)
