"""The tables the assets write, by column, and reading and writing them.

A parquet file is written under a temporary name and renamed into place, so a reader never sees half of one and a
crash leaves the previous one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from raft_assets.contracts.layout import Layout, MissingInput
from raft_assets.files import written_atomically

DOCUMENT_SCHEMA = {
    "doc_id": pl.String,
    "source": pl.String,
    "uri": pl.String,
    "title": pl.String,
    "text": pl.String,
    "content_hash": pl.String,
    "error": pl.String,
}
DOCUMENT_COLUMNS = {
    "doc_id": "Hash of source and uri: the same document keeps its id across crawls.",
    "source": "The source (partition) it was read from.",
    "uri": "Its file path relative to the source folder, or its page URL.",
    "title": "Its first heading, HTML title or file name.",
    "text": "Its text, as chunked.",
    "content_hash": "Hash of the text; empty when the document could not be read.",
    "error": "Why the document could not be read; empty when it was.",
}

CHUNK_SCHEMA = {
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "source": pl.String,
    "position": pl.Int32,
    "text": pl.String,
    "doc_ids": pl.List(pl.String),
}
CHUNK_COLUMNS = {
    "chunk_id": "Hash of the chunk's text.",
    "doc_id": "The document its questions belong to: the smallest of `doc_ids`.",
    "source": "The source (partition) of that document.",
    "position": "Its place among that document's chunks, from 0.",
    "text": "The chunk: the oracle document of its questions.",
    "doc_ids": "Every document of the source that holds this text, a near duplicate of it, or (a boilerplate chunk) "
    "this paragraph.",
}

EXTRACTIVE_MODEL = "extractive"  # the `model` of questions and answers written without a model (the stand-in)
QUESTION_SCHEMA = {
    "question_id": pl.String,
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "question": pl.String,
    "model": pl.String,
    "status": pl.String,
    "error": pl.String,
}
ANSWER_SCHEMA = {
    "question_id": pl.String,
    "cot_answer": pl.String,
    "answer": pl.String,
    "quotes_ok": pl.Boolean,
    "status": pl.String,
    "error": pl.String,
    "attempts": pl.Int32,
}
GENERATION_COLUMNS = {
    "question_id": "Hash of the chunk and the question.",
    "chunk_id": "The chunk the question is about (its oracle document).",
    "doc_id": "The document of that chunk.",
    "question": "The generated question; empty when generation failed.",
    "model": "The generator that wrote it (`extractive` without an endpoint).",
    "status": "`ok`, `duplicate`, `skipped` (the extractive stand-in had no sentence to quote), or the kind of failure.",
    "error": "The failure's (or the skip's) reason; empty when ok.",
    "cot_answer": "Reasoning that quotes the chunk (##begin_quote##...##end_quote##), ending with `<ANSWER>: ...`.",
    "answer": "The final answer, after `<ANSWER>:`.",
    "quotes_ok": "Every quote appears verbatim in the chunk.",
    "attempts": "Requests made for this answer (malformed replies are asked again).",
}

HEURISTIC_CURATOR = "heuristic"  # the `judge_model` of ratings given without a model (the curation stand-in)
KEEP, REJECT = "keep", "reject"  # the verdicts of curated_answers: raft_dataset and eval_set use the kept questions
CURATED_SCHEMA = {
    "question_id": pl.String,
    "score": pl.Int8,
    "verdict": pl.String,
    "reasons": pl.List(pl.String),
    "judge_model": pl.String,
    "status": pl.String,
    "error": pl.String,
}
CURATED_COLUMNS = {
    "question_id": "The question rated (every question of `cot_answers` has a row).",
    "score": "1 (useless) to 10 (excellent) on the rubric; empty when the question was not rated.",
    "verdict": "`keep` (rated ok, score at least `min_score`, no better-rated near-duplicate) or `reject`.",
    "reasons": "The rubric's reason codes (`curation.rubric.REASONS`), `near_duplicate` with the question kept "
    "instead, then the rater's comment when it made one.",
    "judge_model": "The model that rated it (`heuristic` without an endpoint).",
    "status": "`ok`, `skipped` (its answer failed in `cot_answers`: nothing to rate), or the kind of failure.",
    "error": "The failure's (or the skip's) reason; empty when ok.",
}

# eval_set.json as a table (each item has more fields; these are the ones a reviewer reads).
EVAL_SCHEMA = {"id": pl.String, "question": pl.String, "answer": pl.String, "source": pl.String}
EVAL_COLUMNS = {
    "id": "The question_id of the generated question it comes from.",
    "question": "The question, as asked of every evaluated system.",
    "answer": "The reference answer (curated when the curation file corrects it).",
    "source": "The source of the question's document: a document never in training.",
}


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with written_atomically(path) as partial:
        frame.write_parquet(partial)


def read_parquet(path: Path, asset: str) -> pl.DataFrame:
    if not path.is_file():
        raise MissingInput(f"{path} does not exist: materialize {asset!r} for this partition first.")
    return pl.read_parquet(path)


def read_all_partitions(
    layout: Layout, stage: str, sources: list[str], columns: list[str] | None = None
) -> pl.DataFrame:
    """One stage's rows over the given source partitions (those materialized; the others are absent)."""
    existing = [path for path in (layout.stage_file(stage, source) for source in sources) if path.is_file()]
    if not existing:
        raise MissingInput(
            f"No {stage} file for any source ({', '.join(sources) or 'no sources'}): materialize {stage!r} first."
        )
    return pl.concat([pl.read_parquet(path, columns=columns) for path in existing], how="vertical")
