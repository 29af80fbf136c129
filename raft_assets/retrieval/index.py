"""The chunk index: normalised embeddings of chunks with their ids, saved atomically, searched exactly with FAISS.

A saved index is a folder:

- `embeddings.npy`: the (n, d) float32 L2-normalised embeddings, row i for chunk i;
- `chunks.parquet`: `chunk_id` and `doc_id` of each row, in row order;
- `index.faiss`: a FAISS `IndexFlatIP` over the embeddings (inner product = cosine; exact search);
- `index.json`: the model, dimension, count and data version; written last, it marks a complete index.

`save` writes a new folder next to the old one and swaps them, so a crash leaves either the old index or
the new one, never a mix; `load` finishes a swap that a crash interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from raft_assets.files import recover_dir, replace_dir, staging_dir
from raft_assets.hashing import content_hash

FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
CHUNKS_FILE = "chunks.parquet"
FAISS_FILE = "index.faiss"
MANIFEST_FILE = "index.json"

SEARCH_BATCH = 1024
"""Queries per FAISS search call: large enough for BLAS, small enough to bound the (batch, n) score matrix."""


def _codes(values: Sequence[str]) -> np.ndarray:
    """Small integer codes of the values, equal where the values are equal."""
    seen: dict[str, int] = {}
    return np.fromiter((seen.setdefault(value, len(seen)) for value in values), dtype=np.int64, count=len(values))


@dataclass(eq=False)
class ChunkIndex:
    """Chunk embeddings (rows L2-normalised, float32) with their chunk ids, doc ids and model name."""

    chunk_ids: list[str]
    embeddings: np.ndarray
    model: str
    doc_ids: list[str] | None = None
    _faiss: faiss.Index | None = field(default=None, repr=False)
    _doc_codes: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.chunk_ids = list(self.chunk_ids)
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array, not of shape {self.embeddings.shape}.")
        if self.embeddings.shape[0] != len(self.chunk_ids):
            raise ValueError(f"{len(self.chunk_ids)} chunk ids for {self.embeddings.shape[0]} embeddings.")
        if self.doc_ids is not None:
            self.doc_ids = list(self.doc_ids)
            if len(self.doc_ids) != len(self.chunk_ids):
                raise ValueError(f"{len(self.doc_ids)} doc ids for {len(self.chunk_ids)} chunk ids.")
        self._positions = {chunk_id: row for row, chunk_id in enumerate(self.chunk_ids)}
        if len(self._positions) != len(self.chunk_ids):
            raise ValueError("chunk ids must be unique.")
        norms = np.linalg.norm(self.embeddings, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-2):
            raise ValueError("embeddings must be L2-normalised (every row of norm 1).")

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def data_version(self) -> str:
        """A hash of the model and the sorted chunk ids: equal for indexes of the same chunks and model."""
        return content_hash(self.model, *sorted(self.chunk_ids))

    @property
    def faiss_index(self) -> faiss.Index:
        """An exact inner-product FAISS index over the embeddings (built on first use, or read by `load`)."""
        if self._faiss is None:
            index = faiss.IndexFlatIP(self.dimension)
            index.add(self.embeddings)
            self._faiss = index
        return self._faiss

    def position(self, chunk_id: str) -> int:
        try:
            return self._positions[chunk_id]
        except KeyError:
            raise KeyError(f"chunk {chunk_id!r} is not in the index") from None

    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search in batches of SEARCH_BATCH queries: (scores, row labels, -1 where none)."""
        scores = np.empty((len(queries), k), dtype=np.float32)
        labels = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), SEARCH_BATCH):
            stop = start + SEARCH_BATCH
            scores[start:stop], labels[start:stop] = self.faiss_index.search(queries[start:stop], k)
        return scores, labels

    def _as_queries(self, query_vectors: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(query_vectors), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query vectors must have {self.dimension} dimensions, not shape {queries.shape}.")
        return queries

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """The k chunks of highest cosine to each query (normalise the queries): (scores (m, k), chunk ids).

        With fewer than k chunks in the index, every row has them all (the scores array is that much narrower).
        """
        queries = self._as_queries(query_vectors)
        k = min(k, len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), dtype=np.float32), [[] for _ in range(len(queries))]
        scores, labels = self._search_rows(queries, k)
        ids = self.chunk_ids
        return scores, [[ids[label] for label in row if label >= 0] for row in labels.tolist()]

    def _document_codes(self, doc_ids_of_chunks: Mapping[str, str] | None) -> np.ndarray:
        if doc_ids_of_chunks is None:
            if self.doc_ids is None:
                raise ValueError("This index has no doc ids: pass doc_ids_of_chunks.")
            if self._doc_codes is None:
                self._doc_codes = _codes(self.doc_ids)
            return self._doc_codes
        own = self.doc_ids or [None] * len(self)
        docs = [doc_ids_of_chunks.get(chunk_id, doc) for chunk_id, doc in zip(self.chunk_ids, own, strict=True)]
        unknown = [chunk_id for chunk_id, doc in zip(self.chunk_ids, docs, strict=True) if doc is None]
        if unknown:
            raise ValueError(f"No doc id for {len(unknown)} chunks of the index, e.g. {unknown[0]!r}.")
        return _codes(docs)

    def nearest_other_documents(
        self,
        chunk_ids: Sequence[str],
        k: int,
        doc_ids_of_chunks: Mapping[str, str] | None = None,
        margin: int = 32,
    ) -> dict[str, list[str]]:
        """For each given chunk of the index, its k nearest chunks of other documents, nearest first.

        The doc ids are the index's own, or `doc_ids_of_chunks` where it has one. Each chunk is searched with
        k + `margin` neighbours first; a chunk with too few of other documents among them (its own document
        crowds them out) is searched again as widely as its document's size requires, so fewer than k come
        back only when the index has fewer than k chunks of other documents. Unknown chunk ids raise KeyError.
        """
        queries = list(dict.fromkeys(chunk_ids))
        result: dict[str, list[str]] = {}
        if not queries:
            return result
        rows = np.fromiter((self.position(chunk_id) for chunk_id in queries), dtype=np.int64, count=len(queries))
        if k <= 0:
            return {chunk_id: [] for chunk_id in queries}
        docs = self._document_codes(doc_ids_of_chunks)
        doc_sizes = np.bincount(docs)
        n = len(self)
        ids = self.chunk_ids
        for start in range(0, len(rows), SEARCH_BATCH):
            pending = rows[start : start + SEARCH_BATCH]
            width = min(n, k + margin)
            while len(pending):
                _, labels = self._search_rows(self.embeddings[pending], width)
                own_docs = docs[pending]
                other = (labels >= 0) & (docs[np.maximum(labels, 0)] != own_docs[:, None])
                found = other.sum(axis=1)
                done = (found >= np.minimum(k, n - doc_sizes[own_docs])) | (width >= n)
                keep = other & (np.cumsum(other, axis=1) <= k)
                for row, row_labels, row_keep in zip(pending[done], labels[done], keep[done], strict=True):
                    result[ids[row]] = [ids[label] for label in row_labels[row_keep].tolist()]
                pending = pending[~done]
                if len(pending):
                    # Own-document chunks fill at most doc_size places: this width is always enough.
                    width = min(n, max(width * 2, k + int(doc_sizes[docs[pending]].max())))
        return {chunk_id: result[chunk_id] for chunk_id in queries}

    # -- files ---------------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the index to `folder` atomically (replacing an index there); returns the folder."""
        folder = Path(folder)
        staging = staging_dir(folder, "saving")
        staging.mkdir(parents=True)
        np.save(staging / EMBEDDINGS_FILE, self.embeddings, allow_pickle=False)
        pl.DataFrame(
            {"chunk_id": self.chunk_ids, "doc_id": self.doc_ids if self.doc_ids is not None else [None] * len(self)},
            schema={"chunk_id": pl.String, "doc_id": pl.String},
        ).write_parquet(staging / CHUNKS_FILE)
        faiss.write_index(self.faiss_index, str(staging / FAISS_FILE))
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "dimension": self.dimension,
            "count": len(self),
            "metric": "inner_product",
            "normalized": True,
            "faiss_index": type(self.faiss_index).__name__,
            "data_version": self.data_version,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        replace_dir(staging, folder)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], read_faiss: bool = True) -> ChunkIndex:
        """The index saved in `folder`; with `read_faiss=False` the FAISS index is rebuilt when first needed."""
        folder = Path(folder)
        recover_dir(folder)
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"No chunk index in {folder}: materialize 'retrieval_index' first.")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder} holds an index of format {manifest.get('format_version')!r}, "
                f"not {FORMAT_VERSION}: rebuild it."
            )
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        chunks = pl.read_parquet(folder / CHUNKS_FILE)
        doc_ids = chunks["doc_id"]
        index = cls(
            chunk_ids=chunks["chunk_id"].to_list(),
            embeddings=embeddings,
            model=manifest["model"],
            doc_ids=None if doc_ids.null_count() == len(doc_ids) and len(doc_ids) else doc_ids.to_list(),
        )
        if index.dimension != manifest["dimension"] or len(index) != manifest["count"]:
            raise ValueError(f"{folder} is inconsistent: {index.embeddings.shape} embeddings, manifest {manifest}.")
        if read_faiss:
            faiss_index = faiss.read_index(str(folder / FAISS_FILE))
            if faiss_index.ntotal != len(index) or faiss_index.d != index.dimension:
                raise ValueError(f"{folder / FAISS_FILE} does not match the embeddings of {folder}.")
            index._faiss = faiss_index
        return index
