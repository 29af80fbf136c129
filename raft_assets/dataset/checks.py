"""What the dataset's blocking checks verify, read from the files as written (never from the plan that wrote them).

- Each record of `raft.jsonl` holds `num_distractors + 1` documents, in its instruction and its context, and its
  instruction ends with its question; its oracle is in its context exactly when `oracle_included` says so.
- No two of `raft_train.jsonl`, `raft_test.jsonl` and `eval_set.json` share a document, an oracle chunk (its
  text, normalised) or a question (`question_key`), and no test or eval oracle is among the documents that a
  training record shows the model (its distractors included).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_assets.contracts.raft_format import DOCUMENT_END, DOCUMENT_START, normalized, question_key

EXAMPLES = 3  # named in a failing check's description


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


@dataclass
class RecordProblems:
    """Records of `raft.jsonl` that break the record checks, by check name, with the first ids of each."""

    records: int = 0
    failing: dict[str, list[str]] = field(
        default_factory=lambda: {"instruction_documents": [], "oracle_matches_flag": []}
    )

    def add(self, record: dict[str, Any], num_distractors: int) -> None:
        self.records += 1
        documents = record["context"]["sentences"][0]
        instruction = record["instruction"]
        expected = num_distractors + 1
        if (
            instruction.count(DOCUMENT_START) != expected
            or instruction.count(DOCUMENT_END) != expected
            or len(documents) != expected
            or not instruction.endswith(record["question"])
        ):
            self.failing["instruction_documents"].append(record["id"])
        if (record["oracle_context"] in documents) != record["oracle_included"]:
            self.failing["oracle_matches_flag"].append(record["id"])


def record_problems(path: Path, num_distractors: int) -> RecordProblems:
    problems = RecordProblems()
    for record in json_lines(path):
        problems.add(record, num_distractors)
    return problems


def text_key(text: str) -> str:
    """A short, normalised identity of a document text: sets of these stay small for 100,000 records."""
    return hashlib.blake2b(normalized(text).encode(), digest_size=12).hexdigest()


@dataclass
class SplitContents:
    """What one split's file holds, as compared with the others."""

    name: str
    documents: set[str] = field(default_factory=set)
    oracles: set[str] = field(default_factory=set)  # text_key of each oracle chunk
    questions: dict[str, str] = field(default_factory=dict)  # question_key -> a question as written
    shown: set[str] = field(default_factory=set)  # text_key of every document a record puts before the model

    @classmethod
    def of_records(cls, name: str, path: Path) -> SplitContents:
        """From a RAFT records file (`raft_train.jsonl`, `raft_test.jsonl`)."""
        contents = cls(name)
        for record in json_lines(path):
            contents._add(record["doc_id"], record["oracle_context"], record["question"])
            contents.shown.update(text_key(text) for text in record["context"]["sentences"][0])
        return contents

    @classmethod
    def of_eval_set(cls, path: Path) -> SplitContents:
        """From `eval_set.json`."""
        contents = cls("eval")
        for item in json.loads(path.read_text(encoding="utf-8")):
            contents._add(item["doc_id"], item["oracle_context"], item["question"])
        return contents

    def _add(self, doc_id: str, oracle: str, question: str) -> None:
        self.documents.add(doc_id)
        self.oracles.add(text_key(oracle))
        self.questions.setdefault(question_key(question), question)


def overlaps(first: SplitContents, second: SplitContents) -> dict[str, list[str]]:
    """What the two splits share, by kind (documents, oracle chunks, questions, oracles shown in training), each
    with examples; empty lists when they are disjoint."""
    found = {
        f"documents in {first.name} and {second.name}": sorted(first.documents & second.documents),
        f"oracle chunks in {first.name} and {second.name}": sorted(first.oracles & second.oracles),
        f"questions in {first.name} and {second.name}": sorted(
            first.questions[key] for key in first.questions.keys() & second.questions.keys()
        ),
    }
    for trained, other in ((first, second), (second, first)):
        if trained.name == "train":
            found[f"{other.name} oracle chunks shown in train records"] = sorted(other.oracles & trained.shown)
    return found


def describe_overlaps(found: dict[str, list[str]]) -> str:
    """One sentence per kind of overlap: the count and the first examples."""
    parts = []
    for kind, items in found.items():
        if items:
            examples = ", ".join(repr(item[:80]) for item in items[:EXAMPLES])
            parts.append(f"{len(items)} {kind} (e.g. {examples})")
    return "; ".join(parts) + "." if parts else "The splits share no document, oracle chunk or question."
