"""Curation throughput: `curated_answers`' requests to an OpenAI-compatible server, against the ideal rate.

The server is the test suite's `OpenAITestServer` in its own process, under the conditions of
bench_generation.py: 200 ms latency, 64 slots, so the ideal rate is 64 / 0.2 = 320 requests/s. It answers with
`raft_responder`, which rates each question in JSON fitting the schema of the request's `response_format`. The
client rates N synthetic answered questions exactly as the asset does (`run_batch` over the `curation` prompt with
structured output, `parse_rating`, the reply cache on a fresh SQLite file, 80 requests in flight), then
`curate` embeds the questions for the near-duplicate test and gives the verdicts (timed apart: it sends nothing).

Run from the repository root: `.venv/bin/python benchmarks/bench_curation.py [--questions 2000] [--record]`.
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
from pathlib import Path

import openai
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import publish, start_test_server  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from raft_assets.curation.rubric import curation_prompt, parse_rating  # noqa: E402
from raft_assets.curation.verdicts import Policy, batch, curate, to_rate  # noqa: E402
from raft_assets.defs.resources import LLMResource  # noqa: E402
from raft_assets.generation.progress import StageProgress  # noqa: E402
from raft_assets.generation.tasks import run_batch  # noqa: E402
from raft_assets.hashing import content_hash  # noqa: E402
from raft_assets.llm.reply_cache import ReplyCache  # noqa: E402
from raft_assets.retrieval.embeddings import embed, load_embedder  # noqa: E402

LATENCY_S = 0.2
CAPACITY = 64
IDEAL = CAPACITY / LATENCY_S
CLIENT_CONCURRENCY = 80  # as bench_generation.py: a little above the server's slots
TARGET = 0.85  # of the ideal rate
CPUS = os.cpu_count() or 1
TOPICS = ["FSDP", "LoRA", "QLoRA", "vLLM", "torchrun", "bf16", "RoPE", "GQA", "DCP", "SDPA", "KV cache", "NF4"]


def synthetic(count: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    """`count` answered questions (cot_answers and questions frames) over chunks of about 900 characters."""
    chunk_texts, question_rows, answer_rows = {}, [], []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        text = " ".join(
            f"{topic} note {i}.{s}: rank {s % 8} keeps shard {i * 7 + s} of layer {i % 80} in memory."
            for s in range(14)
        )
        chunk_id = content_hash(text)
        chunk_texts[chunk_id] = text
        question = f"Which shard does rank {i % 8} keep for {topic} layer {i % 80} in setup {i}?"
        question_id = content_hash(chunk_id, question)
        quote = text.split(". ")[i % 8 + 1]
        cot = f"The chunk says ##begin_quote##{quote}##end_quote##.\n<ANSWER>: {quote}"
        question_rows.append((question_id, chunk_id, question))
        answer_rows.append((question_id, cot, quote, "ok", None))
    questions = pl.DataFrame(question_rows, schema=["question_id", "chunk_id", "question"], orient="row")
    answers = pl.DataFrame(answer_rows, schema=["question_id", "cot_answer", "answer", "status", "error"], orient="row")
    return answers, questions, chunk_texts


def measure(base_url: str, count: int) -> dict:
    answers, questions, chunk_texts = synthetic(count)
    pending = to_rate(answers, questions, chunk_texts)
    llm = LLMResource(base_url=base_url, model="test-model", max_concurrency=CLIENT_CONCURRENCY)
    progress = StageProgress("curated_answers", pending.height, logging.getLogger("bench"), 3600, int)

    async def rate() -> tuple[list, dict]:
        with tempfile.TemporaryDirectory() as folder:
            cache = ReplyCache(Path(folder) / "replies.sqlite")
            try:
                async with llm.client(cache) as client:
                    outcomes = await run_batch(client, curation_prompt(), batch(pending), parse_rating, 1, progress)
                    return outcomes, {"requests": client.usage.requests, "tokens": client.usage.prompt_tokens}
            finally:
                cache.close()

    started, cpu = time.monotonic(), time.process_time()
    outcomes, usage = asyncio.run(rate())
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
    model = load_embedder()  # loaded once per process, before the timing
    dedup_started = time.monotonic()
    table = curate(answers, pending, outcomes, "test-model", Policy(7, 0.9), lambda texts: embed(model, texts))
    return {
        "questions": count,
        "requests": usage["requests"],
        "seconds": seconds,
        "rate": usage["requests"] / seconds,
        "cpu_ms": 1000 * cpu_seconds / usage["requests"],
        "verdicts_s": time.monotonic() - dedup_started,
        "ok": int((table["status"] == "ok").sum()),
        "kept": int((table["verdict"] == "keep").sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()

    process, base_url = start_test_server(REPO, LATENCY_S, CAPACITY, "raft_assets_tests.raft_model:raft_responder")
    try:
        m = measure(base_url, args.questions)
    finally:
        process.terminate()
        process.wait()
    share = m["rate"] / IDEAL
    passed = share >= TARGET and m["ok"] == m["questions"]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = "\n".join(
        [
            "## Curation: ratings from an OpenAI-compatible server",
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {CPUS} cores, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"openai {openai.__version__}; load average at the end {load}",
            f"- Command: `.venv/bin/python benchmarks/bench_curation.py --questions {args.questions} --record`",
            f"- Server: `OpenAITestServer` in its own process, {LATENCY_S * 1000:.0f} ms latency, capacity {CAPACITY} "
            f"(ideal {IDEAL:.0f} requests/s), replying with `raft_responder`'s JSON ratings; client: the "
            f"`curation` prompt with structured output (`response_format` json_schema), {CLIENT_CONCURRENCY} "
            "requests in flight, `run_batch` and `parse_rating` as the asset runs them; both processes on this "
            f"{CPUS}-core machine. Client CPU is the client process's CPU time divided by the requests.",
            "",
            "| questions | requests | seconds | requests/s | share of ideal (320/s) | client CPU ms per request "
            "| ratings that fit the schema | kept | verdicts s (embedding + near-duplicates, no request) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {m['questions']:,} | {m['requests']:,} | {m['seconds']:.2f} | {m['rate']:.1f} | {share:.1%} "
            f"| {m['cpu_ms']:.2f} | {m['ok']:,} | {m['kept']:,} | {m['verdicts_s']:.2f} |",
            "",
            f"- Target: at least {TARGET:.0%} of the ideal rate, every reply fitting the schema: {share:.1%}, "
            f"{m['ok']:,} of {m['questions']:,}: {'PASS' if passed else 'FAIL'}.",
        ]
    )
    publish(text, args.record)
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
