"""Choosing distractor documents: random (the reference), hard (nearest by embedding), or mixed."""

from __future__ import annotations

import random
from collections.abc import Sequence

from raft_assets.dataset.records import Passage
from raft_assets.generation.parsing import normalized

STRATEGIES = ("random", "hard", "mixed")
_MIN_ANSWER_WORDS = 4  # shorter answers ("8K", "FSDP2") occur everywhere: not a sign that a passage answers


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
        wanted_answer = normalized(answer) if len(answer.split()) >= _MIN_ANSWER_WORDS else ""
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
        """Uniform draws from the pool; when most of it is ineligible, a scan from a random place instead
        (the pool is in chunk-hash order, so neighbours in it are unrelated chunks)."""
        chosen: list[int] = []
        for _ in range(20 * count):
            if len(chosen) == count:
                return chosen
            self._take(pool[self.rng.randrange(len(pool))], chosen, used_docs, wanted_answer)
        start = self.rng.randrange(len(pool))
        for offset in range(len(pool)):
            if len(chosen) == count:
                return chosen
            self._take(pool[(start + offset) % len(pool)], chosen, used_docs, wanted_answer)
        if len(chosen) < count:
            raise NotEnoughDocuments(
                f"a record needs {count} distractors from other documents, but only {len(chosen)} "
                "other documents without the answer are available"
            )
        return chosen

    def _take(self, index: int, chosen: list[int], used_docs: set[str], wanted_answer: str) -> None:
        if self._eligible(index, used_docs, wanted_answer):
            chosen.append(index)
            used_docs.add(self.passages[index].doc_id)
