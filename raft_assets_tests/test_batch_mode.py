"""`mode: batch`: the generation through the test server's Batch API, killed and resumed, against the online mode.

Run as a script (`python -m raft_assets_tests.test_batch_mode DATA_DIR SOURCES BASE_URL`), it is the batch-mode run
that the kill test starts in a process of its own.
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import openai
import polars as pl
import pytest

from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets_tests.conftest import REPO, write_sources
from raft_assets_tests.openai_server import BATCH_ENDPOINT, OpenAITestServer
from raft_assets_tests.raft_model import raft_responder
from raft_assets_tests.test_generation import materialize, metadata, step_failure, write_corpus

STAGES = ("questions", "cot_answers")


def batch_llm(base_url: str, **options) -> LLMResource:
    return LLMResource(
        base_url=base_url, model="test-model", mode="batch", batch_poll_interval_s=0.05, timeout_s=5.0, **options
    )


def project_at(data_dir: Path, sources_file: Path) -> ProjectPaths:
    return ProjectPaths(sources_file=str(sources_file), data_dir=str(data_dir), checkpoint_dir=str(data_dir / "ck"))


def run(
    project: ProjectPaths, llm: LLMResource, instance: dg.DagsterInstance, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition(doc_sources.name, "docs"):
        instance.add_dynamic_partitions(doc_sources.name, ["docs"])
    return materialize(project, instance, llm, run_config)


def outputs(project: ProjectPaths) -> dict[str, pl.DataFrame]:
    return {stage: pl.read_parquet(project.stage_file(stage, "docs")).sort("question_id") for stage in STAGES}


def batch_files(project: ProjectPaths) -> list[Path]:
    return [path for stage in STAGES if (path := project.layout.llm_batch_file(stage, "docs")).exists()]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Four documents (eight chunks, about forty questions), the same files for every run of the module."""
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder / "docs", 4)
    return write_sources(folder / "sources.yaml", [{"name": "docs", "kind": "local", "path": str(folder / "docs")}])


@pytest.fixture(scope="module")
def online(sources, tmp_path_factory) -> tuple[dict[str, pl.DataFrame], Counter[str]]:
    """What the online mode writes, and the requests it sent (body fingerprint -> replies)."""
    project = project_at(tmp_path_factory.mktemp("online"), sources)
    with dg.DagsterInstance.ephemeral() as instance, OpenAITestServer(raft_responder) as server:
        llm = LLMResource(base_url=server.base_url, model="test-model", timeout_s=5.0)
        assert run(project, llm, instance).success
        return outputs(project), server.stats.completed_fingerprints


def assert_same_files(project: ProjectPaths, online: dict[str, pl.DataFrame]) -> None:
    for stage, frame in outputs(project).items():
        assert frame.equals(online[stage]), stage


def test_the_test_servers_batch_api_answers_as_openais_does():
    def line(n: int, custom_id: str | None = None) -> str:
        body = {"model": "test-model", "messages": [{"role": "user", "content": f"line {n}"}]}
        return json.dumps({"custom_id": custom_id or f"r{n}", "method": "POST", "url": BATCH_ENDPOINT, "body": body})

    with OpenAITestServer(batch_latency_s=0.2, batch_failed_share=0.5) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        upload = api.files.create(file=("in.jsonl", "\n".join(line(n) for n in range(8)).encode()), purpose="batch")
        batch = api.batches.create(input_file_id=upload.id, endpoint=BATCH_ENDPOINT, completion_window="24h")
        statuses = [batch.status]
        while batch.status != "completed":
            time.sleep(0.05)
            batch = api.batches.retrieve(batch.id)
            statuses += [batch.status] if batch.status != statuses[-1] else []
        output = [json.loads(text) for text in api.files.content(batch.output_file_id).text.splitlines()]
        errors = [json.loads(text) for text in api.files.content(batch.error_file_id).text.splitlines()]
        duplicate = api.files.create(file=("dup.jsonl", f"{line(0)}\n{line(1, 'r0')}".encode()), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="unique"):
            api.batches.create(input_file_id=duplicate.id, endpoint=BATCH_ENDPOINT, completion_window="24h")
        stats = server.batch_stats

    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    assert sorted(record["custom_id"] for record in output + errors) == [f"r{n}" for n in range(8)]
    assert 0 < len(output) < 8 and batch.request_counts.completed == len(output)
    for record in output:
        reply = record["response"]["body"]["choices"][0]["message"]["content"]
        assert record["response"]["status_code"] == 200 and reply == f"echo: line {record['custom_id'][1:]}"
    assert {record["response"]["status_code"] for record in errors} == {500}
    assert (stats.batches_created, stats.lines, stats.lines_answered) == (1, 8, len(output))


def test_batch_mode_writes_what_the_online_mode_writes_asking_each_request_once(sources, online, tmp_path, instance):
    online_outputs, online_requests = online
    project = project_at(tmp_path / "batch", sources)
    with OpenAITestServer(raft_responder, batch_latency_s=0.2) as server:
        result = run(project, batch_llm(server.base_url), instance)
        assert result.success
        batches, chat = server.batch_stats, server.stats
        assert run(project, batch_llm(server.base_url), instance).success  # again: everything is cached
        again = server.batch_stats
        assert server.stats.requests == chat.requests  # not even the check of the endpoint

    assert_same_files(project, online_outputs)
    assert chat.completed == 0  # no reply was asked online
    assert batches.batches_created == 2 and batches.lines_failed == 0  # one batch per stage
    assert batches.answered_fingerprints == online_requests  # the online mode's requests, each once
    assert again.batches_created == 2 and again.files_uploaded == 2
    assert batch_files(project) == []  # the state files go once the replies are cached
    stages = [metadata(result, stage) for stage in STAGES]
    assert sum(m["batch_replies"] for m in stages) == batches.lines == sum(m["batch_requests"] for m in stages)
    assert all(m["batch_ids"].startswith("batch_") and m["batch_failed"] == 0 for m in stages)
    assert all(m["llm_requests"] == 0 for m in stages)


def test_failed_lines_are_asked_online_once_and_succeed(sources, online, tmp_path, instance):
    online_outputs, online_requests = online
    project = project_at(tmp_path / "batch", sources)
    with OpenAITestServer(raft_responder, batch_latency_s=0.1, batch_failed_share=0.3, seed=3) as server:
        result = run(project, batch_llm(server.base_url), instance)
        batches, chat = server.batch_stats, server.stats
    assert result.success

    assert_same_files(project, online_outputs)
    assert all((frame["status"].is_in(["ok", "duplicate"])).all() for frame in outputs(project).values())
    assert batches.lines_failed > 5
    asked_online = chat.completed_fingerprints
    assert sum(asked_online.values()) == batches.lines_failed  # each failed line once, online
    assert not set(asked_online) & set(batches.answered_fingerprints)  # nothing answered twice
    assert asked_online + batches.answered_fingerprints == online_requests
    stages = [metadata(result, stage) for stage in STAGES]
    assert sum(m["batch_failed"] for m in stages) == batches.lines_failed
    assert sum(m["llm_requests"] for m in stages) == chat.completed


def test_the_token_budget_holds_for_the_batch_and_the_online_requests_together(sources, tmp_path, instance):
    project = project_at(tmp_path / "batch", sources)
    with OpenAITestServer(raft_responder, batch_latency_s=0.1) as server:
        lenient = {"ops": {stage: {"config": {"max_failure_rate": 1.0}} for stage in STAGES}}
        result = run(project, batch_llm(server.base_url, token_budget=4_000), instance, lenient)
    chunks = pl.read_parquet(project.stage_file("questions", "docs")).unique("chunk_id")
    assert set(chunks["status"]) == {"ok", "over_budget"}  # some chunks fit the budget, the rest were not sent
    for stage in STAGES:
        spent = metadata(result, stage)
        assert spent["batch_requests"] > 0
        tokens = ("batch_prompt_tokens", "batch_completion_tokens", "llm_prompt_tokens", "llm_completion_tokens")
        assert sum(spent[name] for name in tokens) <= 4_000


def test_an_endpoint_without_the_batch_api_stops_the_stage_saying_so(sources, tmp_path, instance):
    project = project_at(tmp_path / "batch", sources)
    with OpenAITestServer(raft_responder, batch_latency_s=None) as server:  # as vLLM's OpenAI server
        result = run(project, batch_llm(server.base_url), instance)
        chat = server.stats
    assert not result.success
    assert f"{server.base_url} offers no Batch API (HTTP 404" in step_failure(result)
    assert "use mode: online" in step_failure(result) and "Nothing was sent" in step_failure(result)
    assert chat.completed == 0
    assert batch_files(project) == []


@pytest.mark.resume
def test_a_run_killed_after_submitting_polls_the_same_batch(sources, online, tmp_path, instance):
    online_outputs, online_requests = online
    project = project_at(tmp_path / "batch", sources)
    state = project.layout.llm_batch_file("questions", "docs")
    with OpenAITestServer(raft_responder, batch_latency_s=600) as server:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raft_assets_tests.test_batch_mode",
                project.data_dir,
                str(sources),
                server.base_url,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while not state.exists():  # the batch is created, its id kept
                assert process.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline, "the run never submitted its batch"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        submitted = json.loads(state.read_text())["batches"]
        assert server.batch_stats.batches_created == 1

        server.batches.latency_s = 0.1
        result = run(project, batch_llm(server.base_url), instance)
        assert result.success
        batches, chat = server.batch_stats, server.stats

    assert [metadata(result, "questions")["batch_ids"]] == submitted  # the killed run's batch, polled
    assert batches.batches_created == 2  # that one, and the answers' batch: none submitted again
    assert chat.completed == 0
    assert batches.answered_fingerprints == online_requests
    assert_same_files(project, online_outputs)
    assert batch_files(project) == []


def main(data_dir: str, sources_file: str, base_url: str) -> None:
    """The generation in batch mode, in a process of its own (the kill test's)."""
    with dg.DagsterInstance.ephemeral() as instance:
        run(project_at(Path(data_dir), Path(sources_file)), batch_llm(base_url), instance)


if __name__ == "__main__":
    main(*sys.argv[1:])
