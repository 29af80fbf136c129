"""Building a chunk index over a corpus: the embeddings at hand reused, only the other chunks embedded.

Embeddings at hand are those of earlier indexes of the same model (the previous index in the same folder; for a
recipe with its own chunking, the shared index too) and those an interrupted build left pending. The new ones are
embedded slice by slice, each slice saved as pending, so that a killed build resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from raft_assets.contracts.layout import Layout
from raft_assets.retrieval.embeddings import embed, embedding_dimension, load_embedder
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.retrieval.pending import PendingEmbeddings

EMBED_SLICE = 1024
"""Chunks embedded between two progress messages and two saves of the pending embeddings."""


class Log(Protocol):
    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


@dataclass(frozen=True)
class BuiltIndex:
    index: ChunkIndex
    newly_embedded: int
    embedding_seconds: float
    dropped: int = 0  # chunks of the previous index in the folder that the new one no longer holds


def previous_index(folder: Path, log: Log) -> ChunkIndex | None:
    """The index saved in `folder` (without its FAISS file), or None when there is none or it cannot be read."""
    try:
        return ChunkIndex.load(folder, read_faiss=False)
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged index is rebuilt, not a reason to fail
        log.warning(f"The previous index in {folder} cannot be read ({error}); its chunks are embedded again.")
        return None


def reusable_embeddings(
    indexes: Sequence[ChunkIndex | None], pending: PendingEmbeddings, log: Log
) -> tuple[list[str], np.ndarray | None]:
    """The chunk ids and embeddings of the `indexes` built with the pending embeddings' model, and of the pending
    embeddings (a chunk in several is there more than once: the first is used)."""
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    for index in indexes:
        if index is None:
            continue
        if index.model != pending.model:
            log.info(f"The index of {len(index)} chunks was built with {index.model!r}: its embeddings are not reused.")
            continue
        ids += index.chunk_ids
        arrays.append(index.embeddings)
    pending_ids, pending_vectors = pending.load()
    if pending_vectors is not None:
        log.info(f"Reusing {len(pending_ids)} embeddings left by an interrupted run.")
        ids += pending_ids
        arrays.append(pending_vectors)
    if arrays and len({array.shape[1] for array in arrays}) > 1:
        log.info("The embeddings at hand differ in dimension: every chunk is embedded again.")
        return [], None
    return ids, (np.concatenate(arrays) if arrays else None)


def build_index(
    corpus: pl.DataFrame,
    model_name: str,
    reusable: tuple[list[str], np.ndarray | None],
    pending: PendingEmbeddings,
    log: Log,
    batch_size: int = 64,
    device: str | None = None,
) -> BuiltIndex:
    """The index of the `corpus` (`chunk_id`, `doc_id`, `text`, as `read_corpus` gives it) with `model_name`: the
    `reusable` embeddings where they hold a chunk, the others embedded (the model is loaded only then)."""
    chunk_ids = corpus["chunk_id"].to_list()
    pool_ids, pool = reusable
    pool_rows: dict[str, int] = {}
    for row, chunk_id in enumerate(pool_ids):
        pool_rows.setdefault(chunk_id, row)
    rows = np.fromiter((pool_rows.get(chunk_id, -1) for chunk_id in chunk_ids), dtype=np.int64, count=len(chunk_ids))
    new = np.flatnonzero(rows < 0)

    model = None
    if len(new) or pool is None:
        model = load_embedder(model_name, device)
        dimension = embedding_dimension(model)
        if pool is not None and pool.shape[1] != dimension:
            log.info(f"The embeddings at hand have {pool.shape[1]} dimensions, the model {dimension}.")
            pool, rows, new = None, np.full(len(chunk_ids), -1), np.arange(len(chunk_ids))
    else:
        dimension = pool.shape[1]
    embeddings = np.empty((len(chunk_ids), dimension), dtype=np.float32)
    reused = rows >= 0
    if pool is not None:
        embeddings[reused] = pool[rows[reused]]

    texts = corpus["text"]
    embedding_seconds = 0.0
    log.info(f"Embedding {len(new)} of {len(chunk_ids)} chunks with {model_name}")
    for start in range(0, len(new), EMBED_SLICE):
        part = new[start : start + EMBED_SLICE]
        slice_started = time.perf_counter()
        vectors = embed(model, texts.gather(part).to_list(), batch_size)
        embedding_seconds += time.perf_counter() - slice_started
        embeddings[part] = vectors
        pending.add([chunk_ids[row] for row in part], vectors)
        done = start + len(part)
        log.info(f"Embedded {done}/{len(new)} chunks ({done / embedding_seconds:.1f} chunks/s)")
    index = ChunkIndex(chunk_ids, embeddings, model_name, corpus["doc_id"].to_list())
    return BuiltIndex(index, len(new), embedding_seconds)


def rebuild_index(
    layout: Layout,
    corpus: pl.DataFrame,
    model_name: str,
    log: Log,
    reuse_first: Sequence[ChunkIndex] = (),
    batch_size: int = 64,
    device: str | None = None,
) -> BuiltIndex:
    """The index of `corpus` built into `layout.index_folder` and saved there, reusing the embeddings of
    `reuse_first`, then of the folder's previous index, then those an interrupted build left pending (which are
    cleared once the index is saved)."""
    previous = previous_index(layout.index_folder, log)
    pending = PendingEmbeddings(layout.pending_index_folder, model_name)
    reusable = reusable_embeddings([*reuse_first, previous], pending, log)
    built = build_index(corpus, model_name, reusable, pending, log, batch_size, device)
    built.index.save(layout.index_folder)
    pending.clear()
    dropped = len(set(previous.chunk_ids) - set(built.index.chunk_ids)) if previous else 0
    return replace(built, dropped=dropped)
