"""The `heuristic` curator: a transparent, model-free stand-in for the rating model, for offline runs and CI.

It checks what can be checked without a model, each check one rubric reason with a fixed penalty from 10: the
answer's quotes are in the chunk and its words are the chunk's (`not_grounded`), the final answer is there and not
a word or two (`incomplete`), the question does not point at the chunk (`not_self_contained`), is a question of a
sensible length that does not stop mid-phrase (`not_search_like`), and names no site chrome or legal boilerplate
(`off_domain`). It cannot tell a wrong answer from a right one (`incorrect`): a model can.
"""

from __future__ import annotations

import re
from typing import Any

from raft_assets.contracts.prompts import Prompt
from raft_assets.contracts.raft_format import final_answer, quotes_verified
from raft_assets.contracts.tables import HEURISTIC_CURATOR
from raft_assets.curation.rubric import Rating
from raft_assets.llm.asking import StandIn
from raft_assets.llm.client import ChatReply

STAND_IN_NOTE = (
    "no curator endpoint is configured (RAFT_CURATOR_BASE_URL, or RAFT_LLM_BASE_URL), so a transparent heuristic "
    "rates the questions: quotes found in the chunk, answer words found in it, the question's form, chrome words; "
    "a test of the machinery, not a model's judgement"
)
PENALTIES = {"not_grounded": 5, "off_domain": 6, "not_self_contained": 4, "incomplete": 3, "not_search_like": 2}
MIN_ANSWER_COVERAGE = 0.8  # share of the final answer's words that must be words of the chunk
QUESTION_WORDS = (3, 25)  # a search-like question's length, in words
MIN_ANSWER_WORDS = 3

_WORD = re.compile(r"[a-z0-9]+")
_POINTS_AT_SOURCE = re.compile(
    r"\b(?:according to (?:the|this)|(?:in|from) the (?:text|document)|(?:the|this) (?:passage|excerpt|chunk|context)"
    r"|this (?:document|section|page|note|article|paragraph|text)|the (?:above|following))\b",
    re.IGNORECASE,
)
_CHROME = re.compile(
    r"©|¶|\b(?:copyright|all rights reserved|cookies?|privacy policy|terms of (?:use|service)|"
    r"(?:toggle|skip|main) navigation|quick search|search docs|table of contents|edit (?:this|on) (?:page|github)|"
    r"skip to (?:main )?content|created using sphinx|built with mkdocs|(?:previous|next) (?:page|topic|chapter)|sign in|log in|subscribe)\b",
    re.IGNORECASE,
)
# A question ending in one of these before its "?" stops mid-phrase ("..., which?", "...shape (r x d_in) of the?").
_DANGLING = {
    "a",
    "an",
    "the",
    "of",
    "to",
    "in",
    "on",
    "for",
    "and",
    "or",
    "with",
    "which",
    "that",
    "by",
    "as",
    "at",
    "from",
    "is",
    "are",
    "was",
    "be",
    "this",
    "its",
    "their",
}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def answer_coverage(answer: str, chunk: str) -> float:
    """Share of the answer's words that are words of the chunk."""
    words = _words(answer)
    if not words:
        return 0.0
    vocabulary = set(_words(chunk))
    return sum(word in vocabulary for word in words) / len(words)


def problems(question: str, chunk: str, cot_answer: str) -> tuple[list[str], str]:
    """The rubric reasons the pair fails, and what was measured (the rating's comment)."""
    found = []
    answer = final_answer(cot_answer) or ""
    coverage = answer_coverage(answer, chunk)
    quoted = quotes_verified(cot_answer, chunk)
    if not quoted or coverage < MIN_ANSWER_COVERAGE:
        found.append("not_grounded")
    if len(answer.split()) < MIN_ANSWER_WORDS:
        found.append("incomplete")
    if _POINTS_AT_SOURCE.search(question):
        found.append("not_self_contained")
    words = question.rstrip("?").split()
    if (
        not question.rstrip().endswith("?")
        or not QUESTION_WORDS[0] <= len(words) <= QUESTION_WORDS[1]
        or words[-1].lower().strip(",;:(") in _DANGLING
    ):
        found.append("not_search_like")
    if _CHROME.search(question) or _CHROME.search(answer):
        found.append("off_domain")
    comment = (
        f"heuristic: quotes {'found' if quoted else 'not found'} in the chunk, {coverage:.0%} of the answer's words "
        f"in it, answer {len(answer.split())} words, question {len(words)} words"
    )
    return found, comment


def rate(question: str, chunk: str, cot_answer: str) -> Rating:
    """10 less the penalty of each reason found, at least 1."""
    reasons, comment = problems(question, chunk, cot_answer)
    return Rating(score=max(1, 10 - sum(PENALTIES[r] for r in reasons)), reasons=reasons, comment=comment)


class HeuristicCurator(StandIn):
    """The stand-in for the rating model; its replies are JSON ratings."""

    model = HEURISTIC_CURATOR
    stand_in = STAND_IN_NOTE

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply:
        if prompt.name != "curation":
            raise ValueError(f"the heuristic curator has no answer for prompt {prompt.name!r}")
        rating = rate(values["question"], values["chunk"], values["cot_answer"])
        return ChatReply(rating.model_dump_json(), prompt_tokens=0, completion_tokens=0, cached=False)
