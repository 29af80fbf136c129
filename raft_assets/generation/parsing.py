"""Reading the model's replies: question lists, final answers, and quotes checked against the source."""

from __future__ import annotations

import re

BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"
ANSWER_TAG = "<ANSWER>:"

_LIST_MARKER = re.compile(
    r"""^\s*(?:
        [-*•+]                                  # bullets
      | \(?\d{1,3}\s*[.):\]]                    # 1.  1)  (1)  1:
      | (?:Q(?:uestion)?\s*\d*\s*[.):])         # Q1:  Question 2.
    )\s*""",
    re.VERBOSE | re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^(?:sure|certainly|okay|of course|here (?:are|is)|below are|i hope)\b", re.IGNORECASE)
ANSWER_TAG_PATTERN = re.compile(r"<ANSWER>\s*:")
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)


def parse_questions(reply: str, limit: int) -> list[str]:
    """At most `limit` distinct questions from a reply, one per line.

    Numbering, bullets, markdown emphasis and surrounding quotes are stripped; blank lines, lines
    without letters and preambles ("Here are 5 questions:") are dropped. When enough lines end with a
    question mark, the others (closing remarks) are dropped too.
    """
    candidates = []
    for line in reply.splitlines():
        text = _LIST_MARKER.sub("", line.strip()).strip().strip("*_`\"'").strip()
        if not re.search(r"[A-Za-z]", text) or text.endswith(":") or _PREAMBLE.match(text):
            continue
        candidates.append(text)
    asked = [text for text in candidates if text.endswith("?")]
    chosen = asked if len(asked) >= min(limit, len(candidates)) else candidates
    return list(dict.fromkeys(chosen))[:limit]


def final_answer(reply: str) -> str | None:
    """The text after the last `<ANSWER>:` tag, or None when there is none (or it is empty)."""
    tags = list(ANSWER_TAG_PATTERN.finditer(reply))
    if not tags:
        return None
    answer = reply[tags[-1].end() :].strip().removesuffix("</ANSWER>").strip()
    return answer or None


def quoted_spans(reply: str) -> list[str]:
    return [span.strip() for span in _QUOTE.findall(reply)]


def quotes_verified(reply: str, source: str) -> bool:
    """True when the reply quotes at least once and every quote occurs in `source`.

    Comparison ignores case and runs of whitespace, as models re-flow the lines they copy.
    """
    spans = quoted_spans(reply)
    haystack = normalized(source)
    return bool(spans) and all(span and normalized(span) in haystack for span in spans)


def normalized(text: str) -> str:
    """Lower case, runs of whitespace as one space: how quotes and answers are compared."""
    return " ".join(text.lower().split())
