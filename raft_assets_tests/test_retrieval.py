"""The retrieval index: embeddings, the saved FAISS index, other-document neighbours and the asset."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from raft_assets.contracts.tables import CHUNK_SCHEMA
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.hashing import content_hash
from raft_assets.retrieval.embedding_cache import EmbeddingCache, EmbeddingCacheError
from raft_assets.retrieval.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    EmbeddingModelNotFoundError,
    embed,
    load_embedder,
    resolve_model_path,
)
from raft_assets.retrieval.index import FAISS_FILE, MANIFEST_FILE, ChunkIndex


def normalised(vectors) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def random_index(n: int, d: int = 16, docs: int = 5, seed: int = 0) -> ChunkIndex:
    rng = np.random.default_rng(seed)
    return ChunkIndex(
        chunk_ids=[f"c{i}" for i in range(n)],
        embeddings=normalised(rng.standard_normal((n, d))),
        model="test",
        doc_ids=[f"d{i % docs}" for i in range(n)],
    )


# -- embeddings ------------------------------------------------------------------------------------------


def test_embeddings_are_normalised_and_similar_texts_score_higher():
    model = load_embedder(DEFAULT_EMBEDDING_MODEL)
    assert load_embedder(DEFAULT_EMBEDDING_MODEL) is model  # loaded once per process
    vectors = embed(
        model,
        ["The cat sleeps on the mat.", "A kitten is napping on a rug.", "Corporate tax returns are due in April."],
        batch_size=2,
    )
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embed(model, []).shape == (0, 384)


def test_models_resolve_offline_and_unknown_ones_give_a_clear_error(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    # A Hugging Face cache holding one model, under a name of the sentence-transformers organisation.
    cache = tmp_path / "hub"
    repo = cache / "models--sentence-transformers--tiny-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / "0123abc").symlink_to(resolve_model_path(DEFAULT_EMBEDDING_MODEL), target_is_directory=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    assert resolve_model_path("tiny-test") == repo / "snapshots" / "0123abc"
    assert resolve_model_path("sentence-transformers/tiny-test") == repo / "snapshots" / "0123abc"
    assert embed(load_embedder("tiny-test"), ["cached"]).shape == (1, 384)
    with pytest.raises(
        EmbeddingModelNotFoundError, match=r"not available offline.*hf download sentence-transformers/multi-qa-mpnet"
    ):
        resolve_model_path("multi-qa-mpnet-base-cos-v1")
    with pytest.raises(EmbeddingModelNotFoundError, match="not a model folder"):
        resolve_model_path(str(tmp_path / "no-model-here"))
    assert (resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") / "modules.json").is_file()


CACHED = ["Llamas are camelids.", "FSDP shards parameters.", "Llamas are camelids."]


def test_the_embedding_cache_gives_the_models_vectors_without_loading_the_model(tmp_path: Path):
    file = tmp_path / "cache" / "embeddings.sqlite"
    first = Embedder(DEFAULT_EMBEDDING_MODEL, EmbeddingCache(file))
    vectors = first.embed(CACHED)
    assert first.computed == 2 and first.seconds > 0  # the repeated text once
    np.testing.assert_array_equal(vectors, embed(load_embedder(DEFAULT_EMBEDDING_MODEL), CACHED))
    assert len(EmbeddingCache(file)) == 2

    # Another process's embedder on the same file: nothing to embed, so its model is never loaded.
    second = Embedder(DEFAULT_EMBEDDING_MODEL, EmbeddingCache(file))
    np.testing.assert_array_equal(second.embed(CACHED), vectors)
    assert second.computed == 0 and "model" not in vars(second)
    mixed = second.embed(["A new text.", CACHED[1]])
    assert second.computed == 1 and "model" in vars(second)
    np.testing.assert_array_equal(mixed[1], vectors[1])
    assert second.embed([]).shape == (0, 384)


def test_a_texts_first_vector_in_the_cache_stays_so_every_reader_gets_the_same(tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    first, other = normalised(np.random.default_rng(0).standard_normal((2, 8)))
    cache.store("model", ["text"], first[None])
    cache.store("model", ["text", "another"], np.stack([other, other]))  # a second process that missed it too
    [kept, added] = cache.lookup("model", ["text", "another"])
    np.testing.assert_array_equal(kept, first)
    np.testing.assert_array_equal(added, other)
    assert cache.lookup("another model", ["text"]) == [None]


def test_another_copy_or_a_changed_file_of_the_model_is_another_key_of_the_cache(tmp_path: Path):
    model = tmp_path / "model"
    shutil.copytree(resolve_model_path(DEFAULT_EMBEDDING_MODEL), model, copy_function=os.link)
    cache = EmbeddingCache(tmp_path / "embeddings.sqlite")
    Embedder(DEFAULT_EMBEDDING_MODEL, cache).embed(CACHED)

    copy = Embedder(str(model), cache)
    copy.embed(CACHED)
    assert copy.computed == 2  # the same weights in another folder: embedded again, never mixed up

    config = model / "config.json"
    config.write_text(config.read_text())  # a new modification time: the model may have changed
    changed = Embedder(str(model), cache)
    assert changed.key != copy.key
    changed.embed(CACHED)
    assert changed.computed == 2


def test_a_damaged_embedding_cache_says_to_delete_it(tmp_path: Path):
    file = tmp_path / "embeddings.sqlite"
    file.write_bytes(b"not a database, " * 100)
    with pytest.raises(EmbeddingCacheError, match=rf"{file}.*only saves time: delete it"):
        EmbeddingCache(file)


# -- the index -------------------------------------------------------------------------------------------


def test_save_and_load_give_identical_search_results(tmp_path: Path):
    index = random_index(50)
    queries = normalised(np.random.default_rng(1).standard_normal((7, 16)))
    scores, ids = index.search(queries, 5)
    assert [row[0] for row in index.search(index.embeddings[:3], 1)[1]] == ["c0", "c1", "c2"]

    folder = index.save(tmp_path / "index")
    random_index(10, seed=3).save(tmp_path / "index")  # replaced by the next save
    folder = index.save(tmp_path / "index")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]  # no temporary folder left
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["count"] == 50 and manifest["dimension"] == 16 and manifest["model"] == "test"

    loaded = ChunkIndex.load(folder)
    assert loaded.chunk_ids == index.chunk_ids and loaded.doc_ids == index.doc_ids
    assert loaded.data_version == index.data_version
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    loaded_scores, loaded_ids = loaded.search(queries, 5)
    assert loaded_ids == ids
    np.testing.assert_array_equal(loaded_scores, scores)
    assert loaded.nearest_other_documents(index.chunk_ids, 3) == index.nearest_other_documents(index.chunk_ids, 3)


def test_a_crash_during_the_swap_leaves_a_complete_index(tmp_path: Path):
    folder = random_index(20).save(tmp_path / "index")
    # A crash after moving the old index aside and before moving the new one in:
    (tmp_path / "index").rename(tmp_path / ".index.old")
    assert len(ChunkIndex.load(folder)) == 20
    # A crash while the new index was being written: the old one stays.
    new = tmp_path / f".index.saving-{os.getpid() + 1}"
    new.mkdir()
    (new / FAISS_FILE).write_bytes(b"half")
    assert len(ChunkIndex.load(folder)) == 20
    random_index(30).save(folder)
    assert len(ChunkIndex.load(folder)) == 30
    with pytest.raises(FileNotFoundError, match="materialize 'retrieval_index'"):
        ChunkIndex.load(tmp_path / "elsewhere")


def test_nearest_other_documents_skips_the_chunks_own_document():
    # Document a: three chunks near (1, 0, 0); b and c at known angles from them.
    vectors = {
        "a1": [1.0, 0.0, 0.0],
        "a2": [0.99, 0.1, 0.0],
        "a3": [0.98, 0.0, 0.1],
        "b1": [0.8, 0.6, 0.0],  # cosine 0.8 with a1
        "b2": [0.0, 1.0, 0.0],  # 0.0
        "c1": [0.9, 0.0, 0.44],  # ~0.9
        "c2": [0.6, 0.0, 0.8],  # 0.6
    }
    docs = {chunk_id: chunk_id[0] for chunk_id in vectors}
    index = ChunkIndex(list(vectors), normalised(list(vectors.values())), "test", list(docs.values()))

    assert index.search(normalised([[1.0, 0.0, 0.0]]), 3)[1] == [["a1", "a2", "a3"]]
    nearest = index.nearest_other_documents(["a1", "b2"], k=3, margin=0)
    assert nearest["a1"] == ["c1", "b1", "c2"]
    assert all(docs[other] != "b" for other in nearest["b2"])
    assert index.nearest_other_documents(["a1"], k=10)["a1"] == ["c1", "b1", "c2", "b2"]  # all there are
    assert index.nearest_other_documents(["a1"], k=0) == {"a1": []}
    # Doc ids given by the caller: with b1 in document a, it is no longer a neighbour of a1.
    assert index.nearest_other_documents(["a1"], k=2, doc_ids_of_chunks={"b1": "a"})["a1"] == ["c1", "c2"]
    single = ChunkIndex(["x", "y"], normalised([[1, 0], [0, 1]]), "test", ["d", "d"])
    assert single.nearest_other_documents(["x"], k=4) == {"x": []}
    with pytest.raises(KeyError, match="not in the index"):
        index.nearest_other_documents(["zz"], k=1)


@pytest.mark.parametrize("margin", [0, 32])
def test_nearest_other_documents_match_brute_force(margin: int):
    index = random_index(300, docs=7, seed=2)
    # Large documents crowd out the others: most chunks need a wider search when the margin is 0.
    nearest = index.nearest_other_documents(index.chunk_ids, k=4, margin=margin)
    similarity = index.embeddings @ index.embeddings.T
    docs = np.array(index.doc_ids)
    for row, chunk_id in enumerate(index.chunk_ids):
        candidates = np.flatnonzero(docs != docs[row])
        expected = candidates[np.argsort(-similarity[row, candidates], kind="stable")[:4]]
        assert nearest[chunk_id] == [index.chunk_ids[i] for i in expected]


# -- the asset -------------------------------------------------------------------------------------------


@pytest.fixture
def project(project: ProjectPaths) -> ProjectPaths:
    """The suite's project with the embedding cache of its own data folder: these tests count what is embedded."""
    return ProjectPaths(**{**project.model_dump(), "embedding_cache": None})


def write_chunks(project: ProjectPaths, source: str, texts: dict[str, list[str]]) -> None:
    rows = [
        (content_hash(text), f"{source}-{doc}", source, position, text, [f"{source}-{doc}"])
        for doc, doc_texts in texts.items()
        for position, text in enumerate(doc_texts)
    ]
    path = project.stage_file("chunks", source)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema=CHUNK_SCHEMA, orient="row").write_parquet(path)


def materialize(project: ProjectPaths, instance: dg.DagsterInstance, **config) -> dict:
    result = dg.materialize(
        [retrieval_index],
        instance=instance,
        resources={"paths": project},
        run_config={"ops": {"retrieval_index": {"config": config}}},
        raise_on_error=False,
    )
    if not result.success:
        [failure] = [event.step_failure_data for event in result.get_step_failure_events()]
        return {"error": failure.user_failure_data.description if failure.user_failure_data else str(failure.error)}
    [materialization] = result.asset_materializations_for_node("retrieval_index")
    return {
        **{key: value.value for key, value in materialization.metadata.items()},
        "data_version": materialization.tags["dagster/data_version"],
    }


ALPHA = {
    "llamas": ["Llama 3 models come in 8B and 70B sizes.", "The 70B model is used to generate questions."],
    "pytorch": ["FSDP shards model parameters across GPUs.", "torchrun starts one process per GPU."],
}
BETA = {"cooking": ["Bake the bread for forty minutes at 220 degrees.", "Knead the dough for ten minutes."]}


def test_the_asset_builds_the_index_and_embeds_only_changed_chunks(project: ProjectPaths, instance):
    write_chunks(project, "alpha", ALPHA)
    write_chunks(project, "beta", BETA)
    instance.add_dynamic_partitions(doc_sources.name, ["alpha", "beta", "gamma"])  # gamma has no chunks yet

    first = materialize(project, instance)
    assert (first["chunks"], first["newly_embedded"], first["from_embedding_cache"], first["reused"]) == (6, 6, 0, 0)
    assert first["model"] == DEFAULT_EMBEDDING_MODEL and first["dimension"] == 384
    assert first["sources_without_chunks"] == "gamma"
    index = ChunkIndex.load(project.layout.index_folder)
    assert Path(first["path"]) == project.layout.index_folder.resolve()
    assert len(index) == 6 and set(index.doc_ids) == {"alpha-llamas", "alpha-pytorch", "beta-cooking"}
    query = embed(load_embedder(DEFAULT_EMBEDDING_MODEL), ["How long should bread bake?"])
    assert index.search(query, 1)[1] == [[content_hash(BETA["cooking"][0])]]
    neighbours = index.nearest_other_documents(index.chunk_ids, k=2)
    assert all(len(others) == 2 for others in neighbours.values())

    # One chunk changes: only it is embedded; the old one is dropped.
    write_chunks(project, "beta", {"cooking": ["Bake the bread for forty-five minutes.", BETA["cooking"][1]]})
    second = materialize(project, instance)
    assert (second["chunks"], second["newly_embedded"], second["reused"], second["dropped"]) == (6, 1, 5, 1)
    assert second["data_version"] != first["data_version"]
    reloaded = ChunkIndex.load(project.layout.index_folder)
    kept = [chunk_id for chunk_id in index.chunk_ids if chunk_id in reloaded.chunk_ids]
    assert len(kept) == 5  # the reused embeddings are the same vectors
    np.testing.assert_array_equal(
        reloaded.embeddings[[reloaded.chunk_ids.index(c) for c in kept]],
        index.embeddings[[index.chunk_ids.index(c) for c in kept]],
    )

    # Nothing changes: nothing is embedded and the model is not even needed.
    third = materialize(project, instance)
    assert (third["newly_embedded"], third["reused"]) == (0, 6)
    assert third["data_version"] == second["data_version"]

    # A model that is not available offline fails clearly.
    failed = materialize(project, instance, embedding_model="multi-qa-mpnet-base-cos-v1")
    assert "not available offline" in failed["error"] and "hf download" in failed["error"]
    assert len(ChunkIndex.load(project.layout.index_folder)) == 6  # the index is untouched


def test_the_asset_resumes_with_the_embeddings_that_a_killed_build_added_to_the_cache(project: ProjectPaths, instance):
    write_chunks(project, "alpha", ALPHA)
    instance.add_dynamic_partitions(doc_sources.name, ["alpha"])
    killed = Embedder(DEFAULT_EMBEDDING_MODEL, EmbeddingCache(project.layout.embedding_cache_file))
    killed.embed([ALPHA["llamas"][0]])  # the build's first slice, before it was killed

    result = materialize(project, instance)
    counts = ("chunks", "newly_embedded", "from_embedding_cache", "reused")
    assert tuple(result[key] for key in counts) == (4, 3, 1, 0)


def test_projects_sharing_an_embedding_cache_embed_a_text_once(project: ProjectPaths, instance, tmp_path: Path):
    shared = tmp_path / "shared" / "embeddings.sqlite"
    first = ProjectPaths(**{**project.model_dump(), "embedding_cache": str(shared)})
    second = ProjectPaths(**{**first.model_dump(), "data_dir": str(tmp_path / "second")})
    for paths in (first, second):
        write_chunks(paths, "alpha", ALPHA)
    instance.add_dynamic_partitions(doc_sources.name, ["alpha"])

    first_counts, second_counts = (materialize(paths, instance) for paths in (first, second))
    counts = ("newly_embedded", "from_embedding_cache", "reused")
    assert tuple(first_counts[key] for key in counts) == (4, 0, 0)
    assert tuple(second_counts[key] for key in counts) == (0, 4, 0)
    assert not project.layout.embedding_cache_file.exists()  # the data folder's own is not used
    np.testing.assert_array_equal(
        ChunkIndex.load(second.layout.index_folder).embeddings, ChunkIndex.load(first.layout.index_folder).embeddings
    )


def test_the_asset_fails_without_chunks(project: ProjectPaths, instance):
    instance.add_dynamic_partitions(doc_sources.name, ["alpha"])
    assert "materialize 'chunks' first" in materialize(project, instance)["error"]
