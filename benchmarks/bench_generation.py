"""Generation throughput: our `llm` client against the reference design, on OpenAI-compatible servers.

Two sections of RESULTS.md:

1. "Generation: requests to an OpenAI-compatible server": the test suite's `OpenAITestServer` in its own process
(200 ms latency, 64 slots, so the ideal rate is 64 / 0.2 = 320 requests/s). Both clients send the `questions`
prompt for the same 2,000 synthetic chunks:

- ours: `generate_questions`, then `generate_answers` for every question, through `ChatClient` with its defaults
  (no concurrency setting: the level adapts, `llm/concurrency.py`; reply cache on a fresh SQLite file), exactly as
  the assets run them;
- reference: what the llama-recipes script does, a thread pool each of whose workers makes blocking requests
  with the openai SDK (the `questions` requests only). Its size is ThreadPoolExecutor's default,
  min(32, CPUs + 4): 6 on this project's 2-core machine, 32 on a host with 28 cores or more (a typical GPU
  host). A pool of N threads keeps at most N requests in flight, so the reference runs at each size in
  `--reference-threads` (default: this machine's default and 32), and every ratio names the size.

2. "Generation at scale: adaptive concurrency": servers like a 70B model's, whose chain-of-thought replies take 2 to
10 s (uniform, per request), time-scaled so the whole section takes a few minutes: 256 slots (vLLM's default batch),
64 and 1,024, and a cloud API with a limit of 600 requests per minute (429 with Retry-After beyond it) and no slot
limit. Ours sends `cot_answer` requests through `run_batch` with no concurrency setting; the reference its thread
pools. The utilisation of the slots is the server's own measure (busy slots integrated over time, read from its
stats route), once ramped: from when 2x the slots have been answered and 90% of them were first busy, to 2x the
slots before the end.

Run from the repository root:
`.venv/bin/python benchmarks/bench_generation.py [--chunks 2000] [--reference-threads 6,32] [--only scale] [--record]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import publish  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from raft_assets.contracts.prompts import load_prompts  # noqa: E402
from raft_assets.contracts.raft_format import documents_block  # noqa: E402
from raft_assets.defs.resources import LLMResource  # noqa: E402
from raft_assets.generation.progress import StageProgress  # noqa: E402
from raft_assets.generation.tasks import (  # noqa: E402
    generate_answers,
    generate_questions,
    run_batch,  # noqa: E402
)
from raft_assets.hashing import content_hash  # noqa: E402
from raft_assets.llm.client import ChatClient, Endpoint  # noqa: E402
from raft_assets.llm.reply_cache import ReplyCache  # noqa: E402
from raft_assets_tests.openai_server import STATS_PATH  # noqa: E402

LATENCY_S = 0.2
CAPACITY = 64
CPUS = os.cpu_count() or 1
CPU_MS_TARGET = 1.0  # client CPU per request at most: 1,000 requests/s from one core (issue 15)
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
    llm = LLMResource(base_url=base_url, model="test-model")  # the defaults: the level adapts
    log = logging.getLogger("bench")
    chunk_texts = dict(zip(chunks["chunk_id"], chunks["text"], strict=True))
    measurements = []

    async def stage(client: ChatClient, name: str, work) -> object:
        requests_before = client.usage.requests
        started, cpu = time.monotonic(), time.process_time()
        result = await work
        seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
        requests = client.usage.requests - requests_before
        in_flight = client.usage.concurrency.most_in_flight if client.usage.concurrency else 0
        measurements.append(Measurement(name, in_flight, requests, seconds, cpu_seconds))
        return result

    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            cache = ReplyCache(Path(folder) / "replies.sqlite")
            async with llm.client(cache) as client:
                questions = await stage(
                    client,
                    "ours: `questions` (asyncio, adaptive)",
                    generate_questions(client, chunks, 5, 1, StageProgress("q", chunks.height, log, 3600, int)),
                )
                pending = int((questions["status"] == "ok").sum())
                await stage(
                    client,
                    "ours: `cot_answers` (asyncio, adaptive)",
                    generate_answers(client, questions, chunk_texts, 1, StageProgress("a", pending, log, 3600, int)),
                )
            cache.close()

    asyncio.run(run())
    total = Measurement(
        "ours: both stages",
        max(m.in_flight for m in measurements),
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
        "requests/s), our client with its defaults (no concurrency setting: the level adapts), both processes on this "
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


# -- section 2: adaptive concurrency against servers like a 70B model's ------------------------------------------

REPLY_S = (2.0, 10.0)  # a 70B model's chain-of-thought reply takes this long, uniform per request
RATE_LIMIT_RPM = 600


@dataclass(frozen=True)
class Scenario:
    name: str
    slots: int | None  # None: no slot limit (a cloud API)
    scale: float  # benchmark seconds per real second: latencies times it, a rate limit divided by it
    requests: int
    rpm: int | None = None  # a requests-per-minute limit, in real minutes

    def server_options(self) -> list[str]:
        low, high = (bound * self.scale for bound in REPLY_S)
        options = ["--latency", f"{low:g}", "--jitter", f"{high - low:g}"]
        options += ["--capacity", str(self.slots)] if self.slots else []
        return options + (["--requests-per-minute", f"{self.rpm / self.scale:g}"] if self.rpm else [])

    def conditions(self) -> str:
        low, high = (bound * self.scale for bound in REPLY_S)
        limit = f"{self.slots:,} slots" if self.slots else "no slot limit"
        rate = f", {self.rpm} requests/minute ({self.rpm / self.scale / 60:.1f}/s scaled)" if self.rpm else ""
        return f"{limit}{rate}, replies of {low:g}-{high:g} s (2-10 s x {self.scale:g})"


# 1,024 slots: a slower scale, so the rate (slots / mean latency) stays one this 2-core machine's client and server
# processes both keep up with (~300 requests/s)
SCENARIOS = {
    "256": Scenario("256 slots (vLLM's default batch)", 256, 0.15, 3072),
    "64": Scenario("64 slots", 64, 0.05, 1280),
    "1024": Scenario("1,024 slots", 1024, 0.8, 6144),
    "rpm": Scenario("600 requests/minute, no slot limit", None, 0.15, 1200, rpm=RATE_LIMIT_RPM),
}


class ServerProcess:
    """`raft_assets_tests.openai_server` in its own process, its stats read over HTTP (its CPU is not the client's)."""

    def __init__(self, options: list[str]) -> None:
        command = [sys.executable, "-m", "raft_assets_tests.openai_server", *options]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.base_url = self.process.stdout.readline().split()[-1]

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + STATS_PATH) as response:
            return json.load(response)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait()


class Sampler(threading.Thread):
    """The server's completed replies and busy slot-seconds every 200 ms, for the utilisation once ramped."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self.cpu_seconds = 0.0  # this thread's: not the client's

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            self.samples.append(self.server.stats())
        self.cpu_seconds = time.thread_time()

    def rate(self, start: int, end: int) -> float | None:
        """Replies per second between `start` and `end` replies answered (None: too short a stretch)."""
        inside = [s for s in self.samples if start <= s["completed"] <= end]
        if len(inside) < 2:
            return None
        return (inside[-1]["completed"] - inside[0]["completed"]) / (inside[-1]["monotonic"] - inside[0]["monotonic"])

    def utilisation(self, slots: int, start: int, end: int) -> float | None:
        """The mean busy share of the slots from `start` replies answered, or from when 90% of the slots were first
        busy if that is later (the ramp's end), to `end` replies answered (None: too short a stretch)."""
        full = next((s["completed"] for s in self.samples if s["active"] >= 0.9 * slots), start)
        inside = [s for s in self.samples if max(start, full) <= s["completed"] <= end]
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        return (last["busy_slot_seconds"] - first["busy_slot_seconds"]) / (
            (last["monotonic"] - first["monotonic"]) * slots
        )


@dataclass(frozen=True)
class ScaleRun:
    scenario: Scenario
    client: str
    requests: int
    failed: int
    seconds: float
    cpu_seconds: float
    busy_whole: float | None  # the share of slot-seconds busy over the whole run
    busy_ramped: float | None  # the same once ramped
    rate_ramped: float | None  # replies per second once ramped
    most_in_flight: int
    level: str  # the level at the end, and its changes
    rate_limited: int  # 429s the server answered

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / max(self.requests, 1)


def cot_values(count: int) -> list[dict[str, str]]:
    """`cot_answer` values: 4 questions per synthetic chunk, a chunk's questions together."""
    chunks = synthetic_chunks(-(-count // 4))["text"]
    return [
        {"question": f"Which shard does rank {i % 4} hold?", "documents": documents_block([chunks[i // 4]])}
        for i in range(count)
    ]


def measured(scenario: Scenario, client: str, work) -> ScaleRun:
    """Run `work(base_url)` (returning the failed count, the most in flight and the level) against a fresh server."""
    with ServerProcess(scenario.server_options()) as server:
        sampler = Sampler(server)
        before = server.stats()
        sampler.start()
        started, cpu = time.monotonic(), time.process_time()
        failed, most_in_flight, level = work(server.base_url)
        seconds = time.monotonic() - started
        sampler.stopping.set()
        sampler.join()
        cpu_seconds = time.process_time() - cpu - sampler.cpu_seconds
        after = server.stats()
    requests = after["completed"] - before["completed"]
    ramp = 2 * (scenario.slots or round(scenario.rpm / scenario.scale / 60 * sum(REPLY_S) / 2 * scenario.scale))
    rate_ramped = sampler.rate(ramp, requests - ramp)
    busy_whole = busy_ramped = None
    if scenario.slots:
        busy = after["busy_slot_seconds"] - before["busy_slot_seconds"]
        busy_whole = busy / ((after["monotonic"] - before["monotonic"]) * scenario.slots)
        busy_ramped = sampler.utilisation(scenario.slots, 2 * scenario.slots, requests - 2 * scenario.slots)
    return ScaleRun(
        scenario, client, requests, failed, seconds, cpu_seconds, busy_whole, busy_ramped, rate_ramped, most_in_flight,
        level,
        after["rate_limited"] - before["rate_limited"],
    )  # fmt: skip


def ours_at_scale(scenario: Scenario) -> ScaleRun:
    """`cot_answer` requests through run_batch and a ChatClient with its defaults (no concurrency setting)."""
    values = cot_values(scenario.requests)

    def work(base_url: str) -> tuple[int, int, str]:
        async def run() -> tuple[int, int, str]:
            with tempfile.TemporaryDirectory() as folder:
                cache = ReplyCache(Path(folder) / "replies.sqlite")
                async with ChatClient(Endpoint.at(base_url, model="test-model"), cache) as client:
                    usage = client.usage
                    progress = StageProgress(
                        "cot", len(values), logging.getLogger("bench"), 3600, int, usage.concurrency_line
                    )
                    outcomes = await run_batch(client, load_prompts()["cot_answer"], values, str, 1, progress)
                cache.close()
            log = usage.concurrency
            assert log is not None
            level = f"{sum(log.levels)} ({log.changes} changes)"
            return sum(outcome.status != "ok" for outcome in outcomes), log.most_in_flight, level

        return asyncio.run(run())

    return measured(scenario, "ours (defaults: adaptive)", work)


def reference_at_scale(scenario: Scenario, threads: int) -> ScaleRun:
    """The reference's pool of `threads` blocking requests (the openai SDK's defaults: 2 retries), 25 per thread."""
    values = cot_values(min(scenario.requests, 25 * threads))
    prompt = load_prompts()["cot_answer"]

    def work(base_url: str) -> tuple[int, int, str]:
        client = openai.OpenAI(base_url=base_url, api_key="EMPTY")

        def ask(value: dict[str, str]) -> bool:
            try:
                client.chat.completions.create(model="test-model", messages=prompt.messages(**value), **prompt.params)
            except openai.APIError:
                return False
            return True

        with ThreadPoolExecutor(max_workers=threads) as pool:
            answered = list(pool.map(ask, values))
        return answered.count(False), threads, f"{threads} (fixed)"

    return measured(scenario, f"reference: pool of {threads} threads ({describe_pool(threads)})", work)


def share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def scale_table(runs: list[ScaleRun]) -> str:
    lines = [
        "| server | client | requests | failed | seconds | requests/s | requests/s once ramped | slots busy, whole run "
        "| slots busy, once ramped "
        "| most in flight | level at the end | 429s | client CPU ms per request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.scenario.conditions()} | {r.client} | {r.requests:,} | {r.failed} | {r.seconds:.1f} | {r.rate:.1f} "
            f"| {'–' if r.rate_ramped is None else f'{r.rate_ramped:.1f}'} | {share(r.busy_whole)} | {share(r.busy_ramped)} | {r.most_in_flight:,} | {r.level} | {r.rate_limited:,} "
            f"| {r.cpu_ms_per_request:.2f} |"
        )
    return "\n".join(lines)


def scale_verdicts(runs: list[ScaleRun]) -> list[str]:
    """The targets (each can fail) and the ratios against the reference, each with its conditions."""
    lines = []
    for run in runs:
        if run.client.startswith("reference"):
            continue
        if run.scenario.slots:
            busy = run.busy_ramped or 0.0
            lines.append(
                f"- Target, {run.scenario.name}: >= 90% of the slots busy once ramped, no setting: {busy:.1%}, "
                f"{'PASS' if busy >= 0.9 else 'FAIL'}."
            )
        else:
            limit = run.scenario.rpm / run.scenario.scale / 60
            rate = run.rate_ramped or 0.0
            ok = run.failed == 0 and rate >= 0.9 * limit
            lines.append(
                f"- Target, {run.scenario.name}: 0 failed rows and >= 90% of the limit once ramped: {run.failed} "
                f"failed, {rate:.1f} of {limit:.1f} requests/s ({rate / limit:.1%}; whole run {run.rate:.1f}, with "
                f"the ramp from 8 in flight), {'PASS' if ok else 'FAIL'}."
            )
    ours = next((r for r in runs if r.scenario.slots == 256 and not r.client.startswith("reference")), None)
    for reference in (r for r in runs if r.client.startswith("reference")):
        if ours is not None:
            lines.append(
                f"- At 256 slots, ours is {ours.rate / reference.rate:.1f}x the reference's pool of "
                f"{reference.most_in_flight} threads over the whole run, its ramp included: {ours.rate:.1f} against "
                f"{reference.rate:.1f} requests/s, {share(ours.busy_whole)} against {share(reference.busy_whole)} of "
                f"the slots busy ({share(ours.busy_ramped)} once ramped; the pool never ramps)."
            )
    return lines


def scale_section(runs: list[ScaleRun], command: str) -> str:
    return "\n".join(
        [
            "## Generation at scale: adaptive concurrency",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {CPUS} cores, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, openai {openai.__version__}",
            f"- Command: `{command}`",
            "- Servers: `OpenAITestServer` in its own process; each request takes a time drawn uniformly from 2-10 s "
            "(a 70B model's chain-of-thought reply), times the scale, so a run takes seconds; the rate limit is "
            "divided by the same scale. Ours sends `cot_answer` requests through `run_batch` with no concurrency "
            "setting; the reference sends 25 per thread of its pool (at its rate more would take minutes). Slots "
            "busy: the server's busy slot-seconds over the slot-seconds available; once ramped: from when 2x the "
            "slots were answered and 90% of them were first busy, to 2x the slots before the end (the rate limit: 2x its rate times the mean reply). "
            "Client CPU: the client process's CPU time per request (the server runs in another process); at these "
            "rates, far below what one core serves, a request's CPU includes the event loop waking for it alone; "
            "the CPU target is the first section's, at 300 requests/s.",
            "",
            scale_table(runs),
            "",
            *scale_verdicts(runs),
        ]
    )


def thread_counts(text: str) -> list[int]:
    """`--reference-threads`: comma-separated pool sizes, e.g. "6,32"."""
    return sorted({int(count) for count in text.split(",")})


def base_section(args: argparse.Namespace) -> str:
    """Section 1: 64 slots of 200 ms, ours (both stages, defaults) against the reference's pools."""
    chunks = synthetic_chunks(args.chunks)
    with ServerProcess(["--latency", str(LATENCY_S), "--capacity", str(CAPACITY)]) as server:
        sampler = Sampler(server)
        sampler.start()
        ours = measure_ours(server.base_url, chunks)
        sampler.stopping.set()
        sampler.join()
        references = [measure_reference(server.base_url, chunks, threads) for threads in args.reference_threads]
    both_stages = ours[-1]
    ramped = sampler.utilisation(CAPACITY, 2 * CAPACITY, both_stages.requests - 2 * CAPACITY) or 0.0
    verdict = "\n".join(
        [
            f"- Target: at least 90% of the slots busy once ramped (from 2x the slots answered and 90% of them "
            f"first busy, to 2x the slots before the end; the server's own measure): {ramped:.1%}, {'PASS' if ramped >= 0.9 else 'FAIL'}. "
            f"Over the whole of both stages, ramp from 8 in flight and the pause between the stages included: "
            f"{both_stages.share_of_ideal:.1%} of the ideal rate.",
            f"- Target: client CPU at most {CPU_MS_TARGET:g} ms per request (1,000 requests/s from one core), "
            f"both stages at these conditions: {both_stages.cpu_ms_per_request:.2f} ms, "
            f"{'PASS' if both_stages.cpu_ms_per_request <= CPU_MS_TARGET else 'FAIL'} (the stats sampler's polls, 5 a second, "
            "included).",
            f"- Conditions of every ratio: {conditions()}. The reference sends the `questions` requests only "
            "(at its rate the answers would take minutes); ours is both stages.",
            *comparisons(both_stages, references),
        ]
    )
    threads = ",".join(str(n) for n in args.reference_threads)
    return "\n".join(
        [
            "## Generation: requests to an OpenAI-compatible server",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {CPUS} cores, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, openai {openai.__version__}",
            f"- Command: `.venv/bin/python benchmarks/bench_generation.py --chunks {args.chunks} "
            f"--reference-threads {threads} --only base --record`",
            f"- Server: `OpenAITestServer` in its own process, {LATENCY_S * 1000:.0f} ms latency, capacity {CAPACITY} "
            "(ideal 320 requests/s); the `questions` prompt for each chunk. Client CPU is the client process's "
            "CPU time (the server runs in another process) divided by the requests. In flight at most: ours "
            "with no concurrency setting, as its level adapted.",
            "",
            table([*ours, *references]),
            "",
            verdict,
        ]
    )


def scale_runs(args: argparse.Namespace) -> list[ScaleRun]:
    """Section 2's runs: ours on every scenario, the reference's pools on the 256-slot one."""
    runs = [ours_at_scale(SCENARIOS[name]) for name in args.scenarios]
    if "256" in args.scenarios:
        runs += [reference_at_scale(SCENARIOS["256"], threads) for threads in args.reference_threads]
    return runs


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
    parser.add_argument("--only", choices=["base", "scale"], help="one section (default: both)")
    parser.add_argument(
        "--scenarios",
        type=lambda text: text.split(","),
        default=list(SCENARIOS),
        metavar="NAME,NAME",
        help=f"the scale section's servers, of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.only != "scale":
        publish(base_section(args), args.record)
    if args.only != "base":
        threads = ",".join(str(n) for n in args.reference_threads)
        command = (
            f".venv/bin/python benchmarks/bench_generation.py --only scale --scenarios {','.join(args.scenarios)} "
            f"--reference-threads {threads} --record"
        )
        partial = None if args.scenarios == list(SCENARIOS) else "not every scenario ran"
        publish(scale_section(scale_runs(args), command), args.record, partial)


if __name__ == "__main__":
    main()
