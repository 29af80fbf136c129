"""What the dataset is built from: the answered questions that curation kept, and the chunks of every source, one of
each per text."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.layout import Layout, MissingInput
from raft_assets.contracts.raft_format import Passage, Sample, question_key, without_document_tags
from raft_assets.contracts.tables import KEEP, read_all_partitions


@dataclass(frozen=True)
class Curated:
    """Answers (status ok) of the questions curation kept, and the answered questions it dropped."""

    answers: pl.DataFrame
    dropped_ids: pl.DataFrame  # question_id

    @property
    def dropped(self) -> int:
        return self.dropped_ids.height


def kept_question_ids(layout: Layout, sources: list[str]) -> pl.DataFrame:
    """The question_id of every question `curated_answers` keeps, over the sources (kept in one source is kept).

    A source with answers but no curated_answers file is refused: its questions were never curated."""
    missing = [s for s in sources if layout.stage_file("cot_answers", s).is_file()]
    missing = [s for s in missing if not layout.stage_file("curated_answers", s).is_file()]
    if missing:
        raise MissingInput(f"No curated_answers file for {', '.join(missing)}: materialize curated_answers first.")
    verdicts = read_all_partitions(layout, "curated_answers", sources, ["question_id", "verdict"])
    return verdicts.filter(pl.col("verdict") == KEEP).select("question_id").unique()


def curated_answers(layout: Layout, sources: list[str], answers: pl.DataFrame) -> Curated:
    """`answers` (cot_answers rows) narrowed to the kept questions' answers with status ok."""
    answered = answers.filter(pl.col("status") == "ok")
    kept_ids = kept_question_ids(layout, sources)
    kept = answered.join(kept_ids, on="question_id", how="semi")
    dropped = answered.select("question_id").unique().join(kept_ids, on="question_id", how="anti")
    return Curated(kept, dropped)


def load_samples(
    layout: Layout, sources: list[str], require_quotes_ok: bool
) -> tuple[list[Sample], list[Passage], Curated]:
    """One sample per distinct question that curation kept (sorted by id), and every distinct chunk with its
    canonical document; with what curation dropped.

    The same question asked under two sources (the same chunk text in both) or about two chunks is one sample:
    the first by question_id. Its document and source are its chunk's canonical ones (`read_corpus`).
    """
    answers = read_all_partitions(layout, "cot_answers", sources)
    if require_quotes_ok:
        answers = answers.filter(pl.col("quotes_ok"))
    curated = curated_answers(layout, sources, answers)
    asked = read_all_partitions(layout, "questions", sources, ["question_id", "question", "chunk_id"])
    corpus = read_corpus(layout, sources)
    rows = (
        curated.answers.unique("question_id", keep="first")
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
    return samples, passages_of(corpus), curated


def passages_of(corpus: pl.DataFrame) -> list[Passage]:
    """Every chunk of a corpus (`read_corpus`) as a passage of its canonical document, its tags defused."""
    return [
        Passage(r["chunk_id"], r["doc_id"], r["title"], without_document_tags(r["text"]))
        for r in corpus.iter_rows(named=True)
    ]
