"""The client finds how many requests to keep in flight by itself (`llm/concurrency.py`), from what the server does.

Every test runs the chain-of-thought prompt through `run_batch` and a `ChatClient` with no concurrency setting against
the OpenAI-compatible test server, and reads the server's own counters: the busy slots integrated over time
(`busy_slot_seconds`), the 429s of its requests-per-minute limit, the injected 503s. Latencies are short so the tests
take seconds; the request rate each implies is kept within what one process of this 2-core machine serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from raft_assets.contracts.prompts import load_prompts
from raft_assets.contracts.raft_format import documents_block
from raft_assets.generation.progress import StageProgress
from raft_assets.generation.tasks import run_batch
from raft_assets.llm.client import ChatClient, Endpoint
from raft_assets.llm.concurrency import INITIAL_LIMIT
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    completed: int
    busy_slot_seconds: float


class Sampler:
    """Reads the server's counters every 50 ms in a thread, for the utilisation of any stretch of the run."""

    def __init__(self, server: OpenAITestServer) -> None:
        self.server = server
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            stats = self.server.stats
            self.samples.append(Sample(time.monotonic(), stats.completed, stats.busy_slot_seconds))

    def utilisation(self, start_completed: int, end_completed: int) -> float:
        """Mean busy share of the server's slots between the samples where `start_completed` and `end_completed`
        replies had been sent."""
        first = next(s for s in self.samples if s.completed >= start_completed)
        last = next(s for s in reversed(self.samples) if s.completed <= end_completed)
        assert last.at - first.at > 0.5, "too short a stretch to measure"
        capacity = self.server.capacity
        assert capacity is not None
        return (last.busy_slot_seconds - first.busy_slot_seconds) / ((last.at - first.at) * capacity)


def cot_batch(chunks: int, per_chunk: int) -> list[dict[str, str]]:
    """The values of `cot_answer` requests: `per_chunk` questions of each chunk, a chunk's questions together."""
    return [
        {"question": f"What does rank {q} keep in chunk {c}?", "documents": documents_block([chunk_text(c)])}
        for c in range(chunks)
        for q in range(per_chunk)
    ]


def chunk_text(c: int) -> str:
    return " ".join(f"Chunk {c} sentence {s}: rank {s % 8} keeps shard {c * 7 + s}." for s in range(10))


def short_reply(body: dict) -> str:
    return "The chunk says so.\n<ANSWER>: " + last_user_message(body)[-20:]


def run(server: OpenAITestServer, batch: list[dict[str, str]], folder: Path, **settings) -> tuple[list, ChatClient]:
    """The batch through run_batch and a ChatClient of the server with `settings` (none: the defaults)."""
    endpoint = Endpoint.at(server.base_url, model="test-model", **settings)
    cache = ReplyCache(folder / "replies.sqlite")

    async def ask() -> tuple[list, ChatClient]:
        async with ChatClient(endpoint, cache) as client:
            usage = client.usage
            progress = StageProgress(
                "cot", len(batch), logging.getLogger("test"), 3600, lambda: 0, usage.concurrency_line
            )
            outcomes = await run_batch(client, load_prompts()["cot_answer"], batch, lambda text: text, 1, progress)
            return outcomes, client

    try:
        return asyncio.run(ask())
    finally:
        cache.close()


# slots -> latency and jitter in seconds, requests: at most ~200 requests/s, well within what one process here serves
# (client and server share it) while other tests load both cores, and a few seconds of work after the ramp. The 1,024
# slots of the default upper bound are benchmark_generation's (a minute of work).
SLOTS = {16: (0.1, 0.05, 640), 256: (1.2, 0.6, 2560)}
# The busy share that says the client found the slots and kept them: the target itself (>= 90%) is the benchmark's,
# measured on an otherwise idle machine; under the suite's load the client's own CPU share varies by a few percent.
FOUND_THE_SLOTS = 0.8


@pytest.mark.parametrize("slots", [pytest.param(slots, marks=pytest.mark.slow) for slots in SLOTS])
def test_keeps_the_slots_busy_without_a_setting(tmp_path: Path, slots: int) -> None:
    """From 8 in flight, the client finds a server's slots by itself and keeps them busy once ramped: from when 2x
    the slots have been answered (the ramp) to 2x the slots before the end (the last ones cannot fill it)."""
    latency, jitter, total = SLOTS[slots]
    server = OpenAITestServer(short_reply, latency_s=latency, jitter_s=jitter, capacity=slots)
    with server, Sampler(server) as sampler:
        outcomes, client = run(server, cot_batch(total // 4, 4), tmp_path)
    assert [outcome.status for outcome in outcomes] == ["ok"] * total
    utilisation = sampler.utilisation(2 * slots, total - 2 * slots)
    assert utilisation >= FOUND_THE_SLOTS, (utilisation, client.usage.metadata())
    log = client.usage.concurrency
    assert log is not None and log.mode == "adaptive" and log.changes > 0
    assert (
        slots <= log.most_in_flight <= 4 * slots + 8
    )  # found the slots; slow start went 2 doublings past them at most


@pytest.mark.slow  # 800 requests through a 16-slot server
def test_backs_off_when_the_server_queues(tmp_path: Path) -> None:
    """A 16-slot server queues what is beyond its slots: latency grows, replies per second do not. The client, allowed
    1,024, settles between the slots and 2x them, instead of queueing hundreds of requests at the server."""
    server = OpenAITestServer(short_reply, latency_s=0.1, capacity=16)
    with server:
        outcomes, client = run(server, cot_batch(200, 4), tmp_path)
    assert all(outcome.status == "ok" for outcome in outcomes)
    log = client.usage.concurrency
    assert log is not None and log.most_in_flight <= 64
    assert 16 <= log.levels[0] <= 32, client.usage.metadata()
    assert "latency" in client.usage.metadata()["llm_concurrency_history"]


@pytest.mark.slow  # seconds of a rate-limited server
def test_rate_limited_server_loses_no_row_and_keeps_its_rate(tmp_path: Path) -> None:
    """600 requests per minute, time-scaled 10x (6,000 per minute: 100 per second) so the test takes seconds: no row
    fails, the server's 429s lower the level and delay the requests by their Retry-After, and the rate of replies in
    the server's own log stays at 90% of the limit or more (from the end of the bucket's first second, 100 replies,
    a burst rather than a rate, to the last reply)."""
    per_second = 100
    server = OpenAITestServer(short_reply, latency_s=0.05, requests_per_minute=60 * per_second)
    batch = cot_batch(150, 4)
    with server:
        outcomes, client = run(server, batch, tmp_path)
        stats = server.stats
    assert [outcome.status for outcome in outcomes] == ["ok"] * len(batch)
    assert stats.rate_limited > 0 and client.usage.overloaded == stats.rate_limited
    assert "(429)" in client.usage.metadata()["llm_concurrency_history"]
    replies = stats.completed_at
    rate = (len(replies) - per_second) / (replies[-1] - replies[per_second - 1])
    assert rate >= 0.9 * per_second, (rate, client.usage.metadata())


def test_503_lowers_the_level_and_waits_retry_after(tmp_path: Path) -> None:
    """A server that answers 10% of the attempts 503 with Retry-After: every row still ends ok (the client retries
    them, however often), the level falls at a 503, and the SDK does not also retry them itself.

    Seed 3 draws a 503 for one of the first INITIAL_LIMIT requests, answered before any latency window closes: the
    level halves whatever the timing. A later 503 lowers it only to what the server accepted in the last round trip,
    which on a loaded machine (replies processed in bursts) can be the level itself (seed 0 failed that way once)."""
    server = OpenAITestServer(
        short_reply, latency_s=0.05, capacity=64, faults={"http_503": 0.1}, retry_after_s=0.05, seed=3
    )
    with server:
        outcomes, client = run(server, cot_batch(50, 4), tmp_path)
        stats = server.stats
    assert all(outcome.status == "ok" for outcome in outcomes)
    assert stats.faults["http_503"] > 5 and client.usage.overloaded == stats.status_counts[503]
    assert client.usage.http_attempts == stats.completed + stats.status_counts[503]
    first_change = client.usage.metadata()["llm_concurrency_history"].split()[0]
    assert first_change.endswith(f":{INITIAL_LIMIT // 2}(503)"), client.usage.metadata()


def test_a_lone_request_answered_429_is_sent_again_after_retry_after(tmp_path: Path) -> None:
    """With nothing else in flight to free a slot, the request waits out Retry-After on its own and is sent again:
    a stage's last requests (or an evaluation's few) must not hang on a 429."""
    server = OpenAITestServer(short_reply, latency_s=0.01, fail_first_n=1, fail_first_status=429, retry_after_s=0.05)
    with server:
        outcomes, client = run(server, cot_batch(1, 1), tmp_path)
    assert [outcome.status for outcome in outcomes] == ["ok"]
    assert client.usage.overloaded == 1 and server.stats.status_counts[429] == 1


def test_a_fixed_level_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`adaptive_concurrency=False` keeps exactly `max_concurrency` in flight, as a shared server's share; the progress
    line says so."""
    caplog.set_level(logging.INFO, logger="test")
    server = OpenAITestServer(short_reply, latency_s=0.1, capacity=None)
    with server:
        outcomes, client = run(server, cot_batch(50, 4), tmp_path, max_concurrency=12, adaptive_concurrency=False)
        stats = server.stats
    assert all(outcome.status == "ok" for outcome in outcomes)
    assert stats.max_concurrent == 12
    assert client.usage.metadata()["llm_concurrency_mode"] == "fixed" and client.usage.concurrency.changes == 0
    assert caplog.messages[-1].endswith("0 failed, 0 in flight, limit 12 (fixed)")


def chunk_spans(tmp_path: Path, **settings) -> list[int]:
    """For 30 chunks of 5 questions each: how many arrivals at the server, from a chunk's first question to its
    last (5: all together); the chunk's text must come before the question in the message."""
    server = OpenAITestServer(short_reply, latency_s=0.02, capacity=8, keep_bodies=True)
    with server:
        run(server, cot_batch(30, 5), tmp_path, **settings)
        bodies = server.stats.bodies
    message = last_user_message(bodies[0])
    assert message.index("Chunk 0 sentence") < message.index("What does rank")
    arrivals = [next(c for c in range(30) if f"Chunk {c} sentence 0:" in last_user_message(b)) for b in bodies]
    return [max(i for i, a in enumerate(arrivals) if a == c) - arrivals.index(c) + 1 for c in range(30)]


def test_requests_of_a_chunk_are_sent_together(tmp_path: Path) -> None:
    """A chunk's questions reach the server one after the other, the chunk's text before the question: a server with
    prefix caching (vLLM) computes the chunk's KV cache once for all its questions. The client admits requests first
    come, first served; on the wire, the requests sent in the same round trip (a level's worth, within microseconds
    of each other) reach the server's handlers in any order, and when the level grows, requests on new connections
    arrive after those on open ones: most chunks (the median) are exact, none is spread beyond two round trips'
    requests (an order that interleaved the chunks would spread each over the whole batch)."""
    fixed = sorted(chunk_spans(tmp_path / "fixed", max_concurrency=8, adaptive_concurrency=False))
    assert fixed[15] <= 5 + 1 and fixed[-1] <= 5 + 2 * 8
    assert sorted(chunk_spans(tmp_path / "adaptive"))[15] <= 5 + 1


def test_the_servers_rate_limit_and_slot_measure() -> None:
    """What the tests above read from the server: two requests holding its two slots for 0.3 s add 0.6 busy
    slot-seconds; beyond its requests-per-minute limit (a bucket of one second's worth: 2 requests) it answers 429
    with the Retry-After of the next token, and a request sent after that wait is answered."""
    server = OpenAITestServer(latency_s=0.3, capacity=2, requests_per_minute=60 * 2)
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)

        def ask() -> None:
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: ask(), range(2)))
        assert server.stats.busy_slot_seconds == pytest.approx(0.6, abs=0.1)
        with pytest.raises(openai.RateLimitError) as refused:
            ask()
        wait_s = float(refused.value.response.headers["retry-after"])
        assert 0 < wait_s <= 0.5
        time.sleep(wait_s)
        ask()
        assert server.stats.rate_limited == 1 and server.stats.completed == 3
