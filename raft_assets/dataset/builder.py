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
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from raft_assets.contracts.layout import RAFT_FILES, Layout
from raft_assets.contracts.raft_format import REFUSAL_ANSWER, Passage, Sample, chat_record, raft_record
from raft_assets.contracts.tables import write_parquet
from raft_assets.dataset.distractors import DistractorPicker, NotEnoughDocuments
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.fields import setting, validate_all
from raft_assets.files import written_atomically

SPLITS = ("train", "test", "eval")
FEW_DOCUMENTS = 3  # a test split or eval set of fewer documents measures those documents more than the model


@dataclass(frozen=True)
class DatasetOptions:
    """How to build the RAFT dataset: what the launchpad offers for `raft_dataset`."""

    num_distractors: int = setting(4, "Distractor documents per record (4, as the reference).", ge=1)
    p: float = setting(
        0.8,
        "Probability that the oracle is among the documents (the RAFT paper's P; the reference always includes "
        "it). A record without its oracle keeps the full answer: the model learns to answer from memory, as in the "
        "paper, where a refusal record (refusal_p) teaches it to refuse in the same situation.",
        ge=0,
        le=1,
    )
    refusal_p: float = setting(
        0.05,
        "Probability of an extra refusal record: the oracle replaced by a distractor, the answer `refusal_answer` "
        "(as the reference). It pulls the other way from p < 1's records without their oracle.",
        ge=0,
        le=1,
    )
    refusal_answer: str = setting(REFUSAL_ANSWER, "The answer of a refusal record (the reference's).")
    distractors: str = setting(
        "mixed",
        "random (the reference), hard (nearest chunks by embedding) or mixed (half of each).",
        choices=("random", "hard", "mixed"),
    )
    seed: int = setting(42, "Drives every random choice (the reference's `random` is never seeded).")
    test_fraction: float = setting(
        0.1,
        "Share of documents whose questions test. The reference splits rows 90/10 at random when training loads "
        "them, so test questions share documents and chunks with training ones.",
        ge=0,
        lt=1,
    )
    eval_fraction: float = setting(0.1, "Share of documents reserved for the eval set.", ge=0, lt=1)
    min_split_documents: int = setting(
        FEW_DOCUMENTS,
        "Fewest documents for test and for eval (when their fraction is not 0) while training keeps the documents "
        "its records need; a split with fewer is warned about.",
        ge=1,
    )
    require_quotes_ok: bool = setting(
        True, "Use only answers whose quotes were found in the chunk (the reference keeps all)."
    )
    context_length: int | None = setting(None, "Default: the base model's context length.", gt=0)
    overlength: str = setting(
        "drop",
        "A sample longer than the context is dropped, or its documents are shortened evenly (truncate).",
        choices=("drop", "truncate"),
    )

    def __post_init__(self) -> None:
        validate_all(self)


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


def assign_splits(doc_ids: list[str], options: DatasetOptions, min_train: int = 1) -> dict[str, str]:
    """Each document to one split: a seeded shuffle, eval documents first, then test, the rest train."""
    ordered = sorted(doc_ids)
    random.Random(options.seed).shuffle(ordered)
    n_eval, n_test = split_sizes(
        len(ordered), options.test_fraction, options.eval_fraction, options.min_split_documents, min_train
    )
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
    planner = Planner(passages, splits, options, neighbours)
    position = {passage.chunk_id: i for i, passage in enumerate(passages)}
    plans = []
    for index, sample in enumerate(samples):
        split = splits[sample.doc_id]
        if split == "eval":
            continue
        oracle = position[sample.chunk_id]
        with_oracle = planner.rng.random() < options.p
        plans.append(planner.plan(index, sample, oracle, split, with_oracle=with_oracle, refusal=False))
        if planner.rng.random() < options.refusal_p:
            plans.append(planner.plan(index, sample, oracle, split, with_oracle=False, refusal=True))
    planner.rng.shuffle(plans)
    return plans


class Planner:
    """Draws every record's documents from one seeded `random.Random`, in a fixed order.

    Training records draw distractors from training documents (and from documents without questions, which no
    split holds) only: no test or eval text is trained on. Test records may draw from every document.
    """

    def __init__(
        self,
        passages: list[Passage],
        splits: dict[str, str],
        options: DatasetOptions,
        neighbours: dict[str, list[str]] | None,
    ) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.picker = DistractorPicker(passages, self.rng, neighbours)
        train = [i for i, passage in enumerate(passages) if splits.get(passage.doc_id, "train") == "train"]
        everything = list(range(len(passages)))
        self.pools = {"train": (train, set(train)), "test": (everything, set(everything))}

    def plan(
        self, index: int, sample: Sample, oracle: int, split: str, *, with_oracle: bool, refusal: bool
    ) -> RecordPlan:
        count = self.options.num_distractors + (0 if with_oracle else 1)
        pool, pool_set = self.pools[split]
        oracle_passage = self.picker.passages[oracle]
        distractors, hard = self.picker.pick(
            oracle_passage, count, pool, pool_set, self.options.distractors, sample.answer
        )
        chosen = distractors + ([oracle] if with_oracle else [])
        self.rng.shuffle(chosen)
        return RecordPlan(index, tuple(chosen), oracle, split, refusal, hard)


@dataclass(frozen=True)
class BuiltDataset:
    splits: dict[str, str]  # document -> split
    stats: DatasetStats

    @property
    def documents_per_split(self) -> Counter[str]:
        return Counter(self.splits.values())

    def small_splits(self, options: DatasetOptions) -> list[str]:
        """The test or eval split (when wanted) that has fewer than `min_split_documents`, described."""
        count = self.documents_per_split
        return [
            f"{split} has {count[split]} document(s)"
            for split, fraction in (("test", options.test_fraction), ("eval", options.eval_fraction))
            if fraction > 0 and count[split] < options.min_split_documents
        ]


def build_dataset(
    layout: Layout,
    samples: list[Sample],
    passages: list[Passage],
    options: DatasetOptions,
    lengths: TokenLengths | None,
    neighbours: dict[str, list[str]] | None,
) -> BuiltDataset:
    """Split the documents, plan and write the records, and write every sample's split (`layout.splits_file`)."""
    documents = {sample.doc_id for sample in samples}
    splits = assign_splits(sorted(documents), options, training_documents_needed(options, passages, documents))
    plans = plan_records(samples, passages, splits, options, neighbours)
    stats = write_dataset(layout, plans, samples, passages, options, lengths)
    write_parquet(split_manifest(samples, splits), layout.splits_file)
    return BuiltDataset(splits, stats)


def split_manifest(samples: list[Sample], splits: dict[str, str]) -> pl.DataFrame:
    """Every sample's split: what `eval_set` draws its questions from."""
    return pl.DataFrame(
        {
            "question_id": [s.question_id for s in samples],
            "question": [s.question for s in samples],
            "chunk_id": [s.chunk_id for s in samples],
            "doc_id": [s.doc_id for s in samples],
            "source": [s.source for s in samples],
            "split": [splits[s.doc_id] for s in samples],
        }
    )


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
    maker = RecordMaker(samples, passages, options, lengths)
    with ExitStack() as stack:
        partials = {part: stack.enter_context(written_atomically(layout.raft_file(part))) for part in RAFT_FILES}
        handles = {part: stack.enter_context(path.open("w", encoding="utf-8")) for part, path in partials.items()}
        for plan in plans:
            record = maker.record(plan)
            if record is None:
                continue
            line = json.dumps(record, ensure_ascii=False) + "\n"
            maker.stats.digest.update(line.encode())
            handles["all"].write(line)
            handles[record["split"]].write(line)
            handles["chat"].write(json.dumps(chat_record(record), ensure_ascii=False) + "\n")
    return maker.stats


class RecordMaker:
    """Turns plans into records: fitted to the context length when `lengths` is given, and counted in `stats`."""

    def __init__(
        self, samples: list[Sample], passages: list[Passage], options: DatasetOptions, lengths: TokenLengths | None
    ) -> None:
        self.samples, self.passages, self.options, self.lengths = samples, passages, options, lengths
        self.tokens = PartTokens.count(lengths, samples, passages, options.refusal_answer) if lengths else None
        self.stats = DatasetStats()

    def record(self, plan: RecordPlan) -> dict[str, Any] | None:
        """The record of `plan`, or None when it is too long and `overlength` is drop."""
        sample = self.samples[plan.sample]
        chosen = [self.passages[i] for i in plan.passages]
        oracle = self.passages[plan.oracle]
        if self.lengths is not None:
            fitted = self._fit(plan, sample, chosen)
            if fitted is None:
                self.stats.dropped_overlength += 1
                return None
            if fitted != chosen:
                self.stats.truncated += 1
                chosen = fitted
                oracle = next((p for p in chosen if p.chunk_id == oracle.chunk_id), oracle)
        record = raft_record(
            sample,
            chosen,
            oracle,
            split=plan.split,
            refusal_answer=self.options.refusal_answer if plan.refusal else None,
            distractor_kind=plan.distractors,
        )
        self._tally(record, plan)
        return record

    def _fit(self, plan: RecordPlan, sample: Sample, chosen: list[Passage]) -> list[Passage] | None:
        """The documents, shortened if needed (`TokenLengths.fit`), or None when the sample is dropped."""
        assert self.lengths is not None and self.tokens is not None
        tokens = self.tokens
        answer, answer_tokens = (
            (self.options.refusal_answer, tokens.refusal)
            if plan.refusal
            else (sample.cot_answer, tokens.answers[plan.sample])
        )
        fitted = self.lengths.fit(
            sample.question,
            tokens.questions[plan.sample],
            [p.text for p in chosen],
            [tokens.passages[i] for i in plan.passages],
            answer,
            answer_tokens,
            self.options.overlength,
        )
        if fitted is None:
            return None
        texts, length = fitted
        self.stats.token_lengths.append(length)
        if texts == [p.text for p in chosen]:
            return chosen
        return [Passage(p.chunk_id, p.doc_id, p.title, text) for p, text in zip(chosen, texts, strict=True)]

    def _tally(self, record: dict[str, Any], plan: RecordPlan) -> None:
        stats = self.stats
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
