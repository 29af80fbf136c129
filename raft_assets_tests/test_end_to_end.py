"""The whole graph from a fresh DAGSTER_HOME, as a user runs it, with faulty OpenAI-compatible servers.

The generator and the judge are loopback test servers that fail some requests (429, 5xx, dropped
connections) and spoil some replies; the base model is `tiny`; the sources are the two sample folders.
Every file of the contract must exist and agree with the others.
"""

import json
import uuid
from pathlib import Path

import polars as pl
import pytest
import yaml

from raft_assets.evaluation.metrics import extract_answer
from raft_assets_tests.conftest import SOURCES, run_cli
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message
from raft_assets_tests.raft_model import raft_responder

pytestmark = [pytest.mark.end_to_end, pytest.mark.torchrun]

GENERATOR_FAULTS = {"http_429": 0.04, "http_500": 0.04, "reset": 0.02, "no_answer_tag": 0.05}
JUDGE_FAULTS = {"http_503": 0.05}
RUN_CONFIG = {
    "ops": {
        "questions": {"config": {"questions_per_chunk": 2}},
        "eval_set": {"config": {"size": 20}},  # enough for every system's numbers; each is answered and judged
        "fsdp_checkpoint": {"config": {"max_steps": 2, "save_every_steps": 1, "context_length": 2048}},
        "eval_report": {"config": {"top_k": [3], "max_new_tokens": 8, "reference_endpoint": True}},
    }
}
SYSTEMS = [
    f"{model} {variant}" for model in ("finetuned", "base", "reference") for variant in ("no context", "RAG k=3")
]


def generator(body: dict) -> str:
    """The 70B stand-in: RAFT questions and answers, and plain answers when evaluated as the reference."""
    if body["messages"][0]["content"].startswith("You are a helpful chatbot"):
        return "The documents answer it. <ANSWER>: FSDP"
    return raft_responder(body)


def judge(body: dict) -> str:
    return ("YES", "NO")[len(last_user_message(body)) % 2]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def parquet(data: Path, stage: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(data / stage / f"{source}.parquet") for source in SOURCES])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One full run; yields its folder, its output and the two secrets."""
    root = tmp_path_factory.mktemp("end_to_end")
    config = root / "run_config.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    keys = {"generator": f"gen-{uuid.uuid4().hex}", "judge": f"judge-{uuid.uuid4().hex}"}
    servers = {
        "generator": OpenAITestServer(
            generator, models=["llama-70b"], api_key=keys["generator"], faults=GENERATOR_FAULTS, retry_after_s=0.01
        ),
        "judge": OpenAITestServer(
            judge, models=["judge"], api_key=keys["judge"], faults=JUDGE_FAULTS, retry_after_s=0.01
        ),
    }
    with servers["generator"], servers["judge"]:
        result = run_cli(
            root,
            "--config",
            str(config),
            RAFT_LLM_BASE_URL=servers["generator"].base_url,
            RAFT_LLM_API_KEY=keys["generator"],
            RAFT_LLM_MODEL="llama-70b",
            RAFT_JUDGE_BASE_URL=servers["judge"].base_url,
            RAFT_JUDGE_API_KEY=keys["judge"],
            RAFT_JUDGE_MODEL="judge",
        )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    yield root, result, keys, servers


def test_faults_were_injected_and_survived(pipeline):
    _, result, _, servers = pipeline
    assert sum(servers["generator"].stats.faults.values()) > 0
    assert sum(servers["judge"].stats.faults.values()) > 0
    assert "failed" not in result.stdout and "skipped" not in result.stdout


def test_every_file_of_the_contract_exists(pipeline):
    root, _, _, _ = pipeline
    data, checkpoints = root / "generated", root / "checkpoints"
    for stage in ("documents", "chunks", "questions", "cot_answers", "curated_answers"):
        for source in SOURCES:
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
    assert documents.height == sample_files
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


def test_the_report_covers_every_configured_system(pipeline):
    root, _, _, servers = pipeline
    data = root / "generated"
    report = json.loads((data / "reports" / "eval_report.json").read_text())
    questions = len(json.loads((data / "eval" / "eval_set.json").read_text()))
    assert sorted(report["systems"]) == sorted(SYSTEMS)
    for system, summary in report["systems"].items():
        assert summary["questions"] == questions, system
        assert summary["judged"] + summary["judge_failures"] == questions, system
    # The judge saw each distinct (question, reference, answer) once: repeats come from the reply cache.
    triples = {
        (row["question"], row["reference"], extract_answer(row["answer"]))
        for rows in report["answers"].values()
        for row in rows
    }
    assert len(servers["judge"].stats.completed_fingerprints) == len(triples)


def test_the_keys_appear_nowhere(pipeline):
    root, result, keys, _ = pipeline
    written = [path for path in root.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in written)  # the Dagster event log is among them
    for key in keys.values():
        assert key not in result.stdout + result.stderr
        for path in written:
            assert key.encode() not in path.read_bytes(), path
