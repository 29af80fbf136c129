"""The embedding cache: the retrieval index of the same chunks built a second time, in another project.

The sample sources (`data/sources.yaml`) are chunked as `chunks` chunks them; then two fresh processes build the
index of those chunks with `retrieval.building.rebuild_index`, each into a data folder of its own (so no previous
index is there to reuse), both with one shared embedding cache (`RAFT_EMBEDDING_CACHE`): the first finds the cache
empty and embeds every chunk, the second finds every chunk in it. Each process reports its own CPU time from start
to end (imports included: loading the embedding model is part of what the cache saves), the build's wall time,
and whether sentence-transformers was imported at all.

Targets: the second build embeds nothing, never imports sentence-transformers, writes the same embeddings, and its
process uses at most a quarter of the first's CPU time.

Run from the repository root: `.venv/bin/python benchmarks/bench_embedding_cache.py [--record]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import machine_description, publish, run_child  # noqa: E402  (benchmarks/ is on sys.path)

MAX_CPU_SHARE = 0.25  # of the first process's CPU time, for the second


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def chunk_sample_sources(corpus_file: Path) -> int:
    """The sample sources' chunks, with the columns `rebuild_index` reads, written to `corpus_file`."""
    import polars as pl

    from raft_assets.contracts.sources import load_sources
    from raft_assets.ingestion.chunking import split_documents
    from raft_assets.ingestion.documents import load_source

    frames = [split_documents(load_source(spec).documents).chunks for spec in load_sources(REPO / "data/sources.yaml")]
    corpus = pl.concat(frames).unique("chunk_id", keep="first", maintain_order=True)
    corpus.select("chunk_id", "doc_id", "text").write_parquet(corpus_file)
    return corpus.height


def build(corpus_file: Path, data_dir: Path, cache_file: Path, result_file: Path) -> None:
    """In a child process: the index of the corpus built into `data_dir`, with the shared cache."""
    import logging

    import numpy as np
    import polars as pl

    from raft_assets.contracts.layout import Layout
    from raft_assets.retrieval.building import rebuild_index
    from raft_assets.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL

    logging.basicConfig(level=logging.WARNING)
    layout = Layout.of(data_dir, data_dir / "checkpoints", cache_file)
    started = time.perf_counter()
    built = rebuild_index(layout, pl.read_parquet(corpus_file), DEFAULT_EMBEDDING_MODEL, logging.getLogger("bench"))
    result = {
        "build_s": time.perf_counter() - started,
        "cpu_s": process_cpu_s(),
        "newly_embedded": built.newly_embedded,
        "from_cache": built.from_cache,
        "sentence_transformers": "sentence_transformers" in sys.modules,
    }
    np.save(data_dir / "embeddings.npy", built.index.embeddings)
    result_file.write_text(json.dumps(result), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    parser.add_argument("--child", nargs=4, metavar=("CORPUS", "DATA_DIR", "CACHE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build(*map(Path, args.child))
        return

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-embedding-cache-") as folder:
        root = Path(folder)
        chunks = chunk_sample_sources(root / "corpus.parquet")
        runs = []
        for name in ("first", "second"):
            files = [root / "corpus.parquet", root / name, root / "cache" / "embeddings.sqlite", root / f"{name}.json"]
            command = [sys.executable, __file__, "--child", *map(str, files)]
            runs.append(run_child(command, REPO, files[3], root / f"{name}.log"))
        same = np.array_equal(np.load(root / "first" / "embeddings.npy"), np.load(root / "second" / "embeddings.npy"))
    first, second = (run.result for run in runs)
    share = second["cpu_s"] / first["cpu_s"]
    checks = {
        "the second build embeds nothing": second["newly_embedded"] == 0 and second["from_cache"] == chunks,
        "the second process never imports sentence-transformers": not second["sentence_transformers"],
        "the same embeddings": same,
        f"the second process's CPU at most {MAX_CPU_SHARE:.0%} of the first's": share <= MAX_CPU_SHARE,
    }
    machine = machine_description(["sentence-transformers", "torch", "numpy"])
    rows = [
        f"| {name} | {run.result['newly_embedded']} | {run.result['from_cache']} | {run.result['build_s']:.2f} "
        f"| {run.result['cpu_s']:.2f} | {run.wall_s:.2f} | {run.rusage_maxrss_mb:.0f} | "
        f"{'yes' if run.result['sentence_transformers'] else 'no'} |"
        for name, run in zip(("first (empty cache)", "second (same chunks)"), runs, strict=True)
    ]
    section = "\n".join(
        [
            "## Embedding cache: the same chunks indexed again in another project",
            "",
            f"- Date: {machine['date']}; machine: {machine['cpus']}, {machine['memory']}, {machine['python']}, "
            f"{machine['packages']}; load average at the end {machine['load']}",
            "- Command: `.venv/bin/python benchmarks/bench_embedding_cache.py --record`",
            f"- Conditions: the {chunks} chunks of the sample sources, `all-MiniLM-L6-v2` on the CPU (torch's default "
            "threads), each build in a fresh process and a data folder of its own, one shared cache file. Process CPU "
            "is from the interpreter's start (imports and the model's loading included).",
            "",
            "| build | embedded | from the cache | build s | process CPU s | process wall s | peak RSS MiB "
            "| sentence-transformers imported |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"The second process used {share:.1%} of the first's CPU time.",
            "",
            *(f"- {'PASS' if passed else 'FAIL'}: {check}" for check, passed in checks.items()),
        ]
    )
    publish(section, args.record)
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
