"""The whole graph from a fresh DAGSTER_HOME, as a user runs it, with faulty OpenAI-compatible servers.

The run is `whole_graph.run_end_to_end` (shared with test_resume_everywhere): the generator and the judge are
loopback test servers that fail some requests (429, 5xx, dropped connections), the base model is `tiny`, the sources
are the two sample folders and a sitemap source on loopback. Every file of the contract must exist and agree with
the others.
"""

import json
from pathlib import Path

import polars as pl
import pytest

from raft_assets.evaluation.metrics import extract_answer
from raft_assets_tests.conftest import SOURCES
from raft_assets_tests.whole_graph import (
    DISAGREEING,
    NEW_RECIPES,
    PAGES,
    PLANTED,
    SITE,
    EndToEndRun,
    NewRecipes,
    WholeGraph,
)

pytestmark = [pytest.mark.end_to_end, pytest.mark.torchrun]

ALL_SOURCES = [*SOURCES, SITE]
SYSTEMS = [
    f"{model} {variant}" for model in ("finetuned", "base", "reference") for variant in ("no context", "RAG k=3")
]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def parquet(data: Path, stage: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(data / stage / f"{source}.parquet") for source in ALL_SOURCES])


@pytest.fixture(scope="module")
def pipeline(end_to_end_run: EndToEndRun):
    """The run's folder, its output, the two secrets and the servers."""
    run = end_to_end_run
    return run.space.root, run.result, run.keys, run.servers


def test_faults_were_injected_and_survived(pipeline):
    _, result, _, servers = pipeline
    assert sum(servers["generator"].stats.faults.values()) > 0
    assert sum(servers["judge"].stats.faults.values()) > 0
    assert "failed" not in result.stdout and "skipped" not in result.stdout


def test_every_file_of_the_contract_exists(pipeline):
    root, _, _, _ = pipeline
    data, checkpoints = root / "generated", root / "checkpoints"
    for stage in ("documents", "chunks", "questions", "cot_answers", "curated_answers"):
        for source in ALL_SOURCES:
            assert (data / stage / f"{source}.parquet").is_file(), (stage, source)
    for name in ("raft.jsonl", "raft_train.jsonl", "raft_test.jsonl", "raft_chat.jsonl"):
        assert (data / "raft" / name).stat().st_size > 0, name
    assert (data / "eval" / "eval_set.json").is_file()
    assert any((data / "index").iterdir())
    run = (checkpoints / "fsdp" / "latest_run").read_text().strip()
    assert (checkpoints / "fsdp" / run / "train_params.yaml").is_file()
    assert (checkpoints / "fsdp" / run / "latest").is_file()
    for name in ("model.safetensors", "config.json", "tokenizer_config.json"):
        assert (checkpoints / "hf" / run / name).is_file(), name
    for name in ("eval_report.md", "eval_report.json", "scores.png"):
        assert (data / "reports" / name).is_file(), name


def test_counts_add_up_across_stages(pipeline):
    root, _, _, _ = pipeline
    data = root / "generated"
    documents = parquet(data, "documents").filter(pl.col("error").is_null())
    chunks = parquet(data, "chunks")
    questions = parquet(data, "questions")
    answers = parquet(data, "cot_answers")
    sample_files = sum(1 for source in SOURCES for path in (Path("data") / source).iterdir() if path.is_file())
    assert documents.height == sample_files + len(PAGES)
    assert set(chunks["doc_id"]) == set(documents["doc_id"])
    assert set(questions["chunk_id"]) == set(chunks["chunk_id"])
    assert questions.group_by("chunk_id").len()["len"].max() <= 2
    asked = questions.filter(pl.col("status") == "ok")
    assert set(answers["question_id"]) == set(asked["question_id"])
    usable = answers.filter((pl.col("status") == "ok") & pl.col("quotes_ok"))
    assert usable.height > 0.8 * asked.height  # the faults cost retries, not answers

    curated = parquet(data, "curated_answers")
    assert sorted(curated["question_id"]) == sorted(answers["question_id"])  # every question has a row
    statuses = dict(zip(curated["question_id"], curated["status"], strict=True))
    # the faults cost retries, not ratings: every answered question is rated, the others skipped
    assert {statuses[q] for q in answers.filter(pl.col("status") == "ok")["question_id"]} == {"ok"}
    assert {statuses[q] for q in answers.filter(pl.col("status") != "ok")["question_id"]} <= {"skipped"}
    kept = set(curated.filter(pl.col("verdict") == "keep")["question_id"])
    assert 0.3 * curated.height < len(kept) < curated.height  # the generator's ratings reject some
    splits = pl.read_parquet(data / "raft" / "splits.parquet")
    assert set(splits["question_id"]) == set(usable["question_id"]) & kept
    train, test = jsonl(data / "raft" / "raft_train.jsonl"), jsonl(data / "raft" / "raft_test.jsonl")
    assert len(jsonl(data / "raft" / "raft.jsonl")) == len(train) + len(test)
    assert len(jsonl(data / "raft" / "raft_chat.jsonl")) == len(train) + len(test)
    split_of = dict(zip(splits["doc_id"], splits["split"], strict=False))
    assert {split_of[record["doc_id"]] for record in train} == {"train"}
    assert {split_of[record["doc_id"]] for record in test} <= {"test"}


def test_no_eval_question_comes_from_a_training_document(pipeline):
    root, _, _, _ = pipeline
    data = root / "generated"
    items = json.loads((data / "eval" / "eval_set.json").read_text())
    trained = {
        record["doc_id"] for name in ("raft_train.jsonl", "raft_test.jsonl") for record in jsonl(data / "raft" / name)
    }
    assert items
    assert not {item["doc_id"] for item in items} & trained
    curated = parquet(data, "curated_answers")
    assert {item["id"] for item in items} <= set(curated.filter(pl.col("verdict") == "keep")["question_id"])


def test_the_report_covers_every_configured_system(pipeline, end_to_end_run: EndToEndRun):
    root, _, _, servers = pipeline
    data = root / "generated"
    report = json.loads((data / "reports" / "eval_report.json").read_text())
    questions = len(json.loads((data / "eval" / "eval_set.json").read_text()))
    assert sorted(report["systems"]) == sorted(SYSTEMS)
    for system, summary in report["systems"].items():
        assert summary["questions"] == questions, system
        assert summary["judged"] + summary["judge_failures"] == questions, system
    # The judge saw each distinct (question, reference, answer) once (repeats come from the reply cache), and the
    # experiment report asked it again, the answers in the other order, for its self-consistency.
    triples = {
        (row["question"], row["reference"], extract_answer(row["answer"]))
        for rows in report["answers"].values()
        for row in rows
    }
    asked_again = end_to_end_run.experiment_report["judge"]["self_consistency"]["n"]
    assert 0 < asked_again <= 20
    assert len(servers["judge"].stats.completed_fingerprints) == len(triples) + asked_again


def test_the_keys_appear_nowhere(pipeline, more_recipes: NewRecipes):
    """In the run's folder, once the new recipes' run (in the background, the same keys) has written there too."""
    root, result, keys, _ = pipeline
    written = [path for path in root.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in written)  # the Dagster event log is among them
    for key in keys.values():
        assert key not in result.stdout + result.stderr + more_recipes.result.stdout + more_recipes.result.stderr
        for path in written:
            assert key.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def more_recipes(whole_graph: WholeGraph) -> NewRecipes:
    return whole_graph.new_recipes()


def test_a_new_recipe_sends_no_generator_request_and_runs_only_its_assets(more_recipes):
    root, result, servers = more_recipes.root, more_recipes.result, more_recipes.servers
    assert servers["generator"].stats.completed == 0  # the shared upstream and the reference's answers: cached
    assert servers["judge"].stats.completed > 0  # the new fine-tuned models' answers are judged
    output = result.stdout
    assert "failed" not in output and "skipped" not in output
    for recipe in NEW_RECIPES:
        for asset in ("raft_dataset", "fsdp_checkpoint", "hf_checkpoint", "eval_report"):
            assert f"{asset}[{recipe}]" in output, (asset, recipe)
        assert (root / "generated" / "recipes" / recipe / "reports" / "eval_report.json").is_file()
    assert "experiment_report" in output
    assert "[default]" not in output and "documents" not in output and "eval_set" not in output


def test_the_experiment_report_compares_three_recipes_and_calibrates_the_judge(more_recipes):
    root = more_recipes.root
    report = json.loads((root / "generated" / "reports" / "experiment_report.json").read_text())
    # The eval documents, and so the number of questions, vary with the sitemap site's port, which is in its pages'
    # document ids (the split is a seeded shuffle of them).
    questions = len(json.loads((root / "generated" / "eval" / "eval_set.json").read_text()))
    assert questions >= 10
    assert {row["recipe"] for row in report["rows"]} == {"default", *NEW_RECIPES} and not report["excluded"]
    for row in report["rows"]:
        assert row["judge_accuracy"]["low"] <= row["judge_accuracy"]["mean"] <= row["judge_accuracy"]["high"]
        compared = row["recipe"] != "default" and row["variant"].startswith("finetuned")
        assert (row["vs_default"] is not None) == compared, row
        if compared:
            assert row["vs_default"]["paired_questions"] == row["questions"] == questions
            assert row["vs_default"]["mcnemar"] is not None and row["vs_default"]["words"]
    people = report["judge"]["with_humans"]
    assert report["judge"]["human_verdicts"] == PLANTED
    assert people["n"] == PLANTED and people["agreed"] == PLANTED - DISAGREEING
    assert report["judge"]["self_consistency"]["n"] > 0
    markdown = (root / "generated" / "reports" / "experiment_report.md").read_text()
    assert f"agreement {(PLANTED - DISAGREEING) / PLANTED:.2f} ({PLANTED - DISAGREEING} of {PLANTED})" in markdown
