"""Reading the question generator's replies: lists of questions, however the model numbers or introduces them.
(Answers and quotes are parsed by the RAFT format itself: `contracts/raft_format.py`.)"""

from __future__ import annotations

import re

_LIST_MARKER = re.compile(
    r"""^\s*(?:
        [-*•+]                                  # bullets
      | \(?\d{1,3}\s*[.):\]]                    # 1.  1)  (1)  1:
      | (?:Q(?:uestion)?\s*\d*\s*[.):])         # Q1:  Question 2.
    )\s*""",
    re.VERBOSE | re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^(?:sure|certainly|okay|of course|here (?:are|is)|below are|i hope)\b", re.IGNORECASE)


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
