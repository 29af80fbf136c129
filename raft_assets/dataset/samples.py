"""What the dataset is built from: the answered questions and the chunks of every source, one of each per text."""

from __future__ import annotations

import polars as pl

from raft_assets.contracts.corpus import read_corpus
from raft_assets.contracts.layout import Layout
from raft_assets.contracts.raft_format import Passage, Sample, question_key, without_document_tags
from raft_assets.contracts.tables import read_all_partitions


def load_samples(layout: Layout, sources: list[str], require_quotes_ok: bool) -> tuple[list[Sample], list[Passage]]:
    """One sample per distinct question (sorted by id), and every distinct chunk with its canonical document.

    The same question asked under two sources (the same chunk text in both) or about two chunks is one sample:
    the first by question_id. Its document and source are its chunk's canonical ones (`read_corpus`).
    """
    answers = read_all_partitions(layout, "cot_answers", sources).filter(pl.col("status") == "ok")
    if require_quotes_ok:
        answers = answers.filter(pl.col("quotes_ok"))
    asked = read_all_partitions(layout, "questions", sources, ["question_id", "question", "chunk_id"])
    corpus = read_corpus(layout, sources)
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
