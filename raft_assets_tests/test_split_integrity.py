"""One sample per text across sources, and dataset checks that read the written files and fail on planted defects.

The corpus is the shipped sample corpus under two `local` sources on the same folder: a company's docs crawled
from its website and also exported to a folder is the common case. Every defect a blocking check of
`raft_dataset` or `eval_set` guards against is planted in the files as written, and the check, run on its own
in a real Dagster run, fails naming it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from raft_assets.contracts.raft_format import question_key
from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.dataset.checks import text_key
from raft_assets.defs.curation.assets import curated_answers
from raft_assets.defs.dataset.assets import eval_set, eval_set_disjoint_from_training, raft_dataset, raft_dataset_checks
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.base_model import base_model
from raft_assets_tests.conftest import REPO, graph_resources, run_assets, suite_embedding_cache, write_sources

pytestmark = pytest.mark.slow  # the fixture runs the graph up to the eval set on two sources

SOURCES = ["site", "export"]


@pytest.fixture(scope="module")
def twice_sourced(tmp_path_factory):
    """The sample corpus's twelve documents in one folder, read by two sources, through eval_set."""
    root = tmp_path_factory.mktemp("twice_sourced")
    folder = root / "docs"
    folder.mkdir()
    for path in sorted((REPO / "data").glob("*_docs/*")):
        shutil.copy(path, folder / path.name)
    sources = write_sources(
        root / "sources.yaml", [{"name": name, "kind": "local", "path": str(folder)} for name in SOURCES]
    )
    project = ProjectPaths(
        sources_file=str(sources),
        data_dir=str(root / "generated"),
        checkpoint_dir=str(root / "checkpoints"),
        embedding_cache=suite_embedding_cache(),
    )
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(doc_sources.name, SOURCES)
        for source in SOURCES:
            run_assets(project, instance, [documents, chunks, questions, cot_answers, curated_answers], source)
        result = run_assets(
            project,
            instance,
            [retrieval_index, base_model, raft_dataset, eval_set],
            config={"eval_set": {"config": {"curation_file": str(root / "no_curation.yaml")}}},
        )
        yield project, instance, result


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def written(project: ProjectPaths) -> dict[str, list[dict]]:
    folder = Path(project.data_dir)
    return {
        "train": lines(folder / "raft" / "raft_train.jsonl"),
        "test": lines(folder / "raft" / "raft_test.jsonl"),
        "eval": json.loads((folder / "eval" / "eval_set.json").read_text(encoding="utf-8")),
    }


def test_the_same_documents_under_two_sources_are_one_sample_each_in_one_split(twice_sourced):
    project, _, result = twice_sourced
    splits = written(project)
    assert all(splits.values())
    keys = {
        name: {
            "documents": {row["doc_id"] for row in rows},
            "oracles": {text_key(row["oracle_context"]) for row in rows},
            "questions": {question_key(row["question"]) for row in rows},
        }
        for name, rows in splits.items()
    }
    for first, second in (("train", "test"), ("train", "eval"), ("test", "eval")):
        for kind in ("documents", "oracles", "questions"):
            assert not keys[first][kind] & keys[second][kind], f"{kind} in {first} and {second}"

    asked = pl.read_parquet(Path(project.data_dir) / "questions" / "*.parquet").filter(pl.col("status") == "ok")
    distinct = {question_key(q) for q in asked["question"]}
    records = splits["train"] + splits["test"]
    answered = [r for r in records if not r["refusal"]]
    assert len(answered) == len({question_key(r["question"]) for r in answered}) <= len(distinct)
    assert len(splits["eval"]) <= len(distinct) - len(answered)
    assert {row["source"] for rows in splits.values() for row in rows} <= set(SOURCES)

    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "instruction_documents",
        "oracle_matches_flag",
        "splits_disjoint",
        "same_split_as_default",
        "disjoint_from_training",
    }
    assert all(e.passed for e in evaluations.values())


def test_a_text_held_by_both_sources_is_one_chunk_with_both_provenances(twice_sourced):
    project, _, _ = twice_sourced
    from raft_assets.contracts.corpus import read_corpus

    corpus = read_corpus(project.layout, SOURCES)
    per_source = pl.read_parquet(Path(project.data_dir) / "chunks" / "*.parquet")
    assert corpus.height == per_source["chunk_id"].n_unique() == per_source.height // 2
    assert all(sorted(sources) == sorted(SOURCES) for sources in corpus["sources"])
    assert all(
        len(doc_ids) == 2 and doc_id == min(doc_ids) for doc_id, doc_ids in corpus.select("doc_id", "doc_ids").rows()
    )


def run_check(
    project: ProjectPaths, instance: dg.DagsterInstance, check: dg.AssetChecksDefinition, recipe: str = DEFAULT_RECIPE
) -> dict:
    """The check's evaluations (by name), run alone on the files as they are now (of `recipe`, for the checks of
    raft_dataset: a run of a check alone names its partition by the run's tag)."""
    from raft_assets.definitions import defs

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.checks(check),
        tags={"dagster/partition": recipe} if check is raft_dataset_checks else None,
        instance=instance,
        resources=graph_resources(project),
        raise_on_error=False,  # a failing blocking check fails its step
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def rewrite_records(path: Path, change: Callable[[list[dict]], None]) -> None:
    records = lines(path)
    change(records)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def plant_train_question_in_test(folder: Path) -> None:
    question = lines(folder / "raft_train.jsonl")[0]["question"]
    rewrite_records(folder / "raft_test.jsonl", lambda records: records[0].update(question=question.upper()))


def plant_train_document_in_test(folder: Path) -> None:
    doc_id = lines(folder / "raft_train.jsonl")[0]["doc_id"]
    rewrite_records(folder / "raft_test.jsonl", lambda records: records[0].update(doc_id=doc_id))


def plant_test_oracle_among_training_distractors(folder: Path) -> None:
    oracle = next(r["oracle_context"] for r in lines(folder / "raft_test.jsonl"))

    def change(records: list[dict]) -> None:
        record = next(r for r in records if r["oracle_included"])
        documents = record["context"]["sentences"][0]
        documents[next(i for i, text in enumerate(documents) if text != record["oracle_context"])] = oracle

    rewrite_records(folder / "raft_train.jsonl", change)


def plant_a_missing_document(folder: Path) -> None:
    def change(records: list[dict]) -> None:
        records[0]["instruction"] = records[0]["instruction"].replace("<DOCUMENT>", "", 1)

    rewrite_records(folder / "raft.jsonl", change)


def plant_a_wrong_oracle_flag(folder: Path) -> None:
    rewrite_records(
        folder / "raft.jsonl", lambda records: records[0].update(oracle_included=not records[0]["oracle_included"])
    )


@pytest.mark.parametrize(
    ("plant", "check", "reason"),
    [
        (plant_train_question_in_test, "splits_disjoint", "1 questions in train and test"),
        (plant_train_document_in_test, "splits_disjoint", "1 documents in train and test"),
        (
            plant_test_oracle_among_training_distractors,
            "splits_disjoint",
            "1 test oracle chunks shown in train records",
        ),
        (plant_a_missing_document, "instruction_documents", "1 of "),
        (plant_a_wrong_oracle_flag, "oracle_matches_flag", "1 of "),
    ],
)
def test_a_defect_planted_in_the_dataset_files_fails_its_check(twice_sourced, plant, check, reason):
    project, instance, _ = twice_sourced
    folder = Path(project.data_dir) / "raft"
    saved = {path: path.read_bytes() for path in folder.glob("*.jsonl")}
    try:
        assert run_check(project, instance, raft_dataset_checks)[check].passed
        plant(folder)
        evaluations = run_check(project, instance, raft_dataset_checks)
        assert not evaluations[check].passed
        assert reason in evaluations[check].description
        assert all(e.passed for name, e in evaluations.items() if name != check)
    finally:
        for path, content in saved.items():
            path.write_bytes(content)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("question", "1 questions in train and eval"),
        ("doc_id", "1 documents in train and eval"),
        ("oracle_context", "1 oracle chunks in train and eval"),
    ],
)
def test_a_training_question_planted_in_the_eval_set_fails_its_check(twice_sourced, field, reason):
    project, instance, _ = twice_sourced
    path = Path(project.data_dir) / "eval" / "eval_set.json"
    saved = path.read_bytes()
    train = lines(Path(project.data_dir) / "raft" / "raft_train.jsonl")[0]
    try:
        assert run_check(project, instance, eval_set_disjoint_from_training)["disjoint_from_training"].passed
        items = json.loads(saved)
        items[0][field] = train[field]
        path.write_text(json.dumps(items), encoding="utf-8")
        evaluation = run_check(project, instance, eval_set_disjoint_from_training)["disjoint_from_training"]
        assert not evaluation.passed and reason in evaluation.description
    finally:
        path.write_bytes(saved)
