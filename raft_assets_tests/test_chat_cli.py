"""`raft-assets chat`: retrieval, a streamed answer and its sources, from the tiny checkpoint or an endpoint."""

from __future__ import annotations

import io
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from raft_assets.cli import main
from raft_assets.cli.chat import shorten
from raft_assets_tests.conftest import RAFT_ASSETS, REPO, cli_env
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message
from raft_assets_tests.test_answering import build_project

FSDP_SENTENCE = (
    "Fully Sharded Data Parallel shards parameters, gradients and optimizer states across data parallel workers."
)


@pytest.fixture(scope="module")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("chat"))


def chat(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`raft-assets chat ARGS` in a subprocess, with the data and checkpoints under `root`."""
    return subprocess.run(
        [RAFT_ASSETS, "chat", *args],
        cwd=REPO,
        env=cli_env(root, RAFT_CHECKPOINT_DIR=str(root / "checkpoints")),
        capture_output=True,
        text=True,
        timeout=120,
    )


def quoting_responder(body: dict[str, Any]) -> str:
    """Quotes the first sentence of the first retrieved document that mentions the question's last word."""
    user = last_user_message(body)
    keyword = re.search(r"^Question: .*?(\w+)\?$", user, re.MULTILINE).group(1).lower()
    documents = re.findall(r"<DOCUMENT>(.*?)</DOCUMENT>", user.split("\n\nAnswer this question", 1)[0], re.DOTALL)
    document = next(text for text in documents if keyword in text.lower())
    sentence = document.split(". ")[0].rstrip(".") + "."
    return f"The context says ##begin_quote## {sentence} ##end_quote## so that is it.\n<ANSWER>: {sentence}"


@pytest.mark.slow  # `raft-assets chat` in a subprocess
def test_chat_answers_a_question_from_the_newest_checkpoint_and_lists_the_sources(project_root: Path):
    result = chat(
        project_root, "--question", "How does FSDP shard parameters?", "--top-k", "3", "--max-new-tokens", "8"
    )
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.split("\nSources\n")
    assert answer.strip()  # the tiny model's (untrained) answer
    retrieved = re.findall(r"^    \d\. (.*), score (\d\.\d{3})$", sources, re.MULTILINE)
    assert len(retrieved) == 3
    assert retrieved[0][0].startswith("FSDP tutorial (pytorch, https://pytorch.org/tutorials/fsdp.html; chunk ")
    assert "checkpoints/hf/run-1" in result.stderr


@pytest.mark.slow  # `raft-assets chat` in a subprocess
def test_chat_streams_from_an_endpoint_and_names_the_document_it_quoted(project_root: Path):
    with OpenAITestServer(quoting_responder, keep_bodies=True, stream_chunks=5) as server:
        result = chat(
            project_root,
            *("--endpoint", server.base_url, "--model", "test-model"),
            *("--question", "Which technique shards optimizer states across workers?"),
        )
        bodies = server.stats.bodies
    assert result.returncode == 0, result.stderr
    assert bodies[0]["stream"] is True and bodies[0]["temperature"] == 0.0
    assert bodies[0]["messages"][1]["content"].count("</DOCUMENT>\n") == 5  # top-k 5 by default
    assert f"<ANSWER>: {FSDP_SENTENCE}" in result.stdout
    quoted = re.search(r'^  Quoted:\n    "(.*)" <- (.*)$', result.stdout, re.MULTILINE)
    assert quoted.group(1) == shorten(FSDP_SENTENCE)
    assert quoted.group(2).startswith("FSDP tutorial (pytorch, https://pytorch.org/tutorials/fsdp.html; chunk ")
    assert len(re.findall(r"^    \d\. ", result.stdout, re.MULTILINE)) == 5


def test_chat_asks_on_stdin_until_exit_without_retrieval(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("RAFT_DATA_DIR", str(project_root / "generated"))
    monkeypatch.setattr("sys.stdin", io.StringIO("What is RAFT?\n\nAnd FSDP?\nexit\nnever asked?\n"))
    with OpenAITestServer(keep_bodies=True) as server:
        code = main(["chat", "--endpoint", server.base_url, "--model", "test-model", "--no-retrieval"])
        bodies = server.stats.bodies
    assert code == 0
    assert [body["messages"][1]["content"].splitlines()[:2] for body in bodies] == [
        ["Question: What is RAFT?", "Context: "],
        ["Question: And FSDP?", "Context: "],
    ]
    out = capsys.readouterr().out
    assert out.count("echo: Question: What is RAFT?") == 1
    assert out.count("Retrieved: none (no retrieval)") == 2


def test_an_endpoint_gets_the_chats_own_key_and_never_the_generators(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    generator_key, chat_key, flag_key = (f"{name}-key-{uuid.uuid4().hex}" for name in ("generator", "chat", "flag"))
    monkeypatch.setenv("RAFT_DATA_DIR", str(project_root / "generated"))
    monkeypatch.setenv("RAFT_LLM_API_KEY", generator_key)
    monkeypatch.delenv("RAFT_CHAT_API_KEY", raising=False)
    ask = ["--model", "test-model", "--no-retrieval", "--question", "Which key?"]

    # An endpoint that accepts the generator's key only: without a chat key, the chat sends none, and is refused.
    with OpenAITestServer(api_key=generator_key) as server:
        assert main(["chat", "--endpoint", server.base_url, *ask]) == 1
        assert server.stats.status_counts == {401: 1}
    refused = capsys.readouterr()
    assert "Error code: 401" in refused.err

    # The chat's own key from RAFT_CHAT_API_KEY; --api-key wins over the variable.
    monkeypatch.setenv("RAFT_CHAT_API_KEY", chat_key)
    with OpenAITestServer(api_key=chat_key) as server:
        assert main(["chat", "--endpoint", server.base_url, *ask]) == 0
        assert server.stats.status_counts == {200: 1}
    from_variable = capsys.readouterr()
    with OpenAITestServer(api_key=flag_key) as server:
        assert main(["chat", "--endpoint", server.base_url, "--api-key", flag_key, *ask]) == 0
        assert server.stats.status_counts == {200: 1}
    from_flag = capsys.readouterr()

    assert "echo: Question: Which key?" in from_variable.out and "echo: Question: Which key?" in from_flag.out
    output = "".join(stream for result in (refused, from_variable, from_flag) for stream in (result.out, result.err))
    assert not [key for key in (generator_key, chat_key, flag_key) if key in output]


def test_chat_errors_are_one_line_and_exit_code_2(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("RAFT_DATA_DIR", str(tmp_path / "nothing"))
    assert main(["chat", "--question", "Anyone?"]) == 2
    assert capsys.readouterr().err == (
        f"error: No chunk index in {tmp_path / 'nothing' / 'index'}: materialize 'retrieval_index' first.\n"
    )

    monkeypatch.setenv("RAFT_DATA_DIR", str(project_root / "generated"))
    monkeypatch.setenv("RAFT_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    assert main(["chat", "--question", "Anyone?"]) == 2
    assert capsys.readouterr().err == (
        f"error: no fine-tuned checkpoint in {tmp_path / 'checkpoints' / 'hf'}: "
        "materialize hf_checkpoint first or pass --checkpoint\n"
    )
    assert main(["chat", "--checkpoint", str(tmp_path), "--question", "Anyone?"]) == 2
    assert re.fullmatch(r"error: .* is not a checkpoint to load: missing config\.json, .*\n", capsys.readouterr().err)
    assert main(["chat", "--endpoint", "http://127.0.0.1:9/v1", "--question", "Anyone?"]) == 2
    assert capsys.readouterr().err == "error: --endpoint needs --model (the name the endpoint serves)\n"
