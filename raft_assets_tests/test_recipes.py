"""Recipes (`data/experiments.yaml`): the file's rules, and a recipe's dataset built from the shared upstream into its
own folder, on the default recipe's split (the check `same_split_as_default`, with a defect planted); a recipe with
its own chunking: its corpus, index and dataset, its eval report on its own index, and the experiment report that
compares it only when the two match (a mismatch planted)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.raft_format import without_document_tags
from raft_assets.contracts.recipes import DEFAULT_RECIPE, RecipesError, load_recipes
from raft_assets.dataset.samples import load_samples
from raft_assets.defs.dataset.assets import raft_dataset, raft_dataset_checks
from raft_assets.defs.evaluation.assets import eval_report
from raft_assets.defs.evaluation.experiment_report import experiment_report
from raft_assets.defs.metadata import CHUNKS_FINGERPRINT
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.hashing import chunks_fingerprint, tree_fingerprint
from raft_assets.retrieval.index import ChunkIndex
from raft_assets_tests.conftest import REPO, SOURCES, run_assets
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.test_split_integrity import run_check


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_experiments_file_loads_with_default_first():
    recipes = load_recipes(REPO / "data" / "experiments.yaml")
    assert recipes[0].name == DEFAULT_RECIPE and not recipes[0].overrides
    assert len(recipes) >= 2 and all(recipe.overrides for recipe in recipes[1:])


def test_without_the_file_there_is_the_default_recipe_alone(tmp_path):
    assert [recipe.name for recipe in load_recipes(tmp_path / "absent.yaml")] == [DEFAULT_RECIPE]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recipes:\n  x:\n    dataset: {eval_fraction: 0.3}\n", "overrides eval_fraction, which decide the split"),
        ("recipes:\n  default:\n    dataset: {p: 1.0}\n", "it takes no overrides"),
        ("recipes:\n  ../x: {}\n", "recipe '../x' is invalid"),
        ("recipes:\n  x:\n    training: {lr: 1}\n", "recipe 'x' is invalid"),
        ("recipes: [x]\n", "needs a mapping `recipes:`"),
        ("recipes: {x: {dataset: [p]\n", "is not valid YAML"),
    ],
)
def test_an_invalid_experiments_file_says_what_is_wrong(tmp_path, text, message):
    with pytest.raises(RecipesError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_recipes(write(tmp_path / "experiments.yaml", text))


SMALL_CHUNKS = 400  # characters: the default chunk_size is 1000


@pytest.fixture(scope="module")
def with_recipes(sample_pipeline, tmp_path_factory):
    """The sample pipeline's project with an experiments file of its own: the default and `oracle_always`."""
    project, instance, _ = sample_pipeline
    experiments = write(
        tmp_path_factory.mktemp("recipes") / "experiments.yaml",
        "recipes:\n  default: {}\n  oracle_always:\n    dataset: {p: 1.0, refusal_p: 0.0}\n  unknown_setting:\n"
        "    dataset: {oracle_probability: 1.0}\n"
        f"  small_chunks:\n    chunking: {{chunk_size: {SMALL_CHUNKS}}}\n"
        "  unknown_chunking:\n    chunking: {chunk_sise: 500}\n"
        "  overlap_too_large:\n    chunking: {chunk_overlap: 1000}\n",
    )
    return ProjectPaths(**{**project.model_dump(), "experiments_file": str(experiments)}), instance


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_a_recipe_builds_its_own_dataset_from_the_shared_upstream_on_the_default_split(with_recipes):
    project, instance = with_recipes
    result = run_assets(project, instance, [raft_dataset, raft_dataset_checks], partition="oracle_always")
    facts = metadata(result, "raft_dataset")
    folder = Path(project.data_dir) / "recipes" / "oracle_always" / "raft"
    assert facts["recipe"] == "oracle_always" and "'p': 1.0" in facts["recipe_overrides"]
    assert facts["oracle_present_share"] == 1.0 and facts["refusal_share"] == 0.0
    records = [json.loads(line) for line in (folder / "raft.jsonl").read_text().splitlines()]
    assert records and all(record["oracle_included"] for record in records)
    default_records = (Path(project.data_dir) / "raft" / "raft.jsonl").read_text().splitlines()
    assert not all(json.loads(line)["oracle_included"] for line in default_records)  # the default's p is 0.8
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["same_split_as_default"].passed and all(check.passed for check in checks.values())


def test_a_recipe_split_unlike_the_default_fails_its_check(with_recipes):
    """Planted: one eval document of the default's split moved to train in the recipe's splits.parquet."""
    project, instance = with_recipes
    run_assets(project, instance, [raft_dataset], partition="oracle_always")
    splits_file = Path(project.data_dir) / "recipes" / "oracle_always" / "raft" / "splits.parquet"
    splits = pl.read_parquet(splits_file)
    moved = splits.filter(pl.col("split") == "eval")["doc_id"][0]
    splits.with_columns(
        pl.when(pl.col("doc_id") == moved).then(pl.lit("train")).otherwise(pl.col("split")).alias("split")
    ).write_parquet(splits_file)
    check = run_check(project, instance, raft_dataset_checks, "oracle_always")["same_split_as_default"]
    assert not check.passed
    assert f"{moved} (train, default: eval)" in check.description


def test_a_recipe_that_names_an_unknown_setting_fails_with_the_settings_it_has(with_recipes):
    project, instance = with_recipes
    instance.add_dynamic_partitions("recipes", ["unknown_setting"])
    result = dg.materialize(
        [raft_dataset],
        partition_key="unknown_setting",
        instance=instance,
        resources={"paths": project},
        raise_on_error=False,
    )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert "Recipe 'unknown_setting': dataset has no setting oracle_probability" in description
    assert "num_distractors" in description  # the settings it has


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            "unknown_chunking",
            "Recipe 'unknown_chunking': chunking has no setting chunk_sise; its settings are chunk_size",
        ),
        (
            "overlap_too_large",
            "Recipe 'overlap_too_large': chunking overrides are invalid: chunk_overlap (1000) must be smaller than "
            "chunk_size (1000)",
        ),
    ],
)
def test_a_bad_chunking_override_fails_naming_the_recipe(with_recipes, recipe, message):
    project, instance = with_recipes
    instance.add_dynamic_partitions("recipes", [recipe])
    result = dg.materialize(
        [raft_dataset], partition_key=recipe, instance=instance, resources={"paths": project}, raise_on_error=False
    )
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert message in failure.step_failure_data.user_failure_data.description
    assert not (Path(project.data_dir) / "recipes" / recipe).exists()  # it failed before writing anything


@dataclass(frozen=True)
class SmallChunks:
    project: ProjectPaths
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult
    llm_requests: int
    shared_index_before: str  # the shared index's files' fingerprint
    shared_index_after: str


@pytest.fixture(scope="module")
def small_chunks(with_recipes) -> SmallChunks:
    """raft_dataset[small_chunks] and its checks, every endpoint a test server that counts what it is sent."""
    project, instance = with_recipes
    shared_index = project.layout.index_folder
    before = tree_fingerprint(shared_index)
    with OpenAITestServer(lambda body: "never asked", models=["any"]) as server:
        endpoint = LLMResource(base_url=server.base_url, model="any")
        result = run_assets(
            project,
            instance,
            [raft_dataset, raft_dataset_checks],
            partition="small_chunks",
            llm=endpoint,
            judge=endpoint,
            curator=endpoint,
        )
        requests = server.stats.requests
    return SmallChunks(project, instance, result, requests, before, tree_fingerprint(shared_index))


@pytest.mark.slow  # the recipe's chunks split and embedded on the CPU: 10-25 s on 2 busy cores
def test_a_recipe_with_its_own_chunking_writes_its_corpus_and_index_and_moves_the_questions(small_chunks):
    project, result = small_chunks.project, small_chunks.result
    assert small_chunks.llm_requests == 0  # no LLM request: the shared questions and answers
    assert small_chunks.shared_index_after == small_chunks.shared_index_before  # the shared index is untouched
    own = project.layout.of_recipe("small_chunks", own_chunking=True)
    folder = Path(project.data_dir) / "recipes" / "small_chunks"
    assert own.own_corpus_file == folder / "chunks.parquet" and own.index_folder == folder / "index"
    corpus = read_corpus(own, SOURCES)
    shared = read_corpus(project.layout, SOURCES)
    assert corpus.columns == shared.columns and corpus.height > shared.height
    assert corpus["text"].str.len_chars().mean() < shared["text"].str.len_chars().mean()
    index = ChunkIndex.load(own.index_folder)
    shared_index = ChunkIndex.load(project.layout.index_folder)
    assert index.chunk_ids == corpus["chunk_id"].to_list() and index.model == shared_index.model
    assert set(index.chunk_ids) - set(shared_index.chunk_ids)  # chunks the shared corpus does not have

    facts = metadata(result, "raft_dataset")
    settings = facts["chunking"]
    assert {source: options["chunk_size"] for source, options in settings.items()} == dict.fromkeys(
        SOURCES, SMALL_CHUNKS
    )
    assert facts["recipe_chunks"] == corpus.height and facts["shared_chunks"] == shared.height
    reused, from_cache = facts["recipe_index_reused"], facts["recipe_index_from_embedding_cache"]
    assert facts["recipe_index_embedded"] + from_cache + reused == corpus.height
    assert reused == len(set(index.chunk_ids) & set(shared_index.chunk_ids))  # the shared index's vectors
    assert facts[CHUNKS_FINGERPRINT] == chunks_fingerprint(corpus["chunk_id"])

    # Every question is on a chunk of the recipe's, of its own document; those without one are counted.
    samples, _, _ = load_samples(project.layout, SOURCES, require_quotes_ok=True)
    assert facts["distinct_questions"] + facts["questions_without_recipe_chunk"] == len(samples)
    document_of = {sample.question_id: sample.doc_id for sample in samples}
    own_chunks = dict(zip(corpus["chunk_id"], corpus.select("doc_id", "text").iter_rows(), strict=True))
    records = [json.loads(line) for line in (folder / "raft" / "raft.jsonl").read_text().splitlines()]
    assert records
    for record in records:
        doc_id, text = own_chunks[record["chunk_id"]]
        assert record["doc_id"] == doc_id
        assert record["oracle_context"] == without_document_tags(text)
    for row in pl.read_parquet(folder / "raft" / "splits.parquet").iter_rows(named=True):  # eval questions too
        assert own_chunks[row["chunk_id"]][0] == row["doc_id"] == document_of[row["question_id"]]
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert all(check.passed for check in checks.values()), checks


EVAL_CONFIG = {
    "eval_report": {
        "config": {"models": ["base"], "top_k": [3], "without_context": False, "max_new_tokens": 4, "max_questions": 3}
    }
}


@pytest.mark.slow
def test_own_chunking_is_evaluated_on_its_own_index_and_compared_unless_mismatched(small_chunks, tmp_path):
    """eval_report[small_chunks] retrieves from the recipe's index: experiment_report compares it. Planted: the
    recipe evaluated again after its chunking was taken out of the experiments file (so on the shared index) while
    its dataset stays on its own chunks: experiment_report lists it apart."""
    project, instance = small_chunks.project, small_chunks.instance
    run_assets(project, instance, [eval_report], config=EVAL_CONFIG)  # the default, to compare with
    evaluated = run_assets(project, instance, [eval_report], partition="small_chunks", config=EVAL_CONFIG)
    trained_on = metadata(small_chunks.result, "raft_dataset")[CHUNKS_FINGERPRINT]
    assert metadata(evaluated, "eval_report")[CHUNKS_FINGERPRINT] == trained_on
    compared = metadata(run_assets(project, instance, [experiment_report]), "experiment_report")
    assert "small_chunks" not in compared["excluded"]

    without_chunking = write(tmp_path / "experiments.yaml", "recipes:\n  small_chunks: {}\n")
    stale = ProjectPaths(**{**project.model_dump(), "experiments_file": str(without_chunking)})
    evaluated = run_assets(stale, instance, [eval_report], partition="small_chunks", config=EVAL_CONFIG)
    assert metadata(evaluated, "eval_report")[CHUNKS_FINGERPRINT] != trained_on
    excluded = metadata(run_assets(project, instance, [experiment_report]), "experiment_report")["excluded"]
    assert "small_chunks: its retrieval index was chunked differently from its dataset" in excluded
