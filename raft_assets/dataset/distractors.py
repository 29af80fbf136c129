"""Choosing distractor documents: random (the reference), hard (nearest by embedding), or mixed."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from raft_assets.contracts.raft_format import Passage, normalized


class NotEnoughDocuments(ValueError):
    """Fewer other documents than a record needs distractors."""


class DistractorPicker:
    """Picks `count` distractors for an oracle: each from a different document, none the oracle's.

    `neighbours` maps a chunk to its nearest chunks of other documents (nearest first), for the hard
    strategy. A candidate whose text contains the question's final answer (as whole words, ignoring case and
    whitespace: "8K" is in "up to 8K tokens", not in "128K") is skipped: it would answer the question too,
    so it is no distractor.
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
        wanted_answer = answer_pattern(answer)
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

    def _eligible(self, index: int, used_docs: set[str], wanted_answer: re.Pattern[str] | None) -> bool:
        if self.passages[index].doc_id in used_docs:
            return False
        return wanted_answer is None or not wanted_answer.search(self._text(index))

    def _text(self, index: int) -> str:
        if index not in self._normalized:
            self._normalized[index] = normalized(self.passages[index].text)
        return self._normalized[index]

    def _random(
        self, count: int, pool: Sequence[int], used_docs: set[str], wanted_answer: re.Pattern[str] | None
    ) -> list[int]:
        """Uniform draws from the pool; when most of it is ineligible, a scan from a random place instead
        (the pool is in chunk-hash order, so neighbours in it are unrelated chunks). When too few documents
        lack the answer (a short answer such as "Llama 3" that most documents mention), the rest are
        taken from documents that mention it: a record is never refused for want of answer-free text."""
        chosen: list[int] = []
        for _ in range(20 * count):
            if len(chosen) == count:
                return chosen
            self._take(pool[self.rng.randrange(len(pool))], chosen, used_docs, wanted_answer)
        start = self.rng.randrange(len(pool))
        for answer_filter in (wanted_answer, None):
            for offset in range(len(pool)):
                if len(chosen) == count:
                    return chosen
                self._take(pool[(start + offset) % len(pool)], chosen, used_docs, answer_filter)
        raise NotEnoughDocuments(
            f"a record needs {count} distractors from other documents, but only {len(chosen)} other documents "
            "are available"
        )

    def _take(self, index: int, chosen: list[int], used_docs: set[str], wanted_answer: re.Pattern[str] | None) -> None:
        if self._eligible(index, used_docs, wanted_answer):
            chosen.append(index)
            used_docs.add(self.passages[index].doc_id)


def answer_pattern(answer: str) -> re.Pattern[str] | None:
    """The normalised answer as whole words, to search normalised passages with; None for an empty answer."""
    wanted = normalized(answer)
    return re.compile(rf"(?<!\w){re.escape(wanted)}(?!\w)") if wanted else None
