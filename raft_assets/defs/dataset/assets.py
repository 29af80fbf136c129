"""The unpartitioned dataset assets over every source: `raft_dataset` and `eval_set`, and their checks.

The checks are asset checks of their own, run after the files are written and reading them back
(`dataset/checks.py`), so they verify what a trainer or an evaluator will read, not the plan that wrote it.
"""

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.layout import RAFT_FILES
from raft_assets.contracts.raft_format import REFUSAL_ANSWER, Passage, Sample, question_key, without_document_tags
from raft_assets.contracts.tables import EVAL_COLUMNS, EVAL_SCHEMA, read_all_partitions, write_parquet
from raft_assets.dataset.builder import (
    FEW_DOCUMENTS,
    SPLITS,
    DatasetOptions,
    assign_splits,
    percentiles,
    plan_records,
    training_documents_needed,
    write_dataset,
)
from raft_assets.dataset.checks import EXAMPLES, SplitContents, describe_overlaps, overlaps, record_problems
from raft_assets.dataset.distractors import NotEnoughDocuments
from raft_assets.dataset.eval_set import Curation, build_eval_set
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.metadata import column_schema, file_link, markdown_preview, table_metadata
from raft_assets.defs.partitions import doc_sources, every_source
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.assets import base_model
from raft_assets.files import write_text_atomically
from raft_assets.hashing import content_hash
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.settings import load_settings
from raft_assets.training.base_model import load_tokenizer, read_pointer

NUM_DISTRACTORS = "num_distractors"  # raft_dataset's metadata: what its records check expects


class RaftDatasetConfig(dg.Config):
    num_distractors: int = Field(default=4, ge=1, description="Distractor documents per record.")
    p: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Probability that the oracle is among the documents (the RAFT paper's P; the reference always "
        "includes it). A record without its oracle keeps the full answer: the model learns to answer from memory, "
        "as in the paper, where a refusal record (refusal_p) teaches it to refuse in the same situation.",
    )
    refusal_p: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Probability of an extra refusal record: the oracle replaced by a distractor, the answer "
        "`refusal_answer` (as the reference). It pulls the other way from p < 1's records without their oracle.",
    )
    refusal_answer: str = REFUSAL_ANSWER
    distractors: Literal["random", "hard", "mixed"] = Field(
        default="mixed", description="random (the reference), hard (nearest chunks by embedding) or half of each."
    )
    seed: int = Field(default=42, description="Drives every random choice (the reference's `random` is never seeded).")
    test_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of documents whose questions test. The reference splits rows 90/10 at random when "
        "training loads them, so test questions share documents and chunks with training ones.",
    )
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of documents reserved for the eval set.")
    min_split_documents: int = Field(
        default=FEW_DOCUMENTS,
        ge=1,
        description="Fewest documents for test and for eval (when their fraction is not 0) while training keeps one; "
        "a split with fewer is warned about.",
    )
    require_quotes_ok: bool = Field(
        default=True, description="Use only answers whose quotes were found in the chunk (the reference keeps all)."
    )
    context_length: int | None = Field(default=None, gt=0, description="Default: the base model's context length.")
    overlength: Literal["drop", "truncate"] = "drop"

    def options(self) -> DatasetOptions:
        """The builder's options (everything but the asset-level settings)."""
        return DatasetOptions(
            num_distractors=self.num_distractors,
            p=self.p,
            refusal_p=self.refusal_p,
            refusal_answer=self.refusal_answer,
            distractors=self.distractors,
            seed=self.seed,
            test_fraction=self.test_fraction,
            eval_fraction=self.eval_fraction,
            min_split_documents=self.min_split_documents,
            overlength=self.overlength,
        )


class EvalSetConfig(dg.Config):
    size: int = Field(default=100, gt=0)
    seed: int = 42
    curation_file: str = Field(
        default=load_settings().eval_curation,
        description="Ids to reject and answers to correct by hand, applied on every materialization.",
    )


def load_samples(
    paths: ProjectPaths, sources: list[str], require_quotes_ok: bool
) -> tuple[list[Sample], list[Passage]]:
    """One sample per distinct question (sorted by id), and every distinct chunk with its canonical document.

    The same question asked under two sources (the same chunk text in both) or about two chunks is one sample:
    the first by question_id. Its document and source are its chunk's canonical ones (`read_corpus`).
    """
    answers = read_all_partitions(paths.layout, "cot_answers", sources).filter(pl.col("status") == "ok")
    if require_quotes_ok:
        answers = answers.filter(pl.col("quotes_ok"))
    asked = read_all_partitions(paths.layout, "questions", sources, ["question_id", "question", "chunk_id"])
    corpus = read_corpus(paths.layout, sources)
    rows = (
        answers.unique("question_id", keep="first")
        .join(asked.unique("question_id", keep="first"), on="question_id")
        .join(corpus.select("chunk_id", "doc_id", "source"), on="chunk_id")
        .sort("question_id")
    )
    samples, seen = [], set()
    for r in rows.iter_rows(named=True):
        key = question_key(r["question"])
        if key in seen:
            continue
        seen.add(key)
        question = without_document_tags(r["question"])
        samples.append(
            Sample(r["question_id"], question, r["cot_answer"], r["answer"], r["chunk_id"], r["doc_id"], r["source"])
        )
    passages = [
        Passage(r["chunk_id"], r["doc_id"], r["title"], without_document_tags(r["text"]))
        for r in corpus.iter_rows(named=True)
    ]
    return samples, passages


@dg.asset(
    group_name="dataset",
    kinds={"python", "jsonl"},
    deps=[every_source(chunks), every_source(questions), every_source(cot_answers), retrieval_index, base_model],
)
def raft_dataset(
    context: dg.AssetExecutionContext, config: RaftDatasetConfig, paths: ProjectPaths
) -> dg.MaterializeResult:
    """RAFT records in the seed's `hf` format (and as chat messages), split by document into train and test."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    samples, passages = load_samples(paths, sources, config.require_quotes_ok)
    if not samples:
        raise dg.Failure("No answered question to build records from: materialize cot_answers first.")
    options = config.options()
    model = read_pointer(paths.layout)
    lengths = TokenLengths(load_tokenizer(model), config.context_length or model.context_length)
    layout = paths.layout
    try:
        doc_ids = {s.doc_id for s in samples}
        splits = assign_splits(
            sorted(doc_ids),
            config.test_fraction,
            config.eval_fraction,
            config.min_split_documents,
            config.seed,
            training_documents_needed(options, passages, doc_ids),
        )
        neighbours = None
        if config.distractors != "random":
            index = ChunkIndex.load(layout.index_folder)
            neighbours = index.nearest_other_documents([p.chunk_id for p in passages], config.num_distractors * 3)
        plans = plan_records(samples, passages, splits, options, neighbours)
    except NotEnoughDocuments as error:
        raise dg.Failure(f"Cannot build the RAFT dataset: {error}.") from None
    stats = write_dataset(layout, plans, samples, passages, options, lengths)
    manifest = pl.DataFrame(
        {
            "question_id": [s.question_id for s in samples],
            "question": [s.question for s in samples],
            "chunk_id": [s.chunk_id for s in samples],
            "doc_id": [s.doc_id for s in samples],
            "source": [s.source for s in samples],
            "split": [splits[s.doc_id] for s in samples],
        }
    )
    write_parquet(manifest, layout.splits_file)

    documents_per_split = Counter(splits.values())
    small = [
        f"{split} has {documents_per_split[split]} document(s)"
        for split, fraction in (("test", config.test_fraction), ("eval", config.eval_fraction))
        if fraction > 0 and documents_per_split[split] < config.min_split_documents
    ]
    if small:
        context.log.warning(
            f"Few documents to measure on: {', '.join(small)} (min_split_documents is "
            f"{config.min_split_documents}); add documents for numbers that mean more."
        )
    written = sum(stats.records.values())
    by_source = pl.DataFrame(
        [(*key.split("/"), count) for key, count in sorted(stats.by_source.items())],
        schema=["source", "split", "records"],
        orient="row",
    )
    return dg.MaterializeResult(
        metadata={
            **file_link(layout.raft_folder),
            "dagster/row_count": written,
            "train_records": stats.records["train"],
            "test_records": stats.records["test"],
            "distinct_questions": len(samples),
            **{f"{split}_documents": documents_per_split[split] for split in SPLITS},
            **({"split_warning": "; ".join(small)} if small else {}),
            NUM_DISTRACTORS: config.num_distractors,
            "oracle_present_share": stats.oracle_included / written if written else 0.0,
            "refusal_share": stats.refusals / written if written else 0.0,
            "hard_distractor_share": stats.hard_distractors / stats.distractors if stats.distractors else 0.0,
            "dropped_overlength": stats.dropped_overlength,
            "truncated": stats.truncated,
            "context_length": lengths.limit,
            **percentiles(stats.token_lengths),
            "records_by_source": markdown_preview(by_source, rows=50),
            "preview": dg.MetadataValue.md(
                "\n\n".join(
                    f"```json\n{json.dumps(r, ensure_ascii=False, indent=2)[:3000]}\n```" for r in stats.preview
                )
            ),
            "files": ", ".join(RAFT_FILES.values()),
        },
        data_version=dg.DataVersion(stats.digest.hexdigest()),
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "instruction_documents",
            asset=raft_dataset,
            blocking=True,
            description="Every record of raft.jsonl holds num_distractors + 1 documents and ends with its question.",
        ),
        dg.AssetCheckSpec(
            "oracle_matches_flag",
            asset=raft_dataset,
            blocking=True,
            description="The oracle is in a record's context exactly when its oracle_included is true.",
        ),
        dg.AssetCheckSpec(
            "splits_disjoint",
            asset=raft_dataset,
            blocking=True,
            description="raft_train.jsonl and raft_test.jsonl share no document, oracle chunk or question, "
            "and no test oracle is shown in a training record.",
        ),
    ],
)
def raft_dataset_checks(context: dg.AssetCheckExecutionContext, paths: ProjectPaths) -> Iterator[dg.AssetCheckResult]:
    """The checks of raft_dataset, on its files as written."""
    layout = paths.layout
    num_distractors = latest_metadata(context.instance, raft_dataset.key)[NUM_DISTRACTORS].value
    problems = record_problems(layout.raft_file("all"), num_distractors)
    for name, failing in problems.failing.items():
        yield dg.AssetCheckResult(
            check_name=name,
            passed=not failing,
            metadata={"records_checked": problems.records, "records_failing": len(failing)},
            description=f"{len(failing)} of {problems.records} records fail, e.g. {', '.join(failing[:EXAMPLES])}."
            if failing
            else None,
        )
    train = SplitContents.of_records("train", layout.raft_file("train"))
    test = SplitContents.of_records("test", layout.raft_file("test"))
    yield overlap_result("splits_disjoint", overlaps(train, test))


@dg.asset(
    group_name="dataset",
    kinds={"python", "json"},
    metadata={"dagster/column_schema": column_schema(EVAL_SCHEMA, EVAL_COLUMNS)},
    deps=[raft_dataset, every_source(questions), every_source(cot_answers), every_source(documents)],
)
def eval_set(context: dg.AssetExecutionContext, config: EvalSetConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """Question/answer pairs from the eval documents, filtered for quality and curated by hand."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    manifest = pl.read_parquet(paths.layout.splits_file)
    answers = read_all_partitions(paths.layout, "cot_answers", sources).filter(pl.col("status") == "ok")
    writers = read_all_partitions(paths.layout, "questions", sources, ["question_id", "model"])
    candidates = (
        manifest.filter(pl.col("split") == "eval")
        .join(
            answers.unique("question_id", keep="first").select("question_id", "answer", "quotes_ok"), on="question_id"
        )
        .join(writers.unique("question_id", keep="first"), on="question_id")
    )
    corpus = read_corpus(paths.layout, sources)
    chunk_texts = dict(zip(corpus["chunk_id"], corpus["text"].map_elements(without_document_tags), strict=True))
    curation = Curation.load(Path(config.curation_file))
    items, reasons = build_eval_set(candidates, chunk_texts, config.size, config.seed, curation)
    path = paths.layout.eval_set_file
    write_text_atomically(path, json.dumps(items, ensure_ascii=False, indent=1))

    frame = pl.DataFrame(items, schema=EVAL_SCHEMA)
    documents_spanned = len({item["doc_id"] for item in items})
    if documents_spanned < FEW_DOCUMENTS:
        context.log.warning(
            f"The eval set spans {documents_spanned} document(s): its scores measure those documents more than "
            "the model. Add documents, or raise eval_fraction or min_split_documents of raft_dataset."
        )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(frame, path, EVAL_COLUMNS),
            "candidates": candidates.height,
            "documents": documents_spanned,
            "corrected": sum(item["corrected"] for item in items),
            **{f"filtered: {reason}": count for reason, count in sorted(reasons.items())},
            "preview": markdown_preview(frame.select("question", "answer"), rows=10, max_chars=120),
        },
        data_version=dg.DataVersion(content_hash(*(f"{i['id']}:{i['answer']}" for i in items))),
    )


@dg.asset_check(
    asset=eval_set,
    name="disjoint_from_training",
    blocking=True,
    description="eval_set.json shares no document, oracle chunk or question with raft_train.jsonl or "
    "raft_test.jsonl, and no eval oracle is shown in a training record.",
)
def eval_set_disjoint_from_training(paths: ProjectPaths) -> dg.AssetCheckResult:
    layout = paths.layout
    evaluation = SplitContents.of_eval_set(layout.eval_set_file)
    found = {
        **overlaps(SplitContents.of_records("train", layout.raft_file("train")), evaluation),
        **overlaps(SplitContents.of_records("test", layout.raft_file("test")), evaluation),
    }
    return overlap_result("disjoint_from_training", found)


def overlap_result(check_name: str, found: dict[str, list[str]]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=not any(found.values()),
        metadata={kind: len(items) for kind, items in found.items()},
        description=describe_overlaps(found),
    )


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized: nothing to check.")
    return dict(event.asset_materialization.metadata)
