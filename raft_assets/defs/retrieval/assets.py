"""The `retrieval_index` asset: embeddings of every chunk of every source, searchable with FAISS."""

import time
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from raft_assets.contracts.corpus import read_corpus
from raft_assets.defs.ingestion.assets import chunks
from raft_assets.defs.metadata import file_link, markdown_preview
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import ProjectPaths
from raft_assets.retrieval.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingModelNotFoundError,
    embed,
    embedding_dimension,
    load_embedder,
    resolve_model_path,
)
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.retrieval.pending import PendingEmbeddings

EMBED_SLICE = 1024
"""Chunks embedded between two progress messages and two saves of the pending embeddings."""


class RetrievalIndexConfig(dg.Config):
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="'all-MiniLM-L6-v2' (packaged, offline), a local sentence-transformers folder, or a model id "
        "already in the Hugging Face cache (nothing is downloaded; the reference uses multi-qa-mpnet-base-cos-v1).",
    )
    batch_size: int = Field(default=64, gt=0, description="Texts per forward pass of the embedding model.")
    device: str | None = Field(
        default=None, description="Device of the embedding model, e.g. 'cpu' or 'cuda'; unset: a GPU if any."
    )


def _reusable(folder: Path, pending: PendingEmbeddings, log) -> tuple[list[str], np.ndarray | None, set[str]]:
    """Embeddings of this model to reuse: the previous index's and those a killed run left pending.

    Also the chunk ids of the previous index (of any model), to count the dropped chunks.
    """
    previous: ChunkIndex | None = None
    try:
        previous = ChunkIndex.load(folder, read_faiss=False)
    except FileNotFoundError:
        pass
    except Exception as error:  # a damaged index is rebuilt, not a reason to fail
        log.warning(f"The previous index in {folder} cannot be read ({error}); every chunk is embedded again.")
    previous_ids = set(previous.chunk_ids) if previous else set()
    if previous is not None and previous.model != pending.model:
        log.info(f"The previous index was built with {previous.model!r}: every chunk is embedded again.")
        previous = None

    ids: list[str] = list(previous.chunk_ids) if previous else []
    vectors = previous.embeddings if previous else None
    pending_ids, pending_vectors = pending.load()
    if pending_vectors is not None and (vectors is None or pending_vectors.shape[1] == vectors.shape[1]):
        log.info(f"Reusing {len(pending_ids)} embeddings left by an interrupted run.")
        ids += pending_ids
        vectors = pending_vectors if vectors is None else np.concatenate([vectors, pending_vectors])
    return ids, vectors, previous_ids


@dg.asset(
    deps=[dg.AssetDep(chunks, partition_mapping=dg.AllPartitionMapping())],
    group_name="retrieval",
    kinds={"faiss", "sentence-transformers"},
)
def retrieval_index(
    context: dg.AssetExecutionContext, config: RetrievalIndexConfig, paths: ProjectPaths
) -> dg.MaterializeResult:
    """Normalised sentence-transformers embeddings of every chunk with an exact FAISS index (`ChunkIndex`).

    Incremental: a chunk already in the previous index of the same model keeps its embedding.
    """
    started = time.perf_counter()
    try:
        resolve_model_path(config.embedding_model)
    except EmbeddingModelNotFoundError as error:
        raise dg.Failure(str(error)) from error

    sources = sorted(context.instance.get_dynamic_partitions(doc_sources.name))
    missing = [source for source in sources if not paths.stage_file("chunks", source).is_file()]
    if missing:
        context.log.warning(f"No chunks yet for sources {', '.join(missing)}: they are not in the index.")
    frame = read_corpus(paths.layout, sources)
    chunk_ids = frame["chunk_id"].to_list()

    folder = paths.layout.index_folder
    pending = PendingEmbeddings(paths.layout.pending_index_folder, config.embedding_model)
    pool_ids, pool, previous_ids = _reusable(folder, pending, context.log)
    pool_rows = {chunk_id: row for row, chunk_id in enumerate(pool_ids)}
    rows = np.fromiter((pool_rows.get(chunk_id, -1) for chunk_id in chunk_ids), dtype=np.int64, count=len(chunk_ids))
    new = np.flatnonzero(rows < 0)

    embedding_seconds = 0.0
    if len(new):
        model = load_embedder(config.embedding_model, config.device)
        dimension = embedding_dimension(model)
        if pool is not None and pool.shape[1] != dimension:
            context.log.info(f"The previous embeddings have {pool.shape[1]} dimensions, the model {dimension}.")
            pool, rows, new = None, np.full(len(chunk_ids), -1), np.arange(len(chunk_ids))
    else:
        dimension = pool.shape[1]
    embeddings = np.empty((len(chunk_ids), dimension), dtype=np.float32)
    reused = rows >= 0
    if pool is not None:
        embeddings[reused] = pool[rows[reused]]

    texts = frame["text"]
    context.log.info(f"Embedding {len(new)} of {len(chunk_ids)} chunks with {config.embedding_model}")
    for start in range(0, len(new), EMBED_SLICE):
        part = new[start : start + EMBED_SLICE]
        slice_started = time.perf_counter()
        vectors = embed(model, texts.gather(part).to_list(), config.batch_size)
        embedding_seconds += time.perf_counter() - slice_started
        embeddings[part] = vectors
        pending.add([chunk_ids[row] for row in part], vectors)
        done = start + len(part)
        context.log.info(f"Embedded {done}/{len(new)} chunks ({done / embedding_seconds:.1f} chunks/s)")

    index = ChunkIndex(chunk_ids, embeddings, config.embedding_model, frame["doc_id"].to_list())
    index.save(folder)
    pending.clear()

    newly_embedded = len(new)
    seconds = time.perf_counter() - started
    context.log.info(f"Indexed {len(index)} chunks ({newly_embedded} embedded, {len(index) - newly_embedded} reused)")
    metadata = {
        **file_link(folder),
        "dagster/row_count": len(index),
        "chunks": len(index),
        "documents": frame["doc_id"].n_unique(),
        "sources": len(sources) - len(missing),
        "newly_embedded": newly_embedded,
        "reused": len(index) - newly_embedded,
        "dropped": len(previous_ids - set(chunk_ids)),
        "chunks_in_several_sources": int((frame["sources"].list.len() > 1).sum()),
        "model": config.embedding_model,
        "dimension": dimension,
        "seconds": seconds,
        "embedding_seconds": embedding_seconds,
        "preview": markdown_preview(frame.select("chunk_id", "doc_id", "source", "text")),
    }
    if newly_embedded:
        metadata["chunks_per_second"] = newly_embedded / embedding_seconds if embedding_seconds else 0.0
    if missing:
        metadata["sources_without_chunks"] = ", ".join(missing)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(index.data_version))
