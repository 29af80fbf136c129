"""Answering throughput of `TransformersBackend` on the CPU: batched generation against one request at a time.

Setup (not timed): the sample corpus (`data/sources.yaml`) loaded and chunked as the `documents` and `chunks`
assets do, the `tiny` model built on its chunks (`build_tiny_model`, as the `base_model` asset does), and
RAG requests as evaluation sends them: a question about a chunk with 5 chunks as context (that chunk and 4
others drawn with a fixed seed), each prompt the fine-tuning prompt in the tiny model's chat template.

Measured: the same requests answered with batch_size 1, 8 and 16 (greedy, at most `--max-new-tokens` new
tokens, each value given measured in turn), after one warm-up batch. Answers per second are requests over the
wall time of `answer_all`, best of `--repeat` rounds; the texts of every batch size are compared with those of
batch_size 1 (greedy decoding must not depend on batching).

Run from the repository root:
`.venv/bin/python benchmarks/bench_answering.py [--requests 32] [--max-new-tokens 64,256] [--threads N] [--record]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import publish  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from raft_assets.contracts.sources import load_sources  # noqa: E402
from raft_assets.inference.answering import AnswerRequest  # noqa: E402
from raft_assets.inference.local_model import TransformersBackend  # noqa: E402
from raft_assets.ingestion.chunking import ChunkingOptions, split_documents  # noqa: E402
from raft_assets.ingestion.documents import load_source  # noqa: E402
from raft_assets.training.base_model import build_tiny_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## Answering: batched generation with transformers (CPU)"
BATCH_SIZES = (1, 8, 16)
DOCUMENTS_PER_PROMPT = 5
SEED = 0


@dataclass(frozen=True)
class Measurement:
    max_new_tokens: int
    batch_size: int
    requests: int
    seconds: float
    same_as_one_at_a_time: bool

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def corpus_chunks() -> list[str]:
    """The sample corpus's chunks, as the `chunks` asset splits them with its default options."""
    frames = [load_source(spec).documents for spec in load_sources(REPO / "data" / "sources.yaml")]
    return [text for frame in frames for text in split_documents(frame, ChunkingOptions()).chunks["text"]]


def rag_requests(chunks: list[str], count: int) -> list[AnswerRequest]:
    """`count` questions, each about one chunk, with it and 4 other chunks as context, shuffled."""
    rng = random.Random(SEED)
    requests = []
    for index in range(count):
        oracle = chunks[index * len(chunks) // count]
        documents = [oracle, *rng.sample([chunk for chunk in chunks if chunk != oracle], DOCUMENTS_PER_PROMPT - 1)]
        rng.shuffle(documents)
        subject = " ".join(oracle.split()[:6])
        requests.append(AnswerRequest(f"What do the docs say about '{subject}'?", documents))
    return requests


def measure(model: Path, requests: list[AnswerRequest], max_new_tokens: int, repeat: int) -> list[Measurement]:
    """Each batch size in turn, `repeat` rounds (so that a busy moment of the machine hits them alike); the best."""
    backends = {
        size: TransformersBackend(model, batch_size=size, max_new_tokens=max_new_tokens, device="cpu")
        for size in BATCH_SIZES
    }
    best = dict.fromkeys(BATCH_SIZES, float("inf"))
    texts: dict[int, list[str]] = {}
    for backend in backends.values():
        asyncio.run(backend.answer_all(requests[: backend.batch_size]))  # warm-up
    for _ in range(repeat):
        for size, backend in backends.items():
            started = time.perf_counter()
            answers = asyncio.run(backend.answer_all(requests))
            best[size] = min(best[size], time.perf_counter() - started)
            texts[size] = [answer.text for answer in answers]
            print(f"max_new_tokens {max_new_tokens}, batch_size {size}: {len(requests) / best[size]:.2f} answers/s")
    return [
        Measurement(max_new_tokens, size, len(requests), best[size], texts[size] == texts[1]) for size in BATCH_SIZES
    ]


def table(measurements: list[Measurement]) -> str:
    single = {m.max_new_tokens: m for m in measurements if m.batch_size == 1}
    lines = [
        "| max_new_tokens | batch_size | requests | seconds | answers/s | vs batch_size 1 | same texts as batch_size 1 |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.max_new_tokens} | {m.batch_size} | {m.requests} | {m.seconds:.2f} | {m.rate:.2f} | "
            f"{m.rate / single[m.max_new_tokens].rate:.2f}x | {'yes' if m.same_as_one_at_a_time else 'NO'} |"
        )
    return "\n".join(lines)


def ratios(measurements: list[Measurement]) -> str:
    """One line per max_new_tokens: the speed-up of batch_size 8 and 16 over one request at a time."""
    rates = {(m.max_new_tokens, m.batch_size): m.rate for m in measurements}
    lines = []
    for tokens in dict.fromkeys(m.max_new_tokens for m in measurements):
        lines.append(
            f"- {tokens} new tokens: batching gives {rates[tokens, 8] / rates[tokens, 1]:.2f}x the answers per second "
            f"of one request at a time with batch_size 8, {rates[tokens, 16] / rates[tokens, 1]:.2f}x with 16."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", default="64", help="comma-separated values, each measured (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per batch size, in turns; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--record", action="store_true", help=f"write the results into {RESULTS.name}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = [int(value) for value in args.max_new_tokens.split(",")]

    chunks = corpus_chunks()
    requests = rag_requests(chunks, args.requests)
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "tiny"
        tiny = build_tiny_model(model, chunks)
        lengths = sorted(len(ids) for ids in TransformersBackend(model, device="cpu").prompt_ids(requests))
        measurements = [m for tokens in new_tokens for m in measure(model, requests, tokens, args.repeat)]

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    threads = f" --threads {args.threads}" if args.threads else ""
    text = "\n".join(
        [
            HEADING,
            "",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, transformers {transformers.__version__}, Python "
            f"{platform.python_version()}; load average at the end {load}",
            f"- Command: `.venv/bin/python benchmarks/bench_answering.py --requests {args.requests} "
            f"--max-new-tokens {args.max_new_tokens} --repeat {args.repeat}{threads} --record`",
            f"- Model: `tiny` built on the sample corpus's {len(chunks)} chunks ({tiny.parameters:,} parameters, "
            f"fp32). Requests: {len(requests)} RAG prompts of {DOCUMENTS_PER_PROMPT} chunks each, "
            f"{lengths[0]:,} to {lengths[-1]:,} prompt tokens (median {lengths[len(lengths) // 2]:,}); greedy. "
            f"Seconds: `answer_all` over all requests, best of {args.repeat} rounds (the batch sizes in turn) "
            "after a warm-up batch.",
            "",
            table(measurements),
            "",
            ratios(measurements),
            "- Batching pays in decoding (one forward pass per step for the whole batch), not in the prefill of the "
            "prompts: padded prompts need an explicit attention mask, so the gain grows with the length of the answers.",
        ]
    )
    publish(text, args.record)


if __name__ == "__main__":
    main()
