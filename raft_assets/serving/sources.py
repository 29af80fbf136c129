"""Where an answer comes from: the retrieved documents it was given, and which of its quotes came from which one.

Shared by the service (the `sources` field) and `raft-assets chat` (its "Sources" list). A quote is attributed to
the best-ranked retrieved chunk that contains it, comparing as the dataset's quote check does (case and runs of
whitespace ignored).
"""

from __future__ import annotations

from typing import Any

from raft_assets.contracts.raft_format import REFUSAL_ANSWER, final_answer, normalized, quoted_spans
from raft_assets.retrieval.retriever import RetrievedChunk


def quoting_chunk(span: str, chunks: list[RetrievedChunk]) -> RetrievedChunk | None:
    """The first (best-ranked) retrieved chunk containing the quote, ignoring case and whitespace."""
    wanted = normalized(span)
    return next((chunk for chunk in chunks if wanted and wanted in normalized(chunk.text)), None)


def answer_sources(answer: str, chunks: list[RetrievedChunk]) -> dict[str, Any]:
    """The `sources` of an answer: each document given (rank, title, uri, source, score) with the quotes found in it,
    and the quotes found in none (`unattributed_quotes`: the model did not copy them from its documents)."""
    quotes: dict[str, list[str]] = {chunk.chunk_id: [] for chunk in chunks}
    unattributed = []
    for span in quoted_spans(answer):
        chunk = quoting_chunk(span, chunks)
        (quotes[chunk.chunk_id] if chunk else unattributed).append(span)
    documents = [
        {
            "rank": rank,
            "title": chunk.title,
            "uri": chunk.uri,
            "source": chunk.source,
            "chunk_id": chunk.chunk_id,
            "score": round(chunk.score, 4),
            "quotes": quotes[chunk.chunk_id],
        }
        for rank, chunk in enumerate(chunks, 1)
    ]
    return {"documents": documents, "unattributed_quotes": unattributed}


def is_refusal(answer: str) -> bool:
    """True when the final answer is the refusal the RAFT data teaches (no document answers the question)."""
    final = final_answer(answer)
    return final is not None and normalized(final) == normalized(REFUSAL_ANSWER)
