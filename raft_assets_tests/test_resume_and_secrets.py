"""The generation run as a user runs it (`raft-assets run`): killed and resumed, and keeping its key secret."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from raft_assets_tests.conftest import RAFT_ASSETS, REPO, cli_env, run_cli, write_sources
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.raft_model import raft_responder
from raft_assets_tests.test_generation import write_corpus


def corpus_sources(tmp_path: Path, count: int) -> Path:
    folder = write_corpus(tmp_path / "corpus", count)
    return write_sources(tmp_path / "sources.yaml", [{"name": "docs", "kind": "local", "path": str(folder)}])


GENERATION = ["--select", "documents,chunks,questions,cot_answers"]


def endpoint_env(server: OpenAITestServer, **extra: str) -> dict[str, str]:
    return {"RAFT_LLM_BASE_URL": server.base_url, "RAFT_LLM_MODEL": "test-model", **extra}


def cached_replies(data_dir: Path) -> int:
    """Endpoint replies in the reply cache (not the local models' answers, which eval_report keeps there too)."""
    path = data_dir / "llm_cache" / "replies.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM replies WHERE model NOT LIKE 'transformers:%'").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def outputs(data_dir: Path) -> dict[str, pl.DataFrame]:
    return {
        stage: pl.read_parquet(data_dir / stage / "docs.parquet").sort("question_id")
        for stage in ("questions", "cot_answers")
    }


@pytest.mark.resume
def test_a_killed_run_resumes_without_paying_twice_and_matches_an_uninterrupted_run(tmp_path):
    sources = corpus_sources(tmp_path, 8)  # 16 chunks: 16 question requests, then about 80 answers
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    with OpenAITestServer(raft_responder, hold_after=40, latency_s=0.01) as server:
        process = subprocess.Popen(
            [RAFT_ASSETS, "run", *GENERATION],
            cwd=REPO,
            env=cli_env(killed_dir, sources, **endpoint_env(server)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            # Wait until the server holds further requests and every completed reply is in the cache.
            while not (
                server.stats.completed >= 40 and cached_replies(killed_dir / "generated") == server.stats.completed
            ):
                assert process.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline, "the run never reached the hold"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        completed_before_kill = server.stats.completed_fingerprints

        server.release()
        resumed = run_cli(killed_dir, *GENERATION, sources=sources, **endpoint_env(server))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        completed_after = server.stats.completed_fingerprints

    # Not one reply completed before the kill was asked for again.
    assert all(completed_after[fp] == count for fp, count in completed_before_kill.items())
    assert sum(completed_before_kill.values()) >= 40

    with OpenAITestServer(raft_responder) as fresh:
        uninterrupted = run_cli(clean_dir, *GENERATION, sources=sources, **endpoint_env(fresh))
        assert uninterrupted.returncode == 0, uninterrupted.stdout + uninterrupted.stderr
        assert fresh.stats.completed == sum(completed_after.values())  # the same requests in all
    for stage, frame in outputs(killed_dir / "generated").items():
        assert frame.equals(outputs(clean_dir / "generated")[stage]), stage


@pytest.mark.slow  # a `raft-assets run` of the generation
def test_the_api_key_appears_nowhere(tmp_path):
    secret = f"raft-test-key-{uuid.uuid4().hex}"
    sources = corpus_sources(tmp_path, 2)
    with OpenAITestServer(raft_responder, api_key=secret) as server:
        result = run_cli(
            tmp_path, "--verbose", *GENERATION, sources=sources, **endpoint_env(server, RAFT_LLM_API_KEY=secret)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert server.stats.completed > 0  # the key was sent, so the server accepted it

    assert secret not in result.stdout + result.stderr
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.name != "sources.yaml"]
    assert any(path.suffix == ".db" for path in written)  # the Dagster event log and run storage
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
