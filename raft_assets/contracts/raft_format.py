"""The RAFT format, in one place: documents in `<DOCUMENT>` tags, the record (the seed's `hf` format) and its chat
form as the reference fine-tuning loader reads them, and the answer format every model is asked for (reasoning with
`##begin_quote##` quotes, then `<ANSWER>: ...`) with its parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from raft_assets.contracts.prompts import load_prompts

DOCUMENT_START, DOCUMENT_END = "<DOCUMENT>", "</DOCUMENT>"
BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"
ANSWER_TAG = "<ANSWER>:"
ANSWER_TAG_PATTERN = re.compile(r"<ANSWER>\s*:")
_QUOTE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
REFUSAL_ANSWER = (
    "Sorry, I don't know the answer to this question because related documents are not found. Please try again."
)


@dataclass(frozen=True)
class Sample:
    """A question with a good chain-of-thought answer, and where it came from."""

    question_id: str
    question: str
    cot_answer: str
    answer: str
    chunk_id: str
    doc_id: str
    source: str


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    doc_id: str
    title: str
    text: str


def raft_record(
    sample: Sample,
    passages: list[Passage],
    oracle: Passage,
    *,
    split: str,
    refusal_answer: str | None,
    distractor_kind: str,
) -> dict[str, Any]:
    """One record, field for field the seed's `hf` format, then our extra fields.

    `passages` is the shuffled context; the oracle is among them exactly when it was drawn in.
    A refusal record (refusal_answer set) has no oracle and teaches the model to say it does not know.
    """
    texts = [passage.text for passage in passages]
    oracle_included = any(passage.chunk_id == oracle.chunk_id for passage in passages)
    return {
        "id": f"raft_{sample.question_id[:16]}" + ("_refusal" if refusal_answer else ""),
        "type": "general",
        "question": sample.question,
        "context": {"sentences": [texts], "title": [[passage.title for passage in passages]]},
        "oracle_context": oracle.text,
        "cot_answer": refusal_answer or sample.cot_answer,
        "instruction": documents_block(texts) + sample.question,
        "doc_id": sample.doc_id,
        "chunk_id": sample.chunk_id,
        "source": sample.source,
        "split": split,
        "oracle_included": oracle_included,
        "refusal": refusal_answer is not None,
        "distractors": distractor_kind,
    }


def without_document_tags(text: str) -> str:
    """Text (a passage, a question) with any literal <DOCUMENT> tags defused (a page about RAFT itself
    has them): left in, they would make the loader split the instruction in the wrong place."""
    return text.replace(DOCUMENT_START, "[DOCUMENT]").replace(DOCUMENT_END, "[/DOCUMENT]")


def question_key(question: str) -> str:
    """How questions are told apart, across sources and across splits: case, runs of whitespace and the final
    punctuation ignored ("What is FSDP?" and "what is  FSDP" are one question)."""
    return normalized(question).rstrip("?.! ")


def split_instruction(instruction: str) -> tuple[str, str]:
    """(documents, question), split at the last `</DOCUMENT>` as the reference loader does."""
    end = instruction.rindex(DOCUMENT_END) + len(DOCUMENT_END)
    return instruction[:end].strip(), instruction[end:].strip()


def chat_messages(question: str, documents: str, answer: str | None = None) -> list[dict[str, str]]:
    """System, user (question and documents) and, for training, the assistant's answer."""
    messages = load_prompts()["raft_chat"].messages(question=question, context=documents)
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def chat_record(record: dict[str, Any]) -> dict[str, Any]:
    documents, question = split_instruction(record["instruction"])
    return {"id": record["id"], "messages": chat_messages(question, documents, record["cot_answer"])}


def documents_block(texts: list[str]) -> str:
    """Documents as the RAFT format wraps them: `<DOCUMENT>...</DOCUMENT>`, one after another."""
    return "".join(f"{DOCUMENT_START}{text}{DOCUMENT_END}\n" for text in texts)


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
