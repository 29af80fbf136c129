"""The dataset assets over every source: `raft_dataset` (one partition per recipe) and `eval_set`, and their checks.

The checks are asset checks of their own, run after the files are written and reading them back
(`dataset/checks.py`), so they verify what a trainer or an evaluator will read, not the plan that wrote it. The eval
set is drawn once, from the `default` recipe's split; every other recipe must split the documents the same way
(`same_split_as_default`), so that no recipe trains on an eval document and every recipe's results are paired.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.layout import RAFT_FILES, Layout
from raft_assets.contracts.raft_format import without_document_tags
from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.contracts.tables import EVAL_COLUMNS, EVAL_SCHEMA, read_all_partitions
from raft_assets.dataset.builder import FEW_DOCUMENTS, SPLITS, DatasetOptions, build_dataset, percentiles
from raft_assets.dataset.checks import EXAMPLES, SplitContents, describe_overlaps, overlaps, record_problems
from raft_assets.dataset.distractors import NotEnoughDocuments
from raft_assets.dataset.eval_set import Curation, build_eval_set
from raft_assets.dataset.lengths import TokenLengths
from raft_assets.dataset.samples import curated_answers, load_samples
from raft_assets.defs.curation.assets import curated_answers as curated_answers_asset
from raft_assets.defs.dataset.own_chunking import build_own_chunks, chunking_options
from raft_assets.defs.generation.assets import cot_answers, questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.launchpad import config_class
from raft_assets.defs.metadata import (
    CHUNKS_FINGERPRINT,
    column_schema,
    file_link,
    markdown_preview,
    partition_metadata,
    table_metadata,
)
from raft_assets.defs.partitions import default_recipe, doc_sources, every_partition, recipes
from raft_assets.defs.recipes import recipe_metadata, recipe_run, with_overrides
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.base_model import base_model
from raft_assets.files import write_text_atomically
from raft_assets.hashing import chunks_fingerprint, content_hash
from raft_assets.retrieval.index import ChunkIndex
from raft_assets.settings import load_settings
from raft_assets.training.base_model import load_tokenizer, read_pointer

NUM_DISTRACTORS = "num_distractors"  # raft_dataset's metadata: what its records check expects


RaftDatasetConfig = config_class("RaftDatasetConfig", DatasetOptions)


class EvalSetConfig(dg.Config):
    size: int = Field(default=100, gt=0)
    seed: int = 42
    curation_file: str = Field(
        default=load_settings().eval_curation,
        description="Ids to reject and answers to correct by hand, applied on every materialization.",
    )


@dg.asset(
    group_name="dataset",
    kinds={"python", "jsonl"},
    partitions_def=recipes,
    deps=[
        every_partition(chunks),
        every_partition(questions),
        every_partition(cot_answers),
        every_partition(curated_answers_asset),
        retrieval_index,
        base_model,
    ],
)
def raft_dataset(
    context: dg.AssetExecutionContext, config: RaftDatasetConfig, paths: ProjectPaths
) -> dg.MaterializeResult:
    """RAFT records in the seed's `hf` format (and as chat messages), split by document into train and test, from
    the questions that curation kept; the run config's settings with the recipe's `dataset` overrides. A recipe
    with its own `chunking` first writes its own corpus and index and moves the questions to its chunks
    (`own_chunking.py`)."""
    run = recipe_run(context, paths)
    options = DatasetOptions(**with_overrides(config, run.recipe, "dataset"))
    layout = run.layout
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    chunking = chunking_options(context.instance, run.recipe, sources) if layout.own_chunking else None
    # The questions were asked about the shared chunks; a recipe with its own chunking moves them to its own.
    samples, passages, curated = load_samples(layout.with_shared_chunks, sources, options.require_quotes_ok)
    if not samples:
        raise dg.Failure(
            f"No answered question that curation kept to build records from ({curated.dropped} dropped by "
            "curation): materialize cot_answers and curated_answers first."
        )
    own = build_own_chunks(layout, chunking, samples, passages, context.log) if chunking else None
    if own is not None:
        samples, passages = own.samples, own.passages
    model = read_pointer(layout)
    lengths = TokenLengths(load_tokenizer(model), options.context_length or model.context_length)
    neighbours = None
    if options.distractors != "random":
        index = ChunkIndex.load(layout.index_folder)
        neighbours = index.nearest_other_documents([p.chunk_id for p in passages], options.num_distractors * 3)
    try:
        built = build_dataset(layout, samples, passages, options, lengths, neighbours)
    except NotEnoughDocuments as error:
        raise dg.Failure(f"Cannot build the RAFT dataset: {error}.") from None
    if small := built.small_splits(options):
        context.log.warning(
            f"Few documents to measure on: {', '.join(small)} (min_split_documents is "
            f"{options.min_split_documents}); add documents for numbers that mean more."
        )
    stats = built.stats
    written = sum(stats.records.values())
    by_source = pl.DataFrame(
        [(*key.split("/"), count) for key, count in sorted(stats.by_source.items())],
        schema=["source", "split", "records"],
        orient="row",
    )
    return dg.MaterializeResult(
        metadata={
            **file_link(layout.raft_folder),
            **recipe_metadata(run.recipe),
            **(own.metadata(layout) if own else {}),
            "dagster/row_count": written,
            "train_records": stats.records["train"],
            "test_records": stats.records["test"],
            "distinct_questions": len(samples),
            "dropped_by_curation": curated.dropped,
            **{f"{split}_documents": built.documents_per_split[split] for split in SPLITS},
            **({"split_warning": "; ".join(small)} if small else {}),
            NUM_DISTRACTORS: options.num_distractors,
            CHUNKS_FINGERPRINT: chunks_fingerprint(passage.chunk_id for passage in passages),
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
        dg.AssetCheckSpec(
            "same_split_as_default",
            asset=raft_dataset,
            blocking=True,
            description="The recipe's splits.parquet puts every document in the split that the default recipe's "
            "puts it in: the eval set (drawn from the default's split) holds no document it trains or tests on.",
        ),
    ],
)
def raft_dataset_checks(context: dg.AssetCheckExecutionContext, paths: ProjectPaths) -> Iterator[dg.AssetCheckResult]:
    """The checks of raft_dataset, on the recipe's files as written."""
    layout = recipe_run(context, paths).layout
    metadata = partition_metadata(context.instance, raft_dataset.key, layout.recipe)
    if metadata is None:
        raise dg.Failure(f"raft_dataset[{layout.recipe}] has not been materialized: nothing to check.")
    num_distractors = metadata[NUM_DISTRACTORS]
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
    yield same_split_as_default(layout, paths.layout)


def same_split_as_default(layout: Layout, default: Layout) -> dg.AssetCheckResult:
    name = "same_split_as_default"
    if layout.recipe == DEFAULT_RECIPE:
        return dg.AssetCheckResult(check_name=name, passed=True, description="The default recipe's split is the one.")
    if not default.splits_file.is_file():
        return dg.AssetCheckResult(
            check_name=name,
            passed=False,
            description=f"No split of the default recipe to compare with ({default.splits_file}): materialize "
            f"raft_dataset[{DEFAULT_RECIPE}] first.",
        )
    moved = split_differences(pl.read_parquet(layout.splits_file), pl.read_parquet(default.splits_file))
    return dg.AssetCheckResult(
        check_name=name,
        passed=moved.is_empty(),
        metadata={"documents_in_another_split": moved.height},
        description=f"{moved.height} document(s) in another split than the default recipe's, e.g. "
        + ", ".join(
            f"{row['doc_id']} ({row['split']}, default: {row['default_split']})"
            for row in moved.head(EXAMPLES).to_dicts()
        )
        if moved.height
        else None,
    )


def split_differences(splits: pl.DataFrame, default: pl.DataFrame) -> pl.DataFrame:
    """The documents that `splits` puts in another split than `default` does (or that `default` has not)."""
    documents = splits.select("doc_id", "split").unique()
    reference = default.select("doc_id", pl.col("split").alias("default_split")).unique()
    joined = documents.join(reference, on="doc_id", how="left")
    return joined.filter(pl.col("default_split").is_null() | (pl.col("split") != pl.col("default_split"))).sort(
        "doc_id"
    )


@dg.asset(
    group_name="dataset",
    kinds={"python", "json"},
    metadata={"dagster/column_schema": column_schema(EVAL_SCHEMA, EVAL_COLUMNS)},
    deps=[
        default_recipe(raft_dataset),
        every_partition(questions),
        every_partition(cot_answers),
        every_partition(curated_answers_asset),
        every_partition(documents),
    ],
)
def eval_set(context: dg.AssetExecutionContext, config: EvalSetConfig, paths: ProjectPaths) -> dg.MaterializeResult:
    """Question/answer pairs from the eval documents, of the questions curation kept, filtered for quality and
    curated by hand."""
    sources = context.instance.get_dynamic_partitions(doc_sources.name)
    manifest = pl.read_parquet(paths.layout.splits_file)
    curated = curated_answers(paths.layout, sources, read_all_partitions(paths.layout, "cot_answers", sources))
    writers = read_all_partitions(paths.layout, "questions", sources, ["question_id", "model", "chunk_id"])
    answers = curated.answers.unique("question_id", keep="first").select("question_id", "answer", "quotes_ok")
    eval_rows = manifest.filter(pl.col("split") == "eval")
    candidates = eval_rows.join(answers, on="question_id").join(
        writers.unique("question_id", keep="first").drop("chunk_id"), on="question_id"
    )
    corpus = read_corpus(paths.layout, sources)
    eval_documents = corpus.filter(pl.col("doc_id").is_in(eval_rows["doc_id"].implode())).select("chunk_id")
    dropped = curated.dropped_ids.join(writers, on="question_id").join(eval_documents, on="chunk_id", how="semi")
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
            "dropped_by_curation": dropped["question_id"].n_unique(),
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
