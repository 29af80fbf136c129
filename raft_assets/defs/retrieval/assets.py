"""The `retrieval_index` asset: embeddings of every chunk of every source, searchable with FAISS."""

import time

import dagster as dg
from pydantic import Field

from raft_assets.contracts.corpus import read_corpus
from raft_assets.defs.ingestion.assets import chunks
from raft_assets.defs.metadata import file_link, markdown_preview
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import ProjectPaths
from raft_assets.retrieval.building import rebuild_index
from raft_assets.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL, EmbeddingModelNotFoundError, resolve_model_path


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


@dg.asset(
    deps=[dg.AssetDep(chunks, partition_mapping=dg.AllPartitionMapping())],
    group_name="retrieval",
    kinds={"faiss", "sentence-transformers"},
)
def retrieval_index(
    context: dg.AssetExecutionContext, config: RetrievalIndexConfig, paths: ProjectPaths
) -> dg.MaterializeResult:
    """Normalised sentence-transformers embeddings of every chunk with an exact FAISS index (`ChunkIndex`).

    Incremental: a chunk already in the previous index of the same model keeps its embedding, and a text in the
    embedding cache (`Layout.embedding_cache_file`) is not embedded again.
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

    folder = paths.layout.index_folder
    built = rebuild_index(
        paths.layout, frame, config.embedding_model, context.log, batch_size=config.batch_size, device=config.device
    )
    index = built.index
    seconds = time.perf_counter() - started
    context.log.info(
        f"Indexed {len(index)} chunks ({built.newly_embedded} embedded, {built.from_cache} from the embedding cache, "
        f"{built.reused} reused from the previous index)"
    )
    metadata = {
        **file_link(folder),
        "dagster/row_count": len(index),
        "chunks": len(index),
        "documents": frame["doc_id"].n_unique(),
        "sources": len(sources) - len(missing),
        "newly_embedded": built.newly_embedded,
        "from_embedding_cache": built.from_cache,
        "reused": built.reused,
        "dropped": built.dropped,
        "chunks_in_several_sources": int((frame["sources"].list.len() > 1).sum()),
        "model": config.embedding_model,
        "dimension": index.dimension,
        "seconds": seconds,
        "embedding_seconds": built.embedding_seconds,
        "preview": markdown_preview(frame.select("chunk_id", "doc_id", "source", "text")),
    }
    if built.newly_embedded:
        metadata["chunks_per_second"] = built.newly_embedded / built.embedding_seconds
    if missing:
        metadata["sources_without_chunks"] = ", ".join(missing)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(index.data_version))
