"""Assembling the RAFT dataset: split by document, draw distractors, check lengths, write the files.

Every random choice comes from one `random.Random(seed)` drawn in a fixed order, so the same inputs and
seed give byte-identical files. Records are planned first (indices only), shuffled, then written one at a
time, so memory stays small even when the files are gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raft_assets.contracts.layout import RAFT_FILES, Layout
from raft_assets.contracts.raft_format import Passage, Sample, chat_record, raft_record
from raft_assets.dataset.distractors import DistractorPicker, NotEnoughDocuments
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.files import written_atomically

SPLITS = ("train", "test", "eval")
FEW_DOCUMENTS = 3  # a test split or eval set of fewer documents measures those documents more than the model


@dataclass(frozen=True)
class DatasetOptions:
    num_distractors: int = 4
    p: float = 0.8
    refusal_p: float = 0.05
    refusal_answer: str = ""
    distractors: str = "mixed"
    seed: int = 42
    test_fraction: float = 0.1
    eval_fraction: float = 0.1
    min_split_documents: int = FEW_DOCUMENTS
    overlength: str = "drop"


@dataclass(frozen=True)
class RecordPlan:
    """One record to write: which sample, which passages (in order), and what kind of record."""

    sample: int
    passages: tuple[int, ...]
    oracle: int
    split: str
    refusal: bool
    hard: int  # how many of the distractors are nearest neighbours of the oracle

    @property
    def distractors(self) -> str:
        """ "random", "hard" (every distractor a nearest neighbour) or "mixed"."""
        count = len(self.passages) - (self.oracle in self.passages)
        return "random" if self.hard == 0 else "hard" if self.hard == count else "mixed"


@dataclass
class DatasetStats:
    records: Counter[str] = field(default_factory=Counter)  # split -> records written
    by_source: Counter[str] = field(default_factory=Counter)  # "source/split" -> records
    oracle_included: int = 0
    refusals: int = 0
    distractors: int = 0  # documents in the records' contexts that are not their oracle
    hard_distractors: int = 0  # of those, the nearest neighbours of the oracle
    dropped_overlength: int = 0
    truncated: int = 0
    token_lengths: list[int] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))  # of raft.jsonl, as written


def assign_splits(
    doc_ids: list[str],
    test_fraction: float,
    eval_fraction: float,
    min_documents: int,
    seed: int,
    min_train: int = 1,
) -> dict[str, str]:
    """Each document to one split: a seeded shuffle, eval documents first, then test, the rest train."""
    ordered = sorted(doc_ids)
    random.Random(seed).shuffle(ordered)
    n_eval, n_test = split_sizes(len(ordered), test_fraction, eval_fraction, min_documents, min_train)
    return {doc: "eval" if i < n_eval else "test" if i < n_eval + n_test else "train" for i, doc in enumerate(ordered)}


def split_sizes(
    documents: int, test_fraction: float, eval_fraction: float, min_documents: int, min_train: int = 1
) -> tuple[int, int]:
    """(eval, test) documents: each its fraction of the corpus but at least `min_documents` (a split of one or
    two documents measures those documents, not the model); when that leaves training fewer than `min_train`
    documents, the larger of the two gives one back, down to one each. A fraction of 0 means no such split."""
    n_eval, n_test = (max(min_documents, round(f * documents)) if f > 0 else 0 for f in (eval_fraction, test_fraction))
    while documents - n_eval - n_test < min_train and max(n_eval, n_test) > 1:
        if n_eval >= n_test:
            n_eval -= 1
        else:
            n_test -= 1
    if documents - n_eval - n_test < min_train:
        raise NotEnoughDocuments(
            f"{documents} documents with usable questions cannot be split into train, test ({test_fraction:.0%}) "
            f"and eval ({eval_fraction:.0%}) with the {min_train} training document(s) that training records need"
        )
    return n_eval, n_test


def training_documents_needed(options: DatasetOptions, passages: list[Passage], splits_of: set[str]) -> int:
    """The fewest training documents that give every training record its distractors: the oracle's document and
    `num_distractors` others (one more for a record without its oracle), less the documents no split holds
    (documents without a usable question), which are distractor material for training too."""
    without_oracle = options.p < 1 or options.refusal_p > 0
    needed = options.num_distractors + 1 + without_oracle
    unsplit = len({passage.doc_id for passage in passages} - splits_of)
    return max(1, needed - unsplit)


def plan_records(
    samples: list[Sample],
    passages: list[Passage],
    splits: dict[str, str],
    options: DatasetOptions,
    neighbours: dict[str, list[str]] | None,
) -> list[RecordPlan]:
    """Every record as indices: for each sample, the oracle with probability p among distractors, and
    with probability refusal_p an extra refusal record without the oracle; then all shuffled."""
    check_corpus_size(passages, options.num_distractors)
    rng = random.Random(options.seed)
    picker = DistractorPicker(passages, rng, neighbours)
    position = {passage.chunk_id: i for i, passage in enumerate(passages)}
    # Training records draw distractors from training documents (and from documents without questions, which no
    # split holds) only: no test or eval text is trained on.
    train_pool = [i for i, passage in enumerate(passages) if splits.get(passage.doc_id, "train") == "train"]
    everything = list(range(len(passages)))
    pools = {"train": (train_pool, set(train_pool)), "test": (everything, set(everything))}
    plans = []
    for index, sample in enumerate(samples):
        split = splits[sample.doc_id]
        if split == "eval":
            continue
        pool, pool_set = pools[split]
        oracle = position[sample.chunk_id]
        with_oracle = rng.random() < options.p
        plans.append(_plan(index, sample, oracle, with_oracle, False, split, picker, pool, pool_set, options, rng))
        if rng.random() < options.refusal_p:
            plans.append(_plan(index, sample, oracle, False, True, split, picker, pool, pool_set, options, rng))
    rng.shuffle(plans)
    return plans


def _plan(
    index: int,
    sample: Sample,
    oracle: int,
    with_oracle: bool,
    refusal: bool,
    split: str,
    picker: DistractorPicker,
    pool: list[int],
    pool_set: set[int],
    options: DatasetOptions,
    rng: random.Random,
) -> RecordPlan:
    count = options.num_distractors + (0 if with_oracle else 1)
    distractors, hard = picker.pick(picker.passages[oracle], count, pool, pool_set, options.distractors, sample.answer)
    chosen = distractors + ([oracle] if with_oracle else [])
    rng.shuffle(chosen)
    return RecordPlan(index, tuple(chosen), oracle, split, refusal, hard)


def check_corpus_size(passages: list[Passage], num_distractors: int) -> None:
    needed = num_distractors + 1
    documents = len({passage.doc_id for passage in passages})
    if len(passages) < needed or documents < needed:
        raise NotEnoughDocuments(
            f"num_distractors={num_distractors} needs at least {needed} chunks from {needed} different documents "
            f"(the oracle and {num_distractors} distractors per record); the corpus has {len(passages)} chunks "
            f"from {documents} documents. Add documents or lower num_distractors."
        )


@dataclass(frozen=True)
class PartTokens:
    """Token counts of every part a record is made of, counted once in batches."""

    passages: list[int]
    questions: list[int]
    answers: list[int]
    refusal: int

    @classmethod
    def count(cls, lengths: TokenLengths, samples: list[Sample], passages: list[Passage], refusal: str) -> PartTokens:
        return cls(
            lengths.counts([p.text for p in passages]),
            lengths.counts([s.question for s in samples]),
            lengths.counts([s.cot_answer for s in samples]),
            lengths.counts([refusal])[0],
        )


def write_dataset(
    layout: Layout,
    plans: list[RecordPlan],
    samples: list[Sample],
    passages: list[Passage],
    options: DatasetOptions,
    lengths: TokenLengths | None,
) -> DatasetStats:
    """Write the four files (each atomically, renamed into place at the end) and return the stats."""
    stats = DatasetStats()
    tokens = PartTokens.count(lengths, samples, passages, options.refusal_answer) if lengths else None
    with ExitStack() as stack:
        partials = {part: stack.enter_context(written_atomically(layout.raft_file(part))) for part in RAFT_FILES}
        handles = {part: stack.enter_context(path.open("w", encoding="utf-8")) for part, path in partials.items()}
        for record in _records(plans, samples, passages, options, lengths, tokens, stats):
            line = json.dumps(record, ensure_ascii=False) + "\n"
            stats.digest.update(line.encode())
            handles["all"].write(line)
            handles[record["split"]].write(line)
            handles["chat"].write(json.dumps(chat_record(record), ensure_ascii=False) + "\n")
    return stats


def _records(
    plans: list[RecordPlan],
    samples: list[Sample],
    passages: list[Passage],
    options: DatasetOptions,
    lengths: TokenLengths | None,
    tokens: PartTokens | None,
    stats: DatasetStats,
) -> Iterator[dict[str, Any]]:
    for plan in plans:
        sample = samples[plan.sample]
        chosen = [passages[i] for i in plan.passages]
        oracle = passages[plan.oracle]
        if lengths is not None and tokens is not None:
            answer, answer_tokens = (
                (options.refusal_answer, tokens.refusal)
                if plan.refusal
                else (sample.cot_answer, tokens.answers[plan.sample])
            )
            fitted = lengths.fit(
                sample.question,
                tokens.questions[plan.sample],
                [p.text for p in chosen],
                [tokens.passages[i] for i in plan.passages],
                answer,
                answer_tokens,
                options.overlength,
            )
            if fitted is None:
                stats.dropped_overlength += 1
                continue
            texts, length = fitted
            if texts != [p.text for p in chosen]:
                stats.truncated += 1
                chosen = [Passage(p.chunk_id, p.doc_id, p.title, text) for p, text in zip(chosen, texts, strict=True)]
                oracle = next((p for p in chosen if p.chunk_id == oracle.chunk_id), oracle)
            stats.token_lengths.append(length)
        record = raft_record(
            sample,
            chosen,
            oracle,
            split=plan.split,
            refusal_answer=options.refusal_answer if plan.refusal else None,
            distractor_kind=plan.distractors,
        )
        _tally(record, plan, stats)
        yield record


def _tally(record: dict[str, Any], plan: RecordPlan, stats: DatasetStats) -> None:
    stats.records[record["split"]] += 1
    stats.by_source[f"{record['source']}/{record['split']}"] += 1
    stats.oracle_included += record["oracle_included"]
    stats.refusals += record["refusal"]
    stats.distractors += len(plan.passages) - record["oracle_included"]
    stats.hard_distractors += plan.hard
    if len(stats.preview) < 2:
        stats.preview.append(record)


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    points = np.percentile(np.array(values), [50, 90, 99, 100])
    return {f"tokens_p{name}": int(value) for name, value in zip(("50", "90", "99", "max"), points, strict=True)}
