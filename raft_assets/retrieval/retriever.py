"""Retrieval for evaluation and chat: the top-k chunks of the saved index for each question, with their texts.

The questions are embedded with the model the index was built with (recorded in it), in one batch; the texts,
titles and sources come from the `chunks` and `documents` parquet files of the data folder (`read_corpus`), or from
a recipe's own corpus when its layout has its own chunking (`Layout.of_recipe`). Texts have their
literal `<DOCUMENT>` tags defused, as in the RAFT records, so a retrieved chunk can go straight into a prompt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import without_document_tags
from raft_assets.retrieval.embedding_cache import EmbeddingCache
from raft_assets.retrieval.embeddings import Embedder
from raft_assets.retrieval.index import ChunkIndex


@dataclass(frozen=True)
class RetrievedChunk:
    """A chunk found for a question; `score` is its cosine similarity to the question."""

    chunk_id: str
    doc_id: str
    source: str
    title: str
    text: str
    score: float
    uri: str = ""


def read_chunks(layout: Layout) -> dict[str, RetrievedChunk]:
    """Every chunk of the layout's corpus (the data folder's sources, or a recipe's own) by chunk id, with its
    canonical document's title and uri (score 0).

    Raises MissingInput when no `chunks` file is there.
    """
    return {
        row["chunk_id"]: RetrievedChunk(
            chunk_id=row["chunk_id"],
            doc_id=row["doc_id"],
            source=row["source"],
            title=row["title"],
            text=without_document_tags(row["text"]),
            score=0.0,
            uri=row["uri"],
        )
        for row in read_corpus(layout, layout.stage_sources("chunks")).iter_rows(named=True)
    }


class Retriever:
    """The chunk index, its embedding model and the chunks' texts: `top_k` chunks for a batch of questions."""

    def __init__(self, index: ChunkIndex, chunks: dict[str, RetrievedChunk], embedder: Embedder) -> None:
        missing = [chunk_id for chunk_id in index.chunk_ids if chunk_id not in chunks]
        if missing:
            raise ValueError(
                f"{len(missing)} chunks of the index (e.g. {missing[0]!r}) are not in the chunks files: "
                "the index is older than the chunks; materialize 'retrieval_index' again."
            )
        self.index = index
        self.chunks = chunks
        self.embedder = embedder

    @classmethod
    def load(cls, layout: Layout, device: str | None = None, cache_questions: bool = False) -> Retriever:
        """The layout's saved index (see `ChunkIndex.load`) over the layout's chunks.

        `device` is the embedding model's ("cpu", "cuda"; None: a GPU when there is one). With `cache_questions`,
        the questions' embeddings are read from and added to the layout's embedding cache: for the eval set's
        questions, not for a chatbot's users' (nothing they ask is written to disk).
        """
        index = ChunkIndex.load(layout.index_folder)
        cache = EmbeddingCache(layout.embedding_cache_file) if cache_questions else None
        return cls(index, read_chunks(layout), Embedder(index.model, cache, device))

    def top_k(self, questions: list[str], k: int) -> list[list[RetrievedChunk]]:
        """The k chunks nearest to each question, nearest first (all of them when the index has fewer)."""
        if not questions:
            return []
        scores, ids = self.index.search(self.embedder.embed(questions), k)
        return [
            # strict=False: `search` leaves out the labels FAISS did not fill, never their scores.
            [self._found(chunk_id, score) for chunk_id, score in zip(row, row_scores, strict=False)]
            for row, row_scores in zip(ids, scores.tolist(), strict=True)
        ]

    def _found(self, chunk_id: str, score: float) -> RetrievedChunk:
        return dataclasses.replace(self.chunks[chunk_id], score=float(score))
