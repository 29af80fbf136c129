"""Building a chunk index over a corpus: the embeddings at hand reused, only the other chunks embedded.

Embeddings at hand are those of earlier indexes of the same model (the previous index in the same folder; for a
recipe with its own chunking, the shared index too) and those of the embedding cache. The others are embedded
slice by slice, each slice added to the cache as it is done, so that a killed build resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from raft_assets.contracts.layout import Layout
from raft_assets.retrieval.embedding_cache import EmbeddingCache
from raft_assets.retrieval.embeddings import Embedder
from raft_assets.retrieval.index import ChunkIndex

EMBED_SLICE = 1024
"""Chunks embedded between two progress messages (and two writes to the embedding cache)."""


class Log(Protocol):
    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


@dataclass(frozen=True)
class BuiltIndex:
    index: ChunkIndex
    reused: int  # chunks whose embedding an earlier index had
    from_cache: int  # chunks whose embedding the embedding cache had
    newly_embedded: int  # chunks the model embedded
    embedding_seconds: float  # the model's time on them
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
    indexes: Sequence[ChunkIndex | None], model: str, log: Log
) -> tuple[list[str], np.ndarray | None]:
    """The chunk ids and embeddings of the `indexes` built with `model` (a chunk in several is there more than once:
    the first is used)."""
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    for index in indexes:
        if index is None:
            continue
        if index.model != model:
            log.info(f"The index of {len(index)} chunks was built with {index.model!r}: its embeddings are not reused.")
            continue
        ids += index.chunk_ids
        arrays.append(index.embeddings)
    if len({array.shape[1] for array in arrays}) > 1:
        log.info("The earlier indexes differ in dimension: every chunk is embedded again.")
        return [], None
    return ids, (np.concatenate(arrays) if arrays else None)


def build_index(
    corpus: pl.DataFrame, embedder: Embedder, reusable: tuple[list[str], np.ndarray | None], log: Log
) -> BuiltIndex:
    """The index of the `corpus` (`chunk_id`, `doc_id`, `text`, as `read_corpus` gives it): the `reusable`
    embeddings where they hold a chunk, the others from the `embedder` (its cache, or its model)."""
    chunk_ids = corpus["chunk_id"].to_list()
    pool_ids, pool = reusable
    pool_rows: dict[str, int] = {}
    for row, chunk_id in enumerate(pool_ids):
        pool_rows.setdefault(chunk_id, row)
    rows = np.fromiter((pool_rows.get(chunk_id, -1) for chunk_id in chunk_ids), dtype=np.int64, count=len(chunk_ids))
    new = np.flatnonzero(rows < 0)

    texts = corpus["text"]
    log.info(f"Embedding {len(new)} of {len(chunk_ids)} chunks with {embedder.name}")
    parts = []
    for start in range(0, len(new), EMBED_SLICE):
        parts.append(embedder.embed(texts.gather(new[start : start + EMBED_SLICE]).to_list()))
        done = start + len(parts[-1])
        log.info(f"Embedded {done}/{len(new)} chunks ({embedder.computed} by the model, the others from its cache)")
    if pool is not None and parts and parts[0].shape[1] != pool.shape[1]:
        log.info(f"The earlier indexes have {pool.shape[1]} dimensions, the model {parts[0].shape[1]}.")
        return build_index(corpus, embedder, ([], None), log)

    dimension = pool.shape[1] if pool is not None else parts[0].shape[1] if parts else embedder.dimension
    embeddings = np.empty((len(chunk_ids), dimension), dtype=np.float32)
    reused = rows >= 0
    if pool is not None:
        embeddings[reused] = pool[rows[reused]]
    if parts:
        embeddings[new] = np.concatenate(parts)
    index = ChunkIndex(chunk_ids, embeddings, embedder.name, corpus["doc_id"].to_list())
    return BuiltIndex(index, int(reused.sum()), len(new) - embedder.computed, embedder.computed, embedder.seconds)


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
    `reuse_first`, then of the folder's previous index, then of the layout's embedding cache."""
    previous = previous_index(layout.index_folder, log)
    reusable = reusable_embeddings([*reuse_first, previous], model_name, log)
    with closing(EmbeddingCache(layout.embedding_cache_file)) as cache:
        built = build_index(corpus, Embedder(model_name, cache, device, batch_size), reusable, log)
    built.index.save(layout.index_folder)
    dropped = len(set(previous.chunk_ids) - set(built.index.chunk_ids)) if previous else 0
    return replace(built, dropped=dropped)
