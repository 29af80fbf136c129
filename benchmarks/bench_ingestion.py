"""Benchmark of the first two pipeline stages, `documents` and `chunks`, on a generated corpus.

What it measures:

1. End to end: a synthetic folder of N documents (default 2,000 files, about 10 KB each, about
   20 MB in all; 60% markdown, 25% plain text, 15% HTML) is written to a temporary folder and
   declared as a local source in a sources.yaml. The real Dagster assets `documents` and `chunks`
   are then materialized for that partition with `dagster.materialize` on a test instance, in a
   fresh child process, so that the process's wall time and peak RSS (VmHWM) are the
   pipeline's own. The documents and chunks step times come from the run's step stats.
2. The reference design in the same run: the llama-recipes recipe's loading and chunking
   (`DirectoryLoader` with `TextLoader`, `RecursiveCharacterTextSplitter` with its settings, its
   filter of duplicate and short chunks), re-implemented here, on the corpus's markdown and text
   files, in a child process of its own; and ours on the same files (the folder declared again
   as a second source, `include: ["**/*.md", "**/*.txt"]`), materialized as in 1. Wall time and
   peak RSS of both, their ratio, and how many chunk texts the two sides share. HTML is left out:
   the recipe has no HTML cleaning for a local folder (see the comment above
   `reference_in_this_process`).
3. Linearity of chunking: `split_documents` (the pure function behind `chunks`) is timed on the
   loaded documents at scales 1x, 2x, 4x... The larger scales repeat the corpus with new doc ids and
   letters rotated (a Caesar shift), so the splitter does the same work on every copy but every
   chunk is new (no chunk is dropped as a duplicate).
4. Boilerplate and near duplicates (issue 14): `split_documents` at 1x with `near_duplicates` off and
   on, and on the corpus with a footer paragraph (page number and year varying) added to every
   document: the detection's CPU cost, and whether the 2,000 footers end up in one chunk.

Targets: the materialization under 60 s and under 2 GB peak RSS; chunking linear (time per MB at
the largest scale at most 1.25x that at the smallest); near-duplicate detection at most 1 CPU s per
MB of text.

Run from the repository root (by hand, not in CI):

    .venv/bin/python benchmarks/bench_ingestion.py [--docs 2000] [--scales 1,2,4] [--record]

`--record` writes the section "## Ingestion: documents + chunks" of benchmarks/RESULTS.md
(replacing an earlier one); `--profile N` also profiles the materialization with cProfile and
prints its N most expensive functions (the profiled run is slower and is not recorded).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from results import (  # noqa: E402  (benchmarks/ is on sys.path when a script runs)
    RESULTS,
    ChildRun,
    machine_description,
    memory_status_mb,
    publish,
    run_child,
)

if TYPE_CHECKING:
    import polars as pl

REPO_ROOT = Path(__file__).resolve().parent.parent
SECTION_TITLE = "## Ingestion: documents + chunks"
SOURCE_NAME = "bench_corpus"
TEXT_SOURCE_NAME = "bench_corpus_text"  # the same folder, its markdown and text files only: the reference's file set
TEXT_FILES = ["**/*.md", "**/*.txt"]

DOC_BYTES = 10_000  # mean size of a generated file
FILE_MIX = {"md": 0.60, "txt": 0.25, "html": 0.15}
DOCS_PER_FOLDER = 100

TARGET_WALL_S = 60.0
TARGET_RSS_MB = 2048.0
LINEARITY_TOLERANCE = 1.25  # largest scale's s/MB over the smallest's
TARGET_NEAR_DUPLICATE_S_PER_MB = 1.0  # boilerplate and near-duplicate passes, CPU s per MB of text

KEY_PACKAGES = [
    "dagster",
    "polars",
    "langchain-text-splitters",
    "langchain-community",
    "beautifulsoup4",
    "lxml",
    "pyarrow",
]


# --------------------------------------------------------------------------- corpus generation

COMMON_WORDS = (  # noqa: SIM905 (a sentence's worth of words reads better as a string)
    "the of and to a in is that for it as with on be by this are or from at an which not can "
    "when each data model file value run step source page text table query index cache"
).split()
ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "st", "tr", "pl"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "nd", "ck"]


@dataclass(frozen=True)
class Vocabulary:
    """Words with Zipf-like cumulative weights, for `random.choices`."""

    words: list[str]
    cum_weights: list[float]

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cum_weights, k=k)


def make_vocabulary(seed: int, size: int = 6000) -> Vocabulary:
    """Common English words first, then pseudo-words built from syllables; weight 1/rank."""
    rng = random.Random(f"vocabulary:{seed}")
    invented: set[str] = set()
    while len(invented) < size - len(COMMON_WORDS):
        syllables = rng.choice([1, 2, 2, 2, 3, 3, 4])
        invented.add("".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)))
    tail = sorted(invented - set(COMMON_WORDS))
    rng.shuffle(tail)
    words = COMMON_WORDS + tail
    weights = (1.0 / rank for rank in range(1, len(words) + 1))
    return Vocabulary(words, list(itertools.accumulate(weights)))


def sentence(rng: random.Random, vocab: Vocabulary) -> str:
    words = vocab.sample(rng, rng.randint(5, 24))
    if len(words) > 10 and rng.random() < 0.5:
        comma = rng.randint(3, len(words) - 4)
        words[comma] += ","
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".......?!")


def paragraph(rng: random.Random, vocab: Vocabulary) -> str:
    """Mostly 2-9 sentences; one in ten is a long paragraph (over the chunk size)."""
    count = rng.randint(12, 20) if rng.random() < 0.1 else rng.randint(2, 9)
    return " ".join(sentence(rng, vocab) for _ in range(count))


def heading(rng: random.Random, vocab: Vocabulary) -> str:
    return " ".join(vocab.sample(rng, rng.randint(2, 6))).capitalize()


def bullet_items(rng: random.Random, vocab: Vocabulary) -> list[str]:
    return [sentence(rng, vocab) for _ in range(rng.randint(2, 6))]


def code_lines(rng: random.Random, vocab: Vocabulary) -> list[str]:
    names = [word.replace(",", "") for word in vocab.sample(rng, 8)]
    return [f"{names[i]} = {names[i + 1]}({names[i + 2]!r}, {rng.randint(0, 999)})" for i in range(rng.randint(2, 5))]


def blocks_until(target: int, make_block: Callable[[], str]) -> list[str]:
    blocks: list[str] = []
    size = 0
    while size < target:
        block = make_block()
        blocks.append(block)
        size += len(block) + 2
    return blocks


def markdown_document(rng: random.Random, vocab: Vocabulary, title: str, target: int) -> str:
    def block() -> str:
        roll = rng.random()
        if roll < 0.15:
            return f"{'#' * rng.randint(2, 3)} {heading(rng, vocab)}"
        if roll < 0.27:
            return "\n".join(f"- {item}" for item in bullet_items(rng, vocab))
        if roll < 0.35:
            return "\n".join(["```python", *code_lines(rng, vocab), "```"])
        return paragraph(rng, vocab)

    header = f"# {title}"
    return "\n\n".join([header, *blocks_until(target - len(header), block)]) + "\n"


def text_document(rng: random.Random, vocab: Vocabulary, title: str, target: int) -> str:
    """Plain text: a title line, sections with capitalized headings, now and then a page separator."""

    def block() -> str:
        roll = rng.random()
        if roll < 0.12:
            return heading(rng, vocab).upper()
        if roll < 0.16:
            return "----------"
        return paragraph(rng, vocab)

    header = f"{title}\n{'=' * len(title)}"
    return "\n\n".join([header, *blocks_until(target - len(header), block)]) + "\n"


def html_document(rng: random.Random, vocab: Vocabulary, title: str, target: int) -> str:
    """A page with the chrome the loader strips (head, header, nav, script) around an article."""
    nav = "\n".join(f'<li><a href="/{word}.html">{word}</a></li>' for word in vocab.sample(rng, 8))
    top = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        "<style>body { font-family: sans-serif; }</style>\n</head>\n<body>\n"
        f'<header><a href="/">Docs home</a></header>\n<nav><ul>\n{nav}\n</ul></nav>\n'
        f"<main>\n<article>\n<h1>{title}</h1>"
    )
    bottom = "</article>\n</main>\n<footer>Generated page.</footer>\n<script>console.log('page');</script>\n</body>\n</html>\n"

    def block() -> str:
        roll = rng.random()
        if roll < 0.15:
            return f"<h2>{heading(rng, vocab)}</h2>"
        if roll < 0.27:
            return "<ul>\n" + "\n".join(f"<li>{item}</li>" for item in bullet_items(rng, vocab)) + "\n</ul>"
        if roll < 0.33:
            return "<pre><code>" + "\n".join(code_lines(rng, vocab)) + "</code></pre>"
        return f"<p>{paragraph(rng, vocab)}</p>"

    return "\n".join([top, *blocks_until(target - len(top) - len(bottom), block), bottom])


WRITERS = {"md": markdown_document, "txt": text_document, "html": html_document}


def file_kinds(docs: int, seed: int) -> list[str]:
    """Exactly the FILE_MIX shares (rounded), in a seeded random order."""
    counts = {kind: round(docs * share) for kind, share in FILE_MIX.items()}
    counts["md"] += docs - sum(counts.values())
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    random.Random(f"kinds:{seed}").shuffle(kinds)
    return kinds


def generate_corpus(folder: Path, docs: int, seed: int) -> dict[str, int]:
    """Write the corpus under `folder` (in subfolders of 100 files); returns file counts and bytes."""
    vocab = make_vocabulary(seed)
    summary = {"bytes": 0, **{kind: 0 for kind in FILE_MIX}}
    for index, kind in enumerate(file_kinds(docs, seed)):
        rng = random.Random(f"document:{seed}:{index}")
        title = heading(rng, vocab)
        target = int(DOC_BYTES * rng.uniform(0.5, 1.5))
        path = folder / f"section_{index // DOCS_PER_FOLDER:03d}" / f"doc_{index:05d}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = WRITERS[kind](rng, vocab, title, target).encode("utf-8")
        path.write_bytes(data)
        summary["bytes"] += len(data)
        summary[kind] += 1
    return summary


def write_sources_file(path: Path, corpus: Path) -> Path:
    """Two sources on the corpus folder: every file, and its markdown and text files only."""
    sources = {
        "sources": [
            {"name": SOURCE_NAME, "kind": "local", "path": str(corpus)},
            {"name": TEXT_SOURCE_NAME, "kind": "local", "path": str(corpus), "include": TEXT_FILES},
        ]
    }
    path.write_text(yaml.safe_dump(sources), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- materialization (child)


def materialize_in_this_process(work: Path, source: str, profile_top: int) -> dict[str, Any]:
    """Materialize `documents` and `chunks` for one source of the benchmark; their timings."""
    started = time.perf_counter()
    import dagster as dg

    from raft_assets.defs.ingestion.assets import chunks, documents
    from raft_assets.defs.resources import ProjectPaths

    import_s = time.perf_counter() - started
    rss_after_import = memory_status_mb("VmRSS")
    paths = ProjectPaths(
        sources_file=str(work / "sources.yaml"),
        data_dir=str(work / "generated"),
        checkpoint_dir=str(work / "checkpoints"),
    )
    profiler = cProfile.Profile() if profile_top else None
    instance_started = time.perf_counter()
    with dg.instance_for_test() as instance:
        instance_s = time.perf_counter() - instance_started
        instance.add_dynamic_partitions("doc_sources", [source])
        materialize_started = time.perf_counter()
        if profiler:
            profiler.enable()
        result = dg.materialize(
            [documents, chunks], partition_key=source, instance=instance, resources={"paths": paths}
        )
        if profiler:
            profiler.disable()
        materialize_s = time.perf_counter() - materialize_started
        steps = {stat.step_key: stat.end_time - stat.start_time for stat in instance.get_run_step_stats(result.run_id)}
        metadata_by_asset = {
            event.asset_key.to_user_string(): {
                key: value.value for key, value in event.materialization.metadata.items()
            }
            for event in result.get_asset_materialization_events()
        }
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(profile_top)
    docs_meta, chunks_meta = metadata_by_asset["documents"], metadata_by_asset["chunks"]
    return {
        "import_s": import_s,
        "instance_s": instance_s,
        "materialize_s": materialize_s,
        "documents_s": steps["documents"],
        "chunks_s": steps["chunks"],
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": memory_status_mb("VmHWM"),
        "loaded": docs_meta["loaded"],
        "failed": docs_meta["failed"],
        "characters": docs_meta["characters"],
        "chunk_count": chunks_meta["dagster/row_count"],
        "dropped_short": chunks_meta["dropped_short"],
        "merged_duplicates": chunks_meta["merged_duplicates"],
        "mean_chunk_chars": chunks_meta["mean_chunk_chars"],
    }


@dataclass(frozen=True)
class EndToEnd:
    docs: int
    corpus_mb: float
    text_mb: float
    documents_s: float
    chunks_s: float
    materialize_s: float
    total_wall_s: float  # the child process from start to exit: interpreter, imports, materialize
    import_s: float
    instance_s: float  # creating the test instance (SQLite storage)
    peak_rss_mb: float  # VmHWM of the child
    rusage_maxrss_mb: float  # ru_maxrss of the child, from wait4
    rss_after_import_mb: float
    chunk_count: int
    loaded: int
    failed: int
    dropped_short: int
    merged_duplicates: int
    mean_chunk_chars: float


def run_child_mode(work: Path, mode: str, source: str = SOURCE_NAME, profile_top: int = 0) -> ChildRun:
    """Run this script in `mode` (materialize, reference) in a fresh interpreter (see `results.run_child`)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--work", str(work)]
    command += ["--source", source, "--profile", str(profile_top)]
    name = f"{mode}_{source}"
    return run_child(command, REPO_ROOT, work / f"{name}_result.json", work / f"{name}.log", bool(profile_top))


def run_materialization_child(work: Path, source: str, docs: int, corpus_bytes: int, profile_top: int) -> EndToEnd:
    """`documents` + `chunks` for `source` materialized in a child process."""
    run = run_child_mode(work, "materialize", source, profile_top)
    child = run.result
    return EndToEnd(
        docs=docs,
        corpus_mb=corpus_bytes / 1e6,
        text_mb=child["characters"] / 1e6,
        documents_s=child["documents_s"],
        chunks_s=child["chunks_s"],
        materialize_s=child["materialize_s"],
        total_wall_s=run.wall_s,
        import_s=child["import_s"],
        instance_s=child["instance_s"],
        peak_rss_mb=child["peak_rss_mb"],
        rusage_maxrss_mb=run.rusage_maxrss_mb,
        rss_after_import_mb=child["rss_after_import_mb"],
        chunk_count=child["chunk_count"],
        loaded=child["loaded"],
        failed=child["failed"],
        dropped_short=child["dropped_short"],
        merged_duplicates=child["merged_duplicates"],
        mean_chunk_chars=child["mean_chunk_chars"],
    )


# --------------------------------------------------------------------------- the reference design (child)
#
# The llama-recipes RAFT recipe's loading and chunking (`read_file_content` and `get_chunks` in its raft_utils.py),
# re-implemented here for the comparison. The recipe calls `DirectoryLoader(data_folder)`: every file under the
# folder, each through `UnstructuredFileLoader`, which needs the `unstructured` package (not installed, and not a
# dependency of this project). `TextLoader`, the file's text as it is, is the closest faithful loader for markdown
# and text files. The recipe has no HTML cleaning for a local folder (its `clean_text` serves the sitemap loader
# only), so both sides are compared on the markdown and text files.

REFERENCE_SEPARATORS = ["----------", "\n\n", "\n", " "]
REFERENCE_CHUNK_SIZE = 1000
REFERENCE_MIN_CHARS = 100  # chunks of this many characters or fewer are dropped
REFERENCE_CHUNKS_FILE = "reference_chunks.json"


def reference_in_this_process(work: Path) -> dict[str, Any]:
    """Load the corpus's markdown and text files and chunk them as the recipe does; timings and peak RSS.

    The chunk texts are written to REFERENCE_CHUNKS_FILE, after the measurement, for the comparison.
    """
    started = time.perf_counter()
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    import_s = time.perf_counter() - started
    rss_after_import = memory_status_mb("VmRSS")
    load_started = time.perf_counter()
    docs = DirectoryLoader(str(work / "corpus"), glob=TEXT_FILES, loader_cls=TextLoader).load()
    split_started = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=REFERENCE_CHUNK_SIZE,
        chunk_overlap=REFERENCE_CHUNK_SIZE // 10,
        separators=REFERENCE_SEPARATORS,
        strip_whitespace=True,
    )
    unique: dict[str, bool] = {}  # the recipe's filter: exact duplicates and short chunks dropped, order kept
    for piece in splitter.split_documents(docs):
        if piece.page_content not in unique and len(piece.page_content) > REFERENCE_MIN_CHARS:
            unique[piece.page_content] = True
    outcome = {
        "import_s": import_s,
        "load_s": split_started - load_started,
        "split_s": time.perf_counter() - split_started,
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": memory_status_mb("VmHWM"),
        "loaded": len(docs),
        "chunk_count": len(unique),
    }
    (work / REFERENCE_CHUNKS_FILE).write_text(json.dumps(list(unique)), encoding="utf-8")
    return outcome


@dataclass(frozen=True)
class ReferenceComparison:
    ours: EndToEnd  # `documents` + `chunks` materialized for TEXT_SOURCE_NAME
    reference: ChildRun
    identical: int  # chunk texts found on both sides


def compare_with_reference(work: Path, corpus: dict[str, int]) -> ReferenceComparison:
    """Ours and the reference on the markdown and text files, each in its own child; their chunk texts compared."""
    import polars as pl

    text_bytes = sum(path.stat().st_size for pattern in TEXT_FILES for path in (work / "corpus").glob(pattern))
    ours = run_materialization_child(work, TEXT_SOURCE_NAME, corpus["md"] + corpus["txt"], text_bytes, 0)
    reference = run_child_mode(work, "reference")
    our_texts = set(pl.read_parquet(work / "generated" / "chunks" / f"{TEXT_SOURCE_NAME}.parquet")["text"])
    reference_texts = json.loads((work / REFERENCE_CHUNKS_FILE).read_text(encoding="utf-8"))
    return ReferenceComparison(ours, reference, sum(text in our_texts for text in reference_texts))


# --------------------------------------------------------------------------- chunking linearity


@dataclass(frozen=True)
class ScaleRun:
    scale: int
    docs: int
    text_mb: float
    seconds: float  # wall, best of the repeats
    cpu_seconds: float  # process CPU time, best of the repeats: less sensitive to other load
    chunk_count: int

    @property
    def seconds_per_mb(self) -> float:
        return self.seconds / self.text_mb

    @property
    def cpu_seconds_per_mb(self) -> float:
        return self.cpu_seconds / self.text_mb


def rotate_letters(shift: int) -> dict[int, int]:
    """A str.translate table shifting a-z and A-Z by `shift`: same lengths and separators, new text."""
    table: dict[int, int] = {}
    for first in ("a", "A"):
        for offset in range(26):
            table[ord(first) + offset] = ord(first) + (offset + shift) % 26
    return table


def scaled_documents(documents: pl.DataFrame, scale: int) -> pl.DataFrame:
    """`scale` copies of the loaded documents; copy k > 0 has new doc ids and letters shifted by k."""
    import polars as pl

    loaded = documents.filter(pl.col("error").is_null())
    copies = [loaded]
    for copy in range(1, scale):
        table = rotate_letters(copy)
        copies.append(
            loaded.with_columns(
                (pl.col("doc_id") + f"-copy{copy}"),
                pl.col("text").map_elements(lambda text, table=table: text.translate(table), return_dtype=pl.String),
            )
        )
    return pl.concat(copies, rechunk=True)


def run_linearity(documents_file: Path, scales: list[int], repeat: int) -> list[ScaleRun]:
    """Time `split_documents` with the `chunks` asset's default config at each scale.

    Scale k is the first k copies of the largest scale's frame. The repeats go round the scales
    (1x, 2x, 4x, 1x, ...) so that a burst of load on the machine does not favour one scale, and the
    best wall and CPU times of each scale are kept.
    """
    import polars as pl

    from raft_assets.ingestion.chunking import ChunkingOptions, split_documents

    options = ChunkingOptions()
    documents = pl.read_parquet(documents_file)
    largest = scaled_documents(documents, scales[-1])
    per_copy = largest.height // scales[-1]
    frames = {scale: largest.head(scale * per_copy) for scale in scales}
    split_documents(documents.head(20), options)  # warm-up
    wall: dict[int, list[float]] = {scale: [] for scale in scales}
    cpu: dict[int, list[float]] = {scale: [] for scale in scales}
    chunk_counts: dict[int, int] = {}
    for _ in range(repeat):
        for scale, frame in frames.items():
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            result = split_documents(frame, options)
            wall[scale].append(time.perf_counter() - wall_started)
            cpu[scale].append(time.process_time() - cpu_started)
            chunk_counts[scale] = result.chunks.height
            del result
    return [
        ScaleRun(
            scale=scale,
            docs=frame.height,
            text_mb=int(frame["text"].str.len_chars().sum()) / 1e6,
            seconds=min(wall[scale]),
            cpu_seconds=min(cpu[scale]),
            chunk_count=chunk_counts[scale],
        )
        for scale, frame in frames.items()
    ]


@dataclass(frozen=True)
class NearDuplicateCost:
    text_mb: float
    cpu_off_s: float  # split_documents with near_duplicates off: the reference's splitter and exact merging only
    cpu_on_s: float  # with the default options (near_duplicates on)
    chunks_off: int
    chunks_on: int
    footer_cpu_s: float  # the same corpus with a footer paragraph (its page and year vary) added to every document
    footer_paragraphs: int  # footers taken out as boilerplate
    footer_chunks: int  # chunks holding the footer's words

    @property
    def cpu_s_per_mb(self) -> float:
        return (self.cpu_on_s - self.cpu_off_s) / self.text_mb


def footer(index: int) -> str:
    return (
        f"Was this page helpful? Tell us how we can improve page {index} of this manual. All content on this site "
        f"is licensed under the Apache License 2.0; copyright {2023 + index % 3} Example Inc. and its contributors."
    )


def run_near_duplicate_cost(documents_file: Path, repeat: int) -> NearDuplicateCost:
    """CPU time of `split_documents` at 1x with near-duplicate detection off and on (best of `repeat`), and on the
    corpus with a boilerplate footer in every document: how many footers are taken out, how many chunks hold one."""
    import polars as pl

    from raft_assets.ingestion.chunking import ChunkingOptions, split_documents

    documents = pl.read_parquet(documents_file).filter(pl.col("error").is_null())
    with_footer = documents.with_columns(
        pl.Series("text", [f"{text}\n\n{footer(i)}" for i, text in enumerate(documents["text"])])
    )

    def timed(frame: pl.DataFrame, options: ChunkingOptions) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(repeat):
            started = time.process_time()
            result = split_documents(frame, options)
            times.append(time.process_time() - started)
        return min(times), result

    cpu_off, off = timed(documents, ChunkingOptions(near_duplicates=False))
    cpu_on, on = timed(documents, ChunkingOptions())
    footer_cpu, footers = timed(with_footer, ChunkingOptions())
    return NearDuplicateCost(
        text_mb=int(documents["text"].str.len_chars().sum()) / 1e6,
        cpu_off_s=cpu_off,
        cpu_on_s=cpu_on,
        chunks_off=off.chunks.height,
        chunks_on=on.chunks.height,
        footer_cpu_s=footer_cpu,
        footer_paragraphs=footers.boilerplate_paragraphs,
        footer_chunks=int(footers.chunks["text"].str.contains("Was this page helpful").sum()),
    )


def near_duplicate_table(cost: NearDuplicateCost, docs: int) -> str:
    return "\n".join(
        [
            "| `split_documents` at 1x | CPU s | chunks | footers taken out | chunks holding the footer |",
            "|---|---:|---:|---:|---:|",
            f"| near_duplicates off (the reference's splitter, exact repeats merged) | {cost.cpu_off_s:.2f} "
            f"| {cost.chunks_off:,} | — | — |",
            f"| near_duplicates on (default) | {cost.cpu_on_s:.2f} | {cost.chunks_on:,} | 0 | — |",
            f"| on, a footer added to each of the {docs:,} documents | {cost.footer_cpu_s:.2f} | — "
            f"| {cost.footer_paragraphs:,} | {cost.footer_chunks:,} |",
            "",
            f"Near-duplicate detection costs {cost.cpu_s_per_mb:.2f} CPU s per MB of text "
            f"({cost.cpu_on_s / cost.cpu_off_s:.1f}x the splitting alone).",
        ]
    )


def linearity_ratio(runs: list[ScaleRun]) -> float:
    """CPU time(largest) / CPU time(smallest)."""
    return runs[-1].cpu_seconds / runs[0].cpu_seconds


def is_linear(runs: list[ScaleRun]) -> bool:
    return runs[-1].cpu_seconds_per_mb <= LINEARITY_TOLERANCE * runs[0].cpu_seconds_per_mb


# --------------------------------------------------------------------------- report


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def end_to_end_table(run: EndToEnd) -> str:
    return "\n".join(
        [
            "| docs | MB (files / text) | documents wall s | chunks wall s | total wall s | peak RSS MB | chunks |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {run.docs:,} | {run.corpus_mb:.1f} / {run.text_mb:.1f} | {run.documents_s:.2f} | {run.chunks_s:.2f} "
            f"| {run.total_wall_s:.2f} | {run.peak_rss_mb:.0f} | {run.chunk_count:,} |",
        ]
    )


def end_to_end_notes(run: EndToEnd) -> str:
    return (
        f"Total wall is the child process from start to exit: {run.import_s:.2f} s of imports, "
        f"{run.instance_s:.2f} s creating the test instance, {run.materialize_s:.2f} s in `materialize()` "
        "(the two steps plus Dagster's own work), the rest interpreter start and shutdown. Peak RSS is the child's VmHWM (ru_maxrss from wait4: "
        f"{run.rusage_maxrss_mb:.0f} MB); {run.rss_after_import_mb:.0f} MB of it is resident after the imports. "
        f"{run.loaded:,} documents loaded, {run.failed} failed; chunks: {run.dropped_short:,} dropped as short, "
        f"{run.merged_duplicates:,} repeats merged, mean {run.mean_chunk_chars:.0f} characters."
    )


def linearity_table(runs: list[ScaleRun]) -> str:
    rows = [
        f"| {run.scale}x | {run.docs:,} | {run.text_mb:.1f} | {run.seconds:.2f} | {run.cpu_seconds:.2f} "
        f"| {run.cpu_seconds_per_mb:.3f} | {run.chunk_count:,} |"
        for run in runs
    ]
    ratio = linearity_ratio(runs)
    wall_ratio = runs[-1].seconds / runs[0].seconds
    scale_ratio = runs[-1].scale / runs[0].scale
    return "\n".join(
        [
            "| scale | docs | text MB | wall s | CPU s | CPU s per MB | chunks |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"time({runs[-1].scale}x) / time({runs[0].scale}x) = **{ratio:.2f}** in CPU time, {wall_ratio:.2f} in wall "
            f"time (linear: {scale_ratio:g}).",
        ]
    )


def reference_table(comparison: ReferenceComparison) -> str:
    ours, reference = comparison.ours, comparison.reference
    theirs = reference.result
    our_work, their_work = ours.documents_s + ours.chunks_s, theirs["load_s"] + theirs["split_s"]
    return "\n".join(
        [
            "| design | files | load s | chunk s | total wall s | peak RSS MB | RSS MB after imports | chunks |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| ours: `documents` + `chunks` materialized | {ours.loaded:,} | {ours.documents_s:.2f} "
            f"| {ours.chunks_s:.2f} | {ours.total_wall_s:.2f} | {ours.peak_rss_mb:.0f} | {ours.rss_after_import_mb:.0f} "
            f"| {ours.chunk_count:,} |",
            f"| reference: `DirectoryLoader` (`TextLoader`) + `RecursiveCharacterTextSplitter` + its filter "
            f"| {theirs['loaded']:,} | {theirs['load_s']:.2f} | {theirs['split_s']:.2f} | {reference.wall_s:.2f} "
            f"| {theirs['peak_rss_mb']:.0f} | {theirs['rss_after_import_mb']:.0f} | {theirs['chunk_count']:,} |",
            "",
            f"Load and chunk are the two steps' times for ours (parquet written and Dagster's work on each step "
            f"included), the loader's and the splitter's for the reference. Reference / ours: {their_work / our_work:.2f} in load + chunk time, "
            f"{reference.wall_s / ours.total_wall_s:.2f} in total wall (ours includes {ours.import_s:.1f} s of "
            f"imports and {ours.instance_s:.1f} s creating Dagster's test instance), "
            f"{theirs['peak_rss_mb'] / ours.peak_rss_mb:.2f} in peak RSS.",
            "",
            f"Chunk texts: ours {ours.chunk_count:,}, the reference's {theirs['chunk_count']:,}; "
            f"{comparison.identical:,} identical on both sides: {comparison.identical / theirs['chunk_count']:.1%} "
            f"of the reference's, {comparison.identical / ours.chunk_count:.1%} of ours.",
        ]
    )


def targets_table(run: EndToEnd, runs: list[ScaleRun], cost: NearDuplicateCost) -> str:
    ratio = linearity_ratio(runs)
    limit = LINEARITY_TOLERANCE * runs[-1].scale / runs[0].scale
    return "\n".join(
        [
            "| target | measured | result |",
            "|---|---:|---|",
            f"| documents + chunks under {TARGET_WALL_S:g} s (total wall) | {run.total_wall_s:.1f} s "
            f"| {pass_fail(run.total_wall_s < TARGET_WALL_S)} |",
            f"| peak RSS under 2 GB | {run.peak_rss_mb:.0f} MB | {pass_fail(run.peak_rss_mb < TARGET_RSS_MB)} |",
            f"| chunking linear (CPU time ratio at most {limit:g}) | {ratio:.2f} | {pass_fail(is_linear(runs))} |",
            f"| near-duplicate detection at most {TARGET_NEAR_DUPLICATE_S_PER_MB:g} CPU s per MB "
            f"| {cost.cpu_s_per_mb:.2f} | {pass_fail(cost.cpu_s_per_mb <= TARGET_NEAR_DUPLICATE_S_PER_MB)} |",
        ]
    )


def report(
    args: argparse.Namespace,
    corpus: dict[str, int],
    run: EndToEnd,
    comparison: ReferenceComparison,
    runs: list[ScaleRun],
    cost: NearDuplicateCost,
) -> str:
    machine = machine_description(KEY_PACKAGES)
    command = " ".join(["python benchmarks/bench_ingestion.py", *sys.argv[1:]])
    mix = ", ".join(f"{corpus[kind]:,} {kind}" for kind in FILE_MIX)
    return "\n".join(
        [
            SECTION_TITLE,
            "",
            f"- Date: {machine['date']}",
            f"- Machine: {machine['cpus']}, {machine['memory']} RAM; load average at the end {machine['load']}",
            f"- Software: {machine['python']}; {machine['packages']}",
            f"- Command: `.venv/bin/{command}`",
            f"- Corpus: {args.docs:,} generated files ({mix}), seed {args.seed}; "
            "`documents` and `chunks` materialized with their default config.",
            "",
            "### End to end (`dagster.materialize([documents, chunks])` in a child process)",
            "",
            end_to_end_table(run),
            "",
            end_to_end_notes(run),
            "",
            "### The reference design, measured in the same run on the same files",
            "",
            "The llama-recipes recipe's loading and chunking, re-implemented in this benchmark and run in a child "
            f"process of its own: `DirectoryLoader` with glob {TEXT_FILES} and `loader_cls=TextLoader`, then "
            f"`RecursiveCharacterTextSplitter` (chunk_size {REFERENCE_CHUNK_SIZE}, overlap "
            f"{REFERENCE_CHUNK_SIZE // 10}, separators {REFERENCE_SEPARATORS!r}), then its filter: exact duplicates "
            f"and chunks of {REFERENCE_MIN_CHARS} characters or fewer dropped. The recipe calls "
            "`DirectoryLoader(data_folder)`, whose default loader, `UnstructuredFileLoader`, needs the `unstructured` "
            "package (not installed, not a dependency here): `TextLoader`, the file's text as it is, is the closest "
            "faithful loader for markdown and text. The recipe has no HTML cleaning for a local folder (its "
            f"`clean_text` serves the sitemap loader only), so both sides get the same {comparison.ours.loaded:,} "
            f"markdown and text files of the corpus ({comparison.ours.corpus_mb:.1f} MB); the HTML files are left "
            "out. Ours is the same folder declared as a second source with `include` "
            f"{TEXT_FILES}, materialized like the run above in a child process.",
            "",
            reference_table(comparison),
            "",
            "### Chunking linearity (`split_documents`, chunk_size 1000, overlap 100)",
            "",
            "Scale k repeats the loaded corpus k times with new doc ids and letters rotated, so every chunk is new. "
            f"Best of {args.repeat} runs per scale, taken in turn; the verdict uses CPU time, which other load on "
            "the machine disturbs less than wall time.",
            "",
            linearity_table(runs),
            "",
            "### Boilerplate and near duplicates (`near_duplicates`, issue 14)",
            "",
            "MinHash LSH over paragraphs before splitting and over chunks after (`ingestion/near_duplicates.py`), "
            f"best of {args.repeat} runs each. The generated corpus has no repeated paragraph, so the second row is "
            "the detection's cost alone; the third adds to every document a footer whose page number and year vary.",
            "",
            near_duplicate_table(cost, run.loaded),
            "",
            "### Targets",
            "",
            targets_table(run, runs, cost),
            "",
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents in the corpus (default 2000)")
    parser.add_argument("--scales", default="1,2,4", help="chunking scales, increasing (default 1,2,4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus (default 0)")
    parser.add_argument("--repeat", type=int, default=1, help="timings per chunking scale, best kept (default 1)")
    parser.add_argument("--record", action="store_true", help=f"write the results into {RESULTS.name}")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the materialization, top N")
    parser.add_argument("--child", choices=["materialize", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=SOURCE_NAME, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scale_list = sorted({int(scale) for scale in args.scales.split(",")})
    if args.scale_list[0] < 1 or args.scale_list[-1] > 26:
        parser.error("scales must be between 1 and 26 (copies are told apart by a letter rotation)")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child:
        if args.child == "materialize":
            outcome = materialize_in_this_process(args.work, args.source, args.profile)
        else:
            outcome = reference_in_this_process(args.work)
        (args.work / f"{args.child}_{args.source}_result.json").write_text(json.dumps(outcome), encoding="utf-8")
        return
    with tempfile.TemporaryDirectory(prefix="bench_ingestion_") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        corpus = generate_corpus(work / "corpus", args.docs, args.seed)
        write_sources_file(work / "sources.yaml", work / "corpus")
        print(
            f"Generated {args.docs:,} files, {corpus['bytes'] / 1e6:.1f} MB, in {time.perf_counter() - started:.1f} s"
        )
        run = run_materialization_child(work, SOURCE_NAME, args.docs, corpus["bytes"], args.profile)
        print(f"Materialized documents + chunks in {run.total_wall_s:.1f} s; now ours and the reference on md + txt")
        comparison = compare_with_reference(work, corpus)
        print(f"Reference design in {comparison.reference.wall_s:.1f} s; timing split_documents at {args.scales}")
        documents_file = work / "generated" / "documents" / f"{SOURCE_NAME}.parquet"
        runs = run_linearity(documents_file, args.scale_list, args.repeat)
        print("Timing near-duplicate detection")
        cost = run_near_duplicate_cost(documents_file, args.repeat)
    section = report(args, corpus, run, comparison, runs, cost)
    print()
    publish(section, args.record, "profiled run: timings are inflated" if args.profile else None)


if __name__ == "__main__":
    main(sys.argv[1:])
