"""`raft-assets serve`: a real uvicorn on a loopback port, asked with the `openai` client and raw HTTP.

The service is assembled as the command assembles it (`open_service`), on the tiny checkpoint in process (batched
`generate`), on the OpenAI-compatible test server as its endpoint, and on a stand-in for the `vllm` command (vLLM is
not installed here: the stand-in starts the test server where `vllm serve` would listen).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from transformers import AutoTokenizer

from raft_assets.cli import main
from raft_assets.cli.serve import add_serve_arguments, open_service
from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import REFUSAL_ANSWER
from raft_assets.defs.evaluation.assets import served_system
from raft_assets.evaluation.run import EvalItem, evaluate
from raft_assets.inference.answering import AnswerRequest, answer_messages, prompt_ids
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.retrieval.retriever import Retriever
from raft_assets.serving.protocol import service_info
from raft_assets.serving.server import running
from raft_assets_tests.conftest import RAFT_ASSETS, REPO, cli_env
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.test_answering import build_project
from raft_assets_tests.test_chat_cli import FSDP_SENTENCE, quoting_responder

FSDP_QUESTION = "Which technique shards optimizer states across workers?"
FSDP_TUTORIAL = ("FSDP tutorial", "https://pytorch.org/tutorials/fsdp.html")


@pytest.fixture(scope="module")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_project(tmp_path_factory.mktemp("serve"))


@contextmanager
def serving(root: Path, *args: str, **env: str) -> Iterator[tuple[str, Starlette]]:
    """`raft-assets serve ARGS` (on a free port) in this process, with the data and checkpoints under `root` and
    the variables `env`; yields the service's root URL and its application."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    layout = Layout.of(root / "generated", root / "checkpoints")
    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        for name, value in env.items():
            patch.setenv(name, value)
        app = open_service(parser.parse_args(["--port", "0", *args]), layout, stack)
        with running(app) as url:
            yield url, app


def client(url: str, api_key: str = "none", **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, **options)


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tiny_service(project_root: Path) -> Iterator[tuple[str, Starlette]]:
    """The tiny checkpoint in process: top 3 documents, short answers, a batch of up to 20."""
    with serving(project_root, "--top-k", "3", "--max-new-tokens", "12", "--max-concurrency", "20") as service:
        yield service


# -- answers, streamed and not, with their sources -------------------------------------------------------


def test_the_openai_client_gets_answers_streamed_and_not_with_the_sources(tiny_service):
    url, app = tiny_service
    openai_client = client(url)
    [model] = openai_client.models.list().data
    assert model.id == "run-1"  # the newest checkpoint's folder

    reply = openai_client.chat.completions.create(model="run-1", messages=ask("How does FSDP shard parameters?"))
    answer = reply.choices[0].message.content
    assert answer and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.system_fingerprint == model.model_extra["raft"]["fingerprint"]
    documents = reply.model_extra["sources"]["documents"]
    assert [document["rank"] for document in documents] == [1, 2, 3]
    assert (documents[0]["title"], documents[0]["uri"]) == FSDP_TUTORIAL
    assert reply.model_extra["truncation"] is None and reply.model_extra["refusal"] is False

    chunks = list(
        openai_client.chat.completions.create(
            model="run-1", messages=ask("How does FSDP shard parameters?"), stream=True
        )
    )
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices[0].delta.content]
    assert len(pieces) > 1  # streamed piece by piece
    assert "".join(pieces) == answer  # greedy: the same answer either way
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].model_extra["sources"] == reply.model_extra["sources"]
    assert all("sources" not in chunk.model_extra for chunk in chunks[:-1])


def test_twenty_concurrent_clients_all_get_their_own_answers_batched(tiny_service):
    url, app = tiny_service
    questions = [f"What does the documentation say about topic {i}?" for i in range(20)]
    alone = client(url).chat.completions.create(model="run-1", messages=ask(questions[7])).choices[0].message.content
    generator = app.state.service.generator
    batches_before = len(generator.batch_sizes)

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none") as async_client:
            replies = await asyncio.gather(
                *(async_client.chat.completions.create(model="run-1", messages=ask(q)) for q in questions)
            )
        return [reply.choices[0].message.content for reply in replies]

    answers = asyncio.run(all_at_once())
    assert all(answers) and len(answers) == 20
    assert answers[7] == alone  # a row of a batch is answered as it is alone
    batches = generator.batch_sizes[batches_before:]
    assert sum(batches) == 20 and max(batches) > 1  # fewer generate calls than requests


def test_a_client_that_goes_away_mid_answer_frees_its_slot_and_its_row(project_root):
    options = ("--max-concurrency", "1", "--max-queue", "0", "--max-new-tokens", "3000")
    with serving(project_root, *options) as (url, app):
        generator, admission = app.state.service.generator, app.state.admission
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={"messages": ask("What is RAFT?"), "stream": True}
        ) as response:
            assert response.status_code == 200
            events = (line for line in response.iter_lines() if line.startswith("data: "))
            next(events), next(events)  # the role, then the first text: generating; then the client hangs up
        hung_up = time.monotonic()
        wait_until(lambda: admission.admitted == 0)
        # The slot is free again, and the row stopped long before its 3,000 tokens (some 15 s of the tiny model on
        # a CPU): a second request, which waits for the worker to be free, is answered at once.
        reply = client(url).chat.completions.create(model="run-1", messages=ask("And FSDP?"), max_tokens=4)
        answered_after = time.monotonic() - hung_up
    assert reply.choices[0].finish_reason == "length" and generator.batch_sizes == [1, 1]
    assert answered_after < 5.0


# -- the endpoint backend: the prompt as in training, quotes traced to their document --------------------


def test_an_endpoint_backend_gets_the_fine_tuning_prompt_and_its_quotes_are_traced(project_root):
    endpoint_key, generator_key = f"endpoint-{uuid.uuid4().hex}", f"generator-{uuid.uuid4().hex}"
    with OpenAITestServer(quoting_responder, api_key=endpoint_key, keep_bodies=True, stream_chunks=8) as upstream:
        backend = ("--backend", upstream.base_url, "--model", "test-model")
        env = {"RAFT_SERVE_ENDPOINT_API_KEY": endpoint_key, "RAFT_LLM_API_KEY": generator_key}
        with serving(project_root, *backend, **env) as (url, app):
            chunks = list(
                client(url).chat.completions.create(model="test-model", messages=ask(FSDP_QUESTION), stream=True)
            )
        bodies = upstream.stats.bodies
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.endswith(f"<ANSWER>: {FSDP_SENTENCE}")
    sources = chunks[-1].model_extra["sources"]
    assert len(sources["documents"]) == 5  # --top-k's default
    retriever = Retriever.load(Layout.of(project_root / "generated", project_root / "checkpoints"))
    retrieved = retriever.top_k([FSDP_QUESTION], 5)[0]
    assert bodies[0]["messages"] == answer_messages(AnswerRequest(FSDP_QUESTION, [chunk.text for chunk in retrieved]))
    [quoting] = [document for document in sources["documents"] if document["quotes"]]
    assert (quoting["title"], quoting["uri"], quoting["quotes"]) == (*FSDP_TUTORIAL, [FSDP_SENTENCE])
    assert sources["unattributed_quotes"] == []


def test_a_refusal_is_flagged_and_a_failing_endpoint_is_a_502(project_root):
    refusing = OpenAITestServer(lambda body: f"No document is about that.\n<ANSWER>: {REFUSAL_ANSWER}")
    failing = OpenAITestServer(fail_first_n=1_000, fail_first_status=404)  # 404: not retried
    with refusing, serving(project_root, "--backend", refusing.base_url, "--model", "test-model") as (url, _):
        reply = client(url).chat.completions.create(model="test-model", messages=ask("What is the weather?"))
    with failing, serving(project_root, "--backend", failing.base_url, "--model", "test-model") as (url, _):
        asking = client(url, max_retries=0).chat.completions
        with pytest.raises(openai.APIStatusError) as failed:
            asking.create(model="test-model", messages=ask("Crash?"))
    assert reply.model_extra["refusal"] is True
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_error"


# -- bad requests, the key, the queue ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_service(project_root: Path) -> Iterator[tuple[str, Starlette]]:
    """The echo test server behind the service, questions of at most 200 characters, answers of at most 64 tokens."""
    with OpenAITestServer() as upstream:
        backend = ("--backend", upstream.base_url, "--model", "test-model")
        with serving(project_root, *backend, "--max-question-chars", "200", "--max-new-tokens", "64") as service:
            yield service


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b"[1, 2]", 400, "invalid_request", "must be a JSON object"),
        ({"model": "test-model"}, 400, "invalid_messages", "'messages' must be a non-empty list"),
        ({"messages": []}, 400, "invalid_messages", "'messages' must be a non-empty list"),
        ({"messages": [{"content": "Hi?"}]}, 400, "invalid_messages", "messages[0] must be an object with a 'role'"),
        ({"messages": [{"role": "user", "content": 42}]}, 400, "invalid_messages", "messages[0].content must be"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, 400, "invalid_messages", "no user message"),
        ({"messages": ask("  \n ")}, 400, "empty_message", "The last user message is empty"),
        (
            {"messages": ask("x" * 201)},
            400,
            "message_too_long",
            "has 201 characters; the most this service takes is 200",
        ),
        (
            {"messages": ask("Hi?"), "max_tokens": 0},
            400,
            "invalid_request",
            "'max_tokens' must be a whole number from 1 to 64",
        ),
        ({"messages": ask("Hi?"), "max_tokens": 65}, 400, "invalid_request", "from 1 to 64"),
        ({"messages": ask("Hi?"), "stream": "yes"}, 400, "invalid_request", "'stream' must be true or false"),
        ({"messages": ask("Hi?"), "model": "gpt-4"}, 404, "model_not_found", "this service serves 'test-model'"),
        ({"messages": ask("Hi?"), "user": "x" * 70_000}, 413, "body_too_large", "The body is over 68736 bytes"),
    ],
)
def test_a_malformed_request_gets_a_clear_error_in_openais_shape(echo_service, body, status, code, message):
    url, app = echo_service
    content = body if isinstance(body, bytes) else None
    response = httpx.post(f"{url}/v1/chat/completions", content=content, json=None if content else body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_a_text_parts_message_and_earlier_turns_are_taken(echo_service):
    url, app = echo_service
    messages = [
        {"role": "user", "content": "An earlier question?"},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "RAFT?"}]},
    ]
    reply = client(url).chat.completions.create(model="test-model", messages=messages, max_tokens=64)
    assert reply.choices[0].message.content.startswith("echo: Question: What is RAFT?\nContext: <DOCUMENT>")


def test_with_a_key_every_api_request_needs_it(project_root):
    key = f"serve-{uuid.uuid4().hex}"
    with OpenAITestServer() as upstream:
        backend = ("--backend", upstream.base_url, "--model", "test-model")
        with serving(project_root, *backend, RAFT_SERVE_API_KEY=key) as (url, app):
            health = httpx.get(f"{url}/health").json()
            page = httpx.get(url)
            answers = {}
            for name, given in [("none", None), ("wrong", key[:-1] + "x"), ("right", key)]:
                headers = {"Authorization": f"Bearer {given}"} if given else {}
                models = httpx.get(f"{url}/v1/models", headers=headers)
                chat = httpx.post(f"{url}/v1/chat/completions", headers=headers, json={"messages": ask("Hi?")})
                answers[name] = (models.status_code, chat.status_code, chat.json().get("error", {}).get("code"))
    assert health["api_key_required"] is True and page.status_code == 200
    assert answers == {
        "none": (401, 401, "invalid_api_key"),
        "wrong": (401, 401, "invalid_api_key"),
        "right": (200, 200, None),
    }


def test_beyond_the_slots_and_the_queue_a_request_gets_503_with_retry_after(project_root):
    with OpenAITestServer(latency_s=1.0) as upstream:
        backend = ("--backend", upstream.base_url, "--model", "test-model")
        with serving(project_root, *backend, "--max-concurrency", "1", "--max-queue", "1") as (url, app):
            admission = app.state.admission
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                admitted = [
                    pool.submit(httpx.post, f"{url}/v1/chat/completions", json={"messages": ask(f"Q{i}?")}, timeout=30)
                    for i in range(2)
                ]
                wait_until(lambda: admission.admitted == 2)
                refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": ask("One more?")})
                statuses = [future.result().status_code for future in admitted]
            after = httpx.post(f"{url}/v1/chat/completions", json={"messages": ask("Now?")})
    assert statuses == [200, 200]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert after.status_code == 200 and admission.admitted == 0


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- truncation and the log ---------------------------------------------------------------------------------


def test_over_the_context_the_lowest_ranked_documents_are_dropped_and_the_log_says_so(project_root, caplog):
    """With a context that holds the prompt with the top 2 of 5 documents and the answer, 3 documents are left out."""
    question, new_tokens = "How many tokens was Llama 3 trained on?", 8
    layout = Layout.of(project_root / "generated", project_root / "checkpoints")
    top = [chunk.text for chunk in Retriever.load(layout).top_k([question], 5)[0]]
    tokenizer = AutoTokenizer.from_pretrained(project_root / "checkpoints" / "hf" / "run-1")
    (two_documents,) = prompt_ids(tokenizer, [AnswerRequest(question, top[:2])])
    context = str(len(two_documents) + new_tokens)
    caplog.set_level(logging.INFO, logger="raft_assets.serve")
    with serving(project_root, "--top-k", "5", "--max-model-len", context, "--max-new-tokens", "64") as (url, app):
        reply = client(url).chat.completions.create(model="run-1", messages=ask(question), max_tokens=new_tokens)
        too_long = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": ask("Why? " * 200), "max_tokens": new_tokens}
        )
    assert reply.model_extra["truncation"] == {
        "documents_dropped": 3,
        "documents_kept": 2,
        "context_length": int(context),
        "reason": reply.model_extra["truncation"]["reason"],
    }
    assert [document["rank"] for document in reply.model_extra["sources"]["documents"]] == [1, 2]
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"

    lines = [record.getMessage() for record in caplog.records if record.name == "raft_assets.serve"]
    requests = [line for line in lines if line.startswith("POST /v1/chat/completions")]
    assert len(requests) == 2  # one line per request
    assert re.fullmatch(r"POST /v1/chat/completions 200 \d+ms stream=False documents=2 dropped=3 .*", requests[0])
    assert "error=context_length_exceeded" in requests[1]
    assert "truncated: 3 lowest-ranked documents left out to fit the context" in lines
    assert not [line for line in lines if "Llama" in line or "Why?" in line or reply.choices[0].message.content in line]


# -- the vllm backend and the command ----------------------------------------------------------------------

STAND_IN_VLLM = """#!/bin/sh
# A stand-in for `vllm serve MODEL --port PORT ...` (vLLM is not installed here): the OpenAI-compatible test server,
# serving MODEL on PORT, with the arguments it was given in ARGS_FILE.
model=$2
echo "$@" > "{args_file}"
while [ $# -gt 0 ]; do [ "$1" = --port ] && port=$2; shift; done
cd "{repo}" && exec "{python}" -m raft_assets_tests.openai_server --port "$port" --model "$model"
"""


def test_the_vllm_backend_starts_the_vllm_resources_server_with_a_stand_in_command(project_root, tmp_path):
    args_file = tmp_path / "vllm_args.txt"
    stand_in = tmp_path / "vllm"
    stand_in.write_text(STAND_IN_VLLM.format(args_file=args_file, repo=REPO, python=sys.executable))
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    checkpoint = project_root / "checkpoints" / "hf" / "run-1"
    options = ("--backend", "vllm", "--vllm-executable", str(stand_in), "--max-model-len", "2048")
    with serving(project_root, *options) as (url, app):
        reply = client(url).chat.completions.create(model="run-1", messages=ask("What is RAFT?"))
        upstream = app.state.service.generator.endpoint.urls[0]
    vllm_args = args_file.read_text().split()
    assert vllm_args[:2] == ["serve", str(checkpoint)] and vllm_args[vllm_args.index("--max-model-len") + 1] == "2048"
    assert reply.choices[0].message.content.startswith("echo: Question: What is RAFT?\nContext: <DOCUMENT>")
    with pytest.raises(OSError):  # the server was stopped with the service
        urllib.request.urlopen(f"{upstream}/models", timeout=5)


@pytest.mark.slow  # `raft-assets serve` in a subprocess, loading the embedding model
def test_the_serve_command_prints_its_url_answers_and_stops_on_sigterm(project_root):
    with OpenAITestServer() as upstream:
        process = subprocess.Popen(
            [RAFT_ASSETS, "serve", "--port", "0", "--backend", upstream.base_url, "--model", "test-model"],
            cwd=REPO,
            env=cli_env(project_root, RAFT_CHECKPOINT_DIR=str(project_root / "checkpoints")),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            banner = next(line for line in process.stderr if line.startswith("Serving ") or "error" in line)
            url = re.search(r"at (http://127\.0\.0\.1:\d+)/ ", banner).group(1)
            health = httpx.get(f"{url}/health").json()
        finally:
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=60)[1]
    assert banner.startswith("Serving test-model (endpoint:test-model) at ")
    assert health["status"] == "ok" and health["top_k"] == 5
    # Requests finished and the model closed, then uvicorn ends the process with the signal it was sent.
    assert "Application shutdown complete." in output and process.returncode == -signal.SIGTERM, output
    assert re.search(r"raft_assets\.serve: GET /health 200 \d+ms", output)


def test_serve_errors_are_one_line_and_exit_code_2(project_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAFT_DATA_DIR", str(project_root / "generated"))
    monkeypatch.setenv("RAFT_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    assert main(["serve", "--backend", "ftp://host"]) == 2
    assert capsys.readouterr().err.endswith(
        "error: --backend 'ftp://host': expected one of auto, transformers, vllm or an http(s) URL\n"
    )
    assert main(["serve", "--backend", "http://127.0.0.1:9/v1"]) == 2
    assert capsys.readouterr().err.endswith("error: a URL backend needs --model (the name the endpoint serves)\n")
    assert main(["serve", "--top-k", "0", "--max-queue", "-1"]) == 2
    assert capsys.readouterr().err.endswith("error: --top-k, --max-queue: must be positive\n")
    assert main(["serve", "--backend", "transformers"]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: no fine-tuned checkpoint in {tmp_path / 'checkpoints' / 'hf'}: "
        "materialize hf_checkpoint first or pass --checkpoint\n"
    )


# -- evaluation of the running service ---------------------------------------------------------------------


def test_evaluation_scores_a_running_service_as_one_more_system_cached_per_deployment(project_root, tmp_path):
    items = [
        EvalItem(FSDP_QUESTION, FSDP_SENTENCE, [], None),
        EvalItem("Which tokenizer does Llama 3 use?", "A 128,000-token vocabulary.", [], None),
    ]
    cache = ReplyCache(tmp_path / "replies.sqlite")
    logger = logging.getLogger("test_serve")
    with OpenAITestServer(quoting_responder, keep_bodies=True) as upstream:
        backend = ("--backend", upstream.base_url, "--model", "test-model")
        with serving(project_root, *backend, "--top-k", "3") as (url, app):
            info = service_info(f"{url}/v1")
            first = evaluate(items, [served_system(f"{url}/v1", 64, cache)], [None, 5], None, cache, 1, logger)
            again = evaluate(items, [served_system(f"{url}/v1", 64, cache)], [None, 5], None, cache, 1, logger)
        with serving(project_root, *backend, "--top-k", "2") as (url, app):
            redeployed = evaluate(items, [served_system(f"{url}/v1", 64, cache)], [None, 5], None, cache, 1, logger)
        bodies = upstream.stats.bodies
    cache.close()
    assert (info.model, info.top_k) == ("test-model", 3)
    assert list(first.summaries) == ["served RAG k=3"]  # one variant: the service retrieves its own documents
    rows = first.answers["served RAG k=3"]
    assert rows[0]["answer"].endswith(f"<ANSWER>: {FSDP_SENTENCE}") and rows[0]["correct"]
    assert [row["cached"] for row in again.answers["served RAG k=3"]] == [True, True]
    assert [row["cached"] for row in redeployed.answers["served RAG k=2"]] == [False, False]
    assert len(bodies) == 4  # asked by the first evaluation and after the redeployment, not by the second
    assert bodies[0]["messages"][1]["content"].count("</DOCUMENT>\n") == 3
