"""Benchmark of the `raft_dataset` asset at the issue's scale: 100,000 questions over 20,000 chunks, hard distractors.

Target (from the issue): "100,000 questions over 20,000 chunks with hard distractors: under 2 minutes and under
4 GB on this machine".

Setup (not timed), in a temporary folder, written in the exact schemas of the real stages:

- 20,000 chunks of about 1,000 characters of varied seeded text (the ingestion benchmark's Zipf vocabulary),
  spread over 2,000 documents in 2 sources: `documents/<source>.parquet` and `chunks/<source>.parquet`;
- 5 questions per chunk (100,000) in `questions/<source>.parquet`, each answered in
  `cot_answers/<source>.parquet` (status "ok", quotes verified, a ~300-character chain of thought with a
  `##begin_quote## ... ##end_quote##` quote of the chunk and `<ANSWER>: ...`, the answer a phrase of the chunk);
- the retrieval index, saved with `ChunkIndex.save`, of seeded random 384-d unit vectors clustered by document
  (a chunk's nearest neighbours are mostly its own document's, as with real embeddings). Embedding 20,000 chunks
  with the real model takes about 16 minutes on this CPU: that is the `retrieval_index` asset's cost, not the
  dataset's, and is left out;
- the `tiny` base model (`build_tiny_model` on a sample of the chunks, its tokenizer trained on them) and its
  pointer (`write_pointer`).

Measured:

1. `raft_dataset` materialized with `dagster.materialize` (upstream assets defined, only `raft_dataset` selected,
   `distractors: hard`, the other options their defaults) on a test instance with the sources as `doc_sources`
   partitions, in a fresh child process: wall time of `materialize()` and of the whole child, peak RSS (VmHWM,
   and ru_maxrss from wait4), records written, file sizes and the asset's metadata.
2. The asset's phases timed one by one in a second child process (same inputs, same options, the functions the
   asset calls): `load_samples`, `assign_splits`, the tokenizer, `ChunkIndex.load`, `nearest_other_documents`,
   `plan_records`, the token counts and `write_dataset`, each with its wall and CPU time and its own peak RSS
   (VmHWM is reset between phases through /proc/self/clear_refs).
3. The reference design on the same inputs, in a child process of its own: the llama-recipes recipe's assembly
   (`add_chunk_to_dataset`: 4 distractors drawn uniformly from all other chunks, the oracle always shuffled in, with
   probability 0.05 an extra refusal record, its `hf` records written as JSON lines), re-implemented here for the
   comparison, then the fine-tuning loader's 90/10 random row split (seed 42). Its phases timed as in 2, its peak
   RSS; then, untimed, its leakage: the share of its test rows whose document (and oracle chunk, and question) also
   appears in its train rows; ours is 0 by construction, and the asset checks it (`splits_disjoint`).

Run from the repository root (by hand, not in CI; it writes about 6 GB under the temporary folder):

    .venv/bin/python benchmarks/bench_dataset.py [--chunks 20000] [--docs 2000] [--questions-per-chunk 5] [--record]

`--record` writes the section "## Dataset: raft_dataset (hard distractors)" of benchmarks/RESULTS.md (replacing an
earlier one); `--profile N` also profiles the materialization with cProfile and prints its N most expensive
functions (the profiled run is slower and is not recorded); `--no-phases` skips the second child.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import math
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_ingestion import Vocabulary, heading, make_vocabulary, sentence
from results import (  # noqa: E402  (benchmarks/ is on sys.path when a script runs)
    RESULTS,
    ChildRun,
    machine_description,
    memory_status_mb,
    publish,
)
from results import run_child as run_child_process

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
SECTION_TITLE = "## Dataset: raft_dataset (hard distractors)"
SETUP_FILE = "setup.json"

DIMENSION = 384  # all-MiniLM-L6-v2's
CHUNK_CHARS = (800, 1000)  # a chunk grows by whole sentences until it reaches a target drawn in this range
TOKENIZER_SAMPLE = 2000  # chunks the tiny model's tokenizer is trained on
DOC_SPREAD = 1.0  # noise of a chunk's vector around its document's centre (same scale): within-doc cosine ~0.5
RUN_CONFIG = {"ops": {"raft_dataset": {"config": {"distractors": "hard"}}}}

TARGET_WALL_S = 120.0
TARGET_RSS_MB = 4096.0  # 4 GB, as MiB (VmHWM is in KiB)

KEY_PACKAGES = ["dagster", "polars", "numpy", "faiss-cpu", "transformers", "tokenizers"]


# --------------------------------------------------------------------------- inputs (setup, not timed)


@dataclass(frozen=True)
class Inputs:
    sources: list[str]
    documents: int
    chunks: int
    questions: int
    chunk_chars_mean: float
    cot_chars_mean: float
    setup_s: float
    tokenizer_s: float


def source_names(count: int) -> list[str]:
    return [f"bench_source_{chr(ord('a') + i)}" for i in range(count)]


def document_sizes(chunks: int, docs: int, rng: random.Random) -> list[int]:
    """Chunks per document: `docs` sizes of at least 1 summing to `chunks` (random cut points, so they vary)."""
    cuts = sorted(rng.sample(range(1, chunks), docs - 1))
    return [end - start for start, end in zip([0, *cuts], [*cuts, chunks], strict=True)]


def chunk_text(rng: random.Random, vocab: Vocabulary) -> str:
    target = rng.randint(*CHUNK_CHARS)
    sentences: list[str] = []
    size = 0
    while size < target:
        sentences.append(sentence(rng, vocab))
        size += len(sentences[-1]) + 1
    return " ".join(sentences)


def plain_words(text: str) -> list[str]:
    return [word.strip(".,?!") for word in text.split()]


QUESTION_TEMPLATES = (
    "What does the page on {title} say about {a}?",
    "How is {a} used together with {b}?",
    "Why does {a} matter when working with {b}?",
    "Which {a} is described in the section on {title}?",
    "When should one use {a} instead of {b}?",
)


def question_text(rng: random.Random, template: str, words: list[str], title: str) -> str:
    def phrase() -> str:
        start = rng.randrange(len(words))
        return " ".join(words[start : start + rng.randint(1, 3)])

    return template.format(a=phrase(), b=phrase(), title=title.lower())


def answer_of(rng: random.Random, text: str) -> tuple[str, str]:
    """(a sentence of the chunk to quote, a phrase of 3-8 words of it as the final answer)."""
    sentences = [s.strip() for s in text.replace("?", ".").replace("!", ".").split(". ") if len(s.split()) >= 4]
    quote = rng.choice(sentences) if sentences else text[:120]
    words = plain_words(quote)
    length = min(len(words), rng.randint(3, 8))
    start = rng.randint(0, len(words) - length)
    return quote, " ".join(words[start : start + length])


def cot_answer(quote: str, answer: str) -> str:
    """A chain of thought of about 300 characters in the format the `cot_answer` prompt asks for."""
    parts = [
        "To answer the question, look in the context for the passage about it.",
        f"The document says ##begin_quote## {quote} ##end_quote##",
        f"This shows that the answer is {answer}.",
    ]
    if sum(len(part) for part in parts) < 220:
        parts.insert(2, "No other document says so.")
    return " ".join(parts) + f"\n\n<ANSWER>: {answer}"


def document_rows(source: str, index: int, title: str, texts: list[str]) -> tuple[str, tuple[Any, ...]]:
    """(doc_id, a row of DOCUMENT_SCHEMA) for a generated document made of its chunks."""
    from raft_assets.hashing import content_hash

    uri = f"section_{index // 100:03d}/doc_{index:05d}.md"
    text = f"# {title}\n\n" + "\n\n".join(texts)
    doc_id = content_hash(source, uri)
    return doc_id, (doc_id, source, uri, title, text, content_hash(text), None)


def source_frames(
    source: str, first_doc: int, sizes: list[int], questions_per_chunk: int, vocab: Vocabulary, seed: int
) -> dict[str, Any]:
    """The five stage frames (documents, chunks, questions, cot_answers, curated_answers: all kept) of one source."""
    import polars as pl

    from raft_assets.contracts.tables import (
        ANSWER_SCHEMA,
        CHUNK_SCHEMA,
        CURATED_SCHEMA,
        DOCUMENT_SCHEMA,
        KEEP,
        QUESTION_SCHEMA,
    )
    from raft_assets.hashing import content_hash

    stages = ("documents", "chunks", "questions", "cot_answers", "curated_answers")
    rows: dict[str, list[tuple[Any, ...]]] = {stage: [] for stage in stages}
    for offset, size in enumerate(sizes):
        index = first_doc + offset
        rng = random.Random(f"document:{seed}:{index}")
        title = heading(rng, vocab)
        texts = [chunk_text(rng, vocab) for _ in range(size)]
        doc_id, row = document_rows(source, index, title, texts)
        rows["documents"].append(row)
        for position, text in enumerate(texts):
            chunk_id = content_hash(text)
            rows["chunks"].append((chunk_id, doc_id, source, position, text, [doc_id]))
            words = plain_words(text)
            for template in QUESTION_TEMPLATES[:questions_per_chunk]:
                question = question_text(rng, template, words, title)
                question_id = content_hash(chunk_id, question)
                quote, answer = answer_of(rng, text)
                rows["questions"].append((question_id, chunk_id, doc_id, question, "bench-model", "ok", None))
                rows["cot_answers"].append((question_id, cot_answer(quote, answer), answer, True, "ok", None, 1))
                rows["curated_answers"].append((question_id, 10, KEEP, [], "bench-model", "ok", None))
    schemas = {
        "documents": DOCUMENT_SCHEMA,
        "chunks": CHUNK_SCHEMA,
        "questions": QUESTION_SCHEMA,
        "cot_answers": ANSWER_SCHEMA,
        "curated_answers": CURATED_SCHEMA,
    }
    frames = {stage: pl.DataFrame(rows[stage], schema=schemas[stage], orient="row") for stage in rows}
    frames["documents"] = frames["documents"].sort("uri")
    return frames


def clustered_embeddings(doc_ids: list[str], seed: int) -> Any:
    """Unit vectors, one per chunk: its document's random centre plus noise, so that documents form clusters."""
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = {doc: i for i, doc in enumerate(dict.fromkeys(doc_ids))}
    centres = rng.standard_normal((len(codes), DIMENSION), dtype=np.float32)
    rows = np.fromiter((codes[doc] for doc in doc_ids), dtype=np.int64, count=len(doc_ids))
    vectors = centres[rows] + DOC_SPREAD * rng.standard_normal((len(doc_ids), DIMENSION), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_index(data_dir: Path, chunk_frames: list[Any], seed: int) -> None:
    """The index as `retrieval_index` saves it: the chunks of the sources in sorted order, row i for chunk i."""
    import polars as pl

    from raft_assets.retrieval.embeddings import DEFAULT_EMBEDDING_MODEL
    from raft_assets.retrieval.index import ChunkIndex

    frame = pl.concat(chunk_frames).unique("chunk_id", keep="first", maintain_order=True)
    doc_ids = frame["doc_id"].to_list()
    ChunkIndex(frame["chunk_id"].to_list(), clustered_embeddings(doc_ids, seed), DEFAULT_EMBEDDING_MODEL, doc_ids).save(
        data_dir / "index"
    )


def write_base_model(checkpoint_dir: Path, texts: list[str], seed: int) -> float:
    """The tiny model (tokenizer trained on a sample of the chunks) and its pointer; returns the seconds it took."""
    from raft_assets.contracts.layout import Layout
    from raft_assets.training.base_model import TINY, build_tiny_model, write_pointer

    layout = Layout.of(checkpoint_dir.parent / "generated", checkpoint_dir)
    started = time.perf_counter()
    sample = random.Random(f"tokenizer:{seed}").sample(texts, min(TOKENIZER_SAMPLE, len(texts)))
    model = build_tiny_model(layout.base_folder / TINY, sorted(sample))
    write_pointer(model, layout)
    return time.perf_counter() - started


def write_sources_file(work: Path, sources: list[str]) -> None:
    import yaml

    specs = []
    for source in sources:
        (work / "corpus" / source).mkdir(parents=True, exist_ok=True)
        specs.append({"name": source, "kind": "local", "path": str(work / "corpus" / source)})
    (work / "sources.yaml").write_text(yaml.safe_dump({"sources": specs}), encoding="utf-8")


def generate_inputs(work: Path, chunks: int, docs: int, sources: int, questions_per_chunk: int, seed: int) -> Inputs:
    """Write every input `raft_dataset` reads under `work` (see the module docstring)."""
    from raft_assets.contracts.tables import write_parquet

    started = time.perf_counter()
    names = source_names(sources)
    vocab = make_vocabulary(seed)
    sizes = document_sizes(chunks, docs, random.Random(f"sizes:{seed}"))
    per_source = -(-docs // sources)
    data_dir = work / "generated"
    chunk_frames, texts, counts = [], [], {"documents": 0, "chunks": 0, "questions": 0}
    cot_chars = 0
    for number, source in enumerate(names):
        first = number * per_source
        frames = source_frames(source, first, sizes[first : first + per_source], questions_per_chunk, vocab, seed)
        for stage, frame in frames.items():
            write_parquet(frame, data_dir / stage / f"{source}.parquet")
        chunk_frames.append(frames["chunks"])
        texts += frames["chunks"]["text"].to_list()
        cot_chars += int(frames["cot_answers"]["cot_answer"].str.len_chars().sum())
        for stage in counts:
            counts[stage] += frames[stage].height
    if len(set(frame for chunk_frame in chunk_frames for frame in chunk_frame["chunk_id"])) != counts["chunks"]:
        sys.exit("Generated chunks are not unique: change the seed.")
    write_index(data_dir, chunk_frames, seed)
    tokenizer_s = write_base_model(work / "checkpoints", texts, seed)
    write_sources_file(work, names)
    inputs = Inputs(
        sources=names,
        documents=counts["documents"],
        chunks=counts["chunks"],
        questions=counts["questions"],
        chunk_chars_mean=sum(len(text) for text in texts) / len(texts),
        cot_chars_mean=cot_chars / counts["questions"],
        setup_s=time.perf_counter() - started,
        tokenizer_s=tokenizer_s,
    )
    (work / SETUP_FILE).write_text(json.dumps(asdict(inputs)), encoding="utf-8")
    return inputs


# --------------------------------------------------------------------------- children


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def project_paths(work: Path) -> Any:
    from raft_assets.defs.resources import ProjectPaths

    return ProjectPaths(
        sources_file=str(work / "sources.yaml"),
        data_dir=str(work / "generated"),
        checkpoint_dir=str(work / "checkpoints"),
    )


def plain_metadata(values: dict[str, Any]) -> dict[str, Any]:
    """The asset's metadata values that JSON can hold (numbers and short strings)."""
    plain = {}
    for key, value in values.items():
        raw = value.value
        if isinstance(raw, int | float | bool) or (isinstance(raw, str) and len(raw) < 200):
            plain[key] = raw
    return plain


def materialize_child(work: Path, profile_top: int) -> dict[str, Any]:
    """Materialize `raft_dataset` (only) with hard distractors; its timings, peak RSS and metadata."""
    started = time.perf_counter()
    import dagster as dg

    from raft_assets.defs.curation.assets import curated_answers
    from raft_assets.defs.dataset.assets import raft_dataset, raft_dataset_checks
    from raft_assets.defs.generation.assets import cot_answers, questions
    from raft_assets.defs.ingestion.assets import chunks, documents
    from raft_assets.defs.partitions import doc_sources
    from raft_assets.defs.resources import LLMResource
    from raft_assets.defs.retrieval.assets import retrieval_index
    from raft_assets.defs.training.base_model import base_model

    import_s = time.perf_counter() - started
    rss_after_import = memory_status_mb("VmRSS")
    sources = json.loads((work / SETUP_FILE).read_text(encoding="utf-8"))["sources"]
    profiler = cProfile.Profile() if profile_top else None
    instance_started = time.perf_counter()
    with dg.instance_for_test() as instance:
        instance_s = time.perf_counter() - instance_started
        instance.add_dynamic_partitions(doc_sources.name, sources)
        materialize_started = time.perf_counter()
        if profiler:
            profiler.enable()
        result = dg.materialize(
            [documents, chunks, questions, cot_answers, curated_answers]
            + [retrieval_index, base_model, raft_dataset, raft_dataset_checks],
            selection=[raft_dataset],  # and its checks, which read the files back
            instance=instance,
            # `llm` and `curator`: those of questions and curated_answers, which are not run
            resources={"paths": project_paths(work), "llm": LLMResource(), "curator": LLMResource()},
            run_config=RUN_CONFIG,
        )
        if profiler:
            profiler.disable()
        materialize_s = time.perf_counter() - materialize_started
        steps = {stat.step_key: stat.end_time - stat.start_time for stat in instance.get_run_step_stats(result.run_id)}
        event = result.get_asset_materialization_events()[0]
        checks = {check.check_name: check.passed for check in result.get_asset_check_evaluations()}
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(profile_top)
    return {
        "success": result.success,
        "import_s": import_s,
        "instance_s": instance_s,
        "materialize_s": materialize_s,
        "step_s": steps["raft_dataset"],
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": memory_status_mb("VmHWM"),
        "metadata": plain_metadata(event.materialization.metadata),
        "checks": checks,
    }


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float  # VmHWM during the phase (reset before it), or since the start where it cannot be reset
    rss_after_mb: float


def timed(phases: list[Phase], name: str, work: Callable[[], Any]) -> Any:
    reset_peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    value = work()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    phases.append(Phase(name, seconds, cpu_seconds, memory_status_mb("VmHWM"), memory_status_mb("VmRSS")))
    return value


def phases_child(work: Path) -> dict[str, Any]:
    """The asset's steps called one by one, as `raft_dataset` calls them, into a folder of their own."""
    from raft_assets.contracts.layout import Layout
    from raft_assets.dataset.builder import (
        DatasetOptions,
        PartTokens,
        assign_splits,
        plan_records,
        training_documents_needed,
        write_dataset,
    )
    from raft_assets.dataset.lengths import TokenLengths
    from raft_assets.dataset.samples import load_samples
    from raft_assets.retrieval.index import ChunkIndex
    from raft_assets.training.base_model import load_tokenizer, read_pointer

    config = options = DatasetOptions(**RUN_CONFIG["ops"]["raft_dataset"]["config"])
    paths = project_paths(work)
    sources = json.loads((work / SETUP_FILE).read_text(encoding="utf-8"))["sources"]
    phases: list[Phase] = []
    samples, passages, _ = timed(
        phases, "load_samples", lambda: load_samples(paths.layout, sources, config.require_quotes_ok)
    )
    splits = timed(
        phases,
        "assign_splits",
        lambda: assign_splits(
            sorted({s.doc_id for s in samples}),
            options,
            training_documents_needed(options, passages, {s.doc_id for s in samples}),
        ),
    )

    def tokenizer() -> TokenLengths:
        model = read_pointer(paths.layout)
        return TokenLengths(load_tokenizer(model), config.context_length or model.context_length)

    lengths = timed(phases, "load tokenizer (TokenLengths)", tokenizer)
    index = timed(phases, "ChunkIndex.load", lambda: ChunkIndex.load(Path(paths.data_dir) / "index"))
    neighbours = timed(
        phases,
        "nearest_other_documents",
        lambda: index.nearest_other_documents([p.chunk_id for p in passages], config.num_distractors * 3),
    )
    plans = timed(phases, "plan_records", lambda: plan_records(samples, passages, splits, options, neighbours))
    timed(
        phases,
        "token counts (PartTokens.count, alone)",
        lambda: PartTokens.count(lengths, samples, passages, options.refusal_answer),
    )
    stats = timed(
        phases,
        "write_dataset (token counts included)",
        lambda: write_dataset(Layout.of(work / "phases", work / "phases"), plans, samples, passages, options, lengths),
    )
    return {
        "phases": [asdict(phase) for phase in phases],
        "plans": len(plans),
        "records": sum(stats.records.values()),
        "peak_resettable": reset_peak_rss(),
    }


# --------------------------------------------------------------------------- the reference design (child)
#
# The llama-recipes RAFT recipe's dataset assembly (`add_chunk_to_dataset` in its raft_utils.py), re-implemented
# here for the comparison and not imported from it: the algorithm is kept as it is, list scans included.

REFERENCE_DISTRACTORS = 4
REFERENCE_REFUSAL_P = 0.05
REFERENCE_REFUSAL = (
    "Sorry, I don't know the answer to this question because related documents are not found. Please try again."
)
REFERENCE_TEST_SIZE = 0.1  # the fine-tuning loader's split: 90/10 random rows, seed 42
REFERENCE_SPLIT_SEED = 42
REFERENCE_FILE = "raft_reference.jsonl"


def reference_inputs(work: Path) -> tuple[list[str], list[tuple[str, str, str]], dict[str, str]]:
    """The reference's inputs from the stages' files: every chunk's text, the (chunk, question, chain of thought)
    triples with each question asked once (exact string, as its `generate_COT` keeps them), and doc_id by chunk text
    (for the measurements afterwards, not used by the algorithm)."""
    import polars as pl

    data_dir = work / "generated"
    sources = json.loads((work / SETUP_FILE).read_text(encoding="utf-8"))["sources"]

    def stage(name: str) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(data_dir / name / f"{source}.parquet") for source in sources])

    chunks = stage("chunks")
    answered = stage("questions").join(
        stage("cot_answers").filter(pl.col("status") == "ok"), on="question_id", maintain_order="left"
    )
    texts = chunks["text"].to_list()
    text_of = dict(zip(chunks["chunk_id"].to_list(), texts, strict=True))
    triples, asked = [], set()
    for chunk_id, question, cot in answered.select("chunk_id", "question", "cot_answer").iter_rows():
        if question.strip() not in asked:
            asked.add(question.strip())
            triples.append((text_of[chunk_id], question.strip(), cot))
    return texts, triples, dict(zip(texts, chunks["doc_id"].to_list(), strict=True))


def reference_instruction(docs: list[str], question: str) -> str:
    return "".join(f"<DOCUMENT>{doc}</DOCUMENT>\n" for doc in docs) + question


def reference_records(chunks: list[str], triples: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """The reference's algorithm: for each question its oracle chunk and 4 distractors drawn uniformly from all other
    chunks (global `random`), shuffled; with probability 0.05 also a refusal record, the oracle swapped for another
    random chunk. Records in its `hf` format, built in memory first as it does."""
    records: list[dict[str, Any]] = []
    for chunk, question, cot in triples:
        others = list(range(len(chunks)))  # rebuilt and scanned for every question, as in the reference
        others.remove(chunks.index(chunk))
        docs = [chunk] + [chunks[j] for j in random.sample(others, REFERENCE_DISTRACTORS)]
        refusal_docs = docs.copy()
        random.shuffle(docs)
        point = {
            "id": f"seed_task_{len(records)}",
            "type": "general",
            "question": question,
            "context": {"title": [["placeholder_title"] * len(docs)], "sentences": [docs]},
            "oracle_context": chunk,
            "cot_answer": cot,
            "instruction": reference_instruction(docs, question),
        }
        refusal_point = copy.deepcopy(point)  # its context keeps the oracle: only the instruction changes
        records.append(point)
        if random.uniform(0, 1) <= REFERENCE_REFUSAL_P:
            refusal_docs[0] = chunks[random.sample(others, 1)[0]]
            random.shuffle(refusal_docs)
            refusal_point["id"] = f"refusal_task_{len(records)}"
            refusal_point["instruction"] = reference_instruction(refusal_docs, question)
            refusal_point["cot_answer"] = REFERENCE_REFUSAL
            records.append(refusal_point)
    return records


def write_json_lines(records: list[dict[str, Any]], path: Path) -> int:
    with path.open("w", encoding="utf-8") as handle:
        for point in records:
            handle.write(json.dumps(point) + "\n")
    return path.stat().st_size


def loader_row_split(rows: int) -> tuple[list[int], list[int]]:
    """(train, test) row numbers as the fine-tuning loader's `train_test_split(test_size=0.1, seed=42)` draws them:
    a numpy permutation of the rows seeded 42, its first 10% the test rows."""
    import numpy as np

    permutation = np.random.default_rng(REFERENCE_SPLIT_SEED).permutation(rows).tolist()
    test_rows = math.ceil(REFERENCE_TEST_SIZE * rows)
    return permutation[test_rows:], permutation[:test_rows]


def leakage(
    records: list[dict[str, Any]], train: list[int], test: list[int], doc_of: dict[str, str]
) -> dict[str, float]:
    """The share of test rows whose document, oracle chunk or exact question also appears in a train row."""
    keys: dict[str, Callable[[dict[str, Any]], str]] = {
        "document": lambda point: doc_of[point["oracle_context"]],
        "oracle chunk": lambda point: point["oracle_context"],
        "question": lambda point: point["question"],
    }
    shares = {}
    for name, key in keys.items():
        in_train = {key(records[row]) for row in train}
        shares[name] = sum(key(records[row]) in in_train for row in test) / len(test)
    return shares


def same_document_distractor_share(records: list[dict[str, Any]], doc_of: dict[str, str]) -> float:
    """Of the distractors of the non-refusal records, the share cut from the oracle's own document."""
    same = total = 0
    for point in records:
        if point["id"].startswith("seed_task_"):
            distractors = list(point["context"]["sentences"][0])
            distractors.remove(point["oracle_context"])
            oracle_doc = doc_of[point["oracle_context"]]
            same += sum(doc_of[doc] == oracle_doc for doc in distractors)
            total += len(distractors)
    return same / total


def reference_child(work: Path, seed: int) -> dict[str, Any]:
    """The reference design on the benchmark's inputs, timed phase by phase, then measured (not timed)."""
    started = time.perf_counter()
    import numpy  # noqa: F401  (imported here so that the phases do not pay for it)
    import polars  # noqa: F401

    import_s = time.perf_counter() - started
    rss_after_import = memory_status_mb("VmRSS")
    random.seed(seed)  # the reference never seeds `random`; the benchmark does, to be repeatable
    phases: list[Phase] = []
    chunks, triples, doc_of = timed(phases, "read the inputs (parquet to lists)", lambda: reference_inputs(work))
    records = timed(phases, "assemble the records", lambda: reference_records(chunks, triples))
    output_bytes = timed(phases, f"write {REFERENCE_FILE}", lambda: write_json_lines(records, work / REFERENCE_FILE))
    train, test = timed(phases, "row split 90/10 (the fine-tuning loader's)", lambda: loader_row_split(len(records)))
    peak_rss = max(phase.peak_rss_mb for phase in phases)
    return {
        "import_s": import_s,
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": peak_rss,
        "phases": [asdict(phase) for phase in phases],
        "questions": len(triples),
        "records": len(records),
        "refusal_records": sum(point["id"].startswith("refusal_task_") for point in records),
        "output_bytes": output_bytes,
        "train_rows": len(train),
        "test_rows": len(test),
        "leakage": leakage(records, train, test, doc_of),
        "same_document_distractor_share": same_document_distractor_share(records, doc_of),
    }


def run_child(work: Path, mode: str, profile_top: int = 0, seed: int = 0) -> ChildRun:
    """Run this script in `mode` in a fresh interpreter (see `results.run_child`)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--work", str(work)]
    command += ["--profile", str(profile_top), "--seed", str(seed)]
    return run_child_process(
        command, REPO_ROOT, work / f"{mode}_result.json", work / f"{mode}.log", echo_log=bool(profile_top)
    )


def output_files(folder: Path) -> dict[str, int]:
    """Bytes of each file the asset wrote."""
    return {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}


def count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
    return lines


# --------------------------------------------------------------------------- report


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def end_to_end_table(inputs: Inputs, run: ChildRun) -> str:
    child = run.result
    meta = child["metadata"]
    return "\n".join(
        [
            "| questions | chunks | documents | records written | raft_dataset step s | materialize() s "
            "| total wall s | peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {inputs.questions:,} | {inputs.chunks:,} | {inputs.documents:,} | {meta['dagster/row_count']:,} "
            f"| {child['step_s']:.2f} | {child['materialize_s']:.2f} | {run.wall_s:.2f} | {child['peak_rss_mb']:.0f} |",
        ]
    )


def end_to_end_notes(run: ChildRun) -> str:
    child = run.result
    return (
        f"Total wall is the child process from start to exit: {child['import_s']:.2f} s of imports, "
        f"{child['instance_s']:.2f} s creating the test instance, {child['materialize_s']:.2f} s in `materialize()` "
        f"(the `raft_dataset` step, {child['step_s']:.2f} s, plus Dagster's own work), the rest interpreter start and "
        f"shutdown. Peak RSS is the child's VmHWM (ru_maxrss from wait4: {run.rusage_maxrss_mb:.0f} MB); "
        f"{child['rss_after_import_mb']:.0f} MB of it is resident after the imports."
    )


METADATA_KEYS = (
    "train_records",
    "test_records",
    "eval_documents",
    "hard_distractor_share",
    "oracle_present_share",
    "refusal_share",
    "dropped_overlength",
    "truncated",
    "context_length",
    "tokens_p50",
    "tokens_p90",
    "tokens_p99",
    "tokens_pmax",
)


def metadata_line(run: ChildRun) -> str:
    meta = run.result["metadata"]
    shown = []
    for key in METADATA_KEYS:
        if key in meta:
            value = meta[key]
            shown.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value:,}")
    checks = ", ".join(f"{name} {pass_fail(passed)}" for name, passed in sorted(run.result["checks"].items()))
    return f"Metadata: {'; '.join(shown)}. Asset checks: {checks}."


def files_table(sizes: dict[str, int], records: int, lines: int) -> str:
    rows = [f"| `{name}` | {size / 1e6:,.1f} |" for name, size in sizes.items()]
    return "\n".join(
        [
            "| file | MB |",
            "|---|---:|",
            *rows,
            f"| all | {sum(sizes.values()) / 1e6:,.1f} |",
            "",
            f"`raft.jsonl` has {lines:,} lines for {records:,} records reported by the asset.",
        ]
    )


def phase_rows(run: ChildRun) -> list[str]:
    """A table of the phases a child timed with `timed`."""
    phases = [Phase(**phase) for phase in run.result["phases"]]
    return [
        "| phase | wall s | CPU s | peak RSS MB during | RSS MB after |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {phase.name} | {phase.seconds:.2f} | {phase.cpu_seconds:.2f} | {phase.peak_rss_mb:.0f} "
            f"| {phase.rss_after_mb:.0f} |"
            for phase in phases
        ),
    ]


def phases_table(run: ChildRun) -> str:
    resettable = "" if run.result["peak_resettable"] else " (VmHWM could not be reset: peaks are cumulative)"
    return "\n".join(
        [
            *phase_rows(run),
            "",
            f"Child process wall {run.wall_s:.1f} s, peak RSS {run.rusage_maxrss_mb:.0f} MB{resettable}; "
            f"{run.result['records']:,} records of {run.result['plans']:,} plans written.",
        ]
    )


def reference_table(run: ChildRun, sizes: dict[str, int], reference: ChildRun) -> str:
    ours, theirs = run.result, reference.result
    work_s = sum(phase["seconds"] for phase in theirs["phases"])
    return "\n".join(
        [
            "| design | records | work s | total wall s | peak RSS MB | RSS MB after imports | output MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| ours: `raft_dataset` materialized (hard distractors, split by document, token counts; "
            f"{len(sizes)} files) | {ours['metadata']['dagster/row_count']:,} | {ours['step_s']:.2f} "
            f"| {run.wall_s:.2f} | {ours['peak_rss_mb']:.0f} | {ours['rss_after_import_mb']:.0f} "
            f"| {sum(sizes.values()) / 1e6:,.1f} |",
            f"| reference design: uniform distractors, one `hf` JSONL, 90/10 row split "
            f"| {theirs['records']:,} | {work_s:.2f} | {reference.wall_s:.2f} | {theirs['peak_rss_mb']:.0f} "
            f"| {theirs['rss_after_import_mb']:.0f} | {theirs['output_bytes'] / 1e6:,.1f} |",
            "",
            f"Work is the `raft_dataset` step for ours, the sum of the phases below for the reference. Reference / "
            f"ours: {work_s / ours['step_s']:.2f} in work, {reference.wall_s / run.wall_s:.2f} in total wall (ours "
            f"includes {ours['import_s']:.1f} s of imports: Dagster, transformers, FAISS), "
            f"{theirs['peak_rss_mb'] / ours['peak_rss_mb']:.2f} in peak RSS. Ours writes fewer records: the evaluation "
            "documents' questions are held out of the dataset.",
            "",
            *phase_rows(reference),
        ]
    )


def share(value: float) -> str:
    return f"{value:.1%}"


def reference_features(run: ChildRun, reference: ChildRun) -> str:
    """What the reference design lacks that ours does, with the figures of both runs."""
    meta, theirs = run.result["metadata"], reference.result
    leaks = theirs["leakage"]
    split_check = pass_fail(run.result["checks"].get("splits_disjoint", False))
    test_rows = f"{theirs['test_rows']:,} test rows of {theirs['records']:,}"
    return "\n".join(
        [
            "| | ours (`raft_dataset`) | reference design |",
            "|---|---|---|",
            f"| distractors | hard: the nearest chunks of other documents (hard_distractor_share "
            f"{meta['hard_distractor_share']:.3f}) | uniform from all other chunks, none chosen as hard; "
            f"{share(theirs['same_document_distractor_share'])} of them from the oracle's own document |",
            f"| oracle in the context | with p 0.8 (oracle_present_share {meta['oracle_present_share']:.3f}) "
            "| always (refusal records aside) |",
            f"| refusal records | refusal_share {meta['refusal_share']:.3f} | {theirs['refusal_records']:,} extra "
            f"records ({share(theirs['refusal_records'] / theirs['questions'])} of the questions) |",
            f"| train/test split | by document, {meta['eval_documents']:,} more documents held out for evaluation; "
            f"no test document in train: 0% leakage by construction (check splits_disjoint {split_check}) "
            f"| random rows at load time (90/10, seed 42): of its {test_rows}, **{share(leaks['document'])}** "
            f"share their document with a train row, {share(leaks['oracle chunk'])} their oracle chunk, "
            f"{share(leaks['question'])} their exact question (a refusal record and its original split apart) |",
            f"| length check | every record counted with the base model's tokenizer against its context "
            f"({meta['context_length']:,} tokens: p99 {meta['tokens_p99']:,}, max {meta['tokens_pmax']:,}; "
            f"{meta['dropped_overlength']:,} dropped as too long) | none: a record too long is found in training |",
            "| reproducible | seeded | `random` never seeded (seeded here for the benchmark) |",
        ]
    )


def targets_table(run: ChildRun) -> str:
    peak = run.result["peak_rss_mb"]
    return "\n".join(
        [
            "| target | measured | result |",
            "|---|---:|---|",
            f"| `raft_dataset`, 100k questions / 20k chunks, hard distractors, under {TARGET_WALL_S:g} s (total wall) "
            f"| {run.wall_s:.1f} s | {pass_fail(run.wall_s < TARGET_WALL_S)} |",
            f"| peak RSS under 4 GB ({TARGET_RSS_MB:,.0f} MiB) | {peak:.0f} MB | {pass_fail(peak < TARGET_RSS_MB)} |",
        ]
    )


def report(
    args: argparse.Namespace,
    inputs: Inputs,
    run: ChildRun,
    sizes: dict[str, int],
    lines: int,
    reference: ChildRun,
    phases: ChildRun | None,
) -> str:
    machine = machine_description(KEY_PACKAGES)
    command = " ".join(["python benchmarks/bench_dataset.py", *sys.argv[1:]])
    section = [
        SECTION_TITLE,
        "",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpus']}, {machine['memory']} RAM; load average at the end {machine['load']}",
        f"- Software: {machine['python']}; {machine['packages']}",
        f"- Command: `.venv/bin/{command}`",
        f"- Inputs (generated, seed {args.seed}, not timed: {inputs.setup_s:.0f} s, of which {inputs.tokenizer_s:.1f} s "
        f"building the tiny model): {inputs.questions:,} answered questions ({args.questions_per_chunk} per chunk, "
        f"chains of thought of {inputs.cot_chars_mean:.0f} characters on average) over {inputs.chunks:,} chunks "
        f"({inputs.chunk_chars_mean:.0f} characters on average) of {inputs.documents:,} documents in "
        f"{len(inputs.sources)} sources, in the stages' parquet schemas; the tiny base model, its tokenizer trained "
        f"on {min(TOKENIZER_SAMPLE, inputs.chunks):,} of the chunks.",
        f"- Retrieval index: `ChunkIndex.save` of seeded random {DIMENSION}-d unit vectors clustered by document, not "
        "real embeddings: embedding 20,000 chunks with all-MiniLM-L6-v2 takes about 16 minutes on this CPU, which "
        "is the `retrieval_index` asset's cost, not the dataset's. The search (`nearest_other_documents`, exact "
        "FAISS) is the same work whatever the vectors.",
        "- Config: `distractors: hard`, the rest the defaults (4 distractors, p 0.8, refusal_p 0.05, 10% test and "
        "10% eval documents, overlength drop, the tiny model's 4,096-token context).",
        "",
        "### End to end (`dagster.materialize([...], selection=[raft_dataset])` in a child process)",
        "",
        end_to_end_table(inputs, run),
        "",
        end_to_end_notes(run),
        "",
        metadata_line(run),
        "",
        "### Output files",
        "",
        files_table(sizes, run.result["metadata"]["dagster/row_count"], lines),
        "",
    ]
    section += [
        "### The reference design, measured in the same run on the same inputs",
        "",
        "The llama-recipes recipe's assembly (`add_chunk_to_dataset`), re-implemented in this benchmark for the "
        "comparison (not imported from the recipe), in a child process of its own: for each answered question "
        f"(each question once, by exact string) the oracle chunk and {REFERENCE_DISTRACTORS} distractors drawn "
        "uniformly from all other chunks with Python's `random` (seeded here), shuffled; with probability "
        f"{REFERENCE_REFUSAL_P} an extra refusal record; the `hf` format (id, type, question, context, oracle_context, "
        "cot_answer, instruction) built in memory and written as one JSON lines file; then the fine-tuning loader's "
        "90/10 random row split (numpy permutation, seed 42). Its inputs are read from the same parquet files "
        "(the recipe holds them in memory: that phase is ours, not the recipe's). Each question rebuilds and "
        "scans a list of every chunk (`chunks.index`, `list(range(...))`, `remove`), as the recipe does: the "
        "assembly grows with questions x chunks.",
        "",
        reference_table(run, sizes, reference),
        "",
        "What the reference design lacks, with the figures of this run:",
        "",
        reference_features(run, reference),
        "",
    ]
    if phases is not None:
        section += [
            "### Phases (the asset's functions called one by one in a second child process)",
            "",
            phases_table(phases),
            "",
        ]
    section += ["### Targets", "", targets_table(run), ""]
    return "\n".join(section)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks in all (default 20000)")
    parser.add_argument("--docs", type=int, default=2000, help="documents the chunks are spread over (default 2000)")
    parser.add_argument("--sources", type=int, default=2, help="sources the documents are spread over (default 2)")
    parser.add_argument(
        "--questions-per-chunk", type=int, default=5, choices=range(1, len(QUESTION_TEMPLATES) + 1), metavar="1-5"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    parser.add_argument("--record", action="store_true", help=f"write the results into {RESULTS.name}")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the materialization, top N")
    parser.add_argument("--no-phases", action="store_true", help="skip timing the phases in a second child")
    parser.add_argument("--child", choices=["materialize", "phases", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not (args.sources <= args.docs < args.chunks):
        parser.error("need sources <= docs < chunks")
    return args


def child_main(args: argparse.Namespace) -> None:
    modes: dict[str, Callable[[], dict[str, Any]]] = {
        "materialize": lambda: materialize_child(args.work, args.profile),
        "phases": lambda: phases_child(args.work),
        "reference": lambda: reference_child(args.work, args.seed),
    }
    outcome = modes[args.child]()
    (args.work / f"{args.child}_result.json").write_text(json.dumps(outcome), encoding="utf-8")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_dataset_") as tmp:
        work = Path(tmp)
        inputs = generate_inputs(work, args.chunks, args.docs, args.sources, args.questions_per_chunk, args.seed)
        print(
            f"Generated {inputs.questions:,} questions over {inputs.chunks:,} chunks of {inputs.documents:,} documents "
            f"in {inputs.setup_s:.1f} s; materializing raft_dataset"
        )
        run = run_child(work, "materialize", args.profile)
        if not run.result["success"]:
            sys.exit("The materialization did not succeed.")
        folder = work / "generated" / "raft"
        sizes = output_files(folder)
        lines = count_lines(folder / "raft.jsonl")
        print(f"Materialized in {run.wall_s:.1f} s (peak RSS {run.result['peak_rss_mb']:.0f} MB)")
        for path in folder.glob("*.jsonl"):  # keep the disk footprint to one copy of a dataset
            path.unlink()
        print("Running the reference design")
        reference = run_child(work, "reference", seed=args.seed)
        (work / REFERENCE_FILE).unlink()
        print(f"Reference design in {reference.wall_s:.1f} s (peak RSS {reference.result['peak_rss_mb']:.0f} MB)")
        phases = None
        if not args.no_phases:
            print("Timing the phases")
            phases = run_child(work, "phases")
    section = report(args, inputs, run, sizes, lines, reference, phases)
    print()
    publish(section, args.record, "profiled run: timings are inflated" if args.profile else None)


if __name__ == "__main__":
    main(sys.argv[1:])
