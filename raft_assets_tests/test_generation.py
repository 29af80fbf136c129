"""`questions` and `cot_answers` against the OpenAI-compatible test server (and the extractive generator)."""

import asyncio
import re
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from raft_assets.contracts.prompts import load_prompts
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.llm.transport import StatusError, retry_delay, worth_retrying
from raft_assets_tests.conftest import write_sources
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message
from raft_assets_tests.raft_model import raft_responder

TOPICS = ["FSDP", "torchrun", "LoRA", "KV cache", "bf16", "vLLM", "GQA", "RoPE", "DCP", "SDPA"]
STATUSES = {"ok", "duplicate", "parse_error", "error", "over_budget"}


def write_corpus(folder: Path, count: int) -> Path:
    """`count` markdown documents of two paragraphs (two chunks) each, all different."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"doc_{i:02d}.md").write_text(document_text(i, "v1"), encoding="utf-8")
    return folder


def document_text(i: int, version: str) -> str:
    topic = TOPICS[i % len(TOPICS)]
    paragraphs = [
        " ".join(
            f"{topic} note {i}.{p}.{s} ({version}): rank {s} keeps shard {p * 10 + s} of layer {i} in memory."
            for s in range(9)
        )
        for p in range(2)
    ]
    return f"# {topic} {i}\n\n" + "\n\n".join(paragraphs)


def setup_source(project, instance, folder: Path) -> None:
    write_sources(Path(project.sources_file), [{"name": "docs", "kind": "local", "path": str(folder)}])
    instance.add_dynamic_partitions(doc_sources.name, ["docs"])


def materialize(project, instance, llm: LLMResource, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [documents, chunks, questions, cot_answers],
        partition_key="docs",
        instance=instance,
        resources={"paths": project, "llm": llm},
        run_config=run_config or {},
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def read(project, asset: str) -> pl.DataFrame:
    return pl.read_parquet(project.stage_file(asset, "docs"))


def endpoint(server: OpenAITestServer, **options) -> LLMResource:
    return LLMResource(base_url=server.base_url, model="test-model", **({"timeout_s": 2.0} | options))


@pytest.mark.slow  # seconds of retried faults
def test_a_partition_completes_under_injected_faults_and_nothing_is_lost(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 8))
    faults = {"http_500": 0.10, "http_429": 0.05, "timeout": 0.05, "no_answer_tag": 0.10}
    with OpenAITestServer(raft_responder, faults=faults, seed=7, retry_after_s=0.05, hang_s=10) as server:
        result = materialize(project, instance, endpoint(server, timeout_s=0.5, max_retries=8))
        stats = server.stats
    assert result.success

    chunk_ids = set(read(project, "chunks")["chunk_id"])
    found = read(project, "questions")
    answers = read(project, "cot_answers")
    assert set(found["chunk_id"]) == chunk_ids  # every chunk has rows
    assert set(found["status"]) <= STATUSES and set(answers["status"]) <= STATUSES
    assert sorted(answers["question_id"]) == sorted(found.filter(pl.col("status") == "ok")["question_id"])
    assert (answers["status"] == "ok").all() and answers["answer"].is_not_null().all()
    assert answers["quotes_ok"].all()
    assert (answers["attempts"] > 1).any()  # replies that lost their <ANSWER> tag were asked again

    assert stats.faults["http_500"] and stats.faults["http_429"] and stats.faults["timeout"]
    assert stats.faults["no_answer_tag"]
    generated = [metadata(result, "questions"), metadata(result, "cot_answers")]
    # Each reply the server completed is counted once, whatever the retries before it.
    assert sum(m["llm_requests"] for m in generated) == stats.completed
    assert sum(m["llm_prompt_tokens"] for m in generated) == stats.prompt_tokens
    assert sum(m["llm_completion_tokens"] for m in generated) == stats.completion_tokens
    assert sum(m["llm_http_attempts"] for m in generated) == stats.requests - stats.model_listings
    assert stats.model_listings == 2  # each stage checked the endpoint once before its first request
    assert sum(m["llm_retries"] for m in generated) > 0
    assert generated[0]["generator"] == "test-model"


def test_changing_one_document_sends_only_its_new_chunks(project, instance, tmp_path):
    folder = write_corpus(tmp_path / "corpus", 20)
    setup_source(project, instance, folder)
    with OpenAITestServer(raft_responder, keep_bodies=True) as server:
        llm = endpoint(server)
        assert materialize(project, instance, llm).success
        before = set(read(project, "chunks")["text"])
        server.reset_stats()

        (folder / "doc_07.md").write_text(document_text(7, "v2"), encoding="utf-8")
        assert materialize(project, instance, llm).success
        bodies = server.stats.bodies

    new_chunks = set(read(project, "chunks")["text"]) - before
    assert len(new_chunks) == 2
    documents = [re.search(r"<DOCUMENT>(.*?)</DOCUMENT>", last_user_message(b), re.S) for b in bodies]
    asked_about = [last_user_message(b) for b, document in zip(bodies, documents, strict=True) if document is None]
    answered_from = [document.group(1) for document in documents if document is not None]
    assert sorted(asked_about) == sorted(new_chunks)  # a question request for each new chunk, and only those
    assert set(answered_from) == new_chunks
    new_questions = read(project, "questions").filter(
        pl.col("chunk_id").is_in(set(read(project, "chunks").filter(pl.col("text").is_in(new_chunks))["chunk_id"]))
    )
    assert len(answered_from) == (new_questions["status"] == "ok").sum() > 0  # one answer per new question


def test_the_token_budget_stops_cleanly_and_a_rerun_resumes_from_the_cache(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    with OpenAITestServer(raft_responder) as server:
        result = materialize(project, instance, endpoint(server, token_budget=2_000, max_concurrency=1))
        spent = server.stats.prompt_tokens + server.stats.completion_tokens
        completed = server.stats.completed
        assert not result.success
        found = read(project, "questions")
        assert spent <= 2_000
        assert 0 < completed < 6
        assert set(found["status"]) == {"ok", "over_budget"}
        assert "token budget of 2,000 would be exceeded" in found.filter(pl.col("status") == "over_budget")["error"][0]

        server.reset_stats()
        assert materialize(project, instance, endpoint(server)).success
        assert metadata_of_latest(instance, "questions")["llm_cache_hits"] == completed
        assert server.stats.completed == 6 - completed + (read(project, "questions")["status"] == "ok").sum()


def metadata_of_latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def test_replicas_share_the_load(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 6))
    with (
        OpenAITestServer(raft_responder, latency_s=0.02, capacity=4) as first,
        OpenAITestServer(raft_responder, latency_s=0.02, capacity=4) as second,
    ):
        llm = LLMResource(base_url=f"{first.base_url},{second.base_url}", model="test-model", max_concurrency=8)
        assert materialize(project, instance, llm).success
        shares = [first.stats.completed, second.stats.completed]
    assert min(shares) >= 0.3 * sum(shares)


def test_requests_per_minute_spaces_requests(tmp_path):
    prompt = load_prompts()["questions"]
    with OpenAITestServer(raft_responder) as server:
        cache = ReplyCache(tmp_path / "cache.sqlite")

        async def send_six() -> float:
            async with endpoint(server, requests_per_minute=120).client(cache) as client:
                started = time.monotonic()
                batch = [{"chunk": f"chunk {i} " * 30, "num_questions": 2} for i in range(6)]
                await asyncio.gather(*(client.reply(prompt, values, prompt.params) for values in batch))
                return time.monotonic() - started

        elapsed = asyncio.run(send_six())
        cache.close()
    assert elapsed >= 1.5  # 120 per minute: after a burst of two, one every half second


def test_extractive_generator_runs_offline(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    result = materialize(project, instance, LLMResource())
    assert result.success
    assert metadata(result, "questions")["generator"] == "extractive"
    assert metadata(result, "cot_answers")["llm_requests"] == 0
    answers = read(project, "cot_answers")
    assert answers["quotes_ok"].all()
    assert all("##begin_quote##" in text and "<ANSWER>:" in text for text in answers["cot_answer"])


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    [failure] = result.get_step_failure_events()
    return failure.step_failure_data.user_failure_data.description


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("server_options", "llm_options", "reason"),
    [
        (
            {"models": ["meta-llama/Meta-Llama-3-70B-Instruct"]},
            {},
            "does not serve the model 'test-model'; it serves: meta-llama/Meta-Llama-3-70B-Instruct",
        ),
        ({"api_key": "the-servers-key"}, {"api_key": "a-wrong-key"}, "refused the API key (HTTP 401)"),
    ],
)
def test_a_wrong_model_or_key_stops_questions_before_any_chat_request(
    project, instance, tmp_path, server_options, llm_options, reason
):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    with OpenAITestServer(raft_responder, **server_options) as server:
        result = materialize(project, instance, endpoint(server, **llm_options))
        stats = server.stats
    assert not result.success
    assert reason in step_failure(result) and "questions[docs]: the generator endpoint cannot be used" in step_failure(
        result
    )
    assert stats.requests == 1 and stats.completed == 0  # the check of the endpoint, and not one chat request
    assert not project.stage_file("questions", "docs").exists()
    assert "a-wrong-key" not in step_failure(result)


def test_an_unreachable_endpoint_stops_questions_naming_it(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = materialize(project, instance, LLMResource(base_url=url, model="test-model"))
    assert not result.success
    assert f"{url} cannot be reached: connection failed: Cannot connect to host" in step_failure(result)
    assert not project.stage_file("questions", "docs").exists()


def test_a_rerun_from_the_cache_needs_no_endpoint(project, instance, tmp_path):
    """Only a stage that sends requests checks the endpoint: one whose replies are all cached runs without it."""
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    with OpenAITestServer(raft_responder) as server:
        assert materialize(project, instance, endpoint(server)).success
        url = server.base_url
    result = materialize(project, instance, LLMResource(base_url=url, model="test-model"))
    assert result.success and metadata(result, "questions")["llm_cache_hits"] > 0


def failed_check(result: dg.ExecuteInProcessResult, asset: str) -> dg.AssetCheckEvaluation:
    [check] = [e for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey(asset)]
    assert not check.passed
    return check


def test_the_questions_failure_rate_check_fails_and_quotes_the_most_common_errors(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    with OpenAITestServer(raft_responder, faults={"http_500": 1.0}) as server:
        result = materialize(project, instance, endpoint(server, max_retries=0))
    description = failed_check(result, "questions").description
    assert description.startswith("6 of 6 chunks failed (100.0%; the bound is 10%). Most common: 6 × HTTP 500")


def test_the_answers_failure_rate_check_fails_on_replies_without_an_answer(project, instance, tmp_path):
    setup_source(project, instance, write_corpus(tmp_path / "corpus", 3))
    with OpenAITestServer(raft_responder, faults={"no_answer_tag": 1.0}) as server:  # questions have no tag to lose
        result = materialize(project, instance, endpoint(server))
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.asset_key == dg.AssetKey("questions"))
    description = failed_check(result, "cot_answers").description
    assert (
        description
        == "27 of 27 answers failed (100.0%; the bound is 10%). Most common: 27 × no usable reply in 3 attempts."
    )


def test_chat_requests_are_retried_as_the_openai_sdk_retries_them():
    """408, 409 and 5xx replies are sent again (429 and 503 are the client's, after lowering its level), unless the
    server says otherwise or asks for a wait over 2 minutes; after the reply's Retry-After, or the SDK's backoff."""

    def reply(status: int, **headers: str) -> StatusError:
        return StatusError(status, {name.replace("_", "-"): value for name, value in headers.items()}, "")

    statuses = (408, 409, 500, 502, 400, 401, 404, 429, 503)
    assert [worth_retrying(reply(status)) for status in statuses] == [True] * 4 + [False] * 5
    assert not worth_retrying(reply(500, x_should_retry="false")) and worth_retrying(reply(400, x_should_retry="true"))
    assert not worth_retrying(reply(500, retry_after="121"))
    assert retry_delay(0, {"retry-after-ms": "250"}) == 0.25 and retry_delay(3, {"retry-after": "2"}) == 2.0
    assert all(0.375 <= retry_delay(0, {}) <= 0.5 and 6.0 <= retry_delay(10, {}) <= 8.0 for _ in range(50))
