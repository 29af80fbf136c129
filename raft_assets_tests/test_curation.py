"""`curated_answers` through the OpenAI-compatible test server (structured output, faults), its checks, the heuristic
stand-in, near-duplicates, and the dataset and eval set reading only the kept questions."""

import json
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from raft_assets.contracts.tables import HEURISTIC_CURATOR
from raft_assets.curation.heuristic import rate
from raft_assets.curation.rubric import NEAR_DUPLICATE, SCHEMA_NAME, Rating
from raft_assets.curation.verdicts import Policy, curate
from raft_assets.defs.curation.assets import curated_answers
from raft_assets.defs.dataset.assets import eval_set, raft_dataset
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.base_model import base_model
from raft_assets.llm.asking import Outcome
from raft_assets.retrieval.embeddings import embed, load_embedder
from raft_assets_tests.conftest import REPO, SOURCES, run_assets, write_sources
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.raft_model import default_score, raft_responder, rating_responder

CURATOR_KEY = f"test-{uuid.uuid4().hex}"  # made up per run: no secret is written in the tree

SOURCE = "llama_docs"
GENERATION = [documents, chunks, questions, cot_answers]
FEW_QUESTIONS = {"questions": {"config": {"questions_per_chunk": 2}}}
CHUNK = (
    "FSDP shards parameters, gradients and optimizer state across GPUs. Activation checkpointing stores only the "
    "inputs of each transformer block and recomputes the rest during the backward pass."
)
QUOTE = "Activation checkpointing stores only the inputs of each transformer block"
PATIENT = {"curated_answers": {"config": {"max_attempts": 5}}}  # five replies off the schema in a row: unlikely


def setup_source(project, instance, sources: list[str] = [SOURCE]) -> None:  # noqa: B006 (not mutated)
    write_sources(
        Path(project.sources_file),
        [{"name": name, "kind": "local", "path": str(REPO / "data" / name)} for name in sources],
    )
    instance.add_dynamic_partitions(doc_sources.name, sources)


def endpoint(server: OpenAITestServer, **options) -> LLMResource:
    return LLMResource(base_url=server.base_url, model="test-model", **({"timeout_s": 2.0} | options))


def materialize(
    project, instance, selection: list, llm: LLMResource, curator: LLMResource | None = None, config: dict | None = None
) -> dg.ExecuteInProcessResult:
    selected = {asset.key.to_user_string() for asset in selection}
    return dg.materialize(
        [*GENERATION, curated_answers],
        selection=selection,
        partition_key=SOURCE,
        instance=instance,
        resources={"paths": project, "llm": llm, "curator": curator or LLMResource()},
        run_config={
            "ops": {name: ops for name, ops in {**FEW_QUESTIONS, **(config or {})}.items() if name in selected}
        },
        raise_on_error=False,
    )


def generated(project, instance) -> None:
    """Questions and answers for the source, from a clean test server (its replies then come from the cache)."""
    with OpenAITestServer(raft_responder) as server:
        assert materialize(project, instance, GENERATION, endpoint(server)).success


def read(project, stage: str) -> pl.DataFrame:
    return pl.read_parquet(project.stage_file(stage, SOURCE))


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [materialization] = result.asset_materializations_for_node("curated_answers")
    return {key: value.value for key, value in materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path == ["curated_answers"]}


def rated_questions(project) -> pl.DataFrame:
    """curated_answers joined with the questions' text."""
    asked = read(project, "questions").select("question_id", "question")
    return read(project, "curated_answers").join(asked, on="question_id", how="left")


@pytest.mark.slow  # faults cost the SDK's backoff
def test_every_question_is_rated_through_faults_with_structured_output_and_a_rerun_sends_nothing(project, instance):
    setup_source(project, instance)
    generated(project, instance)
    faults = {"http_429": 0.05, "http_500": 0.05, "reset": 0.03, "off_schema": 0.15}
    with OpenAITestServer(
        raft_responder, models=["curator-model"], api_key=CURATOR_KEY, faults=faults, retry_after_s=0.01
    ) as server:
        curator = LLMResource(
            base_url=server.base_url, model="curator-model", api_key=CURATOR_KEY, timeout_s=2.0, max_retries=8
        )
        # The generator endpoint is down: a request for curation sent there would fail the run.
        down = LLMResource(base_url="http://127.0.0.1:9/v1", model="test-model")
        result = materialize(project, instance, [curated_answers], down, curator, PATIENT)
        stats = server.stats
        assert result.success

        table = rated_questions(project)
        answers = read(project, "cot_answers")
        assert sorted(table["question_id"]) == sorted(answers["question_id"])  # every question has a row
        assert set(table["status"]) == {"ok"} and set(table["judge_model"]) == {"curator-model"}
        # Every request asked for the rating's JSON schema; the replies that ignored it were asked again.
        assert stats.response_formats == {SCHEMA_NAME: sum(stats.fingerprints.values())}
        assert stats.faults["off_schema"] > 0 and stats.faults["http_429"] + stats.faults["reset"] > 0
        assert len(stats.completed_fingerprints) > table.height  # retries with a new seed are new requests
        for row in table.iter_rows(named=True):
            assert row["score"] == default_score(row["question"])
            kept = row["score"] >= 7 and NEAR_DUPLICATE not in row["reasons"]
            assert row["verdict"] == ("keep" if kept else "reject"), row
        assert {"keep", "reject"} == set(table["verdict"])
        facts = metadata(result)
        assert facts["verdict_keep"] == (table["verdict"] == "keep").sum()
        assert facts["llm_requests"] == stats.completed and Path(facts["score_histogram"]).stat().st_size > 0
        assert "| question" in facts["lowest_rated"] and "not_search_like" in facts["lowest_rated"]
        assert all(check.passed for check in checks(result).values())

        server.reset_stats()
        again = materialize(project, instance, [curated_answers], down, curator, PATIENT)
        assert again.success and server.stats.completed == 0 and server.stats.requests == 0
        assert metadata(again)["llm_cache_hits"] == facts["llm_requests"]  # the replies off the schema as well
        assert read(project, "curated_answers").equals(table.drop("question"))


def test_without_a_curator_the_generator_endpoint_rates(project, instance):
    setup_source(project, instance)
    with OpenAITestServer(raft_responder, keep_bodies=True) as server:
        result = materialize(project, instance, [*GENERATION, curated_answers], endpoint(server))
        assert result.success
        assert server.stats.response_formats[SCHEMA_NAME] == read(project, "curated_answers").height
    assert set(read(project, "curated_answers")["judge_model"]) == {"test-model"}


@pytest.mark.parametrize(
    ("responder", "faults", "problem"),
    [
        (rating_responder(lambda question: 11), {}, "score: Input should be less than or equal to 10"),
        (raft_responder, {"off_schema": 1.0}, "score: Field required"),
    ],
    ids=["score_out_of_range", "server_ignores_the_schema"],
)
def test_a_reply_that_does_not_fit_the_schema_is_retried_then_recorded_and_fails_the_failure_rate_check(
    project, instance, responder, faults, problem
):
    setup_source(project, instance)
    generated(project, instance)
    with OpenAITestServer(responder, faults=faults) as server:
        result = materialize(project, instance, [curated_answers], endpoint(server), config=ATTEMPTS)
        completed = server.stats.completed
    table = read(project, "curated_answers")
    assert set(table["status"]) == {"parse_error"} and table["score"].is_null().all()
    assert (table["verdict"] == "reject").all()
    assert completed == 2 * table.height  # each asked again once (max_attempts 2) with a new seed
    assert all(error.startswith("no reply fitting the rating schema in 2 attempts") for error in table["error"])
    assert all(problem in error for error in table["error"])
    failed = checks(result)["failure_rate_within_bound"]
    assert not failed.passed and not result.success
    assert failed.description.startswith(f"{table.height} of {table.height} ratings failed (100.0%")


ATTEMPTS = {"curated_answers": {"config": {"max_attempts": 2}}}


def test_a_curator_that_rejects_nearly_everything_fails_the_keep_rate_check(project, instance):
    setup_source(project, instance)
    generated(project, instance)
    with OpenAITestServer(rating_responder(lambda question: 2)) as server:
        result = materialize(project, instance, [curated_answers], endpoint(server))
    table = read(project, "curated_answers")
    assert (table["verdict"] == "reject").all() and (table["status"] == "ok").all()
    found = checks(result)
    assert found["failure_rate_within_bound"].passed
    assert not found["keep_rate_at_least_floor"].passed and not result.success
    assert found["keep_rate_at_least_floor"].description.startswith(f"0 of {table.height} questions kept (0.0%")


def test_the_keep_rate_floor_is_configurable(project, instance):
    setup_source(project, instance)
    generated(project, instance)
    with OpenAITestServer(rating_responder(lambda question: 2)) as server:
        result = materialize(
            project,
            instance,
            [curated_answers],
            endpoint(server),
            config={"curated_answers": {"config": {"min_score": 2}}},
        )
    assert result.success and (read(project, "curated_answers")["verdict"] == "keep").any()


def test_the_heuristic_stand_in_rates_offline_and_says_so(project, instance):
    setup_source(project, instance)
    result = materialize(project, instance, [*GENERATION, curated_answers], LLMResource())
    assert result.success
    facts = metadata(result)
    assert facts["curator"] == HEURISTIC_CURATOR and "heuristic" in facts["stand_in"]
    assert facts["llm_requests"] == 0
    table = read(project, "curated_answers")
    assert table.height == read(project, "cot_answers").height
    assert (table["status"] == "ok").all() and (table["verdict"] == "keep").mean() > 0.5


def cot(quote: str, answer: str) -> str:
    return f"The chunk says: ##begin_quote##{quote}##end_quote##\n<ANSWER>: {answer}"


def test_the_heuristic_gives_a_good_pair_full_marks():
    rating = rate("What does activation checkpointing store in FSDP?", CHUNK, cot(QUOTE, QUOTE))
    assert rating == Rating(score=10, reasons=[], comment=rating.comment)
    assert "quotes found" in rating.comment and "100% of the answer's words" in rating.comment


@pytest.mark.parametrize(
    ("question", "answer", "quote", "reason", "highest"),
    [
        ("Where is the Quick search box on the docs site?", QUOTE, QUOTE, "off_domain", 4),
        ("Who holds the © Copyright of these pages?", QUOTE, QUOTE, "off_domain", 4),
        ("How much memory does FSDP save?", "It saves 80% of memory on eight GPUs.", QUOTE, "not_grounded", 5),
        ("How much memory does FSDP save?", QUOTE, "FSDP halves memory on every GPU", "not_grounded", 5),
        ("What does the passage say about checkpointing?", QUOTE, QUOTE, "not_self_contained", 6),
        ("What should I know about Activation checkpointing stores only the?", QUOTE, QUOTE, "not_search_like", 8),
        ("Activation checkpointing in FSDP", QUOTE, QUOTE, "not_search_like", 8),
        ("What does activation checkpointing store?", "Inputs.", QUOTE, "incomplete", 7),
    ],
)
def test_the_heuristic_names_what_is_wrong_with_a_bad_pair(question, answer, quote, reason, highest):
    rating = rate(question, CHUNK, cot(quote, answer))
    assert reason in rating.reasons and rating.score <= highest


def outcome(score: int) -> Outcome[Rating]:
    return Outcome("ok", value=Rating(score=score, reasons=[], comment=""), attempts=1)


def test_of_near_duplicates_the_best_rated_is_kept_and_ties_go_to_the_smaller_id():
    asked = [
        ("q1", "How do I enable activation checkpointing in FSDP?", 7),
        ("q2", "How can I enable activation checkpointing with FSDP?", 9),  # q1's duplicate, better rated
        ("q4", "Which learning rate does LoRA fine-tuning use?", 8),
        ("q3", "What learning rate does LoRA fine-tuning use?", 8),  # q4's duplicate, same score, smaller id
        ("q5", "How much GPU memory does QLoRA need for a 70B model?", 8),
    ]
    ids = [question_id for question_id, _, _ in asked]
    answers = pl.DataFrame({"question_id": [*ids, "q6"], "status": ["ok"] * 5 + ["error"], "error": [None] * 5 + ["x"]})
    pending = pl.DataFrame({"question_id": ids, "question": [question for _, question, _ in asked]})
    model = load_embedder()
    table = curate(
        answers, pending, [outcome(score) for _, _, score in asked], "m", Policy(7, 0.9), lambda t: embed(model, t)
    )
    verdicts = dict(zip(table["question_id"], table["verdict"], strict=True))
    assert verdicts == {"q1": "reject", "q2": "keep", "q4": "reject", "q3": "keep", "q5": "keep", "q6": "reject"}
    reasons = dict(zip(table["question_id"], table["reasons"], strict=True))
    assert reasons["q1"].to_list() == [NEAR_DUPLICATE, "kept instead: q2"]
    assert reasons["q4"].to_list() == [NEAR_DUPLICATE, "kept instead: q3"]
    skipped = table.filter(pl.col("question_id") == "q6").row(0, named=True)
    assert skipped["status"] == "skipped" and "cot_answers has status 'error' (x)" in skipped["error"]
    # a stricter threshold keeps them all
    loose = curate(
        answers, pending, [outcome(score) for _, _, score in asked], "m", Policy(7, 0.999), lambda t: embed(model, t)
    )
    assert (loose.filter(pl.col("status") == "ok")["verdict"] == "keep").all()


@pytest.mark.slow  # the sample corpus through eval_set, the tiny base model built
def test_rejected_questions_are_absent_from_the_dataset_and_the_eval_set(project, instance, tmp_path):
    setup_source(project, instance, SOURCES)
    with OpenAITestServer(raft_responder) as server:
        llm = endpoint(server)
        for source in SOURCES:
            run_assets(project, instance, [*GENERATION, curated_answers], source, FEW_QUESTIONS, llm=llm)
    verdicts = pl.concat([pl.read_parquet(project.stage_file("curated_answers", s)) for s in SOURCES])
    rejected = set(verdicts.filter(pl.col("verdict") == "reject")["question_id"])
    kept = set(verdicts.filter(pl.col("verdict") == "keep")["question_id"])
    assert rejected and kept

    eval_config = {"eval_set": {"config": {"curation_file": str(tmp_path / "none.yaml"), "size": 1000}}}
    result = run_assets(project, instance, [retrieval_index, base_model, raft_dataset, eval_set], config=eval_config)
    data = Path(project.data_dir)
    records = (data / "raft" / "raft.jsonl").read_text().splitlines()
    trained = {json.loads(line)["id"].removeprefix("raft_").removesuffix("_refusal") for line in records}
    evaluated = {item["id"] for item in json.loads((data / "eval" / "eval_set.json").read_text())}
    split = set(pl.read_parquet(data / "raft" / "splits.parquet")["question_id"])
    assert trained and evaluated
    assert not {question_id[:16] for question_id in rejected} & trained  # a record's id: its question_id's start
    assert not rejected & (evaluated | split)
    assert split <= kept
    facts = {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    answered = set(
        pl.concat([pl.read_parquet(project.stage_file("cot_answers", s)) for s in SOURCES]).filter(
            (pl.col("status") == "ok") & pl.col("quotes_ok")
        )["question_id"]
    )
    assert facts["raft_dataset"]["dropped_by_curation"].value == len(answered & rejected) > 0
    assert facts["eval_set"]["dropped_by_curation"].value > 0
