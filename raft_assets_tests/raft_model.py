"""A scripted stand-in for the 70B generator behind the OpenAI-compatible test server.

It answers our two prompts the way a well-behaved model would, with its own wording (not the
extractive generator's): numbered questions with a preamble for the question prompt, and a reasoning
with a verbatim quote and an `<ANSWER>:` line for the CoT prompt.
"""

from __future__ import annotations

import re
from typing import Any

from raft_assets_tests.openai_server import last_user_message

_COUNT = re.compile(r"write (\d+) different questions")
_DOCUMENT = re.compile(r"<DOCUMENT>(.*?)</DOCUMENT>", re.DOTALL)
_QUESTION = re.compile(r"^Question: (.*)$", re.MULTILINE)


def raft_responder(body: dict[str, Any]) -> str:
    system = body["messages"][0]["content"]
    user = last_user_message(body)
    if (count := _COUNT.search(system)) is not None:
        return questions_reply(user, int(count.group(1)))
    return cot_reply(_QUESTION.search(user).group(1), _DOCUMENT.search(user).group(1))


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
