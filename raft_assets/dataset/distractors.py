"""Choosing distractor documents: random (the reference), hard (nearest by embedding), or mixed."""

from __future__ import annotations

import random
from collections.abc import Sequence

from raft_assets.dataset.records import Passage
from raft_assets.generation.parsing import normalized

STRATEGIES = ("random", "hard", "mixed")
_MIN_ANSWER_CHARS = 12  # shorter answers ("8K") occur everywhere: not a sign that a passage answers


class NotEnoughDocuments(ValueError):
    """Fewer other documents than a record needs distractors."""


class DistractorPicker:
    """Picks `count` distractors for an oracle: each from a different document, none the oracle's.

    `neighbours` maps a chunk to its nearest chunks of other documents (nearest first), for the hard
    strategy. A candidate whose text contains the question's final answer is skipped: it would answer
    the question too, so it is no distractor.
    """

    def __init__(
        self, passages: Sequence[Passage], rng: random.Random, neighbours: dict[str, list[str]] | None
    ) -> None:
        self.passages = passages
        self.rng = rng
        self.neighbours = neighbours or {}
        self._position = {passage.chunk_id: i for i, passage in enumerate(passages)}
        self._normalized: dict[int, str] = {}

    def pick(
        self, oracle: Passage, count: int, pool: Sequence[int], pool_set: set[int], strategy: str, answer: str
    ) -> tuple[list[int], int]:
        """(the distractors' positions in `passages`, how many of them are hard ones)."""
        used_docs = {oracle.doc_id}
        chosen: list[int] = []
        wanted_answer = normalized(answer) if len(answer) >= _MIN_ANSWER_CHARS else ""
        hard_wanted = {"random": 0, "hard": count, "mixed": (count + 1) // 2}[strategy]
        for chunk_id in self.neighbours.get(oracle.chunk_id, []):
            if len(chosen) == hard_wanted:
                break
            index = self._position.get(chunk_id)
            if index is not None and index in pool_set and self._eligible(index, used_docs, wanted_answer):
                chosen.append(index)
                used_docs.add(self.passages[index].doc_id)
        hard = len(chosen)
        chosen += self._random(count - hard, pool, used_docs, wanted_answer)
        return chosen, hard

    def _eligible(self, index: int, used_docs: set[str], wanted_answer: str) -> bool:
        if self.passages[index].doc_id in used_docs:
            return False
        return not wanted_answer or wanted_answer not in self._text(index)

    def _text(self, index: int) -> str:
        if index not in self._normalized:
            self._normalized[index] = normalized(self.passages[index].text)
        return self._normalized[index]

    def _random(self, count: int, pool: Sequence[int], used_docs: set[str], wanted_answer: str) -> list[int]:
        chosen: list[int] = []
        for _ in range(50 * count):  # rejection sampling: cheap while the pool has many documents
            if len(chosen) == count:
                return chosen
            index = pool[self.rng.randrange(len(pool))]
            if self._eligible(index, used_docs, wanted_answer):
                chosen.append(index)
                used_docs.add(self.passages[index].doc_id)
        # Few eligible passages left: sample among all of them, or say why it cannot be done.
        eligible = sorted({i for i in pool if self._eligible(i, used_docs, wanted_answer)})
        by_doc: dict[str, int] = {}
        for index in eligible:
            by_doc.setdefault(self.passages[index].doc_id, index)
        missing = count - len(chosen)
        if len(by_doc) < missing:
            raise NotEnoughDocuments(
                f"a record needs {count} distractors from other documents, but only "
                f"{len(chosen) + len(by_doc)} other documents are available"
            )
        return chosen + self.rng.sample(sorted(by_doc.values()), missing)
