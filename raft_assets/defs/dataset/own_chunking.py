"""A recipe with its own chunking (`chunking:` in the experiments file): what its `raft_dataset` builds first.

1. Each source's shared `documents` are split again (`ingestion.chunking.split_documents`) with the settings that
   source's `chunks` were made with (recorded in their metadata) and the recipe's overrides over them.
2. The recipe's corpus (`Layout.own_corpus_file`, the columns of `read_corpus`) and index (its `index_folder`) are
   written; the index is embedded with the shared index's model, whose vectors are reused for the chunks it holds.
3. Each question keeps its text and answers, and its oracle becomes the recipe chunk of the same (canonical)
   document that overlaps its original chunk most: the most word 3-shingles in common (`near_duplicates.shingles`),
   ties to the chunk with fewer shingles (more of it is the original's text), then to the smaller chunk_id. A
   question whose document has no recipe chunk sharing a shingle with its chunk is dropped, and counted.

No LLM request is sent: the questions and answers are the shared ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from raft_assets.contracts.corpus import corpus_of, read_documents
from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import Passage, Sample
from raft_assets.contracts.recipes import Recipe
from raft_assets.contracts.tables import read_parquet, write_parquet
from raft_assets.dataset.samples import passages_of
from raft_assets.defs.ingestion.assets import ChunksConfig, chunks
from raft_assets.defs.metadata import partition_metadata
from raft_assets.defs.recipes import with_overrides
from raft_assets.ingestion.chunking import ChunkingOptions, split_documents
from raft_assets.ingestion.near_duplicates import shingles
from raft_assets.retrieval.building import BuiltIndex, Log, rebuild_index
from raft_assets.retrieval.index import ChunkIndex


def chunking_options(instance: dg.DagsterInstance, recipe: Recipe, sources: list[str]) -> dict[str, ChunkingOptions]:
    """The recipe's chunking of each source that has chunks: the settings its `chunks` were made with, the
    recipe's `chunking` overrides over them, validated as the launchpad validates `chunks`' config."""
    found: dict[str, ChunkingOptions] = {}
    for source in sources:
        recorded = partition_metadata(instance, chunks.key, source)
        if recorded is None:
            continue
        if missing := [name for name in ChunksConfig.model_fields if name not in recorded]:
            raise dg.Failure(
                f"chunks[{source}] does not record its {', '.join(missing)} (made by an earlier version), which "
                f"recipe {recipe.name!r} chunks again from: materialize chunks again (its chunk ids stay the same)."
            )
        shared = ChunksConfig(**{name: recorded[name] for name in ChunksConfig.model_fields})
        try:
            found[source] = ChunkingOptions(**with_overrides(shared, recipe, "chunking"))
        except ValueError as error:
            raise dg.Failure(f"Recipe {recipe.name!r}: chunking overrides are invalid: {error}") from None
    if not found:
        raise dg.Failure(f"No source has chunks for recipe {recipe.name!r} to chunk again: materialize chunks first.")
    return found


@dataclass(frozen=True)
class OwnChunks:
    """The recipe's corpus as passages, its index as built, and the shared samples with their oracles moved."""

    options: dict[str, ChunkingOptions]
    passages: list[Passage]
    samples: list[Sample]
    dropped: int  # questions whose document has no recipe chunk overlapping their chunk
    shared_chunks: int
    built: BuiltIndex

    def metadata(self, layout: Layout) -> dict[str, Any]:
        settings = {source: dataclasses.asdict(options) for source, options in self.options.items()}
        return {
            "chunking": dg.MetadataValue.json(settings),
            "recipe_chunks": len(self.passages),
            "shared_chunks": self.shared_chunks,
            "questions_without_recipe_chunk": self.dropped,
            "recipe_index": dg.MetadataValue.path(str(layout.index_folder.resolve())),
            "recipe_index_embedded": self.built.newly_embedded,
            "recipe_index_from_embedding_cache": self.built.from_cache,
            "recipe_index_reused": self.built.reused,
        }


def build_own_chunks(
    layout: Layout,
    options: dict[str, ChunkingOptions],
    samples: list[Sample],
    shared_passages: list[Passage],
    log: Log,
) -> OwnChunks:
    """The recipe's corpus and index written (see the module's docstring), and the samples on its chunks."""
    corpus = write_own_corpus(layout, options)
    built = build_own_index(layout, corpus, log)
    passages = passages_of(corpus)
    moved = move_oracles(samples, shared_passages, passages)
    log.info(
        f"Recipe {layout.recipe}: {len(passages)} chunks of its own ({len(shared_passages)} shared); "
        f"{len(samples) - len(moved)} of {len(samples)} questions without a recipe chunk of their document"
    )
    return OwnChunks(options, passages, moved, len(samples) - len(moved), len(shared_passages), built)


def write_own_corpus(layout: Layout, options: dict[str, ChunkingOptions]) -> pl.DataFrame:
    """Every source's documents split with its options, as one corpus over the sources, written for the recipe."""
    frames = [
        split_documents(read_parquet(layout.stage_file("documents", source), "documents"), source_options).chunks
        for source, source_options in options.items()
    ]
    corpus = corpus_of(pl.concat(frames), read_documents(layout, list(options)))
    write_parquet(corpus, layout.own_corpus_file)
    return corpus


def build_own_index(layout: Layout, corpus: pl.DataFrame, log: Log) -> BuiltIndex:
    """The recipe's index, with the shared index's model and its vectors (and the recipe's previous index's)."""
    shared = ChunkIndex.load(layout.with_shared_chunks.index_folder, read_faiss=False)
    return rebuild_index(layout, corpus, shared.model, log, reuse_first=[shared])


def move_oracles(samples: list[Sample], shared: list[Passage], own: list[Passage]) -> list[Sample]:
    """Each sample with its oracle moved to the own chunk of its document that overlaps its shared chunk most;
    those whose document has no own chunk sharing a word 3-shingle with it are left out."""
    asked_about = {sample.chunk_id for sample in samples}
    original = {passage.chunk_id: shingles(passage.text) for passage in shared if passage.chunk_id in asked_about}
    by_document: dict[str, list[tuple[str, np.ndarray]]] = {}
    for passage in sorted(own, key=lambda passage: passage.chunk_id):  # the smaller chunk_id first: it wins ties
        by_document.setdefault(passage.doc_id, []).append((passage.chunk_id, shingles(passage.text)))
    moved = []
    for sample in samples:
        chunk_id = most_overlapping(original[sample.chunk_id], by_document.get(sample.doc_id, []))
        if chunk_id is not None:
            moved.append(dataclasses.replace(sample, chunk_id=chunk_id))
    return moved


def most_overlapping(grams: np.ndarray, candidates: list[tuple[str, np.ndarray]]) -> str | None:
    """The candidate sharing the most shingles with `grams`, ties to the one with fewer shingles, then the first;
    None when none shares any."""
    best, best_key = None, (0, 0)
    for chunk_id, own in candidates:
        key = (np.intersect1d(grams, own, assume_unique=True).size, -own.size)
        if key[0] and (best is None or key > best_key):
            best, best_key = chunk_id, key
    return best
