"""The unpartitioned dataset assets over every source: `raft_dataset` and `eval_set`."""

import json
import os
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.dataset.builder import (
    FILES,
    DatasetOptions,
    assign_splits,
    percentiles,
    plan_records,
    write_dataset,
)
from raft_assets.dataset.distractors import NotEnoughDocuments
from raft_assets.dataset.eval_set import Curation, build_eval_set
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.dataset.records import REFUSAL_ANSWER, Passage, Sample, without_document_tags
from raft_assets.files import write_text_atomically
from raft_assets.generation.assets import cot_answers, questions
from raft_assets.generation.parsing import normalized
from raft_assets.hashing import content_hash
from raft_assets.ingestion.assets import chunks, documents
from raft_assets.partitions import doc_sources, every_source
from raft_assets.resources.paths import ProjectPaths
from raft_assets.retrieval.assets import retrieval_index
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.storage import (
    column_schema,
    file_link,
    markdown_preview,
    read_all_partitions,
    table_metadata,
    write_parquet,
)
from raft_assets.training.assets import base_model
from raft_assets.training.base_model import load_tokenizer, read_pointer

# eval_set.json as a table (each item has more fields; these are the ones a reviewer reads).
EVAL_SCHEMA = {"id": pl.String, "question": pl.String, "answer": pl.String, "source": pl.String}
EVAL_COLUMNS = {
    "id": "The question_id of the generated question it comes from.",
    "question": "The question, as asked of every evaluated system.",
    "answer": "The reference answer (curated when the curation file corrects it).",
    "source": "The source of the question's document: a document never in training.",
}


class RaftDatasetConfig(dg.Config):
    num_distractors: int = Field(default=4, ge=1, description="Distractor documents per record.")
    p: float = Field(default=0.8, ge=0, le=1, description="Probability that the oracle is among the documents.")
    refusal_p: float = Field(default=0.05, ge=0, le=1, description="Probability of an extra refusal record.")
    refusal_answer: str = REFUSAL_ANSWER
    distractors: Literal["random", "hard", "mixed"] = Field(
        default="mixed", description="random (the reference), hard (nearest chunks by embedding) or half of each."
    )
    seed: int = 42
    test_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of documents whose questions test.")
    eval_fraction: float = Field(default=0.1, ge=0, lt=1, description="Share of documents reserved for the eval set.")
    require_quotes_ok: bool = Field(default=True, description="Use only answers whose quotes were found.")
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
            overlength=self.overlength,
        )


class EvalSetConfig(dg.Config):
    size: int = Field(default=100, gt=0)
    seed: int = 42
    curation_file: str = Field(
        default=os.environ.get("RAFT_EVAL_CURATION", "data/eval_curation.yaml"),
        description="Ids to reject and answers to correct by hand, applied on every materialization.",
    )


def load_samples(
    paths: ProjectPaths, sources: list[str], require_quotes_ok: bool
) -> tuple[list[Sample], list[Passage]]:
    """Answered questions (sorted by id) and every chunk (with its document's title)."""
    answers = read_all_partitions(paths.data_dir, "cot_answers", sources).filter(pl.col("status") == "ok")
    if require_quotes_ok:
        answers = answers.filter(pl.col("quotes_ok"))
    asked = read_all_partitions(paths.data_dir, "questions", sources, ["question_id", "question", "chunk_id", "doc_id"])
    chunk_frame = read_all_partitions(paths.data_dir, "chunks", sources, ["chunk_id", "doc_id", "source", "text"])
    titles = read_all_partitions(paths.data_dir, "documents", sources, ["doc_id", "title"])
    rows = (
        answers.join(asked, on="question_id")
        .join(chunk_frame.select("chunk_id", "source"), on="chunk_id")
        .sort("question_id")
    )
    samples = [
        Sample(
            r["question_id"],
            without_document_tags(r["question"]),
            r["cot_answer"],
            r["answer"],
            r["chunk_id"],
            r["doc_id"],
            r["source"],
        )
        for r in rows.iter_rows(named=True)
    ]
    passages_frame = chunk_frame.join(titles, on="doc_id", how="left").sort("chunk_id")
    passages = [
        Passage(r["chunk_id"], r["doc_id"], r["title"] or "", without_document_tags(r["text"]))
        for r in passages_frame.iter_rows(named=True)
    ]
    return samples, passages


@dg.asset(
    group_name="dataset",
    kinds={"python", "jsonl"},
    deps=[every_source(chunks), every_source(questions), every_source(cot_answers), retrieval_index, base_model],
    check_specs=[
        dg.AssetCheckSpec(
            "instruction_documents",
            asset="raft_dataset",
            blocking=True,
            description="Every instruction holds num_distractors + 1 documents and ends with its question.",
        ),
        dg.AssetCheckSpec(
            "oracle_matches_flag",
            asset="raft_dataset",
            blocking=True,
            description="The oracle is in the context exactly when oracle_included is true.",
        ),
        dg.AssetCheckSpec(
            "no_document_across_splits",
            asset="raft_dataset",
            blocking=True,
            description="No document contributes questions to two of train, test and eval.",
        ),
    ],
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
    model = read_pointer(Path(paths.checkpoint_dir))
    lengths = TokenLengths(load_tokenizer(model), config.context_length or model.context_length)
    folder = Path(paths.data_dir) / "raft"
    try:
        splits = assign_splits(
            sorted({s.doc_id for s in samples}), config.test_fraction, config.eval_fraction, config.seed
        )
        neighbours = None
        if config.distractors != "random":
            index = ChunkIndex.load(Path(paths.data_dir) / "index")
            neighbours = index.nearest_other_documents([p.chunk_id for p in passages], config.num_distractors * 3)
        plans = plan_records(samples, passages, splits, options, neighbours)
    except NotEnoughDocuments as error:
        raise dg.Failure(f"Cannot build the RAFT dataset: {error}.") from None
    stats = write_dataset(folder, plans, samples, passages, options, lengths)
    manifest = pl.DataFrame(
        {
            "question_id": [s.question_id for s in samples],
            "question": [s.question for s in samples],
            "doc_id": [s.doc_id for s in samples],
            "source": [s.source for s in samples],
            "split": [splits[s.doc_id] for s in samples],
        }
    )
    write_parquet(manifest, folder / "splits.parquet")

    written = sum(stats.records.values())
    doc_splits = manifest.group_by("doc_id").agg(pl.col("split").n_unique().alias("splits"))
    leaking = int((doc_splits["splits"] > 1).sum())
    by_source = pl.DataFrame(
        [(*key.split("/"), count) for key, count in sorted(stats.by_source.items())],
        schema=["source", "split", "records"],
        orient="row",
    )
    return dg.MaterializeResult(
        metadata={
            **file_link(folder),
            "dagster/row_count": written,
            "train_records": stats.records["train"],
            "test_records": stats.records["test"],
            "eval_documents": sum(1 for split in splits.values() if split == "eval"),
            "oracle_present_share": stats.oracle_included / written if written else 0.0,
            "refusal_share": stats.refusals / written if written else 0.0,
            "hard_distractor_share": stats.hard_records / written if written else 0.0,
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
            "files": ", ".join(FILES.values()),
        },
        data_version=dg.DataVersion(stats.digest.hexdigest()),
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                passed=stats.violations[name] == 0,
                metadata={"records_failing": stats.violations[name]},
            )
            for name in ("instruction_documents", "oracle_matches_flag")
        ]
        + [
            dg.AssetCheckResult(
                check_name="no_document_across_splits",
                passed=leaking == 0,
                metadata={"documents_in_two_splits": leaking},
            )
        ],
    )


@dg.asset(
    group_name="dataset",
    kinds={"python", "json"},
    metadata={"dagster/column_schema": column_schema(EVAL_SCHEMA, EVAL_COLUMNS)},
    deps=[raft_dataset, every_source(cot_answers), every_source(documents)],
    check_specs=[
        dg.AssetCheckSpec(
            "no_training_question",
            asset="eval_set",
            blocking=True,
            description="No eval question is also a training question.",
        )
    ],
)
def eval_set(context: dg.AssetExecutionContext, config: EvalSetConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """Question/answer pairs from the eval documents, filtered for quality and curated by hand."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    manifest = pl.read_parquet(Path(paths.data_dir) / "raft" / "splits.parquet")
    answers = read_all_partitions(paths.data_dir, "cot_answers", sources).filter(pl.col("status") == "ok")
    asked = read_all_partitions(paths.data_dir, "questions", sources, ["question_id", "chunk_id"])
    chunk_frame = read_all_partitions(paths.data_dir, "chunks", sources, ["chunk_id", "text"])
    candidates = (
        manifest.filter(pl.col("split") == "eval")
        .join(answers.select("question_id", "answer", "quotes_ok"), on="question_id")
        .join(asked, on="question_id")
    )
    train_questions = {normalized(q) for q in manifest.filter(pl.col("split") == "train")["question"]}
    curation = Curation.load(Path(config.curation_file))
    items, reasons = build_eval_set(
        candidates,
        dict(zip(chunk_frame["chunk_id"], chunk_frame["text"], strict=True)),
        train_questions,
        config.size,
        config.seed,
        curation,
    )
    path = Path(paths.data_dir) / "eval" / "eval_set.json"
    write_text_atomically(path, json.dumps(items, ensure_ascii=False, indent=1))

    in_training = sum(normalized(item["question"]) in train_questions for item in items)
    frame = pl.DataFrame(items, schema=EVAL_SCHEMA)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(frame, path, EVAL_COLUMNS),
            "candidates": candidates.height,
            "corrected": sum(item["corrected"] for item in items),
            **{f"filtered: {reason}": count for reason, count in sorted(reasons.items())},
            "preview": markdown_preview(frame.select("question", "answer"), rows=10, max_chars=120),
        },
        data_version=dg.DataVersion(content_hash(*(f"{i['id']}:{i['answer']}" for i in items))),
        check_results=[
            dg.AssetCheckResult(
                check_name="no_training_question",
                passed=in_training == 0,
                metadata={"eval_questions_in_training": in_training},
            )
        ],
    )
