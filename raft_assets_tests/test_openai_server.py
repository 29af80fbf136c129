"""The loopback OpenAI test server, exercised through the real `openai` SDK."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from raft_assets_tests.openai_server import BAD_QUOTE, OpenAITestServer, fingerprint

KEY = "sk-test"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is RAFT?"}]
COT = (
    "##Reason: The context says ##begin_quote## RAFT trains on distractor documents ##end_quote## so it is robust.\n"
    "<ANSWER>: Retrieval-augmented fine-tuning."
)


@pytest.fixture
def serve() -> Iterator[Callable[..., OpenAITestServer]]:
    """Starts servers with the given arguments; stops them all after the test."""
    servers: list[OpenAITestServer] = []

    def start(**kwargs: Any) -> OpenAITestServer:
        kwargs.setdefault("api_key", KEY)
        server = OpenAITestServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("openai-test-server")]


def client(server: OpenAITestServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, **kwargs)


def ask(server: OpenAITestServer, **kwargs: Any) -> str:
    with client(server, **kwargs) as c:
        reply = c.chat.completions.create(model="test-model", messages=MESSAGES)
    return reply.choices[0].message.content or ""


def test_lists_models(serve) -> None:
    server = serve(models=["a", "b"])
    with client(server) as c:
        assert [m.id for m in c.models.list()] == ["a", "b"]
        assert c.models.retrieve("b").id == "b"
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="c", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            c.get("/embeddings", cast_to=object)
    assert server.stats.status_counts == {200: 2, 404: 2}


def test_a_responder_bug_is_a_500(serve) -> None:
    server = serve(responder=lambda body: 1 / 0)
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        ask(server)


def test_completion_has_content_and_usage(serve) -> None:
    server = serve(keep_bodies=True)
    with client(server) as c:
        reply = c.chat.completions.create(model="test-model", messages=MESSAGES, temperature=0.3)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "echo: What is RAFT?"
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stats = server.stats
    assert stats.completed == 1 and stats.status_counts[200] == 1
    assert (stats.prompt_tokens, stats.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert stats.bodies == [{"model": "test-model", "messages": MESSAGES, "temperature": 0.3}]
    assert stats.fingerprints == {fingerprint(stats.bodies[0]): 1}
    server.reset_stats()
    assert server.stats.requests == 0 and not server.stats.fingerprints


def test_wrong_key_is_401(serve) -> None:
    server = serve()
    wrong = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with wrong as c, pytest.raises(openai.AuthenticationError) as caught:
        c.chat.completions.create(model="test-model", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert server.stats.status_counts == {401: 1}


def test_429_carries_retry_after(serve) -> None:
    server = serve(faults={"http_429": 1.0}, retry_after_s=0.25)
    with client(server) as c, pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(model="test-model", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "0.25"
    assert server.stats.faults == {"http_429": 1}


def test_faults_are_deterministic_and_a_retry_can_succeed(serve) -> None:
    faults = {"http_500": 0.3, "http_503": 0.3}
    first, second = serve(faults=faults, seed=7), serve(faults=faults, seed=7)

    def outcomes(server: OpenAITestServer) -> list[str]:
        seen = []
        with client(server) as c:
            for i in range(12):
                for _ in range(2):  # each request twice: attempts 0 and 1
                    try:
                        c.chat.completions.create(model="test-model", messages=[{"role": "user", "content": f"q{i}"}])
                        seen.append("ok")
                    except openai.APIStatusError as error:
                        seen.append(str(error.status_code))
        return seen

    seen = outcomes(first)
    assert seen == outcomes(second)
    assert {"ok", "500", "503"} <= set(seen)
    for i in range(12):
        body = {"model": "test-model", "messages": [{"role": "user", "content": f"q{i}"}]}
        planned = [first.planned_fault(body, attempt) for attempt in (0, 1)]
        assert seen[2 * i : 2 * i + 2] == [{None: "ok", "http_500": "500", "http_503": "503"}[p] for p in planned]
    assert any(seen[2 * i] != "ok" and seen[2 * i + 1] == "ok" for i in range(12))  # a retry succeeded


def test_fail_first_n_then_sdk_retries_succeed(serve) -> None:
    server = serve(fail_first_n=2, fail_first_status=503, retry_after_s=0.01)
    assert ask(server, max_retries=2) == "echo: What is RAFT?"
    stats = server.stats
    assert stats.status_counts == {503: 2, 200: 1}
    assert list(stats.fingerprints.values()) == [3]


def test_capacity_queues_requests(serve) -> None:
    server = serve(capacity=2, latency_s=0.1)

    async def burst() -> float:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as c:
            started = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    c.chat.completions.create(model="test-model", messages=[{"role": "user", "content": str(i)}])
                    for i in range(8)
                )
            )
            elapsed = time.perf_counter() - started
        assert sorted(r.choices[0].message.content for r in replies) == [f"echo: {i}" for i in range(8)]
        return elapsed

    assert asyncio.run(burst()) >= 0.4
    stats = server.stats
    assert stats.max_concurrent == 2 and stats.completed == 8 and stats.active == 0


def test_streaming_returns_the_full_content(serve) -> None:
    server = serve(responder=lambda body: COT)
    with client(server) as c:
        stream = c.chat.completions.create(
            model="test-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == COT
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) > 1
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0


def test_timeout_fault_raises_api_timeout(serve) -> None:
    server = serve(faults={"timeout": 1.0}, hang_s=10)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        ask(server, timeout=0.2)
    assert time.perf_counter() - started < 2
    server.stop()  # ends the hanging request at once
    assert time.perf_counter() - started < 3


def test_reset_fault_raises_connection_error(serve) -> None:
    server = serve(faults={"reset": 1.0})
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(server, timeout=5)
    assert not isinstance(caught.value, openai.APITimeoutError)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("no_answer_tag", COT.split("\n")[0] + "\n"),
        ("bad_quote", COT.replace(" RAFT trains on distractor documents ", BAD_QUOTE)),
        ("empty", ""),
    ],
)
def test_content_faults(serve, fault: str, expected: str) -> None:
    server = serve(responder=lambda body: COT, faults={fault: 1.0})
    assert ask(server) == expected
    assert server.stats.status_counts == {200: 1}
