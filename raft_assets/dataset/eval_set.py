"""The eval set: questions and answers from the eval documents only, filtered, then curated by hand.

Candidates are ranked by a seeded hash of their id and the first `size` that pass the filters and the
curation file are kept, so rejecting one question brings in the next-ranked one and leaves the rest of
the reviewed set as it was.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from raft_assets.contracts.raft_format import normalized
from raft_assets.hashing import content_hash

_MENTIONS_SOURCE = re.compile(r"\b(passage|context|according to|the (text|document|chunk|excerpt|article))\b", re.I)


class CurationError(ValueError):
    """The curation file is invalid."""


@dataclass(frozen=True)
class Curation:
    reject: frozenset[str]
    corrections: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Curation:
        """`reject: [id, ...]` and `corrections: {id: answer}`; a missing file curates nothing."""
        if not path.is_file():
            return cls(frozenset(), {})
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            reject = frozenset(str(item) for item in raw.get("reject") or [])
            corrections = {str(key): str(value) for key, value in (raw.get("corrections") or {}).items()}
        except (yaml.YAMLError, AttributeError, TypeError) as error:
            raise CurationError(
                f"{path} must hold `reject: [ids]` and `corrections: {{id: answer}}`: {error}"
            ) from None
        return cls(reject, corrections)


def rejection_reason(row: dict[str, Any], chunk_text: str) -> str | None:
    """Why a candidate is not good evaluation material, or None. (A question also asked in training cannot be one:
    `load_samples` keeps one sample per question, and the split puts it in one split.)"""
    if not row["answer"]:
        return "no final answer"
    if not row["quotes_ok"]:
        return "quotes not found in the source"
    question = normalized(row["question"]).rstrip("?")
    if question and question in normalized(chunk_text):
        return "question copied from the chunk"
    if _MENTIONS_SOURCE.search(row["question"]):
        return "question refers to the passage"
    return None


def build_eval_set(
    candidates: pl.DataFrame, chunk_texts: dict[str, str], size: int, seed: int, curation: Curation
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """`candidates` has question_id, question, answer, quotes_ok, chunk_id, doc_id, source (eval documents) and
    model (the generator that wrote the question); `chunk_texts` the text of each chunk, as the RAFT records show it."""
    reasons: Counter[str] = Counter()
    ranked = sorted(candidates.iter_rows(named=True), key=lambda row: content_hash(str(seed), row["question_id"]))
    items = []
    for row in ranked:
        if len(items) == size:
            break
        reason = "rejected in the curation file" if row["question_id"] in curation.reject else None
        reason = reason or rejection_reason(row, chunk_texts[row["chunk_id"]])
        if reason:
            reasons[reason] += 1
            continue
        corrected = curation.corrections.get(row["question_id"])
        items.append(
            {
                "id": row["question_id"],
                "question": row["question"],
                "answer": corrected or row["answer"],
                "doc_id": row["doc_id"],
                "source": row["source"],
                "chunk_id": row["chunk_id"],
                "oracle_context": chunk_texts[row["chunk_id"]],
                "generator": row["model"],
                "corrected": corrected is not None,
            }
        )
    return items, reasons
