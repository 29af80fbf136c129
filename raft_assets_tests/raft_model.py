"""A scripted stand-in for the 70B generator behind the OpenAI-compatible test server.

It answers our prompts the way a well-behaved model would, with its own wording (not the extractive generator's):
numbered questions with a preamble for the question prompt, a reasoning with a verbatim quote and an `<ANSWER>:`
line for the CoT prompt, and a rating for the curation prompt: JSON fitting the schema when the request asks for
structured output (`response_format` with a JSON schema, which a vLLM server's guided decoding enforces), the prose
of an unconstrained model when it does not.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from raft_assets_tests.openai_server import Responder, last_user_message

_COUNT = re.compile(r"write (\d+) different questions")
_DOCUMENT = re.compile(r"<DOCUMENT>(.*?)</DOCUMENT>", re.DOTALL)
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)
CURATION_OPENING = "You rate question-answer pairs"  # how the curation prompt's system message starts
REJECTED_SHARE = 5  # the default rating rejects about one question in this many

Score = Callable[[str], int]  # question -> the score the rating gives it


def default_score(question: str) -> int:
    """8 for most questions, 3 for about one in REJECTED_SHARE, by a hash of the question (deterministic)."""
    return 3 if hashlib.blake2b(question.encode(), digest_size=4).digest()[0] % REJECTED_SHARE == 0 else 8


def raft_responder(body: dict[str, Any], score: Score = default_score) -> str:
    system = body["messages"][0]["content"]
    user = last_user_message(body)
    if system.startswith(CURATION_OPENING):
        return rating_reply(body, score(_QUESTION.search(user).group(1)))
    if (count := _COUNT.search(system)) is not None:
        return questions_reply(user, int(count.group(1)))
    return cot_reply(_QUESTION.search(user).group(1), _DOCUMENT.search(user).group(1))


def rating_responder(score: Score) -> Responder:
    """raft_responder with ratings from `score`; a score outside 1-10 makes replies that do not fit the schema."""
    return lambda body: raft_responder(body, score)


def questions_reply(chunk: str, count: int) -> str:
    words = chunk.split()
    step = max(1, len(words) // (count + 1))
    opening = " ".join(words[:6])
    lines = [
        f"{i + 1}. What does '{' '.join(words[i * step : i * step + 4])}' mean in the notes starting '{opening}'?"
        for i in range(count)
    ]
    return "Here are the questions:\n\n" + "\n".join(lines)


def cot_reply(question: str, document: str) -> str:
    quote = " ".join(document.split()[:12])
    return (
        f"To answer '{question}', look at the start of the document.\n"
        f"##begin_quote##{quote}##end_quote##\n"
        f"That sentence gives the answer.\n<ANSWER>: {quote}"
    )


def rating_reply(body: dict[str, Any], score: int) -> str:
    if (body.get("response_format") or {}).get("type") != "json_schema":
        return f"A reasonable pair. I would give it {score} out of 10."
    reasons = [] if score >= 7 else ["not_search_like"]
    return json.dumps({"score": score, "reasons": reasons, "comment": "" if score >= 7 else "Too vague."})
