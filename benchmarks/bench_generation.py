"""Generation throughput: our `llm` client against the reference design, on one OpenAI-compatible server.

The server is the test suite's `OpenAITestServer` in its own process (200 ms latency, 64 slots, so the
ideal rate is 64 / 0.2 = 320 requests/s). Both clients send the `questions` prompt for the same
2,000 synthetic chunks:

- ours: `generate_questions`, then `generate_answers` for every question, through `ChatClient`
  (80 in flight: a little above the server's 64 slots, see CLIENT_CONCURRENCY; reply cache on a fresh
  SQLite file), exactly as the assets run them;
- reference: what the llama-recipes script does, a thread pool each of whose workers makes blocking requests
  with the openai SDK (the `questions` requests only). Its size is ThreadPoolExecutor's default,
  min(32, CPUs + 4): 6 on this project's 2-core machine, 32 on a host with 28 cores or more (a typical GPU
  host). A pool of N threads keeps at most N requests in flight, so the reference runs at each size in
  `--reference-threads` (default: this machine's default and 32), and every ratio names the size.

Run from the repository root:
`.venv/bin/python benchmarks/bench_generation.py [--chunks 2000] [--reference-threads 6,32] [--record]`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import publish, start_test_server  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from raft_assets.contracts.prompts import load_prompts  # noqa: E402
from raft_assets.defs.resources import LLMResource  # noqa: E402
from raft_assets.generation.progress import StageProgress  # noqa: E402
from raft_assets.generation.tasks import generate_answers, generate_questions  # noqa: E402
from raft_assets.hashing import content_hash  # noqa: E402
from raft_assets.llm.client import ChatClient  # noqa: E402
from raft_assets.llm.reply_cache import ReplyCache  # noqa: E402

LATENCY_S = 0.2
CAPACITY = 64
# A little above the server's capacity, as one runs against vLLM: the server then always has the next
# request queued when a slot frees, instead of waiting for the client to turn a reply into a new request.
CLIENT_CONCURRENCY = 80
CPUS = os.cpu_count() or 1
GPU_HOST_THREADS = 32  # the reference's default pool on a host with 28 cores or more, as GPU hosts have


def reference_default_threads(cpus: int) -> int:
    """The reference's pool size on a machine with `cpus` cores: ThreadPoolExecutor's default."""
    return min(32, cpus + 4)


@dataclass(frozen=True)
class Measurement:
    client: str
    in_flight: int  # the most requests the client keeps in flight
    requests: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def share_of_ideal(self) -> float:
        return self.rate / (CAPACITY / LATENCY_S)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / self.requests


def synthetic_chunks(count: int) -> pl.DataFrame:
    texts = [
        " ".join(
            f"Chunk {i} sentence {s}: rank {s % 8} holds shard {i * 7 + s} of the model's layers." for s in range(12)
        )
        for i in range(count)
    ]
    ids = [content_hash(text) for text in texts]
    return pl.DataFrame(
        {"chunk_id": ids, "doc_id": ids, "source": ["bench"] * count, "position": [0] * count, "text": texts}
    )


def measure_ours(base_url: str, chunks: pl.DataFrame) -> list[Measurement]:
    """Both stages as the assets run them: questions for every chunk, then an answer for every question."""
    llm = LLMResource(base_url=base_url, model="test-model", max_concurrency=CLIENT_CONCURRENCY)
    log = logging.getLogger("bench")
    chunk_texts = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    measurements = []

    async def stage(client: ChatClient, name: str, work) -> object:
        requests_before = client.usage.requests
        started, cpu = time.monotonic(), time.process_time()
        result = await work
        seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
        requests = client.usage.requests - requests_before
        measurements.append(Measurement(name, CLIENT_CONCURRENCY, requests, seconds, cpu_seconds))
        return result

    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            cache = ReplyCache(Path(folder) / "replies.sqlite")
            async with llm.client(cache) as client:
                questions = await stage(
                    client,
                    f"ours: `questions` (asyncio, {CLIENT_CONCURRENCY} in flight)",
                    generate_questions(client, chunks, 5, 1, StageProgress("q", chunks.height, log, 3600, int)),
                )
                pending = int((questions["status"] == "ok").sum())
                await stage(
                    client,
                    f"ours: `cot_answers` (asyncio, {CLIENT_CONCURRENCY} in flight)",
                    generate_answers(client, questions, chunk_texts, 1, StageProgress("a", pending, log, 3600, int)),
                )
            cache.close()

    asyncio.run(run())
    total = Measurement(
        "ours: both stages",
        CLIENT_CONCURRENCY,
        sum(m.requests for m in measurements),
        sum(m.seconds for m in measurements),
        sum(m.cpu_seconds for m in measurements),
    )
    return [*measurements, total]


def describe_pool(threads: int) -> str:
    """Where the reference's pool has this size by default."""
    where = []
    if threads == reference_default_threads(CPUS):
        where.append(f"its default on this {CPUS}-core client")
    if threads == GPU_HOST_THREADS:
        where.append("its default on a client with 28 cores or more, e.g. a GPU host")
    return "; ".join(where) or "set with --reference-threads"


def measure_reference(base_url: str, chunks: pl.DataFrame, workers: int) -> Measurement:
    prompt = load_prompts()["questions"]
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=2)

    def ask(text: str) -> str:
        messages = prompt.messages(chunk=text, num_questions=5)
        return (
            client.chat.completions.create(model="test-model", messages=messages, **prompt.params)
            .choices[0]
            .message.content
        )

    started, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        replies = list(pool.map(ask, chunks["text"]))
    return Measurement(
        f"reference: thread pool of {workers} blocking requests ({describe_pool(workers)})",
        workers,
        len(replies),
        time.monotonic() - started,
        time.process_time() - cpu,
    )


def table(measurements: list[Measurement]) -> str:
    lines = [
        "| client | in flight at most | requests | seconds | requests/s | share of ideal (320/s) "
        "| client CPU ms per request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.client} | {m.in_flight} | {m.requests:,} | {m.seconds:.2f} | {m.rate:.1f} | {m.share_of_ideal:.1%} "
            f"| {m.cpu_ms_per_request:.2f} |"
        )
    return "\n".join(lines)


def conditions() -> str:
    """What every ratio below holds under."""
    return (
        f"one server with {CAPACITY} slots and {LATENCY_S * 1000:.0f} ms latency (ideal {CAPACITY / LATENCY_S:.0f} "
        f"requests/s), our client with up to {CLIENT_CONCURRENCY} requests in flight, both processes on this "
        f"{CPUS}-core machine"
    )


def comparisons(ours: Measurement, references: list[Measurement]) -> list[str]:
    """Our rate against each reference pool's, each ratio with the pool's size and why that size."""
    lines = []
    for reference in references:
        ceiling = reference.in_flight / LATENCY_S  # N blocking requests of LATENCY_S each
        lines.append(
            f"- Ours is {ours.rate / reference.rate:.1f}x the reference's pool of {reference.in_flight} threads "
            f"({describe_pool(reference.in_flight)}): {ours.rate:.1f} against {reference.rate:.1f} requests/s. "
            f"{reference.in_flight} blocking threads keep at most {reference.in_flight} of the {CAPACITY} slots busy: "
            f"at most {ceiling:.0f} requests/s at this latency."
        )
    return lines


def thread_counts(text: str) -> list[int]:
    """`--reference-threads`: comma-separated pool sizes, e.g. "6,32"."""
    return sorted({int(count) for count in text.split(",")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument(
        "--reference-threads",
        type=thread_counts,
        default=sorted({reference_default_threads(CPUS), GPU_HOST_THREADS}),
        metavar="N,N",
        help=f"the reference's pool sizes (default: {reference_default_threads(CPUS)}, its default on this machine, "
        f"and {GPU_HOST_THREADS}, its default on a host with 28 cores or more)",
    )
    parser.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()

    chunks = synthetic_chunks(args.chunks)
    process, base_url = start_test_server(REPO, LATENCY_S, CAPACITY)
    try:
        ours = measure_ours(base_url, chunks)
        references = [measure_reference(base_url, chunks, threads) for threads in args.reference_threads]
    finally:
        process.terminate()
        process.wait()
    both_stages = ours[-1]
    verdict = "\n".join(
        [
            f"- Target: at least 90% of the ideal rate: {both_stages.share_of_ideal:.1%}, "
            f"{'PASS' if both_stages.share_of_ideal >= 0.9 else 'FAIL'}; client CPU under 2 ms per request: "
            f"{both_stages.cpu_ms_per_request:.2f} ms, {'PASS' if both_stages.cpu_ms_per_request < 2 else 'FAIL'}.",
            f"- Conditions of every ratio: {conditions()}. The reference sends the `questions` requests only "
            "(at its rate the answers would take minutes); ours is both stages.",
            *comparisons(both_stages, references),
        ]
    )
    threads = ",".join(str(n) for n in args.reference_threads)
    text = "\n".join(
        [
            "## Generation: requests to an OpenAI-compatible server",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {CPUS} cores, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, openai {openai.__version__}",
            f"- Command: `.venv/bin/python benchmarks/bench_generation.py --chunks {args.chunks} "
            f"--reference-threads {threads} --record`",
            f"- Server: `OpenAITestServer` in its own process, {LATENCY_S * 1000:.0f} ms latency, capacity {CAPACITY} "
            "(ideal 320 requests/s); the `questions` prompt for each chunk. Client CPU is the client process's "
            "CPU time (the server runs in another process) divided by the requests.",
            "",
            table([*ours, *references]),
            "",
            verdict,
        ]
    )
    publish(text, args.record)


if __name__ == "__main__":
    main()
