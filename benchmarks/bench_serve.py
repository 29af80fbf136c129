"""`raft-assets serve` on the CPU with the tiny model: requests per second and time to first token, with the
in-process batching across concurrent requests against one request at a time.

Setup (not timed): the corpus, retrieval index and tiny checkpoint of the tests (`build_project`: 10 chunks in 3
documents, the tiny model built on them), and `raft-assets serve --backend transformers --port 0` on it, in a
process of its own, as deployed (the clients run in this one).

Measured: `--clients` concurrent clients (the `openai` client, streaming), each asking `--requests-per-client`
questions one after the other (a closed loop: a client asks again as soon as it has its answer), answers of at most
`--max-new-tokens` tokens (the untrained tiny model seldom ends a turn early: answers are about as long as allowed). The service runs twice, with `--max-concurrency 1` (one request at a time: batches
of one, the others wait in the queue) and with `--max-concurrency` = the number of clients (one batch for all).
Requests per second: all requests over the wall time. Time to first token: from sending a request to its first
piece of text, median and 90th percentile over all requests (waiting in the queue included: what a user sees).
Targets: batching answers at least `--target-speedup` times the requests per second, with a median time to first
token no longer than one at a time.

Run from the repository root:
`.venv/bin/python benchmarks/bench_serve.py [--clients 16] [--requests-per-client 4] [--max-new-tokens 64] [--record]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import machine_description, publish  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from raft_assets.serving.generators import BATCH_WINDOW_S  # noqa: E402
from raft_assets.serving.service import RETRIEVAL_WINDOW_S  # noqa: E402
from raft_assets_tests.test_answering import build_project  # noqa: E402

HEADING = "## Serving: `raft-assets serve` on the CPU, batching vs one at a time"
QUESTIONS = [
    "How many tokens was Llama 3 trained on?",
    "What vocabulary does the Llama 3 tokenizer have?",
    "Which technique shards optimizer states across workers?",
    "What does activation checkpointing trade?",
    "How are documents wrapped in RAFT samples?",
    "What license is Llama 3 released under?",
]


@dataclass(frozen=True)
class Run:
    label: str
    max_concurrency: int
    requests: int
    seconds: float
    first_token_s: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def median_first_token(self) -> float:
        return statistics.median(self.first_token_s)

    @property
    def p90_first_token(self) -> float:
        return statistics.quantiles(self.first_token_s, n=10)[8]


async def client_loop(url: str, index: int, count: int, max_new_tokens: int, first_tokens: list[float]) -> None:
    """One client: `count` streamed questions, one after the other; the time to first token of each."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        for number in range(count):
            question = QUESTIONS[(index + number) % len(QUESTIONS)]
            started = time.perf_counter()
            stream = await client.chat.completions.create(
                model="run-1",
                messages=[{"role": "user", "content": question}],
                max_tokens=max_new_tokens,
                stream=True,
            )
            first = None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            if first is None:
                raise AssertionError(f"no text in the answer to {question!r}")
            first_tokens.append(first)


async def load(url: str, clients: int, per_client: int, max_new_tokens: int) -> tuple[float, list[float]]:
    first_tokens: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(url, i, per_client, max_new_tokens, first_tokens) for i in range(clients)))
    return time.perf_counter() - started, first_tokens


@contextmanager
def serve(root: Path, max_concurrency: int, args: argparse.Namespace) -> Iterator[str]:
    """`raft-assets serve` in a process of its own, as deployed; yields its URL."""
    options = ["--port", "0", "--backend", "transformers", "--device", "cpu", "--top-k", "5"]
    options += ["--max-concurrency", str(max_concurrency), "--max-queue", str(args.clients)]
    options += ["--max-new-tokens", str(args.max_new_tokens)]
    environment = {
        **os.environ,
        "RAFT_DATA_DIR": str(root / "generated"),
        "RAFT_CHECKPOINT_DIR": str(root / "checkpoints"),
    }
    if args.threads:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    command = [str(Path(sys.executable).parent / "raft-assets"), "serve", *options]
    process = subprocess.Popen(command, cwd=REPO, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        banner = next(line for line in process.stderr if line.startswith(("Serving ", "error")))
        yield re.search(r" at (http://\S+)/ ", banner).group(1)
    finally:
        process.terminate()
        process.communicate(timeout=60)


def measure(root: Path, label: str, max_concurrency: int, args: argparse.Namespace) -> Run:
    with serve(root, max_concurrency, args) as url:
        asyncio.run(load(url, max_concurrency, 1, args.max_new_tokens))  # warm-up
        seconds, first_tokens = asyncio.run(load(url, args.clients, args.requests_per_client, args.max_new_tokens))
    return Run(label, max_concurrency, args.clients * args.requests_per_client, seconds, first_tokens)


def table(runs: list[Run]) -> str:
    lines = [
        "| service | max concurrency | requests | seconds | requests/s | first token p50 (s) | p90 (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run.label} | {run.max_concurrency} | {run.requests} | {run.seconds:.2f} | {run.rate:.2f} | "
            f"{run.median_first_token:.2f} | {run.p90_first_token:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--target-speedup", type=float, default=2.0)
    parser.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as folder:
        root = build_project(Path(folder))
        one = measure(root, "one at a time", 1, args)
        batched = measure(root, "batched", args.clients, args)
    speedup = batched.rate / one.rate
    passed = speedup >= args.target_speedup and batched.median_first_token <= one.median_first_token
    machine = machine_description(["torch", "transformers", "starlette", "uvicorn", "openai"])
    text = "\n".join(
        [
            HEADING,
            "",
            f"- Date: {machine['date']}; machine: {machine['cpus']}, {machine['memory']}; load {machine['load']}; "
            f"{machine['python']}; {machine['packages']}; the service in a process of its own (torch threads: "
            f"{args.threads or torch.get_num_threads()}), the clients in another, {os.cpu_count()} cores in all.",
            f"- Command: `.venv/bin/python benchmarks/bench_serve.py --clients {args.clients} --requests-per-client "
            f"{args.requests_per_client} --max-new-tokens {args.max_new_tokens}"
            f"{f' --threads {args.threads}' if args.threads else ''} --record`",
            f"- Load: {args.clients} concurrent streaming clients (`openai` AsyncOpenAI), {args.requests_per_client} "
            f"questions each, one after the other; answers of {args.max_new_tokens} tokens; top 5 chunks per question "
            "(prompts of about 610 tiny tokens); the tiny checkpoint in the service's process (`--backend transformers`, batch "
            f"window {BATCH_WINDOW_S * 1000:g} ms, retrieval window {RETRIEVAL_WINDOW_S * 1000:g} ms). First token: from sending the request to its first text, queueing included.",
            "",
            table([one, batched]),
            "",
            f"- Batching answers {speedup:.2f}x the requests per second of one at a time (target "
            f"≥ {args.target_speedup:g}x), with a median time to first token of {batched.median_first_token:.2f} s "
            f"against {one.median_first_token:.2f} s (target: no longer): **{'pass' if passed else 'FAIL'}**.",
        ]
    )
    publish(text, args.record)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
