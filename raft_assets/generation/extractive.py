"""The `extractive` generator: a deterministic, model-free stand-in for the large model.

It exists so that the pipeline and CI run offline on a CPU, and is a smoke-test baseline, not a
substitute for a model: it turns a chunk's sentences into questions and answers each question by
quoting the sentence that best matches it, in exactly the format the real model is asked for.
"""

from __future__ import annotations

import re
from typing import Any

from raft_assets.contracts.prompts import Prompt
from raft_assets.contracts.raft_format import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE
from raft_assets.contracts.tables import EXTRACTIVE_MODEL
from raft_assets.llm.asking import StandIn
from raft_assets.llm.client import ChatReply, RequestFailed

STAND_IN_NOTE = (
    "no generator endpoint is configured (RAFT_LLM_BASE_URL), so the extractive stand-in writes the questions and "
    "answers by quoting sentences: a test of the machinery, not a model's data"
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n\s*(?=[-*#>|]|\d+\.\s)")  # sentence end, paragraph, list item
_LEADING_MARKUP = re.compile(r"^(?:[-*#>|]+|\d+\.)\s+")
_RULE = re.compile(r"([^\w\s])\1\1")  # "===", "---": headings and rules, not prose
_DOCUMENT = re.compile(r"<DOCUMENT>(.*?)</DOCUMENT>", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+")
_COPULAS = {"is", "are", "was", "were"}
# Sentence openings that are not the subject: "It is...", "For X that is..." make poor "What is" questions.
_NOT_SUBJECTS = set(
    [
        "it",
        "this",
        "that",
        "there",
        "they",
        "these",
        "those",
        "we",
        "you",
        "each",
        "both",
        "all",
        "here",
        "for",
        "in",
        "on",
        "at",
        "with",
        "by",
        "from",
    ]
)
_NOT_SUBJECTS |= set(["when", "if", "after", "before", "to", "as", "so", "but", "and", "or"])
_STOP_WORDS = set(
    [
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
        "is",
        "are",
        "was",
        "were",
        "be",
        "what",
        "how",
        "why",
        "which",
        "does",
        "do",
        "should",
        "i",
        "know",
        "about",
    ]
)


MIN_WORDS, MAX_WORDS, SENTENCE_ENDS = 6, 60, ".!?"  # a quotable sentence
SENTENCE_RULE = f"{MIN_WORDS} to {MAX_WORDS} words ending with one of {SENTENCE_ENDS}"


def sentences(text: str) -> list[str]:
    """Prose sentences (`SENTENCE_RULE`), whitespace collapsed: the quotable ones."""
    found = (_LEADING_MARKUP.sub("", " ".join(part.split())) for part in _SENTENCE_BREAK.split(text))
    return [
        s for s in found if MIN_WORDS <= len(s.split()) <= MAX_WORDS and s[-1] in SENTENCE_ENDS and not _RULE.search(s)
    ]


def question_for(sentence: str) -> str:
    """A question the sentence answers: "What is X?" for "X is ...", else one about its first words."""
    words = sentence.rstrip(".!?").split()
    for position, word in enumerate(words[:9]):
        subject = " ".join(words[:position])
        if word.lower() in _COPULAS and len(subject) >= 3 and words[0].lower() not in _NOT_SUBJECTS:
            return f"What {word.lower()} {subject}?"
    return f"What should I know about {' '.join(words[:6]).rstrip(',;:')}?"


def best_sentence(question: str, context: str) -> str | None:
    """The context sentence sharing the most content words with the question (first one on ties)."""
    wanted = set(_WORD.findall(question.lower())) - _STOP_WORDS
    candidates = sentences(context)
    if not candidates:
        return None
    return max(candidates, key=lambda s: len(wanted & set(_WORD.findall(s.lower()))))


class ExtractiveBackend(StandIn):
    model = EXTRACTIVE_MODEL
    stand_in = STAND_IN_NOTE

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply:
        """The stand-in's reply; an item without a prose sentence to quote (a chunk of source code, a table) is
        skipped with that reason (RequestFailed "skipped"), which is no failure of the stage."""
        if prompt.name == "questions":
            text = self.questions(values["chunk"], int(values["num_questions"]))
        elif prompt.name == "cot_answer":
            text = self.cot_answer(values["question"], "\n".join(_DOCUMENT.findall(values["documents"])))
        else:
            raise ValueError(f"the extractive generator has no answer for prompt {prompt.name!r}")
        if text is None:
            raise RequestFailed(
                "skipped", f"the extractive stand-in found no prose sentence ({SENTENCE_RULE}) to quote"
            )
        return ChatReply(text, prompt_tokens=0, completion_tokens=0, cached=False)

    @staticmethod
    def questions(chunk: str, count: int) -> str | None:
        candidates = sentences(chunk)
        if not candidates:
            return None
        step = max(1, len(candidates) // max(count, 1))
        return "\n".join(question_for(sentence) for sentence in candidates[::step][:count])

    @staticmethod
    def cot_answer(question: str, context: str) -> str | None:
        sentence = best_sentence(question, context)
        if sentence is None:
            return None
        return (
            f"The question asks: {question}\n"
            f"The document answers it in one sentence: {BEGIN_QUOTE}{sentence}{END_QUOTE}\n"
            f"So the answer is that sentence.\n"
            f"{ANSWER_TAG} {sentence}"
        )
